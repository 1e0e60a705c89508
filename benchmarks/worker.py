"""Run one (loop, benchmark) pair and print its measurements as one JSON line.

This file is started as a fresh subprocess by ``core.py`` (never imported by
it), either directly or under ``valgrind --tool=callgrind``.  It deliberately
imports nothing beyond the stdlib and the one event-loop package it measures,
so that start-up cost is small and identical between the two callgrind runs
whose instruction counts are subtracted.

Usage: python3 worker.py LOOP BENCHMARK N
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable

# Timers and tasks run in batches of this size.  A fixed batch keeps the timer
# heap / ready queue the same size whatever N is, so the cost per op does not
# drift with N (the callgrind N2-N1 difference relies on cost being linear).
BATCH = 10_000

# type(loop).__module__ must start with this, so that a misconfigured run
# cannot silently measure asyncio's loop under another loop's name.
EXPECTED_MODULE = {
    "asyncio": "asyncio.",
    "uvloop": "uvloop",
    "ferroloop": "ferroloop",
    "ferroloop-watchdog": "ferroloop",
    "ferroloop-watchdog-notrack": "ferroloop",
}

# The stall watchdog's threshold for the "ferroloop-watchdog" loop: no
# benchmark callback comes near it, so this measures the cost of watching.
WATCHDOG_THRESHOLD_S = 0.1


# Each benchmark returns a check of its result, run after the clock stops.
Verify = Callable[[], None]


class BenchmarkError(AssertionError):
    """The loop produced a wrong result, so its timing must not be reported."""


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Create the event loop called ``name`` and check what we really got."""
    if name == "asyncio":
        loop = asyncio.new_event_loop()
    elif name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    elif name.startswith("ferroloop"):
        import ferroloop

        loop = ferroloop.new_event_loop()
        if name.startswith("ferroloop-watchdog"):
            # The default watchdog also tracks task creation sites (hygiene
            # reports); "-notrack" measures the sampling thread alone.
            loop.enable_watchdog(WATCHDOG_THRESHOLD_S, track_tasks=not name.endswith("-notrack"))
            # Its reports are measured, not shown: a benchmark server may
            # stall for real (an eager sock_* task that never yields, or any
            # step under callgrind's slowdown), and its stderr must stay
            # clean, since anything there counts as a failed run.
            reports = logging.getLogger("ferroloop")
            reports.addHandler(logging.NullHandler())
            reports.propagate = False
            check(loop.watchdog_threshold == WATCHDOG_THRESHOLD_S, "watchdog did not start")
    else:
        raise SystemExit(f"unknown loop {name!r}")
    module = type(loop).__module__
    if not module.startswith(EXPECTED_MODULE[name]):
        raise BenchmarkError(
            f"asked for {name}, got {module}.{type(loop).__qualname__}"
        )
    asyncio.set_event_loop(loop)
    return loop


def check(condition: bool, message: str) -> None:
    # Not `assert`: these checks must survive `python -O`.
    if not condition:
        raise BenchmarkError(message)


# --- benchmark 1: call_soon ping-pong -------------------------------------


def bench_call_soon(loop: asyncio.AbstractEventLoop, n: int) -> Verify:
    """One callback per loop iteration; it re-schedules itself n times."""
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(tick)
        else:
            loop.stop()

    loop.call_soon(tick)
    loop.run_forever()
    return lambda: check(count == n, f"call_soon: {count} callbacks ran, expected {n}")


# --- benchmark 2: call_later, half cancelled -------------------------------

# Delays spread over [1 ms, 2 ms).  Not 0..1 ms: uvloop rounds delays to whole
# milliseconds and turns a 0 ms call_later into call_soon, which would skip
# its timer code.  Precomputed so the timed body is loop work, not arithmetic.
TIMER_DELAYS = [0.001 + (i % 1000) * 1e-6 for i in range(BATCH)]


class TimerBench:
    """Timer state shared by all batches, so that a cancelled timer firing
    late (after its batch ended) is still counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fired = 0
        self.stop_at = 0
        self.wrongly_fired = 0

    def on_timer(self, index: int) -> None:
        if index % 2:
            self.wrongly_fired += 1
        self.fired += 1
        if self.fired == self.stop_at:
            self.loop.stop()

    def run_batch(self, size: int) -> None:
        """Schedule ``size`` timers, cancel the odd ones, run until the rest fired."""
        self.stop_at = self.fired + (size + 1) // 2  # even indices survive
        call_later = self.loop.call_later
        handles = [call_later(TIMER_DELAYS[i], self.on_timer, i) for i in range(size)]
        for handle in handles[1::2]:
            handle.cancel()
        self.loop.run_forever()

    def verify(self, expected: int) -> None:
        # Run past the longest delay so a timer that escaped cancel() fires;
        # this is why verification happens outside the timed body.
        self.loop.call_later(0.005, self.loop.stop)
        self.loop.run_forever()
        check(
            self.wrongly_fired == 0,
            f"timers: {self.wrongly_fired} cancelled timers fired",
        )
        check(
            self.fired == expected, f"timers: {self.fired} fired, expected {expected}"
        )


def bench_timers(loop: asyncio.AbstractEventLoop, n: int) -> Verify:
    timers = TimerBench(loop)
    for size in batch_sizes(n):
        timers.run_batch(size)
    expected = sum((size + 1) // 2 for size in batch_sizes(n))
    return lambda: timers.verify(expected)


# --- benchmark 3: tasks ----------------------------------------------------


async def sleeper() -> int:
    await asyncio.sleep(0)
    return 1


async def gather_batches(sizes: list[int]) -> int:
    loop = asyncio.get_running_loop()
    done = 0
    for size in sizes:
        tasks = [loop.create_task(sleeper()) for _ in range(size)]
        done += sum(await asyncio.gather(*tasks))
    return done


def bench_tasks(loop: asyncio.AbstractEventLoop, n: int) -> Verify:
    done = loop.run_until_complete(gather_batches(batch_sizes(n)))
    return lambda: check(done == n, f"tasks: {done} tasks finished, expected {n}")


# --- driver ----------------------------------------------------------------


def batch_sizes(n: int) -> list[int]:
    full, rest = divmod(n, BATCH)
    return [BATCH] * full + ([rest] if rest else [])


BENCHMARKS: dict[str, Callable[[asyncio.AbstractEventLoop, int], Verify]] = {
    "call_soon": bench_call_soon,
    "timers": bench_timers,
    "tasks": bench_tasks,
}

# Untimed warm-up size: fills free lists and lets CPython 3.11 specialise the
# bytecode, so the timed body measures the steady state.
WARMUP_OPS = 2_000


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    loop_name, bench_name, n_text = argv
    bench = BENCHMARKS[bench_name]
    n = int(n_text)
    loop = new_loop(loop_name)
    try:
        bench(loop, WARMUP_OPS)()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        verify = bench(loop, n)
        wall1, cpu1 = time.perf_counter(), time.process_time()
        verify()
    finally:
        loop.close()
    result = {
        "loop": loop_name,
        "benchmark": bench_name,
        "n": n,
        "wall_s": wall1 - wall0,
        "cpu_s": cpu1 - cpu0,
        "loop_type": f"{type(loop).__module__}.{type(loop).__qualname__}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
