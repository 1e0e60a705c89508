"""TLS: the set-up around ferroloop's native SSLProtocol.

From 3.11 on, asyncio's ``SSLProtocol`` is a buffered protocol driving an
``ssl.SSLObject`` through memory BIOs. ferroloop's is the same design in
Rust (``ferroloop._native.SSLProtocol`` and the ``SSLProtocolTransport`` it gives the
application), with asyncio's states, flow control, errors and messages,
and three mends where asyncio's loses data or hangs:

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

This module holds what stays Python: making the protocol and its stream
transport, a TLS server's accept, and ``start_tls``. On 3.10, whose
SSLProtocol is the older design, asyncio's TLS set-up is used unchanged.
"""

from __future__ import annotations

import functools
import sys
from asyncio import base_events, constants, exceptions, sslproto
from typing import Any, Optional

from ._versions import TRANSPORTS_REFUSE_OWNED_SOCKETS

try:
    import ssl
except ImportError:  # an interpreter built without OpenSSL
    ssl = None  # type: ignore[assignment]

if sys.version_info >= (3, 11) and ssl is not None:
    from ._native import SSLProtocol

    # typeshed declares the public surface only.
    _AsyncioSSLProtocol: Any = sslproto.SSLProtocol
    _AsyncioSSLTransport: Any = sslproto._SSLProtocolTransport

    class SSLProtocolClass(_AsyncioSSLProtocol):
        """What a native ``SSLProtocol`` reports as its ``__class__``, so that
        ``isinstance`` checks against asyncio's ``SSLProtocol`` (and
        ``BufferedProtocol``) hold. Never instantiated."""

        def __new__(cls, *args: Any, **kwargs: Any) -> "SSLProtocolClass":
            raise TypeError("SSLProtocolClass only describes ferroloop's SSLProtocol; it is not instantiated")

    class SSLProtocolTransportClass(_AsyncioSSLTransport):
        """What a native ``SSLProtocolTransport`` reports as its ``__class__``, so that
        ``isinstance(transport, asyncio.Transport)`` holds, as for asyncio's
        ``_SSLProtocolTransport``. Never instantiated."""

        def __new__(cls, *args: Any, **kwargs: Any) -> "SSLProtocolTransportClass":
            raise TypeError("SSLProtocolTransportClass only describes ferroloop's SSLProtocolTransport; it is not instantiated")

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
        if TRANSPORTS_REFUSE_OWNED_SOCKETS:
            loop._ensure_fd_no_transport(rawsock)
        ssl_protocol = SSLProtocol(
            loop, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        loop._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def handshake_done(loop: Any, protocol: Any, transport: Any, waiter: Any) -> None:
        """A TLS server's accepted connection, once its handshake ended (the
        native accept loop's callback on the waiter)."""
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
    SSLProtocol: Any = None  # type: ignore[no-redef]
    make_ssl_transport = None  # type: ignore[assignment]
    handshake_done = None  # type: ignore[assignment]
    start_tls = base_events.BaseEventLoop.start_tls  # type: ignore[assignment]
