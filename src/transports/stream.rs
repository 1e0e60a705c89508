//! `StreamTransport`: asyncio's socket transport (TCP and Unix streams) in
//! Rust.
//!
//! The fd is registered once, edge-triggered, for reading and writing. The
//! poller records what became ready and queues the transport itself on the
//! ready queue (`Scheduled::Io`), so a read reaches `data_received` with no
//! Python handle in between. Edge-triggered readiness is only sound if every
//! edge is consumed, so:
//! - a read that fills the whole buffer may have left data behind: the
//!   transport re-queues itself for the next iteration (asyncio reads one
//!   chunk per iteration too); a short read drained the socket;
//! - a send keeps going until all is sent or the kernel says EAGAIN, after
//!   which a writable edge is promised.
//!
//! Everything else (flow control, EOF and half-close, error reporting,
//! `connection_lost` exactly once) follows asyncio's `_SelectorSocketTransport`
//! step by step. The state lock is never held across a call into Python.

use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::read_bytes::{with_read_scratch, Received};
use super::syscalls::{self, os_error, Progress};
use super::write_buffer::WriteBuffer;
use super::shared::{report_to_loop, tell_protocol, water_marks, DEFAULT_HIGH_WATER};
use super::stream_setup::DeferredInfo;
use super::Attached;
use crate::support::thread_exit;
use crate::support::buffers::{with_bytes, with_writable_bytes};
use crate::event_loop::{copy_current_context, is_fatal, LoopCore};
use crate::event_loop::handles::{closed_error, in_context, Scheduled};
use crate::event_loop::internal_calls::InternalCall;
use crate::support::sync::lock;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

struct Refs {
    buffered_protocol: Py<PyAny>,
    logger: Py<PyAny>,
    sendfile_try_native: Py<PyAny>,
    server_detach_takes_transport: bool,
    /// Since 3.12 `writelines` has checks and errors of its own, and takes
    /// each item as a memoryview instead of joining them with `b"".join`.
    writelines_by_memoryview: bool,
    /// `warnings.warn` and `_socket.socket.close`, for a transport dropped
    /// unclosed: looked up ahead, since that may happen at interpreter exit,
    /// when nothing can be imported any more.
    warn: Py<PyAny>,
    socket_close: Py<PyAny>,
}

/// Looked up on first use, not at type creation: `ferroloop._network`
/// imports this module.
static TRANSPORT_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let asyncio = py.import("asyncio")?;
        let logging = py.import("logging")?;
        let constants = py.import("asyncio.constants")?;
        Ok(Refs {
            buffered_protocol: asyncio.getattr("BufferedProtocol")?.unbind(),
            logger: logging.call_method1("getLogger", ("asyncio",))?.unbind(),
            sendfile_try_native: constants.getattr("_SendfileMode")?.getattr("TRY_NATIVE")?.unbind(),
            // Server._detach() takes the transport since 3.13.
            server_detach_takes_transport: py.version_info() >= (3, 13),
            writelines_by_memoryview: py.version_info() >= (3, 12),
            warn: py.import("warnings")?.getattr("warn")?.unbind(),
            socket_close: py.import("_socket")?.getattr("socket")?.getattr("close")?.unbind(),
        })
    })
}

/// What one read attempt left behind in the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadOutcome {
    /// Nothing more to read now: EAGAIN, EOF, an error, or the transport
    /// is closing.
    Exhausted,
    /// Fewer bytes than asked: drained, unless a hang-up is pending.
    Short,
    /// The buffer was filled: more may be waiting.
    Full,
}

/// How reads reach the protocol, looked up once per `set_protocol`.
enum Reader {
    DataReceived(Py<PyAny>),
    Buffered { get_buffer: Py<PyAny>, buffer_updated: Py<PyAny> },
    /// The protocol lacks the method: it is looked up (and fails, with
    /// asyncio's error) at the time of the read.
    Dynamic { buffered: bool },
}

struct State {
    protocol: Option<Py<PyAny>>,
    reader: Option<Reader>,
    sock: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    buffer: WriteBuffer,
    /// The water marks as compared with the buffer's size, and as given to
    /// `set_write_buffer_limits` (asyncio keeps any number it accepts, floats
    /// and big ints included, and returns it unchanged).
    high_water: f64,
    low_water: f64,
    limits_given: Option<(Py<PyAny>, Py<PyAny>)>,
    protocol_paused: bool,
    /// pause_reading() was called (asyncio's `_paused`).
    paused: bool,
    closing: bool,
    /// write_eof() was called.
    eof: bool,
    conn_lost: u32,
    /// asyncio's reader registration: reads are delivered only while set.
    reading: bool,
    /// The socket may hold unread data (an edge arrived and was not drained).
    read_pending: bool,
    /// A writable edge arrived since the last send attempt.
    write_pending: bool,
    /// The peer shut down or the socket failed. The hang-up edge may have
    /// come together with the last data, so a short read no longer means
    /// the socket is drained: reads go on until EOF, an error or EAGAIN.
    peer_closed: bool,
    /// `eof_received` asked to keep the transport open. Reading stops; as
    /// in asyncio, resuming it after a pause reads the EOF (and calls
    /// `eof_received`) again.
    eof_kept_open: bool,
    /// An entry for this transport sits in the ready queue.
    queued: bool,
    registered: bool,
    empty_waiter: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._native", frozen, weakref)]
pub struct StreamTransport {
    fd: RawFd,
    event_loop: Py<LoopCore>,
    extra: Py<PyDict>,
    /// Extra info made into objects on first `get_extra_info`.
    deferred_info: Mutex<DeferredInfo>,
    /// A copy of the context the transport was made in: the protocol's
    /// callbacks from reads and writes run in it.
    context: Py<PyAny>,
    state: Mutex<State>,
}

fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".to_owned())
}

impl StreamTransport {
    pub(crate) fn loop_obj<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    fn debug(&self) -> bool {
        self.event_loop.get().debug_enabled()
    }

    /// Called by the poller with the readiness of one event. Returns whether
    /// the transport must be queued (it was not already, and has work).
    pub fn note_ready(&self, readable: bool, writable: bool, hung_up: bool) -> bool {
        let mut st = lock(&self.state);
        if st.conn_lost > 0 {
            return false;
        }
        st.peer_closed |= hung_up;
        st.read_pending |= readable || hung_up;
        st.write_pending |= writable;
        let has_work = (st.read_pending && st.reading) || (st.write_pending && !st.buffer.is_empty());
        if has_work && !st.queued {
            st.queued = true;
            return true;
        }
        false
    }

    fn queue_locked(slf: &Bound<'_, Self>, st: &mut State) {
        if !st.queued && st.conn_lost == 0 {
            st.queued = true;
            let this = slf.get();
            lock(&this.event_loop.get().sched).ready.push_back(Scheduled::Io(Attached::Stream(slf.clone().unbind())));
        }
    }

    /// The ready-queue entry: reads and writes what readiness allows. An error that escapes a
    /// side comes back with the name of the asyncio transport method that
    /// side stands for, for the exception handler's message.
    pub fn process(slf: &Bound<'_, Self>) -> Result<(), (PyErr, &'static str)> {
        let py = slf.py();
        let context = slf.get().context.bind(py);
        in_context(py, context, || Self::process_in_context(slf)).map_err(|err| (err, "_read_ready"))?
    }

    fn process_in_context(slf: &Bound<'_, Self>) -> Result<(), (PyErr, &'static str)> {
        let this = slf.get();
        let (read, write) = {
            let mut st = lock(&this.state);
            st.queued = false;
            if st.conn_lost > 0 {
                return Ok(());
            }
            let write = st.write_pending && !st.buffer.is_empty();
            st.write_pending = false;
            (st.read_pending && st.reading, write)
        };
        if read {
            Self::read_ready(slf).map_err(|err| Self::interrupted(slf, err, "_read_ready"))?;
        }
        if write {
            Self::write_ready(slf).map_err(|err| Self::interrupted(slf, err, "_write_ready"))?;
        }
        Ok(())
    }

    /// An error escaped a side. If it is one that leaves the loop
    /// (KeyboardInterrupt, SystemExit), the work it cut short is queued
    /// again for the next run, as asyncio's level-triggered reader and
    /// writer would be called again.
    fn interrupted(slf: &Bound<'_, Self>, err: PyErr, method: &'static str) -> (PyErr, &'static str) {
        if is_fatal(slf.py(), &err) {
            let mut st = lock(&slf.get().state);
            if !st.buffer.is_empty() {
                st.write_pending = true;
            }
            if (st.read_pending && st.reading) || st.write_pending {
                Self::queue_locked(slf, &mut st);
            }
        }
        (err, method)
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let reader = {
            let st = lock(&this.state);
            match &st.reader {
                Some(Reader::DataReceived(m)) => Some(Reader::DataReceived(m.clone_ref(py))),
                Some(Reader::Buffered { get_buffer, buffer_updated }) => Some(Reader::Buffered {
                    get_buffer: get_buffer.clone_ref(py),
                    buffer_updated: buffer_updated.clone_ref(py),
                }),
                Some(Reader::Dynamic { buffered }) => Some(Reader::Dynamic { buffered: *buffered }),
                None => None,
            }
        };
        let Some(reader) = reader else { return Ok(()) };
        let outcome = match reader {
            Reader::DataReceived(method) => Self::read_into_bytes(slf, |data| call_with_one_arg(method.bind(py), data))?,
            Reader::Dynamic { buffered: false } => Self::read_into_bytes(slf, |data| {
                let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
                match protocol {
                    Some(p) => thread_exit::call_method(p.bind(py), intern!(py, "data_received"), (data.clone(),)).map(drop),
                    None => Ok(()),
                }
            })?,
            Reader::Buffered { get_buffer, buffer_updated } => {
                Self::read_into_protocol_buffer(slf, get_buffer.bind(py), buffer_updated.bind(py))?
            }
            Reader::Dynamic { buffered: true } => {
                let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
                let Some(protocol) = protocol else { return Ok(()) };
                let protocol = protocol.bind(py);
                let get_buffer = protocol.getattr(intern!(py, "get_buffer"));
                let buffer_updated = protocol.getattr(intern!(py, "buffer_updated"));
                match (get_buffer, buffer_updated) {
                    (Ok(g), Ok(b)) => Self::read_into_protocol_buffer(slf, &g, &b)?,
                    (Err(err), _) => {
                        Self::fatal_error(slf, err, "Fatal error: protocol.get_buffer() call failed.")?;
                        ReadOutcome::Exhausted
                    }
                    (_, Err(err)) => {
                        Self::fatal_error(slf, err, "Fatal error: protocol.buffer_updated() call failed.")?;
                        ReadOutcome::Exhausted
                    }
                }
            }
        };
        let mut st = lock(&this.state);
        let more = match outcome {
            ReadOutcome::Exhausted => false,
            ReadOutcome::Short => st.peer_closed,
            ReadOutcome::Full => true,
        };
        st.read_pending = more;
        if more && st.reading {
            Self::queue_locked(slf, &mut st);
        }
        Ok(())
    }

    /// One `recv`, handed to `deliver` as a `bytes` (see `read_bytes.rs`).
    /// Returns whether the socket was drained (short read, EOF, error or
    /// EAGAIN).
    fn read_into_bytes(
        slf: &Bound<'_, Self>,
        deliver: impl FnOnce(&Bound<'_, PyBytes>) -> PyResult<()>,
    ) -> PyResult<ReadOutcome> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.get();
        let received = with_read_scratch(|buf| Self::recv_bytes(py, this.fd, buf, event_loop));
        match received {
            Ok(None) => Ok(ReadOutcome::Exhausted),
            Ok(Some((received, _))) if received.data.as_bytes().is_empty() => {
                Self::on_eof(slf)?;
                Ok(ReadOutcome::Exhausted)
            }
            Ok(Some((received, full))) => {
                event_loop.io_counters.add_received(received.data.as_bytes().len());
                let delivered = deliver(&received.data);
                event_loop.read_bytes.give_back(received);
                if let Err(err) = delivered {
                    if is_fatal(py, &err) {
                        return Err(err);
                    }
                    Self::fatal_error(slf, err, "Fatal error: protocol.data_received() call failed.")?;
                    return Ok(ReadOutcome::Exhausted);
                }
                Ok(if full { ReadOutcome::Full } else { ReadOutcome::Short })
            }
            Err(err) => {
                Self::fatal_error(slf, os_error(py, &err), "Fatal read error on socket transport")?;
                Ok(ReadOutcome::Exhausted)
            }
        }
    }

    fn recv_bytes<'py>(
        py: Python<'py>,
        fd: RawFd,
        buf: &mut [u8],
        event_loop: &LoopCore,
    ) -> std::io::Result<Option<(Received<'py>, bool)>> {
        match syscalls::recv(fd, buf)? {
            Progress::WouldBlock => Ok(None),
            Progress::Done(n) => Ok(Some((event_loop.read_bytes.bytes_from(py, &buf[..n]), n == buf.len()))),
        }
    }

    /// BufferedProtocol: `recv_into` the protocol's own buffer, no copy.
    fn read_into_protocol_buffer(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
    ) -> PyResult<ReadOutcome> {
        let py = slf.py();
        let buffer = thread_exit::call(get_buffer, (-1,)).and_then(|buf| {
            if buf.len()? == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(buf)
        });
        let buffer = match buffer {
            Ok(buf) => buf,
            Err(err) if is_fatal(py, &err) => return Err(err),
            Err(err) => {
                Self::fatal_error(slf, err, "Fatal error: protocol.get_buffer() call failed.")?;
                return Ok(ReadOutcome::Exhausted);
            }
        };
        let received = match Self::recv_into_object(slf.get().fd, &buffer) {
            Ok(outcome) => outcome,
            Err(err) => {
                Self::fatal_error(slf, err, "Fatal read error on socket transport")?;
                return Ok(ReadOutcome::Exhausted);
            }
        };
        let (nbytes, full) = match received {
            None => return Ok(ReadOutcome::Exhausted),
            Some((0, _)) => {
                Self::on_eof(slf)?;
                return Ok(ReadOutcome::Exhausted);
            }
            Some(outcome) => outcome,
        };
        slf.get().event_loop.get().io_counters.add_received(nbytes);
        if let Err(err) = thread_exit::call(buffer_updated, (nbytes,)) {
            if is_fatal(py, &err) {
                return Err(err);
            }
            Self::fatal_error(slf, err, "Fatal error: protocol.buffer_updated() call failed.")?;
            return Ok(ReadOutcome::Exhausted);
        }
        Ok(if full { ReadOutcome::Full } else { ReadOutcome::Short })
    }

    /// `recv_into(buffer)`: Ok(None) when it would block, else the byte count
    /// and whether the buffer was filled.
    fn recv_into_object(fd: RawFd, buffer: &Bound<'_, PyAny>) -> PyResult<Option<(usize, bool)>> {
        let (outcome, len) = with_writable_bytes(buffer, "recv_into", |memory| (syscalls::recv(fd, memory), memory.len()))?;
        match outcome {
            Ok(Progress::WouldBlock) => Ok(None),
            Ok(Progress::Done(n)) => Ok(Some((n, n == len))),
            Err(err) => Err(os_error(buffer.py(), &err)),
        }
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug() {
            refs(py)?.logger.bind(py).call_method1(intern!(py, "debug"), ("%r received EOF", slf))?;
        }
        let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
        let Some(protocol) = protocol else { return Ok(()) };
        let keep_open = match thread_exit::call_method(protocol.bind(py), intern!(py, "eof_received"), ()) {
            Err(err) if is_fatal(py, &err) => return Err(err),
            Err(err) => return Self::fatal_error(slf, err, "Fatal error: protocol.eof_received() call failed."),
            // A result whose truth cannot be told fails outside the call, as
            // asyncio's `if keep_open:` does: the loop's exception handler
            // reports it and the transport stays as it is.
            Ok(result) => result.is_truthy()?,
        };
        if keep_open {
            // The protocol may still write, but nothing more can be read.
            let mut st = lock(&this.state);
            st.reading = false;
            st.eof_kept_open = true;
            Ok(())
        } else {
            Self::close(slf)
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let failure = {
            let mut st = lock(&this.state);
            if st.conn_lost > 0 || st.buffer.is_empty() {
                return Ok(());
            }
            match st.buffer.send(py, this.fd) {
                Ok(sent) => {
                    this.event_loop.get().io_counters.add_sent(sent);
                    None
                }
                Err(err) => {
                    st.buffer.clear();
                    Some((err, st.empty_waiter.as_ref().map(|w| w.clone_ref(py))))
                }
            }
        };
        if let Some((err, waiter)) = failure {
            let exc = os_error(py, &err);
            let exc_value = exc.value(py).clone().into_any();
            Self::fatal_error(slf, exc, "Fatal write error on socket transport")?;
            if let Some(waiter) = waiter {
                settle(waiter.bind(py), Err(exc_value))?;
            }
            return Ok(());
        }
        Self::maybe_resume_protocol(slf)?; // may write more
        let (waiter, closing, eof) = {
            let st = lock(&this.state);
            if !st.buffer.is_empty() {
                return Ok(());
            }
            (st.empty_waiter.as_ref().map(|w| w.clone_ref(py)), st.closing, st.eof)
        };
        if let Some(waiter) = waiter {
            settle(waiter.bind(py), Ok(py.None().into_bound(py)))?;
        }
        if closing {
            Self::call_connection_lost(slf, py.None().into_bound(py))?;
        } else if eof {
            if let Err(err) = syscalls::shutdown_write(this.fd) {
                if err.raw_os_error() != Some(libc::ENOTCONN) {
                    Self::fatal_error(slf, os_error(py, &err), "Fatal write error on socket transport")?;
                }
            }
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = lock(&slf.get().state);
            if st.buffer.len() as f64 <= st.high_water || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(protocol) = protocol {
            let event_loop = slf.get().loop_obj(py);
            tell_protocol(event_loop, slf.as_any(), protocol.bind(py), intern!(py, "pause_writing"), "protocol.pause_writing() failed")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = lock(&slf.get().state);
            if !st.protocol_paused || st.buffer.len() as f64 > st.low_water {
                return Ok(());
            }
            st.protocol_paused = false;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(protocol) = protocol {
            let event_loop = slf.get().loop_obj(py);
            tell_protocol(event_loop, slf.as_any(), protocol.bind(py), intern!(py, "resume_writing"), "protocol.resume_writing() failed")?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: OSErrors are expected (a peer going away) and
    /// only logged in debug mode; anything else is a bug worth reporting.
    /// Either way the transport closes without flushing.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = err.into_value(py).into_bound(py);
        if exc.is_instance_of::<PyOSError>() {
            if this.debug() {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "exc_info"), &exc)?;
                refs(py)?
                    .logger
                    .bind(py)
                    .call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else {
            let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
            report_to_loop(this.loop_obj(py), slf.as_any(), message, &exc, protocol.as_ref().map(|p| p.bind(py)))?;
        }
        Self::force_close(slf, exc.into_any())
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        InternalCall::connection_lost(slf.get().loop_obj(slf.py()), slf, exc)
    }

    fn set_protocol_locked(py: Python<'_>, st: &mut State, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = protocol.is_instance(refs(py)?.buffered_protocol.bind(py))?;
        st.reader = Some(if buffered {
            match (protocol.getattr(intern!(py, "get_buffer")), protocol.getattr(intern!(py, "buffer_updated"))) {
                (Ok(g), Ok(b)) => Reader::Buffered { get_buffer: g.unbind(), buffer_updated: b.unbind() },
                _ => Reader::Dynamic { buffered: true },
            }
        } else {
            match protocol.getattr(intern!(py, "data_received")) {
                Ok(method) => Reader::DataReceived(method.unbind()),
                Err(_) => Reader::Dynamic { buffered: false },
            }
        });
        st.protocol = Some(protocol.clone().unbind());
        Ok(())
    }

    fn detach_from_server(py: Python<'_>, slf: &Bound<'_, Self>, server: Option<Py<PyAny>>) -> PyResult<()> {
        if let Some(server) = server {
            crate::server::connections::detach(server.bind(py), slf.as_any())?;
        }
        Ok(())
    }
}

/// Completes a future unless it is already done (a cancelled sendfile).
fn settle(fut: &Bound<'_, PyAny>, outcome: Result<Bound<'_, PyAny>, Bound<'_, PyAny>>) -> PyResult<()> {
    let py = fut.py();
    if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match outcome {
        Ok(value) => fut.call_method1(intern!(py, "set_result"), (value,))?,
        Err(exc) => fut.call_method1(intern!(py, "set_exception"), (exc,))?,
    };
    Ok(())
}

#[pymethods]
impl StreamTransport {
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, extra, server=None))]
    fn new(
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        extra: &Bound<'_, PyDict>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let event_loop = event_loop.cast::<LoopCore>()?.clone().unbind();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let context = copy_current_context(py)?;
        let deferred = DeferredInfo::default();
        Self::build(py, event_loop, fd, sock, protocol, extra, deferred, server.filter(|s| !s.is_none()), context)
    }

    /// Registers the socket with the loop's poller (once, for good).
    fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let mut st = lock(&this.state);
        if st.registered || st.conn_lost > 0 {
            return Ok(());
        }
        let stale = this.event_loop.get().poller.attach(this.fd, Attached::Stream(slf.clone().unbind())).map_err(|err| os_error(slf.py(), &err))?;
        st.registered = true;
        drop(st);
        for watcher in stale {
            watcher.retire(slf.py());
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{}'",
                type_name(data)
            )));
        }
        let mut refused_closed = false;
        // An immutable `bytes` that has to wait is kept, not copied.
        let shared = data.cast_exact::<PyBytes>().ok();
        let failure = {
            let mut st = lock(&this.state);
            if st.eof {
                return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
            }
            let exported = with_bytes(data, |bytes| {
                if bytes.is_empty() {
                    return Ok(false);
                }
                if st.conn_lost > 0 {
                    st.conn_lost += 1;
                    return Ok(st.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES);
                }
                if st.buffer.is_empty() {
                    let sent = syscalls::send_until_blocked(this.fd, bytes)?;
                    this.event_loop.get().io_counters.add_sent(sent);
                    if sent < bytes.len() {
                        // asyncio fails to watch for writability on a closed
                        // loop before it buffers: the rest could never go out.
                        if this.event_loop.get().is_closed() {
                            refused_closed = true;
                            return Ok(false);
                        }
                        match shared {
                            Some(data) => st.buffer.keep(data, sent),
                            None => st.buffer.extend(&bytes[sent..]),
                        }
                    }
                } else {
                    match shared {
                        Some(data) => st.buffer.keep(data, 0),
                        None => st.buffer.extend(bytes),
                    }
                }
                Ok(false)
            });
            drop(st);
            let outcome = match exported {
                Ok(outcome) => outcome,
                // What `sock.send()` would raise for a buffer it cannot
                // take (a non-contiguous memoryview): a fatal write error.
                Err(err) => return Self::fatal_error(slf, err, "Fatal write error on socket transport"),
            };
            if refused_closed {
                return Err(closed_error());
            }
            match outcome {
                Ok(true) => {
                    refs(py)?.logger.bind(py).call_method1(intern!(py, "warning"), ("socket.send() raised exception.",))?;
                    return Ok(());
                }
                Ok(false) => None,
                Err(err) => Some(err),
            }
        };
        if let Some(err) = failure {
            return Self::fatal_error(slf, os_error(py, &err), "Fatal write error on socket transport");
        }
        Self::maybe_pause_protocol(slf)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let joined = if refs(py)?.writelines_by_memoryview {
            {
                let st = lock(&slf.get().state);
                if st.eof {
                    return Err(PyRuntimeError::new_err("Cannot call writelines() after write_eof()"));
                }
                if st.empty_waiter.is_some() {
                    return Err(PyRuntimeError::new_err("unable to writelines; sendfile is in progress"));
                }
            }
            if !list_of_data.is_truthy()? {
                return Ok(());
            }
            let views = PyList::empty(py);
            for item in list_of_data.try_iter()? {
                views.append(PyMemoryView::from(&item?)?)?;
            }
            PyBytes::new(py, b"").call_method1(intern!(py, "join"), (views,))?
        } else {
            PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?
        };
        Self::write(slf, &joined)
    }

    fn write_eof(&self) -> PyResult<()> {
        let mut st = lock(&self.state);
        if st.closing || st.eof {
            return Ok(());
        }
        st.eof = true;
        if st.buffer.is_empty() {
            drop(st);
            if let Err(err) = syscalls::shutdown_write(self.fd) {
                return Python::attach(|py| Err(os_error(py, &err)));
            }
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let schedule = {
            let mut st = lock(&slf.get().state);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            st.reading = false;
            if st.buffer.is_empty() {
                st.conn_lost += 1;
                true
            } else {
                false
            }
        };
        if schedule {
            Self::schedule_connection_lost(slf, slf.py().None().into_bound(slf.py()))?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, slf.py().None().into_bound(slf.py()))
    }

    /// asyncio's `_force_close`: drop unsent data, stop reading, and call
    /// `connection_lost(exc)` soon, unless that is already on its way.
    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    fn is_closing(&self) -> bool {
        lock(&self.state).closing
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let extra = self.extra.bind(py);
        if let Some(value) = extra.get_item(name)? {
            return Ok(value);
        }
        if let Some(value) = DeferredInfo::resolve(&self.deferred_info, name)? {
            extra.set_item(name, &value)?;
            return Ok(value);
        }
        Ok(default.unwrap_or_else(|| py.None().into_bound(py)))
    }

    fn is_reading(&self) -> bool {
        let st = lock(&self.state);
        !st.closing && !st.paused
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = lock(&slf.get().state);
            if st.closing || st.paused {
                return Ok(());
            }
            st.paused = true;
            st.reading = false;
        }
        if slf.get().debug() {
            let py = slf.py();
            refs(py)?.logger.bind(py).call_method1(intern!(py, "debug"), ("%r pauses reading", slf))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = lock(&slf.get().state);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
            if slf.get().event_loop.get().is_closed() {
                return Err(closed_error());
            }
            st.reading = true;
            st.read_pending |= st.eof_kept_open;
            if st.read_pending {
                Self::queue_locked(slf, &mut st);
            }
        }
        if slf.get().debug() {
            let py = slf.py();
            refs(py)?.logger.bind(py).call_method1(intern!(py, "debug"), ("%r resumes reading", slf))?;
        }
        Ok(())
    }

    /// asyncio's `_set_write_buffer_limits`, in its arithmetic: any numbers
    /// with `high >= low >= 0` are accepted.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let marks = water_marks(slf.py(), high, low, DEFAULT_HIGH_WATER)?;
        {
            let mut st = lock(&slf.get().state);
            st.high_water = marks.high;
            st.low_water = marks.low;
            st.limits_given = Some(marks.given);
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let st = lock(&self.state);
        match &st.limits_given {
            Some((low, high)) => Ok((low.clone_ref(py), high.clone_ref(py))),
            None => Ok((
                (DEFAULT_HIGH_WATER / 4).into_pyobject(py)?.into_any().unbind(),
                DEFAULT_HIGH_WATER.into_pyobject(py)?.into_any().unbind(),
            )),
        }
    }

    fn get_write_buffer_size(&self) -> usize {
        lock(&self.state).buffer.len()
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let (old_protocol, old_reader) = {
            let mut st = lock(&self.state);
            let old = (st.protocol.take(), st.reader.take());
            // Looking up methods runs no code of ours that takes the lock.
            Self::set_protocol_locked(py, &mut st, protocol)?;
            old
        };
        drop((old_protocol, old_reader));
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn _make_empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if lock(&self.state).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = self.event_loop.bind(py).call_method0(intern!(py, "create_future"))?;
        let mut st = lock(&self.state);
        if st.buffer.is_empty() {
            drop(st);
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
            st = lock(&self.state);
        }
        st.empty_waiter = Some(waiter.clone().unbind());
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self) {
        let waiter = lock(&self.state).empty_waiter.take();
        drop(waiter);
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).sock.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        lock(&self.state).sock.as_ref().map(|_| self.event_loop.clone_ref(py))
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.is_closing()
    }

    /// asyncio's `_paused`: reading paused by `pause_reading()`.
    #[getter]
    fn _paused(&self) -> bool {
        lock(&self.state).paused
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        lock(&self.state).protocol_paused
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        lock(&self.state).conn_lost
    }

    /// `isinstance(transport, asyncio.Transport)` holds, as for asyncio's own
    /// transports: a native class cannot inherit from asyncio's Python ones
    /// (their `__slots__` layouts conflict), so the instance reports the
    /// asyncio-derived class `ferroloop._network.TransportClass` as its
    /// `__class__`, which `isinstance` consults. `type()` stays the native class.
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let class = TRANSPORT_CLASS
            .get_or_try_init(py, || Ok::<_, PyErr>(py.import("ferroloop._network")?.getattr("TransportClass")?.unbind()))?;
        Ok(class.clone_ref(py))
    }

    /// `loop.start_tls()` accepts this transport.
    #[classattr]
    fn _start_tls_compatible() -> bool {
        true
    }

    #[classattr]
    fn _sendfile_compatible(py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(refs(py)?.sendfile_try_native.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let st = lock(&self.state);
        let mut info = vec!["StreamTransport".to_owned()];
        if st.sock.is_none() {
            info.push("closed".to_owned());
        } else if st.closing {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        if st.sock.is_some() && !self.event_loop.get().is_closed() {
            info.push(format!("read={}", if st.reading { "polling" } else { "idle" }));
            let writing = if st.buffer.is_empty() { "idle" } else { "polling" };
            info.push(format!("write=<{writing}, bufsize={}>", st.buffer.len()));
        }
        format!("<{}>", info.join(" "))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.extra)?;
        DeferredInfo::traverse(&self.deferred_info, &visit)?;
        visit.call(&self.context)?;
        // try_lock: the collector can run while the loop thread holds the
        // lock; skipping a visit only keeps objects alive longer.
        if let Ok(st) = self.state.try_lock() {
            for obj in [&st.protocol, &st.sock, &st.server, &st.empty_waiter].into_iter().flatten() {
                visit.call(obj)?;
            }
            match &st.reader {
                Some(Reader::DataReceived(m)) => visit.call(m)?,
                Some(Reader::Buffered { get_buffer, buffer_updated }) => {
                    visit.call(get_buffer)?;
                    visit.call(buffer_updated)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut st) = self.state.try_lock() {
            let dropped = (st.protocol.take(), st.reader.take(), st.server.take(), st.empty_waiter.take());
            drop(st);
            drop(dropped);
        }
    }
}

impl StreamTransport {
    /// Run right after `connection_made` (`Scheduled::StartReading`): the socket joins the poller
    /// and reading starts here, as asyncio adds its reader then, unless the
    /// protocol paused reading meanwhile. A socket closed in between (by
    /// another transport on it) fails here with asyncio's OSError.
    pub(crate) fn start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_register(slf)?;
        let mut st = lock(&slf.get().state);
        if st.closing || st.paused || st.conn_lost > 0 {
            return Ok(());
        }
        st.reading = true;
        if st.read_pending {
            Self::queue_locked(slf, &mut st);
        }
        Ok(())
    }

    /// A transport on `sock` (whose fd is `fd`), running its protocol's
    /// callbacks in `context`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        py: Python<'_>,
        event_loop: Py<LoopCore>,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        extra: &Bound<'_, PyDict>,
        deferred_info: DeferredInfo,
        server: Option<&Bound<'_, PyAny>>,
        context: Py<PyAny>,
    ) -> PyResult<Self> {
        let mut state = State {
            protocol: None,
            reader: None,
            sock: Some(sock.clone().unbind()),
            server: server.map(|s| s.clone().unbind()),
            buffer: WriteBuffer::default(),
            high_water: DEFAULT_HIGH_WATER as f64,
            low_water: (DEFAULT_HIGH_WATER / 4) as f64,
            limits_given: None,
            protocol_paused: false,
            paused: false,
            closing: false,
            eof: false,
            conn_lost: 0,
            reading: false,
            // Registering an edge-triggered fd reports it at once if it is
            // readable already, so nothing is read (and no BufferedProtocol
            // asked for a buffer) before data is there, as in asyncio.
            read_pending: false,
            write_pending: false,
            peer_closed: false,
            eof_kept_open: false,
            queued: false,
            registered: false,
            empty_waiter: None,
        };
        Self::set_protocol_locked(py, &mut state, protocol)?;
        Ok(Self {
            fd,
            event_loop,
            extra: extra.clone().unbind(),
            deferred_info: Mutex::new(deferred_info),
            context,
            state: Mutex::new(state),
        })
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        {
            let mut st = lock(&slf.get().state);
            if st.conn_lost > 0 {
                return Ok(());
            }
            st.buffer.clear();
            if !st.closing {
                st.closing = true;
                st.reading = false;
            }
            st.conn_lost += 1;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    pub(crate) fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
        let outcome = match protocol {
            Some(protocol) => thread_exit::call_method(protocol.bind(py), intern!(py, "connection_lost"), (exc,)).map(drop),
            None => Ok(()),
        };
        // asyncio's `finally:` block: release everything even if the
        // protocol raised.
        let (sock, server, waiter, released) = {
            let mut st = lock(&this.state);
            st.closing = true;
            st.reading = false;
            let registered = std::mem::replace(&mut st.registered, false);
            (st.sock.take(), st.server.take(), st.empty_waiter.take(), (st.protocol.take(), st.reader.take(), registered))
        };
        let (old_protocol, old_reader, registered) = released;
        let attached = if registered { this.event_loop.get().poller.detach(this.fd) } else { None };
        let cleanup = (|| -> PyResult<()> {
            this.event_loop.get().unregister_transport(py, this.fd, slf.as_any())?;
            if let Some(sock) = &sock {
                super::socket_object::close_socket(sock.bind(py))?;
            }
            Self::detach_from_server(py, slf, server)?;
            if let Some(waiter) = waiter {
                let error = py
                    .get_type::<pyo3::exceptions::PyConnectionError>()
                    .call1(("Connection is closed by peer",))?;
                settle(waiter.bind(py), Err(error))?;
            }
            Ok(())
        })();
        drop((attached, old_protocol, old_reader, sock));
        outcome.and(cleanup)
    }
}

impl Drop for StreamTransport {
    /// asyncio's `__del__`: warn about a transport dropped unclosed and close
    /// its socket. This runs in tp_dealloc, possibly after the garbage
    /// collector cleared the socket's and the server's Python attributes
    /// (they can be in the same cycle), so the socket is closed through the
    /// C-level `_socket.socket.close`, which needs no Python attribute, and a
    /// server that can no longer be told is left alone.
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(sock) = st.sock.take() else { return };
        let server = st.server.take();
        let fd = self.fd;
        Python::attach(|py| {
            // Set up when the transport was made (its protocol is checked
            // against asyncio.BufferedProtocol then).
            let Some(refs) = REFS.get(py) else { return };
            let resource_warning = py.get_type::<pyo3::exceptions::PyResourceWarning>();
            let message = format!("unclosed transport <StreamTransport fd={fd}>");
            if let Err(err) = refs.warn.bind(py).call1((message, resource_warning)) {
                err.write_unraisable(py, None);
            }
            if let Err(err) = refs.socket_close.bind(py).call1((sock.bind(py),)) {
                err.write_unraisable(py, None);
            }
            if let (Some(server), false) = (server, refs.server_detach_takes_transport) {
                // Since 3.13 `_detach` wants the transport, which is gone;
                // the server's weak set forgets it by itself.
                let _ = server.bind(py).call_method0("_detach");
            }
        });
    }
}

/// `callable(arg)` through vectorcall with a borrowed argument: the caller's
/// reference to `arg` stays the only one the loop holds, which is what lets
/// `ReadBytes::give_back` see whether the callee kept the object.
fn call_with_one_arg(callable: &Bound<'_, PyAny>, arg: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = callable.py();
    // Slot 0 is scratch space that PY_VECTORCALL_ARGUMENTS_OFFSET lets the
    // callee use (a bound method puts `self` there instead of copying).
    let mut args = [std::ptr::null_mut(), arg.as_ptr()];
    // SAFETY: the GIL is held; `callable` and `arg` are live for the call,
    // the argument vector holds one borrowed reference after its scratch
    // slot, and a non-null result is a new reference owned from here on.
    unsafe {
        let result =
            thread_exit::vectorcall(callable.as_ptr(), args.as_mut_ptr().add(1), 1 | pyo3::ffi::PY_VECTORCALL_ARGUMENTS_OFFSET);
        if result.is_null() {
            return Err(PyErr::fetch(py));
        }
        pyo3::ffi::Py_DECREF(result);
    }
    Ok(())
}
