"""The event loop policy that makes asyncio build ferroloop loops."""

from __future__ import annotations

import sys
from asyncio import events
from typing import TYPE_CHECKING, Optional

from ._loop import Loop


def _base_policy() -> type:
    """asyncio's default policy class for this platform and version.

    On Unix before 3.14 it carries the child-watcher API that asyncio's
    subprocess support and its tests use; the names gained a leading
    underscore in 3.14, when policies were deprecated.
    """
    if sys.platform != "win32":
        from asyncio import unix_events

        unix_policy: Optional[type] = getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
        if unix_policy is not None:
            return unix_policy
    base: type = getattr(events, "BaseDefaultEventLoopPolicy", None) or getattr(events, "_BaseDefaultEventLoopPolicy")
    return base


if TYPE_CHECKING:
    # What _base_policy() returns on Unix, as typeshed names it.
    from asyncio import DefaultEventLoopPolicy as _BasePolicy
else:
    _BasePolicy = _base_policy()


class EventLoopPolicy(_BasePolicy):
    """asyncio's default policy, with ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes
    ``asyncio.run()`` and ``asyncio.new_event_loop()`` use ferroloop.
    """

    def _loop_factory(self) -> Loop:
        return Loop()

    if TYPE_CHECKING:
        # asyncio's new_event_loop() returns what _loop_factory() makes.
        def new_event_loop(self) -> Loop:
            """A new ferroloop loop."""
            ...

    def __repr__(self) -> str:
        return f"<{self.__class__.__module__}.{self.__class__.__qualname__}>"
