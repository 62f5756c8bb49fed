"""The Coordinator contract, run against MemoryCoordinator and a real Redis/Valkey server.

Every case in the first part runs twice (``kind`` = memory, redis). Lease expiry
uses the injected clock for memory and short real TTLs for Redis; either way the
tests wait on conditions, never on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from conftest import eventually
from redis_server import (
    URL_VARIABLE,
    RedisServer,
    drop_namespace,
    find_server_binary,
    redis_url_fixture,  # noqa: F401 (the redis_url fixture)
)

from qoder_async import ConfigurationError, QoderError
from qoder_async.fleet import (
    WORK_WINDOW,
    Claim,
    Coordinator,
    CoordinatorUnavailableError,
    FleetCursor,
    InFlight,
    LeaseLostError,
    MemoryCoordinator,
    RedisCoordinator,
    SessionInfo,
    ToolState,
    WorkerLoad,
)
from qoder_async.fleet._lease import Balancer

LONG = 60.0  # a lease that does not run out during a test
SHORT = 0.25  # a lease a test waits out (real seconds with Redis)
ROOT = Path(__file__).resolve().parent.parent


def at(n: int) -> str:
    """An RFC 3339 processed_at, n milliseconds into a minute (ordered by n)."""
    return f"2026-05-18T03:40:{n // 1000:02d}.{n % 1000:03d}000000Z"


def cur(n: int) -> FleetCursor:
    return FleetCursor(f"evt_{n:04d}", at(n))


def anchor(n: int) -> FleetCursor:
    return FleetCursor(f"evt_{n:04d}", at(n), inclusive=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- fixtures


class Harness:
    """One coordinator under test, plus ways to make time pass and to add peers."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        self._redis_url = redis_url
        self._opened: list[Coordinator] = []
        self.coordinator = self.another()

    def another(self) -> Coordinator:
        """A second view of the same shared state (another worker's connection)."""
        if self.kind == "memory":
            if self._opened:
                return self._opened[0]
            coordinator: Coordinator = MemoryCoordinator(clock=self.clock)
        else:
            assert self._redis_url
            coordinator = RedisCoordinator.from_url(self._redis_url, namespace=self.namespace)
        self._opened.append(coordinator)
        return coordinator

    async def eventually(self, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
        """Let time pass (fake clock steps, or real waiting) until ``check`` is true."""
        async with asyncio.timeout(timeout):
            while not await check():
                if self.kind == "memory":
                    self.clock.now += 0.05
                else:
                    await asyncio.sleep(0.01)

    async def expired(self, session_id: str) -> None:
        """Wait until ``session_id``'s lease has run out."""

        async def gone() -> bool:
            return session_id in await self.coordinator.claimable()

        await self.eventually(gone)

    async def close(self) -> None:
        for c in self._opened:
            await c.aclose()
        if self.kind == "redis":  # leave a shared server (QODER_TEST_REDIS_URL) as we found it
            assert self._redis_url
            await drop_namespace(self._redis_url, self.namespace)


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    harness = Harness(request.param, url)
    yield harness
    await harness.close()


async def inspect(c: Coordinator, session_id: str) -> SessionInfo:
    info = await c.inspect(session_id)
    assert info is not None, session_id
    return info


async def claim_one(c: Coordinator, worker: str, ttl: float = LONG) -> Claim:
    claims = await c.claim(worker, ttl=ttl)
    assert len(claims) == 1, claims
    return claims[0]


# --------------------------------------------------------------------------- claims and tokens


async def test_conforms_to_protocol(h: Harness) -> None:
    assert isinstance(h.coordinator, Coordinator)


async def test_claim_takes_an_active_session_once(h: Harness) -> None:
    c = h.coordinator
    assert await c.claimable() == []
    assert await c.claim("w1", ttl=LONG) == []
    await c.mark_active("s1")
    assert await c.claimable() == ["s1"]
    claim = await claim_one(c, "w1")
    assert claim == Claim("s1", 1, None, None)
    assert await c.claimable() == []
    assert await h.another().claim("w2", ttl=LONG) == []
    info = await inspect(c, "s1")
    assert (info.active, info.holder, info.leased, info.token) == (True, "w1", True, 1)
    assert await c.inspect("nope") is None


async def test_concurrent_claimers_get_a_session_exactly_once(h: Harness) -> None:
    await h.coordinator.mark_active("s1")
    peers = [h.another() for _ in range(4)]
    results = await asyncio.gather(
        *(p.claim(f"w{i}-{j}", ttl=LONG) for i, p in enumerate(peers) for j in range(5))
    )
    won = [claim for claims in results for claim in claims]
    assert [claim.session_id for claim in won] == ["s1"]


async def test_claimable_is_oldest_activation_first(h: Harness) -> None:
    c = h.coordinator
    for sid in ("s3", "s1", "s2"):
        await c.mark_active(sid)
    await c.mark_active("s3")  # already in line: keeps its place
    assert await c.claimable() == ["s3", "s1", "s2"]
    assert await c.claimable(limit=2) == ["s3", "s1"]
    claims = await c.claim("w1", ttl=LONG, limit=2)
    assert [x.session_id for x in claims] == ["s3", "s1"]


async def test_token_increases_on_every_claim(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    tokens = []
    first = await claim_one(c, "w1")
    tokens.append(first.token)
    await c.hand_off("s1", first.token)
    second = await claim_one(c, "w2")
    tokens.append(second.token)
    await c.hand_off("s1", second.token)
    third = await claim_one(c, "w1", ttl=SHORT)
    tokens.append(third.token)
    await h.expired("s1")
    fourth = await claim_one(c, "w3")
    tokens.append(fourth.token)
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 4


async def test_stale_token_is_refused_everywhere(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    old = await claim_one(c, "w1")
    await c.hand_off("s1", old.token)
    new = await claim_one(c, "w2")
    stale = old.token
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: c.renew("s1", stale, ttl=LONG),
        lambda: c.begin_handler("s1", stale, "evt_1"),
        lambda: c.commit("s1", stale, cur(1)),
        lambda: c.advance("s1", stale, cur(1), "evt_2"),
        lambda: c.release("s1", stale),
        lambda: c.hand_off("s1", stale),
        lambda: c.claim_tool("s1", stale, "tool_1"),
        lambda: c.store_tool_result("s1", stale, "tool_1", "r"),
    ]
    for attempt in attempts:
        with pytest.raises(LeaseLostError) as info:
            await attempt()
        assert (info.value.session_id, info.value.token) == ("s1", stale)
        assert isinstance(info.value, QoderError)
    with pytest.raises(LeaseLostError):
        await c.renew("unknown", 1, ttl=LONG)
    assert await c.renew_many({"s1": stale}, ttl=LONG) == {"s1"}
    # the holder is untouched by all of that
    assert await c.renew_many({"s1": new.token}, ttl=LONG) == set()
    assert await c.commit("s1", new.token, cur(1)) is True
    info2 = await inspect(c, "s1")
    assert info2.holder == "w2"
    assert info2.cursor == cur(1)


async def test_expired_lease_is_taken_over_and_the_old_token_refused(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    old = await claim_one(c, "w1", ttl=SHORT)
    await c.commit("s1", old.token, cur(5))
    await h.expired("s1")
    new = await claim_one(h.another(), "w2")
    assert new.token == old.token + 1
    assert new.cursor == cur(5)
    with pytest.raises(LeaseLostError):
        await c.renew("s1", old.token, ttl=LONG)
    with pytest.raises(LeaseLostError):
        await c.commit("s1", old.token, cur(6))


async def test_every_lease_of_a_dead_worker_becomes_claimable(h: Harness) -> None:
    # More leases than one poll moves to the ready line (256) run out together: they
    # all become claimable, over a few polls at most, and are claimed once each.
    c = h.coordinator
    sids = [f"s{i:03d}" for i in range(300)]
    await asyncio.gather(*(c.mark_active(sid) for sid in sids))
    assert len(await c.claim("dead", ttl=SHORT, limit=300)) == 300

    async def all_claimable() -> bool:
        return len(await c.claimable()) == 300

    await h.eventually(all_claimable)
    taken = [x.session_id for x in await c.claim("heir", ttl=LONG, limit=300)]
    assert sorted(taken) == sids


async def test_lapsed_lease_nobody_claimed_is_revived_by_renewal(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    claim = await claim_one(c, "w1", ttl=SHORT)
    await h.expired("s1")
    info = await inspect(c, "s1")
    assert info.holder == "w1"
    assert not info.leased
    await c.renew("s1", claim.token, ttl=LONG)
    assert await c.claimable() == []
    assert await c.commit("s1", claim.token, cur(1)) is True


async def test_renew_many_reports_only_lost_sessions(h: Harness) -> None:
    c = h.coordinator
    for sid in ("s1", "s2", "s3"):
        await c.mark_active(sid)
    claims = {x.session_id: x.token for x in await c.claim("w1", ttl=LONG, limit=3)}
    await c.hand_off("s2", claims["s2"])
    assert await c.renew_many(claims, ttl=LONG) == {"s2"}
    assert await c.renew_many({}, ttl=LONG) == set()


async def test_ttl_must_be_positive(h: Harness) -> None:
    await h.coordinator.mark_active("s1")
    with pytest.raises(ValueError, match="ttl"):
        await h.coordinator.claim("w1", ttl=0)


# --------------------------------------------------------------------------- cursors


async def test_commit_is_never_refused_for_its_time(h: Harness) -> None:
    # Identity is the id and the stored order: server writers' clocks may disagree, so an
    # event stored after another may carry an earlier processed_at.
    c = h.coordinator
    await c.mark_active("s1")
    t = (await claim_one(c, "w1")).token
    assert await c.commit("s1", t, cur(20)) is True
    assert await c.commit("s1", t, cur(20)) is True  # a retried commit is harmless
    assert await c.commit("s1", t, cur(10)) is True
    info = await inspect(c, "s1")
    assert info.cursor == cur(10)
    assert await c.commit("s1", t, cur(30)) is True
    # without processed_at there is no order to check: taken as is
    assert await c.commit("s1", t, FleetCursor("evt_x")) is True
    info = await inspect(c, "s1")
    assert info.cursor == FleetCursor("evt_x")
    with pytest.raises(ValueError, match="inclusive"):
        await c.commit("s1", t, anchor(40))


async def test_advance_commits_then_records_the_next_event_in_flight(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(10))
    t = (await claim_one(c, "w1")).token
    await c.begin_handler("s1", t, "evt_0010")
    assert await c.advance("s1", t, cur(10), "evt_0011") is True
    info = await inspect(c, "s1")
    assert (info.cursor, info.inflight, info.pending) == (cur(10), InFlight("evt_0011", t), ())
    assert await c.release("s1", t) is False  # the next handler is in flight
    assert await c.advance("s1", t, cur(11), "evt_0012") is True
    info = await inspect(c, "s1")
    assert (info.cursor, info.inflight) == (cur(11), InFlight("evt_0012", t))
    with pytest.raises(ValueError, match="inclusive"):
        await c.advance("s1", t, anchor(13), "evt_0014")
    await c.hand_off("s1", t)
    heir = await claim_one(c, "w2")
    assert heir.inflight == InFlight("evt_0012", t)  # what the heir redelivers
    with pytest.raises(LeaseLostError):
        await c.advance("s1", t, cur(12), "evt_0013")
    info = await inspect(c, "s1")
    assert (info.cursor, info.inflight) == (cur(11), InFlight("evt_0012", t))  # unchanged


async def test_mark_active_sets_the_cursor_only_if_absent(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(10))
    claim = await claim_one(c, "w1")
    assert claim.cursor == anchor(10)
    await c.mark_active("s1", anchor(20))  # a later send: cursor untouched
    info = await inspect(c, "s1")
    assert info.cursor == anchor(10)
    await c.commit("s1", claim.token, cur(15))
    await c.mark_active("s1", anchor(5))  # an odd, older anchor never moves it either
    info = await inspect(c, "s1")
    assert info.cursor == cur(15)


async def test_processed_at_none_is_stored_as_none(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", FleetCursor("evt_1", None, inclusive=True))
    claim = await claim_one(c, "w1")
    assert claim.cursor == FleetCursor("evt_1", None, inclusive=True)


# --------------------------------------------------------------------------- release, pending


async def test_release_waits_for_pending_sends_and_in_flight_handlers(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(10))
    t = (await claim_one(c, "w1")).token
    assert await c.release("s1", t) is False  # its own message was never delivered
    info = await inspect(c, "s1")
    assert info.pending == ("evt_0010",)
    assert info.active
    await c.begin_handler("s1", t, "evt_0010")
    await c.commit("s1", t, cur(10))
    await c.begin_handler("s1", t, "evt_0011")
    assert await c.release("s1", t) is False  # a handler is in flight
    await c.commit("s1", t, cur(12))
    info = await inspect(c, "s1")
    assert info.pending == ()
    assert info.inflight is None
    assert await c.release("s1", t) is True
    info = await inspect(c, "s1")
    assert (info.active, info.holder, info.leased) == (False, "", False)
    assert await c.claimable() == []
    with pytest.raises(LeaseLostError):
        await c.release("s1", t)  # a retried release: gone either way
    with pytest.raises(LeaseLostError):
        await c.commit("s1", t, cur(13))


async def test_a_send_during_the_turn_end_keeps_the_session(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(10))
    t = (await claim_one(c, "w1")).token
    await c.commit("s1", t, cur(10))
    await c.commit("s1", t, cur(19))  # ... up to the turn's closing idle event
    await c.mark_active("s1", anchor(25))  # another send lands before the release
    assert await c.release("s1", t) is False
    await c.commit("s1", t, cur(25))
    assert await c.release("s1", t) is True
    await c.mark_active("s1", anchor(40))  # a send after release: active again
    claim = await claim_one(c, "w2")
    assert claim.token == t + 1
    assert claim.cursor == cur(25)
    assert claim.pending  # so its new owner need not try to release it first
    await c.commit("s1", claim.token, cur(40))
    await c.hand_off("s1", claim.token)
    assert not (await claim_one(c, "w3")).pending


async def test_a_send_already_delivered_is_not_pending(h: Harness) -> None:
    # The follower can commit a send's user.message before the sender marks it.
    c = h.coordinator
    await c.mark_active("s1", anchor(10))
    t = (await claim_one(c, "w1")).token
    for n in (10, 20, 30):
        await c.commit("s1", t, cur(n))
    await c.mark_active("s1", anchor(30))  # the same event, already committed
    await c.mark_active("s1", anchor(20))  # committed a little before
    info = await inspect(c, "s1")
    assert info.pending == ()
    await c.mark_active("s1", anchor(5))  # older by time, but never committed: pending
    assert (await inspect(c, "s1")).pending == ("evt_0005",)
    await c.commit("s1", t, cur(5))
    assert await c.release("s1", t) is True


async def test_the_next_owner_learns_the_cursor_ended_a_turn(h: Harness) -> None:
    # The owner committed the turn's closing event, then died before releasing:
    # the heir can release at once instead of waiting on a quiet stream.
    c = h.coordinator
    await c.mark_active("s1", anchor(1))
    first = await claim_one(c, "w1")
    await c.commit("s1", first.token, cur(1))
    idle = FleetCursor("evt_0009", at(9), ends_turn=True)
    await c.commit("s1", first.token, idle)
    await c.hand_off("s1", first.token)
    heir = await claim_one(c, "w2")
    assert heir.cursor == idle
    assert (await inspect(c, "s1")).cursor == idle
    assert await c.release("s1", heir.token) is True
    await c.mark_active("s1", anchor(10))
    third = await claim_one(c, "w3")
    assert third.cursor == idle
    await c.commit("s1", third.token, cur(10))  # not a turn end: the mark goes
    assert (await inspect(c, "s1")).cursor == cur(10)


async def test_hand_off_keeps_the_session_active_and_claimable(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(1))
    first = await claim_one(c, "w1")
    await c.begin_handler("s1", first.token, "evt_0001")
    await c.hand_off("s1", first.token)
    assert await c.claimable() == ["s1"]
    second = await claim_one(c, "w2")
    assert second.inflight == InFlight("evt_0001", first.token)
    with pytest.raises(LeaseLostError):
        await c.hand_off("s1", first.token)


async def test_watchers_hear_of_sessions_becoming_claimable_from_any_view(h: Harness) -> None:
    """``watch()`` is set by a mark_active or hand-off made through any view of the
    shared state (another process's connection, for Redis)."""
    peer = h.another()
    async with h.coordinator.watch() as work, h.coordinator.watch() as other:
        await peer.mark_active("s1", anchor(1))
        async with asyncio.timeout(10):
            await work.wait()
            await other.wait()
        claim = await claim_one(peer, "w1")
        await asyncio.sleep(2 * WORK_WINDOW)  # notifications: at most one per window
        work.clear()
        await peer.hand_off("s1", claim.token)
        async with asyncio.timeout(10):
            await work.wait()


# --------------------------------------------------------------------------- redelivery


async def test_in_flight_handler_is_redelivered_after_takeover(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(1))
    owner = await claim_one(c, "w1", ttl=SHORT)
    assert owner.inflight is None
    await c.begin_handler("s1", owner.token, "evt_0001")
    await c.commit("s1", owner.token, cur(1))
    await c.begin_handler("s1", owner.token, "evt_0002")
    # w1 dies inside the handler for evt_0002
    await h.expired("s1")
    heir = await claim_one(h.another(), "w2", ttl=SHORT)
    assert heir.cursor == cur(1)
    assert heir.inflight == InFlight("evt_0002", owner.token)
    await c.begin_handler("s1", heir.token, "evt_0002")
    info = await inspect(c, "s1")
    assert info.inflight == InFlight("evt_0002", heir.token)
    # the heir dies too, in the same handler: still exactly that event
    await h.expired("s1")
    third = await claim_one(c, "w3")
    assert third.inflight == InFlight("evt_0002", heir.token)
    await c.commit("s1", third.token, cur(2))
    await c.hand_off("s1", third.token)
    fourth = await claim_one(c, "w4")
    assert fourth.inflight is None
    assert fourth.cursor == cur(2)


# --------------------------------------------------------------------------- tool ledger


async def test_tool_ledger_lifecycle(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    t = (await claim_one(c, "w1")).token
    assert await c.tool_record("s1", "tu_1") is None
    record = await c.claim_tool("s1", t, "tu_1")
    assert record.state is ToolState.RUNNING
    assert record.token == t
    assert record.result is None
    assert record.may_run(t)
    assert (await c.claim_tool("s1", t, "tu_1")).may_run(t)  # a retried claim, same answer
    await c.mark_tool_posted("s1", "tu_1")  # nothing stored yet: no change
    assert (await c.tool_record("s1", "tu_1")) == record
    done = await c.store_tool_result("s1", t, "tu_1", '{"text": "42"}')
    assert done.state is ToolState.DONE
    assert done.result == '{"text": "42"}'
    again = await c.store_tool_result("s1", t, "tu_1", "another")
    assert again == done  # the first result wins
    assert not (await c.claim_tool("s1", t, "tu_1")).may_run(t)
    await c.mark_tool_posted("s1", "tu_1")
    posted = await c.tool_record("s1", "tu_1")
    assert posted is not None
    assert posted.state is ToolState.POSTED
    assert posted.result == '{"text": "42"}'
    empty = await c.store_tool_result("s1", t, "tu_2", "")
    assert empty.result == ""
    assert empty.state is ToolState.DONE


async def test_tool_runs_at_most_once_across_owners_and_concurrent_claimers(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    peers = [h.another() for _ in range(3)]
    tokens: list[int] = []
    allowed: set[int] = set()
    for round_ in range(4):
        token = (await claim_one(c, f"w{round_}")).token
        tokens.append(token)
        calls = [p.claim_tool("s1", t, "tu_1") for p in peers for t in tokens]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for t, result in zip([t for _ in peers for t in tokens], results, strict=True):
            if t != token:
                assert isinstance(result, LeaseLostError)
            else:
                assert not isinstance(result, BaseException)
                if result.may_run(t):
                    allowed.add(t)
        await c.hand_off("s1", token)
    assert allowed == {tokens[0]}


async def test_an_orphaned_tool_call_gets_a_result_without_running(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    first = await claim_one(c, "w1")
    await c.claim_tool("s1", first.token, "tu_1")
    await c.hand_off("s1", first.token)  # (or died) while the tool ran
    heir = await claim_one(c, "w2")
    record = await c.claim_tool("s1", heir.token, "tu_1")
    assert record.state is ToolState.RUNNING
    assert not record.may_run(heir.token)
    stored = await c.store_tool_result("s1", heir.token, "tu_1", "outcome unknown")
    assert stored.state is ToolState.DONE
    assert stored.token == first.token
    with pytest.raises(LeaseLostError):  # the old owner's late result is refused
        await c.store_tool_result("s1", first.token, "tu_1", "late")


async def test_a_stored_result_is_posted_by_the_next_owner(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1")
    first = await claim_one(c, "w1")
    await c.claim_tool("s1", first.token, "tu_1")
    await c.store_tool_result("s1", first.token, "tu_1", "result")
    await c.hand_off("s1", first.token)  # posting failed, the owner went away
    heir = await claim_one(c, "w2")
    record = await c.claim_tool("s1", heir.token, "tu_1")
    assert record.state is ToolState.DONE
    assert record.result == "result"
    assert not record.may_run(heir.token)
    await c.mark_tool_posted("s1", "tu_1")
    posted = await c.tool_record("s1", "tu_1")
    assert posted is not None
    assert posted.state is ToolState.POSTED


# --------------------------------------------------------------------------- workers, balancing


async def test_max_sessions_bounds_a_worker(h: Harness) -> None:
    c = h.coordinator
    for i in range(5):
        await c.mark_active(f"s{i}")
    got = await c.claim("w1", ttl=LONG, limit=10, max_sessions=2)
    assert len(got) == 2
    assert await c.claim("w1", ttl=LONG, limit=10, max_sessions=2) == []
    await c.hand_off(got[0].session_id, got[0].token)
    again = await c.claim("w1", ttl=LONG, limit=10, max_sessions=2)
    assert len(again) == 1
    assert await c.claim("w1", ttl=LONG, max_sessions=0) == []
    rest = await c.claim("w2", ttl=LONG, limit=10)
    assert len(rest) == 3  # w2 has no bound


async def test_max_sessions_holds_under_concurrent_claims_of_one_worker(h: Harness) -> None:
    c = h.coordinator
    for i in range(10):
        await c.mark_active(f"s{i}")
    peers = [h.another() for _ in range(3)]
    results = await asyncio.gather(
        *(p.claim("w1", ttl=LONG, limit=2, max_sessions=3) for p in peers for _ in range(4))
    )
    assert sum(len(r) for r in results) == 3


async def test_balancer_and_coordinator_spread_new_work(h: Harness) -> None:
    c = h.coordinator
    for i in range(2):  # w1 already follows two sessions
        await c.mark_active(f"old{i}")
    await c.claim("w1", ttl=LONG, limit=2)
    for i in range(7):
        await c.mark_active(f"new{i}")
    balancers = {w: Balancer(w) for w in ("w1", "w2", "w3")}
    for wid in balancers:  # a worker announces itself before it claims
        await c.announce(wid, ttl=LONG)
    for _ in range(3):  # a few polling rounds, workers one after the other
        for wid, balancer in balancers.items():
            loads = await c.workers()
            held = next((w.sessions for w in loads if w.worker_id == wid), 0)
            quota = balancer.quota(held, loads, len(await c.claimable()))
            if quota:
                await c.claim(wid, ttl=LONG, limit=quota)
    assert await c.claimable() == []
    assert [w.sessions for w in await c.workers()] == [3, 3, 3]


async def test_workers_report_live_members_and_their_load(h: Harness) -> None:
    c = h.coordinator
    await c.announce("w1", ttl=LONG, max_sessions=3)
    await c.announce("w2", ttl=SHORT)
    for i in range(3):
        await c.mark_active(f"s{i}")
    await c.claim("w1", ttl=LONG, limit=2)
    claim = await claim_one(c, "w2", ttl=SHORT)
    assert await c.workers() == [WorkerLoad("w1", 2, 3), WorkerLoad("w2", 1, None)]
    # w2 stops announcing: its record and its lease run out; w1 takes the session
    await h.expired(claim.session_id)
    await claim_one(c, "w1")

    async def only_w1() -> bool:
        return [w.worker_id for w in await c.workers()] == ["w1"]

    await h.eventually(only_w1)
    assert await c.workers() == [WorkerLoad("w1", 3, 3)]
    await c.retire("w1")
    assert await c.workers() == []


async def test_tool_records_of_different_session_and_use_ids_never_collide(h: Harness) -> None:
    # A key built by plain concatenation gives ("S:x", "T") and ("S", "x:T") one record.
    c = h.coordinator
    await c.mark_active("S:x")
    await c.mark_active("S")
    tokens = {claim.session_id: claim.token for claim in await c.claim("w1", ttl=LONG, limit=2)}
    first = await c.claim_tool("S:x", tokens["S:x"], "T")
    assert first.may_run(tokens["S:x"])
    await c.store_tool_result("S:x", tokens["S:x"], "T", "for S:x")
    second = await c.claim_tool("S", tokens["S"], "x:T")
    assert second.state is ToolState.RUNNING  # its own record, not the other's result
    assert (await c.tool_record("S", "x:T")) == second
    assert (await c.tool_record("S:x", "T")) is not None
    assert (await c.tool_record("S:x", "T")).result == "for S:x"  # type: ignore[union-attr]
    for sid in ("{evil}", "a}b{c", "s:1:2"):  # braces and separators are just characters
        await c.mark_active(sid)
    assert {"{evil}", "a}b{c", "s:1:2"} <= set(await c.claimable())


async def test_a_lost_record_is_restored_at_the_holders_cursor(h: Harness) -> None:
    c = h.coordinator
    await c.mark_active("s1", anchor(1))
    t = (await claim_one(c, "w1")).token
    await c.commit("s1", t, cur(1))
    # A record at this token or a newer one: the lease is really lost, nothing changes.
    assert await c.restore("s1", t, "w1", ttl=LONG, cursor=cur(5)) is False
    assert (await inspect(c, "s1")).cursor == cur(1)
    # Unknown session (the store lost everything): recreated, held, active, at our cursor.
    restored = await c.restore(
        "s2", 7, "w1", ttl=LONG, cursor=cur(3), inflight=InFlight("evt_0004", 7)
    )
    assert restored is True
    info = await inspect(c, "s2")
    assert (info.active, info.holder, info.leased, info.token) == (True, "w1", True, 7)
    assert (info.cursor, info.inflight) == (cur(3), InFlight("evt_0004", 7))
    await c.renew("s2", 7, ttl=LONG)  # valid again
    await c.commit("s2", 7, cur(4))
    # A send recreated the record after the loss (token 0, its anchor past the gap):
    # the holder's token is higher, so its cursor wins and the send stays pending.
    await c.mark_active("s3", anchor(50))
    assert await c.restore("s3", 4, "w1", ttl=LONG, cursor=cur(40)) is True
    info = await inspect(c, "s3")
    assert (info.cursor, info.pending, info.token) == (cur(40), ("evt_0050",), 4)
    assert await c.release("s3", 4) is False  # the send is still to deliver


async def test_a_second_instance_of_a_worker_id_is_refused(h: Harness) -> None:
    c, twin = h.coordinator, h.another()
    assert await c.announce("w1", ttl=LONG, instance="a") is True
    assert await c.announce("w1", ttl=LONG, instance="a") is True  # keeping itself alive
    assert await twin.announce("w1", ttl=LONG, instance="b") is False
    await twin.retire("w1", "b")  # the refused twin's clean shutdown...
    assert [w.worker_id for w in await c.workers()] == ["w1"]  # ...keeps the live record
    await c.retire("w1", "a")
    assert await c.workers() == []
    assert await twin.announce("w1", ttl=SHORT, instance="b") is True  # the id is free


# --------------------------------------------------------------------------- Redis only


@pytest.fixture
async def redis_h(redis_url: str) -> AsyncIterator[Harness]:
    harness = Harness("redis", redis_url)
    yield harness
    await harness.close()


async def test_redis_keys_live_under_the_namespace_with_ttls(redis_h: Harness) -> None:
    c = redis_h.coordinator
    await c.announce("w1", ttl=LONG)
    await c.mark_active("s1", anchor(1))
    t = (await claim_one(c, "w1")).token
    await c.claim_tool("s1", t, "tu_1")
    ns = "{" + redis_h.namespace + "}:"
    assert redis_h._redis_url
    raw = redis_asyncio.Redis.from_url(redis_h._redis_url, decode_responses=True)
    try:
        keys = sorted(await raw.keys(ns + "*"))
        if not os.environ.get(URL_VARIABLE):  # our own server: every key is some test's
            assert all(re.match(r"\{test-[0-9a-f]{12}\}:", k) for k in await raw.keys("*"))
        ttl = {k.removeprefix(ns): await raw.pttl(k) for k in keys}
    finally:
        await raw.aclose()
    # The notification window, if still open; -2: it closed between KEYS and PTTL.
    quiet = ttl.pop("work:quiet", None)
    assert quiet is None or quiet > 0 or quiet == -2
    assert set(ttl) == {
        "v2:line",
        "v2:line:seq",
        "v2:leases",  # s1's lease deadline (v2:ready is empty: nothing claimable)
        "s:s1",
        "pending:s1",
        "v2:held:w1",
        "v2:workers",
        "v2:w:w1",
        "tool:2:s1:tu_1",  # the session id's length first: parts never run together
    }
    expiring = {"v2:w:w1", "tool:2:s1:tu_1"}
    assert all(ttl[k] > 0 for k in expiring)
    assert all(ttl[k] == -1 for k in set(ttl) - expiring)


async def test_redis_survives_a_lost_script_cache(redis_h: Harness) -> None:
    c = redis_h.coordinator
    await c.mark_active("s1")
    assert redis_h._redis_url
    raw = redis_asyncio.Redis.from_url(redis_h._redis_url)
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    assert [x.session_id for x in await c.claim("w1", ttl=LONG)] == ["s1"]


async def test_redis_calls_wait_for_a_free_connection_instead_of_failing(
    redis_h: Harness,
) -> None:
    # A worker following hundreds of sessions makes more concurrent calls than the pool
    # holds connections: they queue (never a "Too many connections" taken for an outage).
    assert redis_h._redis_url
    c = RedisCoordinator.from_url(
        redis_h._redis_url, namespace=redis_h.namespace, max_connections=4
    )
    try:
        await asyncio.gather(*(c.mark_active(f"s{i}") for i in range(300)))
        infos = await asyncio.gather(*(c.inspect(f"s{i}") for i in range(300)))
        assert all(info is not None and info.active for info in infos)
    finally:
        await c.aclose()


def test_redis_namespace_is_checked() -> None:
    from qoder_async import ConfigurationError

    for bad in ("", "a b", "x{y}"):
        with pytest.raises(ConfigurationError):
            RedisCoordinator.from_url("redis://127.0.0.1:1/0", namespace=bad)


def test_fleet_imports_without_redis_and_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import qoder_async\n"
        "import qoder_async.fleet as fleet\n"
        "import qoder_async.fleet._coordinators as coordinators\n"
        "assert coordinators.redis_asyncio is None\n"
        "try:\n"
        "    fleet.RedisCoordinator.from_url('redis://127.0.0.1:1/0')\n"
        "except qoder_async.ConfigurationError as exc:\n"
        "    assert 'qoder-async[redis]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "fleet.MemoryCoordinator()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    binary = find_server_binary()
    if binary is None:
        pytest.skip("no redis-server/valkey-server binary to stop and restart")
    with RedisServer(binary, appendonly=True) as server:
        yield server


async def test_redis_outage_raises_unavailable_and_loses_nothing_committed(
    private_server: RedisServer,
) -> None:
    c = RedisCoordinator.from_url(private_server.url, namespace="outage", socket_timeout=2.0)
    try:
        await c.announce("w1", ttl=LONG)
        await c.mark_active("s1", anchor(1))
        claim = await claim_one(c, "w1")
        await c.begin_handler("s1", claim.token, "evt_0001")
        await c.commit("s1", claim.token, cur(1))
        await c.claim_tool("s1", claim.token, "tu_1")
        await c.store_tool_result("s1", claim.token, "tu_1", "result")

        private_server.stop()
        down: list[Callable[[], Awaitable[object]]] = [
            lambda: c.renew("s1", claim.token, ttl=LONG),
            lambda: c.commit("s1", claim.token, cur(2)),
            lambda: c.claim("w2", ttl=LONG),
            lambda: c.mark_active("s2"),
            lambda: c.inspect("s1"),
        ]
        for op in down:
            with pytest.raises(CoordinatorUnavailableError) as info:
                await op()
            assert isinstance(info.value, QoderError)
            assert info.value.__cause__ is not None

        private_server.start()

        async def answers() -> bool:
            try:
                await c.inspect("s1")
            except CoordinatorUnavailableError:
                return False
            return True

        await eventually(answers, "the coordinator answers again", timeout=10)
        info2 = await inspect(c, "s1")
        assert info2.cursor == cur(1)
        assert info2.holder == "w1"
        assert info2.token == claim.token
        record = await c.tool_record("s1", "tu_1")
        assert record is not None
        assert record.result == "result"
        await c.renew("s1", claim.token, ttl=LONG)  # the lease is still ours
        await c.hand_off("s1", claim.token)
        assert (await claim_one(c, "w2")).token == claim.token + 1  # tokens never repeat
    finally:
        await c.aclose()


async def test_redis_watchers_are_notified_again_after_a_restart(
    private_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The work channel's subscription comes back after Redis does (notifications
    sent while it was down are lost: the watchers are set once on resubscribing)."""
    c = RedisCoordinator.from_url(private_server.url, namespace="watch", socket_timeout=2.0)
    peer = RedisCoordinator.from_url(private_server.url, namespace="watch", socket_timeout=2.0)
    try:
        async with c.watch() as work:
            async with asyncio.timeout(10):  # subscribed, and hearing
                while not work.is_set():
                    await peer.mark_active("s0")
                    await asyncio.sleep(0.05)
            private_server.stop()

            def warned() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if r.levelname == "WARNING" and "the work channel failed" in r.getMessage()
                ]

            # the subscription notices (and says so)
            await eventually(warned, "a warning that the work channel failed", timeout=10)
            private_server.start()
            for n in range(2):  # the first may be the resubscription's own
                async with asyncio.timeout(20):
                    while True:
                        work.clear()
                        with contextlib.suppress(CoordinatorUnavailableError):
                            await peer.mark_active(f"s{n + 1}")
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.5):
                                await work.wait()
                                break
        assert len(warned()) == 1  # once per outage, not once per retry
    finally:
        await c.aclose()
        await peer.aclose()


# --------------------------------------------------------------------------- misconfiguration


async def test_a_key_of_the_namespace_with_another_type_is_a_configuration_error(
    redis_h: Harness,
) -> None:
    assert redis_h._redis_url
    raw = redis_asyncio.Redis.from_url(redis_h._redis_url)
    try:
        await raw.set("{" + redis_h.namespace + "}:line", "not a zset")
    finally:
        await raw.aclose()
    with pytest.raises(ConfigurationError, match="WRONGTYPE") as info:
        await redis_h.coordinator.claimable()
    assert "another type" in str(info.value)


async def test_bad_credentials_and_missing_permissions_are_configuration_errors(
    redis_url: str,
) -> None:
    user = f"qtest-{uuid.uuid4().hex[:8]}"
    raw = redis_asyncio.Redis.from_url(redis_url)
    await raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-evalsha")
    base = redis_url.removeprefix("redis://")
    try:
        for url, match in (
            (f"redis://{user}:wrong@{base}", "authentication failed"),
            (f"redis://{user}:pw@{base}", "permission"),
        ):
            c = RedisCoordinator.from_url(url, namespace="misconfigured")
            try:
                with pytest.raises(ConfigurationError, match=match):
                    await c.announce("w1", ttl=LONG)
            finally:
                await c.aclose()
    finally:
        await raw.execute_command("ACL", "DELUSER", user)
        await raw.aclose()


async def test_a_missing_password_is_a_configuration_error(private_server: RedisServer) -> None:
    raw = redis_asyncio.Redis.from_url(private_server.url)
    await raw.config_set("requirepass", "secret")
    await raw.aclose()
    c = RedisCoordinator.from_url(private_server.url, namespace="noauth")
    try:
        with pytest.raises(ConfigurationError, match="authentication"):
            await c.mark_active("s1")
    finally:
        await c.aclose()


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes (its first non-empty ``{...}``, else all)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start != -1 and end > start + 1 else key


async def test_ids_holding_braces_cannot_move_a_key_to_another_slot(redis_h: Harness) -> None:
    c = redis_h.coordinator
    sid, use, worker = "}{evil}:x", "{tu}", "{w}"
    await c.announce(worker, ttl=LONG)
    await c.mark_active(sid, anchor(1))
    t = (await claim_one(c, worker)).token
    await c.claim_tool(sid, t, use)
    await c.commit(sid, t, cur(1))
    assert redis_h._redis_url
    raw = redis_asyncio.Redis.from_url(redis_h._redis_url, decode_responses=True)
    try:
        keys = [k async for k in raw.scan_iter(match="{" + redis_h.namespace + "}:*")]
    finally:
        await raw.aclose()
    assert any(k.endswith(":" + sid) for k in keys)
    assert {hash_tag(k) for k in keys} == {redis_h.namespace}


async def _script_commands(raw: redis_asyncio.Redis, call: Awaitable[object]) -> dict[str, int]:
    """The Redis commands (by name) that ``call`` made the server run, scripts' own included."""
    await raw.config_resetstat()
    await call
    stats = await raw.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_a_poll_costs_the_same_however_many_sessions_are_leased(
    private_server: RedisServer,
) -> None:
    # A poll (claimable, then a claim) must not walk the active line: the commands the
    # server runs for it are the same with 10 and with 400 leased sessions.
    c = RedisCoordinator.from_url(private_server.url, namespace="poll")
    raw = redis_asyncio.Redis.from_url(private_server.url)
    try:
        await c.claimable(1)  # the scripts are loaded: no NOSCRIPT round below
        await c.claim("w", ttl=LONG, limit=0)
        counts = []
        for total in (10, 400):
            await asyncio.gather(*(c.mark_active(f"s{i}") for i in range(len(counts) * 10, total)))
            while await c.claim("busy", ttl=LONG, limit=500):
                pass
            await c.mark_active(f"new{total}")
            polled = await _script_commands(raw, c.claimable(256))
            claimed = await _script_commands(raw, c.claim("w", ttl=LONG, limit=1))
            counts.append((polled, claimed))
        assert counts[0] == counts[1]
    finally:
        await raw.aclose()
        await c.aclose()


async def test_workers_of_the_old_key_layout_are_refused_then_their_sessions_move(
    redis_h: Harness,
) -> None:
    # A namespace written by the layout before v2 (an active line walked by every claim,
    # a key per lease): while one of its workers lives, a new worker refuses to run
    # beside it (the two would both follow a session); once none lives, its active
    # sessions move over at their committed cursors, and their old leases end.
    c = redis_h.coordinator
    ns = "{" + redis_h.namespace + "}:"
    assert redis_h._redis_url
    raw = redis_asyncio.Redis.from_url(redis_h._redis_url, decode_responses=True)
    try:
        await raw.zadd(ns + "line", {"old1": 1, "old2": 2})
        await raw.set(ns + "line:seq", 2)
        await raw.hset(
            ns + "s:old1",
            mapping={"token": 3, "holder": "w-old", "c_id": "e1", "c_at": "", "c_key": ""}
            | {"c_incl": "0", "c_end": "0"},
        )
        await raw.hset(ns + "s:old2", mapping={"token": 0, "holder": ""})
        await raw.set(ns + "lease:old1", "w-old", px=60_000)
        await raw.sadd(ns + "held:w-old", "old1")
        await raw.sadd(ns + "workers", "w-old")
        await raw.hset(ns + "w:w-old", mapping={"max": "", "inst": "x"})
        await raw.pexpire(ns + "w:w-old", 60_000)
        await c.mark_active("new1")  # a front end of this version, meanwhile

        with pytest.raises(ConfigurationError, match="earlier qoder_async"):
            await c.announce("w-new", ttl=LONG)
        assert await c.claimable() == ["new1"]  # the old line stays the old workers'

        await raw.delete(ns + "w:w-old")  # the old worker stopped (or its record lapsed)
        assert await c.announce("w-new", ttl=LONG)
        assert await c.claimable() == ["new1", "old1", "old2"]
        claims = {x.session_id: x for x in await c.claim("w-new", ttl=LONG, limit=3)}
        assert (claims["old1"].token, claims["old1"].cursor) == (4, FleetCursor("e1", None))
        assert (claims["old2"].token, claims["old2"].cursor) == (1, None)
        left = {k.removeprefix(ns) for k in await raw.keys(ns + "*")}
        assert not left & {"line", "line:seq", "workers", "lease:old1", "held:w-old"}
    finally:
        await raw.aclose()


# --------------------------------------------------------------------------- one table, twice


async def _apply(c: Coordinator, op: tuple[str, int, int, int, int]) -> object:
    """Run one generated operation; its answer, or the name of what it raised."""
    name, sid, w, n, k = op
    s, worker = f"s{sid}", f"w{w}"
    token = (info.token if (info := await c.inspect(s)) is not None else 0) + k - 1  # stale..ahead
    try:
        if name == "mark":
            return await c.mark_active(s, anchor(n) if n else None)
        if name == "claim":
            max_sessions = k if k < 3 else None
            got = await c.claim(worker, ttl=LONG, limit=n + 1, max_sessions=max_sessions)
            return sorted((x.session_id, x.token, x.cursor, x.inflight, x.pending) for x in got)
        if name == "renew":
            return await c.renew_many({s: token, "s9": 1}, ttl=LONG)
        if name == "begin":
            return await c.begin_handler(s, token, f"evt_{n:04d}")
        if name == "commit":
            return await c.commit(s, token, FleetCursor(f"evt_{n:04d}", at(n), ends_turn=k == 1))
        if name == "advance":
            return await c.advance(s, token, cur(n), f"evt_{n + 1:04d}")
        if name == "release":
            return await c.release(s, token)
        if name == "hand_off":
            return await c.hand_off(s, token)
        if name == "restore":
            return await c.restore(s, token + 1, worker, ttl=LONG, cursor=cur(n))
        if name == "tool":
            return await c.claim_tool(s, token, f"tu{n}")
        if name == "store":
            return await c.store_tool_result(s, token, f"tu{n}", f"r{w}")
        if name == "posted":
            return await c.mark_tool_posted(s, f"tu{n}")
        if name == "announce":
            return await c.announce(worker, ttl=LONG, max_sessions=n or None)
        if name == "retire":
            return await c.retire(worker)
        raise AssertionError(name)
    except LeaseLostError:
        return "lost"


async def _state(c: Coordinator) -> object:
    return await asyncio.gather(  # one pipelined round trip for Redis
        *(c.inspect(f"s{i}") for i in range(4)),
        *(c.tool_record(f"s{i}", f"tu{n}") for i in range(4) for n in range(3)),
        c.claimable(),
        c.workers(),
    )


# Each operation row of the coordinator table (``fleet._lease``'s docstring) and the
# names the differential test below gives it.
_TABLE_OPS = {
    "mark_active": "mark",
    "claim": "claim",
    "renew": "renew",
    "begin_handler": "begin",
    "commit": "commit",
    "restore": "restore",
    "advance": "advance",
    "release": "release",
    "hand_off": "hand_off",
    "claim_tool": "tool",
    "store_tool_result": "store",
    "mark_tool_posted": "posted",
    "announce": "announce",
    "retire": "retire",
}


def test_every_row_of_the_coordinator_table_is_run_against_both_coordinators() -> None:
    from qoder_async.fleet import _lease

    doc = _lease.__doc__ or ""
    table = doc.split("Coordinator rules", 1)[1].split("Worker rules", 1)[0]
    rows = {m.group(1) for m in re.finditer(r"^([a-z_]+)[ (]", table, re.MULTILINE)}
    rows -= {"operation", "valid"}  # the header, and the token check every row uses
    assert rows == set(_TABLE_OPS)
    assert all(callable(getattr(Coordinator, name, None)) for name in rows)


@pytest.mark.parametrize("seed", range(3))
async def test_memory_and_redis_coordinators_answer_alike(redis_url: str, seed: int) -> None:
    # The same random operations (leases never run out here: expiry has its own cases
    # above), applied to both coordinators, get the same answers and leave the same state.
    rng = random.Random(seed)
    names = sorted(_TABLE_OPS.values())
    ops = [
        (rng.choice(names), rng.randrange(4), rng.randrange(3), rng.randrange(3), rng.randrange(4))
        for _ in range(120)
    ]
    memory = MemoryCoordinator()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    redis = RedisCoordinator.from_url(redis_url, namespace=namespace)
    try:
        for i, op in enumerate(ops):
            assert await _apply(memory, op) == await _apply(redis, op), (i, op)
            assert await _state(memory) == await _state(redis), (i, op)
    finally:
        await redis.aclose()
        await drop_namespace(redis_url, namespace)
