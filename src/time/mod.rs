//! Time: the loop's clock and its timer heap.

pub(crate) mod clock;
pub(crate) mod timers;
