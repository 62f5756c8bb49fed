"""Kill-a-worker: 3 worker processes and a front end share 30 sessions through Redis.

The fake Qoder server runs in this process (with faults on), reachable over
127.0.0.1; the workers and the front end are ``tests/fleet_procs.py``
processes. The front end sends 3 turns to each session through
``fleet.send`` (the second turn calls a custom tool). Two workers are
SIGKILLed in the middle of a turn (a fresh one joins after each kill) and a
third is SIGSTOPped for longer than ``lease_ttl``, then resumed. Every
delivery is journalled by the worker that made it (session, event, fencing
token, redelivered, time); the checks run on those journals and on what the
server stored:

* every stored event of every turn delivered, in stored order;
* an event twice only with ``redelivered=True``, and only an event whose
  handler was running in a killed (or stopped) worker: at most one per
  interrupted handler;
* fencing: per session, tokens never go down in delivery order (no two
  workers delivering one session at once), and the stopped worker delivers
  nothing of the sessions it lost after it resumes;
* every turn a kill interrupted finished within ``lease_ttl + 5 s`` of it;
* the tool ran at most once per call, and every call got exactly one result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from redis_server import drop_namespace, redis_url_fixture  # noqa: F401 (the redis_url fixture)

from qoder_async.fleet import RedisCoordinator
from qoder_async.testing import FakeQoderServer, TurnContext

pytestmark = pytest.mark.timeout(150)

TTL = 2.0
SESSIONS = 30
TURNS = 3
PROCS = Path(__file__).resolve().parent / "fleet_procs.py"
ROOT = PROCS.parent.parent

Record = dict[str, Any]


async def turn_script(ctx: TurnContext) -> None:
    """About a second per turn, events alone and in pairs; the tool turn calls get_weather."""
    for i in range(3):
        await ctx.sleep(0.1)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"step {i}"}])
        ctx.emit("agent.thinking", thinking=f"and then {i}")  # arrives with the one before
    if "(tool)" in ctx.text:
        use = await ctx.custom_tool("get_weather", {"city": ctx.session_id})
        await ctx.require_action([use["id"]])
    for i in range(3):
        await ctx.sleep(0.1)
        ctx.emit("agent.message", content=[{"type": "text", "text": f"more {i}"}])


def journal(path: Path) -> list[Record]:
    """The complete lines of a journal (a line being written is left for later)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # whatever follows the last newline is incomplete
    return [json.loads(line) for line in lines if line]


class Proc:
    """A fleet_procs.py process."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, out: Path) -> None:
        self.name = name
        self.process = process
        self.out = out

    def records(self, kind: str | None = None) -> list[Record]:
        return [r for r in journal(self.out) if kind is None or r["k"] == kind]

    def signal(self, signum: int) -> float:
        self.process.send_signal(signum)
        return time.monotonic()


class Cluster:
    def __init__(self, server: FakeQoderServer, redis_url: str, tmp: Path) -> None:
        self.server = server
        self.redis_url = redis_url
        self.namespace = f"kill-{uuid.uuid4().hex[:10]}"
        self.tmp = tmp
        self.procs: dict[str, Proc] = {}

    async def start(self, name: str, role: str, *extra: str) -> Proc:
        out = self.tmp / f"{name}.jsonl"
        log = (self.tmp / f"{name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCS),
            role,
            "--base-url",
            self.server.base_url,
            "--token",
            self.server.token,
            "--redis",
            self.redis_url,
            "--namespace",
            self.namespace,
            "--out",
            str(out),
            "--lease-ttl",
            str(TTL),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("QODER_")},
        )
        log.close()
        proc = Proc(name, process, out)
        self.procs[name] = proc
        return proc

    async def worker(self, name: str) -> Proc:
        proc = await self.start(name, "worker", "--worker-id", name)
        assert proc.process.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.process.stdout.readline()
        assert line == b"serving\n", (line, self.log(name))
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def starts(self) -> list[Record]:
        return sorted(
            (r for p in self.procs.values() for r in p.records("start")), key=lambda r: r["at"]
        )

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.send_signal(signal.SIGCONT)
                    proc.process.terminate()
        for proc in self.procs.values():
            try:
                async with asyncio.timeout(10):
                    await proc.process.wait()
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()


@contextlib.asynccontextmanager
async def cluster(redis_url: str, tmp: Path) -> AsyncIterator[Cluster]:
    async with FakeQoderServer(script=turn_script, heartbeat_interval=0.2, seed=11) as server:
        faults = server.faults
        faults.drop_probability = 0.02
        faults.duplicate_on_resume = 2
        faults.reorder_on_replay = True
        faults.stall_probability = 0.005
        faults.throttle_probability = 0.02
        faults.retry_after = 0.05
        faults.fail_send_after_store = 3
        faults.empty_send_data = 3
        server.dialect.turn_ids = False  # the harder dialect: turns are found by position
        made = Cluster(server, redis_url, tmp)
        try:
            yield made
        finally:
            await made.stop_all()
            await drop_namespace(redis_url, made.namespace)


def ends_turn(r: Record) -> bool:
    return r["type"] == "session.status_idle" and r["stop"] == "end_turn"


async def test_killed_and_paused_workers_lose_nothing(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    async with cluster(redis_url, tmp_path) as c:
        server = c.server
        sessions = [str(server.add_session()["id"]) for _ in range(SESSIONS)]
        w1, w2, w3 = [await c.worker(name) for name in ("w1", "w2", "w3")]
        front = await c.start(
            "front",
            "front",
            "--sessions",
            ",".join(sessions),
            "--turns",
            str(TURNS),
            "--gate-dir",
            str(tmp_path),
        )

        def sent(turn: int) -> int:
            return sum(1 for r in front.records("sent") if r["turn"] == turn)

        def busy_since(proc: Proc, since: float, n: int) -> bool:
            return sum(1 for r in proc.records("start") if r["at"] > since) >= n

        async with RedisCoordinator.from_url(redis_url, namespace=c.namespace) as coordinator:

            async def turn_done(turn: int) -> bool:
                for sid in sessions:
                    events = server.stored_events(sid)
                    if len(server.user_messages(sid)) < turn or events[-1]["type"] != (
                        "session.status_idle"
                    ):
                        return False
                    info = await coordinator.inspect(sid)
                    if info is None or info.active:
                        return False
                return True

            async def next_turn(turn: int) -> float:
                await eventually(lambda: turn_done(turn - 1), f"turn {turn - 1} done", timeout=60)
                (tmp_path / f"go-{turn}").touch()
                await eventually(
                    lambda: sent(turn) >= SESSIONS // 2, f"half of turn {turn} sent", timeout=40
                )
                return time.monotonic()

            # kill 1, in turn 1
            await eventually(lambda: busy_since(w1, 0.0, 8), "w1 delivering", timeout=40)
            kills = [("w1", w1.signal(signal.SIGKILL))]
            await c.worker("w4")

            # kill 2, in turn 2 (the tool turn)
            mark = await next_turn(2)
            await eventually(lambda: busy_since(w2, mark, 4), "w2 delivering turn 2", timeout=40)
            kills.append(("w2", w2.signal(signal.SIGKILL)))
            await c.worker("w5")

            # pause w3 past its leases, in turn 3
            mark = await next_turn(3)
            await eventually(lambda: busy_since(w3, mark, 4), "w3 delivering turn 3", timeout=40)
            stopped_at = w3.signal(signal.SIGSTOP)
            held = [
                sid
                for sid in sessions
                if (info := await coordinator.inspect(sid)) is not None and info.holder == "w3"
            ]
            assert held, "w3 followed no session when it was stopped"

            async def taken_over() -> bool:
                for sid in held:
                    info = await coordinator.inspect(sid)
                    if info is not None and info.holder == "w3":
                        return False
                return time.monotonic() > stopped_at + TTL

            await eventually(taken_over, "w3's sessions taken over", timeout=30)
            resumed_at = w3.signal(signal.SIGCONT)

            async with asyncio.timeout(60):
                assert await front.process.wait() == 0, c.log("front")
            await eventually(lambda: turn_done(TURNS), "every turn done", timeout=60)
        finished_at = time.monotonic()
        await c.stop_all()
        starts = c.starts()
        dones = [r for p in c.procs.values() for r in p.records("done")]
        tools = [r for p in c.procs.values() for r in p.records("tool")]
        report = check(
            server, sessions, starts, dones, tools, kills, (held, stopped_at, resumed_at)
        )
    report["wall seconds"] = round(finished_at - began, 1)
    with capsys.disabled():  # the counts go to the terminal, even when the test passes
        print("\nkill test:", json.dumps(report))


def check(
    server: FakeQoderServer,
    sessions: list[str],
    starts: list[Record],
    dones: list[Record],
    tools: list[Record],
    kills: list[tuple[str, float]],
    pause: tuple[list[str], float, float],
) -> dict[str, Any]:
    held, stopped_at, resumed_at = pause
    done_keys = {(r["w"], r["s"], r["e"], r["t"]): r["at"] for r in dones}
    by_session: dict[str, list[Record]] = defaultdict(list)
    for r in starts:
        by_session[r["s"]].append(r)

    # What a kill (or the pause) can leave in flight: per session, the last event the
    # victim started (its handler running, or returned with the commit not yet made).
    # ``interrupted`` counts those whose handler had not returned.
    in_flight: Counter[tuple[str, str]] = Counter()
    interrupted = 0
    for victim, at in [*kills, ("w3", stopped_at)]:
        last: dict[str, Record] = {}
        for r in starts:
            if r["w"] == victim and r["at"] <= at:
                last[r["s"]] = r
        for r in last.values():
            in_flight[(r["s"], r["e"])] += 1
            finished = done_keys.get((r["w"], r["s"], r["e"], r["t"]))
            interrupted += finished is None or finished > at

    duplicates: Counter[tuple[str, str]] = Counter()
    stored_total = 0
    for sid in sessions:
        events = server.stored_events(sid)
        first = server.user_messages(sid)[0]["id"]
        ids = [e["id"] for e in events]
        stored = ids[ids.index(first) :]
        stored_total += len(stored)
        got = by_session[sid]
        seen: list[str] = []
        for r in got:
            if r["e"] in seen:
                assert r["r"], f"{sid}: {r['e']} delivered twice without redelivered=True"
                duplicates[(sid, r["e"])] += 1
            else:
                seen.append(r["e"])
        assert seen == stored, (
            f"{sid}: delivered {len(seen)} of {len(stored)} stored, or out of order"
        )
        tokens = [r["t"] for r in got]
        assert tokens == sorted(tokens), f"{sid}: an older token delivered after a newer one"
        assert sum(1 for e in events if e["type"] == "user.message") == TURNS

    for key, n in duplicates.items():
        assert n <= in_flight[key], f"{key} came again but was not in flight at a kill"

    # Every turn a kill interrupted finished within lease_ttl + 5 s of the kill.
    recovery: list[float] = []
    for victim, at in kills:
        for sid in sessions:
            before = [r for r in by_session[sid] if r["at"] <= at]
            if not before or before[-1]["w"] != victim or ends_turn(before[-1]):
                continue
            end = next(r for r in by_session[sid] if r["at"] > at and ends_turn(r))
            recovery.append(end["at"] - at)
    assert recovery, "no turn was in flight at a kill"
    assert max(recovery) <= TTL + 5, recovery

    # The paused worker delivers nothing of what it lost once resumed.
    lost_tokens = {
        (r["s"], r["t"])
        for r in starts
        if r["w"] == "w3" and r["at"] <= stopped_at and r["s"] in held
    }
    late = [
        r
        for r in starts
        if r["w"] == "w3"
        and r["at"] >= resumed_at
        and (r["s"], r["t"]) in lost_tokens
        and any(o["s"] == r["s"] and o["t"] > r["t"] for o in starts)
    ]
    assert late == [], late

    # Tools: at most one run per call; exactly one result per call.
    runs = Counter(r["city"] for r in tools)
    orphaned = 0
    for sid in sessions:
        events = server.stored_events(sid)
        uses = [e for e in events if e["type"] == "agent.custom_tool_use"]
        results = [e for e in events if e["type"] == "user.custom_tool_result"]
        assert len(uses) == 1, sid
        assert [r["custom_tool_use_id"] for r in results] == [uses[0]["id"]], sid
        assert runs[sid] <= 1, f"the tool of {sid} ran {runs[sid]} times"
        orphaned += results[0]["is_error"]

    return {
        "sessions": len(sessions),
        "turns": len(sessions) * TURNS,
        "stored events": stored_total,
        "deliveries": len(starts),
        "redelivered": sum(1 for r in starts if r["r"]),
        "duplicates": sum(duplicates.values()),
        "last events started by a victim (may come again)": sum(in_flight.values()),
        "of which the handler was still running": interrupted,
        "turns interrupted by kills": len(recovery),
        "max recovery s": round(max(recovery), 2),
        "paused worker: sessions lost": len(held),
        "paused worker: deliveries after resume of lost sessions": len(late),
        "tool runs": sum(runs.values()),
        "tool calls answered as orphaned": orphaned,
        "faults": dict(server.fault_counts),
    }


async def test_a_second_process_with_a_live_worker_id_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    """Two processes started with one worker_id: the second one stops with a
    ConfigurationError; its shutdown leaves the live one's record, which goes on
    delivering and is counted once."""
    async with cluster(redis_url, tmp_path) as c:
        sessions = [str(c.server.add_session()["id"]) for _ in range(4)]
        w1 = await c.worker("w1")
        async with RedisCoordinator.from_url(redis_url, namespace=c.namespace) as coordinator:

            async def members() -> list[str]:
                return [w.worker_id for w in await coordinator.workers()]

            async def only_w1() -> bool:
                return await members() == ["w1"]

            await eventually(only_w1, "w1 the only live worker", timeout=30)
            twin = await c.start("twin", "worker", "--worker-id", "w1")
            try:
                async with asyncio.timeout(40):  # it waits one lease for a dead one's record
                    code = await twin.process.wait()
            except TimeoutError:
                raise AssertionError("the twin kept running: " + c.log("twin")) from None
            assert code != 0
            assert "ConfigurationError" in c.log("twin")
            assert "worker_id 'w1' is in use by another live process" in c.log("twin")
            assert twin.records() == []  # it delivered nothing
            assert w1.process.returncode is None
            assert await members() == ["w1"]  # the twin's clean exit left w1's record
            front = await c.start(
                "front", "front", "--sessions", ",".join(sessions), "--turns", "1"
            )
            async with asyncio.timeout(60):
                await front.process.wait()
            assert front.process.returncode == 0, c.log("front")
            await eventually(
                lambda: sum(ends_turn(r) for r in w1.records("start")) >= len(sessions),
                "w1 delivered every turn",
                timeout=40,
            )
            assert (await coordinator.workers())[0].worker_id == "w1"
