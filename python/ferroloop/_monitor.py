"""The live view: a process's loops and tasks, served on a private Unix socket.

``FERROLOOP_MONITOR=1`` (or a socket path) makes the first ferroloop loop of
a process start a monitor thread; under ``python -m ferroloop`` it is on
unless ``FERROLOOP_MONITOR=0``, and a process started otherwise can let the
tools switch it on later (``allow_attach``, see ``_attach``). It answers
``python -m ferroloop ps PID`` and ``top PID`` with a JSON snapshot of every
open loop: its tasks (name, state, age, what each awaits and where), the
tasks that finished lately, its metrics, and whether it is stalled; and
``cancel PID TASK`` by cancelling the task. The thread is separate from the
loop, so it answers while the loop is stuck in a blocking call or in CPU
work (the interpreter hands it the GIL within its switch interval). The
socket lives in a directory only the owning user can enter and is itself
mode 0600; nothing listens on the network.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import socket
import stat
import threading
import time
from typing import Any, Callable, Literal, Optional, Protocol, Sequence, TypedDict, cast

from . import _culprit, _task_history, _watchdog
from ._metrics import LoopMetrics, MeteredLoop
from ._task_history import FinishedTask
from ._watchdog import StallRecord



class MonitoredLoop(MeteredLoop, Protocol):
    """What the live view reads and sets on a loop (a ``ferroloop.Loop``)."""

    _monitored: bool

    def is_running(self) -> bool: ...
    def metrics(self) -> LoopMetrics: ...
    def _refresh_tracking(self) -> None: ...
    def _activity(self) -> tuple[int, int, int]: ...


class TaskInfo(TypedDict):
    """One task of ``LoopDiagnostics["tasks"]``."""

    id: int
    """``id()`` of the task: what ``python -m ferroloop cancel`` takes
    besides the name (ps shows it in hex)."""
    name: str
    """The task's name."""
    state: Literal["running", "pending", "done"]
    """``"running"`` for the task whose step runs right now."""
    age: Optional[float]
    """Seconds since the task was created, when task tracking recorded it."""
    coroutine: str
    """Qualified name of the task's coroutine."""
    awaiting: Optional[str]
    """What a pending task waits for: ``task 'name'``, ``sleep()``,
    ``future``... (None unless pending)."""
    where: Optional[str]
    """``file:line`` where the task is: for the running task, the innermost
    frame of the program's own code on the loop thread's stack; for a
    suspended one, the innermost coroutine of the program's own code it
    awaits through (else the deepest that is not asyncio's)."""


class LoopDiagnostics(TypedDict):
    """What ``Loop.diagnostics()`` returns (and ``python -m ferroloop ps``
    shows, one per loop)."""

    loop: int
    """The loop's number in this process (as in its metrics)."""
    running: bool
    """Whether the loop is running."""
    stalled: bool
    """Whether the watchdog reports a stall going on (for the live view: or
    the loop ran one callback throughout a short probe)."""
    watchdog: bool
    """Whether the stall watchdog is on."""
    stall: Optional[StallRecord]
    """The stall going on, its duration brought up to date, or None. Without
    the watchdog, a record of what the live view's probe saw running
    throughout (its duration a lower bound)."""
    metrics: LoopMetrics
    """``Loop.metrics()``."""
    tasks: list[TaskInfo]
    """The loop's tasks not yet collected, the running one first, then the
    oldest first."""
    finished: list[FinishedTask]
    """The last tasks to finish, the most recent first, since the view
    started recording (at start with FERROLOOP_MONITOR, else at its first
    request); empty for a loop nobody watches."""

ENV_VARIABLE = "FERROLOOP_MONITOR"
_REQUEST_LIMIT = 4096
_STALL_PROBE_SECONDS = 0.05
# How long a cancel request waits for the loop to run task.cancel().
_CANCEL_DELIVERY_SECONDS = 1.0
CANCEL_MESSAGE = "cancelled by python -m ferroloop cancel"

_lock = threading.Lock()
_server: Optional["MonitorServer"] = None
_on_by_default = False
# Whether the loops record task ages and finished tasks for the view: from
# the start with FERROLOOP_MONITOR, else from the first request on (it
# costs create_task and every task's end a little).
_watching = False
_loop_observers: list[Callable[[Any], None]] = []


def default_socket_path(pid: int) -> str:
    return os.path.join(f"/tmp/ferroloop-{os.getuid()}", f"{pid}.sock")


def turn_on_by_default() -> None:
    """Serve the view without FERROLOOP_MONITOR (``python -m ferroloop``
    does this; ``FERROLOOP_MONITOR=0`` still turns it off). The loops start
    recording task ages and finished tasks when the view is first asked for."""
    global _on_by_default
    _on_by_default = True


def requested_path(explicit_only: bool = False) -> Optional[str]:
    """The socket path FERROLOOP_MONITOR asks for (or, unless
    ``explicit_only``, the default one when the monitor is on by default),
    or None when it is off."""
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if value == "" and _on_by_default and not explicit_only:
        value = "1"
    if value in ("", "0"):
        return None
    if value == "1":
        return default_socket_path(os.getpid())
    return value


def private_directory(path: str) -> None:
    """Create the socket's directory for this user only, or check that an
    existing one is ours and closed to others."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(
                f"ferroloop monitor: {directory} must be a directory owned by uid {os.getuid()} "
                "and closed to group and others"
            ) from None


def sweep_stale_files(directory: str) -> None:
    """Remove the sockets and attach notes of this user's processes that
    are gone without cleaning up (killed by a signal)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem, dot, kind = name.partition(".")
        if not dot or kind not in ("sock", "attach") or not stem.isdigit() or int(stem) == os.getpid():
            continue
        try:
            os.kill(int(stem), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        except OSError:
            pass  # alive, or not ours to judge


def add_loop_observer(observer: Callable[[Any], None]) -> None:
    """Have ``observer(loop)`` called with each ferroloop loop created from
    now on, at the end of its construction."""
    _loop_observers.append(observer)


def remove_loop_observer(observer: Callable[[Any], None]) -> None:
    if observer in _loop_observers:
        _loop_observers.remove(observer)


def start_for(loop: asyncio.AbstractEventLoop) -> None:
    """Called by every new loop: start the process's monitor if
    FERROLOOP_MONITOR asks for one (or it is on by default), and tell the
    loop observers."""
    for observer in list(_loop_observers):
        observer(loop)
    path = requested_path()
    if path is None:
        if _watching:  # the monitor runs, started by an attach
            _monitor_loop(loop)
        return
    start_server(path, watch=requested_path(explicit_only=True) is not None)
    if _watching:
        _monitor_loop(loop)


def _monitor_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Track the loop's task creation times and finished tasks for the view."""
    view = cast(MonitoredLoop, loop)
    if loop.is_closed():
        return
    view._monitored = True
    view._refresh_tracking()
    _task_history.start_recording(loop)


def start_server(path: str, watch: bool = True) -> "MonitorServer":
    """Start the process's monitor on ``path``, unless one runs already;
    with ``watch``, have every loop record for it from now on."""
    global _server
    with _lock:
        if _server is None:
            _server = MonitorServer(path)
            _server.start()
            if path == default_socket_path(os.getpid()):
                sweep_stale_files(os.path.dirname(path))
        server = _server
    if watch:
        watch_all_loops()
    return server


def watch_all_loops() -> None:
    """Have every open loop, and the loops created later, record task ages
    and finished tasks for the view."""
    from ._metrics import _live_loops

    global _watching
    _watching = True
    for loop in list(_live_loops):
        if not cast(MonitoredLoop, loop)._monitored:
            _monitor_loop(loop)


class MonitorServer:
    def __init__(self, path: str) -> None:
        self.path = path
        private_directory(path)
        if os.path.exists(path):
            os.unlink(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous_umask = os.umask(0o177)  # the socket is created 0600
        try:
            self._socket.bind(path)
        finally:
            os.umask(previous_umask)
        self._socket.listen(8)
        self._bound = os.stat(path)
        self._owner_pid = os.getpid()
        self._thread = threading.Thread(target=self._serve, name="ferroloop-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        atexit.register(self.remove)

    def remove(self) -> None:
        """Close the socket and remove its path, unless it belongs to another
        process by now (a forked child inherits this object, not the path)."""
        if os.getpid() != self._owner_pid:
            return
        self._socket.close()
        try:
            current = os.stat(self.path)
        except OSError:
            return
        if (current.st_dev, current.st_ino) == (self._bound.st_dev, self._bound.st_ino):
            os.unlink(self.path)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                try:
                    connection.settimeout(5)
                    request = _read_request(connection)
                    connection.sendall(json.dumps(respond(request)).encode() + b"\n")
                except OSError:
                    continue


def _read_request(connection: socket.socket) -> str:
    """One request line (a client may send it in pieces)."""
    data = b""
    while b"\n" not in data and len(data) < _REQUEST_LIMIT:
        chunk = connection.recv(_REQUEST_LIMIT - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _open_loops() -> list[asyncio.AbstractEventLoop]:
    from ._metrics import _live_loops

    return sorted((lp for lp in list(_live_loops) if not lp.is_closed()), key=lambda lp: cast(MonitoredLoop, lp)._run_clock.number)


def respond(request: str) -> dict[str, Any]:
    if not _watching:
        watch_all_loops()
    command, _, argument = request.partition(" ")
    if command == "cancel" and argument.strip():
        return cancel(argument.strip())
    if request not in ("ps", "top"):
        return {"error": f"unknown request {request!r}; expected 'ps', 'top' or 'cancel TASK'"}
    loops = _open_loops()
    before = {id(lp): cast(MonitoredLoop, lp)._activity() for lp in loops}
    for lp in loops:
        cast(MonitoredLoop, lp)._current_callback_age()  # starts timing the running callback, if any
    time.sleep(_STALL_PROBE_SECONDS)
    return {"pid": os.getpid(), "loops": [diagnostics(lp, before.get(id(lp))) for lp in loops]}


def _task_id(text: str) -> Optional[int]:
    """A task id as ps shows it (hex with 0x) or in decimal."""
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def find_tasks(spec: str) -> list[tuple[asyncio.AbstractEventLoop, "asyncio.Task[Any]"]]:
    """The pending tasks of the process whose id or else whose name is ``spec``."""
    everything = [(lp, task) for lp in _open_loops() for task in asyncio.all_tasks(lp)]
    wanted_id = _task_id(spec)
    by_id = [(lp, task) for lp, task in everything if id(task) == wanted_id]
    if by_id:
        return by_id
    return [(lp, task) for lp, task in everything if task.get_name() == spec]


def cancel(spec: str) -> dict[str, Any]:
    """Cancel the task named (or with the id) ``spec``, on its loop's
    thread; waits a moment for the loop to do it."""
    found = find_tasks(spec)
    if not found:
        finished = [t for lp in _open_loops() for t in _task_history.recent(lp)]
        if any(t["name"] == spec or t["id"] == _task_id(spec) for t in finished):
            return {"error": f"task {spec!r} has already finished", "reason": "finished"}
        return {"error": f"no task {spec!r} (give a name or an id as ps shows it)", "reason": "unknown"}
    if len(found) > 1:
        ids = ", ".join(hex(id(task)) for _, task in found)
        return {"error": f"{len(found)} tasks are named {spec!r}; give one of their ids: {ids}", "reason": "ambiguous"}
    [(loop, task)] = found
    delivered = threading.Event()

    def cancel_on_the_loop() -> None:
        task.cancel(CANCEL_MESSAGE)
        delivered.set()

    loop.call_soon_threadsafe(cancel_on_the_loop)
    delivered.wait(_CANCEL_DELIVERY_SECONDS)
    return {
        "pid": os.getpid(),
        "loop": cast(MonitoredLoop, loop)._run_clock.number,
        "task": {"id": id(task), "name": task.get_name()},
        "delivered": delivered.is_set(),
        "running": loop.is_running(),
    }


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def _await_chain(coro: Any) -> list[Any]:
    """The coroutine and everything it awaits, outermost first."""
    chain = [coro]
    for _ in range(100):  # a guard against pathological await chains
        inner = getattr(chain[-1], "cr_await", None) or getattr(chain[-1], "gi_yieldfrom", None)
        if inner is None:
            break
        chain.append(inner)
    return chain


def _code_of(awaitable: Any) -> Any:
    return getattr(awaitable, "cr_code", None) or getattr(awaitable, "gi_code", None)


def _where(chain: list[Any]) -> Optional[str]:
    """The line the task is suspended at: in the innermost coroutine of the
    program's own code (see ``ferroloop.set_own_code``), else in the deepest
    one that is not asyncio's (``await asyncio.sleep(1)``, not the inside of
    sleep)."""
    where = own = None
    for awaitable in chain:
        code = _code_of(awaitable)
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if code is None or frame is None:
            continue
        if where is None or not code.co_filename.startswith(_ASYNCIO_DIR):
            where = f"{code.co_filename}:{frame.f_lineno}"
        if _culprit.is_own_frame(frame):
            own = f"{code.co_filename}:{frame.f_lineno}"
    return own or where


def suspended_at(task: asyncio.Task[Any]) -> Optional[str]:
    """``file:line`` where a pending task is suspended (see ``_where``)."""
    return _where(_await_chain(task.get_coro()))


def _running_where(loop: asyncio.AbstractEventLoop) -> Optional[str]:
    """Where the running task is now: the innermost frame of the program's
    own code on the loop thread's stack."""
    thread_id, frames = _watchdog._loop_thread_frames(loop)
    culprit = _culprit.culprit_of(frames)
    return f"{culprit.f_code.co_filename}:{culprit.f_lineno}" if culprit is not None else None


def _awaiting(task: asyncio.Task[Any], chain: list[Any]) -> str:
    waiter = getattr(task, "_fut_waiter", None)
    if isinstance(waiter, asyncio.Task):
        return f"task {waiter.get_name()!r}"
    # Name the first of asyncio's own coroutines in the chain (sleep(),
    # wait_for()...), which says more than the future it ends in.
    for awaitable in chain[1:]:
        code = _code_of(awaitable)
        if code is not None and code.co_filename.startswith(_ASYNCIO_DIR):
            return f"{getattr(awaitable, '__qualname__', code.co_name)}()"
    if waiter is not None:
        return "future"
    inner = chain[-1]
    return f"{getattr(inner, '__qualname__', type(inner).__name__)}()" if len(chain) > 1 else "-"


def describe_task(task: asyncio.Task[Any], running: Optional[asyncio.Task[Any]], now: float) -> TaskInfo:
    coro = task.get_coro()
    chain = _await_chain(coro)
    site = task.get_loop()._task_site(task)  # type: ignore[attr-defined]  # a ferroloop Loop's task
    created = site[3] if site is not None else None
    state: Literal["running", "pending", "done"]
    if task is running:
        state = "running"
    elif task.done():
        state = "done"
    else:
        state = "pending"
    return {
        "id": id(task),
        "name": task.get_name(),
        "state": state,
        "age": now - created if created is not None else None,
        "coroutine": getattr(coro, "__qualname__", type(coro).__name__),
        "awaiting": _awaiting(task, chain) if state == "pending" else None,
        "where": _where(chain),
    }


def diagnostics(loop: asyncio.AbstractEventLoop, earlier_activity: Optional[tuple[int, int, int]] = None) -> LoopDiagnostics:
    """The loop's state, as the live view shows it. ``earlier_activity`` is
    an ``_activity()`` sample taken a moment before, to tell a stall."""
    view = cast(MonitoredLoop, loop)
    now = time.monotonic()
    running_task = asyncio.current_task(loop) if loop.is_running() else None
    tasks = [describe_task(t, running_task, now) for t in asyncio.all_tasks(loop)]
    tasks.sort(key=lambda t: (t["state"] != "running", -(t["age"] or 0)))
    if tasks and tasks[0]["state"] == "running":
        tasks[0]["where"] = _running_where(loop) or tasks[0]["where"]
    phase, callbacks, _ = view._activity()
    stalled = (
        earlier_activity is not None
        and earlier_activity[0] == phase == 2
        and earlier_activity[1] == callbacks
    )
    reporter = view._stall_reporter
    stall = reporter.current_stall if reporter is not None else None
    if stall is not None:
        # The record was made when the stall crossed the threshold; it has
        # gone on since.
        stall = cast(StallRecord, dict(stall, duration=stall["duration"] + now - stall["reported_at"]))
    elif stalled:
        # No watchdog: describe what the probe saw running throughout.
        age = view._current_callback_age() or _STALL_PROBE_SECONDS
        stall = _watchdog.describe_stall(loop, age, _STALL_PROBE_SECONDS)
    return {
        "loop": view._run_clock.number,
        "running": loop.is_running(),
        "stalled": stalled or stall is not None,
        "watchdog": reporter is not None,
        "stall": stall,
        "metrics": view.metrics(),
        "tasks": tasks,
        "finished": _task_history.recent(loop),
    }


def query(pid: int, request: str = "ps", path: Optional[str] = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the monitor of process ``pid`` for its state."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(path or default_socket_path(pid))
        client.sendall(request.encode() + b"\n")
        chunks = []
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    if not chunks:
        # The process accepted and went away (it is exiting).
        raise ConnectionResetError(f"the monitor of pid {pid} closed without answering")
    state: dict[str, Any] = json.loads(b"".join(chunks))
    return state


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the last one is not padded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  " + "  ".join([*(str(cell).ljust(width) for cell, width in zip(row, widths)), str(row[-1])])
        for row in [header, *rows]
    ]


def render(state: dict[str, Any], with_metrics: bool = False) -> str:
    """The ps/top text of a monitor snapshot."""
    lines = []
    for loop in state.get("loops", []):
        status = "STALLED" if loop["stalled"] else ("running" if loop["running"] else "idle")
        lines.append(f"pid {state['pid']}  loop {loop['loop']}  {status}  tasks {len(loop['tasks'])}")
        stall = loop.get("stall")
        if stall:
            culprit = stall.get("culprit")
            where = f" in {culprit[2]}() at {culprit[0]}:{culprit[1]}" if culprit else ""
            if stall.get("blocking_kind"):
                where += f" ({stall['blocking_kind']})"
            task = f"; task {stall.get('task')!r} ({stall.get('coroutine')} at {stall.get('coroutine_location')})"
            # Without the watchdog the stall is timed from the probe on.
            bound = "" if loop["watchdog"] else "at least "
            lines.append(f"  stalled for {bound}{stall.get('duration', 0):.3f}s{where}{task if stall.get('task') else ''}")
        if with_metrics:
            m = loop["metrics"]
            # Only the watchdog counts stalls; without it the count is unknown.
            stalls = f"stalls {m['stalls_total']}" if loop["watchdog"] else "stalls - (watchdog off)"
            lines.append(
                f"  lag p50 {m['lag_p50_seconds'] * 1e3:.2f} ms  p99 {m['lag_p99_seconds'] * 1e3:.2f} ms"
                f"  max {m['lag_max_seconds'] * 1e3:.2f} ms"
                f"  current callback {m.get('current_callback_age_seconds', 0.0) * 1e3:.0f} ms"
                f"  utilisation {m['utilisation_total']:.0%}"
                f"  callbacks/s {m['callbacks_per_second']:,.0f}  {stalls}"
            )
            lines.append(
                f"  transports {m['open_transports']}  bytes in {m['bytes_received_total']:,}"
                f"  out {m['bytes_sent_total']:,}"
            )
        header = ("ID", "NAME", "STATE", "AGE", "AWAITING", "WHERE")
        rows: list[tuple[str, ...]] = [
            (hex(t["id"]), t["name"], t["state"], _age(t["age"]), t["awaiting"] or "-", t["where"] or "-")
            for t in loop["tasks"]
        ]
        lines.extend(_table(header, rows))
        finished = loop.get("finished") or []
        if finished:
            now = time.time()
            lines.append(f"  recently finished (last {len(finished)}, most recent first):")
            rows = [
                (hex(t["id"]), t["name"], t["outcome"], f"{_age(now - t['finished_at'])} ago", t["detail"] or "-")
                for t in finished
            ]
            lines.extend(_table(("ID", "NAME", "ENDED", "WHEN", "DETAIL"), rows))
    if not lines:
        lines.append(f"pid {state.get('pid')}: no open ferroloop loop")
    return "\n".join(lines)
