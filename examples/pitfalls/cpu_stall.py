"""CPU work inside a coroutine stalls every other coroutine, just as a
blocking call does. Run with the watchdog to see it named while it happens:

    FERROLOOP_WATCHDOG=100 python -m ferroloop examples/pitfalls/cpu_stall.py
"""

import asyncio


def count_primes(limit: int) -> int:
    found = 0
    for candidate in range(2, limit):
        if all(candidate % divisor for divisor in range(2, int(candidate**0.5) + 1)):
            found += 1
    return found


async def handle_request() -> int:
    # BUG: CPU-bound work on the event loop; use loop.run_in_executor with a
    # ProcessPoolExecutor instead.
    return count_primes(300_000)


async def heartbeat() -> None:
    while True:
        await asyncio.sleep(0.1)


async def main() -> None:
    beat = asyncio.create_task(heartbeat(), name="heartbeat")
    primes = await asyncio.create_task(handle_request(), name="request-42")
    print(f"primes: {primes}")
    beat.cancel()


asyncio.run(main())
