"""Per-session state of the fake server: the event log, the live feed, the turn.

Rules this module keeps:

* ``log`` holds every stored event in storage order; history, resume and the
  server's record read it. Stored events are never changed after storing.
* ``feed`` is what live stream connections walk: the stored events plus the
  preview frames (``event_start``/``event_delta``), in publish order. A
  connection is just an index into it, so an idle connection costs one
  ``asyncio.Event``; publishing appends and sets every connection's event.
* At most one turn runs at a time. A turn ends exactly once, in
  ``finish_turn``: it stores the closing ``session.status_idle`` and marks the
  turn ended *before* the script task is cancelled, so nothing a cancelled
  script still tries to emit can land after the idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from ._faults import Dialect
from ._wire import Ids, render_key, stored_frame

StopReasonJSON = dict[str, Any]
"""A stop reason as plain JSON, e.g. ``{"type": "end_turn"}``.

Not to be confused with ``qoder_async.StopReason``, the client's typed class.
"""


@attrs.define(eq=False)
class StoredEvent:
    """One stored event plus its encoded SSE frames (cached per dialect)."""

    event: dict[str, Any]
    log_index: int
    feed_pos: int
    frames: dict[tuple[Any, ...], bytes] = attrs.Factory(dict)

    def frame(self, dialect: Dialect) -> bytes:
        """The SSE frame in ``dialect``, encoded once per dialect."""
        key = render_key(dialect)
        frame = self.frames.get(key)
        if frame is None:
            frame = self.frames[key] = stored_frame(self.event, dialect)
        return frame


@attrs.define(eq=False)
class Preview:
    """One preview frame (never stored, never replayed)."""

    event_id: str
    kind: str
    frame: bytes


FeedItem = StoredEvent | Preview


@attrs.define(eq=False)
class Turn:
    """A running turn."""

    id: str
    trigger: dict[str, Any]
    task: asyncio.Task[None] | None = None
    ended: bool = False
    paused: bool = False
    pending: list[str] = attrs.Factory(list)
    answers: list[dict[str, Any]] = attrs.Factory(list)
    answered: asyncio.Event = attrs.Factory(asyncio.Event)
    open_spans: list[str] = attrs.Factory(list)


class SessionState:
    """Everything the server knows about one session."""

    def __init__(self, ids: Ids, resource: dict[str, Any]) -> None:
        self.ids = ids
        self.resource = resource
        self.log: list[StoredEvent] = []
        self.by_id: dict[str, StoredEvent] = {}
        self.feed: list[FeedItem] = []
        # preview event id -> (feed position of its first frame, stored events before it)
        self.preview_start: dict[str, tuple[int, int]] = {}
        self.wakers: set[asyncio.Event] = set()
        self.turn: Turn | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.deleted = False

    @property
    def id(self) -> str:
        """The session id."""
        return str(self.resource["id"])

    @property
    def status(self) -> str:
        """``running`` while a turn runs and is not paused on ``requires_action``."""
        return "running" if self.turn is not None and not self.turn.paused else "idle"

    def snapshot(self) -> dict[str, Any]:
        """The session object as the API returns it (a deep-enough copy)."""
        out = dict(self.resource)
        out["status"] = self.status
        out["usage"] = dict(self.resource["usage"])
        out["metadata"] = dict(self.resource["metadata"])
        return out

    def notify(self) -> None:
        """Wake every stream connection and waiter of this session."""
        for waker in self.wakers:
            waker.set()

    def store(
        self,
        event_type: str,
        fields: dict[str, Any],
        *,
        turn_id: str | None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Store and publish an event; returns the stored dict (do not mutate)."""
        now = self.ids.now()
        event: dict[str, Any] = {"id": event_id or self.ids.event(), "type": event_type}
        for key, value in fields.items():
            if key not in ("id", "type"):
                event[key] = value
        event["session_id"] = self.id
        event["turn_id"] = turn_id
        event["schema_version"] = "1.0"
        event["created_at"] = now
        event["processed_at"] = now
        stored = StoredEvent(event, len(self.log), len(self.feed))
        self.log.append(stored)
        self.by_id[event["id"]] = stored
        self.feed.append(stored)
        self.resource["updated_at"] = now
        self.notify()
        return event

    def publish_preview(self, event_id: str, kind: str, frame: bytes) -> None:
        """Publish a preview frame for the not-yet-stored event ``event_id``."""
        self.preview_start.setdefault(event_id, (len(self.feed), len(self.log)))
        self.feed.append(Preview(event_id, kind, frame))
        self.notify()

    def start_turn(self, turn_id: str, trigger: dict[str, Any]) -> Turn:
        """Mark a turn as running (the caller has stored ``trigger``, starts the task)."""
        turn = Turn(turn_id, trigger)
        self.turn = turn
        self.idle.clear()
        return turn

    def finish_turn(self, turn: Turn, stop_reason: StopReasonJSON, *, abnormal: bool) -> None:
        """End ``turn`` once: close open spans (if abnormal), store the idle."""
        if turn.ended:
            return
        if abnormal:
            for span_id in turn.open_spans:
                self.store(
                    "span.model_request_end",
                    {
                        "model_request_start_id": span_id,
                        "is_error": True,
                        "model_usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                    turn_id=turn.id,
                )
            turn.open_spans.clear()
        turn.paused = False
        self.store("session.status_idle", {"stop_reason": stop_reason}, turn_id=turn.id)
        turn.ended = True
        if self.turn is turn:
            self.turn = None
            self.idle.set()
        turn.answered.set()

    def abort_turn(self) -> bool:
        """End the running turn like an interrupt; ``False`` when none ran."""
        turn = self.turn
        if turn is None:
            return False
        self.finish_turn(turn, {"type": "end_turn"}, abnormal=True)
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        return True
