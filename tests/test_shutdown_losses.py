"""Tasks that asyncio.run and asyncio.Runner cancel at shutdown are reported,
with the watchdog or debug mode on, once each, with where they were created."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap

import pytest

import ferroloop

PROGRAM = textwrap.dedent(
    """
    import asyncio

    async def heartbeat():
        while True:
            await asyncio.sleep(1)  # HEARTBEAT WAITS

    async def quick():
        return 1

    async def main():
        asyncio.create_task(heartbeat(), name="heartbeat")  # HEARTBEAT CREATED
        await asyncio.create_task(quick(), name="quick")

    asyncio.run(main())
    """
)


def program_line(marker: str) -> int:
    return next(n for n, text in enumerate(PROGRAM.splitlines(), 1) if marker in text)


def run_program(tmp_path, extra_env: dict[str, str], *args: str) -> str:
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("FERROLOOP_WATCHDOG", "PYTHONASYNCIODEBUG")}
    result = subprocess.run(
        [sys.executable, *args, "-m", "ferroloop", str(script)],
        env={**env, **extra_env}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.parametrize("how", ["watchdog", "debug"])
def test_asyncio_run_reports_the_background_task_it_cancels(tmp_path, how):
    if how == "watchdog":
        stderr = run_program(tmp_path, {"FERROLOOP_WATCHDOG": "5000"})
    else:
        stderr = run_program(tmp_path, {}, "-X", "dev")
    script = tmp_path / "app.py"
    reports = [line for line in stderr.splitlines() if "cancelled at shutdown" in line]
    assert reports == [
        "Task cancelled at shutdown, still pending when the main coroutine returned: 'heartbeat' "
        f"(coroutine heartbeat() waiting at {script}:{program_line('# HEARTBEAT WAITS')}), "
        f"created at {script}:{program_line('# HEARTBEAT CREATED')} in main"
    ], stderr
    assert "'quick'" not in stderr  # it finished
    assert "still pending when the loop closed" not in stderr  # reported once


def test_nothing_is_reported_without_the_watchdog_or_debug_mode(tmp_path):
    assert "cancelled at shutdown" not in run_program(tmp_path, {})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_a_runner_reports_the_tasks_it_cancels_on_close(caplog, line_of):
    def factory() -> ferroloop.Loop:
        loop = ferroloop.new_event_loop()
        loop.enable_watchdog(30)
        return loop

    async def lingering():
        await asyncio.sleep(30)

    async def done_soon():
        pass

    async def main():
        asyncio.create_task(lingering(), name="lingering")  # LINGERING CREATED
        await asyncio.create_task(done_soon(), name="done-soon")

    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "ferroloop"]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Task cancelled at shutdown, still pending when the main coroutine returned: 'lingering'")
    assert messages[0].endswith(f"created at {__file__}:{line_of('# LINGERING CREATED')} in main")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_a_runner_without_the_watchdog_reports_nothing(caplog):
    async def main():
        asyncio.create_task(asyncio.sleep(30))

    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
            runner.run(main())
    assert [r for r in caplog.records if r.name == "ferroloop"] == []


def test_a_task_collected_after_close_keeps_its_creation_site(loop, line_of):
    import gc

    loop.enable_watchdog(30)
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))

    async def forever():
        await asyncio.get_running_loop().create_future()

    async def main():
        return loop.create_task(forever())  # PENDING AT CLOSE

    task = loop.run_until_complete(main())
    loop.close()
    del task
    gc.collect()
    [context] = [c for c in contexts if c["message"] == "Task was destroyed but it is pending!"]
    assert context["task_created_at"] == f"{__file__}:{line_of('# PENDING AT CLOSE')} in main"
