//! Socket addresses as Python's `socket` module returns them: `(host, port)`
//! for IPv4, `(host, port, flowinfo, scope_id)` for IPv6, a path (`str`,
//! or `bytes` for Linux's abstract namespace) for Unix sockets.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// Storage for any address the kernel hands back, zeroed so that an unnamed
/// Unix socket's empty path reads as "".
pub struct AddrStorage {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl AddrStorage {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid
        // (AF_UNSPEC) value.
        let storage = unsafe { std::mem::zeroed() };
        Self { storage, len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }

    /// The families `to_python` converts.
    pub fn supported(family: i32) -> bool {
        family == libc::AF_INET || family == libc::AF_INET6 || family == libc::AF_UNIX
    }

    /// The address as `socket.accept()` would return it, for the families
    /// `supported` lists (None for an empty address, as Python gives).
    pub fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote an AF_INET address, whose layout
                // is sockaddr_in; sockaddr_storage is large and aligned
                // enough for any address type.
                let addr = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let host = PyString::new(py, &ntop_v4(&addr.sin_addr));
                PyTuple::new(py, [host.into_any(), u16::from_be(addr.sin_port).into_pyobject(py)?.into_any()])
                    .map(Bound::into_any)
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let addr = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let host = PyString::new(py, &ntop_v6(&addr.sin6_addr));
                let items = [
                    host.into_any(),
                    u16::from_be(addr.sin6_port).into_pyobject(py)?.into_any(),
                    u32::from_be(addr.sin6_flowinfo).into_pyobject(py)?.into_any(),
                    addr.sin6_scope_id.into_pyobject(py)?.into_any(),
                ];
                PyTuple::new(py, items).map(Bound::into_any)
            }
            libc::AF_UNIX => {
                // SAFETY: as above, for sockaddr_un.
                let addr = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
                let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                let path_len = (self.len as usize).saturating_sub(offset).min(addr.sun_path.len());
                // SAFETY: sun_path is an array of c_char; viewing it as bytes
                // of the same length is sound.
                let path: &[u8] = unsafe { std::slice::from_raw_parts(addr.sun_path.as_ptr().cast(), addr.sun_path.len()) };
                if path_len > 0 && path[0] == 0 {
                    return Ok(PyBytes::new(py, &path[..path_len]).into_any());
                }
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                decode_fs(py, &path[..end])
            }
            _ => Ok(py.None().into_bound(py)),
        }
    }
}

/// The text form of an address as glibc's `inet_ntop` writes it (and so
/// Python's `socket`): RFC 5952 for IPv6, which std's formatting follows,
/// except that glibc also writes an IPv4-compatible address (`::a.b.c.d`)
/// with its IPv4 part dotted.
fn ntop_v4(addr: &libc::in_addr) -> String {
    std::net::Ipv4Addr::from(u32::from_be(addr.s_addr)).to_string()
}

fn ntop_v6(addr: &libc::in6_addr) -> String {
    let ip = std::net::Ipv6Addr::from(addr.s6_addr);
    let words = ip.segments();
    if words[..6].iter().all(|&w| w == 0) && words[6] != 0 {
        let [a, b, c, d] = [words[6] >> 8, words[6] & 0xff, words[7] >> 8, words[7] & 0xff];
        return format!("::{a}.{b}.{c}.{d}");
    }
    ip.to_string()
}

/// `PyUnicode_DecodeFSDefault`: a path as `os.fsdecode` decodes it.
fn decode_fs<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `bytes` is valid for its length; the call returns a new
    // reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeFSDefaultAndSize(bytes.as_ptr().cast(), bytes.len() as pyo3::ffi::Py_ssize_t),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ntop_v6;

    fn text(ip: &str) -> String {
        let ip: std::net::Ipv6Addr = ip.parse().expect("test address");
        ntop_v6(&libc::in6_addr { s6_addr: ip.octets() })
    }

    #[test]
    fn ipv6_text_matches_glibc() {
        assert_eq!(text("::1"), "::1");
        assert_eq!(text("::"), "::");
        assert_eq!(text("::ffff:127.0.0.1"), "::ffff:127.0.0.1");
        assert_eq!(text("::1.2.3.4"), "::1.2.3.4");
        assert_eq!(text("fe80::1:0:0:2"), "fe80::1:0:0:2");
        assert_eq!(text("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
    }
}
