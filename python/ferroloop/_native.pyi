"""Type stubs for ferroloop's native core (src/*.rs)."""

import contextvars
import socket
import sys
from _typeshed import FileDescriptorLike, ReadableBuffer, WriteableBuffer
from asyncio import BaseProtocol
from asyncio import Future, Task
from asyncio import _CoroutineLike
from asyncio.events import _TaskFactory
from collections.abc import Callable, Coroutine, Generator, Iterable
from socket import _Address, _RetAddress
from traceback import StackSummary
from typing import Any, Optional, TypeVar, Union, final

from typing_extensions import Unpack, TypeVarTuple

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

__version__: str

class Handle:
    """A callback scheduled with call_soon, or registered for an fd."""

    def cancel(self) -> None:
        """Keep the callback from running (a no-op once it has run)."""
    def cancelled(self) -> bool:
        """Whether cancel() has been called."""
    def get_context(self) -> contextvars.Context:
        """The contextvars.Context the callback runs in."""
    def _run(self) -> None: ...
    @property
    def _callback(self) -> Optional[Callable[..., object]]: ...
    @property
    def _args(self) -> Optional[tuple[Any, ...]]: ...
    @property
    def _loop(self) -> "LoopCore": ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _context(self) -> contextvars.Context: ...
    @property
    def _source_traceback(self) -> Optional[StackSummary]: ...

class TimerHandle:
    """A callback scheduled for a point in loop time."""

    def when(self) -> float:
        """The loop time (see Loop.time()) the callback is scheduled for."""
    def cancel(self) -> None:
        """Keep the callback from running (a no-op once it has run)."""
    def cancelled(self) -> bool:
        """Whether cancel() has been called."""
    def get_context(self) -> contextvars.Context:
        """The contextvars.Context the callback runs in."""
    def _run(self) -> None: ...
    @property
    def _when(self) -> float: ...
    @property
    def _scheduled(self) -> bool: ...
    @property
    def _callback(self) -> Optional[Callable[..., object]]: ...
    @property
    def _args(self) -> Optional[tuple[Any, ...]]: ...
    @property
    def _loop(self) -> "LoopCore": ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _context(self) -> contextvars.Context: ...
    @property
    def _source_traceback(self) -> Optional[StackSummary]: ...
    def __lt__(self, other: "TimerHandle") -> bool: ...
    def __le__(self, other: "TimerHandle") -> bool: ...
    def __gt__(self, other: "TimerHandle") -> bool: ...
    def __ge__(self, other: "TimerHandle") -> bool: ...

class LoopCore:
    """The native half of ferroloop.Loop.

    The public methods have asyncio.AbstractEventLoop's signatures (typeshed's),
    except that the scheduling methods return ferroloop's own Handle and
    TimerHandle; see ferroloop._loop.Loop.
    """

    _thread_id: Optional[int]
    @property
    def _clock_resolution(self) -> float: ...
    @property
    def _current_handle(self) -> Optional[Union[Handle, TimerHandle]]: ...
    def time(self) -> float:
        """The loop's clock (monotonic, in seconds), against which call_at and
        TimerHandle.when() are measured."""
    def call_soon(
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Optional[contextvars.Context] = None
    ) -> Handle:
        """Run ``callback(*args)`` at the next iteration, after the callbacks
        already scheduled, in ``context`` (default: a copy of the current one)."""
    def call_soon_threadsafe(
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Optional[contextvars.Context] = None
    ) -> Handle:
        """As call_soon, from any thread: the loop is woken up if it waits in
        poll."""
    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Optional[contextvars.Context] = None,
    ) -> TimerHandle:
        """Run ``callback(*args)`` once ``delay`` seconds have passed on the
        loop's clock."""
    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Optional[contextvars.Context] = None,
    ) -> TimerHandle:
        """Run ``callback(*args)`` when the loop's clock (``time()``) reaches
        ``when``."""
    def stop(self) -> None:
        """Make run_forever return once the callbacks already ready have run."""
    def is_running(self) -> bool:
        """Whether the loop is inside run_forever or run_until_complete."""
    def is_closed(self) -> bool:
        """Whether close() has been called."""
    def get_debug(self) -> bool:
        """Whether debug mode is on."""
    def _set_debug_flag(self, enabled: object) -> None: ...
    def _run_forever_native(self) -> None: ...
    def _run_once(self) -> None: ...
    def _close_native(self) -> None: ...
    def _signal_wakeup_fd(self) -> int: ...
    def _set_has_signal_handlers(self, value: bool) -> None: ...
    def _write_to_self(self) -> None: ...
    def _activity(self) -> tuple[int, int, int]: ...
    def _current_callback_age(self) -> Optional[float]: ...
    def _io_totals(self) -> tuple[int, int]: ...
    def _count_io(self, received: int, sent: int) -> None: ...
    def _start_watchdog(self, threshold: float, reporter: Callable[[str, float], None]) -> None: ...
    def _stop_watchdog(self) -> None: ...
    def _metrics_snapshot(self) -> tuple[float, int, int, float, float, float, float, int]: ...
    def _watchdog_running(self) -> bool: ...
    def _queue_sizes(self) -> tuple[int, int, int]: ...
    def _scheduled(self) -> list[TimerHandle]: ...
    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` whenever ``fd`` (a file descriptor or an
        object with ``fileno()``) is readable."""
    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` whenever ``fd`` is writable."""
    def _add_reader(self, fd: FileDescriptorLike, callback: Callable[..., Any], *args: Any) -> Handle: ...
    def _add_writer(self, fd: FileDescriptorLike, callback: Callable[..., Any], *args: Any) -> Handle: ...
    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading; False if it was not watched."""
    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for writing; False if it was not watched."""
    def create_future(self) -> Future[Any]:
        """A new asyncio.Future attached to this loop."""
    def _set_transport_table(self, table: dict[int, Any]) -> None: ...
    # The low-level socket API: native for plain socket.socket objects,
    # ferroloop._sockets otherwise; each returns an awaitable coroutine.
    # Parameter names are the runtime's (asyncio's selector loop says `n`
    # too), types are typeshed's AbstractEventLoop's.
    def sock_recv(self, sock: socket.socket, n: int) -> Coroutine[Any, Any, bytes]:
        """Receive up to ``n`` bytes from a non-blocking socket."""
    def sock_recv_into(self, sock: socket.socket, buf: WriteableBuffer) -> Coroutine[Any, Any, int]:
        """Receive into ``buf``; returns the number of bytes received."""
    def sock_sendall(self, sock: socket.socket, data: ReadableBuffer) -> Coroutine[Any, Any, None]:
        """Send all of ``data``, waiting for the socket to be writable as often
        as needed."""
    def sock_accept(self, sock: socket.socket) -> Coroutine[Any, Any, tuple[socket.socket, _RetAddress]]:
        """Accept a connection on a listening socket: ``(conn, address)``,
        with ``conn`` non-blocking."""
    def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> Coroutine[Any, Any, tuple[bytes, _RetAddress]]:
        """Receive a datagram of up to ``bufsize`` bytes: ``(data, address)``."""
    def sock_recvfrom_into(
        self, sock: socket.socket, buf: WriteableBuffer, nbytes: int = 0
    ) -> Coroutine[Any, Any, tuple[int, _RetAddress]]:
        """Receive a datagram into ``buf`` (at most ``nbytes``, default its
        size): ``(nbytes_received, address)``."""
    def sock_sendto(self, sock: socket.socket, data: ReadableBuffer, address: _Address) -> Coroutine[Any, Any, int]:
        """Send a datagram to ``address``; returns the number of bytes sent."""
    def _sock_connect_resolved(self, sock: socket.socket, address: _Address) -> Coroutine[Any, Any, None]: ...
    # The keyword arguments are passed on to the task factory or to
    # asyncio.Task, so the runtime accepts what typeshed lists per version.
    if sys.version_info >= (3, 13):
        def create_task(
            self,
            coro: _CoroutineLike[_T],
            *,
            name: Optional[str] = None,
            context: Optional[contextvars.Context] = None,
            eager_start: Optional[bool] = None,
        ) -> Task[_T]:
            """Wrap a coroutine in a task scheduled on this loop (through the
            task factory, if one is set)."""
    elif sys.version_info >= (3, 11):
        def create_task(
            self, coro: _CoroutineLike[_T], *, name: Optional[str] = None, context: Optional[contextvars.Context] = None
        ) -> Task[_T]:
            """Wrap a coroutine in a task scheduled on this loop (through the
            task factory, if one is set)."""
    else:
        def create_task(self, coro: _CoroutineLike[_T], *, name: Optional[str] = None) -> Task[_T]:
            """Wrap a coroutine in a task scheduled on this loop (through the
            task factory, if one is set)."""
    def _track_tasks(self, enabled: bool, internal_prefixes: list[str] = ...) -> None: ...
    def _tracking_tasks(self) -> bool: ...
    def _tracked_task_count(self) -> int: ...
    def _task_site(self, task: Task[Any]) -> Optional[tuple[str, int, str, float]]: ...
    def set_task_factory(self, factory: Optional[_TaskFactory]) -> None:
        """Have create_task call ``factory(loop, coro, **kwargs)``; None
        restores plain asyncio.Task."""
    def get_task_factory(self) -> Optional[_TaskFactory]:
        """The task factory, or None when tasks are plain asyncio.Task."""

# Method descriptors of LoopCore placed on ferroloop.Loop (src/fast_calls.rs):
# the same methods as LoopCore's, with leaner argument parsing.
_call_soon_fastcall = LoopCore.call_soon
_call_later_fastcall = LoopCore.call_later
_call_at_fastcall = LoopCore.call_at

class SockCall(Coroutine[Any, Any, Any]):
    """One awaited native ``loop.sock_*()`` call (registered as a Coroutine)."""

    __name__: str
    __qualname__: str
    cr_running: bool
    def __await__(self) -> Generator[Any, None, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

class StreamTransport:
    """asyncio's socket transport for TCP and Unix streams, in Rust.
    ``isinstance(t, asyncio.Transport)`` holds through ``__class__``."""

    _start_tls_compatible: bool
    _sendfile_compatible: Any
    def __init__(
        self,
        event_loop: LoopCore,
        sock: socket.socket,
        protocol: BaseProtocol,
        extra: dict[str, Any],
        server: Optional[Any] = None,
    ) -> None: ...
    def _register(self) -> None: ...
    def _start_reading(self) -> None: ...
    def write(self, data: Union[bytes, bytearray, memoryview]) -> None: ...
    def writelines(self, list_of_data: Iterable[Union[bytes, bytearray, memoryview]]) -> None: ...
    def write_eof(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def is_reading(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    def get_write_buffer_size(self) -> int: ...
    def set_protocol(self, protocol: BaseProtocol) -> None: ...
    def get_protocol(self) -> BaseProtocol: ...
    def _force_close(self, exc: Optional[BaseException]) -> None: ...
    def _call_connection_lost(self, exc: Optional[BaseException]) -> None: ...
    def _make_empty_waiter(self) -> Future[None]: ...
    def _reset_empty_waiter(self) -> None: ...
    @property
    def _sock(self) -> Optional[socket.socket]: ...
    @property
    def _sock_fd(self) -> int: ...
    @property
    def _loop(self) -> Optional[LoopCore]: ...
    @property
    def _protocol(self) -> Optional[BaseProtocol]: ...
    @property
    def _protocol_paused(self) -> bool: ...
    @property
    def _closing(self) -> bool: ...
    @property
    def _conn_lost(self) -> int: ...

@final
class Listener:
    """The native accept loop of a plain TCP or Unix server: each readiness
    of the listening socket accepts up to ``backlog`` connections, each
    made into a ``StreamTransport`` with a protocol from
    ``protocol_factory``, in a copy of the context at creation."""

    def __init__(
        self, event_loop: LoopCore, sock: socket.socket, protocol_factory: Callable[[], Any], server: Any, backlog: int
    ) -> None: ...
    def start(self) -> None:
        """Start accepting (joins the loop's poller)."""
    def stop(self) -> None:
        """Stop accepting for good; the socket is left to its owner."""
    def _resume(self) -> None: ...
    @property
    def _sock(self) -> Optional[socket.socket]: ...

def make_socket_transport(
    event_loop: LoopCore,
    sock: socket.socket,
    protocol: BaseProtocol,
    waiter: Optional[Future[None]] = None,
    extra: Optional[dict[str, Any]] = None,
    server: Any = None,
) -> StreamTransport:
    """asyncio's ``_make_socket_transport``: a ``StreamTransport`` on a
    connected socket, with ``connection_made``, the first read and the
    waiter scheduled as asyncio schedules them."""
