"""Record a conversation once, replay it offline (and under chaos) in your tests.

    python examples/replay_cassette.py             # replay examples/cassettes/weather.jsonl
    python examples/replay_cassette.py --record    # write that cassette again

``record(client, path)`` writes every request the client makes, every answer
and every SSE frame (with its timing) to a JSON Lines cassette, the token
redacted. ``FakeQoderServer(cassette=path)`` then answers from it: same ids,
same events, at the recorded pace (``speed=0``: at once), and its ``faults=``
still apply, so the very same turn can be replayed over connections that drop
and replay duplicates.

The committed cassette was recorded by ``--record`` from a fake agent that
thinks, calls the ``get_weather`` custom tool, waits for your answer and
replies. To record the real API, point the client at it (``QODER_PAT``), or
use ``qoder-async record -o FILE SESSION_ID "message"``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from qoder_async import Backoff, QoderClient, ReconnectPolicy, TurnResult, tool
from qoder_async.testing import FakeQoderServer, Faults, TurnContext, record

CASSETTE = Path(__file__).resolve().parent / "cassettes" / "weather.jsonl"
QUESTION = "What should I wear in Paris today?"


@tool
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city's name, e.g. "Paris".
    """
    return f"{city}: 18 C, light rain"


async def weather_agent(ctx: TurnContext) -> None:
    """The fake agent recorded: thinks, asks for the weather, answers."""
    await ctx.thinking("The user wants clothing advice; I need the weather first.")
    use = await ctx.custom_tool("get_weather", {"city": "Paris"})
    [answer] = await ctx.require_action([use["id"]])
    weather = answer["content"][0]["text"]
    ctx.add_usage(input_tokens=412, output_tokens=36)
    await ctx.message(
        f"It is {weather.split(': ', 1)[1]} in Paris: take a light raincoat and an umbrella.",
        chunks=6,
        delay=0.05,
    )


async def conversation(client: QoderClient) -> TurnResult:
    """What the bot does: create an agent and a session, ask, answer the tool, get the reply."""
    agent = await client.agents.create(name="weather-agent", model="auto", tools=[get_weather])
    environment = await client.environments.create(name="weather")
    session = await client.sessions.create(agent=agent.id, environment_id=environment.id)
    turn = await client.session(session.id).send(QUESTION, tools=[get_weather])
    return await turn.result()


def show(label: str, result: TurnResult) -> None:
    [call] = result.tool_calls
    print(f"{label}: {result.text}")
    print(f"  tool: {call.name}({call.input}) -> {call.output}")
    stop = result.stop_reason.type if result.stop_reason else None
    print(f"  stop reason: {stop}; events: {len(result.events)}")


async def record_it() -> None:
    CASSETTE.parent.mkdir(parents=True, exist_ok=True)
    async with (
        FakeQoderServer(script=weather_agent) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
        record(client, CASSETTE),
    ):
        result = await conversation(client)
    show(f"recorded {CASSETTE.name}", result)


async def replay(speed: float, faults: Faults | None) -> TurnResult:
    quick = ReconnectPolicy(backoff=Backoff(initial=0.01, maximum=0.1))
    async with (
        FakeQoderServer(cassette=CASSETTE, speed=speed, faults=faults) as server,
        QoderClient(token=server.token, base_url=server.base_url, reconnect=quick) as client,
    ):
        return await conversation(client)


async def main() -> None:
    parser = argparse.ArgumentParser(description="Record a conversation, replay it offline.")
    parser.add_argument("--record", action="store_true", help=f"write {CASSETTE.name} again")
    args = parser.parse_args()
    if args.record:
        await record_it()
        return
    plain = await replay(speed=1.0, faults=None)  # at the recorded pace
    show("replayed", plain)
    chaos = await replay(speed=0, faults=Faults(drop_after_events=2, duplicate_on_resume=2))
    show("replayed with drops and duplicates", chaos)
    same = (chaos.text, [e.id for e in chaos.events]) == (plain.text, [e.id for e in plain.events])
    print(f"same turn both times: {same}")


if __name__ == "__main__":
    asyncio.run(main())
