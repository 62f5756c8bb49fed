"""Soak: 100 sessions x 5 turns with every fault switch on at random (seeded).

Runs in CI; skip it locally with ``pytest -m "not soak"``. It prints its counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from qoder_async import Backoff, QoderClient, ReconnectPolicy, RetryPolicy
from qoder_async.testing import FakeQoderServer, TurnContext

SESSIONS = 100
TURNS = 5
SEED = 20261128
RSS_BOUND_MIB = 64


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.soak
async def test_soak(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)

    async def script(ctx: TurnContext) -> None:
        await ctx.sleep(rng.random() * 0.02)
        await ctx.thinking("let me see")
        if rng.random() < 0.5:
            await ctx.tool("Read", {"file_path": "a.py"}, "x = 1\n" * rng.randint(1, 40))
        await ctx.message(f"answer to {ctx.text}: " + "word " * rng.randint(5, 80), chunks=3)

    started = time.monotonic()
    rss_before = rss_kib()
    counts: Counter[str] = Counter()
    async with FakeQoderServer(
        script=script, heartbeat_interval=0.05, seed=SEED, record_requests=False
    ) as server:
        f = server.faults
        f.drop_probability = 0.04
        f.duplicate_on_resume = 2
        f.stall_probability = 0.01
        f.throttle_probability = 0.03
        f.throttle_status = 503
        f.retry_after = 0.02
        f.slow_seconds = 0.001
        f.close_after_idle = True

        async def chaos() -> None:
            # the ambiguous case: the event is stored, then the answer is a 500
            while True:
                await asyncio.sleep(0.02)
                f.fail_send_after_store = 1 if rng.random() < 0.5 else 0
                f.throttle_status = rng.choice([429, 503])

        chaos_task = asyncio.create_task(chaos())
        retry = RetryPolicy(max_retries=8, backoff=Backoff(initial=0.01, maximum=0.2))
        reconnect = ReconnectPolicy(backoff=Backoff(initial=0.01, maximum=0.1), max_attempts=50)
        sids = [server.add_session()["id"] for _ in range(SESSIONS)]
        try:
            async with QoderClient(
                token=server.token, base_url=server.base_url, retry=retry, reconnect=reconnect
            ) as client:

                async def run(sid: str) -> list[tuple[str, str, list[str]]]:
                    handle = client.session(sid, stall_timeout=0.4, max_stalls=50)
                    out = []
                    for i in range(TURNS):
                        text = f"{sid} #{i}"
                        turn = await handle.send(text)
                        got = [ev.id or "" async for ev in turn]
                        out.append((text, turn.turn_id or "", got))
                    return out

                results = await asyncio.gather(*(run(s) for s in sids))
        finally:
            chaos_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos_task
        await asyncio.sleep(0.05)
        open_streams = server.open_streams
        faults = dict(server.fault_counts)

        for sid, turns in zip(sids, results, strict=True):
            stored_texts = [m["content"][0]["text"] for m in server.user_messages(sid)]
            counts["sends"] += len(turns)
            counts["stored_user_messages"] += len(stored_texts)
            counts["double_stored"] += len(stored_texts) - len(set(stored_texts))
            for text, turn_id, got in turns:
                record = [e["id"] for e in server.turn_events(sid, turn_id)][1:]
                counts["events"] += len(got)
                counts["lost"] += len(set(record) - set(got))
                counts["duplicated"] += len(got) - len(set(got))
                counts["foreign"] += len(set(got) - set(record))
                kept = [e for e in got if e in set(record)]
                counts["reordered"] += int(
                    list(dict.fromkeys(kept)) != [e for e in record if e in kept]
                )
                counts["stored_for_send"] += stored_texts.count(text)
    await asyncio.sleep(0.05)
    leaked_tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    rss_growth_mib = (rss_kib() - rss_before) / 1024
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nsoak: {SESSIONS} sessions x {TURNS} turns in {elapsed:.1f}s; "
            f"events={counts['events']} lost={counts['lost']} duplicated={counts['duplicated']} "
            f"reordered={counts['reordered']} foreign={counts['foreign']} "
            f"sends={counts['sends']} stored_user_messages={counts['stored_user_messages']} "
            f"leaked_connections={open_streams} leaked_tasks={len(leaked_tasks)} "
            f"rss_growth={rss_growth_mib:.1f}MiB (bound {RSS_BOUND_MIB}) faults={faults}"
        )
    assert counts["lost"] == 0
    assert counts["duplicated"] == 0
    assert counts["reordered"] == 0
    assert counts["foreign"] == 0
    assert counts["sends"] == SESSIONS * TURNS
    assert counts["stored_user_messages"] == SESSIONS * TURNS
    assert counts["stored_for_send"] == SESSIONS * TURNS
    assert counts["double_stored"] == 0
    assert open_streams == 0
    assert leaked_tasks == []
    assert rss_growth_mib < RSS_BOUND_MIB
    for fault in (
        "drop_probability",
        "duplicate_on_resume",
        "stall_probability",
        "throttle_probability",
        "fail_send_after_store",
        "close_after_idle",
    ):
        assert faults.get(fault, 0) > 0, f"{fault} never fired"
