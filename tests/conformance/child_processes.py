"""What both conformance runners need to watch the child processes that run
the test files: kill a child's whole process group, name how it ended, and
find where a faulthandler dump says it was stuck."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import Any

FRAME_RE = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def innermost_frame(log_text: str, marker: str) -> str:
    """First frame of the last faulthandler dump after `marker` (main thread)."""
    start = log_text.rfind(marker)
    if start < 0:
        return ""
    for line in log_text[start:].splitlines():
        match = FRAME_RE.match(line)
        if match:
            return f"{os.path.basename(match['file'])}:{match['line']} in {match['func']}"
    return ""


def signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            pass
        return f"signal {-returncode}"
    return f"exit status {returncode}"


def kill_group(proc: subprocess.Popen[Any]) -> None:
    # The child leads its own process group, which holds only what it
    # spawned (process pools, subprocess tests): all of it goes with it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
