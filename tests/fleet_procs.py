"""The processes of the multi-process fleet tests: a worker and a front end.

    python tests/fleet_procs.py worker --worker-id w1 --out w1.jsonl ...
    python tests/fleet_procs.py front --sessions s1,s2 --turns 3 --out front.jsonl ...

Both talk to a fake Qoder server (``--base-url``/``--token``) and a Redis
(``--redis``/``--namespace``). Every fact the test checks is appended to
``--out`` as one JSON line, written with a single ``os.write`` on an
``O_APPEND`` descriptor, so a SIGKILL never leaves a record half written or
buffered. ``at`` is ``time.monotonic()``, one clock for every process of the
host.

Worker records: ``start`` (a handler began: session, event, type, token,
redelivered), ``done`` (it returned), ``tool`` (the get_weather tool ran),
``returned`` (``serve()`` returned). SIGTERM cancels ``serve()``, or with
``--graceful`` stops it gracefully (``Fleet.serve``'s own SIGTERM handling).
Front-end records: ``sent`` (a turn's message was accepted). With
``--gate-dir`` the front end sends turn N (N > 1) only once the file
``go-N`` exists there, so a test can finish one failure before the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qoder_async import QoderClient
from qoder_async.fleet import Delivery, Fleet, RedisCoordinator


class Journal:
    """Append-only JSON lines, one ``os.write`` each (survives SIGKILL intact)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **record: Any) -> None:
        record["at"] = time.monotonic()
        os.write(self._fd, (json.dumps(record) + "\n").encode())


async def worker(args: argparse.Namespace) -> None:
    journal = Journal(args.out)
    wid = args.worker_id

    async def get_weather(tool_input: Mapping[str, Any]) -> str:
        journal.write(k="tool", w=wid, city=tool_input.get("city"))
        await asyncio.sleep(0.05)
        return f"sunny in {tool_input.get('city')}"

    async with (
        QoderClient(token=args.token, base_url=args.base_url) as client,
        RedisCoordinator.from_url(
            args.redis, namespace=args.namespace, socket_timeout=args.lease_ttl / 4
        ) as coordinator,
    ):
        fleet = Fleet(
            client,
            coordinator,
            worker_id=wid,
            lease_ttl=args.lease_ttl,
            tools={"get_weather": get_weather},
            poll_interval=0.1,
            stall_timeout=1.0,
            shutdown_grace=args.shutdown_grace,
        )

        @fleet.handler
        async def on_event(d: Delivery) -> None:
            ev = d.event
            stop = getattr(ev, "stop_reason", None)
            journal.write(
                k="start",
                w=wid,
                s=d.session_id,
                e=ev.id,
                type=ev.type,
                stop=stop.type if stop is not None else None,
                t=d.token,
                r=d.redelivered,
                turn=d.turn_id,
            )
            await asyncio.sleep(args.handler_seconds)  # the handler's work
            journal.write(k="done", w=wid, s=d.session_id, e=ev.id, t=d.token)

        serve = asyncio.create_task(fleet.serve())
        if args.graceful:
            await asyncio.sleep(0)  # serve() starts: SIGTERM now calls fleet.stop()
        else:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serve.cancel)
        print("serving", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await serve
            journal.write(k="returned", w=wid)  # serve() returned (a graceful stop)


async def front(args: argparse.Namespace) -> None:
    journal = Journal(args.out)
    sessions = args.sessions.split(",")
    async with (
        QoderClient(token=args.token, base_url=args.base_url) as client,
        RedisCoordinator.from_url(args.redis, namespace=args.namespace) as coordinator,
    ):
        fleet = Fleet(client, coordinator, worker_id="front")  # sends only: never serves

        async def send(sid: str, turn: int) -> None:
            text = f"turn {turn} of {sid}" + (" (tool)" if turn == args.tool_turn else "")
            accepted = await fleet.send(sid, text, on_busy="wait", busy_timeout=120)
            journal.write(k="sent", s=sid, turn=turn, msg=accepted.last_event_id)

        for turn in range(1, args.turns + 1):
            if args.gate_dir and turn > 1:  # the test says when the next turn may go
                gate = Path(args.gate_dir) / f"go-{turn}"
                while not gate.exists():
                    await asyncio.sleep(0.02)
            await asyncio.gather(*(send(sid, turn) for sid in sessions))
    print("sent", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("worker", "front"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--worker-id", default="w")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--handler-seconds", type=float, default=0.02)
    parser.add_argument("--sessions", default="")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tool-turn", type=int, default=2)
    parser.add_argument("--graceful", action="store_true", help="SIGTERM: fleet.stop()")
    parser.add_argument("--shutdown-grace", type=float, default=30.0)
    parser.add_argument("--gate-dir", default="", help="wait for <dir>/go-<turn> before turns 2+")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(worker(args) if args.role == "worker" else front(args))


if __name__ == "__main__":
    main()
