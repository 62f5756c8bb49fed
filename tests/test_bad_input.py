"""Bad input never crashes or hangs: each class gets its typed error, and nothing is lost.

A corpus over the wire (through the fake server's ``inject_frames`` and
``respond_next``), plus hypothesis fuzzing of the frame decoder.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoder_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    Backoff,
    FrameTooLargeError,
    InternalServerError,
    NotFoundError,
    QoderClient,
    ReconnectPolicy,
    ResumeExhaustedError,
    RetryPolicy,
    StreamContentTypeError,
    StreamDecodeError,
)
from qoder_async._core.models import Event
from qoder_async._core.sse import EventDecoder
from qoder_async.testing import CannedResponse, FakeQoderServer

pytestmark = pytest.mark.both_transports  # what each transport hands up from bad bytes

# Gives up quickly: these tests are about what the error says.
QUICK_GIVE_UP = ReconnectPolicy(backoff=Backoff(initial=0.01, maximum=0.02), max_attempts=3)
JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html; charset=utf-8"}


async def _history_then(
    client: QoderClient, server: FakeQoderServer, session_id: str, frames: list[bytes], **kw: object
) -> tuple[list[Event], BaseException]:
    """Stream a finished turn's history followed by injected frames; return what came."""
    await (await client.session(session_id).send("hello")).result()
    server.faults.inject_frames = frames
    got: list[Event] = []
    async with client.sessions.events.stream(session_id, **kw) as st:  # type: ignore[arg-type]
        try:
            async for ev in st:
                got.append(ev)
        except Exception as exc:
            assert st.last_event_id == got[-1].id  # the cursor stays on the last good event
            return got, exc
    raise AssertionError("the stream ended without an error")


def _stored(server: FakeQoderServer, session_id: str) -> list[str]:
    return [e["id"] for e in server.stored_events(session_id)]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'id: evt_x\ndata: {"type": "agent.message", "content": [\n\n', "invalid JSON"),
        (b'id: evt_x\ndata: {"type":"agent.message","content":"\xc3\x28"}\n\n', "invalid UTF-8"),
        (b"id: evt_x\ndata: [1, 2]\n\n", "not a JSON object"),
        (b"id: evt_x\ndata: null\n\n", "not a JSON object"),
        (b'id: evt_x\ndata: {"type":"agent.tool_use","input":"rm -rf"}\n\n', "input"),
        (b'id: evt_x\ndata: {"type":"session.status_idle","stop_reason":{"type":3}}\n\n', "type"),
        (b"id: \xff\xfe\ndata: {}\n\n", "invalid UTF-8"),
    ],
    ids=["json", "utf8", "array", "null", "wrong-type", "nested-type", "utf8-id"],
)
async def test_bad_frames(
    client: QoderClient, server: FakeQoderServer, session_id: str, frame: bytes, reason: str
) -> None:
    got, exc = await _history_then(client, server, session_id, [frame])
    assert isinstance(exc, StreamDecodeError)
    assert reason in str(exc)
    assert [e.id for e in got] == _stored(server, session_id)


async def test_malformed_sse_lines_are_ignored_per_the_spec(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    junk = b"this line has no colon\nretry: soon\nid: a\x00b\nfoo: bar\n\n: comment\n\n"
    got, exc = await _history_then(client, server, session_id, [junk, b"data: {broken\n\n"])
    assert isinstance(exc, StreamDecodeError)  # only the real error frame raises
    assert [e.id for e in got] == _stored(server, session_id)


async def test_oversize_frame_is_refused_without_buffering_it(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    huge = b"data: " + b"x" * (2 * 1024 * 1024) + b"\n\n"
    got, exc = await _history_then(client, server, session_id, [huge], max_event_bytes=64 * 1024)
    assert isinstance(exc, FrameTooLargeError)
    assert exc.limit == 64 * 1024
    assert len(str(exc)) < 500
    assert [e.id for e in got] == _stored(server, session_id)


async def test_html_error_page_on_the_stream(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head>" + b"<p>x</p>" * 5000 + b"</html>"
    server.faults.respond_next = [CannedResponse("GET", "/stream$", 502, HTML, page)] * 4
    async with client.sessions.events.stream(session_id, reconnect=QUICK_GIVE_UP) as st:
        with pytest.raises(ResumeExhaustedError) as info:
            await st.__anext__()
    cause = info.value.__cause__
    assert isinstance(cause, InternalServerError)
    assert cause.status_code == 502
    assert "502 Bad Gateway" in str(cause)
    assert len(str(cause)) < 600


async def test_wrong_content_type_with_a_json_error_body(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    body = b'{"type":"error","error":{"type":"api_error","message":"stream unavailable"}}'
    server.faults.respond_next = [CannedResponse("GET", "/stream$", 200, JSON, body)]
    async with client.sessions.events.stream(session_id) as st:
        with pytest.raises(StreamContentTypeError) as info:
            await st.__anext__()
    assert info.value.content_type == "application/json"
    assert "stream unavailable" in info.value.body


async def test_rest_html_error_page(client: QoderClient, server: FakeQoderServer) -> None:
    page = b"<!doctype html><html><body><h1>503 Service Unavailable</h1>" + b"." * 100_000
    server.faults.respond_next = [CannedResponse("GET", "/sessions/", 503, HTML, page)] * 3
    with pytest.raises(InternalServerError) as info:
        await client.with_options(retry=RetryPolicy(max_retries=2)).sessions.retrieve("sess_x")
    assert info.value.status_code == 503
    assert info.value.error_type is None
    assert "503 Service Unavailable" in str(info.value)
    assert len(str(info.value)) < 600
    assert isinstance(info.value.body, str)
    assert len(info.value.body) < 400


async def test_rest_plain_text_and_empty_bodies(
    client: QoderClient, server: FakeQoderServer
) -> None:
    server.faults.respond_next = [
        CannedResponse("GET", "/sessions/", 404, {"Content-Type": "text/plain"}, b"no such thing"),
        CannedResponse("GET", "/sessions/", 418, {}, b""),
    ]
    with pytest.raises(NotFoundError, match="no such thing"):
        await client.sessions.retrieve("sess_x")
    with pytest.raises(APIStatusError, match="empty body") as info:
        await client.sessions.retrieve("sess_x")
    assert info.value.status_code == 418


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"id": "sess_1", "status": "id', "not JSON"),
        (b"<html>oops</html>", "not JSON"),
        (b'{"status": "idle"}', "session.id"),
        (b'["a", "list"]', "session"),
        (b'{"id": "sess_1", "metadata": "not a map"}', "metadata"),
    ],
    ids=["truncated", "html-200", "missing-id", "not-object", "wrong-type"],
)
async def test_rest_success_with_a_bad_body(
    client: QoderClient, server: FakeQoderServer, body: bytes, match: str
) -> None:
    server.faults.respond_next = [CannedResponse("GET", "/sessions/", 200, JSON, body)]
    with pytest.raises(APIResponseValidationError, match=match):
        await client.sessions.retrieve("sess_1")


async def test_connection_refused_is_a_connection_error() -> None:
    async with QoderClient(
        token="t", base_url="http://127.0.0.1:9/api/v1/cloud", retry=RetryPolicy(max_retries=1)
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.sessions.retrieve("sess_x")
    assert "refused by 127.0.0.1:9" in str(info.value)


# ----------------------------------------------------------------------------- fuzzing

_KNOWN = [
    b"agent.message",
    b"session.status_idle",
    b"event_delta",
    b"error",
    b"heartbeat",
    b"agent.tool_use",
]
_line = st.one_of(
    st.binary(max_size=40),
    st.tuples(
        st.sampled_from([b"data", b"id", b"event", b"retry", b":"]), st.binary(max_size=60)
    ).map(lambda t: t[0] + b": " + t[1]),
    st.sampled_from(_KNOWN).map(lambda t: b"event: " + t),
    st.sampled_from(
        [
            b'data: {"type":"agent.message","content":[{"type":"text","text":"hi"}]}',
            b'data: {"type":"session.status_idle","stop_reason":{"type":"requires_action"}}',
            b'data: {"type":"error","error":{"type":"api_error"}}',
            b"data: [DONE]",
            b'data: {"type":"event_delta","delta":{"index":"x"}}',
        ]
    ),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=15),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cut=st.integers(1, 64),
)
def test_fuzzed_frames_only_raise_typed_errors(lines: list[bytes], eol: bytes, cut: int) -> None:
    data = eol.join(lines) + eol + eol
    dec = EventDecoder(max_event_bytes=4096)
    try:
        for i in range(0, len(data), cut):
            for ev in dec.feed(data[i : i + cut]):
                assert isinstance(ev.type, str)
    except (StreamDecodeError, APIStatusError):
        pass  # the typed errors; anything else fails the test
