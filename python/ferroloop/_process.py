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

import collections
import contextvars
import os
import signal
import subprocess
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
_HAS_CHILD_WATCHERS = (
    sys.version_info < (3, 14) and hasattr(events, "get_child_watcher") and hasattr(events, "_event_loop_policy")
)


def policy_child_watcher() -> Optional[Any]:
    """The child watcher asyncio would use because the program set one (or
    asked the policy for one, which makes it), else None."""
    if not _HAS_CHILD_WATCHERS:
        return None
    # Read without making one: a policy not made yet has no watcher.
    policy = events._event_loop_policy  # type: ignore[attr-defined]  # private, since 3.4
    if policy is None:
        return None
    if (
        _DEFAULT_POLICY is None
        or getattr(type(policy), "get_child_watcher", None) is not _DEFAULT_GET_CHILD_WATCHER
        or not isinstance(policy, _DEFAULT_POLICY)
    ):
        # A policy of the program's own asks its own watcher.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return events.get_child_watcher()
    watcher = getattr(policy, "_watcher", None)
    # The kinds asyncio's policy makes by itself, the first time anything
    # asks for a watcher: the loop's own watching does what they do.
    if watcher is None or type(watcher) in _SELF_MADE_WATCHERS:
        return None
    return watcher


_DEFAULT_POLICY: Optional[type] = getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
_DEFAULT_GET_CHILD_WATCHER = getattr(_DEFAULT_POLICY, "get_child_watcher", None)
_SELF_MADE_WATCHERS = tuple(
    kind for kind in (getattr(unix_events, "ThreadedChildWatcher", None), getattr(unix_events, "PidfdChildWatcher", None)) if kind
)


class PidfdWatch:
    """Waits for one child through a pidfd in the loop's poller."""

    __slots__ = ("_loop", "_pid", "_pidfd", "_transport")

    def __init__(self, loop: Any, pid: int, pidfd: int, transport: Any) -> None:
        self._loop = loop
        self._pid = pid
        self._pidfd = pidfd
        self._transport = transport
        if _EXIT_IN_CALLERS_CONTEXT:
            loop._add_reader(pidfd, self._exited)
        else:
            contextvars.Context().run(loop._add_reader, pidfd, self._exited)
        _pidfd_watches(loop).add(self)

    def release(self) -> None:
        """The loop is closing with the child still running: its pidfd is
        closed and a thread waits for it instead, so that it is reaped."""
        loop = self._loop
        loop._remove_reader(self._pidfd)
        os.close(self._pidfd)
        _wait_in_new_thread(loop, self._pid, self._transport)
        self._transport = None

    def _exited(self) -> None:
        loop = self._loop
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            returncode = _status_read_elsewhere(self._pid, self._transport, _READ_ELSEWHERE_PIDFD)
        else:
            if pid == 0:
                return  # not exited yet: the pidfd stays watched
            returncode = os.waitstatus_to_exitcode(status)
            if loop.get_debug():
                logger.debug("process %s exited with returncode %s", pid, returncode)
        loop._remove_reader(self._pidfd)
        os.close(self._pidfd)
        _pidfd_watches(loop).discard(self)
        _exit_from_loop_thread(loop, self._pid, returncode, self._transport)
        self._transport = None


def _pidfd_watches(loop: Any) -> "set[PidfdWatch]":
    """The loop's children watched through pidfds and not exited yet."""
    watches: Optional[set[PidfdWatch]] = getattr(loop, "_child_pidfd_watches", None)
    if watches is None:
        watches = loop._child_pidfd_watches = set()
    return watches


# asyncio's warnings for a status read by someone else: its pidfd watcher's,
# and its other watchers'.
_READ_ELSEWHERE_PIDFD = "child process pid %d exit status already read:  will report returncode 255"
_READ_ELSEWHERE = "Unknown child process pid %d, will report returncode 255"


def _status_read_elsewhere(pid: int, transport: Any, warning: str = _READ_ELSEWHERE) -> int:
    """The returncode of a child someone else reaped: Popen does, when
    poll(), wait() or send_signal() runs after the exit, and keeps it."""
    returncode: Optional[int] = getattr(getattr(transport, "_proc", None), "returncode", None)
    if returncode is None:
        logger.warning(warning, pid)
        return 255
    return returncode


def _wait_in_thread(loop: Any, pid: int, transport: Any, on_exit: Callable[[int, int, Any], None]) -> None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        returncode = _status_read_elsewhere(pid, transport)
    else:
        returncode = os.waitstatus_to_exitcode(status)
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

    __slots__ = ("_loop", "_children", "_reaper", "__weakref__")

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        # pid -> (transport, the context its exit is reported in)
        self._children: dict[int, tuple[Any, contextvars.Context]] = {}
        # The one bound method handed to add_signal_handler, which tells
        # whether the loop's SIGCHLD handler is still this watch's.
        self._reaper = self._reap

    @classmethod
    def watch(cls, loop: Any, pid: int, transport: Any) -> bool:
        """Watch the child through the loop's watch, installing its handler
        if the loop runs signal handlers (main thread) and SIGCHLD is free:
        neither a ``signal.signal`` handler nor another loop handler has it;
        False if it cannot."""
        watch: Optional[SigchldWatch] = getattr(loop, "_child_sigchld_watch", None)
        # The context the exit is reported in.
        context = contextvars.copy_context() if _EXIT_IN_CALLERS_CONTEXT else contextvars.Context()
        if watch is not None and watch._installed():
            # The handler was in place before the child started: its
            # SIGCHLD cannot have been handled yet.
            watch._children[pid] = (transport, context)
            return True
        if (
            not SIGCHLD_WATCHING
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None)
            or signal.SIGCHLD in loop._signal_handlers
        ):
            return False
        if watch is None:
            watch = loop._child_sigchld_watch = cls(loop)
        loop.add_signal_handler(signal.SIGCHLD, watch._reaper)
        watch._children[pid] = (transport, context)
        # Children may have exited before the handler was in place.
        watch._reap()
        return True

    def _reap(self) -> None:
        loop = self._loop
        for pid in list(self._children):
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                returncode = _status_read_elsewhere(pid, self._children[pid][0])
            else:
                if waited == 0:
                    continue
                returncode = os.waitstatus_to_exitcode(status)
                if loop.get_debug():
                    logger.debug("process %s exited with returncode %s", pid, returncode)
            transport, context = self._children.pop(pid)
            context.run(_exit_from_loop_thread, loop, pid, returncode, transport)

    def release(self) -> None:
        children, self._children = self._children, {}
        for pid, (transport, _) in children.items():
            _wait_in_new_thread(self._loop, pid, transport)

    def _installed(self) -> bool:
        handle = self._loop._signal_handlers.get(signal.SIGCHLD)
        return handle is not None and handle._callback is self._reaper


def watch_child(loop: Any, transport: Any, on_exit: Callable[[int, int, Any], None]) -> None:
    """Calls ``on_exit(pid, returncode, transport)`` on the loop's thread
    once the child has exited."""
    pid = transport._pid
    if PIDFD_AVAILABLE:
        try:
            pidfd = os.pidfd_open(pid, 0)
        except OSError:
            pass
        else:
            PidfdWatch(loop, pid, pidfd, transport)
            return
    if SigchldWatch.watch(loop, pid, transport):
        return
    _wait_in_new_thread(loop, pid, transport, on_exit)


def _wait_in_new_thread(loop: Any, pid: int, transport: Any, on_exit: Optional[Callable[[int, int, Any], None]] = None) -> None:
    """asyncio's ThreadedChildWatcher: a thread blocks in waitpid."""
    thread = threading.Thread(
        target=_wait_in_thread,
        name=f"asyncio-waitpid-{pid}",
        args=(loop, pid, transport, on_exit or loop._child_watcher_callback),
        daemon=True,
    )
    thread.start()


def release_children(loop: Any) -> None:
    """The loop is closing: children it still watches are waited for by
    threads, as asyncio 3.11's watcher does, so none is left a zombie (and
    no pidfd is left open); each one's exit is then logged as reaped after
    its loop closed."""
    for watch in list(_pidfd_watches(loop)):
        watch.release()
    _pidfd_watches(loop).clear()
    release_sigchld_children(loop)


def release_sigchld_children(loop: Any) -> None:
    """The loop's SIGCHLD handler is being replaced or removed: the
    children its reaper watched are waited for by threads from now on
    (the next children take that path by themselves)."""
    watch: Optional[SigchldWatch] = getattr(loop, "_child_sigchld_watch", None)
    if watch is not None:
        watch.release()


def owns_sigchld_handler(loop: Any) -> bool:
    watch: Optional[SigchldWatch] = getattr(loop, "_child_sigchld_watch", None)
    return watch is not None and watch._installed()


class SubprocessTransport(unix_events._UnixSubprocessTransport):  # type: ignore[name-defined,misc]
    """asyncio's transport, with the child started natively where it can be,
    and, for a child without pipes, ``connection_made`` and the waiter
    scheduled by a plain callback rather than a task that has nothing to
    await: the same callbacks in the same iterations."""

    def __init__(
        self,
        loop: Any,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        waiter: Any = None,
        extra: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        # BaseSubprocessTransport.__init__'s state, in its order.
        self._extra = {} if extra is None else extra
        self._closed = False
        self._protocol = protocol
        self._loop = loop
        self._proc: Optional[subprocess.Popen[Any]] = None
        self._pid: Optional[int] = None
        self._returncode = None
        self._exit_waiters: Optional[list[Any]] = []
        self._pending_calls: Optional[collections.deque[Any]] = collections.deque()
        pipes: dict[int, Any] = {}
        self._pipes = pipes
        self._finished = False
        if stdin == _PIPE:
            pipes[0] = None
        if stdout == _PIPE:
            pipes[1] = None
        if stderr == _PIPE:
            pipes[2] = None
        try:
            self._start(args=args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr, bufsize=bufsize, **kwargs)
        except:  # noqa: E722  # as asyncio's: close on anything, then re-raise
            self.close()
            raise
        proc = self._proc
        assert proc is not None  # _start set it
        self._pid = proc.pid
        self._extra["subprocess"] = proc
        if loop.get_debug():
            logger.debug("process %r created: pid %s", args if isinstance(args, (bytes, str)) else args[0], self._pid)
        if pipes:
            loop.create_task(self._connect_pipes(waiter))
        else:
            loop.call_soon(self._connected, waiter)

    def _connected(self, waiter: Any) -> None:
        """The end of ``_connect_pipes``, for a child with no pipe to connect."""
        loop = self._loop
        loop.call_soon(self._protocol.connection_made, self)
        pending = self._pending_calls
        self._pending_calls = None
        if pending:
            for callback, data in pending:
                loop.call_soon(callback, *data)
        if waiter is not None and not waiter.cancelled():
            waiter.set_result(None)

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, bufsize: int, **kwargs: Any) -> None:
        popen = _spawn.start(args, shell, stdin, stdout, stderr, kwargs)
        if popen is None:
            super()._start(args, shell, stdin, stdout, stderr, bufsize, **kwargs)
        else:
            self._proc = popen


_PIPE = subprocess.PIPE


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
