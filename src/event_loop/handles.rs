//! `Handle` and `TimerHandle`: a callback scheduled on the loop, with
//! asyncio's API (`cancel`, `cancelled`, `when`, `get_context`, repr).
//!
//! Both classes share `HandleCore`. They are separate native classes rather
//! than a class hierarchy so the loop reaches a handle's state with a plain
//! pointer dereference on its hot path.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::internal_calls::InternalCall;
use crate::event_loop::LoopCore;
use crate::support::pyrefs;
use crate::support::sync::lock;
use crate::time::timers::TimerItem;
use crate::sock_calls::SockCall;
use crate::transports::stream::StreamTransport;
use crate::transports::Attached;

struct Payload {
    callback: Py<PyAny>,
    args: Py<PyTuple>,
}

pub struct HandleCore {
    /// The callback and its arguments; released on `cancel()` as asyncio
    /// does, so a cancelled timer does not keep its callback alive.
    payload: Mutex<Option<Payload>>,
    context: ManuallyDrop<Py<PyAny>>,
    loop_obj: ManuallyDrop<Py<LoopCore>>,
    cancelled: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
    /// In debug mode asyncio keeps the repr of a cancelled handle, which
    /// names its callback, for later slow-callback reports.
    cancelled_repr: Mutex<Option<String>>,
}

impl HandleCore {
    pub fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        loop_obj: Py<LoopCore>,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            payload: Mutex::new(Some(Payload { callback, args })),
            context: ManuallyDrop::new(context),
            loop_obj: ManuallyDrop::new(loop_obj),
            cancelled: AtomicBool::new(false),
            source_traceback,
            cancelled_repr: Mutex::new(None),
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn loop_obj(&self) -> &Py<LoopCore> {
        &self.loop_obj
    }

    pub fn callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.payload).as_ref().map(|p| p.callback.clone_ref(py))
    }

    pub fn args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        lock(&self.payload).as_ref().map(|p| p.args.clone_ref(py))
    }

    pub fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.source_traceback.as_ref()
    }

    /// Marks the handle cancelled and releases its callback. Returns false
    /// if it was already cancelled. `debug_repr` is computed first when the
    /// loop is in debug mode.
    fn cancel(&self, debug_repr: impl FnOnce() -> Option<String>) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        if self.loop_obj.get().debug_enabled() {
            *lock(&self.cancelled_repr) = debug_repr();
        }
        self.cancelled.store(true, Ordering::Relaxed);
        // Take the payload out before dropping it: dropping may run Python
        // code, which must not happen while the lock is held.
        let released = lock(&self.payload).take();
        drop(released);
        true
    }

    /// Runs the callback inside its context. An error is the callback's own
    /// exception; the loop decides how to report it.
    #[inline]
    pub fn run(&self, py: Python<'_>) -> PyResult<()> {
        // Bound clones: dropping them is a plain decref, without the
        // attached-thread check that dropping a `Py` performs.
        let (callback, args) = match &*lock(&self.payload) {
            Some(p) => (p.callback.bind(py).clone(), p.args.bind(py).clone()),
            None => return Ok(()),
        };
        call_in_context(py, self.context.bind(py), &callback, &args)
    }

    /// The callback and its arguments as asyncio's handles name them
    /// (`format_helpers._format_callback_source`); None once cancelled.
    pub fn callback_source(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let (Some(callback), Some(args)) = (self.callback(py), self.args(py)) else {
            return Ok(None);
        };
        let refs = pyrefs::get(py)?;
        let format = refs.format_callback_source.bind(py);
        let source = if refs.format_callback_takes_debug {
            // 3.13+ shows the arguments in debug mode only; asyncio passes
            // the loop's get_debug() as it is.
            let debug = self.loop_obj.bind(py).call_method0(pyo3::intern!(py, "get_debug"))?;
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item(pyo3::intern!(py, "debug"), debug)?;
            format.call((callback, args), Some(&kwargs))?
        } else {
            format.call1((callback, args))?
        };
        Ok(Some(source.str()?.to_string()))
    }

    fn repr_info(&self, py: Python<'_>, class_name: &str, when: Option<f64>) -> PyResult<String> {
        if let Some(frozen) = lock(&self.cancelled_repr).as_ref() {
            return Ok(frozen.clone());
        }
        let mut info = vec![class_name.to_owned()];
        if self.is_cancelled() {
            info.push("cancelled".to_owned());
        }
        if let Some(when) = when {
            info.push(format!("when={}", py_float_repr(py, when)?));
        }
        if let Some(source) = self.callback_source(py)? {
            info.push(source);
        }
        if let Some(tb) = &self.source_traceback {
            let tb = tb.bind(py);
            if let Ok(list) = tb.cast::<PyList>() {
                if let Some(last) = list.iter().last() {
                    let filename = last.get_item(0)?;
                    let lineno = last.get_item(1)?;
                    info.push(format!("created at {}:{}", filename.str()?, lineno.str()?));
                }
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    /// Calls `visit` on every object this handle references, stopping at
    /// the first error, as a `tp_traverse` does.
    fn visit_refs<E>(&self, mut visit: impl FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        visit(&self.context)?;
        visit(self.loop_obj.as_any())?;
        if let Some(tb) = &self.source_traceback {
            visit(tb)?;
        }
        // The garbage collector runs with the GIL held, and nothing holds
        // this lock across a call into Python, so try_lock only fails if we
        // are inside `run`/`cancel` bookkeeping; skipping the visit then is
        // conservative (the objects are kept alive).
        if let Ok(guard) = self.payload.try_lock() {
            if let Some(p) = guard.as_ref() {
                visit(&p.callback)?;
                visit(p.args.as_any())?;
            }
        }
        Ok(())
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.visit_refs(|obj| visit.call(obj))
    }

    fn clear(&self) {
        let released = self.payload.try_lock().ok().and_then(|mut g| g.take());
        drop(released);
    }
}

impl Drop for HandleCore {
    fn drop(&mut self) {
        // SAFETY: a HandleCore is created by the loop's methods and lives
        // inside a Handle/TimerHandle object, so it is dropped either by that
        // object's tp_dealloc or by the method that failed to wrap it; both
        // run attached to the interpreter. Decrementing directly skips the
        // per-object "are we attached?" check that dropping a `Py` performs,
        // which is measurable on the call_soon path.
        let py = unsafe { Python::assume_attached() };
        if let Some(payload) = self.payload.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            payload.callback.drop_ref(py);
            payload.args.drop_ref(py);
        }
        // SAFETY: the fields are never used again: this is their last use,
        // inside the owner's drop.
        let (context, loop_obj) = unsafe { (ManuallyDrop::take(&mut self.context), ManuallyDrop::take(&mut self.loop_obj)) };
        context.drop_ref(py);
        loop_obj.drop_ref(py);
        if let Some(tb) = self.source_traceback.take() {
            tb.drop_ref(py);
        }
    }
}

/// Runs `work` with `context` (a `contextvars.Context`) entered: the native
/// transports run their protocol's callbacks this way, in the context
/// captured when they were made, as asyncio's reader and writer handles do.
pub fn in_context<T>(py: Python<'_>, context: &Bound<'_, PyAny>, work: impl FnOnce() -> T) -> PyResult<T> {
    // SAFETY: attached to the interpreter; `context` is a strong reference
    // that outlives both calls. Exit runs only after a successful Enter, and
    // `work` leaves no exception pending (its errors are values), so the
    // pair stays balanced.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        let outcome = work();
        if ffi::PyContext_Exit(context.as_ptr()) != 0 {
            // Only a context entered elsewhere meanwhile fails here; the
            // work is done, so the failure is reported, not raised.
            PyErr::fetch(py).write_unraisable(py, Some(context));
        }
        Ok(outcome)
    }
}

/// Calls `callback(*args)` with `context` entered, as `Context.run` does.
#[inline]
pub fn call_in_context(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    // SAFETY: we are attached to the interpreter (`py`), and `context`,
    // `callback` and `args` are strong references that outlive the call.
    // `PyContext_Exit` runs only after a successful `PyContext_Enter`, with
    // any exception of the call already fetched, so the pair stays balanced
    // and no C-API function is called with an exception pending. A non-Context
    // `context` makes `PyContext_Enter` fail with TypeError, not crash.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) != 0 {
            let err = PyErr::fetch(py);
            if ffi::PyContext_CheckExact(context.as_ptr()) != 0 {
                return Err(err);
            }
            // asyncio calls `context.run(callback, *args)`: a context that is
            // not a Context fails on that attribute lookup.
            return Err(not_a_context(context, err));
        }
        let result = crate::support::thread_exit::object_call(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut());
        let call_error = if result.is_null() { Some(PyErr::fetch(py)) } else { None };
        let exit_failed = ffi::PyContext_Exit(context.as_ptr()) != 0;
        if !result.is_null() {
            ffi::Py_DECREF(result);
        }
        if let Some(err) = call_error {
            if exit_failed {
                drop(PyErr::fetch(py));
            }
            return Err(err);
        }
        if exit_failed {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(())
}

fn not_a_context(context: &Bound<'_, PyAny>, enter_error: PyErr) -> PyErr {
    match context.getattr(pyo3::intern!(context.py(), "run")) {
        Err(lookup_error) => lookup_error,
        Ok(_) => enter_error,
    }
}

fn py_float_repr(py: Python<'_>, value: f64) -> PyResult<String> {
    Ok(pyo3::types::PyFloat::new(py, value).repr()?.to_string())
}

/// The Python API both handle classes share: asyncio's `Handle` methods and
/// the private attributes introspection tools read. `$extra` adds the
/// class's own methods to the same `#[pymethods]` block.
macro_rules! handle_pymethods {
    ($class:ident, $name:literal, { $($extra:tt)* }) => {
        #[pymethods]
        impl $class {
            fn cancelled(&self) -> bool {
                self.core.is_cancelled()
            }

            fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
                self.core.context.clone_ref(py)
            }

            /// Runs the callback now, reporting an exception through the
            /// loop's exception handler (asyncio's `Handle._run`).
            fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
                let py = slf.py();
                match slf.get().core.run(py) {
                    Ok(()) => Ok(()),
                    Err(err) => crate::event_loop::report_callback_error(py, &slf.get().core, slf.as_any(), err),
                }
            }

            #[getter]
            fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
                self.core.callback(py)
            }

            #[getter]
            fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
                self.core.args(py)
            }

            #[getter]
            fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
                self.core.loop_obj.clone_ref(py).into_any()
            }

            #[getter]
            fn _cancelled(&self) -> bool {
                self.core.is_cancelled()
            }

            #[getter]
            fn _context(&self, py: Python<'_>) -> Py<PyAny> {
                self.core.context.clone_ref(py)
            }

            #[getter]
            fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
                self.core.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
            }

            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                self.core.repr_info(py, $name, self.repr_when())
            }

            fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
                self.core.traverse(&visit)
            }

            fn __clear__(&self) {
                self.core.clear();
            }

            $($extra)*
        }
    };
}

/// The handle classes, for the direct `tp_traverse` below.
trait HasCore: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    fn core(&self) -> &HandleCore;
}

impl HasCore for Handle {
    fn core(&self) -> &HandleCore {
        &self.core
    }
}

impl HasCore for TimerHandle {
    fn core(&self) -> &HandleCore {
        &self.core
    }
}

/// `tp_traverse` for the handle classes, installed over the one PyO3
/// generates. PyO3's wrapper looks up the base class's traverse, guards
/// against re-entering the interpreter and catches panics on every call,
/// which cost about 600 instructions per scheduled timer (each handle is
/// traversed a few times by the young-generation collections) against ~200
/// for the visits themselves. The handle classes have no base class but
/// `object`, no `__dict__`, and a traversal that cannot panic or call into
/// Python, so none of that is needed.
unsafe extern "C" fn traverse_handle<T: HasCore>(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: the collector calls tp_traverse with the GIL held, on a live
    // instance of the type the slot was installed on, which is `T` (the
    // classes are final). Borrowing adds no reference, and a frozen pyclass
    // is read through a shared reference with no borrow flag.
    let handle = unsafe {
        let py = Python::assume_attached();
        pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<T>()
    };
    // Instances of a heap type visit their type, as CPython's own heap
    // types (and PyO3's generated traverse) do.
    // SAFETY: `visit` and `arg` come from the collector for this call, and
    // the type object outlives its instances.
    let type_visited = unsafe { visit(ffi::Py_TYPE(obj).cast(), arg) };
    if type_visited != 0 {
        return type_visited;
    }
    let visited = handle.get().core().visit_refs(|referent| {
        // SAFETY: as above; `referent` is a live object the handle owns.
        match unsafe { visit(referent.as_ptr(), arg) } {
            0 => Ok(()),
            stop => Err(stop),
        }
    });
    visited.err().unwrap_or(0)
}

/// Replaces the handle classes' `tp_traverse` (see `traverse_handle`).
pub fn install_direct_traverse(py: Python<'_>) {
    fn install<T: HasCore>(py: Python<'_>) {
        let ty = py.get_type::<T>().as_type_ptr();
        // SAFETY: `ty` is the class's heap type object, created by PyO3 with
        // Py_TPFLAGS_HAVE_GC (the class defines __traverse__) and not yet
        // used by any instance, since this runs at module initialisation.
        // Writing the slot and calling PyType_Modified is how C extensions
        // adjust a type's slots after creation.
        unsafe {
            (*ty).tp_traverse = Some(traverse_handle::<T>);
            ffi::PyType_Modified(ty);
        }
    }
    install::<Handle>(py);
    install::<TimerHandle>(py);
}

/// A callback scheduled with `call_soon`, or registered for an fd or signal.
#[pyclass(module = "ferroloop", frozen, weakref)]
pub struct Handle {
    pub core: HandleCore,
}

impl Handle {
    fn repr_when(&self) -> Option<f64> {
        None
    }
}

handle_pymethods!(Handle, "Handle", {
    pub fn cancel(slf: &Bound<'_, Self>) {
        slf.get().core.cancel(|| slf.repr().ok().map(|r| r.to_string()));
    }
});

/// A callback scheduled for a point in time (`call_later`, `call_at`).
#[pyclass(module = "ferroloop", frozen, weakref)]
pub struct TimerHandle {
    pub core: HandleCore,
    when: f64,
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn new(core: HandleCore, when: f64) -> Self {
        Self { core, when, scheduled: AtomicBool::new(false) }
    }

    fn repr_when(&self) -> Option<f64> {
        Some(self.when)
    }

    pub fn when_value(&self) -> f64 {
        self.when
    }
}

impl TimerItem for Py<TimerHandle> {
    fn is_cancelled(&self) -> bool {
        self.get().core.is_cancelled()
    }

    fn set_scheduled(&self, scheduled: bool) {
        self.get().scheduled.store(scheduled, Ordering::Relaxed);
    }
}

handle_pymethods!(TimerHandle, "TimerHandle", {
    fn when(&self) -> f64 {
        self.when
    }

    fn cancel(slf: &Bound<'_, Self>) {
        let this = slf.get();
        let newly = this.core.cancel(|| slf.repr().ok().map(|r| r.to_string()));
        if newly && this.scheduled.load(Ordering::Relaxed) {
            this.core.loop_obj.get().timer_cancelled();
        }
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    fn __lt__(&self, other: &Self) -> bool {
        self.when < other.when
    }

    fn __le__(&self, other: &Self) -> bool {
        self.when <= other.when
    }

    fn __gt__(&self, other: &Self) -> bool {
        self.when > other.when
    }

    fn __ge__(&self, other: &Self) -> bool {
        self.when >= other.when
    }
});

/// An entry of the ready queue.
pub enum Scheduled {
    Plain(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// A transport (or listener) whose fd became ready: it runs its own
    /// I/O, with no Python handle in between.
    Io(Attached),
    /// A waiting `sock_*` call whose socket became ready: it retries its
    /// syscall and settles its future, also with no Python handle.
    Sock(Py<SockCall>),
    /// A new stream transport starting to read, right after its
    /// `connection_made` (asyncio's `_add_reader` handle): it runs no
    /// protocol code, so it needs no handle or context of its own.
    StartReading(Py<StreamTransport>),
    /// `connection_made` or `connection_lost` of a stream transport, which
    /// asyncio schedules as handles no other code sees.
    Internal(Box<InternalCall>),
}

impl Scheduled {
    /// The callback handle, None for transport I/O.
    #[inline]
    pub fn core(&self) -> Option<&HandleCore> {
        match self {
            Scheduled::Plain(h) => Some(&h.get().core),
            Scheduled::Timer(t) => Some(&t.get().core),
            Scheduled::Io(_) | Scheduled::Sock(_) | Scheduled::StartReading(_) | Scheduled::Internal(_) => None,
        }
    }

    pub fn as_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Scheduled::Plain(h) => h.bind(py).clone().into_any(),
            Scheduled::Timer(t) => t.bind(py).clone().into_any(),
            Scheduled::Io(s) => s.as_object(py),
            Scheduled::Sock(c) => c.bind(py).clone().into_any(),
            Scheduled::StartReading(t) => t.bind(py).clone().into_any(),
            Scheduled::Internal(call) => match call.as_handle(py) {
                Ok(handle) => handle.into_any(),
                Err(_) => call.transport(py).clone().into_any(),
            },
        }
    }

    /// Releases the entry with a plain decref (the loop thread is attached).
    #[inline]
    pub fn release(self, py: Python<'_>) {
        match self {
            Scheduled::Plain(h) => h.drop_ref(py),
            Scheduled::Timer(t) => t.drop_ref(py),
            Scheduled::Io(s) => s.release(py),
            Scheduled::Sock(c) => c.drop_ref(py),
            Scheduled::StartReading(t) => t.drop_ref(py),
            Scheduled::Internal(call) => call.release(py),
        }
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Scheduled::Plain(h) => visit.call(h),
            Scheduled::Timer(t) => visit.call(t),
            Scheduled::Io(s) => s.visit(visit),
            Scheduled::Sock(c) => visit.call(c),
            Scheduled::StartReading(t) => visit.call(t),
            Scheduled::Internal(call) => call.visit(visit),
        }
    }
}

pub fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}
