"""Instructions per event, counted by callgrind: steadier than the wall clock here.

``python -m benchmarks.instructions [--events N] [--nogc]`` starts the benchmark
server, then runs each consumer twice under ``valgrind --tool=callgrind`` (with
1 event and with N+1), client process only, and prints the difference divided
by N: what one more event costs, startup excluded. Consumers: ``raw`` (aiohttp
bytes only, counting frames: the floor every aiohttp-based client pays), ``D`` (httpx +
AiohttpTransport + httpx-sse + json.loads), ``stream`` (qoder_async typed
stream), ``stream-httpx`` (the same on a borrowed ``httpx.AsyncClient`` with
D's transport), ``stream-keep`` (the typed stream, keeping every event in a
list) and ``turn`` (the turn API, which keeps its events for ``result()``).
``--nogc`` turns the cyclic garbage collector off in the consumer, to see what
it costs; ``--consumer NAME`` (repeatable) runs only those. ``D`` and
``stream-httpx`` need ``pip install httpx-aiohttp`` and are skipped without it.
Needs valgrind (``apt install valgrind``); takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from typing import Any

CONSUMERS = ("raw", "D", "stream", "stream-httpx", "stream-keep", "turn")
NEEDS_HTTPX_AIOHTTP = frozenset({"D", "stream-httpx"})


async def consume(mode: str, base: str, n: int, size: str = "medium") -> None:
    """Read ``n`` events of ``size`` the way ``mode`` does (runs inside valgrind)."""
    burst, turn_sid = f"sess_burst-{size}-{n}", f"sess_turn-{size}-{n}"
    if mode == "raw":
        import aiohttp

        async with aiohttp.ClientSession() as session:
            url = f"{base}/sessions/{burst}/events/stream"
            async with session.get(url, headers={"Authorization": "Bearer t"}) as resp:
                count = 0
                async for chunk in resp.content.iter_any():
                    count += chunk.count(b"\n\n")  # no frame is split in a "\n" | "\n" way here
                    if count >= n:
                        return
        return
    if mode == "D":
        import httpx
        import httpx_sse
        from httpx_aiohttp import AiohttpTransport

        async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
            url = f"{base}/sessions/{burst}/events/stream"
            headers = {"Authorization": "Bearer t"}
            count = 0
            async with httpx_sse.aconnect_sse(http, "GET", url, headers=headers) as source:
                async for sse in source.aiter_sse():
                    if sse.data:
                        json.loads(sse.data)
                        count += 1
                        if count == n:
                            return
        return
    from qoder_async import QoderClient

    http_client = None
    if mode == "stream-httpx":
        import httpx
        from httpx_aiohttp import AiohttpTransport

        http_client = httpx.AsyncClient(transport=AiohttpTransport())
    try:
        async with QoderClient(token="t", base_url=base, http_client=http_client) as client:
            await _qoder(client, mode, burst, turn_sid)
    finally:
        if http_client is not None:
            await http_client.aclose()  # borrowed: QoderClient leaves it open


async def _qoder(client: Any, mode: str, burst: str, turn_sid: str) -> None:
    if mode == "turn":
        turn = await client.session(turn_sid).send("hi")
        async for _ in turn:
            pass
        return
    kept = []
    async with client.sessions.events.stream(burst) as stream:
        async for ev in stream:
            if mode == "stream-keep":
                kept.append(ev)
            if ev.type == "session.status_idle":
                return


def _count(mode: str, base: str, n: int, nogc: bool, size: str) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        mode,
        base,
        str(n),
        "--size",
        size,
    ]
    if nogc:
        cmd.append("--nogc")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise RuntimeError(f"no callgrind total in: {out[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--nogc", action="store_true")
    parser.add_argument("--size", choices=("tiny", "medium", "large"), default="medium")
    parser.add_argument("--consumer", action="append", choices=CONSUMERS)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, base, n = args.child
        if args.nogc:
            gc.disable()
        asyncio.run(consume(mode, base, int(n), args.size))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    n = args.events
    sids = [f"sess_{kind}-{args.size}-{k}" for kind in ("burst", "turn") for k in (1, n + 1)]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server", *(f"--prepare={s}" for s in sids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        base = f"http://127.0.0.1:{port}/api/v1/cloud"
        results = {}
        have_transport = importlib.util.find_spec("httpx_aiohttp") is not None
        for mode in args.consumer or CONSUMERS:
            if mode in NEEDS_HTTPX_AIOHTTP and not have_transport:
                print(f"{mode:12s} unavailable: pip install httpx-aiohttp", flush=True)
                continue
            extra = _count(mode, base, n + 1, args.nogc, args.size) - _count(
                mode, base, 1, args.nogc, args.size
            )
            results[mode] = extra / n
            print(f"{mode:12s} {results[mode]:10,.0f} instructions per event", flush=True)
        ratios = [
            (a, b)
            for a, b in (
                ("raw", "D"),
                ("stream", "D"),
                ("stream-httpx", "D"),
                ("turn", "stream"),
                ("stream-keep", "stream"),
            )
            if a in results and b in results
        ]
        print(", ".join(f"{a} / {b} = {results[a] / results[b]:.2f}" for a, b in ratios))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
