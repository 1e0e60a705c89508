"""The pytest plugin: ``pytest --ferroloop`` (or the ini option, or
FERROLOOP_PYTEST=1) runs a project's pytest-asyncio, anyio and asyncio.run()
tests on ferroloop; without it the same tests see asyncio's own loop.

Each case runs pytest in a subprocess on a throwaway project, with no
``-p``: the plugin comes in through its entry point, as it does for users.
"""

from __future__ import annotations

import importlib.metadata

import anyio
import pytest

from ferroloop import pytest_plugin

pytest_plugins = ["pytester"]

# The library the running loop's class comes from: "ferroloop" or "asyncio".
LOOPS = """
import asyncio
import os

EXPECTED = os.environ["EXPECTED_LOOP"]


def loop_library():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
"""

STRICT = """
import asyncio

import pytest
import pytest_asyncio

from loops import EXPECTED, loop_library

seen = {}


@pytest_asyncio.fixture
async def fixture_loop():
    return loop_library()


@pytest.mark.asyncio
async def test_function_loop(fixture_loop):
    assert fixture_loop == loop_library() == EXPECTED


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_first():
    seen["module"] = asyncio.get_running_loop()
    assert loop_library() == EXPECTED


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_shared():
    assert asyncio.get_running_loop() is seen["module"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def session_loop():
    return asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop(session_loop):
    assert asyncio.get_running_loop() is session_loop
    assert loop_library() == EXPECTED


def test_asyncio_run_in_a_sync_test():
    async def main():
        return loop_library()

    assert asyncio.run(main()) == EXPECTED
"""

ANYIO = """
import pytest

from loops import EXPECTED, loop_library


# trio, where installed, is left alone.
@pytest.fixture
async def fixture_loop(anyio_backend_name):
    if anyio_backend_name == "asyncio":
        return loop_library()


@pytest.mark.anyio
async def test_anyio_backends(anyio_backend_name, fixture_loop):
    if anyio_backend_name == "asyncio":
        assert fixture_loop == loop_library() == EXPECTED
"""

ANYIO_OPTIONS = """
import asyncio

import pytest

from loops import EXPECTED, loop_library


@pytest.fixture
def anyio_backend():
    return ("asyncio", {"debug": True})


@pytest.mark.anyio
async def test_anyio_backend_with_options():
    assert asyncio.get_running_loop().get_debug()
    assert loop_library() == EXPECTED
"""

AUTO = """
import pytest

from loops import EXPECTED, loop_library


@pytest.fixture
async def fixture_loop():
    return loop_library()


async def test_unmarked(fixture_loop):
    assert fixture_loop == loop_library() == EXPECTED
"""

STRICT_FILES = ["test_strict.py", "test_anyio.py", "test_anyio_options.py"]
# test_anyio.py runs once per backend anyio finds (asyncio, and trio if installed).
STRICT_PASSED = 6 + len(anyio.get_available_backends())


def ini(*lines: str) -> str:
    # Warnings are errors: switching the loop must not cost a deprecation.
    return "\n".join(["[pytest]", "asyncio_default_fixture_loop_scope = function", "filterwarnings = error", *lines])


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv(pytest_plugin.ENV_VARIABLE, raising=False)
    pytester.makepyfile(
        loops=LOOPS,
        test_strict=STRICT,
        test_anyio=ANYIO,
        test_anyio_options=ANYIO_OPTIONS,
        test_auto=AUTO,
    )
    pytester.makeini(ini())
    return pytester


def run(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, expected: str, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("EXPECTED_LOOP", expected)
    return project.runpytest_subprocess(*args)


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    [entry_point] = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "ferroloop"]
    assert entry_point.value == "ferroloop.pytest_plugin"


@pytest.mark.parametrize("option, expected", [("--ferroloop", "ferroloop"), (None, "asyncio")])
def test_strict_mode_and_anyio(project, monkeypatch, option, expected):
    args = [option] if option else []
    result = run(project, monkeypatch, expected, "-o", "asyncio_mode=strict", *args, *STRICT_FILES)
    result.assert_outcomes(passed=STRICT_PASSED)
    header = result.stdout.lines[:10]
    assert any(line.startswith("ferroloop: ") for line in header) == (option is not None)


@pytest.mark.parametrize("option, expected", [("--ferroloop", "ferroloop"), (None, "asyncio")])
def test_auto_mode(project, monkeypatch, option, expected):
    args = [option] if option else []
    result = run(project, monkeypatch, expected, "-o", "asyncio_mode=auto", *args, "test_auto.py")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "ini_line, env, expected",
    [
        ("ferroloop = true", None, "ferroloop"),
        ("ferroloop = false", "1", "ferroloop"),
        ("ferroloop = true", "0", "asyncio"),
    ],
    ids=["ini", "env", "env-overrides-ini"],
)
def test_ini_option_and_environment_variable(project, monkeypatch, ini_line, env, expected):
    project.makeini(ini(ini_line))
    if env is not None:
        monkeypatch.setenv(pytest_plugin.ENV_VARIABLE, env)
    result = run(project, monkeypatch, expected, *STRICT_FILES)
    result.assert_outcomes(passed=STRICT_PASSED)


# In a child process: the run switches process-wide state, and what it
# leaves behind is the point.
IN_PROCESS = """
import asyncio
import sys
import warnings

import pytest

warnings.simplefilter("ignore", DeprecationWarning)
before = (asyncio.get_event_loop_policy(), asyncio.events._set_running_loop, list(sys.meta_path))
assert pytest.main(["--ferroloop", "-q", "-p", "no:cacheprovider", "test_strict.py"]) == 0
after = (asyncio.get_event_loop_policy(), asyncio.events._set_running_loop, list(sys.meta_path))
assert after == before, (before, after)
print("asyncio as it was")
"""


def test_an_in_process_run_leaves_asyncio_as_it_was(project, monkeypatch):
    monkeypatch.setenv("EXPECTED_LOOP", "ferroloop")
    script = project.makepyfile(in_process=IN_PROCESS)
    result = project.runpython(script)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*5 passed*", "asyncio as it was"])
