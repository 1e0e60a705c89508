"""create_subprocess_exec("true") and wait(), per op, parent side only
(callgrind counts the parent process; the children are not traced),
asyncio vs uvloop vs ferroloop.

    python3 benchmarks/subprocess_spawn.py
    python3 benchmarks/subprocess_spawn.py --no-callgrind
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop_ops  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"


async def setup() -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        proc = await asyncio.create_subprocess_exec(TRUE)
        if await proc.wait() != 0:
            raise AssertionError("true failed")

    return op


if __name__ == "__main__":
    sys.exit(loop_ops.main(Path(__file__), 'create_subprocess_exec("true") + wait()', setup, n=500, cg_n=(50, 150), warmup=10))
