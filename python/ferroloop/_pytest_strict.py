"""Strict mode of the pytest plugin: a test fails when, while it ran, the
loop stalled, a task was destroyed pending, an exception was never
retrieved, or a coroutine was never awaited.

Every ferroloop loop created during the run is watched: its stall watchdog
reports to the collector (an existing watchdog's callback is kept and
chained), and its ``call_exception_handler`` is wrapped, since asyncio
reports destroyed tasks and unretrieved exceptions there, from the
finalizers of tasks and futures. Warnings are captured around each phase,
including those that a finalizer turns into unraisable exceptions.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import traceback
import warnings
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from . import _monitor, _watchdog

if TYPE_CHECKING:
    from ._loop import Loop

NEVER_AWAITED = re.compile(r"coroutine .* was never awaited")
# What asyncio's finalizers report through call_exception_handler.
_REPORTED_MESSAGES = (
    "Task was destroyed but it is pending!",
    "Task exception was never retrieved",
    "Future exception was never retrieved",
)

_UNITS = {"ms": 1e-3, "s": 1.0}


def parse_duration(text: str) -> float:
    """``100ms``, ``0.25s`` or a bare number of milliseconds, as seconds."""
    value = text.strip().lower()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|s)?", value)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 100ms or 0.5s)")
    return float(match.group(1)) * _UNITS[match.group(2) or "ms"]


def format_context(context: dict[str, Any]) -> str:
    """An exception handler context as asyncio's default handler writes it."""
    lines = [str(context.get("message"))]
    for key in sorted(context):
        if key in ("message", "exception"):
            continue
        value = context[key]
        if key in ("source_traceback", "handle_traceback") and isinstance(value, list):
            lines.append(f"{key}:\n" + "".join(traceback.format_list(value)).rstrip())
        else:
            lines.append(f"{key}: {value!r}")
    exception = context.get("exception")
    if isinstance(exception, BaseException):
        lines.append("".join(traceback.format_exception(type(exception), exception, exception.__traceback__)).rstrip())
    return "\n".join(lines)


class StrictCollector:
    """Gathers the pitfalls of the test running now (reports arrive from the
    watchdog thread and from finalizers, so it takes a lock)."""

    def __init__(self, stall_threshold: float) -> None:
        self.stall_threshold = stall_threshold
        # Reentrant: a finalizer run by a collection inside begin() or end()
        # reports here too.
        self._lock = threading.RLock()
        self._findings: Optional[list[str]] = None
        self._loops: "weakref.WeakSet[Loop]" = weakref.WeakSet()

    # -- the loops -----------------------------------------------------------

    def start(self) -> None:
        _monitor.add_loop_observer(self.watch)

    def stop(self) -> None:
        _monitor.remove_loop_observer(self.watch)
        for loop in list(self._loops):
            loop.__dict__.pop("call_exception_handler", None)

    def watch(self, loop: "Loop") -> None:
        """Report the loop's stalls and finalizer errors to the collector."""
        self._loops.add(loop)
        reporter = loop._stall_reporter
        if reporter is None:
            loop.enable_watchdog(self.stall_threshold, callback=self._on_stall)
        else:
            # FERROLOOP_WATCHDOG set a watchdog already: keep its threshold
            # and callback, and hear its reports too.
            chained = reporter.callback

            def both(record: _watchdog.StallRecord) -> None:
                self._on_stall(record)
                if chained is not None:
                    chained(record)

            reporter.callback = both
        handler: Callable[[dict[str, Any]], None] = loop.call_exception_handler
        collector = weakref.ref(self)

        def call_exception_handler(context: dict[str, Any]) -> None:
            try:
                # First, since the loop's handler adds the task's creation site.
                handler(context)
            finally:
                owner = collector()
                if owner is not None and isinstance(context, dict):
                    owner._on_exception_context(context)

        call_exception_handler.__doc__ = handler.__doc__
        # An instance attribute: Task and Future finalizers look the method
        # up on their loop.
        loop.__dict__["call_exception_handler"] = call_exception_handler

    def _on_stall(self, record: _watchdog.StallRecord) -> None:
        if record["event"] == "stall":
            self.add(_watchdog.format_record(record))

    def _on_exception_context(self, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith(_REPORTED_MESSAGES):
            self.add(format_context(context))

    # -- the tests -----------------------------------------------------------

    def add(self, report: str) -> None:
        with self._lock:
            if self._findings is not None:
                self._findings.append(report)

    def begin(self) -> None:
        with self._lock:
            self._findings = []

    def end(self) -> list[str]:
        with self._lock:
            findings, self._findings = self._findings or [], None
        return findings

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Around a test phase: collect "never awaited" warnings (shown or
        unraisable), and run the collector at the end so that finalizers
        report what the phase left behind. Other warnings go on to pytest."""
        previous_hook = sys.unraisablehook

        def unraisable(info: Any) -> None:
            exc = info.exc_value
            if isinstance(exc, RuntimeWarning) and NEVER_AWAITED.search(str(exc)):
                self.add(f"{type(exc).__name__}: {exc}")
            previous_hook(info)

        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=NEVER_AWAITED.pattern, category=RuntimeWarning)
            sys.unraisablehook = unraisable
            try:
                yield
            finally:
                try:
                    gc.collect()
                finally:
                    sys.unraisablehook = previous_hook
        for warning in caught:
            if issubclass(warning.category, RuntimeWarning) and NEVER_AWAITED.search(str(warning.message)):
                self.add(warnings.formatwarning(
                    warning.message, warning.category, warning.filename, warning.lineno, warning.line
                ).rstrip())
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno,
                                       source=warning.source)


def failure_text(findings: list[str]) -> str:
    count = "1 problem" if len(findings) == 1 else f"{len(findings)} problems"
    body = "\n\n".join(findings)
    return f"ferroloop strict mode: {count} while the test ran:\n\n{body}"
