//! `call_soon` as a raw METH_FASTCALL method.
//!
//! `call_soon` is the hottest entry point of the loop: every task step and
//! every future callback goes through it. PyO3's generic argument parsing and
//! call trampoline cost about 200 instructions per call there, more than the
//! scheduling itself, so this one method is exposed through a hand-written
//! fastcall function. It implements exactly the signature
//! `call_soon(callback, *args, context=None)`, with CPython's wording for
//! argument errors, and shares its body with the PyO3 method.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::event_loop::LoopCore;

const NAME: &CStr = c"call_soon";
const DOC: &CStr = c"call_soon(callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.";

/// Builds the method descriptor, to be placed on `ferroloop.Loop`.
pub fn descriptor(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: NAME.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: call_soon_fastcall },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: DOC.as_ptr(),
    }));
    let loop_type = py.get_type::<LoopCore>();
    // SAFETY: attached to the interpreter; `def` is leaked, so it outlives
    // the descriptor as CPython requires, and `loop_type` is a live type
    // object. The call returns a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(loop_type.as_ptr().cast::<ffi::PyTypeObject>(), def),
        )
    }
}

unsafe extern "C" fn call_soon_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL method with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: CPython passes `slf` (an instance of LoopCore, checked by
        // the method descriptor), `nargs` positional arguments at `args`
        // followed by one value per name in `kwnames`, all borrowed for the
        // duration of the call.
        unsafe { call_soon_impl(py, slf, args, nargsf, kwnames) }
    }));
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(PanicException::new_err("ferroloop panicked in call_soon")),
    };
    match result {
        Ok(handle) => handle.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

unsafe fn call_soon_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY (whole function): see call_soon_fastcall; every pointer read
    // here is within the argument vector CPython handed us.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
    // The method descriptor has already checked that `slf` is a LoopCore.
    let slf = unsafe { slf.cast_unchecked::<LoopCore>() };
    if nargs == 0 {
        return Err(PyTypeError::new_err("call_soon() missing 1 required positional argument: 'callback'"));
    }
    let callback = unsafe { Bound::from_borrowed_ptr(py, *args) };
    let mut context = None;
    if !kwnames.is_null() {
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast::<PyTuple>()?;
        for (i, name) in names.iter().enumerate() {
            let value = unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + i)) };
            let is_context = name.cast::<PyString>().map(|s| s.to_str().ok() == Some("context")).unwrap_or(false);
            if !is_context {
                return Err(PyTypeError::new_err(format!(
                    "call_soon() got an unexpected keyword argument '{}'",
                    name.str()?
                )));
            }
            context = Some(value);
        }
    }
    let extra = if nargs == 1 {
        PyTuple::empty(py)
    } else {
        let extra = unsafe { std::slice::from_raw_parts(args.add(1), nargs - 1) };
        PyTuple::new(py, extra.iter().map(|&arg| unsafe { Bound::from_borrowed_ptr(py, arg) }))?
    };
    let handle = LoopCore::schedule_soon(slf, callback, extra, context.filter(|c| !c.is_none()))?;
    Ok(handle.into_any())
}
