"""The pytest plugin, as a user meets it: a test file in another project using the fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

from qoder_async import QoderClient
from qoder_async.testing import FakeQoderServer, TurnContext

{mark}
async def test_default_agent_replies(qoder_fake_server, qoder_client):
    assert isinstance(qoder_fake_server, FakeQoderServer)
    assert isinstance(qoder_client, QoderClient)
    session = qoder_fake_server.add_session()
    turn = await qoder_client.session(session["id"]).send("Hello from a user test")
    result = await turn.result()
    assert "Hello from a user test" in result.text
    assert result.stop_reason.type == "end_turn"


{mark}
async def test_own_script(qoder_fake_server, qoder_client):
    async def agent(ctx: TurnContext) -> None:
        await ctx.message(f"echo: {{ctx.text}}", chunks=3)

    qoder_fake_server.script = agent
    session = qoder_fake_server.add_session()
    turn = await qoder_client.session(session["id"]).send("hi")
    chunks = [chunk async for chunk in turn.text_stream()]
    assert "".join(chunks) == "echo: hi"
    assert [e["type"] for e in qoder_fake_server.user_messages(session["id"])] == [
        "user.message"
    ]
"""


@pytest.mark.parametrize(
    ("mode", "mark"),
    [("auto", ""), ("strict", "@pytest.mark.asyncio"), ("strict", "")],
    ids=["auto", "strict", "strict-unmarked"],
)
def test_fixtures_work_in_a_user_project(pytester: pytest.Pytester, mode: str, mark: str) -> None:
    # No pytest_plugins line and no conftest: the installed entry point provides the fixtures.
    pytester.makepyfile(test_user_bot=USER_TESTS.format(mark=mark))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        f"asyncio_mode={mode}",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
        timeout=60,
    )
    result.assert_outcomes(passed=2)
