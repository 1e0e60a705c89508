"""Pipe transports: the set-up asyncio's ``_UnixReadPipeTransport`` and
``_UnixWritePipeTransport`` do in their constructors (file kind check,
non-blocking mode, ``connection_made`` and the waiter scheduled), around
the native ``ReadPipeTransport`` and ``WritePipeTransport``."""

from __future__ import annotations

import os
import stat
import sys
from asyncio import futures, transports
from typing import Any, Optional

from ._native import LoopCore, ReadPipeTransport, WritePipeTransport


class ReadPipeTransportClass(transports.ReadTransport):
    """What a ``ReadPipeTransport`` reports as its ``__class__``, so that
    ``isinstance(transport, asyncio.ReadTransport)`` holds. Never
    instantiated."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "ReadPipeTransportClass":
        raise TypeError("ReadPipeTransportClass only describes ReadPipeTransport; it is not instantiated")


class WritePipeTransportClass(transports._FlowControlMixin, transports.WriteTransport):  # type: ignore[name-defined,misc]
    """What a ``WritePipeTransport`` reports as its ``__class__``, so that
    ``isinstance(transport, asyncio.WriteTransport)`` holds. Never
    instantiated."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "WritePipeTransportClass":
        raise TypeError("WritePipeTransportClass only describes WritePipeTransport; it is not instantiated")


# On AIX only sockets report their reader closing as readability.
_FIFO_READER_WATCHABLE = not sys.platform.startswith("aix")


def _extra(pipe: Any, extra: Optional[dict[str, Any]]) -> dict[str, Any]:
    info = dict(extra) if extra else {}
    info["pipe"] = pipe
    return info


def make_read_pipe_transport(
    loop: LoopCore, pipe: Any, protocol: Any, waiter: Any = None, extra: Optional[dict[str, Any]] = None
) -> ReadPipeTransport:
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError("Pipe transport is for pipes/sockets only.")
    os.set_blocking(fileno, False)
    transport = ReadPipeTransport(loop, pipe, protocol, _extra(pipe, extra))
    loop.call_soon(protocol.connection_made, transport)
    # Only start reading when connection_made() has been called.
    loop.call_soon(transport._start_reading)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]
    return transport


def make_write_pipe_transport(
    loop: LoopCore, pipe: Any, protocol: Any, waiter: Any = None, extra: Optional[dict[str, Any]] = None
) -> WritePipeTransport:
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    is_char = stat.S_ISCHR(mode)
    is_fifo = stat.S_ISFIFO(mode)
    is_socket = stat.S_ISSOCK(mode)
    if not (is_char or is_fifo or is_socket):
        raise ValueError("Pipe transport is only for pipes, sockets and character devices")
    os.set_blocking(fileno, False)
    transport = WritePipeTransport(loop, pipe, protocol, _extra(pipe, extra))
    loop.call_soon(protocol.connection_made, transport)
    if is_socket or (is_fifo and _FIFO_READER_WATCHABLE):
        loop.call_soon(transport._start_watching)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]
    return transport
