//! `TlsTransport`: asyncio's `_SSLProtocolTransport`, the transport a TLS
//! connection's application protocol writes to. Every call goes to the
//! `SslProtocol` behind it, as in asyncio.

use std::sync::Mutex;

use pyo3::exceptions::{PyNotImplementedError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::protocol::SslProtocol;
use super::refs::{refs, reported_class};
use crate::support::sync::lock;

struct Inner {
    /// None once `close()` was called twice, as asyncio drops it then.
    ssl_protocol: Option<Py<SslProtocol>>,
    closed: bool,
}

#[pyclass(module = "ferroloop._native", name = "SSLProtocolTransport", frozen, weakref)]
pub struct TlsTransport {
    event_loop: Py<PyAny>,
    inner: Mutex<Inner>,
}

static REPORTED_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl TlsTransport {
    pub(super) fn new(event_loop: Py<PyAny>, ssl_protocol: Py<SslProtocol>) -> Self {
        TlsTransport { event_loop, inner: Mutex::new(Inner { ssl_protocol: Some(ssl_protocol), closed: false }) }
    }

    pub(super) fn mark_closed(&self) {
        lock(&self.inner).closed = true;
    }

    /// The protocol, or asyncio's AttributeError once it is gone.
    fn protocol<'py>(&self, py: Python<'py>, attribute: &str) -> PyResult<Bound<'py, SslProtocol>> {
        match &lock(&self.inner).ssl_protocol {
            Some(protocol) => Ok(protocol.bind(py).clone()),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!("'NoneType' object has no attribute '{attribute}'"))),
        }
    }

    fn force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let protocol = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            inner.ssl_protocol.as_ref().map(|p| p.clone_ref(py))
        };
        match protocol {
            Some(protocol) => SslProtocol::abort(protocol.bind(py), exc),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl TlsTransport {
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        reported_class(py, &REPORTED_CLASS, "SSLProtocolTransportClass")
    }

    #[classattr]
    fn _start_tls_compatible() -> bool {
        true
    }

    #[getter]
    fn _sendfile_compatible(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(refs(py)?.sendfile_fallback.clone_ref(py))
    }

    #[getter(_loop)]
    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop.clone_ref(py)
    }

    #[getter(_ssl_protocol)]
    fn get_ssl_protocol(&self, py: Python<'_>) -> Option<Py<SslProtocol>> {
        lock(&self.inner).ssl_protocol.as_ref().map(|p| p.clone_ref(py))
    }

    #[getter(_closed)]
    fn get_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    #[setter(_closed)]
    fn set_closed(&self, closed: bool) {
        lock(&self.inner).closed = closed;
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(&self, py: Python<'py>, name: Bound<'py, PyAny>, default: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let protocol = self.protocol(py, "_get_extra_info")?;
        protocol.get().extra_info(py, &name, default.unwrap_or_else(|| py.None().into_bound(py)))
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        self.protocol(py, "_set_app_protocol")?.call_method1("_set_app_protocol", (protocol,)).map(drop)
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.protocol(py, "_app_protocol")?.get().app_protocol(py))
    }

    fn is_closing(&self) -> bool {
        lock(&self.inner).closed
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let (protocol, dropped) = {
            let mut inner = lock(&self.inner);
            if inner.closed {
                (None, inner.ssl_protocol.take())
            } else {
                inner.closed = true;
                (inner.ssl_protocol.as_ref().map(|p| p.clone_ref(py)), None)
            }
        };
        drop(dropped);
        match protocol {
            Some(protocol) => protocol.bind(py).call_method0("_start_shutdown").map(drop),
            None => Ok(()),
        }
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(!self.protocol(py, "_app_reading_paused")?.get().app_reading_paused())
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.protocol(py, "_pause_reading")?.get().pause_app_reading();
        Ok(())
    }

    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        SslProtocol::resume_app_reading(&self.protocol(py, "_resume_reading")?)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(&self, py: Python<'_>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let protocol = self.protocol(py, "_set_write_buffer_limits")?;
        protocol.get().set_write_buffer_limits(py, high.filter(|h| !h.is_none()), low.filter(|l| !l.is_none()))?;
        SslProtocol::control_app_writing(&protocol)
    }

    fn get_write_buffer_limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (low, high) = self.protocol(py, "_outgoing_low_water")?.get().write_buffer_limits(py);
        PyTuple::new(py, [low, high])
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.protocol(py, "_get_write_buffer_size")?.get().write_buffer_size(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(&self, py: Python<'_>, high: Option<Bound<'_, PyAny>>, low: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let protocol = self.protocol(py, "_set_read_buffer_limits")?;
        protocol.get().set_read_buffer_limits(py, high.filter(|h| !h.is_none()), low.filter(|l| !l.is_none()))?;
        SslProtocol::control_ssl_reading(&protocol)
    }

    fn get_read_buffer_limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (low, high) = self.protocol(py, "_incoming_low_water")?.get().read_buffer_limits(py);
        PyTuple::new(py, [low, high])
    }

    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<i64> {
        self.protocol(py, "_get_read_buffer_size")?.get().read_buffer_size(py)
    }

    /// Read by asyncio's sendfile fallback.
    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.protocol(py, "_app_writing_paused")?.get().app_writing_paused())
    }

    fn write(&self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!("data: expecting a bytes-like instance, got {name}")));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        let protocol = self.protocol(py, "_write_appdata")?;
        SslProtocol::write_appdata(&protocol, PyTuple::new(py, [data])?.as_any())
    }

    fn writelines(&self, py: Python<'_>, list_of_data: Bound<'_, PyAny>) -> PyResult<()> {
        SslProtocol::write_appdata(&self.protocol(py, "_write_appdata")?, &list_of_data)
    }

    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.force_close(py, None)
    }

    #[pyo3(signature = (exc))]
    fn _force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.force_close(py, exc)
    }

    /// For asyncio's tests, which fill the backlog without writing.
    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        self.protocol(py, "_write_backlog")?.get().append_write_backlog(py, &data)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        if let Ok(inner) = self.inner.try_lock() {
            if let Some(protocol) = &inner.ssl_protocol {
                visit.call(protocol)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut inner) = self.inner.try_lock() {
            let dropped = inner.ssl_protocol.take();
            drop(inner);
            drop(dropped);
        }
    }
}

impl Drop for TlsTransport {
    /// asyncio's `__del__`: a transport dropped unclosed warns.
    fn drop(&mut self) {
        let inner = match self.inner.get_mut() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        if inner.closed {
            return;
        }
        inner.closed = true;
        Python::attach(|py| {
            let Some(refs) = super::refs::loaded(py) else { return };
            let message = "unclosed transport <asyncio._SSLProtocolTransport object>";
            if let Err(err) = refs.warn.bind(py).call1((message, refs.resource_warning.bind(py))) {
                err.write_unraisable(py, None);
            }
        });
    }
}
