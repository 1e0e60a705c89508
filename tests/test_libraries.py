"""Real asyncio libraries end to end on ferroloop, over loopback only:
aiohttp (server and client), httpx, uvicorn (in process, through its own
loop option, and from its command line) and websockets.

Every server handler records the type of the running loop, and each test
asserts that ferroloop ran it.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from netutil import hang_guard, run_with_loop
import uvicorn
import websockets
from aiohttp import web
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

import ferroloop

TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _hang_guard():
    with hang_guard(180):
        yield


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def on_ferroloop(main: Any, timeout: float = TIMEOUT) -> Any:
    """Runs main() on a ferroloop loop, checking that it is one."""

    async def guarded() -> Any:
        assert loop_module().startswith("ferroloop"), type(asyncio.get_running_loop())
        return await asyncio.wait_for(main(), timeout)

    return run_with_loop(ferroloop.new_event_loop, guarded())


# -- aiohttp ---------------------------------------------------------------------------

PAGES = {n: (f"page {n}\n" * (n * 500)).encode() for n in range(1, 11)}
BIG_FILE_DATA = random.Random(77).randbytes(24 * 1024 * 1024 + 5)
BIG_FILE = Path("/nonexistent")  # written by the _big_file fixture


@pytest.fixture(scope="module", autouse=True)
def _big_file():
    global BIG_FILE
    BIG_FILE = Path(tempfile.mkdtemp(prefix="flb", dir="/tmp")) / "big.bin"
    BIG_FILE.write_bytes(BIG_FILE_DATA)
    yield
    shutil.rmtree(BIG_FILE.parent, ignore_errors=True)


async def start_aiohttp_server() -> tuple[web.AppRunner, str]:
    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n not in PAGES:
            raise web.HTTPNotFound(text=f"no page {n}")
        return web.Response(body=PAGES[n], content_type="text/plain", headers={"X-Loop": loop_module()})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "loop": loop_module()}
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Loop": loop_module()})
        response.enable_chunked_encoding()
        await response.prepare(request)
        rng = random.Random(int(request.query.get("seed", "0")))
        for _ in range(64):
            await response.write(rng.randbytes(32 * 1024))
        await response.write_eof()
        return response

    async def big_file(request: web.Request) -> web.FileResponse:
        # FileResponse sends with loop.sendfile() over the transport.
        return web.FileResponse(BIG_FILE)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/page/{n}", page)
    app.router.add_get("/file", big_file)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def test_aiohttp_fetch_several_pages_concurrently():
    async def main() -> None:
        runner, base = await start_aiohttp_server()
        try:

            async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
                async with session.get(url) as response:
                    return response.status, await response.read(), response.headers.get("X-Loop", "")

            async with aiohttp.ClientSession() as session:
                urls = [f"{base}/page/{n}" for n in PAGES] + [f"{base}/page/404"]
                results = await asyncio.gather(*(fetch(session, url) for url in urls))
                # Twice, so that pooled keep-alive connections are reused.
                results += await asyncio.gather(*(fetch(session, url) for url in urls))
            for i, (status, body, loop_name) in enumerate(results):
                n = i % len(urls) + 1
                if n in PAGES:
                    assert status == 200
                    assert body == PAGES[n]
                    assert loop_name.startswith("ferroloop")
                else:
                    assert status == 404
                    assert body == b"no page 404"
        finally:
            await runner.cleanup()

    on_ferroloop(main)


def test_aiohttp_upload_and_streaming_download():
    async def main() -> None:
        runner, base = await start_aiohttp_server()
        try:
            async with aiohttp.ClientSession() as session:
                body = random.Random(1).randbytes(8 * 1024 * 1024 + 17)
                async with session.post(f"{base}/echo", data=body) as response:
                    assert response.status == 200
                    info = await response.json()
                assert info == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "loop": info["loop"]}
                assert info["loop"].startswith("ferroloop")

                async with session.get(f"{base}/stream", params={"seed": "9"}) as response:
                    assert response.status == 200
                    assert response.headers["Transfer-Encoding"] == "chunked"
                    h = hashlib.sha256()
                    async for chunk in response.content.iter_chunked(10_000):
                        h.update(chunk)
                rng = random.Random(9)
                expected = hashlib.sha256(b"".join(rng.randbytes(32 * 1024) for _ in range(64)))
                assert h.hexdigest() == expected.hexdigest()
        finally:
            await runner.cleanup()

    on_ferroloop(main)


def test_aiohttp_file_response_with_a_slow_reader():
    """A 24 MiB FileResponse (loop.sendfile over the transport) read slowly
    by the client (aiohttp's reader pauses and resumes the transport)."""

    async def main() -> None:
        runner, base = await start_aiohttp_server()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/file") as response:
                    assert response.status == 200
                    assert response.content_length == len(BIG_FILE_DATA)
                    h = hashlib.sha256()
                    n = 0
                    reads = 0
                    while chunk := await response.content.read(256 * 1024):
                        h.update(chunk)
                        n += len(chunk)
                        reads += 1
                        if reads % 8 == 0:
                            await asyncio.sleep(0.005)
                assert n == len(BIG_FILE_DATA)
                assert h.hexdigest() == hashlib.sha256(BIG_FILE_DATA).hexdigest()
                # The connection is reused afterwards.
                async with session.get(f"{base}/page/3") as response:
                    assert await response.read() == PAGES[3]
        finally:
            await runner.cleanup()

    on_ferroloop(main)


def test_httpx_client_against_aiohttp_server():
    async def main() -> None:
        runner, base = await start_aiohttp_server()
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                responses = await asyncio.gather(*(client.get(f"/page/{n}") for n in PAGES))
                for n, response in zip(PAGES, responses):
                    assert response.status_code == 200
                    assert response.content == PAGES[n]
                    assert response.headers["x-loop"].startswith("ferroloop")
                missing = await client.get("/page/99")
                assert missing.status_code == 404
                assert missing.text == "no page 99"
                body = os.urandom(3 * 1024 * 1024)
                posted = await client.post("/echo", content=body)
                assert posted.status_code == 200
                assert posted.json()["sha256"] == hashlib.sha256(body).hexdigest()
                async with client.stream("GET", "/stream", params={"seed": "4"}) as response:
                    data = b"".join([chunk async for chunk in response.aiter_bytes()])
                rng = random.Random(4)
                assert data == b"".join(rng.randbytes(32 * 1024) for _ in range(64))
        finally:
            await runner.cleanup()

    on_ferroloop(main)


# -- uvicorn -----------------------------------------------------------------------------


class AsgiApp:
    """A small ASGI app: lifespan, an HTTP endpoint describing the request,
    and a websocket echo. Records the loop each part ran on."""

    def __init__(self) -> None:
        self.lifespan: list[str] = []
        self.loops: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.loops.add(loop_module())
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.lifespan.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.lifespan.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            body = bytearray()
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            payload = json.dumps(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "size": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "loop": loop_module(),
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if scope["path"] != "/teapot" else 418,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
        elif scope["type"] == "websocket":
            message = await receive()
            assert message["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"].upper()})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("http_impl", ["httptools", "h11"])
def test_uvicorn_in_process_with_httpx_and_graceful_shutdown(http_impl):
    app = AsgiApp()
    sock = _bound_socket()
    port = sock.getsockname()[1]

    async def main() -> None:
        config = uvicorn.Config(app, lifespan="on", http=http_impl, ws="websockets-sansio", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        assert app.lifespan == ["startup"]
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            gets = await asyncio.gather(*(client.get(f"/item/{i}") for i in range(20)))
            for i, response in enumerate(gets):
                assert response.status_code == 200
                assert response.json() == {
                    "method": "GET",
                    "path": f"/item/{i}",
                    "size": 0,
                    "sha256": hashlib.sha256(b"").hexdigest(),
                    "loop": response.json()["loop"],
                }
                assert response.json()["loop"].startswith("ferroloop")
            body = os.urandom(2 * 1024 * 1024 + 3)
            posted = await client.post("/upload", content=body)
            assert posted.status_code == 200
            assert posted.json()["size"] == len(body)
            assert posted.json()["sha256"] == hashlib.sha256(body).hexdigest()
            teapot = await client.get("/teapot")
            assert teapot.status_code == 418
        # A websocket through uvicorn, with the websockets client.
        async with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("hello")
            assert await ws.recv() == "HELLO"
            await ws.send(b"\x01\x02\x03")
            assert await ws.recv() == b"\x03\x02\x01"
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
        assert app.lifespan == ["startup", "shutdown"]

    try:
        on_ferroloop(main, timeout=60)
    finally:
        sock.close()
    assert app.loops and all(name.startswith("ferroloop") for name in app.loops), app.loops


def test_uvicorn_config_loop_option_runs_ferroloop():
    """uvicorn's own `loop` setting, "module:callable", as with
    `uvicorn --loop ferroloop:new_event_loop`; server.run() in a thread,
    plain blocking HTTP clients in this one."""
    app = AsgiApp()
    config = uvicorn.Config(app, loop="ferroloop:new_event_loop", lifespan="on", log_level="warning")
    assert config.get_loop_factory() is ferroloop.new_event_loop
    server = uvicorn.Server(config)
    sock = _bound_socket()
    port = sock.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=serve, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), errors
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        for i in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = os.urandom(100_000 * i)
            conn.request("PUT", f"/thing/{i}", body=body)
            response = conn.getresponse()
            payload = json.loads(response.read())
            conn.close()
            assert response.status == 200
            assert payload["method"] == "PUT"
            assert payload["path"] == f"/thing/{i}"
            assert payload["sha256"] == hashlib.sha256(body).hexdigest()
            assert payload["loop"].startswith("ferroloop")
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not shut down"
    assert errors == []
    assert app.lifespan == ["startup", "shutdown"]
    assert app.loops and all(name.startswith("ferroloop") for name in app.loops), app.loops


def test_uvicorn_command_line_with_ferroloop_over_a_unix_socket():
    """`python -m uvicorn app:app --loop ferroloop:new_event_loop --uds ...`,
    then SIGINT: uvicorn shuts down gracefully (lifespan shutdown, exit 0)."""
    workdir = Path(tempfile.mkdtemp(prefix="flu", dir="/tmp"))
    try:
        (workdir / "asgi_app.py").write_text(
            textwrap.dedent(
                """
                import asyncio, json

                async def app(scope, receive, send):
                    if scope["type"] == "lifespan":
                        while True:
                            message = await receive()
                            kind = message["type"].split(".")[1]
                            print("lifespan", kind, flush=True)
                            await send({"type": f"lifespan.{kind}.complete"})
                            if kind == "shutdown":
                                return
                    loop = type(asyncio.get_running_loop()).__module__
                    body = json.dumps({"loop": loop, "path": scope["path"]}).encode()
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                """
            )
        )
        uds = str(workdir / "uvicorn.sock")
        package_dir = str(Path(ferroloop.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(workdir), package_dir, env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "asgi_app:app",
                "--loop", "ferroloop:new_event_loop",
                "--uds", uds,
                "--lifespan", "on",
                "--log-level", "info",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(uds):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "uvicorn did not create its socket"
                time.sleep(0.05)
            answers = []
            for path in ("/a", "/b"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(10)
                    client.connect(uds)
                    client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    raw = b""
                    while chunk := client.recv(65536):
                        raw += chunk
                answers.append(raw)
            for path, raw in zip(("/a", "/b"), answers):
                head, _, body = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK"), raw
                payload = json.loads(body)
                assert payload["path"] == path
                assert payload["loop"].startswith("ferroloop"), payload
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, (out, err)
        lifespan = [line for line in out.decode().splitlines() if line.startswith("lifespan ")]
        assert lifespan == ["lifespan startup", "lifespan shutdown"], (out, err)
        assert b"Finished server process" in out + err, (out, err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- websockets --------------------------------------------------------------------------


def test_websockets_echo_server_and_client():
    async def main() -> None:
        handler_loops: list[str] = []

        async def echo(ws: Any) -> None:
            handler_loops.append(loop_module())
            async for message in ws:
                await ws.send(message)

        async with ws_serve(echo, "127.0.0.1", 0, max_size=16 * 1024 * 1024) as server:
            port = server.sockets[0].getsockname()[1]

            async def client(i: int) -> None:
                async with ws_connect(f"ws://127.0.0.1:{port}", max_size=16 * 1024 * 1024) as ws:
                    for j in range(20):
                        text = f"client {i} message {j} " + "é" * j
                        await ws.send(text)
                        assert await ws.recv() == text
                    blob = random.Random(i).randbytes(1024 * 1024 + i)
                    await ws.send(blob)
                    assert await ws.recv() == blob
                    latency = await asyncio.wait_for(await ws.ping(), 10)
                    assert latency >= 0
                assert ws.close_code == 1000

            await asyncio.gather(*(client(i) for i in range(8)))
        assert len(handler_loops) == 8
        assert all(name.startswith("ferroloop") for name in handler_loops)

    on_ferroloop(main)


def test_websockets_server_closes_with_a_code():
    async def main() -> None:
        async def handler(ws: Any) -> None:
            greeting = await ws.recv()
            await ws.close(4001, f"bye {greeting}")

        async with ws_serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with ws_connect(f"ws://127.0.0.1:{port}") as ws:
                await ws.send("alice")
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == 4001
                assert info.value.rcvd.reason == "bye alice"

    on_ferroloop(main)
