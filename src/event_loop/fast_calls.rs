//! `call_soon`, `call_later` and `call_at` as raw METH_FASTCALL methods.
//!
//! These are the loop's hottest entry points: every task step and future
//! callback goes through `call_soon`, every `asyncio.sleep` and timeout
//! through `call_later`. PyO3's generic argument parsing and call trampoline
//! cost about 200 instructions per call there, more than the scheduling
//! itself, so these methods get hand-written fastcall functions. Each parses
//! exactly its asyncio signature, `(<leading>, callback, *args, context=None)`,
//! with CPython's wording for argument errors, and shares its body with the
//! PyO3 method of the same name.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::event_loop::LoopCore;

/// The arguments of `name(<params...>, *args, context=None)` after parsing.
struct Parsed<'py> {
    leading: [Option<Bound<'py, PyAny>>; 2],
    rest: Bound<'py, PyTuple>,
    context: Option<Bound<'py, PyAny>>,
}

fn missing_error(name: &str, missing: &[&str]) -> PyErr {
    let quoted: Vec<String> = missing.iter().map(|p| format!("'{p}'")).collect();
    let list = match quoted.as_slice() {
        [one] => one.clone(),
        [first, second] => format!("{first} and {second}"),
        _ => quoted.join(", "),
    };
    let plural = if missing.len() == 1 { "argument" } else { "arguments" };
    PyTypeError::new_err(format!(
        "{name}() missing {} required positional {plural}: {list}",
        missing.len()
    ))
}

/// Parses a vectorcall argument vector against `params` (at most two
/// positional-or-keyword parameters), `*args` and `context=`.
///
/// # Safety
/// `args` must point to `nargs` positional arguments followed by one value
/// per name in `kwnames` (NULL or a tuple of str), all borrowed references
/// valid for `'py`, as CPython passes them to a METH_FASTCALL function.
#[inline(always)]
unsafe fn parse<'py>(
    py: Python<'py>,
    name: &str,
    params: &[&str],
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Parsed<'py>> {
    let mut leading: [Option<Bound<'py, PyAny>>; 2] = [None, None];
    let positional = nargs.min(params.len());
    if kwnames.is_null() && nargs == params.len() {
        // The common call: every parameter positional, no *args, no context.
        for (i, slot) in leading.iter_mut().enumerate().take(nargs) {
            // SAFETY: i < nargs, within the positional part of the vector.
            *slot = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) });
        }
        return Ok(Parsed { leading, rest: PyTuple::empty(py), context: None });
    }
    for (i, slot) in leading.iter_mut().enumerate().take(positional) {
        // SAFETY: i < nargs, within the positional part of the vector.
        *slot = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) });
    }
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: CPython passes a tuple of keyword names, borrowed.
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast::<PyTuple>()?;
        for (i, key) in names.iter().enumerate() {
            // SAFETY: keyword values follow the positional arguments, one per name.
            let value = unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + i)) };
            let key_str = key.cast::<PyString>()?.to_str()?;
            if key_str == "context" {
                context = Some(value);
                continue;
            }
            match params.iter().position(|p| *p == key_str) {
                Some(index) if leading[index].is_none() => leading[index] = Some(value),
                Some(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got multiple values for argument '{key_str}'"
                    )))
                }
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{key_str}'"
                    )))
                }
            }
        }
    }
    if leading.iter().take(params.len()).any(Option::is_none) {
        let missing: Vec<&str> = params
            .iter()
            .zip(leading.iter())
            .filter(|(_, value)| value.is_none())
            .map(|(param, _)| *param)
            .collect();
        return Err(missing_error(name, &missing));
    }
    let rest = if nargs <= params.len() {
        PyTuple::empty(py)
    } else {
        // SAFETY: the range params.len()..nargs lies within the positional
        // part. PyTuple_New returns a new tuple of that many NULL slots (or
        // NULL with an exception set), each filled once with a new reference.
        unsafe {
            let count = nargs - params.len();
            let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(count as ffi::Py_ssize_t))?;
            for i in 0..count {
                let item = *args.add(params.len() + i);
                ffi::Py_INCREF(item);
                ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
            }
            tuple.cast_into_unchecked::<PyTuple>()
        }
    };
    Ok(Parsed { leading, rest, context: context.filter(|c| !c.is_none()) })
}

fn take<'py>(slot: &mut Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    // `parse` has checked that every parameter is present.
    slot.take().ok_or_else(|| PyTypeError::new_err("missing argument"))
}

/// Runs `body` as the implementation of a METH_FASTCALL method: attached to
/// the interpreter, with panics turned into PanicException.
///
/// # Safety
/// Must be called from a METH_FASTCALL method of LoopCore, with the
/// arguments CPython passed to it.
unsafe fn fastcall(
    slf: *mut ffi::PyObject,
    body: impl FnOnce(Python<'_>, &Bound<'_, LoopCore>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls METH_FASTCALL methods with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slf` is borrowed for the call, and the method descriptor
        // has checked that it is a LoopCore instance.
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
        let slf = unsafe { slf.cast_unchecked::<LoopCore>() };
        body(py, slf)
    }));
    let result = outcome.unwrap_or_else(|_| Err(PanicException::new_err("ferroloop panicked while scheduling a callback")));
    match result {
        Ok(handle) => handle.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn call_soon_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: this is a METH_FASTCALL method of LoopCore (see `descriptors`).
    unsafe {
        fastcall(slf, |py, slf| {
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            let mut parsed = parse(py, "call_soon", &["callback"], args, nargs, kwnames)?;
            let callback = take(&mut parsed.leading[0])?;
            Ok(LoopCore::schedule_soon(slf, callback, parsed.rest, parsed.context)?.into_any())
        })
    }
}

/// `call_later` and `call_at`: `(time, callback, *args, context=None)`.
///
/// # Safety
/// As for `fastcall`, with the argument vector CPython passed.
unsafe fn timer_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    name: &str,
    params: &[&str; 2],
    relative: bool,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from a METH_FASTCALL method of LoopCore.
    unsafe {
        fastcall(slf, |py, slf| {
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            let mut parsed = parse(py, name, params, args, nargs, kwnames)?;
            let time = take(&mut parsed.leading[0])?;
            let callback = take(&mut parsed.leading[1])?;
            Ok(LoopCore::schedule_timer(slf, &time, relative, callback, parsed.rest, parsed.context)?.into_any())
        })
    }
}

unsafe extern "C" fn call_later_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: this is a METH_FASTCALL method of LoopCore (see `descriptors`).
    unsafe { timer_fastcall(slf, args, nargsf, kwnames, "call_later", &["delay", "callback"], true) }
}

unsafe extern "C" fn call_at_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: this is a METH_FASTCALL method of LoopCore (see `descriptors`).
    unsafe { timer_fastcall(slf, args, nargsf, kwnames, "call_at", &["when", "callback"], false) }
}

type FastCall = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

const METHODS: [(&CStr, FastCall, &CStr); 3] = [
    (
        c"call_soon",
        call_soon_fastcall,
        c"call_soon(callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.",
    ),
    (
        c"call_later",
        call_later_fastcall,
        c"call_later(delay, callback, *args, context=None)\n--\n\nArrange for a callback to be called after a delay in seconds.",
    ),
    (
        c"call_at",
        call_at_fastcall,
        c"call_at(when, callback, *args, context=None)\n--\n\nArrange for a callback to be called at the loop time `when`.",
    ),
];

/// The method descriptors, by name, to be placed on `ferroloop.Loop`.
pub fn descriptors(py: Python<'_>) -> PyResult<Vec<(&'static str, Bound<'_, PyAny>)>> {
    let loop_type = py.get_type::<LoopCore>();
    let mut out = Vec::with_capacity(METHODS.len());
    for (name, function, doc) in METHODS {
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: function },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        }));
        // SAFETY: attached to the interpreter; `def` is leaked, so it
        // outlives the descriptor as CPython requires, and `loop_type` is a
        // live type object. The call returns a new reference or NULL with an
        // exception set.
        let descriptor = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(loop_type.as_ptr().cast::<ffi::PyTypeObject>(), def),
            )?
        };
        out.push((name.to_str().unwrap_or("call"), descriptor));
    }
    Ok(out)
}
