"""SHELL: list endpoints as async iterators that fetch pages as needed.

==========================================  ======================================
the page says                               next request
==========================================  ======================================
neither ``has_more`` nor ``next_page``      the end
paging backwards (the listing started       ``before_id=<first_id>`` (else the id
with ``before_id``)                         of the first item)
``next_page`` (opaque cursor)               ``page=<next_page>``
``has_more`` and ``last_id``                ``after_id=<last_id>``
``has_more``, no ``last_id``                ``after_id=<id of the last item>``
more, and no cursor at all                  :class:`APIResponseValidationError`
a cursor already followed                   :class:`APIResponseValidationError`
                                            (it would loop forever)
==========================================  ======================================

Each page is a :class:`Page`: its items, plus the ``first_id``, ``last_id``,
``has_more`` and ``next_page`` the answer sent (a number, as the version
numbers of ``GET /agents/{id}/versions``, reads as its string; an item's
``id`` stands in for a missing ``first_id``/``last_id`` only when the items'
ids are distinct, so never on a version listing, where every item is the
same agent).

Every next request keeps the listing's other parameters and replaces its
cursor: the caller's ``after_id``/``before_id`` is never sent next to ``page``
(the API refuses the two together).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, TypeVar

from qoder_async._core.convert import ShapeError
from qoder_async._core.errors import APIResponseValidationError
from qoder_async._core.models import Page
from qoder_async._shell.http import HTTP, APIResponse, RequestOptions

__all__ = ["AsyncPaginator", "list_params"]

_T = TypeVar("_T")
_CURSORS = frozenset({"page", "after_id", "before_id", "after", "before"})


def list_params(**values: Any) -> list[tuple[str, str]]:
    """Query parameters from keyword arguments: ``None`` omitted, lists as ``key[]``."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif isinstance(value, list | tuple):
            out.extend((f"{key}[]", str(v)) for v in value)
        else:
            out.append((key, str(value)))
    return out


class AsyncPaginator(Generic[_T]):
    """Iterates every item of a list endpoint, fetching pages as needed (see the module table).

    ``async for item in paginator`` yields items; :meth:`pages` yields pages.
    """

    def __init__(
        self,
        http: HTTP,
        path: str,
        params: list[tuple[str, str]],
        item: Callable[[Any], _T],
        *,
        options: RequestOptions | None = None,
    ) -> None:
        self._http = http
        self._path = path
        self._params = params
        self._item = item
        self._options = options
        self._backward = any(key in ("before_id", "before") for key, _ in params)

    async def __aiter__(self) -> AsyncIterator[_T]:
        async for page in self.pages():
            for item in page:
                yield item

    async def pages(self) -> AsyncIterator[Page[_T]]:
        """Iterate page by page."""
        params = list(self._params)
        seen: set[tuple[str, str]] = set()
        while True:
            answer = await self._http.request(
                "GET", self._path, params=params, options=self._options
            )
            body = answer.body
            yield self.parse_page(body)
            cursor = self._next_cursor(body)
            if cursor is None:
                return
            if cursor in seen:
                raise APIResponseValidationError(
                    f"pagination cursor did not advance ({cursor[0]}={cursor[1]})",
                    method="GET",
                    url=self._path,
                )
            seen.add(cursor)
            params = [(k, v) for k, v in self._params if k not in _CURSORS]
            params.append(cursor)

    async def first_page(self) -> APIResponse:
        """The answer of the first page request, unparsed (``with_raw_response``)."""
        return await self._http.request(
            "GET", self._path, params=list(self._params), options=self._options
        )

    def parse_page(self, body: Any) -> Page[_T]:
        """One page's answer body as a :class:`Page`; a wrong shape is a typed error."""
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            raise APIResponseValidationError(
                "a list answer must be an object with a 'data' array",
                method="GET",
                url=self._path,
                body=body,
            )
        try:
            items = [self._item(raw) for raw in body["data"]]
        except ShapeError as exc:
            raise APIResponseValidationError(
                f"unexpected item in a list answer: {exc}", method="GET", url=self._path
            ) from exc
        next_page = body.get("next_page")
        return Page(
            items,
            first_id=_cursor(body.get("first_id")),
            last_id=_cursor(body.get("last_id")),
            has_more=body.get("has_more") is True,
            next_page=next_page if isinstance(next_page, str) and next_page else None,
        )

    def _next_cursor(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        next_page = body.get("next_page")
        if not isinstance(next_page, str) or not next_page:
            next_page = None
            if not body.get("has_more"):
                return None
        if self._backward:
            first_id = _anchor(body, "first_id", 0)
            if first_id is not None:
                return ("before_id", first_id)
        if next_page is not None:
            return ("page", next_page)
        last_id = None if self._backward else _anchor(body, "last_id", -1)
        if last_id is None:
            raise APIResponseValidationError(
                "has_more is true but the answer names no cursor", method="GET", url=self._path
            )
        return ("after_id", last_id)


def _cursor(value: Any) -> str | None:
    """A page cursor as a string: a non-empty string, or an integer (a version number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _anchor(body: Mapping[str, Any], key: str, index: int) -> str | None:
    """The page's ``first_id``/``last_id``, else the id of its first/last item.

    An item id stands in only when the page's items have distinct ids: the
    items of a version listing all carry their agent's id, which would ask
    for the same page again.
    """
    value = _cursor(body.get(key))
    if value is None:
        data = body.get("data") or []
        ids = [item.get("id") if isinstance(item, Mapping) else None for item in data]
        if data and len(set(ids)) == len(ids):
            value = _cursor(ids[index])
    return value
