//! `socket.socket` objects made and closed as `socket.socket.__init__` and
//! `socket.socket.close` do, without running their Python code: the C
//! socket's own constructor and close, and the two attributes
//! (`_io_refs`, `_closed`) the Python class keeps. While a program has
//! replaced one of those methods (or `_real_close`), or for a subclass, the
//! method is called instead.

use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

struct Refs {
    /// `socket.socket`, the Python class.
    socket_class: Py<PyType>,
    /// `_socket.socket`, the C type it extends.
    c_socket: Py<PyType>,
    /// `socket.socket.__init__` and `close` as the socket module defines
    /// them, to tell whether a program replaced them.
    python_init: Py<PyAny>,
    python_close: Py<PyAny>,
    python_real_close: Py<PyAny>,
    c_close: Py<PyAny>,
}

static REFS: PyOnceLock<Refs> = PyOnceLock::new();

fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    REFS.get_or_try_init(py, || {
        let socket_class = py.import("socket")?.getattr("socket")?.cast_into::<PyType>()?;
        let c_socket = py.import("_socket")?.getattr("socket")?.cast_into::<PyType>()?;
        Ok(Refs {
            python_init: socket_class.getattr("__init__")?.unbind(),
            python_close: socket_class.getattr("close")?.unbind(),
            python_real_close: socket_class.getattr("_real_close")?.unbind(),
            c_close: c_socket.getattr("close")?.unbind(),
            socket_class: socket_class.unbind(),
            c_socket: c_socket.unbind(),
        })
    })
}

/// `socket.socket(family, type, proto, fileno)`: a new socket, or one for
/// an fd already open when `fileno` is given (which the caller still owns
/// if this fails).
pub fn new_socket<'py>(
    py: Python<'py>,
    family: libc::c_int,
    sock_type: libc::c_int,
    proto: libc::c_int,
    fileno: Option<RawFd>,
) -> PyResult<Bound<'py, PyAny>> {
    let refs = refs(py)?;
    let class = refs.socket_class.bind(py);
    let args = match fileno {
        Some(fd) => PyTuple::new(py, [family, sock_type, proto, fd])?,
        None => PyTuple::new(py, [family, sock_type, proto])?,
    };
    if !class.getattr(intern!(py, "__init__"))?.is(refs.python_init.bind(py)) {
        return class.call1(args);
    }
    // SAFETY: attached. `class` is a live type; PyType_GetSlot works on
    // static and heap types alike since 3.10 and gives the C socket's tp_new
    // (the Python class defines no __new__) and the C type's tp_init, the
    // function `_socket.socket.__init__` wraps. tp_new returns a new
    // reference or NULL with an exception set; tp_init is given the object
    // tp_new made and the argument tuple, as type_call would.
    let sock = unsafe {
        // A slot is a nullable function pointer: Option<fn> has its layout,
        // with NULL as None.
        let new: Option<ffi::newfunc> = std::mem::transmute(ffi::PyType_GetSlot(class.as_type_ptr(), ffi::Py_tp_new));
        let init: Option<ffi::initproc> =
            std::mem::transmute(ffi::PyType_GetSlot(refs.c_socket.bind(py).as_type_ptr(), ffi::Py_tp_init));
        let (Some(new), Some(init)) = (new, init) else {
            return class.call1(args);
        };
        let sock = Bound::from_owned_ptr_or_err(py, new(class.as_type_ptr(), args.as_ptr(), std::ptr::null_mut()))?;
        if init(sock.as_ptr(), args.as_ptr(), std::ptr::null_mut()) < 0 {
            return Err(PyErr::fetch(py));
        }
        sock
    };
    sock.setattr(intern!(py, "_io_refs"), 0)?;
    sock.setattr(intern!(py, "_closed"), false)?;
    Ok(sock)
}

/// Whether `sock` is a `socket.socket` itself, not a subclass (which may
/// override any method).
pub fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    Ok(sock.get_type().is(refs(py)?.socket_class.bind(py)))
}

/// `sock.close()`.
pub fn close_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    let refs = refs(py)?;
    let class = refs.socket_class.bind(py);
    if !is_plain_socket(sock)?
        || !class.getattr(intern!(py, "close"))?.is(refs.python_close.bind(py))
        || !class.getattr(intern!(py, "_real_close"))?.is(refs.python_real_close.bind(py))
    {
        return sock.call_method0(intern!(py, "close")).map(drop);
    }
    sock.setattr(intern!(py, "_closed"), true)?;
    let io_refs: i64 = sock.getattr(intern!(py, "_io_refs"))?.extract()?;
    if io_refs <= 0 {
        refs.c_close.bind(py).call1((sock,))?;
    }
    Ok(())
}

/// `socket.socket(family, type, proto)`, non-blocking: the socket
/// `create_connection` connects.
#[pyfunction]
pub fn nonblocking_socket(py: Python<'_>, family: libc::c_int, sock_type: libc::c_int, proto: libc::c_int) -> PyResult<Bound<'_, PyAny>> {
    // SOCK_NONBLOCK makes socket(2) give a non-blocking fd and the socket
    // object a timeout of 0.0, as setblocking(False) would, with no ioctl;
    // `socket.type` leaves the flag out.
    new_socket(py, family, sock_type | libc::SOCK_NONBLOCK, proto, None)
}
