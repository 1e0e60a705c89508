//! Calls into Python that CPython may end the calling thread in.
//!
//! CPython 3.10 to 3.13 end a thread that asks for the GIL while the
//! interpreter finalizes (a daemon thread still running at exit) with
//! `pthread_exit`, which on glibc unwinds the thread's stack. Rust frames
//! cannot take that unwinding: a call declared as plain `extern "C"` has no
//! unwind entry, so the unwinder aborts the process, and a frame that does
//! have one drops Python objects without the GIL. A loop running in a daemon
//! thread is always inside such a call when the interpreter exits.
//!
//! So every call from the loop into Python code goes through here: typed as
//! `C-unwind`, with a guard that, if the call unwinds, blocks the thread
//! until the process exits (what CPython 3.14 does with such threads itself)
//! before the unwinding reaches any frame of ours. PyO3 guards
//! `PyGILState_Ensure` and `PyEval_RestoreThread` the same way.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::BoundObject;

/// The C-API functions the guards call, typed as able to unwind.
///
/// They are called through pointers the optimizer cannot see through: PyO3
/// declares the same symbols as plain `extern "C"`, and one module holds one
/// declaration of a symbol, so a direct call would inherit "cannot unwind"
/// and lose the guard's cleanup.
mod unwinding {
    use pyo3::ffi::{self, PyObject};

    pub type Call = unsafe extern "C-unwind" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> *mut PyObject;
    pub type Vectorcall = unsafe extern "C-unwind" fn(*mut PyObject, *const *mut PyObject, usize, *mut PyObject) -> *mut PyObject;
    type PlainCall = unsafe extern "C" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> *mut PyObject;
    type PlainVectorcall = unsafe extern "C" fn(*mut PyObject, *const *mut PyObject, usize, *mut PyObject) -> *mut PyObject;

    pub fn object_call() -> Call {
        let plain: PlainCall = ffi::PyObject_Call;
        // SAFETY: the two pointer types differ only in whether the callee
        // may unwind, which widens what the caller is prepared for.
        std::hint::black_box(unsafe { std::mem::transmute::<PlainCall, Call>(plain) })
    }

    /// `PyObject_Vectorcall` on 3.11+; on 3.10, where that is an inline
    /// function, `PyObject_VectorcallDict`, which with no dict is the same
    /// call.
    pub fn vectorcall() -> Vectorcall {
        #[cfg(Py_3_11)]
        let plain: PlainVectorcall = ffi::PyObject_Vectorcall;
        #[cfg(not(Py_3_11))]
        let plain: PlainVectorcall = ffi::PyObject_VectorcallDict;
        // SAFETY: as in `object_call`.
        std::hint::black_box(unsafe { std::mem::transmute::<PlainVectorcall, Vectorcall>(plain) })
    }

    pub type VectorcallMethod = unsafe extern "C-unwind" fn(*mut PyObject, *const *mut PyObject, usize, *mut PyObject) -> *mut PyObject;
    type PlainVectorcallMethod = unsafe extern "C" fn(*mut PyObject, *const *mut PyObject, usize, *mut PyObject) -> *mut PyObject;

    pub fn vectorcall_method() -> VectorcallMethod {
        let plain: PlainVectorcallMethod = ffi::PyObject_VectorcallMethod;
        // SAFETY: as in `object_call`.
        std::hint::black_box(unsafe { std::mem::transmute::<PlainVectorcallMethod, VectorcallMethod>(plain) })
    }
}

/// Blocks the thread for good when dropped, which only happens if the call
/// it guards unwinds: on the normal path it is forgotten.
struct HangIfUnwound;

impl Drop for HangIfUnwound {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

/// `PyObject_Call`, guarded.
///
/// # Safety
/// As for `PyObject_Call`: the GIL is held and the arguments are valid
/// (`kwargs` may be null).
pub unsafe fn object_call(
    callable: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let guard = HangIfUnwound;
    // SAFETY: the caller upholds PyObject_Call's contract.
    let result = unsafe { unwinding::object_call()(callable, args, kwargs) };
    std::mem::forget(guard);
    result
}

/// `PyObject_Vectorcall` without keyword arguments, guarded.
///
/// # Safety
/// As for `PyObject_Vectorcall`: the GIL is held, `args` points to the
/// number of arguments `nargsf` gives (and to a writable slot before them
/// when `PY_VECTORCALL_ARGUMENTS_OFFSET` is set).
pub unsafe fn vectorcall(callable: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargsf: usize) -> *mut ffi::PyObject {
    let guard = HangIfUnwound;
    // SAFETY: the caller upholds the vectorcall contract.
    let result = unsafe { unwinding::vectorcall()(callable, args, nargsf, std::ptr::null_mut()) };
    std::mem::forget(guard);
    result
}

/// `obj.name(*args)` without a bound method or an argument tuple
/// (`PyObject_VectorcallMethod`), guarded: for the calls made per
/// connection or per read.
pub fn call_method_args<'py>(obj: &Bound<'py, PyAny>, name: &Bound<'py, PyString>, args: &[&Bound<'py, PyAny>]) -> PyResult<Bound<'py, PyAny>> {
    const MOST: usize = 4;
    let py = obj.py();
    if args.len() >= MOST {
        let rest = PyTuple::new(py, args)?;
        return call_method(obj, name, rest);
    }
    let mut vector = [std::ptr::null_mut(); MOST];
    vector[0] = obj.as_ptr();
    for (slot, arg) in vector[1..].iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    let guard = HangIfUnwound;
    // SAFETY: the GIL is held (`py`); `vector` holds the receiver and then
    // `args.len()` live objects, borrowed for the call; a non-null result is
    // a new reference, owned from here on.
    let result = unsafe {
        let result = unwinding::vectorcall_method()(name.as_ptr(), vector.as_ptr(), 1 + args.len(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    };
    std::mem::forget(guard);
    result
}

/// `callable(*args)`, guarded.
pub fn call<'py, A>(callable: &Bound<'py, PyAny>, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    let py = callable.py();
    let args = args.into_pyobject(py).map_err(Into::into)?.into_bound();
    // SAFETY: the GIL is held (`py`); both objects are live for the call,
    // and a non-null result is a new reference, owned from here on.
    unsafe {
        let result = object_call(callable.as_ptr(), args.as_ptr(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// `obj.name(*args)`, guarded (the attribute lookup itself is not a call).
pub fn call_method<'py, A>(obj: &Bound<'py, PyAny>, name: &Bound<'py, PyString>, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    call(&obj.getattr(name)?, args)
}
