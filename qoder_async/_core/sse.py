"""CORE (sans-I/O): SSE bytes -> frames -> typed events.

Nothing here does I/O or imports an HTTP or async library; the shell feeds
bytes in and gets events out, so every rule below is tested exhaustively.
Which events are new (dedupe, replays from before the cursor) and where the
cursor is are decided by the stream machine (``_core/machine.py``), not here.

Rules this module keeps (qoder-api.md §4, §6):

=====================================  ============================================
input                                  effect
=====================================  ============================================
bytes split anywhere, CR/LF/CRLF       the same frames (a BOM at the start is dropped)
a line or frame > ``max_event_bytes``  :class:`FrameTooLargeError`; memory stays bounded
``: comment``, ``event: heartbeat``,   liveness only (``keepalives`` += 1), no event
``event: ping``, frames without data
``data: [DONE]``                       ``done`` set; nothing after it is read
``event: error`` / ``{"type":"error"}``  the typed API error is raised
invalid UTF-8 / JSON / not an object   :class:`StreamDecodeError` naming the frame
a frame with ``data``                  its typed event (``id``/``type`` taken from the
                                       frame's ``id:``/``event:`` lines when the JSON
                                       lacks them); ``retry:`` is kept in ``retry_ms``
``id:`` containing NUL                 ignored (SSE spec)
a bad frame after good ones            the good ones are returned first; the error is
                                       raised by the next call (nothing received is lost);
                                       :meth:`EventDecoder.decode` yields them, then
                                       stops with the error in ``error``
a new connection (:meth:`reconnected`)  a frame cut by the drop is discarded
=====================================  ============================================

``processed_at`` values are compared with :func:`time_key`, which orders RFC 3339
timestamps of any precision and offset (a plain string comparison does not:
``…48.8888517Z`` sorts after ``…48.888851795Z``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

from qoder_async._core.convert import EVENT_HOOKS, ShapeError, structure_event
from qoder_async._core.errors import (
    APIStatusError,
    FrameTooLargeError,
    StreamDecodeError,
    error_from_envelope,
)
from qoder_async._core.models import (
    BaseEvent,
    Event,
    PreviewDelta,
    PreviewStart,
    json_dumps,
    json_loads,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "PREVIEW_CLASSES",
    "EventDecoder",
    "Frame",
    "SSEDecoder",
    "json_dumps",
    "json_loads",
    "time_key",
]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
PREVIEW_CLASSES: frozenset[type] = frozenset({PreviewStart, PreviewDelta})
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
# The head of a frame as servers usually lay it out (id, event, then one data line);
# one space after each colon is optional (SSE). The data line itself is found with
# bytes.find (memchr): a regex walks kilobytes of JSON a byte at a time.
_USUAL_HEAD = re.compile(rb"id: ?([^\n]*)\nevent: ?([^\n]*)\ndata: ?")
_LF = 10
# The same, exactly as servers write it: a run of these is cut up in one C call.
_USUAL_FRAMES = re.compile(rb"id: ([^\n]*)\nevent: ([^\n]*)\ndata: ([^\n]*)\n\n")
_USUAL_OVERHEAD = len(b"id: \nevent: \ndata: \n\n")
_SMALL_FRAME = 1024  # bytes; a regex walks data ~10x slower than memchr: larger go one by one


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
            first = chunk.find(b"\n\n")
            if first >= 0:
                chunk = self._fast_feed(chunk, frames, first)
            self._line_feed(chunk, frames)
        except StreamDecodeError as exc:
            self._reset_frame()
            return self._fail(exc, frames)
        return frames

    def _fast_feed(self, chunk: bytes, frames: list[Frame], first: int) -> bytes:
        """Decode the whole frames of ``chunk``; returns what follows the last one.

        ``first`` is where the first frame ends. When every frame is laid out
        exactly as servers send them (``id: ``, ``event: ``, one ``data: ``
        line) and is not large, they are cut up by one ``findall``; the lengths
        of the pieces adding up to the length of the frames proves nothing else
        was in between. Otherwise frames of that layout (one space after each
        colon optional) are cut out one by one in place: a regex on the head,
        ``find`` (memchr) for the end of the data line, which beats a regex on
        kilobytes of data. Anything else (comments, other orders, multi-line
        data, retry) goes line by line, one block at a time. No frame may be in
        progress.
        """
        end = chunk.rfind(b"\n\n") + 2
        # Not when a frame may be too large or an id holds a NUL (both take the checks below).
        if first < _SMALL_FRAME and end <= self._max and b"\x00" not in chunk:
            usual = _USUAL_FRAMES.findall(chunk, 0, end)
            if sum(map(len, chain.from_iterable(usual))) + _USUAL_OVERHEAD * len(usual) == end:
                names = _EVENT_NAMES
                append = frames.append
                for raw_id, raw_event, data in usual:
                    try:
                        ident = raw_id.decode()
                    except UnicodeDecodeError:
                        ident = _text(raw_id, "id")  # raises the typed decode error
                    event = names.get(raw_event) or _event_name(raw_event)
                    append(_new_frame(Frame, (event, data, ident, None)))
                return chunk[end:]
        limit = self._max
        head = _USUAL_HEAD.match
        find = chunk.find
        size = len(chunk)
        pos = 0
        while True:
            found = head(chunk, pos)
            if found is not None:
                start = found.end()
                end = find(b"\n", start)
                if end < 0 or end + 1 == size:
                    break  # the frame is not complete yet
                if chunk[end + 1] == _LF and end - pos <= limit:
                    raw_id, raw_event = found.groups()
                    try:
                        ident = None if b"\x00" in raw_id else raw_id.decode()
                    except UnicodeDecodeError:
                        ident = _text(raw_id, "id")  # raises the typed decode error
                    event = _EVENT_NAMES.get(raw_event) or _event_name(raw_event)
                    frames.append(_new_frame(Frame, (event, chunk[start:end], ident, None)))
                    pos = end + 2
                    continue
            end = find(b"\n\n", pos)
            if end < 0:
                break
            if end > pos:
                lines = chunk[pos:end].split(b"\n")
                lines.append(b"")
                self._lines(lines, frames)
            pos = end + 2
        return chunk[pos:] if pos else chunk

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
    """Frames -> typed events, across the connections of one logical stream.

    :meth:`feed` decodes a chunk of the response body into the events it
    completes. Read ``retry_ms`` (the server's ``retry:``), ``keepalives`` and
    ``done``. Call :meth:`reconnected` when a new connection starts, so a frame
    cut by the drop is discarded. With ``lazy_raw`` events keep their frame's
    bytes as ``raw`` (parsed again on first access): cheaper to keep many
    events, dearer to read ``raw`` of each.
    """

    __slots__ = (
        "_comments",
        "_hooks",
        "_lazy_raw",
        "_loads",
        "_max",
        "_sse",
        "done",
        "error",
        "events",
        "heartbeats",
        "retry_ms",
    )

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        loads: Callable[[bytes], Any] = json_loads,
        lazy_raw: bool = False,
    ) -> None:
        self._loads = loads
        self._lazy_raw = lazy_raw
        self._hooks = EVENT_HOOKS
        self.error: StreamDecodeError | APIStatusError | None = None
        self._max = max_event_bytes
        self._sse = SSEDecoder(max_event_bytes)
        self.retry_ms: int | None = None
        self.heartbeats = 0
        self._comments = 0
        self.events = 0
        self.done = False

    def reconnected(self) -> None:
        """A new connection begins: forget any half-received frame."""
        self._comments += self._sse.comments
        self._sse = SSEDecoder(self._max)
        self.error = None
        self.done = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode a chunk of the response body into the events it completes.

        Nothing already received is lost: when a frame is bad, the events before
        it are returned and the error is raised by the next call (it is kept in
        ``error`` meanwhile).
        """
        pending = self.error
        if pending is not None:
            raise pending
        out = list(self.decode(chunk))
        if not out and self.error is not None:
            error, self.error = self.error, None  # raised now: not kept for the next call
            raise error
        return out

    def decode(self, chunk: bytes) -> Iterator[Event]:
        """:meth:`feed`, one event at a time; an error ends the iteration, kept in ``error``.

        Each event is decoded when it is asked for: a consumer that is done with
        one event before asking for the next keeps the objects alive at any time
        to one event's, whatever the size of the chunk (a list of hundreds of
        live events kept the garbage collector traversing them).
        """
        if self.error is not None:
            return
        try:
            frames = self._sse.feed(chunk)
        except StreamDecodeError as exc:
            self.error = exc
            return
        loads, hooks, lazy = self._loads, self._hooks, self._lazy_raw
        try:
            # One frame per pass, inline: this loop runs for every event of a stream.
            for frame in frames:
                if self.done:
                    break
                name, data, fid, retry = frame
                if retry is not None:
                    self.retry_ms = retry
                if not data or name in _KEEPALIVE_EVENTS:
                    self.heartbeats += 1
                    continue
                if data == b"[DONE]":
                    self.done = True
                    continue
                try:
                    obj = loads(data)
                except ValueError as exc:  # orjson's and json's errors (and UnicodeDecodeError)
                    bad_utf8 = isinstance(exc, UnicodeDecodeError) or "utf-8" in str(exc).lower()
                    reason = "invalid UTF-8" if bad_utf8 else "invalid JSON"
                    raise self._error(f"{reason} in SSE data", frame) from exc
                if obj.__class__ is not dict:
                    if name == "error":
                        raise error_from_envelope({"error": obj})
                    raise self._error(
                        f"SSE data is not a JSON object (got {type(obj).__name__})", frame
                    )
                kind = obj.get("type")
                if name == "error" or kind == "error":
                    raise error_from_envelope(obj)
                known = len(obj) if lazy else -1
                try:
                    # Complete objects go straight to their hook; so do objects of older
                    # servers, which name their type only in the `event:` line, once
                    # completed here as ``structure_event`` would; anything else takes
                    # the general entry point.
                    if kind.__class__ is str:
                        hook = hooks.get(kind) if "id" in obj else None
                    elif kind is None and name in hooks:
                        obj["type"] = name
                        if fid and "id" not in obj:
                            obj["id"] = fid
                        hook = hooks[name]
                    else:
                        hook = None
                    ev = hook(obj) if hook is not None else structure_event(obj, fid or None, name)
                except ShapeError as exc:
                    raise self._error(
                        f"malformed {obj.get('type') or name or 'event'}: {exc}", frame
                    ) from exc
                if len(obj) == known:  # not completed from the SSE lines: the bytes say it all
                    _SET_RAW(ev, data)  # (lazy raw: events kept for long hold bytes, not dicts)
                self.events += 1
                yield ev
        except (StreamDecodeError, APIStatusError) as exc:
            self.error = exc
            return
        if self._sse.error is not None:
            self.error = self._sse.error

    @property
    def keepalives(self) -> int:
        """Keep-alives seen over all connections: comments, heartbeat/ping and empty frames."""
        return self.heartbeats + self._comments + self._sse.comments

    def _error(self, reason: str, frame: Frame) -> StreamDecodeError:
        return StreamDecodeError(reason, frame=frame.data, event_id=frame.id or None)


# --------------------------------------------------------------------------- time keys

# RFC 3339 as the API writes it: a date-time, optional fraction, "Z" or an offset.
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:?\d\d)?")
_SECONDS: dict[str, int] = {}


def time_key(value: object) -> tuple[int, int] | None:
    """An ordering key for a ``processed_at`` value: (Unix seconds, nanoseconds).

    ``None`` when the value is missing or not an RFC 3339 timestamp; such events
    are ordered by stream position only. Fractions of any length (Go's
    ``RFC3339Nano`` trims trailing zeros) and offsets are handled; a missing
    offset is read as UTC.
    """
    if value.__class__ is not str:
        return None
    found = _RFC3339.fullmatch(value)
    if found is None:
        return None
    date, clock, fraction, zone = found.groups()
    base = date + "T" + clock + ("+00:00" if zone in (None, "Z", "z") else zone)
    seconds = _SECONDS.get(base)
    if seconds is None:
        try:
            seconds = int(datetime.fromisoformat(base).timestamp())
        except ValueError:
            return None
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[base] = seconds
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return seconds, nanos
