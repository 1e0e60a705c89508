"""The stall watchdog reports blocking calls and CPU work while they happen."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

import ferroloop

THRESHOLD = 0.05


def cpu_work(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:  # CPU-BOUND LINE
        spins += 1
    return spins


@pytest.fixture
def records(loop):
    collected: list[dict] = []
    loop.enable_watchdog(THRESHOLD, callback=collected.append)
    yield collected
    loop.disable_watchdog()


def test_blocking_call_is_reported_while_it_blocks(loop, records, line_of):
    finished = {}

    async def fetch_page():
        time.sleep(0.4)  # BLOCKING LINE
        finished["at"] = time.monotonic()

    loop.run_until_complete(loop.create_task(fetch_page(), name="fetcher"))
    loop.run_until_complete(asyncio.sleep(0.05))  # let the watchdog see the end
    stall, end = records
    assert stall["event"] == "stall" and end["event"] == "stall_end"
    # Reported during the stall, not after it.
    assert stall["reported_at"] < finished["at"]
    assert THRESHOLD <= stall["duration"] < 0.4
    assert stall["task"] == "fetcher"
    assert stall["coroutine"].endswith("fetch_page")
    assert stall["coroutine_location"] == f"{__file__}:{line_of('# BLOCKING LINE')}"
    filename, lineno, name, line = stall["stack"][-1]
    assert (filename, lineno, name) == (__file__, line_of("# BLOCKING LINE"), "fetch_page")
    assert line.startswith("time.sleep(0.4)")
    assert 0.3 <= end["duration"] <= 0.6
    assert end["task"] == "fetcher"


def test_cpu_bound_work_is_reported_with_the_busy_line(loop, records, line_of):
    finished = {}

    async def crunch():
        cpu_work(0.4)
        finished["at"] = time.monotonic()

    loop.run_until_complete(loop.create_task(crunch(), name="cruncher"))
    loop.run_until_complete(asyncio.sleep(0.05))
    stall = records[0]
    assert stall["event"] == "stall" and stall["reported_at"] < finished["at"]
    assert stall["task"] == "cruncher"
    innermost = stall["stack"][-1]
    assert innermost[:3] == (__file__, line_of("# CPU-BOUND LINE"), "cpu_work")
    assert stall["stack"][-2][2] == "crunch"
    assert [r["event"] for r in records] == ["stall", "stall_end"]


def test_plain_callback_stall_names_the_callback(loop, records):
    def slow_callback():
        time.sleep(0.2)

    loop.call_soon(slow_callback)
    loop.call_later(0.3, loop.stop)
    loop.run_forever()
    stall = records[0]
    assert stall["task"] is None
    assert stall["stack"][0][2] == "slow_callback"


def test_short_callbacks_are_not_stalls(loop, records):
    async def busy_but_cooperative():
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            cpu_work(0.005)
            await asyncio.sleep(0)

    loop.run_until_complete(busy_but_cooperative())
    assert records == []


def test_reports_go_to_the_ferroloop_logger(loop, caplog):
    loop.enable_watchdog(THRESHOLD)

    async def blocked():
        time.sleep(0.2)

    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        loop.run_until_complete(blocked())
        loop.run_until_complete(asyncio.sleep(0.05))
    messages = [r.getMessage() for r in caplog.records if r.name == "ferroloop"]
    assert len(messages) == 2
    assert messages[0].startswith("event loop stalled: one callback has run for")
    assert "time.sleep(0.2)" in messages[0]
    assert messages[1].startswith("event loop stall ended after")


def test_enable_watchdog_validates_its_arguments(loop):
    with pytest.raises(ValueError, match="positive"):
        loop.enable_watchdog(0)
    with pytest.raises(TypeError, match="number of seconds"):
        loop.enable_watchdog("fast")
    with pytest.raises(TypeError, match="callable"):
        loop.enable_watchdog(0.1, callback=42)
    assert loop.watchdog_threshold is None
    loop.enable_watchdog(0.2)
    assert loop.watchdog_threshold == 0.2
    loop.disable_watchdog()
    assert loop.watchdog_threshold is None
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.enable_watchdog(0.1)


def watchdog_threads() -> int:
    """Native threads named ferroloop-watchdog (Linux truncates to 15 chars)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "ferroloop-watch"
        except FileNotFoundError:
            continue
    return count


def wait_for_watchdog_threads(expected: int) -> int:
    """The thread names itself once it starts running: give it a moment."""
    deadline = time.monotonic() + 2
    while watchdog_threads() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return watchdog_threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to see native threads")
def test_close_stops_the_watchdog_thread(loop):
    before = watchdog_threads()
    loop.enable_watchdog(0.05)
    assert wait_for_watchdog_threads(before + 1) == before + 1
    loop.enable_watchdog(0.1)  # replaces, does not add
    assert wait_for_watchdog_threads(before + 1) == before + 1
    loop.close()
    assert wait_for_watchdog_threads(before) == before
    assert loop.watchdog_threshold is None


def test_run_accepts_watchdog():
    collected = []

    async def main():
        asyncio.get_running_loop()._stall_reporter.callback = collected.append
        time.sleep(0.15)

    ferroloop.run(main(), watchdog=THRESHOLD)
    assert [r["event"] for r in collected] == ["stall", "stall_end"]


WATCHED_PROGRAM = textwrap.dedent(
    """
    import asyncio, time

    async def main():
        time.sleep(0.3)

    asyncio.run(main())
    """
)


def test_environment_variable_enables_the_watchdog_for_any_program(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(WATCHED_PROGRAM)
    result = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(script)],
        env={**os.environ, "FERROLOOP_WATCHDOG": "50"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "event loop stalled" in result.stderr
    assert f'File "{script}", line 5, in main' in result.stderr
    assert "time.sleep(0.3)" in result.stderr
    assert "event loop stall ended after" in result.stderr


def test_invalid_environment_value_is_refused(monkeypatch):
    monkeypatch.setenv("FERROLOOP_WATCHDOG", "soon")
    with _no_resource_warning():
        with pytest.raises(ValueError, match="FERROLOOP_WATCHDOG must be a number of milliseconds"):
            ferroloop.new_event_loop()


class _no_resource_warning:
    """Fails if a ResourceWarning (an unclosed half-built loop) is emitted."""

    def __enter__(self):
        import gc
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._gc = gc
        return self

    def __exit__(self, *exc):
        self._gc.collect()
        self._catcher.__exit__(*exc)
        assert not [w for w in self._caught if issubclass(w.category, ResourceWarning)]
        return False
