//! Callbacks the loop schedules for its own stream transports, as
//! ready-queue entries with no `Handle` object (`Scheduled::Internal`).
//!
//! asyncio's transports schedule `protocol.connection_made(transport)` and
//! `transport._call_connection_lost(exc)` with `call_soon`, and nothing
//! outside the transport ever sees those handles: none can be cancelled or
//! inspected. So the loop keeps only what running them takes (the call and
//! the context a handle would have, a copy of the one current when
//! scheduled), and makes a `Handle` only if one is asked for: to report an
//! error in the callback as asyncio's handle would, or for a slow-callback
//! report. In debug mode real handles are scheduled instead, for their
//! source traceback and `_current_handle`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::handles::{call_in_context, in_context, Handle, HandleCore, Scheduled};
use crate::event_loop::{copy_current_context, report_callback_error, LoopCore};
use crate::support::sync::lock;
use crate::transports::stream::StreamTransport;

enum Call {
    /// `protocol.connection_made(transport)`, bound when scheduled as
    /// asyncio binds it.
    ConnectionMade { connection_made: Py<PyAny> },
    /// `transport._call_connection_lost(exc)`.
    ConnectionLost { exc: Py<PyAny> },
}

impl Call {
    /// The callback and arguments asyncio's handle for it holds.
    fn callback_and_args<'py>(
        &self,
        transport: &Bound<'py, StreamTransport>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = transport.py();
        Ok(match self {
            Call::ConnectionMade { connection_made } => {
                (connection_made.bind(py).clone(), PyTuple::new(py, [transport.as_any()])?)
            }
            Call::ConnectionLost { exc } => {
                (transport.getattr(intern!(py, "_call_connection_lost"))?, PyTuple::new(py, [exc.bind(py)])?)
            }
        })
    }
}

pub struct InternalCall {
    transport: Py<StreamTransport>,
    call: Call,
    context: Py<PyAny>,
}

impl InternalCall {
    /// Schedules `connection_made(transport)` as `loop.call_soon` would.
    pub(crate) fn connection_made(
        event_loop: &Bound<'_, LoopCore>,
        transport: &Bound<'_, StreamTransport>,
        connection_made: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::schedule(event_loop, transport, Call::ConnectionMade { connection_made: connection_made.unbind() })
    }

    /// Schedules `transport._call_connection_lost(exc)` as the transport's
    /// `self._loop.call_soon(self._call_connection_lost, exc)` would.
    pub(crate) fn connection_lost(
        event_loop: &Bound<'_, LoopCore>,
        transport: &Bound<'_, StreamTransport>,
        exc: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::schedule(event_loop, transport, Call::ConnectionLost { exc: exc.unbind() })
    }

    fn schedule(event_loop: &Bound<'_, LoopCore>, transport: &Bound<'_, StreamTransport>, call: Call) -> PyResult<()> {
        let core = event_loop.get();
        if core.debug_enabled() {
            let (callback, args) = call.callback_and_args(transport)?;
            LoopCore::schedule_soon(event_loop, callback, args, None)?;
            return Ok(());
        }
        core.check_closed()?;
        Self::push(event_loop, transport, call)
    }

    fn push(event_loop: &Bound<'_, LoopCore>, transport: &Bound<'_, StreamTransport>, call: Call) -> PyResult<()> {
        let py = event_loop.py();
        let entry = InternalCall { transport: transport.clone().unbind(), call, context: copy_current_context(py)? };
        lock(&event_loop.get().sched).ready.push_back(Scheduled::Internal(Box::new(entry)));
        Ok(())
    }

    pub(crate) fn transport<'py>(&self, py: Python<'py>) -> &Bound<'py, StreamTransport> {
        self.transport.bind(py)
    }

    /// Runs the call in its context; an error is reported as the
    /// handle's would be.
    pub(crate) fn run(&self, py: Python<'_>) -> PyResult<()> {
        let context = self.context.bind(py);
        let outcome = match &self.call {
            Call::ConnectionMade { connection_made } => {
                let args = PyTuple::new(py, [self.transport.bind(py)])?;
                call_in_context(py, context, connection_made.bind(py), &args)
            }
            Call::ConnectionLost { exc } => {
                let transport = self.transport.bind(py);
                in_context(py, context, || {
                    StreamTransport::call_connection_lost(transport, exc.bind(py).clone())
                })
                .and_then(|outcome| outcome)
            }
        };
        let Err(err) = outcome else { return Ok(()) };
        let handle = self.as_handle(py)?;
        report_callback_error(py, &handle.get().core, handle.as_any(), err)
    }

    /// The `Handle` asyncio would have had for this call.
    pub(crate) fn as_handle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, Handle>> {
        let transport = self.transport.bind(py);
        let (callback, args) = self.call.callback_and_args(transport)?;
        let loop_obj = transport.get().loop_obj(py).clone().unbind();
        let core = HandleCore::new(callback.unbind(), args.unbind(), self.context.clone_ref(py), loop_obj, None);
        Bound::new(py, Handle { core })
    }

    /// Releases the entry with plain decrefs (the loop thread is attached).
    pub(crate) fn release(self, py: Python<'_>) {
        self.transport.drop_ref(py);
        self.context.drop_ref(py);
        match self.call {
            Call::ConnectionMade { connection_made } => connection_made.drop_ref(py),
            Call::ConnectionLost { exc } => exc.drop_ref(py),
        }
    }

    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.context)?;
        match &self.call {
            Call::ConnectionMade { connection_made } => visit.call(connection_made),
            Call::ConnectionLost { exc } => visit.call(exc),
        }
    }
}
