"""A chat-platform webhook bot: one Qoder session per chat, replies streamed back.

    python examples/webhook_bot.py                  # serves on 127.0.0.1:8080, fake API
    curl -N localhost:8080/chat/alice -H 'Content-Type: application/json' -d '{"text": "hi"}'
    python examples/webhook_bot.py --self-test      # starts the bot on port 0 and checks it

``POST /chat/{chat_id}`` with ``{"text": "..."}``: the first message of a chat
creates its Qoder session (kept in a dict); later messages reuse it. A message
for a chat whose agent is still busy waits for the running turn
(``on_busy="wait"``). The reply streams back as newline-delimited JSON: each
line is ``{"text": <the whole reply so far>}``, at most every 0.5 s; the last
line adds ``"done": true`` and the stop reason.

Against the real API (``QODER_PAT`` set, or ``--real``) sessions are created
from ``--agent``/``--environment`` (or ``QODER_AGENT_ID``/``QODER_ENVIRONMENT_ID``;
created when not given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from qoder_async import QoderClient, QoderError
from qoder_async.testing import FakeQoderServer, TurnContext

# How often a reply in progress is pushed to the chat, in seconds.
EDIT_INTERVAL = 0.5


class Bot:
    """Maps chat ids to Qoder sessions and streams each reply back to the webhook caller."""

    def __init__(self, client: QoderClient, agent_id: str, environment_id: str) -> None:
        self.client = client
        self.agent_id = agent_id
        self.environment_id = environment_id
        self.sessions: dict[str, str] = {}  # chat id -> session id
        self._locks: dict[str, asyncio.Lock] = {}

    def app(self) -> web.Application:
        """The aiohttp application serving ``POST /chat/{chat_id}``."""
        app = web.Application()
        app.router.add_post("/chat/{chat_id}", self.handle)
        return app

    async def session_for(self, chat_id: str) -> str:
        """The chat's session, created on its first message (once, even under concurrency)."""
        async with self._locks.setdefault(chat_id, asyncio.Lock()):
            if chat_id not in self.sessions:
                session = await self.client.sessions.create(
                    agent=self.agent_id,
                    environment_id=self.environment_id,
                    title=f"chat {chat_id}",
                    metadata={"chat_id": chat_id},
                )
                self.sessions[chat_id] = session.id
        return self.sessions[chat_id]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One incoming chat message; the reply is streamed as NDJSON."""
        chat_id = request.match_info["chat_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return web.json_response({"error": 'send {"text": "..."}'}, status=400)
        try:
            session_id = await self.session_for(chat_id)
            turn = await self.client.session(session_id).send(text, on_busy="wait")
        except QoderError as exc:
            return web.json_response({"error": str(exc)}, status=502)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            # Chat platforms (Slack, Telegram, Discord...) show a streamed reply by
            # editing the bot's message in place, and rate-limit those edits: each
            # update is the full text so far, at most once per EDIT_INTERVAL.
            async for text_so_far in turn.text_stream(coalesce=EDIT_INTERVAL):
                await _send_line(response, {"text": text_so_far})
            result = await turn.result()
        except QoderError as exc:
            await _send_line(response, {"error": str(exc), "done": True})
        else:
            stop = result.stop_reason.type if result.stop_reason else None
            await _send_line(response, {"text": result.text, "done": True, "stop_reason": stop})
        await response.write_eof()
        return response


async def _send_line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(json.dumps(obj).encode() + b"\n")


# --------------------------------------------------------------------------- running it


async def echo_agent(ctx: TurnContext) -> None:
    """The fake agent's script: a reply written slowly enough to see the edits."""
    await ctx.message(f"Echo: {ctx.text} (written word by word)", chunks=10, delay=0.12)


@contextlib.asynccontextmanager
async def connect(real: bool) -> AsyncIterator[QoderClient]:
    """A client for the real API (token from QODER_PAT), or for a fake API started here."""
    if real:
        async with QoderClient() as client:
            yield client
        return
    async with (
        FakeQoderServer(script=echo_agent) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
    ):
        yield client


async def make_bot(client: QoderClient, agent_id: str | None, env_id: str | None) -> Bot:
    """A bot whose sessions use the given agent and environment (created when not given)."""
    if agent_id is None:
        agent_id = (await client.agents.create(name="webhook-bot", model="auto")).id
    if env_id is None:
        env_id = (await client.environments.create(name="webhook-bot")).id
    return Bot(client, agent_id, env_id)


@contextlib.asynccontextmanager
async def serving(bot: Bot, host: str, port: int) -> AsyncIterator[int]:
    """Run the bot's web app; yields the port it listens on."""
    runner = web.AppRunner(bot.app())
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def post(http: aiohttp.ClientSession, url: str, text: str) -> list[dict[str, Any]]:
    """What a chat platform adapter would do: post a message and read the updates."""
    async with http.post(url, json={"text": text}) as response:
        response.raise_for_status()
        return [json.loads(line) async for line in response.content if line.strip()]


async def self_test() -> None:
    """Two concurrent messages to one chat and one to another, against a fake API."""
    async with connect(real=False) as client:
        bot = await make_bot(client, None, None)
        async with serving(bot, "127.0.0.1", 0) as port, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}/chat"
            replies = await asyncio.gather(
                post(http, f"{base}/alice", "first from alice"),
                post(http, f"{base}/alice", "second from alice"),
                post(http, f"{base}/bob", "hello from bob"),
            )
    sent = ["first from alice", "second from alice", "hello from bob"]
    for text, updates in zip(sent, replies, strict=True):
        final = updates[-1]
        assert final["done"], final
        assert final["stop_reason"] == "end_turn", final
        assert final["text"] == f"Echo: {text} (written word by word)", final
        assert all(final["text"].startswith(u["text"]) for u in updates), updates
        print(f"{text!r}: {len(updates)} updates -> {final['text']!r}")
    assert sorted(bot.sessions) == ["alice", "bob"], bot.sessions
    assert len(set(bot.sessions.values())) == 2
    print(f"self-test passed: 3 replies, {len(bot.sessions)} sessions")


async def serve(args: argparse.Namespace) -> None:
    """Serve the bot until Ctrl-C."""
    real = args.real or bool(os.environ.get("QODER_PAT") or os.environ.get("QODER_ACCESS_TOKEN"))
    async with connect(real) as client:
        bot = await make_bot(client, args.agent, args.environment)
        async with serving(bot, args.host, args.port) as port:
            print(f"bot listening on http://{args.host}:{port}/chat/{{chat_id}} (Ctrl-C stops)")
            print(
                f"try: curl -N http://{args.host}:{port}/chat/alice "
                "-H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'",
                flush=True,
            )
            await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A webhook chat bot on top of Qoder sessions.")
    parser.add_argument("--self-test", action="store_true", help="run the self-test and exit")
    parser.add_argument("--real", action="store_true", help="use the real API (QODER_PAT)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--agent", default=os.environ.get("QODER_AGENT_ID"))
    parser.add_argument("--environment", default=os.environ.get("QODER_ENVIRONMENT_ID"))
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(self_test() if args.self_test else serve(args))


if __name__ == "__main__":
    main()
