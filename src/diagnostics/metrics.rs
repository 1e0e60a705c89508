//! Loop metrics the run loop records as it goes: how late timers fire (loop
//! lag), written only by the loop thread and read on demand by
//! `loop.metrics()`, and the bytes its transports move. (Time waited in poll,
//! for utilisation, is counted in `activity.rs`.)

use std::sync::atomic::{AtomicU64, Ordering};

/// Recent lag samples kept for percentiles: enough for a stable p99.
const LAG_WINDOW: usize = 2048;

pub struct LoopMetrics {
    lag_ring: Box<[f64; LAG_WINDOW]>,
    lag_next: usize,
    lag_samples: u64,
    lag_max: f64,
}

impl Default for LoopMetrics {
    fn default() -> Self {
        Self { lag_ring: Box::new([0.0; LAG_WINDOW]), lag_next: 0, lag_samples: 0, lag_max: 0.0 }
    }
}

/// A copy of the metrics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub lag_p50: f64,
    pub lag_p99: f64,
    pub lag_max: f64,
    pub lag_samples: u64,
}

impl LoopMetrics {
    /// Records how late a timer fired, in seconds (negative counts as 0).
    #[inline]
    pub fn record_lag(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() && seconds > 0.0 { seconds } else { 0.0 };
        self.lag_ring[self.lag_next] = seconds;
        self.lag_next = (self.lag_next + 1) % LAG_WINDOW;
        self.lag_samples += 1;
        if seconds > self.lag_max {
            self.lag_max = seconds;
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let filled = (self.lag_samples as usize).min(LAG_WINDOW);
        let mut recent: Vec<f64> = self.lag_ring[..filled].to_vec();
        recent.sort_by(f64::total_cmp);
        MetricsSnapshot {
            lag_p50: percentile(&recent, 0.50),
            lag_p99: percentile(&recent, 0.99),
            lag_max: self.lag_max,
            lag_samples: self.lag_samples,
        }
    }
}

/// Bytes the loop's transports moved through the kernel. Written by the loop
/// thread on every read and write, so they are relaxed atomics (a plain add
/// on x86) rather than fields behind the metrics lock.
#[derive(Default)]
pub struct IoCounters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl IoCounters {
    #[inline]
    pub fn add_received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn add_sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (received, sent) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.sent.load(Ordering::Relaxed))
    }
}

/// Nearest-rank percentile of sorted samples (0 when there are none).
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut metrics = LoopMetrics::default();
        for i in 1..=100 {
            metrics.record_lag(i as f64 / 1000.0);
        }
        let snap = metrics.snapshot();
        assert_eq!(snap.lag_p50, 0.050);
        assert_eq!(snap.lag_p99, 0.099);
        assert_eq!(snap.lag_max, 0.100);
        assert_eq!(snap.lag_samples, 100);
    }

    #[test]
    fn window_keeps_only_recent_samples_but_max_is_forever() {
        let mut metrics = LoopMetrics::default();
        metrics.record_lag(5.0);
        for _ in 0..LAG_WINDOW {
            metrics.record_lag(0.001);
        }
        let snap = metrics.snapshot();
        assert_eq!(snap.lag_p99, 0.001);
        assert_eq!(snap.lag_max, 5.0);
    }

    #[test]
    fn negative_and_nan_lags_count_as_zero() {
        let mut metrics = LoopMetrics::default();
        metrics.record_lag(-1.0);
        metrics.record_lag(f64::NAN);
        let snap = metrics.snapshot();
        assert_eq!((snap.lag_p50, snap.lag_max, snap.lag_samples), (0.0, 0.0, 2));
    }

    #[test]
    fn io_counters_add_up() {
        let io = IoCounters::default();
        io.add_received(10);
        io.add_sent(3);
        io.add_received(5);
        assert_eq!(io.totals(), (15, 3));
    }

    #[test]
    fn empty_metrics_are_zero() {
        let snap = LoopMetrics::default().snapshot();
        assert_eq!((snap.lag_p50, snap.lag_p99, snap.lag_samples), (0.0, 0.0, 0));
    }
}
