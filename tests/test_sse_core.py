"""The sans-I/O SSE core: bytes -> frames -> events, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoder_async import (
    AuthenticationError,
    FrameTooLargeError,
    InternalServerError,
    RateLimitError,
    StreamDecodeError,
)
from qoder_async._core.sse import EventDecoder, Frame, SSEDecoder
from qoder_async.types import AgentMessage, PreviewDelta, PreviewStart, UnknownEvent

# ----------------------------------------------------------------------------- helpers

LOADERS: dict[str, Callable[[bytes], Any]] = {"json": json.loads}
try:
    import orjson

    LOADERS["orjson"] = orjson.loads
except ImportError:  # the optional extra; the stdlib path is always tested
    pass


@pytest.fixture(params=sorted(LOADERS))
def loads(request: pytest.FixtureRequest) -> Callable[[bytes], Any]:
    """Each JSON decoder the stream may use (json always, orjson when installed)."""
    return LOADERS[request.param]


def frame_bytes(
    ident: str | None,
    event: str | None,
    data: str | None,
    *,
    eol: str = "\n",
    retry: int | None = None,
) -> bytes:
    lines = []
    if ident is not None:
        lines.append(f"id: {ident}")
    if event is not None:
        lines.append(f"event: {event}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    if data is not None:
        lines.extend(f"data: {part}" for part in data.split("\n"))
    return (eol.join(lines) + eol + eol).encode()


def ev_json(ident: str, type_: str = "agent.message", text: str = "hi", **extra: object) -> str:
    body: dict[str, object] = {"id": ident, "type": type_, **extra}
    if type_ == "agent.message":
        body["content"] = [{"type": "text", "text": text}]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# ----------------------------------------------------------------------------- framing


def test_decodes_fields_and_multiline_data() -> None:
    dec = SSEDecoder()
    frames = dec.feed(b'id: e1\nevent: agent.message\ndata: {"a":\ndata: 1}\nretry: 250\n\n')
    assert frames == [Frame("agent.message", b'{"a":\n1}', "e1", 250)]


def test_comments_count_and_yield_no_frame() -> None:
    dec = SSEDecoder()
    assert dec.feed(b": heartbeat\n\n: x\n\n") == []
    assert dec.comments == 2


def test_field_without_colon_and_without_space() -> None:
    dec = SSEDecoder()
    frames = dec.feed(b"data\n\ndata:x\n\nevent:foo\ndata:  two spaces\n\n")
    assert frames == [
        Frame(None, b"", None, None),
        Frame(None, b"x", None, None),
        Frame("foo", b" two spaces", None, None),
    ]


def test_id_with_nul_is_ignored_and_empty_id_is_kept_as_empty() -> None:
    dec = SSEDecoder()
    frames = dec.feed(b"id: a\x00b\ndata: 1\n\nid\ndata: 2\n\n")
    assert frames[0].id is None
    assert frames[1].id == ""


def test_bom_is_dropped_once_and_unknown_fields_ignored() -> None:
    dec = SSEDecoder()
    frames = dec.feed(b"\xef\xbb\xbfdata: 1\nfoo: bar\n\n")
    assert frames == [Frame(None, b"1", None, None)]
    assert dec.feed(b"bogus: 1\n\n") == []


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: 1\r") == []
    assert dec.feed(b"\n\r") == [Frame(None, b"1", None, None)]
    assert dec.feed(b"\ndata: 2\r\r") == [Frame(None, b"2", None, None)]


def test_incomplete_frame_at_eof_is_discarded() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"id: e1\ndata: {}") == []
    assert dec.close() == []


_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\r\n\x00", min_codepoint=1
    ),
    max_size=30,
)
_frame = st.tuples(
    st.one_of(st.none(), st.from_regex(r"evt_[0-9a-f]{1,8}", fullmatch=True)),
    st.one_of(st.none(), st.sampled_from(["agent.message", "heartbeat", "event_delta", "x"])),
    st.one_of(
        st.none(),
        st.lists(_text, min_size=1, max_size=3).map("\n".join),
        # U+2028/U+2029 are line terminators in JS, not in SSE: they must stay inside the data.
        st.just('{"text":"a\u2028b\u2029c"}'),
    ),
    st.one_of(st.none(), st.integers(0, 10_000)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(_frame, max_size=12),
    eols=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1),
    comments=st.lists(st.booleans(), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_chunking_and_line_ending_gives_the_same_frames(
    frames: list[tuple[str | None, str | None, str | None, int | None]],
    eols: list[str],
    comments: list[bool],
    cuts: list[int],
) -> None:
    stream = b""
    expected: list[Frame] = []
    for i, (ident, event, data, retry) in enumerate(frames):
        eol = eols[i % len(eols)]
        if i < len(comments) and comments[i]:
            stream += f": keep-alive{eol}".encode()
        if ident is None and event is None and data is None and retry is None:
            continue
        stream += frame_bytes(ident, event, data, eol=eol, retry=retry)
        expected.append(
            Frame(event, None if data is None else data.encode(), ident, retry),
        )
    whole = SSEDecoder()
    got_whole = whole.feed(stream)
    chunked = SSEDecoder()
    got_chunked = [f for part in split_at(stream, cuts) for f in chunked.feed(part)]
    bytewise = SSEDecoder()
    got_bytewise = [f for i in range(len(stream)) for f in bytewise.feed(stream[i : i + 1])]
    assert got_whole == expected
    assert got_chunked == expected
    assert got_bytewise == expected


# ----------------------------------------------------------------------------- limits


def test_oversize_line_raises_without_buffering_it_all() -> None:
    dec = SSEDecoder(max_event_bytes=1024)
    dec.feed(b"data: " + b"x" * 1000)
    with pytest.raises(FrameTooLargeError) as info:
        dec.feed(b"y" * 100)
    assert info.value.limit == 1024
    assert dec._partial_size == 0


def test_oversize_multiline_frame_raises() -> None:
    dec = SSEDecoder(max_event_bytes=100)
    with pytest.raises(FrameTooLargeError):
        dec.feed(b"data: " + b"a" * 60 + b"\ndata: " + b"b" * 60 + b"\n")


def test_endless_line_keeps_memory_bounded() -> None:
    dec = SSEDecoder(max_event_bytes=64 * 1024)
    fed = 0
    error: FrameTooLargeError | None = None
    while error is None and fed < 10_000:
        try:
            dec.feed(b"z" * 4096)
        except FrameTooLargeError as exc:
            error = exc
        fed += 1
        assert dec._partial_size <= 64 * 1024
    assert error is not None
    assert fed == 17


# ----------------------------------------------------------------------------- events


def test_events_and_previews(loads: Callable[[bytes], Any]) -> None:
    dec = EventDecoder(loads=loads)
    stream = (
        frame_bytes("e1", "agent.message", ev_json("e1"))
        + frame_bytes("e2", "event_start", '{"type":"event_start","event":{"id":"e2"}}')
        + frame_bytes(
            "e2",
            "event_delta",
            '{"type":"event_delta","event_id":"e2","delta":{"type":"content_delta",'
            '"index":0,"content":{"type":"text","text":"He"}}}',
        )
    )
    evs = dec.feed(stream)
    assert [type(e) for e in evs] == [AgentMessage, PreviewStart, PreviewDelta]
    evs = dec.feed(frame_bytes("e2", "agent.message", ev_json("e2", text="Hello")))
    assert [e.id for e in evs] == ["e2"]


def test_keepalives_and_empty_data_move_liveness_only() -> None:
    dec = EventDecoder()
    evs = dec.feed(
        b": c\n\nevent: heartbeat\ndata: {}\n\nevent: ping\ndata: {}\n\ndata:\n\nid: x\n\n"
    )
    assert evs == []
    assert dec.heartbeats == 4
    assert dec.keepalives == 5


def test_data_without_id_and_type_uses_sse_fields() -> None:
    dec = EventDecoder()
    (ev,) = dec.feed(frame_bytes("e9", "agent.message", '{"content":"yo"}'))
    assert isinstance(ev, AgentMessage)
    assert (ev.id, ev.text, ev.raw["id"], ev.raw["type"]) == ("e9", "yo", "e9", "agent.message")


def test_done_ends_cleanly() -> None:
    dec = EventDecoder()
    evs = dec.feed(
        frame_bytes("a", None, ev_json("a"))
        + b"data: [DONE]\n\n"
        + frame_bytes("b", None, ev_json("b"))
    )
    assert [e.id for e in evs] == ["a"]
    assert dec.done


def test_unknown_types_are_kept() -> None:
    dec = EventDecoder()
    (ev,) = dec.feed(frame_bytes("u1", "brand.new", '{"type":"brand.new","x":1}'))
    assert isinstance(ev, UnknownEvent)
    assert (ev.type, ev.raw["x"]) == ("brand.new", 1)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (
            b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
            b'"message":"slow down"}}\n\n',
            RateLimitError,
        ),
        (
            b'data: {"type":"error","error":{"type":"authentication_error","message":"no"}}\n\n',
            AuthenticationError,
        ),
        (b'event: error\ndata: {"error":{"type":"overloaded_error"}}\n\n', InternalServerError),
    ],
)
def test_error_frames_raise_the_typed_api_error(
    frame: bytes, error: type[Exception], loads: Callable[[bytes], Any]
) -> None:
    dec = EventDecoder(loads=loads)
    dec.feed(frame_bytes("a", None, ev_json("a")))
    with pytest.raises(error):
        dec.feed(frame)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"type":"agent.message","content":[{"type":"text","text":"\xff\xfe"}]}', "UTF-8"),
        (b"[1,2,3]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b'{"type":"agent.message","id":"x","content":5}', "content"),
        (b'{"type":7}', "type"),
    ],
)
def test_bad_frames_raise_decode_errors_and_keep_the_cursor(
    data: bytes, reason: str, loads: Callable[[bytes], Any]
) -> None:
    dec = EventDecoder(loads=loads)
    good = dec.feed(frame_bytes("a", None, ev_json("a")))
    with pytest.raises(StreamDecodeError) as info:
        dec.feed(b"id: bad\ndata: " + data + b"\n\n")
    assert reason in str(info.value)
    assert info.value.event_id == "bad"
    assert [e.id for e in good] == ["a"]
    assert len(info.value.frame) <= 240


def test_invalid_utf8_in_id_field() -> None:
    dec = EventDecoder()
    with pytest.raises(StreamDecodeError, match="UTF-8"):
        dec.feed(b"id: \xff\ndata: {}\n\n")


@pytest.mark.parametrize(
    "bad",
    [b"id: \xff\ndata: {}\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: " + b"y" * 300],
    ids=["utf8-id", "long-line", "long-tail"],
)
def test_frames_before_a_bad_line_in_the_same_chunk_are_delivered_first(bad: bytes) -> None:
    dec = EventDecoder(max_event_bytes=256)
    body = frame_bytes("a", None, ev_json("a")) + frame_bytes("b", None, ev_json("b"))
    got = dec.feed(body + bad)
    assert [e.id for e in got] == ["a", "b"]
    with pytest.raises(StreamDecodeError):
        dec.feed(b"data: {}\n\n")  # the connection is unusable after a decode error
    dec.reconnected()  # a new connection starts clean
    assert [e.id for e in dec.feed(frame_bytes("c", None, ev_json("c")))] == ["c"]
