//! The low-level socket API (`loop.sock_recv`, `sock_sendall`, ...) for
//! plain `socket.socket` objects, run natively.
//!
//! Each call returns a `SockCall`, an awaitable that behaves as the
//! coroutine asyncio's `async def sock_*` returns: nothing happens until it
//! is awaited; its first step tries the syscall and returns the result at
//! once when the socket is ready. Only when the call would block does it
//! create a future and wait; the poller then retries it straight from Rust
//! when the fd is ready and settles the future, with no Python callback,
//! handle or closure in between. The registration ends with the call
//! (completed, failed, cancelled or closed).
//!
//! A connect can also carry on as `create_connection` does once the socket
//! is connected (`connect_stream`): it makes the protocol and the native
//! stream transport, and returns `(transport, protocol)` once
//! `connection_made` has run.
//!
//! Other socket types (subclasses, SSL sockets, look-alikes) and arguments
//! the fast path does not handle go to the Python implementation in
//! `ferroloop._sockets`, which looks each method up on the object as asyncio
//! does.

use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyMemoryView, PyString, PyTuple, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use crate::support::thread_exit;
use crate::support::buffers::{with_bytes, with_writable_bytes};
use crate::event_loop::LoopCore;
use crate::readiness::{Direction, Watcher};
use crate::support::sync::lock;
use crate::transports::read_bytes::{with_read_scratch, MAX_READ};
use crate::transports::sockaddr::{self, RawAddr};
use crate::transports::stream_setup::{make_stream_transport, Known};
use crate::transports::syscalls::{self, os_error, Progress};

extern "C" {
    // Part of CPython's C API since 2.x (Include/cpython/bytesobject.h in
    // 3.10-3.14); socket.recv uses it the same way to shrink its result.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> std::os::raw::c_int;
}

/// What a call does each time it tries.
enum Operation {
    /// `sock.recv(size)` as a direct `recv(2)`.
    Recv { size: usize },
    /// `sock.recv_into(buffer)` as a direct `recv(2)` into its memory.
    RecvInto { buffer: Py<PyAny> },
    /// `sock.sendall(data)`: `send(2)` until all of it has gone.
    SendAll { data: Py<PyAny>, sent: usize },
    /// Any other method, called on the socket object each time (`accept`,
    /// `recvfrom`, `sendto`, ...); `accept` also makes the new socket
    /// non-blocking, as asyncio's `sock_accept` does.
    Method { name: Py<PyString>, args: Py<PyTuple>, accept: bool },
    /// `sock.connect(address)` for an address already resolved, as a direct
    /// `connect(2)` when `raw` holds it in a plain form; once it is under
    /// way, each retry reads `SO_ERROR`, as asyncio's callback does.
    Connect { address: Py<PyAny>, raw: Option<RawAddr>, started: bool },
}

impl Operation {
    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Operation::Recv { .. } => Ok(()),
            Operation::RecvInto { buffer } => visit.call(buffer),
            Operation::SendAll { data, .. } => visit.call(data),
            Operation::Method { args, .. } => visit.call(args),
            Operation::Connect { address, .. } => visit.call(address),
        }
    }
}

enum Stage {
    /// Not awaited yet.
    Created,
    /// Registered with the poller until the future is settled.
    Waiting { future: Py<PyAny>, fd: RawFd },
    /// `connect_stream` only: the transport is made and its
    /// `connection_made` scheduled; the caller resumes after it.
    Settling { transport: Py<PyAny>, protocol: Py<PyAny> },
    Finished,
}

struct CallState {
    /// Taken out while the call runs Python code, so that no lock is held
    /// across it.
    operation: Option<Operation>,
    stage: Stage,
}

/// One awaited `loop.sock_*()` call; see the module docs.
#[pyclass(module = "ferroloop._native", frozen)]
pub struct SockCall {
    event_loop: Py<LoopCore>,
    sock: Py<PyAny>,
    /// asyncio's method name, for `__qualname__`, repr and warnings.
    name: &'static str,
    direction: Direction,
    /// `connect_stream`'s set-up once connected.
    stream_setup: Option<StreamSetup>,
    state: Mutex<CallState>,
}

/// What `connect_stream` makes once the socket is connected.
struct StreamSetup {
    protocol_factory: Py<PyAny>,
    tcp: bool,
}

/// How one try ended.
enum Attempt {
    Done(Py<PyAny>),
    WouldBlock,
}

/// What a step hands back to whoever awaits the call.
enum Step {
    /// A future to wait on, or None: a bare yield, after which a Task
    /// resumes the call one loop iteration later.
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
}

struct Refs {
    socket_type: Py<PyType>,
    /// `ferroloop._sockets.SocketMethods`: the Python implementation.
    python_methods: Py<PyAny>,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let collections = py.import("collections.abc")?;
        collections.getattr("Coroutine")?.call_method1("register", (py.get_type::<SockCall>(),))?;
        Ok(Refs {
            socket_type: py.import("socket")?.getattr("socket")?.cast_into::<PyType>()?.unbind(),
            python_methods: py.import("ferroloop._sockets")?.getattr("SocketMethods")?.unbind(),
        })
    })
}

/// `loop.<name>(*args)` for a socket the fast path does not take: the
/// Python implementation's coroutine.
fn python_call(slf: &Bound<'_, LoopCore>, name: &str, args: Vec<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    let method = refs(py)?.python_methods.bind(py).getattr(name)?;
    let mut full = Vec::with_capacity(args.len() + 1);
    full.push(slf.clone().into_any());
    full.extend(args);
    Ok(method.call1(PyTuple::new(py, full)?)?.unbind())
}

fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(sock.get_type().is(refs(sock.py())?.socket_type.bind(sock.py())))
}

fn new_call(
    slf: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    name: &'static str,
    direction: Direction,
    operation: Operation,
    stream_setup: Option<StreamSetup>,
) -> PyResult<Py<PyAny>> {
    let call = SockCall {
        event_loop: slf.clone().unbind(),
        sock: sock.clone().unbind(),
        name,
        direction,
        stream_setup,
        state: Mutex::new(CallState { operation: Some(operation), stage: Stage::Created }),
    };
    Ok(Py::new(slf.py(), call)?.into_any())
}

pub fn sock_recv(slf: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    // Sizes socket.recv rejects (negative, or beyond Py_ssize_t) take the
    // Python path, which raises its exact error.
    let size = if n.is_exact_instance_of::<PyInt>() { n.extract::<ffi::Py_ssize_t>().ok() } else { None };
    let size = size.and_then(|s| usize::try_from(s).ok());
    match size {
        Some(size) if is_plain_socket(sock)? => {
            new_call(slf, sock, "sock_recv", Direction::Read, Operation::Recv { size }, None)
        }
        _ => python_call(slf, "sock_recv", vec![sock.clone(), n.clone()]),
    }
}

pub fn sock_recv_into(slf: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let simple_buffer = buf.is_exact_instance_of::<PyByteArray>() || buf.is_exact_instance_of::<PyMemoryView>();
    if simple_buffer && is_plain_socket(sock)? {
        let operation = Operation::RecvInto { buffer: buf.clone().unbind() };
        return new_call(slf, sock, "sock_recv_into", Direction::Read, operation, None);
    }
    python_call(slf, "sock_recv_into", vec![sock.clone(), buf.clone()])
}

pub fn sock_sendall(slf: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let simple_buffer = data.is_exact_instance_of::<PyBytes>()
        || data.is_exact_instance_of::<PyByteArray>()
        || data.is_exact_instance_of::<PyMemoryView>();
    if simple_buffer && is_plain_socket(sock)? {
        let operation = Operation::SendAll { data: data.clone().unbind(), sent: 0 };
        return new_call(slf, sock, "sock_sendall", Direction::Write, operation, None);
    }
    python_call(slf, "sock_sendall", vec![sock.clone(), data.clone()])
}

/// A `sock_*` call that is one socket method call per try.
pub struct MethodCall {
    /// asyncio's name for it.
    name: &'static str,
    /// The socket method it calls.
    method: &'static str,
    direction: Direction,
}

pub const SOCK_ACCEPT: MethodCall = MethodCall { name: "sock_accept", method: "accept", direction: Direction::Read };
pub const SOCK_RECVFROM: MethodCall = MethodCall { name: "sock_recvfrom", method: "recvfrom", direction: Direction::Read };
const SOCK_RECVFROM_INTO: MethodCall =
    MethodCall { name: "sock_recvfrom_into", method: "recvfrom_into", direction: Direction::Read };
pub const SOCK_SENDTO: MethodCall = MethodCall { name: "sock_sendto", method: "sendto", direction: Direction::Write };

pub fn sock_method(
    slf: &Bound<'_, LoopCore>,
    call: &MethodCall,
    sock: &Bound<'_, PyAny>,
    args: Vec<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    if !is_plain_socket(sock)? {
        let mut full = vec![sock.clone()];
        full.extend(args);
        return python_call(slf, call.name, full);
    }
    let operation = Operation::Method {
        name: PyString::intern(py, call.method).unbind(),
        args: PyTuple::new(py, args)?.unbind(),
        accept: call.method == "accept",
    };
    new_call(slf, sock, call.name, call.direction, operation, None)
}

/// `sock_connect(sock, address)` with `address` resolved already (the
/// Python method resolves it first), for a plain socket.
pub fn sock_connect_resolved(
    slf: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    address: &Bound<'_, PyAny>,
    family: Option<libc::c_int>,
) -> PyResult<Py<PyAny>> {
    let raw = family.and_then(|family| sockaddr::to_raw(family, address));
    let operation = Operation::Connect { address: address.clone().unbind(), raw, started: false };
    new_call(slf, sock, "sock_connect", Direction::Write, operation, None)
}

/// `create_connection`'s steps for a new non-blocking socket of `family`
/// and an address already resolved: the connect, then
/// `protocol_factory()` and the stream transport, as asyncio's
/// `_create_connection_transport` makes them without TLS. Awaited, it gives
/// `(transport, protocol)`; a failed or cancelled connect closes the
/// socket, a cancelled set-up the transport.
pub fn connect_stream(
    slf: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    address: &Bound<'_, PyAny>,
    family: libc::c_int,
    protocol_factory: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let raw = sockaddr::to_raw(family, address);
    let operation = Operation::Connect { address: address.clone().unbind(), raw, started: false };
    let setup = StreamSetup {
        protocol_factory: protocol_factory.clone().unbind(),
        tcp: family == libc::AF_INET || family == libc::AF_INET6,
    };
    new_call(slf, sock, "create_connection", Direction::Write, operation, Some(setup))
}

/// `sock_recvfrom_into(sock, buf, nbytes=0)`: as asyncio, a zero or missing
/// `nbytes` means the whole buffer.
pub fn sock_recvfrom_into(
    slf: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
    nbytes: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    let given = match nbytes {
        Some(n) if n.is_truthy()? => Some(n.clone()),
        _ => None,
    };
    let nbytes = match given {
        Some(n) => n,
        None => match buf.len() {
            Ok(length) => length.into_pyobject(py)?.into_any(),
            // asyncio's coroutine raises this error when awaited.
            Err(_) => {
                let zero = 0usize.into_pyobject(py)?.into_any();
                return python_call(slf, "sock_recvfrom_into", vec![sock.clone(), buf.clone(), zero]);
            }
        },
    };
    sock_method(slf, &SOCK_RECVFROM_INTO, sock, vec![buf.clone(), nbytes])
}

/// `socket.recv(size)`: a new bytes object, shrunk to what arrived.
/// Requests this small are allocated from pymalloc: receiving straight into
/// the `bytes` and shrinking it costs less than a copy.
const SMALL_RECV: usize = 512;

fn recv_bytes(py: Python<'_>, fd: RawFd, size: usize) -> PyResult<Option<Py<PyAny>>> {
    if size == 0 {
        // socket.recv(0) answers b"" without a syscall, ready or not.
        return Ok(Some(PyBytes::new(py, b"").into_any().unbind()));
    }
    if size > SMALL_RECV && size <= MAX_READ {
        let received = with_read_scratch(|buf| match syscalls::recv(fd, &mut buf[..size]) {
            Ok(Progress::Done(n)) => Ok(Some(PyBytes::new(py, &buf[..n]).into_any().unbind())),
            Ok(Progress::WouldBlock) => Ok(None),
            Err(err) => Err(os_error(py, &err)),
        });
        return received;
    }
    let length = ffi::Py_ssize_t::try_from(size).map_err(|_| PyValueError::new_err("buffersize too large"))?;
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize allocates an
    // uninitialised bytes object of `length` bytes, or returns NULL with an
    // exception set, which from_owned_ptr_or_err turns into a PyErr.
    let bytes = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), length))? };
    // SAFETY: `bytes` is a fresh bytes object of `size` bytes that nothing
    // else references yet, so its storage may be written.
    let storage = unsafe { std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(bytes.as_ptr()).cast::<u8>(), size) };
    let received = match syscalls::recv(fd, storage).map_err(|err| os_error(py, &err))? {
        Progress::Done(n) => n,
        Progress::WouldBlock => return Ok(None),
    };
    if received == size {
        return Ok(Some(bytes.into_any().unbind()));
    }
    let mut raw = bytes.into_ptr();
    // SAFETY: `raw` is our only reference to the bytes object, which
    // _PyBytes_Resize requires; it returns the (possibly moved) object in
    // `raw`, or frees it and sets `raw` to NULL with an exception set.
    unsafe {
        if _PyBytes_Resize(&mut raw, received as ffi::Py_ssize_t) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Some(Bound::from_owned_ptr(py, raw).unbind()))
    }
}

fn would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

impl SockCall {
    fn fileno(&self, py: Python<'_>) -> PyResult<RawFd> {
        self.sock.bind(py).call_method0(intern!(py, "fileno"))?.extract()
    }

    /// One try of the operation. Runs no Python code for recv, recv_into
    /// and sendall (except signal handlers on EINTR).
    fn attempt(&self, py: Python<'_>, fd: RawFd, operation: &mut Operation) -> PyResult<Attempt> {
        let sock = self.sock.bind(py);
        match operation {
            Operation::Recv { size } => Ok(match recv_bytes(py, fd, *size)? {
                Some(data) => Attempt::Done(data),
                None => Attempt::WouldBlock,
            }),
            Operation::RecvInto { buffer } => {
                let buffer = buffer.bind(py);
                let Ok(received) = with_writable_bytes(buffer, "recv_into", |memory| {
                    // socket.recv_into() of an empty buffer answers 0
                    // without a syscall, whatever the socket's state.
                    if memory.is_empty() {
                        return Ok(Progress::Done(0));
                    }
                    syscalls::recv(fd, memory)
                }) else {
                    // Let the socket method raise its own error for this object.
                    return Ok(Attempt::Done(thread_exit::call_method(sock, intern!(py, "recv_into"), (buffer,))?.unbind()));
                };
                Ok(match received.map_err(|err| os_error(py, &err))? {
                    Progress::Done(n) => Attempt::Done(n.into_pyobject(py)?.into_any().unbind()),
                    Progress::WouldBlock => Attempt::WouldBlock,
                })
            }
            Operation::SendAll { data, sent } => {
                let data = data.bind(py);
                let already = *sent;
                let progress = with_bytes(data, |bytes| {
                    if bytes.is_empty() {
                        return syscalls::send_nothing(fd).map(|()| (0, 0));
                    }
                    let offset = already.min(bytes.len());
                    syscalls::send_until_blocked(fd, &bytes[offset..]).map(|n| (offset + n, bytes.len()))
                });
                let (position, total) = match progress {
                    Ok(outcome) => outcome.map_err(|err| os_error(py, &err))?,
                    // The socket method raises its own error for this object.
                    Err(export_error) => {
                        return Err(thread_exit::call_method(sock, intern!(py, "send"), (data,)).err().unwrap_or(export_error))
                    }
                };
                *sent = position;
                Ok(if position >= total { Attempt::Done(py.None()) } else { Attempt::WouldBlock })
            }
            Operation::Connect { address, raw, started } => {
                let address = address.bind(py);
                if let (Some(raw), false) = (raw.as_ref(), *started) {
                    *started = true;
                    return match sockaddr::connect(fd, raw) {
                        Ok(true) => Ok(Attempt::Done(py.None())),
                        Ok(false) => Ok(Attempt::WouldBlock),
                        Err(err) => Err(os_error(py, &err)),
                    };
                }
                if !*started {
                    return match thread_exit::call_method(sock, intern!(py, "connect"), (address,)) {
                        Ok(_) => Ok(Attempt::Done(py.None())),
                        Err(err) if would_block(py, &err) => {
                            *started = true;
                            Ok(Attempt::WouldBlock)
                        }
                        Err(err) => Err(err),
                    };
                }
                let mut error: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: `error` and `len` are valid and writable for the
                // call, and `len` says how much room `error` has.
                let status = unsafe {
                    libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut error as *mut libc::c_int).cast(), &mut len)
                };
                if status != 0 {
                    let err = std::io::Error::last_os_error();
                    if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                        return Ok(Attempt::WouldBlock);
                    }
                    return Err(os_error(py, &err));
                }
                if error == 0 {
                    return Ok(Attempt::Done(py.None()));
                }
                let message = format!("Connect call failed {}", address.str()?);
                Err(PyErr::from_value(py.get_type::<pyo3::exceptions::PyOSError>().call1((error, message))?))
            }
            Operation::Method { name, args, accept } => {
                match thread_exit::call_method(sock, name.bind(py), args.bind(py).clone()) {
                    Ok(result) => {
                        if *accept {
                            let connection = result.get_item(0)?;
                            connection.call_method1(intern!(py, "setblocking"), (false,))?;
                        }
                        Ok(Attempt::Done(result.unbind()))
                    }
                    Err(err) if would_block(py, &err) => Ok(Attempt::WouldBlock),
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// Runs `attempt` with the operation taken out of the state, so that no
    /// lock is held while it may run Python code.
    fn attempt_unlocked(&self, py: Python<'_>, fd: RawFd) -> PyResult<Attempt> {
        let Some(mut operation) = lock(&self.state).operation.take() else {
            return Err(PyRuntimeError::new_err(format!("{} is already running", self.qualname())));
        };
        let outcome = self.attempt(py, fd, &mut operation);
        lock(&self.state).operation = Some(operation);
        outcome
    }

    fn qualname(&self) -> String {
        format!("Loop.{}", self.name)
    }

    /// The first step: asyncio's checks, one try, and a wait if it would
    /// block.
    fn start(slf: &Bound<'_, Self>) -> PyResult<Step> {
        let py = slf.py();
        let this = slf.get();
        let sock = this.sock.bind(py);
        if let Some(setup) = &this.stream_setup {
            // The caller made the socket, non-blocking.
            let fd = this.fileno(py)?;
            let attempt = this.attempt_unlocked(py, fd);
            return match attempt {
                Ok(Attempt::Done(_)) => Self::set_up_stream(slf, setup, fd),
                Ok(Attempt::WouldBlock) => Self::wait(slf, fd).inspect_err(|_| this.close_own_socket(py)),
                Err(err) => {
                    this.close_own_socket(py);
                    Err(err)
                }
            };
        }
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        // ferroloop always refuses a blocking socket (asyncio only in debug
        // mode): it would stall the whole loop inside the syscall.
        if timeout.is_none() || timeout.extract::<f64>().map_or(true, |t| t != 0.0) {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        let fd = this.fileno(py)?;
        match this.attempt_unlocked(py, fd)? {
            Attempt::Done(result) => Ok(Step::Return(result)),
            Attempt::WouldBlock => Self::wait(slf, fd),
        }
    }

    /// `connect_stream`, connected: the protocol and its transport, which
    /// schedules `connection_made`; the bare yield resumes the caller after
    /// it, where asyncio's waiter would.
    fn set_up_stream(slf: &Bound<'_, Self>, setup: &StreamSetup, fd: RawFd) -> PyResult<Step> {
        let py = slf.py();
        let this = slf.get();
        let protocol = setup.protocol_factory.bind(py).call0()?;
        let peer = match &lock(&this.state).operation {
            Some(Operation::Connect { raw: Some(raw), .. }) if raw.is_peer_name_once_connected() => Some(*raw),
            _ => None,
        };
        let known = Known { fd, tcp: setup.tcp, peer, local: None };
        let info = PyDict::new(py);
        let event_loop = this.event_loop.bind(py);
        let transport =
            make_stream_transport(event_loop, this.sock.bind(py), &protocol, None, info, None, None, Some(known))?;
        lock(&this.state).stage = Stage::Settling { transport: transport.into_any().unbind(), protocol: protocol.unbind() };
        Ok(Step::Yield(py.None()))
    }

    /// `connect_stream`'s clean-up of a connect that failed or was given
    /// up: the socket it was given is closed (a `sock_*` call leaves its
    /// caller's socket alone).
    fn close_own_socket(&self, py: Python<'_>) {
        if self.stream_setup.is_some() {
            close_reporting(self.sock.bind(py));
        }
    }

    fn wait(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<Step> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.bind(py);
        let core = event_loop.get();
        if core.is_closed() {
            return Err(crate::event_loop::handles::closed_error());
        }
        core.ensure_fd_no_transport(event_loop, fd)?;
        let future = core.new_future(event_loop)?;
        let replaced = core
            .poller
            .watch(fd, this.direction, Watcher::Sock(slf.clone().unbind()))
            .map_err(|err| os_error(py, &err))?;
        if let Some(old) = replaced {
            old.retire(py);
        }
        lock(&this.state).stage = Stage::Waiting { future: future.clone().unbind(), fd };
        // What Future.__await__ sets before yielding the future to its Task.
        future.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(Step::Yield(future.unbind()))
    }

    /// Ends the wait: the poller forgets this call (unless another call or
    /// callback has replaced it there).
    fn unregister(slf: &Bound<'_, Self>, fd: RawFd) {
        let this = slf.get();
        let call = slf.clone().unbind();
        this.event_loop.get().poller.unwatch_sock_call(fd, this.direction, &call);
    }

    /// The socket is ready: retry, and settle the future when the call is
    /// done. Called by the run loop.
    pub fn on_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (future, fd) = match &lock(&this.state).stage {
            Stage::Waiting { future, fd } => (future.clone_ref(py), *fd),
            Stage::Created | Stage::Settling { .. } | Stage::Finished => return Ok(()),
        };
        let future = future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled: consume nothing; the awaiting task is woken with
            // the CancelledError and throws it into `throw` below.
            Self::unregister(slf, fd);
            return Ok(());
        }
        match this.attempt_unlocked(py, fd) {
            Ok(Attempt::WouldBlock) => Ok(()),
            Ok(Attempt::Done(result)) => {
                Self::unregister(slf, fd);
                future.call_method1(intern!(py, "set_result"), (result,))?;
                Ok(())
            }
            Err(err) if crate::event_loop::is_fatal(py, &err) => Err(err),
            Err(err) => {
                Self::unregister(slf, fd);
                future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
                Ok(())
            }
        }
    }

    /// The awaiting coroutine resumed us: the future is settled.
    fn resume(slf: &Bound<'_, Self>) -> PyResult<Step> {
        let py = slf.py();
        let this = slf.get();
        let stage = std::mem::replace(&mut lock(&this.state).stage, Stage::Finished);
        let (future, fd) = match stage {
            Stage::Waiting { future, fd } => (future, fd),
            Stage::Settling { transport, protocol } => {
                return Ok(Step::Return(PyTuple::new(py, [transport, protocol])?.into_any().unbind()));
            }
            Stage::Created | Stage::Finished => {
                return Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine"));
            }
        };
        let future = future.bind(py);
        if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
            Self::unregister(slf, fd);
            this.close_own_socket(py);
            return Err(PyRuntimeError::new_err("await wasn't used with future"));
        }
        let result = future.call_method0(intern!(py, "result"));
        let Some(setup) = &this.stream_setup else {
            return Ok(Step::Return(result?.unbind()));
        };
        match result {
            Ok(_) => Self::set_up_stream(slf, setup, fd),
            Err(err) => {
                this.close_own_socket(py);
                Err(err)
            }
        }
    }

    /// One step of the coroutine protocol: the future to wait on, or the
    /// call's result.
    fn advance(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let created = matches!(lock(&slf.get().state).stage, Stage::Created);
        if !created {
            return Self::resume(slf);
        }
        if !value.is_none() {
            return Err(PyTypeError::new_err("can't send non-None value to a just-started coroutine"));
        }
        let outcome = Self::start(slf);
        if !matches!(outcome, Ok(Step::Yield(_))) {
            lock(&slf.get().state).stage = Stage::Finished;
        }
        outcome
    }

    fn step(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match Self::advance(slf, value)? {
            Step::Yield(future) => Ok(future),
            Step::Return(result) => Err(PyStopIteration::new_err((result,))),
        }
    }

    /// Ends the call early (`throw` or `close`): unregisters a wait;
    /// `connect_stream` closes its socket, or its transport once made, as
    /// asyncio's coroutine does on any exception.
    fn abandon(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        let stage = std::mem::replace(&mut lock(&this.state).stage, Stage::Finished);
        match stage {
            Stage::Waiting { fd, .. } => {
                Self::unregister(slf, fd);
                this.close_own_socket(py);
            }
            Stage::Settling { transport, .. } => close_reporting(transport.bind(py)),
            Stage::Created | Stage::Finished => {}
        }
    }
}

/// `obj.close()`, an error in it reported as unraisable: it runs while
/// another error (or a cancellation) is on its way to the caller.
fn close_reporting(obj: &Bound<'_, PyAny>) {
    let py = obj.py();
    if let Err(err) = obj.call_method0(intern!(py, "close")) {
        err.write_unraisable(py, Some(obj));
    }
}

/// The exception `throw(typ, val, tb)` raises, as a generator builds it.
fn thrown(py: Python<'_>, typ: &Bound<'_, PyAny>, val: Option<&Bound<'_, PyAny>>) -> PyErr {
    let val = val.filter(|v| !v.is_none());
    if let Ok(exc_type) = typ.cast::<PyType>() {
        if let Some(value) = val {
            if value.is_instance(exc_type).unwrap_or(false) {
                return PyErr::from_value(value.clone());
            }
        }
        let instance = match val {
            None => exc_type.call0(),
            Some(value) => match value.cast::<PyTuple>() {
                Ok(args) => exc_type.call1(args.clone()),
                Err(_) => exc_type.call1((value,)),
            },
        };
        return match instance {
            Ok(instance) => PyErr::from_value(instance),
            Err(err) => err,
        };
    }
    if val.is_some() {
        return PyTypeError::new_err("instance exception may not have a separate value");
    }
    let _ = py;
    PyErr::from_value(typ.clone())
}

#[pymethods]
impl SockCall {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::step(slf, &slf.py().None().into_bound(slf.py()))
    }

    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::step(slf, value)
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Self::abandon(slf);
        let err = thrown(py, typ, val);
        if let Some(traceback) = tb.filter(|t| !t.is_none()) {
            let value = err.value(py);
            value.setattr(intern!(py, "__traceback__"), traceback)?;
        }
        Err(err)
    }

    fn close(slf: &Bound<'_, Self>) {
        Self::abandon(slf);
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name
    }

    #[getter]
    fn __qualname__(&self) -> String {
        self.qualname()
    }

    #[getter]
    fn cr_running(&self) -> bool {
        lock(&self.state).operation.is_none()
    }

    fn __repr__(&self) -> String {
        let stage = match lock(&self.state).stage {
            Stage::Created => "created",
            Stage::Waiting { .. } => "waiting",
            Stage::Settling { .. } => "connected",
            Stage::Finished => "finished",
        };
        format!("<ferroloop {} coroutine {}>", self.qualname(), stage)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        if let Some(setup) = &self.stream_setup {
            visit.call(&setup.protocol_factory)?;
        }
        // See HandleCore::traverse for why try_lock is enough.
        if let Ok(state) = self.state.try_lock() {
            if let Some(operation) = state.operation.as_ref() {
                operation.visit(&visit)?;
            }
            match &state.stage {
                Stage::Waiting { future, .. } => visit.call(future)?,
                Stage::Settling { transport, protocol } => {
                    visit.call(transport)?;
                    visit.call(protocol)?;
                }
                Stage::Created | Stage::Finished => {}
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = self.state.try_lock().ok().map(|mut state| {
            (state.operation.take(), std::mem::replace(&mut state.stage, Stage::Finished))
        });
        drop(released);
    }
}

impl Drop for SockCall {
    fn drop(&mut self) {
        let never_awaited = matches!(
            self.state.get_mut().map(|s| &s.stage).unwrap_or(&Stage::Finished),
            Stage::Created
        );
        if !never_awaited {
            return;
        }
        let message = format!("coroutine '{}' was never awaited", self.qualname());
        Python::attach(|py| {
            // As CPython does for a coroutine: warn without disturbing an
            // exception being raised meanwhile; a warning that fails (turned
            // into an error) is reported as unraisable.
            let pending = PyErr::take(py);
            let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            let message = std::ffi::CString::new(message).unwrap_or_default();
            if let Err(err) = PyErr::warn(py, category.as_any(), &message, 1) {
                err.write_unraisable(py, None);
            }
            if let Some(err) = pending {
                err.restore(py);
            }
        });
    }
}

/// The `am_send` slot: the interpreter's `await` (on 3.10 and 3.11) and the C
/// Task resume the call through it, so a finished call hands over its result
/// directly instead of raising and catching a StopIteration (about 600
/// instructions per call). PyO3 has no way to declare this slot.
unsafe extern "C" fn sock_call_am_send(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    presult: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls am_send with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slf` and `arg` are borrowed for the call; the slot is only
        // installed on the SockCall type, so `slf` is a SockCall.
        let call = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<SockCall>() };
        let value = if arg.is_null() { py.None().into_bound(py) } else { unsafe { Bound::from_borrowed_ptr(py, arg) } };
        SockCall::advance(&call, &value)
    }));
    let step = outcome.unwrap_or_else(|_| Err(PanicException::new_err("ferroloop panicked in a sock_* call")));
    // SAFETY: `presult` points to the caller's result slot, which receives
    // a new reference (or NULL with an exception set, for PYGEN_ERROR).
    unsafe {
        match step {
            Ok(Step::Yield(future)) => {
                *presult = future.into_ptr();
                ffi::PySendResult::PYGEN_NEXT
            }
            Ok(Step::Return(result)) => {
                *presult = result.into_ptr();
                ffi::PySendResult::PYGEN_RETURN
            }
            Err(err) => {
                err.restore(py);
                *presult = std::ptr::null_mut();
                ffi::PySendResult::PYGEN_ERROR
            }
        }
    }
}

/// Installs `am_send` on the SockCall type (at module initialisation).
pub fn install_am_send(py: Python<'_>) {
    let ty = py.get_type::<SockCall>().as_type_ptr();
    // SAFETY: `ty` is SockCall's heap type, created by PyO3 with an
    // `tp_as_async` table (the class defines __await__) and not yet used by
    // any instance, since this runs at module initialisation. Filling a slot
    // and calling PyType_Modified is how C extensions adjust a type.
    unsafe {
        let table = (*ty).tp_as_async;
        if !table.is_null() {
            (*table).am_send = Some(sock_call_am_send);
            ffi::PyType_Modified(ty);
        }
    }
}
