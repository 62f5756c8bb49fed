"""CORE (sans-I/O): SSE bytes -> frames -> typed events, the resume cursor, dedupe, live text.

Nothing here does I/O or imports an HTTP or async library; the shell feeds
bytes in and gets events out, so every rule below is tested exhaustively.

Rules this module keeps (qoder-api.md §4, §6):

=====================================  ============================================
input                                  effect
=====================================  ============================================
bytes split anywhere, CR/LF/CRLF       the same frames (a BOM at the start is dropped)
a line or frame > ``max_event_bytes``  :class:`FrameTooLargeError`; memory stays bounded
``: comment``, ``event: heartbeat``,   liveness only (``heartbeats`` += 1), no event
``event: ping``, empty ``data``
``data: [DONE]``                       ``done`` set; nothing after it is read
``event: error`` / ``{"type":"error"}``  the typed API error is raised
invalid UTF-8 / JSON / not an object   :class:`StreamDecodeError` naming the frame
a buffered event                       yielded; cursor := frame ``id:`` (else the
                                       event's ``id``) — only once the frame is complete
``id:`` empty                          cursor cleared (per the SSE spec)
``id:`` containing NUL                 ignored
an id seen within the last ``window``  dropped as a replayed duplicate
preview frames (``event_start``,       yielded, never deduped (they share their
``event_delta``)                       event's id) and never move the cursor
=====================================  ============================================

A preview must not move the cursor: resuming *at* a previewed id whose event has
since been stored would skip that event.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ._convert import EVENT_HOOKS, ShapeError, structure_event
from ._errors import APIStatusError, FrameTooLargeError, StreamDecodeError, error_from_envelope
from ._models import (
    AgentContentBlockDelta,
    AgentMessage,
    AgentThinking,
    BaseEvent,
    Event,
    EventDelta,
    EventStart,
    SpanModelRequestEnd,
    json_dumps,
    json_loads,
)

__all__ = [
    "DEFAULT_DEDUPE_WINDOW",
    "DEFAULT_MAX_EVENT_BYTES",
    "EventDecoder",
    "Frame",
    "LiveText",
    "SSEDecoder",
    "json_dumps",
    "json_loads",
    "text_delta",
]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
DEFAULT_DEDUPE_WINDOW = 512
PREVIEW_TYPES = frozenset({"event_start", "event_delta"})
_KEEPALIVE_EVENTS = frozenset({"heartbeat", "ping"})


class Frame(NamedTuple):
    """One complete SSE frame: ``data`` is None when the frame had no ``data:`` line.

    ``id`` is None when the frame had no ``id:`` line ("" when it was empty).
    """

    event: str | None
    data: bytes | None
    id: str | None
    retry: int | None


_SET_RAW = vars(BaseEvent)["_raw"].__set__  # events keep their frame's bytes as raw (lazy)
_new_frame = tuple.__new__  # Frame's own __new__ is a Python function: too slow per frame


_EVENT_NAMES: dict[bytes, str] = {}
# A frame as servers usually lay it out; one space after each colon is optional (SSE).
_USUAL_FRAME = re.compile(rb"id: ?([^\n]*)\nevent: ?([^\n]*)\ndata: ?([^\n]*)")


def _event_name(value: bytes) -> str:
    """Decode an ``event:`` value, remembering the (few) names a server uses."""
    name = _text(value, "event")
    if len(_EVENT_NAMES) < 512:
        _EVENT_NAMES[value] = name
    return name


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamDecodeError(f"invalid UTF-8 in the {what} field", frame=value) from None


class SSEDecoder:
    """Incremental SSE decoder: bytes in (any chunking), complete frames out.

    ``comments`` counts comment lines (keep-alives). Memory is bounded by
    ``max_event_bytes``: a longer line or frame raises :class:`FrameTooLargeError`
    as soon as the limit is crossed, without buffering the rest.
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_fields",
        "_id",
        "_max",
        "_partial",
        "_partial_size",
        "_retry",
        "_skip_lf",
        "_started",
        "comments",
        "error",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._skip_lf = False
        self._started = False
        self.comments = 0
        self.error: StreamDecodeError | None = None
        self._reset_frame()

    def _reset_frame(self) -> None:
        self._event: str | None = None
        self._data: list[bytes] = []
        self._data_size = 0
        self._id: str | None = None
        self._retry: int | None = None
        self._fields = False

    def feed(self, chunk: bytes) -> list[Frame]:
        """Decode ``chunk``; returns the frames it completed (possibly none).

        Raises the stream's decode error once every frame completed before it
        was returned (``error`` holds it meanwhile).
        """
        if self.error is not None:
            raise self.error
        if not chunk:
            return []
        if not self._started:
            self._started = True
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        frames: list[Frame] = []
        try:
            if self._partial or self._fields:
                # Finish the frame in progress line by line, then go fast again.
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._line_feed(chunk, frames)
                    return frames
                self._line_feed(chunk[: end + 2], frames)
                chunk = chunk[end + 2 :]
            if b"\n\n" in chunk:
                chunk = self._fast_feed(chunk, frames)
            self._line_feed(chunk, frames)
        except StreamDecodeError as exc:
            self._reset_frame()
            return self._fail(exc, frames)
        return frames

    def _fast_feed(self, chunk: bytes, frames: list[Frame]) -> bytes:
        """Decode the whole frames of ``chunk``; returns what follows the last one.

        Frames laid out as servers send them (id, event, data) are matched by
        one regex each, in C; anything else (comments, other orders, multi-line
        data, retry) goes line by line. No frame may be in progress.
        """
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()
        limit = self._max
        match = _USUAL_FRAME.fullmatch
        for block in blocks:
            found = match(block) if len(block) <= limit else None
            if found is None:
                if block:
                    lines = block.split(b"\n")
                    lines.append(b"")
                    self._lines(lines, frames)
                continue
            raw_id, raw_event, data = found.groups()
            try:
                ident = None if b"\x00" in raw_id else raw_id.decode()
            except UnicodeDecodeError:
                ident = _text(raw_id, "id")  # raises the typed decode error
            event = _EVENT_NAMES.get(raw_event) or _event_name(raw_event)
            frames.append(_new_frame(Frame, (event, data, ident, None)))
        return rest

    def _line_feed(self, chunk: bytes, frames: list[Frame]) -> None:
        """Decode ``chunk`` line by line; an unterminated last line is kept (bounded)."""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._partial:
                self._partial.append(lines[0])
                lines[0] = b"".join(self._partial)
                self._partial = []
                self._partial_size = 0
            self._lines(lines, frames)
        if tail:
            self._partial_size += len(tail)
            if self._partial_size > self._max:
                head = self._partial[0] if self._partial else tail
                self._partial = []
                self._partial_size = 0
                raise FrameTooLargeError(self._max, frame=head[:200])
            self._partial.append(tail)

    def _lines(self, lines: list[bytes], frames: list[Frame]) -> None:
        """Decode complete lines (an empty one ends a frame), appending frames."""
        # The frame being built lives in locals, fields are dispatched inline.
        limit = self._max
        event, data, ident, retry = self._event, self._data, self._id, self._retry
        fields, size = self._fields, self._data_size
        for line in lines:
            if not line:
                if fields:
                    joined = (data[0] if len(data) == 1 else b"\n".join(data)) if data else None
                    frames.append(_new_frame(Frame, (event, joined, ident, retry)))
                    event = ident = retry = None
                    data = []
                    fields = False
                    size = 0
                continue
            if len(line) > limit:
                raise FrameTooLargeError(limit, frame=line[:200])
            if line[0] == 58:  # b":" -- a comment
                self.comments += 1
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                size += len(value) + 1
                if size > limit:
                    raise FrameTooLargeError(limit, frame=value[:200])
                data.append(value)
            elif name == b"id":
                if b"\x00" in value:
                    continue
                ident = _text(value, "id")
            elif name == b"event":
                event = _EVENT_NAMES.get(value) or _event_name(value)
            elif name == b"retry":
                if not value.isdigit():
                    continue
                retry = int(value)
            else:
                continue  # unknown fields are ignored and do not start a frame
            fields = True
        self._event, self._data, self._id, self._retry = event, data, ident, retry
        self._fields, self._data_size = fields, size

    def _fail(self, exc: StreamDecodeError, frames: list[Frame]) -> list[Frame]:
        # Frames completed before the bad line are still delivered; the error waits
        # until they are consumed (see ``error``), so nothing already received is lost.
        self.error = exc
        if frames:
            return frames
        raise exc

    def close(self) -> list[Frame]:
        """End of stream: a frame without its terminating blank line is discarded (SSE spec)."""
        self._partial = []
        self._partial_size = 0
        self._reset_frame()
        return []


class EventDecoder:
    """Frames -> typed events, with the resume cursor and a bounded dedupe window.

    Feed bytes with :meth:`feed` (all events of a chunk at once) or with
    :meth:`push` and :meth:`pull` (one at a time, the cursor moving with each);
    read ``last_event_id`` (the resume cursor), ``retry_ms`` (the server's
    ``retry:``), ``heartbeats`` and ``done``. One decoder lives as long as a
    logical stream, across reconnects: call :meth:`reconnected` when a new
    connection starts so a frame cut by the drop is discarded while the dedupe
    window is kept. With ``lazy_raw`` events keep their frame's bytes as ``raw``
    (parsed again on first access): cheaper to keep many events, dearer to read
    ``raw`` of each.
    """

    __slots__ = (
        "_comments",
        "_lazy_raw",
        "_loads",
        "_max",
        "_next",
        "_pending",
        "_seen",
        "_sse",
        "_window",
        "done",
        "duplicates",
        "error",
        "events",
        "heartbeats",
        "last_event_id",
        "retry_ms",
    )

    def __init__(
        self,
        *,
        last_event_id: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        seen_ids: Iterable[str] = (),
        loads: Callable[[bytes], Any] = json_loads,
        lazy_raw: bool = False,
    ) -> None:
        self._loads = loads
        self._lazy_raw = lazy_raw
        self.error: StreamDecodeError | APIStatusError | None = None
        self._max = max_event_bytes
        self._sse = SSEDecoder(max_event_bytes)
        self._window = dedupe_window
        self._seen: dict[str, None] = {}
        self._pending: list[Frame] = []
        self._next = 0
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self.heartbeats = 0
        self._comments = 0
        self.duplicates = 0
        self.events = 0
        self.done = False
        for ident in seen_ids:
            self._remember(ident)
        if last_event_id:
            self._remember(last_event_id)

    def reconnected(self) -> None:
        """A new connection begins: forget any half-received frame (never a cursor)."""
        self._comments += self._sse.comments
        self._sse.close()
        self._sse = SSEDecoder(self._max)
        self._pending = []
        self._next = 0
        self.done = False

    def push(self, chunk: bytes) -> None:
        """Add a chunk of the response body; then :meth:`pull` its events one by one."""
        try:
            frames = self._sse.feed(chunk)
        except StreamDecodeError as exc:
            exc.last_event_id = self.last_event_id
            raise
        if frames:
            if self._next < len(self._pending):
                self._pending = self._pending[self._next :] + frames
            else:
                self._pending = frames
            self._next = 0

    def pull(self) -> Event | None:
        """The next new event pushed so far, or None.

        The cursor moves past an event only when it is pulled, so
        ``last_event_id`` always names the last event handed out.
        """
        pending = self._pending
        while self._next < len(pending):
            if self.done:
                self._next = len(pending)
                break
            frame = pending[self._next]
            self._next += 1
            ev = self._frame(frame)
            if ev is not None:
                return ev
        error = self._sse.error
        if error is not None:
            error.last_event_id = self.last_event_id
            raise error
        return None

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode a chunk of the response body into the new events it completes.

        Nothing already received is lost: when a frame is bad, the events before
        it are returned and the error is raised by the next call (it is kept in
        ``error`` meanwhile). ``last_event_id`` is then past all returned events.
        """
        if self.error is not None:
            raise self.error
        try:
            frames = self._sse.feed(chunk)
        except StreamDecodeError as exc:
            exc.last_event_id = self.last_event_id
            raise
        out: list[Event] = []
        frame_event = self._frame
        try:
            for frame in frames:
                if self.done:
                    break
                ev = frame_event(frame)
                if ev is not None:
                    out.append(ev)
            if self._sse.error is not None:
                raise self._sse.error
        except (StreamDecodeError, APIStatusError) as exc:
            if isinstance(exc, StreamDecodeError):
                exc.last_event_id = self.last_event_id
            if not out:
                raise
            self.error = exc
        return out

    @property
    def keepalives(self) -> int:
        """Keep-alives seen over all connections: comments, heartbeat/ping and empty frames."""
        return self.heartbeats + self._comments + self._sse.comments

    def _remember(self, ident: str) -> None:
        self._seen[ident] = None
        if len(self._seen) > 2 * self._window:
            self._trim_seen()

    def _trim_seen(self) -> None:
        # The window is a dict of str -> None, which the cyclic GC leaves untracked
        # (a set or deque of ids is traversed by every full collection); it is cut
        # back to the newest ``window`` ids whenever it doubles: O(1) per event.
        self._seen = dict.fromkeys(list(self._seen)[-self._window :])

    def _error(self, reason: str, frame: Frame, data: bytes | None = None) -> StreamDecodeError:
        return StreamDecodeError(
            reason,
            frame=data if data is not None else frame.data,
            event_id=frame.id or None,
            last_event_id=self.last_event_id,
        )

    def _frame(self, frame: Frame) -> Event | None:
        name, data, fid, retry = frame
        if retry is not None:
            self.retry_ms = retry
        if not data or name in _KEEPALIVE_EVENTS:
            self.heartbeats += 1
            if fid is not None and name not in _KEEPALIVE_EVENTS:
                self.last_event_id = fid or None
            return None
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            obj = self._loads(data)
        except ValueError as exc:  # orjson's and json's errors (and UnicodeDecodeError)
            bad_utf8 = isinstance(exc, UnicodeDecodeError) or "utf-8" in str(exc).lower()
            reason = "invalid UTF-8" if bad_utf8 else "invalid JSON"
            raise self._error(f"{reason} in SSE data", frame) from exc
        if obj.__class__ is not dict:
            if name == "error":
                raise error_from_envelope({"error": obj})
            raise self._error(f"SSE data is not a JSON object (got {type(obj).__name__})", frame)
        kind = obj.get("type")
        if name == "error" or kind == "error":
            raise error_from_envelope(obj)
        known = len(obj) if self._lazy_raw else -1
        try:
            # Complete objects go straight to their hook; the general entry point
            # also completes objects without id/type from the SSE lines.
            hook = EVENT_HOOKS.get(kind) if kind.__class__ is str and "id" in obj else None
            ev = hook(obj) if hook is not None else structure_event(obj, fid or None, name)
        except ShapeError as exc:
            raise self._error(
                f"malformed {obj.get('type') or name or 'event'}: {exc}", frame
            ) from exc
        if len(obj) == known:  # not completed from the SSE lines: the bytes say it all
            _SET_RAW(ev, data)  # (lazy raw: events kept for long hold bytes, not dicts)
        cls = type(ev)
        if cls is EventDelta or cls is EventStart:
            return ev
        ident = ev.id
        if ident is not None:
            seen = self._seen
            if ident in seen:
                self.duplicates += 1
                return None
            seen[ident] = None
            if len(seen) > 2 * self._window:
                self._trim_seen()
        if fid is not None:
            self.last_event_id = fid or None
        elif ident is not None:
            self.last_event_id = ident
        self.events += 1
        return ev


# --------------------------------------------------------------------------- live text


class _Segment:
    __slots__ = ("final", "key", "text")

    def __init__(self, key: str | None, text: str, final: bool) -> None:
        self.key = key
        self.text = text
        self.final = final


MESSAGE_SEPARATOR = "\n\n"


class _Track:
    """Segments of one kind of text (reply or thinking), indexed for O(1) updates."""

    __slots__ = ("_cache", "_cached_version", "by_key", "open", "segments", "version")

    def __init__(self) -> None:
        self.segments: list[_Segment] = []
        self.by_key: dict[str, _Segment] = {}
        self.open: deque[_Segment] = deque()  # previews not yet final, oldest first
        self.version = 0
        self._cache = ""
        self._cached_version = 0

    @property
    def text(self) -> str:
        if self._cached_version != self.version:
            self._cache = MESSAGE_SEPARATOR.join(s.text for s in self.segments if s.text)
            self._cached_version = self.version
        return self._cache

    def get(self, key: str | None) -> _Segment | None:
        return None if key is None else self.by_key.get(key)

    def preview(self, key: str | None) -> _Segment:
        seg = self.get(key)
        if seg is None:
            seg = _Segment(key, "", False)
            self.segments.append(seg)
            self.open.append(seg)
            if key is not None:
                self.by_key[key] = seg
        return seg

    def append(self, seg: _Segment, text: str) -> bool:
        if seg.final or not text:
            return False
        seg.text += text
        self.version += 1
        return True

    def final(self, key: str | None, text: str) -> bool:
        seg = self.get(key)
        if seg is None:
            # The incremental dialect keys previews by message_id, not the event id:
            # the final message completes the oldest preview still open.
            while self.open and self.open[0].final:
                self.open.popleft()
            seg = self.open[0] if self.open else None
        if seg is None:
            seg = _Segment(key, text, True)
            self.segments.append(seg)
            changed = bool(text)
        else:
            changed = seg.text != text
            if seg.key is not None and self.by_key.get(seg.key) is seg:
                del self.by_key[seg.key]
            seg.key, seg.text, seg.final = key, text, True
        if key is not None:
            self.by_key[key] = seg
        if changed:
            self.version += 1
        return changed

    def drop_previews(self) -> bool:
        if not self.open:
            return False
        dropped = any(not s.final and s.text for s in self.open)
        self.segments = [s for s in self.segments if s.final]
        self.by_key = {s.key: s for s in self.segments if s.key is not None}
        self.open.clear()
        if dropped:
            self.version += 1
        return dropped


class LiveText:
    """The text of a turn so far, folded from previews of both dialects and final messages.

    ``text`` is the final ``agent.message`` texts (main thread only) joined by a
    blank line, with in-progress previews in place; ``thinking`` likewise for
    thinking. Rules: a buffered ``agent.message`` replaces the preview with its
    id (or, in the incremental dialect, the oldest unmatched one); a
    ``span.model_request_end`` or a reconnect drops previews still open.
    Every update is O(1); ``text`` is rebuilt only when it changed.
    """

    __slots__ = ("_reply", "_thinking")

    def __init__(self) -> None:
        self._reply = _Track()
        self._thinking = _Track()

    @property
    def version(self) -> int:
        """Increases whenever ``text`` changes."""
        return self._reply.version

    @property
    def text(self) -> str:
        """The reply so far."""
        return self._reply.text

    @property
    def thinking(self) -> str:
        """The thinking so far."""
        return self._thinking.text

    def drop_previews(self) -> bool:
        """Forget previews that will not be completed (a reconnect or an aborted request).

        Returns True when ``text`` changed.
        """
        self._thinking.drop_previews()
        return self._reply.drop_previews()

    def feed(self, ev: Event) -> bool:
        """Fold one event; returns True when ``text`` changed."""
        if ev.session_thread_id is not None:
            return False
        if type(ev) is AgentMessage:
            return self._reply.final(ev.id, ev.text)
        if type(ev) is EventDelta:
            if self._thinking.get(ev.event_id) is not None:
                return False
            return self._reply.append(self._reply.preview(ev.event_id), ev.text)
        if type(ev) is EventStart:
            if ev.event_type == "agent.thinking":
                self._thinking.preview(ev.event_id)
            elif ev.event_type in (None, "agent.message"):
                self._reply.preview(ev.event_id)
            return False
        if type(ev) is AgentContentBlockDelta:
            if ev.delta_type == "thinking_delta":
                self._thinking.append(self._thinking.preview(ev.message_id), ev.text)
                return False
            if ev.delta_type not in (None, "text_delta"):
                return False
            return self._reply.append(self._reply.preview(ev.message_id), ev.text)
        if type(ev) is AgentThinking:
            self._thinking.final(ev.id, ev.text)
            return False
        if type(ev) is SpanModelRequestEnd:
            return self.drop_previews()
        return False


def text_delta(emitted: str, current: str) -> str:
    """What to append to ``emitted`` to reach ``current``.

    When ``current`` does not extend ``emitted`` (a preview was dropped or
    corrected) the part of ``current`` after their common prefix is returned.
    """
    if current.startswith(emitted):
        return current[len(emitted) :]
    n = 0
    for a, b in zip(emitted, current, strict=False):
        if a != b:
            break
        n += 1
    return current[n:]
