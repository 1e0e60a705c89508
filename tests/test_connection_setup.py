"""Connection set-up shortcuts checked against what asyncio computes: the
numeric-address test create_connection uses instead of asyncio's
``_ipaddr_info``, and socket names read natively for get_extra_info."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import sys
import tempfile
from asyncio import base_events
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ferroloop
from ferroloop._native import numeric_tcp_target

from netutil import run_with_loop

IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda o: ".".join(map(str, o)))
IPV6 = st.ip_addresses(v=6).map(str)
NEAR_MISSES = st.sampled_from(
    ["", "127.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.0.0.1", " 1.2.3.4", "1.2.3.4\0", "::1%lo", "fe80::1%1",
     "::ffff:1.2.3.4", "localhost", "١.٢.٣.٤", "::", "1::2::3", "[::1]", "0x7f.0.0.1"]
)
HOSTS = st.one_of(IPV4, IPV6, NEAR_MISSES, st.text(max_size=12), st.none(), IPV4.map(str.encode))
PORTS = st.one_of(st.integers(-5, 70000), st.sampled_from([None, "", b"", "80", "http", 8.5, True]))


def asyncio_says(host: Any, port: Any) -> Any:
    try:
        info = base_events._ipaddr_info(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0)  # type: ignore[attr-defined]
    except (ValueError, UnicodeError) as exc:
        return type(exc)
    if info is None:
        return None
    family, type_, proto, _, address = info
    assert (type_, proto) == (socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return family, address


@settings(max_examples=400, deadline=None)
@given(host=HOSTS, port=PORTS)
def test_numeric_addresses_are_what_asyncio_finds(host: Any, port: Any) -> None:
    target = numeric_tcp_target((host, port))
    expected = asyncio_says(host, port)
    if target is not None:
        assert target[2:] == (socket.IPPROTO_TCP, (host, port))
    native = None if target is None else target[:2]
    if native is not None:
        assert native == expected
        assert type(native[1][0]) is type(host)
        return
    # Declined: asyncio's own create_connection then decides. For the forms
    # the native test covers, asyncio finds no numeric address either.
    if type(host) is str and type(port) is int and host.isascii() and "\0" not in host:
        assert expected is None


def test_a_numeric_address_is_recognised() -> None:
    v4, v6 = ("127.0.0.1", 80), ("::1", 0)
    assert numeric_tcp_target(v4) == (socket.AF_INET, ("127.0.0.1", 80), socket.IPPROTO_TCP, v4)
    assert numeric_tcp_target(v6) == (socket.AF_INET6, ("::1", 0, 0, 0), socket.IPPROTO_TCP, v6)
    assert numeric_tcp_target(("example.com", 80)) is None
    assert numeric_tcp_target(("127.0.0.1", 80, None)) is None  # a third positional: asyncio's path


@pytest.mark.parametrize(
    "call",
    [
        lambda loop, factory, port: loop.create_connection(factory, "127.0.0.1", port),
        lambda loop, factory, port: loop.create_connection(factory, host="127.0.0.1", port=port),
        lambda loop, factory, port: loop.create_connection(factory, "127.0.0.1", port=port, ssl=None),
    ],
    ids=["positional", "keywords", "default-option"],
)
def test_every_spelling_of_a_numeric_connect_takes_the_direct_path(call: Any) -> None:
    """Keyword host and port, and options left at their defaults, take the
    direct path as the positional form does: asyncio's create_connection,
    which resolves the address through the loop's _ensure_resolved, is not
    called."""

    def not_expected(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asyncio's create_connection resolved the address")

    async def main() -> bytes:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hi")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        received = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.set_result(data)

        loop._ensure_resolved = not_expected  # type: ignore[method-assign]
        transport, _ = await call(loop, Reader, port)
        try:
            return await asyncio.wait_for(received, 5)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    assert run_with_loop(ferroloop.new_event_loop, main()) == b"hi"


def names(transport: asyncio.BaseTransport) -> tuple[Any, Any, Any, Any]:
    sock = transport.get_extra_info("socket")
    return transport.get_extra_info("sockname"), sock.getsockname(), transport.get_extra_info("peername"), sock.getpeername()


# (server host, host the client connects to): a listener on one address,
# whose connections share its name; a wildcard one, whose connections each
# have the address they came to; a connect to INADDR_ANY, which Linux makes
# a connect to a local address.
TCP_ENDS = {
    "tcp4": ("127.0.0.1", "127.0.0.1"),
    "tcp4-wildcard": ("0.0.0.0", "127.0.0.2"),
    "tcp4-to-any": ("0.0.0.0", "0.0.0.0"),
    "tcp6": ("::1", "::1"),
}


@pytest.mark.parametrize("family", [*TCP_ENDS, "unix", "unix-abstract"])
def test_extra_info_names_are_the_sockets_own(family: str) -> None:
    if family == "tcp6" and not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main(path: str) -> list[tuple[Any, Any, Any, Any]]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        if family in TCP_ENDS:
            host, target = TCP_ENDS[family]
            server = await loop.create_server(Server, host, 0)
            client, _ = await loop.create_connection(asyncio.Protocol, target, server.sockets[0].getsockname()[1])
        else:
            address = path if family == "unix" else "\0ferroloop-names-" + str(os.getpid())
            server = await loop.create_unix_server(Server, address)
            client, _ = await loop.create_unix_connection(asyncio.Protocol, address)
        server_side = await accepted
        result = [names(client), names(server_side)]
        client.close()
        server_side.close()
        server.close()
        await server.wait_closed()
        return result

    seen = []
    for factory in (asyncio.new_event_loop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as tmp:
            ends = run_with_loop(factory, main(os.path.join(tmp, "s")))
            for sockname, own_sockname, peername, own_peername in ends:
                assert (sockname, peername) == (own_sockname, own_peername)
                assert type(sockname) is type(own_sockname) and type(peername) is type(own_peername)
            seen.append([(end[0][0], end[2][0]) for end in ends] if family in TCP_ENDS else None)
    assert seen[1] == seen[0]
    if family == "tcp4-wildcard":
        assert seen[0] == [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")]
    if family == "tcp4-to-any":
        assert seen[0][0][1] == "127.0.0.1"


class End(asyncio.Protocol):
    """One end of a connection: the server's (index 1) hands over its
    transport; each end says when it is lost."""

    def __init__(self, index: int, accepted: "asyncio.Future[Any]", lost: "list[asyncio.Future[None]]") -> None:
        self.index, self.accepted, self.lost = index, accepted, lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.index == 1:
            self.accepted.set_result(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost[self.index].set_result(None)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_names_asked_for_after_close_are_those_of_the_connection(family: str) -> None:
    """Extra info first asked for once both transports are closed (as a
    connection_lost that logs the peer does): the names the connection had,
    as asyncio reads them when the transport is made."""

    async def main(path: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()
        lost: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]

        if family == "tcp":
            server = await loop.create_server(lambda: End(1, accepted, lost), "127.0.0.1", 0)
            listening = server.sockets[0].getsockname()
            client, _ = await loop.create_connection(lambda: End(0, accepted, lost), *listening)
        else:
            server = await loop.create_unix_server(lambda: End(1, accepted, lost), path)
            listening = path
            client, _ = await loop.create_unix_connection(lambda: End(0, accepted, lost), path)
        server_side = await accepted
        client.close()
        server_side.close()
        await asyncio.gather(*lost)
        server.close()
        await server.wait_closed()
        return {
            "client peer is the listener": client.get_extra_info("peername") == listening,
            "server side's name is the listener's": server_side.get_extra_info("sockname") == listening,
            "the ends name each other": client.get_extra_info("sockname") == server_side.get_extra_info("peername"),
            "client sockname": type(client.get_extra_info("sockname")).__name__,
            "socket": type(client.get_extra_info("socket")).__name__,
            "socket closed": client.get_extra_info("socket").fileno(),
            "missing": client.get_extra_info("no-such-key", "default"),
        }

    results = []
    for factory in (asyncio.new_event_loop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_with_loop(factory, main(os.path.join(tmp, "s"))))
    assert results[1] == results[0]
    assert results[0]["client peer is the listener"] and results[0]["the ends name each other"]
    assert results[0]["socket"] == "TransportSocket" and results[0]["socket closed"] == -1


def socket_state(sock: socket.socket) -> tuple[Any, ...]:
    return (type(sock), sock.family, sock.type, sock.proto, sock.gettimeout(), sock._io_refs, sock._closed)  # type: ignore[attr-defined]


async def connect_and_close() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The socket objects behind both ends of a TCP connection, as made
    and once both transports are closed."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()
    lost: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]

    server = await loop.create_server(lambda: End(1, accepted, lost), "127.0.0.1", 0)
    client, _ = await loop.create_connection(lambda: End(0, accepted, lost), "127.0.0.1", server.sockets[0].getsockname()[1])
    server_side = await accepted
    socks = [t.get_extra_info("socket")._sock for t in (client, server_side)]  # type: ignore[attr-defined]
    made = [socket_state(s) for s in socks]
    client.close()
    server_side.close()
    await asyncio.gather(*lost)
    server.close()
    await server.wait_closed()
    closed = [(s._closed, s.fileno()) for s in socks]  # type: ignore[attr-defined]
    return made, closed


def test_socket_objects_are_made_and_closed_as_asyncios() -> None:
    expected = run_with_loop(asyncio.new_event_loop, connect_and_close())
    assert run_with_loop(ferroloop.new_event_loop, connect_and_close()) == expected
    made, closed = expected
    assert closed == [(True, -1), (True, -1)]


def test_a_replaced_socket_init_and_close_are_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_init, real_close = socket.socket.__init__, socket.socket.close

    def init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        calls.append("init")
        real_init(self, *args, **kwargs)

    def close(self: socket.socket) -> None:
        calls.append("close")
        real_close(self)

    monkeypatch.setattr(socket.socket, "__init__", init)
    monkeypatch.setattr(socket.socket, "close", close)
    run_with_loop(ferroloop.new_event_loop, connect_and_close())
    # The listening socket, the client's, the accepted one; each closed.
    assert calls.count("init") >= 3 and calls.count("close") >= 3


def unix_connect_outcomes(directory: str) -> list[tuple[str, Any]]:
    """create_unix_connection to paths good and bad: what each call gives
    (the protocol's data for a good one; the error's type and text)."""
    listening = os.path.join(directory, "listening.sock")
    plain_file = os.path.join(directory, "plain-file")
    with open(plain_file, "w"):
        pass
    unbound = os.path.join(directory, "unbound.sock")
    socket.socket(socket.AF_UNIX).bind(unbound)  # bound, never listening
    paths: list[Any] = [
        listening, listening.encode(), pathlib.Path(listening),
        os.path.join(directory, "missing.sock"), plain_file, unbound, directory,
        "x" * 200, "bad\0path", 17, b"", "",
    ]

    async def attempt(path: Any) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        received = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.set_result(data)

        try:
            transport, _ = await asyncio.wait_for(loop.create_unix_connection(Reader, path), 5)
        except Exception as exc:  # noqa: BLE001  # compared with asyncio's
            return ("error", (type(exc).__name__, str(exc)))
        try:
            return ("data", await asyncio.wait_for(received, 5))
        finally:
            transport.close()

    async def main() -> list[tuple[str, Any]]:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(greet, listening)
        try:
            return [await attempt(path) for path in paths]
        finally:
            server.close()
            await server.wait_closed()

    return main()  # type: ignore[return-value]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_unix_connections_succeed_and_fail_as_asyncios() -> None:
    results = {}
    for name, factory in {"asyncio": asyncio.SelectorEventLoop, "ferroloop": ferroloop.new_event_loop}.items():
        with tempfile.TemporaryDirectory() as directory:
            outcomes = run_with_loop(factory, unix_connect_outcomes(directory))
        results[name] = [(kind, value if kind == "data" else (value[0], value[1].replace(directory, "<dir>")))
                         for kind, value in outcomes]
    assert results["ferroloop"] == results["asyncio"]
    assert results["ferroloop"][:3] == [("data", b"hello")] * 3
    assert {kind for kind, _ in results["ferroloop"][3:]} == {"error"}


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
@pytest.mark.parametrize("cleanup_socket", [True, False, None], ids=["cleanup", "no-cleanup", "default"])
def test_closing_a_unix_server_unlinks_its_path_as_cleanup_socket_says(cleanup_socket: Any) -> None:
    """3.13's cleanup_socket, accepted on every version; left out, closing
    unlinks the path from 3.13 on only, as asyncio does."""
    import sys

    options = {} if cleanup_socket is None else {"cleanup_socket": cleanup_socket}
    unlinked = (sys.version_info >= (3, 13)) if cleanup_socket is None else cleanup_socket

    async def main(path: str) -> bool:
        server = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path, **options)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()
        return os.path.exists(path)

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "server.sock")
        assert run_with_loop(ferroloop.new_event_loop, main(path)) is not unlinked


class Recorder(asyncio.Protocol):
    """Notes its callbacks, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.events.append("data")

    def connection_lost(self, exc: Any) -> None:
        self.events.append("lost")


def unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def refused_connects() -> list[Any]:
    """create_connection to a port nobody listens on, and with a protocol
    factory that raises: the errors' types and texts."""
    loop = asyncio.get_running_loop()
    port = unused_tcp_port()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]

    def failing_factory() -> asyncio.Protocol:
        raise LookupError("no protocol today")

    outcomes: list[Any] = []
    for factory, target in ((Recorder, port), (failing_factory, open_port)):
        try:
            await loop.create_connection(factory, "127.0.0.1", target)
        except Exception as exc:  # noqa: BLE001  # compared with asyncio's
            outcomes.append((type(exc).__name__, str(exc).replace(str(target), "<port>")))
    server.close()
    await server.wait_closed()
    return outcomes


def test_failed_tcp_connects_raise_as_asyncios() -> None:
    expected = run_with_loop(asyncio.SelectorEventLoop, refused_connects())
    assert run_with_loop(ferroloop.new_event_loop, refused_connects()) == expected
    assert expected[0][0] == "ConnectionRefusedError"
    assert expected[1] == ("LookupError", "no protocol today")


async def cancelled_connects(family: str, directory: str) -> list[tuple[str, list[str]]]:
    """create_connection (or create_unix_connection) cancelled after 0 to
    11 loop iterations: how each ended and what its protocol saw."""
    loop = asyncio.get_running_loop()
    if family == "unix":
        path = os.path.join(directory, "s")
        server = await loop.create_unix_server(asyncio.Protocol, path)
    else:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    outcomes = []
    for iterations in range(12):
        protocol = Recorder()
        if family == "unix":
            task = asyncio.ensure_future(loop.create_unix_connection(lambda: protocol, path))
        else:
            task = asyncio.ensure_future(loop.create_connection(lambda: protocol, "127.0.0.1", port))
        for _ in range(iterations):
            await asyncio.sleep(0)
        task.cancel()
        try:
            transport, _ = await task
        except asyncio.CancelledError:
            outcome = "cancelled"
        else:
            outcome = "connected"
            transport.close()
        for _ in range(3):
            await asyncio.sleep(0)
        outcomes.append((outcome, protocol.events))
    server.close()
    await server.wait_closed()
    return outcomes


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_cancelled_connect_closes_what_it_made(family: str) -> None:
    """Cancelled while connecting, the socket is closed (no ResourceWarning
    when it is collected); cancelled once the protocol has its transport,
    the transport is closed (connection_lost follows connection_made);
    never a protocol left half-told."""
    import gc
    import warnings

    for factory in (asyncio.SelectorEventLoop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            outcomes = run_with_loop(factory, cancelled_connects(family, directory))
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == [], factory
        for outcome, events in outcomes:
            assert events in ([], ["made", "lost"]), (factory, outcomes)
        # Cancelled at once: nothing made. Late enough: connected.
        assert outcomes[0] == ("cancelled", []), (factory, outcomes)
        assert outcomes[-1] == ("connected", ["made", "lost"]), (factory, outcomes)
        # A cancel that lands between connection_made and the caller's
        # resumption closes the transport.
        assert ("cancelled", ["made", "lost"]) in outcomes, (factory, outcomes)


async def serving_count_and_wait_closed() -> list[Any]:
    """A server's count of the connections it serves, as connections come
    and go, and when wait_closed() finishes once the server is closed."""
    loop = asyncio.get_running_loop()
    server_sides: list[asyncio.BaseTransport] = []

    class ServerSide(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            server_sides.append(transport)

    def serving() -> int:
        count = getattr(server, "_active_count", None)
        return count if count is not None else len(server._clients)  # type: ignore[attr-defined]

    server = await loop.create_server(ServerSide, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = [(await loop.create_connection(asyncio.Protocol, "127.0.0.1", port))[0] for _ in range(3)]
    while len(server_sides) < 3:
        await asyncio.sleep(0.01)
    seen: list[Any] = [serving()]
    if hasattr(server, "_clients"):  # 3.13+: the transports themselves, weakly held
        members = set(map(id, server._clients))  # type: ignore[attr-defined]
        seen.append(members == set(map(id, server_sides)))
    server.close()
    closed = asyncio.ensure_future(server.wait_closed())
    for _ in range(5):
        await asyncio.sleep(0)
    seen.append(("after close", serving(), closed.done()))
    for client, server_side in zip(clients, server_sides):
        client.close()
        server_side.close()
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append((serving(), closed.done()))
    await asyncio.wait_for(closed, 5)
    return seen


def test_a_server_counts_its_connections_as_asyncios() -> None:
    expected = run_with_loop(asyncio.SelectorEventLoop, serving_count_and_wait_closed())
    assert run_with_loop(ferroloop.new_event_loop, serving_count_and_wait_closed()) == expected
    assert expected[0] == 3 and expected[-1] == (0, True)


async def events_when_connected(family: str, directory: str) -> list[list[str]]:
    """What the protocol has seen when create_connection (or
    create_unix_connection) returns, from a server that writes at once."""
    loop = asyncio.get_running_loop()

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"hello")
            transport.close()

    if family == "unix":
        path = os.path.join(directory, "s")
        server = await loop.create_unix_server(Greeter, path)
    else:
        server = await loop.create_server(Greeter, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    seen = []
    for _ in range(20):
        protocol = Recorder()
        if family == "unix":
            transport, _ = await loop.create_unix_connection(lambda: protocol, path)
        else:
            transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
        seen.append(list(protocol.events))
        transport.close()
        for _ in range(3):
            await asyncio.sleep(0)
    server.close()
    await server.wait_closed()
    return seen


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_create_connection_returns_after_connection_made_and_before_data(family: str) -> None:
    for factory in (asyncio.SelectorEventLoop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as directory:
            assert run_with_loop(factory, events_when_connected(family, directory)) == [["made"]] * 20, factory


async def errors_in_made_and_lost(family: str, directory: str, debug: bool) -> list[Any]:
    """What the exception handler is given when connection_made and
    connection_lost raise, on both ends, and whether the connection still
    carries data after connection_made raised."""
    loop = asyncio.get_running_loop()
    loop.set_debug(debug)
    reports: list[Any] = []

    def handler(_loop: Any, context: dict[str, Any]) -> None:
        handle = context.get("handle")
        message = context["message"]
        # The transport's class and repr are the loop's own.
        for transport_class in ("_SelectorSocketTransport", "_SelectorTransport", "StreamTransport"):
            message = message.replace(transport_class + "._call", "Transport._call")
        message = message.split("(<")[0]
        reports.append((message, type(context["exception"]).__name__, str(context["exception"]),
                        type(handle).__name__, sorted(set(context) - {"source_traceback"})))

    loop.set_exception_handler(handler)
    received: asyncio.Future[bytes] = loop.create_future()
    lost = [loop.create_future(), loop.create_future()]

    class Raising(asyncio.Protocol):
        def __init__(self, side: int) -> None:
            self.side = side

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            raise ValueError(f"made {self.side}")

        def data_received(self, data: bytes) -> None:
            if self.side:
                self.transport.write(data)
            elif not received.done():
                received.set_result(data)

        def connection_lost(self, exc: Any) -> None:
            lost[self.side].set_result(None)
            raise KeyError(f"lost {self.side}")

    if family == "unix":
        path = os.path.join(directory, "s")
        server = await loop.create_unix_server(lambda: Raising(1), path)
        transport, _ = await loop.create_unix_connection(lambda: Raising(0), path)
    else:
        server = await loop.create_server(lambda: Raising(1), "127.0.0.1", 0)
        transport, _ = await loop.create_connection(lambda: Raising(0), "127.0.0.1", server.sockets[0].getsockname()[1])
    transport.write(b"ping")
    echoed = await asyncio.wait_for(received, 10)
    transport.close()
    await asyncio.wait_for(asyncio.gather(*lost), 10)
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    await server.wait_closed()
    loop.set_exception_handler(None)
    return [echoed, sorted(reports)]


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_errors_in_connection_made_and_lost_are_reported_as_asyncios(family: str, debug: bool) -> None:
    results = []
    for factory in (asyncio.SelectorEventLoop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as directory:
            results.append(run_with_loop(factory, errors_in_made_and_lost(family, directory, debug)))
    assert results[1] == results[0]
    echoed, reports = results[0]
    assert echoed == b"ping"
    # Since 3.13 a callback's arguments are shown in debug mode only.
    args_shown = debug or sys.version_info < (3, 13)
    made = "Exception in callback errors_in_made_and_lost.<locals>.Raising.connection_made" + ("" if args_shown else "()")
    lost = "Exception in callback Transport._call_connection_lost" + ("(None)" if args_shown else "()")
    assert [r[:4] for r in reports] == [
        (lost, "KeyError", "'lost 0'", "Handle"),
        (lost, "KeyError", "'lost 1'", "Handle"),
        (made, "ValueError", "made 0", "Handle"),
        (made, "ValueError", "made 1", "Handle"),
    ]
