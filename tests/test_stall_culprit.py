"""Stall reports name the program's own code: the innermost frame that is
neither the standard library's, an installed package's nor ferroloop's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import ferroloop
from ferroloop import _culprit, _monitor

THRESHOLD = 0.05


@pytest.fixture
def records(loop):
    collected: list[dict] = []
    loop.enable_watchdog(THRESHOLD, callback=collected.append)
    yield collected
    loop.disable_watchdog()


@pytest.fixture
def default_own_code():
    yield
    ferroloop.set_own_code()


def function_name(function) -> str:
    """How frames name a function: qualified from 3.11 on (co_qualname)."""
    return function.__qualname__ if sys.version_info >= (3, 11) else function.__name__


def run_stall(loop, coro_fn) -> None:
    loop.run_until_complete(loop.create_task(coro_fn(), name="staller"))
    loop.run_until_complete(asyncio.sleep(0.05))  # let the watchdog see the end


def test_the_default_rule_tells_the_programs_files_from_libraries(default_own_code):
    assert _culprit.is_own_location(__file__)
    assert not _culprit.is_own_location(threading.__file__)
    assert not _culprit.is_own_location(os.path.join(sysconfig.get_paths()["purelib"], "pkg", "mod.py"))
    assert not _culprit.is_own_location("/opt/app/venv/lib/python3.11/site-packages/starlette/routing.py")
    assert not _culprit.is_own_location("/usr/lib/python3/dist-packages/requests/api.py")
    assert not _culprit.is_own_location(ferroloop.__file__)
    assert not _culprit.is_own_location("<frozen runpy>")
    # Generated code is the program's only in its main module.
    assert not _culprit._own_code.is_own("<string>", "pydantic._internal._dataclasses")
    assert _culprit._own_code.is_own("<stdin>", "__main__")


def test_set_own_code_takes_path_prefixes_and_module_names(default_own_code, tmp_path):
    ferroloop.set_own_code(str(tmp_path), "myapp")
    assert _culprit.own_code_entries() == (str(tmp_path), "myapp")
    assert _culprit.is_own_location(str(tmp_path / "x.py"))
    assert not _culprit.is_own_location(__file__)  # an explicit list replaces the default rule
    assert _culprit._own_code.is_own("/elsewhere/site-packages/myapp/api.py", "myapp.api")
    assert not _culprit._own_code.is_own("/elsewhere/site-packages/myapplication.py", "myapplication")
    ferroloop.set_own_code()
    assert _culprit.is_own_location(__file__)
    with pytest.raises(TypeError, match="must be str"):
        ferroloop.set_own_code(42)  # type: ignore[arg-type]


def test_own_code_from_the_environment(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("from ferroloop import _culprit\nprint(_culprit.own_code_entries())\n")
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "FERROLOOP_OWN_CODE": f"/srv/app{os.pathsep}myapp,other.pkg"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.strip() == "('/srv/app', 'myapp', 'other.pkg')", result.stderr


def test_a_stall_inside_the_standard_library_names_the_callers_line(loop, records, line_of):
    async def wait_for_flag():
        threading.Event().wait(0.3)  # WAITS IN THREADING

    run_stall(loop, wait_for_flag)
    stall, end = records
    # The stack ends in threading.py, the culprit is the line that called it.
    assert stall["stack"][-1][0] == threading.__file__
    assert stall["culprit"] == (__file__, line_of("# WAITS IN THREADING"), function_name(wait_for_flag))
    assert stall["entry_point"] == stall["culprit"]
    assert stall["blocking_kind"] == "lock"
    assert end["culprit"] == stall["culprit"]


def test_without_any_own_frame_the_culprit_is_the_innermost_frame(loop, records, default_own_code, line_of):
    ferroloop.set_own_code("no_such_module_of_the_program")

    async def sleeper():
        time.sleep(0.3)  # NOT OWN

    run_stall(loop, sleeper)
    assert records[0]["culprit"] == (__file__, line_of("# NOT OWN"), function_name(sleeper))


def blocking_socket_read() -> None:
    left, right = socket.socketpair()
    with left, right:
        threading.Timer(0.3, right.send, args=(b"x",)).start()
        left.recv(1)


def blocking_pipe_read() -> None:
    read_end, write_end = os.pipe()
    threading.Timer(0.3, os.write, args=(write_end, b"x")).start()
    try:
        os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.close(write_end)


def blocking_lock() -> None:
    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.3, lock.release).start()
    lock.acquire()


def blocking_subprocess() -> None:
    subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)"], check=True)


def blocking_http(port: int) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()


@pytest.mark.parametrize(
    "blocker, kind",
    [
        (lambda: time.sleep(0.3), "sleep"),
        (blocking_socket_read, "socket"),
        (blocking_pipe_read, "file"),
        (blocking_lock, "lock"),
        (blocking_subprocess, "subprocess"),
        (lambda: socket.getaddrinfo("localhost", 80) and time.sleep(0.3), "sleep"),
    ],
    ids=["sleep", "socket", "file", "lock", "subprocess", "not-dns-once-returned"],
)
def test_the_blocking_call_is_recognised(loop, records, blocker, kind):
    async def staller():
        blocker()

    run_stall(loop, staller)
    stall, end = records
    assert stall["blocking_kind"] == kind, stall["stack"][-1]
    assert end["blocking_kind"] == kind
    assert end["profile"][0]["blocking_kind"] == kind


def nap(seconds: float) -> None:
    time.sleep(seconds)  # WARMED UP


def test_a_call_in_specialised_bytecode_is_recognised(loop, records, line_of):
    # Run often enough that the interpreter specialises the call (3.11 then
    # calls time.sleep from the PRECALL instruction, not from CALL).
    for _ in range(100):
        nap(0)

    async def staller():
        nap(0.3)

    run_stall(loop, staller)
    assert records[0]["culprit"] == (__file__, line_of("# WARMED UP"), "nap")
    assert records[0]["blocking_kind"] == "sleep"


def test_a_slow_http_request_is_an_http_block(loop, records):
    class SlowHandler(__import__("http.server").server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(0.3)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    import http.server

    server = http.server.HTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        async def staller():
            blocking_http(server.server_address[1])

        run_stall(loop, staller)
    finally:
        thread.join(10)
        server.server_close()
    assert records[0]["blocking_kind"] == "http"
    assert records[0]["culprit"][2] == "blocking_http"


def test_cpu_work_has_no_blocking_kind(loop, records):
    async def staller():
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass

    run_stall(loop, staller)
    assert records[0]["blocking_kind"] is None


FASTAPI_APP = textwrap.dedent(
    """
    import time

    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/report")
    async def build_report():
        time.sleep(0.3)  # BLOCKS THE LOOP
        return {"ok": True}
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_fastapi_endpoint_under_uvicorn_is_named_in_the_headline(tmp_path: Path):
    app = tmp_path / "shop.py"
    app.write_text(FASTAPI_APP)
    line = next(n for n, text in enumerate(FASTAPI_APP.splitlines(), 1) if "# BLOCKS THE LOOP" in text)
    port = free_port()
    env = {
        **os.environ,
        "FERROLOOP_WATCHDOG": "50",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "-m", "uvicorn", "shop:app", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    answer = None
    try:
        deadline = time.monotonic() + 40
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=10) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.2)
        time.sleep(0.2)  # the watchdog reports the stall's end
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            _, stderr = server.communicate()
    assert answer == {"ok": True}, stderr
    # The request's stall (server start-up may stall too, importing the app).
    request_task = "(coroutine RequestResponseCycle.run_asgi() at "
    [headline] = [t for t in stderr.splitlines() if t.startswith("event loop stalled:") and request_task in t]
    assert f"in build_report() at {app}:{line} (sleep); task " in headline, headline
    [ended] = [t for t in stderr.splitlines() if t.startswith("event loop stall ended") and request_task in t]
    assert f"of it in build_report() at {app}:{line} (sleep)" in ended


STALLING_PROGRAM = textwrap.dedent(
    """
    import asyncio, time

    def crunch(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # BUSY LINE
            pass

    async def staller():
        print("stalling", flush=True)
        crunch(4)

    async def main():
        await asyncio.create_task(staller(), name="staller")

    asyncio.run(main())
    """
)


def test_ps_without_the_watchdog_names_the_stalling_task_and_line(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(STALLING_PROGRAM)
    path = str(tmp_path / "private" / "monitor.sock")
    line = next(n for n, text in enumerate(STALLING_PROGRAM.splitlines(), 1) if "# BUSY LINE" in text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", str(script)],
        env={**os.environ, "FERROLOOP_MONITOR": path}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stalling"
        time.sleep(0.3)
        state = _monitor.query(proc.pid, "ps", path)
        [loop] = state["loops"]
        assert loop["stalled"] and not loop["watchdog"]
        assert loop["stall"]["task"] == "staller"
        assert loop["stall"]["culprit"] == [str(script), line, "crunch"]
        [running] = [t for t in loop["tasks"] if t["state"] == "running"]
        assert running["where"] == f"{script}:{line}"
        text = _monitor.render(state)
        assert f"in crunch() at {script}:{line}; task 'staller'" in text
        assert proc.poll() is None  # answered during the stall
    finally:
        proc.kill()
        proc.wait()
