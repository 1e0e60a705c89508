"""add_reader/add_writer, signal handlers, and Ctrl-C while the loop waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import textwrap

import pytest


def test_add_reader_fires_while_data_is_pending(loop):
    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    received = []
    calls = 0

    def on_readable():
        nonlocal calls
        calls += 1
        # Read one byte per call: the callback must keep coming while data
        # remains (level-triggered, as asyncio's selectors are).
        received.append(rsock.recv(1))
        if len(received) == 3:
            loop.remove_reader(rsock)
            loop.stop()

    assert loop.add_reader(rsock, on_readable) is None  # as asyncio's public API
    wsock.send(b"abc")
    loop.run_forever()
    assert b"".join(received) == b"abc" and calls == 3
    assert loop.remove_reader(rsock) is False
    rsock.close()
    wsock.close()


def test_add_reader_by_fd_number_and_replacement(loop):
    rsock, wsock = socket.socketpair()
    seen = []
    # The second add_reader replaces the first callback, which never runs.
    loop.add_reader(rsock.fileno(), seen.append, "first")
    loop.add_reader(rsock.fileno(), lambda: (seen.append(rsock.recv(10)), loop.stop()))
    wsock.send(b"x")
    loop.run_forever()
    assert seen == [b"x"]
    assert loop.remove_reader(rsock.fileno()) is True
    assert loop.remove_reader(rsock.fileno()) is False
    rsock.close()
    wsock.close()


def test_add_writer_and_remove_writer(loop):
    rsock, wsock = socket.socketpair()
    wsock.setblocking(False)

    def on_writable():
        wsock.send(b"ping")
        loop.remove_writer(wsock)
        loop.call_soon(loop.stop)

    loop.add_writer(wsock, on_writable)
    loop.run_forever()
    assert rsock.recv(10) == b"ping"
    assert loop.remove_writer(wsock) is False
    rsock.close()
    wsock.close()


def test_reader_and_writer_on_the_same_fd(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    events = []
    loop.add_writer(a, lambda: (events.append("w"), loop.remove_writer(a)))
    loop.add_reader(a, lambda: (events.append(a.recv(5)), loop.remove_reader(a), loop.stop()))
    b.send(b"hello")
    loop.run_forever()
    assert "w" in events and b"hello" in events
    a.close()
    b.close()


def test_invalid_file_objects_get_asyncio_errors(loop):
    with pytest.raises(ValueError, match="Invalid file object: 'nope'"):
        loop.add_reader("nope", print)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_writer(-1, print)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(closed, print)


def test_add_reader_on_a_closed_fd_raises_oserror(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, print)
    assert loop.remove_reader(r) is False


def test_remove_reader_on_closed_loop_is_false(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    a.close()
    b.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_add_signal_handler_runs_callback(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, lambda *a: (got.append(a), loop.stop()), "arg")
    loop.call_later(0.02, os.kill, os.getpid(), signal.SIGUSR1)
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert got == [("arg",)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_add_signal_handler_errors(loop):
    async def coro_fn():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("x", print)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.add_signal_handler(10_000, print)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_add_signal_handler_off_main_thread_is_refused(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in errors[0]


def test_python_signal_handler_runs_promptly_while_loop_polls(loop):
    """A handler installed with signal.signal runs while the loop sleeps in
    poll, even when the signal is delivered to another thread."""
    ran = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: (ran.append(time.monotonic()), loop.stop()))
    try:
        def send_from_thread():
            time.sleep(0.05)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)

        thread = threading.Thread(target=send_from_thread)
        guard = loop.call_later(10, loop.stop)
        started = time.monotonic()
        thread.start()
        loop.run_forever()
        thread.join()
        guard.cancel()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert ran and ran[0] - started < 2


CTRL_C_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, ferroloop

    async def main():
        print("ready", flush=True)
        await asyncio.sleep(60)

    try:
        ferroloop.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("runner", ["ferroloop.run", "run_until_complete"])
def test_ctrl_c_interrupts_a_sleeping_loop_promptly(runner):
    program = CTRL_C_PROGRAM
    if runner == "run_until_complete":
        program = program.replace(
            "ferroloop.run(main())",
            "loop = ferroloop.new_event_loop(); loop.run_until_complete(main())",
        )
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert "KeyboardInterrupt" in out
    assert elapsed < 3
