//! What the loop reports about itself: its activity as other threads see it,
//! metrics, where tasks were created, and the stall watchdog.

pub(crate) mod activity;
pub(crate) mod metrics;
pub(crate) mod task_sites;
pub(crate) mod watchdog;
