"""Wire helpers of the fake server: ids, timestamps, JSON, errors and SSE frames."""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

_T = TypeVar("_T")

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"

#: Event types a client may post to ``POST /sessions/{id}/events``.
INPUT_EVENT_TYPES = frozenset(
    {
        "user.message",
        "user.interrupt",
        "user.define_outcome",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.tool_result",
        "system.message",
    }
)


class ApiError(Exception):
    """An error answered with the JSON error envelope."""

    def __init__(
        self, status: int, error_type: str, message: str, *, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The error envelope (with the top-level ``request_id`` when given)."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        out: dict[str, Any] = {"type": "error", "error": error}
        if request_id is not None:
            out["request_id"] = request_id
        return out


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, "invalid_request_error", message, param=param)


def not_found(kind: str, ident: str) -> ApiError:
    """A 404 ``not_found_error`` for an unknown resource."""
    return ApiError(404, "not_found_error", f"{kind} not found: {ident}")


def conflict(message: str) -> ApiError:
    """A 409 ``conflict_error``."""
    return ApiError(409, "conflict_error", message)


def find(table: Mapping[str, _T], ident: str, kind: str) -> _T:
    """``table[ident]``, or the 404 of an unknown ``kind``."""
    item = table.get(ident)
    if item is None:
        raise not_found(kind, ident)
    return item


def dumps(obj: Any) -> str:
    """Compact JSON, the way the service writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """``obj`` answered as compact JSON."""
    return web.Response(
        status=status, body=dumps(obj).encode(), content_type="application/json", headers=headers
    )


class Ids:
    """Identifier and timestamp source of one server.

    Resource ids are ULID-shaped (``env_`` + 26 lowercase base32 chars).
    Event ids are a zero-padded hex counter, so they sort in storage order.
    Timestamps never go backwards within one server.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._event_counter = 0
        self._last_ns = 0

    def resource(self, prefix: str) -> str:
        """A new ``<prefix>_<26 chars>`` id."""
        value = (time.time_ns() // 1_000_000) << 80 | self._rng.getrandbits(80)
        chars = [_B32[(value >> shift) & 31] for shift in range(125, -1, -5)]
        return f"{prefix}_{''.join(chars)}"

    def stamped(self, prefix: str, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A new resource: its id and ``type``, ``fields``, unarchived, created and updated now."""
        now = self.now()
        return {
            "id": self.resource(prefix),
            "type": kind,
            **fields,
            "archived_at": None,
            "created_at": now,
            "updated_at": now,
        }

    def event(self) -> str:
        """The next event id."""
        self._event_counter += 1
        return f"evt_{self._event_counter:017x}"

    @staticmethod
    def request() -> str:
        """A request id for the ``x-request-id`` header: random, never from the seed.

        Two servers (of one process or of forked ones) never hand out the same
        id, whatever their seeds.
        """
        return f"req_{secrets.token_hex(12)}"

    def now(self) -> str:
        """Now as RFC 3339 with nanoseconds in UTC (``...Z``), never decreasing."""
        ns = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = ns
        secs, frac = divmod(ns, 1_000_000_000)
        stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{frac:09d}Z"


def text_of(content: Any) -> str:
    """The text of a content value: a string, or the joined text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def sse_frame(event_id: str | None, event_type: str | None, data: str) -> bytes:
    """One SSE frame (``id``/``event``/``data`` lines and the blank line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}\n")
    if event_type is not None:
        lines.append(f"event: {event_type}\n")
    lines.append(f"data: {data}\n\n")
    return "".join(lines).encode()
