"""loop.metrics() and the OpenMetrics exposition."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.openmetrics import parser

import ferroloop


def test_metrics_measure_lag_utilisation_and_rates(loop):
    async def workload():
        for _ in range(20):
            await asyncio.sleep(0.002)
        time.sleep(0.1)  # busy: counts toward utilisation
        await asyncio.sleep(0.1)  # idle: waiting in poll

    loop.run_until_complete(workload())
    metrics = loop.metrics()
    assert metrics["callbacks_total"] >= 22
    assert metrics["lag_samples_total"] >= 21
    assert 0 <= metrics["lag_p50_seconds"] <= metrics["lag_p99_seconds"] <= metrics["lag_max_seconds"] < 0.1
    assert metrics["wait_seconds_total"] >= 0.1
    assert metrics["busy_seconds_total"] >= 0.1
    assert 0.2 < metrics["utilisation_total"] < 0.8
    assert metrics["callbacks_per_second"] > 0
    assert metrics["tasks_alive"] == 0


def test_a_late_timer_shows_up_as_lag(loop):
    def block():
        time.sleep(0.2)

    loop.call_later(0.01, lambda: None)
    loop.call_soon(block)  # runs first and delays the timer by ~0.19 s
    loop.call_later(0.3, loop.stop)
    loop.run_forever()
    assert loop.metrics()["lag_max_seconds"] >= 0.15


def test_rates_are_per_interval_between_calls(loop):
    loop.metrics()

    async def idle():
        await asyncio.sleep(0.2)

    loop.run_until_complete(idle())
    quiet = loop.metrics()
    assert quiet["utilisation"] < 0.5
    assert quiet["callbacks_per_second"] < 1000


def test_tasks_alive_and_stalls_are_counted(loop):
    loop.enable_watchdog(0.05)

    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        alive = loop.metrics()["tasks_alive"]
        time.sleep(0.2)
        task.cancel()
        return alive

    assert loop.run_until_complete(main()) == 2  # main and sleeper
    loop.run_until_complete(asyncio.sleep(0.05))
    assert loop.metrics()["stalls_total"] == 1


def test_openmetrics_text_parses_and_matches_metrics(loop):
    loop.run_until_complete(asyncio.sleep(0.01))
    text = ferroloop.openmetrics_text([loop])
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    number = str(loop.metrics()["loop"])
    callbacks = [s for s in families["ferroloop_callbacks"].samples if s.labels == {"loop": number}]
    assert callbacks and callbacks[0].name == "ferroloop_callbacks_total" and callbacks[0].value >= 1
    assert families["ferroloop_callbacks"].type == "counter"
    assert families["ferroloop_utilisation_ratio"].type == "gauge"
    quantiles = {s.labels["quantile"] for s in families["ferroloop_loop_lag_seconds"].samples}
    assert quantiles == {"0.5", "0.99"}


def test_openmetrics_text_defaults_to_open_loops(loop):
    other = ferroloop.new_event_loop()
    try:
        text = ferroloop.openmetrics_text()
        numbers = {str(lp.metrics()["loop"]) for lp in (loop, other)}
        for number in numbers:
            assert f'ferroloop_callbacks_total{{loop="{number}"}}' in text
    finally:
        other.close()
    assert f'loop="{other.metrics()["loop"]}"' not in ferroloop.openmetrics_text()
