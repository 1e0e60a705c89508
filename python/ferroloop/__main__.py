"""``python -m ferroloop app.py [args]``: run an asyncio program on ferroloop."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Optional, Sequence

import ferroloop


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        description="Run an asyncio program on the ferroloop event loop.",
    )
    parser.add_argument("--version", action="version", version=f"ferroloop {ferroloop.__version__}")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    parser.add_argument("script", nargs="?", help="path of the program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    options = _parse(sys.argv[1:] if argv is None else argv)
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
