//! `DatagramTransport`: asyncio's `_SelectorDatagramTransport` (UDP and Unix
//! datagram sockets, connected or not) in Rust.
//!
//! The fd is registered once, edge-triggered, like a stream transport's, and
//! the poller queues the transport itself when it is ready. asyncio reads one
//! datagram per loop iteration; so does this transport: after a datagram, a
//! zero-length `MSG_PEEK` read tells whether another one waits, and if so the
//! transport queues itself for the next iteration (a pending socket error
//! that the peek consumed is kept and delivered then, where `recvfrom` would
//! have raised it). `sendto` tries the syscall at once and only buffers what
//! the kernel refused (EAGAIN), as asyncio does; a writable edge then drains
//! the buffer.
//!
//! Addresses in the plain forms (numeric hosts, `str`/`bytes` paths) are
//! converted natively (`sockaddr.rs`); the last source address's tuple is
//! kept, so that answering a datagram (`sendto(reply, addr)` with the very
//! tuple `datagram_received` got) needs no conversion at all. Any other
//! address goes to the socket's own `sendto`, and a socket of another family
//! or class uses its own methods throughout, so behaviour and errors are the
//! socket module's.
//!
//! Per-version behaviour follows the interpreter's asyncio: 3.10 to 3.12
//! drop empty datagrams, 3.13 sends them; 3.11+ keep `_buffer_size` as a
//! running count (not reset by `abort()`), 3.13 adds 8 bytes of header per
//! buffered datagram. The state lock is never held across a call into
//! Python or an allocation of a Python object.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::read_bytes::{with_read_scratch, MAX_READ};
use super::sockaddr::{self, RawAddr};
use super::syscalls::{os_error, Progress};
use super::shared::{report_to_loop, tell_protocol, water_marks, DEFAULT_HIGH_WATER};
use super::Attached;
use crate::event_loop::handles::{closed_error, in_context, Scheduled};
use crate::event_loop::{copy_current_context, is_fatal, LoopCore};
use crate::support::buffers::with_bytes;
use crate::support::sync::lock;
use crate::support::thread_exit;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
const WRITE_ERROR: &str = "Fatal write error on datagram transport";
const READ_ERROR: &str = "Fatal read error on datagram transport";

struct Refs {
    logger: Py<PyAny>,
    socket_class: Py<PyAny>,
    warn: Py<PyAny>,
    socket_close: Py<PyAny>,
    /// 3.10-3.12 return from `sendto(b"")` without sending.
    drops_empty: bool,
    /// 3.13 counts 8 bytes of header per buffered datagram.
    header_size: i64,
    /// ... and, once gh-135444 is fixed in the interpreter's asyncio, takes
    /// them off again when the datagram is sent.
    header_taken_off: bool,
    /// 3.10's `get_write_buffer_size` sums the buffered datagrams.
    size_by_sum: bool,
    /// 3.10's datagram transport has no `is_reading`, `pause_reading` or
    /// `resume_reading` of its own: `asyncio.ReadTransport`'s raise
    /// NotImplementedError.
    reading_control: bool,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();
static TRANSPORT_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let new_accounting = py.version_info() >= (3, 13);
        let selector_transport = py.import("asyncio.selector_events")?.getattr("_SelectorDatagramTransport")?;
        Ok(Refs {
            logger: py.import("logging")?.call_method1("getLogger", ("asyncio",))?.unbind(),
            socket_class: py.import("socket")?.getattr("socket")?.unbind(),
            warn: py.import("warnings")?.getattr("warn")?.unbind(),
            socket_close: py.import("_socket")?.getattr("socket")?.getattr("close")?.unbind(),
            drops_empty: !new_accounting,
            header_size: if new_accounting { 8 } else { 0 },
            header_taken_off: new_accounting && selector_transport.hasattr("_header_size")?,
            size_by_sum: py.version_info() < (3, 11),
            reading_control: py.version_info() >= (3, 11),
        })
    })
}

/// How the transport sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Connected (asyncio's truthy `peername`): `send`, whatever address.
    Peer,
    /// A socketpair-style unnamed AF_UNIX peer (`peername == ''`): `send`
    /// when no address is given, where asyncio would call
    /// `sendto(data, None)` and fail.
    UnnamedPeer,
    /// Not connected: `sendto(data, addr)`.
    Anyone,
}

struct Queued {
    data: Vec<u8>,
    addr: Option<Py<PyAny>>,
}

/// What one send attempt came to.
enum Sent {
    Done(usize),
    Blocked,
    /// An OSError, for `error_received`.
    Refused(PyErr),
    /// Anything else (a bad address type...): a fatal write error.
    Failed(PyErr),
    /// KeyboardInterrupt or SystemExit, which leave the loop.
    Interrupted(PyErr),
}

struct State {
    protocol: Option<Py<PyAny>>,
    /// The protocol's `datagram_received`, looked up once per protocol.
    datagram_received: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    /// Reads run in this context: a copy of the one the transport was made
    /// in, or of the one `resume_reading` was called in, as asyncio's
    /// reader handle.
    read_context: Py<PyAny>,
    /// Draining the buffer runs in a copy of the context of the `sendto`
    /// that started buffering, as asyncio's writer handle.
    write_context: Option<Py<PyAny>>,
    buffer: VecDeque<Queued>,
    /// asyncio's `_buffer_size` (3.11+).
    buffer_size: i64,
    /// The bytes in `buffer` (3.10's buffer size).
    buffered_bytes: usize,
    high_water: f64,
    low_water: f64,
    limits_given: Option<(Py<PyAny>, Py<PyAny>)>,
    protocol_paused: bool,
    paused: bool,
    closing: bool,
    conn_lost: u32,
    /// asyncio's reader registration.
    reading: bool,
    read_pending: bool,
    write_pending: bool,
    /// An error a readiness peek took from the socket, for the next read.
    pending_error: Option<std::io::Error>,
    queued: bool,
    registered: bool,
    /// The last source address and the object made for it.
    last_source: Option<(RawAddr, Py<PyAny>)>,
    /// The last destination object converted, and what it became.
    last_destination: Option<(Py<PyAny>, RawAddr)>,
}

#[pyclass(module = "ferroloop._native", frozen, weakref)]
pub struct DatagramTransport {
    fd: RawFd,
    family: libc::c_int,
    /// A plain `socket.socket` of AF_INET, AF_INET6 or AF_UNIX: syscalls
    /// here; else the socket's own `recvfrom`/`send`/`sendto`.
    native: bool,
    target: Target,
    /// asyncio's `_address` (the remote address), when truthy.
    address: Option<Py<PyAny>>,
    event_loop: Py<LoopCore>,
    extra: Py<PyDict>,
    state: Mutex<State>,
}

fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
}

/// `len(data)` as asyncio takes it (a memoryview's is its item count).
fn python_len(data: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().len());
    }
    data.len()
}

/// `bytes(data)`'s contents, as asyncio buffers them.
fn copy_of(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    match with_bytes(data, <[u8]>::to_vec) {
        Ok(copy) => Ok(copy),
        // A non-contiguous memoryview: `bytes()` gathers it.
        Err(_) => Ok(data.py().get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?.as_bytes().to_vec()),
    }
}

fn require_reading_control(py: Python<'_>) -> PyResult<()> {
    if refs(py)?.reading_control {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyNotImplementedError::new_err(()))
    }
}

fn classify_python_error(py: Python<'_>, err: PyErr) -> Sent {
    if err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py) {
        Sent::Blocked
    } else if err.is_instance_of::<PyOSError>(py) {
        Sent::Refused(err)
    } else if is_fatal(py, &err) {
        Sent::Interrupted(err)
    } else {
        Sent::Failed(err)
    }
}

fn classify_syscall(py: Python<'_>, outcome: std::io::Result<Progress>) -> Sent {
    match outcome {
        Ok(Progress::Done(n)) => Sent::Done(n),
        Ok(Progress::WouldBlock) => Sent::Blocked,
        Err(err) => Sent::Refused(os_error(py, &err)),
    }
}

impl DatagramTransport {
    fn loop_obj<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    fn debug(&self) -> bool {
        self.event_loop.get().debug_enabled()
    }

    /// Called by the poller with one event's readiness; true when the
    /// transport must be queued.
    pub fn note_ready(&self, readable: bool, writable: bool, hung_up: bool) -> bool {
        let mut st = lock(&self.state);
        if st.conn_lost > 0 {
            return false;
        }
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
            lock(&slf.get().event_loop.get().sched).ready.push_back(Scheduled::Io(Attached::Datagram(slf.clone().unbind())));
        }
    }

    /// The ready-queue entry: asyncio's `_read_ready` and `_sendto_ready`,
    /// each in the context its handle would have.
    pub fn process(slf: &Bound<'_, Self>) -> Result<(), (PyErr, &'static str)> {
        let py = slf.py();
        let this = slf.get();
        let (read, write) = {
            let mut st = lock(&this.state);
            st.queued = false;
            if st.conn_lost > 0 {
                return Ok(());
            }
            let write = st.write_pending && !st.buffer.is_empty();
            st.write_pending = false;
            let read = (st.read_pending && st.reading).then(|| st.read_context.clone_ref(py));
            let write = write.then(|| st.write_context.as_ref().unwrap_or(&st.read_context).clone_ref(py));
            (read, write)
        };
        if let Some(context) = read {
            in_context(py, context.bind(py), || Self::read_ready(slf))
                .and_then(|outcome| outcome)
                .map_err(|err| Self::interrupted(slf, err, "_read_ready"))?;
        }
        if let Some(context) = write {
            in_context(py, context.bind(py), || Self::write_ready(slf))
                .and_then(|outcome| outcome)
                .map_err(|err| Self::interrupted(slf, err, "_sendto_ready"))?;
        }
        Ok(())
    }

    /// asyncio's reader and writer are level-triggered: work an escaping
    /// error cut short is done on the next iteration.
    fn interrupted(slf: &Bound<'_, Self>, err: PyErr, method: &'static str) -> (PyErr, &'static str) {
        let mut st = lock(&slf.get().state);
        if !st.buffer.is_empty() && method == "_sendto_ready" {
            st.write_pending = true;
        }
        if (st.read_pending && st.reading) || (st.write_pending && !st.buffer.is_empty()) {
            Self::queue_locked(slf, &mut st);
        }
        (err, method)
    }

    /// One datagram (or one error) to the protocol.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pending_error = lock(&this.state).pending_error.take();
        let outcome = match pending_error {
            Some(err) => Self::error_received(slf, os_error(py, &err)),
            None if this.native => Self::receive_native(slf),
            None => Self::receive_through_socket(slf),
        };
        Self::note_what_is_left(slf);
        outcome
    }

    fn receive_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.get();
        let mut source = RawAddr::empty();
        let received = with_read_scratch(|buf| match sockaddr::recv_from(this.fd, &mut buf[..MAX_READ], &mut source) {
            Ok(Progress::Done(n)) => Ok(Some(event_loop.read_bytes.bytes_from(py, &buf[..n.min(MAX_READ)]))),
            Ok(Progress::WouldBlock) => Ok(None),
            Err(err) => Err(err),
        });
        let received = match received {
            Ok(Some(received)) => received,
            Ok(None) => return Ok(()),
            Err(err) => return Self::error_received(slf, os_error(py, &err)),
        };
        event_loop.io_counters.add_received(received.data.as_bytes().len());
        let addr = match Self::source_object(slf, &source) {
            Ok(addr) => addr,
            Err(err) => return Self::fatal_error(slf, err, READ_ERROR),
        };
        let delivered = Self::deliver(slf, received.data.as_any(), &addr);
        drop(addr);
        event_loop.read_bytes.give_back(received);
        delivered
    }

    /// The object for a source address: the last one's, if it is the same.
    fn source_object<'py>(slf: &Bound<'py, Self>, source: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        {
            let st = lock(&slf.get().state);
            if let Some((raw, obj)) = &st.last_source {
                if raw == source {
                    return Ok(obj.bind(py).clone());
                }
            }
        }
        let obj = sockaddr::to_object(py, source)?;
        let previous = lock(&slf.get().state).last_source.replace((*source, obj.clone().unbind()));
        drop(previous);
        Ok(obj)
    }

    /// A socket of another kind: its own `recvfrom`, as asyncio calls it.
    fn receive_through_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(sock) = lock(&this.state).sock.as_ref().map(|s| s.clone_ref(py)) else { return Ok(()) };
        let result = sock.bind(py).call_method1(intern!(py, "recvfrom"), (MAX_READ,)).and_then(|pair| {
            let pair = pair.cast_into::<PyTuple>()?;
            Ok((pair.get_item(0)?, pair.get_item(1)?))
        });
        match result {
            Ok((data, addr)) => {
                this.event_loop.get().io_counters.add_received(data.len().unwrap_or(0));
                Self::deliver(slf, &data, &addr)
            }
            Err(err) => match classify_python_error(py, err) {
                Sent::Blocked | Sent::Done(_) => Ok(()),
                Sent::Refused(err) => Self::error_received(slf, err),
                Sent::Interrupted(err) => Err(err),
                Sent::Failed(err) => Self::fatal_error(slf, err, READ_ERROR),
            },
        }
    }

    fn deliver(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (method, protocol) = {
            let st = lock(&slf.get().state);
            (st.datagram_received.as_ref().map(|m| m.clone_ref(py)), st.protocol.as_ref().map(|p| p.clone_ref(py)))
        };
        match (method, protocol) {
            (Some(method), _) => call_with_two_args(method.bind(py), data, addr),
            (None, Some(protocol)) => {
                thread_exit::call_method(protocol.bind(py), intern!(py, "datagram_received"), (data, addr)).map(drop)
            }
            (None, None) => Ok(()),
        }
    }

    fn error_received(slf: &Bound<'_, Self>, exc: PyErr) -> PyResult<()> {
        let py = slf.py();
        let protocol = lock(&slf.get().state).protocol.as_ref().map(|p| p.clone_ref(py));
        match protocol {
            Some(protocol) => {
                thread_exit::call_method(protocol.bind(py), intern!(py, "error_received"), (exc.into_value(py),)).map(drop)
            }
            None => Ok(()),
        }
    }

    /// After a read: queue the next one if a datagram (or an error) waits.
    fn note_what_is_left(slf: &Bound<'_, Self>) {
        let this = slf.get();
        if lock(&this.state).conn_lost > 0 {
            return;
        }
        let waiting = if this.native {
            sockaddr::datagram_waiting(this.fd)
        } else {
            // The socket's own class reads; the next iteration finds out.
            Ok(true)
        };
        let mut st = lock(&this.state);
        if st.conn_lost > 0 {
            return;
        }
        st.read_pending = match waiting {
            Ok(more) => more,
            Err(err) => {
                st.pending_error = Some(err);
                true
            }
        };
        if st.read_pending && st.reading {
            Self::queue_locked(slf, &mut st);
        }
    }

    /// The destination as a `sockaddr`, if it converts natively; the last
    /// source's and the last destination's objects are known already.
    fn destination(slf: &Bound<'_, Self>, addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
        let this = slf.get();
        {
            let st = lock(&this.state);
            if let Some((raw, obj)) = &st.last_source {
                if obj.is(addr) {
                    return Some(*raw);
                }
            }
            if let Some((obj, raw)) = &st.last_destination {
                if obj.is(addr) {
                    return Some(*raw);
                }
            }
        }
        let raw = sockaddr::to_raw(this.family, addr)?;
        let previous = lock(&this.state).last_destination.replace((addr.clone().unbind(), raw));
        drop(previous);
        Some(raw)
    }

    fn uses_send(&self, addr: Option<&Bound<'_, PyAny>>) -> bool {
        match self.target {
            Target::Peer => true,
            Target::UnnamedPeer => addr.is_none(),
            Target::Anyone => false,
        }
    }

    /// One attempt to send `bytes` (the contents of `data`, when there is
    /// such an object) to `addr`.
    fn send_once(
        slf: &Bound<'_, Self>,
        bytes: &[u8],
        data: Option<&Bound<'_, PyAny>>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> Sent {
        let py = slf.py();
        let this = slf.get();
        if this.native {
            if this.uses_send(addr) {
                return classify_syscall(py, sockaddr::send(this.fd, bytes));
            }
            if let Some(raw) = addr.and_then(|a| Self::destination(slf, a)) {
                return classify_syscall(py, sockaddr::send_to(this.fd, bytes, &raw));
            }
        }
        Self::send_through_socket(slf, bytes, data, addr)
    }

    /// The socket's own `send`/`sendto`: other socket kinds, and addresses
    /// that need resolving (or are wrong, to get the socket's error).
    fn send_through_socket(
        slf: &Bound<'_, Self>,
        bytes: &[u8],
        data: Option<&Bound<'_, PyAny>>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> Sent {
        let py = slf.py();
        let this = slf.get();
        let Some(sock) = lock(&this.state).sock.as_ref().map(|s| s.clone_ref(py)) else {
            return Sent::Failed(pyo3::exceptions::PyAttributeError::new_err("'NoneType' object has no attribute 'sendto'"));
        };
        let data = match data {
            Some(data) => data.clone(),
            None => PyBytes::new(py, bytes).into_any(),
        };
        let sock = sock.bind(py);
        let outcome = if this.uses_send(addr) {
            sock.call_method1(intern!(py, "send"), (data,))
        } else {
            sock.call_method1(intern!(py, "sendto"), (data, addr))
        };
        match outcome {
            // asyncio ignores what the method returns.
            Ok(sent) => Sent::Done(sent.extract::<usize>().unwrap_or(bytes.len())),
            Err(err) => classify_python_error(py, err),
        }
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        let header_off = if refs.header_taken_off { refs.header_size } else { 0 };
        loop {
            let entry = {
                let mut st = lock(&this.state);
                if st.conn_lost > 0 {
                    return Ok(());
                }
                let Some(entry) = st.buffer.pop_front() else { break };
                st.buffer_size -= entry.data.len() as i64 + header_off;
                st.buffered_bytes -= entry.data.len();
                entry
            };
            let addr = entry.addr.as_ref().map(|a| a.bind(py).clone());
            match Self::send_once(slf, &entry.data, None, addr.as_ref()) {
                Sent::Done(n) => this.event_loop.get().io_counters.add_sent(n),
                Sent::Blocked => {
                    let mut st = lock(&this.state);
                    st.buffer_size += entry.data.len() as i64 + header_off;
                    st.buffered_bytes += entry.data.len();
                    st.buffer.push_front(entry);
                    Self::retry_if_writable(slf, &mut st);
                    break;
                }
                Sent::Refused(err) => {
                    drop(entry);
                    Self::error_received(slf, err)?;
                    // The writer stays registered in asyncio, and the
                    // socket is writable: the rest goes next iteration.
                    let mut st = lock(&this.state);
                    if !st.buffer.is_empty() {
                        st.write_pending = true;
                        Self::queue_locked(slf, &mut st);
                    }
                    return Ok(());
                }
                Sent::Failed(err) => return Self::fatal_error(slf, err, WRITE_ERROR),
                Sent::Interrupted(err) => return Err(err),
            }
        }
        Self::maybe_resume_protocol(slf)?; // may buffer more
        let closing = {
            let st = lock(&this.state);
            st.buffer.is_empty() && st.closing && st.conn_lost == 0
        };
        if closing {
            Self::call_connection_lost(slf, py.None().into_bound(py))?;
        }
        Ok(())
    }

    /// After EAGAIN. A writable edge comes when the socket's own buffer
    /// frees up, but not always when the refusal was the receiver's: an
    /// unconnected Unix datagram socket sending to a full queue of others'
    /// datagrams gets no wake-up, yet polls writable. asyncio's
    /// level-triggered writer then retries on every iteration; so does this.
    fn retry_if_writable(slf: &Bound<'_, Self>, st: &mut State) {
        if sockaddr::writable_now(slf.get().fd) {
            st.write_pending = true;
            Self::queue_locked(slf, st);
        }
    }

    fn write_buffer_size(&self, st: &State, refs: &Refs) -> f64 {
        if refs.size_by_sum {
            st.buffered_bytes as f64
        } else {
            st.buffer_size as f64
        }
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let refs = refs(py)?;
        let protocol = {
            let mut st = lock(&slf.get().state);
            if slf.get().write_buffer_size(&st, refs) <= st.high_water || st.protocol_paused {
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
        let refs = refs(py)?;
        let protocol = {
            let mut st = lock(&slf.get().state);
            if !st.protocol_paused || slf.get().write_buffer_size(&st, refs) > st.low_water {
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

    /// asyncio's `_fatal_error`: an OSError is only logged in debug mode,
    /// anything else goes to the exception handler; the transport closes
    /// without flushing.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = err.into_value(py).into_bound(py);
        if exc.is_instance_of::<PyOSError>() {
            if this.debug() {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "exc_info"), &exc)?;
                refs(py)?.logger.bind(py).call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else {
            let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
            report_to_loop(this.loop_obj(py), slf.as_any(), message, &exc, protocol.as_ref().map(|p| p.bind(py)))?;
        }
        Self::force_close(slf, exc.into_any())
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let dropped = {
            let mut st = lock(&slf.get().state);
            if st.conn_lost > 0 {
                return Ok(());
            }
            // asyncio clears the deque but leaves `_buffer_size` as it was.
            let dropped = std::mem::take(&mut st.buffer);
            st.buffered_bytes = 0;
            st.closing = true;
            st.reading = false;
            st.conn_lost += 1;
            dropped
        };
        drop(dropped);
        Self::schedule_connection_lost(slf, exc)
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
        slf.get().loop_obj(py).call_method1(intern!(py, "call_soon"), (callback, exc))?;
        Ok(())
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
        let outcome = match protocol {
            Some(protocol) => thread_exit::call_method(protocol.bind(py), intern!(py, "connection_lost"), (exc,)).map(drop),
            None => Ok(()),
        };
        // asyncio's `finally:` block: release everything even if the
        // protocol raised.
        let (sock, released, registered) = {
            let mut st = lock(&this.state);
            st.closing = true;
            st.reading = false;
            // Lost for good, also when it came from draining the buffer
            // after close() (asyncio leaves `_conn_lost` at 0 then): nothing
            // may use the fd number from here on.
            st.conn_lost = st.conn_lost.max(1);
            let registered = std::mem::replace(&mut st.registered, false);
            let released = (
                st.protocol.take(),
                st.datagram_received.take(),
                st.write_context.take(),
                st.last_source.take(),
                st.last_destination.take(),
                std::mem::take(&mut st.buffer),
            );
            (st.sock.take(), released, registered)
        };
        let attached = if registered { this.event_loop.get().poller.detach(this.fd) } else { None };
        let closed = match &sock {
            Some(sock) => sock.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop((attached, released, sock));
        outcome.and(closed)
    }

    fn set_protocol_locked(py: Python<'_>, st: &mut State, protocol: &Bound<'_, PyAny>) {
        st.datagram_received = protocol.getattr(intern!(py, "datagram_received")).ok().map(Bound::unbind);
        st.protocol = Some(protocol.clone().unbind());
    }

    fn log_debug(slf: &Bound<'_, Self>, message: &str) -> PyResult<()> {
        if slf.get().debug() {
            let py = slf.py();
            refs(py)?.logger.bind(py).call_method1(intern!(py, "debug"), (message, slf))?;
        }
        Ok(())
    }

    /// `addr` checked against the remote address, as asyncio does: what is
    /// sent to, or the ValueError.
    fn checked_address<'py>(&self, py: Python<'py>, addr: Option<Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(address) = &self.address else { return Ok(addr) };
        let address = address.bind(py);
        if let Some(addr) = addr.as_ref().filter(|a| !a.is(address)) {
            let allowed = PyTuple::new(py, [py.None().into_bound(py), address.clone()])?;
            if !allowed.contains(addr)? {
                return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.str()?)));
            }
        }
        Ok(Some(address.clone()))
    }
}

#[pymethods]
impl DatagramTransport {
    #[new]
    #[pyo3(signature = (event_loop, sock, protocol, address, extra))]
    fn new(
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        extra: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let refs = refs(py)?;
        let event_loop = event_loop.cast::<LoopCore>()?.clone().unbind();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let family: libc::c_int = sock.getattr(intern!(py, "family"))?.extract()?;
        let native = sock.get_type().is(refs.socket_class.bind(py))
            && matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX);
        let target = match extra.get_item(intern!(py, "peername"))? {
            Some(peer) if peer.is_truthy()? => Target::Peer,
            Some(peer) if peer.cast::<pyo3::types::PyString>().is_ok_and(|s| s.is_empty().unwrap_or(false)) => Target::UnnamedPeer,
            _ => Target::Anyone,
        };
        let address = if address.is_truthy()? { Some(address.clone().unbind()) } else { None };
        let mut state = State {
            protocol: None,
            datagram_received: None,
            sock: Some(sock.clone().unbind()),
            read_context: copy_current_context(py)?,
            write_context: None,
            buffer: VecDeque::new(),
            buffer_size: 0,
            buffered_bytes: 0,
            high_water: DEFAULT_HIGH_WATER as f64,
            low_water: (DEFAULT_HIGH_WATER / 4) as f64,
            limits_given: None,
            protocol_paused: false,
            paused: false,
            closing: false,
            conn_lost: 0,
            reading: false,
            read_pending: false,
            write_pending: false,
            pending_error: None,
            queued: false,
            registered: false,
            last_source: None,
            last_destination: None,
        };
        Self::set_protocol_locked(py, &mut state, protocol);
        Ok(Self { fd, family, native, target, address, event_loop, extra: extra.clone().unbind(), state: Mutex::new(state) })
    }

    /// Scheduled right after `connection_made`: the socket joins the poller
    /// (for good) and reading starts, unless the transport was paused or
    /// closed meanwhile, as asyncio's `_add_reader` then.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let register = {
            let st = lock(&this.state);
            if st.conn_lost > 0 {
                return Ok(());
            }
            !st.registered
        };
        if register {
            let stale = this
                .event_loop
                .get()
                .poller
                .attach(this.fd, Attached::Datagram(slf.clone().unbind()))
                .map_err(|err| os_error(slf.py(), &err))?;
            lock(&this.state).registered = true;
            for watcher in stale {
                watcher.retire(slf.py());
            }
        }
        let mut st = lock(&this.state);
        if st.closing || st.paused {
            return Ok(());
        }
        st.reading = true;
        if st.read_pending {
            Self::queue_locked(slf, &mut st);
        }
        Ok(())
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let refs = refs(py)?;
        if !is_bytes_like(data) {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!("data argument must be a bytes-like object, not {}", name.repr()?)));
        }
        if refs.drops_empty && python_len(data)? == 0 {
            return Ok(());
        }
        let addr = this.checked_address(py, addr.filter(|a| !a.is_none()))?;
        let (buffer_empty, warn) = {
            let mut st = lock(&this.state);
            // A connected transport that lost its connection counts and
            // drops, as asyncio's does; so does one whose socket is gone,
            // where asyncio fails on the missing socket.
            if st.conn_lost > 0 && (this.address.is_some() || st.sock.is_none()) {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                (false, Some(warn))
            } else {
                (st.buffer.is_empty(), None)
            }
        };
        if let Some(warn) = warn {
            if warn {
                refs.logger.bind(py).call_method1(intern!(py, "warning"), ("socket.send() raised exception.",))?;
            }
            return Ok(());
        }
        if buffer_empty {
            let attempt = match with_bytes(data, |bytes| Self::send_once(slf, bytes, Some(data), addr.as_ref())) {
                Ok(attempt) => attempt,
                // What `sock.sendto()` raises for a buffer it cannot take.
                Err(err) => Sent::Failed(err),
            };
            match attempt {
                Sent::Done(sent) => {
                    this.event_loop.get().io_counters.add_sent(sent);
                    return Ok(());
                }
                Sent::Blocked => {
                    let context = copy_current_context(py)?;
                    let previous = {
                        let mut st = lock(&this.state);
                        st.write_pending = false;
                        Self::retry_if_writable(slf, &mut st);
                        st.write_context.replace(context)
                    };
                    drop(previous);
                }
                Sent::Refused(err) => return Self::error_received(slf, err),
                Sent::Failed(err) => return Self::fatal_error(slf, err, WRITE_ERROR),
                Sent::Interrupted(err) => return Err(err),
            }
        }
        let length = python_len(data)?;
        let copy = copy_of(data)?;
        {
            let mut st = lock(&this.state);
            st.buffer_size += length as i64 + refs.header_size;
            st.buffered_bytes += copy.len();
            st.buffer.push_back(Queued { data: copy, addr: addr.map(Bound::unbind) });
        }
        Self::maybe_pause_protocol(slf)
    }

    /// The stream half of `asyncio.Transport`, which asyncio's datagram
    /// transport inherits unimplemented.
    #[pyo3(signature = (_data))]
    fn write(&self, _data: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(pyo3::exceptions::PyNotImplementedError::new_err(()))
    }

    fn writelines(&self, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = list_of_data.py();
        PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Err(pyo3::exceptions::PyNotImplementedError::new_err(()))
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> PyResult<bool> {
        Err(pyo3::exceptions::PyNotImplementedError::new_err(()))
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

    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc), message)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    fn is_closing(&self) -> bool {
        lock(&self.state).closing
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        match self.extra.bind(py).get_item(name)? {
            Some(value) => Ok(value),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        require_reading_control(py)?;
        let st = lock(&self.state);
        Ok(!st.closing && !st.paused)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        require_reading_control(slf.py())?;
        {
            let mut st = lock(&slf.get().state);
            if st.closing || st.paused {
                return Ok(());
            }
            st.paused = true;
            st.reading = false;
        }
        Self::log_debug(slf, "%r pauses reading")
    }

    /// Reading resumes in a copy of the caller's context, as asyncio adds a
    /// new reader handle then.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        require_reading_control(py)?;
        {
            let mut st = lock(&slf.get().state);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        if slf.get().event_loop.get().is_closed() {
            return Err(closed_error());
        }
        let context = copy_current_context(py)?;
        let previous = {
            let mut st = lock(&slf.get().state);
            st.reading = true;
            let previous = std::mem::replace(&mut st.read_context, context);
            if st.read_pending {
                Self::queue_locked(slf, &mut st);
            }
            previous
        };
        drop(previous);
        Self::log_debug(slf, "%r resumes reading")
    }

    /// asyncio's `_set_write_buffer_limits`.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let marks = water_marks(slf.py(), high, low, DEFAULT_HIGH_WATER)?;
        let previous = {
            let mut st = lock(&slf.get().state);
            st.high_water = marks.high;
            st.low_water = marks.low;
            st.limits_given.replace(marks.given)
        };
        drop(previous);
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

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        let refs = refs(py)?;
        let st = lock(&self.state);
        Ok(if refs.size_by_sum { st.buffered_bytes as i64 } else { st.buffer_size })
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let py = protocol.py();
        let old = {
            let mut st = lock(&self.state);
            let old = (st.protocol.take(), st.datagram_received.take());
            // Looking up the method runs no code of ours that takes the lock.
            Self::set_protocol_locked(py, &mut st, protocol);
            old
        };
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    #[classattr]
    fn max_size() -> usize {
        MAX_READ
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
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.address.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.is_closing()
    }

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

    #[getter]
    fn _high_water(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.get_write_buffer_limits(py)?.1)
    }

    #[getter]
    fn _low_water(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.get_write_buffer_limits(py)?.0)
    }

    #[getter]
    fn _buffer_size(&self) -> i64 {
        lock(&self.state).buffer_size
    }

    /// `isinstance(transport, asyncio.DatagramTransport)` holds (and, as
    /// for asyncio's, `asyncio.Transport`): the instance reports the
    /// asyncio-derived `ferroloop._network.DatagramTransportClass` as its
    /// `__class__`; `type()` stays the native class.
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let class = TRANSPORT_CLASS.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("ferroloop._network")?.getattr("DatagramTransportClass")?.unbind())
        })?;
        Ok(class.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let refs = refs(py)?;
        let st = lock(&self.state);
        let mut info = vec!["DatagramTransport".to_owned()];
        if st.sock.is_none() {
            info.push("closed".to_owned());
        } else if st.closing {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        if st.sock.is_some() && !self.event_loop.get().is_closed() {
            info.push(format!("read={}", if st.reading { "polling" } else { "idle" }));
            let writing = if st.buffer.is_empty() { "idle" } else { "polling" };
            let size = if refs.size_by_sum { st.buffered_bytes as i64 } else { st.buffer_size };
            info.push(format!("write=<{writing}, bufsize={size}>"));
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.extra)?;
        if let Some(address) = &self.address {
            visit.call(address)?;
        }
        // try_lock: the collector can run while the loop thread holds the
        // lock; skipping a visit only keeps objects alive longer.
        if let Ok(st) = self.state.try_lock() {
            for obj in [&st.protocol, &st.datagram_received, &st.sock, &st.write_context].into_iter().flatten() {
                visit.call(obj)?;
            }
            visit.call(&st.read_context)?;
            for entry in &st.buffer {
                if let Some(addr) = &entry.addr {
                    visit.call(addr)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut st) = self.state.try_lock() {
            let dropped = (st.protocol.take(), st.datagram_received.take(), st.write_context.take());
            drop(st);
            drop(dropped);
        }
    }
}

impl Drop for DatagramTransport {
    /// asyncio's `__del__`: warn about a transport dropped unclosed and close
    /// its socket (through the C-level `_socket.socket.close`, which works
    /// even after the collector cleared the socket's attributes).
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(sock) = st.sock.take() else { return };
        let fd = self.fd;
        Python::attach(|py| {
            let Some(refs) = REFS.get(py) else { return };
            let resource_warning = py.get_type::<pyo3::exceptions::PyResourceWarning>();
            let message = format!("unclosed transport <DatagramTransport fd={fd}>");
            if let Err(err) = refs.warn.bind(py).call1((message, resource_warning)) {
                err.write_unraisable(py, None);
            }
            if let Err(err) = refs.socket_close.bind(py).call1((sock.bind(py),)) {
                err.write_unraisable(py, None);
            }
        });
    }
}

/// `callable(a, b)` through vectorcall with borrowed arguments, so that the
/// loop's reference to the data stays the only one (see `ReadBytes`).
fn call_with_two_args(callable: &Bound<'_, PyAny>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = callable.py();
    // Slot 0 is scratch space that PY_VECTORCALL_ARGUMENTS_OFFSET lets the
    // callee use.
    let mut args = [std::ptr::null_mut(), a.as_ptr(), b.as_ptr()];
    // SAFETY: the GIL is held; the callable and both arguments are live for
    // the call, the vector holds two borrowed references after its scratch
    // slot, and a non-null result is a new reference released here.
    unsafe {
        let result = thread_exit::vectorcall(callable.as_ptr(), args.as_mut_ptr().add(1), 2 | pyo3::ffi::PY_VECTORCALL_ARGUMENTS_OFFSET);
        if result.is_null() {
            return Err(PyErr::fetch(py));
        }
        pyo3::ffi::Py_DECREF(result);
    }
    Ok(())
}
