"""Hello-world ASGI app under uvicorn (httptools), on one event loop.

Started by ``http_bench.py`` as a fresh subprocess.  The same launcher runs
every loop: ``asyncio.Runner(loop_factory=...)`` around
``uvicorn.Server(config).serve()``, with uvicorn's own loop set-up disabled
(``loop="none"``), so the loops differ in nothing but the loop.  (uvicorn
0.36+ also accepts ``--loop ferroloop:new_event_loop`` on its command line;
older versions only know their named loops, and this launcher works with
both.)  The loop is created by ``worker.new_loop``, which checks that it
really is the requested package's.

Usage: python3 asgi_server.py LOOP [--port P] [--backlog N]

Prints ``READY <port> <loop type>`` on stdout once uvicorn serves on
127.0.0.1.  SIGTERM or SIGINT stops it through uvicorn's own handlers (which
re-raise the signal after a graceful shutdown, so the exit status is then
-SIGTERM / -SIGINT).  uvicorn logs warnings and errors to stderr only.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

import uvicorn

from worker import new_loop

HOST = "127.0.0.1"
BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan is off; nothing else is expected
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def serve(server: uvicorn.Server, sock: socket.socket) -> None:
    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        print(f"READY {sock.getsockname()[1]} {type(loop).__module__}.{type(loop).__qualname__}",
              flush=True)

    announcer = asyncio.get_running_loop().create_task(announce())
    await server.serve(sockets=[sock])
    announcer.cancel()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="uvicorn hello-world server for http_bench.py")
    parser.add_argument("loop")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=2048)
    args = parser.parse_args(argv)

    # IPPROTO_TCP, not the default 0: accepted sockets inherit the listening
    # socket's proto, and asyncio (like ferroloop) sets TCP_NODELAY only on
    # sockets whose proto is IPPROTO_TCP.  With proto 0 asyncio's transports
    # leave Nagle on, and uvicorn's two writes per response (head, body) wait
    # for wrk's delayed ACK: ~40 ms per request.  create_server(host, port),
    # which is what uvicorn does itself in one process, gets IPPROTO_TCP from
    # getaddrinfo; this matches it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    config = uvicorn.Config(
        app,
        loop="none",  # the Runner below makes the loop
        http="httptools",
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_level="warning",
        backlog=args.backlog,
    )
    server = uvicorn.Server(config)
    with asyncio.Runner(loop_factory=lambda: new_loop(args.loop)) as runner:
        runner.run(serve(server, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
