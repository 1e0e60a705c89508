//! Servers: the native accept loop behind `loop.create_server` and
//! `loop.create_unix_server` (asyncio's `Server` object stays asyncio's).

pub mod listener;
