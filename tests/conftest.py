from __future__ import annotations

import asyncio
from typing import Callable, Iterator

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


@pytest.fixture
def line_of(request: pytest.FixtureRequest) -> Callable[[str], int]:
    """The line number of a marker comment in the calling test's file."""
    source = request.path.read_text().splitlines()

    def find(marker: str) -> int:
        for number, line in enumerate(source, start=1):
            if marker in line and "line_of(" not in line:
                return number
        raise AssertionError(f"marker {marker!r} not found")

    return find
