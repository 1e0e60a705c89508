"""64 KiB through a pipe into a StreamReader, per op: StreamWriter.write on
a connect_write_pipe transport, then StreamReader.readexactly on a
connect_read_pipe transport, asyncio vs uvloop vs ferroloop.

    python3 benchmarks/pipes.py                 # timings and callgrind
    python3 benchmarks/pipes.py --no-callgrind
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop_ops  # noqa: E402

SIZE = 64 * 1024


async def setup() -> Callable[[], Awaitable[None]]:
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    payload = os.urandom(SIZE)

    async def op() -> None:
        writer.write(payload)
        data = await reader.readexactly(SIZE)
        if len(data) != SIZE:
            raise AssertionError("short read")

    return op


if __name__ == "__main__":
    sys.exit(loop_ops.main(Path(__file__), "64 KiB through a pipe into a StreamReader", setup, n=20_000, cg_n=(500, 1500), warmup=100))
