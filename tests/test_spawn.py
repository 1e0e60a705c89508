"""Children started natively (ferroloop._spawn, posix_spawn) behave as the
ones asyncio starts with subprocess.Popen: the same options reach the child,
the same exceptions come for what cannot be run, and
get_extra_info('subprocess') is a Popen in the state Popen leaves one in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from typing import Any, Awaitable, Callable

import pytest

import ferroloop
from ferroloop import _spawn

from netutil import run_with_loop

pytestmark = pytest.mark.skipif(not _spawn.NATIVE_SPAWN_AVAILABLE, reason="no native spawn on this platform")

def on_both(scenario: Callable[[], Awaitable[Any]], *, popen_on_ferroloop: bool = False) -> Any:
    """Runs ``scenario`` on asyncio and on ferroloop (where, unless
    ``popen_on_ferroloop``, Popen may not spawn), asserts they agree and
    returns the result."""
    results = {"asyncio": run_with_loop(asyncio.new_event_loop, scenario())}
    with pytest.MonkeyPatch.context() as monkeypatch:
        if not popen_on_ferroloop:
            forbid_popen_spawning(monkeypatch)
        results["ferroloop"] = run_with_loop(ferroloop.new_event_loop, scenario())
    assert results["ferroloop"] == results["asyncio"]
    return results["ferroloop"]


def forbid_popen_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails any use of Popen's own spawning: the native path must not need it."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("subprocess.Popen spawned a child on ferroloop")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


async def run_python(code: str, **kwargs: Any) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )
    out, err = await proc.communicate()
    return proc.returncode, out, err


def test_the_child_sees_the_options_asyncio_passes() -> None:
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="flspawn"))
    report = (
        "import os, signal, sys;"
        "print(os.getcwd(), os.environ.get('FL_MARK'), sorted(k for k in os.environ if k.startswith('FL_')),"
        " os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"
    )

    async def ignored_signals(**kwargs: Any) -> bytes:
        # Python ignores SIGPIPE; restore_signals gives the child the default.
        proc = await asyncio.create_subprocess_exec("grep", "SigIgn", "/proc/self/status", stdout=subprocess.PIPE, **kwargs)
        out, _ = await proc.communicate()
        return out

    async def scenario() -> list[Any]:
        results = []
        results.append(await run_python(report))
        results.append(await run_python(report, cwd=workdir))
        results.append(await run_python(report, env={"FL_MARK": "x", "FL_OTHER": "y"}))
        results.append(await run_python(report, start_new_session=True))
        results.append(await ignored_signals())
        results.append(await ignored_signals(restore_signals=False))
        if sys.version_info >= (3, 11):
            results.append(await run_python(report, process_group=0))
        return results

    try:
        results = on_both(scenario)
    finally:
        os.rmdir(workdir)
    assert results[1][1].startswith(workdir.encode())
    assert b" x ['FL_MARK', 'FL_OTHER'] " in results[2][1]
    assert results[3][1].endswith(b"True True\n")
    assert results[4] != results[5]


def test_standard_streams_devnull_stdout_merge_and_shell() -> None:
    async def scenario() -> list[Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; print('out'); print('err', file=sys.stderr); print(repr(sys.stdin.read()))",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        merged, nothing = await proc.communicate()
        shell = await asyncio.create_subprocess_shell("echo $0 && exit 7", stdout=subprocess.PIPE)
        shell_out, _ = await shell.communicate()
        with_executable = await asyncio.create_subprocess_shell(
            "echo via-executable", executable="/bin/sh", stdout=subprocess.PIPE
        )
        executable_out, _ = await with_executable.communicate()
        return [sorted(merged.split()), nothing, proc.returncode, shell_out, shell.returncode, executable_out]

    results = on_both(scenario)
    assert results[0] == [b"''", b"err", b"out"] and results[2] == 0 and results[4] == 7


def test_an_inheritable_fd_passes_only_with_close_fds_false() -> None:
    async def scenario() -> list[Any]:
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)
        try:
            probe = f"import os\ntry:\n    os.fstat({write_fd}); print('open')\nexcept OSError: print('closed')"
            closed = await run_python(probe)
            kept = await run_python(probe, close_fds=False)
        finally:
            os.close(read_fd)
            os.close(write_fd)
        return [closed[1], kept[1]]

    assert on_both(scenario) == [b"closed\n", b"open\n"]


def test_what_cannot_run_raises_what_popen_raises() -> None:
    not_executable = tempfile.NamedTemporaryFile(prefix="flspawn", delete=False)
    not_executable.close()

    async def attempt(*args: Any, **kwargs: Any) -> tuple[str, Any, Any, Any]:
        try:
            proc = await asyncio.create_subprocess_exec(*args, **kwargs)
        except Exception as exc:  # the exception is the observation
            return (type(exc).__name__, getattr(exc, "errno", None), getattr(exc, "filename", None), str(exc))
        await proc.wait()
        return ("ran", proc.returncode, None, None)

    async def scenario() -> list[Any]:
        return [
            await attempt("ferroloop-no-such-program"),
            await attempt("/no/such/dir/program"),
            await attempt(not_executable.name),
            await attempt("true", cwd="/no/such/dir"),
            await attempt("true", cwd=not_executable.name),
            await attempt("true", env={"A=B": "c"}),
            await attempt("echo", "nul\0byte"),
            await attempt("echo", 17),
            await attempt("true", env={"PATH": "/no/such/dir"}),
            await attempt("true", env={"PATH": "/usr/bin:/bin"}),
        ]

    async def only_popen_can() -> list[Any]:
        return [await attempt("true", pass_fds=(0,)), await attempt("true", umask=0o22)]

    try:
        results = on_both(scenario)
        assert on_both(only_popen_can, popen_on_ferroloop=True) == [("ran", 0, None, None)] * 2
    finally:
        os.unlink(not_executable.name)
    assert results[0][:3] == ("FileNotFoundError", 2, "ferroloop-no-such-program")
    assert results[2][0] == "PermissionError" and results[3][2] == "/no/such/dir"
    assert results[9] == ("ran", 0, None, None)


def test_get_extra_info_subprocess_is_a_popen_as_popen_leaves_it() -> None:
    async def main() -> tuple[dict[str, Any], int, Any]:
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        popen = proc._transport.get_extra_info("subprocess")
        assert isinstance(popen, subprocess.Popen) and popen.pid == proc.pid
        state = {name: describe(value) for name, value in vars(popen).items()}
        assert popen.poll() is None
        await proc.communicate(b"")
        return state, popen.returncode, popen.poll()

    with pytest.MonkeyPatch.context() as monkeypatch:
        forbid_popen_spawning(monkeypatch)
        state, returncode, polled = run_with_loop(ferroloop.new_event_loop, main())
    assert returncode == 0 and polled == 0

    real = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, universal_newlines=False
    )
    real_state = {name: describe(value) for name, value in vars(real).items()}
    real.communicate(b"")
    real_state["args"] = state["args"]
    real_state["pid"] = state["pid"]
    assert state == real_state


def describe(value: Any) -> Any:
    if hasattr(value, "fileno"):
        return (type(value).__name__, value.mode)
    if type(value).__module__ in ("_thread", "threading"):
        return type(value).__name__
    return value
