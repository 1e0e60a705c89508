//! ferroloop's native core: a Rust implementation of asyncio's event loop.

mod activity;
mod buffers;
mod clock;
mod event_loop;
mod fast_calls;
mod handles;
mod int_hash;
mod metrics;
mod poller;
mod pyrefs;
mod run;
mod sock_calls;
mod sync;
mod task_sites;
mod thread_exit;
mod timers;
mod transports;
mod watchdog;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    handles::install_direct_traverse(m.py());
    sock_calls::install_am_send(m.py());
    m.add_class::<transports::stream::StreamTransport>()?;
    m.add_class::<sock_calls::SockCall>()?;
    for (name, descriptor) in fast_calls::descriptors(m.py())? {
        m.add(format!("_{name}_fastcall"), descriptor)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
