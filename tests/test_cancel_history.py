"""`python -m ferroloop cancel PID TASK`, and the recently finished tasks
that `ps` lists."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from ferroloop import FinishedTask, _monitor, _task_history

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    import ferroloop

    async def idler():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as cancelled:
            print("idler got", cancelled.args, flush=True)
            raise

    async def quick(n):
        if n % 5 == 1:
            raise ValueError(f"bad input {n}")
        return n * 2

    async def main():
        idle = asyncio.create_task(idler(), name="idler")
        twins = [asyncio.create_task(asyncio.sleep(60), name="twin") for _ in range(2)]
        for n in range(int(sys.argv[1])):
            try:
                await asyncio.create_task(quick(n), name=f"quick-{n}")
            except ValueError:
                pass
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for task in twins:
            task.cancel()

    ferroloop.run(main())
    """
)


@pytest.fixture
def program(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    started = []

    def start(quick_tasks: int, monitor: str = ""):
        # Without FERROLOOP_MONITOR the view starts recording at the first
        # request; with it, from the start.
        env = {k: v for k, v in os.environ.items() if k != "FERROLOOP_MONITOR"}
        if monitor:
            env["FERROLOOP_MONITOR"] = monitor
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferroloop", str(script), str(quick_tasks)],
            env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferroloop", *arguments], capture_output=True, text=True, timeout=60)


def tasks_of(pid: int) -> dict[str, list[dict]]:
    [loop] = _monitor.query(pid, "ps")["loops"]
    return loop


def test_cancel_by_name(program):
    proc = program(3)
    out = cli("cancel", str(proc.pid), "idler")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"cancelled task 'idler' (0x")
    assert proc.stdout.readline().strip() == "idler got ('cancelled by python -m ferroloop cancel',)"
    loop = tasks_of(proc.pid)
    assert "idler" not in [t["name"] for t in loop["tasks"]]
    assert loop["finished"][0]["name"] == "idler" and loop["finished"][0]["outcome"] == "cancelled"
    assert loop["finished"][0]["detail"] == "cancelled by python -m ferroloop cancel"


def test_cancel_by_id_as_ps_shows_it(program):
    proc = program(0)
    twins = [t for t in tasks_of(proc.pid)["tasks"] if t["name"] == "twin"]
    assert len(twins) == 2
    shown = cli("ps", str(proc.pid)).stdout
    assert hex(twins[0]["id"]) in shown
    out = cli("cancel", str(proc.pid), hex(twins[0]["id"]))
    assert out.returncode == 0, out.stderr
    left = [t["id"] for t in tasks_of(proc.pid)["tasks"] if t["name"] == "twin"]
    assert left == [twins[1]["id"]]


def test_cancel_errors(program):
    proc = program(2, monitor="1")
    unknown = cli("cancel", str(proc.pid), "nope")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr == (
        f"python -m ferroloop cancel: pid {proc.pid}: no task 'nope' (give a name or an id as ps shows it)\n"
    )
    ambiguous = cli("cancel", str(proc.pid), "twin")
    assert ambiguous.returncode == 1
    assert f"python -m ferroloop cancel: pid {proc.pid}: 2 tasks are named 'twin'; give one of their ids: 0x" in ambiguous.stderr
    finished = cli("cancel", str(proc.pid), "quick-1")
    assert finished.returncode == 1 and "task 'quick-1' has already finished" in finished.stderr
    usage = cli("cancel", str(proc.pid))
    assert usage.returncode == 2 and "the following arguments are required: task" in usage.stderr
    assert proc.poll() is None and len([t for t in tasks_of(proc.pid)["tasks"] if t["name"] == "twin"]) == 2


def test_ps_lists_recently_finished_tasks_and_how_they_ended(program):
    proc = program(25, monitor="1")
    finished = tasks_of(proc.pid)["finished"]
    assert len(finished) == _task_history.HISTORY_LENGTH == 20
    assert [t["name"] for t in finished] == [f"quick-{n}" for n in range(24, 4, -1)]  # most recent first
    by_name = {t["name"]: t for t in finished}
    assert (by_name["quick-24"]["outcome"], by_name["quick-24"]["detail"]) == ("result", "48")
    assert (by_name["quick-21"]["outcome"], by_name["quick-21"]["detail"]) == ("exception", "ValueError: bad input 21")
    assert all(t["coroutine"] == "quick" and t["finished_at"] > 0 for t in finished)
    assert all(set(t) == set(FinishedTask.__annotations__) for t in finished)
    out = cli("ps", str(proc.pid))
    assert "recently finished (last 20, most recent first):" in out.stdout
    lines = out.stdout.splitlines()
    row = next(line for line in lines if " quick-21 " in line)
    assert "exception" in row and "ago" in row and row.rstrip().endswith("ValueError: bad input 21")


def test_without_FERROLOOP_MONITOR_the_history_starts_at_the_first_request(program):
    proc = program(3)
    assert tasks_of(proc.pid)["finished"] == []
    assert cli("cancel", str(proc.pid), "idler").returncode == 0
    assert proc.stdout.readline().startswith("idler got")
    assert [t["name"] for t in tasks_of(proc.pid)["finished"]] == ["idler"]


def test_the_history_does_not_retrieve_exceptions(loop, caplog):
    # The record reads the exception without marking it retrieved: asyncio
    # still reports the exception nobody looked at.
    _task_history.start_recording(loop)

    async def fails():
        raise KeyError("lost")

    async def main():
        loop.create_task(fails(), name="lost")
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_until_complete(main())
        gc.collect()
    [finished] = [t for t in _task_history.recent(loop) if t["name"] == "lost"]
    assert finished["outcome"] == "exception" and finished["detail"] == "KeyError: 'lost'"
    assert any("Task exception was never retrieved" in record.getMessage() for record in caplog.records)


def test_asyncio_create_task_and_task_groups_are_recorded(loop):
    _task_history.start_recording(loop)

    async def value(n):
        return n

    async def main():
        await asyncio.create_task(value(1), name="plain")
        await asyncio.ensure_future(value(2))
        if sys.version_info >= (3, 11):
            async with asyncio.TaskGroup() as group:
                group.create_task(value(3), name="grouped")

    loop.run_until_complete(main())
    names = [t["name"] for t in _task_history.recent(loop)]
    assert "plain" in names and len(names) >= 2
    if sys.version_info >= (3, 11):
        assert "grouped" in names
