"""Task hygiene: each pitfall is reported with where the task or coroutine
was created (file:line), when tracking is on (debug mode or the watchdog)."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest


@pytest.fixture
def tracked(loop):
    """Tracking through the watchdog (no debug mode); its threshold is far
    above anything these tests do."""
    loop.enable_watchdog(30)
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))
    yield contexts
    loop.disable_watchdog()


async def waits_forever():
    await asyncio.get_running_loop().create_future()


async def fails():
    raise ValueError("nobody looks at me")


def test_task_destroyed_while_pending_names_its_creation_line(loop, tracked, line_of):
    async def main():
        loop.create_task(waits_forever())  # CREATED PENDING
        await asyncio.sleep(0.01)
        gc.collect()

    loop.run_until_complete(main())
    [context] = [c for c in tracked if c["message"] == "Task was destroyed but it is pending!"]
    assert context["task_created_at"] == f"{__file__}:{line_of('# CREATED PENDING')} in main"


def test_exception_never_retrieved_names_its_creation_line(loop, tracked, line_of):
    async def main():
        task = loop.create_task(fails())  # CREATED FAILING
        await asyncio.sleep(0.01)
        del task
        gc.collect()

    loop.run_until_complete(main())
    [context] = [c for c in tracked if c["message"] == "Task exception was never retrieved"]
    assert isinstance(context["exception"], ValueError)
    assert context["task_created_at"] == f"{__file__}:{line_of('# CREATED FAILING')} in main"


def never_awaited_warning(loop) -> warnings.WarningMessage:
    async def helper():
        pass

    async def main():
        helper()  # NEVER AWAITED

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run_until_complete(main())
        gc.collect()
    [warning] = [w for w in caught if "was never awaited" in str(w.message)]
    assert issubclass(warning.category, RuntimeWarning)
    return warning


def test_coroutine_never_awaited_names_the_line_that_dropped_it(loop, tracked, line_of):
    # Without debug mode no coroutine's origin is recorded (that would cost
    # every coroutine); Python's warning points at the line where the
    # coroutine was dropped, which for a call never awaited is its own line.
    warning = never_awaited_warning(loop)
    assert (warning.filename, warning.lineno) == (__file__, line_of("# NEVER AWAITED"))


def test_coroutine_never_awaited_in_debug_mode_names_its_creation_line(loop, line_of):
    loop.set_debug(True)
    message = str(never_awaited_warning(loop).message)
    assert "Coroutine created at (most recent call last)" in message
    assert f'File "{__file__}", line {line_of("# NEVER AWAITED")}, in main' in message


def test_tasks_pending_at_close_are_reported(loop, tracked, caplog, line_of):
    async def lingering():
        await asyncio.sleep(30)

    async def main():
        return loop.create_task(lingering())  # STILL PENDING

    task = loop.run_until_complete(main())
    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        loop.close()
    [message] = [r.getMessage() for r in caplog.records if r.name == "ferroloop"]
    assert message.startswith("Task still pending when the loop closed: <Task pending")
    assert message.endswith(f"created at {__file__}:{line_of('# STILL PENDING')} in main")
    assert not task.done()


def test_debug_mode_reports_the_create_task_line(loop, line_of):
    loop.set_debug(True)
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))

    async def main():
        loop.create_task(waits_forever())  # CREATED IN DEBUG
        await asyncio.sleep(0.01)
        gc.collect()

    loop.run_until_complete(main())
    [context] = [c for c in contexts if c["message"] == "Task was destroyed but it is pending!"]
    creation = context["source_traceback"][-1]
    assert (creation.filename, creation.lineno) == (__file__, line_of("# CREATED IN DEBUG"))


def destroyed_pending_report(loop) -> dict:
    """Lets a pending task be collected and returns the loop's report of it."""
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))

    async def main():
        loop.create_task(waits_forever())
        await asyncio.sleep(0.01)
        gc.collect()

    loop.run_until_complete(main())
    [context] = [c for c in contexts if c["message"] == "Task was destroyed but it is pending!"]
    return context


def test_no_tracking_without_debug_or_watchdog(loop):
    context = destroyed_pending_report(loop)
    assert "task_created_at" not in context and "source_traceback" not in context


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_watchdog_can_run_without_tracking(loop, how, monkeypatch):
    if how == "argument":
        loop.enable_watchdog(30, track_tasks=False)
    else:
        monkeypatch.setenv("FERROLOOP_TRACK_TASKS", "0")
        loop.enable_watchdog(30)
    context = destroyed_pending_report(loop)
    assert "task_created_at" not in context
    assert loop.watchdog_threshold == 30


def site_of(loop, task) -> tuple[str, int, str]:
    site = loop._task_site(task)
    assert site is not None, "no creation site recorded"
    return site[:3]


def test_the_site_is_the_users_line_whichever_api_created_the_task(loop, tracked, line_of):
    async def child():
        await asyncio.sleep(0)

    async def main():
        direct = asyncio.create_task(child())  # VIA ASYNCIO.CREATE_TASK
        ensured = asyncio.ensure_future(child())  # VIA ENSURE_FUTURE
        gathered = asyncio.gather(child())  # VIA GATHER
        [inner] = [t for t in asyncio.all_tasks() if t not in (direct, ensured, asyncio.current_task())]
        sites = [site_of(loop, t) for t in (direct, ensured, inner)]
        await asyncio.gather(direct, ensured, gathered)
        return sites

    sites = loop.run_until_complete(main())
    assert sites == [
        (__file__, line_of("# VIA ASYNCIO.CREATE_TASK"), "main"),
        (__file__, line_of("# VIA ENSURE_FUTURE"), "main"),
        (__file__, line_of("# VIA GATHER"), "main"),
    ]


@pytest.mark.skipif(not hasattr(asyncio, "TaskGroup"), reason="TaskGroup is new in 3.11")
def test_a_task_group_task_is_sited_at_the_users_call(loop, tracked, line_of):
    async def main():
        async with asyncio.TaskGroup() as group:
            task = group.create_task(asyncio.sleep(0))  # VIA TASKGROUP
            return site_of(loop, task)

    assert loop.run_until_complete(main()) == (__file__, line_of("# VIA TASKGROUP"), "main")


def test_run_until_complete_sites_the_main_task_at_the_call(loop, tracked, line_of):
    async def main():
        return site_of(loop, asyncio.current_task())

    site = loop.run_until_complete(main())  # RUN MAIN
    assert site == (__file__, line_of("# RUN MAIN"), "test_run_until_complete_sites_the_main_task_at_the_call")


def test_creation_records_are_dropped_when_tasks_die(loop, tracked):
    async def main():
        for _ in range(5000):
            await asyncio.create_task(asyncio.sleep(0))
        return loop._tracked_task_count()

    # Records of dead tasks are swept out whenever the table reaches 1,024
    # entries (or has doubled since the last sweep): 5,000 tasks created one
    # after another leave at most 1,024, not 5,000.
    assert loop.run_until_complete(main()) <= 1024


def test_turning_tracking_off_forgets_the_records(loop, tracked):
    async def main():
        task = asyncio.create_task(asyncio.sleep(0))
        recorded = loop._task_site(task) is not None
        loop.disable_watchdog()
        return recorded, loop._task_site(task), loop._tracked_task_count()

    assert loop.run_until_complete(main()) == (True, None, 0)
