"""The sans-I/O lease core: cursor order, the worker's lease deadline, balancing, the table.

Everything runs on a fake clock; the properties (hypothesis) drive pauses,
renewals and clock jumps in any interleaving.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qoder_async
from qoder_async import Backoff, QoderError
from qoder_async._core.sse import time_key
from qoder_async._shell.eventstream import as_cursor
from qoder_async.fleet import LeaseLostError, _lease
from qoder_async.fleet._lease import (
    GATES,
    LEASE_RULES,
    Balancer,
    Claim,
    FleetCursor,
    Follow,
    Gate,
    Lease,
    LeaseEvent,
    LeaseStatus,
    LeaseTable,
    OutageBackoff,
    ToolState,
    WorkerLoad,
    covers,
    fair_shares,
    order_key,
    render_rules,
)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def half() -> float:
    return 0.5


# --------------------------------------------------------------------------- cursor order


def test_order_key_normalises_offsets_and_precision() -> None:
    assert order_key("2026-05-18T03:40:48.888851795Z") == "20260518034048888851795"
    assert order_key("2026-05-18T05:40:48.888851795+02:00") == "20260518034048888851795"
    assert order_key("2026-05-18t03:40:48z") == "20260518034048000000000"
    assert order_key("2026-05-18T03:40:48.1Z") == "20260518034048100000000"
    # digits past nanoseconds are dropped, not rounded into the next second
    assert order_key("2026-05-18T03:40:48.9999999999Z") == "20260518034048999999999"
    assert order_key("2026-05-17T23:00:00-05:00") == "20260518040000000000000"
    assert order_key("2026-05-18T05:40:48+0200") == "20260518034048000000000"
    # the stream's parser reads a missing offset as UTC; the coordinator agrees with it
    assert order_key("2026-05-18T03:40:48") == "20260518034048000000000"


def test_order_key_and_the_stream_floor_use_one_parser() -> None:
    samples = ["2026-05-18T03:40:48.5+01:00", "1999-12-31T23:59:59.999999999Z", "garbage"]
    for text in samples:
        key = time_key(text)
        assert (order_key(text) is None) == (key is None)
    a, b = "2026-05-18T03:40:48.5+01:00", "2026-05-18T02:40:48.6Z"
    assert (order_key(a) or "") < (order_key(b) or "")
    assert (time_key(a) or (0, 0)) < (time_key(b) or (0, 0))


@pytest.mark.parametrize(
    "text",
    [None, "", "yesterday", "2026-05-18", "2026-02-30T00:00:00Z", "9999-12-31T23:00:00-05:00"],
)
def test_order_key_of_something_unparseable_is_none(text: str | None) -> None:
    assert order_key(text) is None


@settings(max_examples=200, deadline=None)
@given(
    a=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9990, 1, 1)),
    b=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9990, 1, 1)),
    offset_a=st.integers(-14 * 60, 14 * 60),
    offset_b=st.integers(-14 * 60, 14 * 60),
    nanos_a=st.integers(0, 999),
    nanos_b=st.integers(0, 999),
)
def test_order_key_sorts_like_the_instants(
    a: datetime, b: datetime, offset_a: int, offset_b: int, nanos_a: int, nanos_b: int
) -> None:
    def render(d: datetime, offset: int, nanos: int) -> tuple[str, tuple[datetime, int]]:
        tz = timezone(timedelta(minutes=offset))
        local = d.replace(tzinfo=UTC).astimezone(tz)
        sign = "+" if offset >= 0 else "-"
        hh, mm = divmod(abs(offset), 60)
        text = (
            f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}{nanos:03d}{sign}{hh:02d}:{mm:02d}"
        )
        return text, (d, nanos)

    text_a, instant_a = render(a, offset_a, nanos_a)
    text_b, instant_b = render(b, offset_b, nanos_b)
    key_a, key_b = order_key(text_a), order_key(text_b)
    assert key_a is not None
    assert key_b is not None
    assert (key_a < key_b) == (instant_a < instant_b)
    assert (key_a == key_b) == (instant_a == instant_b)


def test_a_commit_is_never_refused_for_its_time() -> None:
    # Two server writers with clocks apart: the stored order is the order, not processed_at.
    table = LeaseTable(clock=Clock(0.0))
    table.mark_active("s1")
    (claim,) = table.claim("w1", ttl=5.0)
    late = FleetCursor("evt_a", "2026-05-18T04:00:00Z")
    early = FleetCursor("evt_b", "2026-05-18T03:00:00Z")  # stored after evt_a
    assert table.commit("s1", claim.token, late)
    assert table.commit("s1", claim.token, early)
    info = table.inspect("s1")
    assert info is not None
    assert info.cursor == early


def follower(cursor: FleetCursor | None) -> Follow:
    clock = Clock(0.0)
    lease = Lease("s1", 1, ttl=5.0, claimed_at=0.0, clock=clock, rand=half)
    return Follow(Claim("s1", 1, cursor), lease)


def test_a_live_event_older_than_the_cursor_is_delivered() -> None:
    at = "2026-05-18T03:00:{:02d}Z".format
    follow = follower(FleetCursor("evt_1", at(10)))
    follow.connecting()
    assert not follow.admit("evt_0", at(5))  # a replay from before the cursor
    assert follow.admit("evt_2", at(11))  # newer: replays are over for this connection
    follow.committed(follow.delivered("evt_2", at(11), ends_turn=False))
    assert follow.next_after(FleetCursor("evt_2", at(11)), "evt_3", at(9))
    assert follow.admit("evt_3", at(9))  # live, older than the one before it: delivered
    follow.committed(follow.delivered("evt_3", at(9), ends_turn=False))
    assert not follow.admit("evt_2", at(11))  # delivered by this follower: never twice
    assert not follow.admit("evt_3", at(9))
    follow.connecting()  # a new connection: replays older than the cursor dropped again
    assert not follow.admit("evt_x", at(8))
    assert follow.admit("evt_4", at(9))  # not older than the cursor


def test_following_towards_an_anchor_skips_what_is_older_then_takes_everything() -> None:
    at = "2026-05-18T03:00:{:02d}Z".format
    follow = follower(FleetCursor("evt_5", at(10), inclusive=True))
    follow.connecting()
    assert not follow.admit("evt_1", at(2))
    assert follow.admit("evt_5", at(10))  # the anchor itself: the first to deliver
    assert follow.admit("evt_6", at(3))  # after the anchor, live: delivered


def test_an_anchor_cannot_end_a_turn() -> None:
    with pytest.raises(ValueError, match="anchor"):
        FleetCursor("evt_1", inclusive=True, ends_turn=True)


def test_covers_is_by_id_only() -> None:
    committed = FleetCursor("evt_5", "2026-05-18T03:00:05Z")
    anchored = FleetCursor("evt_5", "2026-05-18T03:00:05Z", inclusive=True)
    assert covers(committed, "evt_5")
    assert not covers(anchored, "evt_5")  # the anchor itself is still to deliver
    assert not covers(committed, "evt_4")  # older by time: not known to be delivered
    assert not covers(None, "evt_5")


# --------------------------------------------------------------------------- the worker's lease


def make_lease(clock: Clock, ttl: float = 9.0, backoff: Backoff | None = None) -> Lease:
    return Lease("s1", 7, ttl=ttl, claimed_at=clock(), clock=clock, rand=half, backoff=backoff)


def test_deadline_counts_from_when_the_claim_was_sent() -> None:
    clock = Clock(100.0)
    lease = make_lease(clock)  # claim request sent at 100
    clock.now = 105.0  # ...answered at 105
    assert lease.deadline == 109.0
    assert lease.may_start_handler()
    clock.now = 108.999
    assert lease.may_start_handler()
    clock.now = 109.0
    assert not lease.may_start_handler()
    assert lease.status is LeaseStatus.EXPIRED


def test_renewal_is_due_at_a_third_of_the_ttl_and_counts_from_its_send_time() -> None:
    clock = Clock(100.0)
    lease = make_lease(clock)
    assert lease.next_renewal_at() == 103.0
    clock.now = 102.9
    assert not lease.renewal_due()
    clock.now = 103.0
    assert lease.renewal_due()
    sent = lease.renewal_started()
    assert lease.next_renewal_at() == float("inf")  # one at a time
    clock.now = 108.5  # a slow answer
    lease.renewed(sent)
    assert lease.confirmed_at == 103.0
    assert lease.deadline == 112.0
    assert lease.next_renewal_at() == 106.0
    assert lease.renewal_due()


def test_failed_renewals_back_off_and_a_success_resets() -> None:
    clock = Clock(0.0)
    lease = make_lease(clock, backoff=Backoff(initial=0.5, maximum=2.0, jitter=0.0))
    clock.now = 3.0
    delays = []
    for _ in range(4):
        sent = lease.renewal_started()
        delays.append(lease.renewal_failed(sent))
        clock.now = lease.next_renewal_at()
    assert delays == [0.5, 1.0, 2.0, 2.0]
    assert lease.failures == 4
    assert clock.now == 8.5
    assert lease.may_start_handler()  # still before 0 + 9
    sent = lease.renewal_started()
    lease.renewed(sent)
    assert lease.failures == 0
    assert lease.next_renewal_at() == 8.5 + 3.0


def test_an_expired_lease_starts_nothing_until_a_renewal_succeeds() -> None:
    clock = Clock(0.0)
    lease = make_lease(clock)
    clock.now = 30.0  # SIGSTOP, GC, a long await...
    assert not lease.may_start_handler()
    assert lease.renewal_due()
    sent = lease.renewal_started()
    lease.renewed(sent)  # nobody claimed it meanwhile: the coordinator revived it
    assert lease.may_start_handler()
    assert lease.deadline == 39.0


def test_a_refused_lease_is_lost_for_good() -> None:
    clock = Clock(0.0)
    lease = make_lease(clock)
    sent = lease.renewal_started()
    lease.lost()
    assert lease.status is LeaseStatus.LOST
    assert lease.done
    lease.renewed(sent)  # a late success changes nothing
    lease.released()
    assert lease.status is LeaseStatus.LOST
    assert not lease.may_start_handler()
    assert lease.next_renewal_at() == float("inf")


# --------------------------------------------------------------------------- the lease table


def test_the_docstring_shows_the_lease_rules_the_code_runs() -> None:
    assert _lease.__doc__ is not None
    assert render_rules() in _lease.__doc__


def lease_in(status: LeaseStatus, clock: Clock) -> Lease:
    """A lease (ttl 9, claimed at 0) driven into ``status`` the way a worker gets there."""
    lease = make_lease(clock)
    if status is LeaseStatus.EXPIRED:
        clock.now = 9.0
    elif status is LeaseStatus.LOST:
        lease.lost()
    elif status is LeaseStatus.RELEASED:
        lease.released()
    assert lease.status is status
    return lease


def answer(lease: Lease, event: LeaseEvent) -> None:
    sent = lease.renewal_started()
    {
        LeaseEvent.RENEWED: lambda: lease.renewed(sent),
        LeaseEvent.RENEWAL_FAILED: lambda: lease.renewal_failed(sent),
        LeaseEvent.REFUSED: lease.lost,
        LeaseEvent.RELEASED: lease.released,
    }[event]()


@pytest.mark.parametrize(
    ("rule", "status"),
    [(rule, status) for rule in LEASE_RULES for status in LeaseStatus if status in rule.before],
    ids=lambda x: x.event.name if isinstance(x, tuple) else x.name,
)
def test_each_lease_rule(rule: _lease.LeaseRule, status: LeaseStatus) -> None:
    clock = Clock(0.0)
    lease = lease_in(status, clock)
    answer(lease, rule.event)
    assert lease.status is (status if rule.after is None else rule.after)
    if rule.event is LeaseEvent.RENEWED:  # counted from the renewal's send time
        assert (lease.confirmed_at, lease.failures) == (clock.now, 0)


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (event, status)
        for event in LeaseEvent
        for status in LeaseStatus
        if not any(r.event is event and status in r.before for r in LEASE_RULES)
    ],
    ids=lambda x: x.name,
)
def test_an_answer_no_rule_names_changes_nothing(event: LeaseEvent, status: LeaseStatus) -> None:
    clock = Clock(0.0)
    lease = lease_in(status, clock)
    answer(lease, event)
    assert lease.status is status


@pytest.mark.parametrize("status", list(LeaseStatus), ids=lambda s: s.name)
def test_each_gate_rule(status: LeaseStatus) -> None:
    clock = Clock(0.0)
    lease = lease_in(status, clock)
    follow = Follow(Claim("s1", 7, None), lease)
    assert follow.gate() is GATES[status]
    assert (follow.gate() is Gate.START) is lease.may_start_handler()


def test_a_released_lease_is_done() -> None:
    clock = Clock(0.0)
    lease = make_lease(clock)
    lease.released()
    assert lease.status is LeaseStatus.RELEASED
    assert not lease.may_start_handler()
    assert not lease.renewal_due()


@pytest.mark.parametrize(("ttl", "renew_at"), [(0.0, 0.5), (-1.0, 0.5), (9.0, 1.0), (9.0, 0.0)])
def test_lease_arguments_are_checked(ttl: float, renew_at: float) -> None:
    with pytest.raises(ValueError, match=r"ttl|renew_at"):
        Lease("s1", 1, ttl=ttl, renew_at=renew_at, claimed_at=0.0, clock=Clock(), rand=half)


lease_steps = st.lists(
    st.one_of(
        st.tuples(st.just("pause"), st.floats(0.0, 3.0)),
        st.tuples(st.just("jump"), st.floats(0.0, 100.0)),
        st.tuples(st.just("send"), st.just(0.0)),
        st.tuples(st.just("ok"), st.floats(0.0, 1.0)),
        st.tuples(st.just("fail"), st.floats(0.0, 1.0)),
        st.tuples(st.just("refuse"), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ttl=st.floats(0.5, 20.0), steps=lease_steps)
def test_a_worker_never_believes_in_a_lease_past_ttl_after_its_last_renewal(
    ttl: float, steps: list[tuple[str, float]]
) -> None:
    clock = Clock(0.0)
    lease = Lease("s1", 1, ttl=ttl, claimed_at=0.0, clock=clock, rand=random.random)
    last_success = 0.0  # send time of the latest successful claim/renewal request
    in_flight: list[float] = []
    lost = False
    for kind, value in steps:
        if kind in ("pause", "jump"):
            clock.now += value
        elif kind == "send":
            in_flight.append(lease.renewal_started())
        elif kind in ("ok", "fail") and in_flight:
            sent = in_flight.pop(int(value * len(in_flight)) % len(in_flight))
            if kind == "ok":
                lease.renewed(sent)
                if not lost:
                    last_success = max(last_success, sent)
            else:
                lease.renewal_failed(sent)
        elif kind == "refuse":
            lease.lost()
            lost = True
        believes = lease.may_start_handler()
        if believes:
            assert not lost
            assert clock.now - last_success < ttl
        else:  # and it gives up no sooner than it must
            assert lost or clock.now - last_success >= ttl
        assert lease.deadline == last_success + ttl


# --------------------------------------------------------------------------- balancing


def test_fair_shares_fill_the_least_loaded_first() -> None:
    loads = [WorkerLoad("w2", 5), WorkerLoad("w0", 0), WorkerLoad("w1", 2)]
    assert fair_shares(loads, 4) == {"w0": 3, "w1": 1, "w2": 0}
    assert fair_shares(loads, 0) == {"w0": 0, "w1": 0, "w2": 0}
    bounded = [WorkerLoad("w0", 0, 1), WorkerLoad("w1", 2, 2), WorkerLoad("w2", 5)]
    assert fair_shares(bounded, 4) == {"w0": 1, "w1": 0, "w2": 3}
    full = [WorkerLoad("w0", 1, 1)]
    assert fair_shares(full, 3) == {"w0": 0}


@settings(max_examples=200, deadline=None)
@given(
    loads=st.lists(
        st.tuples(st.integers(0, 20), st.none() | st.integers(0, 25)), min_size=1, max_size=8
    ),
    claimable=st.integers(0, 60),
    seed=st.randoms(use_true_random=False),
)
def test_fair_shares_properties(
    loads: list[tuple[int, int | None]], claimable: int, seed: random.Random
) -> None:
    workers = [WorkerLoad(f"w{i}", n, m) for i, (n, m) in enumerate(loads)]
    shares = fair_shares(workers, claimable)
    shuffled = list(workers)
    seed.shuffle(shuffled)
    assert fair_shares(shuffled, claimable) == shares  # same snapshot, same answer
    rooms = [w.room for w in workers]
    capacity = None if None in rooms else sum(r for r in rooms if r is not None)
    expected = claimable if capacity is None else min(claimable, capacity)
    assert sum(shares.values()) == expected
    final = {w.worker_id: w.sessions + shares[w.worker_id] for w in workers}
    for w in workers:
        assert w.room is None or shares[w.worker_id] <= w.room
    for a in workers:
        if shares[a.worker_id] == 0:
            continue
        for b in workers:
            left = None if b.room is None else b.room - shares[b.worker_id]
            if left is None or left > 0:
                assert final[a.worker_id] - 1 <= final[b.worker_id]


def test_balancer_claims_its_share_with_its_own_fresh_count() -> None:
    b = Balancer("w1")
    loads = [WorkerLoad("w1", 0), WorkerLoad("w2", 4)]
    assert b.quota(4, loads, 2) == 1  # the snapshot said 0; it holds 4 now
    assert b.quota(0, loads, 6) == 5


def test_balancer_takes_one_when_work_waits_too_long() -> None:
    b = Balancer("w9", patience=3)
    loads = [WorkerLoad("w1", 0), WorkerLoad("w9", 10)]
    assert [b.quota(10, loads, 1) for _ in range(7)] == [0, 0, 1, 0, 0, 1, 0]
    assert b.quota(10, loads, 0) == 0  # nothing waits: the count starts over
    assert [b.quota(10, loads, 1) for _ in range(3)] == [0, 0, 1]


def test_balancer_never_exceeds_max_sessions() -> None:
    b = Balancer("w1", max_sessions=2, patience=1)
    assert b.quota(0, [], 5) == 2
    assert b.quota(2, [WorkerLoad("w2", 9)], 5) == 0
    assert b.room(1) == 1
    assert Balancer("w").room(100) is None
    with pytest.raises(ValueError, match="max_sessions"):
        Balancer("w", max_sessions=-1)


# --------------------------------------------------------------------------- outage


def test_outage_backoff_grows_is_capped_and_resets() -> None:
    clock = Clock(0.0)
    outage = OutageBackoff(Backoff(initial=0.1, maximum=0.4, jitter=0.0), clock=clock, rand=half)
    assert not outage.down
    assert outage.down_for == 0.0
    delays = []
    for _ in range(5):
        delays.append(outage.failed())
        clock.now += delays[-1]
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert outage.down
    assert outage.down_for == pytest.approx(1.5)
    outage.recovered()
    assert not outage.down
    assert outage.failed() == 0.1


# --------------------------------------------------------------------------- the table


def test_table_errors_are_qoder_errors() -> None:
    table = LeaseTable(clock=Clock())
    with pytest.raises(LeaseLostError) as info:
        table.renew("s1", 1, ttl=1.0)
    assert isinstance(info.value, QoderError)
    assert "s1" in str(info.value)


def test_table_tool_ledger_records_expire() -> None:
    clock = Clock()
    table = LeaseTable(clock=clock, ledger_ttl=10.0)
    table.mark_active("s1")
    token = table.claim("w1", ttl=100.0)[0].token
    assert table.claim_tool("s1", token, "tu").state is ToolState.RUNNING
    clock.now += 10.0
    assert table.tool_record("s1", "tu") is None


table_ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "mark",
                "claim",
                "renew",
                "commit",
                "advance",
                "begin",
                "release",
                "hand_off",
                "tool",
                "wait",
            ]
        ),
        st.integers(0, 2),  # session
        st.integers(0, 2),  # worker
        st.integers(0, 40),  # event / time
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=table_ops)
def test_table_fencing_holds_under_any_interleaving(ops: list[tuple[str, int, int, int]]) -> None:
    clock = Clock(0.0)
    table = LeaseTable(clock=clock)
    issued: dict[str, list[int]] = {}  # session -> tokens in the order issued
    let_go: set[tuple[str, int]] = set()  # released or handed off
    mine: dict[tuple[str, str], int] = {}  # (worker, session) -> its latest token
    runners: dict[str, set[int]] = {}  # tool -> tokens told to run it
    for op, s, w, n in ops:
        sid, wid = f"s{s}", f"w{w}"
        if op == "mark":
            table.mark_active(
                sid, FleetCursor(f"e{n}", f"2026-01-01T00:00:{n:02d}Z", inclusive=True)
            )
            continue
        if op == "wait":
            clock.now += n / 4
            continue
        if op == "claim":
            for claim in table.claim(wid, ttl=5.0, limit=2):
                tokens = issued.setdefault(claim.session_id, [])
                assert not tokens or claim.token > tokens[-1]
                tokens.append(claim.token)
                mine[(wid, claim.session_id)] = claim.token
            continue
        token = mine.get((wid, sid))
        if token is None:
            continue
        valid = issued[sid][-1] == token and (sid, token) not in let_go
        before = table.inspect(sid)
        try:
            if op == "renew":
                table.renew(sid, token, ttl=5.0)
            elif op == "commit":
                stored = table.commit(
                    sid, token, FleetCursor(f"e{n}", f"2026-01-01T00:00:{n:02d}Z")
                )
                assert stored
            elif op == "advance":
                stored = table.advance(
                    sid, token, FleetCursor(f"e{n}", f"2026-01-01T00:00:{n:02d}Z"), f"e{n + 1}"
                )
                assert stored
                after_advance = table.inspect(sid)
                assert after_advance is not None
                assert after_advance.inflight is not None
                assert after_advance.inflight.event_id == f"e{n + 1}"
            elif op == "begin":
                table.begin_handler(sid, token, f"e{n}")
            elif op == "release":
                if table.release(sid, token):
                    let_go.add((sid, token))
            elif op == "hand_off":
                table.hand_off(sid, token)
                let_go.add((sid, token))
            elif op == "tool":
                record = table.claim_tool(sid, token, f"{sid}-tool{n % 3}")
                if record.may_run(token):
                    runners.setdefault(record.tool_use_id, set()).add(token)
        except LeaseLostError:
            assert not valid, (op, sid, token)
        else:
            assert valid, (op, sid, token)
        after = table.inspect(sid)
        assert after is not None
        assert before is not None
        if not valid:
            assert after == before  # a refused call changes nothing
    assert all(len(tokens) <= 1 for tokens in runners.values())


def test_a_fleet_cursor_is_the_public_cursor_with_two_flags() -> None:
    cursor = FleetCursor("evt_9", "2026-05-18T03:00:09Z", ends_turn=True)
    assert isinstance(cursor, qoder_async.Cursor)
    assert (cursor.event_id, cursor.processed_at, str(cursor)) == (
        "evt_9",
        cursor.processed_at,
        "evt_9",
    )
    assert as_cursor(cursor) is cursor  # what client.sessions.events.stream() takes
    assert cursor != qoder_async.Cursor("evt_9", "2026-05-18T03:00:09Z")  # the flags matter
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cursor.inclusive = True  # type: ignore[misc]
