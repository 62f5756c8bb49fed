"""``python -m benchmarks``: run the scenarios, print one ratio table per scenario.

See benchmarks/README.md. Quick smoke run: ``--quick`` (< 1 min). Full run: no
flag (about 6 minutes on a 2-core VM; 2 rounds of the subprocess scenarios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .contenders import REGISTRY
from .scenarios import ROOT, SCENARIOS, Harness, Plan, Scenario, ServerPool, SResult
from .server import raise_nofile

PACKAGES = (
    "aiohttp",
    "httpx",
    "httpcore",
    "httpx-sse",
    "httpx-aiohttp",
    "qca-sdk",
    "pydantic",
    "orjson",
    "anyio",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _qoder_version() -> str:
    v = _version("qoder-async")
    if v != "-":
        return v
    src = ROOT / "qoder_async" / "_core/version.py"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", src.read_text()) if src.exists() else None
    return f"{m.group(1)} (source tree)" if m else "-"


def _failed_import_us() -> float | None:
    """Cost of one failing ``import sniffio`` (httpcore repeats it per lock setup)."""
    if importlib.util.find_spec("sniffio") is not None:
        return None
    t0 = time.perf_counter()
    for _ in range(200):
        with contextlib.suppress(ImportError):
            __import__("sniffio")  # what httpcore's `import sniffio` does
    return (time.perf_counter() - t0) / 200 * 1e6


def header(plan: Plan) -> list[str]:
    cpus = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    sniff = _failed_import_us()
    sniff_txt = (
        f"installed ({_version('sniffio')})"
        if sniff is None
        else f"NOT installed - httpcore retries `import sniffio` on every lock setup, "
        f"{sniff:.0f} us per failed import here"
    )
    pkgs = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        "qoder_async benchmarks  " + time.strftime("%Y-%m-%d %H:%M:%S"),
        f"machine : {platform.platform()}, {cpus} CPUs ({affinity} usable), "
        f"loadavg {os.getloadavg()[0]:.2f}",
        f"python  : {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        f"packages: {pkgs}, qoder-async {_qoder_version()}",
        f"sniffio : {sniff_txt}",
        f"limits  : RLIMIT_NOFILE {soft}/{hard}; event loop asyncio (no uvloop)",
        f"mode    : {'quick' if plan.quick else 'full'}; {plan.rounds} measured rounds "
        f"(+1 warm-up) in-process, {plan.sub_rounds} per subprocess scenario; "
        f"server impl {plan.server_impl}",
    ]


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def render(scn: Scenario, res: SResult) -> str:
    better = "higher" if scn.higher_is_better else "lower"
    out = [
        "",
        f"== {scn.name}: {scn.title}",
        f"   {scn.label}: median over rounds, {better} is better; spread = min..max over "
        f"rounds; 'x REF' = median / REF's median (ratio {'>' if scn.higher_is_better else '<'}"
        " 1 beats REF)",
    ]
    heads = ["contender", *[lab for _, lab in scn.param_cols], scn.label, "spread"]
    heads += [lab for _, lab, _ in scn.extra] + [f"x {r}" for r in scn.refs]
    heads += [lab for _, _, lab in scn.extra_ratios]
    rows: list[list[str]] = []
    notes: list[str] = []
    ref_med = {
        r: res.contenders[r].median(scn.primary)
        for r in scn.refs
        if r in res.contenders and res.contenders[r].status == "ok"
    }
    for name, cr in res.contenders.items():
        if cr.status != "ok" or not cr.rounds:
            label = cr.status.upper() if cr.status != "ok" else "NO DATA"
            rows.append([name, f"{label}: {cr.reason}"])
            continue
        med = cr.median(scn.primary)
        sp = cr.spread(scn.primary)
        row = [name]
        for key, _ in scn.param_cols:
            vals = sorted({r[key] for r in cr.rounds if r.get(key) is not None})
            row.append("/".join(_fmt(v, ",") for v in vals) or "-")
        row.append(_fmt(med, scn.fmt))
        row.append(f"{_fmt(sp[0], scn.fmt)}..{_fmt(sp[1], scn.fmt)}" if sp else "-")
        for key, _, spec in scn.extra:
            row.append(_fmt(cr.median(key), spec))
        for r in scn.refs:
            ref = ref_med.get(r)
            if med is not None and ref is not None and ref > 0 and med == med and ref == ref:
                row.append(f"{med / ref:.3g}")
            else:
                row.append("-")
        for key, r, _ in scn.extra_ratios:
            ref_cr = res.contenders.get(r)
            ref = ref_cr.median(key) if ref_cr is not None and ref_cr.status == "ok" else None
            val = cr.median(key)
            row.append(f"{val / ref:.3g}" if val is not None and ref else "-")
        rows.append(row)
        if any(r.get("complete") is False for r in cr.rounds):
            notes.append(f"{name}: did not finish within its time budget (metrics are partial)")
    widths = [len(h) for h in heads]
    for row in rows:
        if len(row) == len(heads):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out.append(
        "   "
        + "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(heads, widths, strict=True))
        )
    )
    for row in rows:
        if len(row) != len(heads):
            out.append("   " + row[0].ljust(widths[0]) + "  " + row[1])
        else:
            out.append(
                "   "
                + "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    for note in [*res.notes, *notes]:
        out.append(f"   note: {note}")
    out.append(f"   ({res.elapsed_s:.1f} s)")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Ratio benchmarks for qoder_async vs raw aiohttp, httpx(+sse) and qca.",
    )
    p.add_argument("--quick", action="store_true", help="sub-minute smoke run")
    p.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"repeatable; a prefix selects a group (e.g. 'throughput'). {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--contender", action="append", metavar="NAME", help=f"repeatable; {', '.join(REGISTRY)}"
    )
    p.add_argument(
        "--rounds", type=int, help="measured rounds of in-process scenarios (full 7, quick 2)"
    )
    p.add_argument(
        "--sub-rounds",
        type=int,
        help="rounds of idle-rss/latency-1000, one fresh process each (full 2, quick 1)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write raw results as JSON")
    p.add_argument("--server-impl", choices=("proto", "aiohttp"), default="proto")
    p.add_argument(
        "--latency-servers",
        type=int,
        default=1,
        metavar="K",
        help="server processes (SO_REUSEPORT) for latency-1000 (default 1)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help='draw the results as PNG charts into DIR (needs pip install -e ".[bench]")',
    )
    p.add_argument(
        "--from-json",
        type=Path,
        action="append",
        metavar="PATH",
        help="with --plot: draw saved --json results (repeatable, merged) instead of running",
    )
    p.add_argument("--list", action="store_true", help="list scenarios and contenders")
    return p.parse_args(argv)


def select(args: argparse.Namespace) -> list[tuple[Scenario, list[str]]]:
    names = list(SCENARIOS)
    if args.scenario:
        chosen = [n for n in names if any(n == s or n.startswith(s) for s in args.scenario)]
        unknown = [s for s in args.scenario if not any(n.startswith(s) for n in names)]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {unknown}; known: {names}")
        names = chosen
    if args.contender:
        unknown = [c for c in args.contender if c not in REGISTRY]
        if unknown:
            raise SystemExit(f"unknown contender(s): {unknown}; known: {list(REGISTRY)}")
    out = []
    for n in names:
        scn = SCENARIOS[n]
        cs = [c for c in scn.contenders if not args.contender or c in args.contender]
        if cs:
            out.append((scn, cs))
    return out


async def amain(args: argparse.Namespace) -> int:
    raise_nofile()
    plan = Plan.make(args.quick)
    plan.server_impl = args.server_impl
    plan.lat_servers = args.latency_servers
    if args.rounds:
        plan.rounds = args.rounds
    if args.sub_rounds:
        plan.sub_rounds = args.sub_rounds
    todo = select(args)
    for line in header(plan):
        print(line)
    server = ServerPool(plan.server_impl)
    await server.start()
    print(f"server  : {plan.server_impl} pid {server.procs[0].pid} on {server.root}", flush=True)
    h = Harness(plan, server)
    results: dict[str, Any] = {}
    failed = []
    t_all = time.perf_counter()
    try:
        for scn, cs in todo:
            assert scn.run is not None
            t0 = time.perf_counter()
            res = await scn.run(h, scn, cs)
            res.elapsed_s = time.perf_counter() - t0
            print(render(scn, res), flush=True)
            results[scn.name] = dataclasses.asdict(res)
            failed += [
                f"{scn.name}/{c.name}" for c in res.contenders.values() if c.status == "failed"
            ]
    finally:
        await server.stop()
    total = time.perf_counter() - t_all
    print(f"\ntotal {total:.1f} s (loadavg now {os.getloadavg()[0]:.2f})")
    if args.json:
        meta = {"header": header(plan), "plan": dataclasses.asdict(plan), "total_s": total}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "scenarios": results}, indent=1))
        print(f"raw results: {args.json}")
    if args.plot:
        from .plot import plot

        for path in plot(results, args.plot):
            print(f"chart: {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for scn in SCENARIOS.values():
            print(f"{scn.name:16} {scn.title}\n{'':16} contenders: {', '.join(scn.contenders)}")
        print()
        for c in REGISTRY.values():
            print(f"{c.name:20} {c.summary}")
        return 0
    if args.from_json:
        if not args.plot:
            raise SystemExit("--from-json draws saved results: give --plot DIR too")
        from .plot import load, plot

        for path in plot(load(args.from_json), args.plot):
            print(f"chart: {path}")
        return 0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
