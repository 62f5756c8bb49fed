"""CORE (sans-I/O): how a rule table that the code runs is drawn in the docstring
that states it.

Each core module keeps its rules as data (the turn router's ``ROUTING_RULES``,
the stream machine's ``LIVENESS_RULES``, the fleet's ``LEASE_RULES``, the 409
``CONFLICT_RULES``...) and shows them in its module docstring as a table drawn
by :func:`render_table`; a test per module checks that the docstring holds the
table its data draws, so the prose cannot drift from the code.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterable, Sequence

__all__ = ["render_table"]


def render_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    wrap: Sequence[int | None] = (),
) -> str:
    """A reStructuredText simple table of ``header`` and ``rows``.

    ``wrap[i]``, when given and not None, wraps column ``i`` at that many
    characters (words are never broken); else a cell's lines are its own
    (``"\\n"``). A column is as wide as its widest line.
    """

    def lines(text: str, width: int | None) -> list[str]:
        if width is None:
            return text.split("\n")
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)

    widths = list(wrap) + [None] * (len(header) - len(wrap))
    cells = [
        [lines(text, w) for text, w in zip(row, widths, strict=True)] for row in (header, *rows)
    ]
    size = [max((len(x) for row in cells for x in row[i]), default=0) for i in range(len(header))]
    border = "  ".join("=" * n for n in size)
    out = [border]
    for i, row in enumerate(cells):
        for parts in itertools.zip_longest(*row, fillvalue=""):
            out.append("  ".join(p.ljust(n) for p, n in zip(parts, size, strict=True)).rstrip())
        if i == 0:
            out.append(border)
    out.append(border)
    return "\n".join(out)
