//! ferroloop's native core: a Rust implementation of asyncio's event loop.

mod diagnostics;
mod event_loop;
#[cfg(target_os = "linux")]
mod process;
mod readiness;
mod server;
mod sock_calls;
mod support;
mod time;
mod tls;
mod transports;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<event_loop::handles::Handle>()?;
    m.add_class::<event_loop::handles::TimerHandle>()?;
    event_loop::handles::install_direct_traverse(m.py());
    sock_calls::install_am_send(m.py());
    m.add_class::<transports::stream::StreamTransport>()?;
    m.add_class::<transports::datagram::DatagramTransport>()?;
    m.add_class::<transports::pipe::ReadPipeTransport>()?;
    m.add_class::<transports::pipe::WritePipeTransport>()?;
    m.add_class::<sock_calls::SockCall>()?;
    m.add_class::<tls::protocol::SslProtocol>()?;
    m.add_class::<tls::app_transport::TlsTransport>()?;
    m.add_class::<server::listener::Listener>()?;
    m.add_function(wrap_pyfunction!(transports::stream_setup::make_socket_transport, m)?)?;
    m.add_function(wrap_pyfunction!(transports::stream_setup::transport_extra, m)?)?;
    m.add_function(wrap_pyfunction!(transports::sockaddr::numeric_tcp_target, m)?)?;
    m.add_function(wrap_pyfunction!(transports::socket_object::nonblocking_socket, m)?)?;
    #[cfg(target_os = "linux")]
    m.add_function(wrap_pyfunction!(process::popen::spawn_popen, m)?)?;
    for (name, descriptor) in event_loop::fast_calls::descriptors(m.py())? {
        m.add(format!("_{name}_fastcall"), descriptor)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
