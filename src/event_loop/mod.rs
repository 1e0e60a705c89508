//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap and the poller, and implements the
//! scheduling API (`call_soon`, `call_later`, `call_at`,
//! `call_soon_threadsafe`), fd watchers, and task/future creation. The run
//! loop itself lives in `run.rs`. The Python class `ferroloop.Loop` inherits
//! from this one and adds the parts of asyncio's API that are glue.

pub(crate) mod fast_calls;
pub(crate) mod handles;
pub(crate) mod internal_calls;
pub(crate) mod run;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::support::thread_exit;
use crate::diagnostics::activity::Activity;
use crate::time::clock;
use crate::event_loop::handles::{closed_error, Handle, HandleCore, Scheduled, TimerHandle};
use crate::readiness::{Direction, Poller, Watcher};
use crate::support::pyrefs;
use crate::support::sync::lock;
use crate::diagnostics::task_sites::TaskSites;
use crate::transports::read_bytes::ReadBytes;
use crate::transports::syscalls::os_error;
use crate::time::timers::TimerHeap;
use crate::diagnostics::watchdog::Watchdog;
use crate::diagnostics::metrics::{IoCounters, LoopMetrics};
use crate::sock_calls::{self, SOCK_ACCEPT, SOCK_RECVFROM, SOCK_SENDTO};

#[derive(Default)]
pub struct Schedule {
    pub ready: VecDeque<Scheduled>,
    pub timers: TimerHeap<Py<TimerHandle>>,
}

#[pyclass(module = "ferroloop._native", subclass, frozen)]
pub struct LoopCore {
    /// The ready queue and the timer heap share one lock: an iteration
    /// needs both, and taking one lock instead of two is measurably cheaper.
    pub(crate) sched: Mutex<Schedule>,
    pub(crate) poller: Poller,
    pub(crate) stopping: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// What `set_debug` was given when that was not a bool: asyncio's
    /// `get_debug` returns the value as given.
    debug_value: Mutex<Option<Py<PyAny>>>,
    /// `debug_value` is set: `get_debug` runs for every future created, so
    /// the usual case takes no lock.
    has_debug_value: AtomicBool,
    pub(crate) has_signal_handlers: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when idle.
    running_thread: AtomicU64,
    pub(crate) activity: Arc<Activity>,
    pub(crate) clock_resolution: f64,
    task_factory: Mutex<Option<Py<PyAny>>>,
    /// Where and when each task was created, while task tracking is on.
    task_sites: TaskSites,
    /// The handle being run, kept in debug mode only (asyncio's
    /// `_current_handle`, used to add `handle_traceback` to error reports).
    pub(crate) current_handle: Mutex<Option<Py<PyAny>>>,
    watchdog: Mutex<Option<Watchdog>>,
    pub(crate) metrics: Mutex<LoopMetrics>,
    pub(crate) io_counters: IoCounters,
    /// The spare `bytes` object stream reads reuse.
    pub(crate) read_bytes: ReadBytes,
    created_ns: u64,
    /// The Python side's `_transports` table (`WeakValueDictionary.data`:
    /// fd -> weak reference to the transport), for the `sock_*` checks.
    transport_table: OnceLock<Py<PyDict>>,
}

/// `(filename, line, function, created)` as `_task_site` returns it.
type TaskSiteTuple = (Py<PyAny>, i32, Py<PyAny>, f64);

fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail. CPython's
    // threading.get_ident() returns the same value on POSIX systems.
    unsafe { libc::pthread_self() as u64 }
}

/// selectors' `_fileobj_to_fd`: an int, or an object with `fileno()`.
/// `None` for a number epoll cannot take (beyond a C int), which selectors
/// only find out when registering it.
pub fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = fileobj.py();
    let number = if fileobj.is_instance_of::<PyInt>() {
        fileobj.clone()
    } else {
        let invalid = || PyValueError::new_err(format!("Invalid file object: {}", repr_or_type(fileobj)));
        let is_conversion_error = |err: &PyErr| {
            err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                || err.is_instance_of::<PyTypeError>(py)
                || err.is_instance_of::<PyValueError>(py)
        };
        fileobj
            .call_method0(intern!(py, "fileno"))
            .and_then(|fileno| py.get_type::<PyInt>().call1((fileno,)))
            .map_err(|err| if is_conversion_error(&err) { invalid() } else { err })?
    };
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {number}")));
    }
    Ok(number.extract::<RawFd>().ok())
}

fn repr_or_type(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<unrepresentable object>".to_owned())
}

pub(crate) fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: attached to the interpreter; PyContext_CopyCurrent returns a
    // new reference or NULL with an exception set, which
    // from_owned_ptr_or_err turns into a PyErr.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()) }
}

/// asyncio's `call_later` adds the delay to `self.time()`; this reproduces
/// the TypeError that addition raises for a non-number.
/// A delay or a deadline as seconds. What is not a real number fails with
/// the error of the arithmetic asyncio does with it: `self.time() + delay`
/// for a delay, `when - self.time()` for a deadline (asyncio only gets to
/// the latter when the timer is due to run; it is reported here, at once).
fn extract_seconds(value: &Bound<'_, PyAny>, relative: bool) -> PyResult<f64> {
    if let Ok(float) = value.cast_exact::<pyo3::types::PyFloat>() {
        return Ok(float.value());
    }
    value.extract::<f64>().map_err(|err| {
        // An int too large for a float fails the arithmetic the same way.
        if err.is_instance_of::<PyOverflowError>(value.py()) {
            return err;
        }
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "object".to_owned());
        let message = if relative {
            format!("unsupported operand type(s) for +: 'float' and '{type_name}'")
        } else {
            format!("unsupported operand type(s) for -: '{type_name}' and 'float'")
        };
        PyTypeError::new_err(message)
    })
}

impl LoopCore {
    #[inline]
    pub fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    pub fn timer_cancelled(&self) {
        lock(&self.sched).timers.note_cancelled();
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(())
    }

    /// Debug-mode check that a non-threadsafe method runs on the loop's thread.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.running_thread.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// asyncio checks callbacks in debug mode only; a non-callable is always
    /// refused here, since it could only fail later, far from its cause.
    #[inline(always)]
    fn check_callback(&self, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
        let py = callback.py();
        let coroutine_error = || PyTypeError::new_err(format!("coroutines cannot be used with {method}()"));
        if self.debug_enabled() {
            let refs = pyrefs::get(py)?;
            if refs.iscoroutine.bind(py).call1((callback,))?.is_truthy()?
                || refs.iscoroutinefunction.bind(py).call1((callback,))?.is_truthy()?
            {
                return Err(coroutine_error());
            }
        }
        if !callback.is_callable() {
            if pyrefs::get(py)?.iscoroutine.bind(py).call1((callback,))?.is_truthy()? {
                return Err(coroutine_error());
            }
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by {method}(), got {}",
                repr_or_type(callback)
            )));
        }
        Ok(())
    }

    #[inline(always)]
    fn handle_core(
        &self,
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<HandleCore> {
        let py = slf.py();
        let context = match context {
            Some(ctx) if !ctx.is_none() => ctx.unbind(),
            _ => copy_current_context(py)?,
        };
        let source_traceback = if self.debug_enabled() {
            Some(pyrefs::get(py)?.extract_source_traceback.call0(py)?)
        } else {
            None
        };
        Ok(HandleCore::new(
            callback.unbind(),
            args.unbind(),
            context,
            slf.clone().unbind(),
            source_traceback,
        ))
    }

    #[inline]
    fn schedule_at(
        &self,
        slf: &Bound<'_, Self>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        self.check_closed()?;
        if self.debug_enabled() {
            self.check_thread()?;
        }
        self.check_callback(&callback, "call_at")?;
        let core = self.handle_core(slf, callback, args, context)?;
        let timer = Py::new(slf.py(), TimerHandle::new(core, when))?;
        lock(&self.sched).timers.push(when, timer.clone_ref(slf.py()));
        Ok(timer)
    }

    /// The body of `call_soon`, shared with the fastcall entry point.
    #[inline]
    pub(crate) fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::enqueue(slf, callback, args, context, "call_soon", true)
    }

    /// Appends a handle to the ready queue. `thread_bound` methods are
    /// checked against the loop's thread in debug mode (the threadsafe one
    /// is not).
    #[inline(always)]
    fn enqueue(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
        thread_bound: bool,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        if thread_bound && this.debug_enabled() {
            this.check_thread()?;
        }
        this.check_callback(&callback, method)?;
        let core = this.handle_core(slf, callback, args, context)?;
        let handle = Py::new(slf.py(), Handle { core })?;
        lock(&this.sched).ready.push_back(Scheduled::Plain(handle.clone_ref(slf.py())));
        Ok(handle)
    }

    /// The body of `call_later` (`relative`) and `call_at`, shared with
    /// their fastcall entry points.
    #[inline]
    pub(crate) fn schedule_timer(
        slf: &Bound<'_, Self>,
        time: &Bound<'_, PyAny>,
        relative: bool,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        // 3.11 added these checks; before, None fails the arithmetic below.
        if time.is_none() && slf.py().version_info() >= (3, 11) {
            let message = if relative { "delay must not be None" } else { "when cannot be None" };
            return Err(PyTypeError::new_err(message));
        }
        if !relative {
            // asyncio's call_at checks the loop before it looks at `when`.
            slf.get().check_closed()?;
        }
        let seconds = extract_seconds(time, relative)?;
        let when = if relative { clock::monotonic() + seconds } else { seconds };
        slf.get().schedule_at(slf, when, callback, args, context)
    }

    /// `asyncio.Future(loop=self)`, through vectorcall: no keyword dict.
    pub(crate) fn new_future<'py>(&self, slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let refs = pyrefs::get(py)?;
        let args = [slf.as_ptr()];
        // SAFETY: `args` holds one borrowed reference, the value of the one
        // keyword named in the `("loop",)` tuple, with no positional
        // arguments; both outlive the call. The result is a new reference
        // or NULL with an exception set.
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyObject_Vectorcall(refs.future_type.as_ptr(), args.as_ptr(), 0, refs.loop_keyword.as_ptr()),
            )
        }
    }

    /// asyncio's `_ensure_fd_no_transport`: the Python method is called,
    /// for its exact error, only when the table has the fd at all.
    pub(crate) fn ensure_fd_no_transport(&self, slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        self.ensure_no_transport_on(slf, fd, fd.into_pyobject(slf.py())?.as_any())
    }

    /// The same check for `fd`, asked of the Python method with `given`
    /// (the socket, where asyncio passes the socket): its message names it.
    pub(crate) fn ensure_no_transport_on(&self, slf: &Bound<'_, Self>, fd: RawFd, given: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let Some(table) = self.transport_table.get() else { return Ok(()) };
        if table.bind(py).contains(fd)? {
            slf.call_method1(intern!(py, "_ensure_fd_no_transport"), (given,))?;
        }
        Ok(())
    }

    /// Enters a native transport in `_transports` (the storage of the
    /// Python side's WeakValueDictionary) by a plain weak reference: the
    /// transport takes it out itself when its connection is lost, so the
    /// dictionary's removal callback, a Python call, is not needed.
    pub(crate) fn register_transport(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(table) = self.transport_table.get() else { return Ok(()) };
        let reference = pyo3::types::PyWeakrefReference::new(transport)?;
        table.bind(py).set_item(fd, reference)
    }

    /// Takes `transport` out of `_transports`, unless the fd now belongs to
    /// another transport.
    pub(crate) fn unregister_transport(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(table) = self.transport_table.get() else { return Ok(()) };
        let table = table.bind(py);
        let Some(entry) = table.get_item(fd)? else { return Ok(()) };
        let referent = entry.call0()?;
        if referent.is(transport) {
            table.del_item(fd)?;
        }
        Ok(())
    }

    fn add_watch(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        direction: Direction,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let Some(fd) = fileobj_to_fd(fd)? else {
            return Err(PyOverflowError::new_err("Python int too large to convert to C int"));
        };
        let core = this.handle_core(slf, callback, args, None)?;
        let handle = Py::new(slf.py(), Handle { core })?;
        let replaced = this
            .poller
            .watch(fd, direction, Watcher::Callback(handle.clone_ref(slf.py())))
            .map_err(|err| os_error(slf.py(), &err))?;
        if let Some(old) = replaced {
            old.retire(slf.py());
        }
        Ok(handle)
    }

    fn remove_watch(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, direction: Direction) -> PyResult<bool> {
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(fd) = fileobj_to_fd(fd)? else { return Ok(false) };
        match this.poller.unwatch(fd, direction) {
            Some(watcher) => {
                watcher.retire(slf.py());
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Self {
            sched: Mutex::new(Schedule::default()),
            poller: Poller::new()?,
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            debug_value: Mutex::new(None),
            has_debug_value: AtomicBool::new(false),
            has_signal_handlers: AtomicBool::new(false),
            running_thread: AtomicU64::new(0),
            activity: Arc::new(Activity::default()),
            clock_resolution: clock::resolution(),
            task_factory: Mutex::new(None),
            task_sites: TaskSites::default(),
            current_handle: Mutex::new(None),
            watchdog: Mutex::new(None),
            metrics: Mutex::new(LoopMetrics::default()),
            io_counters: IoCounters::default(),
            read_bytes: ReadBytes::default(),
            created_ns: clock::monotonic_ns(),
            transport_table: OnceLock::new(),
        })
    }

    /// The loop's clock: `time.monotonic()`, in seconds.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    /// `BaseEventLoop._closed`, which code written against asyncio reads.
    #[getter(_closed)]
    fn closed_attribute(&self) -> bool {
        self.is_closed()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_soon(slf, callback, args, context)
    }

    /// Like `call_soon`, from any thread: wakes the loop if it is waiting in poll.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let handle = Self::enqueue(slf, callback, args, context, "call_soon_threadsafe", false)?;
        slf.get().poller.wake().map_err(|err| os_error(slf.py(), &err))?;
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::schedule_timer(slf, &delay, true, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::schedule_timer(slf, &when, false, callback, args, context)
    }

    /// Stops `run_forever` after the callbacks already due in this iteration.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// True while `run_forever` or `run_until_complete` runs.
    fn is_running(&self) -> bool {
        self.running_thread.load(Ordering::Relaxed) != 0
    }

    /// True once `close()` has been called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether debug mode is on: the value `set_debug` was given.
    fn get_debug(&self, py: Python<'_>) -> Py<PyAny> {
        if self.has_debug_value.load(Ordering::Relaxed) {
            if let Some(value) = lock(&self.debug_value).as_ref() {
                return value.clone_ref(py);
            }
        }
        PyBool::new(py, self.debug_enabled()).to_owned().into_any().unbind()
    }

    /// `BaseEventLoop._debug`, which asyncio's own code (borrowed by the
    /// loop) reads on each connection and subprocess it sets up.
    #[getter(_debug)]
    fn debug_attribute(&self, py: Python<'_>) -> Py<PyAny> {
        self.get_debug(py)
    }

    fn _set_debug_flag(&self, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        let on = enabled.is_truthy()?;
        let kept = if enabled.is_exact_instance_of::<PyBool>() { None } else { Some(enabled.clone().unbind()) };
        self.has_debug_value.store(kept.is_some(), Ordering::Relaxed);
        let previous = std::mem::replace(&mut *lock(&self.debug_value), kept);
        self.debug.store(on, Ordering::Relaxed);
        drop(previous);
        Ok(())
    }

    #[getter(_thread_id)]
    fn thread_id(&self) -> Option<u64> {
        match self.running_thread.load(Ordering::Relaxed) {
            0 => None,
            ident => Some(ident),
        }
    }

    #[setter(_thread_id)]
    fn set_thread_id(&self, ident: Option<u64>) {
        self.running_thread.store(ident.unwrap_or(0), Ordering::Relaxed);
    }

    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.current_handle).as_ref().map(|h| h.clone_ref(py))
    }

    /// Runs iterations until `stop()`; the Python `run_forever` wraps it with
    /// the bookkeeping (running loop, asyncgen hooks, signal wakeup fd).
    fn _run_forever_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        crate::event_loop::run::run_forever(slf)
    }

    /// Runs one iteration of the loop (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        crate::event_loop::run::run_one_iteration(slf)
    }

    /// Drops everything scheduled and every fd watcher (part of `close()`).
    fn _close_native(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut timers = Vec::new();
        let ready = {
            let mut sched = lock(&self.sched);
            sched.timers.drain(&mut timers);
            std::mem::take(&mut sched.ready)
        };
        let watchers = self.poller.unwatch_all();
        self.poller.release();
        drop((ready, timers, watchers));
        self.read_bytes.clear();
    }

    fn _signal_wakeup_fd(&self) -> RawFd {
        self.poller.signal_wakeup_fd()
    }

    fn _set_has_signal_handlers(&self, value: bool) {
        self.has_signal_handlers.store(value, Ordering::Relaxed);
    }

    fn _write_to_self(&self, py: Python<'_>) -> PyResult<()> {
        self.poller.wake().map_err(|err| os_error(py, &err))
    }

    /// Starts the stall watchdog (replacing a running one): `reporter(event,
    /// seconds)` is called from the watchdog thread; see `watchdog.rs`.
    fn _start_watchdog(slf: &Bound<'_, Self>, threshold: f64, reporter: Py<PyAny>) -> PyResult<()> {
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(PyValueError::new_err(format!("watchdog threshold must be a positive number of seconds, got {threshold}")));
        }
        Self::_stop_watchdog(slf);
        let this = slf.get();
        let threshold = std::time::Duration::try_from_secs_f64(threshold)
            .map_err(|_| PyOverflowError::new_err(format!("watchdog threshold too large: {threshold} seconds")))?;
        let watchdog = Watchdog::start(Arc::clone(&this.activity), threshold, reporter)?;
        *lock(&this.watchdog) = Some(watchdog);
        Ok(())
    }

    fn _stop_watchdog(slf: &Bound<'_, Self>) {
        let previous = lock(&slf.get().watchdog).take();
        if let Some(watchdog) = previous {
            // Released: the thread may be waiting for the GIL to report.
            slf.py().detach(move || watchdog.stop_and_join());
        }
    }

    fn _watchdog_running(&self) -> bool {
        lock(&self.watchdog).is_some()
    }

    /// The raw metrics: (uptime s, callbacks run, iterations, seconds waited
    /// in poll, lag p50, lag p99, lag max, lag samples).
    fn _metrics_snapshot(&self) -> (f64, u64, u64, f64, f64, f64, f64, u64) {
        let activity = self.activity.snapshot();
        let metrics = lock(&self.metrics).snapshot();
        let uptime = clock::monotonic_ns().saturating_sub(self.created_ns) as f64 / 1e9;
        (
            uptime,
            activity.callbacks_started,
            activity.iterations,
            activity.poll_wait_ns as f64 / 1e9,
            metrics.lag_p50,
            metrics.lag_p99,
            metrics.lag_max,
            metrics.lag_samples,
        )
    }

    /// (bytes received, bytes sent) by the loop's transports.
    fn _io_totals(&self) -> (u64, u64) {
        self.io_counters.totals()
    }

    /// Adds bytes a transport written in Python (UDP) moved.
    fn _count_io(&self, received: usize, sent: usize) {
        self.io_counters.add_received(received);
        self.io_counters.add_sent(sent);
    }

    /// Seconds the callback running now has been running as far as the
    /// watchdog or earlier calls saw (a lower bound), or None when the loop
    /// runs no callback: see `activity.rs`.
    fn _current_callback_age(&self) -> Option<f64> {
        self.activity.observe_callback_age(clock::monotonic_ns()).map(|ns| ns as f64 / 1e9)
    }

    /// (phase, callbacks started, iterations): see `activity.rs`.
    fn _activity(&self) -> (u8, u64, u64) {
        let snap = self.activity.snapshot();
        (snap.phase, snap.callbacks_started, snap.iterations)
    }

    /// (ready callbacks, scheduled timers, cancelled timers still in the heap).
    fn _queue_sizes(&self) -> (usize, usize, usize) {
        let sched = lock(&self.sched);
        (sched.ready.len(), sched.timers.len(), sched.timers.cancelled_count())
    }

    /// The scheduled timer handles, in no particular order.
    fn _scheduled(&self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        lock(&self.sched).timers.iter().map(|t| t.clone_ref(py)).collect()
    }

    /// Returns None, as asyncio's public method does.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_watch(slf, &fd, Direction::Read, callback, args).map(drop)
    }

    /// Returns None, as asyncio's public method does.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_watch(slf, &fd, Direction::Write, callback, args).map(drop)
    }

    /// add_reader that returns the handle, for the loop's own I/O waits
    /// (asyncio's `_add_reader`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, &fd, Direction::Read, callback, args)
    }

    /// add_writer that returns the handle (asyncio's `_add_writer`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, &fd, Direction::Write, callback, args)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, &fd, Direction::Read)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, &fd, Direction::Write)
    }

    /// A new `asyncio.Future` attached to this loop.
    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().new_future(slf)?.unbind())
    }

    /// Called once by the Python side with its `_transports` storage.
    fn _set_transport_table(&self, table: Bound<'_, PyDict>) {
        let _ = self.transport_table.set(table.unbind());
    }

    /// Receives up to `n` bytes from a non-blocking socket, waiting until some arrive.
    fn sock_recv(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_calls::sock_recv(slf, sock, n)
    }

    /// Receives into a writable buffer, waiting until data arrives; returns the byte count.
    fn sock_recv_into(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_calls::sock_recv_into(slf, sock, buf)
    }

    /// Sends all of `data`, waiting while the socket is full.
    fn sock_sendall(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_calls::sock_sendall(slf, sock, data)
    }

    /// Accepts a connection on a listening non-blocking socket: `(conn, address)`, `conn` non-blocking.
    fn sock_accept(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_calls::sock_method(slf, &SOCK_ACCEPT, sock, vec![])
    }

    /// `sock_connect` once the address is resolved: connects, waiting for
    /// the connection to complete.
    /// With `family` (the socket's, for a non-blocking socket) a plain
    /// address is connected to directly; without, through `sock.connect`.
    #[pyo3(signature = (sock, address, family=None))]
    fn _sock_connect_resolved(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        family: Option<libc::c_int>,
    ) -> PyResult<Py<PyAny>> {
        sock_calls::sock_connect_resolved(slf, sock, address, family)
    }

    /// `create_connection` for a new non-blocking socket of `family` and a
    /// resolved address: connects, then makes the protocol and the stream
    /// transport; awaited, gives `(transport, protocol)`.
    fn _connect_stream(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        family: libc::c_int,
        protocol_factory: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_calls::connect_stream(slf, sock, address, family, protocol_factory)
    }

    /// Receives a datagram of up to `bufsize` bytes: `(data, address)`.
    fn sock_recvfrom(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, bufsize: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_calls::sock_method(slf, &SOCK_RECVFROM, sock, vec![bufsize.clone()])
    }

    /// Receives a datagram into a buffer (`nbytes`: 0 for all of it): `(nbytes, address)`.
    #[pyo3(signature = (sock, buf, nbytes=None))]
    fn sock_recvfrom_into(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
        nbytes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        sock_calls::sock_recvfrom_into(slf, sock, buf, nbytes)
    }

    /// Sends a datagram to `address`; returns the number of bytes sent.
    fn sock_sendto(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_calls::sock_method(slf, &SOCK_SENDTO, sock, vec![data.clone(), address.clone()])
    }

    /// Wraps a coroutine in an `asyncio.Task` on this loop (through the task factory, if one is set); `name` and `context` as in asyncio.
    #[pyo3(signature = (coro, *, name=None, context=None, **kwargs))]
    fn create_task(
        slf: &Bound<'_, Self>,
        coro: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        if context.is_some() && py.version_info() < (3, 11) {
            // 3.10's create_task has no such parameter.
            return Err(PyTypeError::new_err("BaseEventLoop.create_task() got an unexpected keyword argument 'context'"));
        }
        this.check_closed()?;
        let factory = lock(&this.task_factory).as_ref().map(|f| f.clone_ref(py));
        let call_kwargs = match kwargs {
            Some(extra) => extra.copy()?,
            None => PyDict::new(py),
        };
        if let Some(ctx) = &context {
            call_kwargs.set_item(intern!(py, "context"), ctx)?;
        }
        let task = match factory {
            None => {
                call_kwargs.set_item(intern!(py, "loop"), slf)?;
                if let Some(name) = &name {
                    call_kwargs.set_item(intern!(py, "name"), name)?;
                }
                pyrefs::get(py)?.task_type.bind(py).call((&coro,), Some(&call_kwargs))?
            }
            // How asyncio hands the name to a task factory changed twice.
            Some(factory) if py.version_info() >= (3, 13, 3) => {
                // The factory gets it as a keyword, like the context.
                if let Some(name) = &name {
                    call_kwargs.set_item(intern!(py, "name"), name)?;
                }
                let kwargs = if call_kwargs.is_empty() { None } else { Some(&call_kwargs) };
                factory.bind(py).call((slf, &coro), kwargs)?
            }
            Some(factory) => {
                let kwargs = if call_kwargs.is_empty() { None } else { Some(&call_kwargs) };
                let task = factory.bind(py).call((slf, &coro), kwargs)?;
                if py.version_info() >= (3, 13) {
                    // 3.13.0-3.13.2 call set_name(name) on the result,
                    // even with no name given.
                    let name = name.as_ref().map_or_else(|| py.None().into_bound(py), Bound::clone);
                    task.call_method1(intern!(py, "set_name"), (name,))?;
                } else if let Some(name) = &name {
                    // asyncio's helper: a task without set_name only gets a
                    // DeprecationWarning before 3.13.
                    py.import(intern!(py, "asyncio.tasks"))?.call_method1(intern!(py, "_set_task_name"), (&task, name))?;
                }
                task
            }
        };
        if this.task_sites.enabled() {
            this.task_sites.record(&task, &coro)?;
        }
        Ok(task.unbind())
    }

    /// Records (or stops recording) where and when create_task makes each
    /// task; frames whose file starts with one of `internal_prefixes` are
    /// skipped to find the caller. See `task_sites.rs`.
    #[pyo3(signature = (enabled, internal_prefixes=Vec::new()))]
    fn _track_tasks(&self, enabled: bool, internal_prefixes: Vec<String>) {
        self.task_sites.set_enabled(enabled, internal_prefixes)
    }

    fn _tracking_tasks(&self) -> bool {
        self.task_sites.enabled()
    }

    /// How many task creation records are held (for tests of their cleanup).
    fn _tracked_task_count(&self) -> usize {
        self.task_sites.len()
    }

    /// (filename, line, function, creation time on the loop's clock) of
    /// the create_task call that made `task`, if it was recorded.
    fn _task_site(&self, task: &Bound<'_, PyAny>) -> PyResult<Option<TaskSiteTuple>> {
        Ok(self
            .task_sites
            .lookup(task)?
            .map(|site| (site.filename, site.line, site.function, site.created_ns as f64 / 1e9)))
    }

    /// Sets the callable `create_task` uses, `factory(loop, coro, **kwargs)`, or None for asyncio's Task.
    fn set_task_factory(&self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("task factory must be a callable or None"));
            }
        }
        let previous = std::mem::replace(&mut *lock(&self.task_factory), factory.map(Bound::unbind));
        drop(previous);
        Ok(())
    }

    /// The task factory `set_task_factory` installed, or None.
    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.task_factory).as_ref().map(|f| f.clone_ref(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // See HandleCore::traverse for why try_lock is enough.
        if let Ok(sched) = self.sched.try_lock() {
            for item in sched.ready.iter() {
                item.visit(&visit)?;
            }
            for timer in sched.timers.iter() {
                visit.call(timer)?;
            }
        }
        for slot in [&self.task_factory, &self.debug_value] {
            if let Ok(value) = slot.try_lock() {
                if let Some(value) = value.as_ref() {
                    visit.call(value)?;
                }
            }
        }
        self.poller.traverse(&visit)
    }

    fn __clear__(&self) {
        let mut timers = Vec::new();
        let ready = self.sched.try_lock().ok().map(|mut sched| {
            sched.timers.drain(&mut timers);
            std::mem::take(&mut sched.ready)
        });
        let factory = self.task_factory.try_lock().ok().and_then(|mut f| f.take());
        let debug_value = self.debug_value.try_lock().ok().and_then(|mut v| v.take());
        let watched = self.poller.try_unwatch_all();
        drop((ready, timers, factory, debug_value, watched));
    }
}

/// True for the exceptions asyncio lets escape from a callback.
pub fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
        || err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
}

/// asyncio's `Handle._run` error path: SystemExit and KeyboardInterrupt
/// propagate, anything else goes to the loop's exception handler.
pub fn report_callback_error(
    py: Python<'_>,
    core: &HandleCore,
    handle_obj: &Bound<'_, PyAny>,
    err: PyErr,
) -> PyResult<()> {
    if is_fatal(py, &err) {
        return Err(err);
    }
    let source = match core.callback_source(py)? {
        Some(source) => source,
        None => handle_obj.repr()?.to_string(),
    };
    let context = PyDict::new(py);
    context.set_item(intern!(py, "message"), format!("Exception in callback {source}"))?;
    context.set_item(intern!(py, "exception"), err.into_value(py))?;
    context.set_item(intern!(py, "handle"), handle_obj)?;
    if let Some(tb) = core.source_traceback() {
        context.set_item(intern!(py, "source_traceback"), tb)?;
    }
    core.loop_obj()
        .bind(py)
        .call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// Passes the signal numbers read from the wakeup pipe to the Python side.
pub fn deliver_signals(slf: &Bound<'_, LoopCore>, signums: &[u8]) -> PyResult<()> {
    let py = slf.py();
    thread_exit::call_method(slf, intern!(py, "_handle_signals"), (PyBytes::new(py, signums),))?;
    Ok(())
}
