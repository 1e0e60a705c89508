"""Which contextvars.Context each protocol callback runs in, on the native
stream transports (TCP and Unix), compared with asyncio: data_received, the buffered
protocol's calls and connection_lost after a peer's EOF run in a copy of the
context the transport was made in (what a callback sets there stays for the
next one); connection_lost after close() runs in the context close() was
called in. The datagram transport likewise, with asyncio's reader and
writer handles' contexts: reading resumed by resume_reading() goes on in a
copy of that call's context, and a buffer drains in a copy of the context of
the sendto() that started buffering."""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

import pytest

import ferroloop

from netutil import run_with_loop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="default")


def recording_protocol(
    side: str, seen: dict[str, Any], buffered: bool = False, server_closes: bool = True
) -> type[asyncio.BaseProtocol]:
    class Recorder(asyncio.Protocol):
        transport: asyncio.Transport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen[f"{side}.made"] = var.get()
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.received(len(data))

        def received(self, count: int) -> None:
            calls = seen.setdefault(f"{side}.data", [])
            calls.append(var.get())
            # What a callback sets stays in the transport's context, for
            # the next callback, and does not leak into the caller's.
            var.set(f"{side}-set-in-callback")
            if side == "srv":
                self.transport.write(b"x" * count)
                if server_closes and len(calls) == 2:
                    self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            seen[f"{side}.lost"] = var.get()

    if not buffered:
        return Recorder

    class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
        buffer = bytearray(64)

        def get_buffer(self, sizehint: int) -> bytearray:
            seen.setdefault(f"{side}.get_buffer", var.get())
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            self.received(nbytes)

    return BufferedRecorder


async def exchange(buffered: bool, client_closes: bool, family: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    var.set("server-setup")
    server_protocol = recording_protocol("srv", seen, buffered, server_closes=not client_closes)
    client_protocol = lambda: recording_protocol("cli", seen)()  # noqa: E731
    if family == "unix":
        directory = tempfile.mkdtemp(prefix="flctx")
        path = os.path.join(directory, "s")
        server = await loop.create_unix_server(lambda: server_protocol(), path)
        var.set("client-setup")
        transport, _ = await loop.create_unix_connection(client_protocol, path)
    else:
        server = await loop.create_server(lambda: server_protocol(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        var.set("client-setup")
        transport, _ = await loop.create_connection(client_protocol, "127.0.0.1", port)
    var.set("after")
    for _ in range(2):
        transport.write(b"ping")
        await asyncio.sleep(0.05)
    if client_closes:
        var.set("closing")
        transport.close()
    await asyncio.sleep(0.1)
    seen["main"] = var.get()
    server.close()
    await server.wait_closed()
    if family == "unix":
        shutil.rmtree(directory, ignore_errors=True)
    return seen


def on_both(buffered: bool, client_closes: bool, family: str = "tcp") -> dict[str, Any]:
    return {name: run_with_loop(factory, exchange(buffered, client_closes, family)) for name, factory in LOOPS.items()}


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_protocol_callbacks_run_in_the_transports_context(family: str) -> None:
    results = on_both(buffered=False, client_closes=False, family=family)
    assert results["ferroloop"] == results["asyncio"]
    seen = results["asyncio"]
    assert seen["srv.data"] == ["server-setup", "srv-set-in-callback"]
    # The server closes from data_received: connection_lost is scheduled in
    # the transport's context, as the callback left it.
    assert seen["srv.lost"] == "srv-set-in-callback" and seen["cli.lost"] == "cli-set-in-callback"
    assert seen["main"] == "after"


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_buffered_protocol_callbacks_run_in_the_transports_context(family: str) -> None:
    results = on_both(buffered=True, client_closes=False, family=family)
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"]["srv.get_buffer"] == "server-setup"


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_connection_lost_after_close_runs_in_the_context_close_was_called_in(family: str) -> None:
    results = on_both(buffered=False, client_closes=True, family=family)
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"]["cli.lost"] == "closing"


def datagram_recorder(side: str, seen: dict[str, Any], closes_after: int = 0) -> type[asyncio.DatagramProtocol]:
    class DatagramRecorder(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen[f"{side}.made"] = var.get()
            self.transport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            calls = seen.setdefault(f"{side}.data", [])
            calls.append(var.get())
            var.set(f"{side}-set-in-callback")
            if side == "srv":
                self.transport.sendto(data, addr)
            if closes_after and len(calls) == closes_after:
                self.transport.close()

        def error_received(self, exc: Exception) -> None:
            seen.setdefault(f"{side}.error", []).append(var.get())

        def connection_lost(self, exc: Exception | None) -> None:
            seen[f"{side}.lost"] = var.get()

    return DatagramRecorder


async def datagram_exchange(client_closes: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    var.set("server-setup")
    server, _ = await loop.create_datagram_endpoint(
        datagram_recorder("srv", seen, closes_after=0 if client_closes else 3), local_addr=("127.0.0.1", 0)
    )
    var.set("client-setup")
    client, _ = await loop.create_datagram_endpoint(
        datagram_recorder("cli", seen), remote_addr=server.get_extra_info("sockname")
    )
    var.set("after")
    for _ in range(2):
        client.sendto(b"ping")
        await asyncio.sleep(0.05)
    # Reading resumed from another context goes on in a copy of that one
    # (3.11+: 3.10's datagram transports cannot pause).
    var.set("resuming")
    if sys.version_info >= (3, 11):
        client.pause_reading()
        client.resume_reading()
    var.set("after-resume")
    client.sendto(b"ping")
    await asyncio.sleep(0.05)
    if client_closes:
        var.set("closing")
        client.close()
    else:
        client.close()
    await asyncio.sleep(0.1)
    seen["main"] = var.get()
    server.close()
    await asyncio.sleep(0.01)
    return seen


def test_datagram_callbacks_run_in_the_transports_context() -> None:
    results = {name: run_with_loop(factory, datagram_exchange(client_closes=False)) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    seen = results["asyncio"]
    assert seen["srv.data"] == ["server-setup", "srv-set-in-callback", "srv-set-in-callback"]
    assert seen["cli.data"][:2] == ["client-setup", "cli-set-in-callback"]
    assert seen["cli.data"][2] == ("resuming" if sys.version_info >= (3, 11) else "cli-set-in-callback")
    assert seen["srv.lost"] == "srv-set-in-callback"


def test_datagram_connection_lost_after_close_runs_in_the_context_close_was_called_in() -> None:
    results = {name: run_with_loop(factory, datagram_exchange(client_closes=True)) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"]["cli.lost"] == "closing"


async def datagram_drain_context() -> dict[str, Any]:
    """The buffer drains (and resume_writing runs) in a copy of the context
    of the sendto() that started buffering, as asyncio's writer handle."""
    import os
    import socket
    import tempfile
    import uuid

    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    class Writer(asyncio.DatagramProtocol):
        def pause_writing(self) -> None:
            seen["pause"] = var.get()

        def resume_writing(self) -> None:
            seen["resume"] = var.get()

        def connection_lost(self, exc: Exception | None) -> None:
            seen["lost"] = var.get()

    here, there = (os.path.join(tempfile.gettempdir(), f"ferroloop-ctx-{uuid.uuid4().hex[:12]}") for _ in range(2))
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(there)
    peer.setblocking(False)
    var.set("setup")
    transport, _ = await loop.create_datagram_endpoint(Writer, local_addr=here, family=socket.AF_UNIX)
    transport.set_write_buffer_limits(high=4096)
    var.set("first-blocked-send")
    while transport.get_write_buffer_size() == 0:
        transport.sendto(b"d" * 500, there)
    var.set("later-sends")
    while "pause" not in seen:
        transport.sendto(b"d" * 500, there)
    var.set("closing")
    transport.close()
    var.set("reading")
    while "lost" not in seen:
        try:
            peer.recv(1000)
        except BlockingIOError:
            await asyncio.sleep(0.001)
    peer.close()
    for path in (here, there):
        os.unlink(path)
    return seen


def test_datagram_buffer_drains_in_the_context_of_the_send_that_started_buffering() -> None:
    results = {name: run_with_loop(factory, datagram_drain_context()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"] == {"pause": "later-sends", "resume": "first-blocked-send", "lost": "first-blocked-send"}
class PipeRecorder(asyncio.Protocol):
    """Records the context var in each pipe protocol callback and sets it
    in data_received, to see whether the change stays for the next one."""

    def __init__(self, seen: dict[str, Any], side: str) -> None:
        self.seen = seen
        self.side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.seen[f"{self.side}.made"] = var.get()

    def data_received(self, data: bytes) -> None:
        self.seen.setdefault(f"{self.side}.data", []).append(var.get())
        var.set(f"{self.side}-set-in-callback")

    def eof_received(self) -> None:
        self.seen[f"{self.side}.eof"] = var.get()

    def pause_writing(self) -> None:
        self.seen[f"{self.side}.pause"] = var.get()

    def resume_writing(self) -> None:
        self.seen[f"{self.side}.resume"] = var.get()

    def connection_lost(self, exc: Exception | None) -> None:
        self.seen[f"{self.side}.lost"] = var.get()


async def pipe_exchange() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    r, w = os.pipe()
    var.set("reader-setup")
    await loop.connect_read_pipe(lambda: PipeRecorder(seen, "read"), os.fdopen(r, "rb", 0))
    r2, w2 = os.pipe()
    var.set("writer-setup")
    writer, _ = await loop.connect_write_pipe(lambda: PipeRecorder(seen, "write"), os.fdopen(w2, "wb", 0))
    var.set("after")
    for _ in range(2):
        os.write(w, b"ping")
        await asyncio.sleep(0.05)
    os.close(w)
    # The write transport pauses here and resumes from its writable
    # callback, which runs in the context the waiting write() was called in.
    writer.write(b"x" * (1 << 20))
    os.set_blocking(r2, False)
    received = 0
    while received < 1 << 20:
        await asyncio.sleep(0.01)
        try:
            received += len(os.read(r2, 1 << 20))
        except BlockingIOError:
            pass
    await asyncio.sleep(0.05)
    var.set("closing")
    writer.close()
    await asyncio.sleep(0.05)
    os.close(r2)
    seen["main"] = var.get()
    return seen


def test_pipe_protocol_callbacks_run_where_asyncios_do() -> None:
    results = {name: run_with_loop(factory, pipe_exchange()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    seen = results["asyncio"]
    assert seen["read.data"] == ["reader-setup", "read-set-in-callback"]
    assert seen["read.eof"] == "read-set-in-callback" and seen["read.lost"] == "read-set-in-callback"
    assert seen["write.pause"] == "after" and seen["write.resume"] == "after"
    assert seen["write.lost"] == "closing"
