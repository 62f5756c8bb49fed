"""The engine's core, sans I/O: the stream machine, the router and live text together.

Property tests over any interleaving of drops (at any byte), replays from before
the cursor (in order or shuffled), replays of the whole history (a server that
ignores Last-Event-ID), reconnects and late or early send answers, with and
without ``turn_id``: every turn gets exactly its stored events, once, in order;
a listener gets every event after its start once; nothing older than the
cursor is ever handed out. Then the liveness and reconnect rules on a fake
clock, and live text across reconnects in both preview dialects.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qoder_async import (
    Cursor,
    ReconnectPolicy,
    ResumeExhaustedError,
    StreamStalledError,
    UserMessage,
)
from qoder_async._core import machine as machine_module
from qoder_async._core.backoff import Backoff
from qoder_async._core.machine import (
    FAILURE_RULES,
    LIVENESS_RULES,
    Cause,
    Dedupe,
    GiveUp,
    Reconnect,
    StreamMachine,
)
from qoder_async._core.models import Event
from qoder_async._core.sse import EventDecoder, time_key
from qoder_async._core.turns import RECONNECTED, LiveText, TurnRouter, text_delta
from qoder_async.types import (
    AgentContentBlockDelta,
    AgentMessage,
    EndTurn,
    PreviewDelta,
    PreviewStart,
    RequiresAction,
    SessionStatusIdle,
    SessionStatusRunning,
    SpanModelRequestEnd,
    TextBlock,
)

# ----------------------------------------------------------------------------- helpers


class Clock:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


T0 = datetime(2026, 5, 18, 3, 40, 48, tzinfo=UTC)


def stamp(i: int, style: int = 0) -> str:
    """The i-th processed_at: strictly increasing, written the ways servers write them.

    style 0: nanoseconds with trailing zeros trimmed (Go's RFC3339Nano);
    1: a +02:00 offset; 2: microseconds.
    """
    when = T0 + timedelta(microseconds=i * 123_457)
    nanos = i * 123_457_000 % 1_000_000_000 + 7  # distinct, ends in a non-zero digit
    if style == 1:
        local = when.astimezone(timezone(timedelta(hours=2)))
        return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}".rstrip("0") + "+02:00"
    if style == 2:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}".rstrip("0") + "Z"


def frame(ev: dict[str, Any]) -> bytes:
    return f"id: {ev['id']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode()


def new_machine(clock: Clock | None = None, **kw: Any) -> StreamMachine:
    kw.setdefault("policy", ReconnectPolicy(backoff=Backoff(jitter=0.0), max_attempts=None))
    return StreamMachine(clock=clock or Clock(), rand=lambda: 0.0, **kw)


def test_time_keys_order_every_documented_spelling() -> None:
    keys = [time_key(stamp(i, i % 3)) for i in range(200)]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    # A plain string comparison gets Go's trimmed fractions wrong; the key does not.
    assert "2026-05-18T03:40:48.8888517Z" > "2026-05-18T03:40:48.888851795Z"
    assert time_key("2026-05-18T03:40:48.8888517Z") < time_key("2026-05-18T03:40:48.888851795Z")  # type: ignore[operator]
    assert time_key("2026-05-18T05:40:48+02:00") == time_key("2026-05-18T03:40:48Z")
    assert time_key(None) is None
    assert time_key("yesterday") is None
    assert time_key(12) is None


# ----------------------------------------------------------------------------- the pipeline


def _turn(turn: str, k: int, rng: random.Random, tools: bool) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = [
        {"type": "user.message", "content": [{"type": "text", "text": f"msg {k}"}]},
        {"type": "session.status_running"},
        {"type": "span.model_request_start"},
    ]
    for j in range(rng.randint(0, 3)):
        evs.append({"type": "agent.message", "content": [{"type": "text", "text": f"{k}.{j}"}]})
    if tools:
        evs.append({"type": "agent.custom_tool_use", "name": "t", "input": {}})
        evs.append({"type": "session.status_idle", "stop_reason": None})  # patched below
        evs.append({"type": "user.custom_tool_result", "content": "ok"})
        evs.append({"type": "session.status_running"})
    if rng.random() < 0.3:
        evs.append({"type": "session.error", "error": {"retry_status": {"type": "retrying"}}})
    evs.append({"type": "span.model_request_end", "model_usage": {"input_tokens": 1}})
    evs.append({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})
    for ev in evs:
        ev["turn_id"] = turn
    return evs


def _history(
    seed: int, ours: int, foreign: int, stamps: bool
) -> tuple[list[dict[str, Any]], dict[str, range]]:
    """A session's stored events: our turns and other clients' turns, one after another."""
    rng = random.Random(seed)
    kinds = ["ours"] * ours + ["foreign"] * foreign
    rng.shuffle(kinds)
    history: list[dict[str, Any]] = [{"type": "session.updated"}]  # something before any turn
    mine: dict[str, range] = {}
    for k, kind in enumerate(kinds):
        turn = f"turn_{k}"
        evs = _turn(turn, k, rng, tools=rng.random() < 0.3)
        if rng.random() < 0.3:  # a session-level event between turns, without turn_id
            history.append({"type": "session.usage", "usage": {"input_tokens": k}})
        if kind == "ours":
            mine[turn] = range(len(history), len(history) + len(evs))
        history.extend(evs)
    for i, ev in enumerate(history):
        ev["id"] = f"evt_{rng.getrandbits(40):010x}_{i}"  # opaque: not in stream order
        if stamps:
            ev["processed_at"] = stamp(i, rng.randrange(3))
    for i, ev in enumerate(history):
        if ev["type"] == "session.status_idle" and ev.get("stop_reason") is None:
            use = history[i - 1]
            ev["stop_reason"] = {"type": "requires_action", "event_ids": [use["id"]]}
            history[i + 1]["custom_tool_use_id"] = use["id"]
    return history, mine


connection = st.tuples(
    st.sampled_from(["honour", "replay", "shuffle", "start"]),
    st.integers(0, 8),  # how many events before the cursor a replay re-sends
    st.integers(0, 200_000),  # where the connection drops (bytes)
)


# A kept event older than the current turn reached it when a later answer re-routed the backlog.
_OLDER_THAN_ITS_TURN: dict[str, Any] = {
    "seed": 686, "ours": 4, "foreign": 0, "stamps": False, "from_anchor": False,
    "connections": [], "lags": [0, 6, 4, -3], "chunk": 1,
}  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(**_OLDER_THAN_ITS_TURN, turn_ids=False, answer_turn_ids=False)
@example(**_OLDER_THAN_ITS_TURN, turn_ids=True, answer_turn_ids=True)
@example(**_OLDER_THAN_ITS_TURN, turn_ids=True, answer_turn_ids=False)
@given(
    seed=st.integers(0, 10_000),
    ours=st.integers(1, 4),
    foreign=st.integers(0, 3),
    turn_ids=st.booleans(),
    answer_turn_ids=st.booleans(),
    stamps=st.booleans(),
    from_anchor=st.booleans(),
    connections=st.lists(connection, max_size=7),
    lags=st.lists(st.integers(-3, 8), min_size=4, max_size=4),
    chunk=st.integers(1, 4096),
)
def test_every_turn_gets_exactly_its_events_whatever_the_server_replays(
    seed: int,
    ours: int,
    foreign: int,
    turn_ids: bool,
    answer_turn_ids: bool,
    stamps: bool,
    from_anchor: bool,
    connections: list[tuple[str, int, int]],
    lags: list[int],
    chunk: int,
) -> None:
    """Bytes with drops and replays -> decoder -> machine -> router, like a session's pump.

    The stream starts either right after the first turn's own user.message (a
    send opened it) or at an earlier event (a listener opened it). Each later
    send is answered ``lag`` events after (or before, when negative) its
    user.message is streamed; the answer may lack turn_id even when the stream
    has it. Without processed_at, events the client was never handed cannot be
    told from new ones (the documented limit): a server that replays from before
    the starting cursor is only drawn with stamps.
    """
    history, mine = _history(seed, ours, foreign, stamps)
    if not stamps:
        connections = [c for c in connections if c[0] != "start"]
    if not turn_ids:
        for ev in history:
            ev.pop("turn_id", None)
    ids = [ev["id"] for ev in history]
    frames = [frame(ev) for ev in history]
    order = sorted(mine, key=lambda t: mine[t][0])
    anchor_of = {t: mine[t][0] for t in order}
    first = order[0]
    if from_anchor:
        start_at = anchor_of[first]
    else:
        start_at = random.Random(seed).randrange(anchor_of[first])
    start = Cursor(ids[start_at], history[start_at].get("processed_at"))

    router: TurnRouter[str] = TurnRouter()
    machine = new_machine(cursor=start)
    decoder = EventDecoder()
    got: dict[str, list[str]] = {t: [] for t in order}
    heard: list[str] = []  # what a listener on this pump would get
    binds: dict[int, list[str]] = {}  # history index delivered -> turns answered then
    expects: dict[int, list[str]] = {}

    def bind(turn: str, started: bool = False) -> None:
        anchor = history[anchor_of[turn]]
        pairs = router.bind(
            turn,
            turn_id=turn if turn_ids and answer_turn_ids else None,
            anchor_id=anchor["id"],
            anchor_at=anchor.get("processed_at"),
            started=started,
            expected=not started,
        )
        for key, ev in pairs:
            got[key].append(ev.id or "")

    # A send is posted after the previous one was answered (the server refuses a message
    # while a turn runs): expect, then the answer, in order, before the next turn begins.
    previous = start_at
    for n, turn in enumerate(order):
        if from_anchor and turn == first:
            continue
        at = anchor_of[turn]
        lag = lags[n % len(lags)]
        nxt = anchor_of[order[n + 1]] - 1 if n + 1 < len(order) else len(history) - 1
        expect_at = max(previous, at - 1 - max(0, -lag))
        bind_at = max(expect_at, min(nxt, at + lag))
        expects.setdefault(expect_at, []).append(turn)
        binds.setdefault(bind_at, []).append(turn)
        previous = bind_at
    for _ in expects.pop(start_at, []):
        router.expect()
    if from_anchor:
        bind(first, started=True)
    for turn in binds.pop(start_at, []):
        bind(turn)

    def on_event(ev: Event) -> None:
        heard.append(ev.id or "")
        for key in router.route(ev):
            got[key].append(ev.id or "")
        index = ids.index(ev.id or "")
        for _ in expects.pop(index, []):
            router.expect()
        for turn in binds.pop(index, []):
            bind(turn)

    rng = random.Random(seed)
    plan = [*connections, ("honour", 0, -1)]
    for behaviour, back, drop in plan:
        resume = machine.connecting()
        after = ids.index(resume) + 1 if resume else 0
        if behaviour == "start":
            body_frames = frames
        else:
            # Without processed_at, only ids tell a replay from new events: a server may
            # re-send what this client was handed (or its cursor), not older history.
            lo = max(0 if stamps else start_at, after - back)
            replayed = frames[lo:after] if behaviour != "honour" else []
            if behaviour == "shuffle":
                replayed = replayed[:]
                rng.shuffle(replayed)
            body_frames = [*replayed, *frames[after:]]
        body = b": hi\n\n" + b"".join(body_frames)
        if drop >= 0:
            body = body[: drop % (len(body) + 1)]
        decoder.reconnected()
        machine.connected()
        for i in range(0, len(body), chunk):
            for ev in decoder.feed(body[i : i + chunk]):
                if machine.take(ev):
                    on_event(ev)
        machine.failed(Cause.EOF)

    expected = {}
    for turn in order:
        span = mine[turn]
        ids_of_turn = [ids[i] for i in span]
        expected[turn] = ids_of_turn[1:] if (from_anchor and turn == first) else ids_of_turn
    assert got == expected
    assert heard == ids[start_at + 1 :]
    assert router.live == ()


def test_a_stale_replay_cannot_end_a_new_turn_without_turn_ids() -> None:
    """The previous turn's tail is replayed before the cursor."""
    history, _ = _history(seed=7, ours=2, foreign=0, stamps=True)
    for ev in history:
        ev.pop("turn_id", None)
    second = max(i for i, ev in enumerate(history) if ev["type"] == "user.message")
    anchor = history[second]
    machine = new_machine(cursor=Cursor(anchor["id"], anchor["processed_at"]))
    router: TurnRouter[str] = TurnRouter()
    router.bind("t", turn_id=None, anchor_id=anchor["id"], anchor_at=anchor["processed_at"],
                started=True, expected=False)  # fmt: skip
    machine.connecting()
    machine.connected()
    replay = b"".join(frame(ev) for ev in history[second - 3 : second + 1])  # idle, anchor...
    events = EventDecoder().feed(replay + frame(history[second + 1]))
    routed = [ev.id for ev in events if machine.take(ev) and router.route(ev)]
    assert routed == [history[second + 1]["id"]]
    assert machine.stale == 3
    assert machine.duplicates == 1  # the anchor itself
    assert router.live != ()


def test_dedupe_is_per_session_and_marks_at_hand_out() -> None:
    dedupe = Dedupe(window=4)
    first = new_machine(dedupe=dedupe)
    evs = [AgentMessage((TextBlock("x"),), id=f"e{i}") for i in range(3)]
    first.connecting()
    assert [first.take(ev) for ev in evs[:2]] == [True, True]
    # e2 was decoded but never handed out: a later connection must still deliver it
    second = new_machine(dedupe=dedupe, cursor=first.cursor)
    second.connecting()
    assert [second.take(ev) for ev in evs] == [False, False, True]
    assert second.duplicates == 2


def test_previews_are_never_remembered_and_late_ones_are_dropped() -> None:
    machine = new_machine()
    machine.connecting()
    start = PreviewStart(event_id="m1", event_type="agent.message", id="m1")
    delta = PreviewDelta(event_id="m1", content=TextBlock("Hel"), id="m1")
    final = AgentMessage((TextBlock("Hello"),), id="m1")
    assert [machine.take(e) for e in (start, delta, final)] == [True, True, True]
    assert machine.last_event_id == "m1"
    assert machine.take(delta) is False  # a preview of an event already handed out
    assert machine.take(final) is False


def test_equal_or_missing_timestamps_fall_back_to_ids() -> None:
    at = stamp(5)
    machine = new_machine(cursor=Cursor("a", at))
    machine.connecting()
    same_time = AgentMessage((), id="b", processed_at=at)
    no_time = AgentMessage((), id="c")
    assert machine.take(same_time) is True
    assert machine.take(no_time) is True
    assert machine.take(AgentMessage((), id="old", processed_at=stamp(4))) is False
    assert machine.take(AgentMessage((), id="a", processed_at=at)) is False


# ----------------------------------------------------------------------------- liveness


def test_a_stall_is_bounded_across_reconnects() -> None:
    """Reconnects do not restart the stall clock; the bound is exact."""
    clock = Clock()
    m = new_machine(clock, stall_timeout=10.0, max_stalls=3, read_timeout=100.0)
    m.expecting = True  # a send awaits its turn
    started = clock.now
    outcome: Reconnect | GiveUp | None = None
    for _ in range(20):
        m.connecting()
        m.connected()
        while (verdict := m.check()) is None:
            m.chunks += 1  # heartbeats: bytes, not progress
            clock.advance(1.0)
        assert verdict is Cause.STALL
        outcome = m.failed(verdict)
        if isinstance(outcome, GiveUp):
            break
        clock.advance(outcome.delay)
    assert isinstance(outcome, GiveUp)
    assert isinstance(outcome.error, StreamStalledError)
    assert outcome.error.stalls == 3
    assert 30.0 <= clock.now - started < 33.0


def test_a_silent_server_ends_a_turn_within_the_bound() -> None:
    """Connects, then sends nothing at all: not even heartbeats."""
    clock = Clock()
    m = new_machine(
        clock,
        stall_timeout=10.0,
        max_stalls=3,
        read_timeout=4.0,
        policy=ReconnectPolicy(backoff=Backoff(initial=0.1, jitter=0.0), max_attempts=None),
    )
    m.expecting = True
    started = clock.now
    while True:
        m.connecting()
        m.connected()
        while (verdict := m.check()) is None:
            clock.advance(0.5)
        outcome = m.failed(verdict)
        if isinstance(outcome, GiveUp):
            break
        clock.advance(outcome.delay)
    assert isinstance(outcome.error, StreamStalledError)
    assert clock.now - started <= 3 * 10.0 + 4.0 + 1.0


def test_a_pause_for_the_client_is_not_a_stall() -> None:
    """``requires_action`` makes the session idle; silence is expected then."""
    clock = Clock()
    m = new_machine(clock, stall_timeout=10.0, max_stalls=2, read_timeout=None)
    m.connecting()
    m.connected()
    assert m.take(SessionStatusRunning(id="r"))
    assert m.active
    assert m.take(SessionStatusIdle(RequiresAction(("t1",)), id="i"))
    assert not m.active
    for _ in range(1000):
        clock.advance(1.0)
        m.chunks += 1
        assert m.check() is None
    m.expecting = True  # tool results posted: the session should resume
    clock.advance(9.0)
    assert m.check() is None  # the clock started when activity was expected
    clock.advance(1.0)
    assert m.check() is Cause.STALL


def test_a_busy_consumer_is_never_counted_against_the_stream() -> None:
    clock = Clock()
    m = new_machine(clock, stall_timeout=5.0, read_timeout=5.0)
    m.expecting = True
    m.connecting()
    m.connected()
    m.consumer_busy = True
    clock.advance(60.0)
    assert m.check() is None
    m.consumer_busy = False
    clock.advance(4.0)
    assert m.check() is None


def test_attempts_reset_on_events_or_a_healthy_idle_connection() -> None:
    clock = Clock()
    policy = ReconnectPolicy(backoff=Backoff(initial=1.0, jitter=0.0), max_attempts=3)
    m = new_machine(clock, policy=policy)
    delays = []
    for _ in range(3):
        m.connecting()
        m.connected()
        out = m.failed(Cause.ERROR)
        assert isinstance(out, Reconnect)
        delays.append(out.delay)
    assert delays == [1.0, 2.0, 4.0]
    m.connecting()
    m.connected()
    assert isinstance(m.failed(Cause.ERROR), GiveUp)
    # an event on a connection starts the count again
    m2 = new_machine(clock, policy=policy)
    for _ in range(3):
        m2.connecting()
        m2.connected()
        m2.failed(Cause.ERROR)
    m2.connecting()
    m2.connected()
    assert m2.take(AgentMessage((), id="x"))
    assert m2.failed(Cause.EOF) == Reconnect(1.0)
    # an idle session's connection that lived healthy_after seconds does too
    m3 = new_machine(clock, policy=policy)
    for _ in range(3):
        m3.connecting()
        m3.connected()
        m3.failed(Cause.ERROR)
    m3.connecting()
    m3.connected()
    clock.advance(policy.healthy_after)
    assert m3.failed(Cause.READ_TIMEOUT) == Reconnect(1.0)


def test_an_active_silent_connection_is_not_healthy() -> None:
    clock = Clock()
    policy = ReconnectPolicy(backoff=Backoff(initial=1.0, jitter=0.0), max_attempts=2)
    m = new_machine(clock, policy=policy)
    m.expecting = True
    outcomes = []
    for _ in range(3):
        m.connecting()
        m.connected()
        clock.advance(60.0)  # lived long, but received nothing
        outcomes.append(m.failed(Cause.READ_TIMEOUT))
    assert isinstance(outcomes[-1], GiveUp)
    assert isinstance(outcomes[-1].error, ResumeExhaustedError)


def test_the_server_retry_is_a_floor() -> None:
    m = new_machine()
    m.connecting()
    assert m.failed(Cause.STATUS, server_retry=7.5) == Reconnect(7.5)


# ----------------------------------------------------------------------------- the router


def test_a_turn_adopts_the_first_turn_id_after_its_message() -> None:
    """The 202 carried no turn_id, the stream does."""
    router: TurnRouter[str] = TurnRouter()
    router.bind("t", turn_id=None, anchor_id="u1", started=True, expected=False)
    assert router.route(SessionStatusRunning(id="r", turn_id="turn_9")) == ("t",)
    assert router.route(AgentMessage((), id="m", turn_id="turn_9")) == ("t",)
    assert router.route(AgentMessage((), id="x", turn_id="turn_other")) == ()
    assert router.route(SessionStatusIdle(EndTurn(), id="i", turn_id="turn_9")) == ("t",)
    assert router.live == ()
    # a finished turn's id is never adopted again
    router.bind("u", turn_id=None, anchor_id="u2", started=True, expected=False)
    assert router.route(AgentMessage((), id="late", turn_id="turn_9")) == ()


def test_a_turn_without_an_anchor_claims_the_next_message() -> None:
    """A 202 with "data": [] -- the turn follows from the cursor."""
    router: TurnRouter[str] = TurnRouter()
    router.expect()
    router.bind("t", turn_id=None, anchor_id=None)
    assert router.route(SessionStatusIdle(EndTurn(), id="old")) == ()
    assert router.route(UserMessage("hi", id="u1")) == ("t",)
    assert router.route(AgentMessage((), id="m1")) == ("t",)
    assert router.route(SessionStatusIdle(EndTurn(), id="i1")) == ("t",)
    assert router.live == ()


def test_a_turn_whose_echo_never_comes_starts_by_time() -> None:
    router: TurnRouter[str] = TurnRouter()
    router.expect()
    router.bind("t", turn_id=None, anchor_id="u1", anchor_at=stamp(10))
    assert router.route(AgentMessage((), id="before", processed_at=stamp(9))) == ()
    assert router.route(SessionStatusRunning(id="r", processed_at=stamp(11))) == ("t",)
    assert router.route(AgentMessage((), id="m")) == ("t",)


# ----------------------------------------------------------------------------- live text


@st.composite
def message_runs(draw: st.DrawFn) -> tuple[list[Any], str]:
    """A turn's text events in either dialect, with reconnects and lost deltas; and the text
    the user must end up with (final messages, or what was shown of aborted ones)."""
    incremental = draw(st.booleans())
    items: list[Any] = []
    segments: list[str] = []
    for k in range(draw(st.integers(1, 4))):
        text = draw(st.text(alphabet="abc xyz", min_size=1, max_size=12))
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=4))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        pieces = [p for p in pieces if p]
        aborted = draw(st.booleans()) and k > 0
        key = f"m{k}"
        shown = ""
        broken = False
        if incremental:
            sent = len(pieces) if not aborted else draw(st.integers(0, len(pieces)))
            for piece in pieces[:sent]:
                items.append(
                    AgentContentBlockDelta(message_id=key, delta_type="text_delta", text=piece)
                )
                shown += piece
                if draw(st.integers(0, 4)) == 0:
                    items.append(RECONNECTED)  # stored events: a resume loses none
        else:
            if draw(st.booleans()):
                items.append(PreviewStart(event_id=key, event_type="agent.message", id=key))
            else:
                broken = True  # connected in the middle: the start was missed
            for piece in pieces:
                if not broken and draw(st.integers(0, 4)) == 0:
                    items.append(RECONNECTED)
                    broken = True
                if broken and draw(st.booleans()):
                    continue  # a delta sent while the client was reconnecting: lost
                items.append(PreviewDelta(event_id=key, content=TextBlock(piece), id=key))
                if not broken:
                    shown += piece
        if aborted:
            items.append(SpanModelRequestEnd(id=f"s{k}"))
            segments.append(shown)
        else:
            items.append(AgentMessage((TextBlock(text),), id=key if not incremental else f"f{k}"))
            items.append(SpanModelRequestEnd(id=f"s{k}"))
            segments.append(text)
    return items, "\n\n".join(s for s in segments if s)


@settings(max_examples=300, deadline=None)
@given(message_runs())
def test_live_text_only_grows_and_ends_as_shown(run: tuple[list[Any], str]) -> None:
    """``text_stream``'s chunks joined equal result().text, whatever drops."""
    items, final = run
    live = LiveText()
    seen = [""]
    for item in items:
        live.feed(item)
        seen.append(live.text)
    for before, after in itertools.pairwise(seen):
        assert after.startswith(before)
    assert live.text == final


def test_live_text_keeps_an_interrupted_preview_as_shown() -> None:
    live = LiveText()
    live.feed(AgentMessage((TextBlock("done"),), id="m0"))
    live.feed(PreviewStart(event_id="m1", event_type="agent.message", id="m1"))
    live.feed(PreviewDelta(event_id="m1", content=TextBlock("partial"), id="m1"))
    live.feed(SpanModelRequestEnd(id="s1"))  # the request died: no message stored
    assert live.text == "done\n\npartial"
    live.feed(PreviewDelta(event_id="m1", content=TextBlock(" more"), id="m1"))
    assert live.text == "done\n\npartial"  # closed: later fragments are not shown


def test_live_text_ignores_sub_thread_messages() -> None:
    live = LiveText()
    live.feed(AgentMessage((TextBlock("from a helper"),), id="x", session_thread_id="sthr_1"))
    assert live.text == ""


def test_live_text_thinking_in_the_incremental_dialect() -> None:
    from qoder_async.types import AgentThinking

    live = LiveText()
    live.feed(AgentContentBlockDelta(message_id="msg1", delta_type="thinking_delta", text="hmm"))
    live.feed(AgentContentBlockDelta(message_id="msg1", delta_type="text_delta", text="Hi "))
    live.feed(AgentContentBlockDelta(message_id="msg1", delta_type="text_delta", text="there"))
    assert (live.text, live.thinking) == ("Hi there", "hmm")
    live.feed(AgentThinking("hmm.", id="t1"))
    live.feed(AgentMessage((TextBlock("Hi there"),), id="evt_final"))
    assert (live.text, live.thinking) == ("Hi there", "hmm.")


@settings(max_examples=200, deadline=None)
@given(message_runs())
def test_text_delta_chunks_join_to_the_text(run: tuple[list[Any], str]) -> None:
    items, final = run
    live = LiveText()
    emitted = ""
    chunks = []
    for item in items:
        live.feed(item)
        chunk = text_delta(emitted, live.text)
        emitted = live.text
        if chunk:
            chunks.append(chunk)
    assert "".join(chunks) == final


# ----------------------------------------------------------------------------- the machine's tables


def test_the_machine_docstring_shows_the_tables_the_code_runs() -> None:
    doc = machine_module.__doc__ or ""
    for table in machine_module.rule_tables():
        assert table in doc, f"the machine's docstring lost this table; paste:\n{table}"


def _liveness(rule: int) -> Cause | None:
    """A connected machine (stall_timeout 10, read_timeout 20) in the situation of row ``rule``."""
    clock = Clock()
    m = new_machine(clock, stall_timeout=10.0, read_timeout=20.0)
    m.connecting()
    m.connected()
    if rule == 0:  # busy consumer: silent for longer than both timeouts, yet fine
        m.expecting = True
        m.consumer_busy = True
        clock.advance(60.0)
    elif rule == 1:  # active, heartbeats only
        m.expecting = True
        for _ in range(9):
            clock.advance(1.0)
            m.chunks += 1
            assert m.check() is None
        clock.advance(1.0)
        m.chunks += 1
    else:  # not active (idle, requires_action): only the read clock runs
        assert m.take(SessionStatusIdle(RequiresAction(("t1",)), id="i"))
        clock.advance(20.0)
    return m.check()


@pytest.mark.parametrize(("row", "verdict"), [(0, None), (1, Cause.STALL), (2, Cause.READ_TIMEOUT)])
def test_each_liveness_row(row: int, verdict: Cause | None) -> None:
    assert len(LIVENESS_RULES) == 3, "a new row needs its case here"
    assert _liveness(row) is verdict


def _failure(row: int) -> Reconnect | GiveUp:
    """A machine whose connection ends in the situation of FAILURE_RULES[row]."""
    clock = Clock()
    policy = ReconnectPolicy(backoff=Backoff(initial=1.0, jitter=0.0), max_attempts=2)
    m = new_machine(clock, policy=policy, stall_timeout=10.0, max_stalls=2)
    m.expecting = True
    failures = {0: [Cause.STALL, Cause.STALL], 1: [Cause.STALL], 2: [Cause.ERROR] * 3}
    outcome: Reconnect | GiveUp | None = None
    for cause in failures.get(row, [Cause.ERROR, Cause.EOF]):
        m.connecting()
        m.connected()
        outcome = m.failed(cause, server_retry=3.0 if row == 3 else None)
    assert outcome is not None
    return outcome


def test_each_failure_row() -> None:
    assert len(FAILURE_RULES) == 4, "a new row needs its case here"
    stalled = _failure(0)
    assert isinstance(stalled, GiveUp)
    assert isinstance(stalled.error, StreamStalledError)
    assert stalled.error.stalls == 2
    assert _failure(1) == Reconnect(1.0)  # backoff(0): a stall is no failed attempt
    exhausted = _failure(2)
    assert isinstance(exhausted, GiveUp)
    assert isinstance(exhausted.error, ResumeExhaustedError)
    assert exhausted.error.attempts == 2
    assert _failure(3) == Reconnect(3.0)  # backoff(1) is 2.0; the server's retry is the floor
