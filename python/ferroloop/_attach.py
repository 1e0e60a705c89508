"""Attaching the live view to a process that did not start its monitor.

A process opts in with ``ferroloop.allow_attach(signal.SIGUSR1)`` or
``FERROLOOP_ATTACH_SIGNAL=SIGUSR1`` (read when ferroloop is imported): it
then handles that signal by starting its monitor, and leaves a note next to
where the socket will be, in the same owner-only directory, naming the
signal. ``python -m ferroloop ps PID`` finds no socket, reads the note,
sends the signal and waits for the socket. A process without the note is
never sent anything: the signal it did not ask for would, by default, kill
it.

On Python 3.14+, ``--remote-exec`` has ``sys.remote_exec`` start the
monitor of a process that took no step at all (the debugger interface: same
user, ptrace allowed, remote debugging not disabled in the target). It runs
code in the target, so it is asked for explicitly, never tried by default.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from types import FrameType
from typing import Any, Callable, Optional, Union

from . import _monitor

ENV_VARIABLE = "FERROLOOP_ATTACH_SIGNAL"

_allowed: Optional[int] = None
_note_path: Optional[str] = None


def note_path(pid: int) -> str:
    return os.path.join(os.path.dirname(_monitor.default_socket_path(pid)), f"{pid}.attach")


def process_start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), which
    tells a process from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _on_attach_signal(signum: int, frame: Optional[FrameType]) -> None:
    # The handler interrupts whatever the main thread was doing; the
    # monitor starts from a thread of its own instead.
    threading.Thread(
        target=_monitor.start_server, args=(_monitor.default_socket_path(os.getpid()),),
        name="ferroloop-attach", daemon=True,
    ).start()


def parse_signal(value: Union[int, str]) -> signal.Signals:
    """``SIGUSR1``, ``USR1`` or a number, as a signal."""
    if isinstance(value, int):
        return signal.Signals(value)
    text = value.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


def allow_attach(signum: Union[int, str] = signal.SIGUSR1) -> None:
    """Let ``python -m ferroloop ps/top/cancel PID`` switch this process's
    monitor on later, by sending it ``signum`` (default SIGUSR1).

    Until then nothing runs and nothing listens; the process only handles
    the signal, and leaves a note in its user's private directory so that
    ferroloop's tools know they may send it. Call it from the main thread;
    a signal that already has a handler is refused (ValueError)."""
    global _allowed, _note_path
    chosen = parse_signal(signum)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("allow_attach() must be called from the main thread")
    current = signal.getsignal(chosen)
    if current not in (signal.SIG_DFL, None, _on_attach_signal):
        raise ValueError(f"{chosen.name} already has a handler ({current!r}); choose another signal")
    signal.signal(chosen, _on_attach_signal)
    if _allowed == chosen and _note_path is not None:
        return
    path = note_path(os.getpid())
    _monitor.private_directory(path)
    note = {"pid": os.getpid(), "signal": int(chosen), "started": process_start_time(os.getpid())}
    descriptor = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as note_file:
        json.dump(note, note_file)
    os.replace(path + ".tmp", path)
    if _note_path is None:
        atexit.register(_remove_note, os.getpid())
    _allowed, _note_path = chosen, path


def _remove_note(owner_pid: int) -> None:
    # A forked child inherits the registration, not the note.
    if os.getpid() != owner_pid or _note_path is None:
        return
    try:
        os.unlink(_note_path)
    except OSError:
        pass


def allow_attach_from_environment() -> None:
    """``FERROLOOP_ATTACH_SIGNAL=SIGUSR1``: allow_attach() at import."""
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if not value or value == "0" or _allowed is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread
    try:
        allow_attach(value)
    except (ValueError, OSError) as exc:
        warnings.warn(f"{ENV_VARIABLE}={value!r} ignored: {exc}", RuntimeWarning, stacklevel=2)


# -- the tools' side -----------------------------------------------------------


def read_note(pid: int) -> Optional[signal.Signals]:
    """The signal process ``pid`` asked to be attached with, if its note is
    there, is ours, and is its own (not a note left by an earlier process
    with the same pid)."""
    path = note_path(pid)
    try:
        info = os.lstat(path)
        if info.st_uid != os.getuid():
            return None
        with open(path) as note_file:
            note: dict[str, Any] = json.load(note_file)
    except (OSError, ValueError):
        return None
    started = note.get("started")
    if started is not None and started != process_start_time(pid):
        return None
    try:
        return signal.Signals(int(note["signal"]))
    except (KeyError, TypeError, ValueError):
        return None


_REMOTE_SCRIPT = """\
import sys
if "ferroloop" in sys.modules:
    import ferroloop._monitor, os
    ferroloop._monitor.start_server(ferroloop._monitor.default_socket_path(os.getpid()))
"""


def _remote_exec(pid: int) -> bool:
    """Python 3.14+: run the monitor's start in process ``pid`` through
    ``sys.remote_exec``. (Untested here: no 3.14 interpreter.)"""
    remote_exec: Optional[Callable[[int, str], None]] = getattr(sys, "remote_exec", None)
    if remote_exec is None:
        return False
    directory = os.path.dirname(_monitor.default_socket_path(pid))
    _monitor.private_directory(os.path.join(directory, "x"))
    descriptor, script = tempfile.mkstemp(prefix=f"attach-{pid}-", suffix=".py", dir=directory)
    with os.fdopen(descriptor, "w") as script_file:
        script_file.write(_REMOTE_SCRIPT)
    try:
        remote_exec(pid, script)
    except (OSError, RuntimeError, ValueError, PermissionError):
        os.unlink(script)
        return False
    # The target reads the script at its next safe point; it is removed
    # once the socket shows up (or the wait gives up).
    _pending_scripts.append(script)
    return True


_pending_scripts: list[str] = []


def _clean_scripts() -> None:
    while _pending_scripts:
        try:
            os.unlink(_pending_scripts.pop())
        except OSError:
            pass


def remote_exec_available() -> bool:
    return hasattr(sys, "remote_exec")


def attach(pid: int, timeout: float = 5.0, remote_exec: bool = False) -> str:
    """Switch on the monitor of a process that allowed it (or, with
    ``remote_exec``, through ``sys.remote_exec``); returns how ("signal
    SIGUSR1" or "sys.remote_exec"). Raises LookupError when there is no
    way, TimeoutError when its socket did not appear."""
    socket_path = _monitor.default_socket_path(pid)
    chosen = read_note(pid)
    if chosen is not None:
        try:
            os.kill(pid, chosen)
        except OSError:  # gone meanwhile, or not ours after all
            raise LookupError(pid) from None
        how = f"signal {chosen.name}"
    elif remote_exec and _remote_exec(pid):
        how = "sys.remote_exec"
    else:
        raise LookupError(pid)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket_path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {pid} did not start its monitor within {timeout:g} s (after {how})")
            time.sleep(0.02)
    finally:
        _clean_scripts()
    return how
