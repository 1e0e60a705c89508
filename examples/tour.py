"""A tour of asyncio's basics, run on ferroloop.

Runs each example program in this directory in its own subprocess, by
default as `python3 -m ferroloop examples/NN_name.py` (ferroloop's CLI
installs its event-loop policy and runs the script as `__main__`), and shows
for each one its lesson, its output, its wall time and the event loop that
ran it. The programs themselves are plain asyncio code that knows nothing
about ferroloop; each prints a `loop: module.Class` line naming the loop
it got.

At the end a summary table is printed. The exit status is non-zero if any
program failed, timed out, did not show what its lesson is about, or did
not run on the expected loop.

    python3 examples/tour.py                  # all programs, on ferroloop
    python3 examples/tour.py 03 gather        # only some (by number or name)
    python3 examples/tour.py --stock          # same programs on stock asyncio
    python3 examples/tour.py --dev            # in Python's development mode (asyncio debug on)
    python3 examples/tour.py --list           # list the programs
"""

import argparse
import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAM_PATTERN = "[0-9][0-9]_*.py"
LOOP_LINE = re.compile(r"^loop: (\S+)\s*$", re.MULTILINE)


# --- what each program must show ---------------------------------------------
#
# Every check takes the program's combined stdout/stderr and returns None when
# the lesson came across, or a short description of what went wrong. Checks
# are deliberately loose about timing: a busy 2-core machine is not a stopwatch.


def _number(output, pattern):
    match = re.search(pattern, output, re.MULTILINE)
    return float(match.group(1)) if match else None


def contains(text):
    def check(output):
        return None if text in output else f"missing {text!r}"

    return check


def value_between(label, pattern, low, high):
    def check(output):
        value = _number(output, pattern)
        if value is None:
            return f"no {label} printed"
        if not low <= value <= high:
            return f"{label} {value:g} outside [{low:g}, {high:g}]"
        return None

    return check


def in_order(*texts):
    def check(output):
        position = 0
        for text in texts:
            found = output.find(text, position)
            if found < 0:
                return f"{text!r} missing or out of order"
            position = found + len(text)
        return None

    return check


ELAPSED = r"^elapsed: ([0-9.]+) s"

CHECKS = {
    "01_coroutine_object": [
        contains("<coroutine object greet at"),
        in_order(
            "state before running: CORO_CREATED",
            "(inside greet: now running for 'world')",
            "result: 'hello, world'",
            "state after running: CORO_CLOSED",
        ),
    ],
    "02_sequential": [value_between("elapsed", ELAPSED, 1.9, 2.8)],
    "03_gather": [
        contains("results: ['alpha-result', 'beta-result', 'gamma-result']"),
        value_between("elapsed", ELAPSED, 0.9, 1.8),
    ],
    "04_create_task": [
        in_order(
            "main: task created; it has not run yet",
            "task: downloading chunk 1/3",
            "main: doing other work, step 1",
            "task: downloading chunk 2/3",
            "main: doing other work, step 2",
            "task: downloading chunk 3/3",
            "main: doing other work, step 3",
            "task: all chunks downloaded",
            "main: task returned 192",
        ),
    ],
    "05_to_thread": [
        contains("result: \"slept 1 s in thread"),
        value_between("tick count", r"^ticks while the thread slept: (\d+)", 3, 10),
        value_between("elapsed", ELAPSED, 0.9, 1.8),
    ],
    "06_process_pool": [contains("total primes below 600000: 49098")],
    "07_never_awaited": [
        contains("RuntimeWarning: coroutine 'save' was never awaited"),
        contains("after the buggy call, saved = []"),
        contains("after the fixed call, saved = ['second']"),
    ],
    "08_blocking_sleep": [
        value_between("blocking gap", r"^blocking version: largest gap between ticks ([0-9.]+)", 0.9, 5.0),
        value_between("fixed gap", r"^fixed version: largest gap between ticks ([0-9.]+)", 0.0, 0.6),
    ],
}

# Extra checks for --dev (`python -X dev`), where asyncio's debug mode is on:
# it records where each coroutine was created and reports slow callbacks.
DEV_CHECKS = {
    "07_never_awaited": [contains("Coroutine created at (most recent call last)")],
    "08_blocking_sleep": [in_order("job: time.sleep(1)", "Executing <Task", "took 1.")],
}


# --- finding and describing the programs --------------------------------------


def all_programs():
    return sorted(HERE.glob(PROGRAM_PATTERN))


def title_of(path):
    """First line of the program's docstring, read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError):
        doc = None
    return doc.strip().splitlines()[0] if doc else "(no docstring)"


def select(programs, wanted):
    """Pick programs by number ("3", "03"), stem ("03_gather"), file name or part of a name."""
    if not wanted:
        return programs
    chosen = []
    for word in wanted:
        word = Path(word).name.removesuffix(".py")
        matches = [
            p for p in programs
            if p.stem == word
            or (word.isdigit() and p.stem.split("_", 1)[0] == f"{int(word):02d}")
            or (not word.isdigit() and word in p.stem)
        ]
        if not matches:
            raise SystemExit(f"tour.py: no example program matches {word!r}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen)


# --- running one program --------------------------------------------------------


class Result:
    def __init__(self, program):
        self.program = program
        self.output = ""
        self.wall = 0.0
        self.returncode = None
        self.timed_out = False
        self.loops = []
        self.problems = []

    @property
    def ok(self):
        return not self.problems


def run_program(program, command, timeout, indent="  | "):
    """Run one program, echoing its output line by line as it arrives."""
    result = Result(program)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines = []

    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # keep warnings in place among the prints
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=(os.name == "posix"),  # so a timeout can kill the whole group
    )

    def pump():
        for line in proc.stdout:
            lines.append(line)
            print(f"{indent}{line}", end="" if line.endswith("\n") else "\n", flush=True)

    def kill():
        result.timed_out = True
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    # A blocking wait() returns the moment the child exits (wait(timeout=...)
    # polls, which would round every wall time up to its polling step); a
    # timer thread takes care of programs that hang.
    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    result.returncode = proc.wait()
    result.wall = time.perf_counter() - start
    watchdog.cancel()
    reader.join(timeout=5)

    result.output = "".join(lines)
    result.loops = LOOP_LINE.findall(result.output)
    return result


def judge(result, expect_loop, dev=False):
    """Fill result.problems; expect_loop is a substring the loop name must contain."""
    problems = result.problems
    if result.timed_out:
        problems.append("timed out")
    elif result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    if not result.loops:
        problems.append("printed no 'loop:' line")
    else:
        wrong = sorted({name for name in result.loops if expect_loop not in name})
        if wrong:
            problems.append(f"ran on {', '.join(wrong)}, expected a {expect_loop} loop")
    if result.returncode == 0 and not result.timed_out:
        checks = CHECKS.get(result.program.stem, [])
        if dev:
            checks = checks + DEV_CHECKS.get(result.program.stem, [])
        for check in checks:
            problem = check(result.output)
            if problem:
                problems.append(problem)


# --- the tour -----------------------------------------------------------------------


def build_command(args, program):
    python = [args.python, "-X", "dev"] if args.dev else [args.python]
    if args.stock:
        return [*python, str(program)]
    return [*python, *shlex.split(args.loop_cli), str(program)]


def status_text(result):
    if result.ok:
        return "ok"
    return "FAIL: " + "; ".join(result.problems)


def print_summary(results):
    name_width = max(len("program"), *(len(r.program.stem) for r in results))
    loop_names = [", ".join(sorted(set(r.loops))) or "-" for r in results]
    loop_width = max(len("loop"), *(len(n) for n in loop_names))
    print()
    print(f"{'program':<{name_width}}  {'wall':>7}  {'loop':<{loop_width}}  status")
    print(f"{'-' * name_width}  {'-' * 7}  {'-' * loop_width}  {'-' * 6}")
    for result, loop_name in zip(results, loop_names):
        wall = f"{result.wall:.2f} s"
        print(f"{result.program.stem:<{name_width}}  {wall:>7}  {loop_name:<{loop_width}}  {status_text(result)}")
    failed = sum(not r.ok for r in results)
    total = sum(r.wall for r in results)
    print()
    print(f"{len(results) - failed}/{len(results)} programs ok, {total:.2f} s in all")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run the asyncio example programs on ferroloop (or stock asyncio) and report.",
    )
    parser.add_argument("programs", nargs="*", help="programs to run, by number or name (default: all)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to use (default: %(default)s)")
    parser.add_argument(
        "--loop-cli", default="-m ferroloop",
        help="arguments placed between the interpreter and the script (default: %(default)r)",
    )
    parser.add_argument(
        "--stock", action="store_true",
        help="run the programs as plain `python3 prog.py`, on stock asyncio, for comparison",
    )
    parser.add_argument(
        "--expect-loop", default=None,
        help="substring the reported loop must contain (default: 'ferroloop', or 'asyncio' with --stock)",
    )
    parser.add_argument(
        "--dev", action="store_true",
        help="run in Python's development mode (-X dev), which turns on asyncio's debug mode",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per program (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the programs and exit")
    args = parser.parse_args(argv)
    if args.expect_loop is None:
        args.expect_loop = "asyncio" if args.stock else "ferroloop"
    return args


def main(argv=None):
    args = parse_args(argv)
    programs = select(all_programs(), args.programs)

    if args.list:
        for program in programs:
            print(f"{program.name:<26} {title_of(program)}")
        return 0

    where = "stock asyncio" if args.stock else f"{args.python} {args.loop_cli}"
    if args.dev:
        where += " in development mode (-X dev)"
    print(f"asyncio tour: {len(programs)} program(s) on {where}")

    results = []
    for program in programs:
        command = build_command(args, program)
        print()
        print(f"=== {program.name}: {title_of(program)}")
        print(f"$ {shlex.join(command)}")
        result = run_program(program, command, args.timeout)
        judge(result, args.expect_loop, dev=args.dev)
        loop_name = ", ".join(sorted(set(result.loops))) or "unknown loop"
        print(f"--> {result.wall:.2f} s on {loop_name}: {status_text(result)}")
        results.append(result)

    print_summary(results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
