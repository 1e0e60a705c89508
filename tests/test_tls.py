"""TLS over the native stream transport, and the three places where
ferroloop's SSLProtocol (3.11+) ends a connection more cleanly than
asyncio's: no data after close(), a close while reading is paused, and
application data that races the close_notify. The peers here are threads
driving ssl.SSLObject by hand, so that each test controls exactly which
TLS records arrive when."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import pytest
from test.test_asyncio import utils as asyncio_test_utils

import ferroloop
from netutil import hang_guard, run_with_loop

needs_buffered_sslproto = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10's asyncio SSLProtocol is the older design, used as it is"
)

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "ferroloop": ferroloop.new_event_loop}


def server_context() -> ssl.SSLContext:
    return asyncio_test_utils.simple_server_sslcontext()


def client_context() -> ssl.SSLContext:
    return asyncio_test_utils.simple_client_sslcontext()


class Peer:
    """A thread on one end of a TCP connection, running ``script(sock)``;
    ``join()`` re-raises what the script raised."""

    def __init__(self, script: Callable[[socket.socket], None], *, connect_to: Any = None) -> None:
        self.error: Optional[BaseException] = None
        self._script = script
        self._connect_to = connect_to
        self._listener: Optional[socket.socket] = None
        if connect_to is None:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.address = self._listener.getsockname()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._listener is not None:
                sock, _ = self._listener.accept()
                self._listener.close()
            else:
                sock = socket.create_connection(self._connect_to)
            sock.settimeout(10)
            with sock:
                self._script(sock)
        except BaseException as exc:  # noqa: BLE001  # handed to the test by join()
            self.error = exc

    def join(self) -> None:
        self._thread.join(15)
        assert not self._thread.is_alive(), "the peer thread hung"
        if self.error is not None:
            raise self.error


class TLSPeer:
    """One side of TLS over a blocking socket, record by record."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    def flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the loop's side closed the TCP connection")
        self.incoming.write(data)

    def handshake(self, *, flush: bool = True) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.receive()
        if flush:
            self.flush()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def read(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                self.receive()

    def read_until_close_notify(self) -> bytes:
        """The application data before the peer's close_notify."""
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self.receive()
                continue
            except ssl.SSLZeroReturnError:
                return received
            if not chunk:
                return received
            received += chunk

    def answer_close_notify(self) -> None:
        self.tls.unwrap()
        self.flush()


class Recorder(asyncio.Protocol):
    """What a TLS protocol was called with, and futures for the ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: Any = None
        self.received = b""
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> None:
        self.eof.set_result(None)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost.set_result(exc)


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    with hang_guard(60):
        yield


@needs_buffered_sslproto
def test_tls_rides_the_native_stream_transport() -> None:
    async def main() -> tuple[Any, bytes]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context())
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost"
        )
        raw = writer.transport._ssl_protocol._transport  # type: ignore[attr-defined]
        writer.write(b"hello")
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return raw, echoed

    raw, echoed = run_with_loop(ferroloop.new_event_loop, main())
    assert isinstance(raw, ferroloop._native.StreamTransport)
    assert echoed == b"hello"


@needs_buffered_sslproto
def test_close_while_reading_is_paused_completes_the_shutdown() -> None:
    """The peer's data is still unread (reading paused) when close() starts
    the TLS shutdown: the data is dropped, the close_notify exchange
    completes, and the protocol gets eof_received() and connection_lost(None).
    asyncio's close fails on that data (or waits out its shutdown timeout)."""

    def script(sock: socket.socket) -> None:
        peer = TLSPeer(sock, server_context(), server_side=True)
        peer.handshake(flush=False)
        peer.tls.write(b"unread data")
        peer.flush()
        assert peer.read_until_close_notify() == b""
        peer.answer_close_notify()
        assert sock.recv(1) == b""

    async def main() -> tuple[Recorder, Any]:
        loop = asyncio.get_running_loop()
        peer = Peer(script)
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), *peer.address, ssl=client_context(), server_hostname="localhost"
        )
        transport.pause_reading()
        transport.close()
        await asyncio.wait_for(protocol.eof, 10)
        lost = await asyncio.wait_for(protocol.lost, 10)
        await loop.run_in_executor(None, peer.join)
        return protocol, lost

    protocol, lost = run_with_loop(ferroloop.new_event_loop, main())
    assert lost is None
    assert protocol.received == b""


@needs_buffered_sslproto
def test_application_data_racing_the_close_notify_is_dropped() -> None:
    """bpo-39951: the peer sends data after our close() has begun and before
    it sees our close_notify. The close completes without an SSLError and the
    data reaches nobody."""
    closed = threading.Event()

    def script(sock: socket.socket) -> None:
        peer = TLSPeer(sock, server_context(), server_side=True)
        peer.handshake()
        assert peer.read(4) == b"ping"
        peer.send(b"pong")
        assert closed.wait(10)
        peer.send(b"after your close")
        assert peer.read_until_close_notify() == b""
        peer.answer_close_notify()

    async def main() -> bytes:
        peer = Peer(script)
        reader, writer = await asyncio.open_connection(
            *peer.address, ssl=client_context(), server_hostname="localhost"
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"pong"
        writer.close()
        closed.set()
        await asyncio.wait_for(writer.wait_closed(), 10)
        await asyncio.get_running_loop().run_in_executor(None, peer.join)
        return await reader.read()

    assert run_with_loop(ferroloop.new_event_loop, main()) == b""


@needs_buffered_sslproto
def test_start_tls_caller_holds_the_tls_transport_before_the_first_data() -> None:
    """The client's first data comes in the same TCP segment as its last
    handshake flight. The server protocol echoes on whatever transport it
    holds: that must already be the TLS one, or the echo goes out in clear."""
    class Upgrader(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: Any = None
            self.upgraded = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            asyncio.ensure_future(self.upgrade(transport))

        async def upgrade(self, transport: Any) -> None:
            loop = asyncio.get_running_loop()
            self.transport = await loop.start_tls(transport, self, server_context(), server_side=True)
            self.upgraded.set_result(None)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    def script(sock: socket.socket) -> None:
        peer = TLSPeer(sock, client_context(), server_side=False)
        peer.handshake(flush=False)
        peer.tls.write(b"hello")  # rides with the client's Finished
        peer.flush()
        assert peer.read(5) == b"hello"

    async def main() -> None:
        protocol = Upgrader()
        server = await asyncio.get_running_loop().create_server(lambda: protocol, "127.0.0.1", 0)
        peer = Peer(script, connect_to=server.sockets[0].getsockname())
        await asyncio.get_running_loop().run_in_executor(None, peer.join)
        await protocol.upgraded
        protocol.transport.close()
        server.close()
        await server.wait_closed()

    run_with_loop(ferroloop.new_event_loop, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_data_before_a_bare_tcp_eof_waits_for_resume_reading(loop_name: str) -> None:
    """A peer's TCP EOF without close_notify while reading is paused: what it
    sent before is delivered once reading resumes, then the connection
    closes cleanly (asyncio's behaviour, which the mends above keep)."""
    eof_sent = threading.Event()

    def script(sock: socket.socket) -> None:
        peer = TLSPeer(sock, server_context(), server_side=True)
        peer.handshake()
        peer.send(b"hello")
        assert peer.read(5) == b"world"
        peer.send(b"extra bytes")
        sock.shutdown(socket.SHUT_WR)
        eof_sent.set()
        assert sock.recv(1024) == b""

    class Pausing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if data == b"hello":
                self.transport.write(b"world")
                self.transport.pause_reading()

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        peer = Peer(script)
        transport, protocol = await loop.create_connection(
            lambda: Pausing(loop), *peer.address, ssl=client_context(), server_hostname="localhost"
        )
        await loop.run_in_executor(None, eof_sent.wait, 10)
        await asyncio.sleep(0.1)
        assert protocol.received == b"hello"
        transport.resume_reading()
        lost = await asyncio.wait_for(protocol.lost, 10)
        transport.close()
        await loop.run_in_executor(None, peer.join)
        return protocol.received, lost

    received, lost = run_with_loop(LOOPS[loop_name], main())
    assert received == b"helloextra bytes"
    assert lost is None


@needs_buffered_sslproto
def test_a_tls_server_accepts_natively_in_the_servers_context() -> None:
    """TLS servers take the native accept loop too: each connection's
    protocol is made, and connection_made() runs, in a copy of the context
    serving started in."""
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[tuple[str, str]] = []

    class Echo(asyncio.Protocol):
        def __init__(self) -> None:
            seen.append(("factory", request_id.get()))
            request_id.set("changed by a connection")

        def connection_made(self, transport: Any) -> None:
            seen.append(("made", request_id.get()))
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)
            self.transport.close()

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        request_id.set("server")
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_context())
        request_id.set("after the server")
        listening_fd = server.sockets[0].fileno()
        assert listening_fd in loop._listeners  # type: ignore[attr-defined]
        echoed = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost"
            )
            writer.write(b"ping")
            echoed.append(await reader.read())
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return echoed

    assert run_with_loop(ferroloop.new_event_loop, main()) == [b"ping", b"ping"]
    assert seen == [("factory", "server"), ("made", "changed by a connection")] * 2


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_failed_server_handshake_is_dropped_and_reported_in_debug_mode(loop_name: str) -> None:
    async def main() -> tuple[bytes, set[str]]:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        reported: set[str] = set()
        loop.set_exception_handler(lambda _loop, context: reported.add(context["message"]))
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_context())
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"GET / HTTP/1.0\r\n\r\n" * 20)  # not a TLS ClientHello
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        for _ in range(20):  # the report comes a callback or two later
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        loop.set_debug(False)
        return answer, reported

    answer, reported = run_with_loop(LOOPS[loop_name], main())
    assert reported == {"Error on transport creation for incoming connection"}
    assert b"HTTP" not in answer  # at most a TLS alert, then EOF
