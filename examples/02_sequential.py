"""Awaiting one thing after another is sequential: the waits add up.

`await` suspends the current coroutine until the awaited thing finishes.
Two `await asyncio.sleep(1)` written one after the other therefore take
about two seconds, even though nothing is using the CPU meanwhile.
"""

import asyncio
import time


async def wait_a_second(label):
    print(f"{label}: start")
    await asyncio.sleep(1)
    print(f"{label}: done")


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    start = time.perf_counter()
    await wait_a_second("first")
    await wait_a_second("second")  # only starts once "first" has finished
    print(f"elapsed: {time.perf_counter() - start:.2f} s  (about 1 s + 1 s)")


if __name__ == "__main__":
    asyncio.run(main())
