"""Charts of benchmark results (``python -m benchmarks --plot DIR``), PNG via matplotlib.

Needs the benchmarks-only extra: ``pip install -e ".[bench]"``. Two figures:

* ``peers.png``: one panel per scenario of the run (every registered scenario,
  a new one included, gets its panel), a bar per contender: its median of the
  scenario's primary metric as a ratio to the scenario's first reference (so
  runs on machines of any speed read alike), the min..max over rounds as an
  error bar;
* ``scaling.png``: the ``scale-*`` scenarios against the number of streams:
  client CPU per event (live streams) and RSS per live and per idle stream.

Input is what ``--json`` writes (``{"meta": ..., "scenarios": {name: result}}``);
several files are merged, a later file's scenario replacing an earlier one's.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from .scenarios import SCENARIOS

# One colour per contender, the same in every chart.
COLOURS = {
    "sink": "#bbbbbb",
    "raw": "#555555",
    "aiohttp-min": "#8c8c8c",
    "D": "#1f77b4",
    "httpx-default": "#9ecae1",
    "qca": "#ff7f0e",
    "qoder_async-stream": "#2ca02c",
    "qoder_async-stream-httpx": "#98df8a",
    "qoder_async-turn": "#d62728",
}


def load(paths: list[Path]) -> dict[str, Any]:
    """Merge the ``scenarios`` of several ``--json`` files (later files win)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged.update(json.loads(path.read_text())["scenarios"])
    return merged


def _values(cres: dict[str, Any], key: str) -> list[float]:
    return [r[key] for r in cres.get("rounds", []) if isinstance(r.get(key), int | float)]


def _median(cres: dict[str, Any], key: str) -> float | None:
    vals = _values(cres, key)
    return statistics.median(vals) if vals else None


def _colour(name: str) -> str:
    return COLOURS.get(name, "#9467bd")


def _peer_panels(results: dict[str, Any]) -> list[tuple[str, Any, list[tuple[str, Any]]]]:
    panels = []
    for name, res in results.items():
        scn = SCENARIOS.get(name)
        if scn is None or name.startswith("scale-"):
            continue
        ok = [
            (c, cres)
            for c, cres in res["contenders"].items()
            if cres.get("status") == "ok" and _values(cres, scn.primary)
        ]
        if ok:
            panels.append((name, scn, ok))
    return panels


def plot_peers(results: dict[str, Any], out: Path) -> Path | None:
    """``peers.png``: each scenario's contenders as a ratio to its first reference."""
    import matplotlib.pyplot as plt

    panels = _peer_panels(results)
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, scn, ok) in zip(axes.flat, panels, strict=False):
        present = dict(ok)
        ref = next((r for r in scn.refs if r in present), ok[0][0])
        ref_med = _median(present[ref], scn.primary) or float("nan")
        labels, meds, lo, hi = [], [], [], []
        for c, cres in ok:
            vals = _values(cres, scn.primary)
            med = statistics.median(vals) / ref_med
            labels.append(c)
            meds.append(med)
            lo.append(med - min(vals) / ref_med)
            hi.append(max(vals) / ref_med - med)
        ys = range(len(labels))
        ax.barh(ys, meds, xerr=(lo, hi), color=[_colour(c) for c in labels], capsize=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        if max(meds) / max(min(meds), 1e-9) > 20:  # e.g. an SDK 90x slower: bars stay visible
            ax.set_xscale("log")
        for y, m, h in zip(ys, meds, hi, strict=True):
            ax.text(m + h, y, f" {m:.3g}", va="center", fontsize=7)
        better = "higher" if scn.higher_is_better else "lower"
        ax.set_title(f"{name}\n{scn.label} / {ref}'s ({better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("qoder_async vs peers, contenders interleaved in one run (median, min..max)")
    fig.tight_layout()
    path = out / "peers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(results: dict[str, Any], prefix: str, key: str) -> dict[str, list[tuple[int, float]]]:
    """contender -> [(streams, median of key)] over the scenarios named ``prefix*``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, res in results.items():
        if not name.startswith(prefix):
            continue
        for c, cres in res["contenders"].items():
            med, streams = _median(cres, key), _median(cres, "streams")
            if cres.get("status") == "ok" and med is not None and streams:
                out.setdefault(c, []).append((int(streams), med))
    return {c: sorted(pts) for c, pts in out.items()}


def plot_scaling(results: dict[str, Any], out: Path) -> Path | None:
    """``scaling.png``: CPU per event and RSS per stream against the number of streams."""
    import matplotlib.pyplot as plt

    charts = [
        ("scale-live-", "cpu_us_per_event", "client CPU per event (us), live streams", None),
        ("scale-live-", "kib_per_stream", "RSS per live stream (KiB)", 40.0),
        ("scale-idle-", "kib_per_stream", "RSS per idle stream (KiB)", 20.0),
    ]
    drawn = [(p, k, t, lim, _series(results, p, k)) for p, k, t, lim in charts]
    drawn = [d for d in drawn if d[4]]
    if not drawn:
        return None
    fig, axes = plt.subplots(1, len(drawn), figsize=(5 * len(drawn), 3.8), squeeze=False)
    for ax, (_, _, title, limit, series) in zip(axes.flat, drawn, strict=True):
        for c, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=c, color=_colour(c))
        if limit is not None:
            ax.axhline(limit, color="#d62728", linestyle="--", linewidth=0.8, label="target")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("streams open at once")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Cost per stream and per event as the number of streams grows")
    fig.tight_layout()
    path = out / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw every chart the results allow into ``out``; returns the files written."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(f'--plot needs matplotlib ({exc}): pip install -e ".[bench]"') from None
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    return [p for p in (plot_peers(results, out), plot_scaling(results, out)) if p is not None]
