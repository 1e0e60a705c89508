"""Misuse gets asyncio's outcome: the same exception type and message, or the
same return value, on ferroloop as on stock asyncio."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

import ferroloop

from netutil import run_with_loop

LOOPS = {"asyncio": asyncio.new_event_loop, "ferroloop": ferroloop.new_event_loop}


def outcome(call: Callable[[], Any]) -> Any:
    """What a call did: its result, or its exception's type and message."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return (type(exc).__name__, str(exc))
    return result if result is None or isinstance(result, (bool, int, float, tuple)) else type(result).__name__


def on_both(scenario: Callable[[asyncio.AbstractEventLoop], Any]) -> dict[str, Any]:
    results = {}
    for name, factory in LOOPS.items():
        loop = factory()
        try:
            results[name] = scenario(loop)
        finally:
            loop.close()
    return results


def assert_same(scenario: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    results = on_both(scenario)
    assert results["ferroloop"] == results["asyncio"]
    return results["asyncio"]


@pytest.mark.parametrize("fd", [2**64, 2**31, -1, 10**6, "x", 3.0, None])
def test_fd_watchers_with_bad_fds(fd: Any) -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        return [
            outcome(lambda: loop.add_reader(fd, print)),
            outcome(lambda: loop.add_writer(fd, print)),
            outcome(lambda: loop.remove_reader(fd)),
            outcome(lambda: loop.remove_writer(fd)),
        ]

    assert_same(scenario)


def test_fd_watchers_on_a_closed_loop() -> None:
    closed_socket = socket.socket()
    closed_socket.close()

    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        loop.close()
        return [
            outcome(lambda: loop.add_reader(closed_socket, print)),
            outcome(lambda: loop.remove_reader(closed_socket)),
            outcome(lambda: loop.remove_reader(2**64)),
            outcome(lambda: loop.add_writer(0, print)),
        ]

    results = assert_same(scenario)
    assert results[0] == ("RuntimeError", "Event loop is closed")


def test_registering_a_regular_file_keeps_errno() -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> tuple[str, int | None]:
        with open(__file__) as regular_file:
            try:
                loop.add_reader(regular_file, print)
            except OSError as exc:
                return type(exc).__name__, exc.errno
        return "no error", None

    assert assert_same(scenario) == ("PermissionError", 1)


@pytest.mark.parametrize("delay", [10**400, "soon", None, float("nan")])
def test_call_later_with_bad_delays(delay: Any) -> None:
    assert_same(lambda loop: outcome(lambda: loop.call_later(delay, print)))


def test_call_exception_handler_with_a_non_dict(caplog: pytest.LogCaptureFixture) -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> tuple[Any, list[str]]:
        caplog.clear()
        result = outcome(lambda: loop.call_exception_handler(None))  # type: ignore[arg-type]
        return result, [record.getMessage() for record in caplog.records]

    result, messages = assert_same(scenario)
    assert result is None and messages == ["Exception in default exception handler"]


@pytest.mark.parametrize("threshold", [1e300, 2**64, 10**400, float("inf"), float("nan"), -1, 0])
def test_watchdog_thresholds_raise_python_errors(threshold: Any) -> None:
    loop = ferroloop.new_event_loop()
    try:
        with pytest.raises((ValueError, OverflowError)):
            loop.enable_watchdog(threshold)
        assert loop.watchdog_threshold is None
    finally:
        loop.close()


@pytest.mark.parametrize("size", [2**63, 2**64, -1, 10**400])
def test_sock_recv_with_bad_sizes(size: int) -> None:
    async def receive() -> Any:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.send(b"data")
            return await _awaited(loop.sock_recv(a, size))

    results = {name: run_with_loop(factory, receive()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]


async def _awaited(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception as exc:  # noqa: BLE001
        return (type(exc).__name__, str(exc))


class _Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


@pytest.mark.parametrize(
    "limits",
    [
        {"high": float("nan")},
        {"high": 1.5},
        {"high": 2**70},
        {"high": -1},
        {"high": 10, "low": 20},
        {"low": 0.5},
        {"high": "x"},
    ],
)
def test_write_buffer_limits_in_asyncio_arithmetic(limits: dict[str, Any]) -> None:
    async def configure() -> Any:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(_Sink, sock=a)
        try:
            result = outcome(lambda: transport.set_write_buffer_limits(**limits))
            return result, transport.get_write_buffer_limits()
        finally:
            transport.close()
            b.close()

    results = {name: run_with_loop(factory, configure()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]


def test_read_only_buffer_from_get_buffer_is_a_type_error() -> None:
    async def read() -> Any:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Any] = loop.create_future()

        class ReadOnly(asyncio.BufferedProtocol):
            def get_buffer(self, sizehint: int) -> Any:
                return b"read-only"

            def buffer_updated(self, nbytes: int) -> None:
                pass

            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        reports: list[str] = []
        loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
        a, b = socket.socketpair()
        with b:
            await loop.create_connection(ReadOnly, sock=a)
            b.send(b"hello")
            exc = await asyncio.wait_for(lost, 5)
        return type(exc).__name__, str(exc), reports

    results = {name: run_with_loop(factory, read()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"][0] == "TypeError"


def test_eof_received_result_without_truth_goes_to_the_exception_handler() -> None:
    """asyncio reports the error from `if keep_open:` through the exception
    handler, and keeps reporting it while the reader stays registered (a busy
    loop of errors); ferroloop reports it once and leaves the transport open."""

    class NoTruth:
        def __bool__(self) -> bool:
            raise TypeError("no truth value")

    async def eof() -> Any:
        loop = asyncio.get_running_loop()
        errors: list[tuple[str, str]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append((type(context.get("exception")).__name__, str(context.get("exception")))))

        class Protocol(_Sink):
            def eof_received(self) -> Any:
                return NoTruth()

        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(Protocol, sock=a)
        b.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        closing = transport.is_closing()
        transport.close()
        b.close()
        return errors[0] if errors else None, closing

    results = {name: run_with_loop(factory, eof()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"] == (("TypeError", "no truth value"), False)


def test_close_releases_the_loops_file_descriptors() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    loops = [ferroloop.new_event_loop() for _ in range(200)]
    assert open_fds() > before
    for loop in loops:
        loop.close()
    assert open_fds() == before
    loop = loops[0]
    assert outcome(lambda: loop.call_soon(print)) == ("RuntimeError", "Event loop is closed")
    assert outcome(lambda: loop.run_forever()) == ("RuntimeError", "Event loop is closed")
    assert outcome(lambda: loop.call_soon_threadsafe(print)) == ("RuntimeError", "Event loop is closed")


MONITORED = """
import asyncio, os, sys, time
import ferroloop
async def main():
    print(os.getpid(), flush=True)
    sys.stdin.readline()
ferroloop.run(main())
"""


def test_monitor_socket_is_removed_at_exit() -> None:
    env = dict(os.environ, FERROLOOP_MONITOR="1")
    child = subprocess.Popen(
        [sys.executable, "-c", MONITORED], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    pid = int(child.stdout.readline())
    path = ferroloop._monitor.default_socket_path(pid)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(path)
    state = ferroloop._monitor.query(pid, "top")
    assert state["loops"][0]["watchdog"] is False
    assert "stalls - (watchdog off)" in ferroloop._monitor.render(state, with_metrics=True)
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.wait(timeout=10) == 0
    assert not os.path.exists(path)


def test_a_context_that_is_not_a_context_fails_when_the_callback_runs() -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        loop.set_exception_handler(
            lambda _loop, context: errors.append((type(context["exception"]).__name__, str(context["exception"])))
        )
        loop.call_soon(print, "not printed", context="not a context")  # type: ignore[arg-type]
        loop.call_soon(loop.stop)
        loop.run_forever()
        return errors

    assert assert_same(scenario) == [("AttributeError", "'str' object has no attribute 'run'")]
