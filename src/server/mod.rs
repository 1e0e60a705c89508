//! Servers: the native accept loop behind `loop.create_server` and
//! `loop.create_unix_server` (asyncio's `Server` object stays asyncio's).

pub(crate) mod connections;
pub mod listener;
