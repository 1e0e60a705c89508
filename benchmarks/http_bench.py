"""HTTP benchmark: uvicorn + httptools hello world under wrk, per event loop.

Each loop's server (``asgi_server.py``: the same launcher for every loop)
runs in its own process; ``wrk`` loads it from another.  Reported per loop:
requests per second, wrk's mean latency, the server's CPU per request
(utime + stime from /proc/<pid>/stat over the wrk run), wrk's own CPU use,
and ratios to uvloop.

    python3 benchmarks/http_bench.py                  # 3 loops, wrk -t1 -c50 -d10s
    python3 benchmarks/http_bench.py --quick          # 3 s runs
    python3 benchmarks/http_bench.py --loops uvloop,ferroloop --reps 3 --pin
    python3 benchmarks/http_bench.py --json http.json

Needs uvicorn, httptools and wrk (``bash benchmarks/run_network.sh`` installs
them).  See benchmarks/README.md ("Network benchmarks").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core import csv_choice, log, markdown_table, probe_loop
from echo import FerroloopSnapshot, RunFailed, Samples, log_lines, pin_to, positive_int, ratio, start_process, stop_all

HERE = Path(__file__).resolve().parent
SERVER = HERE / "asgi_server.py"
ALL_LOOPS = ("asyncio", "uvloop", "ferroloop")
BASELINE = "uvloop"
CLIENT_BUSY_PCT = 90.0


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of process ``pid``, all threads."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 1:].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(text: str) -> dict[str, Any]:
    """The numbers of wrk's plain report."""
    out: dict[str, Any] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["elapsed_s"] = float(m.group(2)) * UNITS.get(m.group(3), 1.0)
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["req_per_s"] = float(m.group(1))
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)", text)
    if m:
        out["latency_avg_s"] = float(m.group(1)) * UNITS[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    return out


@dataclass
class HttpServer:
    loop: str
    proc: subprocess.Popen
    port: int
    loop_type: str
    log_path: Path


@dataclass
class Result(Samples):
    loop: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None


def start_http_server(loop: str, logdir: Path, cpu: Optional[int]) -> HttpServer:
    log_path = logdir / f"http-{loop}.log"
    proc, fields = start_process([sys.executable, str(SERVER), loop], log_path, cpu, 60,
                                 f"{loop} uvicorn server")
    return HttpServer(loop, proc, int(fields[1]), fields[2], log_path)


def stop_http_server(server: HttpServer) -> list[str]:
    problems = []
    name = f"{server.loop} uvicorn server"
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    else:
        problems.append(f"{name}: exited early with code {server.proc.returncode}")
    try:
        server.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.communicate()
        problems.append(f"{name}: still running 30 s after SIGTERM (killed)")
    # uvicorn re-raises the signal after a graceful shutdown.
    if server.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
        problems.append(f"{name}: exit code {server.proc.returncode}")
    lines = log_lines(server.log_path)
    if lines is None:
        problems.append(f"{name}: its log {server.log_path} has disappeared")
    elif lines:
        shown = "\n    ".join(lines[:25]) + ("\n    ..." if len(lines) > 25 else "")
        problems.append(f"{name}: stderr ({len(lines)} lines, {server.log_path}):\n    {shown}")
    return problems


def run_wrk(wrk: str, server: HttpServer, args: argparse.Namespace, seconds: float,
            cpu: Optional[int]) -> dict[str, Any]:
    """One wrk run; its report plus the server's and wrk's CPU over it."""
    command = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s",
               f"http://127.0.0.1:{server.port}/"]
    cpu0 = proc_cpu_s(server.proc.pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=pin_to(cpu))
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4, not wait: it returns wrk's own CPU time.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if server.proc.poll() is not None:
        raise RunFailed(f"server exited with code {server.proc.returncode} during wrk")
    cpu1 = proc_cpu_s(server.proc.pid)
    if proc.returncode != 0:
        raise RunFailed(f"wrk exit code {proc.returncode}: {out.strip()[-500:]}")
    result = parse_wrk(out)
    if "req_per_s" not in result or not result.get("requests"):
        raise RunFailed(f"no requests completed; wrk said: {out.strip()[-500:]}")
    user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    n = result["requests"]
    result.update(
        wall_s=wall,
        server_cpu_s=user + sys_,
        server_user_s=user,
        server_sys_s=sys_,
        server_cpu_us_per_req=(user + sys_) / n * 1e6,
        server_user_us_per_req=user / n * 1e6,
        server_cpu_pct=(user + sys_) / wall * 100,
        client_cpu_pct=(usage.ru_utime + usage.ru_stime) / wall * 100,
        wrk_output=out,
    )
    if result["socket_errors"] or result["non_2xx"]:
        result["error_note"] = (f"{result['socket_errors']} socket errors, "
                                f"{result['non_2xx']} non-2xx responses")
    return result


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=csv_choice(ALL_LOOPS), default=list(ALL_LOOPS),
                        help="comma-separated loops (default: asyncio,uvloop,ferroloop)")
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--connections", type=positive_int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per run, wrk -d, rounded up to whole seconds (default 10, quick 3)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of an untimed wrk run before the first measurement, rounded up (default 2, quick 1; 0: none)")
    parser.add_argument("--reps", type=positive_int, default=1, help="interleaved repetitions (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 s runs after a 1 s warm-up")
    parser.add_argument("--pin", action="store_true", help="pin servers to CPU 1 and wrk to CPU 0")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="wrk binary")
    parser.add_argument("--logdir", type=Path, help="keep server logs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all raw numbers here")
    args = parser.parse_args(argv)
    # wrk takes whole seconds only.
    args.duration = max(1, math.ceil(args.duration or (3 if args.quick else 10)))
    args.warmup = max(0, math.ceil(args.warmup if args.warmup is not None else (1 if args.quick else 2)))
    return args


def versions_of(loops: Sequence[str]) -> dict[str, str]:
    versions = {loop: v for loop in loops if (v := probe_loop(loop)) is not None}
    return versions


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if shutil.which(args.wrk) is None:
        log(f"wrk not found ({args.wrk}); apt-get install -y wrk")
        return 1
    for module in ("uvicorn", "httptools"):
        if package_version(module) == "not installed":
            log(f"{module} is not installed; pip install uvicorn httptools")
            return 1
    with tempfile.TemporaryDirectory(prefix="ferroloop-snapshot-") as snapdir:
        snapshot = FerroloopSnapshot.take(Path(snapdir)) if "ferroloop" in args.loops else None
        return run(args, snapshot)


def run(args: argparse.Namespace, snapshot: Optional[FerroloopSnapshot]) -> int:
    versions = versions_of(args.loops)
    loops = list(versions)
    if not loops:
        log("no loop available")
        return 1
    server_cpu, client_cpu = (1, 0) if args.pin and (os.cpu_count() or 1) >= 2 else (None, None)
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="ferroloop-http-"))
    logdir.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    env = (
        f"CPython {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {load} at start); "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; uvicorn {package_version('uvicorn')}, httptools {package_version('httptools')}."
        + (f" {snapshot.describe()}." if snapshot is not None and "ferroloop" in versions else "")
        + f" wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after a {args.warmup:g} s warm-up;"
        + f" median of {args.reps} interleaved run(s)"
        + ("; server pinned to CPU 1, wrk to CPU 0." if server_cpu is not None else ".")
    )
    problems: list[str] = []
    results = {loop: Result(loop) for loop in loops}
    servers: dict[str, HttpServer] = {}
    try:
        for loop in loops:
            try:
                servers[loop] = start_http_server(loop, logdir, server_cpu)
                log(f"[server] {loop} pid {servers[loop].proc.pid} port {servers[loop].port} "
                    f"({servers[loop].loop_type})")
            except RunFailed as error:
                results[loop].error = str(error)
                problems.append(str(error))
        for rep in range(1, args.reps + 1):
            for loop in loops:
                server, result = servers.get(loop), results[loop]
                if server is None or result.error:
                    continue
                try:
                    if rep == 1 and args.warmup > 0:
                        run_wrk(args.wrk, server, args, args.warmup, client_cpu)
                    sample = run_wrk(args.wrk, server, args, args.duration, client_cpu)
                except RunFailed as error:
                    result.error = str(error)
                    problems.append(f"{loop}: {error}")
                    log(f"[wrk {rep}/{args.reps}] {loop:9} FAILED: {error}")
                    continue
                if "error_note" in sample:
                    problems.append(f"{loop}: {sample['error_note']}")
                result.samples.append(sample)
                log(f"[wrk {rep}/{args.reps}] {loop:9} {sample['req_per_s']:>9,.0f} req/s  latency "
                    f"{sample.get('latency_avg_s', 0) * 1e3:6.2f} ms  server "
                    f"{sample['server_cpu_us_per_req']:6.1f} µs/req ({sample['server_cpu_pct']:.0f}% CPU)"
                    f"  wrk {sample['client_cpu_pct']:.0f}% CPU")
    finally:
        stop_all(list(servers.values()), stop_http_server, problems)

    base = results.get(BASELINE)
    rows = []
    for loop in loops:
        r = results[loop]
        if not r.samples:
            rows.append([loop, "FAILED"] + ["—"] * 9)
            continue
        rps, us = r.median("req_per_s"), r.median("server_cpu_us_per_req")
        lat = r.median("latency_avg_s")
        errors = sum(s["socket_errors"] + s["non_2xx"] for s in r.samples)
        rows.append([
            loop,
            f"{rps:,.0f}",
            ratio(rps, base and base.median("req_per_s")),
            "—" if r.spread is None else f"±{r.spread / 2:.0%}",
            "n/a" if lat is None else f"{lat * 1e3:.2f} ms",
            f"{us:.1f}",
            ratio(us, base and base.median("server_cpu_us_per_req")),
            f"{r.median('server_user_us_per_req'):.1f}",
            f"{r.median('server_cpu_pct'):.0f}%",
            f"{max(s['client_cpu_pct'] for s in r.samples):.0f}%",
            str(errors),
        ])
    print(env)
    print()
    print(markdown_table(
        ["loop", "req/s", "vs uvloop", "spread", "latency", "server µs/req", "vs uvloop",
         "of which user", "server CPU", "wrk CPU", "errors"], rows, left=1))
    busy = [loop for loop in loops for s in results[loop].samples if s["client_cpu_pct"] >= CLIENT_BUSY_PCT]
    if busy:
        print()
        print(f"WARNING: wrk used ≥ {CLIENT_BUSY_PCT:.0f}% of a core for {', '.join(sorted(set(busy)))}: "
              "there it may limit req/s.")
    rebuilt = snapshot.rebuilt_note() if snapshot is not None else None
    if rebuilt:
        print()
        print(rebuilt)
    if problems:
        print()
        print(f"Problems ({len(problems)}):")
        print()
        for p in problems:
            print(f"- {p}")
    if args.json:
        report = {
            "python": platform.python_version(), "environment": env, "versions": versions,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [{"loop": r.loop, "error": r.error, "samples": r.samples,
                         "req_per_s": r.median("req_per_s"),
                         "server_cpu_us_per_req": r.median("server_cpu_us_per_req")}
                        for r in results.values()],
            "problems": problems,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.logdir is None:
        if problems:
            log(f"server logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    failed = any(r.error for r in results.values())
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
