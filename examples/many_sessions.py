"""Hundreds of sessions in one process: one turn each, all at once.

    python examples/many_sessions.py                 # 200 sessions on a fake API started here
    python examples/many_sessions.py --sessions 1000
    QODER_PAT=pt-... python examples/many_sessions.py --sessions 5   # the real API

Every session gets its own turn and its own event stream; one ``QoderClient``
(one connection pool) carries them all. Each turn's events are exactly that
turn's, however the streams interleave. Against the real API the default is 5
sessions (each one is a real agent run: mind your quota); they share one agent
and one environment (``--agent``/``--environment``, else created).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from qoder_async import QoderClient, TurnResult
from qoder_async.testing import FakeQoderServer


@contextlib.asynccontextmanager
async def connect(real: bool) -> AsyncIterator[QoderClient]:
    """A client for the real API (token from QODER_PAT), or for a fake API started here."""
    if real:
        async with QoderClient() as client:
            yield client
        return
    async with (
        FakeQoderServer(record_requests=False) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
    ):
        yield client


async def one_session(
    client: QoderClient, agent_id: str, env_id: str, n: int, *, echo: bool
) -> TurnResult:
    """Create a session, send one message, wait for the turn's result."""
    session = await client.sessions.create(agent=agent_id, environment_id=env_id, title=f"#{n}")
    turn = await client.session(session.id).send(f"Hello from session {n}")
    result = await turn.result()
    if echo and f"Hello from session {n}" not in result.text:  # the fake agent quotes you
        raise AssertionError(f"session {n} got another session's reply: {result.text!r}")
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description="Many concurrent sessions in one process.")
    parser.add_argument("--sessions", type=int, help="how many (default: 200, real API: 5)")
    parser.add_argument("--real", action="store_true", help="use the real API (QODER_PAT)")
    parser.add_argument("--agent", default=os.environ.get("QODER_AGENT_ID"))
    parser.add_argument("--environment", default=os.environ.get("QODER_ENVIRONMENT_ID"))
    args = parser.parse_args()
    real = args.real or bool(os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN"))
    count = args.sessions or (5 if real else 200)

    async with connect(real) as client:
        agent_id = args.agent or (await client.agents.create(name="many", model="auto")).id
        env_id = args.environment or (await client.environments.create(name="many")).id
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_session(client, agent_id, env_id, n, echo=not real) for n in range(count))
        )
        elapsed = time.perf_counter() - started

    events = sum(len(r.events) for r in results)
    ended = sum(1 for r in results if r.stop_reason is not None and r.stop_reason.ends_turn)
    print(f"sessions: {len(results)}, turns ended: {ended}, events: {events}")
    print(f"wall time: {elapsed:.2f}s ({len(results) / elapsed:.0f} turns/s)")


if __name__ == "__main__":
    asyncio.run(main())
