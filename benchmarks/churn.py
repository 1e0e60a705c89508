"""Connection churn: connect, one 64-byte request echoed, close.

Two shapes, asyncio, uvloop and ferroloop side by side in the same run:

* ``both``: both ends in one process, one loop (family ``tls``: TCP with a
  TLS handshake, a self-signed certificate made by the ``openssl``
  command). One op is a whole short connection: ``create_connection`` (or ``create_unix_connection``), the
  server's accept and ``connection_made``, a 64-byte request echoed, the
  client's close, both ``connection_lost``.
* ``server``: the loop runs only the server; a separate load generator
  process (plain blocking sockets, two threads) connects, sends one request,
  reads the echo and closes. One op is one connection served; the cost is the
  server process's CPU time.

Reported: CPU time per op (median of the repetitions) and instructions per
op under callgrind (of the loop's process only: for ``server``, not the load
generator's), the difference of two runs of different lengths, so start-up
cancels out.

    python3 benchmarks/churn.py                      # timings and callgrind
    python3 benchmarks/churn.py --no-callgrind
    python3 benchmarks/churn.py --loops ferroloop --families unix
    python3 benchmarks/churn.py --worker ferroloop both tcp 1000   # one run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from core import csv_choice, log, markdown_table, parse_callgrind_total, probe_loop  # noqa: E402
from worker import check, new_loop  # noqa: E402

REQUEST = b"x" * 64
LOOPS = ("asyncio", "uvloop", "ferroloop")
FAMILIES = ("tcp", "unix", "tls")
WORKER_TIMEOUT_S = 600


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self, done: "asyncio.Future[bytes]") -> None:
        self.done = done
        self.received = b""

    def connection_made(self, transport: Any) -> None:
        transport.write(REQUEST)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(REQUEST):
            self.transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self.done.done():
            self.done.set_result(self.received)


def tls_contexts(directory: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway self-signed certificate (made with the openssl command)
    and the server and client contexts that use it."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


async def serve(loop: asyncio.AbstractEventLoop, family: str, path: str, tls: Any = None) -> tuple[Any, Any]:
    if family == "unix":
        server = await loop.create_unix_server(Echo, path, backlog=1024)
        return server, path
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024, ssl=tls[0] if tls else None)
    return server, server.sockets[0].getsockname()[:2]


async def churn_both(loop: asyncio.AbstractEventLoop, family: str, n: int, path: str, tls: Any = None) -> None:
    server, address = await serve(loop, family, path, tls)
    for _ in range(n):
        done: asyncio.Future[bytes] = loop.create_future()
        if family == "unix":
            await loop.create_unix_connection(lambda: Client(done), address)
        elif tls:
            await loop.create_connection(lambda: Client(done), *address, ssl=tls[1], server_hostname="localhost")
        else:
            await loop.create_connection(lambda: Client(done), *address)
        check(await done == REQUEST, "echo mismatch")
    server.close()
    await server.wait_closed()


def load_generator(family: str, address: Any, n: int, threads: int = 2) -> None:
    """Blocking clients: connect, one request, read the echo, close."""
    kind = socket.AF_UNIX if family == "unix" else socket.AF_INET
    errors: list[BaseException] = []

    def run(count: int) -> None:
        try:
            for _ in range(count):
                with socket.socket(kind, socket.SOCK_STREAM) as sock:
                    sock.connect(address)
                    sock.sendall(REQUEST)
                    got = b""
                    while len(got) < len(REQUEST):
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise ConnectionError("server closed early")
                        got += chunk
                    check(got == REQUEST, "echo mismatch")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def worker_main(loop_name: str, shape: str, family: str, n: int) -> None:
    loop = new_loop(loop_name)
    with tempfile.TemporaryDirectory(prefix="churn-") as tmp:
        path = os.path.join(tmp, "s")
        tls = tls_contexts(tmp) if family == "tls" else None
        if shape == "both":
            loop.run_until_complete(churn_both(loop, family, 20, path, tls))  # warm-up
            started = time.process_time()
            loop.run_until_complete(churn_both(loop, family, n, path + "2", tls))
            cpu = time.process_time() - started
        else:
            # The load generator is a child process, so only the server's
            # CPU time is this process's.
            server, address = loop.run_until_complete(serve(loop, family, path))
            code = (
                "import sys, json; sys.path.insert(0, %r)\n"
                "from churn import load_generator\n"
                "load_generator(%r, %r, %d)\n"
            ) % (str(HERE), family, address if family == "unix" else tuple(address), n)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            before = usage.ru_utime + usage.ru_stime
            client = subprocess.Popen([sys.executable, "-c", code])
            finished = loop.create_future()
            threading.Thread(target=lambda: loop.call_soon_threadsafe(finished.set_result, client.wait())).start()
            returncode = loop.run_until_complete(finished)
            check(returncode == 0, f"load generator failed ({returncode})")
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime - before
            server.close()
            loop.run_until_complete(server.wait_closed())
    loop.close()
    print(json.dumps({"loop": loop_name, "shape": shape, "family": family, "n": n, "cpu_s": cpu}))


def run_worker(args: Sequence[str], prefix: Sequence[str] = ()) -> dict[str, Any]:
    proc = subprocess.run(
        [*prefix, sys.executable, str(Path(__file__)), "--worker", *args],
        capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def callgrind_ir(args: Sequence[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="churn-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        run_worker(args, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        return parse_callgrind_total(out.read_text())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=4, metavar=("LOOP", "SHAPE", "FAMILY", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=csv_choice(LOOPS), default=list(LOOPS))
    parser.add_argument("--families", type=csv_choice(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--shapes", type=csv_choice(("both", "server")), default=["both", "server"])
    parser.add_argument("-n", type=int, default=3000, help="connections per timed run (default 3000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--callgrind-n", type=int, nargs=2, default=(100, 400), metavar=("N1", "N2"))
    args = parser.parse_args(argv)
    if args.worker:
        loop_name, shape, family, n = args.worker
        worker_main(loop_name, shape, family, int(n))
        return 0

    loops = [loop for loop in args.loops if probe_loop(loop) is not None]
    cpu: dict[tuple[str, str, str], list[float]] = {}
    # The load generator speaks plain sockets only.
    cells = [(shape, family) for shape in args.shapes for family in args.families if (shape, family) != ("server", "tls")]
    for rep in range(args.reps):
        for shape, family in cells:
            for loop in loops:
                result = run_worker([loop, shape, family, str(args.n)])
                cpu.setdefault((shape, family, loop), []).append(result["cpu_s"] / args.n)
                log(f"rep {rep + 1} {shape}/{family}/{loop}: {result['cpu_s'] / args.n * 1e6:.1f} us/op")
    # Under callgrind only this process is counted: for "server", the
    # load generator (a child process) is not.
    ir: dict[tuple[str, str, str], float] = {}
    if not args.no_callgrind:
        n1, n2 = args.callgrind_n
        for shape, family in cells:
            for loop in loops:
                low = callgrind_ir([loop, shape, family, str(n1)])
                high = callgrind_ir([loop, shape, family, str(n2)])
                ir[(shape, family, loop)] = (high - low) / (n2 - n1)
                log(f"callgrind {shape}/{family}/{loop}: {ir[(shape, family, loop)]:,.0f} instructions/op")

    base = "uvloop" if "uvloop" in loops else loops[0]
    rows = []
    for shape, family in cells:
        for loop in loops:
            us = statistics.median(cpu[(shape, family, loop)]) * 1e6
            base_us = statistics.median(cpu[(shape, family, base)]) * 1e6
            row = [shape, family, loop, f"{us:.1f}", f"{us / base_us:.2f}x"]
            if (shape, family, loop) in ir:
                ours, theirs = ir[(shape, family, loop)], ir[(shape, family, base)]
                row += [f"{ours / 1000:.1f}k", f"{ours / theirs:.2f}x"]
            else:
                row += ["", ""]
            rows.append(row)
    print(markdown_table(["shape", "family", "loop", "CPU us/op", f"vs {base}", "instr/op", f"vs {base}"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
