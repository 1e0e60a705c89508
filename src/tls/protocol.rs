//! `SslProtocol`: asyncio's `sslproto.SSLProtocol` (3.11+) in Rust.
//!
//! It is the stream transport's (buffered) protocol: encrypted bytes come in
//! through `get_buffer`/`buffer_updated` into the incoming memory BIO, the
//! `ssl.SSLObject` turns them into handshake progress or application data,
//! and what it writes to the outgoing BIO goes to the stream transport.
//! Each flow (handshake, read, write, shutdown), each state change and each
//! flow-control decision is asyncio's, with its errors and messages. Where
//! the `SSLObject` is the stdlib's own class, its C object is called
//! directly (the Python methods only forward to it).
//!
//! Three mends to asyncio's design, which lose data or hang there:
//! - after `close()` no more data reaches the application, as the transport
//!   API promises; what it wrote still goes out first;
//! - application data that arrives after `close()` is discarded before the
//!   close_notify exchange: `unwrap()` fails on it
//!   (`APPLICATION_DATA_AFTER_CLOSE_NOTIFY`, bpo-39951);
//! - the first data after the handshake is delivered one callback later,
//!   after the waiter's callbacks, so that a `start_tls()` caller holds the
//!   TLS transport before data that came with the last handshake bytes
//!   reaches the protocol.
//!
//! The state lock is never held across a call into Python, nor while a
//! Python object it held is released (a release can run `__del__`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Mutex;

use pyo3::exceptions::{PyAssertionError, PyAttributeError, PyConnectionAbortedError, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PySlice, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use super::app_transport::TlsTransport;
use super::refs::{refs, reported_class, Refs};
use crate::event_loop::{is_fatal, LoopCore};
use crate::support::sync::lock;
use crate::support::thread_exit::{call, call_method, call_method_args};
use crate::transports::shared::{water_marks, WaterMarks};

/// asyncio's `SSLProtocol.max_size`: the most one read asks for.
const MAX_SIZE: usize = 256 * 1024;

/// asyncio's `SSLProtocolState`, in the order of `Refs::states`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsState {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

/// asyncio's `AppProtocolState`: INIT -connection_made-> CON_MADE
/// [-eof_received-> EOF] -connection_lost-> CON_LOST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

struct Inner {
    state: TlsState,
    app_state: AppState,
    app_protocol: Option<Py<PyAny>>,
    /// The application protocol's `get_buffer` and `buffer_updated`, when it
    /// is a buffered protocol.
    app_buffered: Option<(Py<PyAny>, Py<PyAny>)>,
    waiter: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    app_transport: Option<Py<TlsTransport>>,
    app_transport_created: bool,
    write_backlog: VecDeque<Py<PyAny>>,
    write_buffer_size: i64,
    conn_lost: u64,
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    ssl_reading_paused: bool,
    eof_received: bool,
    app_writing_paused: bool,
    incoming_marks: WaterMarks,
    outgoing_marks: WaterMarks,
    handshake_timeout_handle: Option<Py<PyAny>>,
    shutdown_timeout_handle: Option<Py<PyAny>>,
    handshake_start_time: Option<f64>,
    /// Set while the handshake completes: the first read waits for a
    /// callback of its own.
    first_read_pending: bool,
    /// `close()` was called: nothing more is read for the application.
    shutting_down: bool,
}

#[pyclass(module = "ferroloop._native", name = "SSLProtocol", frozen, weakref)]
pub struct SslProtocol {
    event_loop: Py<PyAny>,
    sslcontext: Py<PyAny>,
    extra: Py<PyDict>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    sslobj: Py<PyAny>,
    /// What the flows call: the `_ssl._SSLSocket` behind a stdlib
    /// `SSLObject`, or the object itself (a subclass may override methods).
    engine: Py<PyAny>,
    /// `engine` is the C object, whose `unwrap()` is called `shutdown()`.
    engine_is_c: bool,
    server_side: bool,
    server_hostname: Option<Py<PyAny>>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    inner: Mutex<Inner>,
}

/// How a call into the `SSLObject` failed, as asyncio's `except` clauses
/// tell them apart.
enum SslFailure {
    /// `SSLWantReadError` or `SSLSyscallError`: more bytes are needed.
    Again,
    Ssl(PyErr),
    Other(PyErr),
}

fn classify(py: Python<'_>, refs: &Refs, err: PyErr) -> SslFailure {
    if err.is_instance(py, refs.again_errors.bind(py)) {
        SslFailure::Again
    } else if err.is_instance(py, refs.ssl_error.bind(py)) {
        SslFailure::Ssl(err)
    } else {
        SslFailure::Other(err)
    }
}

fn clone<T>(py: Python<'_>, obj: &Option<Py<T>>) -> Option<Py<T>> {
    obj.as_ref().map(|o| o.clone_ref(py))
}

/// What asyncio raises where it calls a method of an attribute that is
/// already None (a transport gone after `connection_lost`).
fn none_attribute(name: &str) -> PyErr {
    PyAttributeError::new_err(format!("'NoneType' object has no attribute '{name}'"))
}

fn cancel(py: Python<'_>, handle: Option<Py<PyAny>>) -> PyResult<()> {
    match handle {
        Some(handle) => call_method_args(handle.bind(py), intern!(py, "cancel"), &[]).map(drop),
        None => Ok(()),
    }
}

thread_local! {
    /// The buffer the stream transport reads encrypted bytes into, one per
    /// thread, never freed: asyncio zero-fills `max_size` bytes per
    /// connection for it. Sharing is sound because `buffer_updated` copies
    /// what was read into the connection's incoming BIO before anything else
    /// runs, and one thread runs one loop at a time.
    static READ_BUFFER: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

fn read_buffer() -> *mut u8 {
    READ_BUFFER.with(|cell| {
        if cell.get().is_null() {
            cell.set(Box::leak(vec![0u8; MAX_SIZE].into_boxed_slice()).as_mut_ptr());
        }
        cell.get()
    })
}

/// A memoryview of the first `len` bytes of this thread's read buffer.
fn read_buffer_view(py: Python<'_>, len: usize, writable: bool) -> PyResult<Bound<'_, PyAny>> {
    let flags = if writable { ffi::PyBUF_WRITE } else { ffi::PyBUF_READ };
    // SAFETY: the buffer is MAX_SIZE bytes, leaked, so valid for as long as
    // any view of it; `len` is at most MAX_SIZE. No Rust reference to its
    // contents exists: only Python code (with the GIL) touches them.
    unsafe {
        let view = ffi::PyMemoryView_FromMemory(read_buffer().cast(), len.min(MAX_SIZE) as ffi::Py_ssize_t, flags);
        Bound::from_owned_ptr_or_err(py, view)
    }
}

/// `sslcontext.wrap_bio(incoming, outgoing, server_side=..., server_hostname=...)`.
/// For the stdlib's own `SSLContext.wrap_bio` and `SSLObject` class, what
/// they do (`SSLObject._create`) is done here, without their Python frames;
/// a host name is passed on as it is when IDNA encoding would not change it.
fn wrap_bio<'py>(
    py: Python<'py>,
    refs: &Refs,
    sslcontext: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    outgoing: &Bound<'py, PyAny>,
    server_side: bool,
    server_hostname: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // Looked up on the object first, for asyncio's AttributeError when it
    // is no SSLContext at all.
    let bound_wrap_bio = sslcontext.getattr(intern!(py, "wrap_bio"))?;
    let standard = bound_wrap_bio.getattr(intern!(py, "__func__")).is_ok_and(|f| f.is(refs.context_wrap_bio.bind(py)))
        && sslcontext.getattr(intern!(py, "sslobject_class"))?.is(refs.ssl_object.bind(py));
    let plain_hostname = match server_hostname {
        None => Some(None),
        Some(name) => match name.cast::<pyo3::types::PyString>() {
            Ok(text) if is_plain_hostname(text.to_str()?) => Some(Some(name.clone())),
            _ => None,
        },
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "server_side"), server_side)?;
    let (true, Some(hostname)) = (standard, plain_hostname) else {
        kwargs.set_item(intern!(py, "server_hostname"), server_hostname)?;
        return bound_wrap_bio.call((incoming, outgoing), Some(&kwargs));
    };
    let ssl_object = refs.ssl_object.bind(py);
    let owner = ssl_object.call_method1(intern!(py, "__new__"), (ssl_object,))?;
    kwargs.set_item(intern!(py, "server_hostname"), hostname)?;
    kwargs.set_item(intern!(py, "owner"), &owner)?;
    kwargs.set_item(intern!(py, "session"), py.None())?;
    let engine = sslcontext.getattr(intern!(py, "_wrap_bio"))?.call((incoming, outgoing), Some(&kwargs))?;
    owner.setattr(intern!(py, "_sslobj"), engine)?;
    Ok(owner)
}

/// A host name that `str.encode("idna")` returns unchanged: ASCII letters,
/// digits and hyphens in labels of 1 to 63 characters.
fn is_plain_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 254
        && name.split('.').all(|label| (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `max_size` as a Python int, made once.
fn max_size(py: Python<'_>) -> Bound<'_, PyAny> {
    static MAX_SIZE_OBJECT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    MAX_SIZE_OBJECT
        .get_or_init(py, || MAX_SIZE.into_pyobject(py).map(|n| n.into_any().unbind()).unwrap_or_else(|never| match never {}))
        .bind(py)
        .clone()
}

static REPORTED_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl SslProtocol {
    fn st(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub(super) fn state(&self) -> TlsState {
        self.st().state
    }

    /// `loop.get_debug()`; a ferroloop loop's flag is read directly.
    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        let event_loop = self.event_loop.bind(py);
        if let Ok(core) = event_loop.cast::<LoopCore>() {
            return Ok(core.get().debug_enabled());
        }
        call_method_args(event_loop, intern!(py, "get_debug"), &[])?.is_truthy()
    }

    fn call_soon<'py>(&self, py: Python<'py>, callback: Bound<'py, PyAny>, args: Vec<Bound<'py, PyAny>>) -> PyResult<()> {
        let mut all = vec![callback];
        all.extend(args);
        let args = pyo3::types::PyTuple::new(py, all)?;
        call(&self.event_loop.bind(py).getattr(intern!(py, "call_soon"))?, args).map(drop)
    }

    fn transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone(py, &self.st().transport)
    }

    fn transport_or_err(&self, py: Python<'_>, method: &str) -> PyResult<Py<PyAny>> {
        self.transport(py).ok_or_else(|| none_attribute(method))
    }

    fn log(py: Python<'_>, level: &str, args: Vec<Bound<'_, PyAny>>, exc_info: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let refs = refs(py)?;
        let method = refs.logger.bind(py).getattr(level)?;
        let args = pyo3::types::PyTuple::new(py, args)?;
        let kwargs = PyDict::new(py);
        if let Some(exc) = exc_info {
            kwargs.set_item("exc_info", exc)?;
        }
        method.call(args, Some(&kwargs)).map(drop)
    }

    /// asyncio's `_set_state`: the allowed moves only, else RuntimeError.
    fn set_state(&self, py: Python<'_>, new: TlsState) -> PyResult<()> {
        use TlsState::*;
        let mut st = self.st();
        let allowed = matches!(
            (st.state, new),
            (_, Unwrapped) | (Unwrapped, DoHandshake) | (DoHandshake, Wrapped) | (Wrapped, Flushing) | (Flushing, Shutdown)
        );
        if allowed {
            st.state = new;
            return Ok(());
        }
        let old = st.state;
        drop(st);
        let states = &refs(py)?.states;
        Err(PyRuntimeError::new_err(format!(
            "cannot switch state from {} to {}",
            states[old as usize].bind(py).str()?,
            states[new as usize].bind(py).str()?
        )))
    }

    fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.st().waiter.take() else { return Ok(()) };
        let waiter = waiter.bind(py);
        if !call_method_args(waiter, intern!(py, "cancelled"), &[])?.is_truthy()? {
            match exc {
                Some(exc) => call_method_args(waiter, intern!(py, "set_exception"), &[exc])?,
                None => call_method_args(waiter, intern!(py, "set_result"), &[&py.None().into_bound(py)])?,
            };
        }
        Ok(())
    }

    /// asyncio's `_get_app_transport`: made once, on first need.
    pub(crate) fn app_transport(slf: &Bound<'_, Self>) -> PyResult<Py<TlsTransport>> {
        let py = slf.py();
        let this = slf.get();
        let mut st = this.st();
        if let Some(transport) = &st.app_transport {
            return Ok(transport.clone_ref(py));
        }
        if st.app_transport_created {
            return Err(PyRuntimeError::new_err("Creating _SSLProtocolTransport twice"));
        }
        st.app_transport_created = true;
        drop(st);
        let transport = Py::new(py, TlsTransport::new(this.event_loop.clone_ref(py), slf.clone().unbind()))?;
        this.st().app_transport = Some(transport.clone_ref(py));
        Ok(transport)
    }

    fn set_app_protocol_inner(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = if protocol.hasattr(intern!(py, "get_buffer"))? && protocol.is_instance(refs(py)?.buffered_protocol.bind(py))? {
            Some((protocol.getattr(intern!(py, "get_buffer"))?.unbind(), protocol.getattr(intern!(py, "buffer_updated"))?.unbind()))
        } else {
            None
        };
        let old = {
            let mut st = self.st();
            (st.app_protocol.replace(protocol.clone().unbind()), std::mem::replace(&mut st.app_buffered, buffered))
        };
        drop(old);
        Ok(())
    }

    // Handshake flow

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start_time = if this.debug(py)? {
            Self::log(py, "debug", vec!["%r starts SSL handshake".into_pyobject(py)?.into_any(), slf.clone().into_any()], None)?;
            Some(call_method_args(this.event_loop.bind(py), intern!(py, "time"), &[])?.extract::<f64>()?)
        } else {
            None
        };
        this.st().handshake_start_time = start_time;
        this.set_state(py, TlsState::DoHandshake)?;
        let check = slf.getattr(intern!(py, "_check_handshake_timeout"))?;
        let handle = call_method_args(this.event_loop.bind(py), intern!(py, "call_later"), &[this.handshake_timeout.bind(py), &check])?;
        let old = this.st().handshake_timeout_handle.replace(handle.unbind());
        drop(old);
        Self::do_handshake(slf)
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match call_method_args(this.engine.bind(py), intern!(py, "do_handshake"), &[]) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(err) => match classify(py, refs(py)?, err) {
                SslFailure::Again => Self::process_outgoing(slf),
                SslFailure::Ssl(err) => Self::on_handshake_complete(slf, Some(err.into_value(py).into_bound(py).into_any())),
                SslFailure::Other(err) => Err(err),
            },
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, handshake_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let this = slf.get();
        this.st().first_read_pending = true;
        let completed = Self::complete_handshake(slf, handshake_exc);
        this.st().first_read_pending = false;
        completed?;
        if this.state() == TlsState::Wrapped {
            // The handshake's last flight (a client's Finished) goes out
            // now; only the reading waits for the waiter's callbacks.
            Self::process_outgoing(slf)?;
            let py = slf.py();
            this.call_soon(py, slf.getattr(intern!(py, "_do_read"))?, vec![])?;
        }
        Ok(())
    }

    fn complete_handshake(slf: &Bound<'_, Self>, handshake_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let handle = this.st().handshake_timeout_handle.take();
        cancel(py, handle)?;
        let engine = this.engine.bind(py);
        let peercert = match handshake_exc {
            None => this.set_state(py, TlsState::Wrapped).and_then(|()| call_method_args(engine, intern!(py, "getpeercert"), &[])),
            // asyncio raises what it is given, an exception class included
            // (`ConnectionResetError` on an EOF mid-handshake).
            Some(exc) => Err(PyErr::from_value(if exc.is_instance_of::<PyType>() { call(&exc, ())? } else { exc })),
        };
        let peercert = match peercert {
            Ok(peercert) => peercert,
            Err(err) if !err.is_instance_of::<pyo3::exceptions::PyException>(py) => return Err(err),
            Err(err) => {
                this.set_state(py, TlsState::Unwrapped)?;
                let exc = err.into_value(py).into_bound(py).into_any();
                let message = if exc.is_instance(refs.certificate_error.bind(py))? {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                Self::fatal_error(slf, &exc, message)?;
                return this.wakeup_waiter(py, Some(&exc));
            }
        };
        if this.debug(py)? {
            let start = this.st().handshake_start_time;
            if let Some(start) = start {
                let now: f64 = call_method_args(this.event_loop.bind(py), intern!(py, "time"), &[])?.extract()?;
                let message = "%r: SSL handshake took %.1f ms".into_pyobject(py)?.into_any();
                Self::log(py, "debug", vec![message, slf.clone().into_any(), ((now - start) * 1e3).into_pyobject(py)?.into_any()], None)?;
            }
        }
        let extra = this.extra.bind(py);
        extra.set_item(intern!(py, "peercert"), peercert)?;
        extra.set_item(intern!(py, "cipher"), call_method_args(engine, intern!(py, "cipher"), &[])?)?;
        extra.set_item(intern!(py, "compression"), call_method_args(engine, intern!(py, "compression"), &[])?)?;
        extra.set_item(intern!(py, "ssl_object"), this.sslobj.bind(py))?;
        let make_connection = {
            let mut st = this.st();
            let init = st.app_state == AppState::Init;
            if init {
                st.app_state = AppState::ConMade;
            }
            init.then(|| clone(py, &st.app_protocol))
        };
        if let Some(protocol) = make_connection {
            let transport = Self::app_transport(slf)?;
            let protocol = protocol.ok_or_else(|| none_attribute("connection_made"))?;
            call_method_args(protocol.bind(py), intern!(py, "connection_made"), &[transport.bind(py).as_any()])?;
        }
        this.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // Shutdown flow

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let app_transport = {
            let mut st = this.st();
            st.shutting_down = true;
            if matches!(st.state, TlsState::Flushing | TlsState::Shutdown | TlsState::Unwrapped) {
                return Ok(());
            }
            clone(py, &st.app_transport)
        };
        if let Some(app_transport) = app_transport {
            app_transport.get().mark_closed();
        }
        if this.state() == TlsState::DoHandshake {
            return Self::abort(slf, None);
        }
        this.set_state(py, TlsState::Flushing)?;
        let check = slf.getattr(intern!(py, "_check_shutdown_timeout"))?;
        let handle = call_method_args(this.event_loop.bind(py), intern!(py, "call_later"), &[this.shutdown_timeout.bind(py), &check])?;
        let old = this.st().shutdown_timeout_handle.replace(handle.unbind());
        drop(old);
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.st().shutting_down {
            // EOF from the peer while reading was paused: what it sent
            // before the EOF is still the application's to read.
            Self::do_read(slf)?;
        } else if let Err(err) = Self::do_write(slf) {
            // Closing: what the application wrote still goes out, but
            // nothing more is read for it.
            if !err.is_instance_of::<pyo3::exceptions::PyException>(py) {
                return Err(err);
            }
            let exc = err.into_value(py).into_bound(py).into_any();
            return Self::fatal_error(slf, &exc, "Fatal error on SSL protocol");
        }
        this.set_state(py, TlsState::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let eof_received = this.st().eof_received;
        if !eof_received {
            if let Err(exc) = Self::discard_application_data(slf)? {
                return Self::on_shutdown_complete(slf, Some(exc));
            }
        }
        let unwrapped = if eof_received {
            Ok(())
        } else {
            let name = if this.engine_is_c { intern!(py, "shutdown") } else { intern!(py, "unwrap") };
            call_method_args(this.engine.bind(py), name, &[]).map(drop)
        };
        match unwrapped {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(err) => match classify(py, refs, err) {
                SslFailure::Again => Self::process_outgoing(slf),
                SslFailure::Ssl(err) => Self::on_shutdown_complete(slf, Some(err.into_value(py).into_bound(py).into_any())),
                SslFailure::Other(err) => Err(err),
            },
        }
    }

    /// Reads what the peer sent before its close_notify, and drops it:
    /// `unwrap()` fails on application data it finds in the way. The inner
    /// result is an `SSLError` that ends the shutdown.
    fn discard_application_data<'py>(slf: &Bound<'py, Self>) -> PyResult<Result<(), Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let engine = this.engine.bind(py);
        loop {
            match call_method_args(engine, intern!(py, "read"), &[&max_size(py)]) {
                Ok(chunk) if chunk.is_truthy()? => continue,
                Ok(_) => return Ok(Ok(())),
                Err(err) if err.is_instance(py, refs.again_errors.bind(py)) => return Ok(Ok(())),
                // The close_notify, once our own has been sent.
                Err(err) if err.is_instance(py, refs.zero_return_error.bind(py)) => return Ok(Ok(())),
                Err(err) if err.is_instance(py, refs.ssl_error.bind(py)) => return Ok(Err(err.into_value(py).into_bound(py).into_any())),
                Err(err) => return Err(err),
            }
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, shutdown_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.st().shutdown_timeout_handle.take();
        cancel(py, handle)?;
        match shutdown_exc {
            Some(exc) => Self::fatal_error(slf, &exc, "Fatal error on transport"),
            None => {
                let transport = this.transport_or_err(py, "close")?;
                this.call_soon(py, transport.bind(py).getattr(intern!(py, "close"))?, vec![])
            }
        }
    }

    pub(super) fn abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_state(py, TlsState::Unwrapped)?;
        let Some(transport) = this.transport(py) else { return Ok(()) };
        if refs(py)?.abort_passes_exception {
            let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
            call_method(transport.bind(py), intern!(py, "_force_close"), (exc,))?;
        } else {
            call_method_args(transport.bind(py), intern!(py, "abort"), &[])?;
        }
        Ok(())
    }

    // Outgoing flow

    pub(super) fn write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let closed_writes = {
            let mut st = this.st();
            if matches!(st.state, TlsState::Flushing | TlsState::Shutdown | TlsState::Unwrapped) {
                let warn = st.conn_lost >= refs.log_threshold_for_connlost_writes;
                st.conn_lost += 1;
                Some(warn)
            } else {
                None
            }
        };
        if let Some(warn) = closed_writes {
            if warn {
                Self::log(py, "warning", vec!["SSL connection is closed".into_pyobject(py)?.into_any()], None)?;
            }
            return Ok(());
        }
        for data in list_of_data.try_iter()? {
            let data = data?;
            let len = data.len()? as i64;
            let mut st = this.st();
            st.write_backlog.push_back(data.unbind());
            st.write_buffer_size += len;
        }
        if this.state() == TlsState::Wrapped {
            if let Err(err) = Self::do_write(slf) {
                if !err.is_instance_of::<pyo3::exceptions::PyException>(py) {
                    return Err(err);
                }
                let exc = err.into_value(py).into_bound(py).into_any();
                return Self::fatal_error(slf, &exc, "Fatal error on SSL protocol");
            }
        }
        Ok(())
    }

    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let engine = this.engine.bind(py);
        loop {
            let Some(data) = this.st().write_backlog.front().map(|d| d.clone_ref(py)) else { break };
            let data = data.bind(py);
            let count: i64 = match call_method_args(engine, intern!(py, "write"), &[data]) {
                Ok(count) => count.extract()?,
                Err(err) if err.is_instance(py, refs.again_errors.bind(py)) => break,
                Err(err) => return Err(err),
            };
            let data_len = data.len()? as i64;
            if count < data_len {
                let rest = data.get_item(PySlice::new(py, count as isize, isize::MAX, 1))?;
                let old = {
                    let mut st = this.st();
                    st.write_buffer_size -= count;
                    st.write_backlog.front_mut().map(|front| std::mem::replace(front, rest.unbind()))
                };
                drop(old);
            } else {
                let old = {
                    let mut st = this.st();
                    st.write_buffer_size -= data_len;
                    st.write_backlog.pop_front()
                };
                drop(old);
            }
        }
        Self::process_outgoing(slf)
    }

    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.st().ssl_writing_paused {
            let data = call_method_args(this.outgoing.bind(py), intern!(py, "read"), &[])?;
            if data.len()? > 0 {
                let transport = this.transport_or_err(py, "write")?;
                call_method_args(transport.bind(py), intern!(py, "write"), &[&data])?;
            }
        }
        Self::control_app_writing(slf)
    }

    // Incoming flow

    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (paused, buffered) = {
            let st = this.st();
            if st.first_read_pending || !matches!(st.state, TlsState::Wrapped | TlsState::Flushing) {
                return Ok(());
            }
            (st.app_reading_paused, st.app_buffered.is_some())
        };
        let result = (|| {
            if !paused {
                if buffered {
                    Self::do_read_buffered(slf)?;
                } else {
                    Self::do_read_copied(slf)?;
                }
                if this.st().write_backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        match result {
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                let exc = err.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, "Fatal error on SSL protocol")
            }
            other => other,
        }
    }

    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let Some((get_buffer, buffer_updated)) = this.st().app_buffered.as_ref().map(|(g, b)| (g.clone_ref(py), b.clone_ref(py))) else {
            return Ok(());
        };
        let size = this.read_buffer_size(py)?;
        let buf = call(get_buffer.bind(py), (size,))?;
        let wants = buf.len()? as i64;
        let engine = this.engine.bind(py);
        let mut offset: i64 = 0;
        let mut count: i64 = 1;
        let read: PyResult<()> = (|| {
            count = call_method(engine, intern!(py, "read"), (wants, &buf))?.extract()?;
            if count > 0 {
                offset = count;
                while offset < wants {
                    let rest = buf.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))?;
                    count = call_method(engine, intern!(py, "read"), (wants - offset, rest))?.extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        return Ok(());
                    }
                }
                this.call_soon(py, slf.getattr(intern!(py, "_do_read"))?, vec![])?;
            }
            Ok(())
        })();
        match read {
            Err(err) if err.is_instance(py, refs.again_errors.bind(py)) => {}
            other => other?,
        }
        if offset > 0 {
            call(buffer_updated.bind(py), (offset,))?;
        }
        if count == 0 {
            // close_notify
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let engine = this.engine.bind(py);
        let mut chunks: Vec<Bound<'_, PyAny>> = Vec::new();
        let mut close_notify = false;
        loop {
            match call_method_args(engine, intern!(py, "read"), &[&max_size(py)]) {
                Ok(chunk) if chunk.is_truthy()? => chunks.push(chunk),
                Ok(_) => {
                    close_notify = true;
                    break;
                }
                Err(err) if err.is_instance(py, refs.again_errors.bind(py)) => break,
                Err(err) => return Err(err),
            }
        }
        if !chunks.is_empty() {
            let data = if chunks.len() == 1 {
                chunks.swap_remove(0)
            } else {
                let parts = chunks.iter().map(|c| c.cast::<PyBytes>().map(|b| b.as_bytes())).collect::<Result<Vec<_>, _>>()?;
                PyBytes::new(py, &parts.concat()).into_any()
            };
            let protocol = clone(py, &this.st().app_protocol).ok_or_else(|| none_attribute("data_received"))?;
            call_method_args(protocol.bind(py), intern!(py, "data_received"), &[&data])?;
        }
        if close_notify {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut st = this.st();
            if st.app_state != AppState::ConMade {
                return Ok(());
            }
            st.app_state = AppState::Eof;
            clone(py, &st.app_protocol)
        };
        let called = (|| {
            let protocol = protocol.ok_or_else(|| none_attribute("eof_received"))?;
            let keep_open = call_method_args(protocol.bind(py), intern!(py, "eof_received"), &[])?;
            if keep_open.is_truthy()? {
                let message = "returning true from eof_received() has no effect when using ssl";
                Self::log(py, "warning", vec![message.into_pyobject(py)?.into_any()], None)?;
            }
            Ok(())
        })();
        match called {
            Err(err) if !is_fatal(py, &err) => {
                let exc = err.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, "Error calling eof_received()")
            }
            other => other,
        }
    }

    // Flow control for the application's writes

    pub(super) fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = this.write_buffer_size(py)? as f64;
        let (method, message, protocol, app_transport) = {
            let mut st = this.st();
            if size >= st.outgoing_marks.high && !st.app_writing_paused {
                st.app_writing_paused = true;
                (intern!(py, "pause_writing"), "protocol.pause_writing() failed", clone(py, &st.app_protocol), clone(py, &st.app_transport))
            } else if size <= st.outgoing_marks.low && st.app_writing_paused {
                st.app_writing_paused = false;
                (intern!(py, "resume_writing"), "protocol.resume_writing() failed", clone(py, &st.app_protocol), clone(py, &st.app_transport))
            } else {
                return Ok(());
            }
        };
        let called = match &protocol {
            Some(protocol) => call_method_args(protocol.bind(py), method, &[]).map(drop),
            None => Err(none_attribute(&method.to_string())),
        };
        match called {
            Err(err) if !is_fatal(py, &err) => {
                let context = PyDict::new(py);
                context.set_item(intern!(py, "message"), message)?;
                context.set_item(intern!(py, "exception"), err.into_value(py))?;
                context.set_item(intern!(py, "transport"), app_transport)?;
                context.set_item(intern!(py, "protocol"), slf)?;
                call_method(this.event_loop.bind(py), intern!(py, "call_exception_handler"), (context,)).map(drop)
            }
            other => other,
        }
    }

    pub(super) fn write_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        let pending: i64 = self.outgoing.bind(py).getattr(intern!(py, "pending"))?.extract()?;
        Ok(pending + self.st().write_buffer_size)
    }

    pub(super) fn set_write_buffer_limits(&self, py: Python<'_>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let marks = water_marks(py, high, low, refs(py)?.write_high_water_kib * 1024)?;
        let old = std::mem::replace(&mut self.st().outgoing_marks, marks);
        drop(old);
        Ok(())
    }

    pub(super) fn write_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.st();
        (st.outgoing_marks.given.0.clone_ref(py), st.outgoing_marks.given.1.clone_ref(py))
    }

    // Flow control for reads to the application

    pub(super) fn app_reading_paused(&self) -> bool {
        self.st().app_reading_paused
    }

    pub(super) fn app_writing_paused(&self) -> bool {
        self.st().app_writing_paused
    }

    pub(super) fn pause_app_reading(&self) {
        self.st().app_reading_paused = true;
    }

    pub(super) fn resume_app_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let was_paused = std::mem::replace(&mut this.st().app_reading_paused, false);
        if was_paused {
            this.call_soon(py, slf.getattr(intern!(py, "_resume_app_reading"))?, vec![])?;
        }
        Ok(())
    }

    // Flow control for reads from the stream transport

    pub(super) fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = this.read_buffer_size(py)? as f64;
        let method = {
            let mut st = this.st();
            if size >= st.incoming_marks.high && !st.ssl_reading_paused {
                st.ssl_reading_paused = true;
                intern!(py, "pause_reading")
            } else if size <= st.incoming_marks.low && st.ssl_reading_paused {
                st.ssl_reading_paused = false;
                intern!(py, "resume_reading")
            } else {
                return Ok(());
            }
        };
        let transport = this.transport_or_err(py, &method.to_string())?;
        call_method_args(transport.bind(py), method, &[]).map(drop)
    }

    pub(super) fn set_read_buffer_limits(&self, py: Python<'_>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let marks = water_marks(py, high, low, refs(py)?.read_high_water_kib * 1024)?;
        let old = std::mem::replace(&mut self.st().incoming_marks, marks);
        drop(old);
        Ok(())
    }

    pub(super) fn read_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.st();
        (st.incoming_marks.given.0.clone_ref(py), st.incoming_marks.given.1.clone_ref(py))
    }

    pub(super) fn read_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.incoming.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        if let Some(transport) = this.transport(py) {
            call_method(transport.bind(py), intern!(py, "_force_close"), (exc,))?;
        }
        if exc.is_instance_of::<PyOSError>() {
            if this.debug(py)? {
                let args = vec!["%r: %s".into_pyobject(py)?.into_any(), slf.clone().into_any(), message.into_pyobject(py)?.into_any()];
                Self::log(py, "debug", args, Some(exc))?;
            }
        } else if !exc.is_instance(refs.cancelled_error.bind(py))? {
            let context = PyDict::new(py);
            context.set_item(intern!(py, "message"), message)?;
            context.set_item(intern!(py, "exception"), exc)?;
            context.set_item(intern!(py, "transport"), this.transport(py))?;
            context.set_item(intern!(py, "protocol"), slf)?;
            call_method(this.event_loop.bind(py), intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }

    pub(super) fn extra_info<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, default: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(value) = self.extra.bind(py).get_item(name)? {
            return Ok(value);
        }
        match self.transport(py) {
            Some(transport) => call_method(transport.bind(py), intern!(py, "get_extra_info"), (name, default)),
            None => Ok(default),
        }
    }

    pub(super) fn app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone(py, &self.st().app_protocol)
    }

    pub(super) fn append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let len = data.len()? as i64;
        let mut st = self.st();
        st.write_backlog.push_back(data.clone().unbind());
        st.write_buffer_size += len;
        drop(st);
        let _ = py;
        Ok(())
    }
}

#[pymethods]
impl SslProtocol {
    #[new]
    #[pyo3(signature = (event_loop, app_protocol, sslcontext, waiter, server_side=false, server_hostname=None, call_connection_made=true, ssl_handshake_timeout=None, ssl_shutdown_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        py: Python<'_>,
        event_loop: Bound<'_, PyAny>,
        app_protocol: Bound<'_, PyAny>,
        sslcontext: Bound<'_, PyAny>,
        waiter: Bound<'_, PyAny>,
        server_side: bool,
        server_hostname: Option<Bound<'_, PyAny>>,
        call_connection_made: bool,
        ssl_handshake_timeout: Option<Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let refs = refs(py)?;
        let positive = |timeout: Option<Bound<'_, PyAny>>, default: &Py<PyAny>, name: &str| -> PyResult<Py<PyAny>> {
            match timeout {
                None => Ok(default.clone_ref(py)),
                Some(t) if t.le(0)? => Err(PyValueError::new_err(format!("{name} should be a positive number, got {}", t.str()?))),
                Some(t) => Ok(t.unbind()),
            }
        };
        let handshake_timeout = positive(ssl_handshake_timeout, &refs.handshake_timeout, "ssl_handshake_timeout")?;
        let shutdown_timeout = positive(ssl_shutdown_timeout, &refs.shutdown_timeout, "ssl_shutdown_timeout")?;
        let server_hostname = server_hostname.filter(|h| !h.is_none());
        let sslcontext = if sslcontext.is_truthy()? {
            sslcontext
        } else {
            call(refs.create_transport_context.bind(py), (server_side, server_hostname.as_ref()))?
        };
        let server_hostname = match server_hostname {
            Some(h) if h.is_truthy()? && !server_side => Some(h),
            _ => None,
        };
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "sslcontext"), &sslcontext)?;
        let incoming = call(refs.memory_bio.bind(py), ())?;
        let outgoing = call(refs.memory_bio.bind(py), ())?;
        let sslobj = wrap_bio(py, refs, &sslcontext, &incoming, &outgoing, server_side, server_hostname.as_ref())?;
        let (engine, engine_is_c) = if sslobj.get_type().is(refs.ssl_object.bind(py)) {
            (sslobj.getattr(intern!(py, "_sslobj"))?, true)
        } else {
            (sslobj.clone(), false)
        };
        let incoming_marks = water_marks(py, None, None, refs.read_high_water_kib * 1024)?;
        let outgoing_marks = water_marks(py, None, None, refs.write_high_water_kib * 1024)?;
        let this = SslProtocol {
            event_loop: event_loop.unbind(),
            sslcontext: sslcontext.unbind(),
            extra: extra.unbind(),
            incoming: incoming.unbind(),
            outgoing: outgoing.unbind(),
            sslobj: sslobj.unbind(),
            engine: engine.unbind(),
            engine_is_c,
            server_side,
            server_hostname: server_hostname.map(Bound::unbind),
            handshake_timeout,
            shutdown_timeout,
            inner: Mutex::new(Inner {
                state: TlsState::Unwrapped,
                app_state: if call_connection_made { AppState::Init } else { AppState::ConMade },
                app_protocol: None,
                app_buffered: None,
                waiter: (!waiter.is_none()).then(|| waiter.unbind()),
                transport: None,
                app_transport: None,
                app_transport_created: false,
                write_backlog: VecDeque::new(),
                write_buffer_size: 0,
                conn_lost: 0,
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                eof_received: false,
                app_writing_paused: false,
                incoming_marks,
                outgoing_marks,
                handshake_timeout_handle: None,
                shutdown_timeout_handle: None,
                handshake_start_time: None,
                first_read_pending: false,
                shutting_down: false,
            }),
        };
        this.set_app_protocol_inner(py, &app_protocol)?;
        Ok(this)
    }

    #[classattr]
    fn max_size() -> usize {
        MAX_SIZE
    }

    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        reported_class(py, &REPORTED_CLASS, "SSLProtocolClass")
    }

    fn connection_made(slf: &Bound<'_, Self>, transport: Bound<'_, PyAny>) -> PyResult<()> {
        let old = slf.get().st().transport.replace(transport.unbind());
        drop(old);
        Self::start_handshake(slf)
    }

    fn connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let backlog = std::mem::take(&mut this.st().write_backlog);
        drop(backlog);
        call_method_args(this.outgoing.bind(py), intern!(py, "read"), &[])?;
        let (app_transport, lost_protocol) = {
            let mut st = this.st();
            st.conn_lost += 1;
            let lost = st.state != TlsState::DoHandshake && matches!(st.app_state, AppState::ConMade | AppState::Eof);
            if lost {
                st.app_state = AppState::ConLost;
            }
            (clone(py, &st.app_transport), if lost { Some(clone(py, &st.app_protocol)) } else { None })
        };
        if let Some(app_transport) = app_transport {
            // Only so that it does not warn of being dropped unclosed.
            app_transport.get().mark_closed();
        }
        if let Some(protocol) = lost_protocol {
            let protocol = protocol.ok_or_else(|| none_attribute("connection_lost"))?;
            this.call_soon(py, protocol.bind(py).getattr(intern!(py, "connection_lost"))?, vec![exc.clone()])?;
        }
        this.set_state(py, TlsState::Unwrapped)?;
        let dropped = {
            let mut st = this.st();
            (st.transport.take(), st.app_transport.take(), st.app_protocol.take(), st.app_buffered.take())
        };
        drop(dropped);
        this.wakeup_waiter(py, (!exc.is_none()).then_some(&exc))?;
        let shutdown = this.st().shutdown_timeout_handle.take();
        cancel(py, shutdown)?;
        let handshake = this.st().handshake_timeout_handle.take();
        cancel(py, handshake)
    }

    #[pyo3(signature = (n))]
    fn get_buffer<'py>(&self, py: Python<'py>, n: isize) -> PyResult<Bound<'py, PyAny>> {
        let _ = n;
        read_buffer_view(py, MAX_SIZE, true)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let view = read_buffer_view(py, nbytes, false)?;
        call_method_args(this.incoming.bind(py), intern!(py, "write"), &[&view])?;
        match this.state() {
            TlsState::DoHandshake => Self::do_handshake(slf),
            TlsState::Wrapped => Self::do_read(slf),
            TlsState::Flushing => Self::do_flush(slf),
            TlsState::Shutdown => Self::do_shutdown(slf),
            TlsState::Unwrapped => Ok(()),
        }
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.st().eof_received = true;
        let result = (|| -> PyResult<Option<bool>> {
            if this.debug(py)? {
                Self::log(py, "debug", vec!["%r received EOF".into_pyobject(py)?.into_any(), slf.clone().into_any()], None)?;
            }
            match this.state() {
                TlsState::DoHandshake => {
                    let reset = py.get_type::<pyo3::exceptions::PyConnectionResetError>().into_any();
                    Self::on_handshake_complete(slf, Some(reset))?;
                }
                TlsState::Wrapped => {
                    this.set_state(py, TlsState::Flushing)?;
                    if this.app_reading_paused() {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                TlsState::Flushing => {
                    Self::do_write(slf)?;
                    this.set_state(py, TlsState::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                TlsState::Shutdown => Self::do_shutdown(slf)?,
                TlsState::Unwrapped => {}
            }
            Ok(None)
        })();
        match result {
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                if let Some(transport) = this.transport(py) {
                    call_method_args(transport.bind(py), intern!(py, "close"), &[])?;
                }
                Err(err)
            }
            other => other,
        }
    }

    /// The stream transport's buffer went over its high-water mark.
    fn pause_writing(&self) -> PyResult<()> {
        let mut st = self.st();
        if st.ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        st.ssl_writing_paused = true;
        Ok(())
    }

    /// The stream transport's buffer drained below its low-water mark.
    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = slf.get().st();
            if !st.ssl_writing_paused {
                return Err(PyAssertionError::new_err(()));
            }
            st.ssl_writing_paused = false;
        }
        Self::process_outgoing(slf)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    fn _resume_app_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().state() {
            TlsState::Wrapped => Self::do_read(slf),
            TlsState::Flushing => Self::do_flush(slf),
            TlsState::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state() == TlsState::DoHandshake {
            let message = format!(
                "SSL handshake is taking longer than {} seconds: aborting the connection",
                this.handshake_timeout.bind(py).str()?
            );
            let exc = PyConnectionAbortedError::new_err(message).into_value(py).into_bound(py).into_any();
            Self::fatal_error(slf, &exc, "Fatal error on transport")?;
        }
        Ok(())
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if matches!(this.state(), TlsState::Flushing | TlsState::Shutdown) {
            let transport = this.transport_or_err(py, "_force_close")?;
            let exc = PyTimeoutError::new_err("SSL shutdown timed out").into_value(py);
            call_method(transport.bind(py), intern!(py, "_force_close"), (exc,))?;
        }
        Ok(())
    }

    fn _get_app_transport(slf: &Bound<'_, Self>) -> PyResult<Py<TlsTransport>> {
        Self::app_transport(slf)
    }

    #[getter(_app_transport)]
    fn get_app_transport_attr(slf: &Bound<'_, Self>) -> PyResult<Option<Py<TlsTransport>>> {
        let created = slf.get().st().app_transport_created;
        if !created {
            return Self::app_transport(slf).map(Some);
        }
        Ok(clone(slf.py(), &slf.get().st().app_transport))
    }

    #[getter(_app_protocol)]
    fn get_app_protocol_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.app_protocol(py)
    }

    #[getter(_transport)]
    fn get_transport_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport(py)
    }

    #[getter(_sslobj)]
    fn get_sslobj(&self, py: Python<'_>) -> Py<PyAny> {
        self.sslobj.clone_ref(py)
    }

    #[getter(_sslcontext)]
    fn get_sslcontext(&self, py: Python<'_>) -> Py<PyAny> {
        self.sslcontext.clone_ref(py)
    }

    #[getter(_loop)]
    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop.clone_ref(py)
    }

    #[getter(_server_side)]
    fn get_server_side(&self) -> bool {
        self.server_side
    }

    #[getter(_server_hostname)]
    fn get_server_hostname(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone(py, &self.server_hostname)
    }

    #[getter(_state)]
    fn get_state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(refs(py)?.states[self.state() as usize].clone_ref(py))
    }

    #[getter(_app_reading_paused)]
    fn get_app_reading_paused(&self) -> bool {
        self.app_reading_paused()
    }

    #[getter(_app_writing_paused)]
    fn get_app_writing_paused(&self) -> bool {
        self.app_writing_paused()
    }

    #[getter(_ssl_writing_paused)]
    fn get_ssl_writing_paused(&self) -> bool {
        self.st().ssl_writing_paused
    }

    #[getter(_eof_received)]
    fn get_eof_received(&self) -> bool {
        self.st().eof_received
    }

    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info<'py>(&self, py: Python<'py>, name: Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        self.extra_info(py, &name, default.unwrap_or_else(|| py.None().into_bound(py)))
    }

    fn _set_app_protocol(&self, py: Python<'_>, app_protocol: Bound<'_, PyAny>) -> PyResult<()> {
        self.set_app_protocol_inner(py, &app_protocol)
    }

    fn _start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_shutdown(slf)
    }

    #[pyo3(signature = (exc=None))]
    fn _abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::abort(slf, exc)
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_appdata(slf, &list_of_data)
    }

    fn _get_write_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.write_buffer_size(py)
    }

    fn _get_read_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.read_buffer_size(py)
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sslcontext)?;
        visit.call(&self.extra)?;
        visit.call(&self.incoming)?;
        visit.call(&self.outgoing)?;
        visit.call(&self.sslobj)?;
        visit.call(&self.engine)?;
        visit.call(&self.server_hostname)?;
        visit.call(&self.handshake_timeout)?;
        visit.call(&self.shutdown_timeout)?;
        // try_lock: the collector can run while the loop thread holds the
        // lock; skipping a visit only keeps objects alive longer.
        if let Ok(st) = self.inner.try_lock() {
            for obj in [&st.app_protocol, &st.waiter, &st.transport, &st.handshake_timeout_handle, &st.shutdown_timeout_handle]
                .into_iter()
                .flatten()
            {
                visit.call(obj)?;
            }
            if let Some((get_buffer, buffer_updated)) = &st.app_buffered {
                visit.call(get_buffer)?;
                visit.call(buffer_updated)?;
            }
            if let Some(app_transport) = &st.app_transport {
                visit.call(app_transport)?;
            }
            for data in &st.write_backlog {
                visit.call(data)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut st) = self.inner.try_lock() {
            let dropped = (
                st.app_protocol.take(),
                st.app_buffered.take(),
                st.waiter.take(),
                st.transport.take(),
                st.app_transport.take(),
                std::mem::take(&mut st.write_backlog),
            );
            drop(st);
            drop(dropped);
        }
    }
}
