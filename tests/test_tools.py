"""Custom tools: definitions from functions, and the tool runner as a new user meets it."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict

import pytest

from qoder_async import ActionRequired, QoderClient, Tool, tool
from qoder_async.testing import FakeQoderServer, tool_script

# ----------------------------------------------------------------------------- definitions


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


class Place(TypedDict):
    city: str
    country: str


@tool
async def get_weather(
    city: str,
    unit: Unit = Unit.CELSIUS,
    days: int = 1,
    detail: Literal["short", "long"] = "short",
    near: Place | None = None,
    tags: Sequence[str] = (),
    extra: Annotated[dict[str, float] | None, "Free-form thresholds."] = None,
) -> str:
    """The current weather in a city.

    Longer text that is not part of the description.

    Args:
        city: The city, e.g. "Paris".
        unit: Celsius or Fahrenheit.
        days: How many days ahead,
            counting today.
        detail: How much to say.

    Returns:
        A sentence.
    """
    return f"{city}: sunny, {days} day(s), {unit.value if isinstance(unit, Unit) else unit}"


def test_a_definition_from_a_function() -> None:
    assert isinstance(get_weather, Tool)
    definition = get_weather.definition
    assert definition["type"] == "custom"
    assert definition["name"] == "get_weather"
    assert definition["description"] == "The current weather in a city."
    schema = definition["input_schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["city"]
    props = schema["properties"]
    assert props["city"] == {"type": "string", "description": 'The city, e.g. "Paris".'}
    assert props["unit"] == {
        "enum": ["c", "f"],
        "default": "c",
        "description": "Celsius or Fahrenheit.",
    }
    assert props["days"] == {
        "type": "integer",
        "default": 1,
        "description": "How many days ahead, counting today.",
    }
    assert props["detail"]["enum"] == ["short", "long"]
    assert props["near"] == {
        "anyOf": [
            {
                "type": "object",
                "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                "required": ["city", "country"],
            },
            {"type": "null"},
        ],
        "default": None,
    }
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert props["extra"]["description"] == "Free-form thresholds."
    assert props["extra"]["anyOf"][0] == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }


def test_the_definition_matches_the_official_sdk_shape() -> None:
    """qca's CustomToolParams: type, name, description, input_schema (type/properties/required)."""
    from qca.managed.types.custom_tool_params import CustomToolParams

    assert set(get_weather.definition) == set(CustomToolParams.__annotations__)


def test_names_and_descriptions_can_be_given() -> None:
    with pytest.raises(TypeError, match="positional-only"):

        @tool
        def find(query: str, /) -> str:  # the input arrives as keyword arguments
            return query

    @tool(name="lookup", description="Find a thing.")
    def find_it(query: str) -> str:
        return query

    assert (find_it.name, find_it.description) == ("lookup", "Find a thing.")


def test_an_annotation_without_a_schema_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="no JSON Schema"):

        @tool
        def odd(x: complex) -> str:
            return str(x)


# ----------------------------------------------------------------------------- the loop


async def test_declare_on_the_agent_then_handle_in_send(
    client: QoderClient, server: FakeQoderServer
) -> None:
    """The whole loop of issue 11 item 7: the agent declares the tool, the turn runs it."""
    agent = await client.agents.create(name="forecaster", model="auto", tools=[get_weather])
    assert agent.tools[0]["name"] == "get_weather"
    assert agent.tools[0]["input_schema"] == get_weather.input_schema
    session = server.add_session(agent_id=agent.id)["id"]
    server.script = tool_script("get_weather", {"city": "Paris", "days": 2})
    turn = await client.session(session).send("Weather?", tools=[get_weather])
    result = await turn.result()
    assert result.text == "get_weather returned: Paris: sunny, 2 day(s), c"


async def test_plain_functions_run_in_a_thread(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    threads: list[str] = []

    def lookup(args: Mapping[str, Any]) -> str:
        threads.append(threading.current_thread().name)
        return f"found {args['q']}"

    server.script = tool_script("lookup", {"q": "x"})
    turn = await client.session(session_id).send("go", tools={"lookup": lookup})
    assert (await turn.result()).text == "lookup returned: found x"
    assert threads
    assert threads[0] != threading.main_thread().name


async def test_a_failing_handler_is_reported_and_logged_with_its_traceback(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(args: Mapping[str, Any]) -> str:
        raise ValueError("no such city")

    server.script = tool_script("lookup", {"city": "Atlantis"})
    turn = await client.session(session_id).send("x", tools={"lookup": boom})
    result = await turn.result()
    assert result.text == "lookup failed: ValueError: no such city", (result, turn._items)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "tool 'lookup'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_on_tool_error_raise_gives_the_handlers_exception_to_the_reader(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    async def boom(args: Mapping[str, Any]) -> str:
        raise KeyError("city")

    server.script = tool_script("lookup", {"city": "Atlantis"})
    turn = await client.session(session_id).send("x", tools={"lookup": boom}, on_tool_error="raise")
    with pytest.raises(KeyError) as info:
        await turn.result()
    assert any("handler of tool 'lookup'" in note for note in info.value.__notes__)
    posted = [e for e in server.stored_events(session_id) if e["type"].startswith("user.custom")]
    assert posted == []  # nothing was reported to the agent
    await turn.interrupt()


async def test_tools_without_a_handler_are_left_to_the_caller(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    """Issue 11 items 2 and 6: nothing is sent for an unknown tool; the caller can wait for it."""
    server.script = tool_script("handled_elsewhere", {"x": 1})

    async def other(args: Mapping[str, Any]) -> str:
        return "not me"

    turn = await client.session(session_id).send("go", tools={"other": other})
    (pending,) = await turn.wait_for_action()
    assert pending.name == "handled_elsewhere"
    assert pending.id  # a str, always: usable as a dict key
    posted = [e for e in server.stored_events(session_id) if e["type"].startswith("user.custom")]
    assert posted == []
    with pytest.raises(ActionRequired) as info:
        await turn.result(on_action="raise")
    assert [c.name for c in info.value.pending] == ["handled_elsewhere"]
    await turn.submit_tool_results({pending.id: "done elsewhere"})
    assert (await turn.result()).text == "handled_elsewhere returned: done elsewhere"


async def test_waiting_on_a_pause_nobody_answers_says_why_once(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script = tool_script("calc", {"expr": "6*7"})
    turn = await client.session(session_id).send("compute")
    waiting = asyncio.create_task(turn.result())
    await turn.wait_for_action()
    async with asyncio.timeout(5):  # result() notices the pause and says why
        while not [r for r in caplog.records if r.levelno == logging.WARNING]:
            await asyncio.sleep(0.01)
    answers = {c.id: "42" for c in turn.pending_tool_calls}  # typed: dict[str, str]
    assert not waiting.done()
    await turn.submit_tool_results(answers)
    assert (await waiting).text == "calc returned: 42"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "waits for 1 tool result(s) (calc)" in warnings[0]
    assert "submit_tool_results" in warnings[0]
