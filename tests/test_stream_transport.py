"""Stream transports (TCP and Unix) and asyncio streams, on stock asyncio and
on ferroloop.

Every test runs on both loops and asserts the same observable results, so a
pass on both proves ferroloop's transports behave as asyncio's do. The tests
only use what a protocol or a stream user can see (callbacks, their order and
arguments, return values, exception types and messages, bytes on the wire),
so they hold for asyncio's selector transport and for a native one alike; the
private attributes they read are the ones code written against asyncio reads
too (``transport._paused``, ``loop._closed``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
from typing import Any, Awaitable, Callable, Optional

import pytest
from netutil import hang_guard, run_with_loop

import ferroloop

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}

TIMEOUT = 15.0  # per test body; a hang fails instead of blocking the suite


@pytest.fixture(autouse=True)
def _hang_guard():
    with hang_guard(120):
        yield


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request) -> str:
    return request.param


@pytest.fixture(params=["tcp", "unix"])
def family(request) -> str:
    return request.param


@pytest.fixture
def run(loop_name):
    """run(async_fn, *args): run async_fn(*args) to completion on a fresh
    loop of the kind under test, with a timeout."""

    def runner(async_fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = TIMEOUT) -> Any:
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            if loop_name == "ferroloop":
                assert type(loop).__module__.startswith("ferroloop"), type(loop)
            else:
                assert isinstance(loop, asyncio.BaseEventLoop), type(loop)
            return await asyncio.wait_for(async_fn(*args), timeout)

        return run_with_loop(LOOP_FACTORIES[loop_name], main())

    return runner


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="flt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- toy protocols -------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records every callback, with futures to wait on."""

    def __init__(self, eof_result: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.events: list[str] = []
        self.data = bytearray()
        self.data_types: set[type] = set()
        self.empty_chunks = 0
        self.lost_calls: list[Optional[BaseException]] = []
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.paused_writing = loop.create_future()
        self.resumed_writing = loop.create_future()
        self.eof_result = eof_result
        self.pause_sizes: list[int] = []
        self.resume_sizes: list[int] = []
        self._byte_waiters: list[tuple[int, asyncio.Future]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        if "data" not in self.events[-1:]:
            self.events.append("data")
        self.data_types.add(type(data))
        if not data:
            self.empty_chunks += 1
        self.data += data
        self._wake()

    def eof_received(self) -> Any:
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.events.append("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        for _, fut in self._byte_waiters:
            if not fut.done():
                fut.set_exception(AssertionError(f"connection lost with {len(self.data)} bytes"))

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        self.pause_sizes.append(self.transport.get_write_buffer_size())
        if not self.paused_writing.done():
            self.paused_writing.set_result(None)

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        self.resume_sizes.append(self.transport.get_write_buffer_size())
        if not self.resumed_writing.done():
            self.resumed_writing.set_result(None)

    def _wake(self) -> None:
        for n, fut in self._byte_waiters:
            if len(self.data) >= n and not fut.done():
                fut.set_result(None)
        self._byte_waiters = [(n, f) for n, f in self._byte_waiters if not f.done()]

    async def wait_bytes(self, n: int) -> bytes:
        if len(self.data) < n:
            fut = asyncio.get_running_loop().create_future()
            self._byte_waiters.append((n, fut))
            await fut
        return bytes(self.data)


class Handlers:
    """Installs an exception handler that records every context."""

    def __init__(self) -> None:
        self.contexts: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: self.contexts.append(ctx))


class Pair:
    def __init__(self, server: Any, client_tr: Any, client: Any, server_proto: Any) -> None:
        self.server = server
        self.client_tr = client_tr
        self.client = client
        self.srv = server_proto

    @property
    def server_tr(self) -> Any:
        return self.srv.transport

    async def aclose(self) -> None:
        for tr in (self.client_tr, self.server_tr):
            if tr is not None and not tr.is_closing():
                tr.abort()
        self.server.close()
        await self.server.wait_closed()
        # let connection_lost callbacks run
        for _ in range(3):
            await asyncio.sleep(0)


_path_counter = 0


def _unix_path(sockdir: str) -> str:
    global _path_counter
    _path_counter += 1
    return os.path.join(sockdir, f"s{_path_counter}.sock")


async def open_pair(
    family: str,
    sockdir: str,
    server_factory: Callable[[], Any] = Recorder,
    client_factory: Callable[[], Any] = Recorder,
) -> Pair:
    """A server with one accepted connection and the client connected to it."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()

    def factory() -> Any:
        proto = server_factory()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    if family == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client_tr, client = await loop.create_connection(client_factory, "127.0.0.1", port)
    else:
        path = _unix_path(sockdir)
        server = await loop.create_unix_server(factory, path)
        client_tr, client = await loop.create_unix_connection(client_factory, path)
    srv = await accepted
    await srv.made if isinstance(srv, Recorder) else None
    return Pair(server, client_tr, client, srv)


async def fill_until_paused(tr: Any, proto: Recorder, chunk: int = 256 * 1024, limit: int = 256 * 1024 * 1024) -> bytes:
    """Write chunks to a peer that does not read until pause_writing() is
    called. Returns everything written."""
    rng = random.Random(1234)
    written = []
    total = 0
    while not proto.paused_writing.done():
        data = rng.randbytes(chunk)
        tr.write(data)
        written.append(data)
        total += chunk
        assert total < limit, "pause_writing() never called"
        await asyncio.sleep(0)
    return b"".join(written)


# -- write, writelines, write_eof -------------------------------------------------


def test_write_and_writelines_reach_the_peer(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        assert tr.get_write_buffer_size() == 0
        tr.write(b"ab")
        tr.write(bytearray(b"cd"))
        tr.write(memoryview(b"xefx")[1:3])
        tr.writelines([b"gh", bytearray(b"ij"), memoryview(b"kl")])
        tr.writelines(iter([b"m", b"n"]))
        tr.write(b"")  # empty writes are no-ops
        data = await pair.srv.wait_bytes(14)
        assert data == b"abcdefghijklmn"
        assert pair.srv.data_types == {bytes}
        assert pair.srv.empty_chunks == 0
        assert pair.srv.events[:2] == ["made", "data"]
        await pair.aclose()

    run(main)


def test_write_rejects_str_with_asyncios_message(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        with pytest.raises(TypeError) as info:
            pair.client_tr.write("text")
        assert str(info.value) == "data argument must be a bytes-like object, not 'str'"
        with pytest.raises(TypeError) as info:
            pair.client_tr.write(12)
        assert str(info.value) == "data argument must be a bytes-like object, not 'int'"
        # The transport is still usable.
        pair.client_tr.write(b"ok")
        assert await pair.srv.wait_bytes(2) == b"ok"
        await pair.aclose()

    run(main)


def test_write_eof_half_closes(run, family, sockdir):
    async def main():
        # The server keeps its side open after EOF and answers.
        pair = await open_pair(family, sockdir, server_factory=lambda: Recorder(eof_result=True))
        tr = pair.client_tr
        assert tr.can_write_eof() is True
        assert pair.server_tr.can_write_eof() is True
        tr.write(b"request")
        tr.write_eof()
        tr.write_eof()  # a second call is a no-op
        assert not tr.is_closing()
        await pair.srv.eof
        assert bytes(pair.srv.data) == b"request"
        assert pair.srv.events == ["made", "data", "eof"]
        assert not pair.server_tr.is_closing()
        # Half-open: the server can still write, and the client still reads.
        pair.server_tr.write(b"response")
        assert await pair.client.wait_bytes(8) == b"response"
        with pytest.raises(RuntimeError) as info:
            tr.write(b"more")
        assert str(info.value) == "Cannot call write() after write_eof()"
        pair.server_tr.close()
        assert await pair.client.lost is None
        assert await pair.srv.lost is None
        assert pair.client.events == ["made", "data", "eof", "lost"]
        assert pair.client.lost_calls == [None]
        assert pair.srv.lost_calls == [None]
        await pair.aclose()

    run(main)


def test_write_eof_waits_for_buffered_data(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: Recorder(eof_result=True))
        pair.server_tr.pause_reading()
        sent = await fill_until_paused(pair.client_tr, pair.client)
        assert pair.client_tr.get_write_buffer_size() > 0
        pair.client_tr.write_eof()
        assert not pair.srv.eof.done()
        pair.server_tr.resume_reading()
        await pair.srv.eof
        # EOF arrives only after every buffered byte.
        assert len(pair.srv.data) == len(sent)
        assert hashlib.sha256(pair.srv.data).digest() == hashlib.sha256(sent).digest()
        assert pair.client_tr.get_write_buffer_size() == 0
        await pair.aclose()

    run(main)


def test_eof_received_false_closes_the_transport(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: Recorder(eof_result=False))
        pair.client_tr.write(b"bye")
        pair.client_tr.write_eof()
        assert await pair.srv.lost is None
        assert pair.srv.events == ["made", "data", "eof", "lost"]
        assert pair.server_tr.is_closing()
        # The client sees the server's side close too.
        await pair.client.eof
        assert await pair.client.lost is None
        assert pair.client.events == ["made", "eof", "lost"]
        await pair.aclose()

    run(main)


def test_eof_received_none_closes_the_transport(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: Recorder(eof_result=None))
        pair.client_tr.close()
        assert await pair.srv.lost is None
        assert pair.srv.events == ["made", "eof", "lost"]
        assert await pair.client.lost is None
        assert pair.client.events == ["made", "lost"]
        await pair.aclose()

    run(main)


def test_eof_received_true_keeps_transport_half_open(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: Recorder(eof_result=True))
        pair.client_tr.write_eof()
        await pair.srv.eof
        for _ in range(5):
            await asyncio.sleep(0)
        assert not pair.srv.lost.done()
        assert not pair.server_tr.is_closing()
        for i in range(10):
            pair.server_tr.write(b"%d;" % i)
        expected = b"".join(b"%d;" % i for i in range(10))
        assert await pair.client.wait_bytes(len(expected)) == expected
        pair.server_tr.close()
        assert await pair.srv.lost is None
        assert await pair.client.lost is None
        assert pair.srv.events == ["made", "eof", "lost"]
        await pair.aclose()

    run(main)


# -- close, abort, connection_lost -----------------------------------------------


def test_close_calls_connection_lost_once_later(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        assert not tr.is_closing()
        tr.close()
        assert tr.is_closing()
        # connection_lost() is not called from inside close().
        assert pair.client.lost_calls == []
        tr.close()  # closing twice is harmless
        tr.abort()  # and so is aborting a closing transport
        assert await pair.client.lost is None
        for _ in range(5):
            await asyncio.sleep(0)
        assert pair.client.lost_calls == [None]
        assert pair.client.events == ["made", "lost"]
        assert tr.is_closing()
        assert tr.is_reading() is False
        # The peer sees EOF, then the loss of the connection.
        assert await pair.srv.lost is None
        assert pair.srv.events == ["made", "eof", "lost"]
        await pair.aclose()

    run(main)


def test_close_flushes_buffered_data(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.server_tr.pause_reading()
        sent = await fill_until_paused(pair.client_tr, pair.client)
        assert pair.client_tr.get_write_buffer_size() > 0
        pair.client_tr.close()
        assert pair.client_tr.is_closing()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not pair.client.lost.done()  # still flushing
        pair.server_tr.resume_reading()
        assert await pair.client.lost is None
        assert await pair.srv.lost is None
        assert len(pair.srv.data) == len(sent)
        assert hashlib.sha256(pair.srv.data).digest() == hashlib.sha256(sent).digest()
        assert pair.client.lost_calls == [None]
        await pair.aclose()

    run(main)


def test_abort_discards_buffer_and_calls_connection_lost_once(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.server_tr.pause_reading()
        sent = await fill_until_paused(pair.client_tr, pair.client)
        assert pair.client_tr.get_write_buffer_size() > 0
        pair.client_tr.abort()
        assert pair.client_tr.is_closing()
        assert pair.client_tr.get_write_buffer_size() == 0
        assert pair.client.lost_calls == []  # not from inside abort()
        pair.client_tr.abort()
        pair.client_tr.close()
        # asyncio's abort() reports a clean loss: connection_lost(None).
        assert await pair.client.lost is None
        for _ in range(5):
            await asyncio.sleep(0)
        assert pair.client.lost_calls == [None]
        pair.server_tr.resume_reading()
        await pair.srv.lost
        assert len(pair.srv.lost_calls) == 1
        assert len(pair.srv.data) < len(sent)
        assert bytes(pair.srv.data) == sent[: len(pair.srv.data)]
        await pair.aclose()

    run(main)


def test_abort_without_pending_data_closes_peer(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.client_tr.write(b"x")
        await pair.srv.wait_bytes(1)
        pair.client_tr.abort()
        assert await pair.client.lost is None
        await pair.srv.lost
        assert pair.srv.events[-1] == "lost"
        assert len(pair.srv.lost_calls) == 1
        await pair.aclose()

    run(main)


def test_write_after_close_is_ignored_and_logged_from_the_fifth(run, family, sockdir, caplog):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        tr.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(4):
                tr.write(b"ignored")
            assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
            tr.write(b"ignored")
            assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [
                "socket.send() raised exception."
            ]
            tr.write(b"")  # empty data returns before the check
            assert len([r for r in caplog.records if r.name == "asyncio"]) == 1
        assert await pair.client.lost is None
        # After connection_lost too: still silently ignored.
        tr.write(b"ignored")
        await pair.srv.lost
        assert b"ignored" not in pair.srv.data
        await pair.aclose()

    run(main)


# -- extra info -----------------------------------------------------------------


def test_get_extra_info(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        for tr, other in ((pair.client_tr, pair.server_tr), (pair.server_tr, pair.client_tr)):
            sock = tr.get_extra_info("socket")
            assert sock is not None
            assert isinstance(sock.fileno(), int) and sock.fileno() >= 0
            assert sock.type == socket.SOCK_STREAM
            expected_family = socket.AF_INET if family == "tcp" else socket.AF_UNIX
            assert sock.family == expected_family
            assert sock.getsockname() == tr.get_extra_info("sockname")
            if family == "tcp":
                assert sock.getpeername() == tr.get_extra_info("peername")
                assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
                assert tr.get_extra_info("peername") == other.get_extra_info("sockname")
                # asyncio turns Nagle's algorithm off on every TCP transport.
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert tr.get_extra_info("no such key") is None
            assert tr.get_extra_info("no such key", 42) == 42
            assert tr.get_extra_info("sslcontext") is None
        if family == "unix":
            path = pair.server.sockets[0].getsockname()
            assert pair.client_tr.get_extra_info("peername") == path
            assert pair.server_tr.get_extra_info("sockname") == path
            assert pair.client_tr.get_extra_info("sockname") == ""
            assert pair.server_tr.get_extra_info("peername") == ""
        # The two ends are different sockets.
        assert pair.client_tr.get_extra_info("socket").fileno() != pair.server_tr.get_extra_info("socket").fileno()
        await pair.aclose()

    run(main)


def test_extra_info_survives_close(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        before = {key: tr.get_extra_info(key) for key in ("sockname", "peername")}
        tr.close()
        assert await pair.client.lost is None
        after = {key: tr.get_extra_info(key) for key in ("sockname", "peername")}
        assert after == before
        assert tr.get_extra_info("socket") is not None
        await pair.aclose()

    run(main)


def test_repr_of_a_transport(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        for state in ("open", "closing", "closed"):
            if state == "closing":
                tr.close()
            elif state == "closed":
                await pair.client.lost
            text = repr(tr)
            assert isinstance(text, str) and text.startswith("<"), (state, text)
        await pair.aclose()

    run(main)


def test_add_reader_refuses_a_transports_fd(run, family, sockdir):
    async def main():
        loop = asyncio.get_running_loop()
        pair = await open_pair(family, sockdir)
        fd = pair.client_tr.get_extra_info("socket").fileno()
        for register in (loop.add_reader, loop.add_writer):
            with pytest.raises(RuntimeError) as info:
                register(fd, lambda: None)
            assert str(info.value).startswith(f"File descriptor {fd!r} is used by transport ")
        # The transport still works.
        pair.client_tr.write(b"fine")
        assert await pair.srv.wait_bytes(4) == b"fine"
        await pair.aclose()

    run(main)


# -- reading flow control -----------------------------------------------------------


def test_pause_and_resume_reading(run, family, sockdir):
    async def main():
        class PausedAtStart(Recorder):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                # asyncio honours a pause from connection_made() from 3.11 on.
                if sys.version_info >= (3, 11):
                    transport.pause_reading()

        pair = await open_pair(family, sockdir, server_factory=PausedAtStart)
        srv_tr = pair.server_tr
        if sys.version_info < (3, 11):
            srv_tr.pause_reading()
        assert srv_tr.is_reading() is False
        srv_tr.pause_reading()  # pausing twice is harmless
        assert pair.client_tr.is_reading() is True
        chunks = [b"chunk-%d;" % i for i in range(200)]
        for c in chunks:
            pair.client_tr.write(c)
        pair.client_tr.write_eof()
        for _ in range(10):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        # Nothing delivered while paused, not even the EOF.
        assert pair.srv.data == b""
        assert pair.srv.events == ["made"]
        srv_tr.resume_reading()
        assert srv_tr.is_reading() is True
        srv_tr.resume_reading()  # resuming twice is harmless
        await pair.srv.eof
        assert bytes(pair.srv.data) == b"".join(chunks)
        assert pair.srv.events == ["made", "data", "eof", "lost"][: len(pair.srv.events)]
        await pair.aclose()

    run(main)


def test_pause_reading_mid_stream_then_resume(run, family, sockdir):
    async def main():
        class PauseAfterFirst(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if not hasattr(self, "paused_once"):
                    self.paused_once = True
                    self.transport.pause_reading()
                    self.bytes_at_pause = len(self.data)

        pair = await open_pair(family, sockdir, server_factory=PauseAfterFirst)
        pair.client_tr.write(b"first")
        await pair.srv.wait_bytes(1)
        assert pair.server_tr.is_reading() is False
        rest = bytes(range(256)) * 64
        pair.client_tr.write(rest)
        for _ in range(10):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert len(pair.srv.data) == pair.srv.bytes_at_pause
        pair.server_tr.resume_reading()
        data = await pair.srv.wait_bytes(5 + len(rest))
        assert data == b"first" + rest
        await pair.aclose()

    run(main)


def test_is_reading_false_after_close(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        assert pair.server_tr.is_reading() is True
        pair.server_tr.pause_reading()
        pair.server_tr.close()
        assert pair.server_tr.is_reading() is False
        pair.server_tr.resume_reading()  # no effect on a closing transport
        assert pair.server_tr.is_reading() is False
        assert await pair.srv.lost is None
        await pair.aclose()

    run(main)


def test_private_paused_follows_pause_reading(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.server_tr
        assert tr._paused is False
        tr.pause_reading()
        assert tr._paused is True
        tr.resume_reading()
        assert tr._paused is False
        await pair.aclose()

    run(main)


def test_private_closed_follows_close(loop_name):
    loop = LOOP_FACTORIES[loop_name]()
    assert loop._closed is False
    loop.close()
    assert loop._closed is True


# -- writing flow control -----------------------------------------------------------


def test_write_buffer_limits(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        tr = pair.client_tr
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        tr.set_write_buffer_limits(high=300, low=10)
        assert tr.get_write_buffer_limits() == (10, 300)
        tr.set_write_buffer_limits(high=0, low=0)
        assert tr.get_write_buffer_limits() == (0, 0)
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError) as info:
            tr.set_write_buffer_limits(high=1, low=2)
        assert str(info.value) == "high (1) must be >= low (2) must be >= 0"
        with pytest.raises(ValueError) as info:
            tr.set_write_buffer_limits(high=-4)
        assert str(info.value) == "high (-4) must be >= low (-1) must be >= 0"
        with pytest.raises(ValueError) as info:
            tr.set_write_buffer_limits(high=5, low=-1)
        assert str(info.value) == "high (5) must be >= low (-1) must be >= 0"
        # A rejected call leaves the limits alone.
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        assert tr.get_write_buffer_size() == 0
        await pair.aclose()

    run(main)


def test_pause_and_resume_writing_at_water_marks(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        high, low = 200_000, 50_000
        pair.client_tr.set_write_buffer_limits(high=high, low=low)
        pair.server_tr.pause_reading()  # the peer stops reading
        sent = await fill_until_paused(pair.client_tr, pair.client, chunk=64 * 1024)
        assert pair.client.events == ["made", "pause_writing"]
        assert pair.client.pause_sizes[0] > high
        assert pair.client_tr.get_write_buffer_size() > high
        # More writes while paused are buffered; pause_writing is not repeated.
        extra = os.urandom(100_000)
        pair.client_tr.write(extra)
        sent += extra
        await asyncio.sleep(0.02)
        assert pair.client.events.count("pause_writing") == 1
        assert not pair.client.resumed_writing.done()
        pair.server_tr.resume_reading()
        await pair.client.resumed_writing
        assert pair.client.resume_sizes[0] <= low
        data = await pair.srv.wait_bytes(len(sent))
        assert len(data) == len(sent) and data == sent
        assert pair.client_tr.get_write_buffer_size() == 0
        assert pair.client.events.count("resume_writing") == pair.client.events.count("pause_writing")
        await pair.aclose()

    run(main)


def test_lowering_high_water_below_buffer_pauses_at_once(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.client_tr.set_write_buffer_limits(high=64 * 1024 * 1024)
        pair.server_tr.pause_reading()
        rng = random.Random(5)
        sent = bytearray()
        # Write until data stays buffered (the peer's socket buffers are full).
        while pair.client_tr.get_write_buffer_size() < 100_000:
            chunk = rng.randbytes(256 * 1024)
            pair.client_tr.write(chunk)
            sent += chunk
            assert len(sent) < 256 * 1024 * 1024
            await asyncio.sleep(0)
        assert not pair.client.paused_writing.done()
        size = pair.client_tr.get_write_buffer_size()
        pair.client_tr.set_write_buffer_limits(high=size - 1, low=0)
        assert pair.client.paused_writing.done()
        assert pair.client.pause_sizes == [size]
        pair.server_tr.resume_reading()
        await pair.client.resumed_writing
        assert pair.client.resume_sizes == [0]
        assert await pair.srv.wait_bytes(len(sent)) == sent
        await pair.aclose()

    run(main)


def test_pause_writing_raising_is_reported(run, family, sockdir):
    async def main():
        handlers = Handlers()

        class BadPause(Recorder):
            def pause_writing(self) -> None:
                super().pause_writing()
                raise ZeroDivisionError("pause")

        pair = await open_pair(family, sockdir, client_factory=BadPause)
        pair.server_tr.pause_reading()
        await fill_until_paused(pair.client_tr, pair.client)
        assert len(handlers.contexts) == 1
        ctx = handlers.contexts[0]
        assert ctx["message"] == "protocol.pause_writing() failed"
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["transport"] is pair.client_tr
        assert ctx["protocol"] is pair.client
        # The transport goes on.
        assert not pair.client_tr.is_closing()
        await pair.aclose()

    run(main)


# -- set_protocol ---------------------------------------------------------------------


def test_set_protocol_mid_connection(run, family, sockdir):
    async def main():
        second_holder: list[Recorder] = []

        class Switcher(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if data.endswith(b"SWITCH"):
                    second = Recorder()
                    second.transport = self.transport
                    second_holder.append(second)
                    self.transport.set_protocol(second)
                    self.transport.write(b"switched")

        pair = await open_pair(family, sockdir, server_factory=Switcher)
        srv_tr = pair.server_tr
        assert srv_tr.get_protocol() is pair.srv
        assert pair.client_tr.get_protocol() is pair.client
        pair.client_tr.write(b"one,SWITCH")
        await pair.client.wait_bytes(8)
        second = second_holder[0]
        assert srv_tr.get_protocol() is second
        pair.client_tr.write(b"two")
        pair.client_tr.write_eof()
        await second.eof
        assert bytes(pair.srv.data) == b"one,SWITCH"
        assert bytes(second.data) == b"two"
        assert await second.lost is None
        # The first protocol hears nothing after the switch.
        assert pair.srv.events == ["made", "data"]
        assert second.events == ["data", "eof", "lost"]
        await asyncio.sleep(0)
        assert not pair.srv.lost.done()
        await pair.aclose()

    run(main)


# -- BufferedProtocol -------------------------------------------------------------------


class BufRecorder(asyncio.BufferedProtocol):
    def __init__(self, size: int = 65536, fail_get_buffer: Optional[BaseException] = None) -> None:
        loop = asyncio.get_running_loop()
        self.buf = bytearray(size)
        self.data = bytearray()
        self.transport: Any = None
        self.fail_get_buffer = fail_get_buffer
        self.fail_buffer_updated: Optional[BaseException] = None
        self.get_buffer_calls = 0
        self.updates: list[int] = []
        self.events: list[str] = []
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls: list[Optional[BaseException]] = []
        self.eof_result: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def get_buffer(self, sizehint: int) -> Any:
        assert isinstance(sizehint, int)
        self.get_buffer_calls += 1
        if self.fail_get_buffer is not None:
            raise self.fail_get_buffer
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buf)
        self.updates.append(nbytes)
        self.data += self.buf[:nbytes]
        if self.fail_buffer_updated is not None:
            raise self.fail_buffer_updated

    def eof_received(self) -> Any:
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.events.append("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize("bufsize", [1, 7, 4096, 300_000])
def test_buffered_protocol_receives_everything(run, family, sockdir, bufsize):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: BufRecorder(bufsize))
        await pair.srv.made
        payload = random.Random(bufsize).randbytes(50_000 if bufsize < 100 else 3_000_000)
        pair.client_tr.write(payload)
        pair.client_tr.write_eof()
        await pair.srv.eof
        assert bytes(pair.srv.data) == payload
        assert sum(pair.srv.updates) == len(payload)
        assert max(pair.srv.updates) <= bufsize
        if bufsize == 1:
            assert len(pair.srv.updates) == len(payload)
        assert await pair.srv.lost is None
        assert pair.srv.events == ["made", "eof", "lost"]
        await pair.aclose()

    run(main)


def test_buffered_protocol_get_buffer_raising(run, family, sockdir):
    async def main():
        handlers = Handlers()
        error = ZeroDivisionError("no buffer")
        pair = await open_pair(family, sockdir, server_factory=lambda: BufRecorder(fail_get_buffer=error))
        await pair.srv.made
        pair.client_tr.write(b"data")
        exc = await pair.srv.lost
        assert exc is error
        assert pair.srv.lost_calls == [error]
        assert pair.srv.data == b""
        assert pair.server_tr.is_closing()
        assert len(handlers.contexts) == 1
        ctx = handlers.contexts[0]
        assert ctx["message"] == "Fatal error: protocol.get_buffer() call failed."
        assert ctx["exception"] is error
        assert ctx["transport"] is pair.server_tr
        assert ctx["protocol"] is pair.srv
        # The client sees the connection end.
        await pair.client.lost
        await pair.aclose()

    run(main)


def test_buffered_protocol_empty_buffer_is_an_error(run, family, sockdir):
    async def main():
        handlers = Handlers()
        pair = await open_pair(family, sockdir, server_factory=lambda: BufRecorder(0))
        await pair.srv.made
        pair.client_tr.write(b"data")
        exc = await pair.srv.lost
        assert isinstance(exc, RuntimeError)
        assert str(exc) == "get_buffer() returned an empty buffer"
        assert [c["message"] for c in handlers.contexts] == ["Fatal error: protocol.get_buffer() call failed."]
        assert handlers.contexts[0]["exception"] is exc
        await pair.aclose()

    run(main)


def test_buffered_protocol_buffer_updated_raising(run, family, sockdir):
    async def main():
        handlers = Handlers()
        error = KeyError("updated")

        def factory() -> BufRecorder:
            proto = BufRecorder()
            proto.fail_buffer_updated = error
            return proto

        pair = await open_pair(family, sockdir, server_factory=factory)
        await pair.srv.made
        pair.client_tr.write(b"data")
        assert await pair.srv.lost is error
        assert pair.srv.lost_calls == [error]
        assert bytes(pair.srv.data) == b"data"
        assert len(handlers.contexts) == 1
        ctx = handlers.contexts[0]
        assert ctx["message"] == "Fatal error: protocol.buffer_updated() call failed."
        assert ctx["exception"] is error
        assert ctx["transport"] is pair.server_tr
        assert ctx["protocol"] is pair.srv
        await pair.aclose()

    run(main)


def test_switch_to_buffered_protocol_mid_connection(run, family, sockdir):
    async def main():
        holder: list[BufRecorder] = []

        class Switcher(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if data.endswith(b"SWITCH"):
                    buffered = BufRecorder(10)
                    holder.append(buffered)
                    self.transport.set_protocol(buffered)
                    self.transport.write(b"ok")

        pair = await open_pair(family, sockdir, server_factory=Switcher)
        pair.client_tr.write(b"SWITCH")
        await pair.client.wait_bytes(2)
        buffered = holder[0]
        payload = bytes(range(256)) * 40
        pair.client_tr.write(payload)
        pair.client_tr.write_eof()
        await buffered.eof
        assert bytes(buffered.data) == payload
        assert max(buffered.updates) <= 10
        assert bytes(pair.srv.data) == b"SWITCH"
        await pair.aclose()

    run(main)


# -- fatal errors from protocol callbacks ----------------------------------------------------


def test_data_received_raising_is_fatal(run, family, sockdir):
    async def main():
        handlers = Handlers()
        error = ValueError("bad data")

        class Bad(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                raise error

        pair = await open_pair(family, sockdir, server_factory=Bad)
        pair.client_tr.write(b"boom")
        exc = await pair.srv.lost
        assert exc is error
        for _ in range(5):
            await asyncio.sleep(0)
        assert pair.srv.lost_calls == [error]
        assert pair.server_tr.is_closing()
        assert len(handlers.contexts) == 1
        ctx = handlers.contexts[0]
        assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
        assert ctx["exception"] is error
        assert ctx["transport"] is pair.server_tr
        assert ctx["protocol"] is pair.srv
        # The peer sees the connection end.
        await pair.client.lost
        assert len(pair.client.lost_calls) == 1
        await pair.aclose()

    run(main)


def test_eof_received_raising_is_fatal(run, family, sockdir):
    async def main():
        handlers = Handlers()
        error = LookupError("eof")

        class Bad(Recorder):
            def eof_received(self) -> Any:
                super().eof_received()
                raise error

        pair = await open_pair(family, sockdir, server_factory=Bad)
        pair.client_tr.write_eof()
        assert await pair.srv.lost is error
        assert [c["message"] for c in handlers.contexts] == ["Fatal error: protocol.eof_received() call failed."]
        assert handlers.contexts[0]["exception"] is error
        assert handlers.contexts[0]["transport"] is pair.server_tr
        assert handlers.contexts[0]["protocol"] is pair.srv
        await pair.aclose()

    run(main)


def test_default_exception_handler_logs_fatal_error(run, family, sockdir, caplog):
    async def main():
        class Bad(Recorder):
            def data_received(self, data: bytes) -> None:
                raise RuntimeError("logged")

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            pair = await open_pair(family, sockdir, server_factory=Bad)
            pair.client_tr.write(b"x")
            exc = await pair.srv.lost
            assert isinstance(exc, RuntimeError)
        messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert any(m.startswith("Fatal error: protocol.data_received() call failed.") for m in messages), messages
        await pair.aclose()

    run(main)


# -- peer reset ---------------------------------------------------------------------------------


def test_peer_reset_mid_write(run, family, sockdir):
    """The peer closes abruptly (an RST for TCP: SO_LINGER 0) while the
    transport has data to send: connection_lost gets the OSError, and the
    exception handler is not called (OSErrors are not reported)."""

    async def main():
        loop = asyncio.get_running_loop()
        handlers = Handlers()
        if family == "tcp":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(_unix_path(sockdir))
        listener.listen(1)
        listener.setblocking(False)
        addr = listener.getsockname()
        if family == "tcp":
            connecting = loop.create_task(loop.create_connection(Recorder, *addr))
        else:
            connecting = loop.create_task(loop.create_unix_connection(Recorder, addr))
        peer, _ = await loop.sock_accept(listener)
        tr, proto = await connecting
        try:
            # The peer reads a little, so the connection is established both ways.
            tr.write(b"hello")
            assert await loop.sock_recv(peer, 5) == b"hello"
            # Fill the peer until the transport buffers.
            await fill_until_paused(tr, proto)
            if family == "tcp":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # unread data in its receive queue: a reset
            # Keep writing, as an application would.
            for _ in range(100):
                if proto.lost.done():
                    break
                tr.write(b"x" * 65536)
                await asyncio.sleep(0.01)
            exc = await proto.lost
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), repr(exc)
            for _ in range(5):
                await asyncio.sleep(0)
            assert proto.lost_calls == [exc]
            assert tr.is_closing()
            assert handlers.contexts == []
            # Further writes are ignored.
            tr.write(b"after")
        finally:
            listener.close()
            if not tr.is_closing():
                tr.abort()

    run(main)


def test_peer_reset_while_idle(run, family, sockdir):
    async def main():
        loop = asyncio.get_running_loop()
        handlers = Handlers()
        if family == "tcp":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(_unix_path(sockdir))
        listener.listen(1)
        listener.setblocking(False)
        addr = listener.getsockname()
        if family == "tcp":
            connecting = loop.create_task(loop.create_connection(Recorder, *addr))
        else:
            connecting = loop.create_task(loop.create_unix_connection(Recorder, addr))
        peer, _ = await loop.sock_accept(listener)
        tr, proto = await connecting
        try:
            tr.write(b"unread")  # left unread by the peer: closing it resets
            await asyncio.sleep(0.01)
            if family == "tcp":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            exc = await proto.lost
            assert isinstance(exc, ConnectionResetError), repr(exc)
            assert proto.lost_calls == [exc]
            assert "eof" not in proto.events
            assert handlers.contexts == []
        finally:
            listener.close()
            if not tr.is_closing():
                tr.abort()

    run(main)


@pytest.mark.parametrize("how", ["close", "abort"])
def test_no_data_received_after_close_inside_data_received(run, family, sockdir, how):
    async def main():
        class Quitter(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                getattr(self.transport, how)()

        pair = await open_pair(family, sockdir, server_factory=Quitter)
        pair.server_tr.pause_reading()
        # Several chunks are waiting in the socket when reading resumes.
        for i in range(50):
            pair.client_tr.write(b"%04d" % i * 1000)
        await asyncio.sleep(0.05)
        pair.server_tr.resume_reading()
        assert await pair.srv.lost is None
        for _ in range(5):
            await asyncio.sleep(0)
        assert pair.srv.events == ["made", "data", "lost"]
        assert pair.srv.lost_calls == [None]
        assert 0 < len(pair.srv.data) < 200_000
        await pair.aclose()

    run(main)


def test_greeting_and_close_inside_connection_made(run, family, sockdir):
    async def main():
        greeting = os.urandom(3 * 1024 * 1024)

        class Greeter(Recorder):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                transport.write(b"HELLO ")
                transport.write(greeting)
                transport.close()

        pair = await open_pair(family, sockdir, server_factory=Greeter)
        await pair.client.eof
        assert bytes(pair.client.data) == b"HELLO " + greeting
        assert await pair.client.lost is None
        assert await pair.srv.lost is None
        assert [e for e in pair.srv.events if not e.endswith("_writing")] == ["made", "lost"]
        await pair.aclose()

    run(main)


def test_loop_sendfile_over_a_transport(run, family, sockdir, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        content = random.Random(11).randbytes(2 * 1024 * 1024 + 123)
        path = tmp_path / "payload.bin"
        path.write_bytes(content)
        pair = await open_pair(family, sockdir)
        with open(path, "rb") as f:
            sent = await loop.sendfile(pair.client_tr, f)
            assert sent == len(content)
            assert f.tell() == len(content)
            f.seek(0)
            sent = await loop.sendfile(pair.client_tr, f, offset=100, count=1000)
            assert sent == 1000
            assert f.tell() == 1100
        # The transport is usable afterwards.
        pair.client_tr.write(b"END")
        expected = content + content[100:1100] + b"END"
        data = await pair.srv.wait_bytes(len(expected))
        assert len(data) == len(expected)
        assert data == expected
        await pair.aclose()

    run(main)


def test_written_bytearray_is_copied(run, family, sockdir, loop_name, request):
    """Mutating a bytearray after write() must not change what is sent, even
    when the transport had to buffer it."""
    if loop_name == "asyncio" and sys.version_info >= (3, 12):
        # 3.12's selector transport queues the caller's buffers without
        # copying them (CPython gh-91166), so later changes are sent.
        request.applymarker(pytest.mark.xfail(reason="asyncio 3.12+ does not copy buffered writes"))

    async def main():
        pair = await open_pair(family, sockdir)
        pair.server_tr.pause_reading()
        sent = await fill_until_paused(pair.client_tr, pair.client)
        assert pair.client_tr.get_write_buffer_size() > 0
        data = bytearray(b"A" * 100_000)
        view_source = bytearray(b"B" * 50_000)
        pair.client_tr.write(data)
        pair.client_tr.write(memoryview(view_source))
        pair.client_tr.writelines([data, view_source])
        data[:] = b"Z" * 100_000
        view_source[:] = b"Y" * 50_000
        expected = sent + b"A" * 100_000 + b"B" * 50_000 + b"A" * 100_000 + b"B" * 50_000
        pair.server_tr.resume_reading()
        got = await pair.srv.wait_bytes(len(expected))
        assert len(got) == len(expected)
        assert got == expected
        await pair.aclose()

    run(main)


class KeepingProtocol(asyncio.Protocol):
    """Acknowledges each chunk with one byte and keeps, per chunk, what the
    test asks for: the bytes object, a memoryview of it, or nothing but
    what hashing it gave."""

    def __init__(self, keep: str) -> None:
        self.keep = keep
        self.kept: list[Any] = []
        self.copies: list[bytes] = []
        self.hash_mismatches = 0
        self.by_content: dict[bytes, int] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if hash(data) != hash(bytes(bytearray(data))):
            self.hash_mismatches += 1
        self.by_content[bytes(bytearray(data))] = len(self.copies)
        if data in self.by_content:
            self.by_content[data] = len(self.copies)
        self.copies.append(bytes(bytearray(data)))
        if self.keep == "bytes":
            self.kept.append(data)
        elif self.keep == "memoryview":
            self.kept.append(memoryview(data))
        self.transport.write(b"k")


@pytest.mark.parametrize("keep", ["bytes", "memoryview", "nothing"])
def test_received_chunks_are_independent_objects(run, family, sockdir, keep):
    """Chunk after chunk of about the same size, sent in lockstep so each
    arrives in one read: whatever a protocol kept of an earlier chunk still
    holds that chunk's contents, and every chunk hashes by its contents."""

    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: KeepingProtocol(keep))
        rng = random.Random(7)
        sent = [rng.randbytes(rng.choice([600, 900, 1000, 1024, 1024, 4096])) for _ in range(60)]
        for i, chunk in enumerate(sent):
            pair.client_tr.write(chunk)
            await pair.client.wait_bytes(i + 1)
        server = pair.srv
        assert b"".join(server.copies) == b"".join(sent)
        assert server.hash_mismatches == 0
        if keep == "bytes":
            assert b"".join(server.kept) == b"".join(sent)
            assert all(type(chunk) is bytes for chunk in server.kept)
        elif keep == "memoryview":
            assert b"".join(bytes(view) for view in server.kept) == b"".join(sent)
        for index, chunk in enumerate(server.copies):
            assert server.by_content[chunk] >= index
        await pair.aclose()

    run(main)


@pytest.mark.parametrize("cleanup", ["default", "keep"])
def test_closing_a_unix_server_cleans_up_its_path_as_asyncio_does(run, sockdir, cleanup):
    """Since 3.13, closing a server made by create_unix_server() unlinks its
    socket file unless cleanup_socket=False; before, the file stays."""
    if cleanup == "keep" and sys.version_info < (3, 13):
        pytest.skip("cleanup_socket= is new in 3.13")

    async def main():
        loop = asyncio.get_running_loop()
        path = _unix_path(sockdir)
        kwargs = {"cleanup_socket": False} if cleanup == "keep" else {}
        server = await loop.create_unix_server(asyncio.Protocol, path, **kwargs)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()
        return os.path.exists(path)

    removed_on_close = sys.version_info >= (3, 13) and cleanup == "default"
    assert run(main) is not removed_on_close


def test_unreferenced_transport_keeps_working(run, family, sockdir):
    """Nothing but the loop refers to a server-side transport and its
    protocol: they must survive garbage collection and keep echoing."""

    async def main():
        import gc

        lost: asyncio.Future = asyncio.get_running_loop().create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport  # a cycle, unreachable from outside

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

            def connection_lost(self, exc: Optional[BaseException]) -> None:
                lost.set_result(exc)

        pair = await open_pair(family, sockdir, server_factory=Echo)
        pair.srv = None  # drop our only reference to the server side
        for i in range(5):
            gc.collect()
            await asyncio.sleep(0.01)
            pair.client_tr.write(b"round %d;" % i)
            expected = b"".join(b"round %d;" % j for j in range(i + 1))
            assert await pair.client.wait_bytes(len(expected)) == expected
        pair.client_tr.close()
        assert await lost is None
        pair.server.close()
        await pair.server.wait_closed()

    run(main)


def test_data_and_eof_waiting_before_the_transport_exists(run, family, sockdir):
    async def main():
        loop = asyncio.get_running_loop()
        if family == "tcp":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                a = socket.create_connection(listener.getsockname())
                b, _ = listener.accept()
        else:
            a, b = socket.socketpair(socket.AF_UNIX)
        a.sendall(b"early bird")
        a.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.01)  # data and FIN are in b's receive queue
        tr, proto = await loop.connect_accepted_socket(lambda: Recorder(eof_result=True), b)
        await proto.eof
        assert bytes(proto.data) == b"early bird"
        assert proto.events == ["made", "data", "eof"]
        tr.write(b"late reply")
        a.setblocking(False)
        assert await loop.sock_recv(a, 100) == b"late reply"
        tr.close()
        assert await proto.lost is None
        assert await loop.sock_recv(a, 100) == b""
        a.close()

    run(main)


def test_resume_reading_before_data_arrives(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.server_tr.pause_reading()
        await asyncio.sleep(0.01)
        pair.server_tr.resume_reading()
        await asyncio.sleep(0.01)
        pair.client_tr.write(b"after resume")
        assert await pair.srv.wait_bytes(12) == b"after resume"
        pair.client_tr.write_eof()
        await pair.srv.eof
        await pair.aclose()

    run(main)


def test_pause_in_every_data_received(run, family, sockdir):
    """Reading paused in every data_received() and resumed from a later
    callback (soon or after a short timer): nothing lost, nothing reordered,
    nothing delivered while paused."""

    async def main():
        loop = asyncio.get_running_loop()

        class Stutter(Recorder):
            count = 0
            delivered_while_paused = 0

            def data_received(self, data: bytes) -> None:
                if not self.transport.is_reading():
                    self.delivered_while_paused += 1
                super().data_received(data)
                self.count += 1
                self.transport.pause_reading()
                if self.count % 3:
                    loop.call_soon(self.transport.resume_reading)
                else:
                    loop.call_later(0.001, self.transport.resume_reading)

        pair = await open_pair(family, sockdir, server_factory=Stutter)
        rng = random.Random(99)
        expected = bytearray()
        for _ in range(300):
            piece = rng.randbytes(rng.randint(1, 20_000))
            pair.client_tr.write(piece)
            expected += piece
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        pair.client_tr.write_eof()
        await pair.srv.eof
        assert len(pair.srv.data) == len(expected)
        assert bytes(pair.srv.data) == bytes(expected)
        assert pair.srv.delivered_while_paused == 0
        assert pair.srv.count > 1
        await pair.aclose()

    run(main)


def test_close_then_abort_with_pending_data(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.server_tr.pause_reading()
        await fill_until_paused(pair.client_tr, pair.client)
        pair.client_tr.close()  # would flush...
        pair.client_tr.abort()  # ...but abort drops the rest
        assert pair.client_tr.get_write_buffer_size() == 0
        assert await pair.client.lost is None
        for _ in range(5):
            await asyncio.sleep(0)
        assert pair.client.lost_calls == [None]
        await pair.aclose()

    run(main)


def test_write_empty_after_write_eof_raises(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.client_tr.write_eof()
        with pytest.raises(RuntimeError) as info:
            pair.client_tr.write(b"")
        assert str(info.value) == "Cannot call write() after write_eof()"
        with pytest.raises(RuntimeError):
            pair.client_tr.writelines([b"a", b"b"])
        await pair.srv.eof
        await pair.aclose()

    run(main)


def test_connection_made_is_called_before_create_connection_returns(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        # open_pair awaited create_connection: connection_made already ran.
        assert pair.client.events[0] == "made"
        assert pair.client.transport is pair.client_tr
        assert pair.server_tr.get_protocol() is pair.srv
        await pair.aclose()

    run(main)


def test_connection_made_raising_is_reported(run, family, sockdir):
    async def main():
        handlers = Handlers()
        error = ArithmeticError("made")

        class Bad(Recorder):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                raise error

        pair = await open_pair(family, sockdir, server_factory=Bad)
        for _ in range(5):
            await asyncio.sleep(0)
        assert [c.get("exception") for c in handlers.contexts] == [error]
        # As in asyncio, the transport goes on.
        pair.client_tr.write(b"still")
        assert await pair.srv.wait_bytes(5) == b"still"
        await pair.aclose()

    run(main)


def test_system_exit_from_data_received_propagates(loop_name, family, sockdir):
    pairs: list[Pair] = []

    async def main():
        class Exiting(Recorder):
            def data_received(self, data: bytes) -> None:
                raise SystemExit(3)

        pair = await open_pair(family, sockdir, server_factory=Exiting)
        pairs.append(pair)
        pair.client_tr.write(b"bye")
        await asyncio.sleep(5)
        raise AssertionError("SystemExit did not propagate")

    loop = LOOP_FACTORIES[loop_name]()
    try:
        task = loop.create_task(main())
        with pytest.raises(SystemExit) as info:
            loop.run_until_complete(task)
        assert info.value.code == 3
        assert not loop.is_running()
        # The loop can run again afterwards, and the connection still works.
        pair = pairs[0]
        task.cancel()

        async def afterwards() -> None:
            pair.srv.transport.write(b"after")
            assert await pair.client.wait_bytes(5) == b"after"
            await pair.aclose()

        loop.run_until_complete(asyncio.wait_for(afterwards(), TIMEOUT))
    finally:
        loop.close()


def test_unclosed_transport_collected_by_gc(loop_name):
    """A transport nobody closed, collected with its socket and protocol in a
    reference cycle: a ResourceWarning, as asyncio gives, and no exception
    from the finaliser."""
    import gc
    import warnings

    def leave_a_transport_open() -> None:
        loop = LOOP_FACTORIES[loop_name]()

        class Holder(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport  # protocol <-> transport cycle

        async def main() -> None:
            a, b = socket.socketpair()
            await loop.connect_accepted_socket(Holder, a)
            await asyncio.sleep(0)
            b.close()

        loop.run_until_complete(main())
        loop.close()

    unraisable: list[str] = []
    gc.disable()
    try:
        leave_a_transport_open()  # everything it made is now garbage
        old_hook = sys.unraisablehook
        sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
        # Record only the text: catch_warnings(record=True) would keep each
        # warning's source (the socket) alive, which changes what the
        # collector does.
        shown: list[tuple[type, str]] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, category, *args, **kwargs: shown.append((category, str(message)))
                gc.collect()
                gc.collect()
        finally:
            sys.unraisablehook = old_hook
    finally:
        gc.enable()
    messages = [text for category, text in shown if issubclass(category, ResourceWarning)]
    assert unraisable == []
    assert any(m.startswith("unclosed transport") for m in messages), messages


class OffsetBuffer(BufRecorder):
    """get_buffer() hands out a window in the middle of a larger buffer."""

    def get_buffer(self, sizehint: int) -> Any:
        self.get_buffer_calls += 1
        return memoryview(self.buf)[5:12]

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= 7
        self.updates.append(nbytes)
        self.data += self.buf[5 : 5 + nbytes]
        # The bytes around the window are never touched.
        assert self.buf[:5] == b"\0" * 5 and self.buf[12:] == b"\0" * (len(self.buf) - 12)


class BytearrayBuffer(BufRecorder):
    """get_buffer() returns a bytearray, not a memoryview."""

    def get_buffer(self, sizehint: int) -> Any:
        self.get_buffer_calls += 1
        return self.buf


@pytest.mark.parametrize("proto_class", [OffsetBuffer, BytearrayBuffer])
def test_buffered_protocol_buffer_kinds(run, family, sockdir, proto_class):
    async def main():
        pair = await open_pair(family, sockdir, server_factory=lambda: proto_class(20))
        await pair.srv.made
        payload = bytes(range(1, 256)) * 100
        pair.client_tr.write(payload)
        pair.client_tr.write_eof()
        await pair.srv.eof
        assert bytes(pair.srv.data) == payload
        await pair.aclose()

    run(main)


def test_buffered_protocol_read_only_buffer_is_fatal(run, family, sockdir):
    async def main():
        handlers = Handlers()

        class ReadOnly(BufRecorder):
            def get_buffer(self, sizehint: int) -> Any:
                return b"read-only bytes"

        pair = await open_pair(family, sockdir, server_factory=ReadOnly)
        await pair.srv.made
        pair.client_tr.write(b"data")
        exc = await pair.srv.lost
        assert exc is not None and not isinstance(exc, OSError)
        assert len(handlers.contexts) == 1
        ctx = handlers.contexts[0]
        assert ctx["message"] == "Fatal read error on socket transport"
        assert ctx["exception"] is exc
        assert ctx["transport"] is pair.server_tr
        await pair.aclose()

    run(main)


def test_producer_writing_from_resume_writing(run, family, sockdir):
    """A producer that writes from inside resume_writing() (and stops inside
    pause_writing()), against a peer that reads in bursts."""

    async def main():
        total = 12 * 1024 * 1024
        rng = random.Random(21)
        source = rng.randbytes(total)

        class Producer(Recorder):
            offset = 0
            paused_flag = False
            pauses = 0

            def produce(self) -> None:
                while not self.paused_flag and self.offset < total:
                    n = min(rng.randint(1, 100_000), total - self.offset)
                    self.transport.write(source[self.offset : self.offset + n])
                    self.offset += n
                if self.offset >= total and not self.transport.is_closing():
                    self.transport.close()

            def pause_writing(self) -> None:
                super().pause_writing()
                self.pauses += 1
                self.paused_flag = True

            def resume_writing(self) -> None:
                super().resume_writing()
                self.paused_flag = False
                self.produce()

        class Bursty(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(0.001 if rng.random() < 0.1 else 0, self.transport.resume_reading)

        pair = await open_pair(family, sockdir, server_factory=Bursty, client_factory=Producer)
        pair.client_tr.set_write_buffer_limits(high=256 * 1024)
        pair.client.produce()
        assert await pair.client.lost is None
        await pair.srv.eof
        assert len(pair.srv.data) == total
        assert hashlib.sha256(pair.srv.data).digest() == hashlib.sha256(source).digest()
        assert pair.client.pauses >= 1
        assert pair.client.events.count("pause_writing") == pair.client.events.count("resume_writing")
        await pair.aclose()

    run(main)


def test_connection_churn(run, family, sockdir):
    """Hundreds of short connections one after another (file descriptor
    numbers get reused), closed first by one side or the other."""

    async def main():
        loop = asyncio.get_running_loop()
        served: list[bytes] = []

        class OneShot(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if self.data.endswith(b"\n"):
                    served.append(bytes(self.data))
                    self.transport.write(b"re:" + bytes(self.data))
                    if self.data.startswith(b"server-closes"):
                        self.transport.close()

        if family == "tcp":
            server = await loop.create_server(OneShot, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            connect = lambda: loop.create_connection(Recorder, *addr)  # noqa: E731
        else:
            path = _unix_path(sockdir)
            server = await loop.create_unix_server(OneShot, path)
            connect = lambda: loop.create_unix_connection(Recorder, path)  # noqa: E731
        for i in range(300):
            tr, proto = await connect()
            who = "server-closes" if i % 2 else "client-closes"
            message = b"%s %d\n" % (who.encode(), i)
            tr.write(message)
            assert await proto.wait_bytes(len(message) + 3) == b"re:" + message
            if i % 2 == 0:
                tr.close()
            assert await proto.lost is None
            assert proto.lost_calls == [None]
        assert len(served) == 300
        server.close()
        await server.wait_closed()

    run(main)


def test_ipv6_transport_extra_info(run):
    async def main():
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future = loop.create_future()

        def factory() -> Recorder:
            proto = Recorder()
            accepted.set_result(proto)
            return proto

        server = await loop.create_server(factory, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, client = await loop.create_connection(Recorder, "::1", port)
        srv = await accepted
        await srv.made
        assert tr.get_extra_info("peername")[:2] == ("::1", port)
        assert len(tr.get_extra_info("peername")) == 4
        assert srv.transport.get_extra_info("peername") == tr.get_extra_info("sockname")
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        tr.write(b"v6")
        assert await srv.wait_bytes(2) == b"v6"
        tr.close()
        await srv.lost
        server.close()
        await server.wait_closed()

    run(main)


# -- ordering and integrity ------------------------------------------------------------------------


def test_many_small_writes_keep_order(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        rng = random.Random(42)
        pieces = [rng.randbytes(rng.randint(1, 300)) for _ in range(20_000)]
        for i, piece in enumerate(pieces):
            pair.client_tr.write(piece)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        expected = b"".join(pieces)
        pair.client_tr.write_eof()
        await pair.srv.eof
        assert len(pair.srv.data) == len(expected)
        assert bytes(pair.srv.data) == expected
        await pair.aclose()

    run(main)


def test_echo_both_directions_with_interleaved_writes(run, family, sockdir):
    async def main():
        class Echo(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.transport.write(data)

        pair = await open_pair(family, sockdir, server_factory=Echo)
        rng = random.Random(7)
        expected = bytearray()
        for _ in range(500):
            piece = rng.randbytes(rng.randint(1, 5000))
            pair.client_tr.write(piece)
            expected += piece
            if rng.random() < 0.2:
                await asyncio.sleep(0)
        assert await pair.client.wait_bytes(len(expected)) == bytes(expected)
        assert bytes(pair.srv.data) == bytes(expected)
        await pair.aclose()

    run(main)


# -- servers: connection accounting -------------------------------------------------------------


def test_server_close_and_wait_closed_with_transport(run, family, sockdir):
    async def main():
        pair = await open_pair(family, sockdir)
        pair.server.close()
        assert not pair.server.is_serving()
        # Closing the listening socket leaves the accepted connection alone.
        pair.client_tr.write(b"still here")
        assert await pair.srv.wait_bytes(10) == b"still here"
        pair.client_tr.close()
        await pair.srv.lost
        await asyncio.wait_for(pair.server.wait_closed(), 5)
        await pair.aclose()

    run(main)


def test_connect_accepted_socket(run, family, sockdir):
    async def main():
        loop = asyncio.get_running_loop()
        if family == "tcp":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                a = socket.create_connection(listener.getsockname())
                b, _ = listener.accept()
        else:
            a, b = socket.socketpair(socket.AF_UNIX)
        tr_a, pa = await loop.connect_accepted_socket(Recorder, a)
        tr_b, pb = await loop.connect_accepted_socket(Recorder, b)
        tr_a.write(b"ping")
        assert await pb.wait_bytes(4) == b"ping"
        tr_b.write(b"pong")
        assert await pa.wait_bytes(4) == b"pong"
        assert tr_a.get_extra_info("socket").fileno() == a.fileno()
        tr_a.close()
        assert await pa.lost is None
        assert await pb.lost is None
        assert pb.events == ["made", "data", "eof", "lost"]
        assert a.fileno() == -1  # the transport closed its socket
        tr_b.close()

    run(main)


# -- asyncio streams ---------------------------------------------------------------------------


async def start_stream_server(family: str, sockdir: str, handler: Callable, **kw: Any) -> tuple[Any, Callable]:
    if family == "tcp":
        server = await asyncio.start_server(handler, "127.0.0.1", 0, **kw)
        port = server.sockets[0].getsockname()[1]
        return server, lambda **ckw: asyncio.open_connection("127.0.0.1", port, **ckw)
    path = _unix_path(sockdir)
    server = await asyncio.start_unix_server(handler, path, **kw)
    return server, lambda **ckw: asyncio.open_unix_connection(path, **ckw)


def test_streams_round_trip(run, family, sockdir):
    async def main():
        seen: list[Any] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peername"))
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write(line.upper())
                await writer.drain()
            writer.write(b"BYE")
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server, connect = await start_stream_server(family, sockdir, handle)
        async with server:
            reader, writer = await connect()
            assert writer.can_write_eof()
            for word in (b"alpha\n", b"beta\n", b"gamma\n"):
                writer.write(word)
            await writer.drain()
            assert await reader.readline() == b"ALPHA\n"
            assert await reader.readexactly(5) == b"BETA\n"
            assert await reader.readuntil(b"\n") == b"GAMMA\n"
            writer.write_eof()
            assert await reader.read() == b"BYE"
            assert reader.at_eof()
            assert await reader.read(10) == b""
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()
        assert len(seen) == 1

    run(main)


def test_streams_readexactly_incomplete(run, family, sockdir):
    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"short")
            writer.close()
            await writer.wait_closed()

        server, connect = await start_stream_server(family, sockdir, handle)
        async with server:
            reader, writer = await connect()
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert info.value.partial == b"short"
            assert info.value.expected == 10
            assert await reader.readline() == b""
            writer.close()
            await writer.wait_closed()

    run(main)


def test_streams_drain_applies_flow_control(run, family, sockdir):
    async def main():
        total = 8 * 1024 * 1024
        digest = asyncio.get_running_loop().create_future()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            h = hashlib.sha256()
            n = 0
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                if n % (256 * 1024) < 4096:
                    await asyncio.sleep(0.001)
            digest.set_result((n, h.hexdigest()))
            writer.close()
            await writer.wait_closed()

        server, connect = await start_stream_server(family, sockdir, slow_reader)
        async with server:
            reader, writer = await connect()
            transport = writer.transport
            low, high = transport.get_write_buffer_limits()
            h = hashlib.sha256()
            rng = random.Random(3)
            sent = 0
            max_after_drain = 0
            while sent < total:
                chunk = rng.randbytes(min(64 * 1024, total - sent))
                writer.write(chunk)
                h.update(chunk)
                sent += len(chunk)
                await writer.drain()
                max_after_drain = max(max_after_drain, transport.get_write_buffer_size())
            # drain() returns only once the buffer is at or below the high mark.
            assert max_after_drain <= high
            writer.write_eof()
            n, hexdigest = await digest
            assert n == total
            assert hexdigest == h.hexdigest()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    run(main)


def test_streams_concurrent_clients_and_server_wait_closed(run, family, sockdir):
    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            name = (await reader.readline()).strip()
            size = int((await reader.readline()).strip())
            body = await reader.readexactly(size)
            writer.write(b"%s:%s\n" % (name, hashlib.sha256(body).hexdigest().encode()))
            await writer.drain()
            writer.close()

        server, connect = await start_stream_server(family, sockdir, handle)

        async def client(i: int) -> bool:
            reader, writer = await connect()
            body = random.Random(i).randbytes(1000 * i + 1)
            writer.write(b"c%d\n%d\n" % (i, len(body)))
            writer.write(body)
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return answer == b"c%d:%s\n" % (i, hashlib.sha256(body).hexdigest().encode())

        results = await asyncio.gather(*(client(i) for i in range(20)))
        assert results == [True] * 20
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(OSError):
            await connect()

    run(main)


def test_streams_serve_forever_cancelled(run, family, sockdir):
    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server, connect = await start_stream_server(family, sockdir, handle, start_serving=False)
        assert not server.is_serving()
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        reader, writer = await connect()
        writer.write(b"echo me")
        assert await reader.read() == b"echo me"
        writer.close()
        await writer.wait_closed()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()

    run(main)


def test_streams_connection_reset_surfaces_to_reader(run, family, sockdir):
    async def main():
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)
            await reader.read(1)  # the client sends nothing: waits for the abort

        server, connect = await start_stream_server(family, sockdir, handle)
        async with server:
            reader, writer = await connect()
            srv_writer = await accepted
            srv_writer.transport.abort()
            # The client sees the end of the stream (EOF, or a reset).
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
            assert data == b""
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionResetError:
                pass

    run(main)


def test_streams_over_tls(run, family, sockdir):
    from test.test_asyncio import utils as asyncio_test_utils

    server_ctx = asyncio_test_utils.simple_server_sslcontext()
    client_ctx = asyncio_test_utils.simple_client_sslcontext()

    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int(await reader.readline())
            body = await reader.readexactly(size)
            writer.write(hashlib.sha256(body).hexdigest().encode() + b"\n")
            writer.write(body[::-1])
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server, connect = await start_stream_server(family, sockdir, handle, ssl=server_ctx)
        async with server:
            reader, writer = await connect(ssl=client_ctx, server_hostname="localhost")
            assert writer.get_extra_info("cipher") is not None
            assert writer.get_extra_info("sslcontext") is client_ctx
            body = random.Random(8).randbytes(3 * 1024 * 1024)
            writer.write(b"%d\n" % len(body))
            writer.write(body)
            await writer.drain()
            assert await reader.readline() == hashlib.sha256(body).hexdigest().encode() + b"\n"
            assert await reader.readexactly(len(body)) == body[::-1]
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    run(main)


def test_tcp_nodelay_is_set_on_a_transport_made_from_a_users_socket() -> None:
    """asyncio skips a socket whose proto is 0 (a plain socket.socket());
    ferroloop sets TCP_NODELAY on every TCP transport, as uvloop does."""
    async def connect() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        user_socket = socket.socket()  # proto 0
        user_socket.setblocking(False)
        await loop.sock_connect(user_socket, listener.getsockname())
        accepted, _ = await loop.sock_accept(listener)
        client, _ = await loop.create_connection(asyncio.Protocol, sock=user_socket)
        server, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
        flags = tuple(
            t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for t in (client, server)
        )
        client.close()
        server.close()
        listener.close()
        await asyncio.sleep(0)
        return flags  # type: ignore[return-value]

    client_flag, server_flag = run_with_loop(ferroloop.new_event_loop, connect())
    assert client_flag != 0 and server_flag != 0
