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

``--webhooks``: the same bot for hosts that cannot hold a stream open
(serverless, strict proxies). ``POST /chat/{chat_id}`` only posts the message
and answers 202; Qoder's webhooks (``POST /qoder/webhooks``, checked with
``qoder_async.webhooks.unwrap`` and the ``QODER_WEBHOOK_SECRET``) say that
something happened in a session, and the bot then catches up from the
session's stored cursor (``client.session(id).catch_up(last_event_id=cursor)``): each
turn that ended is a reply, kept for ``GET /chat/{chat_id}/replies`` (a real
bot would post it to the chat platform). A message for a busy chat waits for
the next catch-up. Whatever the event type, and however often a delivery is
repeated, a catch-up from the cursor never answers twice. The fake API sends
a webhook when a turn ends (a fake-only extension); the real service
announces session lifecycle events (beta).

    python examples/webhook_bot.py --webhooks --self-test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from qoder_async import Cursor, QoderClient, QoderError, SessionBusyError, UserMessage, webhooks
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


# --------------------------------------------------------------------------- webhook mode


class WebhookBot:
    """The same bot without held streams: messages are posted, replies come from webhooks.

    Per session it keeps a cursor (where the last catch-up stopped) and the chat
    messages waiting for the agent to be free. Both the send path and the
    catch-up of a session run under the session's lock, so a message refused as
    busy is always seen by the catch-up that follows the turn's end.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.client: QoderClient | None = None
        self.agent_id = self.environment_id = ""
        self.sessions: dict[str, str] = {}  # chat id -> session id
        self.chats: dict[str, str] = {}  # session id -> chat id
        self.cursors: dict[str, Cursor | None] = {}  # session id -> catch-up cursor
        self.waiting: dict[str, deque[str]] = defaultdict(deque)  # session id -> messages
        self.replies: dict[str, list[str]] = defaultdict(list)  # chat id -> replies
        self.seen: set[str] = set()  # webhook ids already handled (a database in real life)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queue: asyncio.Queue[webhooks.WebhookEvent] = asyncio.Queue()
        self._replied = asyncio.Condition()

    def connect(self, client: QoderClient, agent_id: str, environment_id: str) -> None:
        """Use ``client`` for Qoder (the web app may start before the client exists)."""
        self.client, self.agent_id, self.environment_id = client, agent_id, environment_id

    def app(self) -> web.Application:
        """``POST /chat/{chat_id}``, ``GET /chat/{chat_id}/replies``, ``POST /qoder/webhooks``."""
        app = web.Application()
        app.router.add_post("/chat/{chat_id}", self.chat)
        app.router.add_get("/chat/{chat_id}/replies", self.chat_replies)
        app.router.add_post("/qoder/webhooks", self.webhook)
        app.cleanup_ctx.append(self._worker)
        return app

    async def _worker(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._work())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _qoder(self) -> QoderClient:
        if self.client is None:
            raise web.HTTPServiceUnavailable(text="not connected to Qoder yet")
        return self.client

    async def chat(self, request: web.Request) -> web.Response:
        """A chat message: post it (or queue it while the agent is busy); answer at once."""
        chat_id = request.match_info["chat_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return web.json_response({"error": 'send {"text": "..."}'}, status=400)
        try:
            session_id = await self._session_for(chat_id)
            async with self._locks[session_id]:
                queued = not await self._post(session_id, text)
        except QoderError as exc:
            return web.json_response({"error": str(exc)}, status=502)
        return web.json_response({"queued": queued}, status=202)

    async def chat_replies(self, request: web.Request) -> web.Response:
        """The replies of a chat so far (what a real bot would post to the platform)."""
        return web.json_response({"replies": self.replies[request.match_info["chat_id"]]})

    async def webhook(self, request: web.Request) -> web.Response:
        """A Qoder webhook: verify it, queue it, answer fast (the work happens elsewhere)."""
        body = await request.read()  # the raw bytes, exactly as signed
        try:
            event = webhooks.unwrap(body, request.headers, self.secret)
        except webhooks.WebhookSecretError:
            raise
        except webhooks.WebhookVerificationError:
            return web.Response(status=400)
        self._queue.put_nowait(event)
        return web.Response(status=204)

    async def _session_for(self, chat_id: str) -> str:
        async with self._locks[f"chat:{chat_id}"]:
            if chat_id not in self.sessions:
                session = await self._qoder().sessions.create(
                    agent=self.agent_id,
                    environment_id=self.environment_id,
                    title=f"chat {chat_id}",
                    metadata={"chat_id": chat_id},
                )
                self.sessions[chat_id], self.chats[session.id] = session.id, chat_id
                self.cursors[session.id] = None
        return self.sessions[chat_id]

    async def _post(self, session_id: str, text: str) -> bool:
        """Post a message (the session's lock held); False when it waits for a busy agent."""
        if self.waiting[session_id]:
            self.waiting[session_id].append(text)  # keep the chat's order
            return False
        try:
            await self._qoder().sessions.events.send(session_id, UserMessage(text))
        except SessionBusyError:
            self.waiting[session_id].append(text)
            return False
        return True

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            if event.id in self.seen:
                continue  # delivered at least once: a repeat
            self.seen.add(event.id)
            session_id = event.data.id
            if session_id in self.chats:
                try:
                    await self.catch_up(session_id)
                except QoderError as exc:
                    print(f"catching up on {session_id} failed: {exc}")

    async def catch_up(self, session_id: str) -> None:
        """Reply to every turn that ended since the session's cursor; then send what waits."""
        async with self._locks[session_id]:
            handle = self._qoder().session(session_id)
            caught = await handle.catch_up(last_event_id=self.cursors[session_id])
            for turn in caught.turns:
                await self._reply(self.chats[session_id], turn.text)
            self.cursors[session_id] = caught.cursor
            waiting = self.waiting[session_id]
            if caught.pending is None and waiting:
                text = waiting.popleft()
                try:
                    await self._qoder().sessions.events.send(session_id, UserMessage(text))
                except SessionBusyError:
                    waiting.appendleft(text)

    async def _reply(self, chat_id: str, text: str) -> None:
        async with self._replied:
            self.replies[chat_id].append(text)
            self._replied.notify_all()

    async def wait_replies(self, chat_id: str, count: int) -> list[str]:
        """Until ``chat_id`` has ``count`` replies (for the self-test)."""
        async with self._replied:
            await self._replied.wait_for(lambda: len(self.replies[chat_id]) >= count)
        return self.replies[chat_id]


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
    async with serving_app(bot.app(), host, port) as bound:
        yield bound


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


async def self_test_webhooks() -> None:
    """The webhook mode against a fake API that posts signed webhooks to the bot."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    bot = WebhookBot(secret)
    async with (
        serving_app(bot.app(), "127.0.0.1", 0) as port,
        FakeQoderServer(
            script=echo_agent,
            webhook_url=f"http://127.0.0.1:{port}/qoder/webhooks",
            webhook_secret=secret,
            webhook_events_on_turn_end=True,
        ) as server,
        QoderClient(token=server.token, base_url=server.base_url) as client,
        aiohttp.ClientSession() as http,
    ):
        agent = await client.agents.create(name="webhook-bot", model="auto")
        env = await client.environments.create(name="webhook-bot")
        bot.connect(client, agent.id, env.id)
        base = f"http://127.0.0.1:{port}/chat"
        sent = {"alice": ["first from alice", "second from alice"], "bob": ["hello from bob"]}
        for chat, texts in sent.items():
            for text in texts:
                async with http.post(f"{base}/{chat}", json={"text": text}) as response:
                    assert response.status == 202, await response.text()
        async with asyncio.timeout(30):
            replies = {chat: await bot.wait_replies(chat, len(t)) for chat, t in sent.items()}
        streams = server.stream_connections
    for chat, texts in sent.items():
        expected = [f"Echo: {text} (written word by word)" for text in texts]
        assert replies[chat] == expected, (chat, replies[chat])
        print(f"{chat}: {replies[chat]}")
    assert streams == 0, f"the webhook mode opened {streams} event streams"
    print(f"webhook self-test passed: 3 replies, {len(bot.sessions)} sessions, no event stream")


@contextlib.asynccontextmanager
async def serving_app(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Run a web app; yields the port it listens on."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def serve_webhooks(args: argparse.Namespace) -> None:
    """Serve the webhook mode against the real API until Ctrl-C."""
    secret = os.environ.get("QODER_WEBHOOK_SECRET")
    if not secret:
        raise SystemExit("set QODER_WEBHOOK_SECRET (whsec_... from the webhook endpoint)")
    bot = WebhookBot(secret)
    async with QoderClient() as client, serving_app(bot.app(), args.host, args.port) as port:
        made = await make_bot(client, args.agent, args.environment)
        bot.connect(client, made.agent_id, made.environment_id)
        print(
            f"bot listening on http://{args.host}:{port}: POST /chat/{{chat_id}}, "
            "GET /chat/{chat_id}/replies; point Qoder's webhooks at /qoder/webhooks",
            flush=True,
        )
        await asyncio.Event().wait()


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
    parser.add_argument(
        "--webhooks", action="store_true", help="answer from Qoder webhooks, no held stream"
    )
    parser.add_argument("--real", action="store_true", help="use the real API (QODER_PAT)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--agent", default=os.environ.get("QODER_AGENT_ID"))
    parser.add_argument("--environment", default=os.environ.get("QODER_ENVIRONMENT_ID"))
    args = parser.parse_args()
    if args.self_test:
        job = self_test_webhooks() if args.webhooks else self_test()
    else:
        job = serve_webhooks(args) if args.webhooks else serve(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(job)


if __name__ == "__main__":
    main()
