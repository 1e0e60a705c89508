"""While a stall lasts the watchdog samples the loop thread's stack; the
stall's end carries a profile of where its time went."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import pytest

THRESHOLD = 0.05


@pytest.fixture
def records(loop):
    collected: list[dict] = []
    loop.enable_watchdog(THRESHOLD, callback=collected.append)
    yield collected
    loop.disable_watchdog()


# Each spins on one line of its own, so that each is one profile entry.
def parse(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline: pass  # noqa: E701  PARSE LINE


def transform(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline: pass  # noqa: E701  TRANSFORM LINE


def render(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline: pass  # noqa: E701  RENDER LINE


def function_name(function) -> str:
    """How frames name a function: qualified from 3.11 on (co_qualname)."""
    return function.__qualname__ if sys.version_info >= (3, 11) else function.__name__


def shares_by_function(profile: list[dict]) -> dict[str, float]:
    shares: dict[str, float] = {}
    for entry in profile:
        shares[entry["function"]] = shares.get(entry["function"], 0.0) + entry["share"]
    return shares


def test_a_cpu_stall_through_three_functions_is_profiled(loop, records, line_of, caplog):
    async def handle():
        parse(0.3)
        transform(0.6)
        render(0.3)

    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        loop.run_until_complete(loop.create_task(handle(), name="handler"))
        loop.run_until_complete(asyncio.sleep(0.05))
    stall, end = records
    assert stall["profile"] == [] and end["event"] == "stall_end"
    assert end["samples"] >= 10  # sampled all along, not once
    shares = shares_by_function(end["profile"])
    assert {"parse", "transform", "render"} <= set(shares)
    assert shares["transform"] > shares["parse"] and shares["transform"] > shares["render"]
    assert 0.3 < shares["transform"] < 0.75
    assert abs(sum(e["share"] for e in end["profile"]) - 1.0) < 1e-6
    top = end["profile"][0]
    assert (top["function"], top["filename"], top["lineno"]) == ("transform", __file__, line_of("TRANSFORM LINE"))
    assert top["blocking_kind"] is None and top["samples"] >= 1
    assert end["blocking_kind"] is None
    # The log line at the end summarises the profile.
    [ended] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event loop stall ended")]
    assert f"of it in transform() at {__file__}:{line_of('TRANSFORM LINE')}" in ended.splitlines()[0]
    assert f"Profile of the stall ({end['samples']} samples):" in ended
    assert f"parse() at {__file__}:{line_of('PARSE LINE')}" in ended


def test_a_sleep_stall_is_profiled_as_sleep(loop, records, line_of, caplog):
    async def nap():
        time.sleep(0.3)  # NAP LINE

    with caplog.at_level(logging.WARNING, logger="ferroloop"):
        loop.run_until_complete(nap())
        loop.run_until_complete(asyncio.sleep(0.05))
    stall, end = records
    assert stall["blocking_kind"] == end["blocking_kind"] == "sleep"
    [entry] = end["profile"]
    assert (entry["function"], entry["lineno"], entry["share"]) == (function_name(nap), line_of("# NAP LINE"), 1.0)
    assert entry["innermost"] == f"{function_name(nap)}() at {__file__}:{line_of('# NAP LINE')}"
    [ended] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event loop stall ended")]
    assert "100% of it in" in ended and "(sleep)" in ended and "[sleep]" in ended


def test_the_innermost_library_frame_is_kept_next_to_the_programs_line(loop, records, line_of):
    async def waiter():
        threading.Event().wait(0.3)  # EVENT LINE

    loop.run_until_complete(waiter())
    loop.run_until_complete(asyncio.sleep(0.05))
    [entry] = records[-1]["profile"]
    assert entry["lineno"] == line_of("# EVENT LINE") and entry["blocking_kind"] == "lock"
    assert entry["innermost"].startswith(f"{function_name(threading.Condition.wait)}() at ")
    assert "threading.py" in entry["innermost"]


def test_samples_are_counted_while_the_stall_goes_on(loop, records):
    seen = []

    async def long_stall():
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pass
        reporter = loop._stall_reporter
        seen.append(reporter.current_stall["samples"])

    loop.run_until_complete(long_stall())
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen[0] > 1
    assert records[-1]["samples"] >= seen[0]
