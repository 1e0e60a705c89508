"""Reports of the stall watchdog (the sampling runs natively: src/diagnostics/watchdog.rs).

The native watchdog thread calls a ``StallReporter`` while a callback is
still stalling the loop, and again once it returns. The reporter runs on the
watchdog thread, so it reads the loop thread's state from the outside: the
stack through ``sys._current_frames()`` and the running task through
``asyncio.current_task(loop)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import traceback
import weakref
from typing import Any, Callable, Literal, Optional, TypedDict, cast

logger = logging.getLogger("ferroloop")


class StallRecord(TypedDict):
    """A stall watchdog report: what ``Loop.enable_watchdog``'s callback
    receives, and ``Loop.diagnostics()["stall"]``.

    Each stall gives two records: ``"stall"`` once the callback has run for
    the threshold, while it still runs, and ``"stall_end"`` when it returns,
    which repeats the first record's keys with the total duration.
    """

    event: Literal["stall", "stall_end"]
    """``"stall"`` while the callback still runs, ``"stall_end"`` after."""
    duration: float
    """Seconds the callback had run when reported (its total at the end)."""
    threshold: float
    """The watchdog's threshold in seconds."""
    task: Optional[str]
    """Name of the task whose step stalls, None for a plain callback."""
    coroutine: Optional[str]
    """Qualified name of that task's coroutine."""
    coroutine_location: Optional[str]
    """``file:line`` where that coroutine is suspended or running."""
    stack: list[tuple[str, Optional[int], str, Optional[str]]]
    """The loop thread's stack from the callback down, most recent call
    last: ``(filename, lineno, function, source line)``."""
    thread_id: Optional[int]
    """``threading.get_ident()`` of the loop's thread."""
    reported_at: float
    """When the record was made, on ``time.monotonic()``'s clock."""


# What the callback returns is ignored.
StallCallback = Callable[[StallRecord], object]

ENV_VARIABLE = "FERROLOOP_WATCHDOG"
TRACK_TASKS_VARIABLE = "FERROLOOP_TRACK_TASKS"

_LOOP_FILE = os.path.join(os.path.dirname(__file__), "_loop.py")


def threshold_from_environment() -> Optional[float]:
    """``FERROLOOP_WATCHDOG=<milliseconds>`` as seconds, or None if unset."""
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if not value:
        return None
    try:
        milliseconds = float(value)
    except ValueError:
        raise ValueError(f"{ENV_VARIABLE} must be a number of milliseconds, got {value!r}") from None
    if not milliseconds > 0:
        raise ValueError(f"{ENV_VARIABLE} must be a positive number of milliseconds, got {value!r}")
    return milliseconds / 1000


def track_tasks_from_environment() -> bool:
    """Task creation sites are tracked with the watchdog unless
    ``FERROLOOP_TRACK_TASKS=0``."""
    return os.environ.get(TRACK_TASKS_VARIABLE, "1").strip() != "0"


def _callback_frames(frame: Any) -> traceback.StackSummary:
    """The loop thread's stack from the callback down: the frames above it
    (the program's asyncio.run, our run_forever) only say "the loop runs"."""
    stack = traceback.extract_stack(frame)
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].filename == _LOOP_FILE and stack[index].name in ("run_forever", "_run_once"):
            return traceback.StackSummary.from_list(stack[index + 1 :])
    return stack


def _coroutine_location(coro: Any) -> Optional[str]:
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    if code is None:
        return None
    line = frame.f_lineno if frame is not None else code.co_firstlineno
    return f"{code.co_filename}:{line}"


class StallReporter:
    """Turns the watchdog's events into records, log lines and callbacks."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        callback: Optional[StallCallback],
        track_tasks: bool = True,
    ) -> None:
        self._loop_ref = weakref.ref(loop)
        self.threshold = threshold
        self.callback = callback
        self.track_tasks = track_tasks
        self.stalls = 0
        self._stall: Optional[StallRecord] = None

    @property
    def current_stall(self) -> Optional[StallRecord]:
        """The stall being reported right now, if any (for the live view)."""
        return self._stall

    def __call__(self, event: str, seconds: float) -> None:
        loop = self._loop_ref()
        if loop is None:
            return
        if event == "stall":
            record = self._describe_stall(loop, seconds)
            self._stall = record
            self.stalls += 1
        else:
            # The stall's record, with the end's event, duration and time (the
            # stall was described first, unless describing it failed).
            record = cast(
                StallRecord, dict(self._stall or {}, event="stall_end", duration=seconds, reported_at=time.monotonic())
            )
            self._stall = None
        logger.warning("%s", format_record(record))
        if self.callback is not None:
            self.callback(record)

    def _describe_stall(self, loop: asyncio.AbstractEventLoop, seconds: float) -> StallRecord:
        thread_id: Optional[int] = getattr(loop, "_thread_id", None)
        frame = sys._current_frames().get(thread_id) if thread_id is not None else None
        stack = _callback_frames(frame) if frame is not None else traceback.StackSummary()
        task = asyncio.current_task(loop)
        coro = task.get_coro() if task is not None else None
        return {
            "event": "stall",
            "duration": seconds,
            "threshold": self.threshold,
            "task": task.get_name() if task is not None else None,
            "coroutine": getattr(coro, "__qualname__", None) if coro is not None else None,
            "coroutine_location": _coroutine_location(coro) if coro is not None else None,
            "stack": [(f.filename, f.lineno, f.name, f.line) for f in stack],
            "thread_id": thread_id,
            "reported_at": time.monotonic(),
        }


def format_record(record: StallRecord) -> str:
    """The log text of one watchdog record."""
    where = ""
    if record.get("task") is not None:
        where = f" in task {record['task']!r}"
        if record.get("coroutine"):
            where += f" (coroutine {record['coroutine']}() at {record.get('coroutine_location')})"
    elif record.get("stack"):
        filename, lineno, name, _line = record["stack"][0]
        where = f" in callback {name}() at {filename}:{lineno}"
    if record["event"] == "stall_end":
        return f"event loop stall ended after {record['duration']:.3f} s{where}"
    lines = [f"event loop stalled: one callback has run for {record['duration']:.3f} s and is still running{where}"]
    if record.get("stack"):
        lines.append("Stack of the loop thread (most recent call last):")
        for filename, lineno, name, line in record["stack"]:
            lines.append(f'  File "{filename}", line {lineno}, in {name}')
            if line:
                lines.append(f"    {line}")
    return "\n".join(lines)
