//! The stall watchdog: a native thread that notices, while it happens, that
//! the loop has spent too long inside one callback or task step.
//!
//! It samples the loop's `Activity` (a callback counter and the loop's
//! phase, published with relaxed stores that the loop does anyway), so the
//! loop pays nothing per callback for it. When the same callback is still
//! running after `threshold`, the thread attaches to the interpreter and
//! calls the Python reporter, which captures the loop thread's stack. It
//! gets the GIL even during a CPU-bound stall, thanks to the interpreter's
//! forced switching, and at once during a blocking call that released it.
//! When that callback finally returns, the reporter is called again with the
//! stall's total duration.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::support::thread_exit;
use crate::diagnostics::activity::{Activity, PHASE_RUNNING_CALLBACK};
use crate::support::sync::lock;

/// Samples per threshold: the stall start is known to within this fraction.
const SAMPLES_PER_THRESHOLD: u32 = 10;
const MIN_INTERVAL: Duration = Duration::from_millis(1);
const MAX_INTERVAL: Duration = Duration::from_millis(100);

struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    /// Sleeps for `interval` unless stopped first; returns true if stopped.
    fn wait(&self, interval: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, interval, |stopped| !*stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard
    }

    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }
}

pub struct Watchdog {
    signal: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

/// What the sampler knows about the callback it is watching.
struct Watched {
    callback: u64,
    first_seen: Instant,
    reported: bool,
}

impl Watchdog {
    /// Starts the thread. `reporter(event, seconds)` is called with
    /// `"stall"` once a callback has run for `threshold`, and with
    /// `"stall_end"` when it returns.
    pub fn start(activity: Arc<Activity>, threshold: Duration, reporter: Py<PyAny>) -> std::io::Result<Self> {
        let signal = Arc::new(StopSignal { stopped: Mutex::new(false), wake: Condvar::new() });
        let interval = (threshold / SAMPLES_PER_THRESHOLD).clamp(MIN_INTERVAL, MAX_INTERVAL);
        let thread_signal = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name("ferroloop-watchdog".into())
            .spawn(move || sample(&activity, threshold, interval, &thread_signal, &reporter))?;
        Ok(Self { signal, thread: Some(thread) })
    }

    /// Stops the thread. Call with the GIL released: the thread may be
    /// waiting for it to deliver a report.
    pub fn stop_and_join(mut self) {
        self.signal.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Not joined here: a drop may happen with the GIL held, while the
        // thread waits for it. The stopped thread exits on its own.
        self.signal.stop();
    }
}

fn sample(activity: &Activity, threshold: Duration, interval: Duration, signal: &StopSignal, reporter: &Py<PyAny>) {
    let mut watched: Option<Watched> = None;
    while !signal.wait(interval) {
        let snapshot = activity.snapshot();
        let now = Instant::now();
        let same_callback = snapshot.phase == PHASE_RUNNING_CALLBACK
            && watched.as_ref().is_some_and(|w| w.callback == snapshot.callbacks_started);
        if same_callback {
            if let Some(w) = watched.as_mut().filter(|w| !w.reported) {
                let stalled = now - w.first_seen;
                if stalled >= threshold {
                    w.reported = true;
                    report(reporter, "stall", stalled);
                }
            }
            continue;
        }
        if let Some(ended) = watched.take().filter(|w| w.reported) {
            report(reporter, "stall_end", now - ended.first_seen);
        }
        if snapshot.phase == PHASE_RUNNING_CALLBACK {
            watched = Some(Watched { callback: snapshot.callbacks_started, first_seen: now, reported: false });
        }
    }
    // Stopped (the loop is closing): a reported stall has ended by now, and
    // its end is still owed.
    if let Some(ended) = watched.filter(|w| w.reported) {
        report(reporter, "stall_end", ended.first_seen.elapsed());
    }
}

fn report(reporter: &Py<PyAny>, event: &str, stalled: Duration) {
    // try_attach declines while the interpreter shuts down.
    Python::try_attach(|py| {
        if let Err(err) = thread_exit::call(reporter.bind(py), (event, stalled.as_secs_f64())) {
            err.write_unraisable(py, Some(reporter.bind(py)));
        }
    });
}
