"""Compare asyncio, uvloop and ferroloop on core scheduling benchmarks.

Every (loop, benchmark) measurement runs ``worker.py`` in a fresh subprocess.
Timing runs are interleaved round-robin across loops and repeated, and the
median is reported, to resist a noisy machine.  Instructions per op come from
two callgrind runs with different op counts whose difference cancels
interpreter start-up and imports.

    python3 benchmarks/core.py                   # full run, all three loops
    python3 benchmarks/core.py --quick           # smoke run
    python3 benchmarks/core.py --loops asyncio,uvloop --no-callgrind
    python3 benchmarks/core.py --json results.json

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().with_name("worker.py")
ALL_LOOPS = ("asyncio", "uvloop", "ferroloop", "ferroloop-watchdog", "ferroloop-watchdog-notrack")
# ferroloop-watchdog (ferroloop with its stall watchdog on, tracking task
# creation sites as it does by default) and ferroloop-watchdog-notrack (the
# sampling thread alone) are opt-in: `--loops ferroloop,ferroloop-watchdog,
# ferroloop-watchdog-notrack` measures the watchdog's overhead.
DEFAULT_LOOPS = ("asyncio", "uvloop", "ferroloop")
WATCHED = ("ferroloop-watchdog", "ferroloop-watchdog-notrack")
ALL_BENCHMARKS = ("call_soon", "timers", "tasks")
BASELINE = "uvloop"
CANDIDATE = "ferroloop"

# The project's goal: ferroloop instructions/op at most this fraction of uvloop's.
IR_TARGETS = {"call_soon": 0.60, "timers": 0.60, "tasks": 0.85}

# A fixed hash seed makes runs of the same worker execute the same
# instructions (dict/set layouts no longer vary), so callgrind counts repeat
# to within a few hundred instructions and the N2-N1 difference is clean.
WORKER_ENV = {**os.environ, "PYTHONHASHSEED": "0"}

# A loop that loses a callback would wait forever; fail instead.  Generous,
# because callgrind slows the worker down ~50x.
WORKER_TIMEOUT_S = 900


@dataclass(frozen=True)
class Sizes:
    """Op counts for one benchmark."""

    timing: int  # ops per timed run
    callgrind: tuple[int, int]  # (N1, N2) for the instructions/op difference


# Chosen so a timed run takes ~0.2-2 s and each callgrind run a few seconds
# (callgrind executes ~100M instructions/s; start-up alone is ~300M).
FULL_SIZES = {
    "call_soon": Sizes(timing=1_000_000, callgrind=(20_000, 40_000)),
    "timers": Sizes(timing=500_000, callgrind=(10_000, 20_000)),
    "tasks": Sizes(timing=200_000, callgrind=(10_000, 20_000)),
}
QUICK_SIZES = {
    "call_soon": Sizes(timing=50_000, callgrind=(5_000, 10_000)),
    "timers": Sizes(timing=20_000, callgrind=(2_000, 4_000)),
    "tasks": Sizes(timing=20_000, callgrind=(2_000, 4_000)),
}


class WorkerFailed(RuntimeError):
    """A worker exited non-zero: its loop is broken or misconfigured."""


@dataclass
class Measurement:
    """Everything measured for one (loop, benchmark) pair."""

    loop: str
    benchmark: str
    n: int
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    ir: dict[int, int] = field(default_factory=dict)  # op count -> total Ir

    @property
    def ops_per_s(self) -> float:
        return self.n / statistics.median(self.wall_s)

    @property
    def wall_spread(self) -> float:
        """(max - min) / median of the wall times: how noisy the repetitions were."""
        return (max(self.wall_s) - min(self.wall_s)) / statistics.median(self.wall_s)

    @property
    def cpu_us_per_op(self) -> float:
        return statistics.median(self.cpu_s) / self.n * 1e6

    @property
    def ir_per_op(self) -> float | None:
        if len(self.ir) != 2:
            return None
        (n1, ir1), (n2, ir2) = sorted(self.ir.items())
        return (ir2 - ir1) / (n2 - n1)

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["ir"] = {str(n): ir for n, ir in sorted(self.ir.items())}
        derived = {"ops_per_s": self.ops_per_s, "cpu_us_per_op": self.cpu_us_per_op}
        return {**raw, **derived, "ir_per_op": self.ir_per_op}


Results = dict[tuple[str, str], Measurement]


# --- running workers ------------------------------------------------------


def run_worker(loop: str, benchmark: str, n: int, prefix: Sequence[str] = ()) -> str:
    """Run one worker process; return its stdout, or raise with its stderr."""
    # sys.executable, not "python3": a pyenv shim is a shell script, and
    # valgrind would measure the shell instead of following its exec.
    command = [*prefix, sys.executable, str(WORKER), loop, benchmark, str(n)]
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=WORKER_ENV,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise WorkerFailed(
            f"{loop}/{benchmark} (n={n}) still running after {WORKER_TIMEOUT_S} s"
        ) from None
    if proc.returncode != 0:
        raise WorkerFailed(
            f"{loop}/{benchmark} (n={n}) failed with exit code {proc.returncode}:\n"
            + proc.stderr[-3000:]
        )
    return proc.stdout


def timed_run(loop: str, benchmark: str, n: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run_worker(loop, benchmark, n).splitlines()[-1])
    return result


def callgrind_ir(loop: str, benchmark: str, n: int) -> int:
    """Total instructions executed by one worker run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="ferroloop-cg-") as tmp:
        out_file = Path(tmp) / "callgrind.out"
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
        run_worker(loop, benchmark, n, prefix)
        return parse_callgrind_total(out_file.read_text())


def parse_callgrind_total(text: str) -> int:
    """The event total from a callgrind out file ("totals:" or "summary:")."""
    for key in ("totals:", "summary:"):
        for line in text.splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    raise ValueError("no totals:/summary: line in callgrind output")


def probe_loop(loop: str) -> str | None:
    """Return the loop package's version if it can create a loop, else None."""
    package = loop.split("-")[0]  # ferroloop-watchdog is ferroloop
    code = (
        f"import importlib.metadata, {package}\n"
        f"{package}.new_event_loop().close()\n"
        f"print('stdlib' if {package!r} == 'asyncio' else getattr({package}, '__version__', None) "
        f"or importlib.metadata.version({package!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        log(f"skipping {loop}: cannot create its loop ({reason})")
        return None
    return proc.stdout.strip()


# --- measurement plans ----------------------------------------------------


def measure_timings(
    results: Results, loops: Sequence[str], benchmarks: Sequence[str], reps: int
) -> None:
    # Repetition-major, loop-minor order: a burst of noise from another process
    # hits every loop about equally instead of one loop's whole sample.
    for rep in range(1, reps + 1):
        for benchmark in benchmarks:
            for loop in loops:
                m = results[loop, benchmark]
                run = timed_run(loop, benchmark, m.n)
                m.wall_s.append(run["wall_s"])
                m.cpu_s.append(run["cpu_s"])
                log(
                    f"[time {rep}/{reps}] {benchmark:9} {loop:9} "
                    f"{m.n / run['wall_s']:>12,.0f} ops/s  ({run['loop_type']})"
                )


def measure_callgrind(results: Results, sizes: dict[str, Sizes], jobs: int) -> None:
    # Instruction counts do not depend on machine load, so unlike the timing
    # runs these may run in parallel.
    work = [(m, n) for m in results.values() for n in sizes[m.benchmark].callgrind]

    def run_one(item: tuple[Measurement, int]) -> None:
        m, n = item
        m.ir[n] = callgrind_ir(m.loop, m.benchmark, n)
        log(f"[callgrind] {m.benchmark:9} {m.loop:9} n={n:<7} Ir={m.ir[n]:,}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_one, work))  # list() re-raises worker failures


# --- reporting ------------------------------------------------------------


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 2
) -> str:
    """A markdown table; the first ``left`` columns are text, the rest numbers."""
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    align = [
        ":" + "-" * (w - 1) if i < left else "-" * (w - 1) + ":"
        for i, w in enumerate(widths)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([line(headers), line(align), *(line(r) for r in rows)])


def vs_baseline(
    results: Results, m: Measurement, metric: Callable[[Measurement], float | None]
) -> str:
    """``metric`` of ``m`` as a multiple of the baseline loop's, e.g. "0.53×"."""
    base = results.get((BASELINE, m.benchmark))
    value, base_value = metric(m), metric(base) if base else None
    if value is None or not base_value:
        return "n/a"
    return f"{value / base_value:.2f}×"


def results_table(
    results: Results, loops: Sequence[str], benchmarks: Sequence[str]
) -> str:
    headers = ["benchmark", "loop", "ops/s", "vs uvloop", "spread"]
    headers += ["CPU µs/op", "vs uvloop", "instr/op", "vs uvloop"]
    rows = [
        result_row(results, results[loop, benchmark])
        for benchmark in benchmarks
        for loop in loops
    ]
    return markdown_table(headers, rows)


def result_row(results: Results, m: Measurement) -> list[str]:
    ir = m.ir_per_op
    return [
        m.benchmark,
        m.loop,
        f"{m.ops_per_s:,.0f}",
        vs_baseline(results, m, lambda x: x.ops_per_s),
        f"±{m.wall_spread / 2:.0%}",
        f"{m.cpu_us_per_op:.3f}",
        vs_baseline(results, m, lambda x: x.cpu_us_per_op),
        "n/a" if ir is None else f"{ir:,.0f}",
        vs_baseline(results, m, lambda x: x.ir_per_op),
    ]


def targets_table(results: Results, benchmarks: Sequence[str]) -> str | None:
    """ferroloop vs uvloop instructions/op against the project's targets."""
    rows = [row for b in benchmarks if (row := target_row(results, b)) is not None]
    if not rows:
        return None
    headers = ["benchmark", "ferroloop instr/op", "uvloop instr/op", "ratio"]
    headers += ["target", "result"]
    return markdown_table(headers, rows, left=1)


def target_row(results: Results, benchmark: str) -> list[str] | None:
    candidate = results.get((CANDIDATE, benchmark))
    baseline = results.get((BASELINE, benchmark))
    cand_ir = candidate.ir_per_op if candidate else None
    base_ir = baseline.ir_per_op if baseline else None
    if cand_ir is None or not base_ir:
        return None
    achieved, target = cand_ir / base_ir, IR_TARGETS[benchmark]
    return [
        benchmark,
        f"{cand_ir:,.0f}",
        f"{base_ir:,.0f}",
        f"{achieved:.2f}×",
        f"≤ {target:.2f}×",
        "**PASS**" if achieved <= target else "**FAIL**",
    ]


def watchdog_table(results: Results, benchmarks: Sequence[str]) -> str | None:
    """The stall watchdog's cost: ferroloop with it on, relative to off."""
    rows = []
    for variant in WATCHED:
        for benchmark in benchmarks:
            on, off = results.get((variant, benchmark)), results.get((CANDIDATE, benchmark))
            if on is None or off is None:
                continue
            ir = "n/a"
            if on.ir_per_op is not None and off.ir_per_op:
                ir = f"{on.ir_per_op / off.ir_per_op:.3f}×"
            rows.append([variant, benchmark, f"{on.cpu_us_per_op / off.cpu_us_per_op:.3f}×", ir])
    if not rows:
        return None
    return markdown_table(["loop", "benchmark", "CPU µs/op, on/off", "instr/op, on/off"], rows, left=2)


def environment_line(
    versions: dict[str, str], reps: int, sizes: dict[str, Sizes], callgrind: bool
) -> str:
    loops = ", ".join(f"{name} {v}" for name, v in versions.items())
    ns = ", ".join(f"{b} N={s.timing:,}" for b, s in sizes.items())
    text = (
        f"CPython {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {loops}. Median of {reps} interleaved runs; {ns}."
    )
    if callgrind:
        cg = ", ".join(
            f"{b} {s.callgrind[0]:,}/{s.callgrind[1]:,}" for b, s in sizes.items()
        )
        text += f" instr/op = ΔIr/ΔN between callgrind runs of N1/N2 ops ({cg})."
    return text


def json_report(results: Results, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "versions": versions,
        "targets": IR_TARGETS,
        "results": [m.to_json() for m in results.values()],
    }


# --- command line ---------------------------------------------------------


def log(message: str) -> None:
    # Progress goes to stderr so stdout is just the pasteable report.
    print(message, file=sys.stderr, flush=True)


def csv_choice(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type for a comma-separated subset of ``allowed``."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(items) - set(allowed))
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--loops",
        type=csv_choice(ALL_LOOPS),
        default=list(DEFAULT_LOOPS),
        help="comma-separated loops (default: asyncio,uvloop,ferroloop; add "
        "ferroloop-watchdog(-notrack) for the watchdog's overhead; unavailable ones are skipped)",
    )
    parser.add_argument(
        "--benchmarks",
        type=csv_choice(ALL_BENCHMARKS),
        default=list(ALL_BENCHMARKS),
        help="comma-separated benchmarks (default: all)",
    )
    parser.add_argument(
        "--reps", type=int, help="timed repetitions per pair (default: 5, quick: 1)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small op counts, one repetition: a smoke run",
    )
    parser.add_argument(
        "--no-callgrind",
        action="store_true",
        help="skip the instructions/op measurement",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel callgrind runs (default: 2)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write all raw numbers here"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = {b: (QUICK_SIZES if args.quick else FULL_SIZES)[b] for b in args.benchmarks}
    reps = args.reps or (1 if args.quick else 5)
    if reps < 1:
        log("--reps must be at least 1")
        return 2
    use_callgrind = not args.no_callgrind
    if use_callgrind and shutil.which("valgrind") is None:
        log("valgrind not found: skipping instructions/op")
        use_callgrind = False

    versions = {loop: v for loop in args.loops if (v := probe_loop(loop)) is not None}
    loops = list(versions)
    if not loops:
        log("no loop available")
        return 1
    results: Results = {
        (loop, b): Measurement(loop, b, sizes[b].timing)
        for loop in loops
        for b in sizes
    }
    try:
        measure_timings(results, loops, args.benchmarks, reps)
        if use_callgrind:
            measure_callgrind(results, sizes, args.jobs)
    except WorkerFailed as error:
        log(f"\nBENCHMARK FAILED: {error}")
        return 1

    print(environment_line(versions, reps, sizes, use_callgrind))
    print()
    print(results_table(results, loops, args.benchmarks))
    targets = targets_table(results, args.benchmarks)
    if targets:
        print()
        print("Targets: ferroloop instructions/op relative to uvloop")
        print()
        print(targets)
    watchdog = watchdog_table(results, args.benchmarks)
    if watchdog:
        print()
        print(f"Stall watchdog overhead (against {CANDIDATE}, same run)")
        print()
        print(watchdog)
    if args.json:
        args.json.write_text(
            json.dumps(json_report(results, versions), indent=2) + "\n"
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
