"""Data integrity under load: many concurrent echo connections, random write
and read sizes (seeded), SHA-256 of what each connection sent against what
came back.

The big run (256 MiB over 100 TCP connections) is on ferroloop; the smaller
one (16 MiB over Unix sockets, BufferedProtocol server) runs on stock asyncio
too, as a check that the test itself is right.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import socket
import tempfile
from typing import Any, Optional

import pytest
from netutil import hang_guard, run_with_loop

import ferroloop

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}

# Random bytes that every connection slices at random offsets (generating
# 256 MiB of fresh randomness would cost more than the transfer).
POOL = random.Random(20241124).randbytes(8 * 1024 * 1024)


@pytest.fixture(autouse=True)
def _hang_guard():
    with hang_guard(180):
        yield


def _size(rng: random.Random, big: int) -> int:
    """Mostly large, sometimes tiny or middling sizes."""
    kind = rng.random()
    if kind < 0.15:
        return rng.randint(1, 64)
    if kind < 0.4:
        return rng.randint(1, 8192)
    return rng.randint(1, big)


def _chunk(rng: random.Random, n: int) -> memoryview:
    start = rng.randrange(0, len(POOL) - n)
    return memoryview(POOL)[start : start + n]


class EchoServerEnds:
    """What both echo servers do besides reading: stop reading while the
    transport's write buffer is above its high-water mark, close on EOF, and
    count what arrived."""

    stats: dict
    transport: Any
    received: int

    def pause_writing(self) -> None:
        self.stats["paused"] += 1
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close() flushes what is left, then closes

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.stats["lost"].append(exc)
        self.stats["received"] += self.received


class EchoServer(EchoServerEnds, asyncio.Protocol):
    """Writes back everything in data_received."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats
        self.transport: Any = None
        self.received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.stats["made"] += 1
        if self.stats["made"] % 2:
            # A small send buffer on every other connection: the kernel takes
            # less at a time, so the transport's own buffer fills up.
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.transport.write(data)


class BufferedEchoServer(EchoServerEnds, asyncio.BufferedProtocol):
    """The same echo, reading into its own buffer of a random size."""

    def __init__(self, stats: dict, seed: int) -> None:
        self.stats = stats
        self.rng = random.Random(seed)
        self.buf = bytearray(65536)
        self.size = 1
        self.transport: Any = None
        self.received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.stats["made"] += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        self.size = _size(self.rng, len(self.buf))
        return memoryview(self.buf)[: self.size]

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= self.size
        self.received += nbytes
        self.transport.write(bytes(self.buf[:nbytes]))


# Progress of every client of the running test (seed -> counters), for the
# failure message when a run times out.
PROGRESS: dict[int, dict] = {}


async def _client(connect: Any, seed: int, size: int) -> dict:
    """Sends `size` bytes in random writes (drain after each) while reading
    the echo in random reads, now and then pausing (a slow reader, so that
    the server's flow control kicks in); returns both sides' byte counts and
    digests."""
    progress = PROGRESS[seed] = {"size": size, "connected": False, "sent": 0, "received": 0, "eof": False}
    reader, writer = await connect(seed)
    progress["connected"] = True
    wrng = random.Random(seed * 2)
    rrng = random.Random(seed * 2 + 1)

    async def send() -> tuple[int, str]:
        h = hashlib.sha256()
        left = size
        while left:
            chunk = _chunk(wrng, min(left, _size(wrng, 256 * 1024)))
            writer.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            await writer.drain()
            progress["sent"] += len(chunk)
        writer.write_eof()
        return size, h.hexdigest()

    async def receive() -> tuple[int, str]:
        h = hashlib.sha256()
        total = 0
        while True:
            data = await reader.read(_size(rrng, 256 * 1024))
            if not data:
                progress["eof"] = True
                break
            h.update(data)
            total += len(data)
            progress["received"] = total
            if rrng.random() < 0.03:
                await asyncio.sleep(0.002)
        return total, h.hexdigest()

    sent, received = await asyncio.gather(send(), receive())
    writer.close()
    await writer.wait_closed()
    return {"seed": seed, "sent": sent, "received": received}


async def _run_echo(server: Any, connect: Any, connections: int, total: int, stats: dict) -> None:
    per = total // connections
    sizes = [per + (1 if i < total - per * connections else 0) for i in range(connections)]
    assert sum(sizes) == total
    async with server:
        results = await asyncio.gather(*(_client(connect, 1000 + i, sizes[i]) for i in range(connections)))
        # Let the server side finish its connection_lost callbacks.
        for _ in range(200):
            if len(stats["lost"]) == connections:
                break
            await asyncio.sleep(0.01)
    bad = [r for r in results if r["sent"] != r["received"]]
    assert bad == [], f"{len(bad)} of {connections} connections differ, e.g. {bad[:3]}"
    assert sum(r["received"][0] for r in results) == total
    assert stats["made"] == connections
    assert stats["lost"] == [None] * connections
    assert stats["received"] == total


def _progress_report() -> str:
    rows = list(PROGRESS.values())
    done = [r for r in rows if r["eof"] and r["received"] == r["size"]]
    stuck = [r for r in rows if r not in done]
    return (
        f"{len(done)} of {len(rows)} connections finished; "
        f"sent {sum(r['sent'] for r in rows)} and received {sum(r['received'] for r in rows)} "
        f"of {sum(r['size'] for r in rows)} bytes; unfinished (first 5): {stuck[:5]}"
    )


def _run_on(loop_name: str, main: Any, timeout: float) -> None:
    PROGRESS.clear()

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        if loop_name == "ferroloop":
            assert type(loop).__module__.startswith("ferroloop"), type(loop)
        try:
            await asyncio.wait_for(main(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout} s: {_progress_report()}") from None

    run_with_loop(LOOP_FACTORIES[loop_name], guarded())


def _new_stats() -> dict:
    return {"made": 0, "lost": [], "received": 0, "paused": 0}


async def _tcp_connect(port: int, seed: int) -> Any:
    """A stream connection; every other one with a small receive buffer, so
    that the server's writes back up."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if seed % 2:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def test_256_mib_over_100_tcp_connections():
    stats = _new_stats()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: EchoServer(stats), "127.0.0.1", 0, backlog=200)
        port = server.sockets[0].getsockname()[1]
        await _run_echo(
            server,
            lambda seed: _tcp_connect(port, seed),
            connections=100,
            total=256 * 1024 * 1024,
            stats=stats,
        )
        assert stats["paused"] > 0  # the server's flow control was exercised

    _run_on("ferroloop", main, timeout=60)


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_16_mib_over_unix_sockets_buffered_protocol(loop_name):
    stats = _new_stats()
    sockdir = tempfile.mkdtemp(prefix="fli", dir="/tmp")
    path = os.path.join(sockdir, "echo.sock")
    seeds = iter(range(10_000))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: BufferedEchoServer(stats, next(seeds)), path, backlog=100)
        await _run_echo(
            server,
            lambda seed: asyncio.open_unix_connection(path),
            connections=16,
            total=16 * 1024 * 1024,
            stats=stats,
        )

    try:
        _run_on(loop_name, main, timeout=30)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_16_mib_over_tcp_with_tiny_limits(loop_name):
    """Write-buffer limits of a few bytes: flow control flips on almost every
    write, on both ends."""
    stats = _new_stats()

    class TinyLimits(EchoServer):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=64, low=16)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TinyLimits(stats), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def connect(seed: int) -> Any:
            reader, writer = await _tcp_connect(port, 1)
            writer.transport.set_write_buffer_limits(high=128, low=0)
            return reader, writer

        await _run_echo(server, connect, connections=8, total=16 * 1024 * 1024, stats=stats)
        assert stats["paused"] > 0

    _run_on(loop_name, main, timeout=30)
