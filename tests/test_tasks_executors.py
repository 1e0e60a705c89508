"""Tasks, futures, executors, async generators and name resolution."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import socket
import sys
import threading

import pytest

import ferroloop


def test_create_future_is_a_real_asyncio_future(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop


def test_create_task_returns_a_real_task_with_name_and_context(loop):
    var = contextvars.ContextVar("v", default=None)
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx-value")

    async def read_var():
        return var.get()

    if sys.version_info < (3, 11):
        # Tasks gained their context parameter in 3.11, as create_task did.
        coro = read_var()
        with pytest.raises(TypeError):
            loop.create_task(coro, name="reader", context=ctx)
        coro.close()
        return
    task = loop.create_task(read_var(), name="reader", context=ctx)
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == "reader"
    assert loop.run_until_complete(task) == "ctx-value"


def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        created.append(task)
        return task

    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def answer():
        return 42

    task = loop.create_task(answer(), name="named")
    assert created == [task] and task.get_name() == "named"
    assert loop.run_until_complete(task) == 42
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_run_until_complete_returns_result_and_raises_exception(loop):
    async def ok():
        await asyncio.sleep(0.01)
        return "done"

    async def fails():
        await asyncio.sleep(0)
        raise LookupError("nope")

    assert loop.run_until_complete(ok()) == "done"
    with pytest.raises(LookupError, match="nope"):
        loop.run_until_complete(fails())


def test_run_until_complete_stopped_early(loop):
    async def forever():
        await asyncio.sleep(10)

    task = loop.create_task(forever())
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_gather_of_sleeps_runs_concurrently(loop):
    async def main():
        started = loop.time()
        results = await asyncio.gather(*(asyncio.sleep(0.1, result=i) for i in range(3)))
        return results, loop.time() - started

    results, elapsed = loop.run_until_complete(main())
    assert results == [0, 1, 2]
    assert 0.1 <= elapsed < 0.25


def test_running_loop_is_ferroloop(loop):
    async def main():
        return asyncio.get_running_loop()

    assert loop.run_until_complete(main()) is loop


def test_to_thread_runs_off_the_loop_thread(loop):
    async def main():
        return await asyncio.to_thread(threading.get_ident)

    assert loop.run_until_complete(main()) != threading.get_ident()


def _pid() -> int:
    return os.getpid()


def test_run_in_process_pool_executor(loop):
    async def main():
        with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
            return await loop.run_in_executor(pool, _pid)

    assert loop.run_until_complete(main()) != os.getpid()


def test_default_executor_rules(loop):
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
        loop.set_default_executor(concurrent.futures.ProcessPoolExecutor())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom")

    async def main():
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    loop.set_default_executor(pool)
    assert loop.run_until_complete(main()).startswith("custom")
    loop.run_until_complete(loop.shutdown_default_executor())

    async def after_shutdown():
        return await loop.run_in_executor(None, print)

    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_until_complete(after_shutdown())


def test_shutdown_asyncgens_closes_generators(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        gen = agen()
        assert await gen.__anext__() == 1
        return gen

    gen = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del gen


def test_getaddrinfo_and_getnameinfo(loop):
    infos = loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert infos[0][4] == ("127.0.0.1", 80)
    host, port = loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
    assert (host, port) == ("127.0.0.1", "80")


def test_unclosed_loop_warns():
    loop = ferroloop.new_event_loop()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        loop.__del__()
    assert loop.is_closed()
