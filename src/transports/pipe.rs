//! `ReadPipeTransport` and `WritePipeTransport`: asyncio's Unix pipe
//! transports (`connect_read_pipe`, `connect_write_pipe`, a subprocess's
//! standard streams) in Rust.
//!
//! As with `StreamTransport`, the fd is handed to the poller once,
//! edge-triggered for both directions, and readiness queues the transport
//! itself. Every edge is consumed: a read that fills the 256 KiB buffer
//! re-queues the transport, a write goes on until the kernel says EAGAIN.
//! The Python glue (`ferroloop._network`) checks the file kind, sets
//! non-blocking mode and schedules `connection_made`, as asyncio's
//! constructors do; what follows it step by step is
//! `unix_events._UnixReadPipeTransport` / `_UnixWritePipeTransport`.
//!
//! One fd can carry a read and a write transport at once (a pty master
//! given to both `connect_read_pipe` and `connect_write_pipe`): the poller
//! then holds them as one `Attached::PipePair`.
//!
//! The write buffer keeps a `bytes` it has to wait with by reference; only
//! mutable buffers are copied.
//!
//! Both classes have an instance `__dict__`, as asyncio's Python ones do:
//! tests (CPython's among them) replace methods such as `pause_reading`
//! on a transport.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::exceptions::{PyAssertionError, PyNotImplementedError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::read_bytes::with_read_scratch;
use super::syscalls::os_error;
use super::shared::{report_to_loop, tell_protocol, water_marks, DEFAULT_HIGH_WATER};
use super::Attached;
use crate::event_loop::handles::{closed_error, in_context, Scheduled};
use crate::event_loop::{copy_current_context, LoopCore};
use crate::readiness::Poller;
use crate::support::buffers::with_bytes;
use crate::support::sync::lock;
use crate::support::thread_exit;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// iovecs handed to one `writev`.
const MAX_IOVECS: usize = 64;

struct Refs {
    logger: Py<PyAny>,
    warn: Py<PyAny>,
    /// 3.10's read transport has no `is_reading()` of its own, and starts
    /// reading even if paused before `connection_made` ran.
    read_pipe_310: bool,
    read_class: Py<PyAny>,
    write_class: Py<PyAny>,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let network = py.import("ferroloop._pipes")?;
        Ok(Refs {
            logger: py.import("logging")?.call_method1("getLogger", ("asyncio",))?.unbind(),
            warn: py.import("warnings")?.getattr("warn")?.unbind(),
            read_pipe_310: py.version_info() < (3, 11),
            read_class: network.getattr("ReadPipeTransportClass")?.unbind(),
            write_class: network.getattr("WritePipeTransportClass")?.unbind(),
        })
    })
}

fn debug_log(py: Python<'_>, level: &str, message: &str, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    refs(py)?.logger.bind(py).call_method1(level, (message, transport))?;
    Ok(())
}

enum Progress {
    Done(usize),
    WouldBlock,
}

fn classify(result: isize) -> io::Result<Progress> {
    if result >= 0 {
        return Ok(Progress::Done(result as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Progress::WouldBlock),
        _ => Err(err),
    }
}

/// One `read` into `buf`, retried on EINTR.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<Progress> {
    loop {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for
        // the duration of the call; an invalid fd only makes read fail.
        let result = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match classify(result) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads this large or larger skip the scratch buffer (see `read_ready`).
const DIRECT_READ_MIN: usize = 4096;
const MAX_READ: usize = super::read_bytes::MAX_READ;

/// What FIONREAD says is waiting in the pipe, socket or tty; None where it
/// is not supported or nothing is there.
fn bytes_available(fd: RawFd) -> Option<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to
    // a live local; an fd that does not support it only makes ioctl fail.
    let result = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut count as *mut libc::c_int) };
    (result == 0 && count > 0).then_some(count as usize)
}

/// One `read` of up to `size` bytes straight into a new `bytes`. Ok(None)
/// when it would block or hit EOF (the scratch path then reports which).
fn read_into_new_bytes(py: Python<'_>, fd: RawFd, size: usize) -> io::Result<Option<Bound<'_, PyBytes>>> {
    // SAFETY: with a NULL source PyBytes_FromStringAndSize allocates an
    // uninitialised object of `size` bytes, owned by the returned Bound. It
    // is filled by `read` before any Python code can see it, and only its
    // first `n` bytes are ever exposed (copied into a fresh object below
    // when the read was short).
    unsafe {
        let raw = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as pyo3::ffi::Py_ssize_t);
        let Ok(object) = Bound::from_owned_ptr_or_err(py, raw) else {
            return Ok(None);
        };
        let storage = pyo3::ffi::PyBytes_AsString(object.as_ptr()) as *mut u8;
        let buffer = std::slice::from_raw_parts_mut(storage, size);
        match read_fd(fd, buffer)? {
            Progress::Done(0) | Progress::WouldBlock => Ok(None),
            Progress::Done(n) if n == size => Ok(Some(object.cast_into_unchecked::<PyBytes>())),
            Progress::Done(n) => Ok(Some(PyBytes::new(py, &buffer[..n]))),
        }
    }
}

/// `writev` of `slices` until all is written or the kernel says EAGAIN.
/// Returns the bytes written; an error after some bytes went out is left
/// for the next write to report.
fn write_until_blocked(fd: RawFd, slices: &[&[u8]]) -> io::Result<usize> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(slices.len().min(MAX_IOVECS));
        for slice in slices {
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            let rest = &slice[skip..];
            skip = 0;
            iovecs.push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
            if iovecs.len() == MAX_IOVECS {
                break;
            }
        }
        // SAFETY: every iovec points into a slice borrowed for the whole
        // call; writev only reads them. An invalid fd only makes it fail.
        let result = unsafe { libc::writev(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int) };
        match classify(result) {
            Ok(Progress::Done(0)) => break,
            Ok(Progress::Done(n)) => written += n,
            Ok(Progress::WouldBlock) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if written > 0 => {
                drop(err);
                break;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

/// Bytes accepted but not yet written: `bytes` objects by reference,
/// copies of anything mutable.
enum Chunk {
    Shared { bytes: Py<PyBytes>, start: usize },
    Owned { data: Vec<u8>, start: usize },
}

impl Chunk {
    fn as_slice<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            Chunk::Shared { bytes, start } => &bytes.as_bytes(py)[*start..],
            Chunk::Owned { data, start } => &data[*start..],
        }
    }
}

#[derive(Default)]
struct PipeBuffer {
    chunks: VecDeque<Chunk>,
    len: usize,
}

impl PipeBuffer {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_shared(&mut self, bytes: Py<PyBytes>, start: usize, len: usize) {
        self.len += len - start;
        self.chunks.push_back(Chunk::Shared { bytes, start });
    }

    fn push_copy(&mut self, data: &[u8]) {
        self.len += data.len();
        if let Some(Chunk::Owned { data: tail, start: 0 }) = self.chunks.back_mut() {
            tail.extend_from_slice(data);
            return;
        }
        self.chunks.push_back(Chunk::Owned { data: data.to_vec(), start: 0 });
    }

    fn slices<'a>(&'a self, py: Python<'a>) -> Vec<&'a [u8]> {
        self.chunks.iter().take(MAX_IOVECS).map(|c| c.as_slice(py)).collect()
    }

    fn consume(&mut self, py: Python<'_>, mut count: usize) {
        self.len -= count.min(self.len);
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else { return };
            let available = front.as_slice(py).len();
            if count < available {
                match front {
                    Chunk::Shared { start, .. } | Chunk::Owned { start, .. } => *start += count,
                }
                return;
            }
            count -= available;
            self.chunks.pop_front();
        }
    }

    fn clear(&mut self) -> VecDeque<Chunk> {
        self.len = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// Which of an fd's pipe transports a poller entry is.
pub enum PipeEnd {
    Read(Py<ReadPipeTransport>),
    Write(Py<WritePipeTransport>),
}

/// Hands `fd` to a pipe transport, pairing it with the other direction's
/// transport already on the same fd.
fn attach_pipe(py: Python<'_>, poller: &Poller, fd: RawFd, end: PipeEnd) -> PyResult<()> {
    let owner = match (poller.detach(fd), end) {
        (Some(Attached::WritePipe(w)), PipeEnd::Read(r)) => Attached::PipePair(r, w),
        (Some(Attached::ReadPipe(r)), PipeEnd::Write(w)) => Attached::PipePair(r, w),
        (Some(Attached::PipePair(_, w)), PipeEnd::Read(r)) => Attached::PipePair(r, w),
        (Some(Attached::PipePair(r, _)), PipeEnd::Write(w)) => Attached::PipePair(r, w),
        (_, PipeEnd::Read(r)) => Attached::ReadPipe(r),
        (_, PipeEnd::Write(w)) => Attached::WritePipe(w),
    };
    let stale = poller.attach(fd, owner).map_err(|err| os_error(py, &err))?;
    for watcher in stale {
        watcher.retire(py);
    }
    Ok(())
}

/// Takes `fd` back from the transport leaving it; a paired transport of the
/// other direction stays attached alone.
fn detach_pipe(py: Python<'_>, poller: &Poller, fd: RawFd, leaving: &Bound<'_, PyAny>) {
    let remaining = match poller.detach(fd) {
        Some(Attached::PipePair(r, w)) => {
            if r.bind(py).is(leaving) {
                Some(Attached::WritePipe(w))
            } else {
                Some(Attached::ReadPipe(r))
            }
        }
        Some(other) if !other.as_object(py).is(leaving) => Some(other),
        _ => None,
    };
    if let Some(owner) = remaining {
        if let Ok(stale) = poller.attach(fd, owner) {
            drop(stale);
        }
    }
}

fn call_soon(event_loop: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, arg: Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    event_loop.call_method1(intern!(py, "call_soon"), (callback, arg))?;
    Ok(())
}

/// The transport's `__del__`: warn about a transport dropped unclosed and
/// close its pipe.
fn close_unclosed(name: &str, fd: RawFd, pipe: Py<PyAny>) {
    Python::attach(|py| {
        let Some(refs) = REFS.get(py) else { return };
        let resource_warning = py.get_type::<pyo3::exceptions::PyResourceWarning>();
        let message = format!("unclosed transport <{name} fd={fd}>");
        if let Err(err) = refs.warn.bind(py).call1((message, resource_warning)) {
            err.write_unraisable(py, None);
        }
        if let Err(err) = pipe.bind(py).call_method0("close") {
            err.write_unraisable(py, None);
        }
    });
}

fn extra_info<'py>(extra: &Bound<'py, PyDict>, name: &Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let py = extra.py();
    match extra.get_item(name)? {
        Some(value) => Ok(value),
        None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
    }
}

// ---------------------------------------------------------------- reading

struct ReadState {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    closing: bool,
    paused: bool,
    /// asyncio's reader registration: reads are delivered only while set.
    reading: bool,
    read_pending: bool,
    /// A hang-up came: reads go on until EOF, even after a short one.
    peer_closed: bool,
    queued: bool,
    registered: bool,
}

#[pyclass(module = "ferroloop._native", frozen, weakref, dict)]
pub struct ReadPipeTransport {
    /// True in every constructed transport; false in the zeroed memory the
    /// garbage collector can visit while the object is still being made.
    constructed: bool,
    fd: RawFd,
    event_loop: Py<LoopCore>,
    extra: Py<PyDict>,
    context: Py<PyAny>,
    state: Mutex<ReadState>,
}

impl ReadPipeTransport {
    pub fn note_ready(&self, readable: bool, hung_up: bool) -> bool {
        let mut st = lock(&self.state);
        if st.pipe.is_none() {
            return false;
        }
        st.peer_closed |= hung_up;
        st.read_pending |= readable || hung_up;
        if st.read_pending && st.reading && !st.queued {
            st.queued = true;
            return true;
        }
        false
    }

    fn queue_locked(slf: &Bound<'_, Self>, st: &mut ReadState) {
        if !st.queued && st.pipe.is_some() {
            st.queued = true;
            let this = slf.get();
            lock(&this.event_loop.get().sched).ready.push_back(Scheduled::Io(Attached::ReadPipe(slf.clone().unbind())));
        }
    }

    pub fn process(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let context = slf.get().context.bind(py);
        in_context(py, context, || Self::read_ready(slf))?
    }

    /// asyncio's `_read_ready`: one read of up to `max_size` bytes. An
    /// error from `data_received` escapes to the loop's exception handler,
    /// as from asyncio's reader callback; the transport stays readable.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut st = lock(&this.state);
            st.queued = false;
            if !st.reading || !st.read_pending {
                return Ok(());
            }
            match &st.protocol {
                Some(p) => p.clone_ref(py),
                None => return Ok(()),
            }
        };
        let event_loop = this.event_loop.get();
        // With FIONREAD's count, a large read goes straight into a `bytes`
        // of that size: no copy out of the scratch buffer.
        if let Some(available) = bytes_available(this.fd).filter(|n| *n >= DIRECT_READ_MIN) {
            match read_into_new_bytes(py, this.fd, available.min(MAX_READ)) {
                Ok(Some(data)) => {
                    let full = data.as_bytes().len() == MAX_READ;
                    return Self::deliver(slf, protocol, data, full, None);
                }
                Ok(None) => {}
                Err(err) => {
                    lock(&this.state).read_pending = false;
                    return Self::fatal_error(slf, os_error(py, &err), "Fatal read error on pipe transport");
                }
            }
        }
        let received = with_read_scratch(|buf| match read_fd(this.fd, buf) {
            Ok(Progress::Done(n)) => Ok(Some((event_loop.read_bytes.bytes_from(py, &buf[..n]), n == buf.len()))),
            Ok(Progress::WouldBlock) => Ok(None),
            Err(err) => Err(err),
        });
        match received {
            Ok(None) => {
                lock(&this.state).read_pending = false;
                Ok(())
            }
            Err(err) => {
                lock(&this.state).read_pending = false;
                Self::fatal_error(slf, os_error(py, &err), "Fatal read error on pipe transport")
            }
            Ok(Some((received, _))) if received.data.as_bytes().is_empty() => {
                lock(&this.state).read_pending = false;
                Self::on_eof(slf, protocol.bind(py))
            }
            Ok(Some((received, full))) => {
                let data = received.data.clone();
                Self::deliver(slf, protocol, data, full, Some(received))
            }
        }
    }

    /// Hands one read to `data_received`; the transport stays queued while
    /// more may be waiting.
    fn deliver(
        slf: &Bound<'_, Self>,
        protocol: Py<PyAny>,
        data: Bound<'_, PyBytes>,
        full: bool,
        reusable: Option<super::read_bytes::Received<'_>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.get();
        event_loop.io_counters.add_received(data.as_bytes().len());
        {
            let mut st = lock(&this.state);
            st.read_pending = full || st.peer_closed;
        }
        let delivered = thread_exit::call_method(protocol.bind(py), intern!(py, "data_received"), (&data,));
        drop(protocol);
        drop(data);
        if let Some(received) = reusable {
            event_loop.read_bytes.give_back(received);
        }
        let mut st = lock(&this.state);
        if st.read_pending && st.reading {
            Self::queue_locked(slf, &mut st);
        }
        drop(st);
        delivered.map(drop)
    }

    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.event_loop.get().debug_enabled() {
            debug_log(py, "info", "%r was closed by peer", slf)?;
        }
        {
            let mut st = lock(&this.state);
            st.closing = true;
            st.reading = false;
        }
        let event_loop = this.event_loop.bind(py);
        event_loop.call_method1(intern!(py, "call_soon"), (protocol.getattr(intern!(py, "eof_received"))?,))?;
        call_soon(event_loop, slf.getattr(intern!(py, "_call_connection_lost"))?, py.None().into_bound(py))
    }

    /// asyncio's `_fatal_error`: EIO (a pty whose other side closed) is
    /// expected and only logged in debug mode.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = err.into_value(py).into_bound(py);
        let is_eio = exc.is_instance_of::<PyOSError>()
            && exc.getattr(intern!(py, "errno")).and_then(|e| e.extract::<i32>()).ok() == Some(libc::EIO);
        if is_eio {
            if this.event_loop.get().debug_enabled() {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "exc_info"), true)?;
                refs(py)?.logger.bind(py).call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else {
            let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
            report_to_loop(this.event_loop.bind(py), slf.as_any(), message, &exc, protocol.as_ref().map(|p| p.bind(py)))?;
        }
        Self::close_with(slf, exc.into_any())
    }

    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = lock(&slf.get().state);
            st.closing = true;
            st.reading = false;
        }
        call_soon(slf.get().event_loop.bind(py), slf.getattr(intern!(py, "_call_connection_lost"))?, exc)
    }

    fn is_reading_now(&self) -> bool {
        let st = lock(&self.state);
        !st.paused && !st.closing
    }
}

#[pymethods]
impl ReadPipeTransport {
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>, pipe: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>, extra: &Bound<'_, PyDict>) -> PyResult<Self> {
        let py = pipe.py();
        refs(py)?;
        let event_loop = event_loop.cast::<LoopCore>()?.clone().unbind();
        let fd: RawFd = pipe.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let state = ReadState {
            pipe: Some(pipe.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
            closing: false,
            paused: false,
            reading: false,
            read_pending: false,
            peer_closed: false,
            queued: false,
            registered: false,
        };
        Ok(Self { constructed: true, fd, event_loop, extra: extra.clone().unbind(), context: copy_current_context(py)?, state: Mutex::new(state) })
    }

    #[classattr]
    fn max_size() -> usize {
        super::read_bytes::MAX_READ
    }

    /// Scheduled right after `connection_made`: asyncio adds its reader
    /// here, unless reading was paused (or the transport closed) meanwhile.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let st = lock(&this.state);
            if st.pipe.is_none() || (!refs(py)?.read_pipe_310 && (st.paused || st.closing)) {
                return Ok(());
            }
        }
        if this.event_loop.get().is_closed() {
            return Err(closed_error());
        }
        Self::add_reader(slf)
    }

    fn add_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let needs_attach = !lock(&this.state).registered;
        if needs_attach {
            attach_pipe(py, &this.event_loop.get().poller, this.fd, PipeEnd::Read(slf.clone().unbind()))?;
        }
        let mut st = lock(&this.state);
        st.registered = true;
        st.reading = true;
        if st.read_pending {
            Self::queue_locked(slf, &mut st);
        }
        Ok(())
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        if refs(py)?.read_pipe_310 {
            return Err(PyNotImplementedError::new_err(()));
        }
        Ok(self.is_reading_now())
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = lock(&this.state);
            if st.paused || st.closing {
                return Ok(());
            }
            st.paused = true;
            st.reading = false;
        }
        if this.event_loop.get().debug_enabled() {
            debug_log(slf.py(), "debug", "%r pauses reading", slf)?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        {
            let mut st = lock(&this.state);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        if this.event_loop.get().is_closed() {
            return Err(closed_error());
        }
        Self::add_reader(slf)?;
        if this.event_loop.get().debug_enabled() {
            debug_log(slf.py(), "debug", "%r resumes reading", slf)?;
        }
        Ok(())
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let old = lock(&self.state).protocol.replace(protocol.clone().unbind());
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn is_closing(&self) -> bool {
        lock(&self.state).closing
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if lock(&slf.get().state).closing {
            return Ok(());
        }
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (exc, message="Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc), message)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
        let Some(protocol) = protocol else { return Ok(()) };
        let outcome = thread_exit::call_method(protocol.bind(py), intern!(py, "connection_lost"), (exc,)).map(drop);
        let (pipe, old_protocol, registered) = {
            let mut st = lock(&this.state);
            st.reading = false;
            st.closing = true;
            (st.pipe.take(), st.protocol.take(), std::mem::replace(&mut st.registered, false))
        };
        if registered {
            detach_pipe(py, &this.event_loop.get().poller, this.fd, slf.as_any());
        }
        let closed = match &pipe {
            Some(pipe) => pipe.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop((pipe, old_protocol));
        outcome.and(closed)
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        extra_info(self.extra.bind(py), name, default)
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).pipe.as_ref().map(|p| p.clone_ref(py))
    }

    /// Tests (asyncio's among them) set it to None to forget the pipe.
    #[setter(_pipe)]
    fn set_pipe(&self, pipe: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut lock(&self.state).pipe, pipe);
        drop(old);
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        lock(&self.state).pipe.as_ref().map(|_| self.event_loop.clone_ref(py))
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.is_closing()
    }

    #[getter]
    fn _paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// `isinstance(transport, asyncio.ReadTransport)` holds (see
    /// `StreamTransport.__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(refs(py)?.read_class.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let st = lock(&self.state);
        let mut info = vec!["ReadPipeTransport".to_owned()];
        if st.pipe.is_none() {
            info.push("closed".to_owned());
        } else if st.closing {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        if st.pipe.is_some() && !self.event_loop.get().is_closed() {
            info.push(if st.reading { "polling" } else { "idle" }.to_owned());
        } else if st.pipe.is_some() {
            // What asyncio shows once its loop has no selector any more.
            info.push("open".to_owned());
        } else {
            info.push("closed".to_owned());
        }
        format!("<{}>", info.join(" "))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // With an instance __dict__, the base tp_new allocates the dict after
        // the object is tracked and before its fields are written; a
        // collection in between visits zeroed memory, which holds no
        // references yet.
        if !self.constructed {
            return Ok(());
        }
        visit.call(&self.event_loop)?;
        visit.call(&self.extra)?;
        visit.call(&self.context)?;
        if let Ok(st) = self.state.try_lock() {
            for obj in [&st.protocol, &st.pipe].into_iter().flatten() {
                visit.call(obj)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut st) = self.state.try_lock() {
            let dropped = st.protocol.take();
            drop(st);
            drop(dropped);
        }
    }
}

impl Drop for ReadPipeTransport {
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(pipe) = st.pipe.take() {
            close_unclosed("ReadPipeTransport", self.fd, pipe);
        }
    }
}

// ---------------------------------------------------------------- writing

struct WriteState {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffer: PipeBuffer,
    conn_lost: u32,
    /// close() or write_eof() was called, or the transport failed.
    closing: bool,
    /// Sockets and FIFOs are watched for readability: that is the reader
    /// closing its end (or a socket peer sending, which asyncio treats
    /// the same way).
    watching_reader: bool,
    /// Readability or a hang-up arrived while watched.
    peer_closed: bool,
    write_pending: bool,
    queued: bool,
    registered: bool,
    high_water: f64,
    low_water: f64,
    limits_given: Option<(Py<PyAny>, Py<PyAny>)>,
    protocol_paused: bool,
    /// asyncio adds its writer callback when a write() has to wait, so the
    /// writes that follow (and resume_writing) run in a copy of the context
    /// that write() was called in.
    writer_context: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._native", frozen, weakref, dict)]
pub struct WritePipeTransport {
    /// True in every constructed transport; false in the zeroed memory the
    /// garbage collector can visit while the object is still being made.
    constructed: bool,
    fd: RawFd,
    event_loop: Py<LoopCore>,
    extra: Py<PyDict>,
    context: Py<PyAny>,
    state: Mutex<WriteState>,
}

impl WritePipeTransport {
    pub fn note_ready(&self, readable: bool, writable: bool, hung_up: bool) -> bool {
        let mut st = lock(&self.state);
        if st.pipe.is_none() {
            return false;
        }
        st.peer_closed |= st.watching_reader && (readable || hung_up);
        st.write_pending |= writable;
        let has_work = st.peer_closed || (st.write_pending && !st.buffer.is_empty());
        if has_work && !st.queued {
            st.queued = true;
            return true;
        }
        false
    }

    pub fn process(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let peer_closed = {
            let st = lock(&this.state);
            st.peer_closed && st.watching_reader
        };
        if peer_closed {
            return in_context(py, this.context.bind(py), || Self::process_in_context(slf))?;
        }
        let writer_context = lock(&this.state).writer_context.as_ref().map(|c| c.clone_ref(py));
        match writer_context {
            Some(context) => in_context(py, context.bind(py), || Self::process_in_context(slf))?,
            None => in_context(py, this.context.bind(py), || Self::process_in_context(slf))?,
        }
    }

    fn process_in_context(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (peer_closed, write) = {
            let mut st = lock(&this.state);
            st.queued = false;
            if st.pipe.is_none() {
                return Ok(());
            }
            let peer_closed = std::mem::take(&mut st.peer_closed) && st.watching_reader;
            let write = st.write_pending && !st.buffer.is_empty();
            st.write_pending = false;
            (peer_closed, write)
        };
        if peer_closed {
            // asyncio's `_read_ready` on the write end: the reader is gone.
            if this.event_loop.get().debug_enabled() {
                debug_log(py, "info", "%r was closed by peer", slf)?;
            }
            let buffered = !lock(&this.state).buffer.is_empty();
            let exc = if buffered {
                py.get_type::<pyo3::exceptions::PyBrokenPipeError>().call0()?
            } else {
                py.None().into_bound(py)
            };
            return Self::close_with(slf, exc);
        }
        if write {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let failure = {
            let mut st = lock(&this.state);
            if st.buffer.is_empty() || st.pipe.is_none() {
                return Ok(());
            }
            let outcome = write_until_blocked(this.fd, &st.buffer.slices(py));
            match outcome {
                Ok(written) => {
                    this.event_loop.get().io_counters.add_sent(written);
                    st.buffer.consume(py, written);
                    if !st.buffer.is_empty() {
                        return Ok(());
                    }
                    None
                }
                Err(err) => {
                    let dropped = st.buffer.clear();
                    st.conn_lost += 1;
                    drop(st);
                    drop(dropped);
                    Some(err)
                }
            }
        };
        if let Some(err) = failure {
            return Self::fatal_error(slf, os_error(py, &err), "Fatal write error on pipe transport");
        }
        Self::maybe_resume_protocol(slf)?; // may write more
        let closing = {
            let mut st = lock(&this.state);
            if st.closing && st.buffer.is_empty() {
                st.watching_reader = false;
                true
            } else {
                false
            }
        };
        if closing {
            Self::call_connection_lost(slf, py.None().into_bound(py))?;
        }
        Ok(())
    }

    fn ensure_registered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if lock(&this.state).registered {
            return Ok(());
        }
        if this.event_loop.get().is_closed() {
            return Err(closed_error());
        }
        attach_pipe(slf.py(), &this.event_loop.get().poller, this.fd, PipeEnd::Write(slf.clone().unbind()))?;
        lock(&this.state).registered = true;
        Ok(())
    }

    /// asyncio's `_fatal_error`: OSErrors (the reader going away) are only
    /// logged in debug mode.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = err.into_value(py).into_bound(py);
        if exc.is_instance_of::<PyOSError>() {
            if this.event_loop.get().debug_enabled() {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "exc_info"), true)?;
                refs(py)?.logger.bind(py).call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else {
            let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
            report_to_loop(this.event_loop.bind(py), slf.as_any(), message, &exc, protocol.as_ref().map(|p| p.bind(py)))?;
        }
        Self::close_with(slf, exc.into_any())
    }

    /// asyncio's `_close`: drop what is buffered, stop watching, and call
    /// `connection_lost(exc)` soon.
    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut st = lock(&slf.get().state);
            st.closing = true;
            st.watching_reader = false;
            st.buffer.clear()
        };
        drop(dropped);
        call_soon(slf.get().event_loop.bind(py), slf.getattr(intern!(py, "_call_connection_lost"))?, exc)
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = lock(&this.state).protocol.as_ref().map(|p| p.clone_ref(py));
        let Some(protocol) = protocol else { return Ok(()) };
        let outcome = thread_exit::call_method(protocol.bind(py), intern!(py, "connection_lost"), (exc,)).map(drop);
        let (pipe, old_protocol, registered, dropped) = {
            let mut st = lock(&this.state);
            st.closing = true;
            st.watching_reader = false;
            (st.pipe.take(), st.protocol.take(), std::mem::replace(&mut st.registered, false), st.buffer.clear())
        };
        if registered {
            detach_pipe(py, &this.event_loop.get().poller, this.fd, slf.as_any());
        }
        let closed = match &pipe {
            Some(pipe) => pipe.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop((pipe, old_protocol, dropped));
        outcome.and(closed)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = lock(&slf.get().state);
            if st.buffer.len as f64 <= st.high_water || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        match protocol {
            Some(protocol) => {
                let event_loop = slf.get().event_loop.bind(py);
                tell_protocol(event_loop, slf.as_any(), protocol.bind(py), intern!(py, "pause_writing"), "protocol.pause_writing() failed")
            }
            None => Ok(()),
        }
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = lock(&slf.get().state);
            if !st.protocol_paused || st.buffer.len as f64 > st.low_water {
                return Ok(());
            }
            st.protocol_paused = false;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        match protocol {
            Some(protocol) => {
                let event_loop = slf.get().event_loop.bind(py);
                tell_protocol(event_loop, slf.as_any(), protocol.bind(py), intern!(py, "resume_writing"), "protocol.resume_writing() failed")
            }
            None => Ok(()),
        }
    }

    /// `write()`'s first attempt, straight to the fd. Returns the bytes
    /// written, or the error that ends the transport.
    fn write_now(&self, bytes: &[u8]) -> Result<usize, io::Error> {
        match write_until_blocked(self.fd, &[bytes]) {
            Ok(n) => {
                self.event_loop.get().io_counters.add_sent(n);
                Ok(n)
            }
            Err(err) => Err(err),
        }
    }
}

#[pymethods]
impl WritePipeTransport {
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>, pipe: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>, extra: &Bound<'_, PyDict>) -> PyResult<Self> {
        let py = pipe.py();
        refs(py)?;
        let event_loop = event_loop.cast::<LoopCore>()?.clone().unbind();
        let fd: RawFd = pipe.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let state = WriteState {
            pipe: Some(pipe.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
            buffer: PipeBuffer::default(),
            conn_lost: 0,
            closing: false,
            watching_reader: false,
            peer_closed: false,
            write_pending: false,
            queued: false,
            registered: false,
            high_water: DEFAULT_HIGH_WATER as f64,
            low_water: (DEFAULT_HIGH_WATER / 4) as f64,
            limits_given: None,
            protocol_paused: false,
            writer_context: None,
        };
        Ok(Self { constructed: true, fd, event_loop, extra: extra.clone().unbind(), context: copy_current_context(py)?, state: Mutex::new(state) })
    }

    /// Scheduled after `connection_made` for sockets and FIFOs: asyncio
    /// starts watching the write end for readability here, which is how it
    /// learns that the reader closed its end.
    fn _start_watching(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let st = lock(&slf.get().state);
            if st.pipe.is_none() || st.closing {
                return Ok(());
            }
        }
        Self::ensure_registered(slf)?;
        let mut st = lock(&slf.get().state);
        st.watching_reader = true;
        if st.peer_closed && !st.queued {
            st.queued = true;
            lock(&slf.get().event_loop.get().sched).ready.push_back(Scheduled::Io(Attached::WritePipe(slf.clone().unbind())));
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let is_bytes = data.is_instance_of::<PyBytes>();
        if !(is_bytes || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        {
            let mut st = lock(&this.state);
            if st.conn_lost > 0 || st.closing {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                drop(st);
                if warn {
                    refs(py)?
                        .logger
                        .bind(py)
                        .call_method1(intern!(py, "warning"), ("pipe closed by peer or os.write(pipe, data) raised exception.",))?;
                }
                return Ok(());
            }
            if !st.buffer.is_empty() {
                if is_bytes {
                    let bytes = data.cast::<PyBytes>()?;
                    let len = bytes.as_bytes().len();
                    st.buffer.push_shared(bytes.clone().unbind(), 0, len);
                    drop(st);
                } else {
                    let copied = with_bytes(data, |bytes| st.buffer.push_copy(bytes));
                    drop(st);
                    copied?;
                }
                return Self::maybe_pause_protocol(slf);
            }
        }
        // The buffer is empty: try to write at once.
        let attempt = with_bytes(data, |bytes| (this.write_now(bytes), bytes.len()));
        let (written, len) = match attempt {
            Ok((Ok(written), len)) => (written, len),
            Ok((Err(err), _)) => {
                lock(&this.state).conn_lost += 1;
                return Self::fatal_error(slf, os_error(py, &err), "Fatal write error on pipe transport");
            }
            Err(err) => {
                lock(&this.state).conn_lost += 1;
                return Self::fatal_error(slf, err, "Fatal write error on pipe transport");
            }
        };
        if written == len {
            return Ok(());
        }
        // asyncio's `_add_writer` refuses a closed loop before the rest is
        // buffered: it could never be written.
        if this.event_loop.get().is_closed() {
            return Err(closed_error());
        }
        Self::ensure_registered(slf)?;
        let writer_context = copy_current_context(py)?;
        {
            let mut st = lock(&this.state);
            st.write_pending = false;
            let previous = st.writer_context.replace(writer_context);
            drop(previous);
            if is_bytes {
                st.buffer.push_shared(data.cast::<PyBytes>()?.clone().unbind(), written, len);
            } else {
                with_bytes(data, |bytes| st.buffer.push_copy(&bytes[written..]))?;
            }
        }
        Self::maybe_pause_protocol(slf)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// asyncio's write pipe transport is a `transports.Transport` through
    /// `_FlowControlMixin`, whose read-side methods are abstract.
    fn pause_reading(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn resume_reading(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn is_reading(&self) -> PyResult<bool> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = lock(&slf.get().state);
            if st.closing {
                return Ok(());
            }
            if st.pipe.is_none() {
                return Err(PyAssertionError::new_err(()));
            }
            st.closing = true;
            if !st.buffer.is_empty() {
                return Ok(());
            }
            st.watching_reader = false;
        }
        call_soon(slf.get().event_loop.bind(py), slf.getattr(intern!(py, "_call_connection_lost"))?, py.None().into_bound(py))
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let open = {
            let st = lock(&slf.get().state);
            st.pipe.is_some() && !st.closing
        };
        if open {
            Self::write_eof(slf)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (exc, message="Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc), message)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc)
    }

    fn is_closing(&self) -> bool {
        lock(&self.state).closing
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let old = lock(&self.state).protocol.replace(protocol.clone().unbind());
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn get_write_buffer_size(&self) -> usize {
        lock(&self.state).buffer.len
    }

    /// asyncio's `_FlowControlMixin._set_write_buffer_limits`: any numbers
    /// with `high >= low >= 0`.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
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

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        extra_info(self.extra.bind(py), name, default)
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.state).pipe.as_ref().map(|p| p.clone_ref(py))
    }

    /// Tests (asyncio's among them) set it to None to forget the pipe.
    #[setter(_pipe)]
    fn set_pipe(&self, pipe: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut lock(&self.state).pipe, pipe);
        drop(old);
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        lock(&self.state).pipe.as_ref().map(|_| self.event_loop.clone_ref(py))
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.is_closing()
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        lock(&self.state).conn_lost
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        lock(&self.state).protocol_paused
    }

    /// `isinstance(transport, asyncio.WriteTransport)` holds (see
    /// `StreamTransport.__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(refs(py)?.write_class.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let st = lock(&self.state);
        let mut info = vec!["WritePipeTransport".to_owned()];
        if st.pipe.is_none() {
            info.push("closed".to_owned());
        } else if st.closing {
            info.push("closing".to_owned());
        }
        info.push(format!("fd={}", self.fd));
        if st.pipe.is_some() && !self.event_loop.get().is_closed() {
            info.push(if st.buffer.is_empty() { "idle" } else { "polling" }.to_owned());
            info.push(format!("bufsize={}", st.buffer.len));
        } else if st.pipe.is_some() {
            info.push("open".to_owned());
        } else {
            info.push("closed".to_owned());
        }
        format!("<{}>", info.join(" "))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // With an instance __dict__, the base tp_new allocates the dict after
        // the object is tracked and before its fields are written; a
        // collection in between visits zeroed memory, which holds no
        // references yet.
        if !self.constructed {
            return Ok(());
        }
        visit.call(&self.event_loop)?;
        visit.call(&self.extra)?;
        visit.call(&self.context)?;
        if let Ok(st) = self.state.try_lock() {
            for obj in [&st.protocol, &st.pipe, &st.writer_context].into_iter().flatten() {
                visit.call(obj)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut st) = self.state.try_lock() {
            let dropped = (st.protocol.take(), st.writer_context.take());
            drop(st);
            drop(dropped);
        }
    }
}

impl Drop for WritePipeTransport {
    fn drop(&mut self) {
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(pipe) = st.pipe.take() {
            close_unclosed("WritePipeTransport", self.fd, pipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(result, 0, "pipe2");
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: the fd was made by `pipe` above and is closed once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn writev_keeps_the_order_of_the_slices_and_stops_when_full() {
        let (r, w) = pipe();
        assert_eq!(write_until_blocked(w, &[b"ab", b"", b"cde"]).expect("write"), 5);
        let mut buf = [0u8; 16];
        match read_fd(r, &mut buf).expect("read") {
            Progress::Done(n) => assert_eq!(&buf[..n], b"abcde"),
            Progress::WouldBlock => panic!("data was written"),
        }
        assert!(matches!(read_fd(r, &mut buf), Ok(Progress::WouldBlock)));
        let big = vec![1u8; 1 << 20];
        let written = write_until_blocked(w, &[&big, &big]).expect("write");
        assert!(written > 0 && written < 2 << 20, "wrote {written}");
        close(r);
        close(w);
    }

    #[test]
    fn writing_to_a_pipe_without_reader_fails_with_epipe() {
        let (r, w) = pipe();
        close(r);
        // Python ignores SIGPIPE, and so does Rust's runtime; ignored here
        // again so that the test does not depend on either.
        // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let err = write_until_blocked(w, &[b"x"]).expect_err("no reader");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        close(w);
    }

    #[test]
    fn eof_reads_as_zero_bytes() {
        let (r, w) = pipe();
        close(w);
        let mut buf = [0u8; 4];
        assert!(matches!(read_fd(r, &mut buf), Ok(Progress::Done(0))));
        close(r);
    }
}
