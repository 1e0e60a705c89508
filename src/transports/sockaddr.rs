//! Socket addresses for the datagram transport and the accept loop: the
//! Python objects `socket` takes and returns for AF_INET, AF_INET6 and
//! AF_UNIX, converted to and from a `sockaddr` the way CPython's socket
//! module does, and the syscalls that take one.
//!
//! Only the plain forms are converted here: a numeric host in an exact
//! tuple of exact ints, a `str` or `bytes` path. Anything else (host names,
//! `'<broadcast>'`, `''`, a scope in the host, other types, out-of-range
//! numbers) gives `None`, and the caller hands the object to the socket's own
//! `sendto`, which resolves it or raises exactly as it does in asyncio.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use super::syscalls::Progress;

/// `sun_path`'s offset in `sockaddr_un`.
const SUN_PATH_OFFSET: usize = std::mem::size_of::<libc::sa_family_t>();
const SUN_PATH_LEN: usize = 108;
/// asyncio's datagram transports pass no flags; these only make sure that a
/// blocking socket cannot block the loop, and that no SIGPIPE is raised.
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;

// POSIX, in every libc; the `libc` crate does not declare them for Linux.
extern "C" {
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
    fn inet_ntop(af: libc::c_int, src: *const libc::c_void, dst: *mut libc::c_char, size: libc::socklen_t) -> *const libc::c_char;
}

#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn empty() -> Self {
        // SAFETY: sockaddr_storage is plain old data, for which all-zero
        // bytes are a valid value.
        Self { storage: unsafe { std::mem::zeroed() }, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is a live, initialized value of at least `len`
        // bytes, borrowed for as long as the returned slice.
        unsafe { std::slice::from_raw_parts(std::ptr::addr_of!(self.storage).cast::<u8>(), len) }
    }

    fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        std::ptr::addr_of!(self.storage).cast()
    }

    /// An address `to_object` gives as the socket module would, whatever
    /// the socket: AF_INET, AF_INET6 and AF_UNIX.
    pub fn is_common_family(&self) -> bool {
        self.len == 0 || matches!(self.family(), libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
    }
}

impl PartialEq for RawAddr {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

fn exact_int<T: TryFrom<i64>>(obj: &Bound<'_, PyAny>, max: i64) -> Option<T> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    let value: i64 = obj.extract().ok()?;
    if !(0..=max).contains(&value) {
        return None;
    }
    T::try_from(value).ok()
}

fn numeric_host(obj: &Bound<'_, PyAny>) -> Option<CString> {
    let host = obj.cast_exact::<PyString>().ok()?.to_str().ok()?;
    if host.is_empty() || !host.is_ascii() || host.contains('%') {
        return None;
    }
    CString::new(host).ok()
}

/// What asyncio's `base_events._ipaddr_info(host, port, AF_UNSPEC,
/// SOCK_STREAM, 0)` finds for a numeric IPv4 or IPv6 `host` (an exact
/// ASCII `str`, without a scope) and an exact `int` port: the family and
/// the address to connect to, `(host, port)` or `(host, port, 0, 0)`.
/// None for anything else, for which asyncio's own code decides.
fn numeric_stream_address<'py>(
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
) -> PyResult<Option<(libc::c_int, Bound<'py, PyTuple>)>> {
    let py = host.py();
    let Some(text) = numeric_host(host) else { return Ok(None) };
    if !port.is_exact_instance_of::<PyInt>() {
        return Ok(None);
    }
    let mut parsed = [0u8; 16];
    // SAFETY: `text` is NUL-terminated and `parsed` has room for an
    // in6_addr, the larger of the two results inet_pton writes.
    let family = unsafe {
        if inet_pton(libc::AF_INET, text.as_ptr(), parsed.as_mut_ptr().cast()) == 1 {
            libc::AF_INET
        } else if inet_pton(libc::AF_INET6, text.as_ptr(), parsed.as_mut_ptr().cast()) == 1 {
            libc::AF_INET6
        } else {
            return Ok(None);
        }
    };
    let address = if family == libc::AF_INET {
        PyTuple::new(py, [host.clone(), port.clone()])?
    } else {
        let zero = 0i32.into_pyobject(py)?.into_any();
        PyTuple::new(py, [host.clone(), port.clone(), zero.clone(), zero])?
    };
    Ok(Some((family, address)))
}

/// The direct path of `create_connection(protocol_factory, host, port)`
/// (`args` is `(host, port)`, given positionally, no other option): the
/// family, address and proto to connect with, and `args` again for the
/// debug log; None when asyncio's own code must decide.
#[pyfunction]
#[allow(clippy::type_complexity)] // the Python tuple it returns
pub fn numeric_tcp_target<'py>(
    args: &Bound<'py, PyTuple>,
) -> PyResult<Option<(libc::c_int, Bound<'py, PyTuple>, libc::c_int, Bound<'py, PyTuple>)>> {
    if args.len() != 2 {
        return Ok(None);
    }
    let found = numeric_stream_address(&args.get_item(0)?, &args.get_item(1)?)?;
    Ok(found.map(|(family, address)| (family, address, libc::IPPROTO_TCP, args.clone())))
}

/// `addr` as `socket.sendto` would pass it for a socket of `family`, when
/// it is in a plain form (see the module docs).
pub fn to_raw(family: libc::c_int, addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    match family {
        libc::AF_INET => inet_to_raw(addr),
        libc::AF_INET6 => inet6_to_raw(addr),
        libc::AF_UNIX => unix_to_raw(addr),
        _ => None,
    }
}

fn inet_to_raw(addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let tuple = addr.cast_exact::<PyTuple>().ok()?;
    if tuple.len() != 2 {
        return None;
    }
    let host = numeric_host(&tuple.get_item(0).ok()?)?;
    let port: u16 = exact_int(&tuple.get_item(1).ok()?, 0xffff)?;
    let mut raw = RawAddr::empty();
    let sin = std::ptr::addr_of_mut!(raw.storage).cast::<libc::sockaddr_in>();
    // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr;
    // `host` is NUL-terminated and inet_pton writes at most 4 bytes into
    // `sin_addr`.
    unsafe {
        if inet_pton(libc::AF_INET, host.as_ptr(), std::ptr::addr_of_mut!((*sin).sin_addr).cast()) != 1 {
            return None;
        }
        (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
        (*sin).sin_port = port.to_be();
    }
    raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    Some(raw)
}

fn inet6_to_raw(addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let tuple = addr.cast_exact::<PyTuple>().ok()?;
    if !(2..=4).contains(&tuple.len()) {
        return None;
    }
    let host = numeric_host(&tuple.get_item(0).ok()?)?;
    let port: u16 = exact_int(&tuple.get_item(1).ok()?, 0xffff)?;
    let flowinfo: u32 = match tuple.get_item(2) {
        Ok(item) => exact_int(&item, 0xfffff)?,
        Err(_) => 0,
    };
    let scope_id: u32 = match tuple.get_item(3) {
        Ok(item) => exact_int(&item, i64::from(u32::MAX))?,
        Err(_) => 0,
    };
    let mut raw = RawAddr::empty();
    let sin6 = std::ptr::addr_of_mut!(raw.storage).cast::<libc::sockaddr_in6>();
    // SAFETY: as in `inet_to_raw`; inet_pton writes at most 16 bytes into
    // `sin6_addr`.
    unsafe {
        if inet_pton(libc::AF_INET6, host.as_ptr(), std::ptr::addr_of_mut!((*sin6).sin6_addr).cast()) != 1 {
            return None;
        }
        (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
        (*sin6).sin6_port = port.to_be();
        (*sin6).sin6_flowinfo = flowinfo.to_be();
        (*sin6).sin6_scope_id = scope_id;
    }
    raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    Some(raw)
}

fn unix_to_raw(addr: &Bound<'_, PyAny>) -> Option<RawAddr> {
    let py = addr.py();
    let encoded;
    let path: &[u8] = if let Ok(text) = addr.cast_exact::<PyString>() {
        // SAFETY: `text` is a live str (GIL held); a non-null result is a
        // new reference to a bytes object, owned by `encoded` from here on.
        encoded = unsafe {
            let raw = ffi::PyUnicode_EncodeFSDefault(text.as_ptr());
            if raw.is_null() {
                drop(PyErr::fetch(py));
                return None;
            }
            Bound::from_owned_ptr(py, raw).cast_into::<PyBytes>().ok()?
        };
        encoded.as_bytes()
    } else if let Ok(bytes) = addr.cast_exact::<PyBytes>() {
        bytes.as_bytes()
    } else {
        return None;
    };
    // An empty name (autobind in `bind`) is left to the socket module.
    let abstract_name = *path.first()? == 0;
    if path.len() > SUN_PATH_LEN || (!abstract_name && path.len() == SUN_PATH_LEN) {
        return None;
    }
    let mut raw = RawAddr::empty();
    let sun = std::ptr::addr_of_mut!(raw.storage).cast::<libc::sockaddr_un>();
    // SAFETY: sockaddr_storage holds a sockaddr_un; `path` fits in
    // `sun_path` (checked above).
    unsafe {
        (*sun).sun_family = libc::AF_UNIX as libc::sa_family_t;
        std::ptr::copy_nonoverlapping(path.as_ptr(), std::ptr::addr_of_mut!((*sun).sun_path).cast::<u8>(), path.len());
    }
    // A path is passed with its terminating NUL (already zero in `raw`),
    // an abstract name without one, as the socket module passes them.
    let terminator = usize::from(!abstract_name);
    raw.len = (SUN_PATH_OFFSET + path.len() + terminator) as libc::socklen_t;
    Some(raw)
}

fn ntop(family: libc::c_int, src: *const libc::c_void) -> Option<String> {
    let mut text = [0 as libc::c_char; 64];
    // SAFETY: `src` points at an in_addr or in6_addr as `family` says, and
    // `text` has room for the longest IPv6 text form (46 bytes).
    let written = unsafe { inet_ntop(family, src, text.as_mut_ptr(), text.len() as libc::socklen_t) };
    if written.is_null() {
        return None;
    }
    // SAFETY: inet_ntop NUL-terminated the text in `text`.
    Some(unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) }.to_string_lossy().into_owned())
}

/// The object `socket.recvfrom` returns for this source address: None for
/// none, `(host, port)`, `(host, port, flowinfo, scope_id)`, a `str` path
/// (`''` when unnamed), an abstract name as `bytes`.
pub fn to_object<'py>(py: Python<'py>, raw: &RawAddr) -> PyResult<Bound<'py, PyAny>> {
    if raw.len == 0 {
        return Ok(py.None().into_bound(py));
    }
    let base = raw.as_ptr();
    match raw.family() {
        libc::AF_INET => {
            let sin = base.cast::<libc::sockaddr_in>();
            // SAFETY: the kernel wrote a sockaddr_in (its family says so)
            // into storage large enough for it.
            let (addr, port) = unsafe { ((*sin).sin_addr.s_addr, u16::from_be((*sin).sin_port)) };
            // s_addr holds the address in network order: its bytes in
            // memory are the four octets in order.
            Ok((ipv4_text(addr.to_ne_bytes()), port).into_pyobject(py)?.into_any())
        }
        libc::AF_INET6 => {
            let sin6 = base.cast::<libc::sockaddr_in6>();
            // SAFETY: as above, for a sockaddr_in6.
            let (addr, port, flowinfo, scope_id) = unsafe {
                (
                    std::ptr::addr_of!((*sin6).sin6_addr).cast(),
                    u16::from_be((*sin6).sin6_port),
                    u32::from_be((*sin6).sin6_flowinfo),
                    (*sin6).sin6_scope_id,
                )
            };
            let host = ntop(libc::AF_INET6, addr).ok_or_else(io::Error::last_os_error)?;
            Ok((host, port, flowinfo, scope_id).into_pyobject(py)?.into_any())
        }
        libc::AF_UNIX => {
            let path = raw.bytes().get(SUN_PATH_OFFSET..).unwrap_or(&[]);
            if path.first() == Some(&0) {
                return Ok(PyBytes::new(py, path).into_any());
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let name = &path[..end];
            // SAFETY: `name` is a valid region of `name.len()` bytes; a
            // non-null result is a new reference.
            unsafe {
                let decoded = ffi::PyUnicode_DecodeFSDefaultAndSize(name.as_ptr().cast(), name.len() as ffi::Py_ssize_t);
                Bound::from_owned_ptr_or_err(py, decoded)
            }
        }
        family => {
            let data = raw.bytes().get(SUN_PATH_OFFSET..).unwrap_or(&[]);
            Ok((family, PyBytes::new(py, data)).into_pyobject(py)?.into_any())
        }
    }
}

fn classify(result: isize) -> io::Result<Progress> {
    if result >= 0 {
        return Ok(Progress::Done(result as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Progress::WouldBlock),
        #[allow(unreachable_patterns)] // EWOULDBLOCK == EAGAIN on Linux
        Some(libc::EWOULDBLOCK) => Ok(Progress::WouldBlock),
        _ => Err(err),
    }
}

fn retrying(mut call: impl FnMut() -> isize) -> io::Result<Progress> {
    loop {
        match classify(call()) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One `recvfrom` into `buf`; the source address lands in `from`.
pub fn recv_from(fd: RawFd, buf: &mut [u8], from: &mut RawAddr) -> io::Result<Progress> {
    retrying(|| {
        from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` is writable for `buf.len()` bytes and `from.storage`
        // for `from.len` bytes, for the duration of the call.
        unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                std::ptr::addr_of_mut!(from.storage).cast(),
                &mut from.len,
            )
        }
    })
}

/// One `accept4` of a non-blocking, close-on-exec connection; the peer's
/// address lands in `peer`. EINTR is returned, not retried: asyncio's
/// accept loop stops there.
pub fn accept(fd: RawFd, peer: &mut RawAddr) -> io::Result<RawFd> {
    peer.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer.storage` is writable for `peer.len` bytes for the
    // duration of the call; an invalid fd only makes accept4 fail.
    let accepted = unsafe {
        libc::accept4(
            fd,
            std::ptr::addr_of_mut!(peer.storage).cast(),
            &mut peer.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if accepted < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(accepted)
}

/// One non-blocking `connect` to `to`: Ok(true) when connected at once,
/// Ok(false) when the connection is under way (the errors for which
/// `socket.connect` raises BlockingIOError or InterruptedError, which
/// asyncio waits out for writability).
pub fn connect(fd: RawFd, to: &RawAddr) -> io::Result<bool> {
    // SAFETY: `to` holds an address of `to.len` bytes during the call; an
    // invalid fd only makes connect fail.
    if unsafe { libc::connect(fd, to.as_ptr(), to.len) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINPROGRESS | libc::EALREADY | libc::EAGAIN | libc::EINTR) => Ok(false),
        #[allow(unreachable_patterns)] // EWOULDBLOCK == EAGAIN on Linux
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(err),
    }
}

/// Which of a socket's two names `name_of` reads.
#[derive(Clone, Copy)]
pub enum Side {
    Local,
    Peer,
}

/// `getsockname` or `getpeername` of `fd`.
pub fn name_of(fd: RawFd, side: Side) -> io::Result<RawAddr> {
    let mut raw = RawAddr::empty();
    raw.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let storage = std::ptr::addr_of_mut!(raw.storage).cast();
    // SAFETY: `raw.storage` is writable for `raw.len` bytes for the
    // duration of the call; an invalid fd only makes the call fail.
    let status = unsafe {
        match side {
            Side::Local => libc::getsockname(fd, storage, &mut raw.len),
            Side::Peer => libc::getpeername(fd, storage, &mut raw.len),
        }
    };
    if status < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raw)
}

impl RawAddr {
    /// Whether `getpeername` after connecting to this address gives the
    /// address itself: an IPv4 address other than INADDR_ANY (a connect to
    /// which Linux turns into one to a local address). IPv6 is left to
    /// `getpeername`, for its scope and flow information.
    pub fn is_peer_name_once_connected(&self) -> bool {
        if self.family() != libc::AF_INET || (self.len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
            return false;
        }
        // SAFETY: the family is AF_INET and `len` covers a sockaddr_in, so
        // the storage holds one; sockaddr_storage is aligned for any
        // socket address type.
        let address = unsafe { &*std::ptr::addr_of!(self.storage).cast::<libc::sockaddr_in>() };
        address.sin_addr.s_addr != libc::INADDR_ANY
    }
}

/// The local name every connection accepted on `listening` has, when it
/// is the listening socket's own: a Unix socket's (the accepted socket
/// shares the listener's address), or an IPv4 one bound to one address and
/// not transparent (IP_TRANSPARENT accepts connections to other
/// addresses). None: each connection's name must be read.
pub fn accepted_local_name(listening: RawFd, family: libc::c_int) -> Option<RawAddr> {
    let name = name_of(listening, Side::Local).ok()?;
    match family {
        libc::AF_UNIX if name.family() == libc::AF_UNIX => Some(name),
        libc::AF_INET if name.is_peer_name_once_connected() && !is_transparent(listening) => Some(name),
        _ => None,
    }
}

fn is_transparent(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes for the duration of the
    // call; an invalid fd only makes it fail.
    let status = unsafe {
        libc::getsockopt(fd, libc::SOL_IP, libc::IP_TRANSPARENT, std::ptr::addr_of_mut!(value).cast(), &mut len)
    };
    // Unknown counts as transparent: the names are then read per connection.
    status != 0 || value != 0
}

/// Dotted-quad text, as inet_ntop writes it, without its printf.
fn ipv4_text(octets: [u8; 4]) -> String {
    let mut text = String::with_capacity(15);
    for (index, octet) in octets.into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Whether a datagram (or an error) is waiting, without taking it: a
/// zero-length `MSG_PEEK` read. Ok(false) when the queue is empty. A
/// pending socket error is consumed by the peek and returned as Err.
pub fn datagram_waiting(fd: RawFd) -> io::Result<bool> {
    // SAFETY: a zero-length read writes no memory; a dangling (non-null)
    // pointer is allowed for it.
    let peeked = retrying(|| unsafe {
        libc::recv(fd, std::ptr::NonNull::<u8>::dangling().as_ptr().cast(), 0, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    })?;
    Ok(matches!(peeked, Progress::Done(_)))
}

/// Whether `poll` says the socket is writable right now.
pub fn writable_now(fd: RawFd) -> bool {
    let mut entry = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call; timeout 0.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready > 0 && entry.revents & libc::POLLOUT != 0
}

/// One `send` of the whole datagram (connected sockets).
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<Progress> {
    // SAFETY: `data` is readable for `data.len()` bytes during the call.
    retrying(|| unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) })
}

/// One `sendto` of the whole datagram to `to`.
pub fn send_to(fd: RawFd, data: &[u8], to: &RawAddr) -> io::Result<Progress> {
    // SAFETY: `data` is readable for `data.len()` bytes and `to` holds an
    // address of `to.len` bytes, during the call.
    retrying(|| unsafe { libc::sendto(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS, to.as_ptr(), to.len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn peeking_tells_an_empty_queue_from_a_waiting_datagram_and_takes_nothing() {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        assert!(!datagram_waiting(b.as_raw_fd()).expect("peek"));
        a.send(b"").expect("send an empty datagram");
        a.send(b"two").expect("send");
        assert!(datagram_waiting(b.as_raw_fd()).expect("peek"), "an empty datagram is still one");
        let mut buf = [0u8; 8];
        let mut from = RawAddr::empty();
        assert!(matches!(recv_from(b.as_raw_fd(), &mut buf, &mut from), Ok(Progress::Done(0))));
        assert!(matches!(recv_from(b.as_raw_fd(), &mut buf, &mut from), Ok(Progress::Done(3))));
        assert_eq!(&buf[..3], b"two");
        assert_eq!(from.len, 0, "an unnamed peer has no address");
        assert!(!datagram_waiting(b.as_raw_fd()).expect("peek"));
        assert!(matches!(recv_from(b.as_raw_fd(), &mut buf, &mut from), Ok(Progress::WouldBlock)));
    }

    #[test]
    fn ipv4_text_is_the_dotted_quad_for_every_octet_value() {
        for value in 0..=255u8 {
            for octets in [[value, 0, 0, 0], [1, value, 10, 100], [255, 99, value, 9], [0, 0, 0, value]] {
                assert_eq!(ipv4_text(octets), std::net::Ipv4Addr::from(octets).to_string());
            }
        }
    }

    #[test]
    fn names_of_a_connected_socket_pair_are_read_natively() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let local = name_of(client.as_raw_fd(), Side::Local).expect("getsockname");
        let peer = name_of(client.as_raw_fd(), Side::Peer).expect("getpeername");
        assert!(local.is_common_family() && peer.is_common_family());
        assert_eq!(local.family(), libc::AF_INET);
        assert!(name_of(-1, Side::Peer).is_err());
        let unbound = UnixDatagram::unbound().expect("socket");
        assert!(name_of(unbound.as_raw_fd(), Side::Peer).is_err(), "not connected");
    }

    #[test]
    fn raw_addresses_compare_by_their_bytes() {
        let mut a = RawAddr::empty();
        let mut b = RawAddr::empty();
        assert!(a == b);
        a.len = 4;
        assert!(a != b);
        b.len = 4;
        b.storage.ss_family = libc::AF_INET as libc::sa_family_t;
        assert!(a != b);
    }
}
