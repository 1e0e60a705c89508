"""loop.metrics() and the OpenMetrics exposition."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

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


def test_stream_bytes_and_open_transports_are_counted(loop):
    payload = b"x" * 300_000  # more than one read and, likely, one send

    async def echo(reader, writer):
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        await reader.read()  # stay open until the client closes
        writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = loop.metrics()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        during = loop.metrics()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return before, during, echoed, loop.metrics()

    before, during, echoed, after = loop.run_until_complete(main())
    assert echoed == payload
    # Both ends live in this loop: each byte is sent and received twice.
    assert during["bytes_sent_total"] - before["bytes_sent_total"] == 2 * len(payload)
    assert during["bytes_received_total"] - before["bytes_received_total"] == 2 * len(payload)
    assert (before["open_transports"], during["open_transports"], after["open_transports"]) == (0, 2, 0)


def test_buffered_protocol_reads_are_counted(loop):
    class Sink(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(1000)
            self.total = 0
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.total += nbytes

        def eof_received(self):
            self.done.set_result(self.total)

    async def main():
        sink = Sink()
        server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"y" * 12_345)
        writer.write_eof()
        total = await sink.done
        writer.close()
        server.close()
        return total

    assert loop.run_until_complete(main()) == 12_345
    metrics = loop.metrics()
    assert metrics["bytes_received_total"] == 12_345
    assert metrics["bytes_sent_total"] == 12_345


def test_datagram_bytes_are_counted_and_the_socket_is_the_real_one(loop):
    import socket

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.reply = loop.create_future()

        def datagram_received(self, data, addr):
            self.reply.set_result(data)

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        client, protocol = await loop.create_datagram_endpoint(Client, remote_addr=address)
        assert isinstance(client.get_extra_info("socket").fileno(), int)
        assert client.get_extra_info("socket").type == socket.SOCK_DGRAM
        open_now = loop.metrics()["open_transports"]
        client.sendto(b"ping!")
        reply = await protocol.reply
        client.close()
        server.close()
        await asyncio.sleep(0.01)
        return open_now, reply

    open_now, reply = loop.run_until_complete(main())
    assert reply == b"PING!"
    assert open_now == 2
    metrics = loop.metrics()
    assert (metrics["bytes_sent_total"], metrics["bytes_received_total"], metrics["open_transports"]) == (10, 10, 0)


def test_pipe_transports_count_as_open(loop):
    import os

    async def main():
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_fd, "wb"))
        open_now = loop.metrics()["open_transports"]
        write_transport.write(b"through the pipe")
        write_transport.close()
        data = await reader.read()
        read_transport.close()
        await asyncio.sleep(0.01)
        return open_now, data, loop.metrics()["open_transports"]

    assert loop.run_until_complete(main()) == (2, b"through the pipe", 0)


def test_openmetrics_text_reports_transport_counters(loop):
    test_buffered_protocol_reads_are_counted(loop)
    families = {f.name: f for f in parser.text_string_to_metric_families(ferroloop.openmetrics_text([loop]))}
    assert families["ferroloop_received_bytes"].samples[0].value == 12_345
    assert families["ferroloop_sent_bytes"].samples[0].value == 12_345
    assert families["ferroloop_transports"].samples[0].value == 0


@pytest.mark.parametrize("watchdog", [True, False], ids=["watchdog", "no-watchdog"])
def test_metrics_see_the_age_of_the_callback_running_now(loop, watchdog):
    """Two seconds into a stall no timer has fired late yet; the age of the
    running callback shows the stall anyway."""
    if watchdog:
        loop.enable_watchdog(0.05, callback=lambda record: None)
    started = threading.Event()
    readings: list[tuple[float, float]] = []

    def reader() -> None:
        started.wait(10)
        loop.metrics()  # the first reading starts the clock without the watchdog
        began = time.monotonic()
        time.sleep(0.6)
        readings.append((time.monotonic() - began, loop.metrics()["current_callback_age_seconds"]))

    thread = threading.Thread(target=reader)
    thread.start()

    async def stall() -> None:
        started.set()
        time.sleep(1.0)

    loop.run_until_complete(stall())
    thread.join(10)
    [(elapsed, age)] = readings
    assert age >= elapsed
    assert age < 5
    assert loop.metrics()["current_callback_age_seconds"] == 0.0  # nothing runs now
    assert "ferroloop_current_callback_age_seconds{" in ferroloop.openmetrics_text([loop])
