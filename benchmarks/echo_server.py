"""Echo server for ``echo.py``: one event loop, one server style, one process.

Started by ``echo.py`` as a fresh subprocess, directly or under
``valgrind --tool=callgrind``.  Like ``worker.py`` it imports only the stdlib
and the one event-loop package it measures (through ``worker.new_loop``,
which also checks that the loop really is that package's).

Styles, all echoing whatever arrives back on the same connection:

``sock``
    ``loop.sock_accept`` in a loop, one task per connection doing
    ``loop.sock_recv`` / ``loop.sock_sendall``.
``streams``
    ``asyncio.start_server``; ``reader.read`` / ``writer.write`` +
    ``await writer.drain()``.
``protocol``
    ``loop.create_server`` with a Protocol whose ``data_received`` calls
    ``transport.write``.

Usage: python3 echo_server.py LOOP STYLE [--port P] [--drain-timeout S]

Prints ``READY <port> <loop type>`` on stdout once it listens on 127.0.0.1.
On SIGTERM or SIGINT it stops accepting, waits (up to --drain-timeout) until
every accepted connection has closed, prints one JSON line
``{"accepted": n, "closed": n, "errors": n}`` and exits: 0 if every
connection closed and no handler failed, 3 otherwise.  Handler errors and
stray exceptions go to stderr, which ``echo.py`` keeps as the server's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import traceback

from worker import new_loop

HOST = "127.0.0.1"
# What one read asks for: asyncio's selector transport reads up to 256 KiB
# at a time, so the sock_* server asks for the same.
RECV_SIZE = 256 * 1024
# 100 connections arrive at once; asyncio's default backlog is 100.
BACKLOG = 1024
STYLES = ("sock", "streams", "protocol")


class Stats:
    """Connections accepted and closed; ``idle`` is set when all are closed."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.errors = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def opened(self) -> None:
        self.accepted += 1
        self.idle.clear()

    def finished(self) -> None:
        self.closed += 1
        if self.closed == self.accepted:
            self.idle.set()

    def error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        print(f"echo_server: {where}: {exc!r}", file=sys.stderr, flush=True)
        traceback.print_exception(exc, file=sys.stderr)


# --- sock_* ---------------------------------------------------------------


async def serve_sock(stats: Stats, port: int) -> tuple[int, object]:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    handlers: set[asyncio.Task] = set()

    async def echo(conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    data = await loop.sock_recv(conn, RECV_SIZE)
                    if not data:
                        break
                    await loop.sock_sendall(conn, data)
        except Exception as exc:  # noqa: BLE001 - reported, counted, run fails
            stats.error("sock handler", exc)
        finally:
            stats.finished()

    async def accept_forever() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            # The transports set TCP_NODELAY; do the same here.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stats.opened()
            task = loop.create_task(echo(conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    acceptor = loop.create_task(accept_forever())

    async def close() -> None:
        acceptor.cancel()
        try:
            await acceptor
        except asyncio.CancelledError:
            pass
        listener.close()

    return listener.getsockname()[1], close


# --- streams --------------------------------------------------------------


async def serve_streams(stats: Stats, port: int) -> tuple[int, object]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.opened()
        try:
            while True:
                data = await reader.read(RECV_SIZE)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        except Exception as exc:  # noqa: BLE001
            stats.error("streams handler", exc)
            writer.close()
        finally:
            stats.finished()

    server = await asyncio.start_server(echo, HOST, port, backlog=BACKLOG)
    return server.sockets[0].getsockname()[1], server_closer(server)


# --- protocol -------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    stats: Stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.stats.opened()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.stats.error("protocol connection_lost", exc)
        self.stats.finished()


async def serve_protocol(stats: Stats, port: int) -> tuple[int, object]:
    loop = asyncio.get_running_loop()
    EchoProtocol.stats = stats
    server = await loop.create_server(EchoProtocol, HOST, port, backlog=BACKLOG)
    return server.sockets[0].getsockname()[1], server_closer(server)


def server_closer(server: asyncio.AbstractServer) -> object:
    async def close() -> None:
        server.close()
        await server.wait_closed()

    return close


SERVE = {"sock": serve_sock, "streams": serve_streams, "protocol": serve_protocol}


# --- driver ---------------------------------------------------------------


async def run(style: str, port: int, drain_timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    bound_port, close = await SERVE[style](stats, port)
    print(f"READY {bound_port} {type(loop).__module__}.{type(loop).__qualname__}", flush=True)
    await stop
    await close()  # type: ignore[operator]
    # The client closes its connections before the server is stopped; give
    # the server the time to see every EOF, and report any it never saw.
    try:
        await asyncio.wait_for(stats.idle.wait(), drain_timeout)
    except asyncio.TimeoutError:
        print(
            f"echo_server: {stats.accepted - stats.closed} of {stats.accepted} "
            f"connections still open {drain_timeout} s after the stop signal",
            file=sys.stderr,
            flush=True,
        )
    return {"accepted": stats.accepted, "closed": stats.closed, "errors": stats.errors}


def exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # Anything reaching the loop's exception handler is a bug worth seeing
    # in the log; keep asyncio's report, and mark it.
    print("echo_server: loop exception handler called", file=sys.stderr, flush=True)
    loop.default_exception_handler(context)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="echo server for echo.py")
    parser.add_argument("loop")
    parser.add_argument("style", choices=STYLES)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    loop = new_loop(args.loop)
    loop.set_exception_handler(exception_handler)
    try:
        result = loop.run_until_complete(run(args.style, args.port, args.drain_timeout))
    finally:
        loop.close()
    print(json.dumps(result), flush=True)
    ok = result["accepted"] == result["closed"] and not result["errors"]
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
