"""`ps` on processes that did not set FERROLOOP_MONITOR: under
`python -m ferroloop` the monitor is on by default; elsewhere a process can
allow attaching by a signal, and one that did not is never sent it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ferroloop
from ferroloop import _attach, _monitor

PROGRAM = textwrap.dedent(
    """
    import asyncio, signal, sys
    import ferroloop

    if sys.argv[1:] == ["api"]:
        ferroloop.allow_attach(signal.SIGUSR2)

    async def worker():
        await asyncio.sleep(60)

    async def main():
        asyncio.create_task(worker(), name="worker")
        print("ready", signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2), flush=True)
        # Exits normally once stdin closes.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    ferroloop.run(main())
    """
)


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FERROLOOP_MONITOR", _attach.ENV_VARIABLE)}
    env.update(extra)
    return env


@pytest.fixture
def start(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    started = []

    def start(*command: str, env: dict[str, str], args: tuple[str, ...] = ()):
        proc = subprocess.Popen(
            [sys.executable, *command, str(script), *args],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(proc)
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", proc.stderr.read() if proc.poll() is not None else line
        return proc, line[1:]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def ps(pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferroloop", "ps", str(pid)], capture_output=True, text=True, timeout=60)


def finish(proc: subprocess.Popen[str]) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_the_cli_runner_serves_ps_without_FERROLOOP_MONITOR(start):
    proc, _ = start("-m", "ferroloop", env=_environment())
    out = ps(proc.pid)
    assert out.returncode == 0, out.stderr
    assert f"pid {proc.pid}  loop 1  running" in out.stdout
    assert "worker" in out.stdout and "sleep()" in out.stdout
    socket_path = _monitor.default_socket_path(proc.pid)
    assert os.path.exists(socket_path)
    finish(proc)
    assert not os.path.exists(socket_path)


def test_FERROLOOP_MONITOR_0_turns_the_cli_runners_monitor_off(start):
    proc, _ = start("-m", "ferroloop", env=_environment(FERROLOOP_MONITOR="0"))
    out = ps(proc.pid)
    assert out.returncode == 1 and "no monitor for pid" in out.stderr
    assert not os.path.exists(_monitor.default_socket_path(proc.pid))
    finish(proc)


@pytest.mark.parametrize("how, env, args", [
    ("environment", {_attach.ENV_VARIABLE: "SIGUSR1"}, ()),
    ("api", {}, ("api",)),
], ids=["environment", "api"])
def test_ps_attaches_to_a_process_that_allowed_it(start, how, env, args):
    proc, handlers = start(env=_environment(**env), args=args)
    socket_path = _monitor.default_socket_path(proc.pid)
    note = _attach.note_path(proc.pid)
    assert not os.path.exists(socket_path)  # nothing listens before the attach
    assert os.path.exists(note) and (os.stat(note).st_mode & 0o777) == 0o600
    assert json.load(open(note))["signal"] == (signal.SIGUSR1 if how == "environment" else signal.SIGUSR2)
    out = ps(proc.pid)
    assert out.returncode == 0, out.stderr
    assert "worker" in out.stdout and f"{proc.pid}" in out.stdout
    assert (os.stat(socket_path).st_mode & 0o777) == 0o600
    again = ps(proc.pid)  # the monitor stays on
    assert again.returncode == 0 and "worker" in again.stdout
    finish(proc)
    assert not os.path.exists(socket_path) and not os.path.exists(note)


def test_a_process_that_did_not_opt_in_keeps_the_default_disposition(start):
    proc, handlers = start(env=_environment())
    assert handlers == [str(signal.SIG_DFL), str(signal.SIG_DFL)]
    out = ps(proc.pid)
    assert out.returncode == 1
    assert f"no monitor for pid {proc.pid}" in out.stderr and "allow_attach" in out.stderr
    time.sleep(0.2)
    assert proc.poll() is None  # ps sent it nothing
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=30) == -signal.SIGUSR1


def test_allow_attach_refuses_a_signal_that_has_a_handler():
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        with pytest.raises(ValueError, match="SIGUSR2 already has a handler"):
            ferroloop.allow_attach(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not os.path.exists(_attach.note_path(os.getpid()))


def test_a_note_left_by_an_earlier_process_with_the_same_pid_is_not_trusted():
    path = _attach.note_path(os.getpid())
    _monitor.private_directory(path)
    try:
        with open(path, "w") as note:
            json.dump({"pid": os.getpid(), "signal": int(signal.SIGUSR1), "started": "1"}, note)
        assert _attach.read_note(os.getpid()) is None
        with open(path, "w") as note:
            json.dump({"pid": os.getpid(), "signal": int(signal.SIGUSR1),
                       "started": _attach.process_start_time(os.getpid())}, note)
        assert _attach.read_note(os.getpid()) == signal.SIGUSR1
    finally:
        os.unlink(path)


@pytest.mark.parametrize("text, expected", [("SIGUSR1", signal.SIGUSR1), ("usr2", signal.SIGUSR2), ("10", signal.Signals(10))])
def test_signal_names(text, expected):
    assert _attach.parse_signal(text) == expected


def test_an_unknown_signal_in_the_environment_is_a_warning(tmp_path):
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", "import ferroloop"],
        env=_environment(**{_attach.ENV_VARIABLE: "SIGNOPE"}), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1 and "FERROLOOP_ATTACH_SIGNAL='SIGNOPE' ignored: unknown signal 'SIGNOPE'" in out.stderr
