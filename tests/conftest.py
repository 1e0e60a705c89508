from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

import ferroloop


@pytest.fixture
def loop() -> Iterator[ferroloop.Loop]:
    loop = ferroloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_closed():
            loop.close()
