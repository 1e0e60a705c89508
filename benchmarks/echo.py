"""TCP echo benchmark: asyncio, uvloop and ferroloop in one run.

An echo server (``echo_server.py``) runs in its own process, one per
(loop, style); the load comes from ``echo_client`` (a small Rust program in
``echo_client/``, built here with cargo if needed) in another process: each
connection sends a request of the given size, waits for the whole echo,
checks it byte for byte, and sends the next.  Reported per (style, size,
connections, loop): round trips per second, the server's CPU per round trip
(utime + stime from /proc/<pid>/stat over the measured window), the client's
own CPU use, and ratios to uvloop.

    python3 benchmarks/echo.py                       # everything, ~6 min
    python3 benchmarks/echo.py --quick               # smoke run, ~1 min
    python3 benchmarks/echo.py --styles protocol --sizes 1k --conns 1,100
    python3 benchmarks/echo.py --callgrind           # + instructions per request
    python3 benchmarks/echo.py --callgrind-only --styles streams
    python3 benchmarks/echo.py --json echo.json
    python3 benchmarks/echo.py --loops ferroloop,ferroloop-watchdog,ferroloop-watchdog-notrack
                                                     # the stall watchdog's overhead

See benchmarks/README.md ("Network benchmarks") for what each number means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core import csv_choice, log, markdown_table, parse_callgrind_total, probe_loop

HERE = Path(__file__).resolve().parent
SERVER = HERE / "echo_server.py"
CLIENT_DIR = HERE / "echo_client"
CLIENT_BIN = CLIENT_DIR / "target" / "release" / "echo_client"

DEFAULT_LOOPS = ("asyncio", "uvloop", "ferroloop")
# Opt-in, as in core.py: ferroloop with its stall watchdog on (tracking task
# creation sites, as it does by default) and with the sampling thread alone.
WATCHED = ("ferroloop-watchdog", "ferroloop-watchdog-notrack")
ALL_LOOPS = (*DEFAULT_LOOPS, *WATCHED)
CANDIDATE = "ferroloop"
ALL_STYLES = ("sock", "streams", "protocol")
DEFAULT_SIZES = (1024, 10 * 1024, 100 * 1024)
DEFAULT_CONNS = (1, 10, 100)
# Callgrind: (connections, size, gap µs).  One connection with a gap: the
# server waits in epoll for every request, as in a real ping-pong (without
# the gap the ~50x slowed-down server would always find the next request
# already there).  Ten back to back: the server always has work, as a
# saturated one does.
DEFAULT_CALLGRIND_CONFIGS = ((1, 1024, 5000), (10, 1024, 0))
BASELINE = "uvloop"
# For sock_* ferroloop is also compared with the faster of these two:
# uvloop's sock_* methods are slower than asyncio's.
STOCK = ("asyncio", "uvloop")

# The client's share of one core above which it may be what limits req/s.
CLIENT_BUSY_PCT = 90.0
# A connection that got less than this fraction of the busiest connection's
# round trips is reported as starved.
FAIRNESS_FLOOR = 0.5

# Seconds to wait for a server to print READY (valgrind starts slowly).
READY_TIMEOUT_S = 60
CALLGRIND_READY_TIMEOUT_S = 600


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
VALGRIND_LINE = re.compile(r"^(==|--)\d+(==|--)")


class RunFailed(RuntimeError):
    """A server or client failed: reported, and the run exits 1."""


def server_env() -> dict[str, str]:
    """The environment of every server: this process's (PYTHONPATH included,
    so the ferroloop snapshot below) with a fixed hash seed, as core.py's
    workers have, so that callgrind runs repeat."""
    return {**os.environ, "PYTHONHASHSEED": "0"}


@dataclass
class FerroloopSnapshot:
    """A private copy of the ferroloop package the servers import.

    ferroloop's native module may be rebuilt in place while a benchmark runs
    (scripts/dev-build.sh writes into python/ferroloop/): a server then
    measures another build than the previous one did, or dies with SIGBUS as
    the file it has mapped changes.  So the package that would be imported
    is copied once, at the start, and put first on PYTHONPATH.
    """

    source: Path
    copy: Path

    @staticmethod
    def take(into: Path) -> Optional["FerroloopSnapshot"]:
        code = "import ferroloop, os; print(os.path.dirname(os.path.abspath(ferroloop.__file__)))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        source = Path(proc.stdout.strip())
        copy = into / "ferroloop"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(into) + (os.pathsep + old if old else "")
        return FerroloopSnapshot(source, copy)

    @staticmethod
    def _native_mtime(package: Path) -> Optional[float]:
        so = sorted(package.glob("_native*.so"))
        return so[0].stat().st_mtime if so else None

    def describe(self) -> str:
        mtime = self._native_mtime(self.copy)
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime)) if mtime else "?"
        return f"ferroloop copied from {self.source} at the start (native module built {built})"

    def rebuilt_note(self) -> Optional[str]:
        now, then = self._native_mtime(self.source), self._native_mtime(self.copy)
        if now is not None and then is not None and now != then:
            stamp = time.strftime("%H:%M:%S", time.localtime(now))
            return (f"Note: ferroloop's native module in {self.source} was rebuilt during the run "
                    f"(at {stamp}); every ferroloop server ran the copy taken at the start.")
        return None


# --- sizes and options ----------------------------------------------------


def parse_size(text: str) -> int:
    """'1k', '10KiB', '100k', '1024' -> bytes (k = 1024)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1024
    elif t.endswith("m"):
        t, scale = t[:-1], 1024 * 1024
    try:
        value = int(float(t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return value


def size_label(size: int) -> str:
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def csv_of(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse_list(text: str) -> list[Any]:
        items = [parse(item) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse_list


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def parse_config(text: str) -> tuple[int, int, int]:
    """'10x1k' -> (10 connections, 1024 bytes, no gap); '1x1k@5000' -> a
    5000 µs pause between an echo and the connection's next request."""
    spec, _, gap = text.strip().partition("@")
    conns, sep, size = spec.partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected CONNSxSIZE[@GAP_US], e.g. 10x1k or 1x1k@5000: {text!r}")
    gap_us = int(gap) if gap else 0
    if gap_us < 0:
        raise argparse.ArgumentTypeError(f"negative gap: {text!r}")
    return positive_int(conns), parse_size(size), gap_us


# --- the client binary ----------------------------------------------------


def ensure_client(explicit: Optional[Path]) -> Path:
    """The echo_client binary, built with cargo if missing or out of date."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise RunFailed(f"--client {explicit} is not an executable")
        return explicit
    sources = [CLIENT_DIR / "Cargo.toml", CLIENT_DIR / "Cargo.lock", *CLIENT_DIR.glob("src/*.rs")]
    if CLIENT_BIN.exists() and all(
        s.stat().st_mtime <= CLIENT_BIN.stat().st_mtime for s in sources if s.exists()
    ):
        return CLIENT_BIN
    cargo = shutil.which("cargo")
    if cargo is None:
        raise RunFailed("echo_client is not built and cargo is not on PATH")
    base = [cargo, "build", "--release", "--quiet", "--manifest-path", str(CLIENT_DIR / "Cargo.toml"),
            "--target-dir", str(CLIENT_DIR / "target")]
    log("building echo_client (cargo build --release)")
    # Offline first: its dependencies (mio, libc) are the versions ferroloop
    # itself locks, so they are normally in the local registry cache already.
    for extra in (["--offline"], []):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True)
        if proc.returncode == 0 and CLIENT_BIN.exists():
            return CLIENT_BIN
    raise RunFailed("cargo build of echo_client failed:\n" + proc.stderr[-3000:])


# --- servers --------------------------------------------------------------


@dataclass
class Server:
    """One running echo_server.py (or asgi_server.py) process."""

    loop: str
    style: str
    proc: subprocess.Popen
    port: int
    loop_type: str
    log_path: Path
    connections: int = 0  # connections the clients opened to it
    client_failed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def pin_to(cpu: Optional[int]) -> Callable[[], None]:
    """preexec_fn for servers and clients: pin to ``cpu`` (if given), and
    have the kernel send SIGTERM to the child if the thread that started it
    dies, so that a killed benchmark leaves no orphan server behind."""

    def setup() -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: no parent-death signal
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def start_process(
    command: Sequence[str],
    log_path: Path,
    cpu: Optional[int],
    timeout: float,
    what: str,
) -> tuple[subprocess.Popen, list[str]]:
    """Start a server; wait for its ``READY <port> ...`` line; return its fields."""
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env=server_env(),
        preexec_fn=pin_to(cpu),
    )
    log_file.close()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        if not ready:
            proc.kill()
            proc.wait()
            raise RunFailed(f"{what}: no READY line after {timeout:.0f} s\n{log_tail(log_path)}")
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RunFailed(
                f"{what}: exited with code {proc.returncode} before listening\n{log_tail(log_path)}"
            )
        if line.startswith("READY "):
            return proc, line.split()


def start_server(loop: str, style: str, logdir: Path, cpu: Optional[int],
                 prefix: Sequence[str] = (), tag: str = "",
                 ready_timeout: float = READY_TIMEOUT_S, drain_timeout: float = 10.0) -> Server:
    log_path = logdir / f"echo-{loop}-{style}{tag}.log"
    # sys.executable, not "python3": under valgrind a pyenv shim would be
    # the shell script that is measured.
    command = [*prefix, sys.executable, str(SERVER), loop, style,
               "--drain-timeout", str(drain_timeout)]
    proc, fields = start_process(command, log_path, cpu, ready_timeout, f"{loop}/{style} server")
    return Server(loop, style, proc, int(fields[1]), fields[2], log_path)


def stop_server(server: Server, timeout: float = 60.0) -> list[str]:
    """SIGTERM the server, wait, and return the problems seen (empty if none)."""
    problems = []
    name = f"{server.loop}/{server.style} server"
    if server.alive():
        server.proc.send_signal(signal.SIGTERM)
    try:
        out, _ = server.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
        problems.append(f"{name}: still running {timeout:.0f} s after SIGTERM (killed)")
    stats = None
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            stats = json.loads(line)
            break
    rc = server.proc.returncode
    if rc not in (0, -signal.SIGKILL) or stats is None:
        problems.append(f"{name}: exit code {rc}" + ("" if stats else ", no final stats"))
    if stats is not None:
        if stats["accepted"] != stats["closed"]:
            problems.append(
                f"{name}: {stats['accepted'] - stats['closed']} of {stats['accepted']} "
                "connections never closed on the server side"
            )
        if not server.client_failed and stats["accepted"] != server.connections:
            problems.append(
                f"{name}: accepted {stats['accepted']} connections, the clients opened "
                f"{server.connections}"
            )
        if stats.get("errors"):
            problems.append(f"{name}: {stats['errors']} handler errors")
    lines = log_lines(server.log_path)
    if lines is None:
        problems.append(f"{name}: its log {server.log_path} has disappeared")
    elif lines:
        shown = "\n    ".join(lines[:25]) + ("\n    ..." if len(lines) > 25 else "")
        problems.append(f"{name}: stderr ({len(lines)} lines, {server.log_path}):\n    {shown}")
    return problems


def log_lines(path: Path) -> Optional[list[str]]:
    """A server's stderr without valgrind's own lines ("==pid== ..."), or
    None if the log cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return [line for line in text.splitlines() if line.strip() and not VALGRIND_LINE.match(line)]


def stop_all(servers: Sequence[Any], stop: Callable[[Any], list[str]], problems: list[str]) -> None:
    """Stop every server, even if stopping one of them fails."""
    for server in servers:
        try:
            problems.extend(stop(server))
        except Exception as error:  # noqa: BLE001 - the others must still stop
            server.proc.kill()
            server.proc.wait()
            problems.append(f"{server.loop} server: stopping it failed: {error!r}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the client -----------------------------------------------------------


def run_client(
    client: Path,
    server: Server,
    conns: int,
    size: int,
    mode: Sequence[str],
    cpu: Optional[int],
    timeout: float,
) -> dict[str, Any]:
    command = [str(client), "--addr", f"127.0.0.1:{server.port}", "--conns", str(conns),
               "--size", str(size), *mode]
    server.connections += conns
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=pin_to(cpu))
    except subprocess.TimeoutExpired:
        server.client_failed = True
        raise RunFailed(f"echo_client still running after {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode != 0 or "error" in result:
        server.client_failed = True
        reason = result.get("error") or proc.stderr.strip()[-1000:] or f"exit code {proc.returncode}"
        if not server.alive():
            reason += f" (server exited with code {server.proc.returncode})"
        raise RunFailed(reason)
    return result


# --- timing ---------------------------------------------------------------


class Samples:
    """Repeated measurements (one dict per run) and their summaries; shared
    with http_bench.py."""

    samples: list[dict[str, Any]]

    def median(self, key: str) -> Optional[float]:
        values = [s[key] for s in self.samples if s.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def spread(self) -> Optional[float]:
        """(max - min) / median of the req/s samples."""
        values = [s["req_per_s"] for s in self.samples]
        if len(values) < 2:
            return None
        return (max(values) - min(values)) / statistics.median(values)


@dataclass
class Cell(Samples):
    """All samples of one (style, size, conns, loop)."""

    style: str
    size: int
    conns: int
    loop: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def req_per_s(self) -> Optional[float]:
        return self.median("req_per_s")

    @property
    def server_us(self) -> Optional[float]:
        return self.median("server_cpu_us_per_req")

    @property
    def server_user_us(self) -> Optional[float]:
        values = [s["server_user_s"] / s["requests"] * 1e6 for s in self.samples
                  if s.get("server_user_s") is not None and s["requests"]]
        return statistics.median(values) if values else None

    @property
    def client_pct(self) -> Optional[float]:
        values = [s["client_cpu_pct"] for s in self.samples]
        return max(values) if values else None

    @property
    def server_pct(self) -> Optional[float]:
        return self.median("server_cpu_pct")

    @property
    def fairness(self) -> Optional[float]:
        """Worst min/max ratio of per-connection round trips (1 = fair)."""
        values = [s["conn_min"] / s["conn_max"] for s in self.samples if s["conn_max"]]
        return min(values) if values and self.conns > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "style": self.style, "size": self.size, "conns": self.conns, "loop": self.loop,
            "error": self.error, "samples": self.samples, "req_per_s": self.req_per_s,
            "server_cpu_us_per_req": self.server_us, "server_user_us_per_req": self.server_user_us,
            "fairness": self.fairness,
        }


Key = tuple[str, int, int, str]  # style, size, conns, loop


def measure_timings(args: argparse.Namespace, loops: Sequence[str], client: Path,
                    logdir: Path, problems: list[str]) -> dict[Key, Cell]:
    cells: dict[Key, Cell] = {}
    server_cpu, client_cpu = (1, 0) if args.pin else (None, None)
    mode = ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    timeout = args.warmup + args.duration + 60
    for style in args.styles:
        # Every loop's server for this style is up at once (idle ones block
        # in epoll and cost nothing), so that repetitions interleave loops.
        servers: dict[str, Server] = {}
        try:
            for loop in loops:
                try:
                    servers[loop] = start_server(loop, style, logdir, server_cpu)
                    log(f"[server] {loop}/{style} pid {servers[loop].pid} port "
                        f"{servers[loop].port} ({servers[loop].loop_type})")
                except RunFailed as error:
                    problems.append(str(error))
                    log(f"[server] {loop}/{style} FAILED: {error}")
            for rep in range(1, args.reps + 1):
                for size in args.sizes:
                    for conns in args.conns:
                        for loop in loops:
                            cell = cells.setdefault(
                                (style, size, conns, loop), Cell(style, size, conns, loop)
                            )
                            server = servers.get(loop)
                            label = f"{style:8} {size_label(size):>7} x{conns:<3} {loop:9}"
                            if cell.error:
                                continue
                            if server is None or not server.alive():
                                cell.error = "server not running"
                                continue
                            try:
                                result = run_client(
                                    client, server, conns, size,
                                    [*mode, "--server-pid", str(server.pid)], client_cpu, timeout,
                                )
                            except RunFailed as error:
                                cell.error = str(error)
                                problems.append(f"{loop}/{style} {size_label(size)} x{conns}: {error}")
                                log(f"[time {rep}/{args.reps}] {label} FAILED: {error}")
                                continue
                            cell.samples.append(result)
                            log(f"[time {rep}/{args.reps}] {label} {result['req_per_s']:>9,.0f} req/s"
                                f"  server {result['server_cpu_us_per_req']:7.1f} µs/req "
                                f"({result['server_cpu_pct']:.0f}% CPU)"
                                f"  client {result['client_cpu_pct']:.0f}% CPU")
        finally:
            stop_all(list(servers.values()), stop_server, problems)
    return cells


# --- callgrind ------------------------------------------------------------


@dataclass
class CgCell:
    """Instructions per request of one (style, conns, size, loop) server."""

    style: str
    conns: int
    size: int
    gap_us: int
    loop: str
    ir: dict[int, int] = field(default_factory=dict)  # requests -> total Ir
    error: Optional[str] = None

    @property
    def ir_per_req(self) -> Optional[float]:
        if len(self.ir) != 2:
            return None
        (n1, ir1), (n2, ir2) = sorted(self.ir.items())
        return (ir2 - ir1) / (n2 - n1)

    def to_json(self) -> dict[str, Any]:
        return {"style": self.style, "conns": self.conns, "size": self.size, "gap_us": self.gap_us,
                "loop": self.loop,
                "ir": {str(n): v for n, v in sorted(self.ir.items())},
                "ir_per_req": self.ir_per_req, "error": self.error}


def callgrind_server_ir(cell: CgCell, n: int, warmup: int, client: Path, logdir: Path) -> int:
    """Total Ir of a server that served ``warmup`` + ``n`` requests, under callgrind."""
    with tempfile.TemporaryDirectory(prefix="ferroloop-echo-cg-") as tmp:
        out_file = Path(tmp) / "callgrind.out"
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
        tag = f"-cg-{cell.conns}x{cell.size}@{cell.gap_us}-n{n}"
        server = start_server(cell.loop, cell.style, logdir, None, prefix, tag,
                              CALLGRIND_READY_TIMEOUT_S, drain_timeout=120.0)
        try:
            run_client(client, server, cell.conns, cell.size,
                       ["--requests", str(n), "--warmup-requests", str(warmup),
                        "--gap-us", str(cell.gap_us), "--stall-timeout", "300"], None, 3600)
        finally:
            problems = []
            stop_all([server], lambda s: stop_server(s, timeout=600), problems)
        if problems:
            raise RunFailed("; ".join(problems))
        if not out_file.exists():
            raise RunFailed("callgrind wrote no output file")
        return parse_callgrind_total(out_file.read_text())


def config_label(cell: CgCell) -> str:
    return f"{cell.conns}x{size_label(cell.size)}" + (f"@{cell.gap_us}µs" if cell.gap_us else "")


def measure_callgrind(args: argparse.Namespace, loops: Sequence[str], client: Path,
                      logdir: Path, problems: list[str]) -> list[CgCell]:
    cells = [CgCell(style, conns, size, gap, loop)
             for style in args.styles for conns, size, gap in args.callgrind_configs for loop in loops]
    n1, n2 = args.callgrind_requests
    work = [(cell, n) for cell in cells for n in (n1, n2)]

    def run_one(item: tuple[CgCell, int]) -> None:
        cell, n = item
        if cell.error:
            return
        label = f"{cell.style:8} {config_label(cell):14} {cell.loop:9} n={n:<6}"
        try:
            cell.ir[n] = callgrind_server_ir(cell, n, args.callgrind_warmup, client, logdir)
        except RunFailed as error:
            cell.error = str(error)
            problems.append(f"callgrind {cell.loop}/{cell.style} {config_label(cell)}: {error}")
            log(f"[callgrind] {label} FAILED: {error}")
            return
        log(f"[callgrind] {label} Ir={cell.ir[n]:,}")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(run_one, work))
    return cells


# --- reporting ------------------------------------------------------------


def ratio(value: Optional[float], base: Optional[float]) -> str:
    if value is None or not base:
        return "n/a"
    return f"{value / base:.2f}×"


def fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def style_table(style: str, cells: dict[Key, Cell], args: argparse.Namespace,
                loops: Sequence[str]) -> str:
    with_best = style == "sock" and all(l in loops for l in STOCK)
    headers = ["size", "conns", "loop", "req/s", "vs uvloop"]
    if with_best:
        headers.append("vs best stock")
    headers += ["spread", "server µs/req", "vs uvloop"]
    if with_best:
        headers.append("vs best stock")
    headers += ["of which user", "server CPU", "client CPU", "fairness"]
    rows = []
    for size in args.sizes:
        for conns in args.conns:
            base = cells.get((style, size, conns, BASELINE))
            stock = [c for l in STOCK if (c := cells.get((style, size, conns, l))) and c.req_per_s]
            best_rps = max((c.req_per_s for c in stock), default=None)
            best_cpu = min((c.server_us for c in stock if c.server_us), default=None)
            for loop in loops:
                c = cells.get((style, size, conns, loop))
                if c is None:
                    continue
                if not c.samples:
                    failed = ["FAILED"] + ["—"] * (len(headers) - 4)
                    rows.append([size_label(size), str(conns), loop, *failed])
                    continue
                row = [size_label(size), str(conns), loop, f"{c.req_per_s:,.0f}",
                       ratio(c.req_per_s, base and base.req_per_s)]
                if with_best:
                    row.append(ratio(c.req_per_s, best_rps))
                row += [
                    "—" if c.spread is None else f"±{c.spread / 2:.0%}",
                    fmt(c.server_us, ".1f"),
                    ratio(c.server_us, base and base.server_us),
                ]
                if with_best:
                    row.append(ratio(c.server_us, best_cpu))
                row += [
                    fmt(c.server_user_us, ".1f"),
                    f"{c.server_pct:.0f}%" if c.server_pct is not None else "n/a",
                    f"{c.client_pct:.0f}%" if c.client_pct is not None else "n/a",
                    "—" if c.fairness is None else f"{c.fairness:.2f}",
                ]
                rows.append(row)
    return markdown_table(headers, rows, left=3)


def geomean(values: list[float]) -> Optional[float]:
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary_table(cells: dict[Key, Cell], args: argparse.Namespace, loops: Sequence[str]) -> Optional[str]:
    """Per style and loop: geometric means over sizes and connection counts."""
    if BASELINE not in loops:
        return None
    rows = []
    for style in args.styles:
        for loop in loops:
            rps, cpu = [], []
            for size in args.sizes:
                for conns in args.conns:
                    c, b = cells.get((style, size, conns, loop)), cells.get((style, size, conns, BASELINE))
                    if c and b and c.samples and b.samples:
                        rps.append(c.req_per_s / b.req_per_s)
                        if c.server_us and b.server_us:
                            cpu.append(c.server_us / b.server_us)
            g_rps, g_cpu = geomean(rps), geomean(cpu)
            rows.append([style, loop, fmt(g_rps, ".2f") + "×" if g_rps else "n/a",
                         fmt(g_cpu, ".2f") + "×" if g_cpu else "n/a", str(len(rps))])
    return markdown_table(["style", "loop", "req/s vs uvloop", "server µs/req vs uvloop", "cells"],
                          rows, left=2)


def callgrind_table(cg: list[CgCell], loops: Sequence[str]) -> str:
    base = {(c.style, c.conns, c.size, c.gap_us): c.ir_per_req for c in cg if c.loop == BASELINE}
    rows = []
    for c in cg:
        n = sorted(c.ir)
        rows.append([
            c.style, f"{c.conns}", size_label(c.size), f"{c.gap_us} µs" if c.gap_us else "none", c.loop,
            "FAILED" if c.error else fmt(c.ir_per_req, ",.0f"),
            ratio(c.ir_per_req, base.get((c.style, c.conns, c.size, c.gap_us))),
            ", ".join(f"{c.ir[k]:,}" for k in n) or "n/a",
        ])
    return markdown_table(["style", "conns", "size", "gap", "loop", "instr/req", "vs uvloop", "Ir (N1, N2)"],
                          rows, left=5)


def watchdog_table(cells: dict[Key, Cell], cg: list[CgCell], args: argparse.Namespace,
                   loops: Sequence[str]) -> Optional[str]:
    """ferroloop with the watchdog on, relative to off: server CPU and
    instructions per request (the costs), and req/s."""
    if CANDIDATE not in loops:
        return None
    instructions = {(c.style, c.conns, c.size, c.gap_us, c.loop): c.ir_per_req for c in cg}
    rows = []
    for variant in (v for v in WATCHED if v in loops):
        for style in args.styles:
            for size in args.sizes:
                for conns in args.conns:
                    on, off = cells.get((style, size, conns, variant)), cells.get((style, size, conns, CANDIDATE))
                    if on and off and on.samples and off.samples:
                        rows.append([variant, style, size_label(size), str(conns),
                                     ratio(on.server_us, off.server_us), ratio(on.req_per_s, off.req_per_s), "—"])
            for c in cg:
                if c.loop == variant and c.style == style:
                    off_ir = instructions.get((c.style, c.conns, c.size, c.gap_us, CANDIDATE))
                    gap = f"@{c.gap_us} µs" if c.gap_us else ""
                    rows.append([variant, style, size_label(c.size) + gap, str(c.conns), "—", "—",
                                 ratio(c.ir_per_req, off_ir)])
    if not rows:
        return None
    return markdown_table(["loop", "style", "size", "conns", "server µs/req on/off", "req/s on/off",
                           "instr/req on/off"], rows, left=4)


def client_busy_note(cells: dict[Key, Cell]) -> Optional[str]:
    busy = [c for c in cells.values() if c.client_pct and c.client_pct >= CLIENT_BUSY_PCT]
    if not busy:
        peak = max((c.client_pct for c in cells.values() if c.client_pct), default=None)
        if peak is None:
            return None
        return (f"Client CPU peaked at {peak:.0f}% of one core (< {CLIENT_BUSY_PCT:.0f}%): "
                "the client was not the bottleneck.")
    names = ", ".join(f"{c.loop}/{c.style} {size_label(c.size)} x{c.conns}" for c in busy[:8])
    return (f"WARNING: the client used ≥ {CLIENT_BUSY_PCT:.0f}% of a core in {len(busy)} cells "
            f"({names}): there it may limit req/s.")


def fairness_notes(cells: dict[Key, Cell]) -> list[str]:
    return [
        f"{c.loop}/{c.style} {size_label(c.size)} x{c.conns}: the least served "
        f"connection got {c.fairness:.2f} of the busiest one's round trips"
        for c in cells.values() if c.fairness is not None and c.fairness < FAIRNESS_FLOOR
    ]


def environment_line(versions: dict[str, str], args: argparse.Namespace, client: Path,
                     snapshot: Optional[FerroloopSnapshot]) -> str:
    loops = ", ".join(f"{name} {v}" for name, v in versions.items())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (f"CPython {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs "
            f"(load average {load} at start); {loops}.")
    if snapshot is not None and any(name.startswith("ferroloop") for name in versions):
        text += f" {snapshot.describe()}."
    if not args.callgrind_only:
        text += (f" Median of {args.reps} interleaved run(s); each {args.duration:g} s measured after "
                 f"{args.warmup:g} s warm-up; client {client.relative_to(HERE.parent) if client.is_relative_to(HERE.parent) else client}"
                 f"{'; server pinned to CPU 1, client to CPU 0' if args.pin else ''}.")
    return text


# --- command line ---------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=csv_choice(ALL_LOOPS), default=list(DEFAULT_LOOPS),
                        help="comma-separated loops (default: asyncio,uvloop,ferroloop; add "
                             "ferroloop-watchdog(-notrack) for the stall watchdog's overhead)")
    parser.add_argument("--styles", type=csv_choice(ALL_STYLES), default=list(ALL_STYLES),
                        help="comma-separated server styles: sock,streams,protocol (default: all)")
    parser.add_argument("--sizes", type=csv_of(parse_size),
                        help="message sizes, e.g. 1k,10k,100k (default; k = 1024 bytes)")
    parser.add_argument("--conns", type=csv_of(positive_int),
                        help="concurrent connections, e.g. 1,10,100 (default)")
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 3, quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each window (default 1, quick 0.5)")
    parser.add_argument("--reps", type=positive_int, default=1, help="interleaved repetitions (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 1k,100k, conns 1,10, 1 s windows; small callgrind counts")
    parser.add_argument("--pin", action="store_true",
                        help="pin servers to CPU 1 and the client to CPU 0 (off by default: on a "
                             "shared machine the other core may be busy)")
    parser.add_argument("--callgrind", action="store_true",
                        help="also measure server instructions per request under callgrind")
    parser.add_argument("--callgrind-only", action="store_true", help="only the callgrind measurement")
    parser.add_argument("--callgrind-configs", type=csv_of(parse_config),
                        help="CONNSxSIZE[@GAP_US] list for callgrind (default 1x1k@5000,10x1k): "
                             "@GAP_US pauses each connection that many µs between an echo and its "
                             "next request, so that the slowed-down server waits for every request")
    parser.add_argument("--callgrind-requests", type=csv_of(positive_int),
                        help="N1,N2 measured requests of the two callgrind runs (default 2000,4000; quick 500,1000)")
    parser.add_argument("--callgrind-warmup", type=int,
                        help="warm-up requests per connection in each callgrind run (default 200, quick 50)")
    parser.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="parallel callgrind runs (default 2)")
    parser.add_argument("--client", type=Path, help="echo_client binary (default: build echo_client/)")
    parser.add_argument("--logdir", type=Path, help="keep server logs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all raw numbers here")
    args = parser.parse_args(argv)
    q = args.quick
    args.sizes = args.sizes or ([1024, 100 * 1024] if q else list(DEFAULT_SIZES))
    args.conns = args.conns or ([1, 10] if q else list(DEFAULT_CONNS))
    args.duration = args.duration or (1.0 if q else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    args.callgrind_configs = args.callgrind_configs or list(DEFAULT_CALLGRIND_CONFIGS)
    args.callgrind_requests = args.callgrind_requests or ([500, 1000] if q else [2000, 4000])
    args.callgrind_warmup = args.callgrind_warmup if args.callgrind_warmup is not None else (50 if q else 200)
    if len(args.callgrind_requests) != 2 or args.callgrind_requests[0] >= args.callgrind_requests[1]:
        parser.error("--callgrind-requests takes two counts N1 < N2")
    if args.callgrind_only:
        args.callgrind = True
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.callgrind and shutil.which("valgrind") is None:
        log("valgrind not found: no instructions/request")
        if args.callgrind_only:
            return 1
        args.callgrind = False
    if args.pin and (os.cpu_count() or 1) < 2:
        log("--pin needs 2 CPUs; not pinning")
        args.pin = False
    try:
        client = ensure_client(args.client)
    except RunFailed as error:
        log(str(error))
        return 1
    with tempfile.TemporaryDirectory(prefix="ferroloop-snapshot-") as snapdir:
        wants_ferroloop = any(loop.startswith("ferroloop") for loop in args.loops)
        snapshot = FerroloopSnapshot.take(Path(snapdir)) if wants_ferroloop else None
        return run(args, client, snapshot)


def run(args: argparse.Namespace, client: Path, snapshot: Optional[FerroloopSnapshot]) -> int:
    versions = {loop: v for loop in args.loops if (v := probe_loop(loop)) is not None}
    loops = list(versions)
    if not loops:
        log("no loop available")
        return 1
    problems: list[str] = []
    if args.logdir:
        args.logdir.mkdir(parents=True, exist_ok=True)
        logdir = args.logdir
    else:
        logdir = Path(tempfile.mkdtemp(prefix="ferroloop-echo-"))

    env = environment_line(versions, args, client, snapshot)
    cells: dict[Key, Cell] = {}
    cg: list[CgCell] = []
    if not args.callgrind_only:
        cells = measure_timings(args, loops, client, logdir, problems)
    if args.callgrind:
        cg = measure_callgrind(args, loops, client, logdir, problems)

    print(env)
    for style in (args.styles if cells else []):
        print()
        print(f"### {style}")
        print()
        print(style_table(style, cells, args, loops))
    if cells:
        summary = summary_table(cells, args, loops)
        if summary:
            print()
            print("Geometric means over sizes and connection counts, relative to uvloop:")
            print()
            print(summary)
        note = client_busy_note(cells)
        if note:
            print()
            print(note)
    if cg:
        n1, n2 = args.callgrind_requests
        print()
        print(f"Server instructions per request (callgrind, ΔIr/ΔN between runs of {n1:,} and {n2:,} "
              f"requests after {args.callgrind_warmup} warm-up requests per connection):")
        print()
        print(callgrind_table(cg, loops))
    watchdog = watchdog_table(cells, cg, args, loops)
    if watchdog:
        print()
        print(f"Stall watchdog overhead (against {CANDIDATE}, same run; > 1 costs more):")
        print()
        print(watchdog)
    rebuilt = snapshot.rebuilt_note() if snapshot is not None else None
    if rebuilt:
        print()
        print(rebuilt)
    unfair = fairness_notes(cells)
    if unfair:
        print()
        print(f"Unfair cells ({len(unfair)}; reported, not failures):")
        print()
        for note in unfair:
            print(f"- {note}")
    if problems:
        print()
        print(f"Problems ({len(problems)}):")
        print()
        for p in problems:
            print(f"- {p}")
    if args.json:
        report = {
            "python": platform.python_version(),
            "environment": env,
            "versions": versions,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "echo": [c.to_json() for c in cells.values()],
            "callgrind": [c.to_json() for c in cg],
            "unfair": unfair,
            "problems": problems,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.logdir is None:
        if problems:
            log(f"server logs kept in {logdir}")  # the problems point at them
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    failed = any(c.error for c in cells.values()) or any(c.error for c in cg)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
