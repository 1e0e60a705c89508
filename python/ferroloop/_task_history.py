"""The live view's record of recently finished tasks: how each ended and when.

A monitored loop wraps its ``create_task`` so that each new task (and each
task pending when the recording starts) gets one done callback, which
files the outcome in a bounded history. That costs every task's end a
callback, so the recording starts with the monitor only when
``FERROLOOP_MONITOR`` asks for it, and otherwise at the view's first
request. The callback
reads the exception without retrieving it, so "Task exception was never
retrieved" is still reported for a task nobody awaited.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
import weakref
from typing import Any, Literal, Optional, TypedDict, cast

HISTORY_LENGTH = 20
_DETAIL_LIMIT = 200


class FinishedTask(TypedDict):
    """One task of ``LoopDiagnostics["finished"]``, the most recent first."""

    id: int
    """``id()`` of the task, as ``python -m ferroloop ps`` shows it."""
    name: str
    """The task's name."""
    coroutine: str
    """Qualified name of the task's coroutine."""
    outcome: Literal["result", "exception", "cancelled"]
    """How the task ended."""
    detail: str
    """The result's repr, ``ExceptionType: message``, or the cancel message
    (shortened to 200 characters)."""
    finished_at: float
    """When it ended, on ``time.time()``'s clock."""


def _shorten(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


# (id, name, coroutine, outcome, detail, finished_at): a tuple while kept,
# since every task's end makes one.
_Entry = tuple[int, str, str, str, str, float]


def outcome_of(task: "asyncio.Task[Any]") -> tuple[str, str]:
    """How a done task ended, and the detail: its result's repr, the
    exception, or the cancel message."""
    if task.cancelled():
        try:
            task.result()  # a cancelled task has no exception to mark retrieved
        except asyncio.CancelledError as cancelled:
            # 3.10 keeps the message only on the error the coroutine raised,
            # which the one raised here has as its context.
            error: Optional[BaseException] = cancelled
            while error is not None and not error.args:
                error = error.__context__ if isinstance(error.__context__, asyncio.CancelledError) else None
            return "cancelled", str(error.args[0]) if error is not None else ""
        return "cancelled", ""
    # task.exception() would mark the exception retrieved and silence
    # asyncio's report of an exception nobody looked at.
    exception: Optional[BaseException] = getattr(task, "_exception", None)
    if exception is not None:
        message = str(exception)
        return "exception", f"{type(exception).__qualname__}: {message}" if message else type(exception).__qualname__
    result = getattr(task, "_result", None)
    return "result", "None" if result is None else _shorten(repr(result))


def _as_finished(entry: _Entry) -> FinishedTask:
    task_id, name, coroutine, outcome, detail, finished_at = entry
    return {
        "id": task_id,
        "name": name,
        "coroutine": coroutine,
        "outcome": cast(Literal["result", "exception", "cancelled"], outcome),
        "detail": _shorten(detail),
        "finished_at": finished_at,
    }


class TaskHistory:
    """The last ``HISTORY_LENGTH`` tasks of one loop to finish."""

    def __init__(self) -> None:
        self._finished: collections.deque[_Entry] = collections.deque(maxlen=HISTORY_LENGTH)
        # The done callbacks run in a context of their own: they touch no
        # context variable, and copying the caller's for each task would cost
        # more than the record.
        self._context = contextvars.Context()

    def watch(self, task: "asyncio.Task[Any]") -> None:
        task.add_done_callback(self._record, context=self._context)

    def _record(self, task: "asyncio.Task[Any]") -> None:
        coro = task.get_coro()
        outcome, detail = outcome_of(task)
        self._finished.append(
            (id(task), task.get_name(), getattr(coro, "__qualname__", None) or type(coro).__name__, outcome, detail, time.time())
        )

    def recent(self) -> list[FinishedTask]:
        """The finished tasks, the most recent first."""
        return [_as_finished(entry) for entry in reversed(list(self._finished))]


def start_recording(loop: asyncio.AbstractEventLoop) -> TaskHistory:
    """Record the tasks the loop creates from now on (idempotent)."""
    history: Optional[TaskHistory] = loop.__dict__.get("_task_history")
    if history is not None:
        return history
    history = TaskHistory()
    # The tasks that exist already are watched too, from the loop's thread
    # (this may run on the monitor's).
    existing = list(asyncio.all_tasks(loop))
    if existing:
        loop.call_soon_threadsafe(_watch_all, history, existing)
    native_create_task = type(loop).create_task
    # Weakly: the loop holds this function, which must not keep it alive
    # (an unclosed loop is reported when it is freed).
    loop_ref = weakref.ref(loop)

    def create_task(coro: Any, *args: Any, **kwargs: Any) -> "asyncio.Task[Any]":
        owner = loop_ref()
        if owner is None:
            raise RuntimeError("Event loop is closed")
        task: asyncio.Task[Any] = native_create_task(owner, coro, *args, **kwargs)
        history.watch(task)
        return task

    create_task.__doc__ = native_create_task.__doc__
    # An instance attribute: asyncio.create_task, ensure_future and TaskGroup
    # all look create_task up on the loop, and loops nobody monitors keep
    # the native method untouched.
    loop.__dict__["create_task"] = create_task
    loop.__dict__["_task_history"] = history
    return history


def _watch_all(history: TaskHistory, tasks: list["asyncio.Task[Any]"]) -> None:
    for task in tasks:
        history.watch(task)


def recent(loop: asyncio.AbstractEventLoop) -> list[FinishedTask]:
    history: Optional[TaskHistory] = loop.__dict__.get("_task_history")
    return history.recent() if history is not None else []
