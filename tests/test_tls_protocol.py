"""ferroloop's native SSLProtocol and its application transport against
asyncio's, side by side: the transport's surface (limits, extra info,
errors and messages for bad input), what reaches the exception handler and
the log, flow control both ways, buffered application protocols, timeouts
and handshake failures. Each scenario runs on asyncio and on ferroloop and
the two records must be equal."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import sys
from asyncio import sslproto
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
    with hang_guard(60):
        yield


def server_context() -> ssl.SSLContext:
    return asyncio_test_utils.simple_server_sslcontext()


def client_context() -> ssl.SSLContext:
    return asyncio_test_utils.simple_client_sslcontext()


def on_both(scenario: Callable[[], Any]) -> dict[str, Any]:
    """The scenario's record on each loop; the test asserts they match."""
    return {name: run_with_loop(factory, scenario()) for name, factory in LOOPS.items()}


def error_of(call: Callable[[], Any]) -> Optional[tuple[str, str]]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001  # the record is the exception itself
        return type(exc).__name__, str(exc)
    return None


class Sink(asyncio.Protocol):
    """Records what arrives; echoes if asked to."""

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


async def tls_pair(
    server_protocol: Callable[[], asyncio.BaseProtocol], client_protocol: Callable[[], asyncio.BaseProtocol], **kwargs: Any
) -> tuple[Any, Any, Any]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(server_protocol, "127.0.0.1", 0, ssl=server_context())
    transport, protocol = await loop.create_connection(
        client_protocol, *server.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost", **kwargs
    )
    return server, transport, protocol


async def close_server(server: Any) -> None:
    server.close()
    await server.wait_closed()


def test_application_transport_surface_matches_asyncio() -> None:
    async def scenario() -> dict[str, Any]:
        server, tr, proto = await tls_pair(lambda: Sink(echo=True), Sink)
        record: dict[str, Any] = {
            "is Transport": isinstance(tr, asyncio.Transport),
            "is asyncio's class": isinstance(tr, sslproto._SSLProtocolTransport),
            "ssl in class name": "ssl" in tr.__class__.__name__.lower(),
            "start_tls compatible": tr._start_tls_compatible,
            "sendfile": tr._sendfile_compatible,
            "protocol is BufferedProtocol": isinstance(tr._ssl_protocol, asyncio.BufferedProtocol),
            "protocol is asyncio's class": isinstance(tr._ssl_protocol, sslproto.SSLProtocol),
            "sslcontext": tr.get_extra_info("sslcontext") is not None,
            "ssl_object": type(tr.get_extra_info("ssl_object")).__name__,
            "cipher": type(tr.get_extra_info("cipher")).__name__,
            "peercert": tr.get_extra_info("peercert"),
            "compression": tr.get_extra_info("compression"),
            "socket": tr.get_extra_info("socket") is not None,
            "peername": tr.get_extra_info("peername") == server.sockets[0].getsockname(),
            "default": tr.get_extra_info("no such key", "fallback"),
            "write limits": tr.get_write_buffer_limits(),
            "read limits": tr.get_read_buffer_limits(),
            "write size": tr.get_write_buffer_size(),
            "read size": tr.get_read_buffer_size(),
            "can_write_eof": tr.can_write_eof(),
            "write_eof": error_of(tr.write_eof),
            "write str": error_of(lambda: tr.write("text")),
            "write int": error_of(lambda: tr.write(7)),
            "bad limits": error_of(lambda: tr.set_write_buffer_limits(high=1, low=2)),
            "bad read limits": error_of(lambda: tr.set_read_buffer_limits(high=1, low=2)),
            "negative low": error_of(lambda: tr.set_write_buffer_limits(high=1, low=-1)),
            "is_closing": tr.is_closing(),
            "is_reading": tr.is_reading(),
            "protocol paused": tr._protocol_paused,
        }
        tr.set_write_buffer_limits(high=100)
        record["high only"] = tr.get_write_buffer_limits()
        tr.set_write_buffer_limits(low=10)
        record["low only"] = tr.get_write_buffer_limits()
        tr.set_read_buffer_limits(300, 20)
        record["read both"] = tr.get_read_buffer_limits()
        tr.set_write_buffer_limits()
        tr.set_read_buffer_limits()
        tr.pause_reading()
        record["paused is_reading"] = tr.is_reading()
        tr.resume_reading()
        record["resumed is_reading"] = tr.is_reading()
        other = Sink()
        tr.set_protocol(other)
        record["set_protocol"] = tr.get_protocol() is other
        tr.set_protocol(proto)
        tr.write(b"")
        tr.write(b"abc")
        tr.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
        while len(proto.received) < 6:
            await asyncio.sleep(0.01)
        record["echoed"] = bytes(proto.received)
        tr.close()
        record["closing after close"] = tr.is_closing()
        record["lost with"] = await proto.lost
        record["events"] = proto.events
        record["protocol after lost"] = tr.get_protocol()
        tr.close()
        record["after second close"] = error_of(tr.get_protocol)
        await close_server(server)
        return record

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"]["echoed"] == b"abcdef"


def test_writes_after_close_warn_as_asyncio_does(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> int:
        server, tr, proto = await tls_pair(Sink, Sink)
        tr.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                tr.write(b"late")
        warned = sum(r.getMessage() == "SSL connection is closed" for r in caplog.records)
        await proto.lost
        await close_server(server)
        return warned

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"] == 3


def test_eof_received_returning_true_warns(caplog: pytest.LogCaptureFixture) -> None:
    class KeepOpen(Sink):
        def eof_received(self) -> Any:
            super().eof_received()
            return True

    async def scenario() -> tuple[int, list[str]]:
        loop = asyncio.get_running_loop()
        servers: list[Sink] = []
        server = await loop.create_server(lambda: servers.append(KeepOpen()) or servers[-1], "127.0.0.1", 0, ssl=server_context())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            tr, proto = await loop.create_connection(Sink, *server.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost")
            tr.close()
            await proto.lost
            await servers[0].lost
        warned = sum(r.getMessage() == "returning true from eof_received() has no effect when using ssl" for r in caplog.records)
        await close_server(server)
        return warned, servers[0].events

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"] == (1, ["made", "eof", "lost"])


def test_bad_timeouts_raise_asyncio_errors() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context())
        address = server.sockets[0].getsockname()
        record = []
        for kwargs in ({"ssl_handshake_timeout": 0}, {"ssl_handshake_timeout": -1.5}, {"ssl_shutdown_timeout": 0}):
            try:
                await loop.create_connection(Sink, *address, ssl=client_context(), server_hostname="localhost", **kwargs)
            except ValueError as exc:
                record.append(str(exc))
        await close_server(server)
        return record

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert len(records["ferroloop"]) == 3


def test_handshake_timeout_aborts_with_asyncio_message() -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        loop = asyncio.get_running_loop()
        silent = await loop.create_server(Sink, "127.0.0.1", 0)  # plain TCP: never answers the ClientHello
        try:
            await loop.create_connection(
                Sink, *silent.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost", ssl_handshake_timeout=0.2
            )
        except Exception as exc:  # noqa: BLE001  # the record is the exception
            result = (type(exc).__name__, str(exc), [])
        else:
            result = ("no error", "", [])
        await close_server(silent)
        return result

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][:2] == (
        "ConnectionAbortedError",
        "SSL handshake is taking longer than 0.2 seconds: aborting the connection",
    )


def test_failed_verification_reaches_the_caller_not_the_handler() -> None:
    async def scenario() -> tuple[str, bool, list[str]]:
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda loop, context: reported.append(context["message"]))
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context())
        verifying = ssl.create_default_context()  # the test certificate is self-signed
        try:
            await loop.create_connection(Sink, *server.sockets[0].getsockname(), ssl=verifying, server_hostname="localhost")
        except Exception as exc:  # noqa: BLE001  # the record is the exception
            error = (type(exc).__name__, isinstance(exc, ssl.CertificateError))
        else:
            error = ("no error", False)
        await close_server(server)
        await asyncio.sleep(0.05)
        return error[0], error[1], reported

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][:2] == ("SSLCertVerificationError", True)


def test_errors_in_application_callbacks_reach_the_handler() -> None:
    class FailsOnData(Sink):
        def data_received(self, data: bytes) -> None:
            raise ZeroDivisionError("in data_received")

    class FailsOnPause(Sink):
        def pause_writing(self) -> None:
            raise KeyError("in pause_writing")

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []

        def handler(loop: Any, context: dict[str, Any]) -> None:
            reported.append(
                (
                    context["message"],
                    type(context.get("exception")).__name__,
                    isinstance(context.get("protocol"), sslproto.SSLProtocol),
                    context.get("transport") is not None,
                )
            )

        loop.set_exception_handler(handler)
        server, tr, proto = await tls_pair(lambda: Sink(echo=True), FailsOnData)
        tr.write(b"boom")
        lost = await proto.lost
        record: list[Any] = [type(lost).__name__]
        await close_server(server)
        server, tr, proto = await tls_pair(Sink, FailsOnPause)
        tr.set_write_buffer_limits(high=0)
        tr.write(b"fills the buffer")
        tr.close()
        await proto.lost
        await close_server(server)
        return record + reported

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert ("Fatal error on SSL protocol", "ZeroDivisionError", True, True) in records["ferroloop"]
    assert ("protocol.pause_writing() failed", "KeyError", True, True) in records["ferroloop"]


def test_buffered_application_protocol_and_flow_control_keep_every_byte() -> None:
    """A buffered protocol reads 8 MiB through small buffers while the
    writer is paused and resumed by both ends' flow control."""
    payload = bytes(range(256)) * (8 * 4096)

    class SmallBuffers(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(1000)
            self.digest = hashlib.sha256()
            self.count = 0
            self.done = asyncio.get_running_loop().create_future()
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.pause_reading()
            asyncio.get_running_loop().call_later(0.2, transport.resume_reading)

        def get_buffer(self, sizehint: int) -> memoryview:
            return memoryview(self.buffer)

        def buffer_updated(self, nbytes: int) -> None:
            self.digest.update(self.buffer[:nbytes])
            self.count += nbytes
            if self.count == len(payload):
                self.transport.write(b"done")

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            if not self.done.done():
                self.done.set_result(self.digest.hexdigest())

    class Writer(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.pauses = 0

        def pause_writing(self) -> None:
            self.pauses += 1

    async def scenario() -> tuple[str, bool, bytes]:
        loop = asyncio.get_running_loop()
        readers: list[SmallBuffers] = []
        server = await loop.create_server(lambda: readers.append(SmallBuffers()) or readers[-1], "127.0.0.1", 0, ssl=server_context())
        tr, proto = await loop.create_connection(Writer, *server.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost")
        for start in range(0, len(payload), 65536):
            tr.write(payload[start : start + 65536])
        while bytes(proto.received) != b"done":
            await asyncio.sleep(0.01)
        tr.close()
        digest = await readers[0].done
        await close_server(server)
        return digest, proto.pauses > 0, bytes(proto.received)

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"] == (hashlib.sha256(payload).hexdigest(), True, b"done")


def test_tls_connect_errors_match_asyncio() -> None:
    """create_connection(ssl=...) to a numeric address (and
    create_unix_connection(ssl=...)) connect natively; what they raise for
    a refused connect, a missing server_hostname, a host name that does not
    match the certificate and ssl=True's verifying context is asyncio's."""

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        record: list[Any] = []
        probe = await loop.create_server(Sink, "127.0.0.1", 0)
        refused = probe.sockets[0].getsockname()
        await close_server(probe)
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context())
        address = server.sockets[0].getsockname()
        attempts: list[Callable[[], Any]] = [
            lambda: loop.create_connection(Sink, *refused, ssl=client_context(), server_hostname="localhost"),
            # server_hostname defaults to the host: '127.0.0.1' is not in the certificate.
            lambda: loop.create_connection(Sink, *address, ssl=ssl.create_default_context()),
            lambda: loop.create_connection(Sink, *address, ssl=True, server_hostname="localhost"),
            lambda: loop.create_connection(Sink, host=address[0], port=address[1], ssl=client_context(), server_hostname=""),
            lambda: loop.create_unix_connection(Sink, "/nonexistent/tls.sock", ssl=client_context()),
            lambda: loop.create_unix_connection(Sink, "/nonexistent/tls.sock", ssl=client_context(), server_hostname="x"),
            lambda: loop.create_connection(Sink, *address, server_hostname="localhost"),
        ]
        for attempt in attempts:
            try:
                tr, _ = await attempt()
            except Exception as exc:  # noqa: BLE001  # the record is the exception
                message = exc.reason if isinstance(exc, ssl.SSLError) else str(exc).replace(str(refused[1]), "PORT")
                record.append((type(exc).__name__, message))
            else:
                record.append(("connected", type(tr).__name__ != ""))
                tr.close()
        await close_server(server)
        return record

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][0][0] == "ConnectionRefusedError"
    assert records["ferroloop"][3] == ("connected", True)


def test_tls_connect_to_a_numeric_address_takes_the_native_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio's address handling (base_events._ipaddr_info) is not run for
    a TLS connect to a numeric address: the connect is native."""
    calls: list[Any] = []
    original = asyncio.base_events._ipaddr_info

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    async def main() -> bytes:
        server, tr, proto = await tls_pair(lambda: Sink(echo=True), Sink)
        tr.write(b"ping")
        while len(proto.received) < 4:
            await asyncio.sleep(0.01)
        tr.close()
        await proto.lost
        await close_server(server)
        return bytes(proto.received)

    monkeypatch.setattr(asyncio.base_events, "_ipaddr_info", counting)
    assert run_with_loop(ferroloop.new_event_loop, main()) == b"ping"
    connects = [args for args in calls if args[3] == socket.IPPROTO_TCP or args[2] == socket.SOCK_STREAM]
    assert len(connects) <= 1  # create_server's own resolution, not the connect's
    calls.clear()
    assert run_with_loop(asyncio.SelectorEventLoop, main()) == b"ping"
    assert len(calls) > len(connects), "the check must see asyncio's own path"


def test_cancelling_a_tls_connect_mid_handshake_closes_it() -> None:
    async def scenario() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        accepted: list[Sink] = []
        silent = await loop.create_server(lambda: accepted.append(Sink()) or accepted[-1], "127.0.0.1", 0)
        task = asyncio.ensure_future(
            loop.create_connection(Sink, *silent.sockets[0].getsockname(), ssl=client_context(), server_hostname="localhost")
        )
        while not accepted:
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
            outcome = "connected"
        except asyncio.CancelledError:
            outcome = "cancelled"
        lost = await asyncio.wait_for(accepted[0].lost, 5)
        await close_server(silent)
        return outcome, 0 if lost is None else 1

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"] == ("cancelled", 0)


def test_custom_sslobject_class_and_bad_ssl_argument() -> None:
    """A context whose sslobject_class is the program's own still makes
    that class's objects (and its methods are the ones called); an ssl=
    that is no context fails with asyncio's error."""

    class CountingSSLObject(ssl.SSLObject):
        handshakes = 0

        def do_handshake(self) -> None:
            CountingSSLObject.handshakes += 1
            super().do_handshake()

    async def scenario() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context())
        address = server.sockets[0].getsockname()
        context = client_context()
        context.sslobject_class = CountingSSLObject
        CountingSSLObject.handshakes = 0
        tr, proto = await loop.create_connection(Sink, *address, ssl=context, server_hostname="localhost")
        kind = type(tr.get_extra_info("ssl_object")).__name__
        tr.close()
        await proto.lost
        try:
            await loop.create_connection(Sink, *address, ssl=1, server_hostname="localhost")
            bad = None
        except Exception as exc:  # noqa: BLE001  # the record is the exception
            bad = (type(exc).__name__, str(exc))
        await close_server(server)
        return kind, CountingSSLObject.handshakes > 0, bad

    records = on_both(scenario)
    assert records["ferroloop"] == records["asyncio"]
    assert records["ferroloop"][:2] == ("CountingSSLObject", True)
