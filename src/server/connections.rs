//! asyncio `Server`'s count of the connections it serves: what its
//! `_attach` and `_detach` do on 3.10-3.12, done natively while the server's
//! methods are asyncio's own. Since 3.13 they keep a `WeakSet` of the
//! transports, and are called as they are.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

struct Refs {
    attach: Py<PyAny>,
    detach: Py<PyAny>,
    /// Before 3.13 the methods keep a count, `_active_count`.
    counted: bool,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let server = py.import("asyncio.base_events")?.getattr("Server")?;
        Ok(Refs {
            attach: server.getattr("_attach")?.unbind(),
            detach: server.getattr("_detach")?.unbind(),
            counted: py.version_info() < (3, 13),
        })
    })
}

/// Whether `server`'s method `name` is asyncio's `own`.
fn is_asyncios(server: &Bound<'_, PyAny>, name: &Bound<'_, pyo3::types::PyString>, own: &Py<PyAny>) -> PyResult<bool> {
    Ok(server.get_type().getattr(name)?.is(own.bind(server.py())))
}

/// `server._attach(transport)` (`server._attach()` before 3.13).
pub(crate) fn attach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let refs = refs(py)?;
    let method = intern!(py, "_attach");
    if !refs.counted {
        return server.call_method1(method, (transport,)).map(drop);
    }
    // A closed server is left to the method itself, for its assertion
    // (which `python -O` leaves out).
    if !is_asyncios(server, method, &refs.attach)? || server.getattr(intern!(py, "_sockets"))?.is_none() {
        return server.call_method0(method).map(drop);
    }
    let count = intern!(py, "_active_count");
    server.setattr(count, server.getattr(count)?.add(1)?)
}

/// `server._detach(transport)` (`server._detach()` before 3.13).
pub(crate) fn detach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let refs = refs(py)?;
    let method = intern!(py, "_detach");
    if !refs.counted {
        return server.call_method1(method, (transport,)).map(drop);
    }
    let count_name = intern!(py, "_active_count");
    if !is_asyncios(server, method, &refs.detach)? {
        return server.call_method0(method).map(drop);
    }
    let count = server.getattr(count_name)?;
    if !count.gt(0)? {
        return server.call_method0(method).map(drop);
    }
    let left = count.sub(1)?;
    let none_left = left.eq(0)?;
    server.setattr(count_name, left)?;
    if none_left && server.getattr(intern!(py, "_sockets"))?.is_none() {
        server.call_method0(intern!(py, "_wakeup"))?;
    }
    Ok(())
}
