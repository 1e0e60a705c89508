"""A small driver for one-operation benchmarks (benchmarks/pipes.py,
benchmarks/subprocess_spawn.py): each (loop, N) run is a fresh process that
runs the operation N times on one loop and prints its wall and CPU time.

Timings: runs interleaved across loops, repeated, medians reported.
Instructions per op: two callgrind runs with different N, subtracted, so
interpreter start-up and imports cancel. Only the measured process counts
(callgrind does not follow children unless --trace-children=yes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import markdown_table, parse_callgrind_total  # noqa: E402
from worker import new_loop  # noqa: E402  # the loop asked for, checked

LOOPS = ("asyncio", "uvloop", "ferroloop")
ENV = {**os.environ, "PYTHONHASHSEED": "0"}

# An operation: set up once on the running loop, then one call per op.
Setup = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


def worker(loop_name: str, n: int, setup: Setup, warmup: int) -> None:
    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)

    async def main() -> tuple[float, float]:
        op = await setup()
        for _ in range(warmup):
            await op()
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(n):
            await op()
        cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        return wall1 - wall0, cpu

    wall, cpu = loop.run_until_complete(main())
    loop.close()
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "n": n}))


def run(script: Path, loop: str, n: int, prefix: Sequence[str] = ()) -> dict[str, Any]:
    command = [*prefix, sys.executable, str(script), "--worker", loop, str(n)]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{loop} n={n} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def callgrind(script: Path, loop: str, n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ferroloop-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        run(script, loop, n, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        return parse_callgrind_total(out.read_text())


def main(
    script: Path, title: str, setup: Setup, *, n: int, cg_n: tuple[int, int], warmup: int, argv: Sequence[str] | None = None
) -> int:
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--worker", nargs=2, metavar=("LOOP", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-n", type=int, default=n, help="ops per timing run")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), setup, warmup)
        return 0
    loops = args.loops.split(",")
    timings: dict[str, list[dict[str, Any]]] = {loop: [] for loop in loops}
    for _ in range(args.reps):
        for loop in loops:
            timings[loop].append(run(script, loop, args.n))
    ir: dict[str, float] = {}
    if not args.no_callgrind:
        for loop in loops:
            small, large = (callgrind(script, loop, count) for count in cg_n)
            ir[loop] = (large - small) / (cg_n[1] - cg_n[0])
    rows = []
    base_ir = ir.get("uvloop")
    base_cpu = None
    report: dict[str, Any] = {}
    for loop in loops:
        wall = statistics.median(t["wall_s"] for t in timings[loop]) / args.n * 1e6
        cpu = statistics.median(t["cpu_s"] for t in timings[loop]) / args.n * 1e6
        if loop == "uvloop":
            base_cpu = cpu
        report[loop] = {"wall_us": wall, "cpu_us": cpu, "ir": ir.get(loop)}
    base_cpu = report.get("uvloop", {}).get("cpu_us")
    for loop in loops:
        r = report[loop]
        rows.append(
            [
                loop,
                f"{r['wall_us']:.1f}",
                f"{r['cpu_us']:.1f}",
                f"{r['cpu_us'] / base_cpu:.2f}×" if base_cpu else "n/a",
                f"{r['ir'] / 1000:,.0f}k" if r["ir"] is not None else "n/a",
                f"{r['ir'] / base_ir:.2f}×" if base_ir and r["ir"] is not None else "n/a",
            ]
        )
    print(f"\n{title}  (python {platform.python_version()}, {args.reps} reps × {args.n} ops; callgrind N={cg_n})\n")
    print(markdown_table(["loop", "wall µs/op", "CPU µs/op", "vs uvloop", "instructions/op", "vs uvloop"], rows, left=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
