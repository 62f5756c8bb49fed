"""The API sections of the README run as written, against the fake.

The sections "More of the API", "Threads", "Files" and "Webhook-driven turns"
say their snippets run in the test suite: each section's ``python`` blocks run in
order in one namespace holding ``client`` (and ``session_id``), with top-level
``await`` allowed.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from qoder_async import QoderClient, webhooks
from qoder_async.testing import FakeQoderServer, multiagent_script

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def python_blocks(title: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", section(title), re.S)
    assert blocks, f"README section {title!r} has no python block"
    return blocks


async def run_section(title: str, namespace: dict[str, Any]) -> dict[str, Any]:
    for i, block in enumerate(python_blocks(title)):
        code = compile(
            block, f"<README {title} #{i}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        outcome = eval(code, namespace)  # our own README
        if inspect.isawaitable(outcome):
            await outcome
    return namespace


async def test_more_of_the_api(client: QoderClient, server: FakeQoderServer) -> None:
    ns = await run_section("More of the API", {"client": client})
    session = ns["session"]
    assert session.agent.system == "Be terse."
    assert ns["raw"].status_code == 200
    [repo] = session.resources
    assert server.resource_secret(session.id, repo.id) == "ghp_..."


async def test_threads(client: QoderClient, server: FakeQoderServer, session_id: str) -> None:
    server.script = multiagent_script
    ns = await run_section("Threads", {"client": client, "session_id": session_id})
    [thread] = ns["result"].threads
    assert thread.agent_name == "researcher"
    assert thread.text.startswith("Research notes on: Research the moon")


async def test_files(
    client: QoderClient,
    server: FakeQoderServer,
    session_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    ns = await run_section("Files", {"client": client, "session_id": session_id})
    assert (tmp_path / "copy.txt").read_text() == "The launch is on Friday."
    assert server.file_content(ns["meta"].id) == b"The launch is on Friday."

    # The attachment bot, with a chat platform serving an attachment.
    attachment = b"%PDF-1.7 " + bytes(range(256)) * 1024

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=attachment, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/files/contract.pdf", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        reply = await ns["forward_attachment"](
            client,
            session_id,
            "Summarise this contract.",
            f"http://127.0.0.1:{port}/files/contract.pdf",
            "contract.pdf",
            "application/pdf",
        )
    finally:
        await runner.cleanup()
    [message] = server.user_messages(session_id)
    document = message["content"][1]
    assert document["type"] == "document"
    assert document["title"] == "contract.pdf"
    file_id = document["source"]["file_id"]
    assert server.file_content(file_id) == attachment
    assert f"contract.pdf ({file_id})" in reply


@pytest.fixture
async def webhook_setup() -> AsyncIterator[
    tuple[FakeQoderServer, QoderClient, dict[str, Any], list[int]]
]:
    """A fake posting signed webhooks (turn ends included) to a receiver that runs the
    README's ``on_webhook``; a client pointed at the fake."""
    secret = "whsec_" + base64.b64encode(b"readme-webhook-secret-bytes!").decode()
    namespace: dict[str, Any] = {}
    statuses: list[int] = []

    async def receive(req: web.Request) -> web.Response:
        await namespace["on_webhook"](await req.read(), req.headers)
        statuses.append(204)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/qoder", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        server = await stack.enter_async_context(
            FakeQoderServer(
                webhook_url=f"http://127.0.0.1:{runner.addresses[0][1]}/qoder",
                webhook_secret=secret,
                webhook_events_on_turn_end=True,
            )
        )
        client = await stack.enter_async_context(
            QoderClient(token=server.token, base_url=server.base_url)
        )
        namespace.update(client=client, QODER_WEBHOOK_SECRET=secret)
        yield server, client, namespace, statuses


async def test_webhook_driven_turns(
    webhook_setup: tuple[FakeQoderServer, QoderClient, dict[str, Any], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, ns, statuses = webhook_setup
    monkeypatch.setenv("QODER_WEBHOOK_SECRET", ns["QODER_WEBHOOK_SECRET"])
    await run_section("Webhook-driven turns", ns)
    session_id = str(server.add_session()["id"])
    for text in ("first", "second"):
        await ns["ask"](session_id, text)
        await server.wait_idle(session_id)
        await server.wait_webhooks()
    assert [r.split(".")[0] for r in ns["replies"]] == ['You said: "first"', 'You said: "second"']
    assert ns["cursors"][session_id].event_id == server.stored_events(session_id)[-1]["id"]
    assert server.stream_connections == 0
    kinds = [d.event_type for d in server.webhook_deliveries]
    assert kinds == ["session.created", "session.idled", "session.idled"]
    assert all(d.delivered for d in server.webhook_deliveries)
    assert statuses == [204, 204, 204]
    # A delivery repeated (at least once) answers nothing twice.
    body = server.webhook_deliveries[-1].body
    await ns["on_webhook"](body, webhooks.sign(body, ns["QODER_WEBHOOK_SECRET"]))
    assert len(ns["replies"]) == 2
