"""The low-level socket API (``loop.sock_*``), asyncio's semantics, in Python.

``sock_recv``, ``sock_recv_into``, ``sock_sendall``, ``sock_accept``,
``sock_recvfrom(_into)`` and ``sock_sendto`` run natively for plain
``socket.socket`` objects (``src/sock_calls.rs``); the native methods hand
any other socket type, and arguments their fast path does not take, to the
implementations here. ``sock_connect`` and ``sock_sendfile`` are only here.

Every operation tries the syscall first and only when it would block
registers with the loop's readiness core for a retry; the registration is
dropped as soon as the operation completes or is cancelled.
"""

from __future__ import annotations

import errno
import io
import os
import socket
from asyncio import exceptions
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from asyncio import Future, Handle
    from socket import _Address


class SocketLoop(Protocol):
    """What these helpers use of the loop (a ``ferroloop.Loop``)."""

    def get_debug(self) -> bool: ...
    def create_future(self) -> "Future[Any]": ...
    def _add_reader(self, fd: int, callback: Callable[..., Any], *args: Any) -> "Handle": ...
    def _add_writer(self, fd: int, callback: Callable[..., Any], *args: Any) -> "Handle": ...
    def _remove_reader(self, fd: int) -> bool: ...
    def _remove_writer(self, fd: int) -> bool: ...
    def _ensure_fd_no_transport(self, fd: Any) -> None: ...
    def _ensure_resolved(self, address: Any, *, family: int, type: int, proto: int, loop: Any) -> Awaitable[Any]: ...
    def _sock_connect_resolved(self, sock: socket.socket, address: Any, family: Optional[int] = None) -> Awaitable[None]: ...
    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


def check_socket(loop: SocketLoop, sock: socket.socket) -> None:
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    # asyncio asks a socket's timeout in debug mode only.
    gettimeout = sock.gettimeout if loop.get_debug() else getattr(sock, "gettimeout", None)
    if gettimeout is None:
        # Not a socket: the operation fails on the first attribute it needs,
        # with the AttributeError asyncio's would raise.
        return
    # asyncio checks this in debug mode only; a blocking socket would stall
    # the whole loop inside the syscall, so ferroloop always refuses it.
    if gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


# Returned by an operation that made progress but is not finished yet.
_NOT_DONE = object()


def _complete(fut: "Future[Any]", operation: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
    """Runs the operation for a waiting future and settles the future with
    its result or exception, unless it would block again or is not done."""
    try:
        result = operation(*args)
    except _WOULD_BLOCK:
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        if result is not _NOT_DONE:
            fut.set_result(result)


def wait_for(loop: SocketLoop, sock: socket.socket, writing: bool, retry: Callable[["Future[Any]"], None]) -> "Future[Any]":
    """A future completed by ``retry(fut)``, which runs each time the socket
    is ready; the readiness registration ends with the future."""
    fd = sock.fileno()
    # As in asyncio: a socket a transport owns is refused only once the
    # operation has to wait for it.
    loop._ensure_fd_no_transport(fd)
    fut = loop.create_future()
    add, remove = (loop._add_writer, loop._remove_writer) if writing else (loop._add_reader, loop._remove_reader)

    def on_ready() -> None:
        if not fut.done():
            retry(fut)

    handle = add(fd, on_ready)

    def unregister(_: "Future[Any]") -> None:
        # Another operation may have replaced our registration since.
        if not handle.cancelled():
            remove(fd)

    fut.add_done_callback(unregister)
    return fut


async def attempt_io(loop: SocketLoop, sock: socket.socket, writing: bool, method: str, *args: Any) -> Any:
    """``sock.<method>(*args)`` now, or when the socket is ready if it would
    block. The method is looked up again for each retry, as asyncio does."""
    check_socket(loop, sock)
    if method == "accept":
        sock.fileno()  # asyncio's sock_accept asks for the fd first
    try:
        return getattr(sock, method)(*args)
    except _WOULD_BLOCK:
        pass
    return await wait_for(loop, sock, writing, lambda fut: _complete(fut, _call_method, (sock, method, args)))


def _call_method(sock: socket.socket, method: str, args: tuple[Any, ...]) -> Any:
    return getattr(sock, method)(*args)


async def sendall(loop: SocketLoop, sock: socket.socket, data: Any) -> None:
    check_socket(loop, sock)
    try:
        sent = sock.send(data)
    except _WOULD_BLOCK:
        sent = 0
    view = memoryview(data).cast("B")
    if sent == len(view):
        return
    position = [sent]

    def send_more() -> Any:
        position[0] += sock.send(view[position[0] :])
        return None if position[0] == len(view) else _NOT_DONE

    await wait_for(loop, sock, True, lambda fut: _complete(fut, send_more))


async def resolve(loop: SocketLoop, sock: socket.socket, address: Any) -> Any:
    """An IP address for an INET/INET6 socket's address (DNS only for a
    host name), resolved by asyncio's own ``_ensure_resolved``, so that odd
    addresses fail as they do in asyncio."""
    if sock.family not in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        return address
    resolved = await loop._ensure_resolved(address, family=sock.family, type=sock.type, proto=sock.proto, loop=loop)
    return resolved[0][4]


async def connect(loop: SocketLoop, sock: socket.socket, address: Any) -> None:
    check_socket(loop, sock)
    address = await resolve(loop, sock, address)
    if type(sock) is socket.socket:
        # A socket with a timeout connects as socket.connect does (waiting
        # up to the timeout); a non-blocking one connects natively.
        family = sock.family if sock.gettimeout() == 0 else None
        await loop._sock_connect_resolved(sock, address, family)
        return
    sock.fileno()  # asyncio asks for the fd before it connects
    try:
        sock.connect(address)
        return
    except _WOULD_BLOCK:
        pass

    def connected() -> None:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error != 0:
            raise OSError(error, f"Connect call failed {address}")

    await wait_for(loop, sock, True, lambda fut: _complete(fut, connected))


# asyncio's SENDFILE_FALLBACK_READBUFFER_SIZE.
_SENDFILE_COPY_BLOCK = 256 * 1024


def check_sendfile_params(sock: socket.socket, file: Any, offset: Any, count: Any) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


async def _writable(loop: SocketLoop, sock: socket.socket) -> None:
    await wait_for(loop, sock, True, lambda fut: fut.set_result(None))


async def _sendfile_zero_copy(loop: SocketLoop, sock: socket.socket, file: Any, offset: int, count: Optional[int]) -> int:
    """os.sendfile from the file to the socket, without copying through
    Python; SendfileNotAvailableError when the file or socket can't do it."""
    if not hasattr(os, "sendfile"):
        raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
    try:
        fileno = file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        raise exceptions.SendfileNotAvailableError("not a regular file") from None
    try:
        size = os.fstat(fileno).st_size
    except OSError:
        raise exceptions.SendfileNotAvailableError("not a regular file") from None
    blocksize = count if count else size
    if not blocksize:
        return 0  # an empty file
    total = 0
    try:
        while not count or total < count:
            if count:
                blocksize = count - total
            try:
                sent = os.sendfile(sock.fileno(), fileno, offset + total, blocksize)
            except _WOULD_BLOCK:
                await _writable(loop, sock)
                continue
            except OSError as exc:
                if total == 0:
                    # Typically a file sendfile can't read (not mmap-able):
                    # the caller falls back to plain sends.
                    raise exceptions.SendfileNotAvailableError("os.sendfile call failed") from exc
                if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                    raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                raise
            if sent == 0:
                break  # end of file
            total += sent
        return total
    finally:
        if total > 0:
            os.lseek(fileno, offset + total, os.SEEK_SET)


async def _sendfile_by_copy(loop: SocketLoop, sock: socket.socket, file: Any, offset: int, count: Optional[int]) -> int:
    """Read blocks in the default executor and send them with sock_sendall."""
    if offset:
        file.seek(offset)
    blocksize = min(count, _SENDFILE_COPY_BLOCK) if count else _SENDFILE_COPY_BLOCK
    buffer = bytearray(blocksize)
    total = 0
    try:
        while True:
            if count:
                blocksize = min(count - total, blocksize)
                if blocksize <= 0:
                    break
            view = memoryview(buffer)[:blocksize]
            read = await loop.run_in_executor(None, file.readinto, view)
            if not read:
                break  # end of file
            await sendall(loop, sock, view[:read])
            total += read
        return total
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)


async def sendfile(
    loop: SocketLoop, sock: socket.socket, file: Any, offset: int, count: Optional[int], fallback: bool
) -> int:
    check_socket(loop, sock)
    check_sendfile_params(sock, file, offset, count)
    try:
        return await _sendfile_zero_copy(loop, sock, file, offset, count)
    except exceptions.SendfileNotAvailableError:
        if not fallback:
            raise
    return await _sendfile_by_copy(loop, sock, file, offset, count)


class SocketMethods:
    """The ``sock_*`` methods of ferroloop.Loop. The native ``LoopCore``
    methods of the same names come first in ``Loop``'s MRO and call these
    for what they do not handle themselves."""

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        return await attempt_io(self, sock, False, "recv", n)  # type: ignore[arg-type, no-any-return]

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        return await attempt_io(self, sock, False, "recv_into", buf)  # type: ignore[arg-type, no-any-return]

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        return await attempt_io(self, sock, False, "recvfrom", bufsize)  # type: ignore[arg-type, no-any-return]

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        return await attempt_io(self, sock, False, "recvfrom_into", buf, nbytes or len(buf))  # type: ignore[arg-type, no-any-return]

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        await sendall(self, sock, data)  # type: ignore[arg-type]

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        return await attempt_io(self, sock, True, "sendto", data, address)  # type: ignore[arg-type, no-any-return]

    async def sock_connect(self, sock: socket.socket, address: _Address) -> None:
        """Connect a non-blocking socket to ``address`` (a host name is
        resolved first, as asyncio does)."""
        await connect(self, sock, address)  # type: ignore[arg-type]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        conn, address = await attempt_io(self, sock, False, "accept")  # type: ignore[arg-type]
        conn.setblocking(False)
        return conn, address

    async def sock_sendfile(
        self,
        sock: socket.socket,
        file: IO[bytes],
        offset: int = 0,
        count: Optional[int] = None,
        *,
        fallback: Optional[bool] = True,
    ) -> int:
        """Send a file (opened in binary mode) over a stream socket with
        ``os.sendfile``, or, when that is not possible and ``fallback`` is
        true, by reading and sending it; returns the bytes sent."""
        return await sendfile(self, sock, file, offset, count, fallback)  # type: ignore[arg-type]


__all__ = ["SocketMethods", "check_socket"]

