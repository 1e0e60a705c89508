"""CPU-bound work belongs in a process pool, awaited via loop.run_in_executor.

Coroutines only take turns; they do not make Python code run in parallel,
and threads don't help for pure-Python number crunching either (the GIL).
A `concurrent.futures.ProcessPoolExecutor` runs functions in separate
processes, one per core, and `loop.run_in_executor` turns each call into an
awaitable, so the event loop stays free while the children compute.

The `if __name__ == "__main__":` guard matters: with the "spawn" start
method each worker process imports this file, and without the guard it
would start a pool of its own.
"""

import asyncio
import os
import time
from concurrent.futures import ProcessPoolExecutor

LIMIT = 600_000
JOBS = 4


def count_primes(lo, hi):
    """Deliberately naive trial division: pure CPU work."""
    started = time.process_time()
    count = 0
    for n in range(max(lo, 2), hi):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count, os.getpid(), time.process_time() - started


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    step = LIMIT // JOBS
    ranges = [(i * step, (i + 1) * step) for i in range(JOBS)]
    workers = os.cpu_count() or 1

    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:

        async def job(lo, hi):
            count, pid, cpu = await loop.run_in_executor(pool, count_primes, lo, hi)
            print(f"  primes in [{lo:>7}, {hi:>7}): {count:>6}  (pid {pid}, {cpu:.2f} s CPU)")
            return count, cpu

        print(f"counting primes below {LIMIT} in {JOBS} jobs on {workers} worker processes")
        results = await asyncio.gather(*(job(lo, hi) for lo, hi in ranges))

    wall = time.perf_counter() - start
    total = sum(count for count, _ in results)
    cpu = sum(seconds for _, seconds in results)
    print(f"total primes below {LIMIT}: {total}")
    print(f"elapsed: {wall:.2f} s for {cpu:.2f} s of CPU work (speed-up x{cpu / wall:.1f})")


if __name__ == "__main__":
    asyncio.run(main())
