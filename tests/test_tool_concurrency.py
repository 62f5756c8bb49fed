"""``max_concurrent_calls``: how many tool handlers of a turn (or a fleet worker) run at once.

A fake agent asks for 6 tool calls in one ``requires_action`` pause
(``tool_script(..., calls=6)``). Each handler counts how many handlers are
inside at once and holds its place until the test has seen enough of them
start: the cap is measured, never timed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import eventually

from qoder_async import ConfigurationError, QoderClient
from qoder_async.fleet import Fleet, MemoryCoordinator
from qoder_async.testing import FakeQoderServer, tool_script

CALLS = 6


class Gauge:
    """A tool handler that records the most handlers running at once.

    Each handler holds its place until ``expected`` handlers are inside, or all
    ``total`` have started (the wait is bounded against a hang, never timed),
    then lets every other handler that may start, start (a few loop turns): with
    a cap of N they would all run at once if the cap did not hold. Holding
    matters: a handler run through a thread starts a little later than the
    handlers beside it, and on a loaded machine a few loop turns alone did not
    always see them inside together.
    """

    def __init__(self, expected: int, total: int = CALLS) -> None:
        self.expected = expected
        self.total = total
        self.inside = 0
        self.most = 0
        self.started = 0

    async def __call__(self, args: Mapping[str, Any]) -> str:
        self.started += 1
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await eventually(
                lambda: self.inside >= self.expected or self.started >= self.total,
                "the handlers the cap lets in are inside together",
                timeout=20,
            )
            for _ in range(20):
                await asyncio.sleep(0)
            return f"ok {args['n']}"
        finally:
            self.inside -= 1


@pytest.mark.parametrize("cap", [1, 2, None])
async def test_a_turn_runs_at_most_max_concurrent_calls_handlers_at_once(
    server: FakeQoderServer, client: QoderClient, session_id: str, cap: int | None
) -> None:
    server.script = tool_script("probe", {"n": 1}, calls=CALLS)
    gauge = Gauge(cap if cap is not None else CALLS)
    async with asyncio.timeout(30):
        turn = await client.session(session_id).send(
            "go", tools={"probe": gauge}, max_concurrent_calls=cap
        )
        async with turn:
            result = await turn.result()
    assert gauge.started == CALLS
    assert gauge.most == (cap if cap is not None else CALLS)
    assert result.text == "\n".join(["probe returned: ok 1"] * CALLS)
    results = [
        e for e in server.stored_events(session_id) if e["type"] == "user.custom_tool_result"
    ]
    assert len(results) == CALLS


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
async def test_a_bad_cap_is_refused_before_anything_is_sent(
    server: FakeQoderServer, client: QoderClient, session_id: str, bad: Any
) -> None:
    with pytest.raises(ConfigurationError, match="max_concurrent_calls"):
        await client.session(session_id).send("go", tools={}, max_concurrent_calls=bad)
    assert server.user_messages(session_id) == []
    with pytest.raises(ConfigurationError, match="max_concurrent_calls"):
        Fleet(client, max_concurrent_calls=bad)


async def test_a_fleet_worker_runs_at_most_max_concurrent_calls_handlers_at_once(
    server: FakeQoderServer,
) -> None:
    """Two sessions of one worker, 6 calls each: the cap holds across the worker."""
    server.script = tool_script("probe", {"n": 2}, calls=CALLS)
    sids = [str(server.add_session()["id"]) for _ in range(2)]
    gauge = Gauge(3, total=2 * CALLS)
    coordinator = MemoryCoordinator()
    async with (
        QoderClient(token=server.token, base_url=server.base_url) as qc,
        Fleet(
            qc, coordinator, lease_ttl=2.0, tools={"probe": gauge}, max_concurrent_calls=3
        ) as fleet,
    ):

        @fleet.handler
        async def on_event(d: object) -> None:
            pass

        task = asyncio.create_task(fleet.serve())
        try:
            for sid in sids:
                await fleet.send(sid, "go")

            def answered() -> bool:
                return all(
                    sum(e["type"] == "user.custom_tool_result" for e in server.stored_events(s))
                    == CALLS
                    for s in sids
                )

            await eventually(answered, "every tool call answered", timeout=30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert gauge.started == 2 * CALLS
    assert gauge.most == 3
