"""Custom (client-side) tools: the agent asks, your async function answers.

    python examples/custom_tools.py                 # against a fake API started here
    QODER_PAT=pt-... python examples/custom_tools.py   # the real API

``@tool`` turns a function into both halves of a custom tool: the definition
the agent declares (name, description from the docstring, JSON schema from the
type hints) and the handler. The turn pauses with ``requires_action`` when the
agent calls it; with ``tools=[get_weather]`` the client runs the handler (once
per tool use, even across reconnects), posts its result and keeps streaming the
same turn until the agent's final answer. A handler that raises is reported to
the agent as an error result (and logged at WARNING with its traceback).

On the fake API, ``tool_script(...)`` plays an agent that calls
``get_weather`` once and then quotes the result. On the real API an agent
declaring the tool is created (or pass ``--agent`` of one that does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator

from qoder_async import QoderClient, tool
from qoder_async.testing import FakeQoderServer, tool_script
from qoder_async.types import AgentCustomToolUse, UserCustomToolResult


@tool
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city's name, e.g. "Paris".
    """
    await asyncio.sleep(0.05)  # any async code: an HTTP call, a database query...
    return f"18°C and sunny in {city}"


@contextlib.asynccontextmanager
async def connect(real: bool) -> AsyncIterator[QoderClient]:
    """A client for the real API (token from QODER_PAT), or for a fake API started here."""
    if real:
        async with QoderClient() as client:
            yield client
        return
    fake_agent = tool_script("get_weather", {"city": "Paris"})
    async with (
        FakeQoderServer(script=fake_agent) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
    ):
        yield client


async def main() -> None:
    parser = argparse.ArgumentParser(description="Answer an agent's custom tool calls.")
    parser.add_argument("message", nargs="?", default="What's the weather in Paris?")
    parser.add_argument("--real", action="store_true", help="use the real API (QODER_PAT)")
    parser.add_argument("--agent", help="an agent that declares the get_weather tool")
    parser.add_argument("--environment", default=os.environ.get("QODER_ENVIRONMENT_ID"))
    args = parser.parse_args()
    real = args.real or bool(os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN"))

    async with connect(real) as client:
        agent_id = (
            args.agent
            or (
                await client.agents.create(name="weather-agent", model="auto", tools=[get_weather])
            ).id
        )
        env_id = args.environment or (await client.environments.create(name="weather")).id
        session = await client.sessions.create(agent=agent_id, environment_id=env_id)
        print(f"you: {args.message}")

        turn = await client.session(session.id).send(args.message, tools=[get_weather])
        async for event in turn:
            if isinstance(event, AgentCustomToolUse):
                print(f"agent calls {event.name}({json.dumps(dict(event.input))})")
            elif isinstance(event, UserCustomToolResult):
                print(f"our tool answered: {event.text}")
        result = await turn.result()
        print(f"agent: {result.text}")


if __name__ == "__main__":
    asyncio.run(main())
