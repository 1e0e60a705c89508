//! What the loop is doing right now, readable from any thread without the GIL.
//!
//! A stall watchdog runs on its own thread and must see, cheaply, that the
//! loop has been inside one callback for too long. The loop thread publishes
//! a callback counter and its phase with relaxed atomic stores (a couple of
//! instructions per callback); a watcher that sees the same counter while the
//! phase stays `RUNNING_CALLBACK` across two samples knows one callback is
//! still running.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::support::sync::lock;

pub const PHASE_IDLE: u8 = 0;
pub const PHASE_POLLING: u8 = 1;
pub const PHASE_RUNNING_CALLBACK: u8 = 2;

#[derive(Default)]
pub struct Activity {
    phase: AtomicU8,
    callbacks_started: AtomicU64,
    iterations: AtomicU64,
    /// Nanoseconds spent blocked in poll, for the metrics.
    poll_wait_ns: AtomicU64,
    /// The running callback as other threads last saw it: (its number in
    /// `callbacks_started`, when it was first seen, in ns on the monotonic
    /// clock). Written only by observers (the watchdog, metrics readers), so
    /// the loop pays nothing for the age of its current callback.
    observed: Mutex<Option<(u64, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: u8,
    pub callbacks_started: u64,
    pub iterations: u64,
    pub poll_wait_ns: u64,
}

impl Activity {
    #[inline]
    pub fn begin_iteration(&self) {
        self.iterations.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    #[inline]
    pub fn begin_callback(&self) {
        self.callbacks_started.fetch_add(1, Ordering::Relaxed);
        self.phase.store(PHASE_RUNNING_CALLBACK, Ordering::Relaxed);
    }

    #[inline]
    pub fn add_poll_wait(&self, nanoseconds: u64) {
        self.poll_wait_ns.fetch_add(nanoseconds, Ordering::Relaxed);
    }

    /// How long the callback running now has been running, as far as
    /// observers have seen: nanoseconds since an observer first saw it (a
    /// lower bound), or None when no callback runs. Called from any thread.
    pub fn observe_callback_age(&self, now_ns: u64) -> Option<u64> {
        let snap = self.snapshot();
        if snap.phase != PHASE_RUNNING_CALLBACK {
            return None;
        }
        let mut observed = lock(&self.observed);
        match *observed {
            Some((callback, since)) if callback == snap.callbacks_started => Some(now_ns.saturating_sub(since)),
            _ => {
                *observed = Some((snap.callbacks_started, now_ns));
                Some(0)
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            phase: self.phase.load(Ordering::Relaxed),
            callbacks_started: self.callbacks_started.load(Ordering::Relaxed),
            iterations: self.iterations.load(Ordering::Relaxed),
            poll_wait_ns: self.poll_wait_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn snapshot_reflects_progress_from_another_thread() {
        let activity = Arc::new(Activity::default());
        let writer = Arc::clone(&activity);
        std::thread::spawn(move || {
            writer.begin_iteration();
            writer.begin_callback();
            writer.begin_callback();
            writer.add_poll_wait(1500);
            writer.add_poll_wait(500);
        })
        .join()
        .expect("writer thread");
        let snap = activity.snapshot();
        assert_eq!(snap.callbacks_started, 2);
        assert_eq!(snap.iterations, 1);
        assert_eq!(snap.phase, PHASE_RUNNING_CALLBACK);
        assert_eq!(snap.poll_wait_ns, 2000);
    }

    #[test]
    fn callback_age_grows_while_the_same_callback_runs() {
        let activity = Activity::default();
        assert_eq!(activity.observe_callback_age(100), None);
        activity.begin_callback();
        assert_eq!(activity.observe_callback_age(1_000), Some(0));
        assert_eq!(activity.observe_callback_age(5_000), Some(4_000));
        activity.begin_callback();
        assert_eq!(activity.observe_callback_age(6_000), Some(0), "a new callback starts from zero");
        assert_eq!(activity.observe_callback_age(9_000), Some(3_000));
        activity.set_phase(PHASE_POLLING);
        assert_eq!(activity.observe_callback_age(10_000), None);
    }
}
