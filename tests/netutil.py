"""Helpers shared by the network test modules."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
from typing import Any, Callable, Iterator


def run_with_loop(factory: Callable[[], asyncio.AbstractEventLoop], coro: Any) -> Any:
    """Like asyncio.Runner(loop_factory=factory).run(coro), on 3.10 too."""
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Last resort if a loop wedges inside a callback, where wait_for cannot
    help: dump every thread's stack and exit instead of hanging forever."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
