"""The low-level socket API (``loop.sock_*``), asyncio's semantics.

Every operation tries the syscall first and only when it would block
registers with the loop's readiness core for a retry; the registration is
dropped as soon as the operation completes or is cancelled.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from asyncio import Future

    from ._loop import Loop

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


def check_socket(loop: "Loop", sock: socket.socket) -> None:
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    # asyncio checks this in debug mode only; a blocking socket would stall
    # the whole loop inside the syscall, so ferroloop always refuses it.
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _complete(fut: "Future", operation: Callable[..., Any], args: tuple) -> None:
    """Runs the operation for a waiting future, unless it would block again."""
    try:
        result = operation(*args)
    except _WOULD_BLOCK:
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def wait_for(loop: "Loop", sock: socket.socket, writing: bool, retry: Callable[["Future"], None]) -> "Future":
    """A future completed by ``retry(fut)``, which runs each time the socket
    is ready; the readiness registration ends with the future."""
    fut = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop._add_writer, loop.remove_writer) if writing else (loop._add_reader, loop.remove_reader)

    def on_ready() -> None:
        if not fut.done():
            retry(fut)

    handle = add(fd, on_ready)

    def unregister(_: "Future") -> None:
        # Another operation may have replaced our registration since.
        if not handle.cancelled():
            remove(fd)

    fut.add_done_callback(unregister)
    return fut


async def io(loop: "Loop", sock: socket.socket, writing: bool, operation: Callable[..., Any], *args: Any) -> Any:
    """``operation(*args)`` now, or when the socket is ready if it would block."""
    check_socket(loop, sock)
    try:
        return operation(*args)
    except _WOULD_BLOCK:
        pass
    return await wait_for(loop, sock, writing, lambda fut: _complete(fut, operation, args))


async def sendall(loop: "Loop", sock: socket.socket, data: Any) -> None:
    check_socket(loop, sock)
    try:
        sent = sock.send(data)
    except _WOULD_BLOCK:
        sent = 0
    view = memoryview(data).cast("B")
    if sent == len(view):
        return
    position = [sent]

    def send_more(fut: "Future") -> None:
        try:
            position[0] += sock.send(view[position[0] :])
        except _WOULD_BLOCK:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if position[0] == len(view):
            fut.set_result(None)

    await wait_for(loop, sock, True, send_more)


async def resolve(loop: "Loop", sock: socket.socket, address: Any) -> Any:
    """An IP address for an INET/INET6 socket's address (DNS only for a
    host name), as asyncio resolves it."""
    if sock.family not in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        return address
    host, port = address[:2]
    try:
        socket.inet_pton(sock.family, host)
        return address
    except (OSError, TypeError, ValueError):
        pass
    infos = await loop.getaddrinfo(host, port, family=sock.family, type=sock.type, proto=sock.proto)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return infos[0][4]


async def connect(loop: "Loop", sock: socket.socket, address: Any) -> None:
    check_socket(loop, sock)
    address = await resolve(loop, sock, address)
    try:
        sock.connect(address)
        return
    except _WOULD_BLOCK:
        pass

    def connected(fut: "Future") -> None:
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error != 0:
                raise OSError(error, f"Connect call failed {address}")
        except _WOULD_BLOCK:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)

    await wait_for(loop, sock, True, connected)


def _accept(sock: socket.socket) -> tuple[socket.socket, Any]:
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


class SocketMethods:
    """The ``sock_*`` methods of ferroloop.Loop."""

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        return await io(self, sock, False, sock.recv, n)  # type: ignore[arg-type]

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        return await io(self, sock, False, sock.recv_into, buf)  # type: ignore[arg-type]

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        return await io(self, sock, False, sock.recvfrom, bufsize)  # type: ignore[arg-type]

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        return await io(self, sock, False, sock.recvfrom_into, buf, nbytes or len(buf))  # type: ignore[arg-type]

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        await sendall(self, sock, data)  # type: ignore[arg-type]

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        return await io(self, sock, True, sock.sendto, data, address)  # type: ignore[arg-type]

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        await connect(self, sock, address)  # type: ignore[arg-type]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        return await io(self, sock, False, _accept, sock)  # type: ignore[arg-type]


__all__ = ["SocketMethods", "check_socket"]

