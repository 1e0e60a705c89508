//! The timer heap: timers ordered by due time, then by scheduling order.
//!
//! It follows asyncio's policy for cancelled timers: they stay in the heap
//! (cancelling is O(1)) and are dropped when they reach the head, or all at
//! once when more than half of a large heap is cancelled.
//!
//! Items leave the heap through the `out` vectors the caller passes in, so
//! that the caller can release its lock before dropping them: dropping a
//! Python object may run arbitrary Python code.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// asyncio's thresholds for rebuilding the heap without its cancelled timers.
pub const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;
pub const MIN_CANCELLED_FRACTION: f64 = 0.5;

pub trait TimerItem {
    fn is_cancelled(&self) -> bool;
    /// Called with `false` when the item leaves the heap.
    fn set_scheduled(&self, scheduled: bool);
}

/// A heap entry. `key` packs the due time and the scheduling order into one
/// integer whose natural order is (when, seq), so a comparison during a
/// sift is a single 128-bit compare rather than a float compare plus a tie
/// break.
struct Entry<T> {
    key: u128,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // BinaryHeap is a max-heap; reversing makes the earliest timer the top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// Maps a due time to bits that sort as the times do (IEEE 754 total order).
/// asyncio runs a NaN-timed timer at the next iteration (every comparison
/// with NaN is false, so it is never "not yet due"); mapping NaN to -inf
/// keeps that behaviour and gives the heap a total order.
fn time_bits(when: f64) -> u64 {
    let when = if when.is_nan() { f64::NEG_INFINITY } else { when };
    let bits = when.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn pack(when: f64, seq: u64) -> u128 {
    ((time_bits(when) as u128) << 64) | seq as u128
}

/// True when the entry's due time is before `end_time`.
fn due_before(key: u128, end_time: f64) -> bool {
    ((key >> 64) as u64) < time_bits(end_time)
}

fn key_time(key: u128) -> f64 {
    let bits = (key >> 64) as u64;
    let raw = if bits >> 63 == 1 { bits & !(1 << 63) } else { !bits };
    f64::from_bits(raw)
}

pub struct TimerHeap<T: TimerItem> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T: TimerItem> Default for TimerHeap<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), next_seq: 0, cancelled: 0 }
    }
}

impl<T: TimerItem> TimerHeap<T> {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        item.set_scheduled(true);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { key: pack(when, seq), item });
    }

    /// Records that one scheduled timer was cancelled.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// Drops cancelled timers: all of them when they are the majority of a
    /// large heap, otherwise only those at the head. Returns the due time of
    /// the earliest remaining timer.
    pub fn clean_and_peek(&mut self, out: &mut Vec<T>) -> Option<f64> {
        let len = self.heap.len();
        if len > MIN_SCHEDULED_FOR_COMPACTION
            && self.cancelled as f64 / len as f64 > MIN_CANCELLED_FRACTION
        {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(len - self.cancelled.min(len));
            for entry in entries {
                if entry.item.is_cancelled() {
                    entry.item.set_scheduled(false);
                    out.push(entry.item);
                } else {
                    kept.push(entry);
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
        } else {
            while self.heap.peek().is_some_and(|top| top.item.is_cancelled()) {
                if let Some(entry) = self.heap.pop() {
                    self.cancelled = self.cancelled.saturating_sub(1);
                    entry.item.set_scheduled(false);
                    out.push(entry.item);
                }
            }
        }
        self.heap.peek().map(|top| key_time(top.key))
    }

    /// Moves every timer due before `end_time` into `out`, earliest first.
    /// Cancelled timers are moved too: the caller skips them when it runs
    /// them, exactly as asyncio does.
    pub fn pop_due(&mut self, end_time: f64, out: &mut Vec<T>) {
        while self.heap.peek().is_some_and(|top| due_before(top.key, end_time)) {
            if let Some(entry) = self.heap.pop() {
                if entry.item.is_cancelled() {
                    self.cancelled = self.cancelled.saturating_sub(1);
                }
                entry.item.set_scheduled(false);
                out.push(entry.item);
            }
        }
    }

    /// Empties the heap (loop close).
    pub fn drain(&mut self, out: &mut Vec<T>) {
        for entry in std::mem::take(&mut self.heap).into_vec() {
            entry.item.set_scheduled(false);
            out.push(entry.item);
        }
        self.cancelled = 0;
    }

    /// Iterates over the scheduled items in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|entry| &entry.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct Fake {
        id: u32,
        cancelled: Rc<Cell<bool>>,
        scheduled: Rc<Cell<bool>>,
    }

    impl Fake {
        fn new(id: u32) -> Self {
            Self { id, cancelled: Rc::new(Cell::new(false)), scheduled: Rc::new(Cell::new(false)) }
        }
    }

    impl TimerItem for Fake {
        fn is_cancelled(&self) -> bool {
            self.cancelled.get()
        }
        fn set_scheduled(&self, scheduled: bool) {
            self.scheduled.set(scheduled);
        }
    }

    fn ids(items: &[Fake]) -> Vec<u32> {
        items.iter().map(|f| f.id).collect()
    }

    #[test]
    fn pops_in_due_order_and_fifo_for_equal_times() {
        let mut heap = TimerHeap::default();
        heap.push(2.0, Fake::new(1));
        heap.push(1.0, Fake::new(2));
        heap.push(1.0, Fake::new(3));
        heap.push(3.0, Fake::new(4));
        let mut out = Vec::new();
        heap.pop_due(2.5, &mut out);
        assert_eq!(ids(&out), vec![2, 3, 1]);
        assert_eq!(heap.len(), 1);
        assert!(out.iter().all(|f| !f.scheduled.get()));
    }

    #[test]
    fn nan_is_due_immediately_and_does_not_break_ordering() {
        let mut heap = TimerHeap::default();
        heap.push(5.0, Fake::new(1));
        heap.push(f64::NAN, Fake::new(2));
        heap.push(1.0, Fake::new(3));
        let mut garbage = Vec::new();
        assert_eq!(heap.clean_and_peek(&mut garbage), Some(f64::NEG_INFINITY));
        let mut out = Vec::new();
        heap.pop_due(0.0, &mut out);
        assert_eq!(ids(&out), vec![2]);
    }

    #[test]
    fn cancelled_head_is_dropped() {
        let mut heap = TimerHeap::default();
        let first = Fake::new(1);
        heap.push(1.0, first.clone());
        heap.push(2.0, Fake::new(2));
        first.cancelled.set(true);
        heap.note_cancelled();
        let mut garbage = Vec::new();
        assert_eq!(heap.clean_and_peek(&mut garbage), Some(2.0));
        assert_eq!(ids(&garbage), vec![1]);
        assert_eq!(heap.cancelled_count(), 0);
        assert!(!first.scheduled.get());
    }

    #[test]
    fn compacts_when_most_of_a_large_heap_is_cancelled() {
        let mut heap = TimerHeap::default();
        let items: Vec<Fake> = (0..200).map(Fake::new).collect();
        for (i, item) in items.iter().enumerate() {
            heap.push(1000.0 - i as f64, item.clone());
        }
        // Cancel 150 timers that are not at the head (the head is id 199).
        for item in items.iter().take(150) {
            item.cancelled.set(true);
            heap.note_cancelled();
        }
        let mut garbage = Vec::new();
        let next = heap.clean_and_peek(&mut garbage);
        assert_eq!(garbage.len(), 150);
        assert_eq!(heap.len(), 50);
        assert_eq!(heap.cancelled_count(), 0);
        assert_eq!(next, Some(1000.0 - 199.0));
    }

    #[test]
    fn small_heap_keeps_cancelled_timers_behind_the_head() {
        let mut heap = TimerHeap::default();
        let items: Vec<Fake> = (0..10).map(Fake::new).collect();
        for (i, item) in items.iter().enumerate() {
            heap.push(i as f64, item.clone());
        }
        for item in items.iter().skip(5) {
            item.cancelled.set(true);
            heap.note_cancelled();
        }
        let mut garbage = Vec::new();
        heap.clean_and_peek(&mut garbage);
        assert!(garbage.is_empty());
        assert_eq!(heap.len(), 10);
        let mut out = Vec::new();
        heap.pop_due(100.0, &mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(heap.cancelled_count(), 0);
    }

    #[test]
    fn packed_keys_order_like_the_times() {
        let times = [f64::NEG_INFINITY, -5.5, -0.0, 0.0, 1e-300, 0.5, 1.0, 1e300, f64::INFINITY];
        for pair in times.windows(2) {
            assert!(pack(pair[0], 0) <= pack(pair[1], 0), "{pair:?}");
            assert_eq!(key_time(pack(pair[1], 7)), pair[1]);
        }
        assert!(pack(1.0, 1) < pack(1.0, 2));
        assert!(due_before(pack(1.0, 99), 1.5) && !due_before(pack(2.0, 0), 1.5));
    }

    #[test]
    fn drain_empties_everything() {
        let mut heap = TimerHeap::default();
        heap.push(1.0, Fake::new(1));
        heap.push(2.0, Fake::new(2));
        let mut out = Vec::new();
        heap.drain(&mut out);
        assert!(heap.is_empty());
        assert_eq!(out.len(), 2);
    }
}
