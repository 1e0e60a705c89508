"""TLS: asyncio's SSLProtocol over the native stream transport.

From 3.11 on, asyncio's ``SSLProtocol`` is a buffered protocol driving an
``ssl.SSLObject`` through memory BIOs; ferroloop runs it over its native
stream transport and mends three places where it loses data or hangs:

* After ``close()`` no more data reaches the protocol, as the transport API
  promises ("no more data will be received"). asyncio still passes on data
  that arrives during its shutdown, and when reading was paused the close
  fails on the data it left unread (next point).
* Application data that arrives after close() is discarded before the
  close_notify exchange. asyncio hands it to ``unwrap()``, which fails the
  close with ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY`` (bpo-39951).
* The first data after the handshake is delivered one callback later, after
  the waiter's callbacks. A ``start_tls()`` caller thus holds the TLS
  transport before the data that came with the last handshake bytes reaches
  the protocol, instead of having it arrive while the caller still writes
  to the plain transport.

On 3.10, whose SSLProtocol is the older design, asyncio's TLS set-up is used
unchanged.
"""

from __future__ import annotations

import functools
import sys
import threading
from asyncio import base_events, constants, exceptions, sslproto
from typing import Any, Optional

try:
    import ssl
except ImportError:  # an interpreter built without OpenSSL
    ssl = None  # type: ignore[assignment]

# Since 3.12 asyncio refuses to make a transport on a socket another (open)
# transport owns.
_TRANSPORTS_REFUSE_OWNED_SOCKETS = sys.version_info >= (3, 12)

if sys.version_info >= (3, 11) and ssl is not None:
    _State = sslproto.SSLProtocolState
    _per_thread = threading.local()
    # typeshed declares the public surface only; the overrides below are of
    # the private methods of the class as each of 3.11-3.14 defines it.
    _AsyncioSSLProtocol: Any = sslproto.SSLProtocol

    def _shared_read_buffer() -> memoryview:
        """The buffer the transport reads encrypted bytes into, one per
        thread. asyncio zero-fills 256 KiB per connection for it (fresh
        pages from the kernel, each faulted in). Sharing is sound because
        the transport hands what it read to buffer_updated() at once, which
        copies it into the connection's incoming BIO before anything else
        runs; and one thread runs one loop at a time."""
        try:
            view: memoryview = _per_thread.read_buffer
        except AttributeError:
            view = _per_thread.read_buffer = memoryview(bytearray(sslproto.SSLProtocol.max_size))
        return view

    class SSLProtocol(_AsyncioSSLProtocol):
        _shutting_down = False
        _first_read_pending = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # asyncio's __init__ allocates its read buffer of max_size bytes;
            # an instance value of 0 makes that empty (get_buffer below
            # lends the shared one), and asyncio's reads of max_size see
            # the class value again afterwards.
            self.max_size = 0
            try:
                super().__init__(*args, **kwargs)
            finally:
                del self.max_size

        def get_buffer(self, n: int) -> memoryview:
            # buffer_updated() (asyncio's) reads from _ssl_buffer_view.
            self._ssl_buffer_view = view = _shared_read_buffer()
            return view

        def _on_handshake_complete(self, handshake_exc: Optional[BaseException]) -> None:
            self._first_read_pending = True
            try:
                super()._on_handshake_complete(handshake_exc)
            finally:
                self._first_read_pending = False
            if self._state is _State.WRAPPED:
                # The handshake's last flight (a client's Finished) goes out
                # now; only the reading waits for the waiter's callbacks.
                self._process_outgoing()
                self._loop.call_soon(self._do_read)

        def _do_read(self) -> None:
            if self._first_read_pending:
                return
            super()._do_read()

        def _start_shutdown(self) -> None:
            self._shutting_down = True
            super()._start_shutdown()

        def _do_flush(self) -> None:
            if not self._shutting_down:
                # EOF from the peer while reading was paused: what it sent
                # before the EOF is still the protocol's to read.
                super()._do_flush()
                return
            # Closing: what the protocol wrote still goes out, but nothing
            # more is read for it.
            try:
                self._do_write()
            except Exception as exc:
                self._fatal_error(exc, "Fatal error on SSL protocol")
                return
            self._set_state(_State.SHUTDOWN)
            self._do_shutdown()

        def _do_shutdown(self) -> None:
            if not self._eof_received:
                try:
                    self._discard_application_data()
                except ssl.SSLError as exc:
                    self._on_shutdown_complete(exc)
                    return
            super()._do_shutdown()

        def _discard_application_data(self) -> None:
            """Read what the peer sent before its close_notify, and drop it:
            unwrap() fails on application data it finds in the way."""
            try:
                while self._sslobj.read(self.max_size):
                    pass
            except sslproto.SSLAgainErrors:
                pass
            except ssl.SSLZeroReturnError:
                pass  # the close_notify, once our own has been sent

    def make_ssl_transport(
        loop: Any,
        rawsock: Any,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: Optional[str] = None,
        extra: Optional[dict[str, Any]] = None,
        server: Any = None,
        ssl_handshake_timeout: Optional[float] = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Optional[float] = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        if _TRANSPORTS_REFUSE_OWNED_SOCKETS:
            loop._ensure_fd_no_transport(rawsock)
        ssl_protocol = SSLProtocol(
            loop, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        loop._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def accept_tls(
        loop: Any,
        sslcontext: Any,
        server: Any,
        ssl_handshake_timeout: Optional[float],
        ssl_shutdown_timeout: Optional[float],
        conn: Any,
        protocol: Any,
        extra: dict[str, Any],
    ) -> Any:
        """A TLS server's accepted connection (the native accept loop's
        ``wrap``): what asyncio's ``_accept_connection2`` does, with a
        callback on the handshake where asyncio has a task wait for it."""
        waiter = loop.create_future()
        transport = loop._make_ssl_transport(
            conn, protocol, sslcontext, waiter=waiter, server_side=True, extra=extra, server=server,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        waiter.add_done_callback(functools.partial(_handshake_done, loop, protocol, transport))
        return transport

    def _handshake_done(loop: Any, protocol: Any, transport: Any, waiter: Any) -> None:
        exc = exceptions.CancelledError() if waiter.cancelled() else waiter.exception()
        if exc is None:
            return
        # As asyncio's: the connection is dropped, the error reported in
        # debug mode only.
        transport.close()
        if loop.get_debug():
            loop.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                    "protocol": protocol,
                    "transport": transport,
                }
            )

    async def start_tls(
        loop: Any,
        transport: Any,
        protocol: Any,
        sslcontext: Any,
        *,
        server_side: bool = False,
        server_hostname: Optional[str] = None,
        ssl_handshake_timeout: Optional[float] = None,
        ssl_shutdown_timeout: Optional[float] = None,
    ) -> Any:
        """Upgrade ``transport`` to TLS; the returned transport is the one
        ``protocol`` writes to from now on."""
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = loop.create_future()
        ssl_protocol = SSLProtocol(
            loop, protocol, sslcontext, waiter, server_side, server_hostname, call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        # Paused first, so that no data reaches the TLS protocol before its
        # connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        connection_made = loop.call_soon(ssl_protocol.connection_made, transport)
        resume_reading = loop.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume_reading.cancel()
            raise
        return ssl_protocol._app_transport

else:
    make_ssl_transport = None  # type: ignore[assignment]
    accept_tls = None  # type: ignore[assignment]
    start_tls = base_events.BaseEventLoop.start_tls  # type: ignore[assignment]
