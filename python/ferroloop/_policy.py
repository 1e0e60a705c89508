"""The event loop policy that makes asyncio build ferroloop loops."""

from __future__ import annotations

from asyncio import events

from ._loop import Loop

# Renamed with a leading underscore in 3.14, when policies were deprecated.
_BasePolicy = getattr(events, "BaseDefaultEventLoopPolicy", None) or getattr(events, "_BaseDefaultEventLoopPolicy")


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """asyncio's default policy, with ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes
    ``asyncio.run()`` and ``asyncio.new_event_loop()`` use ferroloop.
    """

    def _loop_factory(self) -> Loop:
        return Loop()

    def __repr__(self) -> str:
        return f"<{self.__class__.__module__}.{self.__class__.__qualname__}>"
