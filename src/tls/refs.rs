//! The Python objects TLS needs, looked up on first use: `ssl` is
//! optional in CPython builds, and `ferroloop._tls` imports this module.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

pub(super) struct Refs {
    pub memory_bio: Py<PyAny>,
    pub ssl_object: Py<PyAny>,
    /// `ssl.SSLContext.wrap_bio`, to tell the stdlib's own from an override.
    pub context_wrap_bio: Py<PyAny>,
    /// asyncio's `SSLAgainErrors`: `(SSLWantReadError, SSLSyscallError)`.
    pub again_errors: Py<PyAny>,
    pub ssl_error: Py<PyAny>,
    pub zero_return_error: Py<PyAny>,
    pub certificate_error: Py<PyAny>,
    pub cancelled_error: Py<PyAny>,
    pub buffered_protocol: Py<PyAny>,
    /// `SSLProtocolState`'s members, in `TlsState` order.
    pub states: Vec<Py<PyAny>>,
    pub create_transport_context: Py<PyAny>,
    pub handshake_timeout: Py<PyAny>,
    pub shutdown_timeout: Py<PyAny>,
    pub read_high_water_kib: i64,
    pub write_high_water_kib: i64,
    pub log_threshold_for_connlost_writes: u64,
    pub sendfile_fallback: Py<PyAny>,
    pub logger: Py<PyAny>,
    /// `warnings.warn`, for a transport dropped unclosed (possibly at
    /// interpreter exit, when nothing can be imported any more).
    pub warn: Py<PyAny>,
    pub resource_warning: Py<PyAny>,
    /// Since 3.12 an abort hands its exception on to the stream transport
    /// (`_force_close(exc)`); 3.11 calls `abort()`.
    pub abort_passes_exception: bool,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

pub(super) fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        let sslproto = py.import("asyncio.sslproto")?;
        let constants = py.import("asyncio.constants")?;
        let state = sslproto.getattr("SSLProtocolState")?;
        let states = ["UNWRAPPED", "DO_HANDSHAKE", "WRAPPED", "FLUSHING", "SHUTDOWN"]
            .iter()
            .map(|name| state.getattr(*name).map(Bound::unbind))
            .collect::<PyResult<Vec<_>>>()?;
        let again = PyTuple::new(py, [ssl.getattr("SSLWantReadError")?, ssl.getattr("SSLSyscallError")?])?;
        Ok(Refs {
            memory_bio: ssl.getattr("MemoryBIO")?.unbind(),
            ssl_object: ssl.getattr("SSLObject")?.unbind(),
            context_wrap_bio: ssl.getattr("SSLContext")?.getattr("wrap_bio")?.unbind(),
            again_errors: again.into_any().unbind(),
            ssl_error: ssl.getattr("SSLError")?.unbind(),
            zero_return_error: ssl.getattr("SSLZeroReturnError")?.unbind(),
            certificate_error: ssl.getattr("CertificateError")?.unbind(),
            cancelled_error: py.import("asyncio.exceptions")?.getattr("CancelledError")?.unbind(),
            buffered_protocol: py.import("asyncio.protocols")?.getattr("BufferedProtocol")?.unbind(),
            states,
            create_transport_context: sslproto.getattr("_create_transport_context")?.unbind(),
            handshake_timeout: constants.getattr("SSL_HANDSHAKE_TIMEOUT")?.unbind(),
            shutdown_timeout: constants.getattr("SSL_SHUTDOWN_TIMEOUT")?.unbind(),
            read_high_water_kib: constants.getattr("FLOW_CONTROL_HIGH_WATER_SSL_READ")?.extract()?,
            write_high_water_kib: constants.getattr("FLOW_CONTROL_HIGH_WATER_SSL_WRITE")?.extract()?,
            log_threshold_for_connlost_writes: constants.getattr("LOG_THRESHOLD_FOR_CONNLOST_WRITES")?.extract()?,
            sendfile_fallback: constants.getattr("_SendfileMode")?.getattr("FALLBACK")?.unbind(),
            logger: py.import("asyncio.log")?.getattr("logger")?.unbind(),
            warn: py.import("warnings")?.getattr("warn")?.unbind(),
            resource_warning: py.get_type::<pyo3::exceptions::PyResourceWarning>().into_any().unbind(),
            abort_passes_exception: py.version_info() >= (3, 12),
        })
    })
}

/// The references, if anything looked them up already.
pub(super) fn loaded(py: Python<'_>) -> Option<&'static Refs> {
    REFS.get(py)
}

/// The classes the native objects report as `__class__` (defined in
/// `ferroloop._tls`, subclasses of asyncio's), so that `isinstance` checks
/// against asyncio's TLS classes hold.
pub(super) fn reported_class(py: Python<'_>, cell: &'static PyOnceLock<Py<PyAny>>, name: &str) -> PyResult<Py<PyAny>> {
    let class = cell.get_or_try_init(py, || Ok::<_, PyErr>(py.import("ferroloop._tls")?.getattr(name)?.unbind()))?;
    Ok(class.clone_ref(py))
}
