"""Connection set-up shortcuts checked against what asyncio computes: the
numeric-address test create_connection uses instead of asyncio's
``_ipaddr_info``, and socket names read natively for get_extra_info."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from asyncio import base_events
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ferroloop
from ferroloop._native import numeric_stream_address

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
    native = numeric_stream_address(host, port)
    expected = asyncio_says(host, port)
    if native is not None:
        assert native == expected
        assert type(native[1][0]) is type(host)
        return
    # Declined: asyncio's own create_connection then decides. For the forms
    # the native test covers, asyncio finds no numeric address either.
    if type(host) is str and type(port) is int and host.isascii() and "\0" not in host:
        assert expected is None


def test_a_numeric_address_is_recognised() -> None:
    assert numeric_stream_address("127.0.0.1", 80) == (socket.AF_INET, ("127.0.0.1", 80))
    assert numeric_stream_address("::1", 0) == (socket.AF_INET6, ("::1", 0, 0, 0))
    assert numeric_stream_address("example.com", 80) is None


def names(transport: asyncio.BaseTransport) -> tuple[Any, Any, Any, Any]:
    sock = transport.get_extra_info("socket")
    return transport.get_extra_info("sockname"), sock.getsockname(), transport.get_extra_info("peername"), sock.getpeername()


@pytest.mark.parametrize("family", ["tcp4", "tcp6", "unix", "unix-abstract"])
def test_extra_info_names_are_the_sockets_own(family: str) -> None:
    if family == "tcp6" and not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main(path: str) -> list[tuple[Any, Any, Any, Any]]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        if family.startswith("tcp"):
            host = "127.0.0.1" if family == "tcp4" else "::1"
            server = await loop.create_server(Server, host, 0)
            client, _ = await loop.create_connection(asyncio.Protocol, host, server.sockets[0].getsockname()[1])
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

    for factory in (asyncio.new_event_loop, ferroloop.new_event_loop):
        with tempfile.TemporaryDirectory() as tmp:
            for sockname, own_sockname, peername, own_peername in run_with_loop(factory, main(os.path.join(tmp, "s"))):
                assert (sockname, peername) == (own_sockname, own_peername)
                assert type(sockname) is type(own_sockname) and type(peername) is type(own_peername)


def socket_state(sock: socket.socket) -> tuple[Any, ...]:
    return (type(sock), sock.family, sock.type, sock.proto, sock.gettimeout(), sock._io_refs, sock._closed)  # type: ignore[attr-defined]


async def connect_and_close() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The socket objects behind both ends of a TCP connection, as made
    and once both transports are closed."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()
    lost: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]

    class End(asyncio.Protocol):
        def __init__(self, index: int) -> None:
            self.index = index

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self.index == 1:
                accepted.set_result(transport)

        def connection_lost(self, exc: BaseException | None) -> None:
            lost[self.index].set_result(None)

    server = await loop.create_server(lambda: End(1), "127.0.0.1", 0)
    client, _ = await loop.create_connection(lambda: End(0), "127.0.0.1", server.sockets[0].getsockname()[1])
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
