//! TLS: asyncio's `SSLProtocol` (the 3.11+ design, a buffered protocol
//! driving an `ssl.SSLObject` through memory BIOs) and the transport it gives
//! the application, in Rust.
//!
//! - `protocol.rs`: the protocol that sits on the stream transport, its
//!   handshake, read, write and shutdown flows and flow control both ways;
//! - `app_transport.rs`: the transport the application writes to;
//! - `refs.rs`: the Python objects both look up once.
//!
//! They follow asyncio's `sslproto.py` step by step, with three mends (see
//! `protocol.rs`), so that what a program sees is what asyncio's TLS
//! gives it, minus the Python bytecode per connection.

pub(crate) mod app_transport;
pub(crate) mod protocol;
mod refs;
