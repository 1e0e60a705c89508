//! The loop's clock: the same CLOCK_MONOTONIC reading as `time.monotonic()`.

/// Seconds on the monotonic clock, converted exactly as CPython converts
/// `time.monotonic()` (integer nanoseconds divided by 1e9), so that
/// `loop.time()` and `time.monotonic()` agree to the last bit.
pub fn monotonic() -> f64 {
    monotonic_ns() as f64 / 1e9
}

/// Nanoseconds on the monotonic clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is
    // supported by every kernel we build for; the call cannot fail with
    // these arguments, so its return value carries no information.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resolution of the monotonic clock in seconds (asyncio's `_clock_resolution`).
pub fn resolution() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as in `monotonic_ns`; clock_getres only writes into `ts`.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 1e-9;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }

    #[test]
    fn resolution_is_positive_and_small() {
        let r = resolution();
        assert!(r > 0.0 && r < 0.01, "resolution {r}");
    }
}
