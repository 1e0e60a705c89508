"""Starting a subprocess natively (``posix_spawn``, in the native module)
and describing it with a real ``subprocess.Popen``, in the state
``Popen.__init__`` leaves one in, so that ``get_extra_info('subprocess')``,
``poll()``, ``send_signal()``, ``wait()`` and ``communicate()`` behave as on
asyncio.

Only the ``Popen`` options the native spawn does itself are taken; anything
else (``preexec_fn``, ``user``, ``group``, ``extra_groups``, ``umask``,
``pass_fds``, ``pipesize``, a standard fd moved to another standard slot, an
unknown keyword), or ``subprocess.Popen`` replaced by the program, makes
``start`` return None, and the caller uses ``Popen``,
which then also raises what it raises for bad values.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from typing import Any, Callable, Optional

from . import _native

# Linux only.
_spawn_child: Optional[Callable[..., Optional[tuple[int, int, int, int]]]] = getattr(_native, "spawn_child", None)

# A program (often a test with unittest.mock) that replaces subprocess.Popen
# gets its replacement called, as on asyncio.
_POPEN = subprocess.Popen

# Tests set this to False to take the Popen path.
NATIVE_SPAWN_AVAILABLE = _spawn_child is not None

# Popen keywords the native spawn leaves to Popen unless they have these
# values, which ask nothing of the child.
_NEUTRAL = {
    "preexec_fn": None,
    "pass_fds": (),
    "startupinfo": None,
    "creationflags": 0,
    "group": None,
    "extra_groups": None,
    "user": None,
    "umask": -1,
    "pipesize": -1,
}
_TAKEN = {"executable", "close_fds", "cwd", "env", "restore_signals", "start_new_session"}
if sys.version_info >= (3, 11):
    _TAKEN.add("process_group")


def start(args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, kwargs: dict[str, Any]) -> Optional[subprocess.Popen]:
    """``subprocess.Popen(args, shell=shell, stdin=stdin, stdout=stdout,
    stderr=stderr, bufsize=0, universal_newlines=False, **kwargs)``, started
    natively; None when only ``Popen`` can start it."""
    if _spawn_child is None or not NATIVE_SPAWN_AVAILABLE or subprocess.Popen is not _POPEN:
        return None
    for name, value in kwargs.items():
        if name in _TAKEN:
            continue
        if name not in _NEUTRAL or (value != _NEUTRAL[name] if name != "pass_fds" else bool(value)):
            return None
    if isinstance(args, (str, bytes)):
        argv = [args]
    elif isinstance(args, (list, tuple)):
        argv = list(args)
    else:
        return None
    started = _spawn_child(
        argv,
        shell,
        kwargs.get("executable"),
        stdin,
        stdout,
        stderr,
        kwargs.get("close_fds", True),
        kwargs.get("cwd"),
        kwargs.get("env"),
        kwargs.get("restore_signals", True),
        kwargs.get("start_new_session", False),
        kwargs.get("process_group", -1),
    )
    if started is None:
        return None
    pid, stdin_fd, stdout_fd, stderr_fd = started
    return _popen_for(args, pid, stdin_fd, stdout_fd, stderr_fd)


def _popen_for(args: Any, pid: int, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> subprocess.Popen:
    """A Popen for a child already running, as ``Popen.__init__`` leaves it."""
    popen = _POPEN.__new__(_POPEN)
    # The attributes Popen.__init__ sets (the same on 3.10 to 3.13, which
    # tests/test_subprocess.py checks against a real Popen), with bufsize=0
    # and universal_newlines=False as asyncio passes them.
    popen.__dict__.update(
        _waitpid_lock=threading.Lock(),
        _input=None,
        _communication_started=False,
        args=args,
        stdin=io.FileIO(stdin_fd, "wb") if stdin_fd >= 0 else None,
        stdout=io.FileIO(stdout_fd, "rb") if stdout_fd >= 0 else None,
        stderr=io.FileIO(stderr_fd, "rb") if stderr_fd >= 0 else None,
        pid=pid,
        returncode=None,
        encoding=None,
        errors=None,
        pipesize=-1,
        text_mode=False,
        _sigint_wait_secs=0.25,
        _closed_child_pipe_fds=True,
        _child_created=True,
    )
    return popen
