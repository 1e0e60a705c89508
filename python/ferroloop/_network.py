"""Connections, servers, datagram endpoints and pipes: the glue around the
native transports.

Setting up a connection (name resolution, happy eyeballs, binding, the
``Server`` object, TLS wrapping) runs once per connection and must behave
exactly as asyncio's does, with the same checks, messages and per-version
differences. So the loop borrows those methods from the asyncio that ships
with the running interpreter instead of re-implementing them; each borrowed
method only calls back into the small surface defined here
(``_make_socket_transport``, ``_start_serving``, ``_transports``...), which
is where ferroloop's own transports plug in.

The per-byte work, reading and writing on an established connection or
datagram endpoint, is native (``ferroloop._native.StreamTransport`` and
``DatagramTransport``).
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import sys
import types
import weakref
from asyncio import base_events, events, futures, selector_events, transports, unix_events
from asyncio.log import logger
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._native import (
    DatagramTransport,
    Listener,
    LoopCore,
    StreamTransport,
    make_socket_transport,
    nonblocking_socket,
    numeric_tcp_target,
    transport_extra,
)
from ._pipes import make_read_pipe_transport, make_write_pipe_transport
from ._process import make_subprocess_transport, policy_child_watcher
from ._tls import SSLProtocol, handshake_done, make_ssl_transport
from ._tls import start_tls as _start_tls
from ._versions import TRANSPORTS_REFUSE_OWNED_SOCKETS

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")


_Base = base_events.BaseEventLoop
_Selector = selector_events.BaseSelectorEventLoop
_Unix = unix_events._UnixSelectorEventLoop  # private, stable since 3.4


class TransportClass(transports._FlowControlMixin, transports.Transport):
    """What a ``StreamTransport`` reports as its ``__class__``, so that
    ``isinstance(transport, asyncio.Transport)`` (and asyncio's own checks
    for ``_FlowControlMixin``) hold. Never instantiated."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "TransportClass":
        raise TypeError("TransportClass only describes StreamTransport; it is not instantiated")


class DatagramTransportClass(transports._FlowControlMixin, transports.Transport, transports.DatagramTransport):
    """What a native ``DatagramTransport`` reports as its ``__class__``, so
    that ``isinstance(transport, asyncio.DatagramTransport)`` holds, and
    ``asyncio.Transport`` as for asyncio's own datagram transport (a
    ``_SelectorTransport``). Never instantiated."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "DatagramTransportClass":
        raise TypeError("DatagramTransportClass only describes DatagramTransport; it is not instantiated")


# Listening sockets whose connections the native accept loop takes.
_NATIVE_ACCEPT_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def _borrow(owner: type, name: str, doc: Optional[str] = None) -> Any:
    """``owner``'s own function ``name``, to be a method of the loop too.

    With ``doc``, a copy of it that differs only in its docstring: the
    original, which asyncio's loops use, is left alone.
    """
    function = owner.__dict__[name]
    if doc is None:
        return function
    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = dict(function.__kwdefaults__) if function.__kwdefaults__ is not None else None
    copy.__dict__.update(function.__dict__)
    copy.__qualname__ = function.__qualname__
    copy.__module__ = function.__module__
    copy.__annotations__ = dict(function.__annotations__)
    copy.__doc__ = doc
    return copy


def _set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on every TCP stream transport, as uvloop does. asyncio
    sets it only when the socket's proto is IPPROTO_TCP, which leaves out a
    user's `socket.socket()` (proto 0) handed to create_connection(sock=...)
    or connect_accepted_socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        if sock.proto in (0, socket.IPPROTO_TCP):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _keyword_defaults(function: Any) -> dict[str, Any]:
    """The keyword-only options of ``function``, with their defaults."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


_NO_DEFAULT = object()


def _only_defaults(options: dict[str, Any], defaults: dict[str, Any]) -> bool:
    return all(defaults.get(name, _NO_DEFAULT) == value for name, value in options.items())


# A call that passes only these defaults (and no positional extras) can take
# the direct path.
_asyncio_create_connection = _borrow(_Base, "create_connection")
_CONNECTION_DEFAULTS = _keyword_defaults(_asyncio_create_connection)
_asyncio_create_unix_connection = _borrow(
    _Unix,
    "create_unix_connection",
    "Connect to a Unix socket at ``path`` (or over ``sock``), with a "
    "protocol from ``protocol_factory``: ``(transport, protocol)``.",
)
_UNIX_CONNECTION_DEFAULTS = _keyword_defaults(_asyncio_create_unix_connection)

# What a direct path connects: (family, address, proto, and the (host, port)
# its debug log names, or None). Found from a call's positional arguments
# and keyword options; None when the call takes asyncio's path.
_DirectTarget = Optional[tuple[int, Any, int, Optional[tuple[Any, Any]]]]


def _numeric_tcp_target_by_keyword(host: Any = None, port: Any = None, *args: Any, **options: Any) -> _DirectTarget:
    if args or not _only_defaults(options, _CONNECTION_DEFAULTS):
        return None
    return numeric_tcp_target((host, port))


def _unix_path_target(args: tuple[Any, ...]) -> _DirectTarget:
    """A path and no other option: asyncio's fspath, then one socket and
    one connect."""
    if len(args) != 1 or args[0] is None:
        return None
    return socket.AF_UNIX, os.fspath(args[0]), 0, None


def _unix_path_target_by_keyword(path: Any = None, *args: Any, **options: Any) -> _DirectTarget:
    if args or not _only_defaults(options, _UNIX_CONNECTION_DEFAULTS):
        return None
    return _unix_path_target((path,))


_TLS_OPTION_NAMES = frozenset(("ssl", "server_hostname", "ssl_handshake_timeout", "ssl_shutdown_timeout"))

# What a direct TLS connect adds to its target: ssl, server_hostname and the
# two timeouts.
_TLSOptions = tuple[Any, Any, Any, Any]


def _tls_target(
    args: tuple[Any, ...],
    options: dict[str, Any],
    positional_target: Callable[[tuple[Any, ...]], _DirectTarget],
    keyword_target: Callable[..., _DirectTarget],
) -> Optional[tuple[tuple[int, Any, int, Optional[tuple[Any, Any]]], _TLSOptions]]:
    """A call with ``ssl=`` (and perhaps the other TLS options) that would
    take the direct path without them: its target and TLS options. None when
    asyncio's code must decide, which includes every call asyncio rejects
    (a Unix connect with no server_hostname)."""
    if not options.get("ssl") or make_ssl_transport is None:
        return None
    if options.keys() <= _TLS_OPTION_NAMES:
        target = positional_target(args)
    else:
        target = keyword_target(*args, **{name: options[name] for name in options.keys() - _TLS_OPTION_NAMES})
    if target is None:
        return None
    server_hostname = options.get("server_hostname")
    if server_hostname is None:
        logged_as = target[3]
        if logged_as is None:
            return None
        # asyncio's default for a TCP connect: the host connected to.
        server_hostname = logged_as[0]
    tls = (options["ssl"], server_hostname, options.get("ssl_handshake_timeout"), options.get("ssl_shutdown_timeout"))
    return target, tls


def _tls_protocol(
    loop: Any,
    protocol_factory: Any,
    made: list[Any],
    waiter: Any,
    tls: _TLSOptions,
) -> Any:
    """The TLS protocol of a direct connect, made once connected, with the
    application's protocol (kept in ``made`` for the caller) inside."""
    ssl, server_hostname, handshake_timeout, shutdown_timeout = tls
    protocol = protocol_factory()
    made.append(protocol)
    return SSLProtocol(
        loop, protocol, None if isinstance(ssl, bool) else ssl, waiter, False, server_hostname,
        ssl_handshake_timeout=handshake_timeout, ssl_shutdown_timeout=shutdown_timeout,
    )


async def _connect_tls(
    loop: Any,
    protocol_factory: Any,
    target: tuple[int, Any, int, Optional[tuple[Any, Any]]],
    tls: _TLSOptions,
) -> Any:
    """asyncio's create_connection with ``ssl=`` for one numeric address (or
    a Unix path): one socket, connected natively, its stream transport
    carrying the TLS protocol, then the wait for the handshake that
    asyncio's ``_create_connection_transport`` does."""
    family, address, proto, logged_as = target
    waiter = loop.create_future()
    made: list[Any] = []
    factory = functools.partial(_tls_protocol, loop, protocol_factory, made, waiter, tls)
    sock = nonblocking_socket(family, socket.SOCK_STREAM, proto)
    _, ssl_protocol = await loop._connect_stream(sock, address, family, factory)
    transport = ssl_protocol._app_transport
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    protocol = made[0]
    if logged_as is not None and loop._debug:
        logger.debug("%r connected to %s:%r: (%r, %r)", transport.get_extra_info("socket"), *logged_as, transport, protocol)
    return transport, protocol


def _with_direct_path(
    asyncio_method: Any,
    positional_target: Callable[[tuple[Any, ...]], _DirectTarget],
    keyword_target: Callable[..., _DirectTarget],
) -> Any:
    """``asyncio_method``, except that a call the targets accept (by its
    positional arguments alone, or with keywords) is carried out here: the
    connect natively, the transport set up as asyncio's
    ``_create_connection_transport`` does, in one coroutine frame. Bad
    arguments never take this path, so they get asyncio's own errors."""

    @functools.wraps(asyncio_method)
    async def connect(self: Any, protocol_factory: Any, *args: Any, **options: Any) -> Any:
        target = keyword_target(*args, **options) if options else positional_target(args)
        if target is None:
            tls = _tls_target(args, options, positional_target, keyword_target) if options else None
            if tls is None:
                return await asyncio_method(self, protocol_factory, *args, **options)
            return await _connect_tls(self, protocol_factory, *tls)
        family, address, proto, logged_as = target
        sock = nonblocking_socket(family, socket.SOCK_STREAM, proto)
        # Closes the socket (or the transport) itself if the connect fails
        # or the caller gives up, as asyncio's coroutine does.
        connected = await self._connect_stream(sock, address, family, protocol_factory)
        if logged_as is not None and self._debug:
            transport, protocol = connected
            logger.debug(
                "%r connected to %s:%r: (%r, %r)", transport.get_extra_info("socket"), *logged_as, transport, protocol
            )
        return connected

    return connect


# create_connection: a numeric address and no other option, for which
# asyncio's code takes the fewest steps (one address, one socket, one
# connect); what base_events._ipaddr_info finds for a numeric host, natively.
_fast_create_connection = _with_direct_path(
    _asyncio_create_connection, numeric_tcp_target, _numeric_tcp_target_by_keyword
)
_fast_create_unix_connection = _with_direct_path(
    _asyncio_create_unix_connection, _unix_path_target, _unix_path_target_by_keyword
)


_asyncio_create_unix_server = _borrow(
    _Unix,
    "create_unix_server",
    "Listen on a Unix socket at ``path`` (or on ``sock``), with a "
    "protocol from ``protocol_factory`` per connection: a Server.",
)


def _remember_unix_path(loop: Any, sock: socket.socket) -> None:
    """What 3.13's create_unix_server(cleanup_socket=True) does: note the
    inode of the path the socket is bound to (not for an abstract name), so
    that closing the server unlinks the path if it still names that file."""
    path = sock.getsockname()
    if path and path[0] not in (0, "\x00"):
        try:
            loop._unix_server_sockets[sock] = os.stat(path).st_ino
        except FileNotFoundError:
            pass


if sys.version_info >= (3, 13):
    _create_unix_server = _asyncio_create_unix_server
else:

    async def _create_unix_server(
        self: Any, protocol_factory: Any, path: Any = None, *args: Any, cleanup_socket: bool = False, **options: Any
    ) -> Any:
        # 3.13's cleanup_socket, accepted here too (as uvloop does); its
        # default stays False, as these versions never unlink the path.
        server = await _asyncio_create_unix_server(self, protocol_factory, path, *args, **options)
        if cleanup_socket:
            for sock in server._sockets:
                _remember_unix_path(self, sock)
        return server

    _create_unix_server.__doc__ = (
        f"{_asyncio_create_unix_server.__doc__} With ``cleanup_socket=True`` (3.13's "
        "default), closing the server unlinks the socket's path."
    )
    # help() and IDEs show asyncio's parameters, and this one beside them.
    _asyncio_unix_server_signature = inspect.signature(_asyncio_create_unix_server)
    _create_unix_server.__signature__ = _asyncio_unix_server_signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *_asyncio_unix_server_signature.parameters.values(),
            inspect.Parameter("cleanup_socket", inspect.Parameter.KEYWORD_ONLY, default=False),
        ]
    )


class NetworkMethods:
    """The network half of the loop API."""

    # Connection set-up and servers, as the running interpreter's asyncio
    # implements them. A type checker sees them as typeshed declares them
    # for asyncio.AbstractEventLoop (per Python version), the signatures of
    # the very functions borrowed. The ones asyncio leaves without a
    # docstring get one (on a copy).
    if TYPE_CHECKING:
        create_connection = events.AbstractEventLoop.create_connection
        create_server = events.AbstractEventLoop.create_server
        connect_accepted_socket = events.AbstractEventLoop.connect_accepted_socket
        create_datagram_endpoint = events.AbstractEventLoop.create_datagram_endpoint
        connect_read_pipe = events.AbstractEventLoop.connect_read_pipe
        connect_write_pipe = events.AbstractEventLoop.connect_write_pipe
        sendfile = events.AbstractEventLoop.sendfile
        start_tls = events.AbstractEventLoop.start_tls
        create_unix_connection = events.AbstractEventLoop.create_unix_connection
        create_unix_server = events.AbstractEventLoop.create_unix_server
    else:
        create_connection = _fast_create_connection
        create_server = _borrow(_Base, "create_server")
        connect_accepted_socket = _borrow(
            _Base,
            "connect_accepted_socket",
            "Wrap an accepted, connected stream socket in a transport and a "
            "protocol from ``protocol_factory``: ``(transport, protocol)``.",
        )
        create_datagram_endpoint = _borrow(_Base, "create_datagram_endpoint")
        connect_read_pipe = _borrow(
            _Base,
            "connect_read_pipe",
            "Read from a pipe (a file object) through a read transport and a "
            "protocol from ``protocol_factory``: ``(transport, protocol)``.",
        )
        connect_write_pipe = _borrow(
            _Base,
            "connect_write_pipe",
            "Write to a pipe (a file object) through a write transport and a "
            "protocol from ``protocol_factory``: ``(transport, protocol)``.",
        )
        sendfile = _borrow(_Base, "sendfile")
        start_tls = _start_tls
        create_unix_connection = _fast_create_unix_connection
        create_unix_server = _create_unix_server
    _connect_sock = _borrow(_Base, "_connect_sock")
    _create_connection_transport = _borrow(_Base, "_create_connection_transport")
    _ensure_resolved = _borrow(_Base, "_ensure_resolved")
    _create_server_getaddrinfo = _borrow(_Base, "_create_server_getaddrinfo")
    _sendfile_fallback = _borrow(_Base, "_sendfile_fallback")

    # Accepting: TCP and Unix servers accept natively (a Listener in the
    # poller, src/server/listener.rs; for TLS from 3.11 on); TLS servers on
    # 3.10 and other socket families take asyncio's readiness callback,
    # which accepts up to `backlog` connections per readiness and survives
    # EMFILE by pausing.
    _start_serving_by_callback = _borrow(_Selector, "_start_serving")
    _accept_connection = _borrow(_Selector, "_accept_connection")
    _accept_connection2 = _borrow(_Selector, "_accept_connection2")

    def _start_serving(
        self,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *args: Any,
    ) -> None:
        if sock.family not in _NATIVE_ACCEPT_FAMILIES or (sslcontext and handshake_done is None):
            self._start_serving_by_callback(protocol_factory, sock, sslcontext, server, backlog, *args)
            return
        tls: Optional[tuple[Any, ...]] = None
        if sslcontext:
            # args: the server's TLS handshake and shutdown timeouts.
            tls = (sslcontext, *args, handshake_done)
        listener = Listener(self, sock, protocol_factory, server, backlog, tls)  # type: ignore[arg-type]  # a Loop is a LoopCore
        self._listeners[sock.fileno()] = listener
        listener.start()

    def _stop_serving(self, sock: socket.socket) -> None:
        # Since 3.13 create_unix_server() records the inode of the path it
        # bound (unless cleanup_socket=False), and closing the server unlinks
        # the path if it still names that socket file. asyncio's own version
        # of this method calls super(), so it cannot be borrowed.
        inode = self._unix_server_sockets.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        listener = self._listeners.pop(sock.fileno(), None)
        if listener is not None:
            listener.stop()
        else:
            self._remove_reader(sock.fileno())  # type: ignore[misc]  # a Loop is a LoopCore
        sock.close()
        if path is None:
            return
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    _ensure_fd_no_transport = _borrow(_Selector, "_ensure_fd_no_transport")
    _sendfile_native = _borrow(_Selector, "_sendfile_native")

    # TLS: asyncio's SSLProtocol (ferroloop._tls mends it from 3.11 on) over
    # a native stream transport; on 3.10 asyncio's own pair.
    if make_ssl_transport is not None:
        _make_ssl_transport = make_ssl_transport
    else:
        _make_ssl_transport = _borrow(_Selector, "_make_ssl_transport")

    # Datagram and pipe transports are native (ferroloop._pipes for pipes).
    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: Optional[dict[str, Any]] = None,
    ) -> DatagramTransport:
        if TRANSPORTS_REFUSE_OWNED_SOCKETS:
            self._ensure_fd_no_transport(sock)
        connection_made = protocol.connection_made
        transport = DatagramTransport(self, sock, protocol, address, transport_extra(sock, extra))  # type: ignore[arg-type]  # a Loop is a LoopCore
        self._transports[sock.fileno()] = transport
        self.call_soon(connection_made, transport)  # type: ignore[attr-defined]
        self.call_soon(transport._start_reading)  # type: ignore[attr-defined]
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]
        return transport

    def _make_read_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Optional[dict[str, Any]] = None
    ) -> Any:
        transport = make_read_pipe_transport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]  # a Loop is a LoopCore
        self._pipe_transports.add(transport)
        return transport

    def _make_write_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Optional[dict[str, Any]] = None
    ) -> Any:
        transport = make_write_pipe_transport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]  # a Loop is a LoopCore
        self._pipe_transports.add(transport)
        return transport

    # Subprocesses: asyncio's transport over the native pipes; the child's
    # exit comes from a pidfd in the poller (ferroloop._process), or from
    # the policy's child watcher when the program set one.
    if TYPE_CHECKING:
        subprocess_exec = events.AbstractEventLoop.subprocess_exec
        subprocess_shell = events.AbstractEventLoop.subprocess_shell
    else:
        subprocess_exec = _borrow(
            _Base,
            "subprocess_exec",
            "Run ``program`` with ``args`` (no shell) in a subprocess, with a "
            "protocol from ``protocol_factory``: ``(transport, protocol)``.",
        )
        subprocess_shell = _borrow(
            _Base,
            "subprocess_shell",
            "Run the shell command ``cmd`` in a subprocess, with a protocol "
            "from ``protocol_factory``: ``(transport, protocol)``.",
        )
    _log_subprocess = _borrow(_Base, "_log_subprocess")
    _make_subprocess_transport_by_watcher = _borrow(_Unix, "_make_subprocess_transport")

    async def _make_subprocess_transport(
        self,
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
        if policy_child_watcher() is not None:
            return await self._make_subprocess_transport_by_watcher(
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
            )
        return await make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs)

    _child_watcher_callback = _borrow(_Unix, "_child_watcher_callback")

    _transports: "weakref.WeakValueDictionary[int, Any]"
    _pipe_transports: "weakref.WeakSet[Any]"

    def _init_network(self) -> None:
        # fd -> transport, so that add_reader and sock_* refuse an fd a
        # transport owns, as asyncio does.
        self._transports = weakref.WeakValueDictionary()
        # The native sock_* calls check the same table, without a Python call.
        self._set_transport_table(self._transports.data)  # type: ignore[attr-defined]  # the storage weakref's containers have had since 3.0
        # Pipe transports are not in `_transports` (asyncio keeps them
        # apart too); kept only to count open transports.
        self._pipe_transports = weakref.WeakSet()
        # Listening fd -> its native accept loop.
        self._listeners: dict[int, Listener] = {}
        # Listening Unix socket -> inode of its path, filled by 3.13+'s
        # create_unix_server() for _stop_serving() to clean up.
        self._unix_server_sockets: dict[socket.socket, int] = {}

    def _open_transport_count(self) -> int:
        """Socket and pipe transports whose connection is not yet lost.
        Metrics may be read from another thread while the loop adds a
        transport, so the weak containers' underlying dict and set are
        copied first: a C-level copy no other thread can interrupt, where
        iterating the containers themselves could raise mid-way."""
        sockets = [ref() for ref in tuple(self._transports.data.values())]  # type: ignore[attr-defined]  # the storage weakref's containers have had since 3.0
        pipes = [ref() for ref in tuple(self._pipe_transports.data)]  # type: ignore[attr-defined]
        return sum(1 for t in sockets if t is not None and t._sock is not None) + sum(
            1 for t in pipes if t is not None and t._pipe is not None
        )

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` whenever ``fd`` (a file descriptor or an
        object with ``fileno()``) is readable; replaces an earlier reader of
        ``fd``. Refused for an fd that a transport of the loop owns."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)  # type: ignore[attr-defined]

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` whenever ``fd`` is writable; replaces an
        earlier writer of ``fd``. Refused for an fd a transport owns."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)  # type: ignore[attr-defined]

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading; False if it was not watched."""
        self._ensure_fd_no_transport(fd)
        removed: bool = self._remove_reader(fd)  # type: ignore[misc]  # a Loop is a LoopCore
        return removed

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for writing; False if it was not watched."""
        self._ensure_fd_no_transport(fd)
        removed: bool = self._remove_writer(fd)  # type: ignore[misc]  # a Loop is a LoopCore
        return removed

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Optional[dict[str, Any]] = None,
        server: Any = None,
    ) -> StreamTransport:
        # Natively: the owned-socket check (3.12+), TCP_NODELAY, asyncio's
        # extra info, the transport, and the callbacks asyncio schedules.
        return make_socket_transport(self, sock, protocol, waiter, extra, server)  # type: ignore[arg-type]  # a Loop is a LoopCore

    _remove_reader = LoopCore.remove_reader
    _remove_writer = LoopCore.remove_writer
