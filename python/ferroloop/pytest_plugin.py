"""Run a project's asyncio tests on ferroloop: ``pytest --ferroloop``.

The ``pytest11`` entry point loads this plugin in every pytest run of an
environment where ferroloop is installed, so it does nothing unless asked:
``--ferroloop``, ``ferroloop = true`` in the ini file, or
``FERROLOOP_PYTEST=1`` (``FERROLOOP_PYTEST=0`` overrides the ini setting).

When asked, it calls ``ferroloop.install()`` for the whole run, which sets
ferroloop's event loop policy. That is the one lookup every framework goes
through:

- pytest-asyncio (0.23 to 1.x): its default ``event_loop_policy`` fixture
  returns the current policy, and its runners (function, module, session
  and the other loop scopes) build their loops from it, in strict and
  auto mode alike;
- anyio's plugin: the asyncio backend's runner calls
  ``asyncio.new_event_loop()`` unless the ``anyio_backend`` options name a
  ``loop_factory`` (or ``use_uvloop``); trio never looks at the policy;
- ``asyncio.run()`` and ``asyncio.new_event_loop()`` in sync tests.

Strict mode (``--ferroloop-strict``, ini ``ferroloop_strict``, or
``FERROLOOP_PYTEST_STRICT=1``; it implies ``--ferroloop``) also fails a test
during which a loop stalled for longer than ``--ferroloop-stall`` (default
100ms), a task was destroyed pending, an exception was never retrieved, or
a coroutine was never awaited; the failure shows the report (see
``_pytest_strict``). ``@pytest.mark.ferroloop_lenient`` exempts a test.

Overriding the ``event_loop_policy`` or ``anyio_backend`` fixture instead
would not do: pytest-asyncio 1.x warns about any override of
``event_loop_policy``, two plugins defining one fixture resolve by load
order, and a conftest's own ``anyio_backend`` would bypass ours. A
conftest that picks a loop explicitly still wins.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import TYPE_CHECKING, Generator, Optional

import pytest

import ferroloop
from ferroloop._pytest_strict import StrictCollector, failure_text, parse_duration

if TYPE_CHECKING:
    from asyncio import AbstractEventLoopPolicy

ENV_VARIABLE = "FERROLOOP_PYTEST"
STRICT_ENV_VARIABLE = "FERROLOOP_PYTEST_STRICT"
LENIENT_MARKER = "ferroloop_lenient"
DEFAULT_STALL = "100ms"
_TRUE = ("1", "true", "yes", "on")

# Set only while the plugin is active: the policy to put back at the end.
_previous_policy: pytest.StashKey[AbstractEventLoopPolicy] = pytest.StashKey()
# Set only in strict mode.
_collector: pytest.StashKey[StrictCollector] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    description = "run asyncio tests (pytest-asyncio, anyio, asyncio.run) on ferroloop"
    parser.addoption("--ferroloop", action="store_true", default=False, help=description)
    parser.addini("ferroloop", type="bool", default=False, help=description)
    strict = (
        "ferroloop, and fail a test during which the loop stalled, a task was destroyed pending, "
        "an exception was never retrieved or a coroutine was never awaited"
    )
    parser.addoption("--ferroloop-strict", action="store_true", default=False, help=strict)
    parser.addini("ferroloop_strict", type="bool", default=False, help=strict)
    stall = f"strict mode: the longest a callback may block the loop (e.g. 100ms, 0.5s; default {DEFAULT_STALL})"
    parser.addoption("--ferroloop-stall", default=None, metavar="DURATION", help=stall)
    parser.addini("ferroloop_stall", default=DEFAULT_STALL, help=stall)


def _switch(config: pytest.Config, option: str, variable: str, ini: str) -> bool:
    if config.getoption(option):
        return True
    value = os.environ.get(variable, "").strip().lower()
    if value:
        return value in _TRUE
    return bool(config.getini(ini))


def strict(config: pytest.Config) -> bool:
    return _switch(config, "ferroloop_strict", STRICT_ENV_VARIABLE, "ferroloop_strict")


def enabled(config: pytest.Config) -> bool:
    return _switch(config, "ferroloop", ENV_VARIABLE, "ferroloop") or strict(config)


def stall_threshold(config: pytest.Config) -> float:
    text = config.getoption("ferroloop_stall") or str(config.getini("ferroloop_stall"))
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--ferroloop-stall: {exc}") from None


# tryfirst: a conftest's own pytest_configure runs after this one and can
# still choose another policy.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{LENIENT_MARKER}: ferroloop's strict mode does not fail this test (it tests a pitfall on purpose)"
    )
    if not enabled(config):
        return
    with warnings.catch_warnings():
        # Policies are deprecated from Python 3.14 on, but remain what
        # pytest-asyncio and asyncio.run() consult.
        warnings.simplefilter("ignore", DeprecationWarning)
        config.stash[_previous_policy] = asyncio.get_event_loop_policy()
    ferroloop.install()
    if strict(config):
        collector = StrictCollector(stall_threshold(config))
        collector.start()
        config.stash[_collector] = collector


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.stash.get(_collector, None)
    if collector is not None:
        del config.stash[_collector]
        collector.stop()
    # Put asyncio back as it was, for in-process runs (pytester) and
    # programs that call pytest.main() more than once.
    previous = config.stash.get(_previous_policy, None)
    if previous is None:
        return
    del config.stash[_previous_policy]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(previous)
    # install() also made the servers that pick their own loop pick
    # ferroloop: undo what of that can be undone.
    from ferroloop import _takeover

    _takeover.uninstall()


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    if _previous_policy not in config.stash:
        return None
    header = f"ferroloop: {ferroloop.__version__} (asyncio event loop policy installed)"
    collector = config.stash.get(_collector, None)
    if collector is not None:
        header += f", strict mode (stalls over {collector.stall_threshold * 1e3:g} ms fail)"
    return header


# -- strict mode ---------------------------------------------------------------
# A phase's findings include what the collector finds right after it: the
# finalizers of the tasks and futures the phase dropped report then.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    collector = _collector_for(item)
    if collector is None:
        return (yield)
    # Setup's findings are reported with the call's.
    collector.begin()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    collector = _collector_for(item)
    if collector is None:
        return (yield)
    return (yield from _strict_phase(item, collector, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Generator[None, object, object]:
    collector = _collector_for(item)
    if collector is None:
        return (yield)
    collector.begin()
    return (yield from _strict_phase(item, collector, "teardown"))


def _collector_for(item: pytest.Item) -> Optional[StrictCollector]:
    if item.get_closest_marker(LENIENT_MARKER) is not None:
        return None
    return item.config.stash.get(_collector, None)


def _strict_phase(item: pytest.Item, collector: StrictCollector, when: str) -> Generator[None, object, object]:
    failure: Optional[BaseException] = None
    result: object = None
    with collector.capture():
        try:
            result = yield
        except BaseException as exc:  # noqa: BLE001 - re-raised below, with the report beside it
            failure = exc
    findings = collector.end()
    if failure is not None:
        if findings:
            item.add_report_section(when, "ferroloop strict mode", failure_text(findings))
        raise failure
    if findings:
        pytest.fail(failure_text(findings), pytrace=False)
    return result
