"""Custom tools: definitions from functions, and the tool runner as a new user meets it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict

import pytest
from conftest import eventually
from redis_server import drop_namespace, redis_url_fixture  # noqa: F401 (the redis_url fixture)

from qoder_async import ActionRequiredError, QoderClient, Tool, tool
from qoder_async.fleet import Delivery, Fleet, RedisCoordinator
from qoder_async.testing import FakeQoderServer, tool_script
from qoder_async.types import ImageBlock, TextBlock, UserCustomToolResult

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


def test_a_default_that_is_no_json_is_left_out_of_the_schema() -> None:
    """NaN and the infinities are no JSON: the schema states no default for them (it once
    stated ``NaN``, which a strict server refuses), as for any other non-JSON default."""

    @tool
    def scale(
        by: float = math.nan, limit: float = math.inf, at: tuple[float, ...] = (1.0, -math.inf)
    ) -> str:
        return "ok"

    props = scale.definition["input_schema"]["properties"]
    assert [p.get("default", "none") for p in props.values()] == ["none", "none", "none"]
    json.dumps(scale.definition, allow_nan=False)


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
    """The whole loop: the agent declares the tool, the turn runs it."""
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
    """Nothing is sent for an unknown tool; the caller can wait for it."""
    server.script = tool_script("handled_elsewhere", {"x": 1})

    async def other(args: Mapping[str, Any]) -> str:
        return "not me"

    turn = await client.session(session_id).send("go", tools={"other": other})
    (pending,) = await turn.wait_for_action()
    assert pending.name == "handled_elsewhere"
    assert pending.id  # a str, always: usable as a dict key
    posted = [e for e in server.stored_events(session_id) if e["type"].startswith("user.custom")]
    assert posted == []
    with pytest.raises(ActionRequiredError) as info:
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
    await eventually(  # result() notices the pause and says why
        lambda: [r for r in caplog.records if r.levelno == logging.WARNING], "a warning"
    )
    answers = {c.id: "42" for c in turn.pending_tool_calls}  # typed: dict[str, str]
    assert not waiting.done()
    await turn.submit_tool_results(answers)
    assert (await waiting).text == "calc returned: 42"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "waits for 1 tool result(s) (calc)" in warnings[0]
    assert "submit_tool_results" in warnings[0]


# ----------------------------------------------------------------------------- the conversion
#
# What a handler returns is posted by one conversion, in the turn
# API and in the fleet (with a real Redis). Each row: the output, then the posted content
# (a list of blocks) and is_error, or for an error row the start of its text and a fragment.

IMAGE = ImageBlock.from_url("https://example.com/chart.png")
IMAGE_JSON = {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}}


def text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": value}]


def cyclic() -> list[Any]:
    out: list[Any] = []
    out.append(out)
    return out


CONVERTED: list[Any] = [
    pytest.param("sunny", text("sunny"), id="str"),
    pytest.param("", text(""), id="empty-str"),
    pytest.param(IMAGE, [IMAGE_JSON], id="block"),
    pytest.param([TextBlock("a"), IMAGE], [*text("a"), IMAGE_JSON], id="blocks"),
    pytest.param(("see:", IMAGE), [*text("see:"), IMAGE_JSON], id="blocks-and-str"),
    pytest.param(None, [], id="None"),
    pytest.param(3, text("3"), id="int"),
    pytest.param(2.5, text("2.5"), id="float"),
    pytest.param(True, text("true"), id="bool"),
    pytest.param({"temp": 21, "unit": "c"}, text('{"temp": 21, "unit": "c"}'), id="dict"),
    pytest.param(["a.txt", "b.txt"], text('["a.txt", "b.txt"]'), id="list-of-str"),
    pytest.param([], text("[]"), id="empty-list"),
    pytest.param(
        {"city": "Zürich", "days": (1, None)},
        text('{"city": "Zürich", "days": [1, null]}'),
        id="nested",
    ),
]

REFUSED: list[Any] = [
    pytest.param(b"\x89PNG", "TypeError: ", "type bytes", id="bytes"),
    pytest.param(float("nan"), "ValueError: ", "nan", id="nan"),
    pytest.param({"x": [math.inf]}, "ValueError: ", "inf (at ['x'][0])", id="inf-nested"),
    pytest.param({1: "a", "1": "b"}, "TypeError: ", "dict key 1", id="int-key"),
    pytest.param({1, 2}, "TypeError: ", "type set", id="set"),
    pytest.param(object(), "TypeError: ", "type object", id="object"),
    pytest.param([IMAGE, {"a": 1}], "TypeError: ", "dict (at [1])", id="blocks-and-data"),
    pytest.param("bad \ud800", "ValueError: ", "lone surrogate", id="lone-surrogate"),
    pytest.param(cyclic(), "ValueError: ", "cyclic", id="cyclic"),
    pytest.param(ImageBlock({"data": b"x"}), "TypeError: ", "type bytes", id="block-with-bytes"),
]

HANG = 30.0  # seconds: only a hang takes this long


@pytest.fixture(params=["turn", "fleet"])
def runner(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def answered(
    runner: str, server: FakeQoderServer, request: pytest.FixtureRequest, output: Any
) -> tuple[dict[str, Any], str]:
    """Run tool ``t`` returning ``output`` in one turn (turn API or fleet): the posted
    ``user.custom_tool_result`` and the agent's reply (proof that the turn went on)."""
    server.script = tool_script("t", {})
    sid = str(server.add_session()["id"])

    def t() -> Any:  # a plain function: the thread path, where a None comes from
        return output

    handler = tool(t)
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        if runner == "turn":
            turn = await client.session(sid).send("go", tools=[handler])
            try:
                await asyncio.wait_for(turn.result(), HANG)
            finally:
                await turn.aclose()
        else:
            await run_in_fleet(client, request.getfixturevalue("redis_url"), sid, handler)
    events = server.stored_events(sid)
    (result,) = [e for e in events if e["type"] == "user.custom_tool_result"]
    reply = text_of_last_message(events)
    return result, reply


async def run_in_fleet(client: QoderClient, url: str, sid: str, handler: Tool) -> None:
    namespace = f"tools-{uuid.uuid4().hex[:12]}"
    coordinator = RedisCoordinator.from_url(url, namespace=namespace)

    async def ignore(delivery: Delivery) -> None:
        pass

    try:
        async with Fleet(client, coordinator, lease_ttl=2.0, tools=[handler]) as fleet:
            fleet.handler(ignore)
            serve = asyncio.create_task(fleet.serve())
            try:
                await fleet.send(sid, "go")
                async with asyncio.timeout(HANG):  # the turn ended: the session is released
                    while (info := await coordinator.inspect(sid)) is None or info.active:
                        if serve.done():
                            serve.result()
                        await asyncio.sleep(0.01)
            finally:
                serve.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serve
    finally:
        await coordinator.aclose()
        await drop_namespace(url, namespace)


def text_of_last_message(events: list[dict[str, Any]]) -> str:
    messages = [e for e in events if e["type"] == "agent.message"]
    return "".join(b.get("text", "") for b in messages[-1]["content"]) if messages else ""


@pytest.mark.parametrize(("output", "content"), CONVERTED)
async def test_a_tools_output_is_posted_by_one_conversion(
    runner: str,
    server: FakeQoderServer,
    request: pytest.FixtureRequest,
    output: Any,
    content: list[dict[str, Any]],
) -> None:
    result, reply = await answered(runner, server, request, output)
    assert result.get("content", []) == content
    assert result.get("is_error", False) is False
    assert reply == "t returned: " + "".join(b.get("text", "") for b in content)


async def test_a_large_dict_is_posted_whole(
    runner: str, server: FakeQoderServer, request: pytest.FixtureRequest
) -> None:
    """No size limit here (the API's body limit applies); built here, not at import: a big
    module-level value slows every later test's garbage collection."""
    large = {f"key{i}": [i, f"value {i}"] for i in range(20_000)}  # ~0.7 MB of JSON text
    result, _ = await answered(runner, server, request, large)
    assert result["content"] == text(json.dumps(large, ensure_ascii=False))
    assert result["is_error"] is False


@pytest.mark.parametrize(("output", "prefix", "fragment"), REFUSED)
async def test_an_output_without_a_conversion_is_posted_as_an_error_naming_it(
    runner: str,
    server: FakeQoderServer,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    output: Any,
    prefix: str,
    fragment: str,
) -> None:
    result, reply = await answered(runner, server, request, output)
    assert result["is_error"] is True
    (block,) = result["content"]
    assert block["text"].startswith(prefix), block
    assert fragment in block["text"], block
    assert reply == "t failed: " + block["text"]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING and "'t'" in r.message]
    assert "reporting the error to the agent" in record.getMessage()
    assert record.exc_info is not None  # logged with the traceback of the conversion


async def test_an_error_whose_text_is_not_valid_unicode_is_still_reported(
    runner: str,
    server: FakeQoderServer,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error result itself must be postable: its text is escaped, never dropped."""
    # The WARNING about the failed tool carries the raw text; pytest-xdist cannot ship a
    # captured log holding a lone surrogate back to the controller, so none is captured.
    monkeypatch.setattr(logging.getLogger("qoder_async"), "disabled", True)

    class Odd(Exception):
        pass

    def t() -> str:
        raise Odd("bad \ud800")

    server.script = tool_script("t", {})
    sid = str(server.add_session()["id"])
    async with QoderClient(token=server.token, base_url=server.base_url) as client:
        if runner == "turn":
            turn = await client.session(sid).send("go", tools=[tool(t)])
            try:
                await asyncio.wait_for(turn.result(), HANG)
            finally:
                await turn.aclose()
        else:
            await run_in_fleet(client, request.getfixturevalue("redis_url"), sid, tool(t))
    (result,) = [e for e in server.stored_events(sid) if e["type"] == "user.custom_tool_result"]
    assert result["is_error"] is True
    assert result["content"] == text("Odd: bad \\ud800")


async def test_on_tool_error_raise_gives_a_conversion_error_to_the_reader(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("lookup", {})
    turn = await client.session(session_id).send(
        "x", tools={"lookup": lambda args: b"raw"}, on_tool_error="raise"
    )
    with pytest.raises(TypeError, match="type bytes") as info:
        await asyncio.wait_for(turn.result(), HANG)
    assert any("handler of tool 'lookup'" in note for note in info.value.__notes__)
    await turn.interrupt()


async def test_submit_tool_results_converts_the_same_way_and_refuses_before_posting(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {})
    turn = await client.session(session_id).send("compute")
    (call,) = await asyncio.wait_for(turn.wait_for_action(), HANG)
    with pytest.raises(ValueError, match="nan"):
        await turn.submit_tool_results({call.id: {"x": float("nan")}})
    with pytest.raises(TypeError, match="type bytes"):
        await turn.submit_tool_results({"not-a-pending-call": b"x"})
    assert not [e for e in server.stored_events(session_id) if e["type"].startswith("user.cu")]
    await turn.submit_tool_results({call.id: {"answer": 42}})
    assert (await asyncio.wait_for(turn.result(), HANG)).text == 'calc returned: {"answer": 42}'


async def test_a_ready_made_result_event_is_posted_as_it_is(
    client: QoderClient, server: FakeQoderServer, session_id: str
) -> None:
    server.script = tool_script("calc", {})
    turn = await client.session(session_id).send("compute")
    (call,) = await asyncio.wait_for(turn.wait_for_action(), HANG)
    event = UserCustomToolResult(call.id, [TextBlock("over"), IMAGE], is_error=True)
    await turn.submit_tool_results({call.id: event})
    assert (await asyncio.wait_for(turn.result(), HANG)).text == "calc failed: over"
    (posted,) = [e for e in server.stored_events(session_id) if e["type"].startswith("user.cu")]
    assert (posted["content"], posted["is_error"]) == ([*text("over"), IMAGE_JSON], True)


async def test_a_result_post_failing_with_any_exception_reaches_the_reader(
    client: QoderClient, server: FakeQoderServer, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posting the tools' results raised something that is not a QoderError (a
    transport library's bug, a warning turned error): the tool task ended, nothing
    was posted, and result() waited for ever. The reader gets the error instead."""
    server.script = tool_script("lookup", {"q": "x"})
    handle = client.session(session_id)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the post broke")

    monkeypatch.setattr(handle, "send_events", broken)
    turn = await handle.send("go", tools={"lookup": lambda args: "found"})
    with pytest.raises(RuntimeError, match="the post broke"):
        await asyncio.wait_for(turn.result(), HANG)
