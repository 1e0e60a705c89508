"""Strict mode of the pytest plugin: each test of a throwaway project commits
one pitfall (a stall, a task destroyed pending, an exception never
retrieved, a coroutine never awaited) under pytest-asyncio or anyio; with
``--ferroloop-strict`` each fails with the report in its message and the
clean test passes, and without strict mode they all pass.

pytest runs in a subprocess, with the plugin coming in through its entry
point, as for users.
"""

from __future__ import annotations

import pytest

from ferroloop import pytest_plugin
from ferroloop._pytest_strict import parse_duration

pytest_plugins = ["pytester"]

PITFALLS = """
import asyncio
import time
import warnings

import pytest


@pytest.mark.asyncio
async def test_clean():
    await asyncio.create_task(asyncio.sleep(0.01), name="tidy")
    fetched = fetch()
    assert await fetched == 1


@pytest.mark.asyncio
async def test_stall():
    time.sleep(1.2)  # STALL LINE


async def waits_forever():
    await asyncio.get_running_loop().create_future()


@pytest.mark.asyncio
async def test_destroyed_pending():
    asyncio.get_running_loop().create_task(waits_forever(), name="forgotten")
    await asyncio.sleep(0)


async def fails():
    raise ValueError("nobody looked at me")


@pytest.mark.asyncio
async def test_never_retrieved():
    asyncio.get_running_loop().create_task(fails(), name="failing")
    await asyncio.sleep(0.01)


async def fetch():
    return 1


@pytest.mark.asyncio
async def test_never_awaited():
    fetch()


@pytest.mark.asyncio
async def test_never_awaited_under_an_error_filter():
    # The warning becomes an exception in the coroutine's finalizer, which
    # Python hands to sys.unraisablehook.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch()


@pytest.mark.anyio
async def test_anyio_stall():
    time.sleep(1.2)  # ANYIO STALL LINE


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_sync_test_with_asyncio_run():
    async def main():
        asyncio.get_running_loop().create_task(fails(), name="failing-in-run")
        await asyncio.sleep(0.01)

    asyncio.run(main())
"""

FAILING = {
    "test_stall": ["event loop stalled: one callback has run for *", "*time.sleep(1.2)  # STALL LINE"],
    "test_destroyed_pending": [
        "Task was destroyed but it is pending!",
        "task: <Task pending name='forgotten' coro=<waits_forever()*",
        "task_created_at: '*test_pitfalls.py:* in test_destroyed_pending'",
    ],
    "test_never_retrieved": [
        "Task exception was never retrieved",
        "future: <Task finished name='failing' coro=<fails()*",
        "task_created_at: '*test_pitfalls.py:* in test_never_retrieved'",
        "ValueError: nobody looked at me",
    ],
    "test_never_awaited": ["*test_pitfalls.py:*: RuntimeWarning: coroutine 'fetch' was never awaited"],
    "test_never_awaited_under_an_error_filter": ["RuntimeWarning: coroutine 'fetch' was never awaited"],
    "test_anyio_stall": ["event loop stalled: *", "*time.sleep(1.2)  # ANYIO STALL LINE"],
    "test_sync_test_with_asyncio_run": ["Task exception was never retrieved", "*name='failing-in-run'*"],
}


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for variable in (pytest_plugin.ENV_VARIABLE, pytest_plugin.STRICT_ENV_VARIABLE, "FERROLOOP_WATCHDOG"):
        monkeypatch.delenv(variable, raising=False)
    pytester.makepyfile(test_pitfalls=PITFALLS)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def _section(result: pytest.RunResult, test: str) -> list[str]:
    """The lines of one test's failure section."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("_") and f" {test} " in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("_", "="))), len(lines))
    return lines[start:end]


# Generous against a loaded machine: the stalls last 1.2 s.
STRICT = ["--ferroloop-strict", "--ferroloop-stall=300ms"]


def test_each_pitfall_fails_with_its_report_and_the_clean_test_passes(project):
    result = project.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=1, failed=len(FAILING))
    for test, expected in FAILING.items():
        result.stdout.fnmatch_lines([f"FAILED test_pitfalls.py::{test} - Failed: *"])
        section = _section(result, test)
        assert section[1].startswith("ferroloop strict mode: 1 problem while the test ran:"), (test, section)
        pytest.LineMatcher(section).fnmatch_lines(expected)
    assert "ferroloop: " in result.stdout.str() and "strict mode (stalls over 300 ms fail)" in result.stdout.str()


@pytest.mark.parametrize("option", [[], ["--ferroloop"]], ids=["asyncio", "ferroloop"])
def test_without_strict_mode_the_same_tests_pass(project, option):
    result = project.runpytest_subprocess(*option)
    result.assert_outcomes(passed=len(FAILING) + 1)


def test_strict_mode_from_the_ini_file_and_the_environment(project, monkeypatch):
    project.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nferroloop_strict = true\nferroloop_stall = 300ms\n"
    )
    result = project.runpytest_subprocess("-k", "never_awaited or clean")
    result.assert_outcomes(passed=1, failed=2)
    project.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv(pytest_plugin.STRICT_ENV_VARIABLE, "1")
    result = project.runpytest_subprocess("-k", "never_retrieved or clean")
    result.assert_outcomes(passed=1, failed=1)


def test_a_watchdog_from_the_environment_keeps_reporting(project, monkeypatch):
    # FERROLOOP_WATCHDOG turns the watchdog on in every loop already; strict
    # mode hears its reports without replacing it.
    monkeypatch.setenv("FERROLOOP_WATCHDOG", "300")
    result = project.runpytest_subprocess("--ferroloop-strict", "-k", "test_stall or clean")
    result.assert_outcomes(passed=1, failed=1)
    pytest.LineMatcher(_section(result, "test_stall")).fnmatch_lines(FAILING["test_stall"])


def test_a_failing_test_keeps_its_own_failure_with_the_report_beside_it(project):
    project.makepyfile(
        test_both="""
        import pytest

        async def fetch():
            return 1

        @pytest.mark.asyncio
        async def test_fails_and_leaks():
            fetch()
            assert 1 == 2
        """
    )
    result = project.runpytest_subprocess(*STRICT, "test_both.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*", "*ferroloop strict mode*", "*coroutine 'fetch' was never awaited"])


def test_what_a_fixtures_teardown_leaves_is_an_error_at_teardown(project):
    project.makepyfile(
        test_fixture="""
        import asyncio

        import pytest
        import pytest_asyncio

        async def fails():
            raise OSError("flushing the cache failed")

        @pytest_asyncio.fixture
        async def cache():
            yield
            asyncio.get_running_loop().create_task(fails(), name="flush")
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio
        async def test_uses_the_cache(cache):
            pass
        """
    )
    result = project.runpytest_subprocess(*STRICT, "test_fixture.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_uses_the_cache*",
        "ferroloop strict mode: 1 problem while the test ran:",
        "Task exception was never retrieved",
        "*name='flush'*",
        "OSError: flushing the cache failed",
    ])


def test_a_lenient_test_is_not_failed(project):
    project.makepyfile(
        test_lenient="""
        import pytest

        async def fetch():
            return 1

        @pytest.mark.ferroloop_lenient
        @pytest.mark.asyncio
        async def test_drops_a_coroutine_on_purpose():
            fetch()

        @pytest.mark.asyncio
        async def test_drops_one_by_mistake():
            fetch()
        """
    )
    result = project.runpytest_subprocess(*STRICT, "--strict-markers", "test_lenient.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_lenient.py::test_drops_one_by_mistake - *"])
    # The marker is known without strict mode too.
    assert project.runpytest_subprocess("--strict-markers", "test_lenient.py").ret == 0


def test_a_bad_stall_threshold_is_a_usage_error(project):
    result = project.runpytest_subprocess("--ferroloop-strict", "--ferroloop-stall=fast")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ferroloop-stall: not a duration: 'fast'*"])


@pytest.mark.parametrize("text, seconds", [("100ms", 0.1), ("0.5s", 0.5), ("250", 0.25), (" 2 s ", 2.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0ms", "-5ms", "1h", "ms"])
def test_durations_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
