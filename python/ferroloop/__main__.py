"""``python -m ferroloop [options] (script | -m module | -c code) [args]``: run
an asyncio program on ferroloop, with the command line ``python`` takes.

Everything after the script, ``-m MODULE`` or ``-c CODE`` belongs to the
program (``sys.argv[1:]``), as with ``python``. ``ps PID`` and ``top PID``
show a live process's tasks instead, and ``cancel PID TASK`` cancels one
(see ``_monitor``)."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from types import TracebackType
from typing import Any, Callable, NoReturn, Optional, Sequence

import ferroloop

USAGE = """\
usage: python -m ferroloop [--version] [-h] (script | -m module | -c code) [args ...]
       python -m ferroloop ps PID [--socket PATH]
       python -m ferroloop top PID [--socket PATH] [--interval SECONDS]
       python -m ferroloop cancel PID TASK [--socket PATH]

Run an asyncio program on the ferroloop event loop: every loop the program
asks asyncio for is a ferroloop loop. Arguments after the script, the
module or the code are the program's (sys.argv[1:]), as with python.

  script       run a Python file as __main__
  -m module    run a library module as __main__ (python -m module)
  -c code      run code given as a string
  --version    print ferroloop's version and exit
  -h, --help   print this help and exit
  ps PID       print the tasks of a ferroloop process (and those that
               finished lately); run under python -m ferroloop, or with
               FERROLOOP_MONITOR=1, or attachable (ferroloop.allow_attach)
  top PID      the same, refreshed every second, with the loop's metrics
  cancel PID TASK
               cancel a task of that process, by name or by id as ps shows it
"""

_NO_MONITOR_HINT = (
    "run it under python -m ferroloop, start it with FERROLOOP_MONITOR=1, "
    "or let it be attached: FERROLOOP_ATTACH_SIGNAL=SIGUSR1 or ferroloop.allow_attach()"
)


def _inspect(command: str, arguments: Sequence[str]) -> None:
    """``ps PID``: print a live process's tasks; ``top PID``: keep
    refreshing; ``cancel PID TASK``: cancel one."""
    from ferroloop import _monitor

    parser = argparse.ArgumentParser(prog=f"python -m ferroloop {command}")
    parser.add_argument("pid", type=_pid, help="process running ferroloop")
    if command == "cancel":
        parser.add_argument("task", help="the task's name, or its id as ps shows it")
    parser.add_argument("--socket", help="monitor socket path (default: the per-user path for PID)")
    parser.add_argument(
        "--remote-exec", action="store_true",
        help="Python 3.14+: start the monitor of a process that did not allow attaching, "
        "through sys.remote_exec (runs code in that process)",
    )
    if command == "top":
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    options = parser.parse_args(arguments)
    prog = f"python -m ferroloop {command}"
    from ferroloop import _attach

    if options.remote_exec and not _attach.remote_exec_available():
        parser.error("--remote-exec needs Python 3.14 or later (sys.remote_exec)")
    request = f"cancel {options.task}" if command == "cancel" else command
    try:
        state = _query_or_attach(options.pid, request, options.socket, options.remote_exec)
        if command == "cancel":
            _report_cancel(prog, options.pid, state)
        elif command == "ps":
            print(_monitor.render(state))
        else:
            while True:
                text = _monitor.render(state, with_metrics=True)
                sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ") + text + "\n")
                sys.stdout.flush()
                time.sleep(options.interval)
                state = _monitor.query(options.pid, "top", options.socket)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, ValueError):
        if not _running(options.pid):
            raise SystemExit(f"{prog}: process {options.pid} is not running") from None
        raise SystemExit(f"{prog}: no monitor for pid {options.pid} ({_NO_MONITOR_HINT})") from None
    except TimeoutError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    except KeyboardInterrupt:
        pass


def _query_or_attach(pid: int, request: str, path: Optional[str], remote_exec: bool = False) -> dict[str, Any]:
    """Ask the monitor; with no socket at the default path, attach first if
    the process allowed it (see ``_attach``)."""
    from ferroloop import _attach, _monitor

    if path is None and not os.path.exists(_monitor.default_socket_path(pid)) and _running(pid):
        try:
            _attach.attach(pid, remote_exec=remote_exec)
        except LookupError:
            raise FileNotFoundError(pid) from None
        # The socket exists once bound; it listens a moment later.
        for _ in range(50):
            try:
                return _monitor.query(pid, request, path)
            except ConnectionRefusedError:
                time.sleep(0.02)
    return _monitor.query(pid, request, path)


def _report_cancel(prog: str, pid: int, reply: dict[str, Any]) -> None:
    if "error" in reply:
        raise SystemExit(f"{prog}: pid {pid}: {reply['error']}")
    task = reply["task"]
    print(f"cancelled task {task['name']!r} ({hex(task['id'])}) in pid {pid}")
    if not reply["delivered"]:
        when = "the callback running now returns" if reply["running"] else "its loop runs again"
        print(f"(the cancellation reaches the task when {when})")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    return True


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def _usage_error(message: str) -> NoReturn:
    # As python and argparse do: the usage, the error, exit status 2.
    sys.stderr.write(USAGE.split("\n\n", 1)[0] + "\n")
    sys.stderr.write(f"python -m ferroloop: error: {message}\n")
    raise SystemExit(2)


def _own_frames(tb: Optional[TracebackType]) -> Optional[TracebackType]:
    """Drops the leading frames of this module and runpy, so that a
    program's traceback starts in the program, as under ``python``."""
    here = os.path.abspath(__file__)
    runpy_file = os.path.abspath(runpy.__file__ or "")
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename not in (here, runpy_file, "<frozen runpy>"):
            break
        tb = tb.tb_next
    return tb


def _run_program(run: Callable[[], object]) -> None:
    try:
        run()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported as python reports it
        # The display takes the traceback from the exception itself.
        shown = exc.with_traceback(_own_frames(exc.__traceback__))
        sys.excepthook(type(shown), shown, shown.__traceback__)
        raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None


def _run_module(module: str, arguments: list[str]) -> None:
    # As `python -m`: sys.argv[0] becomes the module's path, sys.path[0] the
    # current directory, and a missing module is one line on stderr.
    sys.argv = ["-m", *arguments]
    sys.path[0] = os.getcwd()
    _run_program(lambda: runpy._run_module_as_main(module, alter_argv=True))  # type: ignore[attr-defined]


def _run_code(code: str, arguments: list[str], argv0: str = "-c", filename: str = "<string>") -> None:
    sys.argv = [argv0, *arguments]
    sys.path[0] = ""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None, "__spec__": None}
    compiled = compile(code, filename, "exec")
    _run_program(lambda: exec(compiled, namespace))


def _run_script(script: str, arguments: list[str]) -> None:
    if not os.path.exists(script):
        # python names itself as it was invoked here (runpy, for -m, uses
        # sys.executable).
        program = getattr(sys, "orig_argv", [sys.executable])[0]
        sys.stderr.write(f"{program}: can't open file {os.path.abspath(script)!r}: [Errno 2] No such file or directory\n")
        raise SystemExit(2)
    sys.argv = [script, *arguments]
    # As `python script.py` does: the script's directory comes first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    _run_program(lambda: runpy.run_path(script, run_name="__main__"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("ps", "top", "cancel"):
        _inspect(arguments[0], arguments[1:])
        return
    while arguments and arguments[0].startswith("-") and arguments[0] not in ("-", "-m", "-c"):
        option = arguments.pop(0)
        if option in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return
        if option == "--version":
            print(f"ferroloop {ferroloop.__version__}")
            return
        _usage_error(f"unknown option {option!r} (options of the program go after it)")
    if not arguments:
        _usage_error("give a script to run (or -m MODULE, or -c CODE); see --help")
    first = arguments.pop(0)
    if first in ("-m", "-c") and not arguments:
        _usage_error(f"argument {first} needs a value")
    ferroloop.install()
    # `python -m ferroloop ps PID` works on any program run this way.
    from ferroloop import _monitor

    _monitor.turn_on_by_default()
    # Child processes (a server's workers, started with spawn or
    # forkserver) install ferroloop at start-up too: ferroloop.pth in
    # site-packages reads this.
    os.environ["FERROLOOP_INSTALL"] = "1"
    if first == "-m":
        _run_module(arguments[0], arguments[1:])
    elif first == "-c":
        _run_code(arguments[0], arguments[1:])
    elif first == "-":
        _run_code(sys.stdin.read(), arguments, "-", "<stdin>")
    else:
        _run_script(first, arguments)


if __name__ == "__main__":
    main()
