//! Transports: the byte-moving half of asyncio's network API.

pub mod datagram;
pub mod pipe;
pub(crate) mod read_bytes;
pub(crate) mod sockaddr;
pub(crate) mod shared;
pub(crate) mod socket_object;
pub mod stream;
pub(crate) mod stream_setup;
pub(crate) mod syscalls;
mod write_buffer;

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::server::listener::Listener;
use datagram::DatagramTransport;
use pipe::{ReadPipeTransport, WritePipeTransport};
use stream::StreamTransport;

/// A native object that owns an fd in the poller for its whole life and runs
/// its own I/O when the fd is ready, with no Python handle in between.
pub enum Attached {
    Stream(Py<StreamTransport>),
    Listener(Py<Listener>),
    Datagram(Py<DatagramTransport>),
    ReadPipe(Py<ReadPipeTransport>),
    WritePipe(Py<WritePipeTransport>),
    /// A read and a write transport on one fd (a pty given to both
    /// `connect_read_pipe` and `connect_write_pipe`).
    PipePair(Py<ReadPipeTransport>, Py<WritePipeTransport>),
}

impl Attached {
    /// Records one event's readiness; true when the object must be queued
    /// (it was not already, and has work).
    #[inline]
    pub fn note_ready(&self, readable: bool, writable: bool, hung_up: bool) -> bool {
        match self {
            Attached::Stream(t) => t.get().note_ready(readable, writable, hung_up),
            Attached::Listener(l) => l.get().note_ready(readable, hung_up),
            Attached::Datagram(t) => t.get().note_ready(readable, writable, hung_up),
            Attached::ReadPipe(t) => t.get().note_ready(readable, hung_up),
            Attached::WritePipe(t) => t.get().note_ready(readable, writable, hung_up),
            Attached::PipePair(r, w) => {
                let read = r.get().note_ready(readable, hung_up);
                w.get().note_ready(false, writable, false) | read
            }
        }
    }

    /// Runs the I/O readiness allows. An error that escapes comes back with
    /// the name of the asyncio method that part stands for, for the
    /// exception handler's message.
    pub fn process(&self, py: Python<'_>) -> Result<(), (PyErr, String)> {
        match self {
            Attached::Stream(t) => StreamTransport::process(t.bind(py))
                .map_err(|(err, method)| (err, format!("Exception in callback StreamTransport.{method}()"))),
            Attached::Listener(l) => Listener::process(l.bind(py))
                .map_err(|err| (err, "Exception in callback Listener._accept_connection()".to_owned())),
            Attached::Datagram(t) => DatagramTransport::process(t.bind(py))
                .map_err(|(err, method)| (err, format!("Exception in callback DatagramTransport.{method}()"))),
            Attached::ReadPipe(t) => ReadPipeTransport::process(t.bind(py)).map_err(read_pipe_failure),
            Attached::WritePipe(t) => WritePipeTransport::process(t.bind(py)).map_err(write_pipe_failure),
            Attached::PipePair(r, w) => {
                ReadPipeTransport::process(r.bind(py)).map_err(read_pipe_failure)?;
                WritePipeTransport::process(w.bind(py)).map_err(write_pipe_failure)
            }
        }
    }

    /// The key under which the exception handler's context names it.
    pub fn context_key(&self) -> &'static str {
        match self {
            Attached::Stream(_)
            | Attached::Datagram(_)
            | Attached::ReadPipe(_)
            | Attached::WritePipe(_)
            | Attached::PipePair(..) => "transport",
            Attached::Listener(_) => "handle",
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Attached::Stream(t) => Attached::Stream(t.clone_ref(py)),
            Attached::Listener(l) => Attached::Listener(l.clone_ref(py)),
            Attached::Datagram(t) => Attached::Datagram(t.clone_ref(py)),
            Attached::ReadPipe(t) => Attached::ReadPipe(t.clone_ref(py)),
            Attached::WritePipe(t) => Attached::WritePipe(t.clone_ref(py)),
            Attached::PipePair(r, w) => Attached::PipePair(r.clone_ref(py), w.clone_ref(py)),
        }
    }

    pub fn as_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Attached::Stream(t) => t.bind(py).clone().into_any(),
            Attached::Listener(l) => l.bind(py).clone().into_any(),
            Attached::Datagram(t) => t.bind(py).clone().into_any(),
            Attached::ReadPipe(t) | Attached::PipePair(t, _) => t.bind(py).clone().into_any(),
            Attached::WritePipe(t) => t.bind(py).clone().into_any(),
        }
    }

    /// Releases the reference with a plain decref (the thread is attached).
    #[inline]
    pub fn release(self, py: Python<'_>) {
        match self {
            Attached::Stream(t) => t.drop_ref(py),
            Attached::Listener(l) => l.drop_ref(py),
            Attached::Datagram(t) => t.drop_ref(py),
            Attached::ReadPipe(t) => t.drop_ref(py),
            Attached::WritePipe(t) => t.drop_ref(py),
            Attached::PipePair(r, w) => {
                r.drop_ref(py);
                w.drop_ref(py);
            }
        }
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Attached::Stream(t) => visit.call(t),
            Attached::Listener(l) => visit.call(l),
            Attached::Datagram(t) => visit.call(t),
            Attached::ReadPipe(t) => visit.call(t),
            Attached::WritePipe(t) => visit.call(t),
            Attached::PipePair(r, w) => {
                visit.call(r)?;
                visit.call(w)
            }
        }
    }
}

fn read_pipe_failure(err: PyErr) -> (PyErr, String) {
    (err, "Exception in callback ReadPipeTransport._read_ready()".to_owned())
}

fn write_pipe_failure(err: PyErr) -> (PyErr, String) {
    (err, "Exception in callback WritePipeTransport._write_ready()".to_owned())
}
