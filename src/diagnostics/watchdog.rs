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
//! While the stall lasts, the reporter is called again at a bounded rate
//! (`"sample"`), so that it can profile where the time goes; when that
//! callback finally returns, it is called once more with the stall's total
//! duration. The loop pays for none of this: the sampling happens only
//! during a stall, on this thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::diagnostics::activity::{Activity, PHASE_RUNNING_CALLBACK};
use crate::support::sync::lock;
use crate::support::thread_exit;
use crate::time::clock;

/// Samples per threshold: the stall start is known to within this fraction.
const SAMPLES_PER_THRESHOLD: u32 = 10;
const MIN_INTERVAL: Duration = Duration::from_millis(1);
const MAX_INTERVAL: Duration = Duration::from_millis(100);
/// A stall's stack is sampled this often at most: each sample makes the
/// stalled thread hand over the GIL once.
const MIN_PROFILE_INTERVAL: Duration = Duration::from_millis(5);
/// After this many samples of one stall, the interval doubles (and again
/// after as many more), up to `MAX_PROFILE_INTERVAL`: a long stall is
/// sampled ever more sparsely, and its end is still noticed within a second.
const SAMPLES_PER_RATE: u32 = 1000;
const MAX_PROFILE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Stack samples taken of this stall so far (the `"stall"` report is the
    /// first).
    samples: u32,
}

/// How often the sampler wakes: `idle` to notice a stall, `profile` while
/// one lasts.
#[derive(Clone, Copy)]
struct Intervals {
    idle: Duration,
    profile: Duration,
}

impl Intervals {
    fn for_threshold(threshold: Duration) -> Self {
        let idle = (threshold / SAMPLES_PER_THRESHOLD).clamp(MIN_INTERVAL, MAX_INTERVAL);
        Self { idle, profile: idle.max(MIN_PROFILE_INTERVAL) }
    }

    /// The wait before the next sample of a stall that has `samples` so far.
    fn during_stall(&self, samples: u32) -> Duration {
        let doublings = (samples / SAMPLES_PER_RATE).min(16);
        self.profile.saturating_mul(1 << doublings).min(MAX_PROFILE_INTERVAL.max(self.profile))
    }
}

impl Watchdog {
    /// Starts the thread. `reporter(event, seconds)` is called with
    /// `"stall"` once a callback has run for `threshold`, with `"sample"`
    /// while it goes on running, and with `"stall_end"` when it returns.
    pub fn start(activity: Arc<Activity>, threshold: Duration, reporter: Py<PyAny>) -> std::io::Result<Self> {
        let signal = Arc::new(StopSignal { stopped: Mutex::new(false), wake: Condvar::new() });
        let intervals = Intervals::for_threshold(threshold);
        let thread_signal = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name("ferroloop-watchdog".into())
            .spawn(move || sample(&activity, threshold, intervals, &thread_signal, &reporter))?;
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

fn sample(activity: &Activity, threshold: Duration, intervals: Intervals, signal: &StopSignal, reporter: &Py<PyAny>) {
    let mut watched: Option<Watched> = None;
    let mut interval = intervals.idle;
    while !signal.wait(interval) {
        interval = intervals.idle;
        let snapshot = activity.snapshot();
        let now = Instant::now();
        // Keeps the age of the running callback up to date for metrics().
        activity.observe_callback_age(clock::monotonic_ns());
        let same_callback = snapshot.phase == PHASE_RUNNING_CALLBACK
            && watched.as_ref().is_some_and(|w| w.callback == snapshot.callbacks_started);
        if same_callback {
            if let Some(w) = watched.as_mut() {
                let stalled = now - w.first_seen;
                if w.reported {
                    w.samples = w.samples.saturating_add(1);
                    report(reporter, "sample", stalled);
                    interval = intervals.during_stall(w.samples);
                } else if stalled >= threshold {
                    w.reported = true;
                    w.samples = 1;
                    report(reporter, "stall", stalled);
                    interval = intervals.during_stall(w.samples);
                }
            }
            continue;
        }
        if let Some(ended) = watched.take().filter(|w| w.reported) {
            report(reporter, "stall_end", now - ended.first_seen);
        }
        if snapshot.phase == PHASE_RUNNING_CALLBACK {
            watched = Some(Watched { callback: snapshot.callbacks_started, first_seen: now, reported: false, samples: 0 });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_interval_is_bounded_below_and_slows_down_with_samples() {
        let fast = Intervals::for_threshold(Duration::from_millis(20));
        assert_eq!(fast.idle, Duration::from_millis(2));
        assert_eq!(fast.profile, MIN_PROFILE_INTERVAL);
        let slow = Intervals::for_threshold(Duration::from_millis(500));
        assert_eq!(slow.profile, Duration::from_millis(50));
        assert_eq!(slow.during_stall(1), Duration::from_millis(50));
        assert_eq!(slow.during_stall(SAMPLES_PER_RATE), Duration::from_millis(100));
        assert_eq!(slow.during_stall(3 * SAMPLES_PER_RATE), Duration::from_millis(400));
        // Never overflows, and a stall's end is noticed within a second.
        assert_eq!(slow.during_stall(u32::MAX), MAX_PROFILE_INTERVAL);
    }
}
