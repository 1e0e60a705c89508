//! asyncio `Server`'s record of the connections it serves: what its
//! `_attach` and `_detach` do, done natively while the server's methods are
//! asyncio's own. Before 3.13 they keep a count; since, a `WeakSet` of the
//! transports.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PySet, PyWeakrefReference};

struct Refs {
    attach: Py<PyAny>,
    detach: Py<PyAny>,
    /// Before 3.13 the methods keep a count, `_active_count`.
    counted: bool,
    /// `weakref.WeakSet`, whose inner set of references is changed directly
    /// when a server's `_clients` is one.
    weak_set: Py<PyAny>,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let server = py.import("asyncio.base_events")?.getattr("Server")?;
        Ok(Refs {
            attach: server.getattr("_attach")?.unbind(),
            detach: server.getattr("_detach")?.unbind(),
            counted: py.version_info() < (3, 13),
            weak_set: py.import("weakref")?.getattr("WeakSet")?.unbind(),
        })
    })
}

/// A 3.13+ server's `_clients` and its inner set, when `_clients` is a
/// stdlib `WeakSet` with no removals pending: then `WeakSet.add` and
/// `discard` would only add a reference to, or discard one from, that set.
fn plain_clients<'py>(server: &Bound<'py, PyAny>, refs: &Refs) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PySet>)>> {
    let py = server.py();
    let clients = server.getattr(intern!(py, "_clients"))?;
    if !clients.get_type().is(refs.weak_set.bind(py)) || clients.getattr(intern!(py, "_pending_removals"))?.is_truthy()? {
        return Ok(None);
    }
    let data = clients.getattr(intern!(py, "data"))?;
    Ok(data.cast_exact::<PySet>().ok().cloned().map(|set| (clients, set)))
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
    // A closed server is left to the method itself, for its assertion
    // (which `python -O` leaves out).
    let own = is_asyncios(server, method, &refs.attach)? && !server.getattr(intern!(py, "_sockets"))?.is_none();
    if !refs.counted {
        if own {
            if let Some((clients, data)) = plain_clients(server, refs)? {
                let remove = clients.getattr(intern!(py, "_remove"))?;
                return data.add(PyWeakrefReference::new_with(transport, remove)?);
            }
        }
        return server.call_method1(method, (transport,)).map(drop);
    }
    if !own {
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
        if is_asyncios(server, method, &refs.detach)? {
            if let Some((_, data)) = plain_clients(server, refs)? {
                data.discard(PyWeakrefReference::new(transport)?)?;
                if data.is_empty() && server.getattr(intern!(py, "_sockets"))?.is_none() {
                    server.call_method0(intern!(py, "_wakeup"))?;
                }
                return Ok(());
            }
        }
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
