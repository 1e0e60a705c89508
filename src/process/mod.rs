//! Child processes: starting them natively (`spawn`) and the `Popen` that
//! describes them (`popen`). Watching for their exit and the subprocess
//! transport are in `python/ferroloop/_process.py`, over the native pipe
//! transports.

pub(crate) mod popen;
pub(crate) mod spawn;
