"""TLS under hostile peers and odd traffic, on asyncio and on ferroloop side
by side: garbage instead of a ClientHello, a peer reset mid-handshake and
mid-transfer, a plaintext answer to a client's handshake, a peer that stops
reading while the other end closes, mutable buffers changed after write(),
and every byte intact when both directions stream at once in ragged chunks
with reading paused and resumed at random. A server that met a bad peer must
go on serving good ones."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import struct
import sys
from typing import Any, Callable, Iterator, Optional

import pytest
from test.test_asyncio import utils as asyncio_test_utils

import ferroloop
from netutil import hang_guard, run_with_loop

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10's asyncio SSLProtocol is the older design, used as it is"
)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    with hang_guard(90):
        yield


def on_both(scenario: Callable[[], Any]) -> dict[str, Any]:
    return {name: run_with_loop(factory, scenario()) for name, factory in LOOPS.items()}


class Recorder(asyncio.Protocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: Any = None
        self.received = bytearray()
        self.events: list[str] = []
        self.lost: "asyncio.Future[Optional[BaseException]]" = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self) -> Any:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def kind(exc: Optional[BaseException]) -> Optional[str]:
    return None if exc is None else type(exc).__name__


async def tls_server(protocols: list[Recorder], echo: bool = True) -> Any:
    def factory() -> Recorder:
        protocols.append(Recorder(echo=echo))
        return protocols[-1]

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory, "127.0.0.1", 0, ssl=asyncio_test_utils.simple_server_sslcontext(), ssl_handshake_timeout=5
    )


async def good_round_trip(address: Any) -> bytes:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(
        Recorder, *address, ssl=asyncio_test_utils.simple_client_sslcontext(), server_hostname="localhost"
    )
    tr.write(b"still serving")
    while len(proto.received) < len(b"still serving"):
        await asyncio.wait_for(asyncio.sleep(0.01), 5)
    tr.close()
    await proto.lost
    return bytes(proto.received)


async def raw_peer(address: Any, send: bytes, *, reset: bool) -> bytes:
    """Connects in plain TCP, sends ``send`` and either resets the
    connection at once or reads what comes back until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(send)
    await writer.drain()
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return b""
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_garbage_and_resets_in_the_handshake_leave_the_server_serving() -> None:
    client_hello_head = bytes.fromhex("160301") + (512).to_bytes(2, "big") + b"\x01\x00\x01\xfc\x03\x03"

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda loop, context: reported.append(context["message"]))
        protocols: list[Recorder] = []
        server = await tls_server(protocols)
        address = server.sockets[0].getsockname()
        record: dict[str, Any] = {}
        # An HTTP request to a TLS port: the server answers with an alert or nothing, and closes.
        answer = await raw_peer(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", reset=False)
        record["plaintext answered with an alert or nothing"] = answer[:1] in (b"", b"\x15")
        await raw_peer(address, client_hello_head, reset=True)
        await raw_peer(address, b"", reset=True)
        await raw_peer(address, bytes(range(256)) * 64, reset=True)
        await asyncio.sleep(0.1)
        record["protocols made"] = len(protocols)
        record["after"] = await good_round_trip(address)
        record["reported"] = sorted(set(reported))
        server.close()
        await server.wait_closed()
        return record

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"]["after"] == b"still serving"
    assert records["ferroloop"]["plaintext answered with an alert or nothing"] is True


def test_a_plaintext_answer_to_the_client_handshake_raises_sslerror() -> None:
    async def scenario() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()

        async def answer_in_plaintext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer_in_plaintext, "127.0.0.1", 0)
        try:
            await loop.create_connection(
                Recorder,
                *server.sockets[0].getsockname(),
                ssl=asyncio_test_utils.simple_client_sslcontext(),
                server_hostname="localhost",
            )
            outcome: tuple[Any, ...] = ("connected",)
        except (ssl.SSLError, ConnectionError) as exc:
            outcome = (type(exc).__name__, getattr(exc, "reason", None))
        server.close()
        await server.wait_closed()
        return outcome

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][0] in ("SSLError", "ConnectionResetError")


def test_a_peer_reset_mid_transfer_reaches_connection_lost() -> None:
    async def scenario() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        protocols: list[Recorder] = []
        server = await tls_server(protocols, echo=False)
        tr, proto = await loop.create_connection(
            Recorder,
            *server.sockets[0].getsockname(),
            ssl=asyncio_test_utils.simple_client_sslcontext(),
            server_hostname="localhost",
        )
        tr.write(b"x" * 100_000)
        while len(protocols[0].received) < 100_000:
            await asyncio.sleep(0.01)
        raw = protocols[0].transport.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        protocols[0].transport.abort()
        client_lost = await asyncio.wait_for(proto.lost, 10)
        server_lost = await asyncio.wait_for(protocols[0].lost, 10)
        # Writes to the dead transport are dropped, never raised.
        tr.write(b"after the reset")
        server.close()
        await server.wait_closed()
        return kind(client_lost), kind(server_lost), proto.events, len(protocols[0].received)

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][0] == "ConnectionResetError"


def test_closing_while_the_peer_never_reads_ends_after_the_shutdown_timeout() -> None:
    async def scenario() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        protocols: list[Recorder] = []

        class NeverReads(Recorder):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                transport.pause_reading()

        server = await loop.create_server(
            lambda: protocols.append(NeverReads()) or protocols[-1],
            "127.0.0.1",
            0,
            ssl=asyncio_test_utils.simple_server_sslcontext(),
        )
        tr, proto = await loop.create_connection(
            Recorder,
            *server.sockets[0].getsockname(),
            ssl=asyncio_test_utils.simple_client_sslcontext(),
            server_hostname="localhost",
            ssl_shutdown_timeout=0.5,
        )
        for _ in range(64):
            tr.write(b"y" * 65536)
        started = loop.time()
        tr.close()
        lost = await asyncio.wait_for(proto.lost, 10)
        took_long_enough = loop.time() - started >= 0.4
        protocols[0].transport.abort()
        server.close()
        await server.wait_closed()
        return kind(lost), took_long_enough, tr.is_closing()

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][1:] == (True, True)


def test_a_mutable_buffer_changed_after_write_sends_what_it_held_then() -> None:
    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        protocols: list[Recorder] = []
        server = await tls_server(protocols, echo=False)
        tr, proto = await loop.create_connection(
            Recorder,
            *server.sockets[0].getsockname(),
            ssl=asyncio_test_utils.simple_client_sslcontext(),
            server_hostname="localhost",
        )
        chunk = bytearray(b"a" * 300_000)
        tr.write(chunk)
        chunk[:] = b"b" * 300_000
        view = memoryview(bytearray(b"c" * 1000))
        tr.write(view)
        view[:] = b"d" * 1000
        tr.writelines([bytearray(b"e" * 10), b"f" * 10])
        while len(protocols[0].received) < 301_020:
            await asyncio.sleep(0.01)
        tr.close()
        await proto.lost
        server.close()
        await server.wait_closed()
        return hashlib.sha256(protocols[0].received).digest()

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    expected = b"a" * 300_000 + b"c" * 1000 + b"e" * 10 + b"f" * 10
    assert records["ferroloop"] == hashlib.sha256(expected).digest()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_both_directions_at_once_in_ragged_chunks_keep_every_byte(seed: int) -> None:
    """Client and server each stream 4 MiB of seeded random chunks while
    the other end pauses and resumes reading at random; each side's digest
    of what it received must be the digest of what the other sent."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 7, 100, 1500, 16383, 16385, 65536, 200_000]) for _ in range(200)]

    def stream(tag: int) -> list[bytes]:
        chunks, total = [], 0
        for index, size in enumerate(sizes):
            if total >= 4 << 20:
                break
            chunks.append(bytes([(tag + index) % 256]) * size)
            total += size
        return chunks

    client_chunks, server_chunks = stream(1), stream(101)

    class Streamer(asyncio.Protocol):
        def __init__(self, chunks: list[bytes], expect: int, pause_seed: int) -> None:
            self.chunks = chunks
            self.expect = expect
            self.digest = hashlib.sha256()
            self.count = 0
            self.rng = random.Random(pause_seed)
            self.done = asyncio.get_running_loop().create_future()
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            for chunk in self.chunks:
                transport.write(chunk)

        def data_received(self, data: bytes) -> None:
            self.digest.update(data)
            self.count += len(data)
            if self.rng.random() < 0.05:
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(self.rng.random() * 0.01, self.transport.resume_reading)
            if self.count >= self.expect and not self.done.done():
                self.done.set_result((self.count, self.digest.hexdigest()))

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            if not self.done.done():
                self.done.set_result((self.count, kind(exc)))

    client_total = sum(map(len, client_chunks))
    server_total = sum(map(len, server_chunks))

    async def scenario() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        servers: list[Streamer] = []
        server = await loop.create_server(
            lambda: servers.append(Streamer(server_chunks, client_total, seed * 7)) or servers[-1],
            "127.0.0.1",
            0,
            ssl=asyncio_test_utils.simple_server_sslcontext(),
        )
        tr, client = await loop.create_connection(
            lambda: Streamer(client_chunks, server_total, seed * 13),
            *server.sockets[0].getsockname(),
            ssl=asyncio_test_utils.simple_client_sslcontext(),
            server_hostname="localhost",
        )
        client_got = await asyncio.wait_for(client.done, 60)
        server_got = await asyncio.wait_for(servers[0].done, 60)
        tr.close()
        server.close()
        await server.wait_closed()
        return client_got, server_got

    def digest_of(chunks: list[bytes]) -> str:
        return hashlib.sha256(b"".join(chunks)).hexdigest()

    expected = ((server_total, digest_of(server_chunks)), (client_total, digest_of(client_chunks)))
    records = on_both(scenario)
    assert records["asyncio"] == expected
    assert records["ferroloop"] == expected


def test_bad_writes_raise_asyncio_errors() -> None:
    """Wrong types raise in write(); a buffer the TLS engine refuses (a
    strided memoryview) is a fatal error of the connection, reported once
    per attempt to flush it, as asyncio does."""

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        reported: list[tuple[str, Optional[str]]] = []
        loop.set_exception_handler(lambda loop, context: reported.append((context["message"], kind(context.get("exception")))))
        protocols: list[Recorder] = []
        server = await tls_server(protocols)
        tr, proto = await loop.create_connection(
            Recorder,
            *server.sockets[0].getsockname(),
            ssl=asyncio_test_utils.simple_client_sslcontext(),
            server_hostname="localhost",
        )
        record: list[Any] = []

        def attempt(call: Callable[[], Any]) -> None:
            try:
                call()
                record.append("accepted")
            except Exception as exc:  # noqa: BLE001  # the record is the exception
                record.append((type(exc).__name__, str(exc)))

        not_bytes: list[Any] = ["text", 12, None, [b"a"]]
        for bad in not_bytes:
            attempt(lambda: tr.write(bad))
        not_iterable: Any = 5
        attempt(lambda: tr.writelines(not_iterable))
        tr.write(b"")
        tr.write(b"ok")
        while b"ok" not in proto.received:
            await asyncio.sleep(0.01)
        record.append(bytes(proto.received))
        attempt(lambda: tr.write(memoryview(b"abcd")[::2]))
        attempt(lambda: tr.write(b"more"))
        lost = await asyncio.wait_for(proto.lost, 10)
        attempt(lambda: tr.write(b"after"))
        tr.abort()
        tr.abort()
        tr.close()
        server.close()
        await server.wait_closed()
        return record + [kind(lost), reported, proto.events]

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][0][0] == "TypeError"
