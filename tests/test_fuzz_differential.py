"""Differential fuzzing: random sequences of event loop and transport calls run
on stock asyncio (the selector loop) and on ferroloop, compared call by call.

Each generated sequence runs on a fresh loop of each kind. A step is a Python
expression (or a few, separated by "; ") over a small namespace of objects
every world builds the same way: ``loop``, socket pairs, callbacks that raise,
protocols that misbehave, odd values (``nan``, ``10**400``, ``b'x'``...). The
text of a step is exactly what runs, so a failure message reads as a script.

Per step the outcome is compared: the result's kind (loop-specific objects
reduced to 'Handle', 'TimerHandle', 'Future', 'Task', 'Transport'...; None,
bools, numbers, strings and bytes compared by value), or the exception's type
and its message with addresses, file descriptor numbers and object reprs
normalised away. Everything the loop reports meanwhile is compared too: the
contexts the custom exception handler receives (message and exception type),
the first line of what the default handler logs, and the protocol callbacks.

Helpers in the namespace:

- ``run(fn, *args, timeout=0.05)`` calls ``fn(*args)`` (an exception there is
  reported as "raise at call") and then runs
  ``loop.run_until_complete(asyncio.wait_for(<result>, timeout))``;
- ``connect(loop.create_connection, Factory, sock=...)`` is ``run`` with a
  1 s bound that also names the new transport ``transport`` for later steps.

The bounded slice (the default) uses a fixed seed and a bounded example count;
``scripts/fuzz.sh`` runs longer with a random seed:

- ``FERROLOOP_FUZZ_EXAMPLES``: number of sequences (default 1000, about 25 s);
- ``FERROLOOP_FUZZ_SEED``: a seed (default: derandomized, fixed);
- ``FERROLOOP_FUZZ_COLLECT=<file.jsonl>``: do not fail; minimise every
  mismatch and append it to the file, one JSON object per line;
- ``FERROLOOP_FUZZ_SELFCHECK=1``: run stock asyncio on both sides, to check
  that the harness itself is deterministic;
- ``FERROLOOP_FUZZ_IGNORE=<file>``: more regular expressions, one per line, treated as
  DOCUMENTED_DIFFERENCES are (to look past differences already known);
- ``FERROLOOP_FUZZ_TRACE=<file>``: before each sequence runs on a loop, write
  it to the file, so that a crash (segfault, abort) leaves its sequence behind.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import gc
import inspect
import json
import logging
import math
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ferroloop
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from netutil import hang_guard

# A difference listed here is deliberate. Where the first mismatch of a
# sequence matches a pattern, the comparison of that sequence ends there (the
# loops' states have diverged on purpose). A pattern is a regular expression
# searched (re.MULTILINE) in the scene of the mismatch: one line per step up
# to the mismatching one, earlier steps indented by three spaces and that one
# marked "!! ", then "asyncio: <outcome>" and "ferroloop: <outcome>" on one
# line each. Pattern -> why it differs; each is in the README's "Where it
# differs from asyncio, on purpose".
_NOT_CALLABLE = r"(1|None|'x')[,)]"
DOCUMENTED_DIFFERENCES: dict[str, str] = {
    # A blocking socket (here one with a timeout) is refused by every sock_*
    # call; asyncio checks only in debug mode.
    r"^!! run\(loop\.sock_\w+, timeout_sock\b": "a blocking socket is refused in every mode",
    # A callback that is not callable is refused when it is scheduled;
    # asyncio checks only in debug mode and otherwise fails when it runs.
    rf"^!! loop\.(call_soon|call_soon_threadsafe)\({_NOT_CALLABLE}": "a non-callable callback is refused at once",
    rf"^!! loop\.(call_later|call_at)\([^,\n]+, {_NOT_CALLABLE}": "a non-callable callback is refused at once",
    # A deadline that is not a real number fails call_at with the error
    # asyncio raises later, from inside the loop, when the timer comes due.
    r"^!! loop\.call_at\((b'1'|'x'|-?10\*\*400), ": "a deadline that is not a real number is refused at once",
    # asyncio's timer heap misorders a NaN deadline: behind a later timer it
    # waits for that one (here, for good). ferroloop runs it at once.
    r"^!! loop\.run_until_complete\(asyncio\.sleep\(nan\)\)\nasyncio: .*the step had not finished":
        "a NaN delay is due at once, whatever other timers there are",
    r"^   loop\.(call_later\(nan|call_at\(nan|run_until_complete\(asyncio\.sleep\(nan\))(?s:.*)^!! <teardown(?-s:.*)"
    r"\nasyncio: .*(\[TimeoutError\]|Task was destroyed but it is pending)":
        "a NaN delay is due at once, whatever other timers there are",
    # eof_received's result without a truth value: asyncio's reader stays
    # registered at EOF and reports the error again on every iteration;
    # ferroloop reports it once.
    r"^asyncio: .*EofBadBoolProtocol\.eof_received \| handler: Exception in callback <loop internal> \[ValueError\]"
    r".*\nferroloop: (?!.*EofBadBoolProtocol\.eof_received)":
        "an eof_received result without a truth value is reported once",
    # A transport takes its fd over for both directions: an add_writer
    # callback on the fd is cancelled. asyncio leaves it running until the
    # transport first waits to write.
    r"^   loop\.add_writer\(transport_sock(\.fileno\(\))?, (?s:.*)^   connect\([^\n]*sock=transport_sock\)"
    r"(?s:.*)^asyncio: .*\| (cb_\w+ ran|handler: Exception in callback cb_)":
        "a transport cancels fd callbacks on its socket",
    # asyncio 3.13's run_forever, called re-entrantly from a callback, fails
    # (already running) and then resets the running loop's state on its way
    # out: a stop() already asked for is lost. ferroloop leaves the running
    # loop as it was, as asyncio up to 3.12 does.
    r"^asyncio: .*the step had not finished.*Exception in callback World\.cb_reenter_forever\(":
        "a re-entrant run_forever leaves the running loop as it was",
    r"^   loop\.\w+\(([^,\n]+, )?cb_reenter_forever\b(?s:.*)^asyncio: .*(no running event loop|the step had not finished)":
        "a re-entrant run_forever leaves the running loop as it was",
    # Since 3.12 asyncio's writelines() buffers what it cannot send without
    # checking the high-water mark: the protocol is never paused. ferroloop's
    # applies flow control as write() does (and asyncio up to 3.11).
    r"^!! transport\.writelines\(.*\nasyncio: (?!.*pause_writing).*\nferroloop: .*\.pause_writing":
        "writelines applies flow control",
    # asyncio 3.12+'s writelines() on a closed or aborted transport uses its
    # cleared state (write callback, loop); ferroloop ignores it, as write()
    # is.
    r"^!! transport\.writelines\(.*\nasyncio: raise (TypeError: 'NoneType' object is not callable"
    r"|AttributeError: 'NoneType' object has no attribute)":
        "writelines on a closed transport is ignored as write is",
    # Python 3.10's create_task has no context parameter; ferroloop refuses a
    # context there too, but cannot tell context=None from no context.
    r"^!! loop\.create_task\(.*context=None\)\nasyncio: raise TypeError: BaseEventLoop\.create_task\(\) got an unexpected keyword argument 'context'":
        "3.10: create_task(context=None) is accepted",
    # A protocol without connection_made: asyncio has made the transport by
    # then, and that half-made transport closes the socket when it is
    # collected (until then, it is the socket's transport, and remove_writer
    # on the socket fails); ferroloop fails before making one, and the
    # socket stays as it was.
    r"^   connect\([^\n]*, not_a_protocol, sock=\w+\)\n(?s:.*)"
    r"^asyncio: .*(Bad file descriptor|is used by transport|Task was destroyed but it is pending)":
        "a protocol without connection_made leaves the socket open",
    # sendto() on a datagram transport whose connection_lost() has run:
    # asyncio counts and drops it when connected, and fails on the socket it
    # no longer has when not; ferroloop counts and drops it either way.
    r"^!! transport\.sendto\(.*\nasyncio: raise AttributeError: 'NoneType' object has no attribute '(call_exception_handler|sendto|send)'":
        "sendto after connection_lost is counted and dropped",
}

EXAMPLES = int(os.environ.get("FERROLOOP_FUZZ_EXAMPLES", "1000"))
SEED = os.environ.get("FERROLOOP_FUZZ_SEED")
COLLECT = os.environ.get("FERROLOOP_FUZZ_COLLECT")
SELFCHECK = os.environ.get("FERROLOOP_FUZZ_SELFCHECK") == "1"
TRACE = os.environ.get("FERROLOOP_FUZZ_TRACE")
IGNORE_FILE = os.environ.get("FERROLOOP_FUZZ_IGNORE")
MAX_STEPS = 12
# A step still running after this long is stopped from a thread (the slowest
# steps wait 1 s on purpose); a wedged callback trips hang_guard at 120 s.
STEP_LIMIT = 3.0

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": asyncio.new_event_loop if SELFCHECK else ferroloop.new_event_loop,
}


# --------------------------------------------------------------------------
# Callbacks, coroutines, handlers and protocols the steps refer to by name.


class FuzzInterrupt(KeyboardInterrupt):
    """The KeyboardInterrupt the callbacks raise; a plain KeyboardInterrupt
    (Ctrl-C) is never swallowed by the harness."""


def cb_noop(*args: Any) -> None:
    pass


def cb_raise(*args: Any) -> None:
    raise ValueError("cb_raise")


def cb_system_exit(*args: Any) -> None:
    raise SystemExit(3)


def cb_keyboard_interrupt(*args: Any) -> None:
    raise FuzzInterrupt("cb_keyboard_interrupt")


def cb_generator_exit(*args: Any) -> None:
    raise GeneratorExit("cb_generator_exit")


def return_args(*args: Any) -> tuple[Any, ...]:
    return args


async def coro_function(*args: Any) -> None:
    pass


async def coro_return(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


async def coro_raise() -> None:
    await asyncio.sleep(0)
    raise ValueError("coro_raise")


async def coro_system_exit() -> None:
    raise SystemExit(4)


async def coro_keyboard_interrupt() -> None:
    await asyncio.sleep(0)
    raise FuzzInterrupt("coro_keyboard_interrupt")


async def coro_generator_exit() -> None:
    raise GeneratorExit("coro_generator_exit")


def generator() -> Iterator[None]:
    yield None


def handler_raises(loop: asyncio.AbstractEventLoop, context: Any) -> None:
    raise ValueError("handler_raises")


def handler_one_arg(context: Any) -> None:
    pass


def handler_keyboard_interrupt(loop: asyncio.AbstractEventLoop, context: Any) -> None:
    raise FuzzInterrupt("handler_keyboard_interrupt")


def task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    return asyncio.Task(coro, loop=loop, **kwargs)


def factory_returns_1(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> int:
    coro.close()
    return 1


def factory_raises(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> None:
    coro.close()
    raise ValueError("factory_raises")


def protocol_factory_raises() -> asyncio.Protocol:
    raise ValueError("protocol_factory_raises")


def not_a_protocol() -> int:
    return 1


class NoTruth:
    def __bool__(self) -> bool:
        raise ValueError("NoTruth.__bool__")


class BadFileno:
    def fileno(self) -> str:
        return "x"


Note = Callable[[str], None]


class PlainProtocol(asyncio.Protocol):
    """Records every callback as an event."""

    def __init__(self, note: Note) -> None:
        self.note = note

    def _event(self, text: str) -> None:
        self.note(f"{type(self).__name__}.{text}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._event("connection_made")

    def data_received(self, data: bytes) -> None:
        self._event(f"data_received({describe_bytes(data)})")

    def eof_received(self) -> Any:
        self._event("eof_received")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._event(f"connection_lost({type(exc).__name__ if exc else None})")

    def pause_writing(self) -> None:
        self._event("pause_writing")

    def resume_writing(self) -> None:
        self._event("resume_writing")


class RaisingProtocol(PlainProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        raise ValueError("data_received")


class MadeRaisesProtocol(PlainProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        raise ValueError("connection_made")


class EofKeepOpenProtocol(PlainProtocol):
    def eof_received(self) -> Any:
        super().eof_received()
        return True


class EofBadBoolProtocol(PlainProtocol):
    def eof_received(self) -> Any:
        super().eof_received()
        return NoTruth()


class EofRaisesProtocol(PlainProtocol):
    def eof_received(self) -> Any:
        super().eof_received()
        raise ValueError("eof_received")


class BufferedRecorder(asyncio.BufferedProtocol, PlainProtocol):
    """A BufferedProtocol with a good 64-byte buffer."""

    def __init__(self, note: Note) -> None:
        PlainProtocol.__init__(self, note)
        self.buffer = bytearray(64)

    def get_buffer(self, sizehint: int) -> Any:
        self._event("get_buffer")
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._event(f"buffer_updated({describe_bytes(bytes(self.buffer[:nbytes]))})")


class ReadOnlyBufferProtocol(BufferedRecorder):
    def get_buffer(self, sizehint: int) -> Any:
        super().get_buffer(sizehint)
        return bytes(64)


class EmptyBufferProtocol(BufferedRecorder):
    def get_buffer(self, sizehint: int) -> Any:
        super().get_buffer(sizehint)
        return bytearray(0)


class NoneBufferProtocol(BufferedRecorder):
    def get_buffer(self, sizehint: int) -> Any:
        super().get_buffer(sizehint)
        return None


class RaisingBufferProtocol(BufferedRecorder):
    def get_buffer(self, sizehint: int) -> Any:
        super().get_buffer(sizehint)
        raise ValueError("get_buffer")


class DatagramRecorder(PlainProtocol):
    """A datagram protocol recording its callbacks too."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._event(f"datagram_received({describe_bytes(data)})")

    def error_received(self, exc: Exception) -> None:
        self._event(f"error_received({type(exc).__name__})")


class DatagramRaising(DatagramRecorder):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        raise RuntimeError("datagram_received failed")


# The module-level callables the steps name.
SHARED_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    cb_noop, cb_raise, cb_system_exit, cb_keyboard_interrupt, cb_generator_exit, return_args,
    coro_function, coro_return, coro_raise, coro_system_exit, coro_keyboard_interrupt, coro_generator_exit,
    generator, handler_raises, handler_one_arg, handler_keyboard_interrupt,
    task_factory, factory_returns_1, factory_raises, protocol_factory_raises, not_a_protocol,
)  # fmt: skip

PROTOCOL_CLASSES: tuple[type[PlainProtocol], ...] = (
    PlainProtocol,
    RaisingProtocol,
    MadeRaisesProtocol,
    EofKeepOpenProtocol,
    EofBadBoolProtocol,
    EofRaisesProtocol,
    BufferedRecorder,
    ReadOnlyBufferProtocol,
    EmptyBufferProtocol,
    NoneBufferProtocol,
    RaisingBufferProtocol,
    DatagramRecorder,
    DatagramRaising,
)


# --------------------------------------------------------------------------
# Normalising outcomes.

ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
INNER_REPR = re.compile(r"<[^<>]*>")
FD_MENTION = re.compile(r"(?i)\b(file descriptor|fd)([ =:]+)(\d+)")
ADDRESS_TUPLE = re.compile(r"\('(127\.0\.0\.1|0\.0\.0\.0)', \d+\)")
OUR_NAMES = re.compile(r"\b(cb_\w+|coro_\w+|World\.\w+|return_args|handler\w*)\b")
# Messages whose moment depends on when an object is garbage collected.
# The transport classes are each loop's own.
TRANSPORT_CLASS_NAME = re.compile(
    r"'(_SelectorSocketTransport|_SelectorDatagramTransport|ferroloop\._native\.(StreamTransport|DatagramTransport))'"
)
GC_MESSAGES = ("was never retrieved", "was destroyed but it is pending")
# Messages whose content depends on timing (debug mode's slow-callback logs).
TIMING_MESSAGES = re.compile(r"took \d|Executing <")


class AtCall(Exception):
    """Raised by run() when creating the awaitable itself raised."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(inner)
        self.inner = inner


def describe_bytes(data: bytes) -> str:
    return repr(data) if len(data) <= 32 else f"<{len(data)} bytes>"


def clean_text(text: str, fds: dict[int, str]) -> str:
    text = ADDRESS.sub("0x?", text)
    text = FD_MENTION.sub(lambda m: f"{m[1]}{m[2]}{fds.get(int(m[3]), m[3])}", text)
    text = ADDRESS_TUPLE.sub(lambda m: f"('{m[1]}', <port>)", text)
    text = TRANSPORT_CLASS_NAME.sub("'<transport class>'", text)
    previous = None
    while previous != text:  # innermost reprs first, then the ones around them
        previous = text
        text = INNER_REPR.sub("«…»", text)
    return text[:300]


def clean_message(message: Any, fds: dict[int, str]) -> str:
    if not isinstance(message, str):
        return f"<non-str message {message!r}>"
    first_line = message.split("\n", 1)[0]
    if first_line.startswith("Exception in callback ") and not OUR_NAMES.search(first_line):
        # A loop-internal callback (e.g. _SelectorSocketTransport._read_ready
        # at selector_events.py:NNN): its name is the implementation's own.
        return "Exception in callback <loop internal>"
    return clean_text(first_line, fds)


def describe_exception(exc: BaseException, fds: dict[int, str]) -> str:
    if isinstance(exc, AtCall):
        return "raise at call " + describe_exception(exc.inner, fds).removeprefix("raise ")
    return f"raise {type(exc).__name__}: {clean_text(str(exc), fds)}"


def describe(value: Any, names: dict[int, str], depth: int = 0) -> str:
    """A loop-independent description of a returned value."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return describe_bytes(bytes(value))
    if isinstance(value, str):
        return repr(value[:100])
    if id(value) in names:
        return f"<{names[id(value)]}>"
    if isinstance(value, tuple) and len(value) in (2, 4) and isinstance(value[0], str) and isinstance(value[1], int):
        return f"('{value[0]}', <port>)"  # an IP address: each world has its own ports
    if depth < 3 and isinstance(value, (tuple, list)):
        inner = ", ".join(describe(item, names, depth + 1) for item in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, (asyncio.TimerHandle, ferroloop.TimerHandle)):
        return "TimerHandle"
    if isinstance(value, (asyncio.Handle, ferroloop.Handle)):
        return "Handle"
    if isinstance(value, asyncio.Task):
        return "Task"
    if isinstance(value, asyncio.Future):
        return "Future"
    if isinstance(value, asyncio.Transport):
        return "Transport"
    if isinstance(value, asyncio.BaseTransport):
        return "BaseTransport"
    if isinstance(value, PlainProtocol):
        return f"<{type(value).__name__}>"
    if inspect.iscoroutine(value):
        return "coroutine"
    if isinstance(value, socket.socket):
        return "socket"
    return type(value).__name__


# --------------------------------------------------------------------------
# A world: one loop and everything the steps refer to.


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: str
    events: tuple[str, ...]

    def __str__(self) -> str:
        if not self.events:
            return self.result
        return self.result + "".join(f"\n        | {event}" for event in self.events)


class EventLog(logging.Handler):
    """Captures what the default exception handler logs on 'asyncio'."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.INFO)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if TIMING_MESSAGES.search(message):
            return
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        line = clean_message(message, self.world.fds)
        self.world.note(f"log {record.levelname}: {line} [{exc_type}]")


class World:
    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.factory = factory
        self.loop = factory()
        self.events: list[str] = []
        self.gc_events: list[str] = []
        self.keep: list[Any] = []
        self.sockets: list[socket.socket] = []
        self.other_loop: asyncio.AbstractEventLoop | None = None
        self.rescued = False
        self.ns: dict[str, Any] = {}
        self._build_namespace()
        self.loop.set_exception_handler(self.ns["handler"])
        plain = (int, float, str, type(None))
        self.names = {id(value): name for name, value in self.ns.items() if not isinstance(value, plain)}
        self.fds: dict[int, str] = {}
        for name, value in self.ns.items():
            if isinstance(value, socket.socket) and value.fileno() >= 0:
                self.fds[value.fileno()] = name

    # -- namespace

    def _socket(self, *args: Any, blocking: bool = False) -> socket.socket:
        sock = socket.socket(*args)
        sock.setblocking(blocking)
        self.sockets.append(sock)
        return sock

    def _pair(self) -> tuple[socket.socket, socket.socket]:
        one, two = socket.socketpair()
        for sock in (one, two):
            sock.setblocking(False)
            self.sockets.append(sock)
        return one, two

    def _build_namespace(self) -> None:
        sock_a, sock_b = self._pair()
        timeout_sock, timeout_peer = self._pair()
        timeout_sock.settimeout(0.01)
        transport_sock, transport_peer = self._pair()
        listener = self._socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        closed_sock = self._socket()
        closed_sock.close()
        udp_sock = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_peer = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_peer.bind(("127.0.0.1", 0))
        shutdown_executor = concurrent.futures.ThreadPoolExecutor(1)
        shutdown_executor.shutdown()
        self.ns.update(
            {
                "__builtins__": __builtins__,
                "asyncio": asyncio,
                "socket": socket,
                "array": array,
                "contextvars": contextvars,
                "nan": math.nan,
                "inf": math.inf,
                "loop": self.loop,
                "run": self.run,
                "connect": self.connect,
                "sock_a": sock_a,
                "sock_b": sock_b,
                "timeout_sock": timeout_sock,
                "timeout_peer": timeout_peer,
                "transport_sock": transport_sock,
                "transport_peer": transport_peer,
                "listener": listener,
                "listener_address": listener.getsockname(),
                "closed_sock": closed_sock,
                "udp_sock": udp_sock,
                "udp_peer": udp_peer,
                "udp_peer_address": udp_peer.getsockname(),
                "tcp_socket": lambda: self._socket(),
                "unix_socket": lambda: self._socket(socket.AF_UNIX),
                "not_a_fileno": BadFileno(),
                "shutdown_executor": shutdown_executor,
                "transport": None,
                "protocol": None,
                "done_future": self.done_future,
                "cancelled_future": self.cancelled_future,
                "other_loop_future": self.other_loop_future,
                "handler": self.handler,
                "cb_mark": self.cb_mark,
                "cb_stop": self.cb_stop,
                "cb_close": self.cb_close,
                "cb_reenter": self.cb_reenter,
                "cb_reenter_forever": self.cb_reenter_forever,
                "cb_schedule": self.cb_schedule,
                "coro_stop": self.coro_stop,
                "coro_reenter": self.coro_reenter,
            }
        )
        for function in SHARED_FUNCTIONS:
            self.ns[function.__name__] = function
        for cls in PROTOCOL_CLASSES:
            self.ns[cls.__name__] = functools.partial(cls, self.note)

    # -- helpers the steps call

    def note(self, event: str) -> None:
        bucket = self.gc_events if any(text in event for text in GC_MESSAGES) else self.events
        bucket.append(event)

    def handler(self, loop: asyncio.AbstractEventLoop, context: Any) -> None:
        if not isinstance(context, dict):
            self.note(f"handler: <context {type(context).__name__}>")
            return
        exception = context.get("exception")
        exc_type = type(exception).__name__ if exception is not None else None
        self.note(f"handler: {clean_message(context.get('message'), self.fds)} [{exc_type}]")

    def cb_mark(self, *args: Any) -> None:
        self.note("cb_mark ran")

    def cb_stop(self, *args: Any) -> None:
        self.loop.stop()

    def cb_close(self, *args: Any) -> None:
        self.loop.close()

    def cb_reenter(self, *args: Any) -> None:
        self.loop.run_until_complete(self.loop.create_future())

    def cb_reenter_forever(self, *args: Any) -> None:
        self.loop.run_forever()

    def cb_schedule(self, *args: Any) -> None:
        self.loop.call_soon(self.cb_mark)

    async def coro_stop(self) -> None:
        self.loop.stop()
        await asyncio.sleep(0.01)

    async def coro_reenter(self) -> None:
        self.loop.run_until_complete(self.loop.create_future())

    def done_future(self) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        future.set_result(1)
        return future

    def cancelled_future(self) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        future.cancel()
        return future

    def other_loop_future(self) -> asyncio.Future[Any]:
        if self.other_loop is None:
            self.other_loop = self.factory()
        return self.other_loop.create_future()

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 0.05, **kwargs: Any) -> Any:
        try:
            awaitable = fn(*args, **kwargs)
        except BaseException as exc:
            if type(exc) is KeyboardInterrupt:
                raise
            raise AtCall(exc) from exc
        waiter = asyncio.wait_for(awaitable, timeout)
        self.keep += [awaitable, waiter]
        return self.loop.run_until_complete(waiter)

    def connect(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = self.run(fn, *args, timeout=1.0, **kwargs)
        if isinstance(result, tuple) and len(result) == 2:
            self.ns["transport"], self.ns["protocol"] = result
            self.keep.append(result[0])
        return result

    # -- running steps

    def perform(self, step: str) -> Outcome:
        self.events = []
        self.rescued = False
        try:
            value: Any = None
            with self.rescuing():
                for statement in step.split("; "):
                    value = eval(statement, self.ns)
            result = describe(value, self.names)
        except BaseException as exc:
            if type(exc) is KeyboardInterrupt:
                raise
            value = None
            result = describe_exception(exc, self.fds)
        if self.rescued:
            result += f" (after loop.stop() from a thread: the step had not finished in {STEP_LIMIT} s)"
        if isinstance(value, (asyncio.Future, asyncio.Handle, ferroloop.Handle, ferroloop.TimerHandle)):
            self.keep.append(value)
        self.keep.extend(self._pending_tasks())
        return Outcome(result, tuple(sorted(set(self.events))))

    @contextlib.contextmanager
    def rescuing(self) -> Iterator[None]:
        """A step that would wait forever (e.g. asyncio with a NaN timer in
        its heap) is stopped from another thread after STEP_LIMIT."""
        rescue = threading.Timer(STEP_LIMIT, self._rescue)
        rescue.start()
        try:
            yield
        finally:
            rescue.cancel()
            rescue.join()

    def _rescue(self) -> None:
        self.rescued = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed meanwhile
            pass

    def _pending_tasks(self) -> list[asyncio.Task[Any]]:
        try:
            return list(asyncio.all_tasks(self.loop))
        except Exception:  # noqa: BLE001 - a broken task factory can leave odd objects
            return []

    def teardown(self) -> tuple[str, ...]:
        """Settles everything, closes the loop; returns the gc-time reports."""
        loop = self.loop
        self.events = []
        futures = [item for item in self.keep if isinstance(item, asyncio.Future)]
        if not loop.is_closed():
            loop.set_task_factory(None)
            loop.set_exception_handler(self.ns["handler"])
            pending = [future for future in futures + self._pending_tasks() if not future.done()]
            for future in pending:
                future.cancel()
            transport = self.ns["transport"]
            if transport is not None:
                _quietly(transport.abort)
            for sock in self.sockets:
                if sock.fileno() >= 0:
                    _quietly(loop.remove_reader, sock)
                    _quietly(loop.remove_writer, sock)
            for _ in range(3):  # a pending stop() or a raising callback ends a run early
                with self.rescuing():
                    _quietly(lambda: loop.run_until_complete(asyncio.wait_for(asyncio.sleep(0.001), 1)))
            with self.rescuing():
                _quietly(lambda: loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), 2)))
            _quietly(loop.close)
        for item in self.keep:
            if isinstance(item, asyncio.Future):
                if item.done() and not item.cancelled():
                    item.exception()
                elif isinstance(item, asyncio.Task) and not item.done():
                    item._log_destroy_pending = False  # type: ignore[attr-defined]
            elif inspect.iscoroutine(item) and inspect.getcoroutinestate(item) == inspect.CORO_CREATED:
                item.close()
        if self.other_loop is not None:
            self.other_loop.close()
        for sock in self.sockets:
            sock.close()
        self.keep.clear()
        self.ns.clear()
        gc.collect()
        return tuple(sorted(set(self.gc_events)))


def _quietly(action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except BaseException as exc:
        if type(exc) is KeyboardInterrupt:
            raise


@contextlib.contextmanager
def observed(world: World) -> Iterator[None]:
    """Makes the world's loop current, captures the 'asyncio' logger and
    silences warnings (never-awaited coroutines are the point of some steps)."""
    logger = logging.getLogger("asyncio")
    capture = EventLog(world)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(capture)
    asyncio.set_event_loop(world.loop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        asyncio.set_event_loop(None)
        logger.removeHandler(capture)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


TEARDOWN = "<teardown: what garbage-collected tasks and futures reported>"


def play(kind: str, steps: Sequence[str]) -> list[Outcome]:
    """Runs the steps on a fresh loop of the kind; one outcome per step, and
    one for the teardown."""
    if TRACE:
        with open(TRACE, "w", encoding="utf-8") as trace:
            trace.write(f"# running on {kind}:\n" + "".join(f"{step}\n" for step in steps))
    # The teardown's gc.collect() need only look at this sequence's objects
    # (the previous sequence's teardown collected its own).
    gc.freeze()
    try:
        world = World(LOOP_FACTORIES[kind])
        outcomes: list[Outcome] = []
        with hang_guard(120), observed(world):
            try:
                for step in steps:
                    outcomes.append(world.perform(step))
            finally:
                reports = world.teardown()
    finally:
        gc.unfreeze()
    outcomes.append(Outcome("done", reports))
    return outcomes


# --------------------------------------------------------------------------
# The steps: templates and the tokens each placeholder takes.

# fmt: off
CALLBACKS = (
    "cb_noop", "cb_mark", "cb_raise", "cb_system_exit", "cb_keyboard_interrupt", "cb_generator_exit",
    "cb_reenter", "cb_reenter_forever", "cb_close", "cb_stop", "cb_schedule", "coro_function",
    "1", "None", "'x'",
)
ARGS = ("", ", 1", ", 1, 'x'", ", None")
CONTEXT_KW = ("", ", context=None", ", context='x'", ", context=contextvars.copy_context()")
DELAYS = ("0", "-1", "1e9", "nan", "inf", "-inf", "2**63", "2**64", "10**400", "-10**400", "1e308", "'x'", "b'1'", "None", "True")
WHENS = ("loop.time()", "loop.time() - 1", "loop.time() + 3600") + DELAYS
RUN_TARGETS = (
    "asyncio.sleep(0)", "asyncio.sleep(0.02)", "asyncio.sleep(-1)", "asyncio.sleep(nan)",
    "asyncio.wait_for(asyncio.sleep(inf), 0.02)", "asyncio.wait_for(loop.create_future(), 0.02)",
    "coro_return(1)", "coro_raise()", "coro_system_exit()", "coro_keyboard_interrupt()",
    "coro_generator_exit()", "coro_stop()", "coro_reenter()", "done_future()", "cancelled_future()",
    "other_loop_future()", "loop.create_task(asyncio.sleep(0))", "asyncio.gather(asyncio.sleep(0), coro_raise())",
    "generator()", "coro_function", "loop.shutdown_asyncgens()", "loop.shutdown_default_executor()",
    "1", "None", "'x'",
)
TASK_OBJECTS = (
    "asyncio.sleep(0)", "asyncio.sleep(0.02)", "coro_raise()", "coro_system_exit()", "done_future()",
    "generator()", "coro_function", "1", "None", "'x'",
)
TASK_KW = ("", ", name='n'", ", name=1", ", context=None", ", context='x'")
TASK_FACTORIES = ("None", "1", "'x'", "task_factory", "factory_returns_1", "factory_raises")
HANDLERS = ("handler", "None", "1", "'x'", "handler_raises", "handler_one_arg", "handler_keyboard_interrupt")
CONTEXTS = (
    "None", "{}", "{'message': 1}", "{'message': 'm'}", "{'message': 'm', 'exception': ValueError('v')}",
    "{'exception': 1}", "'x'", "{'message': 'm', 'future': done_future()}",
    "{'message': 'm', 'exception': KeyboardInterrupt()}", "{'message': 'm', 'handle': loop.call_soon(cb_noop)}",
)
DEBUG_FLAGS = ("True", "False", "1", "None", "'x'")
FDS = (
    "-1", "2**31", "2**64", "'x'", "None", "1.5", "closed_sock", "sock_a", "sock_a.fileno()", "sock_b",
    "listener", "transport_sock", "transport_sock.fileno()", "not_a_fileno",
)
SOCKS = ("sock_a", "closed_sock", "timeout_sock", "listener", "udp_sock", "transport_sock", "'x'", "None", "sock_a.fileno()")
SIZES = ("1", "0", "-1", "1024", "65536", "2**63", "2**64", "10**400", "'x'", "None", "1.5", "True")
BUFFERS = (
    "bytearray(4)", "b'xx'", "bytearray(0)", "memoryview(bytearray(4))", "memoryview(bytearray(4))[::2]",
    "array.array('i', [0])", "'x'", "None", "1",
)
DATA = ("b'hi'", "b''", "'str'", "None", "1", "bytearray(b'ab')", "memoryview(b'ab')", "b'x' * 10**6", "[b'a']")
LINES = ("[b'a', b'b']", "[b'a', 'x']", "[1]", "'abc'", "None", "[]", "[memoryview(b'ab')]", "(b'y' * 10**6,)")
ADDRESSES = (
    "('127.0.0.1', 1)", "listener_address", "'/nonexistent/fz.sock'", "'x'", "None", "('127.0.0.1', 2**64)",
    "('127.0.0.1', -1)", "('localhost', 1)", "()", "('127.0.0.1',)",
)
CONNECT_SOCKS = ("tcp_socket()", "unix_socket()", "sock_a", "closed_sock", "udp_sock", "'x'")
ACCEPT_SOCKS = ("listener", "sock_a", "closed_sock", "udp_sock", "timeout_sock", "'x'")
EXECUTORS = ("None", "1", "'x'", "shutdown_executor")
EXECUTOR_FUNCS = ("cb_noop", "cb_mark", "cb_raise", "cb_system_exit", "cb_keyboard_interrupt", "coro_function", "return_args", "1", "None")
PROTOCOL_FACTORIES = tuple(cls.__name__ for cls in PROTOCOL_CLASSES) + ("not_a_protocol", "protocol_factory_raises")
TRANSPORT_SOCKS = ("transport_sock", "transport_sock", "transport_sock", "closed_sock", "udp_sock", "listener", "'x'", "None")
LIMITS = ("None", "0", "1", "-1", "64", "65536", "1.5", "nan", "inf", "-inf", "2**70", "10**400", "'x'")
EXTRA_KEYS = ("'peername'", "'sockname'", "'socket'", "'nonexistent'", "1", "None")
EXTRA_DEFAULTS = ("", ", 'dflt'")
NEW_PROTOCOLS = ("PlainProtocol()", "BufferedRecorder()", "ReadOnlyBufferProtocol()", "EofBadBoolProtocol()", "1", "None")

DGRAM_ADDRESSES = (
    "", ", None", ", udp_peer_address", ", ('127.0.0.1', 9)", ", 'x'", ", ('localhost', 9)",
    ", ('127.0.0.1', 2**64)", ", ['127.0.0.1', 9]",
)
DGRAM_DATA = ("b'ping'", "b''", "bytearray(b'ab')", "memoryview(b'abcd')[::2]", "'str'", "b'x' * 70000")

# (template, {placeholder: tokens}); a template without placeholders is a step as is.
TEMPLATES: tuple[tuple[str, dict[str, Sequence[str]]], ...] = (
    ("loop.call_soon({cb}{args}{context})", {"cb": CALLBACKS, "args": ARGS, "context": CONTEXT_KW}),
    ("loop.call_later({delay}, {cb}{args})", {"delay": DELAYS, "cb": CALLBACKS, "args": ARGS}),
    ("loop.call_at({when}, {cb}{args})", {"when": WHENS, "cb": CALLBACKS, "args": ARGS}),
    ("loop.call_soon_threadsafe({cb}{args})", {"cb": CALLBACKS, "args": ARGS}),
    ("loop.call_later(0, {cb}).cancel()", {"cb": CALLBACKS}),
    ("loop.run_until_complete({target})", {"target": RUN_TARGETS}),
    ("loop.run_until_complete(asyncio.sleep(0))", {}),
    ("loop.stop(); loop.run_forever()", {}),
    ("loop.call_soon(loop.stop); loop.run_forever()", {}),
    ("loop.stop()", {}),
    ("loop.close()", {}),
    ("loop.is_running()", {}),
    ("loop.is_closed()", {}),
    ("loop.get_debug()", {}),
    ("loop.set_debug({flag})", {"flag": DEBUG_FLAGS}),
    ("loop.create_future()", {}),
    ("loop.create_task({obj}{kw})", {"obj": TASK_OBJECTS, "kw": TASK_KW}),
    ("loop.set_task_factory({factory})", {"factory": TASK_FACTORIES}),
    ("loop.get_task_factory()", {}),
    ("loop.set_exception_handler({handler})", {"handler": HANDLERS}),
    ("loop.get_exception_handler()", {}),
    ("loop.call_exception_handler({context})", {"context": CONTEXTS}),
    ("loop.default_exception_handler({context})", {"context": CONTEXTS}),
    ("loop.add_reader({fd}, {cb}{args})", {"fd": FDS, "cb": CALLBACKS, "args": ARGS}),
    ("loop.add_writer({fd}, {cb}{args})", {"fd": FDS, "cb": CALLBACKS, "args": ARGS}),
    ("loop.remove_reader({fd})", {"fd": FDS}),
    ("loop.remove_writer({fd})", {"fd": FDS}),
    ("sock_b.send(b'ping')", {}),
    ("run(loop.sock_recv, {sock}, {size})", {"sock": SOCKS, "size": SIZES}),
    ("run(loop.sock_recv_into, {sock}, {buf})", {"sock": SOCKS, "buf": BUFFERS}),
    ("run(loop.sock_sendall, {sock}, {data})", {"sock": SOCKS, "data": DATA}),
    ("run(loop.sock_connect, {sock}, {address})", {"sock": CONNECT_SOCKS, "address": ADDRESSES}),
    ("run(loop.sock_accept, {sock})", {"sock": ACCEPT_SOCKS}),
    ("run(loop.run_in_executor, {executor}, {func}{args}, timeout=1)", {"executor": EXECUTORS, "func": EXECUTOR_FUNCS, "args": ARGS}),
    ("connect(loop.create_connection, {factory}, sock={sock})", {"factory": PROTOCOL_FACTORIES, "sock": TRANSPORT_SOCKS}),
    ("connect(loop.connect_accepted_socket, {factory}, sock={sock})", {"factory": PROTOCOL_FACTORIES, "sock": TRANSPORT_SOCKS}),
    ("transport.write({data})", {"data": DATA}),
    ("transport.writelines({lines})", {"lines": LINES}),
    ("transport.set_write_buffer_limits(high={high}, low={low})", {"high": LIMITS, "low": LIMITS}),
    ("transport.set_write_buffer_limits({high})", {"high": LIMITS}),
    ("transport.get_write_buffer_limits()", {}),
    ("transport.get_write_buffer_size()", {}),
    ("transport.pause_reading()", {}),
    ("transport.resume_reading()", {}),
    ("transport.is_reading()", {}),
    ("transport.close()", {}),
    ("transport.abort()", {}),
    ("transport.is_closing()", {}),
    ("transport.write_eof()", {}),
    ("transport.can_write_eof()", {}),
    ("transport.get_extra_info({key}{default})", {"key": EXTRA_KEYS, "default": EXTRA_DEFAULTS}),
    ("transport.get_protocol()", {}),
    ("transport.set_protocol({protocol})", {"protocol": NEW_PROTOCOLS}),
    ("transport_peer.send(b'ping')", {}),
    ("transport_peer.shutdown(socket.SHUT_WR)", {}),
    ("transport_peer.close()", {}),
    ("transport_peer.recv(1 << 20)", {}),
    ("transport.sendto({data}{addr})", {"data": DGRAM_DATA, "addr": DGRAM_ADDRESSES}),
    ("udp_peer.sendto({data}, transport.get_extra_info('sockname'))", {"data": ("b'ping'", "b''", "b'y' * 60000")}),
    ("udp_peer.recv(1 << 16)", {}),
)
# fmt: on


@dataclasses.dataclass(frozen=True)
class Step:
    template: str
    text: str

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return repr(self.text)


def step_strategy(template: str, pools: dict[str, Sequence[str]]) -> st.SearchStrategy[Step]:
    choices = st.fixed_dictionaries({name: st.sampled_from(tokens) for name, tokens in pools.items()})
    return choices.map(lambda tokens: Step(template, template.format(**tokens)))


def is_transport_step(template: str) -> bool:
    return template.startswith(("transport", "udp_peer", "loop.run_until_complete(asyncio.sleep(0))"))


STEP = st.one_of([step_strategy(template, pools) for template, pools in TEMPLATES])
TRANSPORT_STEP = st.one_of([step_strategy(t, pools) for t, pools in TEMPLATES if is_transport_step(t)])
CONNECT = st.builds(
    lambda how, factory: Step(
        f"connect({how}, {{factory}}, sock={{sock}})", f"connect({how}, {factory}, sock=transport_sock)"
    ),
    st.sampled_from(("loop.create_connection", "loop.connect_accepted_socket")),
    st.sampled_from(PROTOCOL_FACTORIES[:-2]),
)
DATAGRAM_ENDPOINT = st.builds(
    lambda where, factory: Step(
        "connect(loop.create_datagram_endpoint, {factory}, {where})",
        f"connect(loop.create_datagram_endpoint, {factory}, {where})",
    ),
    st.sampled_from(("local_addr=('127.0.0.1', 0)", "remote_addr=udp_peer_address")),
    st.sampled_from(("DatagramRecorder", "DatagramRaising")),
)
# Most sequences start with a working stream or datagram transport and
# mostly use it.
SEQUENCE = st.one_of(
    st.lists(STEP, min_size=1, max_size=MAX_STEPS),
    st.tuples(st.one_of(CONNECT, CONNECT, DATAGRAM_ENDPOINT), st.lists(st.one_of(TRANSPORT_STEP, TRANSPORT_STEP, STEP), max_size=MAX_STEPS)).map(
        lambda parts: [parts[0], *parts[1]]
    ),
)


# --------------------------------------------------------------------------
# Comparing.


@dataclasses.dataclass(frozen=True)
class Mismatch:
    steps: tuple[Step, ...]
    index: int
    stock: tuple[Outcome, ...]
    ours: tuple[Outcome, ...]

    @property
    def label(self) -> str:
        return self.steps[self.index].text if self.index < len(self.steps) else TEARDOWN

    def scene(self) -> str:
        """The text DOCUMENTED_DIFFERENCES' patterns are searched in."""
        labels = [step.text for step in self.steps] + [TEARDOWN]
        lines = [f"   {label}" for label in labels[: self.index]]
        lines.append(f"!! {self.label}")
        for name, outcome in (("asyncio", self.stock[self.index]), ("ferroloop", self.ours[self.index])):
            lines.append(f"{name}: " + " | ".join((outcome.result, *outcome.events)))
        return "\n".join(lines)

    def key(self) -> str:
        """Groups mismatches: the step's template and both results (and the
        events, when the results agree)."""
        template = self.steps[self.index].template if self.index < len(self.steps) else TEARDOWN
        stock, ours = self.stock[self.index], self.ours[self.index]
        if stock.result != ours.result:
            return json.dumps([template, stock.result, ours.result])
        return json.dumps([template, str(stock), str(ours)])

    def explain(self) -> str:
        lines = [
            f"ferroloop differs from asyncio at step {self.index + 1}: {self.label}",
            "(run(f, *a) = loop.run_until_complete(asyncio.wait_for(f(*a), timeout));",
            " connect = run with timeout=1 that names the transport `transport`)",
        ]
        labels = [step.text for step in self.steps] + [TEARDOWN]
        for number, (label, stock, ours) in enumerate(zip(labels, self.stock, self.ours)):
            if number > self.index:
                break
            marker = "!!" if stock != ours else "  "
            lines.append(f"{marker}{number + 1:3}. {label}")
            lines.append(f"        asyncio:   {stock}")
            if stock != ours:
                lines.append(f"        ferroloop: {ours}")
        return "\n".join(lines)


def compare(steps: Sequence[Step]) -> Mismatch | None:
    texts = [step.text for step in steps]
    stock = play("asyncio", texts)
    ours = play("ferroloop", texts)
    for index, (expected, got) in enumerate(zip(stock, ours)):
        if expected == got:
            continue
        mismatch = Mismatch(tuple(steps), index, tuple(stock), tuple(ours))
        if any(re.search(pattern, mismatch.scene(), re.MULTILINE) for pattern in ignored_patterns()):
            return None
        return mismatch
    return None


def replay(*texts: str) -> str:
    """Runs the given steps on both loops and explains the first difference:
    ``python3 -c "import test_fuzz_differential as t; print(t.replay('loop.call_soon(1)'))"``."""
    mismatch = compare([Step(text, text) for text in texts])
    return mismatch.explain() if mismatch else "no difference"


@functools.cache
def ignored_patterns() -> tuple[str, ...]:
    extra: list[str] = []
    if IGNORE_FILE:
        with open(IGNORE_FILE, encoding="utf-8") as lines:
            extra = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return (*DOCUMENTED_DIFFERENCES, *extra)


def minimise(mismatch: Mismatch) -> Mismatch:
    """Greedily drops steps while the same difference (same key) remains at
    the first mismatch."""
    key = mismatch.key()
    best = mismatch
    changed = True
    while changed:
        changed = False
        steps = list(best.steps[: best.index + 1])
        for drop in range(len(steps)):
            candidate = steps[:drop] + steps[drop + 1 :]
            if not candidate:
                continue
            found = compare(candidate)
            if found is not None and found.key() == key:
                best = found
                changed = True
                break
    return best


def record(mismatch: Mismatch, path: str) -> None:
    smallest = minimise(mismatch)
    entry = {
        "key": smallest.key(),
        "steps": [step.text for step in smallest.steps[: smallest.index + 1]],
        "asyncio": str(smallest.stock[smallest.index]),
        "ferroloop": str(smallest.ours[smallest.index]),
        "explain": smallest.explain(),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def _configured(test: Callable[..., None]) -> Callable[..., None]:
    test = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        # No shrinking by Hypothesis (minutes, with steps that wait):
        # minimise() below drops steps greedily instead, in seconds.
        phases=(Phase.explicit, Phase.generate),
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(test)
    return seed(int(SEED))(test) if SEED is not None else test


@_configured
@given(SEQUENCE)
def test_same_outcomes_as_asyncio(steps: list[Step]) -> None:
    mismatch = compare(steps)
    if mismatch is None:
        return
    if COLLECT:
        record(mismatch, COLLECT)
        return
    smallest = minimise(mismatch)
    note = f"\n(minimised from a sequence of {len(steps)} steps)" if len(smallest.steps) < len(steps) else ""
    pytest.fail(smallest.explain() + note, pytrace=False)


def test_harness_reports_differences() -> None:
    """The comparison itself sees a difference: a step that only one loop
    kind fails must produce a readable mismatch."""
    step = Step("x", "loop.is_closed() or loop.__class__.__module__.startswith('asyncio') or 1/0")
    mismatch = compare([step])
    if SELFCHECK:
        assert mismatch is None
        return
    assert mismatch is not None and mismatch.index == 0
    assert "ZeroDivisionError" in mismatch.explain()
