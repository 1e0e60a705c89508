//! Transports: the byte-moving half of asyncio's network API.

pub(crate) mod read_bytes;
pub mod stream;
pub(crate) mod syscalls;
mod write_buffer;
