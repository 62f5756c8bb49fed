"""The contenders: one small class per client stack, all talking to ``benchmarks.server``.

Every contender implements some of these operations (``kinds`` says which):

``stream``  ``read_stream(sid, n)``: read one ``sess_burst-…`` stream to its end
            (``n`` ``agent.message`` frames + one ``session.status_idle``).
``send``    ``post_once(sid)``: one ``POST …/events`` with a ``user.message``.
``ttfe``    ``ttfe(sid, n)``: POST, then stream that turn (``Last-Event-ID`` = the
            created event id); returns (seconds to first agent event, seconds to
            the turn's closing idle), both measured from before the POST.
``idle``    ``hold_idle(sid, got_first)``: open a stream, call ``got_first()`` after
            its first event, then keep reading (heartbeats) until cancelled.
``paced``   ``paced(sid, on_event)``: read a paced stream to its closing idle,
            calling ``on_event(sent_at)`` right after each agent event is
            parsed; the idle event's ``sent_count`` must equal the count.

Each operation verifies what it received (counts, event types, turn ids) and
raises ``BenchFailure`` when anything is off: a contender that skips work must
not look fast. ``setup(target)`` builds the client; ``target.pool`` > 0 means the
scenario needs that many simultaneous connections, so pool limits are raised
(see README: this is the only deviation from each stack's defaults besides
timeouts and qca's ``max_retries=0``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

if TYPE_CHECKING:
    from qoder_async import Turn

# httpx, httpx-sse and httpx-aiohttp (D's transport, and the transport handed to
# qoder_async-stream-httpx) come with qoder_async's `bench` extra; the contenders
# that need one are reported UNAVAILABLE without it.
try:
    import httpx
    from httpx_sse import aconnect_sse
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None  # type: ignore[assignment]
    aconnect_sse = None  # type: ignore[assignment]
try:
    from httpx_aiohttp import AiohttpTransport
except ImportError:  # pragma: no cover - depends on the environment
    AiohttpTransport = None  # type: ignore[assignment,misc]

TOKEN = "pt-benchmark-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEND_EVENTS: list[dict[str, Any]] = [
    {"type": "user.message", "content": [{"type": "text", "text": "Help me analyze this code."}]}
]
SEND_BODY = json.dumps({"events": SEND_EVENTS}).encode()
# Streams are read for longer than httpx's 5 s default read timeout allows when
# heartbeats are 15 s apart; every SSE user raises it, so do we (no effect on speed).
HTTPX_TIMEOUT = httpx.Timeout(60.0, connect=30.0) if httpx is not None else None


class BenchFailure(Exception):
    """A contender received something other than what the server sent."""


class Unavailable(Exception):
    """The contender's library cannot be imported (reported, not fatal)."""


@dataclass(frozen=True)
class Target:
    root: str  # http://127.0.0.1:PORT
    pool: int = 0  # 0: library defaults; >0: that many connections must be open at once

    @property
    def api(self) -> str:
        return self.root + "/api/v1/cloud"

    def events_url(self, sid: str) -> str:
        return f"{self.api}/sessions/{sid}/events"

    def stream_url(self, sid: str) -> str:
        return f"{self.api}/sessions/{sid}/events/stream"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailure(what)


def check_turn(count: int, n: int, done: bool, who: str) -> None:
    check(done, f"{who}: stream ended before session.status_idle ({count}/{n} events)")
    check(count == n, f"{who}: got {count} agent.message events, expected {n}")


class Contender:
    name: ClassVar[str]
    summary: ClassVar[str]
    kinds: ClassVar[frozenset[str]]

    async def setup(self, target: Target) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    async def read_stream(self, sid: str, n: int) -> None:
        raise NotImplementedError

    async def post_once(self, sid: str) -> None:
        raise NotImplementedError

    async def ttfe(self, sid: str, n: int) -> tuple[float, float]:
        raise NotImplementedError

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        raise NotImplementedError

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- sink


class Sink(Contender):
    name = "sink"
    summary = "diagnostic: raw socket, no HTTP parsing, counts b'\\n\\n' (server ceiling)"
    kinds = frozenset({"stream"})

    async def setup(self, target: Target) -> None:
        host, port = target.root.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.target = target

    async def read_stream(self, sid: str, n: int) -> None:
        reader, writer = await asyncio.open_connection(*self.addr)
        path = self.target.stream_url(sid).removeprefix(self.target.root)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.addr[0]}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        count, tail, last = 0, b"", b""
        try:
            data = b""
            while count < n + 1:
                # After a short read, let data pile up before reading again so
                # that the client is never the limit: this measures how fast
                # the server pushes frames, not how fast we wake up.
                if len(data) < 1 << 16:
                    await asyncio.sleep(0.0005)
                data = await reader.read(1 << 20)
                check(bool(data), f"sink: EOF after {count} frames")
                count += data.count(b"\n\n") + (tail == b"\n" and data[:1] == b"\n")
                tail, last = data[-1:], last[-512:] + data[-512:]
        finally:
            writer.close()
        check(count == n + 1, f"sink: {count} frames, expected {n + 1}")
        check(b"session.status_idle" in last, "sink: last frame is not session.status_idle")


# --------------------------------------------------------------------------- aiohttp


class _Aiohttp(Contender):
    async def setup(self, target: Target) -> None:
        self.target = target
        # aiohttp's default connector limit is 100; lift it when the scenario
        # needs more simultaneous streams. total=None: a stream is not a request.
        conn = aiohttp.TCPConnector(limit=max(100, target.pool + 16))
        self.s = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
        )

    async def aclose(self) -> None:
        await self.s.close()

    def _get(self, sid: str, last_event_id: str | None = None) -> Any:
        h = {**AUTH, "Accept": "text/event-stream"}
        if last_event_id:
            h["Last-Event-ID"] = last_event_id
        return self.s.get(self.target.stream_url(sid), headers=h)

    async def post_once(self, sid: str) -> None:
        h = {**AUTH, "Content-Type": "application/json"}
        async with self.s.post(self.target.events_url(sid), data=SEND_BODY, headers=h) as r:
            body = await r.read()
        check(r.status == 202, f"{self.name}: POST status {r.status}")
        check(b'"user.message"' in body, f"{self.name}: POST answer lacks the user.message")


class Raw(_Aiohttp):
    name = "raw"
    summary = "aiohttp, resp.content.iter_any(), counts b'\\n\\n' (bytes only: the ceiling)"
    kinds = frozenset({"stream", "send", "ttfe", "idle", "paced"})

    async def read_stream(self, sid: str, n: int) -> None:
        count, tail, last = 0, b"", b""
        async with self._get(sid) as resp:
            check(resp.status == 200, f"raw: status {resp.status}")
            # The stream never contains "\n\n\n", so a "\n" | "\n" split across
            # two chunks is the only boundary case.
            async for chunk in resp.content.iter_any():
                count += chunk.count(b"\n\n") + (tail == b"\n" and chunk[:1] == b"\n")
                tail, last = chunk[-1:], last[-512:] + chunk[-512:]
                if count >= n + 1:
                    break
        check(count == n + 1, f"raw: {count} frames, expected {n + 1}")
        check(b"session.status_idle" in last, "raw: last frame is not session.status_idle")

    async def ttfe(self, sid: str, n: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        h = {**AUTH, "Content-Type": "application/json"}
        async with self.s.post(self.target.events_url(sid), data=SEND_BODY, headers=h) as r:
            body = await r.read()
        check(r.status == 202, f"raw: POST status {r.status}")
        i = body.index(b'"id":"') + 6
        eid = body[i : body.index(b'"', i)].decode()
        j = body.index(b'"turn_id":"') + 11
        turn = body[j - 1 : body.index(b'"', j) + 1]  # with quotes
        first = 0.0
        buf = b""
        count = 0
        async with self._get(sid, eid) as resp:
            check(resp.status == 200, f"raw: status {resp.status}")
            async for chunk in resp.content.iter_any():
                buf += chunk
                if b"\n\n" not in buf:
                    continue
                *frames, buf = buf.split(b"\n\n")
                for f in frames:
                    check(turn in f, "raw: frame of another turn")
                    if b"event: agent.message" in f:
                        if not count:
                            first = time.perf_counter() - t0
                        count += 1
                    elif b"event: session.status_idle" in f:
                        check_turn(count, n, True, "raw")
                        return first, time.perf_counter() - t0
        raise BenchFailure("raw: stream ended before session.status_idle")

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        async with self._get(sid) as resp:
            check(resp.status == 200, f"raw: status {resp.status}")
            seen = False
            async for chunk in resp.content.iter_any():
                if not seen and b"\n\n" in chunk:
                    seen = True
                    got_first()
        raise BenchFailure("raw: idle stream ended")

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        buf = b""
        got = 0
        async with self._get(sid) as resp:
            check(resp.status == 200, f"raw: status {resp.status}")
            async for chunk in resp.content.iter_any():
                buf += chunk
                if b"\n\n" not in buf:
                    continue
                *frames, buf = buf.split(b"\n\n")
                for f in frames:
                    i = f.find(b'"sent_at":')
                    if i >= 0:
                        on_event(float(f[i + 10 : f.index(b"}", i)]))
                        got += 1
                    elif b"session.status_idle" in f:
                        i = f.index(b'"sent_count":') + 13
                        sent = int(f[i : f.index(b"}", i)])
                        check(got == sent, f"raw: {got} paced events, server sent {sent}")
                        return
        raise BenchFailure("raw: paced stream ended early")


async def min_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str, Any]]:
    """Minimal SSE parser (LF line ends, comments skipped) + json.loads of data."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        if b"\n\n" not in buf:
            continue
        *frames, buf = buf.split(b"\n\n")
        for frame in frames:
            event, eid, data = "message", "", []
            for line in frame.split(b"\n"):
                field, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    data.append(value)
                elif field == b"event":
                    event = value.decode()
                elif field == b"id":
                    eid = value.decode()
            if data:
                yield event, eid, json.loads(b"\n".join(data))


class AiohttpMin(_Aiohttp):
    name = "aiohttp-min"
    summary = "aiohttp + minimal SSE parser + json.loads per event"
    kinds = frozenset({"stream", "idle", "paced"})

    async def read_stream(self, sid: str, n: int) -> None:
        count, done = 0, False
        async with self._get(sid) as resp:
            check(resp.status == 200, f"aiohttp-min: status {resp.status}")
            async for event, _eid, obj in min_sse(resp):
                if event == "agent.message":
                    check(bool(obj["content"]), "aiohttp-min: empty content")
                    count += 1
                elif event == "session.status_idle":
                    done = True
                    break
        check_turn(count, n, done, "aiohttp-min")

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        async with self._get(sid) as resp:
            check(resp.status == 200, f"aiohttp-min: status {resp.status}")
            seen = False
            async for _ in min_sse(resp):
                if not seen:
                    seen = True
                    got_first()
        raise BenchFailure("aiohttp-min: idle stream ended")

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        got = 0
        async with self._get(sid) as resp:
            check(resp.status == 200, f"aiohttp-min: status {resp.status}")
            async for event, _eid, obj in min_sse(resp):
                if event == "agent.message":
                    on_event(obj["sent_at"])
                    got += 1
                elif event == "session.status_idle":
                    sent = obj["sent_count"]
                    check(got == sent, f"aiohttp-min: {got} paced events, server sent {sent}")
                    return
        raise BenchFailure("aiohttp-min: paced stream ended early")


# --------------------------------------------------------------------------- httpx + httpx-sse


def need_httpx(aiohttp_transport: bool) -> None:
    """Raise :class:`Unavailable` unless httpx (+ httpx-sse, + httpx-aiohttp) import."""
    if httpx is None or aconnect_sse is None:
        raise Unavailable("httpx / httpx-sse not installed (pip install -e '.[bench]')")
    if aiohttp_transport and AiohttpTransport is None:
        raise Unavailable("httpx-aiohttp not installed (pip install httpx-aiohttp)")


def d_transport(target: Target) -> Any:
    """D's transport: httpx-aiohttp's ``AiohttpTransport``, pool lifted when needed.

    AiohttpTransport ignores httpx's client-level limits and caps its aiohttp
    connector at ``limits.max_connections`` (default 100; None also falls back
    to aiohttp's 100), so pass the number we need.
    """
    if target.pool:
        return AiohttpTransport(limits=httpx.Limits(max_connections=target.pool + 16))
    return AiohttpTransport()


class _HttpxSSE(Contender):
    uses_aiohttp_transport: ClassVar[bool] = False

    def make_client(self, target: Target) -> httpx.AsyncClient:
        raise NotImplementedError

    async def setup(self, target: Target) -> None:
        need_httpx(self.uses_aiohttp_transport)
        self.target = target
        self.c = self.make_client(target)

    async def aclose(self) -> None:
        await self.c.aclose()

    def _sse(self, sid: str, last_event_id: str | None = None) -> Any:
        h = dict(AUTH)  # aconnect_sse mutates the dict it gets
        if last_event_id:
            h["Last-Event-ID"] = last_event_id
        return aconnect_sse(self.c, "GET", self.target.stream_url(sid), headers=h)

    async def read_stream(self, sid: str, n: int) -> None:
        count, done = 0, False
        async with self._sse(sid) as es:
            check(es.response.status_code == 200, f"{self.name}: {es.response.status_code}")
            async for sse in es.aiter_sse():
                obj = json.loads(sse.data)
                if sse.event == "agent.message":
                    check(bool(obj["content"]), f"{self.name}: empty content")
                    count += 1
                elif sse.event == "session.status_idle":
                    done = True
                    break
        check_turn(count, n, done, self.name)

    async def post_once(self, sid: str) -> None:
        r = await self.c.post(
            self.target.events_url(sid), json={"events": SEND_EVENTS}, headers=AUTH
        )
        check(r.status_code == 202, f"{self.name}: POST status {r.status_code}")
        check(r.json()["data"][0]["type"] == "user.message", f"{self.name}: bad POST answer")

    async def ttfe(self, sid: str, n: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = await self.c.post(
            self.target.events_url(sid), json={"events": SEND_EVENTS}, headers=AUTH
        )
        check(r.status_code == 202, f"{self.name}: POST status {r.status_code}")
        created = r.json()["data"][0]
        first, count = 0.0, 0
        async with self._sse(sid, created["id"]) as es:
            async for sse in es.aiter_sse():
                obj = json.loads(sse.data)
                check(obj["turn_id"] == created["turn_id"], f"{self.name}: event of another turn")
                if sse.event == "agent.message":
                    if not count:
                        first = time.perf_counter() - t0
                    count += 1
                elif sse.event == "session.status_idle":
                    check_turn(count, n, True, self.name)
                    return first, time.perf_counter() - t0
        raise BenchFailure(f"{self.name}: stream ended before session.status_idle")

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        async with self._sse(sid) as es:
            check(es.response.status_code == 200, f"{self.name}: {es.response.status_code}")
            seen = False
            async for sse in es.aiter_sse():
                if not sse.data:
                    # httpx-sse 0.4.3 dispatches an empty-data event for every
                    # comment-only block (": heartbeat") once an id was seen.
                    continue
                json.loads(sse.data)
                if not seen:
                    seen = True
                    got_first()
        raise BenchFailure(f"{self.name}: idle stream ended")

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        got = 0
        async with self._sse(sid) as es:
            async for sse in es.aiter_sse():
                if not sse.data:
                    continue  # see hold_idle
                obj = json.loads(sse.data)
                if sse.event == "agent.message":
                    on_event(obj["sent_at"])
                    got += 1
                elif sse.event == "session.status_idle":
                    sent = obj["sent_count"]
                    check(got == sent, f"{self.name}: {got} paced events, server sent {sent}")
                    return
        raise BenchFailure(f"{self.name}: paced stream ended early")


class D(_HttpxSSE):
    name = "D"
    summary = "httpx + AiohttpTransport + httpx_sse.aconnect_sse/aiter_sse + json.loads"
    kinds = frozenset({"stream", "send", "ttfe", "idle", "paced"})
    uses_aiohttp_transport = True

    def make_client(self, target: Target) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=d_transport(target), timeout=HTTPX_TIMEOUT)


class HttpxDefault(_HttpxSSE):
    name = "httpx-default"
    summary = "httpx default (httpcore) transport + httpx-sse + json.loads"
    kinds = frozenset({"stream", "send", "idle", "paced"})

    def make_client(self, target: Target) -> httpx.AsyncClient:
        if target.pool:
            limits = httpx.Limits(max_connections=target.pool + 16, max_keepalive_connections=20)
            return httpx.AsyncClient(timeout=HTTPX_TIMEOUT, limits=limits)
        return httpx.AsyncClient(timeout=HTTPX_TIMEOUT)


# --------------------------------------------------------------------------- qca (official SDK)


class Qca(Contender):
    name = "qca"
    summary = "official SDK qca.AsyncManaged: sessions.events.stream()/send(), typed events"
    kinds = frozenset({"stream", "send", "ttfe", "idle", "paced"})

    async def setup(self, target: Target) -> None:
        need_httpx(False)
        try:
            from qca import AsyncManaged
        except ImportError as exc:
            raise Unavailable(f"import qca: {exc}") from exc
        kwargs: dict[str, Any] = {}
        if target.pool:
            # Its default httpx.AsyncClient allows 100 connections; same client
            # otherwise (qca's own timeout and follow_redirects=False).
            from qca.common._base_client import DEFAULT_TIMEOUT

            kwargs["http_client"] = httpx.AsyncClient(
                timeout=DEFAULT_TIMEOUT,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=target.pool + 16),
            )
        # max_retries=0: a failed request must fail the run, not be retried
        # silently (no retries happen on the success path either way).
        self.c = AsyncManaged(pat=TOKEN, base_url=target.api, max_retries=0, **kwargs)

    async def aclose(self) -> None:
        await self.c.close()

    async def read_stream(self, sid: str, n: int) -> None:
        count, done = 0, False
        stream = await self.c.sessions.events.stream(sid)
        async with stream:
            async for ev in stream:
                if ev.type == "agent.message":
                    check(bool(ev.content), "qca: empty content")
                    count += 1
                elif ev.type == "session.status_idle":
                    done = True
                    break
        check_turn(count, n, done, "qca")

    async def post_once(self, sid: str) -> None:
        sent = await self.c.sessions.events.send(sid, events=SEND_EVENTS)  # type: ignore[arg-type]
        data = sent.data or []
        check(bool(data) and data[0].type == "user.message", "qca: bad POST answer")

    async def ttfe(self, sid: str, n: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        sent = await self.c.sessions.events.send(sid, events=SEND_EVENTS)  # type: ignore[arg-type]
        assert sent.data
        created = sent.data[0]
        turn = getattr(created, "turn_id", None)
        first, count = 0.0, 0
        stream = await self.c.sessions.events.stream(sid, last_event_id=created.id)
        async with stream:
            async for ev in stream:
                check(getattr(ev, "turn_id", None) == turn, "qca: event of another turn")
                if ev.type == "agent.message":
                    if not count:
                        first = time.perf_counter() - t0
                    count += 1
                elif ev.type == "session.status_idle":
                    check_turn(count, n, True, "qca")
                    return first, time.perf_counter() - t0
        raise BenchFailure("qca: stream ended before session.status_idle")

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        stream = await self.c.sessions.events.stream(sid)
        async with stream:
            seen = False
            async for _ in stream:
                if not seen:
                    seen = True
                    got_first()
        raise BenchFailure("qca: idle stream ended")

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        got = 0
        stream = await self.c.sessions.events.stream(sid)
        async with stream:
            async for ev in stream:
                if ev.type == "agent.message":
                    on_event(ev.sent_at)  # type: ignore[attr-defined]  # extra="allow"
                    got += 1
                elif ev.type == "session.status_idle":
                    sent = ev.sent_count  # type: ignore[attr-defined]
                    check(got == sent, f"qca: {got} paced events, server sent {sent}")
                    return
        raise BenchFailure("qca: paced stream ended early")


# --------------------------------------------------------------------------- qoder_async
# Written against DESIGN.md's public API before the library exists. Keep these
# two classes small and self-contained: adjust them here when the API lands.


def _qoder_client(target: Target, http_client: Any = None) -> Any:
    try:
        from qoder_async import QoderClient
    except ImportError as exc:
        raise Unavailable(f"import qoder_async: {exc}") from exc
    # Library defaults on purpose, also for the 2,000-stream scenarios: its
    # default pool is meant for thousands of streams. If that ever changes,
    # the many-stream scenarios fail loudly ("only 100/2000 streams ...").
    return QoderClient(token=TOKEN, base_url=target.api, http_client=http_client)


class QoderStream(Contender):
    name = "qoder_async-stream"
    summary = "qoder_async resources: client.sessions.events.stream()/send(), typed events"
    kinds = frozenset({"stream", "send", "idle", "paced"})

    async def setup(self, target: Target) -> None:
        self.c = _qoder_client(target)
        await self.c.__aenter__()

    async def aclose(self) -> None:
        await self.c.__aexit__(None, None, None)

    async def read_stream(self, sid: str, n: int) -> None:
        count, done = 0, False
        async with self.c.sessions.events.stream(sid) as stream:
            async for ev in stream:
                if ev.type == "agent.message":
                    check(bool(ev.content), "qoder_async: empty content")
                    count += 1
                elif ev.type == "session.status_idle":
                    done = True
                    break
        check_turn(count, n, done, self.name)

    async def post_once(self, sid: str) -> None:
        from qoder_async import UserMessage

        acc = await self.c.sessions.events.send(sid, [UserMessage("Help me analyze this code.")])
        check(acc.events[0].type == "user.message", "qoder_async: bad POST answer")

    async def hold_idle(self, sid: str, got_first: Callable[[], None]) -> None:
        async with self.c.sessions.events.stream(sid) as stream:
            seen = False
            async for _ in stream:
                if not seen:
                    seen = True
                    got_first()
        raise BenchFailure("qoder_async: idle stream ended")

    async def paced(self, sid: str, on_event: Callable[[float], None]) -> None:
        got = 0
        async with self.c.sessions.events.stream(sid) as stream:
            async for ev in stream:
                if ev.type == "agent.message":
                    on_event(ev.raw["sent_at"])
                    got += 1
                elif ev.type == "session.status_idle":
                    sent = ev.raw["sent_count"]
                    check(got == sent, f"qoder_async: {got} paced events, server sent {sent}")
                    return
        raise BenchFailure("qoder_async: paced stream ended early")


class QoderStreamHttpx(QoderStream):
    name = "qoder_async-stream-httpx"
    summary = "qoder_async-stream on a borrowed httpx.AsyncClient(transport=D's AiohttpTransport)"
    kinds = frozenset({"stream", "send", "idle", "paced"})

    async def setup(self, target: Target) -> None:
        need_httpx(True)
        # The same client as D's (transport, pool limits, timeout): the only
        # difference left is what reads the stream (qoder_async vs httpx-sse).
        self.http = httpx.AsyncClient(transport=d_transport(target), timeout=HTTPX_TIMEOUT)
        self.c = _qoder_client(target, self.http)
        await self.c.__aenter__()

    async def aclose(self) -> None:
        await self.c.__aexit__(None, None, None)
        await self.http.aclose()  # borrowed: the client leaves it open


class QoderTurn(Contender):
    name = "qoder_async-turn"
    summary = "qoder_async turn API: turn = await client.session(sid).send(); async for ev in turn"
    kinds = frozenset({"ttfe", "stream"})

    async def read_stream(self, sid: str, n: int) -> None:
        await self._read_turn(sid, n)

    async def _read_turn(self, sid: str, n: int) -> Turn:
        # The same N frames as the burst, delivered as one turn after a POST.
        turn_sid = sid.replace("sess_burst-", "sess_turn-", 1)
        turn = await self.c.session(turn_sid).send("Help me analyze this code.")
        count, done = 0, False
        async for ev in turn:
            if ev.type == "agent.message":
                check(bool(ev.content), "qoder_async: empty content")
                count += 1
            elif ev.type == "session.status_idle":
                done = True
        check_turn(count, n, done, self.name)
        return turn

    async def setup(self, target: Target) -> None:
        self.c = _qoder_client(target)
        await self.c.__aenter__()

    async def aclose(self) -> None:
        await self.c.__aexit__(None, None, None)

    async def ttfe(self, sid: str, n: int) -> tuple[float, float]:
        session = self.c.session(sid)
        t0 = time.perf_counter()
        turn = await session.send("Help me analyze this code.")
        first, count, done = 0.0, 0, False
        async for ev in turn:  # yields the echo (maybe), agent events, the closing idle
            check(ev.turn_id == turn.turn_id, "qoder_async: event of another turn")
            if ev.type == "agent.message":
                if not count:
                    first = time.perf_counter() - t0
                count += 1
            elif ev.type == "session.status_idle":
                done = True
        total = time.perf_counter() - t0
        check_turn(count, n, done, self.name)
        return first, total


class QoderTurnResult(QoderTurn):
    name = "qoder_async-turn-result"
    summary = "qoder_async turn API as a user reads it: send(); async for ev in turn; result()"
    kinds = frozenset({"stream"})

    async def read_stream(self, sid: str, n: int) -> None:
        turn = await self._read_turn(sid, n)
        result = await turn.result()
        check(len(result.messages) == n, f"{self.name}: result() has {len(result.messages)}")


class QoderTurnText(QoderTurn):
    name = "qoder_async-turn-text"
    summary = (
        "qoder_async turn API for a chat UI: send(); async for chunk in text_stream(); result()"
    )
    kinds = frozenset({"stream"})

    async def read_stream(self, sid: str, n: int) -> None:
        turn_sid = sid.replace("sess_burst-", "sess_turn-", 1)
        turn = await self.c.session(turn_sid).send("Help me analyze this code.")
        chunks: list[str] = []
        async for chunk in turn.text_stream():
            chunks.append(chunk)
        result = await turn.result()
        check("".join(chunks) == result.text, f"{self.name}: the chunks are not the text")
        check(bool(result.text), f"{self.name}: no text")
        count, done = len(result.messages), result.stop_reason is not None
        check_turn(count, n, done, self.name)


# --------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Contender]] = {
    c.name: c
    for c in (
        Sink,
        Raw,
        AiohttpMin,
        D,
        HttpxDefault,
        Qca,
        QoderStream,
        QoderStreamHttpx,
        QoderTurn,
        QoderTurnResult,
        QoderTurnText,
    )
}
