//! The bytes a stream transport accepted but the kernel did not take yet.
//!
//! A queue of chunks. Small writes are copied and coalesced into the last
//! chunk, so a burst of them goes out in one syscall; a large immutable
//! `bytes` that has to wait is kept by reference instead of copied, so a
//! slow reader costs the sender no second copy of what it wrote. Sending
//! gathers the front chunks into one `sendmsg`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// From this size on, a waiting `bytes` is kept by reference.
pub const SHARE_MIN: usize = 16 * 1024;
/// A copied chunk grows up to this size before a new one starts.
const COALESCE_LIMIT: usize = 256 * 1024;
/// Chunks gathered into one send.
const MAX_IOVECS: usize = 64;

enum Chunk {
    Copied(Vec<u8>),
    /// A bytes object and its length.
    Shared(Py<PyBytes>, usize),
}

impl Chunk {
    fn bytes<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            Chunk::Copied(data) => data,
            Chunk::Shared(data, _) => data.as_bytes(py),
        }
    }
}

#[derive(Default)]
pub struct WriteBuffer {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    front_sent: usize,
    len: usize,
}

impl WriteBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `data`.
    pub fn extend(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Copied(tail)) = self.chunks.back_mut() {
            if tail.len() + data.len() <= COALESCE_LIMIT || tail.len() < SHARE_MIN {
                tail.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Copied(data.to_vec()));
    }

    /// Appends `data[offset..]`, by reference when it is large enough to be
    /// worth it, else as a copy.
    pub fn keep(&mut self, data: &Bound<'_, PyBytes>, offset: usize) {
        let bytes = data.as_bytes();
        let rest = bytes.len().saturating_sub(offset);
        if rest < SHARE_MIN {
            self.extend(&bytes[offset.min(bytes.len())..]);
            return;
        }
        if self.chunks.is_empty() {
            self.front_sent = offset;
        } else if offset > 0 {
            // Only the front chunk can start part-way.
            self.extend(&bytes[offset..]);
            return;
        }
        self.len += rest;
        self.chunks.push_back(Chunk::Shared(data.clone().unbind(), bytes.len()));
    }

    /// Sends as much as the kernel takes, gathering the front chunks; the
    /// sent bytes are consumed. Returns how many went out.
    pub fn send(&mut self, py: Python<'_>, fd: RawFd) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let mut iovecs: [libc::iovec; MAX_IOVECS] =
                [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOVECS];
            let mut count = 0;
            let mut asked = 0;
            for (index, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.bytes(py);
                let bytes = if index == 0 { &bytes[self.front_sent..] } else { bytes };
                iovecs[count] = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
                asked += bytes.len();
                count += 1;
            }
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = iovecs.as_mut_ptr();
            message.msg_iovlen = count as _;
            // SAFETY: every iovec points into a chunk this buffer owns (a
            // Vec or a bytes object it holds a reference to), unchanged for
            // the duration of the call; the kernel only reads them.
            // MSG_NOSIGNAL turns a write to a closed peer into EPIPE.
            let result = unsafe { libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL) };
            if result < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => break,
                    _ if total > 0 => break, // the error comes back on the next send
                    _ => return Err(err),
                }
            }
            let sent = result as usize;
            self.consume(sent);
            total += sent;
            if sent < asked || sent == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Drops the first `count` pending bytes (those the kernel took).
    fn consume(&mut self, mut count: usize) {
        count = count.min(self.len);
        self.len -= count;
        while count > 0 {
            let Some(front) = self.chunks.front() else { break };
            let front_len = match front {
                Chunk::Copied(data) => data.len(),
                Chunk::Shared(_, len) => *len,
            } - self.front_sent;
            if count < front_len {
                self.front_sent += count;
                return;
            }
            count -= front_len;
            self.front_sent = 0;
            self.chunks.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.front_sent = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::WriteBuffer;

    fn socket_pair() -> (i32, i32) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let status = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(status, 0);
        (fds[0], fds[1])
    }

    fn read_all(fd: i32, expected: usize) -> Vec<u8> {
        let mut out = vec![0u8; expected];
        let mut got = 0;
        while got < expected {
            // SAFETY: the destination is the unfilled part of `out`.
            let n = unsafe { libc::read(fd, out[got..].as_mut_ptr().cast(), expected - got) };
            assert!(n > 0);
            got += n as usize;
        }
        out
    }

    #[test]
    fn small_writes_coalesce_and_go_out_in_order() {
        pyo3::Python::initialize();
        pyo3::Python::attach(|py| {
            let (a, b) = socket_pair();
            let mut buffer = WriteBuffer::default();
            buffer.extend(b"hello ");
            buffer.extend(b"world");
            assert_eq!(buffer.chunks.len(), 1);
            assert_eq!(buffer.len(), 11);
            assert_eq!(buffer.send(py, a).expect("send"), 11);
            assert!(buffer.is_empty());
            assert_eq!(read_all(b, 11), b"hello world");
            // SAFETY: both fds are ours and closed once.
            unsafe { libc::close(a) };
            unsafe { libc::close(b) };
        });
    }

    #[test]
    fn large_bytes_are_kept_by_reference_and_sent_from_an_offset() {
        pyo3::Python::initialize();
        pyo3::Python::attach(|py| {
            let (a, b) = socket_pair();
            let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            let data = pyo3::types::PyBytes::new(py, &payload);
            let mut buffer = WriteBuffer::default();
            buffer.keep(&data, 100);
            buffer.extend(b"tail");
            assert!(matches!(buffer.chunks.front(), Some(super::Chunk::Shared(..))));
            assert_eq!(buffer.len(), 40_000 - 100 + 4);
            let mut sent = 0;
            let mut received = Vec::new();
            while !buffer.is_empty() {
                sent += buffer.send(py, a).expect("send");
                received.extend(read_all(b, sent - received.len()));
            }
            let mut expected = payload[100..].to_vec();
            expected.extend_from_slice(b"tail");
            assert_eq!(received, expected);
            // SAFETY: both fds are ours and closed once.
            unsafe { libc::close(a) };
            unsafe { libc::close(b) };
        });
    }
}
