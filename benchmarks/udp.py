"""UDP benchmark: asyncio, uvloop and ferroloop in one run.

Two loads, both ends in one process on loopback, with datagram transports
from ``create_datagram_endpoint``:

* ``pingpong``: a connected client sends 256 bytes, an unconnected server
  answers each datagram to its source address (``sendto(data, addr)``), the
  client sends the next one on each answer. One op is one round trip.
* ``flood``: one sender, one receiver, 256-byte datagrams in windows of 64:
  the receiver acknowledges each 64th datagram and the sender then sends the
  next 64 at once (so the receiver's socket buffer never overflows and
  nothing is dropped on loopback). One op is one datagram delivered.

Reported per (load, loop): CPU time per op (user + system of the process,
``time.process_time``, median of interleaved runs) and, with ``--callgrind``,
instructions per op under ``valgrind --tool=callgrind``: the difference of two
runs with N1 and N2 ops, divided by N2 - N1, which cancels start-up and
imports (as ``core.py`` does).

    python3 benchmarks/udp.py                        # timings, all three loops
    python3 benchmarks/udp.py --callgrind            # + instructions per op
    python3 benchmarks/udp.py --callgrind-only --loads pingpong
    python3 benchmarks/udp.py --json udp.json

Each measurement runs in a fresh subprocess (this file with ``--worker``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from worker import new_loop  # noqa: E402  # the loop asked for, checked

LOOPS = ("asyncio", "uvloop", "ferroloop")
LOADS = ("pingpong", "flood")
BASELINE = "uvloop"
CANDIDATE = "ferroloop"
SIZE = 256
WINDOW = 64
WARMUP = {"pingpong": 500, "flood": 5 * WINDOW * 10}
TIMED_OPS = {"pingpong": 50_000, "flood": 200_000}
CALLGRIND_OPS = {"pingpong": (2_000, 4_000), "flood": (12_800, 25_600)}
# The project's goal for ferroloop's instructions per op, relative to uvloop.
IR_TARGETS = {"pingpong": 0.8}
WORKER_ENV = {**os.environ, "PYTHONHASHSEED": "0"}
WORKER_TIMEOUT_S = 900


# --- the worker -----------------------------------------------------------


async def pingpong(warmup: int, n: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    payload = b"p" * SIZE

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.left = 0
            self.done: asyncio.Future[None] = loop.create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def start(self, rounds: int) -> None:
            self.left = rounds
            self.done = loop.create_future()
            self.transport.sendto(payload)

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if len(data) != SIZE:
                raise AssertionError(f"got {len(data)} bytes")
            self.left -= 1
            if self.left:
                self.transport.sendto(payload)
            else:
                self.done.set_result(None)

    server, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    client, protocol = await loop.create_datagram_endpoint(Client, remote_addr=server.get_extra_info("sockname"))
    protocol.start(warmup)
    await asyncio.wait_for(protocol.done, 60)
    cpu, wall = time.process_time(), time.perf_counter()
    protocol.start(n)
    await asyncio.wait_for(protocol.done, 600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    client.close()
    server.close()
    await asyncio.sleep(0)
    return cpu, wall


async def flood(warmup: int, n: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    payload = b"f" * SIZE

    class Receiver(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.count = 0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if len(data) != SIZE:
                raise AssertionError(f"got {len(data)} bytes")
            self.count += 1
            if self.count % WINDOW == 0:
                self.transport.sendto(b"ack", addr)

    class Sender(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.left = 0
            self.done: asyncio.Future[None] = loop.create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def start(self, datagrams: int) -> None:
            self.left = datagrams // WINDOW
            self.done = loop.create_future()
            self.window()

        def window(self) -> None:
            sendto = self.transport.sendto
            for _ in range(WINDOW):
                sendto(payload)

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.left -= 1
            if self.left:
                self.window()
            else:
                self.done.set_result(None)

    receiver, receiving = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    sender, protocol = await loop.create_datagram_endpoint(Sender, remote_addr=receiver.get_extra_info("sockname"))
    protocol.start(warmup)
    await asyncio.wait_for(protocol.done, 60)
    cpu, wall = time.process_time(), time.perf_counter()
    protocol.start(n)
    await asyncio.wait_for(protocol.done, 600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if receiving.count != warmup + n:
        raise AssertionError(f"received {receiving.count} of {warmup + n} datagrams")
    sender.close()
    receiver.close()
    await asyncio.sleep(0)
    return cpu, wall


def worker(loop_name: str, load: str, n: int) -> int:
    loop = new_loop(loop_name)
    try:
        body = pingpong if load == "pingpong" else flood
        cpu, wall = loop.run_until_complete(body(WARMUP[load], n))
    finally:
        loop.close()
    print(json.dumps({"loop": loop_name, "load": load, "n": n, "cpu_s": cpu, "wall_s": wall}))
    return 0


# --- the driver -----------------------------------------------------------

from core import csv_choice, log, markdown_table, parse_callgrind_total, probe_loop  # noqa: E402


def run_worker(loop: str, load: str, n: int, prefix: Sequence[str] = ()) -> dict[str, Any]:
    command = [*prefix, sys.executable, str(HERE), "--worker", loop, load, str(n)]
    proc = subprocess.run(command, capture_output=True, text=True, env=WORKER_ENV, timeout=WORKER_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{loop}/{load} (n={n}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def callgrind_total(loop: str, load: str, n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ferroloop-udp-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        run_worker(loop, load, n, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        return parse_callgrind_total(out.read_text())


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}×"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("LOOP", "LOAD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=csv_choice(LOOPS), default=list(LOOPS))
    parser.add_argument("--loads", type=csv_choice(LOADS), default=list(LOADS))
    parser.add_argument("--reps", type=int, default=5, help="timing runs per (load, loop), interleaved")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per op")
    parser.add_argument("--callgrind-only", action="store_true", help="only count instructions per op")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs in parallel")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.worker:
        loop, load, n = args.worker
        return worker(loop, load, int(n))

    versions = {loop: v for loop in args.loops if (v := probe_loop(loop)) is not None}
    loops = [loop for loop in args.loops if loop in versions]
    cpu: dict[tuple[str, str], list[float]] = {}
    if not args.callgrind_only:
        for rep in range(args.reps):
            for load in args.loads:
                for loop in loops:
                    result = run_worker(loop, load, TIMED_OPS[load])
                    cpu.setdefault((load, loop), []).append(result["cpu_s"] / TIMED_OPS[load] * 1e6)
                    log(f"[{rep + 1}/{args.reps}] {load} {loop}: {cpu[(load, loop)][-1]:.2f} µs CPU/op")
    ir: dict[tuple[str, str], float] = {}
    if args.callgrind or args.callgrind_only:
        cells = [(load, loop, n) for load in args.loads for loop in loops for n in CALLGRIND_OPS[load]]
        totals: dict[tuple[str, str, int], int] = {}

        def run_one(cell: tuple[str, str, int]) -> None:
            load, loop, n = cell
            totals[cell] = callgrind_total(loop, load, n)
            log(f"[callgrind] {cell[0]} {cell[1]} n={cell[2]}: Ir={totals[cell]:,}")

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(run_one, cells))
        for load in args.loads:
            n1, n2 = CALLGRIND_OPS[load]
            for loop in loops:
                ir[(load, loop)] = (totals[(load, loop, n2)] - totals[(load, loop, n1)]) / (n2 - n1)

    header = ["load", "loop"]
    if cpu:
        header += ["µs CPU/op", f"vs {BASELINE}"]
    if ir:
        header += ["instr/op", f"vs {BASELINE}"]
    rows = []
    for load in args.loads:
        for loop in loops:
            row = [load, loop]
            if cpu:
                median = statistics.median(cpu[(load, loop)])
                base = statistics.median(cpu[(load, BASELINE)]) if (load, BASELINE) in cpu else None
                row += [f"{median:.2f}", ratio(median, base)]
            if ir:
                row += [f"{ir[(load, loop)]:,.0f}", ratio(ir[(load, loop)], ir.get((load, BASELINE)))]
            rows.append(row)
    print()
    print(
        f"CPython {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        + ", ".join(f"{loop} {versions[loop]}" for loop in loops)
        + f". {SIZE}-byte datagrams; µs CPU/op: median of {args.reps} interleaved runs of "
        + ", ".join(f"{load} {TIMED_OPS[load]:,}" for load in args.loads)
        + " ops; instr/op: ΔIr/ΔN between callgrind runs of "
        + ", ".join(f"{load} {CALLGRIND_OPS[load][0]:,}/{CALLGRIND_OPS[load][1]:,}" for load in args.loads)
        + " ops."
    )
    print()
    print(markdown_table(header, rows))
    for load, target in IR_TARGETS.items():
        if (load, CANDIDATE) in ir and (load, BASELINE) in ir:
            value = ir[(load, CANDIDATE)] / ir[(load, BASELINE)]
            verdict = "met" if value <= target else "NOT met"
            print(f"\ntarget {load}: {CANDIDATE} ≤ {target:.2f}× {BASELINE}'s instructions per op: {value:.2f}× ({verdict})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "versions": versions,
                    "cpu_us_per_op": {f"{load}/{loop}": v for (load, loop), v in cpu.items()},
                    "instr_per_op": {f"{load}/{loop}": v for (load, loop), v in ir.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
