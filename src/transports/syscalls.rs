//! Non-blocking socket syscalls for the transports, with errno preserved so
//! that Python sees the same OSError subclass and `errno` as from `socket`.

use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

pub enum Progress {
    /// This many bytes moved; fewer than asked means the kernel had no more
    /// room (send) or no more data (recv) at that moment.
    Done(usize),
    /// Nothing moved: the call would block.
    WouldBlock,
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

/// One `recv` into `buf`, retried on EINTR.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Progress> {
    loop {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for
        // the duration of the call; an invalid fd only makes recv fail.
        let result = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        match classify(result) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Sends as much of `data` as the kernel takes, until it is all sent or the
/// socket is full. Stopping only at EAGAIN matters: with edge-triggered
/// readiness, the next writable event is only promised after a send found
/// the socket full.
pub fn send_until_blocked(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: `rest` is a valid, readable region of `rest.len()` bytes for
        // the duration of the call. MSG_NOSIGNAL turns a write to a closed
        // peer into EPIPE instead of a SIGPIPE.
        let result = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        match classify(result) {
            Ok(Progress::Done(0)) => break,
            Ok(Progress::Done(n)) => sent += n,
            Ok(Progress::WouldBlock) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                if sent > 0 {
                    // Report what went out; the error comes back on the next send.
                    break;
                }
                return Err(err);
            }
        }
    }
    Ok(sent)
}

/// A zero-length `send`: it sends nothing, but reports the socket's error
/// (not connected, reset, shut down) as `socket.send(b"")` does. A full
/// socket is no error here.
pub fn send_nothing(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: a zero-length send reads no memory; a dangling (but
        // non-null) pointer is allowed for it, and an invalid fd only makes
        // send fail.
        let result = unsafe { libc::send(fd, std::ptr::NonNull::<u8>::dangling().as_ptr().cast(), 0, libc::MSG_NOSIGNAL) };
        match classify(result) {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers; an invalid fd only makes it fail.
    let result = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An OSError of the subclass Python picks for the errno (ConnectionResetError,
/// BrokenPipeError...), with `errno` and `strerror` set, as `socket` raises.
pub fn os_error(py: Python<'_>, err: &std::io::Error) -> PyErr {
    let Some(code) = err.raw_os_error() else {
        return PyOSError::new_err(err.to_string());
    };
    // SAFETY: strerror returns a pointer to a NUL-terminated string owned by
    // libc, valid until the next strerror call; it is copied at once, with
    // the GIL held so no other Python thread calls it meanwhile.
    let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned();
    match py.get_type::<PyOSError>().call1((code, message)) {
        Ok(value) => PyErr::from_value(value),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn recv_reports_would_block_then_data() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        assert!(matches!(recv(b.as_raw_fd(), &mut buf), Ok(Progress::WouldBlock)));
        a.set_nonblocking(true).expect("nonblocking");
        assert_eq!(send_until_blocked(a.as_raw_fd(), b"ping").expect("send"), 4);
        match recv(b.as_raw_fd(), &mut buf).expect("recv") {
            Progress::Done(n) => assert_eq!(&buf[..n], b"ping"),
            Progress::WouldBlock => panic!("data was sent"),
        }
    }

    #[test]
    fn send_stops_when_the_socket_is_full() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        let big = vec![7u8; 64 << 20];
        let sent = send_until_blocked(a.as_raw_fd(), &big).expect("send");
        assert!(sent > 0 && sent < big.len(), "sent {sent}");
    }

    #[test]
    fn send_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(b);
        let err = send_until_blocked(a.as_raw_fd(), b"x").expect_err("peer is gone");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn sending_nothing_still_reports_the_socket_error() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        send_nothing(a.as_raw_fd()).expect("a connected socket takes an empty send");
        let mut buf = [0u8; 1];
        b.set_nonblocking(true).expect("nonblocking");
        assert!(matches!(recv(b.as_raw_fd(), &mut buf), Ok(Progress::WouldBlock)), "nothing was sent");
        drop(b);
        let err = send_nothing(a.as_raw_fd()).expect_err("peer is gone");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
