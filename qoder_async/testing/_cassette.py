"""Cassettes: the file format, reading one, and answering from it (``FakeQoderServer(cassette=)``).

A cassette is JSON Lines: one JSON object per line. The first line is the
header, ``{"version": 1, "format": "qoder-async cassette", ...}``; every other
line has a ``"type"``:

``http``
    One request and its answer: ``seq`` (the order requests started and
    frames arrived in, one counter for the whole cassette), ``method``,
    ``path`` (after the base URL; ``url`` for another origin), ``query``
    (``[name, value]`` pairs), ``request`` (``headers`` and ``json`` /
    ``text`` / ``body``), then ``status`` and ``response`` (``headers`` that
    matter and ``json`` / ``text`` / ``body``), or ``error`` when no answer
    came. A ``body`` is ``{"size", "sha256"}`` (plus ``base64`` when recorded
    with ``bodies=True``).
``stream``
    An SSE connection opened: ``seq``, ``stream`` (its number), ``path``,
    ``query``, ``request`` headers (``Last-Event-ID``), ``status`` and
    ``response`` headers.
``frame``
    An SSE frame that connection received: ``stream``, ``seq``, ``t`` (seconds
    since the connection was opened) and the frame's fields as sent (``id``,
    ``event``, ``data``, ``retry``, ``comment``).
``end``
    The connection ended: ``stream``, ``t``, ``how`` (``eof``, ``closed`` by the
    client, ``cancelled``, ``error``), ``partial`` (a frame was cut off) and, for
    an answer that was not a stream, its ``response`` body.

Readers ignore types and fields they do not know; the version changes only
when a reader of the old version would misread a new file. Rules of replay:

============================================  =========================================
situation                                     what the fake answers
============================================  =========================================
a request (not a stream)                      the first recorded answer not yet given of
                                              the same method and path whose JSON body is
                                              equal (``Idempotency-Key`` and non-JSON
                                              bodies, e.g. a multipart boundary, are not
                                              compared)
a GET asked more often than recorded          the last recorded answer again
no such answer                                501 (``x-should-retry: false``) naming the
                                              request and the closest recorded one
a stream of a recorded path                   the frames recorded for that path (every
                                              connection's, each event once, in arrival
                                              order) from ``Last-Event-ID``, at ``speed``
                                              x the recorded pace; heartbeats are the
                                              fake's own; ``faults=`` apply on top
a frame recorded after a write (not GET) to   sent only once that write was answered
its session started                           (events never run ahead of their cause)
``Last-Event-ID`` an id the recording         resumes where the recorded connection that
resumed from but never received (the id of    sent it resumed
the ``user.message`` a send returned)
a link to another origin (a download URL)     rewritten to the fake (``ORIGIN_PATH``),
in a recorded answer, when the cassette       which answers as that origin did: a
holds the request to it                       replay never leaves 127.0.0.1
a line cut off at the end of the file (the    ignored: everything before it is read
recorder was killed mid-write)
another version, a bad line elsewhere         ``ValueError`` naming the file and line
============================================  =========================================
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from ._faults import Dialect
from ._state import SessionState, StoredEvent
from ._wire import ApiError, Ids, dumps, json_response

__all__ = [
    "FORMAT",
    "ORIGIN_PATH",
    "REDACTED",
    "VERSION",
    "Cassette",
    "Replay",
    "load_cassette",
    "sse_bytes",
]

VERSION = 1
FORMAT = "qoder-async cassette"
REDACTED = "<redacted>"
#: Where a replay serves what another origin (a download link) answered.
ORIGIN_PATH = "/_cassette_origin"

#: Response headers a replay sends back (the others are the fake's own).
REPLAYED_HEADERS = (
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "idempotent-replayed",
    "content-disposition",
    "x-request-id",
)
_PREVIEWS = ("event_start", "event_delta")
_SESSION = re.compile(r"^/sessions/([^/]+)")


def sse_bytes(frame: Mapping[str, Any]) -> bytes:
    """The wire form of a recorded frame (its ``id``/``event``/``retry``/``data`` lines)."""
    lines: list[str] = []
    if frame.get("comment") is not None:
        lines.extend(f":{c}" for c in str(frame["comment"]).split("\n"))
    for name in ("id", "event", "retry"):
        if frame.get(name) is not None:
            lines.append(f"{name}: {frame[name]}")
    if frame.get("data") is not None:
        lines.extend(f"data: {d}" for d in str(frame["data"]).split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


@attrs.define
class Cassette:
    """A cassette read by :func:`load_cassette`: its header and records, in file order."""

    path: str
    header: dict[str, Any]
    records: list[dict[str, Any]]
    truncated: bool = False


def load_cassette(path: str | os.PathLike[str]) -> Cassette:
    """Read a cassette; ``ValueError`` naming the file and line when it is not one.

    A last line without its newline that is not valid JSON (the recorder was
    killed mid-write) is ignored: ``truncated`` says so.
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    truncated = False
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
            truncated = True
    if not lines:
        raise ValueError(f"{name} is empty: not a qoder-async cassette")
    objects: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{name}:{number}: not a JSON object ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{name}:{number}: not a JSON object")
        objects.append(obj)
    header = objects[0]
    if "version" not in header:
        raise ValueError(
            f"{name}:1: not a qoder-async cassette (the first line has no 'version' field)"
        )
    if header["version"] != VERSION:
        raise ValueError(
            f"{name}: cassette version {header['version']!r} is not supported "
            f"(this qoder-async reads version {VERSION}); record it again"
        )
    for number, obj in enumerate(objects[1:], 2):
        if not isinstance(obj.get("type"), str):
            raise ValueError(f"{name}:{number}: a record without a 'type'")
    return Cassette(name, header, objects[1:], truncated)


# --------------------------------------------------------------------------- replay


@attrs.define(eq=False)
class _RecordedEvent(StoredEvent):
    """A stored event replayed byte for byte, whatever the dialect."""

    raw: bytes = b""

    def frame(self, dialect: Dialect) -> bytes:
        """The frame as recorded."""
        return self.raw


@attrs.define(eq=False)
class _Planned:
    """One frame of a stream path's replayed log."""

    frame: dict[str, Any]
    delay: float
    gate: tuple[int, ...]  # seqs of the writes it waits for
    preview: tuple[str, str] | None  # (event id, kind) of a preview


@attrs.define(eq=False)
class _Answer:
    record: dict[str, Any]
    served: asyncio.Event | None = None
    given: bool = False


def _session_of(path: str) -> str | None:
    m = _SESSION.match(path)
    return m.group(1) if m else None


def _body_key(part: Mapping[str, Any] | None) -> Any:
    """What a request body is compared by: its JSON, or nothing (``None``)."""
    if not part or "json" not in part:
        return None
    return json.dumps(part["json"], sort_keys=True)


def _matches(answer: _Answer, key: str | None) -> bool:
    """Whether a recorded request's body matches ``key`` (``None``: nothing to compare)."""
    recorded = _body_key(answer.record.get("request"))
    return key is None or recorded is None or recorded == key


def _describe(method: str, path: str, body: Any) -> str:
    text = f"{method} {path}"
    if body is not None:
        text += f" {body if len(body) <= 300 else body[:300] + '...'}"
    return text


class Replay:
    """Answers requests from a cassette (see the module table); one per fake server."""

    def __init__(self, cassette: Cassette, *, speed: float, ids: Ids) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed!r}")
        self.cassette = cassette
        self.speed = speed
        self._ids = ids
        self._answers: dict[tuple[str, str], list[_Answer]] = {}
        self._origins: dict[str, list[_Answer]] = {}  # another origin's URL -> its answers
        self._writes: dict[int, _Answer] = {}
        self._plans: dict[str, list[_Planned]] = {}
        self._anchors: dict[str, dict[str, tuple[int, int]]] = {}
        self._states: dict[str, SessionState] = {}
        self.feeders: dict[str, asyncio.Task[None]] = {}
        self._plan(cassette.records)

    # -- reading the records

    def _plan(self, records: list[dict[str, Any]]) -> None:
        writes: dict[str, list[int]] = {}  # session -> seqs of its answered writes
        for rec in records:
            if rec["type"] != "http" or "status" not in rec:
                continue
            if "path" not in rec:
                if isinstance(rec.get("url"), str):
                    self._origins.setdefault(rec["url"], []).append(_Answer(rec))
                continue
            answer = _Answer(rec)
            method, path = str(rec.get("method", "GET")).upper(), str(rec["path"])
            self._answers.setdefault((method, path), []).append(answer)
            session = _session_of(path)
            if method != "GET" and session is not None and isinstance(rec.get("seq"), int):
                answer.served = asyncio.Event()
                self._writes[rec["seq"]] = answer
                writes.setdefault(session, []).append(rec["seq"])
        paths: dict[int, str] = {}
        last_t: dict[int, float] = {}
        seen: dict[str, set[str]] = {}
        waited: dict[str, int] = {}
        size: dict[str, tuple[int, int]] = {}  # path -> (feed length, log length) planned
        kinds: dict[str, str] = {}
        for rec in records:
            kind = rec["type"]
            answered = isinstance(rec.get("status"), int) and rec["status"] < 300
            if kind == "stream" and answered and "path" in rec:
                path = str(rec["path"])
                paths[rec["stream"]] = path
                last_t[rec["stream"]] = 0.0
                self._plans.setdefault(path, [])
                anchors = self._anchors.setdefault(path, {})
                cursor = _header(rec.get("request"), "last-event-id")
                if cursor and cursor not in anchors:
                    anchors[cursor] = size.get(path, (0, 0))
            elif kind == "frame" and rec.get("stream") in paths:
                path = paths[rec["stream"]]
                t = float(rec.get("t", 0.0))
                delay = max(0.0, t - last_t[rec["stream"]])
                last_t[rec["stream"]] = t
                planned = self._planned(rec, path, delay, writes, seen, waited, kinds)
                if planned is None:
                    continue
                self._plans[path].append(planned)
                feed, log = size.get(path, (0, 0))
                anchors = self._anchors[path]
                if planned.preview is None:
                    # resuming from a stored event starts right after it
                    anchors.setdefault(str(rec["id"]), (feed + 1, log + 1))
                    size[path] = (feed + 1, log + 1)
                else:
                    anchors.setdefault(planned.preview[0], (feed, log))
                    size[path] = (feed + 1, log)

    def _planned(
        self,
        rec: dict[str, Any],
        path: str,
        delay: float,
        writes: dict[str, list[int]],
        seen: dict[str, set[str]],
        waited: dict[str, int],
        kinds: dict[str, str],
    ) -> _Planned | None:
        if rec.get("data") is None:
            return None  # a comment (heartbeat) or a bare retry: the fake sends its own
        event = rec.get("event")
        data = _json_or_none(rec["data"])
        preview: tuple[str, str] | None = None
        if event in _PREVIEWS or (isinstance(data, dict) and data.get("type") in _PREVIEWS):
            if not isinstance(data, dict):
                return None
            if data.get("type") == "event_start" and isinstance(data.get("event"), dict):
                event_id = str(data["event"].get("id", ""))
                kinds[event_id] = str(data["event"].get("type", "agent.message"))
            else:
                event_id = str(data.get("event_id", rec.get("id") or ""))
            preview = (event_id, kinds.get(event_id, "agent.message"))
            if event_id in seen.setdefault(path, set()):
                return None  # its event is already in the log
        else:
            if rec.get("id") is None:
                return None  # no id: it could not be resumed from
            if str(rec["id"]) in seen.setdefault(path, set()):
                return None  # a duplicate (a resumed connection re-sent it)
            seen[path].add(str(rec["id"]))
        session = _session_of(path)
        gate: tuple[int, ...] = ()
        seq = rec.get("seq")
        if session is not None and isinstance(seq, int):
            before = [s for s in writes.get(session, []) if s < seq]
            done = waited.get(path, 0)
            gate = tuple(before[done:])
            waited[path] = max(done, len(before))
        return _Planned(rec, delay, gate, preview)

    # -- answering

    def answer(
        self, method: str, path: str, body: bytes, content_type: str, origin: str
    ) -> web.Response:
        """The recorded answer to a request (not a stream), or the 501.

        ``origin`` is this fake's ``scheme://host:port``: links to another origin
        the cassette holds are rewritten to it.
        """
        key = None
        if "json" in content_type and body:
            try:
                key = json.dumps(json.loads(body), sort_keys=True)
            except ValueError:
                key = None
        queue = self._answers.get((method, path), [])
        chosen = _pick(queue, method, key)
        if chosen is None:
            return self._not_recorded(method, path, key)
        if chosen.served is not None:
            chosen.served.set()
        return _response(chosen.record, lambda url: self._link(url, origin))

    def answer_origin(self, index: str, method: str) -> web.Response:
        """What another origin answered (``ORIGIN_PATH/<index>``), or the 501."""
        urls = list(self._origins)
        url = urls[int(index)] if index.isdigit() and int(index) < len(urls) else None
        chosen = _pick(self._origins[url], method, None) if url is not None else None
        if chosen is None:
            return self._not_recorded(method, f"{ORIGIN_PATH}/{index}", None)
        return _response(chosen.record, lambda url: url)

    def _link(self, url: str, origin: str) -> str:
        """``url`` pointing at this fake when the cassette holds what its origin answered."""
        parts = urlsplit(url)
        bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        if bare not in self._origins:
            return url
        return f"{origin}{ORIGIN_PATH}/{list(self._origins).index(bare)}"

    def _not_recorded(self, method: str, path: str, key: str | None) -> web.Response:
        wanted = _describe(method, path, key)
        # The closest: the next answer expected on the same route, else the most alike.
        best: tuple[Any, ...] | None = None
        for (m, p), queue in self._answers.items():
            for position, a in enumerate(queue):
                text = _describe(m, p, _body_key(a.record.get("request")))
                next_one = (m, p) == (method, path) and not a.given
                rank = (
                    next_one,
                    -position if next_one else 0,
                    (m, p) == (method, path),
                    difflib.SequenceMatcher(None, wanted, text).ratio(),
                    text,
                )
                best = rank if best is None or rank[:4] > best[:4] else best
        hint = f"closest recorded: {best[4]}" if best else "it holds no request at all"
        message = f"the cassette {self.cassette.path} holds no answer for {wanted}; {hint}"
        return _error_501(message)

    def is_stream(self, path: str) -> bool:
        """Whether ``path`` is a stream the cassette holds frames for."""
        return path in self._plans

    def state(self, path: str) -> SessionState:
        """The replayed log of a stream path (its feeder starts with the first connection)."""
        state = self._states.get(path)
        if state is None:
            session = _session_of(path) or path
            resource = {"id": session, "usage": {}, "metadata": {}}
            state = self._states[path] = SessionState(self._ids, resource)
            # Every resume point is known from the start: a client may resume from an
            # event the feeder has not reached yet (its position is fixed all the same).
            state.preview_start.update(self._anchors.get(path, {}))
        return state

    def states(self) -> list[SessionState]:
        """Every replayed log opened so far."""
        return list(self._states.values())

    async def feed(self, path: str) -> None:
        """Append the planned frames of ``path`` to its log, paced and gated."""
        state = self.state(path)
        for planned in self._plans.get(path, []):
            for seq in planned.gate:
                served = self._writes[seq].served
                assert served is not None
                await served.wait()
            if self.speed > 0 and planned.delay > 0:
                await asyncio.sleep(planned.delay / self.speed)
            raw = sse_bytes({k: planned.frame.get(k) for k in ("id", "event", "retry", "data")})
            if planned.preview is not None:
                state.publish_preview(planned.preview[0], planned.preview[1], raw)
                continue
            data = _json_or_none(planned.frame["data"])
            event = dict(data) if isinstance(data, dict) else {}
            event.setdefault("id", planned.frame["id"])
            event.setdefault("type", planned.frame.get("event") or "message")
            stored = _RecordedEvent(event, len(state.log), len(state.feed), raw=raw)
            state.log.append(stored)
            state.by_id[str(planned.frame["id"])] = stored
            state.feed.append(stored)
            state.notify()


def _header(part: Any, name: str) -> str | None:
    if not isinstance(part, dict) or not isinstance(part.get("headers"), dict):
        return None
    for key, value in part["headers"].items():
        if key.lower() == name:
            return str(value)
    return None


def _json_or_none(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _pick(queue: list[_Answer], method: str, key: str | None) -> _Answer | None:
    """The first answer not given yet whose body matches; for a GET, else the last one."""
    chosen = next((a for a in queue if not a.given and _matches(a, key)), None)
    if chosen is None and method == "GET":
        chosen = next((a for a in reversed(queue) if a.given), None)
    if chosen is not None:
        chosen.given = True
    return chosen


def _error_501(message: str) -> web.Response:
    envelope = ApiError(501, "api_error", message).body()
    return json_response(501, envelope, {"x-should-retry": "false"})


def _links(value: Any, link: Callable[[str], str]) -> Any:
    """``value`` with every string that is an http(s) URL passed through ``link``."""
    if isinstance(value, str):
        return link(value) if value.startswith(("http://", "https://")) else value
    if isinstance(value, dict):
        return {k: _links(v, link) for k, v in value.items()}
    if isinstance(value, list):
        return [_links(v, link) for v in value]
    return value


def _response(rec: dict[str, Any], link: Callable[[str], str]) -> web.Response:
    part = rec.get("response") if isinstance(rec.get("response"), dict) else {}
    assert isinstance(part, dict)
    headers = {
        k: str(v) for k, v in (part.get("headers") or {}).items() if k.lower() in REPLAYED_HEADERS
    }
    status = int(rec["status"])
    if "json" in part:
        headers.setdefault("content-type", "application/json")
        data = dumps(_links(part["json"], link)).encode()
        return web.Response(status=status, body=data, headers=headers)
    if "text" in part:
        return web.Response(status=status, body=str(part["text"]).encode(), headers=headers)
    body = part.get("body")
    if isinstance(body, dict) and "base64" in body:
        return web.Response(status=status, body=base64.b64decode(body["base64"]), headers=headers)
    if isinstance(body, dict):
        where = rec.get("path") or rec.get("url")
        return _error_501(
            f"the cassette holds only the size and hash of the answer to {rec.get('method')} "
            f"{where}: record it with record(..., bodies=True)"
        )
    return web.Response(status=status, headers=headers)
