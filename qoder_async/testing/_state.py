"""Per-session state of the fake server: the event log, the live feed, the turn.

Rules this module keeps:

* ``log`` holds every stored event in storage order; history, resume and the
  server's record read it. Stored events are never changed after storing.
* ``feed`` is what live stream connections walk: the stored events plus the
  preview frames (``event_start``/``event_delta``), in publish order. A
  connection is just an index into it, so an idle connection costs one
  ``asyncio.Event``; publishing appends and sets every connection's event.
* A preview is *open* (``open_previews``) from its first frame until the
  event with its id is stored, or a ``span.model_request_end`` of its thread
  (the request died before its message) or the turn's idle closes it.
* At most one turn runs at a time. A turn ends exactly once, in
  ``finish_turn``: it stores the closing ``session.status_idle`` and marks the
  turn ended *before* the script task is cancelled, so nothing a cancelled
  script still tries to emit can land after the idle. Sub-agent threads still
  running then get a ``session.thread_status_idle`` (``end_turn``) first.
* Threads share the session's log and feed: an event belongs to a thread when
  its ``session_thread_id`` names it (so every thread event is also on the
  primary stream). A thread's ``status`` follows the
  ``session.thread_status_*`` events stored for it, whoever stores them.
* Resource secrets (repository tokens, passwords) live in
  ``resource_secrets``, never in a resource dict that is sent.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._faults import Dialect
from ._wire import Ids

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
        key = dialect.key()
        frame = self.frames.get(key)
        if frame is None:
            frame = self.frames[key] = dialect.frame(self.event)
        return frame


@attrs.define(eq=False)
class Preview:
    """One preview frame (never stored, never replayed)."""

    event_id: str
    kind: str
    frame: bytes
    thread_id: str | None = None


_THREAD_STATUS = {"rescheduled": "rescheduling"}


@attrs.define(eq=False)
class ThreadState:
    """One sub-agent thread: the resource, plus the clock behind its ``stats``."""

    resource: dict[str, Any]
    created: float = attrs.Factory(time.monotonic)
    running_since: float | None = None
    active: float = 0.0
    startup: float | None = None

    @property
    def id(self) -> str:
        """The thread id (``sthr_...``)."""
        return str(self.resource["id"])

    def set_status(self, status: str, now: str) -> None:
        """Record a status change (``running``, ``idle``...) at ``now``."""
        clock = time.monotonic()
        if self.running_since is not None:
            self.active += clock - self.running_since
            self.running_since = None
        if status == "running":
            self.running_since = clock
            if self.startup is None:
                self.startup = clock - self.created
        self.resource["status"] = status
        self.resource["updated_at"] = now

    def snapshot(self) -> dict[str, Any]:
        """The thread object as the API returns it (a copy, stats up to now)."""
        clock = time.monotonic()
        active = self.active
        if self.running_since is not None:
            active += clock - self.running_since
        out = copy.deepcopy(self.resource)
        out["stats"] = {
            "active_seconds": round(active, 6),
            "duration_seconds": round(clock - self.created, 6),
            "startup_seconds": round(self.startup or 0.0, 6),
        }
        return out


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
        # previews in flight: event id -> its thread id (None: the primary thread)
        self.open_previews: dict[str, str | None] = {}
        self.wakers: set[asyncio.Event] = set()
        self.turn: Turn | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.deleted = False
        self.threads: dict[str, ThreadState] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.resource_secrets: dict[str, str] = {}
        #: Called with every event just stored (the server's webhooks hook).
        self.on_store: Callable[[dict[str, Any]], None] | None = None

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
        out["resources"] = copy.deepcopy(list(self.resources.values()))
        for key in ("agent", "environment_variables", "budget", "vault_ids", "memory_store_ids"):
            out[key] = copy.deepcopy(self.resource.get(key))
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
        self._close_previews(event)
        self.resource["updated_at"] = now
        if event_type.startswith("session.thread_status_"):
            thread = self.threads.get(event.get("session_thread_id") or "")
            if thread is not None:
                status = event_type.removeprefix("session.thread_status_")
                thread.set_status(_THREAD_STATUS.get(status, status), now)
        self.notify()
        if self.on_store is not None:
            self.on_store(event)
        return event

    def publish_preview(
        self, event_id: str, kind: str, frame: bytes, thread_id: str | None = None
    ) -> None:
        """Publish a preview frame for the not-yet-stored event ``event_id``."""
        if event_id not in self.preview_start:
            self.preview_start[event_id] = (len(self.feed), len(self.log))
            self.open_previews[event_id] = thread_id
        self.feed.append(Preview(event_id, kind, frame, thread_id))
        self.notify()

    def _close_previews(self, event: dict[str, Any]) -> None:
        """Close the previews ``event`` ends: its own, or its thread's dead request's."""
        if not self.open_previews:
            return
        self.open_previews.pop(event["id"], None)
        kind = event["type"]
        if kind == "session.status_idle":
            self.open_previews.clear()
        elif kind == "span.model_request_end":
            thread = event.get("session_thread_id")
            for event_id, owner in list(self.open_previews.items()):
                if owner == thread:
                    del self.open_previews[event_id]

    def add_thread(
        self, agent_name: str, parent_thread_id: str | None, agent: dict[str, Any]
    ) -> ThreadState:
        """Register a new idle sub-agent thread (the caller stores ``session.thread_created``)."""
        fields = {
            "session_id": self.id,
            "agent_name": agent_name,
            "agent": agent,
            "parent_thread_id": parent_thread_id,
            "status": "idle",
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        thread = ThreadState(self.ids.stamped("sthr", "session_thread", fields))
        self.threads[thread.id] = thread
        return thread

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
        for thread in self.threads.values():
            if thread.resource["status"] == "running":
                fields = {
                    "session_thread_id": thread.id,
                    "agent_name": thread.resource["agent_name"],
                    "stop_reason": {"type": "end_turn"},
                }
                self.store("session.thread_status_idle", fields, turn_id=turn.id)
        self.store("session.status_idle", {"stop_reason": stop_reason}, turn_id=turn.id)
        turn.ended = True
        if self.turn is turn:
            self.turn = None
            self.idle.set()
        turn.answered.set()

    def drop_turn(self) -> Turn | None:
        """End the running turn with no closing idle (the session or the server ends)."""
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.ended = True
            self.idle.set()
        return turn

    def abort_turn(self) -> bool:
        """End the running turn like an interrupt; ``False`` when none ran."""
        turn = self.turn
        if turn is None:
            return False
        self.finish_turn(turn, {"type": "end_turn"}, abnormal=True)
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        return True
