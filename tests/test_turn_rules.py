"""Turns, listeners and streams under a hostile server or consumer.

Each test fails on the code before the fix (a second stored copy, a hang, a
swallowed cancel, a silently empty catch-up) and runs against the fake server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest
from conftest import eventually

from qoder_async import (
    ActionRequiredError,
    BadRequestError,
    ConfigurationError,
    Cursor,
    ListenerOverflowError,
    NotFoundError,
    QoderClient,
    StreamStalledError,
    UnknownCursorError,
    UserMessage,
)
from qoder_async.fleet import Fleet
from qoder_async.testing import CannedResponse, FakeQoderServer, TurnContext, tool_script
from qoder_async.types import Event, SessionStatusIdle

JSON = {"Content-Type": "application/json"}
KEY_HEADERS = ("idempotency-key", "x-idempotency-key")


def sent_keys(server: FakeQoderServer) -> list[str | None]:
    return [
        r.headers.get("idempotency-key")
        for r in server.requests
        if r.method == "POST" and r.path.endswith("/events")
    ]


async def slow(ctx: TurnContext) -> None:
    await ctx.sleep(0.2)


def ends(ev: Event) -> bool:
    return isinstance(ev, SessionStatusIdle) and ev.stop_reason != "requires_action"


# ----------------------------------------------------------- a busy retry's key


async def test_a_fleet_busy_retry_keeps_the_callers_idempotency_key(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    """Fleet.send posts every busy retry under the caller's key: a resend is stored once."""
    server.script = slow
    async with Fleet(client) as fleet:
        await fleet.send(session_id, "first", idempotency_key="k")
        await fleet.send(session_id, "second", on_busy="wait", idempotency_key="k2")
    keys = sent_keys(server)
    assert keys[0] == "k"
    assert len(keys) > 2, "the second send was never refused as busy"
    assert set(keys[1:]) == {"k2"}
    await server.wait_idle(session_id)
    # The caller sends again with its own key (its first answer got lost): the same message.
    again = await client.sessions.events.send(session_id, "second", idempotency_key="k2")
    assert again.events[0].id == server.user_messages(session_id)[1]["id"]
    assert len(server.user_messages(session_id)) == 2


async def test_a_send_without_created_events_is_found_by_one_rule(
    server: FakeQoderServer, client: QoderClient
) -> None:
    """SessionHandle.send and Fleet.send look the stored message up the same, bounded way."""
    sids = [str(server.add_session()["id"]) for _ in range(2)]
    server.faults.empty_send_data = 2
    turn = await client.session(sids[0]).send("quiet")
    assert (await turn.result()).messages
    async with Fleet(client) as fleet:
        await fleet.send(sids[1], "quiet")
    lookups = [
        dict(r.query)
        for r in server.requests
        if r.method == "GET" and r.path.endswith("/events") and r.query.get("order") == ["desc"]
    ]
    assert len(lookups) == 2
    assert lookups[0] == lookups[1] == {"order": ["desc"], "limit": ["100"]}


# --------------------------------------------------- the Idempotency-Key header


@pytest.mark.parametrize(
    "header", ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY", "X-Idempotency-Key"]
)
async def test_an_idempotency_key_header_is_the_one_key(
    server: FakeQoderServer, client: QoderClient, session_id: str, header: str
) -> None:
    server.script = slow
    first = await client.sessions.events.send(
        session_id, UserMessage("hi"), extra_headers={header: "mine"}
    )
    assert first.idempotency_key == "mine"
    again = await client.sessions.events.send(
        session_id, UserMessage("hi"), extra_headers={header: "mine"}
    )
    assert again.events[0].id == first.events[0].id
    assert len(server.user_messages(session_id)) == 1
    for request in [r for r in server.requests if r.method == "POST"]:
        assert {k: v for k, v in request.headers.items() if k in KEY_HEADERS} == {
            "idempotency-key": "mine"
        }
    with pytest.raises(ConfigurationError, match="idempotency_key="):
        await client.sessions.events.send(
            session_id, "other", idempotency_key="yours", extra_headers={header: "mine"}
        )
    await server.wait_idle(session_id)


# ---------------------------------------------- callbacks after a failed stream


async def test_callbacks_start_again_after_their_stream_failed(
    server: FakeQoderServer,
    client: QoderClient,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = {"type": "error", "error": {"type": "not_found_error", "message": "gone"}}
    server.faults.respond_next = [
        CannedResponse("GET", r"/events/stream$", 404, JSON, json.dumps(gone).encode())
    ]
    session = client.session(session_id)
    seen: list[str] = []
    session.on("*", lambda ev: seen.append(ev.type))
    with pytest.raises(NotFoundError):
        async with asyncio.timeout(10):
            await session.wait_handlers()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "the failure is logged once"
    assert "next on()" in errors[0].getMessage()
    got = asyncio.Event()
    session.on("agent.message", lambda ev: got.set())
    async with asyncio.timeout(10):
        await session.wait_connected()
        await client.sessions.events.send(session_id, "hello")
        await got.wait()
    assert "agent.message" in seen  # the older callback runs again too
    session.off("*")
    session.off("agent.message")
    await session.wait_handlers()  # removed by off(): nothing to raise
    await server.wait_idle(session_id)


# -------------------------------------------------------------- stuck listeners


async def test_a_stuck_listener_is_detached_with_its_cursor(
    server: FakeQoderServer,
    client: QoderClient,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def chatty(ctx: TurnContext) -> None:
        for i in range(30):
            ctx.emit("agent.message", content=[{"type": "text", "text": f"part {i}"}])
            await ctx.sleep(0)

    server.script = chatty
    session = client.session(session_id, queue_size=2, listener_timeout=0.3)
    stuck = session.listen()
    first = asyncio.ensure_future(stuck.__anext__())  # reads one event, then never again
    good: list[str] = []

    async def reader() -> None:
        async with contextlib.aclosing(session.listen()) as events:
            async for ev in events:
                good.append(ev.id or "")
                if ends(ev):
                    return

    reading = asyncio.create_task(reader())
    async with asyncio.timeout(20):
        await eventually(lambda: session.listeners >= 2, "both listeners attached")
        await session.wait_connected()
        turn = await session.send("talk")
        result = await turn.result()  # the stuck reader does not hold the turn back
        await reading  # nor the other listener
    assert len(result.messages) == 30
    assert session.listener_overflows == 1
    assert session.listeners == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("detached" in w for w in warnings)
    # The stuck reader gets what was queued for it, then the error and its cursor.
    got = [(await first).id or ""]
    with pytest.raises(ListenerOverflowError) as info:
        async for ev in stuck:
            got.append(ev.id or "")
    cursor = info.value.cursor
    assert isinstance(cursor, Cursor)
    assert cursor.event_id == got[-1] == info.value.last_event_id
    async with client.sessions.events.stream(session_id, last_event_id=cursor) as stream:
        async for ev in stream:
            got.append(ev.id or "")
            if ends(ev):
                break
    assert got == good  # resumed from the cursor: nothing lost, nothing twice


# ----------------------------------------------------------------- the watchdog


async def chat_then_silence(ctx: TurnContext) -> None:
    ctx.emit("agent.message", content=[{"type": "text", "text": "thinking..."}])
    await ctx.sleep(60)  # running, silent but for heartbeats


async def next_in_a_task(stream: object) -> Event:
    return await asyncio.create_task(stream.__anext__())  # type: ignore[attr-defined]


@pytest.mark.both_transports
async def test_the_watchdog_watches_the_task_reading_now(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    server.script = chat_then_silence
    await client.sessions.events.send(session_id, "go")
    stream = client.sessions.events.stream(session_id, stall_timeout=0.3, max_stalls=1)
    async with stream:
        while (await next_in_a_task(stream)).type != "agent.message":
            pass
        # Waited for without cancelling it: a cancel must not be what ends the read.
        reading = asyncio.create_task(stream.__anext__())
        await asyncio.wait([reading], timeout=20)
        assert reading.done(), "a silent connection was never timed out"
        with pytest.raises(StreamStalledError):
            reading.result()
    await client.sessions.cancel(session_id)


@pytest.mark.both_transports
async def test_the_watchdog_never_swallows_the_callers_cancel(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    server.script = chat_then_silence
    await client.sessions.events.send(session_id, "go")
    stream = client.sessions.events.stream(session_id, stall_timeout=0.2, max_stalls=1000)
    async with stream:
        while (await next_in_a_task(stream)).type != "agent.message":
            pass
        reading = asyncio.create_task(stream.__anext__())
        # stalls were noticed, in this very task
        await eventually(lambda: stream.connections >= 3, "two stalls noticed", timeout=10)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await reading
    await client.sessions.cancel(session_id)


# ----------------------------------------------------- aclose from another task


@pytest.mark.both_transports
async def test_aclose_from_another_task_ends_the_iteration_and_the_connection(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    server.script = chat_then_silence
    await client.sessions.events.send(session_id, "go")
    stream = client.sessions.events.stream(session_id)
    seen: list[str] = []
    message = asyncio.Event()

    async def consume() -> None:
        async for ev in stream:
            seen.append(ev.type)
            if ev.type == "agent.message":
                message.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await message.wait()
        await asyncio.sleep(0.3)  # the consumer now waits on the network
        await stream.aclose()
        await consumer  # ended, without an error
    assert seen[-1] == "agent.message"
    await eventually(lambda: server.open_streams == 0, "every SSE connection closed")
    await client.sessions.cancel(session_id)


# --------------------------------------------------------------- failed submits


async def test_a_failed_submit_leaves_the_calls_pending(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    server.script = tool_script("calc", {"expr": "6*7"})
    turn = await client.session(session_id).send("compute")
    (pending,) = await turn.wait_for_action()
    bad = {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    server.faults.respond_next = [
        CannedResponse("POST", r"/events$", 400, JSON, json.dumps(bad).encode())
    ]
    with pytest.raises(BadRequestError):
        await turn.submit_tool_results({pending.id: "42"})
    async with asyncio.timeout(10):
        assert await turn.wait_for_action() == (pending,)
        with pytest.raises(ActionRequiredError):
            await turn.result(on_action="raise")
    await turn.submit_tool_results({pending.id: "42"})
    assert (await turn.result()).text == "calc returned: 42"


# ----------------------------------------------- catch-up from a foreign cursor


async def test_catch_up_tells_nothing_new_from_a_cursor_of_elsewhere(
    server: FakeQoderServer, client: QoderClient, session_id: str
) -> None:
    await client.sessions.events.send(session_id, "hello")
    await server.wait_idle(session_id)
    other = str(server.add_session()["id"])
    await client.sessions.events.send(other, "elsewhere")
    await server.wait_idle(other)
    session = client.session(session_id)
    done = await session.catch_up()
    assert len(done.turns) == 1
    nothing = await session.catch_up(last_event_id=done.cursor)
    assert nothing.turns == ()
    assert nothing.pending is None
    assert nothing.cursor == done.cursor
    foreign = server.stored_events(other)[-1]["id"]
    with pytest.raises(UnknownCursorError) as info:  # the fake refuses it: 400 after_id
        await session.catch_up(last_event_id=foreign)
    assert info.value.cursor == foreign
    assert info.value.session_id == session_id
    # A server that answers an unknown after_id with an empty page.
    empty = {"data": [], "first_id": None, "last_id": None, "has_more": False}
    for cursor in (foreign, "evt_never_existed"):
        server.faults.respond_next = [
            CannedResponse("GET", r"/events$", 200, JSON, json.dumps(empty).encode())
        ]
        with pytest.raises(UnknownCursorError, match="not in session"):
            await session.catch_up(last_event_id=cursor)
