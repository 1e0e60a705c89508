//! `Listener`: the accept loop of a TCP or Unix server.
//!
//! The listening socket is owned by the poller (edge-triggered, like a
//! stream transport's). Each readiness accepts up to `backlog` connections;
//! for each, the protocol factory runs and the native stream transport is
//! made right there, with no Python handle, task or coroutine per
//! connection (for a TLS server, with the native SSLProtocol between them
//! and a callback on the handshake). As in asyncio, each connection runs in
//! its own copy of the context captured when serving started, and
//! `connection_made` and the first read are scheduled callbacks of the loop.
//!
//! asyncio's `_accept_connection` semantics are kept: a burst is bounded by
//! `backlog`; out of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the
//! error goes to the exception handler and accepting pauses for
//! `ACCEPT_RETRY_DELAY` seconds; an error making a connection's protocol or
//! transport is reported only in debug mode.

use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::event_loop::handles::{in_context, Scheduled};
use crate::event_loop::{copy_current_context, is_fatal, LoopCore};
use crate::support::sync::lock;
use crate::support::thread_exit;
use crate::tls::protocol::SslProtocol;
use crate::transports::stream_setup::{make_stream_transport, wants_nodelay, Known};
use crate::transports::sockaddr::{self, RawAddr};
use crate::transports::socket_object;
use crate::transports::syscalls::os_error;
use crate::transports::Attached;

struct Refs {
    transport_socket: Py<PyAny>,
    logger: Py<PyAny>,
    accept_retry_delay: Py<PyAny>,
    partial: Py<PyAny>,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        Ok(Refs {
            transport_socket: py.import("asyncio.trsock")?.getattr("TransportSocket")?.unbind(),
            logger: py.import("logging")?.call_method1("getLogger", ("asyncio",))?.unbind(),
            accept_retry_delay: py.import("asyncio.constants")?.getattr("ACCEPT_RETRY_DELAY")?.unbind(),
            partial: py.import("functools")?.getattr("partial")?.unbind(),
        })
    })
}

struct TlsAccept {
    sslcontext: Py<PyAny>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    /// `ferroloop._tls.handshake_done(loop, protocol, transport, waiter)`:
    /// what asyncio's `_accept_connection2` does when the handshake fails.
    handshake_done: Py<PyAny>,
}

struct State {
    /// The listening `socket.socket`; None once stopped for good.
    sock: Option<Py<PyAny>>,
    /// In the poller now (not stopped, not backing off).
    active: bool,
    read_pending: bool,
    queued: bool,
}

#[pyclass(module = "ferroloop._native", frozen)]
pub struct Listener {
    fd: RawFd,
    event_loop: Py<LoopCore>,
    protocol_factory: Py<PyAny>,
    /// A TLS server's context and handshake and shutdown timeouts; None for
    /// a plain one.
    tls: Option<TlsAccept>,
    server: Py<PyAny>,
    backlog: usize,
    /// Copied at each connection, as asyncio's accept callback runs each
    /// connection's set-up in a task of its own.
    context: Py<PyAny>,
    family: i32,
    sock_type: i32,
    proto: i32,
    nodelay: bool,
    /// The name all its connections have, if it is the listener's own.
    local_name: Option<RawAddr>,
    state: Mutex<State>,
}

impl Listener {
    /// Records readiness; true when the listener must be queued.
    pub fn note_ready(&self, readable: bool, hung_up: bool) -> bool {
        let mut st = lock(&self.state);
        st.read_pending |= readable || hung_up;
        if st.read_pending && st.active && !st.queued {
            st.queued = true;
            return true;
        }
        false
    }

    fn queue(slf: &Bound<'_, Self>) {
        let this = slf.get();
        let mut st = lock(&this.state);
        if st.active && !st.queued {
            st.queued = true;
            drop(st);
            lock(&this.event_loop.get().sched).ready.push_back(Scheduled::Io(Attached::Listener(slf.clone().unbind())));
        }
    }

    /// Accepts what is waiting, up to `backlog` connections.
    pub fn process(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = lock(&this.state);
            st.queued = false;
            if !st.active || !st.read_pending {
                return Ok(());
            }
        }
        for _ in 0..this.backlog {
            let mut peer = RawAddr::empty();
            let fd = match sockaddr::accept(this.fd, &mut peer) {
                Ok(fd) => fd,
                Err(err) => {
                    return match err.raw_os_error() {
                        // The backlog is empty (the edge is consumed), or the
                        // peer gave up: asyncio stops here too.
                        Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => {
                            lock(&this.state).read_pending = false;
                            Ok(())
                        }
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Self::back_off(slf, &err),
                        _ => Err(os_error(slf.py(), &err)),
                    };
                }
            };
            Self::accepted(slf, fd, &peer)?;
        }
        // A full burst may have left connections waiting, and no new edge
        // comes for them: accept the rest next iteration.
        Self::queue(slf);
        Ok(())
    }

    /// Out of resources: report, leave the poller, retry after a delay.
    fn back_off(slf: &Bound<'_, Self>, err: &std::io::Error) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let sock = {
            let mut st = lock(&this.state);
            st.active = false;
            st.sock.as_ref().map(|s| s.clone_ref(py))
        };
        drop(this.event_loop.get().poller.detach(this.fd));
        let context = PyDict::new(py);
        context.set_item(intern!(py, "message"), "socket.accept() out of system resource")?;
        context.set_item(intern!(py, "exception"), os_error(py, err).into_value(py))?;
        if let Some(sock) = sock {
            context.set_item(intern!(py, "socket"), refs.transport_socket.bind(py).call1((sock,))?)?;
        }
        let event_loop = this.event_loop.bind(py);
        thread_exit::call_method(event_loop, intern!(py, "call_exception_handler"), (context,))?;
        let resume = slf.getattr(intern!(py, "_resume"))?;
        event_loop.call_method1(intern!(py, "call_later"), (refs.accept_retry_delay.bind(py), resume))?;
        Ok(())
    }

    /// One accepted connection: its socket object, protocol and transport.
    fn accepted(slf: &Bound<'_, Self>, fd: RawFd, peer: &RawAddr) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        // The fd is non-blocking already (accept4); SOCK_NONBLOCK in the
        // type makes the socket object agree, with a timeout of 0.0 as
        // asyncio's `conn.setblocking(False)` gives, and no fcntl calls.
        // `socket.type` leaves the flag out.
        let made = socket_object::new_socket(py, this.family, this.sock_type | libc::SOCK_NONBLOCK, this.proto, Some(fd));
        let conn = match made {
            Ok(made) => made,
            Err(err) => {
                // SAFETY: `fd` came from accept4 and no socket object owns
                // it yet, so closing it here is the only close.
                unsafe { libc::close(fd) };
                return Err(err);
            }
        };
        let event_loop = this.event_loop.bind(py);
        if event_loop.get().debug_enabled() {
            refs.logger.bind(py).call_method1(
                intern!(py, "debug"),
                ("%r got a new connection from %r: %r", this.server.bind(py), sockaddr::to_object(py, peer)?, &conn),
            )?;
        }
        // SAFETY: attached; `this.context` is a Context. PyContext_Copy
        // returns a new reference or NULL with an exception set.
        let context = unsafe {
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyContext_Copy(this.context.as_ptr()))?
        };
        let mut protocol = None;
        let mut transport = None;
        let outcome = in_context(py, &context, || {
            Self::connect(slf, fd, &conn, peer, &context, &mut protocol, &mut transport)
        })?;
        let Err(err) = outcome else { return Ok(()) };
        // As asyncio's failed set-up: the connection is dropped, and the
        // error only reported in debug mode.
        let closed = match &transport {
            Some(transport) => transport.call_method0(intern!(py, "close")).map(drop),
            None => conn.call_method0(intern!(py, "close")).map(drop),
        };
        if is_fatal(py, &err) {
            return Err(err);
        }
        closed?;
        if event_loop.get().debug_enabled() {
            let report = PyDict::new(py);
            report.set_item(intern!(py, "message"), "Error on transport creation for incoming connection")?;
            report.set_item(intern!(py, "exception"), err.into_value(py))?;
            if let Some(protocol) = protocol {
                report.set_item(intern!(py, "protocol"), protocol)?;
            }
            if let Some(transport) = transport {
                report.set_item(intern!(py, "transport"), transport)?;
            }
            thread_exit::call_method(event_loop, intern!(py, "call_exception_handler"), (report,))?;
        }
        Ok(())
    }

    /// Inside the connection's context: what asyncio's
    /// `_accept_connection2` and `_make_socket_transport` do.
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        conn: &Bound<'py, PyAny>,
        peer: &RawAddr,
        context: &Bound<'py, PyAny>,
        protocol_out: &mut Option<Bound<'py, PyAny>>,
        transport_out: &mut Option<Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = thread_exit::call(this.protocol_factory.bind(py), ())?;
        *protocol_out = Some(protocol.clone());
        let extra = PyDict::new(py);
        let server = this.server.bind(py);
        // The peer is the address accept gave, as asyncio's `peername`.
        let known = Known { fd, tcp: this.nodelay, peer: Some(*peer), local: this.local_name };
        let event_loop = this.event_loop.bind(py);
        if let Some(tls) = &this.tls {
            // What asyncio's `_accept_connection2` does for TLS, with a
            // callback on the handshake where asyncio has a task wait for it.
            let waiter = event_loop.get().new_future(event_loop)?;
            let ssl_protocol = SslProtocol::new(
                py,
                event_loop.clone().into_any(),
                protocol.clone(),
                tls.sslcontext.bind(py).clone(),
                waiter.clone(),
                true,
                None,
                true,
                Some(tls.handshake_timeout.bind(py).clone()).filter(|t| !t.is_none()),
                Some(tls.shutdown_timeout.bind(py).clone()).filter(|t| !t.is_none()),
            )?;
            let ssl_protocol = Bound::new(py, ssl_protocol)?;
            make_stream_transport(event_loop, conn, ssl_protocol.as_any(), None, extra, Some(server), None, Some(known))?;
            let transport = SslProtocol::app_transport(&ssl_protocol)?.into_bound(py).into_any();
            let done = refs(py)?.partial.bind(py).call1((tls.handshake_done.bind(py), event_loop, &protocol, &transport))?;
            waiter.call_method1(intern!(py, "add_done_callback"), (done,))?;
            *transport_out = Some(transport);
            return Ok(());
        }
        let transport =
            make_stream_transport(event_loop, conn, &protocol, None, extra, Some(server), Some(context), Some(known))?;
        *transport_out = Some(transport.into_any());
        Ok(())
    }
}

#[pymethods]
impl Listener {
    #[new]
    /// `tls`: a TLS server's `(sslcontext, ssl_handshake_timeout,
    /// ssl_shutdown_timeout, handshake_done)`.
    #[pyo3(signature = (event_loop, sock, protocol_factory, server, backlog, tls=None))]
    fn new(
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: &Bound<'_, PyAny>,
        server: &Bound<'_, PyAny>,
        backlog: usize,
        tls: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        let sock_type: i32 = sock.getattr(intern!(py, "type"))?.extract()?;
        let proto: i32 = sock.getattr(intern!(py, "proto"))?.extract()?;
        if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!("unsupported address family {family}")));
        }
        let nodelay = wants_nodelay(family, sock_type, proto);
        Ok(Self {
            fd,
            event_loop: event_loop.cast::<LoopCore>()?.clone().unbind(),
            protocol_factory: protocol_factory.clone().unbind(),
            tls: tls.map(|(sslcontext, handshake_timeout, shutdown_timeout, handshake_done)| TlsAccept {
                sslcontext: sslcontext.unbind(),
                handshake_timeout: handshake_timeout.unbind(),
                shutdown_timeout: shutdown_timeout.unbind(),
                handshake_done: handshake_done.unbind(),
            }),
            server: server.clone().unbind(),
            // asyncio accepts at least one per readiness whatever it is given.
            backlog: backlog.max(1),
            context: copy_current_context(py)?,
            family,
            sock_type,
            proto,
            nodelay,
            local_name: sockaddr::accepted_local_name(fd, family),
            state: Mutex::new(State { sock: Some(sock.clone().unbind()), active: false, read_pending: false, queued: false }),
        })
    }

    /// Joins the poller: connections are accepted from now on.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = lock(&this.state);
            if st.active || st.sock.is_none() {
                return Ok(());
            }
            st.active = true;
        }
        let attached = this.event_loop.get().poller.attach(this.fd, Attached::Listener(slf.clone().unbind()));
        match attached {
            Ok(stale) => {
                for watcher in stale {
                    watcher.retire(slf.py());
                }
                Ok(())
            }
            Err(err) => {
                lock(&this.state).active = false;
                Err(os_error(slf.py(), &err))
            }
        }
    }

    /// Leaves the poller for good (the server closes the socket next).
    fn stop(&self) {
        let was_active = {
            let mut st = lock(&self.state);
            st.sock = None;
            std::mem::replace(&mut st.active, false)
        };
        if was_active {
            drop(self.event_loop.get().poller.detach(self.fd));
        }
    }

    /// The end of a back-off: accept again unless stopped meanwhile.
    fn _resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start(slf)
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).sock.as_ref().map(|s| s.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let st = lock(&self.state);
        let status = if st.active { "accepting" } else if st.sock.is_some() { "paused" } else { "stopped" };
        format!("<Listener fd={} {status} backlog={}>", self.fd, self.backlog)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.protocol_factory)?;
        if let Some(tls) = &self.tls {
            visit.call(&tls.sslcontext)?;
            visit.call(&tls.handshake_timeout)?;
            visit.call(&tls.shutdown_timeout)?;
            visit.call(&tls.handshake_done)?;
        }
        visit.call(&self.server)?;
        visit.call(&self.context)?;
        if let Ok(st) = self.state.try_lock() {
            if let Some(sock) = &st.sock {
                visit.call(sock)?;
            }
        }
        Ok(())
    }
}
