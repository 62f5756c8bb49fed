"""Graceful shutdown: ``Fleet.serve()`` on SIGTERM (or ``fleet.stop()``).

The process test runs real worker processes (``tests/fleet_procs.py
--graceful``) on a real Redis, with a ``lease_ttl`` of 60 s: a session handed
over by lease expiry would take a minute, so the bounded waits below (far
shorter) only pass if the stopping worker handed its leases off. Waits are on
conditions, never on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import eventually
from redis_server import drop_namespace, redis_url_fixture  # noqa: F401 (the redis_url fixture)
from test_fleet_kill import Cluster, Proc, Record

from qoder_async import QoderClient
from qoder_async.fleet import Delivery, Fleet, MemoryCoordinator, RedisCoordinator
from qoder_async.testing import FakeQoderServer, TurnContext

pytestmark = pytest.mark.timeout(150)

SESSIONS = 6
LONG_TTL = "60"  # seconds: far longer than any wait of these tests


async def turn_script(ctx: TurnContext) -> None:
    for i in range(10):
        await ctx.sleep(0.1)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"step {i}"}])


@contextlib.asynccontextmanager
async def calm_cluster(redis_url: str, tmp: Path) -> AsyncIterator[Cluster]:
    async with FakeQoderServer(script=turn_script, heartbeat_interval=0.2, seed=5) as server:
        made = Cluster(server, redis_url, tmp)
        try:
            yield made
        finally:
            await made.stop_all()
            await drop_namespace(redis_url, made.namespace)


async def graceful_worker(c: Cluster, name: str) -> Proc:
    proc = await c.start(
        name,
        "worker",
        "--worker-id",
        name,
        "--graceful",
        "--lease-ttl",
        LONG_TTL,
        "--handler-seconds",
        "0.3",
        "--shutdown-grace",
        "20",
    )
    assert proc.process.stdout is not None
    async with asyncio.timeout(30):
        line = await proc.process.stdout.readline()
    assert line == b"serving\n", (line, c.log(name))
    return proc


def running(proc: Proc) -> list[Record]:
    """Handlers of ``proc`` that started and have not returned."""
    done = {(r["s"], r["e"]) for r in proc.records("done")}
    return [r for r in proc.records("start") if (r["s"], r["e"]) not in done]


async def test_sigterm_finishes_running_handlers_and_hands_off_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    async with calm_cluster(redis_url, tmp_path) as c:
        server = c.server
        sessions = [str(server.add_session()["id"]) for _ in range(SESSIONS)]
        w1 = await graceful_worker(c, "w1")
        w2 = await graceful_worker(c, "w2")
        async with RedisCoordinator.from_url(redis_url, namespace=c.namespace) as coordinator:

            async def both_live() -> bool:
                return len(await coordinator.workers()) == 2

            await eventually(both_live, "both workers announced", timeout=30)
            front = await c.start(
                "front",
                "front",
                "--sessions",
                ",".join(sessions),
                "--turns",
                "1",
                "--tool-turn",
                "0",
            )
            await eventually(
                lambda: len(w1.records("start")) >= 2 and running(w1), "w1 busy", timeout=40
            )
            interrupted = running(w1)
            held = {r["s"] for r in w1.records("start")}
            w1.signal(signal.SIGTERM)

            async with asyncio.timeout(40):  # far less than lease_ttl (60 s)
                assert await w1.process.wait() == 0, c.log("w1")
            assert w1.records("returned"), c.log("w1")  # serve() returned: no cancellation
            assert running(w1) == []  # the handlers running at SIGTERM finished
            assert {(r["s"], r["e"]) for r in interrupted} <= {
                (r["s"], r["e"]) for r in w1.records("done")
            }
            stopped_at = max(r["at"] for r in w1.records())

            async def all_done() -> bool:
                for sid in sessions:
                    events = server.stored_events(sid)
                    if not events or events[-1]["type"] != "session.status_idle":
                        return False
                    info = await coordinator.inspect(sid)
                    if info is None or info.active:
                        return False
                return True

            # A lease expiry would take 60 s: only a hand-off gets there in time.
            await eventually(all_done, "every turn done", timeout=40)
            assert await front.process.wait() == 0, c.log("front")
            # w2 finished the turns w1 had begun (w1's leases were handed off).
            taken = {r["s"] for r in w2.records("start") if r["at"] > stopped_at}
            assert held <= taken
            assert "Traceback" not in c.log("w1")

        # Nothing lost, nothing delivered twice unflagged, stored order kept.
        starts = sorted(
            (r for p in (w1, w2) for r in p.records("start")), key=lambda r: (r["s"], r["at"])
        )
        for sid in sessions:
            got = [r for r in starts if r["s"] == sid]
            stored = [str(e["id"]) for e in server.stored_events(sid)]
            first = [r["e"] for r in got if not r["r"]]
            assert [e for e in stored if e in {r["e"] for r in got}] == stored, sid
            seen: set[str] = set()
            for r in got:
                assert r["e"] not in seen or r["r"], (sid, r)  # a repeat only when flagged
                seen.add(r["e"])
            assert first == [e for e in stored if e in first], sid  # in stored order


async def test_stop_cancels_handlers_past_the_grace_and_their_events_come_again(
    server: FakeQoderServer,
) -> None:
    """One worker stops while its handler hangs: after ``shutdown_grace`` the handler is
    cancelled and the lease handed off; the next worker redelivers that event, flagged."""
    server.script = turn_script
    sid = str(server.add_session()["id"])
    coordinator = MemoryCoordinator()
    hung = asyncio.Event()
    async with QoderClient(token=server.token, base_url=server.base_url) as qc:
        first = Fleet(qc, coordinator, worker_id="w1", lease_ttl=60.0, shutdown_grace=0.2)
        second = Fleet(qc, coordinator, worker_id="w2", lease_ttl=60.0)
        seen: list[Delivery] = []
        cancelled: list[str | None] = []

        @first.handler
        async def hang(d: Delivery) -> None:
            if d.event.type == "agent.message":
                hung.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.append(d.event.id)
                    raise

        @second.handler
        async def record(d: Delivery) -> None:
            seen.append(d)

        serving = asyncio.create_task(first.serve())
        try:
            async with asyncio.timeout(30):
                await first.send(sid, "hi")
                await hung.wait()
                first.stop()
                await serving  # returns (no CancelledError) once the grace ran out
                assert len(cancelled) == 1
                info = await coordinator.inspect(sid)
                assert info is not None
                assert not info.leased  # handed off, not left to expire
                other = asyncio.create_task(second.serve())
                try:
                    await eventually(
                        lambda: any(d.event.type == "session.status_idle" for d in seen),
                        "w2 delivered the turn's end",
                    )
                finally:
                    second.stop()
                    await other
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    again = [d for d in seen if d.event.id == cancelled[0]]
    assert len(again) == 1
    assert again[0].redelivered
    assert not first.serving
    assert not second.serving


async def test_stop_before_serve_returns_at_once(server: FakeQoderServer) -> None:
    async with QoderClient(token=server.token, base_url=server.base_url) as qc:
        fleet = Fleet(qc, MemoryCoordinator(), worker_id="w1")
        fleet.handler(lambda d: None)
        fleet.stop()
        async with asyncio.timeout(10):
            await fleet.serve()
        assert not fleet.serving
        # The stop was used up: the next serve() runs until stopped again.
        task = asyncio.create_task(fleet.serve())
        await asyncio.sleep(0.05)
        assert not task.done()
        fleet.stop()
        async with asyncio.timeout(10):
            await task
