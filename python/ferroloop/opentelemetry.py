"""OpenTelemetry metrics and stall events for ferroloop loops.

    pip install 'ferroloop[opentelemetry]'      # opentelemetry-api

    import ferroloop.opentelemetry
    handle = ferroloop.opentelemetry.instrument()   # every ferroloop loop
    ...
    handle.uninstrument()

Metrics are observable instruments of the ``ferroloop`` meter, read from
``Loop.metrics()``'s figures whenever the SDK's reader collects, each with
the loop's number as the ``ferroloop.loop`` attribute:

=============================  ===================  =====================
``ferroloop.loop.lag``         gauge, s             ``ferroloop.lag.statistic``: p50, p99, max
``ferroloop.loop.utilisation`` gauge, 1             busy share since the previous collection
``ferroloop.loop.callbacks``   counter              callbacks and task steps run
``ferroloop.loop.tasks``       up-down counter      tasks not yet done
``ferroloop.loop.stalls``      counter              stalls the watchdog reported
``ferroloop.loop.network.io``  counter, By          ``network.io.direction``: receive, transmit
``ferroloop.loop.transports``  up-down counter      open socket and pipe transports
=============================  ===================  =====================

A stall (a callback blocking the loop past the watchdog's threshold) is an
event named ``ferroloop.stall`` while it goes on and ``ferroloop.stall_end``
when it is over, with its culprit, task, coroutine, location, duration and
stack as attributes. It goes on the span that is current in the stalled
task, when there is one that records (found through ``Task.get_context()``,
Python 3.12+, or in debug mode through the running handle's context);
otherwise it is a log record with that ``event_name`` through the logs API
of ``opentelemetry-api`` (``opentelemetry._logs``, which that package still
marks as in development). Stalls need the watchdog: loops without one get
it with ``instrument(watchdog=0.1)``.

The module imports without OpenTelemetry; ``instrument()`` then raises
ImportError.
"""

from __future__ import annotations

import importlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, cast

from . import _metrics, _monitor, _watchdog
from ._native import __version__

if TYPE_CHECKING:
    from ._loop import Loop
    from ._metrics import LoopMetrics
    from ._watchdog import StallRecord

METER_NAME = "ferroloop"
STALL_EVENT = "ferroloop.stall"
STALL_END_EVENT = "ferroloop.stall_end"
_STACK_LIMIT = 50


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            "ferroloop.opentelemetry needs opentelemetry-api: pip install 'ferroloop[opentelemetry]'"
        ) from exc


def culprit(record: "StallRecord") -> str:
    """Who stalled the loop, in one line: the record's own ``culprit`` when
    the watchdog names one, else the task and its coroutine, else the
    callback's innermost frame."""
    named: Any = record.get("culprit")
    if named:
        filename, lineno, function = named
        described = f"{function}() at {filename}:{lineno}"
        if record.get("blocking_kind"):
            described += f" ({record['blocking_kind']})"
        if record.get("task") is not None:
            described += f"; task {record['task']!r}"
        return described
    stack = record.get("stack") or []
    innermost = f"{stack[-1][2]}() at {stack[-1][0]}:{stack[-1][1]}" if stack else None
    task = record.get("task")
    if task is not None:
        described = f"task {task!r}"
        if record.get("coroutine"):
            described += f" (coroutine {record['coroutine']}() at {record.get('coroutine_location')})"
        blocking = f"{stack[-1][0]}:{stack[-1][1]}" if stack else None
        if innermost and blocking != record.get("coroutine_location"):
            described += f", blocking in {innermost}"
        return described
    return f"callback {innermost}" if innermost else "unknown callback"


def stall_attributes(record: "StallRecord", loop_number: int) -> dict[str, Any]:
    """The event's attributes (OpenTelemetry takes no None values)."""
    attributes: dict[str, Any] = {
        "ferroloop.loop": loop_number,
        "ferroloop.stall.culprit": culprit(record),
        "ferroloop.stall.duration": float(record.get("duration", 0.0)),
        "ferroloop.stall.threshold": float(record.get("threshold", 0.0)),
    }
    for key in ("task", "coroutine", "coroutine_location"):
        value = record.get(key)
        if value is not None:
            attributes[f"ferroloop.stall.{key}"] = str(value)
    stack = record.get("stack") or []
    if stack:
        attributes["code.stacktrace"] = "\n".join(
            f'  File "{filename}", line {lineno}, in {name}' + (f"\n    {line}" if line else "")
            for filename, lineno, name, line in stack[-_STACK_LIMIT:]
        )
    return attributes


def _otel_context_in(context: Any, otel_context_type: type) -> Any:
    """The OpenTelemetry context held by a contextvars.Context, if any."""
    for value in context.values():
        if isinstance(value, otel_context_type):
            return value
    return None


class Instrumentation:
    """What ``instrument()`` set up; ``uninstrument()`` takes it down."""

    def __init__(
        self,
        loop: Optional["Loop"],
        meter_provider: Optional[Any],
        logger_provider: Optional[Any],
        watchdog: Optional[float],
    ) -> None:
        metrics_api = _import("opentelemetry.metrics")
        self._trace = _import("opentelemetry.trace")
        self._otel_context_type: type = _import("opentelemetry.context.context").Context
        self._observation = metrics_api.Observation
        try:
            logs_api: Any = importlib.import_module("opentelemetry._logs")
        except ImportError:  # opentelemetry-api before the logs API
            logs_api = None
        self._logs = logs_api
        self._logger = (
            logs_api.get_logger(METER_NAME, __version__, logger_provider=logger_provider) if logs_api is not None else None
        )
        self._only: Optional[weakref.ReferenceType[Loop]] = weakref.ref(loop) if loop is not None else None
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._previous: weakref.WeakKeyDictionary[Loop, LoopMetrics] = weakref.WeakKeyDictionary()
        self._hooked: list[tuple[weakref.ReferenceType[_watchdog.StallReporter], Callable[..., object]]] = []
        self._active = True
        # Loop number -> the span a stall going on was reported on.
        self._stall_spans: dict[int, Any] = {}

        meter = metrics_api.get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self._instruments = [
            meter.create_observable_gauge("ferroloop.loop.lag", [self._lag], unit="s",
                                          description="How late the loop's recent timers fired (p50, p99) and the latest ever (max)."),
            meter.create_observable_gauge("ferroloop.loop.utilisation", [self._utilisation], unit="1",
                                          description="Busy share of the loop's running time since the previous collection."),
            meter.create_observable_counter("ferroloop.loop.callbacks", [self._total("callbacks_total")], unit="{callback}",
                                            description="Callbacks and task steps the loop has run."),
            meter.create_observable_up_down_counter("ferroloop.loop.tasks", [self._total("tasks_alive")], unit="{task}",
                                                    description="Tasks of the loop not yet done."),
            meter.create_observable_counter("ferroloop.loop.stalls", [self._total("stalls_total")], unit="{stall}",
                                            description="Stalls the watchdog reported."),
            meter.create_observable_counter("ferroloop.loop.network.io", [self._network_io], unit="By",
                                            description="Bytes read and written by the loop's socket transports."),
            meter.create_observable_up_down_counter("ferroloop.loop.transports", [self._total("open_transports")],
                                                    unit="{transport}", description="Socket and pipe transports not yet closed."),
        ]
        for each in self._loops():
            self._hook_stalls(each)
        if loop is None:
            _monitor.add_loop_observer(self._hook_stalls)

    # -- metrics ---------------------------------------------------------------

    def _loops(self) -> list["Loop"]:
        if not self._active:
            return []
        if self._only is not None:
            only = self._only()
            return [only] if only is not None and not only.is_closed() else []
        return sorted((cast("Loop", lp) for lp in list(_metrics._live_loops) if not lp.is_closed()), key=lambda lp: lp._run_clock.number)

    def _snapshots(self) -> Iterator[tuple["Loop", "LoopMetrics"]]:
        for loop in self._loops():
            yield loop, _metrics.collect(loop, None)

    def _attributes(self, snapshot: "LoopMetrics", **extra: str) -> dict[str, Any]:
        return {"ferroloop.loop": snapshot["loop"], **extra}

    def _lag(self, options: Any) -> Iterable[Any]:
        for _, snap in self._snapshots():
            for statistic, key in (("p50", "lag_p50_seconds"), ("p99", "lag_p99_seconds"), ("max", "lag_max_seconds")):
                yield self._observation(_metrics._value(snap, key), self._attributes(snap, **{"ferroloop.lag.statistic": statistic}))

    def _utilisation(self, options: Any) -> Iterable[Any]:
        # Over the time since this instrumentation's previous collection,
        # without moving the window of the program's own loop.metrics().
        for loop in self._loops():
            with self._lock:
                snap = _metrics.collect(loop, self._previous.get(loop))
                self._previous[loop] = snap
            yield self._observation(snap["utilisation"], self._attributes(snap))

    def _total(self, key: str) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            for _, snap in self._snapshots():
                yield self._observation(_metrics._value(snap, key), self._attributes(snap))

        observe.__name__ = f"observe_{key}"
        return observe

    def _network_io(self, options: Any) -> Iterable[Any]:
        for _, snap in self._snapshots():
            yield self._observation(snap["bytes_received_total"], self._attributes(snap, **{"network.io.direction": "receive"}))
            yield self._observation(snap["bytes_sent_total"], self._attributes(snap, **{"network.io.direction": "transmit"}))

    # -- stalls ------------------------------------------------------------------

    def _hook_stalls(self, loop: "Loop") -> None:
        if loop.is_closed():
            return
        if loop._stall_reporter is None:
            if self._watchdog is None:
                return
            loop.enable_watchdog(self._watchdog)
        reporter = loop._stall_reporter
        if reporter is None:
            return
        previous = reporter.callback
        loop_ref = weakref.ref(loop)
        instrumentation = weakref.ref(self)

        def on_stall(record: "StallRecord") -> None:
            owner, stalled = instrumentation(), loop_ref()
            if owner is not None and stalled is not None and owner._active:
                owner._emit(stalled, record)
            if previous is not None:
                previous(record)

        on_stall.__wrapped__ = previous  # type: ignore[attr-defined]
        reporter.callback = on_stall
        self._hooked.append((weakref.ref(reporter), on_stall))

    def _current_span(self, loop: "Loop") -> Any:
        """The recording span current in the stalled task (or callback)."""
        import asyncio

        contexts = []
        task = asyncio.current_task(loop)
        get_context = getattr(task, "get_context", None)  # Python 3.12+
        if get_context is not None:
            contexts.append(get_context())
        handle = loop._current_handle  # kept in debug mode
        if handle is not None:
            contexts.append(handle.get_context())
        for context in contexts:
            otel_context = _otel_context_in(context, self._otel_context_type)
            if otel_context is not None:
                span = self._trace.get_current_span(otel_context)
                if span.is_recording():
                    return span
        return None

    def _emit(self, loop: "Loop", record: "StallRecord") -> None:
        name = STALL_EVENT if record["event"] == "stall" else STALL_END_EVENT
        attributes = stall_attributes(record, loop._run_clock.number)
        if record["event"] == "stall":
            span = self._current_span(loop)
            self._stall_spans[loop._run_clock.number] = span
        else:
            # The end is reported once the callback returned: the span is
            # the one the stall happened in.
            span = self._stall_spans.pop(loop._run_clock.number, None)
        if span is not None and span.is_recording():
            span.add_event(name, attributes)
            return
        if self._logger is None or self._logs is None:
            return
        severity = self._logs.SeverityNumber.WARN
        body = _watchdog.format_record(record)
        try:
            log_record = self._logs.LogRecord(event_name=name, body=body, attributes=attributes,
                                              severity_number=severity, severity_text="WARN")
        except TypeError:  # an API without event names
            log_record = self._logs.LogRecord(body=body, attributes={**attributes, "event.name": name},
                                              severity_number=severity, severity_text="WARN")
        self._logger.emit(log_record)

    # -- the end -----------------------------------------------------------------

    def uninstrument(self) -> None:
        """Stop observing and reporting (the watchdogs stay on)."""
        if not self._active:
            return
        self._active = False
        _monitor.remove_loop_observer(self._hook_stalls)
        for reporter_ref, hook in self._hooked:
            reporter = reporter_ref()
            if reporter is not None and reporter.callback is hook:
                reporter.callback = hook.__wrapped__  # type: ignore[attr-defined]
        self._hooked.clear()


def instrument(
    loop: Optional["Loop"] = None,
    *,
    meter_provider: Optional[Any] = None,
    logger_provider: Optional[Any] = None,
    watchdog: Optional[float] = None,
) -> Instrumentation:
    """Report ``loop``'s metrics and stalls to OpenTelemetry (default: every
    ferroloop loop of the process, those created later included).

    ``meter_provider`` and ``logger_provider`` default to the global ones.
    ``watchdog``, in seconds, turns the stall watchdog on in loops that do
    not have it (stall events need it). Raises ImportError without
    ``opentelemetry-api``."""
    return Instrumentation(loop, meter_provider, logger_provider, watchdog)
