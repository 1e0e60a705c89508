"""asyncio.to_thread runs a blocking function in a worker thread.

A blocking call such as `time.sleep` (or a slow library without async
support) would freeze the event loop if called directly. Handing it to
`asyncio.to_thread` runs it in a thread from the loop's default executor,
and gives back an awaitable; meanwhile the other coroutines keep running.
"""

import asyncio
import threading
import time


def blocking_io(seconds):
    # Runs in a worker thread; it reports back through its return value
    # rather than printing, so its output can't get mixed into the ticks.
    time.sleep(seconds)  # blocks this worker thread, not the event loop
    return f"slept {seconds} s in thread {threading.current_thread().name!r}"


async def ticker(start, stop):
    ticks = 0
    while not stop.is_set():
        print(f"tick at {time.perf_counter() - start:.2f} s")
        ticks += 1
        await asyncio.sleep(0.2)
    return ticks


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    start = time.perf_counter()
    stop = asyncio.Event()
    tick_task = asyncio.create_task(ticker(start, stop))

    print("main: handing blocking_io(1) to a worker thread")
    result = await asyncio.to_thread(blocking_io, 1)
    print("main: blocking_io finished")

    stop.set()
    ticks = await tick_task
    print(f"result: {result!r}")
    print(f"ticks while the thread slept: {ticks}  (the loop never froze)")
    print(f"elapsed: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
