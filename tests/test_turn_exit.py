"""Leaving ``async with turn:`` early interrupts the turn on the server; other exits do not.

The chat-service case: the HTTP caller hangs up, the framework cancels the
handler, and the turn it was streaming must not go on running for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qoder_async import QoderClient, tool
from qoder_async._shell.tasks import cancel_and_wait
from qoder_async._turn import session as session_module
from qoder_async.testing import FakeQoderServer, TurnContext, tool_script

HANG = 30.0  # seconds: only a hang takes this long


class Boom(Exception):
    pass


async def talks_then_waits(ctx: TurnContext) -> None:
    """A turn that says something, then runs on until interrupted."""
    await ctx.message("Working on it", chunks=1)
    await ctx.sleep(60)


def stored_types(server: FakeQoderServer, sid: str) -> list[str]:
    return [e["type"] for e in server.stored_events(sid)]


def interrupts(server: FakeQoderServer, sid: str) -> int:
    return stored_types(server, sid).count("user.interrupt")


async def stop(client: QoderClient, server: FakeQoderServer, sid: str) -> None:
    """End a turn left running on purpose (the fake's turn task must not outlive the test)."""
    await client.session(sid).interrupt()
    await asyncio.wait_for(server.wait_idle(sid), HANG)


async def first_message(turn: Any) -> None:
    async for ev in turn:
        if ev.type == "agent.message":
            return


async def test_an_exception_inside_the_block_interrupts_the_turn_once(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = talks_then_waits
    with pytest.raises(Boom):
        async with await client.session(session_id).send("hi") as turn:
            await asyncio.wait_for(first_message(turn), HANG)
            raise Boom
    assert interrupts(server, session_id) == 1
    await asyncio.wait_for(server.wait_idle(session_id), HANG)  # the server's turn ended


async def test_a_cancelled_handler_interrupts_the_turn_once(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = talks_then_waits
    streaming = asyncio.Event()

    async def handler() -> None:  # a web handler streaming the reply to its caller
        async with await client.session(session_id).send("hi") as turn:
            async for chunk in turn.text_stream():
                if chunk:
                    streaming.set()

    task = asyncio.create_task(handler())
    await asyncio.wait_for(streaming.wait(), HANG)
    task.cancel()  # the caller hung up
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)
    assert interrupts(server, session_id) == 1
    await asyncio.wait_for(server.wait_idle(session_id), HANG)


async def test_a_normal_exit_interrupts_nothing(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async with await client.session(session_id).send("hi") as turn:
        await asyncio.wait_for(turn.result(), HANG)
    # Left without an exception while the turn still runs: it is only no longer followed.
    server.script = talks_then_waits
    async with await client.session(session_id).send("again") as turn:
        await asyncio.wait_for(first_message(turn), HANG)
    assert interrupts(server, session_id) == 0
    await stop(client, server, session_id)


async def test_a_turn_that_ended_is_not_interrupted(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    with pytest.raises(Boom):
        async with await client.session(session_id).send("hi") as turn:
            await asyncio.wait_for(turn.result(), HANG)
            raise Boom  # e.g. posting the reply failed: the turn is over already
    assert interrupts(server, session_id) == 0


async def test_opting_out_leaves_the_turn_running(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = talks_then_waits
    with pytest.raises(Boom):
        turn = await client.session(session_id).send("hi", interrupt_on_exit=False)
        async with turn:
            await asyncio.wait_for(first_message(turn), HANG)
            raise Boom
    assert interrupts(server, session_id) == 0
    assert server.session(session_id)["status"] == "running"
    await stop(client, server, session_id)


async def test_a_running_tool_is_cancelled_and_answered_before_the_interrupt(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("slow", {})
    started = asyncio.Event()

    @tool
    async def slow() -> str:
        """Never finishes by itself."""
        started.set()
        await asyncio.sleep(HANG * 2)
        return "late"

    with pytest.raises(Boom):
        async with await client.session(session_id).send("go", tools=[slow]):
            await asyncio.wait_for(started.wait(), HANG)
            raise Boom
    types = stored_types(server, session_id)
    answers = [i for i, t in enumerate(types) if t == "user.custom_tool_result"]
    assert len(answers) == 1
    assert types.index("user.interrupt") > answers[0]
    assert interrupts(server, session_id) == 1


async def test_a_hung_server_does_not_hang_the_exit(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session_module, "_EXIT_INTERRUPT_TIMEOUT", 0.2)
    server.script = talks_then_waits

    async def leave_early() -> None:
        async with await client.session(session_id).send("hi") as turn:
            await first_message(turn)
            server.faults.slow_seconds = 3600.0  # every answer from now on hangs
            raise Boom

    with pytest.raises(Boom):
        await asyncio.wait_for(leave_early(), HANG)  # only a hang reaches the bound
    server.faults.slow_seconds = 0.0


@pytest.mark.parametrize(
    "cancel",
    [session_module._cancel, cancel_and_wait],
    ids=["session", "fleet"],
)
async def test_cancelling_a_task_never_swallows_the_callers_own_cancel(
    cancel: Callable[[asyncio.Task[None]], Awaitable[None]],
) -> None:
    """Cancelling a task and waiting for it: a cancel of the waiting caller
    meanwhile still ends the caller (Python 3.11: cancelling a task that awaits a
    task cancels the awaited one and sets nothing on the caller)."""
    cleaning = asyncio.Event()
    after: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaning.set()
            await asyncio.sleep(0.05)  # a cleanup that takes a while

    async def stopper() -> None:
        task = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)  # it runs up to its sleep
        await cancel(task)
        after.append("went on")

    outer = asyncio.create_task(stopper())
    await asyncio.wait_for(cleaning.wait(), 1)  # the caller now waits for the cleanup
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert after == []
