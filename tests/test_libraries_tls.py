"""Real libraries over TLS on ferroloop: an aiohttp HTTPS server with the
aiohttp and httpx clients, uvicorn serving HTTPS and wss, and websockets
over TLS. Every server handler records the running loop's type and the type
of the TLS transport under the request, and each test asserts both are
ferroloop's (from 3.11 on, the native SSLProtocol's transport)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import sys
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from aiohttp import web
from test.test_asyncio import utils as asyncio_test_utils
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

import ferroloop
from netutil import hang_guard, run_with_loop

TIMEOUT = 60.0
NATIVE_TLS = sys.version_info >= (3, 11)


@pytest.fixture(autouse=True)
def _hang_guard() -> Any:
    with hang_guard(180):
        yield


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def transport_kind(transport: Any) -> str:
    # type(), not __class__: the native transport reports asyncio's class.
    return f"{type(transport).__module__}.{type(transport).__name__}"


def expected_transport_kind() -> str:
    return "ferroloop._native.SSLProtocolTransport" if NATIVE_TLS else "asyncio.sslproto._SSLProtocolTransport"


def on_ferroloop(main: Any) -> Any:
    async def guarded() -> Any:
        assert loop_module().startswith("ferroloop"), type(asyncio.get_running_loop())
        return await asyncio.wait_for(main(), TIMEOUT)

    return run_with_loop(ferroloop.new_event_loop, guarded())


def server_context() -> ssl.SSLContext:
    return asyncio_test_utils.simple_server_sslcontext()


def client_context() -> ssl.SSLContext:
    """Verifies the test certificate (self-signed, for localhost)."""
    context = ssl.create_default_context(cafile=asyncio_test_utils.ONLYCERT)
    return context


async def start_https_app() -> tuple[web.AppRunner, int, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def note(request: web.Request) -> None:
        seen.append((loop_module(), transport_kind(request.transport)))

    async def echo(request: web.Request) -> web.Response:
        note(request)
        body = await request.read()
        return web.json_response({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    async def stream(request: web.Request) -> web.StreamResponse:
        note(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        rng = random.Random(int(request.query["seed"]))
        for _ in range(32):
            await response.write(rng.randbytes(40_000))
        await response.write_eof()
        return response

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context())
    await site.start()
    return runner, runner.addresses[0][1], seen


def test_aiohttp_https_server_with_aiohttp_and_httpx_clients() -> None:
    async def main() -> None:
        runner, port, seen = await start_https_app()
        base = f"https://localhost:{port}"
        try:
            connector = aiohttp.TCPConnector(ssl=client_context())
            async with aiohttp.ClientSession(connector=connector) as session:
                body = random.Random(5).randbytes(6 * 1024 * 1024 + 11)
                async with session.post(f"{base}/echo", data=body) as response:
                    assert response.status == 200
                    assert await response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

                async def fetch(seed: int) -> None:
                    async with session.get(f"{base}/stream", params={"seed": str(seed)}) as response:
                        got = await response.read()
                        rng = random.Random(seed)
                        assert got == b"".join(rng.randbytes(40_000) for _ in range(32))

                await asyncio.gather(*(fetch(seed) for seed in range(12)))
            async with httpx.AsyncClient(verify=client_context(), timeout=20) as client:
                answers = await asyncio.gather(*(client.post(f"{base}/echo", content=bytes([i]) * 1000 * i) for i in range(1, 20)))
                for i, answer in enumerate(answers, start=1):
                    assert answer.json()["sha256"] == hashlib.sha256(bytes([i]) * 1000 * i).hexdigest()
        finally:
            await runner.cleanup()
        assert len(seen) == 1 + 12 + 19
        assert set(seen) == {("ferroloop", expected_transport_kind())}, set(seen)

    on_ferroloop(main)


class AsgiApp:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        self.seen.append(loop_module())
        if scope["type"] == "http":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            answer = f"{scope['scheme']} {len(body)} {hashlib.sha256(body).hexdigest()}".encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": answer})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "bytes": (message.get("bytes") or b"")[::-1]})


def test_uvicorn_serves_https_and_wss_on_ferroloop() -> None:
    app = AsgiApp()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def main() -> None:
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            ws="websockets-sansio",
            ssl_certfile=asyncio_test_utils.ONLYCERT,
            ssl_keyfile=asyncio_test_utils.ONLYKEY,
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=client_context(), timeout=20) as client:
            bodies = [random.Random(i).randbytes(100_000 * i) for i in range(8)]
            answers = await asyncio.gather(*(client.post("/", content=body) for body in bodies))
            for body, answer in zip(bodies, answers):
                assert answer.text == f"https {len(body)} {hashlib.sha256(body).hexdigest()}"
        async with ws_connect(f"wss://localhost:{port}/ws", ssl=client_context(), max_size=None) as ws:
            blob = random.Random(9).randbytes(2 * 1024 * 1024 + 1)
            await ws.send(blob)
            assert await ws.recv() == blob[::-1]
        server.should_exit = True
        await asyncio.wait_for(serving, 15)

    try:
        on_ferroloop(main)
    finally:
        sock.close()
    assert len(app.seen) == 9 and all(name.startswith("ferroloop") for name in app.seen), app.seen


def test_websockets_over_tls_many_clients() -> None:
    async def main() -> None:
        seen: list[tuple[str, str]] = []

        async def echo(ws: Any) -> None:
            seen.append((loop_module(), transport_kind(ws.transport)))
            async for message in ws:
                await ws.send(message)

        async with ws_serve(echo, "127.0.0.1", 0, ssl=server_context(), max_size=None) as server:
            port = server.sockets[0].getsockname()[1]

            async def client(i: int) -> None:
                async with ws_connect(f"wss://localhost:{port}", ssl=client_context(), max_size=None) as ws:
                    for j in range(10):
                        await ws.send(f"{i}:{j}")
                        assert await ws.recv() == f"{i}:{j}"
                    blob = random.Random(i).randbytes(512 * 1024 + i)
                    await ws.send(blob)
                    assert await ws.recv() == blob
                assert ws.close_code == 1000

            await asyncio.gather(*(client(i) for i in range(10)))
        assert len(seen) == 10
        assert set(seen) == {("ferroloop", expected_transport_kind())}, set(seen)

    on_ferroloop(main)
