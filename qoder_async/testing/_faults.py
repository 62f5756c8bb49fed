"""Fault switches and wire-dialect switches of the fake server.

Both classes are plain mutable attrs classes: a test flips a switch on
``server.faults`` (or ``server.dialect``) between two requests and the very
next request sees it. Randomised faults draw from the server's own
``random.Random(seed)`` so a run with the same seed makes the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import attrs

from ._wire import dumps, sse_frame

__all__ = ["CannedResponse", "Dialect", "Faults", "ServerView"]

FileContentStyle = Literal["negotiate", "bytes", "link"]

#: What the store records on every event and production does not send.
_EVENT_METADATA = ("session_id", "schema_version", "created_at")


class CannedResponse(NamedTuple):
    """A raw response served once, instead of the real one, to the next matching request.

    Put instances in ``Faults.respond_next``. A plain 5-tuple in the same order
    works too. ``path`` is a regular expression searched (``re.search``) in the
    full request path (``/api/v1/cloud/...``); ``method`` ``None`` matches any
    method. ``headers`` are sent as given (add ``Content-Type`` yourself); the
    server only adds ``x-request-id`` when absent.
    """

    method: str | None
    path: str
    status: int
    headers: Mapping[str, str] | None = None
    body: bytes = b""


@attrs.define
class Faults:
    """Switches that make the fake server misbehave; all off by default.

    Counters (``throttle_first``, ``fail_send_after_store``) are decremented as
    they fire. ``inject_frames`` and ``respond_next`` are consumed. Every fault
    that fires is counted in ``FakeQoderServer.fault_counts`` under the
    attribute's name (``duplicate_on_resume`` counts re-sent events,
    ``inject_frames`` counts injected byte strings, the rest count firings).

    Stream faults:

    * ``drop_after_bytes`` -- every SSE connection is aborted (no clean end of
      the chunked body) once about this many body bytes were written, usually
      in the middle of a frame.
    * ``drop_after_events`` -- every SSE connection is aborted in the middle of
      the event frame that follows this many event frames.
    * ``drop_probability`` -- per event frame, abort the connection halfway
      through that frame.
    * ``duplicate_on_resume`` -- on a ``Last-Event-ID`` resume, first re-send
      this many already delivered stored events from before the cursor (in
      their stored order, the cursor's own event last), then go on after the
      cursor as usual.
    * ``reorder_on_replay`` -- with ``duplicate_on_resume``: the re-sent events
      go out shuffled by the server's rng (never in their stored order when
      there are two or more), still all before the first event after the
      cursor; everything after the cursor stays in order. Counts connections
      whose re-sent events were shuffled.
    * ``ignore_last_event_id`` -- the server ignores the resume cursor (header
      and ``last_event_id`` query alike, without checking it) and replays the
      session's whole history from the start on every connection, then goes
      live. Counts connections whose cursor was ignored.
    * ``silent_stream`` -- the stream answers 200 with the SSE headers, then
      sends nothing at all (no ``retry:``, no heartbeat, no event) until the
      client leaves or the server closes. Counts such connections.
    * ``stall_probability`` -- per event frame, the connection stops sending
      events (that one included) and only sends heartbeats from then on.
    * ``stuck_for`` -- a stalled (``stall_probability``) or silent
      (``silent_stream``) connection is aborted by the server after this many
      seconds, as a gateway's idle or upstream timeout would end it; ``None``
      (the default) keeps it until the client leaves, so only the client's own
      stall and read timeouts end it. Counts such aborts.
    * ``inject_frames`` -- raw bytes written once, after the replay, at the
      start of the next stream connection; then cleared. With
      ``close_after_inject`` that connection then ends cleanly.
    * ``close_after_idle`` -- end the stream cleanly (EOF) right after a
      ``session.status_idle`` frame once the connection has caught up.
    * ``slow_stream_seconds`` -- delay before the stream's response headers.

    Request faults:

    * ``throttle_first`` -- the next K requests (any endpoint) get
      ``throttle_status`` with ``Retry-After``/``retry-after-ms`` headers (from
      ``retry_after`` seconds; ``None`` sends neither) and the error envelope:
      429 ``rate_limit_error``; 503 and 529 ``overloaded_error``; any other
      status ``api_error``. ``throttle_probability`` throttles at random.
    * ``fail_send_after_store`` -- the next K ``POST .../events`` store and run
      their events, then answer 500 ``api_error``. An ``Idempotency-Key``
      retry still replays the original success.
    * ``empty_send_data`` -- the next K ``POST .../events`` store and run their
      events, then answer the success status with ``{"data": []}`` (the
      created events are not echoed). An ``Idempotency-Key`` retry replays
      that same empty answer.
    * ``slow_seconds`` -- delay before every non-stream response.
    * ``respond_next`` -- canned raw responses, see `CannedResponse`.
    """

    drop_after_bytes: int | None = None
    drop_after_events: int | None = None
    drop_probability: float = 0.0
    duplicate_on_resume: int = 0
    reorder_on_replay: bool = False
    ignore_last_event_id: bool = False
    silent_stream: bool = False
    stall_probability: float = 0.0
    stuck_for: float | None = None
    throttle_first: int = 0
    throttle_status: int = 429
    retry_after: float | None = 1.0
    throttle_probability: float = 0.0
    fail_send_after_store: int = 0
    empty_send_data: int = 0
    slow_seconds: float = 0.0
    slow_stream_seconds: float = 0.0
    inject_frames: list[bytes] = attrs.Factory(list)
    close_after_inject: bool = False
    respond_next: list[CannedResponse] = attrs.Factory(list)
    close_after_idle: bool = False


@attrs.define
class Dialect:
    """Wire switches: the documented status codes, ``turn_id``, the file download answer.

    The default wire is what production sends (the official SDK's captured
    answers, the cookbook's recorded stream): events carry no ``turn_id``,
    ``session_id``, ``schema_version`` or ``created_at`` (in streams, lists
    and the send answer alike), and a stream frame's ``data`` has no ``id``
    (the SSE ``id:`` line is the only one). Switches turn each back on.

    * ``send_status`` -- status of ``POST /sessions/{id}/events`` (202 or 200).
    * ``create_status`` -- status of every ``POST`` that creates a resource
      (sessions, agents, environments): 201 or 200.
    * ``cancel_status`` -- status of ``POST /sessions/{id}/cancel`` when a turn
      was running (202; older docs: 200). An idle cancel is always 200.
    * ``retry_ms`` -- when set, every stream starts with ``retry: <ms>``.
    * ``turn_ids`` -- ``True`` adds ``turn_id`` to every event on the wire
      (streams, lists and the send answer), as older documentation pages
      show it; the default (``False``) sends none, as production does.
    * ``send_turn_ids`` -- with ``turn_ids``: ``False`` omits ``turn_id``
      from the events in the ``POST .../events`` answer only; streamed and
      listed events keep it.
    * ``event_metadata`` -- ``True`` adds ``session_id``, ``schema_version``
      and ``created_at`` to every event on the wire.
    * ``stream_data_ids`` -- ``True`` also writes the event's ``id`` inside
      each stream frame's ``data``.
    * ``file_content`` -- what ``GET /files/{id}/content`` answers: ``"bytes"``
      (the file, with its ``Content-Type``), ``"link"`` (JSON ``{"url": ...}``
      naming an unauthenticated download URL on this server, which is what
      both official SDKs expect) or ``"negotiate"``: the link when the
      request's ``Accept`` is exactly ``application/json`` (as the SDKs
      send it), the bytes otherwise.

    The server's own record (``stored_events``) is never affected: a dialect
    only changes what goes over the wire. A subclass may override
    :meth:`render`, :meth:`frame` and :meth:`heartbeat_frame` to write other
    wire generations; frames are cached per dialect class and field values.
    """

    send_status: int = 202
    create_status: int = 201
    cancel_status: int = 202
    retry_ms: int | None = None
    turn_ids: bool = False
    send_turn_ids: bool = True
    event_metadata: bool = False
    stream_data_ids: bool = False
    file_content: FileContentStyle = "negotiate"

    def render(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A stored event as it goes over the wire (a new dict)."""
        out = dict(event)
        if not self.turn_ids:
            out.pop("turn_id", None)
        if not self.event_metadata:
            for key in _EVENT_METADATA:
                out.pop(key, None)
        return out

    def frame(self, event: Mapping[str, Any]) -> bytes:
        """The SSE frame of a stored event (its id in the ``id:`` line)."""
        data = self.render(event)
        if not self.stream_data_ids:
            data.pop("id", None)
        return sse_frame(event["id"], event["type"], dumps(data))

    def heartbeat_frame(self) -> bytes:
        """The keep-alive frame (an SSE comment)."""
        return b": heartbeat\n\n"

    def key(self) -> tuple[Any, ...]:
        """What a cached frame depends on: the class and every field's value."""
        return (type(self), *attrs.astuple(self, recurse=False))


class ServerView(Protocol):
    """What the stream writer and a turn's scripts use of the `FakeQoderServer`.

    The server module imports theirs; naming this view instead of the server
    class keeps the imports one way.
    """

    faults: Faults
    dialect: Dialect
    heartbeat_interval: float
    _rng: random.Random
    _closing: bool

    def _count_fault(self, name: str, n: int = 1) -> None: ...

    def _file_snapshot(self, file_id: Any) -> dict[str, Any] | None: ...
