"""The event loop policy that makes asyncio build ferroloop loops."""

from __future__ import annotations

import sys
from asyncio import events

from ._loop import Loop


def _base_policy() -> type:
    """asyncio's default policy class for this platform and version.

    On Unix before 3.14 it carries the child-watcher API that asyncio's
    subprocess support and its tests use; the names gained a leading
    underscore in 3.14, when policies were deprecated.
    """
    if sys.platform != "win32":
        from asyncio import unix_events

        unix_policy = getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
        if unix_policy is not None:
            return unix_policy
    return getattr(events, "BaseDefaultEventLoopPolicy", None) or getattr(events, "_BaseDefaultEventLoopPolicy")


_BasePolicy = _base_policy()


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """asyncio's default policy, with ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes
    ``asyncio.run()`` and ``asyncio.new_event_loop()`` use ferroloop.
    """

    def _loop_factory(self) -> Loop:
        return Loop()  # type: ignore[abstract]  # the network methods come with issue 3

    def __repr__(self) -> str:
        return f"<{self.__class__.__module__}.{self.__class__.__qualname__}>"
