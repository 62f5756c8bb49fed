"""Soak: 100 sessions x 5 turns with every fault switch on at random (seeded).

Runs four times in CI: with ``turn_id`` on the wire and without (the
position-based path production may need), each

* with the **default client settings** (retries, reconnects, stall rules, all
  of them): stalled and silent connections are then ended by the server after
  0.5 s (``Faults.stuck_for``, a gateway's timeout), since the client's own
  stall timeout is 120 s by default;
* and with a **1 s stall timeout**, every other setting default: stalled and
  silent connections last until the client gives up on them itself.

Skip it locally with ``pytest -m "not soak"``. It prints its counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from qoder_async import QoderClient, QoderError
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
@pytest.mark.timeout(600)
@pytest.mark.parametrize("turn_ids", [True, False], ids=["turn-ids", "no-turn-ids"])
@pytest.mark.parametrize("defaults", [True, False], ids=["client-defaults", "stall-timeout-1s"])
async def test_soak(capsys: pytest.CaptureFixture[str], turn_ids: bool, defaults: bool) -> None:
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
        server.dialect.turn_ids = turn_ids
        f = server.faults
        f.drop_probability = 0.04
        f.duplicate_on_resume = 3
        f.reorder_on_replay = True
        f.stall_probability = 0.01
        f.throttle_probability = 0.03
        f.throttle_status = 503
        f.retry_after = 0.02
        f.slow_seconds = 0.001
        f.close_after_idle = True
        f.stuck_for = 0.5 if defaults else None
        options = {} if defaults else {"stall_timeout": 1.0}

        async def chaos() -> None:
            # Faults that come and go: the ambiguous stored-then-500 send, answers
            # without created events, a server that forgets the cursor, silent streams.
            while True:
                await asyncio.sleep(0.02)
                f.fail_send_after_store = 1 if rng.random() < 0.5 else 0
                f.empty_send_data = 1 if rng.random() < 0.2 else 0
                f.throttle_status = rng.choice([429, 503, 529])
                f.ignore_last_event_id = rng.random() < 0.2
                f.silent_stream = rng.random() < 0.05

        chaos_task = asyncio.create_task(chaos())
        sids = [server.add_session()["id"] for _ in range(SESSIONS)]
        try:
            async with QoderClient(token=server.token, base_url=server.base_url) as client:

                async def run(sid: str) -> list[tuple[str, list[str] | None]]:
                    handle = client.session(sid, **options)
                    out: list[tuple[str, list[str] | None]] = []
                    for i in range(TURNS):
                        text = f"{sid} #{i}"
                        try:
                            turn = await handle.send(text)
                            got = [ev.id or "" async for ev in turn]
                        except QoderError as exc:
                            counts[f"failed:{type(exc).__name__}"] += 1
                            out.append((text, None))
                            continue
                        out.append((text, got))
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
            stored = {m["content"][0]["text"]: m for m in server.user_messages(sid)}
            texts = [m["content"][0]["text"] for m in server.user_messages(sid)]
            counts["sends"] += len(turns)
            counts["stored_user_messages"] += len(texts)
            counts["duplicate_sends"] += len(texts) - len(set(texts))
            for text, got in turns:
                if got is None:
                    counts["failed_turns"] += 1
                    continue
                message = stored.get(text)
                if message is None:
                    counts["lost_sends"] += 1
                    continue
                # the turn's stored events after its own message (the stream starts there)
                record = [e["id"] for e in server.turn_events(sid, message["turn_id"])][1:]
                counts["events"] += len(got)
                counts["lost"] += len(set(record) - set(got))
                counts["duplicated"] += len(got) - len(set(got))
                counts["foreign"] += len(set(got) - set(record))
                kept = [e for e in got if e in set(record)]
                counts["reordered"] += int(kept != [e for e in record if e in set(kept)])
    await asyncio.sleep(0.05)
    leaked_tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    rss_growth_mib = (rss_kib() - rss_before) / 1024
    elapsed = time.monotonic() - started
    failures = {k: v for k, v in counts.items() if k.startswith("failed:")}
    with capsys.disabled():
        print(
            f"\nsoak ({'with' if turn_ids else 'without'} turn_id, "
            f"{'client defaults' if defaults else 'stall_timeout=1.0'}): {SESSIONS} sessions x "
            f"{TURNS} turns in {elapsed:.1f}s; events={counts['events']} lost={counts['lost']} "
            f"duplicated={counts['duplicated']} reordered={counts['reordered']} "
            f"foreign={counts['foreign']} failed_turns={counts['failed_turns']} {failures} "
            f"sends={counts['sends']} stored_user_messages={counts['stored_user_messages']} "
            f"duplicate_sends={counts['duplicate_sends']} lost_sends={counts['lost_sends']} "
            f"leaked_connections={open_streams} leaked_tasks={len(leaked_tasks)} "
            f"rss_growth={rss_growth_mib:.1f}MiB (bound {RSS_BOUND_MIB}) faults={faults}"
        )
    assert counts["failed_turns"] == 0, failures
    assert counts["lost"] == 0
    assert counts["duplicated"] == 0
    assert counts["reordered"] == 0
    assert counts["foreign"] == 0
    assert counts["sends"] == SESSIONS * TURNS
    assert counts["stored_user_messages"] == SESSIONS * TURNS
    assert counts["duplicate_sends"] == 0
    assert counts["lost_sends"] == 0
    assert open_streams == 0
    assert leaked_tasks == []
    assert rss_growth_mib < RSS_BOUND_MIB
    for fault in (
        "drop_probability",
        "duplicate_on_resume",
        "reorder_on_replay",
        "stall_probability",
        "throttle_probability",
        "fail_send_after_store",
        "empty_send_data",
        "close_after_idle",
        "ignore_last_event_id",
        "silent_stream",
        *(["stuck_for"] if defaults else []),
    ):
        assert faults.get(fault, 0) > 0, f"{fault} never fired"
