"""Subprocesses on ferroloop: asyncio's subprocess transport over the
native pipe transports, with the child's exit from a pidfd in the poller
(or, forced here with ferroloop._process.PIDFD_AVAILABLE = False, from
SIGCHLD through the loop's signal handling, or, with SIGCHLD_WATCHING = False
too, a thread per child as asyncio's ThreadedChildWatcher)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

import pytest

import ferroloop
from ferroloop import _process

from netutil import run_with_loop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(params=["pidfd", "sigchld", "thread"])
def child_watching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "pidfd" and not _process.PIDFD_AVAILABLE:
        pytest.skip("this kernel has no pidfd_open")
    monkeypatch.setattr(_process, "PIDFD_AVAILABLE", request.param == "pidfd")
    monkeypatch.setattr(_process, "SIGCHLD_WATCHING", request.param == "sigchld")
    yield request.param
    # Watching by SIGCHLD hands the signal back when the loop is closed.
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def waiter_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("asyncio-waitpid-"))


async def echo_through_cat(payload: bytes) -> tuple[bool, int]:
    proc = await asyncio.create_subprocess_exec("cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = await proc.communicate(payload)
    return hashlib.sha256(out).digest() == hashlib.sha256(payload).digest(), proc.returncode or 0


def test_200_concurrent_children_echo_their_payloads(child_watching: str) -> None:
    async def main() -> tuple[list[tuple[bool, int]], int]:
        payloads = [os.urandom(1 + (i * 7919) % 200_000) for i in range(200)]
        threads_seen = 0

        async def watch_threads() -> None:
            nonlocal threads_seen
            while True:
                threads_seen = max(threads_seen, waiter_threads())
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch_threads())
        results = await asyncio.gather(*(echo_through_cat(p) for p in payloads))
        watcher.cancel()
        return results, threads_seen

    results, threads_seen = run_with_loop(ferroloop.new_event_loop, main())
    assert results == [(True, 0)] * 200
    if child_watching == "thread":
        assert threads_seen > 0
    else:
        assert threads_seen == 0


def test_kill_under_load_gives_negative_returncodes(child_watching: str) -> None:
    async def main() -> tuple[list[int | None], list[tuple[bool, int]]]:
        sleepers = [await asyncio.create_subprocess_exec("sleep", "60") for _ in range(30)]
        echoes = asyncio.gather(*(echo_through_cat(os.urandom(50_000)) for _ in range(30)))
        for i, proc in enumerate(sleepers):
            if i % 2:
                proc.kill()
            else:
                proc.terminate()
        codes = [await proc.wait() for proc in sleepers]
        return codes, await echoes

    codes, echoed = run_with_loop(ferroloop.new_event_loop, main())
    assert codes == [-signal.SIGTERM if i % 2 == 0 else -signal.SIGKILL for i in range(30)]
    assert echoed == [(True, 0)] * 30


def test_returncodes_signals_and_lookup_errors_match_asyncio() -> None:
    async def main() -> list[Any]:
        seen: list[Any] = []
        proc = await asyncio.create_subprocess_exec("true")
        seen.append(await proc.wait())
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; sys.exit(7)")
        seen.append(await proc.wait())
        proc = await asyncio.create_subprocess_shell("kill -USR1 $$")
        seen.append(await proc.wait())
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        seen.append(proc.returncode)
        proc.send_signal(signal.SIGINT)
        seen.append(await proc.wait())
        for action in (proc.kill, proc.terminate, lambda: proc.send_signal(signal.SIGHUP)):
            try:
                action()
                seen.append("no error")
            except ProcessLookupError:
                seen.append("ProcessLookupError")
        return seen

    results = {name: run_with_loop(factory, main()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert results["ferroloop"][:5] == [0, 7, -signal.SIGUSR1, None, -signal.SIGINT]


def test_communicate_with_large_input_and_output(child_watching: str) -> None:
    async def main() -> tuple[bool, bytes, int]:
        payload = os.urandom(16 << 20)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); sys.stderr.write(str(len(d)))",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate(payload)
        return out == payload, err, proc.returncode or 0

    assert run_with_loop(ferroloop.new_event_loop, main()) == (True, str(16 << 20).encode(), 0)


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.events.append(("data", fd))

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self) -> None:
        self.events.append("exited")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))
        self.done.set_result(None)


def test_protocol_callbacks_come_in_asyncios_order(child_watching: str) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            Recorder,
            sys.executable,
            "-c",
            "import sys; sys.stdout.write('out'); sys.stdout.flush(); sys.stderr.write('err')",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert transport.get_pid() > 0
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        stdin.close()
        await proto.done
        assert transport.get_returncode() == 0
        transport.close()
        return proto.events

    events = run_with_loop(ferroloop.new_event_loop, main())
    assert events[0] == "made" and events[-1] == ("lost", None)
    # process_exited, and every pipe's end, before connection_lost.
    body = events[1:-1]
    assert "exited" in body
    assert sorted(e for e in body if isinstance(e, tuple) and e[0] == "pipe_lost") == [
        ("pipe_lost", 0, None),
        ("pipe_lost", 1, None),
        ("pipe_lost", 2, None),
    ]
    assert ("data", 1) in body and ("data", 2) in body
    assert body.index(("data", 1)) < body.index(("pipe_lost", 1, None))


@pytest.mark.parametrize("stdout", [None, subprocess.PIPE], ids=["no-pipes", "stdout-pipe"])
def test_set_up_takes_asyncios_iterations(stdout: Any) -> None:
    """connection_made, and subprocess_exec's return, come as many loop
    iterations after the call as on asyncio, with and without pipes."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        ticks = [0]
        seen: list[Any] = []

        def tick() -> None:
            ticks[0] += 1
            if len(seen) < 2:
                loop.call_soon(tick)

        class Made(asyncio.SubprocessProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                seen.append(("made", ticks[0]))

        loop.call_soon(tick)
        transport, _ = await loop.subprocess_exec(Made, "sleep", "5", stdin=None, stdout=stdout, stderr=None)
        seen.append(("returned", ticks[0]))
        transport.kill()
        await transport._wait()  # type: ignore[attr-defined]
        transport.close()
        return seen

    results = {name: run_with_loop(factory, main()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert [event for event, _ in results["asyncio"]] == ["made", "returned"]


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="child watchers are gone in 3.14")
def test_a_child_watcher_set_on_the_policy_is_honoured() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # A kind the policy would not make by itself (it makes Threaded or
        # Pidfd watchers, which the loop's own watching replaces).
        watcher = asyncio.SafeChildWatcher()  # type: ignore[attr-defined]
        handled: list[int] = []
        real_add = watcher.add_child_handler

        def add_child_handler(pid: int, callback: Any, *args: Any) -> None:
            handled.append(pid)
            real_add(pid, callback, *args)

        watcher.add_child_handler = add_child_handler
        policy = asyncio.get_event_loop_policy()
        previous = getattr(policy, "_watcher", None)
        asyncio.set_child_watcher(watcher)  # type: ignore[attr-defined]

    async def main() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec("true")
        return proc.pid, await proc.wait()

    try:
        pid, code = run_with_loop(ferroloop.new_event_loop, main())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy._watcher = previous  # type: ignore[attr-defined]
            watcher.close()
    assert (handled, code) == ([pid], 0)


def test_a_child_reaped_by_popen_first_keeps_its_returncode() -> None:
    async def main() -> tuple[int | None, int]:
        proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.2; exit 5")
        popen = proc._transport._proc  # type: ignore[attr-defined]
        # Popen.wait() reaps the child before the loop sees its pidfd.
        code = popen.wait()
        return code, await proc.wait()

    assert run_with_loop(ferroloop.new_event_loop, main()) == (5, 5)


def test_callbacks_run_in_the_contexts_asyncio_uses() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="default")

    class ContextRecorder(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.seen: dict[str, str] = {}
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def pipe_data_received(self, fd: int, data: bytes) -> None:
            self.seen["data"] = var.get()

        def process_exited(self) -> None:
            self.seen["exited"] = var.get()

        def connection_lost(self, exc: BaseException | None) -> None:
            self.seen["lost"] = var.get()
            self.done.set_result(None)

    async def main() -> dict[str, str]:
        loop = asyncio.get_running_loop()
        var.set("spawner")
        transport, proto = await loop.subprocess_exec(
            ContextRecorder, "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        var.set("after")
        # The child exits only once its pipes are connected, so the exit is
        # not one of the calls held back until then. connection_lost comes
        # from whichever of the exit and the stdout EOF is last, in asyncio
        # too, so its context is not compared.
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"hi")
        stdin.close()
        await proto.done
        transport.close()
        return {key: proto.seen[key] for key in ("data", "exited")}

    results = {name: run_with_loop(factory, main()) for name, factory in LOOPS.items()}
    assert results["ferroloop"] == results["asyncio"]
    # Before 3.12 asyncio's watcher thread reports the exit, from a context
    # of its own; since, its pidfd watcher, in the spawner's.
    exited = "spawner" if sys.version_info >= (3, 12) else "default"
    assert results["ferroloop"] == {"data": "spawner", "exited": exited}


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def is_reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_child_outliving_its_loop_is_reaped_and_leaves_no_fd(
    child_watching: str, caplog: pytest.LogCaptureFixture
) -> None:
    loop = ferroloop.new_event_loop()
    before = open_fds()

    async def start() -> Any:
        return await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(0.3)")

    proc = loop.run_until_complete(start())
    pid = proc.pid
    with warnings.catch_warnings():
        # The transport is left unclosed on purpose; its warning is asyncio's.
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()
        assert not is_reaped(pid)
        for _ in range(100):
            if is_reaped(pid) and f"that handles pid {pid} is closed" in caplog.text:
                break
            threading.Event().wait(0.05)
        del proc
    assert is_reaped(pid)
    assert f"that handles pid {pid} is closed" in caplog.text
    assert open_fds() <= before


def test_taking_sigchld_over_keeps_the_loops_children_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program's own SIGCHLD handler replaces the loop's child reaping:
    children already watched through it are still waited for."""
    monkeypatch.setattr(_process, "PIDFD_AVAILABLE", False)
    monkeypatch.setattr(_process, "SIGCHLD_WATCHING", True)
    seen: list[str] = []

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        first = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(0.2)")
        loop.add_signal_handler(signal.SIGCHLD, seen.append, "sigchld")
        second = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        codes = [await asyncio.wait_for(first.wait(), 10), await asyncio.wait_for(second.wait(), 10)]
        loop.remove_signal_handler(signal.SIGCHLD)
        third = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(4)")
        codes.append(await asyncio.wait_for(third.wait(), 10))
        return codes

    assert run_with_loop(ferroloop.new_event_loop, main()) == [0, 3, 4]
    assert "sigchld" in seen
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
