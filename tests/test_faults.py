"""Fault suite: the conditions that break event loops in production (fd
exhaustion, connection storms, resets, flow control, signals, fork,
interpreter exit), on stock asyncio and on ferroloop.

Every case runs in a child process: this file, run as a program
(``python3 test_faults.py CASE LOOP [ARG...]``), under a hard timeout. A hang,
a crash or a leak fails that case only, and fd and RSS figures see nothing
but the loop under test. A child prints one ``RESULT {json}`` line; the test
in the parent asserts on it. Stock asyncio is the reference: where ferroloop
is compared with it, the asyncio child's result is computed once per session.
Where asyncio itself misbehaves, the test says so and holds ferroloop to the
better behaviour.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import hashlib
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, TypeVar, cast

import pytest
from netutil import hang_guard, run_with_loop

import ferroloop

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}

HERE = os.path.abspath(__file__)
RESULT_TAG = "RESULT "
MiB = 1 << 20

# Wall-clock limit of each child process, in seconds. A child's own work is
# bounded a little below this (wait_for, then a stack dump via hang_guard),
# so a wedged child says where it was before the parent kills it.
LIMITS: dict[str, float] = {
    "many_connections": 15,
    "churn": 15,
    "big_transfer": 15,
    "resets": 10,
    "emfile": 12,
    "threadsafe_storm": 15,
    "sigint": 4,  # from SIGINT to exit
    "fork": 12,
    "many_loops": 15,
    "daemon_exit": 10,  # each run; all runs of a loop share DAEMON_DEADLINE
    "slow_consumers": 15,
    "shared_payload": 15,
}


# ---------------------------------------------------------------------------
# Parent side: running children


@dataclass(frozen=True)
class Run:
    """A finished (or killed) child process."""

    what: str
    rc: Optional[int]  # None: killed after its time limit
    out: str
    err: str

    def failure(self) -> str:
        status = "hung (killed)" if self.rc is None else f"exited with rc {self.rc}"
        return f"{self.what} {status}; stderr ends:\n{tail(self.err)}"

    def result(self) -> dict[str, Any]:
        """The child's RESULT, failing the test if it has none."""
        lines = [line for line in self.out.splitlines() if line.startswith(RESULT_TAG)]
        assert self.rc == 0 and lines, self.failure()
        return cast(dict[str, Any], json.loads(lines[-1][len(RESULT_TAG) :]))


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def child_argv(case: str, loop_name: str, *args: str) -> list[str]:
    return [sys.executable, HERE, case, loop_name, *args]


def run_child(case: str, loop_name: str, *args: str, timeout: Optional[float] = None) -> Run:
    what = " ".join([case, loop_name, *args])
    try:
        proc = subprocess.run(
            child_argv(case, loop_name, *args),
            capture_output=True,
            text=True,
            timeout=LIMITS[case] if timeout is None else timeout,
            cwd=os.path.dirname(HERE),
        )
    except subprocess.TimeoutExpired as exc:
        return Run(what, None, _text(exc.stdout), _text(exc.stderr))
    return Run(what, proc.returncode, proc.stdout, proc.stderr)


def child_result(case: str, loop_name: str, *args: str) -> dict[str, Any]:
    return run_child(case, loop_name, *args).result()


@functools.lru_cache(maxsize=None)
def asyncio_result(case: str, *args: str) -> dict[str, Any]:
    """Stock asyncio's result for a case: the reference, computed once."""
    return child_result(case, "asyncio", *args)


def result_on(loop_name: str, case: str, *args: str) -> dict[str, Any]:
    if loop_name == "asyncio":
        return asyncio_result(case, *args)
    return child_result(case, loop_name, *args)


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


# ---------------------------------------------------------------------------
# Child side: helpers

ChildFn = Callable[..., Optional[dict[str, Any]]]
CHILDREN: dict[str, ChildFn] = {}


def child(fn: ChildFn) -> ChildFn:
    CHILDREN[fn.__name__] = fn
    return fn


def child_main(argv: list[str]) -> None:
    case, loop_name, *args = argv
    result = CHILDREN[case](loop_name, *args)
    if result is not None:
        print(RESULT_TAG + json.dumps(result), flush=True)


async def checked(loop_name: str, main: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """main(), on a running loop that must be of the kind under test."""
    loop = asyncio.get_running_loop()
    if loop_name == "ferroloop":
        assert type(loop).__module__.startswith("ferroloop"), type(loop)
    else:
        assert isinstance(loop, asyncio.BaseEventLoop), type(loop)
    return await asyncio.wait_for(main(), timeout)


def run_on(loop_name: str, case: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run main() on a new loop of the kind under test, bounded in time."""
    with hang_guard(LIMITS[case] * 0.85):
        return run_with_loop(LOOP_FACTORIES[loop_name], checked(loop_name, main, LIMITS[case] * 0.7))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def nofile_limit_leaving(spare: int) -> int:
    """The RLIMIT_NOFILE soft limit under which exactly `spare` more fds can
    be opened (new fds take the lowest free numbers, holes included)."""
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    limit = free = 0
    while free < spare:
        free += limit not in used
        limit += 1
    return limit


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@functools.cache
def pool() -> bytes:
    """Random bytes that payloads are sliced from."""
    return random.Random(20240601).randbytes(8 * MiB)


def payload(seed: int, size: int) -> bytes:
    start = (seed * 7919) % (len(pool()) - size)
    return pool()[start : start + size]


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


P = TypeVar("P", bound=asyncio.BaseProtocol)


def keeping(made: list[P], factory: Callable[[], P]) -> Callable[[], P]:
    """A protocol factory that also appends each protocol it makes to `made`."""

    def make() -> P:
        made.append(factory())
        return made[-1]

    return make


async def settle(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Wait (yielding to the loop) until condition() holds; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


async def max_gap(duration: float) -> float:
    """Tick every 10 ms for `duration`: the longest time between two ticks."""
    start = last = time.monotonic()
    gap = 0.0
    while last - start < duration:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gap, last = max(gap, now - last), now
    return gap


class Echo(asyncio.Protocol):
    """Writes back what it reads; closes on EOF. live: open connections."""

    live = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        Echo.live += 1

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        Echo.live -= 1


class Recorder(asyncio.Protocol):
    """Records what a protocol is told; `lost` resolves at connection_lost."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.keep_open_on_eof = keep_open_on_eof
        self.received = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Optional[BaseException]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open_on_eof

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost.set_result(exc)

    async def outcome(self) -> dict[str, Any]:
        exc = await asyncio.wait_for(asyncio.shield(self.lost), 5)
        return {"exc": type(exc).__name__ if exc else None, "eof": self.eof, "received": len(self.received)}


async def echo_once(port: int, data: bytes = b"ping") -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = await reader.readexactly(len(data))
    writer.close()
    await writer.wait_closed()
    return got == data


# ---------------------------------------------------------------------------
# 1. Many concurrent connections


@child
def many_connections(loop_name: str, count: str) -> dict[str, Any]:
    raise_nofile()
    n = int(count)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        gate = asyncio.Semaphore(256)  # a connect burst the SYN backlog takes

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with gate:
                return await asyncio.open_connection("127.0.0.1", port)

        streams = await asyncio.gather(*(connect() for _ in range(n)))
        await settle(lambda: Echo.live == n)
        open_at_once = Echo.live

        async def exchange(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            data = payload(i, 16384)
            writer.write(data)
            got = await reader.readexactly(len(data))
            writer.close()
            await writer.wait_closed()
            return got == data

        intact = await asyncio.gather(*(exchange(i, r, w) for i, (r, w) in enumerate(streams)))
        server.close()
        await server.wait_closed()
        return {"open_at_once": open_at_once, "intact": sum(intact)}

    return cast(dict[str, Any], run_on(loop_name, "many_connections", main))


def test_2000_concurrent_connections_echo_intact(loop_name: str) -> None:
    result = result_on(loop_name, "many_connections", "2000")
    assert result == {"open_at_once": 2000, "intact": 2000}, result


# ---------------------------------------------------------------------------
# 2. Connection churn


@child
def churn(loop_name: str, warmup: str, cycles: str) -> dict[str, Any]:
    workers = 4

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def run(total: int) -> None:
            async def worker(w: int) -> None:
                for i in range(w, total, workers):
                    assert await echo_once(port, payload(i, 1 + i % 4096)), f"cycle {i} garbled"

            await asyncio.gather(*(worker(w) for w in range(workers)))
            assert await settle(lambda: Echo.live == 0), f"{Echo.live} server connections still open"
            gc.collect()

        await run(int(warmup))
        fds, mem = fd_count(), rss()
        await run(int(cycles))
        result = {"fd_growth": fd_count() - fds, "rss_growth_mib": (rss() - mem) / MiB}
        server.close()
        await server.wait_closed()
        return result

    return cast(dict[str, Any], run_on(loop_name, "churn", main))


def test_connection_churn_leaks_no_fds_or_memory(loop_name: str) -> None:
    result = result_on(loop_name, "churn", "500", "5000")
    assert result["fd_growth"] == 0, result
    assert result["rss_growth_mib"] < 4, result


# ---------------------------------------------------------------------------
# 3. Big transfer under flow control

HIGH, LOW, CHUNK = 4096, 1024, 65536


class Sender(asyncio.Protocol):
    """Writes `total` bytes, only while not paused; then write_eof."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.digest = hashlib.sha256()
        self.paused = self.eof_sent = False
        self.pauses = self.resumes = self.peak_buffer = 0
        self.lost: asyncio.Future[Optional[BaseException]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH, low=LOW)
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.sent < self.total:
            chunk = payload(self.sent // CHUNK, min(CHUNK, self.total - self.sent))
            self.digest.update(chunk)
            self.transport.write(chunk)
            self.sent += len(chunk)
            self.peak_buffer = max(self.peak_buffer, self.transport.get_write_buffer_size())
        if self.sent == self.total and not self.eof_sent:
            self.eof_sent = True
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        self.resumes += 1
        self.pump()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost.set_result(exc)


class Digester(asyncio.Protocol):
    """Hashes what arrives; `done` resolves at EOF with (bytes, sha256)."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()
        self.done: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)

    def eof_received(self) -> None:
        self.done.set_result((self.count, self.digest.hexdigest()))


@child
def big_transfer(loop_name: str, mib: str) -> dict[str, Any]:
    total = int(mib) * MiB

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        receivers: list[Digester] = []
        make_receiver = keeping(receivers, Digester)
        server = await loop.create_server(make_receiver, "127.0.0.1", 0)
        _, sender = await loop.create_connection(lambda: Sender(total), *server.sockets[0].getsockname())
        count, digest = await receivers[0].done
        exc = await sender.lost
        server.close()
        return {
            "received": count,
            "intact": digest == sender.digest.hexdigest(),
            "pauses": sender.pauses,
            "resumes": sender.resumes,
            "peak_buffer": sender.peak_buffer,
            "sender_lost": repr(exc),
        }

    return cast(dict[str, Any], run_on(loop_name, "big_transfer", main))


def test_256_mib_through_tiny_water_marks(loop_name: str) -> None:
    r = result_on(loop_name, "big_transfer", "256")
    assert r["received"] == 256 * MiB and r["intact"], r
    assert r["pauses"] > 10 and r["resumes"] == r["pauses"], r  # flow control flipped, and always resumed
    assert r["peak_buffer"] <= HIGH + CHUNK, r  # pause_writing came when the buffer passed HIGH
    assert r["sender_lost"] == "None", r


# ---------------------------------------------------------------------------
# 4. Peer resets and half-close


async def peer_pair() -> tuple[Recorder, socket.socket]:
    """A transport of the loop under test, connected to a plain socket."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        _, proto = await loop.create_connection(Recorder, *listener.getsockname())
        peer, _ = listener.accept()
    peer.setblocking(False)
    return proto, peer


async def read_some(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        try:
            got += len(sock.recv(65536))
        except BlockingIOError:
            await asyncio.sleep(0.001)


async def reset_mid_write() -> dict[str, Any]:
    proto, peer = await peer_pair()
    proto.transport.write(bytes(16 * MiB))
    await read_some(peer, 256 * 1024)  # the transfer is under way
    reset(peer)
    return await proto.outcome()


async def reset_mid_read() -> dict[str, Any]:
    proto, peer = await peer_pair()
    peer.setblocking(True)
    peer.sendall(payload(1, 65536))  # fits in the receive buffer: all of it arrives before the RST
    reset(peer)
    return await proto.outcome()


async def reset_idle() -> dict[str, Any]:
    proto, peer = await peer_pair()
    await asyncio.sleep(0.05)
    reset(peer)
    return await proto.outcome()


async def peer_closes() -> dict[str, Any]:
    proto, peer = await peer_pair()
    peer.sendall(b"bye")
    peer.close()
    return await proto.outcome()


async def half_close() -> dict[str, Any]:
    """The client writes 4 MiB and write_eof()s at once (the EOF must follow
    the buffered data); the server's eof_received returns True and it then
    answers: an echo, and later a tail, then close()."""
    loop = asyncio.get_running_loop()
    request = payload(2, 4 * MiB)
    tail_ = b"tail after eof"
    server_side: list[Recorder] = []
    writable_after_eof: list[bool] = []

    class Answerer(Recorder):
        def eof_received(self) -> bool:
            super().eof_received()
            loop.call_soon(self.answer)
            return True

        def answer(self) -> None:
            writable_after_eof.append(not self.transport.is_closing())
            self.transport.write(bytes(self.received))
            loop.call_later(0.02, self.finish)

        def finish(self) -> None:
            self.transport.write(tail_)
            self.transport.close()

    make_answerer = keeping(server_side, lambda: Answerer(True))
    server = await loop.create_server(make_answerer, "127.0.0.1", 0)
    _, client = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    client.transport.write(request)
    client.transport.write_eof()
    client_outcome = await client.outcome()
    server_outcome = await server_side[0].outcome()
    server.close()
    return {
        "server_got_request": bytes(server_side[0].received) == request,
        "server": server_outcome,
        "server_writable_after_eof": writable_after_eof == [True],
        "client_got_answer": bytes(client.received) == request + tail_,
        "client": client_outcome,
    }


RESET_SCENARIOS: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    "reset_mid_write": reset_mid_write,
    "reset_mid_read": reset_mid_read,
    "reset_idle": reset_idle,
    "peer_closes": peer_closes,
    "half_close": half_close,
}


@child
def resets(loop_name: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
        results: dict[str, Any] = {}
        for name, scenario in RESET_SCENARIOS.items():
            results[name] = await scenario()
            results[name + ":reported"] = reported[:]
            reported.clear()
        return results

    return cast(dict[str, Any], run_on(loop_name, "resets", main))


def test_resets_and_half_close_as_asyncio(loop_name: str) -> None:
    result = result_on(loop_name, "resets")
    assert result["half_close"] == {
        "server_got_request": True,
        "server": {"exc": None, "eof": True, "received": 4 * MiB},
        "server_writable_after_eof": True,
        "client_got_answer": True,
        "client": {"exc": None, "eof": True, "received": 4 * MiB + len(b"tail after eof")},
    }
    assert result["reset_mid_write"]["exc"] == "ConnectionResetError", result
    assert result["peer_closes"] == {"exc": None, "eof": True, "received": 3}, result
    # Everything else, as stock asyncio has it (exception types, EOF seen,
    # bytes delivered before a reset, nothing sent to the exception handler).
    assert result == asyncio_result("resets"), result


# ---------------------------------------------------------------------------
# 5. EMFILE while accepting

EMFILE_CLIENTS, EMFILE_SPARE = 40, 8


@child
def emfile(loop_name: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        reported: list[Optional[int]] = []
        loop.set_exception_handler(lambda _, ctx: reported.append(getattr(ctx.get("exception"), "errno", None)))
        held: list[Holder] = []
        released = False

        class Holder(asyncio.Protocol):
            """Keeps its connection (and fd) until released, then answers."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                if released:
                    self.answer()
                else:
                    held.append(self)

            def answer(self) -> None:
                self.transport.write(b"pong")
                self.transport.close()

        server = await loop.create_server(Holder, "127.0.0.1", 0, backlog=128)
        address = server.sockets[0].getsockname()
        clients = [socket.socket() for _ in range(EMFILE_CLIENTS)]
        for sock in clients:
            sock.setblocking(False)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_limit_leaving(EMFILE_SPARE), hard))
        for sock in clients:
            await loop.sock_connect(sock, address)

        # Stalled: accept() fails with EMFILE; the loop must neither spin nor stop.
        cpu = cpu_seconds()
        gap = await max_gap(1.5)
        stall = {"cpu": cpu_seconds() - cpu, "max_gap": gap, "accepted": len(held), "serving": server.is_serving()}

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        released = True
        freed = time.monotonic()
        for holder in held:
            holder.answer()
        answers = await asyncio.gather(*(asyncio.wait_for(loop.sock_recv(sock, 16), 10) for sock in clients))
        served_after = time.monotonic() - freed
        for sock in clients:
            sock.close()
        server.close()
        return {
            **stall,
            "answered": sum(a == b"pong" for a in answers),
            "served_after": served_after,
            "emfile_reported": errno.EMFILE in reported,
        }

    return cast(dict[str, Any], run_on(loop_name, "emfile", main))


def test_emfile_on_accept_backs_off_and_recovers(loop_name: str) -> None:
    r = result_on(loop_name, "emfile")
    assert 0 < r["accepted"] < EMFILE_CLIENTS, r  # accept() did run out of fds
    assert r["serving"], r
    assert r["cpu"] < 0.4, f"busy loop while accept() fails: {r}"  # over 1.5 s of wall time
    assert r["max_gap"] < 0.5, f"the loop stalled: {r}"
    assert r["answered"] == EMFILE_CLIENTS, r  # every queued client served once fds are free
    assert r["served_after"] < 5, r
    assert r["emfile_reported"] == asyncio_result("emfile")["emfile_reported"], r


# ---------------------------------------------------------------------------
# 6. call_soon_threadsafe storm

STORM_THREADS, STORM_CALLS = 4, 100_000


@child
def threadsafe_storm(loop_name: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        seen: list[list[int]] = [[] for _ in range(STORM_THREADS)]
        finished = [loop.create_future() for _ in range(STORM_THREADS)]

        def storm(t: int) -> None:
            append = seen[t].append
            for i in range(STORM_CALLS):
                loop.call_soon_threadsafe(append, i)
            loop.call_soon_threadsafe(finished[t].set_result, None)

        threads = [threading.Thread(target=storm, args=(t,)) for t in range(STORM_THREADS)]
        for thread in threads:
            thread.start()
        await asyncio.gather(*finished)
        for thread in threads:
            thread.join()
        await asyncio.sleep(0.05)  # a late duplicate would land here
        return {"exact": [s == list(range(STORM_CALLS)) for s in seen], "counts": [len(s) for s in seen]}

    return cast(dict[str, Any], run_on(loop_name, "threadsafe_storm", main))


def test_call_soon_threadsafe_storm_runs_each_once_in_order(loop_name: str) -> None:
    r = result_on(loop_name, "threadsafe_storm")
    assert r == {"exact": [True] * STORM_THREADS, "counts": [STORM_CALLS] * STORM_THREADS}, r


# ---------------------------------------------------------------------------
# 7. SIGINT latency


def calibrated_c_call(seconds: float) -> Callable[[], object]:
    """A single C call of about `seconds` that never checks for signals."""
    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"p", b"s", 20_000)
    rounds = int(20_000 * seconds / (time.perf_counter() - start))
    return functools.partial(hashlib.pbkdf2_hmac, "sha256", b"p", b"s", rounds)


@child
def sigint(loop_name: str, busy: str) -> None:
    hashing = calibrated_c_call(1.0) if busy == "c_call" else None

    def ready(expected: float = 0.0) -> None:
        print(f"ready {time.monotonic()} {expected}", flush=True)

    def spin(n: int) -> None:
        sum(range(100))
        asyncio.get_running_loop().call_soon(spin, n + 1)

    def work() -> None:
        if busy == "callbacks":
            spin(0)
        elif busy == "sleep":
            time.sleep(5)
        elif hashing is not None:
            hashing()

    async def main() -> None:
        asyncio.get_running_loop().call_soon(ready, 1.0 if hashing else 0.0)
        asyncio.get_running_loop().call_soon(work)
        await asyncio.sleep(60)

    try:
        run_with_loop(LOOP_FACTORIES[loop_name], main())
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt at {time.monotonic()}", file=sys.stderr, flush=True)
        raise


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        return ""
    return proc.stdout.readline()


@dataclass(frozen=True)
class Interrupted:
    rc: Optional[int]
    err: str
    after_signal: float  # KeyboardInterrupt raised this long after SIGINT
    after_ready: float  # ... and this long after the busy phase began
    expected: float  # how long the busy phase's C call takes


def interrupt(loop_name: str, busy: str) -> Interrupted:
    proc = subprocess.Popen(
        child_argv("sigint", loop_name, busy), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = read_line(proc, 5).split()
        assert line and line[0] == "ready", f"no ready line; stderr: {tail(proc.communicate(timeout=2)[1])}"
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=LIMITS["sigint"])
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"SIGINT did not stop the loop ({busy}); stderr:\n{tail(err)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stamps = [float(s.split()[-1]) for s in err.splitlines() if s.startswith("KeyboardInterrupt at ")]
    assert stamps, f"no KeyboardInterrupt (rc {proc.returncode}); stderr:\n{tail(err)}"
    return Interrupted(proc.returncode, err, stamps[0] - sent, stamps[0] - float(line[1]), float(line[2]))


@pytest.mark.parametrize("busy", ["poll", "callbacks", "sleep", "c_call"])
def test_sigint_raises_keyboardinterrupt_promptly(loop_name: str, busy: str) -> None:
    """(poll) waiting on a 60-s timer; (callbacks) a chain of short callbacks;
    (sleep) a callback in time.sleep(5), which checks for signals; (c_call) a
    callback in a ~1-s C call that does not: the interrupt comes as it returns."""
    result = interrupt(loop_name, busy)
    if busy == "c_call":
        assert result.after_ready < 2 * result.expected + 0.3, result
    else:
        assert result.after_signal < 0.5, result
    lines = result.err.strip().splitlines()
    assert "Traceback (most recent call last):" in result.err and lines[-1] == "KeyboardInterrupt", result.err
    assert result.rc == -signal.SIGINT, result  # like asyncio: the interpreter re-raises SIGINT to exit


# ---------------------------------------------------------------------------
# 8. fork


def new_loop_in_fork_child(loop_name: str) -> None:
    """In a fork child: run a NEW loop on this (the forking) thread, as a
    multiprocessing worker calling asyncio.run() would, and _exit with 0 if
    it worked."""
    status = 1
    try:

        async def work() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            assert await echo_once(server.sockets[0].getsockname()[1])
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            await loop.sock_sendall(a, b"forked")
            assert await loop.sock_recv(b, 16) == b"forked"
            assert await loop.run_in_executor(None, sum, [1, 2]) == 3
            await asyncio.sleep(0.05)
            server.close()

        # Not run_on: faulthandler's watchdog thread did not survive the fork.
        run_with_loop(LOOP_FACTORIES[loop_name], checked(loop_name, work, 5))
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


async def reap(pid: int, timeout: float = 12) -> Optional[int]:
    """The child's exit code; None if it had to be killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


async def still_serves(port: int) -> dict[str, bool]:
    loop = asyncio.get_running_loop()
    called = loop.create_future()
    threading.Thread(target=loop.call_soon_threadsafe, args=(called.set_result, True)).start()
    return {"echo": await echo_once(port), "threadsafe": await asyncio.wait_for(called, 5)}


@child
def fork(loop_name: str, when: str) -> dict[str, Any]:
    """Fork with a loop that serves a TCP server: between two runs of it
    ("idle"), or from a coroutine on it ("running"). The parent's loop must
    still serve afterwards."""
    loop = LOOP_FACTORIES[loop_name]()
    asyncio.set_event_loop(loop)

    def fork_child() -> int:
        pid = os.fork()
        if pid == 0:
            new_loop_in_fork_child(loop_name)
        return pid

    async def from_inside() -> Optional[int]:
        return await reap(fork_child())

    with hang_guard(LIMITS["fork"] * 0.85):
        try:
            server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
            port = server.sockets[0].getsockname()[1]
            assert loop.run_until_complete(echo_once(port))
            if when == "idle":
                pid = fork_child()
                child_rc = loop.run_until_complete(reap(pid))
            else:
                child_rc = loop.run_until_complete(from_inside())
            parent = loop.run_until_complete(asyncio.wait_for(still_serves(port), 5))
            server.close()
            loop.run_until_complete(server.wait_closed())
        finally:
            loop.close()
    return {"child_rc": child_rc, **parent}


@pytest.mark.parametrize("when", ["idle", "running"])
def test_fork_child_runs_a_new_loop_and_parent_keeps_serving(loop_name: str, when: str) -> None:
    result = result_on(loop_name, "fork", when)
    assert result == {"child_rc": 0, "echo": True, "threadsafe": True}, result


# ---------------------------------------------------------------------------
# 9. Many loops


@child
def many_loops(loop_name: str, count: str) -> dict[str, Any]:
    raise_nofile()
    factory = LOOP_FACTORIES[loop_name]
    loops: list[asyncio.AbstractEventLoop] = []  # all kept alive: close() itself must free the fds
    before = fd_count()
    error = None
    try:
        for _ in range(int(count)):
            loop = factory()
            loop.close()
            loops.append(loop)
    except OSError as exc:
        error = f"after {len(loops)} loops: {exc!r}"
    gc.collect()
    return {"created": len(loops), "fd_growth": fd_count() - before, "error": error}


def test_10000_closed_loops_hold_no_fds(loop_name: str) -> None:
    result = result_on(loop_name, "many_loops", "10000")
    assert result == {"created": 10000, "fd_growth": 0, "error": None}, result


# ---------------------------------------------------------------------------
# 10. Interpreter exit with a loop running in a daemon thread


async def busy_chain() -> None:
    loop = asyncio.get_running_loop()

    def tick() -> None:
        loop.call_soon(tick)

    tick()
    await loop.create_future()


async def ping_pong() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def echo() -> None:
        while True:
            await loop.sock_sendall(b, await loop.sock_recv(b, 1024))

    echoing = loop.create_task(echo())
    while not echoing.done():
        await loop.sock_sendall(a, b"x" * 1024)
        got = 0
        while got < 1024:
            got += len(await loop.sock_recv(a, 1024))


async def spinners() -> None:
    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    await asyncio.gather(*(spin() for _ in range(10)))


async def sleeper() -> None:
    loop = asyncio.get_running_loop()

    def nap() -> None:
        time.sleep(0.5)
        loop.call_soon(nap)

    loop.call_soon(nap)
    await loop.create_future()


async def idle() -> None:
    await asyncio.sleep(3600)


async def stream_echo() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    while True:
        writer.write(b"x" * 1024)
        await reader.readexactly(1024)


async def watched_stalls() -> None:
    """CPU-bound callbacks over the watchdog's threshold, so that its thread
    is reporting (taking the GIL) when the interpreter exits."""
    loop = asyncio.get_running_loop()
    enable_watchdog = getattr(loop, "enable_watchdog", None)
    if enable_watchdog is not None:
        enable_watchdog(0.01, callback=lambda record: None)

    def stall() -> None:
        started = time.monotonic()
        while time.monotonic() - started < 0.03:
            pass
        loop.call_soon(stall)

    loop.call_soon(stall)
    await loop.create_future()


DAEMON_WORK: dict[str, Callable[[], Awaitable[None]]] = {
    "busy": busy_chain,
    "pingpong": ping_pong,
    "spinners": spinners,
    "sleeper": sleeper,
    "idle": idle,
    "streams": stream_echo,
    "watchdog": watched_stalls,
}
DAEMON_RUNS = 10
DAEMON_DEADLINE = 45.0


@child
def daemon_exit(loop_name: str, work: str) -> None:
    started = threading.Event()

    def run() -> None:
        loop = LOOP_FACTORIES[loop_name]()
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_until_complete(DAEMON_WORK[work]())

    threading.Thread(target=run, daemon=True).start()
    if not started.wait(5):
        sys.exit("the loop thread did not start")
    time.sleep(0.3)


def daemon_failures(loop_name: str) -> dict[str, list[str]]:
    """Run every kind of work DAEMON_RUNS times, 8 at a time, within
    DAEMON_DEADLINE: the failures (rc and first fatal line) by work."""
    deadline = time.monotonic() + DAEMON_DEADLINE

    def one(work: str) -> Run:
        left = deadline - time.monotonic()
        return run_child("daemon_exit", loop_name, work, timeout=max(1.0, min(LIMITS["daemon_exit"], left)))

    works = [work for work in DAEMON_WORK for _ in range(DAEMON_RUNS)]
    with ThreadPoolExecutor(8) as executor:
        runs = list(executor.map(one, works))
    failures: dict[str, list[str]] = {}
    for work, run in zip(works, runs, strict=True):
        if run.rc != 0 or "Fatal Python error" in run.err:
            fatal = [line for line in run.err.splitlines() if "Fatal Python error" in line]
            failures.setdefault(work, []).append(f"rc {run.rc}: {fatal[0] if fatal else tail(run.err, 3)}")
    return failures


def test_interpreter_exit_with_loop_in_daemon_thread(loop_name: str) -> None:
    failures = daemon_failures(loop_name)
    summary = {work: f"{len(f)}/{DAEMON_RUNS} failed, e.g. {f[0]}" for work, f in failures.items()}
    assert not failures, json.dumps(summary, indent=1)


# ---------------------------------------------------------------------------
# 11. Slow consumers


async def first_connection(loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> None:
    """One connection through the server first, so that the baseline RSS
    includes what the first connection allocates once."""
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, address)
    await loop.sock_recv(sock, 65536)
    sock.close()


async def idle_clients(loop: asyncio.AbstractEventLoop, address: Any, n: int) -> list[socket.socket]:
    """`n` connections to `address` with small receive buffers, never read."""
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        socks.append(sock)
    return socks


@child
def slow_consumers(loop_name: str, clients: str) -> dict[str, Any]:
    raise_nofile()
    n, each = int(clients), MiB

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        writers: list[Writer] = []

        class Writer(asyncio.Protocol):
            """Writes `each` bytes, honouring pause_writing."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
                self.sent, self.paused = 0, False
                writers.append(self)
                self.pump()

            def pump(self) -> None:
                while not self.paused and self.sent < each:
                    self.transport.write(payload(self.sent, 65536))
                    self.sent += 65536

            def pause_writing(self) -> None:
                self.paused = True

            def resume_writing(self) -> None:
                self.paused = False
                self.pump()

        server = await loop.create_server(Writer, "127.0.0.1", 0, backlog=1024)
        address = server.sockets[0].getsockname()
        await first_connection(loop, address)
        writers.clear()
        gc.collect()
        baseline = rss()
        socks = await idle_clients(loop, address, n)
        stuck = await settle(lambda: len(writers) == n and all(w.paused or w.sent >= each for w in writers))
        await asyncio.sleep(0.3)
        gc.collect()
        result = {
            "settled": stuck,
            "paused": sum(w.paused for w in writers),
            "buffered_mib": sum(w.transport.get_write_buffer_size() for w in writers) / MiB,
            "rss_growth_mib": (rss() - baseline) / MiB,
        }
        for sock in socks:
            sock.close()
        server.close()
        return result

    return cast(dict[str, Any], run_on(loop_name, "slow_consumers", main))


def test_slow_consumers_memory_bounded(loop_name: str) -> None:
    r = result_on(loop_name, "slow_consumers", "200")
    assert r["settled"] and r["paused"] == 200, r  # every writer was paused: flow control reached it
    assert r["rss_growth_mib"] <= asyncio_result("slow_consumers", "200")["rss_growth_mib"] + 20, r


@child
def shared_payload(loop_name: str, clients: str) -> dict[str, Any]:
    """A server that writes one 1 MiB bytes object to each of `clients`
    connections that never read, ignoring flow control: what waits is the
    rest of that one object, once per connection."""
    raise_nofile()
    n = int(clients)
    data = bytes(MiB)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []

        class Blast(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport = cast(asyncio.Transport, transport)
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
                transport.write(data)
                transports.append(transport)

        server = await loop.create_server(Blast, "127.0.0.1", 0, backlog=1024)
        address = server.sockets[0].getsockname()
        await first_connection(loop, address)
        transports.clear()
        gc.collect()
        baseline = rss()
        socks = await idle_clients(loop, address, n)
        settled = await settle(lambda: len(transports) == n)
        await asyncio.sleep(0.3)
        gc.collect()
        result = {
            "settled": settled,
            "buffered_mib": sum(t.get_write_buffer_size() for t in transports) / MiB,
            "rss_growth_mib": (rss() - baseline) / MiB,
        }
        for sock in socks:
            sock.close()
        server.close()
        return result

    return cast(dict[str, Any], run_on(loop_name, "shared_payload", main))


def test_waiting_bytes_are_kept_by_reference(loop_name: str) -> None:
    r = result_on(loop_name, "shared_payload", "200")
    # Nearly all of every 1 MiB write waits: the kernel takes a few KiB.
    assert r["settled"] and r["buffered_mib"] > 150, r
    if loop_name == "ferroloop":
        # Kept by reference, the waiting rests share the one object: growth
        # is per-connection bookkeeping, far below one copy per connection.
        assert r["rss_growth_mib"] < 40, r


if __name__ == "__main__":
    child_main(sys.argv[1:])
