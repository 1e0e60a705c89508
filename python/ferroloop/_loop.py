"""ferroloop.Loop: the native core plus the parts of asyncio's loop API that are glue.

The hot paths (scheduling, timers, readiness, running callbacks) live in the
native base class ``LoopCore``. What stays here runs once per loop run or per
rare event, and follows asyncio's own semantics step by step: run_forever's
bookkeeping, run_until_complete, exception handlers, executors, signals,
async generator shutdown.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
import asyncio
from asyncio import constants, coroutines, events, futures, tasks
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

if TYPE_CHECKING:
    # typeshed's own aliases, so that the signatures below are exactly
    # AbstractEventLoop's.
    from asyncio import _AwaitableLike
    from asyncio.events import _Context, _ExceptionHandler

    from typing_extensions import TypeVarTuple, Unpack

    from ._metrics import LoopMetrics
    from ._monitor import LoopDiagnostics

    _Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")

from . import _metrics, _monitor, _process, _watchdog
from ._network import NetworkMethods
from ._sockets import SocketMethods
from ._native import LoopCore, _call_at_fastcall, _call_later_fastcall, _call_soon_fastcall

logger = logging.getLogger("asyncio")

# Frames from these files are skipped to find the line that created a task.
_INTERNAL_PREFIXES = [os.path.dirname(os.path.abspath(path)) + os.sep for path in (asyncio.__file__, __file__)]


# From 3.12 on, asyncio runs a custom exception handler in the context of the
# failing task, future or handle (gh-96704).
_HANDLER_RUNS_IN_CONTEXT = sys.version_info >= (3, 12)


def _handler_context(context: dict[str, Any]) -> Any:
    """The contextvars.Context of what failed: its task, future or handle."""
    for key in ("task", "future", "handle"):
        thing = context.get(key)
        if thing is not None:
            get_context = getattr(thing, "get_context", None)
            found = get_context() if get_context is not None else None
            return found if hasattr(found, "run") else None
    return None


def _task_of(context: dict[str, Any]) -> Optional[tasks.Task[Any]]:
    for key in ("task", "future"):
        candidate = context.get(key)
        if isinstance(candidate, tasks.Task):
            return candidate
    return None


def task_creation_site(task: tasks.Task[Any]) -> Optional[str]:
    """Where the task was created ("file:line in function"): the
    create_task call the loop recorded (task tracking), or else where its
    coroutine was created, if coroutine origin tracking (debug mode)
    recorded it."""
    loop = task.get_loop()
    site = loop._task_site(task) if isinstance(loop, LoopCore) else None
    if site is not None:
        filename, lineno, function, _created = site
        return f"{filename}:{lineno} in {function}"
    origin = getattr(task.get_coro(), "cr_origin", None)
    if not origin:
        return None
    filename, lineno, function = origin[0]
    return f"{filename}:{lineno} in {function}"


# asyncio.runners._cancel_all_tasks (3.10 to 3.13: asyncio.run and, from
# 3.11, Runner.close) cancels every pending task and runs
# run_until_complete(gather(...)) on them; the loop recognises that call by
# its caller's code object.
_CANCEL_ALL_TASKS_CODE = getattr(getattr(asyncio.runners, "_cancel_all_tasks", None), "__code__", None)


def _run_until_complete_cb(fut: futures.Future[Any]) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The exception propagates out of run_forever by itself; stopping
            # here would hide it (asyncio issue #22429).
            return
    futures._get_loop(fut).stop()  # type: ignore[attr-defined]  # private asyncio helper, stable since 3.7


# signal.valid_signals() builds a set of Signals enums at each call (some
# 1,500 lines of enum code); the set itself never changes.
_VALID_SIGNALS = frozenset(signal.valid_signals())
_SIGCHLD: Optional[int] = getattr(signal, "SIGCHLD", None)


def _sighandler_noop(signum: int, frame: Any) -> None:
    """Installed for signals handled by the loop: the C-level handler writes
    the signal number to the wakeup fd, which is all the loop needs."""


def _step_task(handle: Any) -> Optional[tasks.Task[Any]]:
    """The task whose step this handle runs, if it runs one."""
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    return owner if isinstance(owner, tasks.Task) else None


def _format_handle(handle: Any) -> str:
    task = _step_task(handle)
    return repr(task) if task is not None else str(handle)


def _slow_callback_culprit(handle: Any) -> str:
    """Who a slow callback belongs to: the task and where its coroutine is
    defined, beyond the repr asyncio logs."""
    task = _step_task(handle)
    if task is None:
        return ""
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    defined = f" defined at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    name = getattr(coro, "__qualname__", type(coro).__name__)
    return f" (task {task.get_name()!r}, coroutine {name}(){defined})"


class Loop(NetworkMethods, LoopCore, SocketMethods, events.AbstractEventLoop):
    """An asyncio event loop implemented in Rust."""

    # For a type checker, every public method has the signature typeshed
    # gives asyncio.AbstractEventLoop's (the borrowed network methods take
    # theirs from it, see _network.py), with one deliberate exception:
    #
    # call_soon, call_soon_threadsafe, call_later and call_at return
    # ferroloop.Handle and ferroloop.TimerHandle. Those are native types
    # with asyncio's public handle methods (cancel, cancelled, when,
    # get_context), but they are not asyncio.Handle/TimerHandle nor
    # subclasses of them: isinstance(loop.call_later(1, f),
    # asyncio.TimerHandle) is False. typeshed's AbstractEventLoop promises
    # asyncio's classes, so these are incompatible overrides (hence the
    # ignores below), declared anyway because they say what the loop really
    # returns: `h: asyncio.TimerHandle = loop.call_later(1, f)` is an error,
    # as it would be a lie at runtime. Code typed against AbstractEventLoop
    # still sees asyncio's classes and should use only the shared methods.

    # The same methods as LoopCore's, through leaner native entry points
    # (see src/event_loop/fast_calls.rs); _native.pyi types them as LoopCore's.
    call_soon = _call_soon_fastcall  # type: ignore[assignment]
    call_later = _call_later_fastcall  # type: ignore[assignment]
    call_at = _call_at_fastcall  # type: ignore[assignment]
    if TYPE_CHECKING:
        # LoopCore's, as at runtime; declared here only so that the checker
        # reports the incompatible override on this line.
        call_soon_threadsafe = LoopCore.call_soon_threadsafe  # type: ignore[assignment]

    def __init__(self) -> None:
        try:
            watchdog_threshold = _watchdog.threshold_from_environment()
        except ValueError:
            self._close_native()  # a half-built loop must not warn as unclosed later
            raise
        self._default_executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._executor_shutdown_called = False
        self._exception_handler: Optional[_ExceptionHandler] = None
        self.slow_callback_duration = 0.1
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._signal_handlers: dict[int, events.Handle] = {}
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_depth = 0
        self._coroutine_origin_tracking_saved_depth: Optional[int] = None
        self._saved_wakeup_fd: Optional[int] = None
        self._stall_reporter: Optional[_watchdog.StallReporter] = None
        self._reported_at_shutdown: weakref.WeakSet[tasks.Task[Any]] = weakref.WeakSet()
        self._monitored = False
        self._init_network()
        self._run_clock = _metrics.register(self)
        self._last_metrics: Optional[LoopMetrics] = None
        self.set_debug(coroutines._is_debug_mode())  # type: ignore[attr-defined]  # private asyncio helper
        if watchdog_threshold is not None:
            self.enable_watchdog(watchdog_threshold)
        _monitor.start_for(self)

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__module__}.{self.__class__.__qualname__} "
            f"running={self.is_running()} closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # -- lifecycle ---------------------------------------------------------

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        """Run callbacks, timers and I/O until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(True)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._install_signal_wakeup()
            self._run_clock.start()
            self._run_forever_native()
        finally:
            self._run_clock.stop()
            self._restore_signal_wakeup()
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def run_until_complete(self, future: _AwaitableLike[_T]) -> _T:
        """Run the loop until ``future`` (a future, task, coroutine or other
        awaitable, wrapped in a task if needed) is done; return its result or
        raise its exception."""
        self._check_closed()
        self._check_running()
        if sys._getframe(1).f_code is _CANCEL_ALL_TASKS_CODE:
            self._report_shutdown_cancellations()
        new_task = not futures.isfuture(future)
        # typeshed's ensure_future does not list the generator-based
        # coroutines _AwaitableLike includes before 3.12; it accepts them.
        awaited = tasks.ensure_future(future, loop=self)  # type: ignore[arg-type, unused-ignore]
        if new_task:
            # The caller cannot see this task; do not warn if it is destroyed
            # pending because run_forever was interrupted.
            awaited._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio.Task's, private
        awaited.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and awaited.done() and not awaited.cancelled():
                # Mark the exception retrieved: it is the one being raised.
                awaited.exception()
            raise
        finally:
            awaited.remove_done_callback(_run_until_complete_cb)
        if not awaited.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return awaited.result()

    def close(self) -> None:
        """Close the loop: signal handlers removed, the watchdog stopped, the
        default executor shut down without waiting. Pending callbacks are
        dropped; a no-op if already closed."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        _process.release_children(self)
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        if self._tracking_tasks():
            self._report_pending_tasks()
        # The watchdog stops, but task tracking stays as it was: a pending
        # task collected after close still reports where it was created.
        self._stop_watchdog()
        self._stall_reporter = None
        self._close_native()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- debug mode --------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        """Turn debug mode on or off (slow callback warnings, wrong-thread
        checks, creation tracebacks of handles and coroutines)."""
        self._set_debug_flag(enabled)
        self._refresh_tracking()

    def _refresh_tracking(self) -> None:
        """Debug mode, the watchdog or the monitor changed: re-apply task
        tracking, and coroutine origin tracking on the loop's thread (that
        setting is per thread).

        Task tracking records where and when each task is created, for the
        hygiene reports and the live view; it costs only ``create_task``
        a little, so it is on in debug mode, with the watchdog (unless
        ``track_tasks=False``) and with the monitor. Coroutine origin
        tracking costs every coroutine, so it stays asyncio's debug-mode
        feature.
        """
        reporter = self._stall_reporter
        track = bool(self.get_debug()) or (reporter is not None and reporter.track_tasks) or self._monitored
        if track != self._tracking_tasks():
            self._track_tasks(track, _INTERNAL_PREFIXES)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, True)

    def _origin_tracking_depth(self) -> int:
        """How many frames of each coroutine's creation site to record:
        asyncio's depth in debug mode, else none."""
        return constants.DEBUG_STACK_DEPTH if self.get_debug() else 0

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        depth = self._origin_tracking_depth() if enabled else 0
        if depth == self._coroutine_origin_tracking_depth:
            return
        if self._coroutine_origin_tracking_depth == 0:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
        if depth:
            sys.set_coroutine_origin_tracking_depth(depth)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth or 0)
        self._coroutine_origin_tracking_depth = depth
        self._coroutine_origin_tracking_enabled = depth > 0

    def _log_slow_callback(self, handle: Any, seconds: float) -> None:
        logger.warning("Executing %s took %.3f seconds%s", _format_handle(handle), seconds, _slow_callback_culprit(handle))

    def _report_pending_tasks(self) -> None:
        """Tasks still pending when the loop closes never finish: name them
        and where they were created (task hygiene, with tracking on)."""
        for task in tasks.all_tasks(self):
            if task in self._reported_at_shutdown:
                continue
            site = task_creation_site(task) or "unknown (created before tracking was on)"
            # The repr, not the task: a kept log record must not keep the task alive.
            _watchdog.logger.warning("Task still pending when the loop closed: %s, created at %s", repr(task), site)

    def _report_shutdown_cancellations(self) -> None:
        """asyncio.run and asyncio.Runner cancel the tasks still pending when
        the main coroutine returns: with the watchdog or debug mode on, say
        which, where each was and where it was created, once per task."""
        if self._stall_reporter is None and not self.get_debug():
            return
        for task in tasks.all_tasks(self):
            if task in self._reported_at_shutdown:
                continue
            self._reported_at_shutdown.add(task)
            coro = task.get_coro()
            name = getattr(coro, "__qualname__", type(coro).__name__)
            where = _monitor.suspended_at(task)
            site = task_creation_site(task) or "unknown (created before tracking was on)"
            _watchdog.logger.warning(
                "Task cancelled at shutdown, still pending when the main coroutine returned: %r (coroutine %s()%s), created at %s",
                task.get_name(),
                name,
                f" waiting at {where}" if where else "",
                site,
            )

    # -- stall watchdog ----------------------------------------------------

    def enable_watchdog(
        self,
        threshold: float = 0.1,
        *,
        callback: Optional[_watchdog.StallCallback] = None,
        track_tasks: Optional[bool] = None,
    ) -> None:
        """Report, while it happens, any callback or task step that keeps the
        loop busy for more than ``threshold`` seconds.

        Each stall is reported twice on the ``ferroloop`` logger: once while
        it is still going on (with the innermost line of the program's own
        code, what it blocks in, the task, its coroutine and the loop
        thread's stack), and once when it ends, with its total duration and
        a profile of the stack samples taken meanwhile. ``callback``, if
        given, receives the same records (``ferroloop.StallRecord`` dicts),
        called from the watchdog thread. ``ferroloop.set_own_code`` says
        which code is the program's.

        ``track_tasks`` (default: on, unless ``FERROLOOP_TRACK_TASKS=0``)
        also records where each task is created, so that task hygiene
        reports name the line; that costs ``create_task`` a little, while
        the watchdog's sampling costs the loop nothing.
        """
        if track_tasks is None:
            track_tasks = _watchdog.track_tasks_from_environment()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number of seconds, not {type(threshold).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {callback!r}")
        self._check_closed()
        reporter = _watchdog.StallReporter(self, float(threshold), callback, bool(track_tasks))
        self._start_watchdog(float(threshold), reporter)
        self._stall_reporter = reporter
        self._refresh_tracking()

    def disable_watchdog(self) -> None:
        """Stop the stall watchdog (a no-op if it is not running)."""
        self._stop_watchdog()
        self._stall_reporter = None
        if not self.is_closed():
            self._refresh_tracking()

    @property
    def watchdog_threshold(self) -> Optional[float]:
        """The watchdog's threshold in seconds, or None when it is off."""
        return self._stall_reporter.threshold if self._stall_reporter is not None and self._watchdog_running() else None

    # -- live view ---------------------------------------------------------

    def diagnostics(self) -> LoopDiagnostics:
        """What ``python -m ferroloop ps`` shows for this loop: its tasks
        (name, state, age, what each awaits and where), metrics, and stall
        state, as a ``ferroloop.LoopDiagnostics`` dict. Task ages are known
        while the monitor is on."""
        return _monitor.diagnostics(self)

    # -- metrics -----------------------------------------------------------

    def metrics(self) -> LoopMetrics:
        """The loop's metrics: loop lag (p50, p99, max), utilisation (busy
        share of running time), callbacks per second (since the previous
        call), tasks alive, stalls, and transport counters, as a
        ``ferroloop.LoopMetrics`` dict. Safe to call from any thread."""
        snapshot = _metrics.collect(self, self._last_metrics)
        self._last_metrics = snapshot
        return snapshot

    # -- exceptions --------------------------------------------------------

    def get_exception_handler(self) -> Optional[_ExceptionHandler]:
        """The handler set with set_exception_handler, or None for the
        default one."""
        return self._exception_handler

    def set_exception_handler(self, handler: Optional[_ExceptionHandler]) -> None:
        """Have call_exception_handler call ``handler(loop, context)``; None
        restores default_exception_handler."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: _Context) -> None:
        """Log ``context`` (a message, an exception and what failed) on the
        ``asyncio`` logger, in asyncio's format."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (type(exception), exception, exception.__traceback__) if exception is not None else False
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                value = "Object created at (most recent call last):\n" + "".join(traceback.format_list(value)).rstrip()
            elif key == "handle_traceback":
                value = "Handle created at (most recent call last):\n" + "".join(traceback.format_list(value)).rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: _Context) -> None:
        """Report an error: pass ``context`` to the custom exception handler,
        or to default_exception_handler. For a task's error the context gains
        ``task_created_at`` when task tracking recorded the creation site."""
        # A context that is not a dict fails inside the handlers below, where
        # asyncio reports it; only the creation-site note needs a dict.
        task = _task_of(context) if isinstance(context, dict) else None
        if task is not None and "source_traceback" not in context and "task_created_at" not in context:
            site = task_creation_site(task)
            if site is not None:
                context["task_created_at"] = site
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            handler_context = _handler_context(context) if _HANDLER_RUNS_IN_CONTEXT else None
            if handler_context is not None:
                handler_context.run(self._exception_handler, self, context)
            else:
                self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {"message": "Unhandled error in exception handler", "exception": exc, "context": context}
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # -- async generators ----------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        """Close the asynchronous generators still open on this loop
        (``aclose()`` on each); later ones get a ResourceWarning."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- executors -----------------------------------------------------------

    def run_in_executor(
        self, executor: Optional[concurrent.futures.Executor], func: Callable[[Unpack[_Ts]], _T], *args: Unpack[_Ts]
    ) -> futures.Future[_T]:
        """Call ``func(*args)`` in ``executor`` (None: the loop's default
        thread pool, created on first use); returns an asyncio future."""
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def _check_callback(self, callback: Any, method: str) -> None:
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def set_default_executor(self, executor: concurrent.futures.Executor) -> None:
        """Use ``executor`` (a ThreadPoolExecutor) for run_in_executor(None, ...)."""
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: Optional[float] = None) -> None:
        """Shut the default executor down, waiting (up to ``timeout``
        seconds, default without limit) for its threads to finish."""
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(future,))
        thread.start()
        try:
            await future
        finally:
            thread.join(timeout)
        if thread.is_alive():
            warnings.warn(
                "The executor did not finishing joining its threads within "
                f"{timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)

    def _do_shutdown(self, future: futures.Future[None]) -> None:
        try:
            executor = self._default_executor
            if executor is not None:
                executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(futures._set_result_unless_cancelled, future, None)  # type: ignore[attr-defined]
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # -- name resolution -----------------------------------------------------

    def _getaddrinfo_debug(
        self,
        host: Union[bytes, str, None],
        port: Union[bytes, str, int, None],
        family: int,
        type: int,
        proto: int,
        flags: int,
    ) -> list[Any]:
        parts = [f"{host}:{port!r}"]  # type: ignore[str-bytes-safe]  # asyncio's message, b'...' for bytes
        for label, value in (("family", family), ("type", type), ("proto", proto), ("flags", flags)):
            if value:
                parts.append(f"{label}={value!r}")
        description = ", ".join(parts)
        logger.debug("Get address info %s", description)
        started = self.time()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        elapsed = self.time() - started
        message = f"Getting address info {description} took {elapsed * 1e3:.3f}ms: {addrinfo!r}"
        if elapsed >= self.slow_callback_duration:
            logger.info(message)
        else:
            logger.debug(message)
        return addrinfo

    if TYPE_CHECKING:
        # typeshed's declaration itself: the result type is spelled in ways
        # that differ between typeshed versions and are not compatible with
        # one another (a list is invariant), so no one annotation below
        # would match every checker's AbstractEventLoop.
        getaddrinfo = events.AbstractEventLoop.getaddrinfo
    else:

        async def getaddrinfo(
            self,
            host: Union[bytes, str, None],
            port: Union[bytes, str, int, None],
            *,
            family: int = 0,
            type: int = 0,
            proto: int = 0,
            flags: int = 0,
        ) -> list[Any]:
            """``socket.getaddrinfo`` in the default executor (logged with its
            duration in debug mode)."""
            resolve = self._getaddrinfo_debug if self.get_debug() else socket.getaddrinfo
            return await self.run_in_executor(None, resolve, host, port, family, type, proto, flags)

    async def getnameinfo(
        self, sockaddr: Union[tuple[str, int], tuple[str, int, int, int]], flags: int = 0
    ) -> tuple[str, str]:
        """``socket.getnameinfo`` in the default executor."""
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # -- signals -------------------------------------------------------------

    def _install_signal_wakeup(self) -> None:
        """While the loop runs on the main thread, a signal wakes its poll so
        that Python-level handlers (Ctrl-C, ``signal.signal``) run at once."""
        if self._signal_handlers or threading.current_thread() is not threading.main_thread():
            return
        try:
            self._saved_wakeup_fd = signal.set_wakeup_fd(self._signal_wakeup_fd(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            self._saved_wakeup_fd = None

    def _restore_signal_wakeup(self) -> None:
        if self._signal_handlers or self._saved_wakeup_fd is None:
            return
        saved, self._saved_wakeup_fd = self._saved_wakeup_fd, None
        try:
            signal.set_wakeup_fd(saved)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(%s) failed: %s", saved, exc)

    def _check_signal(self, sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in _VALID_SIGNALS:
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives
        (main thread only; replaces a handler set for ``sig`` before)."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if sig == _SIGCHLD and _process.owns_sigchld_handler(self):
            # The program takes SIGCHLD over from the loop's child reaping.
            _process.release_sigchld_children(self)
        try:
            # Raises ValueError off the main thread, which is the check
            # asyncio relies on too.
            previous = signal.set_wakeup_fd(self._signal_wakeup_fd(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        if not self._signal_handlers and self._saved_wakeup_fd is None and previous != self._signal_wakeup_fd():
            self._saved_wakeup_fd = previous
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._release_signal_wakeup()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        self._set_has_signal_handlers(True)

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler of ``sig`` and restore the signal's default
        disposition; False if it had none."""
        self._check_signal(sig)
        if sig == _SIGCHLD and _process.owns_sigchld_handler(self):
            _process.release_sigchld_children(self)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler: Any = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            self._set_has_signal_handlers(False)
            self._release_signal_wakeup()
        return True

    def _release_signal_wakeup(self) -> None:
        if self.is_running() and threading.current_thread() is threading.main_thread():
            # run_forever keeps the wakeup fd until it returns.
            return
        saved, self._saved_wakeup_fd = self._saved_wakeup_fd, None
        try:
            signal.set_wakeup_fd(saved if saved is not None else -1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _handle_signals(self, signums: bytes) -> None:
        """Called by the native loop with the signal numbers read from the
        wakeup fd; schedules the handlers registered for them."""
        for signum in signums:
            handle = self._signal_handlers.get(signum)
            if handle is None or handle._cancelled:
                continue
            self.call_soon(handle._run)
