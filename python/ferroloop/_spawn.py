"""Starting a subprocess natively: ``posix_spawn``, and a real
``subprocess.Popen`` in the state ``Popen.__init__`` leaves one in, both
made by the native module (``src/process/``).

The ``Popen`` options the native spawn does itself are taken; anything else
(``preexec_fn``, ``user``, ``group``, ``extra_groups``, ``umask``,
``pass_fds``, ``pipesize``, a standard fd moved to another standard slot, an
unknown keyword), or ``subprocess.Popen`` replaced by the program, makes
``start`` return None, and the caller uses ``Popen``, which then also
raises what it raises for bad values.
"""

from __future__ import annotations

import subprocess
from typing import Any, Callable, Optional

from . import _native

# Linux only.
_spawn_popen: Optional[Callable[..., Optional[subprocess.Popen]]] = getattr(_native, "spawn_popen", None)

# Tests set this to False to take the Popen path.
NATIVE_SPAWN_AVAILABLE = _spawn_popen is not None

# A program (often a test with unittest.mock) that replaces subprocess.Popen
# gets its replacement called, as on asyncio.
_POPEN = subprocess.Popen


def start(args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, kwargs: dict[str, Any]) -> Optional[subprocess.Popen]:
    """``subprocess.Popen(args, shell=shell, stdin=stdin, stdout=stdout,
    stderr=stderr, bufsize=0, universal_newlines=False, **kwargs)``, started
    natively; None when only ``Popen`` can start it."""
    if _spawn_popen is None or not NATIVE_SPAWN_AVAILABLE or subprocess.Popen is not _POPEN:
        return None
    return _spawn_popen(_POPEN, args, shell, stdin, stdout, stderr, kwargs)
