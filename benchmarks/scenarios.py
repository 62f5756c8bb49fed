"""Scenarios: how each one drives the contenders, interleaved round by round."""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._child import SATURATED_S
from .contenders import REGISTRY, BenchFailure, Contender, Target, Unavailable

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """Sizes of everything; ``quick`` is a sub-minute smoke run."""

    quick: bool = False
    rounds: int = 7  # measured rounds, in-process scenarios (plus one warm-up)
    sub_rounds: int = 2  # measured rounds, one-subprocess-per-run scenarios
    tp_target_s: float = 0.4  # each contender reads >= this long per throughput round
    tp_n0: dict[str, int] = field(  # warm-up round size, used to calibrate N per contender
        default_factory=lambda: {"tiny": 1_000, "small": 1_000, "medium": 500, "large": 200}
    )
    tp_nmin: int = 200
    tp_nmax: dict[str, int] = field(
        default_factory=lambda: {
            "tiny": 800_000,
            "small": 800_000,
            "medium": 400_000,
            "large": 80_000,
        }
    )
    send_target_s: float = 0.4
    send_m0: int = 200
    send_min_per_worker: int = 2  # at concurrency c, at least c * this many requests
    ttfe_k: int = 30  # turns per round
    ttfe_events: int = 3  # agent events per turn
    idle_streams: int = 2000
    settle_s: float = 0.4  # idle-rss: pause after gc.collect() before reading VmRSS
    lat_streams: int = 1000
    lat_rate: float = 10.0
    lat_duration: float = 10.0
    lat_servers: int = 1
    # scale-*: the same measurements at growing numbers of simultaneous streams
    scale_streams: tuple[int, ...] = (1000, 2000, 5000)
    scale_rate: float = 0.5  # events/s per live stream (2,500 ev/s at 5,000 streams)
    scale_duration: float = 10.0
    server_impl: str = "proto"

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls()
        return cls(
            quick=True,
            rounds=2,
            sub_rounds=1,
            tp_target_s=0.05,
            tp_n0={"tiny": 300, "small": 300, "medium": 200, "large": 100},
            tp_nmin=50,
            send_target_s=0.05,
            send_m0=50,
            send_min_per_worker=1,
            settle_s=0.1,
            ttfe_k=5,
            idle_streams=200,
            lat_streams=200,
            lat_duration=1.5,
            scale_streams=(100, 200, 300),
            scale_rate=2.0,  # at 0.5 ev/s a 1.5 s window may hold no event at all
            scale_duration=1.5,
        )


# --------------------------------------------------------------------------- results


@dataclass
class CResult:
    name: str
    status: str = "ok"  # ok | unavailable | failed
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        vals = [r[key] for r in self.rounds if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def spread(self, key: str) -> tuple[float, float] | None:
        vals = [r[key] for r in self.rounds if r.get(key) is not None]
        return (min(vals), max(vals)) if vals else None


@dataclass
class SResult:
    scenario: str
    contenders: dict[str, CResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def _fail(cr: CResult, exc: BaseException) -> None:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    cr.status = "failed"
    if isinstance(exc, BenchFailure):
        cr.reason = str(exc)
    else:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        cr.reason = f"{type(exc).__name__}: {exc}{where}"


def rotate(items: list[Any], r: int) -> list[Any]:
    if not items:
        return items
    k = r % len(items)
    return items[k:] + items[:k]


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(p * len(sorted_vals)))]


def round2(x: float) -> int:
    """Round to two significant digits (keeps the number of distinct server sids small)."""
    if x <= 0:
        return 0
    e = max(0, len(str(int(x))) - 2)
    return int(round(x / 10**e) * 10**e)


# --------------------------------------------------------------------------- server control


class ServerPool:
    """One or more ``benchmarks.server`` processes sharing a port (SO_REUSEPORT)."""

    def __init__(self, impl: str, procs: int = 1) -> None:
        self.impl = impl
        self.nprocs = procs
        self.procs: list[asyncio.subprocess.Process] = []
        self.port = 0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _spawn(self, port: int, reuse: bool) -> int:
        args = [sys.executable, "-m", "benchmarks.server", "--impl", self.impl, "--port", str(port)]
        if reuse:
            args.append("--reuse-port")
        p = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 30)
        if not line:
            raise RuntimeError("benchmark server failed to start")
        return int(json.loads(line)["port"])

    async def start(self) -> None:
        reuse = self.nprocs > 1
        self.port = await self._spawn(0, reuse)
        for _ in range(self.nprocs - 1):
            await self._spawn(self.port, True)

    async def command(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            assert p.stdin is not None
            assert p.stdout is not None
            p.stdin.write(json.dumps(cmd).encode() + b"\n")
            await p.stdin.drain()
            out.append(json.loads(await asyncio.wait_for(p.stdout.readline(), 600)))
        return out

    async def prepare(self, sids: list[str]) -> None:
        await self.command({"cmd": "prepare", "sids": sorted(set(sids))})

    async def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs.clear()


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    title: str
    primary: str  # metric key shown with spread and used for the ratios
    label: str
    fmt: str
    higher_is_better: bool
    refs: tuple[str, ...]
    contenders: tuple[str, ...]
    extra: tuple[tuple[str, str, str], ...] = ()  # (key, label, fmt), medians over rounds
    param_cols: tuple[tuple[str, str], ...] = ()  # (params key, label)
    # (key, ref, label): median of an extra column / the ref's median of it
    extra_ratios: tuple[tuple[str, str, str], ...] = ()
    run: Callable[[Harness, Scenario, list[str]], Awaitable[SResult]] | None = None


class Harness:
    def __init__(self, plan: Plan, server: ServerPool) -> None:
        self.plan = plan
        self.server = server

    def target(self, pool: int = 0) -> Target:
        return Target(self.server.root, pool)

    async def server_cpu(self) -> float:
        """CPU seconds used so far by the server process(es)."""
        stats = await self.server.command({"cmd": "stats"})
        return float(sum(s["ru_utime"] + s["ru_stime"] for s in stats))

    async def lazy_note(self, res: SResult) -> None:
        stats = await self.server.command({"cmd": "stats"})
        lazy = sum(s["lazy_renders"] for s in stats)
        if lazy:
            sids = [sid for s in stats for sid in s["lazy_sids"]]
            res.notes.append(f"server rendered {lazy} session(s) lazily: {sids}")
        await self.server.command({"cmd": "reset"})

    async def interleaved(
        self,
        scn: Scenario,
        names: list[str],
        target: Target,
        params0: dict[str, Any],
        sids: Callable[[dict[str, Any]], list[str]],
        measure: Callable[[Contender, dict[str, Any]], Awaitable[dict[str, Any]]],
        calibrate: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    ) -> SResult:
        """Warm-up round (discarded, optionally calibrating params), then rounds in rotation."""
        res = SResult(scn.name)
        active: list[tuple[str, Contender]] = []
        for name in names:
            # each contender's params know whose they are (sids() may depend on it)
            cr = res.contenders[name] = CResult(name, params={**params0, "contender": name})
            c = REGISTRY[name]()
            try:
                await c.setup(target)
            except Unavailable as exc:
                cr.status, cr.reason = "unavailable", str(exc)
                continue
            except Exception as exc:
                _fail(cr, exc)
                continue
            active.append((name, c))
        await self.server.prepare(
            [sid for cr in res.contenders.values() for sid in sids(cr.params)]
        )
        await self.server.command({"cmd": "reset"})
        try:
            for r in range(-1, self.plan.rounds):
                for name, c in rotate(list(active), r + 1):
                    cr = res.contenders[name]
                    if cr.status != "ok":
                        continue
                    gc.collect()
                    try:
                        m = await measure(c, cr.params)
                    except Exception as exc:
                        _fail(cr, exc)
                        continue
                    if r >= 0:
                        cr.rounds.append(m)
                    elif calibrate is not None:
                        cr.params = {**calibrate(cr.params, m), "contender": name}
                if r < 0:
                    needed = [sid for cr in res.contenders.values() for sid in sids(cr.params)]
                    await self.server.prepare(needed)
                    await self.server.command({"cmd": "reset"})
        finally:
            for _, c in active:
                try:
                    await c.aclose()
                except Exception as exc:
                    res.notes.append(f"{c.name}: close failed: {exc!r}")
        await self.lazy_note(res)
        return res

    async def child(self, spec: dict[str, Any], limit_s: float) -> dict[str, Any]:
        """Run one measurement in a fresh interpreter (``benchmarks._child``).

        The child prints ``WINDOW_START`` / ``WINDOW_END`` progress lines (paced
        mode): the server stats are reset at the first and read at the second,
        then the server's pacing is stopped. The last line is the JSON result.
        """
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._child",
            json.dumps(spec),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert p.stdout is not None
        assert p.stderr is not None
        err_task = asyncio.create_task(p.stderr.read())
        last = b""
        window: dict[str, Any] = {}
        try:
            async with asyncio.timeout(limit_s):
                while line := await p.stdout.readline():
                    if line.strip() == b"WINDOW_START":
                        await self.server.command({"cmd": "reset"})
                    elif line.strip() == b"WINDOW_END":
                        window["stats"] = await self.server.command({"cmd": "stats"})
                        await self.server.command({"cmd": "finish_paced"})
                    elif line.strip():
                        last = line
                await p.wait()
        except TimeoutError:
            p.kill()
            await p.wait()
            err_task.cancel()
            await self.server.command({"cmd": "finish_paced"})
            return {"status": "failed", "reason": f"child timed out after {limit_s:.0f} s"}
        err = await err_task
        if p.returncode != 0 or not last:
            tail = err.decode().strip().splitlines()[-3:]
            return {"status": "failed", "reason": f"child exit {p.returncode}: {' | '.join(tail)}"}
        result: dict[str, Any] = json.loads(last)
        if "stats" in window:
            lags = [s["paced_lag_ms_p99"] for s in window["stats"] if s["paced_lag_ms_p99"]]
            result["srv_lag_p99_ms"] = max(lags) if lags else None
        return result

    async def in_children(
        self, scn: Scenario, names: list[str], spec: dict[str, Any], limit_s: float
    ) -> SResult:
        res = SResult(scn.name)
        for name in names:
            res.contenders[name] = CResult(name)
        for r in range(self.plan.sub_rounds):
            for name in rotate(list(names), r):
                cr = res.contenders[name]
                if cr.status != "ok":
                    continue
                await self.server.command({"cmd": "reset"})
                out = await self.child({**spec, "contender": name}, limit_s)
                status = out.pop("status", "ok")
                if status != "ok":
                    cr.status, cr.reason = status, out.get("reason", "")
                    continue
                cr.rounds.append(out)
                if out.get("end") == "saturated":
                    cr.status = "saturated"
                    cr.reason = (
                        f"fell > {SATURATED_S:g} s behind the paced streams ({out['opened']} of "
                        f"{spec['streams']} streams open after {out['open_s']:.1f} s); "
                        "it cannot parse the offered event rate"
                    )
        return res


# --- 1. throughput ---------------------------------------------------------------


def _events_for(
    h: Harness, size: str
) -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """The throughput calibration: as many events as ``tp_target_s`` seconds of the rate
    measured, within the plan's bounds for ``size``."""
    plan = h.plan

    def calibrate(p: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
        n = round2(m["ev_s"] * plan.tp_target_s * 1.1)
        return {"n": max(plan.tp_nmin, min(plan.tp_nmax[size], n))}

    return calibrate


def _throughput(size: str) -> Callable[[Harness, Scenario, list[str]], Awaitable[SResult]]:
    async def run(h: Harness, scn: Scenario, names: list[str]) -> SResult:
        plan = h.plan

        def sids(p: dict[str, Any]) -> list[str]:
            # the turn API reads the same frames as one turn (see QoderTurn.read_stream)
            if p.get("contender") == "qoder_async-turn":
                return [f"sess_turn-{size}-{p['n']}"]
            return [f"sess_burst-{size}-{p['n']}"]

        async def measure(c: Contender, p: dict[str, Any]) -> dict[str, Any]:
            n = p["n"]
            cpu0 = await h.server_cpu()
            t0 = time.perf_counter()
            await c.read_stream(f"sess_burst-{size}-{n}", n)
            dt = time.perf_counter() - t0
            srv = (await h.server_cpu() - cpu0) / dt * 100
            return {"ev_s": n / dt, "n": n, "s": dt, "srv_cpu_pct": srv}

        return await h.interleaved(
            scn, names, h.target(), {"n": plan.tp_n0[size]}, sids, measure, _events_for(h, size)
        )

    return run


def _turn_api(size: str, tag: str) -> Callable[[Harness, Scenario, list[str]], Awaitable[SResult]]:
    """The typed stream vs the turn API on the same frames (``tag``: ``-noturnid`` or "")."""

    async def run(h: Harness, scn: Scenario, names: list[str]) -> SResult:
        plan = h.plan

        def sids(p: dict[str, Any]) -> list[str]:
            mode = "turn" if p.get("contender", "").startswith("qoder_async-turn") else "burst"
            return [f"sess_{mode}-{size}-{p['n']}{tag}"]

        async def measure(c: Contender, p: dict[str, Any]) -> dict[str, Any]:
            n = p["n"]
            cpu0, t0 = time.process_time(), time.perf_counter()
            await c.read_stream(f"sess_burst-{size}-{n}{tag}", n)
            dt = time.perf_counter() - t0
            # The client's own CPU per event (the server is another process): steadier
            # than the wall clock on a loaded machine.
            cpu_us = (time.process_time() - cpu0) / n * 1e6
            return {"ev_s": n / dt, "n": n, "s": dt, "cpu_us": cpu_us}

        return await h.interleaved(
            scn, names, h.target(), {"n": plan.tp_n0[size]}, sids, measure, _events_for(h, size)
        )

    return run


# --- 2. send -----------------------------------------------------------------------


def _send(conc: int) -> Callable[[Harness, Scenario, list[str]], Awaitable[SResult]]:
    async def run(h: Harness, scn: Scenario, names: list[str]) -> SResult:
        plan = h.plan
        sid = "sess_send"

        async def measure(c: Contender, p: dict[str, Any]) -> dict[str, Any]:
            per = max(1, p["m"] // conc)
            lat: list[float] = []

            async def worker() -> None:
                for _ in range(per):
                    t = time.perf_counter()
                    await c.post_once(sid)
                    lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for _ in range(conc):
                    tg.create_task(worker())
            dt = time.perf_counter() - t0
            lat.sort()
            return {
                "rps": len(lat) / dt,
                "p50_ms": pct(lat, 0.5) * 1000,
                "p99_ms": pct(lat, 0.99) * 1000,
                "n": len(lat),
            }

        def calibrate(p: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
            m_new = round2(m["rps"] * plan.send_target_s * 1.1)
            return {"m": max(plan.send_m0, conc * plan.send_min_per_worker, min(100_000, m_new))}

        m0 = max(plan.send_m0, conc * plan.send_min_per_worker)
        return await h.interleaved(
            scn, names, h.target(), {"m": m0}, lambda p: [sid], measure, calibrate
        )

    return run


# --- 3. ttfe -------------------------------------------------------------------------


async def _ttfe(h: Harness, scn: Scenario, names: list[str]) -> SResult:
    plan = h.plan
    n = plan.ttfe_events

    def sid(name: str) -> str:
        return f"sess_turn-medium-{n}-{name.replace('-', '_')}"

    async def measure(c: Contender, p: dict[str, Any]) -> dict[str, Any]:
        firsts, totals = [], []
        for _ in range(p["k"]):
            first, total = await c.ttfe(sid(c.name), n)
            firsts.append(first)
            totals.append(total)
        firsts.sort()
        return {
            "ttfe_ms": statistics.median(firsts) * 1000,
            "ttfe_p90_ms": pct(firsts, 0.9) * 1000,
            "turn_ms": statistics.median(totals) * 1000,
            "k": p["k"],
        }

    def calibrate(p: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
        return {"k": plan.ttfe_k}

    return await h.interleaved(
        scn,
        names,
        h.target(),
        {"k": max(3, plan.ttfe_k // 3)},
        lambda p: [sid(name) for name in names],
        measure,
        calibrate,
    )


# --- 4. idle-rss --------------------------------------------------------------------


async def _idle_rss(h: Harness, scn: Scenario, names: list[str]) -> SResult:
    plan = h.plan
    await h.server.prepare(["sess_idle"])
    spec = {
        "mode": "idle",
        "root": h.server.root,
        "sid": "sess_idle",
        "streams": plan.idle_streams,
        "settle_s": plan.settle_s,
    }
    res = await h.in_children(scn, names, spec, limit_s=240)
    res.notes.append(
        f"{plan.idle_streams} streams per fresh subprocess; RSS = VmRSS after warm-up "
        "(one stream opened and closed) vs after every stream delivered its first event"
    )
    return res


# --- 5. latency ----------------------------------------------------------------------


async def _latency(h: Harness, scn: Scenario, names: list[str]) -> SResult:
    plan = h.plan
    # Enough paced frames for the slowest opener; the harness stops pacing
    # (finish_paced) as soon as the measurement window is over.
    count = int(plan.lat_rate * (plan.lat_duration + 120))
    sid = f"sess_paced-medium-{plan.lat_rate:g}-{count}"
    pool = h.server
    own = plan.lat_servers > 1
    if own:
        pool = ServerPool(plan.server_impl, plan.lat_servers)
        await pool.start()
    try:
        await pool.prepare([sid])
        sub = Harness(plan, pool)
        spec = {
            "mode": "paced",
            "root": pool.root,
            "sid": sid,
            "streams": plan.lat_streams,
            "duration": plan.lat_duration,
        }
        limit = 90 + 4 * plan.lat_duration
        res = await sub.in_children(scn, names, spec, limit_s=limit)
    finally:
        if own:
            await pool.stop()
    target = plan.lat_streams * plan.lat_rate
    res.notes.append(
        f"{plan.lat_streams} streams x {plan.lat_rate:g} ev/s = {target:,.0f} ev/s target, "
        f"{plan.lat_servers} server process(es); window = {plan.lat_duration:g} s from the "
        "moment every stream delivered its first event; 'sent/s' = events stamped inside "
        "the window / window (the server's achieved send rate); 'srv lag' = server "
        "lateness vs its schedule in the window (p99 ms); client CPU% during the window"
    )
    return res


# --- 6. scale: live and idle streams, 1,000 to 5,000 at once -------------------------


def _scale_live(i: int) -> Callable[[Harness, Scenario, list[str]], Awaitable[SResult]]:
    async def run(h: Harness, scn: Scenario, names: list[str]) -> SResult:
        plan = h.plan
        streams = plan.scale_streams[i]
        count = int(plan.scale_rate * (plan.scale_duration + 180))
        sid = f"sess_paced-medium-{plan.scale_rate:g}-{count}"
        await h.server.prepare([sid])
        spec = {
            "mode": "paced",
            "root": h.server.root,
            "sid": sid,
            "streams": streams,
            "duration": plan.scale_duration,
            "abort_late": False,
        }
        res = await h.in_children(scn, names, spec, limit_s=240 + 4 * plan.scale_duration)
        res.notes.append(
            f"{streams:,} live streams x {plan.scale_rate:g} ev/s (~450 B events); client CPU "
            f"per event received in the {plan.scale_duration:g} s window that starts once every "
            "stream delivered its first event; KiB/stream = VmRSS growth from before the first "
            "stream to the window's end, per stream; a client that falls behind is measured on "
            "(the p99 says by how much)"
        )
        return res

    return run


def _scale_idle(i: int) -> Callable[[Harness, Scenario, list[str]], Awaitable[SResult]]:
    async def run(h: Harness, scn: Scenario, names: list[str]) -> SResult:
        streams = h.plan.scale_streams[i]
        await h.server.prepare(["sess_idle"])
        spec = {
            "mode": "idle",
            "root": h.server.root,
            "sid": "sess_idle",
            "streams": streams,
            "settle_s": h.plan.settle_s,
        }
        res = await h.in_children(scn, names, spec, limit_s=300)
        res.notes.append(f"{streams:,} idle streams per fresh subprocess (as idle-rss)")
        return res

    return run


# --------------------------------------------------------------------------- registry

STREAMERS = (
    "sink",
    "raw",
    "aiohttp-min",
    "D",
    "httpx-default",
    "qca",
    "qoder_async-stream",
    "qoder_async-stream-httpx",
    "qoder_async-turn",
)
SIZE_NOTE = {"tiny": "~85 B", "small": "~150 B", "medium": "~450 B", "large": "~4 KiB"}

SCENARIOS: dict[str, Scenario] = {}
for _size in ("tiny", "medium", "large"):
    SCENARIOS[f"throughput-{_size}"] = Scenario(
        name=f"throughput-{_size}",
        title=f"events/s reading N agent.message frames ({SIZE_NOTE[_size]}) from one stream",
        primary="ev_s",
        label="events/s",
        fmt=",.0f",
        higher_is_better=True,
        refs=("raw", "D", "qca", "qoder_async-stream"),
        contenders=STREAMERS,
        extra=(("srv_cpu_pct", "server CPU%", ".0f"),),
        param_cols=(("n", "N"),),
        run=_throughput(_size),
    )
TURN_API = ("qoder_async-stream", "qoder_async-turn-result", "qoder_async-turn-text")
for _size in ("small", "medium", "large"):
    for _tag in ("", "-noturnid"):
        _name = f"turn-api-{_size}{_tag}"
        SCENARIOS[_name] = Scenario(
            name=_name,
            title=(
                f"events/s of the turn API vs the typed stream, same frames "
                f"({SIZE_NOTE[_size]}, {'no turn_id' if _tag else 'with turn_id'})"
            ),
            primary="ev_s",
            label="events/s",
            fmt=",.0f",
            higher_is_better=True,
            refs=("qoder_async-stream",),
            contenders=TURN_API,
            extra=(("cpu_us", "client CPU us/ev", ".2f"),),
            extra_ratios=(("cpu_us", "qoder_async-stream", "CPU x stream"),),
            param_cols=(("n", "N"),),
            run=_turn_api(_size, _tag),
        )
for _c in (1, 50):
    SCENARIOS[f"send-c{_c}"] = Scenario(
        name=f"send-c{_c}",
        title=f"POST .../events (user.message -> 202) at concurrency {_c}",
        primary="rps",
        label="req/s",
        fmt=",.0f",
        higher_is_better=True,
        refs=("raw", "qca"),
        contenders=(
            "raw",
            "D",
            "httpx-default",
            "qca",
            "qoder_async-stream",
            "qoder_async-stream-httpx",
        ),
        extra=(("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f")),
        extra_ratios=(("p50_ms", "raw", "p50 x raw"),),
        param_cols=(("n", "reqs"),),
        run=_send(_c),
    )
SCENARIOS["ttfe"] = Scenario(
    name="ttfe",
    title="time to first agent event: POST, then stream with Last-Event-ID = created id",
    primary="ttfe_ms",
    label="ttfe ms",
    fmt=".3f",
    higher_is_better=False,
    refs=("raw", "D", "qca"),
    contenders=("raw", "D", "qca", "qoder_async-turn"),
    extra=(("ttfe_p90_ms", "p90 ms", ".3f"), ("turn_ms", "turn done ms", ".3f")),
    param_cols=(("k", "turns/round"),),
    run=_ttfe,
)
SCENARIOS["idle-rss"] = Scenario(
    name="idle-rss",
    title="RSS per idle open stream (fresh subprocess per contender and round)",
    primary="kib_per_stream",
    label="KiB/stream",
    fmt=".1f",
    higher_is_better=False,
    refs=("raw", "D", "qca"),
    contenders=(
        "raw",
        "aiohttp-min",
        "D",
        "httpx-default",
        "qca",
        "qoder_async-stream",
        "qoder_async-stream-httpx",
    ),
    extra=(
        ("streams", "streams", ".0f"),
        ("rss0_mib", "RSS0 MiB", ".1f"),
        ("rss1_mib", "RSS1 MiB", ".1f"),
        ("open_s", "open s", ".2f"),
    ),
    run=_idle_rss,
)
SCENARIOS["latency-1000"] = Scenario(
    name="latency-1000",
    title="delivery latency (receive - sent_at), many paced streams",
    primary="p99_ms",
    label="p99 ms",
    fmt=".2f",
    higher_is_better=False,
    refs=("raw", "D", "qca"),
    contenders=(
        "raw",
        "aiohttp-min",
        "D",
        "httpx-default",
        "qca",
        "qoder_async-stream",
        "qoder_async-stream-httpx",
    ),
    extra=(
        ("p50_ms", "p50 ms", ".2f"),
        ("max_ms", "max ms", ".1f"),
        ("sent_rate", "sent/s", ",.0f"),
        ("srv_lag_p99_ms", "srv lag", ".2f"),
        ("cpu_pct", "client CPU%", ".0f"),
        ("open_s", "open s", ".2f"),
    ),
    run=_latency,
)


# scale-*-1k/2k/5k: plan.scale_streams[0/1/2] streams (1,000, 2,000, 5,000; quick 100..300)
for _i, _n in enumerate(("1k", "2k", "5k")):
    SCENARIOS[f"scale-live-{_n}"] = Scenario(
        name=f"scale-live-{_n}",
        title="client CPU per event and RSS per stream, paced live streams (fresh subprocess)",
        primary="cpu_us_per_event",
        label="CPU us/event",
        fmt=".1f",
        higher_is_better=False,
        refs=("raw",),
        contenders=("raw", "qoder_async-stream"),
        extra=(
            ("kib_per_stream", "KiB/stream", ".1f"),
            ("streams", "streams", ".0f"),
            ("events", "events", ",.0f"),
            ("cpu_pct", "client CPU%", ".0f"),
            ("p99_ms", "p99 ms", ".1f"),
        ),
        extra_ratios=(("kib_per_stream", "raw", "KiB x raw"),),
        run=_scale_live(_i),
    )
    SCENARIOS[f"scale-idle-{_n}"] = Scenario(
        name=f"scale-idle-{_n}",
        title="RSS per idle open stream (fresh subprocess per contender and round)",
        primary="kib_per_stream",
        label="KiB/stream",
        fmt=".1f",
        higher_is_better=False,
        refs=("raw",),
        contenders=("raw", "qoder_async-stream"),
        extra=(("streams", "streams", ".0f"), ("open_s", "open s", ".2f")),
        run=_scale_idle(_i),
    )
