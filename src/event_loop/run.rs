//! The run loop: asyncio's `_run_once`, iteration after iteration.
//!
//! One iteration: drop cancelled timers at the head of the heap, work out
//! how long to wait, poll (with the GIL released when it may block), queue
//! the callbacks of ready fds and due timers, then run exactly the callbacks
//! that were ready when the iteration started running them. Callbacks they
//! schedule run in the next iteration, as in asyncio.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::Events;
use pyo3::intern;
use pyo3::prelude::*;

use crate::support::thread_exit;
use crate::diagnostics::activity::{PHASE_IDLE, PHASE_POLLING};
use crate::time::clock;
use crate::event_loop::{deliver_signals, is_fatal, report_callback_error, LoopCore};
use crate::event_loop::handles::{Scheduled, TimerHandle};
use crate::sock_calls::SockCall;
use crate::transports::syscalls::os_error;
use crate::transports::stream::StreamTransport;
use pyo3::types::PyDict;
use crate::readiness::Dispatch;
use crate::support::sync::lock;

/// asyncio's MAXIMUM_SELECT_TIMEOUT: never sleep longer than a day at once.
const MAXIMUM_POLL_TIMEOUT: f64 = 24.0 * 3600.0;

/// Buffers reused across iterations so the steady state allocates nothing.
struct Scratch {
    events: Events,
    batch: VecDeque<Scheduled>,
    dispatch: Dispatch,
    timers: Vec<Py<TimerHandle>>,
}

impl Scratch {
    fn new() -> Self {
        Self {
            events: Events::with_capacity(256),
            batch: VecDeque::new(),
            dispatch: Dispatch::default(),
            timers: Vec::new(),
        }
    }
}

/// asyncio's `run_forever` calls `self._run_once()` on every iteration, and
/// some code wraps that method on the instance to observe iterations.
fn run_once_overridden(slf: &Bound<'_, LoopCore>) -> bool {
    let py = slf.py();
    slf.getattr(intern!(py, "__dict__"))
        .and_then(|d| d.contains(intern!(py, "_run_once")))
        .unwrap_or(false)
}

pub fn run_forever(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let this = slf.get();
    let mut scratch = Scratch::new();
    let through_python = run_once_overridden(slf);
    let outcome = loop {
        let iteration = if through_python {
            thread_exit::call_method(slf, intern!(slf.py(), "_run_once"), ()).map(drop)
        } else {
            run_once(slf, this, &mut scratch)
        };
        if let Err(err) = iteration {
            break Err(err);
        }
        if this.stopping.load(Ordering::Relaxed) {
            break Ok(());
        }
    };
    this.stopping.store(false, Ordering::Relaxed);
    this.activity.set_phase(PHASE_IDLE);
    outcome
}

/// One iteration, for a direct call of `loop._run_once()`.
pub fn run_one_iteration(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    run_once(slf, slf.get(), &mut Scratch::new())
}

fn run_once(slf: &Bound<'_, LoopCore>, this: &LoopCore, s: &mut Scratch) -> PyResult<()> {
    this.activity.begin_iteration();

    let (next_timer, has_ready) = {
        let mut sched = lock(&this.sched);
        (sched.timers.clean_and_peek(&mut s.timers), !sched.ready.is_empty())
    };
    // Released outside the lock: dropping a handle may run Python code.
    if !s.timers.is_empty() {
        for timer in s.timers.drain(..) {
            timer.drop_ref(slf.py());
        }
    }

    let timeout = if has_ready || this.stopping.load(Ordering::Relaxed) {
        Some(Duration::ZERO)
    } else {
        next_timer.map(|when| {
            let wait = (when - clock::monotonic()).clamp(0.0, MAXIMUM_POLL_TIMEOUT);
            Duration::from_secs_f64(if wait.is_nan() { 0.0 } else { wait })
        })
    };

    let polled = poll(slf, this, s, timeout);

    {
        let mut sched = lock(&this.sched);
        let ready_io = &mut s.dispatch;
        if !ready_io.handles.is_empty() {
            sched.ready.extend(ready_io.handles.drain(..).map(Scheduled::Plain));
        }
        if !ready_io.attached.is_empty() {
            sched.ready.extend(ready_io.attached.drain(..).map(Scheduled::Io));
        }
        if !ready_io.sock_calls.is_empty() {
            sched.ready.extend(ready_io.sock_calls.drain(..).map(Scheduled::Sock));
        }
        // A signal handler that raised (Ctrl-C) ends the iteration here,
        // with what was ready queued for the next one.
        polled?;
        if next_timer.is_some() {
            let now = clock::monotonic();
            sched.timers.pop_due(now + this.clock_resolution, &mut s.timers);
            if !s.timers.is_empty() {
                let mut metrics = lock(&this.metrics);
                for timer in &s.timers {
                    if !timer.get().core.is_cancelled() {
                        metrics.record_lag(now - timer.get().when_value());
                    }
                }
            }
            let due = s.timers.drain(..).map(Scheduled::Timer);
            sched.ready.extend(due);
        }
        std::mem::swap(&mut sched.ready, &mut s.batch);
    }
    let outcome = run_batch(slf, this, &mut s.batch);
    if outcome.is_err() && !s.batch.is_empty() {
        // An exception escaped (KeyboardInterrupt, SystemExit, or one raised
        // by the exception handler): the callbacks not yet run stay first in
        // line for the next run, as they do in asyncio.
        let mut sched = lock(&this.sched);
        while let Some(item) = s.batch.pop_back() {
            sched.ready.push_front(item);
        }
    }
    this.activity.set_phase(PHASE_IDLE);
    outcome
}

fn poll(slf: &Bound<'_, LoopCore>, this: &LoopCore, s: &mut Scratch, timeout: Option<Duration>) -> PyResult<()> {
    let py = slf.py();
    this.poller.rearm_delivered();
    let nothing_to_wait_for = timeout == Some(Duration::ZERO)
        && !this.poller.has_watches()
        && !this.has_signal_handlers.load(Ordering::Relaxed);
    if nothing_to_wait_for {
        // Only the waker could be ready, and what it announces is already in
        // the ready queue: skip the syscall.
        return Ok(());
    }
    let polled = if timeout == Some(Duration::ZERO) {
        this.poller.poll(&mut s.events, timeout)
    } else {
        this.activity.set_phase(PHASE_POLLING);
        let poller = &this.poller;
        let events = &mut s.events;
        let started = clock::monotonic_ns();
        let polled = without_gil(py, move || poller.poll(events, timeout));
        this.activity.add_poll_wait(clock::monotonic_ns().saturating_sub(started));
        polled
    };
    match polled {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
            // A signal arrived while we waited: run the Python-level handlers
            // now (Ctrl-C raises KeyboardInterrupt from here).
            py.check_signals()?;
            return Ok(());
        }
        Err(err) => return Err(os_error(py, &err)),
    }

    s.dispatch.signal_pipe_ready = false;
    // The ready fds' handles are queued by run_once, under the lock it
    // takes anyway for the due timers.
    this.poller.dispatch(py, &s.events, &mut s.dispatch);
    if s.dispatch.signal_pipe_ready {
        let signums = this.poller.drain_signal_pipe();
        py.check_signals()?;
        if !signums.is_empty() && this.has_signal_handlers.load(Ordering::Relaxed) {
            deliver_signals(slf, &signums)?;
        }
    }
    Ok(())
}

/// Runs `wait` with the GIL released, as `Python::detach` does, minus its
/// bookkeeping for code that uses Python objects while detached (about 300
/// instructions per call, a tenth of a whole Protocol echo round trip):
/// `wait` here only waits in epoll and never touches a Python object.
fn without_gil<T>(_attached: Python<'_>, wait: impl FnOnce() -> T) -> T {
    struct Reattach(*mut pyo3::ffi::PyThreadState);
    impl Drop for Reattach {
        fn drop(&mut self) {
            // SAFETY: `self.0` is the thread state PyEval_SaveThread returned
            // on this thread just before; restoring it re-takes the GIL,
            // also when `wait` unwinds.
            unsafe { pyo3::ffi::PyEval_RestoreThread(self.0) };
        }
    }
    // SAFETY: the `Python` token proves this thread holds the GIL, which
    // PyEval_SaveThread requires; nothing touches Python objects until the
    // guard re-attaches.
    let _reattach = Reattach(unsafe { pyo3::ffi::PyEval_SaveThread() });
    wait()
}

fn run_batch(slf: &Bound<'_, LoopCore>, this: &LoopCore, batch: &mut VecDeque<Scheduled>) -> PyResult<()> {
    let py = slf.py();
    while let Some(item) = batch.pop_front() {
        let outcome = run_item(slf, this, &item);
        item.release(py);
        outcome?;
    }
    Ok(())
}

fn run_item(slf: &Bound<'_, LoopCore>, this: &LoopCore, item: &Scheduled) -> PyResult<()> {
    let py = slf.py();
    let Some(core) = item.core() else {
        this.activity.begin_callback();
        if this.debug_enabled() {
            return run_timed(slf, this, item);
        }
        return run_native_io(slf, item);
    };
    if core.is_cancelled() {
        return Ok(());
    }
    this.activity.begin_callback();
    if this.debug_enabled() {
        return run_timed(slf, this, item);
    }
    match core.run(py) {
        Ok(()) => Ok(()),
        Err(err) if is_fatal(py, &err) => Err(err),
        Err(err) => report_callback_error(py, core, &item.as_object(py), err),
    }
}

/// Transport I/O and `sock_*` retries handle their own errors as asyncio's
/// transports and socket calls do; what escapes is a failure of that
/// reporting itself (or KeyboardInterrupt).
fn run_native_io(slf: &Bound<'_, LoopCore>, item: &Scheduled) -> PyResult<()> {
    let py = slf.py();
    let (outcome, message) = match item {
        // asyncio's transports do this in reader and writer callbacks, so
        // an error escaping them is reported as such a callback's.
        Scheduled::Io(owner) => match owner.process(py) {
            Ok(()) => (Ok(()), String::new()),
            Err((err, message)) => (Err(err), message),
        },
        Scheduled::Sock(call) => (SockCall::on_ready(call.bind(py)), "Unhandled error in a sock_* call".to_owned()),
        Scheduled::StartReading(transport) => (
            StreamTransport::start_reading(transport.bind(py)),
            "Exception in callback StreamTransport.start_reading()".to_owned(),
        ),
        // Reports its own errors, as the handle it stands for would.
        Scheduled::Internal(call) => return call.run(py),
        Scheduled::Plain(_) | Scheduled::Timer(_) => return Ok(()),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(err) if is_fatal(py, &err) => Err(err),
        Err(err) => {
            let context = PyDict::new(py);
            context.set_item(intern!(py, "message"), message)?;
            context.set_item(intern!(py, "exception"), err.into_value(py))?;
            let key = match item {
                Scheduled::Io(owner) => owner.context_key(),
                Scheduled::StartReading(_) => "transport",
                _ => "handle",
            };
            context.set_item(key, item.as_object(py))?;
            thread_exit::call_method(slf, intern!(py, "call_exception_handler"), (context,))?;
            Ok(())
        }
    }
}

/// Debug mode: asyncio's slow-callback report and `_current_handle`.
fn run_timed(slf: &Bound<'_, LoopCore>, this: &LoopCore, item: &Scheduled) -> PyResult<()> {
    let py = slf.py();
    let Some(core) = item.core() else {
        // Transport I/O and sock_* retries are not handles; asyncio times
        // the reader callbacks they replace, so they are timed here too.
        let started = clock::monotonic();
        run_native_io(slf, item)?;
        let elapsed = clock::monotonic() - started;
        let threshold: f64 = slf.getattr(intern!(py, "slow_callback_duration"))?.extract()?;
        if elapsed >= threshold {
            thread_exit::call_method(slf, intern!(py, "_log_slow_callback"), (item.as_object(py), elapsed))?;
        }
        return Ok(());
    };
    let handle = item.as_object(py);
    *lock(&this.current_handle) = Some(handle.clone().unbind());
    let started = clock::monotonic();
    let outcome = match core.run(py) {
        Ok(()) => Ok(()),
        Err(err) => report_callback_error(py, core, &handle, err),
    };
    let elapsed = clock::monotonic() - started;
    let previous = lock(&this.current_handle).take();
    drop(previous);
    outcome?;
    let threshold: f64 = slf.getattr(intern!(py, "slow_callback_duration"))?.extract()?;
    if elapsed >= threshold {
        thread_exit::call_method(slf, intern!(py, "_log_slow_callback"), (handle, elapsed))?;
    }
    Ok(())
}
