"""The native pipe transports (connect_read_pipe, connect_write_pipe),
compared with asyncio's unix_events pipe transports: the same scenario runs
on both loops and must give the same observations."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import logging
import os
import socket
import sys
import tempfile
from typing import Any, Awaitable, Callable

import pytest

import ferroloop

from netutil import run_with_loop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}

# FERROLOOP_PIPE_SOAK_MIB=1024 (scripts/soak-pipes.sh) makes the integrity
# test move 1 GiB.
INTEGRITY_MIB = int(os.environ.get("FERROLOOP_PIPE_SOAK_MIB", "256"))


def on_both(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]) -> Any:
    """Runs ``scenario`` on asyncio and on ferroloop; asserts they agree and
    returns ferroloop's result."""
    results = {}
    for name, factory in LOOPS.items():

        async def main() -> Any:
            return await scenario(asyncio.get_running_loop())

        results[name] = run_with_loop(factory, main())
    assert results["ferroloop"] == results["asyncio"]
    return results["ferroloop"]


def is_reading(transport: Any) -> Any:
    """``transport.is_reading()``; 3.10's read pipe transport lacks it (the
    base class raises NotImplementedError)."""
    try:
        return transport.is_reading()
    except NotImplementedError:
        return "not implemented"


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = bytearray()
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


def test_256_mib_through_a_pipe_into_a_stream_reader_arrives_intact() -> None:
    total = INTEGRITY_MIB << 20
    chunk = os.urandom(1 << 20)

    async def scenario(loop: asyncio.AbstractEventLoop) -> tuple[int, bool]:
        r, w = os.pipe()
        reader = asyncio.StreamReader(limit=1 << 16)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        wt, wp = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0))
        writer = asyncio.StreamWriter(wt, wp, None, loop)
        sent = hashlib.sha256()

        async def produce() -> None:
            for i in range(total // len(chunk)):
                # Mixed pieces: bytes, bytearray, memoryview slices.
                piece = bytes([i % 251]) + chunk[1:]
                sent.update(piece)
                writer.write(piece[: 1 << 19])
                writer.write(bytearray(piece[1 << 19 : 3 << 18]))
                writer.write(memoryview(piece)[3 << 18 :])
                await writer.drain()
            writer.close()

        producer = asyncio.ensure_future(produce())
        got = hashlib.sha256()
        count = 0
        while True:
            data = await reader.read(1 << 18)
            if not data:
                break
            got.update(data)
            count += len(data)
        await producer
        return count, got.digest() == sent.digest()

    result = run_with_loop(ferroloop.new_event_loop, _call(scenario))
    assert result == (total, True)


def _call(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await scenario(asyncio.get_running_loop())

    return main()


def test_read_transport_delivers_data_then_eof_then_connection_lost() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        pipe = os.fdopen(r, "rb", 0)
        transport, proto = await loop.connect_read_pipe(Recorder, pipe)
        checks = [
            isinstance(transport, asyncio.ReadTransport),
            transport.get_extra_info("pipe") is pipe,
            transport.get_extra_info("nothing", 7),
            os.get_blocking(r),
            is_reading(transport),
            transport.is_closing(),
        ]
        os.write(w, b"hello")
        await asyncio.sleep(0.05)
        os.write(w, b" world")
        os.close(w)
        await proto.lost
        checks += [bytes(proto.data), proto.events, transport.is_closing(), pipe.closed]
        return checks

    result = on_both(scenario)
    reading = "not implemented" if sys.version_info < (3, 11) else True
    assert result == [True, True, 7, False, reading, False, b"hello world", ["made", "data", "eof", ("lost", None)], True, True]


def test_pause_and_resume_reading() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        transport.pause_reading()
        seen = [is_reading(transport)]
        transport.pause_reading()  # a no-op when paused
        os.write(w, b"abc")
        await asyncio.sleep(0.05)
        seen.append(bytes(proto.data))
        transport.resume_reading()
        transport.resume_reading()  # a no-op when reading
        seen.append(is_reading(transport))
        await asyncio.sleep(0.05)
        seen.append(bytes(proto.data))
        transport.close()
        seen.append(is_reading(transport))
        transport.resume_reading()
        await proto.lost
        os.close(w)
        seen.append(proto.events)
        return seen

    events = ["made", "data", ("lost", None)]
    if sys.version_info < (3, 11):
        assert on_both(scenario) == ["not implemented", b"", "not implemented", b"abc", "not implemented", events]
    else:
        assert on_both(scenario) == [False, b"", True, b"abc", False, events]


def test_paused_before_connection_made_reads_nothing_until_resumed() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        os.write(w, b"early")

        class PausingRecorder(Recorder):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                transport.pause_reading()  # type: ignore[attr-defined]

        transport, proto = await loop.connect_read_pipe(PausingRecorder, os.fdopen(r, "rb", 0))
        await asyncio.sleep(0.05)
        before = bytes(proto.data)
        transport.resume_reading()
        await asyncio.sleep(0.05)
        transport.close()
        os.close(w)
        await proto.lost
        return before, bytes(proto.data)

    expected = (b"early", b"early") if sys.version_info < (3, 11) else (b"", b"early")
    assert on_both(scenario) == expected


def test_write_transport_writes_buffers_and_controls_flow() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        seen: list[Any] = [
            isinstance(transport, asyncio.WriteTransport),
            transport.can_write_eof(),
            transport.get_write_buffer_limits(),
            os.get_blocking(w),
        ]
        transport.set_write_buffer_limits(high=1000)
        seen.append(transport.get_write_buffer_limits())
        transport.set_write_buffer_limits(low=10)
        seen.append(transport.get_write_buffer_limits())
        with pytest.raises(ValueError) as info:
            transport.set_write_buffer_limits(high=1, low=2)
        seen.append(str(info.value))
        transport.set_write_buffer_limits(high=4096, low=1024)
        transport.write(b"")
        transport.write(b"x" * 1000)
        seen.append(transport.get_write_buffer_size())
        big = b"y" * (1 << 20)
        transport.write(big)
        buffered = transport.get_write_buffer_size()
        seen.append(0 < buffered <= len(big))
        seen.append(list(proto.events))
        data = bytearray(b"z" * 10)
        transport.writelines([data, b"!"])
        data[:] = b"-" * 10  # the transport kept a copy
        received = bytearray()
        os.set_blocking(r, False)
        while len(received) < 1000 + len(big) + 11:
            await asyncio.sleep(0.001)
            try:
                received += os.read(r, 1 << 20)
            except BlockingIOError:
                pass
        await asyncio.sleep(0.01)
        seen.append(bytes(received) == b"x" * 1000 + big + b"z" * 10 + b"!")
        seen.append(list(proto.events))
        seen.append(transport.get_write_buffer_size())
        transport.write_eof()
        seen.append(transport.is_closing())
        await proto.lost
        seen.append(proto.events[-1])
        seen.append(os.read(r, 10))  # EOF: the write end is closed
        os.close(r)
        return seen

    result = on_both(scenario)
    assert result[0] is True and result[-2:] == [("lost", None), b""]
    assert result[6] == "high (1) must be >= low (2) must be >= 0"


def test_write_rejects_what_asyncio_rejects() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        seen = []
        for bad in ("text", 12, None):
            try:
                transport.write(bad)
            except AssertionError as exc:
                seen.append(str(exc))
        transport.close()
        await proto.lost
        os.close(r)
        return seen

    assert on_both(scenario) == ["'text'", "12", "None"]


def test_the_reader_closing_ends_the_write_transport() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop, fill: bool) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        if fill:
            transport.write(b"q" * (1 << 20))
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 10)
        return type(exc).__name__ if exc else None, transport.is_closing(), transport.get_write_buffer_size()

    async def with_buffer(loop: asyncio.AbstractEventLoop) -> Any:
        return await scenario(loop, True)

    async def without_buffer(loop: asyncio.AbstractEventLoop) -> Any:
        return await scenario(loop, False)

    assert on_both(with_buffer) == ("BrokenPipeError", True, 0)
    assert on_both(without_buffer) == (None, True, 0)


def test_writes_after_loss_are_dropped_with_asyncios_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        os.close(r)
        transport.write(b"a")  # EPIPE: the transport fails at once
        await proto.lost
        caplog.clear()
        for _ in range(8):
            transport.write(b"b")
        return [r.getMessage() for r in caplog.records if r.name == "asyncio"]

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        messages = on_both(scenario)
    assert messages == ["pipe closed by peer or os.write(pipe, data) raised exception."] * 4


def test_abort_drops_the_buffer() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        transport.write(b"a" * (1 << 20))
        transport.abort()
        size = transport.get_write_buffer_size()
        await proto.lost
        os.close(r)
        return size, proto.events[-1]

    assert on_both(scenario) == (0, ("lost", None))


def test_files_that_are_not_pipes_get_asyncios_value_errors() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        messages = []
        with tempfile.TemporaryFile() as regular:
            for connect in (loop.connect_read_pipe, loop.connect_write_pipe):
                try:
                    await connect(asyncio.Protocol, regular)
                except ValueError as exc:
                    messages.append(str(exc))
            messages.append(regular.closed)
        return messages

    assert on_both(scenario) == [
        "Pipe transport is for pipes/sockets only.",
        "Pipe transport is only for pipes, sockets and character devices",
        False,
    ]


def test_sockets_work_as_pipes() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        a, b = socket.socketpair()
        rt, rp = await loop.connect_read_pipe(Recorder, a)
        wt, wp = await loop.connect_write_pipe(Recorder, b)
        wt.write(b"via socket")
        await asyncio.sleep(0.05)
        wt.close()
        await wp.lost
        await rp.lost
        return bytes(rp.data), rp.events, wp.events

    assert on_both(scenario) == (b"via socket", ["made", "data", "eof", ("lost", None)], ["made", ("lost", None)])


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs os.openpty")
def test_one_pty_fd_carries_a_read_and_a_write_transport() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        master, slave = os.openpty()
        import tty

        tty.setraw(slave)
        read_obj = io.open(master, "rb", 0)
        write_obj = io.open(master, "wb", 0, closefd=False)
        rt, rp = await loop.connect_read_pipe(Recorder, read_obj)
        wt, wp = await loop.connect_write_pipe(Recorder, write_obj)
        wt.write(b"to slave")
        os.set_blocking(slave, False)
        got = b""
        while len(got) < 8:
            await asyncio.sleep(0.01)
            try:
                got += os.read(slave, 100)
            except BlockingIOError:
                pass
        os.write(slave, b"to master")
        while len(rp.data) < 9:
            await asyncio.sleep(0.01)
        # Read side first: asyncio's write transport, closing, removes the
        # fd's reader, which is the read transport's.
        rt.close()
        await rp.lost
        wt.close()
        await wp.lost
        os.close(slave)
        return got, bytes(rp.data), rp.events[-1], wp.events[-1]

    assert on_both(scenario) == (b"to slave", b"to master", ("lost", None), ("lost", None))


def test_bytes_moved_through_pipes_are_counted_and_transports_too() -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        before = loop._io_totals()  # type: ignore[attr-defined]
        count_before = loop._open_transport_count()  # type: ignore[attr-defined]
        rt, rp = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        wt, wp = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        opened = loop._open_transport_count()  # type: ignore[attr-defined]
        wt.write(b"x" * 100_000)
        while len(rp.data) < 100_000:
            await asyncio.sleep(0.01)
        wt.close()
        await rp.lost
        await wp.lost
        after = loop._io_totals()  # type: ignore[attr-defined]
        return (
            after[0] - before[0],
            after[1] - before[1],
            opened - count_before,
            loop._open_transport_count() - count_before,  # type: ignore[attr-defined]
        )

    assert run_with_loop(ferroloop.new_event_loop, main()) == (100_000, 100_000, 2, 0)


def test_an_unclosed_transport_warns_and_closes_its_pipe() -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        pipe = os.fdopen(r, "rb", 0)
        transport, _ = await loop.connect_read_pipe(asyncio.Protocol, pipe)
        return transport, pipe, w

    transport, pipe, w = run_with_loop(ferroloop.new_event_loop, main())
    assert "open" in repr(transport)
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        del transport
        import gc

        gc.collect()
    assert pipe.closed
    os.close(w)


def test_protocol_errors_in_data_received_reach_the_exception_handler() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> Any:
        errors: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(type(context.get("exception")).__name__))

        class Failing(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                raise ZeroDivisionError

        r, w = os.pipe()
        transport, proto = await loop.connect_read_pipe(Failing, os.fdopen(r, "rb", 0))
        os.write(w, b"1")
        await asyncio.sleep(0.05)
        os.write(w, b"2")
        await asyncio.sleep(0.05)
        os.close(w)
        await proto.lost
        return errors, bytes(proto.data), proto.events[-1]

    assert on_both(scenario) == (["ZeroDivisionError"] * 2, b"12", ("lost", None))


def test_a_write_that_must_wait_on_a_closed_loop_raises_asyncios_error() -> None:
    outcomes = {}
    for name, factory in LOOPS.items():
        loop = factory()
        r, w = os.pipe()

        async def connect() -> Any:
            return await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))

        transport, _ = loop.run_until_complete(connect())
        loop.close()
        transport.write(b"fits")
        try:
            transport.write(b"z" * (1 << 20))
            outcomes[name] = "no error"
        except RuntimeError as exc:
            outcomes[name] = str(exc)
        transport._pipe.close()
        transport._pipe = None
        os.close(r)
    assert outcomes == {"asyncio": "Event loop is closed", "ferroloop": "Event loop is closed"}


def test_a_collection_while_a_pipe_transport_is_being_made_does_not_crash() -> None:
    # A collection at every allocation, and no free dicts for the
    # transport's instance __dict__ to reuse: a collection comes while that
    # dict is made, before the transport's fields are set.
    async def main() -> int:
        loop = asyncio.get_running_loop()
        made = 0
        for _ in range(50):
            read_fd, write_fd = os.pipe()
            with open(read_fd, "rb", buffering=0) as reader, open(write_fd, "wb", buffering=0) as writer:
                free_dicts_taken = [{} for _ in range(200)]
                read_tr, _ = await loop.connect_read_pipe(asyncio.Protocol, reader)
                write_tr, _ = await loop.connect_write_pipe(asyncio.Protocol, writer)
                del free_dicts_taken
                made += 2
                write_tr.close()
                read_tr.close()
                await asyncio.sleep(0)
        return made

    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        assert run_with_loop(ferroloop.new_event_loop, main()) == 100
    finally:
        gc.set_threshold(*thresholds)
