//! Child processes: starting them (`spawn`). Watching for their exit and
//! the subprocess transport are in `python/ferroloop/_process.py`, over the
//! native pipe transports.

pub(crate) mod spawn;
