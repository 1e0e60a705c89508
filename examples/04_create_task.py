"""asyncio.create_task schedules a coroutine to run in the background.

The task does not start the instant it is created: it starts the next time
the current coroutine gives control back to the event loop (at an `await`).
From then on the task and the code that created it take turns at every
`await`, and `await task` later waits for it and returns its result.
"""

import asyncio
import time

START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - START:4.2f} s] {message}")


async def download(steps):
    for i in range(1, steps + 1):
        log(f"  task: downloading chunk {i}/{steps}")
        await asyncio.sleep(0.2)
    log("  task: all chunks downloaded")
    return steps * 64


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")

    task = asyncio.create_task(download(3))
    log("main: task created; it has not run yet")

    await asyncio.sleep(0.1)  # first chance for the task to run
    for i in range(1, 4):
        log(f"main: doing other work, step {i}")
        await asyncio.sleep(0.2)  # the task runs while main waits

    log("main: now waiting for the task to finish")
    size = await task
    log(f"main: task returned {size} (KiB)")
    print(f"result: {size}")


if __name__ == "__main__":
    asyncio.run(main())
