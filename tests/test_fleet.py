"""The Fleet on the fake Qoder server, with MemoryCoordinator and a real Redis/Valkey.

Deliveries are checked against what the server stored (``server.stored_events``):
every stored event of a sent turn, in stored order, each once (twice only when
marked ``redelivered``). Waits are on conditions, never on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from conftest import eventually
from redis_server import (
    RedisServer,
    drop_namespace,
    find_server_binary,
    redis_url_fixture,  # noqa: F401 (the redis_url fixture)
)

from qoder_async import ConfigurationError, Cursor, QoderClient, SessionBusyError
from qoder_async.fleet import (
    WORK_WINDOW,
    Coordinator,
    Delivery,
    Fleet,
    FleetCursor,
    MemoryCoordinator,
    RedisCoordinator,
)
from qoder_async.testing import (
    CannedResponse,
    FakeQoderServer,
    Script,
    StopReasonJSON,
    TurnContext,
    subagent_tool_script,
    tool_script,
)

TTL = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Coordinators:
    """Views of one shared coordinator state: the same object (memory) or new clients (redis)."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.url = redis_url
        self.namespace = f"fleet-{uuid.uuid4().hex[:12]}"
        self._made: list[Coordinator] = []

    def __call__(self) -> Coordinator:
        if self.kind == "memory":
            if not self._made:
                self._made.append(MemoryCoordinator())
            return self._made[0]
        assert self.url
        coordinator = RedisCoordinator.from_url(self.url, namespace=self.namespace)
        self._made.append(coordinator)
        return coordinator

    async def close(self) -> None:
        for c in self._made:
            await c.aclose()
        if self.kind == "redis":
            assert self.url
            await drop_namespace(self.url, self.namespace)


@pytest.fixture(params=["memory", "redis"])
async def coordinators(request: pytest.FixtureRequest) -> AsyncIterator[Coordinators]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made = Coordinators(request.param, url)
    yield made
    await made.close()


@pytest.fixture
async def qc(server: FakeQoderServer) -> AsyncIterator[QoderClient]:
    async with QoderClient(token=server.token, base_url=server.base_url) as c:
        yield c


class Recorder:
    """A fleet handler that remembers every delivery (and can be told to block or fail)."""

    def __init__(self, name: str = "w") -> None:
        self.name = name
        self.at: list[float] = []  # time.monotonic() of each delivery
        self.deliveries: list[Delivery] = []
        self.by_session: dict[str, list[Delivery]] = defaultdict(list)
        self.hook: Callable[[Delivery], Awaitable[None]] | None = None

    async def __call__(self, d: Delivery) -> None:
        self.at.append(time.monotonic())
        self.deliveries.append(d)
        self.by_session[d.session_id].append(d)
        if self.hook is not None:
            await self.hook(d)

    def ids(self, session_id: str) -> list[str | None]:
        return [d.event.id for d in self.by_session[session_id]]


def hooked(
    fleet: Fleet,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    rand: Callable[[], float] | None = None,
) -> Fleet:
    """``fleet`` on a test's clock, sleep or random source (not constructor options)."""
    if clock is not None:
        fleet._clock = clock
    if sleep is not None:
        fleet._sleep = sleep
    if rand is not None:
        fleet._rand = rand
    return fleet


async def released(coordinator: Coordinator, *session_ids: str, timeout: float = 15.0) -> None:
    """Wait until every session left the active line (its turn ended, nothing pending)."""

    async def check() -> bool:
        for sid in session_ids:
            info = await coordinator.inspect(sid)
            if info is None or info.active:
                return False
        return True

    await eventually(check, timeout=timeout)


@contextlib.asynccontextmanager
async def serving(fleet: Fleet) -> AsyncIterator[Fleet]:
    task = asyncio.create_task(fleet.serve())
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_once_in_order(got: list[Delivery], stored: list[str]) -> None:
    """Every stored event delivered, in stored order; an event twice only when redelivered."""
    seen: list[str | None] = []
    for d in got:
        if d.event.id in seen:
            assert d.redelivered, d
            assert d.event.id == seen[-1], "only the event in flight comes again"
        else:
            seen.append(d.event.id)
    assert seen == stored


def stored_ids(server: FakeQoderServer, session_id: str, start: str | None = None) -> list[str]:
    ids = [str(e["id"]) for e in server.stored_events(session_id)]
    return ids[ids.index(start) :] if start is not None else ids


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize("turn_ids", [True, False], ids=["turn_ids", "no_turn_ids"])
async def test_every_stored_event_once_in_order_then_released(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators, turn_ids: bool
) -> None:
    server.dialect.turn_ids = turn_ids
    sids = [str(server.add_session()["id"]) for _ in range(3)]
    coordinator = coordinators()
    rec = Recorder()
    async with Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        first: dict[str, str] = {}
        async with serving(fleet):
            for sid in sids:
                accepted = await fleet.send(sid, f"hello {sid}")
                first[sid] = str(accepted.last_event_id)
            await released(coordinator, *sids)
            tokens = {sid: rec.by_session[sid][-1].token for sid in sids}
            for sid in sids:
                await fleet.send(sid, "once more", on_busy="wait")
            await released(coordinator, *sids)
    for sid in sids:
        assert rec.ids(sid) == stored_ids(server, sid, first[sid])
        got = rec.by_session[sid]
        assert not any(d.redelivered for d in got)
        assert [d.event.type for d in got].count("user.message") == 2
        assert all(d.session_id == sid for d in got)
        assert all((d.turn_id is not None) == turn_ids for d in got)
        assert all(d.turn_id == d.event.turn_id for d in got)
        assert got[-1].token > tokens[sid]  # released, then claimed again: a new token
        info = await coordinator.inspect(sid)
        assert info is not None
        assert info.cursor == FleetCursor(
            got[-1].event.id or "", got[-1].event.processed_at, ends_turn=True
        )
    assert fleet.sessions == frozenset()
    assert fleet.delivered == len(rec.deliveries)


async def test_a_send_from_another_process_wakes_an_idle_worker_at_once(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    """Workers claim when the coordinator says a session became claimable, not
    only when they poll: with an hour between polls, every turn is still served."""
    sids = [str(server.add_session()["id"]) for _ in range(3)]
    coordinator = coordinators()
    rec = Recorder()
    worker = Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL, poll_interval=3600)
    front = Fleet(qc, coordinators(), worker_id="front", lease_ttl=TTL)  # never serves
    worker.handler(rec)
    async with worker, front, serving(worker):
        for _ in range(2):
            for sid in sids:
                await front.send(sid, "hello", on_busy="wait")
            await released(coordinator, *sids)
    for sid in sids:
        assert [d.event.type for d in rec.by_session[sid]].count("user.message") == 2
        assert rec.by_session[sid][-1].event.type == "session.status_idle"


async def test_history_before_the_first_fleet_send_is_not_delivered(
    server: FakeQoderServer, qc: QoderClient
) -> None:
    sid = str(server.add_session()["id"])
    await (await qc.session(sid).send("before the fleet")).result()
    coordinator = MemoryCoordinator()
    rec = Recorder()
    async with Fleet(qc, coordinator, lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        accepted = await fleet.send(sid, "first for the fleet")
        info = await coordinator.inspect(sid)
        assert info is not None
        anchor = accepted.events[0]
        assert info.cursor == FleetCursor(str(anchor.id), anchor.processed_at, inclusive=True)
        assert info.pending == (anchor.id,)
        async with serving(fleet):
            await released(coordinator, sid)
    assert rec.ids(sid) == stored_ids(server, sid, str(anchor.id))
    assert rec.deliveries[0].event.type == "user.message"


async def test_a_send_never_moves_a_committed_cursor(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    rec = Recorder()
    async with Fleet(qc, coordinator, lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await fleet.send(sid, "one")
            await released(coordinator, sid)
        committed = (await coordinator.inspect(sid)).cursor  # type: ignore[union-attr]
        assert committed is not None
        assert committed.ends_turn
        second = await fleet.send(sid, "two", on_busy="wait")  # nobody serves now
        info = await coordinator.inspect(sid)
        assert info is not None
        assert info.cursor == committed
        assert info.active
        assert info.pending == (second.events[0].id,)
        # the committed cursor is a public Cursor: it resumes a plain stream too
        assert isinstance(committed, Cursor)
        async with qc.sessions.events.stream(sid, last_event_id=committed) as stream:
            first = await anext(aiter(stream))
        assert first.id == second.events[0].id
        async with serving(fleet):
            await released(coordinator, sid)
    assert rec.ids(sid)[-len(stored_ids(server, sid, str(second.events[0].id))) :] == stored_ids(
        server, sid, str(second.events[0].id)
    )


async def test_an_answer_without_created_events_loses_nothing(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    sids = [str(server.add_session()["id"]) for _ in range(2)]
    coordinator = coordinators()
    rec = Recorder()
    server.faults.empty_send_data = 2
    async with Fleet(qc, coordinator, lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        for sid in sids:
            accepted = await fleet.send(sid, f"quiet {sid}")
            assert accepted.events == ()
        async with serving(fleet):
            await released(coordinator, *sids)
    for sid in sids:
        first = server.user_messages(sid)[0]["id"]
        assert rec.ids(sid) == stored_ids(server, sid, first)
    assert server.fault_counts["empty_send_data"] == 2


async def test_faults_on_the_wire_change_nothing_delivered(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    sids = [str(server.add_session()["id"]) for _ in range(4)]
    coordinator = coordinators()
    rec = Recorder()
    # Every resume re-sends 3 old frames, and drops hit those too: a connection cut
    # in the replay brings nothing new, so the stream's backoff grows (up to 8 s).
    server.faults.drop_probability = 0.08
    server.faults.duplicate_on_resume = 3
    server.faults.reorder_on_replay = True
    server.faults.stall_probability = 0.05
    server.faults.throttle_probability = 0.05
    server.faults.retry_after = 0.01
    server.faults.fail_send_after_store = 2
    async with Fleet(qc, coordinator, lease_ttl=TTL, stall_timeout=0.5) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            for turn in range(2):
                for sid in sids:
                    await fleet.send(sid, f"turn {turn}", on_busy="wait")
                await released(coordinator, *sids, timeout=40)
            # A full replay on every connection: with drops and stalls on every frame
            # too, no connection would ever get past the history.
            server.faults.drop_probability = server.faults.stall_probability = 0.0
            server.faults.ignore_last_event_id = True
            for sid in sids:
                await fleet.send(sid, "with the cursor ignored", on_busy="wait")
            await released(coordinator, *sids, timeout=40)
    for sid in sids:
        first = server.user_messages(sid)[0]["id"]
        assert rec.ids(sid) == stored_ids(server, sid, first)
        assert len(server.user_messages(sid)) == 3  # each send stored once
    counts = server.fault_counts
    assert counts["drop_probability"] > 0
    assert counts["duplicate_on_resume"] > 0
    assert counts["ignore_last_event_id"] > 0


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("turn_ids", [True, False], ids=["turn_ids", "no_turn_ids"])
async def test_tools_run_once_and_their_results_are_posted(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators, turn_ids: bool
) -> None:
    server.dialect.turn_ids = turn_ids
    server.script = tool_script("get_weather", {"city": "Paris"})
    sids = [str(server.add_session()["id"]) for _ in range(3)]
    coordinator = coordinators()
    calls: list[Mapping[str, Any]] = []

    def get_weather(args: Mapping[str, Any]) -> str:  # a plain function: runs in a thread
        calls.append(args)
        return f"18C in {args['city']}"

    rec = Recorder()
    async with Fleet(qc, coordinator, lease_ttl=TTL, tools={"get_weather": get_weather}) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            for sid in sids:
                await fleet.send(sid, "weather?")
            await released(coordinator, *sids)
    assert len(calls) == 3
    for sid in sids:
        events = server.stored_events(sid)
        results = [e for e in events if e["type"] == "user.custom_tool_result"]
        assert len(results) == 1
        uses = [e for e in events if e["type"] == "agent.custom_tool_use"]
        assert results[0]["custom_tool_use_id"] == uses[0]["id"]
        record = await coordinator.tool_record(sid, uses[0]["id"])
        assert record is not None
        assert record.state.value == "posted"
        messages = [e for e in events if e["type"] == "agent.message"]
        assert messages[-1]["content"][0]["text"] == "get_weather returned: 18C in Paris"
        assert rec.ids(sid) == stored_ids(server, sid, server.user_messages(sid)[0]["id"])


async def test_a_sub_agent_tool_result_echoes_its_thread(
    server: FakeQoderServer, qc: QoderClient
) -> None:
    server.script = subagent_tool_script("lookup", {"q": "x"})
    sid = str(server.add_session()["id"])
    coordinator = MemoryCoordinator()
    ran: list[str] = []

    async def lookup(args: Mapping[str, Any]) -> str:
        ran.append(str(args["q"]))
        return "found x"

    async with Fleet(qc, coordinator, lease_ttl=TTL, tools={"lookup": lookup}) as fleet:
        fleet.handler(Recorder())
        async with serving(fleet):
            await fleet.send(sid, "delegate")
            await released(coordinator, sid)
    events = server.stored_events(sid)
    use = next(e for e in events if e["type"] == "agent.custom_tool_use")
    result = next(e for e in events if e["type"] == "user.custom_tool_result")
    assert result["session_thread_id"] == use["session_thread_id"]
    assert ran == ["x"]
    assert events[-2]["content"][0]["text"] == "worker reports: lookup returned: found x"


async def test_a_refused_result_is_left_for_someone_else_to_answer(
    server: FakeQoderServer, qc: QoderClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = tool_script("get_weather", {"city": "Rome"})
    sid = str(server.add_session()["id"])
    coordinator = MemoryCoordinator()
    refusal = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    ).encode()

    def get_weather(args: Mapping[str, Any]) -> str:
        server.faults.respond_next.append(
            CannedResponse("POST", r"/events$", 400, {"Content-Type": "application/json"}, refusal)
        )
        return "warm"

    rec = Recorder()
    async with Fleet(qc, coordinator, lease_ttl=TTL, tools={"get_weather": get_weather}) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await fleet.send(sid, "weather?")

            async def paused_and_delivered() -> bool:
                return any(d.event.type == "session.status_idle" for d in rec.deliveries)

            await eventually(paused_and_delivered)
            assert "were refused" in caplog.text
            use = next(e for e in server.stored_events(sid) if e["type"] == "agent.custom_tool_use")
            record = await coordinator.tool_record(sid, use["id"])
            assert record is not None
            assert record.state.value == "done"  # stored, never posted: not run again either
            await qc.sessions.events.send(
                sid,
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": use["id"],
                    "content": "hot",
                },
            )
            await released(coordinator, sid)
    assert server.stored_events(sid)[-2]["content"][0]["text"] == "get_weather returned: hot"


async def _dead_owner(
    server: FakeQoderServer, qc: QoderClient, coordinator: Coordinator, store: str | None
) -> tuple[str, str, str]:
    """A turn paused on a tool; an owner that claimed the tool (and maybe stored a result),
    then went away with the pause in flight. Returns (session, tool use id, idle id)."""
    server.script = tool_script("get_weather", {"city": "Oslo"})
    sid = str(server.add_session()["id"])
    fleet = Fleet(qc, coordinator, lease_ttl=TTL)
    await fleet.send(sid, "weather?")

    async def paused() -> bool:
        return any(e["type"] == "session.status_idle" for e in server.stored_events(sid))

    await eventually(paused)
    events = server.stored_events(sid)
    use = next(e for e in events if e["type"] == "agent.custom_tool_use")
    idle = next(e for e in events if e["type"] == "session.status_idle")
    before_idle = events[events.index(idle) - 1]
    (claim,) = await coordinator.claim("dead", ttl=60.0)
    sent = server.user_messages(sid)[0]
    for ev in events[events.index(sent) : events.index(before_idle) + 1]:  # as a follower does
        await coordinator.commit(sid, claim.token, FleetCursor(ev["id"], ev["processed_at"]))
    await coordinator.begin_handler(sid, claim.token, idle["id"])
    await coordinator.claim_tool(sid, claim.token, use["id"])
    if store is not None:
        body = {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": use["id"],
            "content": [{"type": "text", "text": store}],
            "is_error": False,
        }
        await coordinator.store_tool_result(sid, claim.token, use["id"], json.dumps(body))
    await coordinator.hand_off(sid, claim.token)
    return sid, use["id"], idle["id"]


async def test_a_stored_result_is_posted_by_the_next_owner_never_rerun(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    coordinator = coordinators()
    sid, use_id, idle_id = await _dead_owner(server, qc, coordinator, store="-3C in Oslo")
    ran: list[object] = []
    rec = Recorder()
    async with Fleet(qc, coordinator, lease_ttl=TTL, tools={"get_weather": ran.append}) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await released(coordinator, sid)
    assert ran == []
    assert rec.deliveries[0].event.id == idle_id
    assert rec.deliveries[0].redelivered
    assert not any(d.redelivered for d in rec.deliveries[1:])
    events = server.stored_events(sid)
    assert [e["custom_tool_use_id"] for e in events if e["type"] == "user.custom_tool_result"] == [
        use_id
    ]
    assert events[-2]["content"][0]["text"] == "get_weather returned: -3C in Oslo"


async def test_a_tool_whose_owner_died_while_it_ran_is_never_run_again(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    coordinator = coordinators()
    sid, _, _ = await _dead_owner(server, qc, coordinator, store=None)
    ran: list[object] = []
    async with Fleet(qc, coordinator, lease_ttl=TTL, tools={"get_weather": ran.append}) as fleet:
        fleet.handler(Recorder())
        async with serving(fleet):
            await released(coordinator, sid)
    assert ran == []
    events = server.stored_events(sid)
    (result,) = [e for e in events if e["type"] == "user.custom_tool_result"]
    assert result["is_error"] is True
    assert "outcome is unknown" in result["content"][0]["text"]
    assert events[-2]["content"][0]["text"].startswith("get_weather failed: ")


# --------------------------------------------------------------------------- leases


async def slow_turn(ctx: TurnContext) -> None:
    for i in range(6):
        await ctx.sleep(0.01)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])


async def test_an_owner_past_its_lease_starts_nothing_and_the_heir_redelivers(
    server: FakeQoderServer, qc: QoderClient
) -> None:
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    clock = FakeClock()
    coordinator = MemoryCoordinator(clock=clock)
    a, b = Recorder("a"), Recorder("b")
    heir_has_it = asyncio.Event()

    async def pause_in_third(d: Delivery) -> None:
        if len(a.deliveries) == 3:
            clock.now += 3 * TTL  # a GC pause, SIGSTOP, a long await... past the lease
            await heir_has_it.wait()

    async def note(d: Delivery) -> None:
        if d.event.id == a.deliveries[2].event.id:
            heir_has_it.set()

    a.hook, b.hook = pause_in_third, note
    fleet_a = hooked(Fleet(qc, coordinator, worker_id="a", lease_ttl=TTL), clock=clock)
    fleet_b = hooked(Fleet(qc, coordinator, worker_id="b", lease_ttl=TTL), clock=clock)
    fleet_a.handler(a)
    fleet_b.handler(b)
    async with serving(fleet_a):
        await fleet_a.send(sid, "go")
        await eventually(lambda: asyncio.sleep(0, len(a.deliveries) == 3))
        async with serving(fleet_b):
            await released(coordinator, sid)
    assert len(a.deliveries) == 3  # nothing after the pause
    heir = b.deliveries[0]
    assert heir.event.id == a.deliveries[2].event.id
    assert heir.redelivered
    assert heir.token == a.deliveries[0].token + 1
    assert not any(d.redelivered for d in b.deliveries[1:])
    first = server.user_messages(sid)[0]["id"]
    assert [d.event.id for d in a.deliveries[:2] + b.deliveries] == stored_ids(server, sid, first)


async def test_a_lapsed_lease_nobody_took_is_renewed_and_delivery_goes_on(
    server: FakeQoderServer, qc: QoderClient
) -> None:
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    clock = FakeClock()
    coordinator = MemoryCoordinator(clock=clock)
    rec = Recorder()

    async def pause(d: Delivery) -> None:
        if len(rec.deliveries) == 2:
            clock.now += 3 * TTL

    rec.hook = pause
    # Only the send wakes the claim loop (no poll meanwhile): nobody claims the
    # lapsed lease, so the renewal revives it.
    async with hooked(
        Fleet(qc, coordinator, lease_ttl=TTL, poll_interval=3600), clock=clock
    ) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await fleet.send(sid, "go")
            await released(coordinator, sid)
    first = server.user_messages(sid)[0]["id"]
    assert rec.ids(sid) == stored_ids(server, sid, first)
    assert len({d.token for d in rec.deliveries}) == 1


async def test_a_worker_that_claims_again_its_own_lapsed_session_drops_the_old_follower(
    server: FakeQoderServer, qc: QoderClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Paused past its lease, a worker finds the session claimable and claims it
    again itself before its renewal loop runs: the old token is void, its
    follower (waiting at the gate for a renewal that will never include it)
    stops, no task is left behind, and the new one goes on from the committed
    cursor, every event once."""
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    clock = FakeClock()
    coordinator = MemoryCoordinator(clock=clock)
    renewals = asyncio.Event()
    renewals.set()

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)
        if seconds not in (WORK_WINDOW, 3600):  # the renewal loop's; the claim loop's pass
            await renewals.wait()

    rec = Recorder()

    async def pause(d: Delivery) -> None:
        if len(rec.deliveries) == 2:
            renewals.clear()
            clock.now += 3 * TTL
            await coordinator.mark_active(sid)  # wakes the claim loop

    rec.hook = pause
    fleet = hooked(
        Fleet(qc, coordinator, lease_ttl=TTL, poll_interval=3600), clock=clock, sleep=sleep
    )
    fleet.handler(rec)
    async with fleet, serving(fleet):
        await fleet.send(sid, "go")

        async def reclaimed() -> bool:
            info = await coordinator.inspect(sid)
            return info is not None and info.token == 2

        await eventually(reclaimed)
        renewals.set()
        await released(coordinator, sid)
    gc.collect()  # an abandoned follower would be destroyed (and say so) here
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    first = server.user_messages(sid)[0]["id"]
    fresh = [d for d in rec.deliveries if not d.redelivered]
    assert [d.event.id for d in fresh] == stored_ids(server, sid, first)
    assert len(rec.deliveries) - len(fresh) <= 1  # the handler the claim cut short, if any
    tokens = [d.token for d in rec.deliveries]
    assert tokens == sorted(tokens)
    assert set(tokens) == {1, 2}


async def test_a_refused_commit_stops_delivery_at_once(
    server: FakeQoderServer, qc: QoderClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    clock = FakeClock()
    coordinator = MemoryCoordinator(clock=clock)
    rec = Recorder()
    stolen: list[int] = []

    async def steal(d: Delivery) -> None:
        if len(rec.deliveries) == 2:
            clock.now += 3 * TTL
            (claim,) = await coordinator.claim("thief", ttl=60.0)
            stolen.append(claim.token)

    rec.hook = steal
    async with hooked(
        Fleet(qc, coordinator, worker_id="honest", lease_ttl=TTL), clock=clock
    ) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await fleet.send(sid, "go")
            await eventually(lambda: asyncio.sleep(0, sid not in fleet.sessions and stolen != []))
    assert len(rec.deliveries) == 2
    info = await coordinator.inspect(sid)
    assert info is not None
    assert info.holder == "thief"
    assert info.inflight is not None
    assert info.inflight.event_id == rec.deliveries[1].event.id  # the heir redelivers it


async def test_stopping_a_worker_hands_its_sessions_off(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    a, b = Recorder("a"), Recorder("b")
    stuck = asyncio.Event()

    async def block(d: Delivery) -> None:
        if len(a.deliveries) == 2:
            stuck.set()
            await asyncio.Event().wait()

    a.hook = block
    fleet_a = Fleet(qc, coordinator, worker_id="a", lease_ttl=60.0)
    fleet_a.handler(a)
    async with serving(fleet_a):
        await fleet_a.send(sid, "go")
        await stuck.wait()
    # handed off at once (no waiting out the 60 s lease), the interrupted event in flight
    info = await coordinator.inspect(sid)
    assert info is not None
    assert (info.active, info.holder) == (True, "")
    fleet_b = Fleet(qc, coordinators(), worker_id="b", lease_ttl=TTL)
    fleet_b.handler(b)
    async with serving(fleet_b):
        await released(coordinator, sid)
    assert b.deliveries[0].event.id == a.deliveries[1].event.id
    assert b.deliveries[0].redelivered


class CountingCoordinator(MemoryCoordinator):
    """A MemoryCoordinator that counts in-flight records made alone and with a commit."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = defaultdict(int)

    async def begin_handler(self, session_id: str, token: int, event_id: str) -> None:
        self.calls["begin_handler"] += 1
        await super().begin_handler(session_id, token, event_id)

    async def advance(
        self, session_id: str, token: int, cursor: FleetCursor, next_event_id: str
    ) -> bool:
        self.calls["advance"] += 1
        return await super().advance(session_id, token, cursor, next_event_id)


async def burst(ctx: TurnContext) -> None:
    for i in range(20):  # stored back to back: they arrive together
        ctx.emit("agent.message", content=[{"type": "text", "text": f"burst {i}"}])


async def test_events_that_arrive_together_cost_one_coordinator_call_each(
    server: FakeQoderServer, qc: QoderClient
) -> None:
    server.script = burst
    sid = str(server.add_session()["id"])
    coordinator = CountingCoordinator()
    rec = Recorder()

    async def slow(d: Delivery) -> None:
        await asyncio.sleep(0.001)  # the next events arrive meanwhile

    rec.hook = slow
    async with Fleet(qc, coordinator, lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            await fleet.send(sid, "go")
            await released(coordinator, sid)
    first = server.user_messages(sid)[0]["id"]
    assert rec.ids(sid) == stored_ids(server, sid, first)
    # every event recorded in flight exactly once, most of them along with a commit
    assert coordinator.calls["begin_handler"] + coordinator.calls["advance"] == len(rec.deliveries)
    assert coordinator.calls["advance"] >= 10


# --------------------------------------------------------------------------- Redis outage


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    binary = find_server_binary()
    if binary is None:
        pytest.skip("no redis-server/valkey-server binary to stop and restart")
    with RedisServer(binary, appendonly=True) as server:
        yield server


async def paced_turn(ctx: TurnContext) -> None:
    for i in range(40):
        await ctx.sleep(0.05)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])


async def test_a_redis_restart_stops_delivery_and_loses_nothing(
    server: FakeQoderServer, qc: QoderClient, private_redis: RedisServer
) -> None:
    server.script = paced_turn
    sids = [str(server.add_session()["id"]) for _ in range(4)]
    ttl = 1.0
    coordinator = RedisCoordinator.from_url(
        private_redis.url, namespace="restart", socket_timeout=0.25
    )
    rec = Recorder()
    fleet = Fleet(qc, coordinator, worker_id="w1", lease_ttl=ttl, poll_interval=0.05)
    fleet.handler(rec)
    try:
        async with serving(fleet):
            for sid in sids:
                await fleet.send(sid, "go")
            await eventually(lambda: asyncio.sleep(0, len(rec.deliveries) >= 20))
            stopped_at = time.monotonic()
            private_redis.stop()
            before = len(rec.deliveries)

            async def all_leases_ran_out() -> bool:
                runners = fleet._runners.values()
                return all(not r.follow.lease.may_start_handler() for r in runners)

            await eventually(all_leases_ran_out)
            during = rec.at[before:]
            assert all(at < stopped_at + ttl for at in during), (stopped_at, during)
            frozen_count = len(rec.deliveries)
            await asyncio.sleep(0)  # a loop turn: still nothing starts
            assert len(rec.deliveries) == frozen_count
            private_redis.start()
            await released(coordinator, *sids)
    finally:
        await coordinator.aclose()
    for sid in sids:
        first = server.user_messages(sid)[0]["id"]
        stored = stored_ids(server, sid, first)
        assert_once_in_order(rec.by_session[sid], stored)


# --------------------------------------------------------------------------- balancing


async def endless(ctx: TurnContext) -> None:
    await ctx.message("working")
    await ctx.sleep(30)


async def test_claims_respect_max_sessions_and_go_to_the_least_loaded(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    server.script = endless
    sids = [str(server.add_session()["id"]) for _ in range(7)]
    fleets = [
        Fleet(qc, coordinators(), worker_id="w1", lease_ttl=TTL, max_sessions=4),
        Fleet(qc, coordinators(), worker_id="w2", lease_ttl=TTL),
    ]
    for f in fleets:
        f.handler(Recorder())
    most: dict[str, int] = defaultdict(int)
    async with serving(fleets[0]):
        for sid in sids[:3]:
            await fleets[0].send(sid, "early")

        async def w1_has_three() -> bool:
            return len(fleets[0].sessions) == 3

        await eventually(w1_has_three)
        async with serving(fleets[1]):
            for sid in sids[3:]:
                await fleets[1].send(sid, "late")

            async def all_taken() -> bool:
                for f in fleets:
                    most[f.worker_id] = max(most[f.worker_id], len(f.sessions))
                return sum(len(f.sessions) for f in fleets) == len(sids)

            await eventually(all_taken)
            loads = {f.worker_id: len(f.sessions) for f in fleets}
    assert most["w1"] <= 4
    assert loads["w2"] >= 3  # the new work went to the idle worker first
    assert loads == {"w1": 4, "w2": 3} or loads == {"w1": 3, "w2": 4}


async def test_a_full_claim_batch_is_followed_by_another_round_at_once(
    qc: QoderClient, coordinators: Coordinators, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round looks at a bounded batch of claimable sessions; when the batch was full
    # and it claimed some, the next round runs at once, not a poll_interval later.
    from qoder_async.fleet import _fleet

    monkeypatch.setattr(_fleet, "_CLAIM_BATCH", 2)
    coordinator = coordinators()
    sids = [f"s{i}" for i in range(5)]
    for sid in sids:
        await coordinator.mark_active(sid)
    for claim in await coordinator.claim("setup", ttl=TTL, limit=5):  # each at a turn's end
        ended = FleetCursor(f"e-{claim.session_id}", None, ends_turn=True)
        await coordinator.commit(claim.session_id, claim.token, ended)
        await coordinator.hand_off(claim.session_id, claim.token)
    fleet = Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL, poll_interval=3600.0)
    fleet.handler(Recorder())

    async def all_released() -> bool:
        infos = [await coordinator.inspect(sid) for sid in sids]
        return not any(info is None or info.active for info in infos)

    async with serving(fleet):
        await eventually(all_released)


# --------------------------------------------------------------------------- configuration


async def test_configuration_errors(qc: QoderClient) -> None:
    fleet = Fleet(qc)
    with pytest.raises(ConfigurationError, match="handler"):
        await fleet.serve()
    fleet.handler(Recorder())
    with pytest.raises(ConfigurationError, match="already"):
        fleet.handler(Recorder())
    with pytest.raises(ConfigurationError, match="on_busy"):
        await fleet.send("sess_x", "hi", on_busy="later")  # type: ignore[arg-type]
    for bad in ({"lease_ttl": 0}, {"poll_interval": 0}, {"max_sessions": -1}):
        with pytest.raises(ConfigurationError):
            Fleet(qc, **bad)  # type: ignore[arg-type]
    assert isinstance(fleet.coordinator, MemoryCoordinator)
    assert fleet.worker_id
    assert repr(fleet).startswith("<Fleet ")


async def test_a_busy_session_raises_or_waits(server: FakeQoderServer, qc: QoderClient) -> None:
    server.script = slow_turn
    sid = str(server.add_session()["id"])
    fleet = Fleet(qc, lease_ttl=TTL)
    await fleet.send(sid, "first")
    with pytest.raises(SessionBusyError):
        await fleet.send(sid, "second")
    accepted = await fleet.send(sid, "second", on_busy="wait")
    assert accepted.events[0].type == "user.message"
    assert len(server.user_messages(sid)) == 2


# --------------------------------------------------------------------------- the README


def test_the_readme_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Running many workers\n", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "README.md#running-many-workers", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "reply for sess_" in out
    assert out.strip().endswith(": get_weather returned: 18°C and sunny in Paris")


# ------------------------------ out-of-order events, failing handlers and followers, lost Redis


def _earlier(processed_at: str, ms: int) -> str:
    instant = datetime.fromisoformat(processed_at.replace("Z", "+00:00"))
    return (instant - timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


async def skewed_turn(ctx: TurnContext) -> None:
    """Events stored in order, one stamped by a server writer whose clock is 50 ms behind."""
    for i in range(4):
        await ctx.sleep(0.02)
        ev = ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])
        if i == 2:
            stored = ctx._session.by_id[ev["id"]].event  # the server's own copy
            stored["processed_at"] = _earlier(stored["processed_at"], 50)


async def test_a_live_event_older_than_the_one_before_it_is_delivered(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators
) -> None:
    server.script = skewed_turn
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    rec = Recorder()
    async with Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            first = str((await fleet.send(sid, "go")).last_event_id)
            await released(coordinator, sid)
            await fleet.send(sid, "again", on_busy="wait")
            await released(coordinator, sid)
    stored = stored_ids(server, sid, first)
    times = [e["processed_at"] for e in server.stored_events(sid)]
    assert times != sorted(times)  # the skew is there
    assert rec.ids(sid) == stored  # every event, in stored order, once
    info = await coordinator.inspect(sid)
    assert info is not None
    assert info.cursor is not None
    assert info.cursor.event_id == stored[-1]


async def test_a_handler_raising_cancelled_error_is_a_handler_failure(
    server: FakeQoderServer,
    qc: QoderClient,
    coordinators: Coordinators,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script = paced_turn
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    rec = Recorder()
    raised: list[str | None] = []

    async def awaits_a_cancelled_task(d: Delivery) -> None:
        if d.event.type == "agent.message" and not raised:
            raised.append(d.event.id)
            task = asyncio.ensure_future(asyncio.sleep(10))
            task.cancel()
            await task  # ordinary asyncio code: raises CancelledError in the handler

    rec.hook = awaits_a_cancelled_task
    async with Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL) as fleet:
        fleet.handler(rec)
        async with serving(fleet):
            first = str((await fleet.send(sid, "go")).last_event_id)
            await released(coordinator, sid)
    assert rec.ids(sid) == stored_ids(server, sid, first)  # each once: no redelivery
    assert not any(d.redelivered for d in rec.deliveries)
    failures = [r for r in caplog.records if "CancelledError" in r.getMessage()]
    assert failures
    assert failures[0].levelno == logging.ERROR
    assert raised[0] in failures[0].getMessage()


class Crashing:
    """A coordinator whose ``begin_handler`` fails with a bug for the first ``times`` calls."""

    def __init__(self, inner: Coordinator, times: int) -> None:
        self.inner = inner
        self.times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def begin_handler(self, session_id: str, token: int, event_id: str) -> None:
        if self.times > 0:
            self.times -= 1
            raise RuntimeError("a bug in the follower")
        await self.inner.begin_handler(session_id, token, event_id)


async def test_a_crashing_follower_hands_off_after_a_growing_backoff(
    server: FakeQoderServer,
    qc: QoderClient,
    coordinators: Coordinators,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await asyncio.sleep(min(delay, 0.05))

    crashing = Crashing(coordinator, times=3)
    rec = Recorder()
    fleet = hooked(
        Fleet(qc, crashing, worker_id="w1", lease_ttl=TTL), sleep=sleep, rand=lambda: 0.5
    )  # type: ignore[arg-type]
    fleet.handler(rec)
    async with serving(fleet):
        first = str((await fleet.send(sid, "go")).last_event_id)
        await released(coordinator, sid)
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"following \S+ failed; handing it off in ([\d.]+)s", r.getMessage()))
    ]
    assert len(delays) == 3
    assert 0 < delays[0] < delays[1] < delays[2]  # backed off, never a hot loop
    assert all(any(abs(d - s) < 0.06 for s in slept) for d in delays)  # and waited
    assert rec.ids(sid) == stored_ids(server, sid, first)


async def test_redis_losing_its_data_mid_turn_loses_no_event(
    server: FakeQoderServer, qc: QoderClient, private_redis: RedisServer
) -> None:
    server.script = paced_turn
    sid = str(server.add_session()["id"])
    coordinator = RedisCoordinator.from_url(
        private_redis.url, namespace="flushed", socket_timeout=0.5
    )
    raw = redis_asyncio.Redis.from_url(private_redis.url)
    rec = Recorder()
    fleet = Fleet(qc, coordinator, worker_id="w1", lease_ttl=1.0, poll_interval=0.05)
    fleet.handler(rec)
    try:
        async with serving(fleet):
            first = str((await fleet.send(sid, "go")).last_event_id)
            await eventually(lambda: asyncio.sleep(0, len(rec.deliveries) >= 8))
            await raw.flushdb()  # FLUSHDB, or a restart without persistence
            await released(coordinator, sid)
            await fleet.send(sid, "again", on_busy="wait")  # must not anchor past a gap
            await released(coordinator, sid)
    finally:
        await raw.aclose()
        await coordinator.aclose()
    assert_once_in_order(rec.by_session[sid], stored_ids(server, sid, first))


async def test_serve_fails_fast_on_a_permanent_redis_misconfiguration(
    qc: QoderClient, redis_url: str
) -> None:
    bad = redis_url.replace("redis://", "redis://nobody:wrong@")
    async with RedisCoordinator.from_url(bad, namespace="misconfigured") as coordinator:
        fleet = Fleet(qc, coordinator, worker_id="w1", lease_ttl=TTL)
        fleet.handler(Recorder())
        with pytest.raises(ConfigurationError, match="authentication"):
            await asyncio.wait_for(fleet.serve(), timeout=20)
        assert not fleet.serving


def chatty_tool_script(before: int) -> Script:
    """tool_script's turn with ``before`` agent messages stored before the tool call."""
    call_tool = tool_script("get_weather", {"city": "Oslo"})

    async def script(ctx: TurnContext) -> StopReasonJSON | None:
        for n in range(before):
            ctx.emit("agent.message", content=[{"type": "text", "text": f"thinking {n}"}])
        return await call_tool(ctx)

    return script


# 40 events: more than the fleet reads ahead of a running handler (32).
@pytest.mark.parametrize("before", [0, 40], ids=["tool-next", "tool-40-events-later"])
async def test_a_handler_may_wait_to_send_to_its_own_session_while_a_tool_is_due(
    server: FakeQoderServer, qc: QoderClient, coordinators: Coordinators, before: int
) -> None:
    server.script = chatty_tool_script(before)
    sid = str(server.add_session()["id"])
    coordinator = coordinators()
    rec = Recorder()
    sent: list[str] = []

    async def follow_up(d: Delivery) -> None:
        if d.event.type == "user.message" and not sent:
            sent.append("pending")
            # The turn is about to pause on get_weather: only this fleet answers it.
            accepted = await fleet.send(sid, "and tomorrow?", on_busy="wait", busy_timeout=60)
            sent[0] = str(accepted.last_event_id)

    rec.hook = follow_up

    async def get_weather(tool_input: Mapping[str, Any]) -> str:
        return f"sunny in {tool_input['city']}"

    fleet = Fleet(
        qc, coordinator, worker_id="w1", lease_ttl=TTL, tools={"get_weather": get_weather}
    )
    fleet.handler(rec)
    async with fleet, serving(fleet):
        first = str((await fleet.send(sid, "weather?")).last_event_id)
        # deadlocked until busy_timeout before the fix
        await eventually(lambda: sent not in ([], ["pending"]), "the tool result sent", timeout=20)
        await released(coordinator, sid)
    assert len(server.user_messages(sid)) == 2
    assert rec.ids(sid) == stored_ids(server, sid, first)
    results = [e for e in server.stored_events(sid) if e["type"] == "user.custom_tool_result"]
    assert len(results) == 2  # both turns' tool calls answered once
