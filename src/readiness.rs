//! Readiness: the mio poll, fd watchers for `add_reader`/`add_writer` and
//! the native `sock_*` calls, the cross-thread waker and the signal wakeup
//! pipe.
//!
//! mio registers everything edge-triggered, while asyncio's `add_reader`
//! promises level-triggered callbacks (called on every iteration while the fd
//! stays readable). After a watcher's callback has had its turn, the fd is
//! re-armed with `EPOLL_CTL_MOD`, which makes epoll report it again if it is
//! still ready: level-triggered behaviour at one syscall per delivered event.
//! A waiting `sock_*` call needs no re-arming: it only waits after its
//! syscall found the socket drained (EAGAIN), and retries until it does again
//! or completes, which is exactly what edge-triggered readiness asks for.

use crate::support::int_hash::IntMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::handles::Handle;
use crate::sock_calls::SockCall;
use crate::support::sync::lock;
use crate::transports::Attached;

const WAKER_TOKEN: Token = Token(usize::MAX);
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Read,
    Write,
}

/// What waits on one direction of an fd. As in asyncio, there is one slot
/// per direction: a `sock_*` call and an `add_reader` callback replace each
/// other.
pub enum Watcher {
    Callback(Py<Handle>),
    Sock(Py<SockCall>),
}

impl Watcher {
    fn is_live(&self) -> bool {
        match self {
            Watcher::Callback(handle) => !handle.get().core.is_cancelled(),
            Watcher::Sock(_) => true,
        }
    }

    /// Ends a watcher that lost its slot: a callback is cancelled, as
    /// asyncio cancels a replaced or removed handle; a `sock_*` call is left
    /// waiting, as asyncio leaves its future.
    pub fn retire(self, py: Python<'_>) {
        if let Watcher::Callback(handle) = self {
            Handle::cancel(handle.bind(py));
        }
    }
}

#[derive(Default)]
struct FdWatch {
    reader: Option<Watcher>,
    writer: Option<Watcher>,
    /// A transport (or listener) owning the fd; registered edge-triggered
    /// for both directions for its whole life, never re-armed.
    attached: Option<Attached>,
}

impl FdWatch {
    fn slot(&mut self, direction: Direction) -> &mut Option<Watcher> {
        match direction {
            Direction::Read => &mut self.reader,
            Direction::Write => &mut self.writer,
        }
    }

    fn interest(&self) -> Option<Interest> {
        if self.attached.is_some() {
            return Some(Interest::READABLE | Interest::WRITABLE);
        }
        match (self.reader.is_some(), self.writer.is_some()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

/// What one poll found.
#[derive(Default)]
pub struct Dispatch {
    pub handles: Vec<Py<Handle>>,
    pub attached: Vec<Attached>,
    pub sock_calls: Vec<Py<SockCall>>,
    pub signal_pipe_ready: bool,
    /// Fds whose callbacks were delivered, re-armed before the next poll.
    delivered_callbacks: Vec<RawFd>,
}

pub struct Poller {
    /// `None` once the loop is closed, like `os`.
    poll: Mutex<Option<Poll>>,
    /// The loop's other OS resources, released by `release`.
    os: Mutex<Option<OsParts>>,
    watches: Mutex<IntMap<RawFd, FdWatch>>,
    watch_count: AtomicUsize,
    rearm: Mutex<Vec<RawFd>>,
    /// Set when `rearm` is non-empty, so the common case costs one load.
    rearm_pending: AtomicBool,
}

struct OsParts {
    /// A duplicate of the poll's epoll fd, so that registering needs no
    /// lock the poll holds while it waits.
    registry: Registry,
    waker: Waker,
    signal_reader: UnixStream,
    signal_writer: UnixStream,
}

fn closed_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(&registry, WAKER_TOKEN)?;
        let (mut signal_reader, signal_writer) = UnixStream::pair()?;
        registry.register(&mut signal_reader, SIGNAL_TOKEN, Interest::READABLE)?;
        Ok(Self {
            poll: Mutex::new(Some(poll)),
            os: Mutex::new(Some(OsParts { registry, waker, signal_reader, signal_writer })),
            watches: Mutex::new(IntMap::default()),
            watch_count: AtomicUsize::new(0),
            rearm: Mutex::new(Vec::new()),
            rearm_pending: AtomicBool::new(false),
        })
    }

    /// Closes the loop's file descriptors (epoll, its duplicate, the waker
    /// and the signal pipe), as `loop.close()` does in asyncio. Registering
    /// afterwards fails with EBADF, waking and polling do nothing.
    pub fn release(&self) {
        let os = lock(&self.os).take();
        let poll = lock(&self.poll).take();
        drop((os, poll));
    }

    fn with_registry<T>(&self, action: impl FnOnce(&Registry) -> io::Result<T>) -> io::Result<T> {
        match lock(&self.os).as_ref() {
            Some(os) => action(&os.registry),
            None => Err(closed_error()),
        }
    }

    /// The fd to pass to `signal.set_wakeup_fd`: the C signal handler writes
    /// the signal number there, which wakes the poll.
    pub fn signal_wakeup_fd(&self) -> RawFd {
        lock(&self.os).as_ref().map_or(-1, |os| os.signal_writer.as_raw_fd())
    }

    pub fn wake(&self) -> io::Result<()> {
        match lock(&self.os).as_ref() {
            Some(os) => os.waker.wake(),
            None => Ok(()),
        }
    }

    pub fn has_watches(&self) -> bool {
        self.watch_count.load(Ordering::Relaxed) > 0
    }

    /// Installs `watcher` as the fd's reader or writer. Returns the watcher
    /// it replaced, which the caller retires (outside of any lock).
    pub fn watch(&self, fd: RawFd, direction: Direction, watcher: Watcher) -> io::Result<Option<Watcher>> {
        let mut watches = lock(&self.watches);
        let is_new = !watches.contains_key(&fd);
        let entry = watches.entry(fd).or_default();
        let was_registered = entry.interest().is_some();
        let previous = entry.slot(direction).replace(watcher);
        let interest = entry.interest().unwrap_or(Interest::READABLE);
        let outcome = if was_registered {
            self.reregister(fd, interest)
        } else {
            self.register(fd, interest)
        };
        match outcome {
            Ok(()) => {
                if is_new {
                    self.watch_count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(previous)
            }
            Err(err) => {
                // Undo, so the table keeps matching what epoll watches.
                let installed = std::mem::replace(entry.slot(direction), previous);
                if is_new {
                    watches.remove(&fd);
                }
                drop(watches);
                drop(installed);
                Err(err)
            }
        }
    }

    /// Removes the fd's reader or writer and returns it.
    pub fn unwatch(&self, fd: RawFd, direction: Direction) -> Option<Watcher> {
        let mut watches = lock(&self.watches);
        let entry = watches.get_mut(&fd)?;
        let removed = entry.slot(direction).take();
        removed.as_ref()?;
        self.settle_after_removal(&mut watches, fd);
        removed
    }

    /// Removes `call` from the slot, unless something else has replaced it
    /// there since. Returns whether it was removed.
    pub fn unwatch_sock_call(&self, fd: RawFd, direction: Direction, call: &Py<SockCall>) -> bool {
        let mut watches = lock(&self.watches);
        let Some(entry) = watches.get_mut(&fd) else { return false };
        let slot = entry.slot(direction);
        if !matches!(slot, Some(Watcher::Sock(waiting)) if waiting.is(call)) {
            return false;
        }
        let removed = slot.take();
        self.settle_after_removal(&mut watches, fd);
        drop(watches);
        drop(removed);
        true
    }

    /// After a watcher or transport left the fd's entry: re-register the fd
    /// for what remains, or forget it when nothing does.
    fn settle_after_removal(&self, watches: &mut IntMap<RawFd, FdWatch>, fd: RawFd) {
        match watches.get(&fd).and_then(FdWatch::interest) {
            Some(interest) => {
                // The fd may already be closed; its watch is gone from epoll
                // then, which is what we want.
                let _ = self.reregister(fd, interest);
            }
            None => {
                watches.remove(&fd);
                self.watch_count.fetch_sub(1, Ordering::Relaxed);
                let _ = self.with_registry(|registry| registry.deregister(&mut SourceFd(&fd)));
            }
        }
    }

    /// Visits every Python object the poller holds, for the garbage
    /// collector: a loop dropped with watchers or transports still on it
    /// forms cycles through them. `try_lock`: the collector may run while
    /// the loop thread holds the lock; a skipped visit only keeps objects
    /// alive longer.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(watches) = self.watches.try_lock() else { return Ok(()) };
        for watch in watches.values() {
            for watcher in [&watch.reader, &watch.writer].into_iter().flatten() {
                match watcher {
                    Watcher::Callback(handle) => visit.call(handle)?,
                    Watcher::Sock(call) => visit.call(call)?,
                }
            }
            if let Some(owner) = &watch.attached {
                owner.visit(visit)?;
            }
        }
        Ok(())
    }

    /// Forgets every watcher and transport (loop close) and returns them,
    /// to be released outside the lock.
    pub fn unwatch_all(&self) -> (Vec<Watcher>, Vec<Attached>) {
        self.drain(&mut lock(&self.watches))
    }

    /// `unwatch_all` for the garbage collector, which may run while this
    /// thread holds the lock: then nothing is cleared.
    pub fn try_unwatch_all(&self) -> Option<(Vec<Watcher>, Vec<Attached>)> {
        let mut watches = self.watches.try_lock().ok()?;
        Some(self.drain(&mut watches))
    }

    fn drain(&self, watches: &mut IntMap<RawFd, FdWatch>) -> (Vec<Watcher>, Vec<Attached>) {
        let mut handles = Vec::new();
        let mut attached = Vec::new();
        for (fd, watch) in watches.drain() {
            let _ = self.with_registry(|registry| registry.deregister(&mut SourceFd(&fd)));
            handles.extend(watch.reader);
            handles.extend(watch.writer);
            attached.extend(watch.attached);
        }
        self.watch_count.store(0, Ordering::Relaxed);
        (handles, attached)
    }

    /// Hands the fd to a transport or listener. A watcher left on a reused
    /// fd number is replaced and returned for cancelling.
    pub fn attach(&self, fd: RawFd, owner: Attached) -> io::Result<Vec<Watcher>> {
        let mut watches = lock(&self.watches);
        let is_new = !watches.contains_key(&fd);
        let entry = watches.entry(fd).or_default();
        let was_registered = entry.interest().is_some();
        let stale: Vec<Watcher> = entry.reader.take().into_iter().chain(entry.writer.take()).collect();
        let previous = entry.attached.replace(owner);
        let interest = Interest::READABLE | Interest::WRITABLE;
        let outcome = if was_registered { self.reregister(fd, interest) } else { self.register(fd, interest) };
        match outcome {
            Ok(()) => {
                if is_new {
                    self.watch_count.fetch_add(1, Ordering::Relaxed);
                }
                drop(watches);
                drop(previous);
                Ok(stale)
            }
            Err(err) => {
                let installed = std::mem::replace(&mut entry.attached, previous);
                if is_new {
                    watches.remove(&fd);
                }
                drop(watches);
                drop((installed, stale));
                Err(err)
            }
        }
    }

    /// Takes the fd back from its owner (before the fd closes).
    pub fn detach(&self, fd: RawFd) -> Option<Attached> {
        let mut watches = lock(&self.watches);
        let entry = watches.get_mut(&fd)?;
        let removed = entry.attached.take();
        removed.as_ref()?;
        self.settle_after_removal(&mut watches, fd);
        removed
    }

    fn register(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        match self.with_registry(|registry| registry.register(&mut SourceFd(&fd), Token(fd as usize), interest)) {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => self.reregister(fd, interest),
            other => other,
        }
    }

    fn reregister(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        match self.with_registry(|registry| registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest)) {
            // The fd was closed and its number reused without remove_reader:
            // epoll dropped the old watch, so register the new file.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                self.with_registry(|registry| registry.register(&mut SourceFd(&fd), Token(fd as usize), interest))
            }
            other => other,
        }
    }

    /// Re-arms the fds whose callbacks ran since the last poll (see the
    /// module docs).
    #[inline]
    pub fn rearm_delivered(&self) {
        if self.rearm_pending.load(Ordering::Relaxed) {
            self.rearm_pending.store(false, Ordering::Relaxed);
            self.rearm_now();
        }
    }

    fn rearm_now(&self) {
        let pending = std::mem::take(&mut *lock(&self.rearm));
        if pending.is_empty() {
            return;
        }
        let watches = lock(&self.watches);
        for fd in pending {
            if let Some(interest) = watches.get(&fd).and_then(FdWatch::interest) {
                let _ = self.reregister(fd, interest);
            }
        }
    }

    /// Waits for readiness. Must be called from the loop's thread only.
    pub fn poll(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        match lock(&self.poll).as_mut() {
            Some(poll) => poll.poll(events, timeout),
            None => Err(closed_error()),
        }
    }

    /// Turns poll events into the handles to run, asyncio's `_process_events`.
    pub fn dispatch(&self, py: Python<'_>, events: &Events, out: &mut Dispatch) {
        let watches = lock(&self.watches);
        for event in events.iter() {
            match event.token() {
                WAKER_TOKEN => {}
                SIGNAL_TOKEN => out.signal_pipe_ready = true,
                Token(token) => {
                    let fd = token as RawFd;
                    let Some(watch) = watches.get(&fd) else { continue };
                    // As asyncio's selectors do, an error or hang-up wakes
                    // both the reader and the writer.
                    let failed = event.is_error() || event.is_read_closed() || event.is_write_closed();
                    if let Some(owner) = watch.attached.as_ref() {
                        if owner.note_ready(event.is_readable(), event.is_writable() || failed, failed) {
                            out.attached.push(owner.clone_ref(py));
                        }
                        // loop.sendfile() waits on a transport's fd through
                        // a watcher, handled below.
                    }
                    let mut delivered = false;
                    if event.is_readable() || failed {
                        delivered |= Self::deliver(py, watch.reader.as_ref(), out);
                    }
                    if event.is_writable() || failed {
                        delivered |= Self::deliver(py, watch.writer.as_ref(), out);
                    }
                    if delivered {
                        out.delivered_callbacks.push(fd);
                    }
                }
            }
        }
        drop(watches);
        if !out.delivered_callbacks.is_empty() {
            lock(&self.rearm).append(&mut out.delivered_callbacks);
            self.rearm_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Queues a ready watcher; true when it is a callback, whose fd must be
    /// re-armed for level-triggered behaviour.
    fn deliver(py: Python<'_>, watcher: Option<&Watcher>, out: &mut Dispatch) -> bool {
        match watcher.filter(|w| w.is_live()) {
            Some(Watcher::Callback(handle)) => {
                out.handles.push(handle.clone_ref(py));
                true
            }
            Some(Watcher::Sock(call)) => {
                out.sock_calls.push(call.clone_ref(py));
                false
            }
            None => false,
        }
    }

    /// Reads the signal numbers the C signal handler wrote to the pipe.
    pub fn drain_signal_pipe(&self) -> Vec<u8> {
        let mut signums = Vec::new();
        let mut buf = [0u8; 256];
        let os = lock(&self.os);
        let Some(os) = os.as_ref() else { return signums };
        loop {
            match (&os.signal_reader).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => signums.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        signums
    }
}
