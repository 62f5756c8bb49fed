"""LiveText against a reference model, and the cost of its updates.

The reference is the plain reading of the live-text table in ``_core/turns.py``:
a list of segments scanned on every update (what the first version shipped).
``LiveText`` keeps indexes instead so that a turn of any length folds in O(1)
per event; these tests pin that both give the same text for any sequence of
inputs, that :class:`TextReader` hands out exactly what changed, and that no
update (only a rewrite of the text, once) walks the segments.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from qoder_async._core.turns import MESSAGE_SEPARATOR, RECONNECTED, LiveText, _Track, text_delta
from qoder_async.types import (
    AgentContentBlockDelta,
    AgentMessage,
    AgentThinking,
    PreviewDelta,
    PreviewStart,
    SpanModelRequestEnd,
    TextBlock,
)

OPEN, BROKEN, FINAL, ENDED = 0, 1, 2, 3


class RefSegment:
    def __init__(self, key: str | None, text: str, state: int, incremental: bool) -> None:
        self.key, self.text, self.state, self.incremental = key, text, state, incremental


class RefTrack:
    """The table read literally: every update may scan all segments."""

    def __init__(self) -> None:
        self.segments: list[RefSegment] = []
        self.by_key: dict[str, RefSegment] = {}

    @property
    def text(self) -> str:
        return MESSAGE_SEPARATOR.join(s.text for s in self.segments if s.text)

    def new(self, key: str | None, text: str, state: int, incremental: bool) -> RefSegment:
        seg = RefSegment(key, text, state, incremental)
        self.segments.append(seg)
        if key is not None:
            self.by_key[key] = seg
        return seg

    def start(self, key: str | None) -> None:
        if key is None or key not in self.by_key:
            self.new(key, "", OPEN, False)

    def delta(self, key: str | None, text: str, incremental: bool) -> None:
        seg = self.by_key.get(key) if key is not None else None
        if seg is None:
            seg = self.new(key, "", OPEN if incremental else BROKEN, incremental)
        if seg.state == OPEN:
            seg.text += text

    def final(self, key: str | None, text: str) -> None:
        seg = self.by_key.get(key) if key is not None else None
        if seg is None:
            seg = next((s for s in self.segments if s.incremental and s.state == OPEN), None)
            if seg is not None and seg.key is not None and self.by_key.get(seg.key) is seg:
                del self.by_key[seg.key]
        if seg is None:
            self.new(key, text, FINAL, False)
            return
        seg.text, seg.state, seg.key = text, FINAL, key
        if key is not None:
            self.by_key[key] = seg

    def retract(self, key: str | None) -> None:
        seg = self.by_key.pop(key, None) if key is not None else None
        if seg is not None and seg.state != FINAL:
            self.segments.remove(seg)

    def settle(self, state_from: tuple[int, ...], to: int, incremental: bool | None) -> None:
        for seg in self.segments:
            if seg.state in state_from and (incremental is None or seg.incremental == incremental):
                seg.state = to


class RefLive:
    def __init__(self) -> None:
        self.reply, self.thinking = RefTrack(), RefTrack()

    def feed(self, ev: Any) -> None:
        if ev is RECONNECTED:
            self.reply.settle((OPEN,), BROKEN, False)
            self.thinking.settle((OPEN,), BROKEN, False)
        elif isinstance(ev, PreviewDelta):
            if ev.event_id is None or ev.event_id not in self.thinking.by_key:
                self.reply.delta(ev.event_id, ev.text, False)
        elif isinstance(ev, AgentMessage):
            if ev.session_thread_id is not None:
                self.reply.retract(ev.id)
            else:
                self.reply.final(ev.id, ev.text)
        elif isinstance(ev, PreviewStart):
            if ev.event_type == "agent.thinking":
                self.thinking.start(ev.event_id)
            elif ev.event_type in (None, "agent.message"):
                self.reply.start(ev.event_id)
        elif isinstance(ev, AgentContentBlockDelta):
            if ev.session_thread_id is None:
                if ev.delta_type == "thinking_delta":
                    self.thinking.delta(ev.message_id, ev.text, True)
                elif ev.delta_type in (None, "text_delta"):
                    self.reply.delta(ev.message_id, ev.text, True)
        elif isinstance(ev, AgentThinking):
            if ev.session_thread_id is None:
                self.thinking.final(ev.id, ev.text)
        elif isinstance(ev, SpanModelRequestEnd):
            self.thinking.settle((OPEN, BROKEN), ENDED, None)
            self.reply.settle((OPEN, BROKEN), ENDED, None)


KEYS = st.sampled_from(["a", "b", "c", "d"])
TEXT = st.text(alphabet="xy z", max_size=6)


@st.composite
def live_inputs(draw: st.DrawFn) -> Any:
    """Any input LiveText reads, with few keys so that they collide and interleave."""
    kind = draw(st.integers(0, 9))
    key = draw(KEYS)
    text = draw(TEXT)
    thread = draw(st.sampled_from([None, None, None, "sthr_1"]))
    if kind == 0:
        return RECONNECTED
    if kind == 1:
        return PreviewStart(
            event_id=key,
            event_type=draw(st.sampled_from([None, "agent.message", "agent.thinking"])),
            id=key,
        )
    if kind == 2:
        return PreviewDelta(event_id=key, content=TextBlock(text), id=key)
    if kind == 3:
        delta_type = draw(
            st.sampled_from(["text_delta", "thinking_delta", None, "input_json_delta"])
        )
        return AgentContentBlockDelta(
            message_id=key, delta_type=delta_type, text=text, session_thread_id=thread
        )
    if kind in (4, 5):
        # a final message: keyed like a preview, or by an id of its own (incremental dialect)
        ident = key if draw(st.booleans()) else f"f{draw(st.integers(0, 3))}"
        return AgentMessage((TextBlock(text),), id=ident, session_thread_id=thread)
    if kind == 6:
        return AgentThinking(text, id=key, session_thread_id=thread)
    if kind == 7:
        return SpanModelRequestEnd(id="s")
    # deltas that extend what a final message will say (the documented case)
    return AgentContentBlockDelta(message_id=key, delta_type="text_delta", text=text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(live_inputs(), max_size=40), st.sets(st.integers(0, 40)))
def test_live_text_equals_the_reference_for_any_inputs(items: list[Any], reads: set[int]) -> None:
    """Same text and thinking as the literal table, whenever it is read (reads build caches)."""
    live, ref = LiveText(), RefLive()
    for i, item in enumerate(items):
        version = live.version
        before = ref.reply.text
        changed = live.feed(item)
        ref.feed(item)
        if i in reads:
            assert live.text == ref.reply.text
            assert live.thinking == ref.thinking.text
        if ref.reply.text != before:
            assert live.version > version
        if changed:
            assert ref.reply.text != before
    assert live.text == ref.reply.text
    assert live.thinking == ref.thinking.text
    assert live.copy().text == live.text


@settings(max_examples=1000, deadline=None)
@given(st.lists(live_inputs(), max_size=40), st.sets(st.integers(0, 40)))
def test_a_reader_takes_what_text_delta_says_changed(items: list[Any], takes: set[int]) -> None:
    """text_stream's chunks: the appended text, or past the common prefix after a rewrite."""
    live, ref = LiveText(), RefLive()
    reader = live.reader()
    taken = ""
    for i, item in enumerate(items):
        live.feed(item)
        ref.feed(item)
        if i in takes:
            current = ref.reply.text
            assert reader.take() == text_delta(taken, current)
            taken = current
    assert reader.take() == text_delta(taken, ref.reply.text)
    assert reader.take() == ""


class CountingList(list[Any]):
    """A list that counts the times it is walked."""

    walks = 0

    def __iter__(self) -> Any:
        CountingList.walks += 1
        return super().__iter__()

    def __reversed__(self) -> Any:
        CountingList.walks += 1
        return super().__reversed__()


def test_updates_never_walk_the_segments() -> None:
    """A long turn costs O(1) per event: finals without previews, spans, reconnects, reads."""
    live = LiveText()
    reader = live.reader()
    for track in (live._reply, live._thinking):
        assert isinstance(track, _Track)
        track.segments = CountingList()
    CountingList.walks = 0
    chunks = []
    for i in range(3000):
        live.feed(AgentContentBlockDelta(message_id=f"m{i}", delta_type="text_delta", text="Hi"))
        live.feed(AgentMessage((TextBlock(f"Hi {i}"),), id=f"ev{i}"))  # no preview keyed ev{i}
        live.feed(AgentMessage((TextBlock(f"note {i}"),), id=f"n{i}"))
        live.feed(PreviewStart(event_id=f"p{i}", event_type="agent.message", id=f"p{i}"))
        live.feed(PreviewDelta(event_id=f"p{i}", content=TextBlock("tail"), id=f"p{i}"))
        live.feed(AgentMessage((TextBlock("tail end"),), id=f"p{i}"))
        live.feed(SpanModelRequestEnd(id=f"s{i}"))
        if i % 10 == 0:
            live.feed(RECONNECTED)
        chunks.append(reader.take())
    assert CountingList.walks == 0
    assert "".join(chunks) == live.text
    assert live.text.startswith("Hi 0\n\nnote 0\n\ntail end\n\nHi 1")
