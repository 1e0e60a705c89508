"""A coroutine that is created but never awaited does nothing, and Python warns.

Forgetting `await` is the classic asyncio bug: `save(...)` without `await`
only builds a coroutine object, so the body never runs and the program
silently carries on. When that unused coroutine object is destroyed,
Python emits "RuntimeWarning: coroutine '...' was never awaited" on stderr;
the warning is the only clue, so it is worth knowing what it means.
Run with `python3 -X dev` (asyncio's debug mode) and the warning also says
where the forgotten coroutine was created.
"""

import asyncio
import gc
import warnings

# RuntimeWarning is shown by default, but only once per location and only if
# nobody silenced it; make the lesson independent of the caller's settings.
warnings.simplefilter("default", RuntimeWarning)

saved = []


async def save(record):
    await asyncio.sleep(0.1)
    saved.append(record)
    print(f"  saved {record!r}")


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")

    print("buggy: calling save('first') without await")
    save("first")  # BUG: the coroutine object is created and dropped at once
    gc.collect()  # (CPython frees it immediately; this just makes sure)
    print(f"after the buggy call, saved = {saved}  (nothing happened)")

    print("fixed: await save('second')")
    await save("second")
    print(f"after the fixed call, saved = {saved}")


if __name__ == "__main__":
    asyncio.run(main())
