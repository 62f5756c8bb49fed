"""Pre-rendered HTTP + SSE server imitating the Qoder events endpoints (benchmarks only).

Runs in its own process (``python -m benchmarks.server``), started and stopped by
the harness. It prints one JSON line ``{"port": P, "pid": ..., "impl": ...}`` on
stdout once it listens, then obeys JSON-line commands on stdin (``prepare``,
``stats``, ``reset``, ``finish_paced``), answering each with one JSON line; it
exits when stdin closes, so it never outlives the harness.

Endpoints (everything else is 404; a missing ``Authorization: Bearer`` is 401):

* ``POST /api/v1/cloud/sessions/{sid}/events`` -> 202
  ``{"data":[{"id":"evt_…","type":"user.message","session_id":sid,"turn_id":"turn_…",
  "content":[{"type":"text","text":"…"}],"processed_at":"…"}]}``. The body must
  contain ``"events"`` (else 400); it is not otherwise parsed.
* ``GET /api/v1/cloud/sessions/{sid}/events/stream`` -> ``text/event-stream``,
  chunked, **one HTTP chunk and one transport write per SSE frame**.

Behaviour is selected by the session id (the library API under test has no
query-parameter hook, so the id is the only knob every client can turn). Grammar,
fields separated by ``-``, an optional trailing ``-tag`` is ignored (use it to
give each contender its own session):

``sess_burst-{size}-{n}``
    ``n`` ``agent.message`` frames as fast as the socket takes them, then one
    ``session.status_idle`` (``stop_reason`` ``end_turn``) frame, then a
    ``: heartbeat`` comment every ``--heartbeat`` seconds (15 s) until the
    client hangs up.
``sess_turn-{size}-{n}``
    Each POST starts a turn (new ``turn_id``; turns come from a pre-rendered pool
    and wrap after ``pool`` turns). A stream opened with ``Last-Event-ID`` = the
    id the POST returned gets exactly that turn: ``n`` agent frames and the
    closing ``session.status_idle``, all with the POST's ``turn_id``. A stream
    opened without (or with an unknown) ``Last-Event-ID`` replays no history and
    receives every later turn live (the ``user.message`` echo, ``n`` agent
    frames, idle): this supports clients that subscribe before they send.
``sess_idle``
    One ``session.status_idle`` event, an immediate ``: heartbeat`` comment,
    then only heartbeats. The event exists because every high-level client
    swallows comments: it is the observable "stream is established" signal.
``sess_paced-{size}-{rate}-{count}``
    Up to ``count`` agent frames at ``rate`` frames/s on this connection (first
    frame at once), each JSON ending in ``"sent_at":<time.time() at write>``,
    then idle and heartbeats. The ``finish_paced`` command stops every paced
    connection early. The idle frame carries ``"sent_count": k`` (frames this
    connection got) so clients can verify their count. Frames are pre-rendered
    up to the ``sent_at`` float, which is formatted at send time.
anything else (e.g. ``sess_send``)
    POST answers a fixed pre-rendered 202; the stream endpoint is 404.

Sizes: ``tiny`` (~80 B frame: SSE ``id``/``event`` plus ``{"content":[{"type":
"text","text":"ok"}]}``, the older doc shape without ``id``/``type`` in the JSON;
60 B cannot hold a content block), ``small`` (the smallest full event: an 8-character
text), ``medium`` (~450 B) and ``large`` (~4 KiB), all three with ``id``, ``type``,
``session_id``, ``turn_id``, ``content``, ``processed_at``. A ``noturnid`` tag
(``sess_turn-medium-1000-noturnid``) leaves ``turn_id`` out of every event and
POST answer of a ``burst``/``turn`` session (a server without turn ids: turns
are then correlated by stream position). ``processed_at`` follows the render
order (1 us apart, never going back), as on the real API: a client may drop
what a connection replays from before its cursor, and a turn's events are never
older than its message.

Rendering happens at startup (``--prepare SID``) or on the ``prepare`` command;
an unprepared session is rendered on first use and counted in
``stats.lazy_renders`` so the harness can flag it.

Two implementations share the renderer: ``proto`` (raw ``asyncio.Protocol``
HTTP/1.1, the default, lowest overhead) and ``aiohttp`` (``aiohttp.web`` with
the same pre-encoded bytes), selectable with ``--impl`` to check which one is
the bottleneck. ``--reuse-port`` lets several processes share one port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

API_PREFIX = "/api/v1/cloud/sessions/"
HEARTBEAT = b": heartbeat\n\n"
SIZES = ("tiny", "small", "medium", "large")
FRAME_TARGET = {"small": 50, "medium": 450, "large": 4096}
TURN_POOL_MAX = 1024
SENT_AT_LEN = len(f"{time.time():.6f}")
FILLER = (
    "The agent reads the repository, explains what the function does, and proposes a "
    "small, well tested change that keeps the public API stable. "
) * 64


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------- render


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(eid: str, event: str, data: bytes) -> bytes:
    return b"id: " + eid.encode() + b"\nevent: " + event.encode() + b"\ndata: " + data + b"\n\n"


_EPOCH = 1_779_075_648  # 2026-05-18T03:40:48Z


def _processed_at(tick: int) -> str:
    """The ``tick``-th timestamp the server hands out: 1 us apart, never going back.

    Stamps follow the order frames are rendered in, so within a session (and
    across the turns of one) a later event is never older than an earlier one,
    as on the real API: clients may drop what is older than their cursor.
    """
    secs, micros = divmod(tick, 1_000_000)
    day = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(_EPOCH + secs))
    return f"{day}.{micros:06d}000Z"


class Renderer:
    """Builds SSE frames; ``chunked`` wraps each in its HTTP/1.1 chunk framing."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self._seq = 0x019E392C0D787CFAA21B0000
        self._tick = 0

    def stamp(self) -> str:
        """The next ``processed_at`` (monotonic over everything rendered)."""
        self._tick += 1
        return _processed_at(self._tick)

    def wrap(self, frame: bytes) -> bytes:
        if not self.chunked:
            return frame
        return b"%x\r\n" % len(frame) + frame + b"\r\n"

    def next_id(self) -> str:
        self._seq += 1
        return f"evt_{self._seq:032x}"

    def agent_json(self, size: str, sid: str, turn_id: str | None, eid: str, i: int) -> bytes:
        if size == "tiny":
            return b'{"content":[{"type":"text","text":"ok"}]}'
        obj: dict[str, Any] = {
            "id": eid,
            "type": "agent.message",
            "session_id": sid,
            "turn_id": turn_id,
            "content": [{"type": "text", "text": ""}],
            "processed_at": self.stamp(),
        }
        if turn_id is None:
            del obj["turn_id"]
        bare = len(_sse(eid, "agent.message", _dumps(obj)))
        text = f"[{i}] " + FILLER
        obj["content"][0]["text"] = text[: max(8, FRAME_TARGET[size] - bare)]
        return _dumps(obj)

    def agent_frame(self, size: str, sid: str, turn_id: str | None, i: int) -> bytes:
        if size == "tiny":
            self._seq += 1
            eid = f"evt_{self._seq & 0xFFFFFFF:x}"
        else:
            eid = self.next_id()
        return _sse(eid, "agent.message", self.agent_json(size, sid, turn_id, eid, i))

    def idle_frame(self, sid: str, turn_id: str | None) -> bytes:
        eid = self.next_id()
        obj = {
            "id": eid,
            "type": "session.status_idle",
            "session_id": sid,
            "turn_id": turn_id,
            "stop_reason": {"type": "end_turn"},
            "processed_at": self.stamp(),
        }
        if turn_id is None:
            del obj["turn_id"]
        return _sse(eid, "session.status_idle", _dumps(obj))

    def user_message(self, sid: str, turn_id: str | None) -> tuple[str, dict[str, Any]]:
        eid = self.next_id()
        obj = {
            "id": eid,
            "type": "user.message",
            "session_id": sid,
            "turn_id": turn_id,
            "content": [{"type": "text", "text": "Help me analyze this code."}],
            "processed_at": self.stamp(),
        }
        if turn_id is None:
            del obj["turn_id"]
        return eid, obj


def _http_post_response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nx-request-id: req_bench\r\n\r\n" % len(body)
    ) + body


# --------------------------------------------------------------------------- sessions


class Sink(Protocol):
    """One open SSE response, as seen by a session (implemented by both servers)."""

    def queue(self, frames: list[bytes]) -> None: ...
    def write_now(self, data: bytes) -> None: ...
    def call_at(self, when: float, cb: Callable[[], None]) -> None: ...
    def cancel_timers(self) -> None: ...
    def start_heartbeats(self) -> None: ...


@dataclass
class Stats:
    connections: int = 0
    streams_open: int = 0
    streams_total: int = 0
    posts: int = 0
    frames: int = 0
    lazy_renders: int = 0
    lazy_sids: list[str] = field(default_factory=list)
    paced_sent: int = 0
    paced_lag: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        lag = sorted(self.paced_lag)

        def pct(p: float) -> float | None:
            return lag[min(len(lag) - 1, int(p * len(lag)))] * 1000 if lag else None

        return {
            "pid": os.getpid(),
            "connections": self.connections,
            "streams_open": self.streams_open,
            "streams_total": self.streams_total,
            "posts": self.posts,
            "frames": self.frames,
            "lazy_renders": self.lazy_renders,
            "lazy_sids": self.lazy_sids[-10:],
            "paced_sent": self.paced_sent,
            "paced_lag_ms_p50": pct(0.5),
            "paced_lag_ms_p99": pct(0.99),
            "paced_lag_ms_max": lag[-1] * 1000 if lag else None,
            "ru_utime": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
            "ru_stime": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        }

    def reset(self) -> None:
        self.posts = self.frames = self.lazy_renders = self.paced_sent = 0
        self.lazy_sids.clear()
        self.paced_lag.clear()


class Session:
    """Pre-rendered behaviour of one session id."""

    post_response: bytes

    def post(self) -> bytes:
        return self.post_response

    def open(self, sink: Sink, last_event_id: str | None) -> None:
        raise LookupError("no stream for this session")

    def close(self, sink: Sink) -> None:
        return None

    def finish(self) -> int:
        return 0


class PostOnly(Session):
    def __init__(self, r: Renderer, sid: str) -> None:
        _, obj = r.user_message(sid, "turn_0000000000000000000000000a")
        self.post_response = _dumps({"data": [obj]})


class Burst(Session):
    def __init__(self, r: Renderer, sid: str, size: str, n: int, ids: bool = True) -> None:
        turn = "turn_01j9zb0000burst0000000000" if ids else None
        self.post_response = PostOnly(r, sid).post_response
        self.frames = [r.wrap(r.agent_frame(size, sid, turn, i)) for i in range(n)]
        self.frames.append(r.wrap(r.idle_frame(sid, turn)))

    def open(self, sink: Sink, last_event_id: str | None) -> None:
        sink.queue(self.frames)
        sink.start_heartbeats()


class Turns(Session):
    def __init__(self, r: Renderer, sid: str, size: str, n: int, ids: bool = True) -> None:
        pool = max(4, min(TURN_POOL_MAX, 200_000 // (n + 2)))
        self.posts: list[bytes] = []
        self.echo: list[bytes] = []
        self.frames: list[list[bytes]] = []
        self.by_id: dict[str, int] = {}
        for k in range(pool):
            turn = f"turn_{k:026x}" if ids else None
            eid, obj = r.user_message(sid, turn)
            self.by_id[eid] = k
            self.posts.append(_dumps({"data": [obj]}))
            self.echo.append(r.wrap(_sse(eid, "user.message", _dumps(obj))))
            agent = [r.wrap(r.agent_frame(size, sid, turn, i)) for i in range(n)]
            agent.append(r.wrap(r.idle_frame(sid, turn)))
            self.frames.append(agent)
        self.counter = 0
        self.subscribers: set[Sink] = set()

    def post(self) -> bytes:
        k = self.counter % len(self.posts)
        self.counter += 1
        if self.subscribers:
            live = [self.echo[k], *self.frames[k]]
            for sink in self.subscribers:
                sink.queue(live)
        return self.posts[k]

    def open(self, sink: Sink, last_event_id: str | None) -> None:
        k = self.by_id.get(last_event_id or "")
        if k is None:
            self.subscribers.add(sink)
        else:
            sink.queue(self.frames[k])
        sink.start_heartbeats()

    def close(self, sink: Sink) -> None:
        self.subscribers.discard(sink)


class Idle(Session):
    def __init__(self, r: Renderer, sid: str) -> None:
        self.post_response = PostOnly(r, sid).post_response
        self.first = [
            r.wrap(r.idle_frame(sid, "turn_000000000000000000000idle")),
            r.wrap(HEARTBEAT),
        ]

    def open(self, sink: Sink, last_event_id: str | None) -> None:
        sink.queue(self.first)
        sink.start_heartbeats()


class Paced(Session):
    """Paced frames per connection; ``finish()`` (control command) ends every run early."""

    def __init__(self, r: Renderer, sid: str, size: str, rate: float, count: int, st: Stats):
        if size == "tiny":
            raise ValueError("paced mode needs medium or large frames (tiny has no JSON id)")
        self.post_response = PostOnly(r, sid).post_response
        self.interval = 1.0 / rate
        self.count = count
        self.stats = st
        self.wrap = r.wrap
        turn = "turn_000000000000000000paced"
        self.prefixes: list[bytes] = []
        tail = b"}\n\n"
        for i in range(count):
            eid = r.next_id()
            body = r.agent_json(size, sid, turn, eid, i)
            head = _sse(eid, "agent.message", body[:-1] + b',"sent_at":')[:-2]  # drop "\n\n"
            flen = len(head) + SENT_AT_LEN + len(tail)
            chunk_head = b"%x\r\n" % flen if r.chunked else b""
            self.prefixes.append(chunk_head + head)
        self.suffix = tail + (b"\r\n" if r.chunked else b"")
        # The closing idle frame says how many agent frames this connection got,
        # so a client stopped early by ``finish`` can still verify its count.
        idle = r.idle_frame(sid, turn)
        self.idle_head = idle[: idle.rindex(b"}")] + b',"sent_count":'
        self.runs: dict[Sink, PacedRun] = {}

    def idle_frame(self, sent: int) -> bytes:
        return self.wrap(self.idle_head + b"%d}\n\n" % sent)

    def open(self, sink: Sink, last_event_id: str | None) -> None:
        run = self.runs[sink] = PacedRun(self, sink)
        run.tick()

    def close(self, sink: Sink) -> None:
        self.runs.pop(sink, None)

    def finish(self) -> int:
        runs = list(self.runs.values())
        for run in runs:
            run.finish()
        return len(runs)


class PacedRun:
    __slots__ = ("done", "i", "loop", "p", "sink", "t0")

    def __init__(self, p: Paced, sink: Sink) -> None:
        self.p = p
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.i = 0
        self.done = False

    def tick(self) -> None:
        p, i = self.p, self.i
        p.stats.paced_lag.append(self.loop.time() - (self.t0 + i * p.interval))
        self.sink.write_now(p.prefixes[i] + f"{time.time():.6f}".encode() + p.suffix)
        p.stats.paced_sent += 1
        self.i = i = i + 1
        if i < p.count:
            self.sink.call_at(self.t0 + i * p.interval, self.tick)
        else:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.sink.cancel_timers()
        self.sink.queue([self.p.idle_frame(self.i)])
        self.sink.start_heartbeats()
        self.p.runs.pop(self.sink, None)


class Store:
    def __init__(self, renderer: Renderer, stats: Stats) -> None:
        self.r = renderer
        self.stats = stats
        self.sessions: dict[str, Session] = {}

    def render(self, sid: str) -> Session:
        spec = sid.removeprefix("sess_").split("-")
        mode = spec[0]
        s: Session
        if mode in ("burst", "turn"):
            size, n = spec[1], int(spec[2])
            if size not in SIZES:
                raise ValueError(f"unknown size {size!r} in {sid!r}")
            ids = "noturnid" not in spec[3:]
            kind = Burst if mode == "burst" else Turns
            s = kind(self.r, sid, size, n, ids)
        elif mode == "idle":
            s = Idle(self.r, sid)
        elif mode == "paced":
            s = Paced(self.r, sid, spec[1], float(spec[2]), int(spec[3]), self.stats)
        else:
            s = PostOnly(self.r, sid)
        return s

    def prepare(self, sids: list[str]) -> None:
        for sid in sids:
            if sid not in self.sessions:
                self.sessions[sid] = self.render(sid)

    def finish_paced(self) -> int:
        return sum(s.finish() for s in self.sessions.values() if isinstance(s, Paced))

    def get(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            self.stats.lazy_renders += 1
            self.stats.lazy_sids.append(sid)
            s = self.sessions[sid] = self.render(sid)
        return s


# --------------------------------------------------------------------------- proto impl

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nx-request-id: req_bench\r\n\r\n"
)


def _error(status: int, reason: str, etype: str, message: str) -> bytes:
    body = _dumps({"type": "error", "error": {"type": etype, "message": message}})
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (status, reason.encode(), len(body))
    ) + body


def route(target: str) -> tuple[str, str]:
    """Return (sid, tail) where tail is ``events`` or ``events/stream`` (or other)."""
    path = target.split("?", 1)[0]
    if not path.startswith(API_PREFIX):
        return "", ""
    sid, _, tail = path[len(API_PREFIX) :].partition("/")
    return sid, tail


class ProtoConn(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive connection; becomes a one-way SSE pipe on GET."""

    def __init__(self, srv: ProtoServer) -> None:
        self.srv = srv
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.pending: deque[list[bytes]] = deque()
        self.idx = 0
        self.paused = False
        self.closed = False
        self.timers: list[asyncio.TimerHandle] = []
        self.hb: asyncio.TimerHandle | None = None

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.srv.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.hb is not None:
            self.hb.cancel()
        for t in self.timers:
            t.cancel()
        if self.session is not None:
            self.srv.stats.streams_open -= 1
            self.session.close(self)
        self.pending.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            return  # a streaming connection: ignore whatever the client sends
        self.buf += data
        t = self.transport
        assert t is not None
        while self.session is None and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    t.write(_error(431, "Too Large", "invalid_request_error", "headers"))
                    t.close()
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                t.write(_error(411, "Length Required", "invalid_request_error", "chunked"))
                t.close()
                return
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            self._handle(method, target, headers, body)
            if headers.get("connection", "").lower() == "close" and self.session is None:
                t.close()
                return

    # request handling -----------------------------------------------------
    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        t = self.transport
        assert t is not None
        sid, tail = route(target)
        if not sid:
            t.write(_error(404, "Not Found", "not_found_error", "no such route"))
            return
        if not headers.get("authorization", "").startswith("Bearer "):
            t.write(_error(401, "Unauthorized", "authentication_error", "missing bearer"))
            return
        store = self.srv.store
        if method == "POST" and tail == "events":
            if b'"events"' not in body:
                t.write(_error(400, "Bad Request", "invalid_request_error", "no events"))
                return
            self.srv.stats.posts += 1
            t.write(_http_post_response(store.get(sid).post()))
        elif method == "GET" and tail == "events/stream":
            session = store.get(sid)
            if isinstance(session, PostOnly):
                t.write(_error(404, "Not Found", "not_found_error", "no stream for " + sid))
                return
            self.session = session
            self.srv.stats.streams_open += 1
            self.srv.stats.streams_total += 1
            t.write(SSE_HEAD)
            session.open(self, headers.get("last-event-id"))
        else:
            t.write(_error(404, "Not Found", "not_found_error", "no such route"))

    # Sink -----------------------------------------------------------------
    def queue(self, frames: list[bytes]) -> None:
        self.pending.append(frames)
        if len(self.pending) == 1:
            self.idx = 0
        self._pump()

    def _pump(self) -> None:
        t = self.transport
        assert t is not None
        pending = self.pending
        if not pending or self.paused or self.closed:
            return
        write = t.write
        # TCP_CORK while writing a burst: still one send() per frame (one HTTP
        # chunk each), but the kernel packs full segments instead of pushing
        # each frame through loopback TCP on its own, which made this server
        # the bottleneck (~4x cheaper per frame). Uncorking flushes the rest.
        sock = t.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            self._pump_frames(write)
        finally:
            if not self.closed:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def _pump_frames(self, write: Callable[[bytes], None]) -> None:
        pending = self.pending
        while pending and not self.paused and not self.closed:
            frames = pending[0]
            i = start = self.idx
            n = len(frames)
            # One transport.write per frame, stopping as soon as the transport
            # asks us to pause (it calls pause_writing synchronously).
            while i < n and not self.paused:
                write(frames[i])
                i += 1
            self.srv.stats.frames += i - start
            if i < n:
                self.idx = i
                return
            pending.popleft()
            self.idx = 0

    def write_now(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    def call_at(self, when: float, cb: Callable[[], None]) -> None:
        if not self.closed:
            self.timers = [asyncio.get_running_loop().call_at(when, cb)]

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers = []

    def start_heartbeats(self) -> None:
        if self.hb is None and not self.closed:
            self.hb = asyncio.get_running_loop().call_later(self.srv.heartbeat, self._beat)

    def _beat(self) -> None:
        if self.closed:
            return
        if not self.pending:
            self.write_now(self.srv.hb_chunk)
        self.hb = asyncio.get_running_loop().call_later(self.srv.heartbeat, self._beat)


class ProtoServer:
    def __init__(self, store: Store, heartbeat: float) -> None:
        self.store = store
        self.stats = store.stats
        self.heartbeat = heartbeat
        self.hb_chunk = store.r.wrap(HEARTBEAT)

    async def start(self, host: str, port: int, reuse_port: bool) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: ProtoConn(self), host, port, backlog=8192, reuse_port=reuse_port
        )


# --------------------------------------------------------------------------- aiohttp impl


async def start_aiohttp(store: Store, heartbeat: float, host: str, port: int, reuse: bool) -> Any:
    from aiohttp import web

    stats = store.stats
    hb_frame = HEARTBEAT

    class AioSink:
        def __init__(self) -> None:
            self.q: asyncio.Queue[list[bytes]] = asyncio.Queue()
            self.beating = False
            self.timer: asyncio.TimerHandle | None = None

        def queue(self, frames: list[bytes]) -> None:
            self.q.put_nowait(frames)

        def write_now(self, data: bytes) -> None:
            self.q.put_nowait([data])

        def call_at(self, when: float, cb: Callable[[], None]) -> None:
            self.timer = asyncio.get_running_loop().call_at(when, cb)

        def cancel_timers(self) -> None:
            if self.timer is not None:
                self.timer.cancel()

        def start_heartbeats(self) -> None:
            self.beating = True

    def err(status: int, etype: str, msg: str) -> web.Response:
        body = {"type": "error", "error": {"type": etype, "message": msg}}
        return web.Response(status=status, body=_dumps(body), content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return err(401, "authentication_error", "missing bearer")
        body = await request.read()
        if b'"events"' not in body:
            return err(400, "invalid_request_error", "no events")
        stats.posts += 1
        out = store.get(request.match_info["sid"]).post()
        return web.Response(status=202, body=out, content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return err(401, "authentication_error", "missing bearer")
        session = store.get(request.match_info["sid"])
        if isinstance(session, PostOnly):
            return err(404, "not_found_error", "no stream")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sink = AioSink()
        stats.streams_open += 1
        stats.streams_total += 1
        try:
            session.open(sink, request.headers.get("Last-Event-ID"))
            while True:
                try:
                    if sink.beating and sink.q.empty():
                        async with asyncio.timeout(heartbeat):
                            frames = await sink.q.get()
                    else:
                        frames = await sink.q.get()
                except TimeoutError:
                    await resp.write(hb_frame)
                    continue
                for f in frames:
                    await resp.write(f)
                stats.frames += len(frames)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stats.streams_open -= 1
            session.close(sink)
            if sink.timer is not None:
                sink.timer.cancel()
        return resp

    app = web.Application()
    app.router.add_post(API_PREFIX + "{sid}/events", post)
    app.router.add_get(API_PREFIX + "{sid}/events/stream", stream)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=8192, reuse_port=reuse)
    await site.start()
    return runner


# --------------------------------------------------------------------------- main


async def _control(store: Store) -> None:
    """JSON-line commands on stdin; answers one JSON line each on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        out: dict[str, Any] = {"ok": True}
        if cmd["cmd"] == "prepare":
            t0 = time.perf_counter()
            store.prepare(cmd["sids"])
            out["render_s"] = time.perf_counter() - t0
        elif cmd["cmd"] == "stats":
            out.update(store.stats.snapshot())
        elif cmd["cmd"] == "reset":
            store.stats.reset()
        elif cmd["cmd"] == "finish_paced":
            out["finished"] = store.finish_paced()
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


async def amain(args: argparse.Namespace) -> None:
    raise_nofile()
    store = Store(Renderer(chunked=args.impl == "proto"), Stats())
    store.prepare(args.prepare)
    port: int
    if args.impl == "proto":
        server = await ProtoServer(store, args.heartbeat).start(
            args.host, args.port, args.reuse_port
        )
        port = server.sockets[0].getsockname()[1]
    else:
        runner = await start_aiohttp(store, args.heartbeat, args.host, args.port, args.reuse_port)
        port = runner.addresses[0][1]
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid(), "impl": args.impl}) + "\n")
    sys.stdout.flush()
    await _control(store)  # returns on stdin EOF: the harness is gone or done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--impl", choices=("proto", "aiohttp"), default="proto")
    p.add_argument("--reuse-port", action="store_true")
    p.add_argument("--heartbeat", type=float, default=15.0, help="seconds between heartbeats")
    p.add_argument("--prepare", action="append", default=[], metavar="SID")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
