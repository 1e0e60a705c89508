"""Loop metrics: ``Loop.metrics()`` and OpenMetrics text for Prometheus.

The native loop counts callbacks and iterations, keeps the lateness of its
recent timers (loop lag) and the time it waited in poll; this module turns
those into rates, percentiles and a utilisation figure.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Protocol, TypedDict, cast

if TYPE_CHECKING:
    from ._watchdog import StallReporter


class LoopMetrics(TypedDict):
    """What ``Loop.metrics()`` returns. Times are in seconds; ``*_total``
    values count from the loop's creation; the two rates
    (``callbacks_per_second``, ``utilisation``) cover the time since the
    previous ``metrics()`` call (or since the loop was created)."""

    loop: int
    """The loop's number in this process (1 for the first loop created)."""
    taken_at: float
    """When the snapshot was taken, on ``time.monotonic()``'s clock."""
    uptime_seconds: float
    """Time since the loop was created."""
    running_seconds_total: float
    """Time spent inside run_forever."""
    busy_seconds_total: float
    """Running time spent outside poll (running callbacks)."""
    wait_seconds_total: float
    """Running time spent waiting in poll."""
    utilisation_total: float
    """Busy share of the running time, 0 to 1."""
    callbacks_total: int
    """Callbacks and task steps run."""
    iterations_total: int
    """Iterations of the event loop."""
    lag_p50_seconds: float
    """Median lateness of the last 2048 timers."""
    lag_p99_seconds: float
    """99th percentile lateness of the last 2048 timers."""
    lag_max_seconds: float
    """Latest a timer has fired."""
    lag_samples_total: int
    """Timers whose lateness was measured."""
    current_callback_age_seconds: float
    """How long the callback or task step running now has been running (0
    when the loop is not in one): the lag that whatever waits behind it has
    already accumulated, which ``lag_*`` only counts once timers fire. A
    lower bound: it is measured from when the watchdog (every tenth of its
    threshold) or an earlier ``metrics()`` call first saw that callback."""
    tasks_alive: int
    """Tasks of the loop not yet done (0 once it is closed)."""
    stalls_total: int
    """Stalls reported by the watchdog (0 without it)."""
    bytes_received_total: int
    """Bytes read by the loop's socket and pipe transports (TCP, Unix, UDP, pipes)."""
    bytes_sent_total: int
    """Bytes the loop's socket and pipe transports handed to the kernel."""
    open_transports: int
    """Socket and pipe transports not yet closed."""
    callbacks_per_second: float
    """Callbacks run per second since the previous call."""
    utilisation: float
    """Busy share of the running time since the previous call."""


class MeteredLoop(Protocol):
    """What metrics read of a loop (a ``ferroloop.Loop``)."""

    _run_clock: "RunClock"
    _stall_reporter: "Optional[StallReporter]"

    def is_closed(self) -> bool: ...
    def _metrics_snapshot(self) -> tuple[float, int, int, float, float, float, float, int]: ...
    def _io_totals(self) -> tuple[int, int]: ...
    def _current_callback_age(self) -> Optional[float]: ...
    def _open_transport_count(self) -> int: ...


_live_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
_loop_numbers = itertools.count(1)


class RunClock:
    """How long a loop has been running (inside run_forever), in total."""

    def __init__(self) -> None:
        self.number = next(_loop_numbers)
        self._accumulated = 0.0
        self._started: Optional[float] = None

    def start(self) -> None:
        self._started = time.monotonic()

    def stop(self) -> None:
        if self._started is not None:
            self._accumulated += time.monotonic() - self._started
            self._started = None

    def running_seconds(self) -> float:
        current = time.monotonic() - self._started if self._started is not None else 0.0
        return self._accumulated + current


def register(loop: asyncio.AbstractEventLoop) -> RunClock:
    _live_loops.add(loop)
    return RunClock()


def collect(loop: asyncio.AbstractEventLoop, previous: Optional[LoopMetrics]) -> LoopMetrics:
    """The loop's metrics now; rates are over the time since ``previous``."""
    view = cast(MeteredLoop, loop)
    uptime, callbacks, iterations, waited, lag_p50, lag_p99, lag_max, lag_samples = view._metrics_snapshot()
    running = view._run_clock.running_seconds()
    busy = max(running - waited, 0.0)
    reporter = view._stall_reporter
    received, sent = view._io_totals()
    snapshot: LoopMetrics = {
        "loop": view._run_clock.number,
        "taken_at": time.monotonic(),
        "uptime_seconds": uptime,
        "running_seconds_total": running,
        "busy_seconds_total": busy,
        "wait_seconds_total": waited,
        "utilisation_total": busy / running if running > 0 else 0.0,
        "callbacks_total": callbacks,
        "iterations_total": iterations,
        "lag_p50_seconds": lag_p50,
        "lag_p99_seconds": lag_p99,
        "lag_max_seconds": lag_max,
        "lag_samples_total": lag_samples,
        "current_callback_age_seconds": (view._current_callback_age() or 0.0) if not loop.is_closed() else 0.0,
        "tasks_alive": len(asyncio.all_tasks(loop)) if not loop.is_closed() else 0,
        "stalls_total": reporter.stalls if reporter is not None else 0,
        "bytes_received_total": received,
        "bytes_sent_total": sent,
        "open_transports": view._open_transport_count() if not loop.is_closed() else 0,
        # The rates, set below.
        "callbacks_per_second": 0.0,
        "utilisation": 0.0,
    }
    if previous:
        since_taken_at, since_callbacks = previous["taken_at"], previous["callbacks_total"]
        since_running, since_busy = previous["running_seconds_total"], previous["busy_seconds_total"]
    else:
        since_taken_at, since_callbacks, since_running, since_busy = snapshot["taken_at"] - uptime, 0, 0.0, 0.0
    interval = snapshot["taken_at"] - since_taken_at
    ran = running - since_running
    snapshot["callbacks_per_second"] = (callbacks - since_callbacks) / interval if interval > 0 else 0.0
    snapshot["utilisation"] = (busy - since_busy) / ran if ran > 0 else 0.0
    return snapshot


# (name, type, help, key in the metrics dict) in exposition order.
_FAMILIES = (
    ("ferroloop_callbacks", "counter", "Callbacks and task steps the loop has run.", "callbacks_total"),
    ("ferroloop_iterations", "counter", "Iterations of the event loop.", "iterations_total"),
    ("ferroloop_busy_seconds", "counter", "Running time spent outside poll.", "busy_seconds_total"),
    ("ferroloop_wait_seconds", "counter", "Running time spent waiting in poll.", "wait_seconds_total"),
    ("ferroloop_utilisation_ratio", "gauge", "Busy share of the running time since the loop was created.", "utilisation_total"),
    ("ferroloop_loop_lag_max_seconds", "gauge", "Latest a timer has fired.", "lag_max_seconds"),
    ("ferroloop_current_callback_age_seconds", "gauge", "How long the callback running now has been running (0 between callbacks).", "current_callback_age_seconds"),
    ("ferroloop_tasks", "gauge", "Tasks of the loop not yet done.", "tasks_alive"),
    ("ferroloop_stalls", "counter", "Stalls reported by the watchdog.", "stalls_total"),
    ("ferroloop_received_bytes", "counter", "Bytes read by the loop's socket and pipe transports (TCP, Unix, UDP, pipes).", "bytes_received_total"),
    ("ferroloop_sent_bytes", "counter", "Bytes the loop's socket and pipe transports handed to the kernel.", "bytes_sent_total"),
    ("ferroloop_transports", "gauge", "Socket and pipe transports not yet closed.", "open_transports"),
)


def _value(snapshot: LoopMetrics, key: str) -> object:
    values: Mapping[str, object] = snapshot
    return values[key]


def _number(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def openmetrics_text(loops: Optional[Iterable[asyncio.AbstractEventLoop]] = None) -> str:
    """OpenMetrics exposition of the given loops (default: every open
    ferroloop loop of this process). Serving it is up to the caller."""
    chosen = [lp for lp in (list(_live_loops) if loops is None else loops) if not lp.is_closed()]
    chosen.sort(key=lambda lp: cast(MeteredLoop, lp)._run_clock.number)
    snapshots = [collect(lp, None) for lp in chosen]
    lines = []
    for name, kind, help_text, key in _FAMILIES:
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"# HELP {name} {help_text}")
        suffix = "_total" if kind == "counter" else ""
        for snap in snapshots:
            lines.append(f'{name}{suffix}{{loop="{snap["loop"]}"}} {_number(_value(snap, key))}')
    lines.append("# TYPE ferroloop_loop_lag_seconds gauge")
    lines.append("# HELP ferroloop_loop_lag_seconds How late timers fired, over the loop's last 2048 timers.")
    for snap in snapshots:
        for quantile, key in (("0.5", "lag_p50_seconds"), ("0.99", "lag_p99_seconds")):
            lines.append(f'ferroloop_loop_lag_seconds{{loop="{snap["loop"]}",quantile="{quantile}"}} {_number(_value(snap, key))}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
