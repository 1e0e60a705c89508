//! Making a stream transport for a connected socket: asyncio's
//! `_make_socket_transport`, with the extra info asyncio's
//! `_SelectorTransport` collects, TCP_NODELAY, and the callbacks it
//! schedules (`connection_made`, the first read, the waiter).
//!
//! The socket's names are read when the transport is made, as asyncio
//! reads them, but a plain socket's are made into Python objects (and the
//! socket into a `TransportSocket`) only when `get_extra_info` first asks
//! for them: most protocols never do.

use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::intern;

use super::sockaddr::{self, RawAddr, Side};
use super::socket_object;
use super::stream::StreamTransport;
use crate::event_loop::handles::Scheduled;
use crate::event_loop::internal_calls::InternalCall;
use crate::event_loop::{copy_current_context, LoopCore};
use crate::support::sync::lock;

struct Refs {
    transport_socket: Py<PyAny>,
    set_result_unless_cancelled: Py<PyAny>,
    /// `ferroloop._network._set_nodelay`, for the exact error of a socket
    /// whose options cannot be read.
    set_nodelay: Py<PyAny>,
    /// Since 3.12 a socket another open transport owns is refused.
    refuse_owned_sockets: bool,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        Ok(Refs {
            transport_socket: py.import("asyncio.trsock")?.getattr("TransportSocket")?.unbind(),
            set_result_unless_cancelled: py.import("asyncio.futures")?.getattr("_set_result_unless_cancelled")?.unbind(),
            set_nodelay: py.import("ferroloop._network")?.getattr("_set_nodelay")?.unbind(),
            refuse_owned_sockets: py.version_info() >= (3, 12),
        })
    })
}

fn socket_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid and writable for the call, and
    // `len` says how much room `value` has.
    let status = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
    (status == 0).then_some(value)
}

/// TCP_NODELAY, set as uvloop does on every TCP stream socket.
pub(crate) fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call. A failure
    // (the peer already gone) leaves a working socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// `_set_nodelay` for any socket: read natively, or, when the fd's options
/// cannot be read, by the Python function, for its exact error.
fn nodelay_for(py: Python<'_>, sock: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
    let options = (fd >= 0)
        .then(|| {
            Some((
                socket_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
                socket_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
                socket_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
            ))
        })
        .flatten();
    let Some((family, sock_type, proto)) = options else {
        refs(py)?.set_nodelay.bind(py).call1((sock,))?;
        return Ok(());
    };
    if wants_nodelay(family, sock_type, proto) {
        set_nodelay(fd);
    }
    Ok(())
}

/// A TCP stream socket: one TCP_NODELAY is set on. A user's
/// `socket.socket()` has proto 0, which asyncio leaves out; uvloop does not.
pub(crate) fn wants_nodelay(family: libc::c_int, sock_type: libc::c_int, proto: libc::c_int) -> bool {
    (family == libc::AF_INET || family == libc::AF_INET6)
        && sock_type == libc::SOCK_STREAM
        && (proto == 0 || proto == libc::IPPROTO_TCP)
}

/// `sock.getsockname()` or `getpeername()`, None when the socket has none.
fn name_or_none<'py>(sock: &Bound<'py, PyAny>, method: &Bound<'py, pyo3::types::PyString>) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    match sock.call_method0(method) {
        Ok(name) => Ok(name),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyOSError>(py) => Ok(py.None().into_bound(py)),
        Err(err) => Err(err),
    }
}

/// The socket's name or its peer's, as its own `getsockname()` or
/// `getpeername()` gives it, None when it has none.
fn asked_name<'py>(sock: &Bound<'py, PyAny>, side: Side) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    let method = match side {
        Side::Local => intern!(py, "getsockname"),
        Side::Peer => intern!(py, "getpeername"),
    };
    name_or_none(sock, method)
}

/// The socket's name or its peer's, as its `getsockname()` or
/// `getpeername()` gives it, None when it has none. A plain
/// `socket.socket` on a known fd is read natively; a subclass, which may
/// override the method, or an uncommon family is asked.
fn name<'py>(sock: &Bound<'py, PyAny>, fd: Option<RawFd>, side: Side) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    if let Some(fd) = fd {
        match raw_name(sock, fd, side)? {
            Some(Some(raw)) => return sockaddr::to_object(py, &raw),
            Some(None) => return Ok(py.None().into_bound(py)),
            None => {}
        }
    }
    asked_name(sock, side)
}

/// A stream transport's extra info not made into Python objects yet.
#[derive(Default)]
pub(crate) struct DeferredInfo {
    /// `'socket'`: the socket, to be wrapped in a `TransportSocket`.
    socket: Option<Py<PyAny>>,
    /// `'sockname'` and `'peername'` as read at set-up; Some(None): the
    /// socket had none.
    sockname: Option<Option<RawAddr>>,
    peername: Option<Option<RawAddr>>,
}

enum Deferred {
    Socket(Py<PyAny>),
    Name(Option<RawAddr>),
}

impl DeferredInfo {
    /// The value of the extra info `name` if it is deferred here (made
    /// now, and no longer deferred), else None.
    pub(crate) fn resolve<'py>(deferred: &Mutex<Self>, name: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = name.py();
        let Ok(key) = name.cast::<PyString>() else {
            return Ok(None);
        };
        let Ok(key) = key.to_str() else {
            return Ok(None);
        };
        // Taken out under the lock; made into objects after it is released.
        let taken = {
            let mut info = lock(deferred);
            match key {
                "socket" => info.socket.take().map(Deferred::Socket),
                "sockname" => info.sockname.take().map(Deferred::Name),
                "peername" => info.peername.take().map(Deferred::Name),
                _ => None,
            }
        };
        match taken {
            None => Ok(None),
            Some(Deferred::Socket(sock)) => Ok(Some(refs(py)?.transport_socket.bind(py).call1((sock,))?)),
            Some(Deferred::Name(Some(raw))) => Ok(Some(sockaddr::to_object(py, &raw)?)),
            Some(Deferred::Name(None)) => Ok(Some(py.None().into_bound(py))),
        }
    }

    pub(crate) fn traverse(deferred: &Mutex<Self>, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Ok(info) = deferred.try_lock() {
            if let Some(sock) = &info.socket {
                visit.call(sock)?;
            }
        }
        Ok(())
    }
}

/// A plain socket's name or its peer's, read natively, when it is of a
/// family `to_object` converts as the socket module would: Some(None) when
/// it has none. None: the socket's own method has to be asked.
fn raw_name(sock: &Bound<'_, PyAny>, fd: RawFd, side: Side) -> PyResult<Option<Option<RawAddr>>> {
    if !socket_object::is_plain_socket(sock)? {
        return Ok(None);
    }
    Ok(match sockaddr::name_of(fd, side) {
        Ok(raw) if raw.is_common_family() => Some(Some(raw)),
        Ok(_) => None,
        Err(_) => Some(None),
    })
}

/// asyncio's `_SelectorTransport` extra info for a stream transport: what
/// can be deferred goes into the returned `DeferredInfo`, the rest into
/// `info` (whose own `'socket'` and `'sockname'` give way, as
/// `add_socket_info` overwrites them).
fn defer_socket_info(
    info: &Bound<'_, PyDict>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    local: Option<RawAddr>,
    peer: Option<RawAddr>,
) -> PyResult<DeferredInfo> {
    let py = sock.py();
    let mut deferred = DeferredInfo { socket: Some(sock.clone().unbind()), ..DeferredInfo::default() };
    let given = !info.is_empty();
    if given {
        for key in [intern!(py, "socket"), intern!(py, "sockname")] {
            if info.contains(key)? {
                info.del_item(key)?;
            }
        }
    }
    let local = match local {
        Some(local) => Some(Some(local)),
        None => raw_name(sock, fd, Side::Local)?,
    };
    match local {
        Some(raw) => deferred.sockname = Some(raw),
        None => info.set_item(intern!(py, "sockname"), asked_name(sock, Side::Local)?)?,
    }
    if let Some(peer) = peer {
        deferred.peername = Some(Some(peer));
    } else if !(given && info.contains(intern!(py, "peername"))?) {
        match raw_name(sock, fd, Side::Peer)? {
            Some(raw) => deferred.peername = Some(raw),
            None => info.set_item(intern!(py, "peername"), asked_name(sock, Side::Peer)?)?,
        }
    }
    Ok(deferred)
}

/// asyncio's `_SelectorTransport` extra info, added to `info`: the socket
/// (as a `TransportSocket`), its name, and its peer's unless `info` has it.
fn add_socket_info(info: &Bound<'_, PyDict>, sock: &Bound<'_, PyAny>, fd: Option<RawFd>) -> PyResult<()> {
    let py = sock.py();
    info.set_item(intern!(py, "socket"), refs(py)?.transport_socket.bind(py).call1((sock,))?)?;
    info.set_item(intern!(py, "sockname"), name(sock, fd, Side::Local)?)?;
    if !info.contains(intern!(py, "peername"))? {
        info.set_item(intern!(py, "peername"), name(sock, fd, Side::Peer)?)?;
    }
    Ok(())
}

/// A copy of `extra` (or a new dict) with the socket's extra info: what the
/// datagram transport is given, as asyncio's `_SelectorTransport` builds it.
#[pyfunction]
#[pyo3(signature = (sock, extra=None))]
pub fn transport_extra<'py>(sock: &Bound<'py, PyAny>, extra: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyDict>> {
    let info = match extra {
        Some(extra) => extra.copy()?,
        None => PyDict::new(sock.py()),
    };
    add_socket_info(&info, sock, None)?;
    Ok(info)
}

/// How the caller knows the socket: a listener knows its connections are
/// TCP (or not) and where they come from.
pub(crate) struct Known {
    pub fd: RawFd,
    pub tcp: bool,
    /// The peer's address as accept gave it (or as connected to, where
    /// that is what `getpeername` would give), for `peername`.
    pub peer: Option<RawAddr>,
    /// The socket's own name where the caller knows it (a listener's
    /// connections share its name), for `sockname`.
    pub local: Option<RawAddr>,
}

/// asyncio's `_make_socket_transport(sock, protocol, waiter, extra=,
/// server=)` for ferroloop's stream transport. `extra` becomes the
/// transport's own (the socket's info is added to it); `context` is the one
/// its protocol callbacks run in (None: a copy of the current one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_stream_transport<'py>(
    event_loop: &Bound<'py, LoopCore>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    info: Bound<'py, PyDict>,
    server: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
    known: Option<Known>,
) -> PyResult<Bound<'py, StreamTransport>> {
    let py = event_loop.py();
    let refs = refs(py)?;
    let core = event_loop.get();
    let fd = match &known {
        Some(known) => known.fd,
        None => sock.call_method0(intern!(py, "fileno"))?.extract()?,
    };
    let peer = known.as_ref().and_then(|known| known.peer);
    let local = known.as_ref().and_then(|known| known.local);
    match known {
        Some(known) => {
            if known.tcp {
                set_nodelay(fd);
            }
        }
        None => {
            if refs.refuse_owned_sockets {
                core.ensure_no_transport_on(event_loop, fd, sock)?;
            }
            nodelay_for(py, sock, fd)?;
        }
    }
    // A protocol without it fails here with asyncio's AttributeError,
    // before anything is made: no half-made transport is left to close the
    // socket when it is collected, and a transport already on the socket
    // keeps working.
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    if fd < 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    let deferred = defer_socket_info(&info, sock, fd, local, peer)?;
    let context = match context {
        Some(context) => context.clone().unbind(),
        None => copy_current_context(py)?,
    };
    let server = server.filter(|s| !s.is_none());
    let built = StreamTransport::build(py, event_loop.clone().unbind(), fd, sock, protocol, &info, deferred, server, context)?;
    let transport = Bound::new(py, built)?;
    if let Some(server) = server {
        crate::server::connections::attach(server, transport.as_any())?;
    }
    core.register_transport(py, fd, transport.as_any())?;
    InternalCall::connection_made(event_loop, &transport, connection_made)?;
    lock(&core.sched).ready.push_back(Scheduled::StartReading(transport.clone().unbind()));
    if let Some(waiter) = waiter.filter(|w| !w.is_none()) {
        let args = PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?;
        LoopCore::schedule_soon(event_loop, refs.set_result_unless_cancelled.bind(py).clone(), args, None)?;
    }
    Ok(transport)
}

/// The Python entry point: `_make_socket_transport`'s body.
#[pyfunction]
#[pyo3(signature = (event_loop, sock, protocol, waiter=None, extra=None, server=None))]
pub fn make_socket_transport<'py>(
    event_loop: &Bound<'py, PyAny>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<&Bound<'py, PyDict>>,
    server: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, StreamTransport>> {
    let event_loop = event_loop.cast::<LoopCore>()?;
    let info = match extra {
        Some(extra) => extra.copy()?,
        None => PyDict::new(sock.py()),
    };
    make_stream_transport(event_loop, sock, protocol, waiter, info, server, None, None)
}
