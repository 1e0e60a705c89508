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
from typing import TYPE_CHECKING, Optional

import pytest

import ferroloop

if TYPE_CHECKING:
    from asyncio import AbstractEventLoopPolicy

ENV_VARIABLE = "FERROLOOP_PYTEST"
_TRUE = ("1", "true", "yes", "on")

# Set only while the plugin is active: the policy to put back at the end.
_previous_policy: pytest.StashKey[AbstractEventLoopPolicy] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    description = "run asyncio tests (pytest-asyncio, anyio, asyncio.run) on ferroloop"
    parser.addoption("--ferroloop", action="store_true", default=False, help=description)
    parser.addini("ferroloop", type="bool", default=False, help=description)


def enabled(config: pytest.Config) -> bool:
    if config.getoption("ferroloop"):
        return True
    value = os.environ.get(ENV_VARIABLE, "").strip().lower()
    if value:
        return value in _TRUE
    return bool(config.getini("ferroloop"))


# tryfirst: a conftest's own pytest_configure runs after this one and can
# still choose another policy.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not enabled(config):
        return
    with warnings.catch_warnings():
        # Policies are deprecated from Python 3.14 on, but remain what
        # pytest-asyncio and asyncio.run() consult.
        warnings.simplefilter("ignore", DeprecationWarning)
        config.stash[_previous_policy] = asyncio.get_event_loop_policy()
    ferroloop.install()


def pytest_unconfigure(config: pytest.Config) -> None:
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
    return f"ferroloop: {ferroloop.__version__} (asyncio event loop policy installed)"
