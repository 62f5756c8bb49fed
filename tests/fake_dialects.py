"""Older wire generations for the fake server: they test our converter, not a user's bot.

``OldWire`` is a `qoder_async.testing.Dialect` (so its status codes, ``turn_id``
and file switches still work) that also writes the documented older shapes of
qoder-api.md §11, one switch each:

* ``heartbeat`` -- ``"comment"`` (``: heartbeat``), ``"event"``
  (``event: heartbeat`` + ``data: {}``) or ``"ping"`` (``event: ping``).
* ``data_ids`` -- ``False`` omits ``id`` and ``type`` from SSE ``data`` of
  stored events; they then only travel in the ``id:``/``event:`` lines.
* ``string_content`` -- ``user.message``/``agent.message`` ``content`` as a
  plain string instead of text blocks.
* ``legacy_idle`` -- ``session.status_idle`` as ``{"status": "idle"}``
  without ``stop_reason`` (and ``session.status_running`` gains
  ``"status": "running"``).
* ``thinking_field`` -- key of the ``agent.thinking`` text: ``"thinking"``,
  ``"content"`` or ``None`` (no text at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from qoder_async.testing import Dialect
from qoder_async.testing._wire import dumps, sse_frame, text_of

HeartbeatStyle = Literal["comment", "event", "ping"]

_HEARTBEATS = {
    "comment": b": heartbeat\n\n",
    "event": b"event: heartbeat\ndata: {}\n\n",
    "ping": b"event: ping\ndata: {}\n\n",
}


def _only_text(content: list[Any]) -> bool:
    return all(isinstance(b, dict) and b.get("type") == "text" for b in content)


@attrs.define
class OldWire(Dialect):
    """The fake's dialect plus the older wire shapes (see the module docstring)."""

    heartbeat: HeartbeatStyle = "comment"
    data_ids: bool = True
    string_content: bool = False
    legacy_idle: bool = False
    thinking_field: str | None = "thinking"

    def render(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A stored event in this generation's shape (a new dict)."""
        out = super().render(event)
        kind = out.get("type")
        content = out.get("content")
        if (
            self.string_content
            and kind in ("user.message", "agent.message")
            and isinstance(content, list)
            and _only_text(content)
        ):
            out["content"] = text_of(content)
        if kind == "agent.thinking" and self.thinking_field != "thinking":
            text = out.pop("thinking", "")
            if self.thinking_field is not None:
                out[self.thinking_field] = text
        if self.legacy_idle:
            if kind == "session.status_idle":
                out.pop("stop_reason", None)
                out["status"] = "idle"
            elif kind == "session.status_running":
                out["status"] = "running"
        return out

    def frame(self, event: Mapping[str, Any]) -> bytes:
        """The SSE frame; without ``data_ids`` the id and type only in the SSE lines."""
        data = self.render(event)
        if not self.data_ids:
            data.pop("id", None)
            data.pop("type", None)
        return sse_frame(event["id"], event["type"], dumps(data))

    def heartbeat_frame(self) -> bytes:
        """The keep-alive frame of ``heartbeat``."""
        return _HEARTBEATS[self.heartbeat]
