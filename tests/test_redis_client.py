"""redis-py's asyncio client (``redis.asyncio``), unchanged, on stock asyncio
and on ferroloop, asserting the same results on both.

There is no Redis server here, so each test brings ``FakeRedis``: a small
RESP2 server written with ``asyncio.start_server`` that runs on the loop under
test, next to the client. Both ends of every connection are therefore
ferroloop transports on the ferroloop runs. The client is made with
``protocol=2`` because redis-py 8 defaults to RESP3 (it sends ``HELLO 3`` and
gives up if that fails), and the fake only speaks RESP2.

What the client leans on: a pool of connections opened on demand, pipelines
of a thousand commands written at once, a 5 MiB reply read in pieces, BLPOP
parking a connection until another one pushes or a timeout passes, pub/sub
messages arriving unsolicited, a command cancelled mid-flight, and errors when
the server goes away.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import random
import time
from typing import Any, Awaitable, Callable, Iterator, Optional

import pytest
import redis.asyncio
import redis.exceptions
from netutil import hang_guard, run_with_loop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import ferroloop

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}
TIMEOUT = 20.0  # per test body; a hang fails instead of blocking the suite


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    with hang_guard(120):
        yield


# -- the fake server -------------------------------------------------------------------


def bulk(value: Optional[bytes]) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


def integer(number: int) -> bytes:
    return b":%d\r\n" % number


def array(encoded_items: list[bytes]) -> bytes:
    return b"*%d\r\n%s" % (len(encoded_items), b"".join(encoded_items))


OK = b"+OK\r\n"
NULL_ARRAY = b"*-1\r\n"
NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"
WRONG_TYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"


@dataclasses.dataclass(eq=False)
class Session:
    """One client connection's state on the fake server."""

    writer: asyncio.StreamWriter
    queued: Optional[list[list[bytes]]] = None  # commands between MULTI and EXEC
    channels: set[bytes] = dataclasses.field(default_factory=set)


class FakeRedis:
    """A test double, not a Redis: one in-process RESP2 server with a single
    database, answering only the commands these tests send: PING, HELLO (an
    error), CLIENT SETINFO/SETNAME, SELECT 0, SET (EX/PX), GET, DEL, EXISTS,
    INCR, INCRBY (redis-py's incr() sends it), RPUSH, LRANGE, BLPOP,
    MULTI/EXEC/DISCARD, SUBSCRIBE, UNSUBSCRIBE and PUBLISH. Requests must be
    RESP arrays of bulk strings, as clients send them.
    """

    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}  # bytes for strings, list[bytes] for lists
        self.deadlines: dict[bytes, float] = {}  # loop.time() at which a key expires
        self.blocked: dict[bytes, list[asyncio.Future[tuple[bytes, bytes]]]] = {}
        self.subscribers: dict[bytes, set[asyncio.StreamWriter]] = {}
        self.calls: collections.Counter[bytes] = collections.Counter()
        self.connections_accepted = 0
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._sessions: set[Session] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> FakeRedis:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and drops every connection, as a dying server would."""
        assert self._server is not None
        self._server.close()
        for session in list(self._sessions):
            session.writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        session = Session(writer)
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(session)
        self._handlers.add(task)
        try:
            while (command := await self._read_command(reader)) is not None:
                writer.write(await self._dispatch(session, command))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for channel in session.channels:
                self.subscribers[channel].discard(writer)
            self._sessions.discard(session)
            self._handlers.discard(task)
            writer.transport.abort()

    @staticmethod
    async def _read_command(reader: asyncio.StreamReader) -> Optional[list[bytes]]:
        header = await reader.readline()
        if not header.endswith(b"\r\n"):
            return None  # the client hung up
        if not header.startswith(b"*"):
            raise ConnectionError(f"not a RESP array: {header!r}")
        args = []
        for _ in range(int(header[1:])):
            length_line = await reader.readuntil(b"\r\n")
            assert length_line.startswith(b"$"), length_line
            args.append((await reader.readexactly(int(length_line[1:]) + 2))[:-2])
        return args

    async def _dispatch(self, session: Session, command: list[bytes]) -> bytes:
        name, args = command[0].upper(), command[1:]
        self.calls[name] += 1
        if session.queued is not None and name not in (b"EXEC", b"DISCARD", b"MULTI"):
            session.queued.append(command)
            return b"+QUEUED\r\n"
        if session.channels and name not in (b"SUBSCRIBE", b"UNSUBSCRIBE", b"PING"):
            return b"-ERR only (UN)SUBSCRIBE and PING are allowed in this context\r\n"
        handler = getattr(self, "cmd_" + name.decode("ascii", "replace").lower(), None)
        if handler is None:
            return b"-ERR unknown command '%s'\r\n" % command[0]
        try:
            return bytes(await handler(session, *args))
        except (TypeError, ValueError, IndexError):
            return b"-ERR wrong number or kind of arguments for '%s'\r\n" % command[0]

    def _lookup(self, key: bytes) -> Any:
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline <= asyncio.get_running_loop().time():
            self.data.pop(key, None)
            del self.deadlines[key]
        return self.data.get(key)

    def _store(self, key: bytes, value: Any, ttl: Optional[float] = None) -> None:
        self.data[key] = value
        self.deadlines.pop(key, None)
        if ttl is not None:
            self.deadlines[key] = asyncio.get_running_loop().time() + ttl

    # Commands: each takes the session and the arguments, returns the encoded reply.

    async def cmd_ping(self, session: Session, message: Optional[bytes] = None) -> bytes:
        return b"+PONG\r\n" if message is None else bulk(message)

    async def cmd_hello(self, session: Session, *args: bytes) -> bytes:
        return b"-NOPROTO this fake server speaks RESP2 only\r\n"

    async def cmd_client(self, session: Session, subcommand: bytes, *args: bytes) -> bytes:
        if subcommand.upper() in (b"SETINFO", b"SETNAME"):
            return OK
        return b"-ERR unknown CLIENT subcommand\r\n"

    async def cmd_select(self, session: Session, index: bytes) -> bytes:
        return OK if int(index) == 0 else b"-ERR DB index is out of range\r\n"

    async def cmd_set(self, session: Session, key: bytes, value: bytes, *options: bytes) -> bytes:
        ttl = None
        if options:
            unit, amount = options[0].upper(), int(options[1])
            if len(options) != 2 or unit not in (b"EX", b"PX") or amount <= 0:
                return b"-ERR syntax error\r\n"
            ttl = amount if unit == b"EX" else amount / 1000
        self._store(key, value, ttl)
        return OK

    async def cmd_get(self, session: Session, key: bytes) -> bytes:
        value = self._lookup(key)
        return WRONG_TYPE if isinstance(value, list) else bulk(value)

    async def cmd_del(self, session: Session, *keys: bytes) -> bytes:
        removed = [key for key in keys if self._lookup(key) is not None]
        for key in removed:
            del self.data[key]
            self.deadlines.pop(key, None)
        return integer(len(removed))

    async def cmd_exists(self, session: Session, *keys: bytes) -> bytes:
        return integer(sum(self._lookup(key) is not None for key in keys))

    async def cmd_incr(self, session: Session, key: bytes) -> bytes:
        return await self.cmd_incrby(session, key, b"1")

    async def cmd_incrby(self, session: Session, key: bytes, amount: bytes) -> bytes:
        value = self._lookup(key)
        if isinstance(value, list):
            return WRONG_TYPE
        try:
            number = int(value or b"0") + int(amount)
        except ValueError:
            return NOT_AN_INTEGER
        self.data[key] = b"%d" % number  # keeps any expiry, as INCR does
        return integer(number)

    async def cmd_rpush(self, session: Session, key: bytes, *values: bytes) -> bytes:
        if not values:
            raise TypeError("RPUSH needs a value")
        items = self._lookup(key)
        if items is None:
            items = self.data[key] = []
        elif not isinstance(items, list):
            return WRONG_TYPE
        items.extend(values)
        length = len(items)
        waiters = self.blocked.get(key, [])
        while items and waiters:  # hand elements to blocked BLPOPs, oldest first
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result((key, items.pop(0)))
        if not items:
            del self.data[key]
        return integer(length)

    async def cmd_lrange(self, session: Session, key: bytes, start: bytes, stop: bytes) -> bytes:
        items = self._lookup(key) or []
        if not isinstance(items, list):
            return WRONG_TYPE
        first, last = int(start), int(stop)
        first = max(first + len(items) if first < 0 else first, 0)
        last = last + len(items) if last < 0 else last
        return array([bulk(item) for item in items[first : last + 1]])

    async def cmd_blpop(self, session: Session, *keys_and_timeout: bytes) -> bytes:
        *keys, timeout = keys_and_timeout
        if not keys:
            raise TypeError("BLPOP needs a key")
        for key in keys:
            items = self._lookup(key)
            if isinstance(items, list):
                value = items.pop(0)
                if not items:
                    del self.data[key]
                return array([bulk(key), bulk(value)])
        waiter: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        for key in keys:
            self.blocked.setdefault(key, []).append(waiter)
        try:  # the connection really blocks: no later command is read meanwhile
            key, value = await asyncio.wait_for(waiter, float(timeout) or None)
        except asyncio.TimeoutError:
            return NULL_ARRAY
        finally:
            for key in keys:
                if waiter in self.blocked.get(key, []):
                    self.blocked[key].remove(waiter)
        return array([bulk(key), bulk(value)])

    async def cmd_multi(self, session: Session) -> bytes:
        if session.queued is not None:
            return b"-ERR MULTI calls can not be nested\r\n"
        session.queued = []
        return OK

    async def cmd_exec(self, session: Session) -> bytes:
        if session.queued is None:
            return b"-ERR EXEC without MULTI\r\n"
        queued, session.queued = session.queued, None
        return array([await self._dispatch(session, command) for command in queued])

    async def cmd_discard(self, session: Session) -> bytes:
        if session.queued is None:
            return b"-ERR DISCARD without MULTI\r\n"
        session.queued = None
        return OK

    async def cmd_subscribe(self, session: Session, *channels: bytes) -> bytes:
        if not channels:
            raise TypeError("SUBSCRIBE needs a channel")
        replies = []
        for channel in channels:
            self.subscribers.setdefault(channel, set()).add(session.writer)
            session.channels.add(channel)
            replies.append(array([bulk(b"subscribe"), bulk(channel), integer(len(session.channels))]))
        return b"".join(replies)

    async def cmd_unsubscribe(self, session: Session, *channels: bytes) -> bytes:
        if not channels and not session.channels:
            return array([bulk(b"unsubscribe"), bulk(None), integer(0)])
        replies = []
        for channel in channels or sorted(session.channels):
            session.channels.discard(channel)
            self.subscribers.get(channel, set()).discard(session.writer)
            replies.append(array([bulk(b"unsubscribe"), bulk(channel), integer(len(session.channels))]))
        return b"".join(replies)

    async def cmd_publish(self, session: Session, channel: bytes, message: bytes) -> bytes:
        receivers = self.subscribers.get(channel, set())
        for writer in receivers:
            writer.write(array([bulk(b"message"), bulk(channel), bulk(message)]))
        return integer(len(receivers))


# -- running a test body on each loop --------------------------------------------------


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Body = Callable[[FakeRedis], Awaitable[Any]]


@pytest.fixture
def run(loop_name: str) -> Callable[[Body], Any]:
    """run(body): on a fresh loop of the kind under test, start a FakeRedis,
    await body(server) with a timeout, close the server, return the result."""

    def runner(body: Body) -> Any:
        async def main() -> Any:
            on_ferroloop = type(asyncio.get_running_loop()).__module__.startswith("ferroloop")
            assert on_ferroloop == (loop_name == "ferroloop"), type(asyncio.get_running_loop())
            server = await FakeRedis().start()
            try:
                return await asyncio.wait_for(body(server), TIMEOUT)
            finally:
                await server.close()

        return run_with_loop(LOOP_FACTORIES[loop_name], main())

    return runner


def client_for(server: FakeRedis, **options: Any) -> redis.asyncio.Redis:
    options.setdefault("socket_timeout", 10)
    return redis.asyncio.Redis(host="127.0.0.1", port=server.port, protocol=2, **options)


# -- tests -----------------------------------------------------------------------------


def test_basic_commands(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> None:
        client = client_for(server)
        try:
            assert await client.ping() is True
            assert await client.set("greeting", "hello") is True
            assert await client.get("greeting") == b"hello"
            assert await client.get("missing") is None
            assert [await client.incr("counter") for _ in range(3)] == [1, 2, 3]
            assert await client.get("counter") == b"3"
            assert await client.exists("greeting", "counter", "missing") == 2
            assert await client.delete("greeting", "missing") == 1
            assert await client.get("greeting") is None
            assert await client.set("word", "x") is True
            with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
                await client.incr("word")
            assert await client.set("short-lived", "v", px=50) is True
            assert await client.get("short-lived") == b"v"
            await asyncio.sleep(0.2)
            assert await client.get("short-lived") is None
            assert await client.rpush("letters", "a", "b", "c") == 3
            assert await client.lrange("letters", 0, -1) == [b"a", b"b", b"c"]
        finally:
            await client.aclose()
        assert server.calls[b"HELLO"] == 0  # protocol=2: no RESP3 handshake
        assert server.calls[b"CLIENT"] == 2  # SETINFO LIB-NAME and LIB-VER

    run(body)


@pytest.mark.parametrize("transaction", [True, False], ids=["multi-exec", "plain"])
def test_pipeline_of_1000_commands(run: Callable[[Body], Any], transaction: bool) -> None:
    async def body(server: FakeRedis) -> list[Any]:
        client = client_for(server)
        try:
            async with client.pipeline(transaction=transaction) as pipe:
                for i in range(500):
                    pipe.set(f"key:{i}", f"value:{i}")
                    pipe.incr("counter")
                replies = await pipe.execute()
            assert await client.get("key:499") == b"value:499"
            assert await client.get("counter") == b"500"
            return replies
        finally:
            await client.aclose()
            if transaction:
                assert (server.calls[b"MULTI"], server.calls[b"EXEC"]) == (1, 1)
            else:
                assert server.calls[b"MULTI"] == 0

    replies = run(body)
    assert len(replies) == 1000
    assert replies[0::2] == [True] * 500
    assert replies[1::2] == list(range(1, 501))


def test_5mib_value_round_trip(run: Callable[[Body], Any]) -> None:
    value = random.Random(5).randbytes(5 * 1024 * 1024)

    async def body(server: FakeRedis) -> bytes:
        client = client_for(server)
        try:
            assert await client.set("big", value) is True
            fetched = await client.get("big")
            assert await client.set("after", "small") is True  # the stream is still in step
            assert await client.get("after") == b"small"
            assert isinstance(fetched, bytes)
            return fetched
        finally:
            await client.aclose()

    fetched = run(body)
    assert len(fetched) == len(value)
    assert hashlib.sha256(fetched).digest() == hashlib.sha256(value).digest()


def test_blpop_wakes_on_push_from_another_client(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> tuple[Any, Any]:
        waiting, pushing = client_for(server), client_for(server)
        try:
            popped = asyncio.ensure_future(waiting.blpop(["jobs"], timeout=10))
            while not server.blocked.get(b"jobs"):  # BLPOP has reached the server
                assert not popped.done(), popped
                await asyncio.sleep(0.005)
            started = time.monotonic()
            assert await pushing.rpush("jobs", "first", "second") == 2
            result = await popped
            assert time.monotonic() - started < 5
            return result, await pushing.lrange("jobs", 0, -1)
        finally:
            await waiting.aclose()
            await pushing.aclose()

    popped, left = run(body)
    assert tuple(popped) == (b"jobs", b"first")
    assert left == [b"second"]


def test_blpop_timeout_returns_none(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> tuple[Any, float, Any]:
        client = client_for(server)
        try:
            started = time.monotonic()
            result = await client.blpop(["empty"], timeout=0.2)
            elapsed = time.monotonic() - started
            return result, elapsed, await client.ping()
        finally:
            await client.aclose()

    result, elapsed, pong = run(body)
    assert result is None
    assert 0.15 <= elapsed < 5, elapsed
    assert pong is True


def test_pubsub_messages_arrive_in_order(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> tuple[list[Any], list[int], list[bytes]]:
        subscriber_client, publisher = client_for(server), client_for(server)
        pubsub = subscriber_client.pubsub()
        try:
            await pubsub.subscribe("news")
            confirmation = await pubsub.get_message(timeout=5)
            assert confirmation is not None
            receivers = [await publisher.publish("news", f"item {i}") for i in range(20)]
            received: list[bytes] = []
            while len(received) < 20:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                assert message is not None, f"only {len(received)} messages arrived"
                assert (message["type"], message["channel"]) == ("message", b"news")
                received.append(message["data"])
            await pubsub.unsubscribe("news")
            goodbye = await pubsub.get_message(timeout=5)
            assert goodbye is not None
            assert await publisher.publish("news", "nobody listens") == 0
            return [confirmation, goodbye], receivers, received
        finally:
            await pubsub.aclose()
            await subscriber_client.aclose()
            await publisher.aclose()

    confirmations, receivers, received = run(body)
    assert [(c["type"], c["channel"], c["data"]) for c in confirmations] == [
        ("subscribe", b"news", 1),
        ("unsubscribe", b"news", 0),
    ]
    assert receivers == [1] * 20
    assert received == [f"item {i}".encode() for i in range(20)]


def test_cancelled_command_leaves_the_client_usable(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> tuple[Any, ...]:
        client = client_for(server)
        try:
            assert await client.set("before", "1") is True
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.blpop(["never"], timeout=0), 0.2)
            after = await client.get("before"), await client.incr("after"), await client.ping()
            return after, server.connections_accepted
        finally:
            await client.aclose()

    after, connections = run(body)
    assert after == (b"1", 1, True)
    assert connections == 2  # redis-py drops the cancelled command's connection


def test_pool_serves_50_concurrent_increments(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> tuple[list[int], Any, int]:
        client = client_for(server)
        try:
            results = await asyncio.gather(*(client.incr("hits") for _ in range(50)))
            return sorted(results), await client.get("hits"), server.connections_accepted
        finally:
            await client.aclose()

    results, final, connections = run(body)
    assert results == list(range(1, 51))
    assert final == b"50"
    assert 1 < connections <= 50  # the pool opened connections on demand


def test_server_gone_raises_connection_error(run: Callable[[Body], Any]) -> None:
    async def body(server: FakeRedis) -> str:
        # One quick retry instead of the default ten with backoff, to stay fast.
        client = client_for(server, retry=Retry(NoBackoff(), 1))
        try:
            assert await client.set("k", "v") is True
            await server.close()
            with pytest.raises(redis.exceptions.ConnectionError) as caught:
                await client.get("k")
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()  # a fresh connection is refused too
            return type(caught.value).__name__
        finally:
            await client.aclose()

    assert run(body) == "ConnectionError"
