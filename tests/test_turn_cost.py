"""What a turn costs: each event folded once, and a turn that keeps no events.

A turn folds every event as it is delivered (``TurnFold``): ``result()`` and
snapshots build from that fold, never from a second pass over the events; the
live text is fed each event once. ``send(..., keep_events=False)`` keeps none
of the turn's events, so a long turn holds what ``result()`` returns without
them (text, messages, tool calls, errors).
"""

from __future__ import annotations

import collections
import tracemalloc
from collections.abc import Iterator

import pytest

from qoder_async import ConfigurationError, QoderClient
from qoder_async._core import turns
from qoder_async._core.convert import structure_event
from qoder_async._core.turns import Item, LiveText, TurnFold, fold_many
from qoder_async.testing import FakeQoderServer, TurnContext
from qoder_async.types import AgentMessage

REPLY = ("The first answer.", "The second answer, a little longer.")


async def two_messages(ctx: TurnContext) -> None:
    for text in REPLY:
        await ctx.message(text, chunks=3)


async def test_each_event_reaches_the_fold_and_the_live_text_once(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``result()`` (read twice) and snapshots do not fold the turn's events again."""
    fed: collections.Counter[int] = collections.Counter()
    feed = LiveText.feed

    def counting(self: LiveText, ev: Item) -> bool:
        fed[id(ev)] += 1
        return feed(self, ev)

    monkeypatch.setattr(LiveText, "feed", counting)
    server.script = two_messages
    turn = await client.session(session_id).send("go")
    chunks = [c async for c in turn.text_stream()]
    first = await turn.result()
    again = await turn.result()
    assert "".join(chunks) == first.text == "\n\n".join(REPLY)
    messages = [ev for ev in first.events if isinstance(ev, AgentMessage)]
    assert [m.text for m in messages] == list(REPLY)
    assert all(fed[id(m)] == 1 for m in messages)
    assert max(fed.values()) == 1
    assert turn.snapshot() is first is again  # built once, after the end


async def test_a_turn_that_keeps_no_events_still_gives_its_text_and_messages(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = two_messages
    session = client.session(session_id)
    turn = await session.send("go", keep_events=False)
    assert not turn.keep_events
    chunks = [c async for c in turn.text_stream()]
    result = await turn.result()
    assert "".join(chunks) == result.text == "\n\n".join(REPLY)
    assert [m.text for m in result.messages] == list(REPLY)
    assert result.events == () == turn.events
    assert result.stop_reason is not None
    assert result.stop_reason.ends_turn
    with pytest.raises(ConfigurationError, match="keep_events=False"):
        async for _ in turn:
            pass
    kept = await session.send("again")  # the default keeps them
    assert (await kept.result()).events


def _noise(n: int) -> Iterator[Item]:
    """``n`` events that ``result()`` returns nothing of unless it keeps events."""
    for i in range(n):
        kind = "session.status_running" if i % 2 else "span.model_request_end"
        yield structure_event({"id": f"evt_{i}", "type": kind, "turn_id": "turn_1"})


def test_a_long_fold_without_kept_events_holds_what_its_result_returns() -> None:
    """100,000 events, none kept: the fold's memory does not grow with them."""
    fold = TurnFold(keep_events=False)
    message = {
        "id": "evt_m",
        "type": "agent.message",
        "content": [{"type": "text", "text": "the reply"}],
    }
    fold.feed(structure_event(message))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ev in _noise(100_000):
            fold.feed(ev)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    result = fold.result()
    assert result.events == ()
    assert result.text == "the reply"
    assert result.turn_id == "turn_1"
    assert grown < 64 * 1024  # the same fold keeping them holds ~100,000 events


def test_a_fold_fed_one_by_one_equals_fold_many() -> None:
    events: list[Item] = [*_noise(4), turns.RECONNECTED, *_noise(3)]
    fold = TurnFold()
    for ev in events:
        fold.feed(ev)
    assert fold.result() == fold_many(None, events)
    assert fold.result().events == tuple(ev for ev in events if ev is not turns.RECONNECTED)
