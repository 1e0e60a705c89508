"""ferroloop: a drop-in replacement for asyncio's event loop, written in Rust.

    import ferroloop
    ferroloop.run(main())                      # like asyncio.run
    asyncio.Runner(loop_factory=ferroloop.new_event_loop)
    ferroloop.install()                        # asyncio.run() uses ferroloop

or, for any asyncio program: ``python -m ferroloop app.py [args]``.

PYTEST_DONT_REWRITE: the package carries a pytest plugin, and under
``python -m ferroloop -m pytest`` it is imported before pytest starts.
"""

from __future__ import annotations

import asyncio as _asyncio
import warnings as _warnings
from typing import Any, Coroutine, Optional, TypeVar

from ._native import Handle, TimerHandle, __version__
from ._loop import Loop
from ._metrics import LoopMetrics, openmetrics_text
from ._attach import allow_attach
from ._monitor import LoopDiagnostics, TaskInfo
from ._policy import EventLoopPolicy
from ._culprit import set_own_code
from ._task_history import FinishedTask
from ._watchdog import ProfileEntry, StallRecord

Loop.__module__ = __name__
EventLoopPolicy.__module__ = __name__
for _typed_dict in (LoopMetrics, LoopDiagnostics, TaskInfo, FinishedTask, StallRecord, ProfileEntry):
    _typed_dict.__module__ = __name__
del _typed_dict

__all__ = [
    "Loop",
    "EventLoopPolicy",
    "Handle",
    "TimerHandle",
    "new_event_loop",
    "install",
    "run",
    "openmetrics_text",
    "LoopMetrics",
    "LoopDiagnostics",
    "TaskInfo",
    "FinishedTask",
    "StallRecord",
    "ProfileEntry",
    "set_own_code",
    "allow_attach",
    "__version__",
]

_T = TypeVar("_T")

# FERROLOOP_ATTACH_SIGNAL=SIGUSR1: the tools may switch the monitor on later.
from ._attach import allow_attach_from_environment as _allow_attach_from_environment

_allow_attach_from_environment()
del _allow_attach_from_environment


def new_event_loop() -> Loop:
    """A new ferroloop event loop (usable as ``loop_factory``)."""
    return Loop()


def install() -> None:
    """Make asyncio create ferroloop loops (sets the event loop policy).

    The servers that choose their loop themselves instead of asking asyncio
    (uvicorn, Sanic, granian) are made to choose ferroloop too, unless told
    to use another loop; a loop of another kind that runs anyway is reported
    once on stderr, with the library that started it.
    """
    with _warnings.catch_warnings():
        # Policies are deprecated from 3.14 on, but remain the way to make
        # an unmodified program's asyncio.run() use another loop.
        _warnings.simplefilter("ignore", DeprecationWarning)
        _asyncio.set_event_loop_policy(EventLoopPolicy())
    from . import _takeover

    _takeover.install()


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: Optional[bool] = None,
    watchdog: Optional[float] = None,
    **run_kwargs: Any,
) -> _T:
    """Run a coroutine on a new ferroloop loop, like ``asyncio.run``.

    ``watchdog=0.1`` reports any callback or task step that blocks the loop
    for more than 0.1 s while it happens (see ``Loop.enable_watchdog``);
    without it, ``FERROLOOP_WATCHDOG=<milliseconds>`` is honoured.
    """

    import sys  # by this name, so that type checkers see the version test

    def loop_factory() -> Loop:
        loop = new_event_loop()
        if watchdog is not None:
            loop.enable_watchdog(watchdog)
        return loop

    if sys.version_info >= (3, 11):
        with _asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
            return runner.run(main)
    # 3.10 has no Runner: swap the policy in for the duration of the call.
    previous = _asyncio.get_event_loop_policy()
    policy = EventLoopPolicy()
    policy._loop_factory = loop_factory  # type: ignore[method-assign, unused-ignore]  # checked for 3.10 only
    _asyncio.set_event_loop_policy(policy)
    try:
        # asyncio.run leaves the debug setting alone when debug is None (so
        # PYTHONASYNCIODEBUG and -X dev apply).
        return _asyncio.run(main, debug=debug, **run_kwargs)
    finally:
        _asyncio.set_event_loop_policy(previous)
