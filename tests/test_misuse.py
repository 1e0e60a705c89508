"""Misuse gets asyncio's outcome: the same exception type and message, or the
same return value, on ferroloop as on stock asyncio."""

from __future__ import annotations

import asyncio
import contextlib
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


def test_transport_calls_that_need_the_closed_loop_raise_instead_of_losing_data() -> None:
    """A write that has to wait, and resume_reading, need the loop's poller:
    on a closed loop they fail as asyncio's do, instead of buffering data that
    can never be sent."""

    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        a, b = socket.socketpair()
        with a, b:
            transport, _ = loop.run_until_complete(loop.connect_accepted_socket(_Sink, a))
            transport.pause_reading()
            loop.close()
            results = [
                outcome(lambda: transport.write(b"small")),
                outcome(lambda: transport.write(b"x" * 10**7)),
                transport.get_write_buffer_size(),
                outcome(transport.resume_reading),
                transport.is_reading(),
            ]
            b.setblocking(False)
            results.append(b.recv(5))
            return results

    assert assert_same(scenario) == [None, ("RuntimeError", "Event loop is closed"), 0, ("RuntimeError", "Event loop is closed"), True, b"small"]


def test_empty_socket_calls_do_the_syscall_as_the_socket_methods_do() -> None:
    """recv_into of an empty buffer answers 0 at once whatever the socket's
    state (socket.recv_into makes no syscall); sendall of b'' makes one, so a
    socket's error (here: not connected) still surfaces."""

    async def calls() -> list[Any]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        listener = socket.create_server(("127.0.0.1", 0))
        unconnected = socket.socket()
        for sock in (a, listener, unconnected):
            sock.setblocking(False)
        results = []
        for sock in (a, listener):
            results.append(await asyncio.wait_for(loop.sock_recv_into(sock, bytearray(0)), 2))
        for sock in (a, unconnected):
            try:
                results.append(await asyncio.wait_for(loop.sock_sendall(sock, b""), 2))
            except OSError as exc:
                results.append((type(exc).__name__, exc.errno))
        for sock in (a, b, listener, unconnected):
            sock.close()
        return results

    results = {name: run_with_loop(factory, calls()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert results["asyncio"][:3] == [0, 0, None]
    assert results["asyncio"][3][0] in ("BrokenPipeError", "OSError")


def test_a_socket_call_on_a_transports_socket_fails_only_when_it_has_to_wait() -> None:
    """asyncio tries the syscall first, and names the fd (an int) in the
    RuntimeError it raises once the call would have to wait."""

    async def calls() -> list[Any]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(_Sink, sock=a)
        results = []
        for call in (lambda: loop.sock_recv_into(a, "not a buffer"), lambda: loop.sock_recv(a, 10)):
            try:
                results.append(await asyncio.wait_for(call(), 2))
            except Exception as exc:  # noqa: BLE001 - the exception is the outcome
                message = str(exc).replace(repr(transport), "<transport>").replace(str(a.fileno()), "<fd>")
                results.append((type(exc).__name__, message))
        transport.close()
        b.close()
        await asyncio.sleep(0)
        return results

    results = {name: run_with_loop(factory, calls()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    fd_message = results["asyncio"][1][1]
    assert fd_message == "File descriptor <fd> is used by transport <transport>"


def test_socket_calls_on_an_object_that_is_not_a_socket_fail_on_asyncios_first_attribute() -> None:
    async def calls(debug: bool) -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.set_debug(debug)
        results = []
        for call in (lambda: loop.sock_accept("x"), lambda: loop.sock_recv("x", 1)):
            try:
                results.append(await call())
            except AttributeError as exc:
                results.append(str(exc))
        return results

    for debug in (False, True):
        results = {name: run_with_loop(factory, calls(debug)) for name, factory in LOOPS.items()}
        assert results["ferroloop"] == results["asyncio"], debug
    assert "gettimeout" in results["asyncio"][0]


def test_a_second_transport_that_fails_to_start_leaves_the_first_one_working() -> None:
    async def exchange() -> Any:
        loop = asyncio.get_running_loop()
        received: asyncio.Future[bytes] = loop.create_future()

        class Receiver(_Sink):
            def data_received(self, data: bytes) -> None:
                received.set_result(data)

        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Receiver, a)
        try:
            await loop.connect_accepted_socket(lambda: 1, a)  # type: ignore[arg-type,return-value]
        except (AttributeError, RuntimeError) as exc:
            error = type(exc).__name__
        b.send(b"still here")
        data = await asyncio.wait_for(received, 2)
        transport.close()
        b.close()
        await asyncio.sleep(0)
        return error, data

    results = {name: run_with_loop(factory, exchange()) for name, factory in LOOPS.items()}
    # Since 3.12 asyncio refuses a socket another transport owns before it
    # looks at the protocol.
    refused = "RuntimeError" if sys.version_info >= (3, 12) else "AttributeError"
    assert results["ferroloop"] == results["asyncio"] == (refused, b"still here")


@pytest.mark.parametrize("lines", [None, [1], ["x"], 5])
def test_writelines_with_bad_input(lines: Any) -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        a, b = socket.socketpair()
        with a, b:
            transport, _ = loop.run_until_complete(loop.connect_accepted_socket(_Sink, a))
            result = outcome(lambda: transport.writelines(lines))
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            return result

    assert_same(scenario)


@pytest.mark.parametrize("when", [None, "x", b"1", 10**400])
def test_call_at_on_a_closed_loop_checks_the_loop_first(when: Any) -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        loop.close()
        return outcome(lambda: loop.call_at(when, print))

    assert_same(scenario)


def test_call_at_with_a_deadline_that_is_not_a_number_fails_with_asyncios_later_error() -> None:
    """asyncio stores the deadline and fails inside the loop when the timer
    comes due; ferroloop raises the same error at once (README, "Where it
    differs")."""
    stock = asyncio.new_event_loop()
    try:
        stock.call_at(b"1", print)
        done = stock.create_future()
        stock.call_soon(done.set_result, None)
        expected = outcome(lambda: stock.run_until_complete(done))
    finally:
        stock.close()
    loop = ferroloop.new_event_loop()
    try:
        error = outcome(lambda: loop.call_at(b"1", print))
        # asyncio's message depends on where in its iteration it trips: the
        # delay's subtraction, or the comparison with the time.
        assert error[0] == expected[0] == "TypeError"
        assert error[1] == "unsupported operand type(s) for -: 'bytes' and 'float'"
        assert expected[1] in (error[1], "'>=' not supported between instances of 'bytes' and 'float'")
    finally:
        loop.close()


def test_a_loop_dropped_unclosed_is_collected_with_its_transports() -> None:
    """The loop's poller holds its transports and fd callbacks: the garbage
    collector must see those references, or a loop dropped unclosed leaks
    with everything on it. asyncio warns about both."""
    code = """
import asyncio, gc, socket, sys, warnings, weakref
import ferroloop
warnings.simplefilter("always")
factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else asyncio.new_event_loop
loop = factory()
a, b = socket.socketpair()
transport, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
c, d = socket.socketpair()
c.setblocking(False)
loop.add_reader(c, print)
refs = [weakref.ref(loop), weakref.ref(transport)]
del loop, transport
gc.collect()
print([ref() is None for ref in refs])
"""
    for name in LOOPS:
        run = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60)
        assert run.stdout.strip() == "[True, True]", (name, run.stdout, run.stderr)
        assert "ResourceWarning: unclosed event loop" in run.stderr, (name, run.stderr)
        assert "ResourceWarning: unclosed transport" in run.stderr, (name, run.stderr)


def test_get_debug_returns_what_set_debug_was_given() -> None:
    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        seen = []
        for value in (True, 1, None, "x", False, 0):
            loop.set_debug(value)  # type: ignore[arg-type]
            seen.append(loop.get_debug())
        return seen

    assert assert_same(scenario) == [True, 1, None, "x", False, 0]


@pytest.mark.parametrize("debug", [False, True])
def test_a_task_factory_that_returns_no_task(debug: bool) -> None:
    async def coro() -> None:
        pass

    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        loop.set_debug(debug)

        def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> int:
            coro.close()
            return 1

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        # asyncio 3.11 and 3.12 warn about a task without set_name.
        warns = (3, 11) <= sys.version_info < (3, 13)
        with pytest.warns(DeprecationWarning) if warns else contextlib.nullcontext():
            named = outcome(lambda: loop.create_task(coro(), name="n"))
        return [outcome(lambda: loop.create_task(coro())), named, outcome(lambda: loop.run_until_complete(coro()))]

    outcomes = assert_same(scenario)
    if (3, 13) <= sys.version_info < (3, 13, 3):
        # These call set_name(name) on whatever the factory returned.
        assert outcomes[0] == ("AttributeError", "'int' object has no attribute 'set_name'")
    else:
        assert outcomes[2] == ("AttributeError", "'int' object has no attribute '_log_destroy_pending'")


def test_an_exception_handler_interrupting_a_transport_read_is_retried_on_the_next_run() -> None:
    """asyncio's reader callback is level-triggered: if a KeyboardInterrupt
    from the exception handler cuts a read short, the next run calls it
    again. The native transport queues the interrupted read again."""

    class ReadOnly(asyncio.BufferedProtocol):
        calls = 0

        def get_buffer(self, sizehint: int) -> Any:
            ReadOnly.calls += 1
            return b"read-only"

        def buffer_updated(self, nbytes: int) -> None:
            pass

    def raise_interrupt(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        ReadOnly.calls = 0
        loop.set_exception_handler(raise_interrupt)
        a, b = socket.socketpair()
        with a, b:
            transport, _ = loop.run_until_complete(loop.connect_accepted_socket(ReadOnly, a))
            b.send(b"ping")
            seen = []
            for _ in range(2):
                try:
                    loop.run_until_complete(asyncio.sleep(0.05))
                    seen.append("finished")
                except KeyboardInterrupt:
                    seen.append(("interrupted", ReadOnly.calls))
            loop.set_exception_handler(None)
            transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            return seen

    assert assert_same(scenario) == [("interrupted", 1), ("interrupted", 2)]


def test_a_transport_left_open_at_interpreter_exit_warns_without_errors() -> None:
    code = """
import asyncio, socket, sys
import ferroloop
factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else asyncio.new_event_loop
loop = factory()
a, b = socket.socketpair()
transport, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
transport.write(b"x" * 10**7)
"""
    for name in LOOPS:
        run = subprocess.run([sys.executable, "-W", "always", "-c", code, name], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (name, run.stderr)
        assert "Traceback" not in run.stderr and "Error" not in run.stderr, (name, run.stderr)
        assert "ResourceWarning: unclosed transport" in run.stderr, (name, run.stderr)
        assert "ResourceWarning: unclosed event loop" in run.stderr, (name, run.stderr)


def test_eof_kept_open_is_read_again_after_a_pause() -> None:
    """asyncio stops reading at an EOF that eof_received keeps open;
    resuming after a pause reads the EOF, and calls eof_received, again."""

    def scenario(loop: asyncio.AbstractEventLoop) -> list[Any]:
        calls: list[str] = []

        class KeepOpen(_Sink):
            def eof_received(self) -> bool:
                calls.append("eof")
                return True

        a, b = socket.socketpair()
        with a, b:
            transport, _ = loop.run_until_complete(loop.connect_accepted_socket(KeepOpen, a))
            b.shutdown(socket.SHUT_WR)
            loop.run_until_complete(asyncio.sleep(0.05))
            seen: list[Any] = [list(calls), transport.is_reading()]
            transport.pause_reading()
            transport.resume_reading()
            loop.run_until_complete(asyncio.sleep(0.05))
            seen.append(list(calls))
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            return seen

    assert assert_same(scenario) == [["eof"], True, ["eof", "eof"]]
