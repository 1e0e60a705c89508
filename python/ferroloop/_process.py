"""Subprocesses: asyncio's subprocess transport (``_UnixSubprocessTransport``
on ``base_subprocess.BaseSubprocessTransport``) over the native pipe
transports, the child started natively (``_spawn``, else by
``subprocess.Popen``), and its exit learnt from a pidfd in the loop's own
poller: no thread per child.

asyncio (before 3.14) asks the policy's child watcher; a watcher a program
set on the policy is honoured the same way, unless it is of a kind the
policy makes by itself (``ThreadedChildWatcher``, ``PidfdChildWatcher``),
which the loop's own watching replaces. Without one,
the loop watches the child itself: ``os.pidfd_open`` (Linux 5.3+) gives an
fd that becomes readable when the child exits, and the exit status is then
collected with ``os.waitpid(pid, WNOHANG)``. Where pidfds are unavailable
(older kernels, seccomp), a loop running on the main thread learns of exits
from SIGCHLD through its own signal handling, as asyncio's
``SafeChildWatcher`` did, while no one else handles that signal; otherwise a
thread per child waits for it, as asyncio's ``ThreadedChildWatcher`` does.
"""

from __future__ import annotations

import contextvars
import functools
import os
import signal
import sys
import threading
import warnings
from asyncio import events, unix_events
from asyncio.log import logger
from typing import Any, Callable, Optional

from . import _spawn


def _pidfd_works() -> bool:
    """asyncio's ``can_use_pidfd``: present and not refused by a security
    policy."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid(), 0))
    except OSError:
        return False
    return True


# The exit reaches the transport in the context the child was started in
# since 3.12, whose default watcher is asyncio's pidfd one; before, it came
# from the watcher's thread, which runs in a context of its own, empty.
_EXIT_IN_CALLERS_CONTEXT = sys.version_info >= (3, 12)

# Tests set these to False to take the SIGCHLD or the thread path.
PIDFD_AVAILABLE = _pidfd_works()
SIGCHLD_WATCHING = hasattr(signal, "SIGCHLD")

# The child-watcher API exists until 3.14.
_HAS_CHILD_WATCHERS = sys.version_info < (3, 14) and hasattr(events, "get_child_watcher")


def policy_child_watcher() -> Optional[Any]:
    """The child watcher asyncio would use because the program set one (or
    asked the policy for one, which makes it), else None."""
    if not _HAS_CHILD_WATCHERS:
        return None
    policy = events.get_event_loop_policy()
    default_policy = getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
    overridden = default_policy is not None and getattr(type(policy), "get_child_watcher", None) is not getattr(
        default_policy, "get_child_watcher", None
    )
    if overridden or (default_policy is not None and not isinstance(policy, default_policy)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return events.get_child_watcher()
    watcher = getattr(policy, "_watcher", None)
    # The kinds asyncio's policy makes by itself, the first time anything
    # asks for a watcher: the loop's own watching does what they do.
    if type(watcher) in _SELF_MADE_WATCHERS:
        return None
    return watcher


_SELF_MADE_WATCHERS = tuple(
    kind for kind in (getattr(unix_events, "ThreadedChildWatcher", None), getattr(unix_events, "PidfdChildWatcher", None)) if kind
)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


class PidfdWatch:
    """Waits for one child through a pidfd in the loop's poller."""

    __slots__ = ("_loop", "_pid", "_pidfd", "_transport", "_on_exit")

    def __init__(self, loop: Any, pid: int, pidfd: int, transport: Any, on_exit: Callable[[int, int, Any], None]) -> None:
        self._loop = loop
        self._pid = pid
        self._pidfd = pidfd
        self._transport = transport
        self._on_exit = on_exit
        if _EXIT_IN_CALLERS_CONTEXT:
            loop._add_reader(pidfd, self._exited)
        else:
            contextvars.Context().run(loop._add_reader, pidfd, self._exited)

    def _exited(self) -> None:
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it: Popen does, when poll(), wait() or
            # send_signal() runs after the exit; it knows the status then.
            popen = getattr(self._transport, "_proc", None)
            returncode = getattr(popen, "returncode", None)
            if returncode is None:
                logger.warning(
                    "child process pid %d exit status already read: will report returncode 255", self._pid
                )
                returncode = 255
        else:
            if pid == 0:
                return  # not exited yet: the pidfd stays watched
            returncode = _exit_code(status)
            if self._loop.get_debug():
                logger.debug("process %s exited with returncode %s", self._pid, returncode)
        self._loop._remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._on_exit(self._pid, returncode, self._transport)
        self._transport = None


def _wait_in_thread(loop: Any, pid: int, transport: Any, on_exit: Callable[[int, int, Any], None]) -> None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        popen = getattr(transport, "_proc", None)
        returncode = getattr(popen, "returncode", None)
        if returncode is None:
            logger.warning("Unknown child process pid %d, will report returncode 255", pid)
            returncode = 255
    else:
        returncode = _exit_code(status)
        if loop.get_debug():
            logger.debug("process %s exited with returncode %s", pid, returncode)
    if loop.is_closed():
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)
    else:
        # on_exit hands over with call_soon_threadsafe, as asyncio's does.
        on_exit(pid, returncode, transport)


def _exit_from_loop_thread(loop: Any, pid: int, returncode: int, transport: Any) -> None:
    """The loop's ``_child_watcher_callback`` for an exit seen on the loop's
    own thread: the same callbacks in the same iterations, without the
    wake-up ``call_soon_threadsafe`` costs."""
    if _EXIT_IN_CALLERS_CONTEXT:
        loop.call_soon(transport._process_exited, returncode)
    else:
        # 3.11's callback skips one iteration.
        loop.call_soon(loop.call_soon, transport._process_exited, returncode)


class SigchldWatch:
    """The children of one loop, checked with ``os.waitpid(pid, WNOHANG)``
    each time SIGCHLD arrives, through the loop's ``add_signal_handler``
    from the first child on until the loop is closed (as asyncio's
    ``SafeChildWatcher`` kept it while attached)."""

    __slots__ = ("_loop", "_children", "__weakref__")

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        # pid -> (transport, the context its exit is reported in)
        self._children: dict[int, tuple[Any, contextvars.Context]] = {}

    @staticmethod
    def usable(loop: Any) -> bool:
        """The loop runs signal handlers (main thread) and SIGCHLD is free:
        neither a ``signal.signal`` handler nor another loop handler has it."""
        if not SIGCHLD_WATCHING or threading.current_thread() is not threading.main_thread():
            return False
        watch = getattr(loop, "_child_sigchld_watch", None)
        if watch is not None and watch._installed():
            return True
        return signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None) and signal.SIGCHLD not in loop._signal_handlers

    @classmethod
    def of(cls, loop: Any) -> "SigchldWatch":
        watch = getattr(loop, "_child_sigchld_watch", None)
        if watch is None:
            watch = loop._child_sigchld_watch = cls(loop)
        return watch

    def add(self, pid: int, transport: Any) -> None:
        context = contextvars.copy_context() if _EXIT_IN_CALLERS_CONTEXT else contextvars.Context()
        if not self._installed():
            self._loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self._children[pid] = (transport, context)
        # It may have exited before the handler was in place.
        self._reap()

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                popen = getattr(self._children[pid][0], "_proc", None)
                returncode = getattr(popen, "returncode", None)
                if returncode is None:
                    logger.warning("Unknown child process pid %d, will report returncode 255", pid)
                    returncode = 255
            else:
                if waited == 0:
                    continue
                returncode = _exit_code(status)
                if self._loop.get_debug():
                    logger.debug("process %s exited with returncode %s", pid, returncode)
            transport, context = self._children.pop(pid)
            context.run(_exit_from_loop_thread, self._loop, pid, returncode, transport)

    def _installed(self) -> bool:
        handle = self._loop._signal_handlers.get(signal.SIGCHLD)
        return handle is not None and handle._callback == self._reap


def watch_child(loop: Any, transport: Any, on_exit: Callable[[int, int, Any], None]) -> None:
    """Calls ``on_exit(pid, returncode, transport)`` on the loop's thread
    once the child has exited."""
    pid = transport.get_pid()
    if PIDFD_AVAILABLE:
        try:
            pidfd = os.pidfd_open(pid, 0)
        except OSError:
            pass
        else:
            PidfdWatch(loop, pid, pidfd, transport, functools.partial(_exit_from_loop_thread, loop))
            return
    if SigchldWatch.usable(loop):
        SigchldWatch.of(loop).add(pid, transport)
        return
    thread = threading.Thread(
        target=_wait_in_thread, name=f"asyncio-waitpid-{pid}", args=(loop, pid, transport, on_exit), daemon=True
    )
    thread.start()


class SubprocessTransport(unix_events._UnixSubprocessTransport):  # type: ignore[name-defined,misc]
    """asyncio's transport, with the child started natively where it can be."""

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, bufsize: int, **kwargs: Any) -> None:
        popen = _spawn.start(args, shell, stdin, stdout, stderr, kwargs)
        if popen is None:
            super()._start(args, shell, stdin, stdout, stderr, bufsize, **kwargs)
        else:
            self._proc = popen


async def make_subprocess_transport(
    loop: Any,
    protocol: Any,
    args: Any,
    shell: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    bufsize: int,
    extra: Optional[dict[str, Any]] = None,
    **kwargs: Any,
) -> Any:
    """asyncio's ``_make_subprocess_transport`` with the loop's own child
    watching."""
    waiter = loop.create_future()
    transport = SubprocessTransport(
        loop, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
    )
    watch_child(loop, transport, loop._child_watcher_callback)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return transport
