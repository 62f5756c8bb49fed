"""The smallest end-to-end script: create (or reuse) a session, send, stream the reply.

    python examples/chat.py                         # against a fake API started here
    python examples/chat.py "What does app.py do?"
    QODER_PAT=pt-... python examples/chat.py --session sess_... "Hello"   # the real API

Against the real API (``QODER_PAT`` set, or ``--real``) give ``--session``, or
``--agent`` and ``--environment`` (also read from ``QODER_AGENT_ID`` and
``QODER_ENVIRONMENT_ID``) to create a session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from qoder_async import QoderClient
from qoder_async.testing import FakeQoderServer


@contextlib.asynccontextmanager
async def connect(real: bool) -> AsyncIterator[QoderClient]:
    """A client for the real API (token from QODER_PAT), or for a fake API started here."""
    if real:
        async with QoderClient() as client:
            yield client
        return
    async with (
        FakeQoderServer() as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
    ):
        yield client


async def create_session(client: QoderClient, agent_id: str | None, env_id: str | None) -> str:
    """A new session, creating an agent and an environment when no ids are given."""
    if agent_id is None:
        agent_id = (await client.agents.create(name="qoder-async-example", model="auto")).id
    if env_id is None:
        env_id = (await client.environments.create(name="qoder-async-example")).id
    session = await client.sessions.create(agent=agent_id, environment_id=env_id)
    return session.id


async def main() -> None:
    parser = argparse.ArgumentParser(description="Send one message and stream the reply.")
    parser.add_argument("message", nargs="?", default="Help me analyze this code.")
    parser.add_argument("--real", action="store_true", help="use the real API (QODER_PAT)")
    parser.add_argument("--session", help="an existing session id")
    parser.add_argument("--agent", default=os.environ.get("QODER_AGENT_ID"))
    parser.add_argument("--environment", default=os.environ.get("QODER_ENVIRONMENT_ID"))
    args = parser.parse_args()
    real = args.real or bool(os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN"))

    async with connect(real) as client:
        session_id = args.session or await create_session(client, args.agent, args.environment)
        print(f"session: {session_id}")
        print(f"you: {args.message}")

        # The 202 answer is the handle on the turn: its events, and nothing else.
        turn = await client.session(session_id).send(args.message)
        async for chunk in turn.text_stream():  # the reply, as it is written
            print(chunk, end="", flush=True)
        print()

        result = await turn.result()
        stop = result.stop_reason.type if result.stop_reason else None
        print(f"stop reason: {stop}; tool calls: {[c.name for c in result.tool_calls]}")
        print(f"usage: {result.usage.input_tokens} in / {result.usage.output_tokens} out tokens")


if __name__ == "__main__":
    asyncio.run(main())
