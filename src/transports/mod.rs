//! Transports: the byte-moving half of asyncio's network API.

pub mod stream;
mod syscalls;
mod write_buffer;
