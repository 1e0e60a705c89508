"""time.sleep inside a coroutine freezes the whole event loop.

The event loop runs one coroutine at a time and only switches at `await`.
A plain `time.sleep(1)` never awaits, so for that second no other coroutine
can run: the ticker below, which should tick every 0.2 s, goes silent.
`await asyncio.sleep(1)` waits just as long but hands control back to the
loop, and the ticker carries on undisturbed.
Run with `python3 -X dev` (asyncio's debug mode) and the loop itself points
at the culprit: "Executing <Task ...> took 1.0 seconds".
"""

import asyncio
import time


async def ticker(start, stop, ticks):
    while not stop.is_set():
        now = time.perf_counter() - start
        ticks.append(now)
        print(f"  tick at {now:.2f} s")
        await asyncio.sleep(0.2)


async def slow_job(blocking):
    await asyncio.sleep(0.5)
    if blocking:
        print("  job: time.sleep(1)  -- blocks the event loop")
        time.sleep(1)
    else:
        print("  job: await asyncio.sleep(1)  -- yields to the event loop")
        await asyncio.sleep(1)
    print("  job: done")


async def demo(blocking):
    start = time.perf_counter()
    stop = asyncio.Event()
    ticks = []
    tick_task = asyncio.create_task(ticker(start, stop, ticks))
    await slow_job(blocking)
    await asyncio.sleep(0.3)  # let a couple more ticks happen
    stop.set()
    await tick_task
    return max(later - earlier for earlier, later in zip(ticks, ticks[1:]))


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")

    print("blocking version:")
    gap = await demo(blocking=True)
    print(f"blocking version: largest gap between ticks {gap:.2f} s")

    print("fixed version:")
    gap = await demo(blocking=False)
    print(f"fixed version: largest gap between ticks {gap:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
