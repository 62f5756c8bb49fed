"""One many-connection measurement in a fresh interpreter (idle-rss, latency-1000).

``python -m benchmarks._child '<json spec>'`` prints one JSON line: the metrics,
or ``{"status": "unavailable"|"failed", "reason": ...}``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from array import array
from typing import Any

from .contenders import REGISTRY, BenchFailure, Contender, Target, Unavailable
from .server import raise_nofile

SATURATED_S = 3.0  # an event this late means the client cannot keep up: stop early


class Saturated(Exception):
    pass


def vmrss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def open_idle(c: Contender, sid: str, n: int, limit_s: float) -> list[asyncio.Task[None]]:
    """Start ``n`` idle streams; return once each delivered its first event."""
    ready = asyncio.Event()
    got = 0

    def got_first() -> None:
        nonlocal got
        got += 1
        if got == n:
            ready.set()

    tasks = [asyncio.create_task(c.hold_idle(sid, got_first)) for _ in range(n)]
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=limit_s, return_when="FIRST_COMPLETED")
    if waiter not in done:
        waiter.cancel()
        for t in tasks:
            if t in done and t.exception() is not None:
                await _cancel(tasks)
                raise t.exception()  # type: ignore[misc]
        await _cancel(tasks)
        raise BenchFailure(f"only {got}/{n} idle streams delivered their first event")
    return tasks


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def idle(c: Contender, spec: dict[str, Any]) -> dict[str, Any]:
    sid, n = spec["sid"], spec["streams"]
    # Warm-up: import and first-use allocations (pools, parsers) happen here.
    await _cancel(await open_idle(c, sid, 1, 30))
    gc.collect()
    await asyncio.sleep(spec["settle_s"])
    rss0 = vmrss_kib()
    t0 = time.perf_counter()
    tasks = await open_idle(c, sid, n, 180)
    open_s = time.perf_counter() - t0
    gc.collect()
    await asyncio.sleep(spec["settle_s"])
    rss1 = vmrss_kib()
    # Every stream must still be open and reading (e.g. not crashed on the
    # heartbeat comment that followed its first event), or RSS would flatter it.
    ended = [t for t in tasks if t.done()]
    await _cancel(tasks)
    if ended:
        exc = ended[0].exception() if not ended[0].cancelled() else None
        raise BenchFailure(f"{len(ended)}/{n} idle streams ended early: {exc!r}")
    return {
        "kib_per_stream": (rss1 - rss0) / n,
        "streams": n,
        "rss0_mib": rss0 / 1024,
        "rss1_mib": rss1 / 1024,
        "open_s": open_s,
    }


def say(line: str) -> None:
    """Progress line for the parent (which drives the server's control channel)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def paced(c: Contender, spec: dict[str, Any]) -> dict[str, Any]:
    """Open ``streams`` paced streams; record latency of events stamped in the window.

    The window starts when the last stream delivered its first event and lasts
    ``duration`` s. Then ``WINDOW_END`` tells the parent to stop the server's
    pacing; every stream ends with an idle frame carrying its ``sent_count``.
    """
    sid, n, duration = spec["sid"], spec["streams"], spec["duration"]
    # Latency scenarios stop a client that falls behind; cost scenarios (scale-*) measure on.
    abort_late = spec.get("abort_late", True)
    sent_at_log = array("d")
    lat = array("d")
    window = [float("inf"), float("inf")]
    cpu = [0.0, 0.0]
    rss = [vmrss_kib(), 0]  # before any stream, then at the window's end (streams live)
    in_window = 0  # every event received inside the window (the CPU's denominator)
    opened = 0
    t_start = time.time()
    all_open = asyncio.Event()

    def stream_cb() -> Any:
        first = True

        def on_event(sent_at: float) -> None:
            nonlocal first, opened, in_window
            now = time.time()
            if window[0] <= now < window[1]:
                in_window += 1
            if first:
                first = False
                opened += 1
                if opened == n:
                    window[0], window[1] = now, now + duration
                    cpu[0] = cpu_s()
                    all_open.set()
            if window[0] <= sent_at < window[1]:
                lat.append(now - sent_at)
                sent_at_log.append(sent_at)
            if abort_late and now - sent_at > SATURATED_S:
                # Raised right here: a saturated loop runs every stream's
                # backlog before a watchdog task would get a turn.
                raise Saturated

        return on_event

    async def finisher() -> None:
        await all_open.wait()
        say("WINDOW_START")
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        cpu[1] = cpu_s()
        rss[1] = vmrss_kib()
        say("WINDOW_END")

    status = "ok"
    try:
        async with asyncio.timeout(60 + 3 * duration):
            try:
                async with asyncio.TaskGroup() as tg:
                    streams = [tg.create_task(c.paced(sid, stream_cb())) for _ in range(n)]
                    fin = tg.create_task(finisher())
                    await asyncio.wait(streams)
                    fin.cancel()
            except ExceptionGroup as eg:
                raise eg.exceptions[0] from None
    except TimeoutError:
        status = "incomplete"
    except Saturated:
        status = "saturated"
    vals = sorted(lat)

    def p(q: float) -> float | None:
        return vals[min(len(vals) - 1, int(q * len(vals)))] * 1000 if vals else None

    return {
        "p50_ms": p(0.5),
        "p90_ms": p(0.9),
        "p99_ms": p(0.99),
        "max_ms": p(1.0),
        "samples": len(vals),
        "sent_rate": len(vals) / duration if status == "ok" else None,
        "opened": opened,
        "open_s": (window[0] if all_open.is_set() else time.time()) - t_start,
        "cpu_pct": 100 * (cpu[1] - cpu[0]) / duration if cpu[1] else None,
        "cpu_us_per_event": 1e6 * (cpu[1] - cpu[0]) / in_window if cpu[1] and in_window else None,
        "events": in_window,
        "kib_per_stream": (rss[1] - rss[0]) / n if rss[1] else None,
        "streams": n,
        "complete": status == "ok",
        "end": status,
    }


async def amain(spec: dict[str, Any]) -> dict[str, Any]:
    raise_nofile()
    c = REGISTRY[spec["contender"]]()
    try:
        await c.setup(Target(spec["root"], pool=spec["streams"]))
    except Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc)}
    try:
        if spec["mode"] == "idle":
            return await idle(c, spec)
        return await paced(c, spec)
    finally:
        await c.aclose()


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        out = asyncio.run(amain(spec))
    except BenchFailure as exc:
        out = {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
