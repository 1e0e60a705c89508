"""asyncio.gather runs several awaitables concurrently and collects the results.

While one coroutine is sleeping, the event loop runs the others, so three
one-second sleeps that overlap take about one second in total. The results
come back in the order the awaitables were passed, not in finishing order.
"""

import asyncio
import time


async def fetch(name, delay):
    print(f"{name}: waiting {delay} s")
    await asyncio.sleep(delay)
    print(f"{name}: finished")
    return f"{name}-result"


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    start = time.perf_counter()
    results = await asyncio.gather(
        fetch("alpha", 1),
        fetch("beta", 1),
        fetch("gamma", 1),
    )
    print(f"results: {results}")
    print(f"elapsed: {time.perf_counter() - start:.2f} s  (not 3 s: the sleeps overlapped)")


if __name__ == "__main__":
    asyncio.run(main())
