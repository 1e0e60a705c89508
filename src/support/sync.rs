//! Locking helpers.
//!
//! The loop's state sits behind `std::sync::Mutex`es that are only ever held
//! for a few non-panicking instructions, and never across a call into Python.
//! A poisoned lock can therefore only come from a bug elsewhere; the data is
//! still consistent, so we keep going rather than turning it into a panic.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
