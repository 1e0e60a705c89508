"""Calling a coroutine function does not run it: it returns a coroutine object.

The body of an `async def` function only starts executing when the coroutine
object is awaited (or handed to the event loop, e.g. by `asyncio.run`).
Until then it is just an object waiting to be driven.
"""

import asyncio
import inspect


async def greet(name):
    print(f"    (inside greet: now running for {name!r})")
    await asyncio.sleep(0.1)
    return f"hello, {name}"


async def main(coro):
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    result = await coro  # this is what actually runs greet's body
    print(f"result: {result!r}")


if __name__ == "__main__":
    coro = greet("world")  # no event loop is running yet, and that's fine
    print(f"greet('world') returned: {coro!r}")
    print(f"its type: {type(coro).__name__}; is a coroutine: {inspect.iscoroutine(coro)}")
    print(f"state before running: {inspect.getcoroutinestate(coro)}")
    print("note: greet's body has not printed anything yet")
    print("now driving it with asyncio.run(...)")
    asyncio.run(main(coro))
    print(f"state after running: {inspect.getcoroutinestate(coro)}")
