#!/usr/bin/env python3
"""Run CPython's own asyncio test suite on ferroloop, uvloop and stock asyncio.

Every (loop, suite) pair runs in a child process (cpython_harness.py) so that
results are isolated and a hang or a crash in the loop under test is contained:
a test that outlives --test-timeout or kills the interpreter is recorded as an
error and the child is restarted without it; a suite that outlives --timeout
is reported as timed out with whatever had finished.

Exit status: 0 iff the gating loop -- ferroloop when it is selected, otherwise
every selected loop -- was available and had no failures, errors, hung or
crashed tests in the selected suites.  --report-only always exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from child_processes import innermost_frame, kill_group, signal_name

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "cpython_harness.py"
sys.path.insert(0, str(HERE))

# The harness imports asyncio but no test module at import time.
from cpython_harness import CORE, GROUPS, LOOPS, SUITES, Suite  # noqa: E402

# Tests a loop is known to fail, each with its reason. They still run and are
# listed in every report; the exit status does not count them, and one that
# starts passing is reported so that its entry gets removed.
KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "ferroloop": {
        "test_events.LoopUnderTestEventLoopTests.test_timeout_rounding":
            "its assertion message reads loop._selector, an attribute only selector-based "
            "loops have; the iteration count it checks is 12 on ferroloop (limit 20)",
    },
}

MAX_ATTEMPTS = 25        # restarts per suite after hangs/crashes
KILL_GRACE = 5.0         # the child dumps stacks at test_timeout; we kill after this
POLL_INTERVAL = 0.1
ID_PREFIX = "test.test_asyncio."


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass
class SuiteRun:
    loop: str
    suite: str
    status: str = "ok"           # ok | timeout | aborted | unavailable
    note: str = ""
    elapsed: float = 0.0
    attempts: int = 0
    info: dict[str, Any] = field(default_factory=dict)   # the child's "hello"
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, *outcomes: str) -> int:
        return sum(1 for t in self.tests.values() if t["outcome"] in outcomes)

    @property
    def passed(self) -> int:
        return self.count("success", "expected_failure")

    @property
    def failed(self) -> int:
        return self.count("failure", "unexpected_success")

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def clean(self) -> bool:
        """No failures other than the loop's known ones (KNOWN_FAILURES)."""
        known = KNOWN_FAILURES.get(self.loop, {})
        return self.status == "ok" and all(
            short(t["id"]) in known for t in self.tests.values()
            if t["outcome"] in ("failure", "error", "unexpected_success"))

    def loops_total(self, kind: str) -> int:
        return sum(t["loops"][kind] for t in self.tests.values())

    def usage(self, kind: str) -> int:
        return sum(1 for t in self.tests.values()
                   if t["outcome"] != "skipped" and t["usage"] == kind)

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "note": self.note, "elapsed": round(self.elapsed, 1),
                "attempts": self.attempts, "run": len(self.tests), "passed": self.passed,
                "failed": self.failed, "errors": self.errors, "skipped": self.skipped,
                "loops_created": {k: self.loops_total(k)
                                  for k in ("under_test", "foreign", "virtual", "stock")},
                "tests_by_loop": {k: self.usage(k)
                                  for k in ("loop_under_test", "virtual", "stock", "none")}}


# ---------------------------------------------------------------------------
# Running one suite on one loop
# ---------------------------------------------------------------------------

class ChildWatch:
    """Follows one child: its JSON-lines events, its log, its deadlines."""

    def __init__(self, events: Path, log: Path, echo: bool) -> None:
        self.events, self.log, self.echo = events, log, echo
        self._events_pos = self._log_pos = 0
        self._partial = ""
        self.records: list[dict[str, Any]] = []
        self.current: str | None = None       # test started, no result yet
        self.current_since = 0.0
        self.done = False
        self.unavailable: str | None = None
        self.hello: dict[str, Any] = {}

    def poll(self) -> None:
        if self.events.exists():
            with open(self.events, encoding="utf-8") as f:
                f.seek(self._events_pos)
                chunk = f.read()
                self._events_pos = f.tell()
            lines = (self._partial + chunk).split("\n")
            self._partial = lines.pop()          # keep an incomplete last line
            for line in lines:
                if line.strip():
                    self._handle(json.loads(line))
        if self.echo and self.log.exists():
            with open(self.log, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
                self._log_pos = f.tell()
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.current, self.current_since = event["id"], time.monotonic()
        elif kind == "result":
            self.records.append(event)
            if event["id"] == self.current:
                self.current = None
        elif kind == "done":
            self.done = True
        elif kind == "unavailable":
            self.unavailable = event["error"]
        elif kind == "hello":
            self.hello = event


def run_suite(loop: str, suite: Suite, opts: argparse.Namespace, log_dir: Path) -> SuiteRun:
    run = SuiteRun(loop, suite.name)
    skip: list[str] = []
    started = time.monotonic()
    deadline = started + opts.timeout
    slug = re.sub(r"\W+", "_", suite.name).strip("_")

    while True:
        run.attempts += 1
        base = log_dir / f"{loop}-{slug}-{run.attempts}"
        events, log, skip_file = (base.with_suffix(".jsonl"), base.with_suffix(".log"),
                                  base.with_suffix(".skip"))
        skip_file.write_text("".join(f"{test_id}\n" for test_id in skip))
        cmd = [sys.executable, str(HARNESS), "--loop", loop, "--suite", suite.name,
               "--events", str(events), "--skip-file", str(skip_file),
               "--verbosity", "2" if opts.verbose else "1",
               "--test-timeout", str(opts.test_timeout)]
        if opts.pristine:
            cmd.append("--pristine")
        watch = ChildWatch(events, log, echo=opts.verbose)
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        why_killed = ""
        try:
            while proc.poll() is None:
                watch.poll()
                now = time.monotonic()
                if now > deadline:
                    why_killed = "suite-timeout"
                elif watch.current and now - watch.current_since > opts.test_timeout + KILL_GRACE:
                    why_killed = "test-timeout"
                if why_killed:
                    kill_group(proc)
                    break
                time.sleep(POLL_INTERVAL)
        finally:
            if proc.poll() is None:       # KeyboardInterrupt or an error here
                kill_group(proc)
        watch.poll()
        run.info = run.info or watch.hello
        for record in watch.records:
            run.tests[record["id"]] = record

        if watch.unavailable:
            run.status, run.note = "unavailable", watch.unavailable
            break
        if watch.done and not why_killed:
            break

        log_text = log.read_text(encoding="utf-8", errors="replace")
        hung = watch.current
        if hung:
            if why_killed:
                frame = innermost_frame(log_text, "Timeout (")
                reason = (f"HANG: no result after {time.monotonic() - watch.current_since:.0f}s"
                          + (f" (stuck at {frame})" if frame else ""))
            else:
                frame = innermost_frame(log_text, "Fatal Python error")
                reason = (f"CRASH: child died with {signal_name(proc.returncode)}"
                          + (f" at {frame}" if frame else ""))
            run.tests[hung] = {"id": hung, "outcome": "error", "reason": reason,
                               "where": "", "traceback": log_text[-4000:], "duration": 0.0,
                               "loops": {"under_test": 0, "foreign": 0, "virtual": 0,
                                         "stock": 0},
                               "usage": "unknown"}
        if why_killed == "suite-timeout":
            run.status = "timeout"
            run.note = f"suite exceeded {opts.timeout:.0f}s" + (f" in {hung}" if hung else "")
            break
        if not hung:
            # Died between tests (import error, module fixture, teardown):
            # a restart would just do the same thing again.
            run.status = "aborted"
            run.note = (f"child ended with {signal_name(proc.returncode)} outside a test; "
                        f"see {log}")
            break
        if run.attempts >= MAX_ATTEMPTS:
            run.status, run.note = "aborted", f"gave up after {run.attempts} restarts"
            break
        skip = sorted(run.tests)              # finished + the hung/crashed one
    run.elapsed = time.monotonic() - started
    return run


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def short(test_id: str) -> str:
    return test_id[len(ID_PREFIX):] if test_id.startswith(ID_PREFIX) else test_id


def table(headers: list[str], rows: list[list[str]], groups: list[tuple[str, int]]) -> str:
    """Plain-text table; `groups` labels runs of columns (one per loop)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = cells[0].ljust(widths[0])
        col = 1
        for _label, span in groups:
            out += " | " + " ".join(cells[c].rjust(widths[c]) for c in range(col, col + span))
            col += span
        return out

    top = " " * widths[0]
    col = 1
    for label, span in groups:
        width = sum(widths[col:col + span]) + span - 1
        top += " | " + label.center(width)
        col += span
    lines = [top, fmt(headers), "-" * len(fmt(headers))]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def render(results: dict[str, dict[str, SuiteRun]], loops: list[str],
           suites: list[Suite], unavailable: dict[str, str]) -> str:
    shown = [lp for lp in loops if lp not in unavailable]
    out: list[str] = []

    status_cols = ["run", "pass", "fail", "err", "skip"]
    rows: list[list[str]] = []
    totals = {lp: [0] * len(status_cols) for lp in shown}
    for suite in suites:
        row = [suite.name]
        for lp in shown:
            r = results[lp].get(suite.name)
            if r is None:
                row += ["-"] * len(status_cols)
                continue
            nums = [len(r.tests), r.passed, r.failed, r.errors, r.skipped]
            totals[lp] = [a + b for a, b in zip(totals[lp], nums, strict=True)]
            cells = [str(n) for n in nums]
            if r.status != "ok":
                cells[0] += "!"          # explained under "Notes"
            row += cells
        rows.append(row)
    rows.append(["TOTAL"] + [str(n) for lp in shown for n in totals[lp]])
    out.append(table(["module"] + status_cols * len(shown), rows,
                     [(lp, len(status_cols)) for lp in shown]))

    # Where did the tests actually run?  "lut loops" is how many loops the
    # loop under test built; the test columns count non-skipped tests by the
    # loops they built: >=1 loop under test / only test_utils.TestLoop
    # (virtual time, cannot be replaced) / a stock loop but no loop under test
    # (should be 0) / none at all.
    use_cols = ["lut loops", "on lut", "TestLoop", "stock", "no loop"]
    rows = []
    for suite in suites:
        row = [suite.name]
        for lp in shown:
            r = results[lp].get(suite.name)
            if r is None:
                row += ["-"] * len(use_cols)
                continue
            stock_loops = r.loops_total("stock") + r.loops_total("foreign")
            row += [str(r.loops_total("under_test")), str(r.usage("loop_under_test")),
                    str(r.usage("virtual")),
                    f"{r.usage('stock')}" + (f" ({stock_loops} loops)" if stock_loops else ""),
                    str(r.usage("none"))]
        rows.append(row)
    out.append("\nWhich loop the tests ran on (non-skipped tests):")
    out.append(table(["module"] + use_cols * len(shown), rows,
                     [(lp, len(use_cols)) for lp in shown]))

    notes = [f"  {lp}: unavailable: {msg}" for lp, msg in unavailable.items()]
    for lp in shown:
        for suite in suites:
            r = results[lp].get(suite.name)
            if r is not None and r.status != "ok":
                notes.append(f"  {lp} {suite.name}: {r.status.upper()}: {r.note}")
    if notes:
        out.append("\nNotes:\n" + "\n".join(notes))

    adaptations = next((r.info.get("adaptations") for lp in shown
                        for r in results[lp].values() if r.info.get("adaptations")), None)
    if adaptations:
        out.append("\nAdaptations in effect (--pristine turns them off):")
        out += [f"  - {a}" for a in adaptations]

    for lp in shown:
        bad = [(s.name, t) for s in suites if (r := results[lp].get(s.name))
               for t in r.tests.values()
               if t["outcome"] in ("failure", "error", "unexpected_success")]
        if len(bad) > 10:
            # Many failures usually share a few causes (e.g. one unimplemented
            # method); the raising frame plus the message identifies them.
            causes = Counter(f"{t['where'].rpartition('-> ')[2]}: {t['reason']}"
                             for _suite, t in bad)
            out.append(f"\nMost common failure causes on {lp}:")
            out += [f"  {n:4d} x {cause}" for cause, n in causes.most_common(10)]
        known = KNOWN_FAILURES.get(lp, {})
        if bad:
            out.append(f"\nFailing tests on {lp} ({len(bad)}):")
            for _suite, t in bad:
                where = f" [{t['where']}]" if t.get("where") else ""
                tag = " (known failure: " + known[short(t["id"])] + ")" if short(t["id"]) in known else ""
                out.append(f"  {short(t['id'])}: {t['outcome'].upper()}{where}: {t['reason']}{tag}")
        fixed = [short(t["id"]) for s in suites if (r := results[lp].get(s.name))
                 for t in r.tests.values()
                 if short(t["id"]) in known and t["outcome"] == "success"]
        if fixed:
            out.append(f"\nKnown failures that now pass on {lp} (remove them from KNOWN_FAILURES):")
            out += [f"  {tid}" for tid in fixed]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def select_suites(modules: str | None, group: str | None) -> list[Suite]:
    # Naming modules without a group means "those modules, every group".
    group = group or ("all" if modules else CORE)
    chosen = [s for s in SUITES if group == "all" or s.group == group]
    if modules:
        wanted = {m.strip() for m in modules.split(",") if m.strip()}
        known = {s.name for s in SUITES} | {s.module for s in SUITES}
        unknown = wanted - known
        if unknown:
            sys.exit(f"unknown module(s): {', '.join(sorted(unknown))}; "
                     f"known: {', '.join(sorted(known))}")
        chosen = [s for s in chosen if s.name in wanted or s.module in wanted]
    # test_taskgroups and test_timeouts came with 3.11: a module this
    # interpreter's test package does not have is left out, not aborted.
    missing = [s for s in chosen if not has_test_module(s.module)]
    for suite in missing:
        print(f"{suite.name}: not in this Python's test.test_asyncio; left out", file=sys.stderr)
    chosen = [s for s in chosen if s not in missing]
    if not chosen:
        sys.exit("nothing selected (check --modules against --group)")
    return chosen


def has_test_module(module: str) -> bool:
    spec = importlib.util.find_spec("test")
    locations = spec.submodule_search_locations if spec else None
    return any(os.path.exists(os.path.join(loc, "test_asyncio", f"{module}.py")) for loc in locations or ())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", default="all",
                   help=f"comma-separated subset of {', '.join(LOOPS)}, or 'all' (default)")
    p.add_argument("--modules", help="comma-separated modules, e.g. test_tasks,test_locks")
    p.add_argument("--group", choices=[*GROUPS, "all"],
                   help=f"default: {CORE}, or all when --modules is given")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stream every test's name and output")
    p.add_argument("--json", type=Path, help="write full per-test results here")
    p.add_argument("--report-only", action="store_true", help="always exit 0")
    p.add_argument("--timeout", type=float, default=300.0, help="per suite, seconds")
    p.add_argument("--test-timeout", type=float, default=120.0, help="per test, seconds")
    p.add_argument("--log-dir", type=Path, help="keep child logs here (default: temp dir)")
    p.add_argument("--pristine", action="store_true",
                   help="run the test modules without the harness adaptations")
    opts = p.parse_args(argv)
    opts.loops = list(LOOPS) if opts.loop == "all" else [x.strip() for x in opts.loop.split(",")]
    bad = [x for x in opts.loops if x not in LOOPS]
    if bad:
        p.error(f"unknown loop(s) {bad}; choose from {', '.join(LOOPS)} or all")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    suites = select_suites(opts.modules, opts.group)
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="ferroloop-conformance-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, SuiteRun]] = {lp: {} for lp in opts.loops}
    unavailable: dict[str, str] = {}
    for loop in opts.loops:
        for suite in suites:
            run = run_suite(loop, suite, opts, log_dir)
            if run.status == "unavailable":
                unavailable[loop] = run.note
                print(f"[{loop}] unavailable: {run.note}", flush=True)
                break
            results[loop][suite.name] = run
            flag = "" if run.status == "ok" else f"  {run.status.upper()}: {run.note}"
            print(f"[{loop}] {suite.name}: {len(run.tests)} run, {run.passed} passed, "
                  f"{run.failed} failed, {run.errors} errors, {run.skipped} skipped "
                  f"({run.elapsed:.1f}s){flag}", flush=True)

    print()
    print(render(results, opts.loops, suites, unavailable))

    if opts.json:
        doc = {
            "python": sys.version.split()[0],
            "suites": [asdict(s) for s in suites],
            "loops": {
                lp: {"available": lp not in unavailable, "error": unavailable.get(lp),
                     "info": next((r.info for r in results[lp].values() if r.info), {}),
                     "suites": {name: {**r.summary(), "tests": list(r.tests.values())}
                                for name, r in results[lp].items()}}
                for lp in opts.loops},
        }
        opts.json.write_text(json.dumps(doc, indent=1))

    gating = ["ferroloop"] if "ferroloop" in opts.loops else opts.loops
    ok = all(lp not in unavailable and all(r.clean for r in results[lp].values())
             for lp in gating)
    if ok and opts.log_dir is None:
        # Logs of a clean run tell nothing the table does not.
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"\nChild logs: {log_dir}")
    return 0 if ok or opts.report_only else 1


if __name__ == "__main__":
    sys.exit(main())
