"""loop.sock_*: the low-level socket API, on loopback only."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import ssl

import pytest


def nonblocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    return sock


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield nonblocking(a), nonblocking(b)
    a.close()
    b.close()


@pytest.fixture
def listener():
    server = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def test_recv_takes_the_fast_path_when_data_is_there(loop, pair):
    a, b = pair
    b.send(b"ready")
    assert loop.run_until_complete(loop.sock_recv(a, 100)) == b"ready"
    assert loop.remove_reader(a) is False  # never registered


def test_recv_waits_for_data(loop, pair):
    a, b = pair

    async def main():
        pending = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not pending.done()
        await loop.sock_sendall(b, b"later")
        return await pending

    assert loop.run_until_complete(main()) == b"later"
    assert loop.remove_reader(a) is False  # the registration ended with the call


def test_recv_into_and_recvfrom_into(loop, pair):
    a, b = pair
    buf = bytearray(8)

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        await loop.sock_sendall(b, b"abc")
        return await waiting

    assert loop.run_until_complete(main()) == 3
    assert bytes(buf[:3]) == b"abc"


# Read sizes on each side of the native recv's strategies: straight into the
# bytes object up to 512 bytes, through a reused buffer up to 256 KiB, and
# straight into the bytes object again beyond.
@pytest.mark.parametrize("recv_size", [100, 512, 513, 65536, 256 * 1024, 300_000])
def test_sendall_moves_large_data_intact(loop, pair, recv_size):
    a, b = pair
    payload = os.urandom(8 * 1024 * 1024 if recv_size >= 65536 else 1024 * 1024)

    async def reader():
        chunks = []
        received = 0
        while received < len(payload):
            chunk = await loop.sock_recv(b, recv_size)
            assert 0 < len(chunk) <= recv_size
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)

    async def main():
        receiving = asyncio.ensure_future(reader())
        await loop.sock_sendall(a, payload)
        return await receiving

    received = loop.run_until_complete(main())
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_connect_and_accept(loop, listener):
    address = listener.getsockname()

    async def main():
        client = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, address)
        conn, peer = await accepting
        assert conn.gettimeout() == 0  # accepted sockets are non-blocking
        assert peer == client.getsockname()
        await loop.sock_sendall(client, b"ping")
        data = await loop.sock_recv(conn, 10)
        conn.close()
        client.close()
        return data

    assert loop.run_until_complete(main()) == b"ping"


def test_connect_resolves_host_names(loop, listener):
    port = listener.getsockname()[1]

    async def main():
        client = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        await loop.sock_connect(client, ("localhost", port))
        peer = client.getpeername()
        client.close()
        return peer

    assert loop.run_until_complete(main()) == ("127.0.0.1", port)


def test_connect_refused_raises_connection_refused(loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    client = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with pytest.raises(ConnectionRefusedError):
        loop.run_until_complete(loop.sock_connect(client, ("127.0.0.1", port)))
    client.close()


def test_udp_sendto_and_recvfrom(loop):
    receiver = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    receiver.bind(("127.0.0.1", 0))
    sender = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender.bind(("127.0.0.1", 0))

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recvfrom(receiver, 100))
        await asyncio.sleep(0)
        sent = await loop.sock_sendto(sender, b"datagram", receiver.getsockname())
        data, address = await waiting
        buf = bytearray(16)
        await loop.sock_sendto(sender, b"into", receiver.getsockname())
        nbytes, _ = await loop.sock_recvfrom_into(receiver, buf)
        return sent, data, address, bytes(buf[:nbytes])

    sent, data, address, into = loop.run_until_complete(main())
    assert (sent, data, into) == (8, b"datagram", b"into")
    assert address == sender.getsockname()
    receiver.close()
    sender.close()


def test_cancelled_recv_releases_the_socket(loop, pair):
    a, _ = pair

    async def main():
        pending = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    loop.run_until_complete(main())
    assert loop.remove_reader(a) is False


def test_blocking_socket_is_refused(loop):
    a, b = socket.socketpair()
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        loop.run_until_complete(loop.sock_recv(a, 10))
    a.close()
    b.close()


def test_ssl_socket_is_refused(loop):
    context = ssl.create_default_context()
    raw = socket.socket()
    wrapped = context.wrap_socket(raw, server_hostname="example.invalid", do_handshake_on_connect=False)
    with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
        loop.run_until_complete(loop.sock_recv(wrapped, 10))
    wrapped.close()


def test_closed_socket_raises_os_error(loop, pair):
    a, _ = pair
    a.close()
    with pytest.raises(OSError):
        loop.run_until_complete(loop.sock_recv(a, 10))


def test_peer_reset_mid_write_raises(loop, pair):
    a, b = pair
    b.close()

    async def main():
        await loop.sock_sendall(a, b"x" * (4 * 1024 * 1024))

    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        loop.run_until_complete(main())


@pytest.fixture
def data_file(tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    with open(path, "rb") as file:
        yield file, payload


def _receive_all(loop, sock, expected_length):
    async def reader():
        chunks, received = [], 0
        while received < expected_length:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)

    return reader()


@pytest.mark.parametrize("fallback_only", [False, True])
def test_sock_sendfile_sends_the_file_and_moves_its_position(loop, pair, data_file, fallback_only):
    a, b = pair
    file, payload = data_file
    source = file if not fallback_only else __import__("io").BytesIO(payload)

    async def main():
        receiving = asyncio.ensure_future(_receive_all(loop, b, len(payload)))
        sent = await loop.sock_sendfile(a, source)
        return sent, await receiving

    sent, received = loop.run_until_complete(main())
    assert sent == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert source.tell() == len(payload)


def test_sock_sendfile_with_offset_and_count(loop, pair, data_file):
    a, b = pair
    file, payload = data_file

    async def main():
        receiving = asyncio.ensure_future(_receive_all(loop, b, 1000))
        sent = await loop.sock_sendfile(a, file, offset=5000, count=1000)
        return sent, await receiving

    sent, received = loop.run_until_complete(main())
    assert (sent, received) == (1000, payload[5000:6000])
    assert file.tell() == 6000


def test_sock_sendfile_without_fallback_refuses_non_files(loop, pair):
    a, _ = pair
    import io

    with pytest.raises(asyncio.SendfileNotAvailableError):
        loop.run_until_complete(loop.sock_sendfile(a, io.BytesIO(b"data"), fallback=False))


def test_sock_sendfile_of_an_empty_file_sends_nothing(loop, pair, tmp_path):
    a, _ = pair
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb") as file:
        assert loop.run_until_complete(loop.sock_sendfile(a, file)) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"count": 0}, ValueError, r"count must be a positive integer \(got 0\)"),
        ({"count": "1"}, TypeError, r"count must be a positive integer \(got '1'\)"),
        ({"offset": -1}, ValueError, r"offset must be a non-negative integer \(got -1\)"),
        ({"offset": 1.5}, TypeError, r"offset must be a non-negative integer \(got 1.5\)"),
    ],
)
def test_sock_sendfile_parameter_errors(loop, pair, data_file, kwargs, error, message):
    a, _ = pair
    file, _ = data_file
    with pytest.raises(error, match=message):
        loop.run_until_complete(loop.sock_sendfile(a, file, **kwargs))


def test_sock_sendfile_refuses_text_files_and_datagram_sockets(loop, pair, tmp_path):
    a, _ = pair
    text = tmp_path / "text.txt"
    text.write_text("hello")
    with open(text) as file:
        with pytest.raises(ValueError, match="file should be opened in binary mode"):
            loop.run_until_complete(loop.sock_sendfile(a, file))
    udp = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with open(text, "rb") as file:
        with pytest.raises(ValueError, match="only SOCK_STREAM type sockets are supported"):
            loop.run_until_complete(loop.sock_sendfile(udp, file))
    udp.close()


# --- the native calls behave as asyncio's coroutines -----------------------


def test_sock_calls_are_coroutines_that_run_only_when_awaited(loop, pair):
    a, b = pair
    b.send(b"early")
    call = loop.sock_recv(a, 100)
    assert asyncio.iscoroutine(call)
    assert "sock_recv" in repr(call)
    assert a.recv(100) == b"early"  # creating the call consumed nothing
    b.send(b"late")
    task = loop.create_task(call)
    assert loop.run_until_complete(task) == b"late"
    assert task.get_coro() is call
    assert "coro=<Loop.sock_recv()" in repr(task)


def test_sock_call_follows_the_coroutine_protocol(loop, pair):
    """Driven by hand (send/StopIteration, as Python code and the 3.12+
    interpreter do) and by await (the am_send slot on 3.10 and 3.11), a
    native call behaves as an asyncio coroutine does."""
    a, b = pair
    b.send(b"now")
    call = loop.sock_recv(a, 10)
    with pytest.raises(StopIteration) as finished:
        call.send(None)
    assert finished.value.value == b"now"
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        call.send(None)

    fresh = loop.sock_recv(a, 10)
    with pytest.raises(TypeError, match="can't send non-None value to a just-started coroutine"):
        fresh.send(1)
    fresh.close()

    b.send(b"awaited")
    awaited_twice = loop.sock_recv(a, 10)

    async def main():
        first = await awaited_twice
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await awaited_twice
        waiting = loop.sock_recv(a, 10)
        later = asyncio.ensure_future(waiting)
        await asyncio.sleep(0)
        b.send(b"later")
        return first, await later

    assert loop.run_until_complete(main()) == (b"awaited", b"later")


def test_timed_out_recv_loses_no_data(loop, pair):
    a, b = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.01)
        b.send(b"kept")
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"kept"
    assert loop.remove_reader(a) is False


def test_never_awaited_sock_call_warns_like_a_coroutine(loop, pair):
    a, _ = pair
    with pytest.warns(RuntimeWarning, match="coroutine 'Loop.sock_recv' was never awaited"):
        call = loop.sock_recv(a, 10)
        del call
        import gc

        gc.collect()


def test_closed_sock_call_does_not_warn(loop, pair, recwarn):
    a, _ = pair
    call = loop.sock_sendall(a, b"x")
    call.close()
    del call
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_waiting_recv_is_the_fds_reader_as_in_asyncio(loop, pair):
    a, b = pair

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        # asyncio registers sock_recv as the fd's reader: removing it
        # leaves the call pending, and it can still be cancelled.
        assert loop.remove_reader(a) is True
        b.send(b"unseen")
        await asyncio.sleep(0.01)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"unseen"


def test_recv_on_a_transports_socket_is_refused(loop, pair):
    a, b = pair

    async def main():
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(a, 10)
        finally:
            transport.close()

    loop.run_until_complete(main())


def test_socket_subclasses_use_their_own_methods(loop):
    calls = []

    class Recording(socket.socket):
        def recv(self, n, *args):
            calls.append(n)
            return super().recv(n, *args)

    a, b = socket.socketpair()
    wrapped = Recording(a.family, a.type, a.proto, fileno=a.detach())
    wrapped.setblocking(False)
    b.send(b"through python")
    try:
        assert loop.run_until_complete(loop.sock_recv(wrapped, 50)) == b"through python"
        assert calls == [50]
    finally:
        wrapped.close()
        b.close()


def test_sendall_from_bytearray_and_memoryview(loop, pair):
    a, b = pair
    payload = bytes(range(256)) * 4096  # 1 MiB: the send waits for room

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(a, memoryview(bytearray(payload))))
        received = bytearray()
        while len(received) < len(payload):
            received += await loop.sock_recv(b, 65536)
        await sender
        return bytes(received)

    assert loop.run_until_complete(main()) == payload


@pytest.mark.parametrize(
    "call",
    [
        lambda loop, s: loop.sock_recv(s, -1),
        lambda loop, s: loop.sock_recv(s, "10"),
        lambda loop, s: loop.sock_recv_into(s, b"read-only"),
        lambda loop, s: loop.sock_sendall(s, "text"),
        lambda loop, s: loop.sock_sendto(s, b"x", "not an address"),
        lambda loop, s: loop.sock_recvfrom_into(s, 42),
    ],
    ids=["negative-size", "str-size", "readonly-buffer", "str-data", "bad-address", "no-buffer"],
)
def test_bad_arguments_raise_what_asyncio_raises(loop, call):
    def outcome(event_loop):
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            event_loop.run_until_complete(call(event_loop, a))
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            return type(exc), str(exc)
        finally:
            a.close()
            b.close()
        return None, None

    reference = asyncio.new_event_loop()
    try:
        expected = outcome(reference)
    finally:
        reference.close()
    if expected[0] is AttributeError and "'sock_" in expected[1]:
        # sock_sendto and sock_recvfrom(_into) are new in 3.11.
        pytest.skip(f"asyncio {sys.version_info[:2]} has no such method: {expected[1]}")
    assert expected[0] is not None
    assert outcome(loop) == expected
