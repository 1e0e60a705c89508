"""``python -m ferroloop app.py [args]``: run an asyncio program on ferroloop."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from typing import Optional, Sequence

import ferroloop


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        description="Run an asyncio program on the ferroloop event loop. "
        "`python -m ferroloop ps PID` / `top PID` show a live process's tasks "
        "(run it with FERROLOOP_MONITOR=1).",
    )
    parser.add_argument("--version", action="version", version=f"ferroloop {ferroloop.__version__}")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    parser.add_argument("script", nargs="?", help="path of the program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    return parser.parse_args(argv)


def _inspect(command: str, arguments: Sequence[str]) -> None:
    """``ps PID``: print a live process's tasks; ``top PID``: keep refreshing."""
    from ferroloop import _monitor

    parser = argparse.ArgumentParser(prog=f"python -m ferroloop {command}")
    parser.add_argument("pid", type=int, help="process running ferroloop with FERROLOOP_MONITOR set")
    parser.add_argument("--socket", help="monitor socket path (default: the per-user path for PID)")
    parser.add_argument("--interval", type=float, default=1.0, help="top: seconds between refreshes")
    options = parser.parse_args(arguments)
    try:
        if command == "ps":
            print(_monitor.render(_monitor.query(options.pid, "ps", options.socket)))
            return
        while True:
            text = _monitor.render(_monitor.query(options.pid, "top", options.socket), with_metrics=True)
            sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ") + text + "\n")
            sys.stdout.flush()
            time.sleep(options.interval)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SystemExit(
            f"python -m ferroloop {command}: no monitor for pid {options.pid} "
            "(start the program with FERROLOOP_MONITOR=1)"
        ) from None
    except KeyboardInterrupt:
        pass


def main(argv: Optional[Sequence[str]] = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) >= 2 and arguments[0] in ("ps", "top") and arguments[1].isdigit():
        _inspect(arguments[0], arguments[1:])
        return
    options = _parse(arguments)
    ferroloop.install()
    if options.module:
        extra = [options.script] if options.script else []
        sys.argv = [options.module, *extra, *options.args]
        runpy.run_module(options.module, run_name="__main__", alter_sys=True)
        return
    if not options.script:
        raise SystemExit("python -m ferroloop: give a script to run (or -m MODULE); see --help")
    script = options.script
    if not os.path.exists(script):
        raise SystemExit(f"python -m ferroloop: can't open file {script!r}: No such file or directory")
    sys.argv = [script, *options.args]
    # As `python script.py` does: the script's directory comes first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
