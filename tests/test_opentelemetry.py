"""ferroloop.opentelemetry with the OpenTelemetry SDK: the metrics an
InMemoryMetricReader collects after some loop work, and stalls as span
events or log records."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import ferroloop
import ferroloop.opentelemetry as fotel


@pytest.fixture
def reader():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def collected(reader: InMemoryMetricReader) -> dict[str, list]:
    """Metric name -> its data points."""
    points: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data is not None else []:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != fotel.METER_NAME:
                continue
            for metric in scope_metrics.metrics:
                points[metric.name] = list(metric.data.data_points)
    return points


def by(points: list, **attributes) -> list:
    return [p for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())]


async def echo_work(payload: bytes, loop: asyncio.AbstractEventLoop) -> None:
    """Timers, tasks and a TCP round trip of ``payload``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    await asyncio.gather(*(asyncio.sleep(0.001 * n) for n in range(20)))


def test_the_reader_sees_the_loops_metrics(loop, reader):
    metric_reader, provider = reader
    handle = fotel.instrument(loop, meter_provider=provider)
    try:
        payload = b"x" * 10_000
        loop.run_until_complete(echo_work(payload, loop))

        async def with_pending_tasks():
            sleepers = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
            await asyncio.sleep(0)
            points = collected(metric_reader)
            for task in sleepers:
                task.cancel()
            return points

        points = loop.run_until_complete(with_pending_tasks())
    finally:
        handle.uninstrument()
    number = loop._run_clock.number
    assert set(points) == {
        "ferroloop.loop.lag", "ferroloop.loop.utilisation", "ferroloop.loop.callbacks", "ferroloop.loop.tasks",
        "ferroloop.loop.stalls", "ferroloop.loop.network.io", "ferroloop.loop.transports",
    }
    assert all(p.attributes["ferroloop.loop"] == number for values in points.values() for p in values)
    [callbacks] = points["ferroloop.loop.callbacks"]
    assert callbacks.value > 40  # the echo's steps and the 20 sleeps at least
    [tasks] = points["ferroloop.loop.tasks"]
    assert tasks.value == 4  # the three sleepers and the task collecting
    lag = {p.attributes["ferroloop.lag.statistic"]: p.value for p in points["ferroloop.loop.lag"]}
    assert set(lag) == {"p50", "p99", "max"}
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"] < 5
    [utilisation] = points["ferroloop.loop.utilisation"]
    assert 0 < utilisation.value <= 1
    received = by(points["ferroloop.loop.network.io"], **{"network.io.direction": "receive"})[0].value
    sent = by(points["ferroloop.loop.network.io"], **{"network.io.direction": "transmit"})[0].value
    # Both ends of the connection are this loop's.
    assert received >= 2 * len(payload) and sent >= 2 * len(payload)
    [stalls] = points["ferroloop.loop.stalls"]
    assert stalls.value == 0
    [transports] = points["ferroloop.loop.transports"]
    assert transports.value == 0
    # Once uninstrumented, the instruments report nothing.
    assert collected(metric_reader).get("ferroloop.loop.callbacks", []) == []


def test_every_loop_by_default_including_later_ones(reader):
    metric_reader, provider = reader
    handle = fotel.instrument(meter_provider=provider)
    first, second = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    try:
        first.run_until_complete(asyncio.sleep(0.01))
        second.run_until_complete(asyncio.sleep(0.01))
        numbers = {p.attributes["ferroloop.loop"] for p in collected(metric_reader)["ferroloop.loop.callbacks"]}
        assert {first._run_clock.number, second._run_clock.number} <= numbers
    finally:
        handle.uninstrument()
        first.close()
        second.close()


async def stalls_for(seconds: float) -> None:
    await asyncio.sleep(0)
    time.sleep(seconds)  # THE BLOCKING LINE
    await asyncio.sleep(0.05)  # the watchdog reports the end meanwhile


def test_a_stall_is_a_log_record_with_its_culprit(loop, reader):
    _, provider = reader
    exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handle = fotel.instrument(loop, meter_provider=provider, logger_provider=logger_provider, watchdog=0.1)
    try:
        loop.run_until_complete(loop.create_task(stalls_for(0.4), name="sleepy"))
    finally:
        handle.uninstrument()
        loop.disable_watchdog()
    records = [exported.log_record for exported in exporter.get_finished_logs()]
    assert [r.event_name for r in records] == [fotel.STALL_EVENT, fotel.STALL_END_EVENT]
    stall, end = records
    culprit = stall.attributes["ferroloop.stall.culprit"]
    # The innermost line of the program's own code, what it blocks in, and
    # the task.
    assert culprit.startswith(f"stalls_for() at {__file__}:") and culprit.endswith("(sleep); task 'sleepy'"), culprit
    assert stall.attributes["ferroloop.stall.task"] == "sleepy"
    assert stall.attributes["ferroloop.stall.threshold"] == pytest.approx(0.1)
    assert "time.sleep(seconds)  # THE BLOCKING LINE" in stall.attributes["code.stacktrace"]
    assert str(stall.body).startswith("event loop stalled: one callback has run for ")
    assert end.attributes["ferroloop.stall.duration"] >= 0.35
    assert stall.severity_text == "WARN"


def test_a_stall_is_an_event_on_the_stalled_tasks_span(loop, reader):
    _, provider = reader
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = tracer_provider.get_tracer("test")
    exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    if sys.version_info < (3, 12):
        # Before Task.get_context(), the running handle's context says which
        # span is current; the loop keeps that handle in debug mode.
        loop.set_debug(True)
        loop.slow_callback_duration = 10

    async def request() -> None:
        with tracer.start_as_current_span("request"):
            await stalls_for(0.4)

    handle = fotel.instrument(loop, meter_provider=provider, logger_provider=logger_provider, watchdog=0.1)
    try:
        loop.run_until_complete(loop.create_task(request(), name="request-1"))
    finally:
        handle.uninstrument()
        loop.disable_watchdog()
    [span] = spans.get_finished_spans()
    events = [event.name for event in span.events]
    assert events == [fotel.STALL_EVENT, fotel.STALL_END_EVENT]
    assert span.events[0].attributes["ferroloop.stall.task"] == "request-1"
    assert "THE BLOCKING LINE" in span.events[0].attributes["code.stacktrace"]
    assert exporter.get_finished_logs() == ()  # the span had them


def test_uninstrument_gives_the_watchdog_its_callback_back(loop, reader):
    _, provider = reader
    seen = []
    loop.enable_watchdog(0.1, callback=seen.append)
    handle = fotel.instrument(loop, meter_provider=provider)
    assert loop._stall_reporter.callback is not seen.append
    handle.uninstrument()
    assert loop._stall_reporter.callback == seen.append
    loop.run_until_complete(stalls_for(0.3))
    loop.disable_watchdog()
    assert [record["event"] for record in seen] == ["stall", "stall_end"]


def test_the_culprit_the_watchdog_names_comes_first():
    record = {"event": "stall", "duration": 0.2, "threshold": 0.1, "task": "t", "coroutine": "c",
              "coroutine_location": "a.py:1", "stack": [("a.py", 1, "c", "x")], "thread_id": 1,
              "reported_at": 0.0, "culprit": ("app.py", 12, "parse_body"), "blocking_kind": "file"}
    assert fotel.culprit(record) == "parse_body() at app.py:12 (file); task 't'"
    del record["culprit"]
    assert fotel.culprit(record) == "task 't' (coroutine c() at a.py:1)"
    record["stack"] = [("a.py", 1, "c", "x"), ("b.py", 7, "parse", "y")]
    assert fotel.culprit(record) == "task 't' (coroutine c() at a.py:1), blocking in parse() at b.py:7"
    record["task"] = None
    assert fotel.culprit(record) == "callback parse() at b.py:7"


def test_without_opentelemetry_instrument_says_what_to_install(tmp_path):
    # A directory that shadows the package with one that cannot be imported.
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    code = (
        "import ferroloop.opentelemetry as o\n"
        "try:\n    o.instrument()\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ferroloop.opentelemetry needs opentelemetry-api: pip install 'ferroloop[opentelemetry]'"
