"""The live view: loop.diagnostics(), the monitor socket, `ps` and `top`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ferroloop import _monitor

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, time

    def crunch(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # BUSY LINE
            pass

    async def idler():
        await asyncio.sleep(60)  # IDLE LINE

    async def staller(kind):
        await asyncio.sleep(0.3)
        print("stalling", flush=True)
        if kind == "sleep":
            time.sleep(4)  # SLEEP LINE
        else:
            crunch(4)

    async def main(kind):
        idle = asyncio.create_task(idler(), name="idler")
        stall = asyncio.create_task(staller(kind), name="staller")
        print("ready", flush=True)
        await stall
        idle.cancel()

    asyncio.run(main(sys.argv[1]))
    """
)


def program_line(marker: str) -> int:
    for number, line in enumerate(PROGRAM.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(marker)


@pytest.fixture
def monitored(tmp_path):
    """Starts the program on ferroloop with the monitor on; yields a
    function that runs it (kind: 'sleep' or 'cpu') and returns (proc, socket)."""
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    directory = tmp_path / "private"
    path = str(directory / "monitor.sock")
    started = []

    def start(kind: str):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferroloop", str(script), kind],
            env={**os.environ, "FERROLOOP_MONITOR": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc, path, str(script)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_ps_lists_tasks_with_what_they_await_and_where(monitored):
    proc, path, script = monitored("sleep")
    state = _monitor.query(proc.pid, "ps", path)
    [loop] = state["loops"]
    assert state["pid"] == proc.pid and loop["running"] and not loop["stalled"]
    tasks = {t["name"]: t for t in loop["tasks"]}
    assert tasks["idler"]["state"] == "pending"
    assert tasks["idler"]["awaiting"] == "sleep()"
    assert tasks["idler"]["where"] == f"{script}:{program_line('# IDLE LINE')}"
    assert tasks["idler"]["age"] is not None and tasks["idler"]["age"] >= 0
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", "ps", str(proc.pid), "--socket", path],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "NAME" in out.stdout and "idler" in out.stdout and "staller" in out.stdout
    assert f"{script}:{program_line('# IDLE LINE')}" in out.stdout


@pytest.mark.parametrize("kind, marker", [("sleep", "# SLEEP LINE"), ("cpu", "# BUSY LINE")])
def test_ps_answers_while_the_loop_is_stalled(monitored, kind, marker):
    proc, path, script = monitored(kind)
    assert proc.stdout.readline().strip() == "stalling"
    time.sleep(0.3)
    asked = time.monotonic()
    state = _monitor.query(proc.pid, "ps", path)
    answered_in = time.monotonic() - asked
    [loop] = state["loops"]
    assert loop["stalled"] is True
    assert answered_in < 2
    running = [t for t in loop["tasks"] if t["state"] == "running"]
    assert [t["name"] for t in running] == ["staller"]
    if kind == "sleep":
        assert running[0]["where"] == f"{script}:{program_line(marker)}"
    assert proc.poll() is None  # still stalled: we answered during the stall


def test_top_refreshes_with_metrics(monitored):
    proc, path, _ = monitored("sleep")
    top = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "top", str(proc.pid), "--socket", path, "--interval", "0.2"],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(1.2)
    top.terminate()
    output, _ = top.communicate(timeout=10)
    assert output.count("lag p50") >= 2  # refreshed at least twice
    assert "utilisation" in output and "idler" in output
    assert "transports 0  bytes in 0  out 0" in output  # the program opens no transport


def test_monitor_socket_is_private(monitored):
    proc, path, _ = monitored("sleep")
    socket_mode = stat.S_IMODE(os.stat(path).st_mode)
    directory_mode = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
    assert socket_mode == 0o600
    assert directory_mode == 0o700
    assert os.stat(path).st_uid == os.getuid()


def test_monitor_refuses_a_directory_others_can_enter(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(PermissionError, match="closed to group and others"):
        _monitor.MonitorServer(str(shared / "monitor.sock"))


def test_unknown_request_gets_an_error(monitored):
    proc, path, _ = monitored("sleep")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        client.sendall(b"shutdown\n")
        reply = json.loads(client.recv(65536))
    assert reply == {"error": "unknown request 'shutdown'; expected 'ps', 'top' or 'cancel TASK'"}


def test_ps_without_a_monitor_says_how_to_start_one():
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", "ps", str(os.getpid()), "--socket", "/nonexistent/x.sock"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0 and "FERROLOOP_MONITOR=1" in out.stderr


def test_diagnostics_in_process(loop):
    async def waiter():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(waiter(), name="waiter")
        await asyncio.sleep(0)
        state = loop.diagnostics()
        task.cancel()
        return state

    state = loop.run_until_complete(main())
    tasks = {t["name"]: t for t in state["tasks"]}
    assert tasks["waiter"]["awaiting"] == "sleep()"
    assert tasks["waiter"]["where"].startswith(__file__ + ":")
    assert [t["state"] for t in state["tasks"] if t["name"] != "waiter"] == ["running"]
    assert state["running"] is True and state["stalled"] is False
    assert "lag_p99_seconds" in state["metrics"]
