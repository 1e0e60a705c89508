"""No silent fallback: real servers, started the ways users start them, serve
their requests on ferroloop. Each app answers with the class of the loop
serving the request and the process id, so workers in child processes
(spawned or forked by the server) are checked too.

The servers are real (uvicorn, gunicorn with uvicorn's worker, hypercorn, aiohttp,
Sanic, granian), installed by the test command; uvloop is installed too, so
that a server's "auto" choice would pick it if ferroloop did not step in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ASGI_APP = """
import asyncio, os
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    loop = asyncio.get_running_loop()
    body = f"{type(loop).__module__}.{type(loop).__qualname__} {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""

SANIC_APP = """
import asyncio, os
from sanic import Sanic
from sanic.response import text
app = Sanic("loopcheck")
app.config.MOTD = False
@app.get("/")
async def index(request):
    loop = asyncio.get_running_loop()
    return text(f"{type(loop).__module__}.{type(loop).__qualname__} {os.getpid()}")
"""

AIOHTTP_APP = """
import asyncio, os, sys
from aiohttp import web
async def index(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{type(loop).__module__}.{type(loop).__qualname__} {os.getpid()}")
app = web.Application()
app.router.add_get("/", index)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""

FERROLOOP = [sys.executable, "-m", "ferroloop"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    (tmp_path / "sanic_app.py").write_text(SANIC_APP)
    (tmp_path / "aiohttp_app.py").write_text(AIOHTTP_APP)
    yield tmp_path


def fetch(port: int) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def serve(command: list[str], port: int, cwd: Path, requests: int = 12, startup: float = 40.0) -> tuple[list[str], str]:
    """Starts the server, waits until it answers, makes `requests` requests
    on new connections, stops it; returns the answers and its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    answers: list[str] = []
    try:
        deadline = time.monotonic() + startup
        while True:
            try:
                answers.append(fetch(port))
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        if answers:
            answers += [fetch(port) for _ in range(requests - 1)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            _, stderr = server.communicate()
    assert answers, f"{command} never answered; stderr:\n{stderr}"
    return answers, stderr


def loops_of(answers: list[str]) -> set[str]:
    return {answer.split()[0] for answer in answers}


def assert_on_ferroloop(answers: list[str], stderr: str) -> None:
    assert loops_of(answers) == {"ferroloop.Loop"}, (answers, stderr)
    assert "ferroloop:" not in stderr, stderr


def test_uvicorn_auto_under_python_m_ferroloop(apps: Path) -> None:
    port = free_port()
    answers, stderr = serve([*FERROLOOP, "-m", "uvicorn", "asgi_app:app", "--port", str(port)], port, apps)
    assert_on_ferroloop(answers, stderr)


def test_uvicorn_workers_under_python_m_ferroloop(apps: Path) -> None:
    """uvicorn starts its workers with multiprocessing's spawn: fresh
    interpreters, where ferroloop.pth installs ferroloop again."""
    port = free_port()
    command = [*FERROLOOP, "-m", "uvicorn", "asgi_app:app", "--port", str(port), "--workers", "2"]
    answers, stderr = serve(command, port, apps, requests=20)
    assert_on_ferroloop(answers, stderr)


def test_uvicorn_run_after_install(apps: Path) -> None:
    port = free_port()
    (apps / "main.py").write_text(
        textwrap.dedent(
            f"""
            import ferroloop, uvicorn
            ferroloop.install()
            uvicorn.run("asgi_app:app", port={port}, log_level="warning")
            """
        )
    )
    answers, stderr = serve([sys.executable, "main.py"], port, apps)
    assert_on_ferroloop(answers, stderr)


def test_uvicorn_explicit_uvloop_is_kept_and_reported(apps: Path) -> None:
    port = free_port()
    command = [*FERROLOOP, "-m", "uvicorn", "asgi_app:app", "--port", str(port), "--loop", "uvloop"]
    answers, stderr = serve(command, port, apps)
    assert loops_of(answers) == {"uvloop.Loop"}
    reports = [line for line in stderr.splitlines() if line.startswith("ferroloop:")]
    assert len(reports) == 1, stderr
    assert "uvloop.Loop, started by uvicorn" in reports[0] and "--loop ferroloop:new_event_loop" in reports[0]


def test_gunicorn_with_ferroloops_worker_class(apps: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-k", "ferroloop.workers.UvicornWorker", "-w", "2",
        "-b", f"127.0.0.1:{port}", "asgi_app:app",
    ]
    answers, stderr = serve(command, port, apps, requests=20)
    assert_on_ferroloop(answers, stderr)


def test_gunicorn_with_uvicorns_worker_under_python_m_ferroloop(apps: Path) -> None:
    port = free_port()
    command = [
        *FERROLOOP, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
        "-b", f"127.0.0.1:{port}", "asgi_app:app",
    ]
    answers, stderr = serve(command, port, apps, requests=20)
    assert_on_ferroloop(answers, stderr)


def test_hypercorn_workers_under_python_m_ferroloop(apps: Path) -> None:
    port = free_port()
    command = [*FERROLOOP, "-m", "hypercorn", "asgi_app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    answers, stderr = serve(command, port, apps, requests=20)
    assert_on_ferroloop(answers, stderr)


def test_sanic_under_python_m_ferroloop(apps: Path) -> None:
    """Sanic would install uvloop's policy (USE_UVLOOP defaults to "if
    available") in its spawned worker."""
    port = free_port()
    command = [*FERROLOOP, "-m", "sanic", "sanic_app:app", "--port", str(port), "--no-motd"]
    answers, stderr = serve(command, port, apps)
    assert_on_ferroloop(answers, stderr)


def test_granian_under_python_m_ferroloop(apps: Path) -> None:
    """granian's --loop auto picks uvloop (or rloop) when installed."""
    port = free_port()
    command = [*FERROLOOP, "-m", "granian", "--interface", "asgi", "--port", str(port), "asgi_app:app"]
    answers, stderr = serve(command, port, apps)
    assert_on_ferroloop(answers, stderr)


def test_aiohttp_run_app_under_python_m_ferroloop(apps: Path) -> None:
    port = free_port()
    answers, stderr = serve([*FERROLOOP, "aiohttp_app.py", str(port)], port, apps)
    assert_on_ferroloop(answers, stderr)
