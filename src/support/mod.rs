//! Small building blocks the rest of the crate shares: buffer-protocol
//! access, an integer hasher, cached Python objects, locking, and calls into
//! Python that may end the calling thread.

pub(crate) mod buffers;
pub(crate) mod int_hash;
pub(crate) mod pyrefs;
pub(crate) mod sync;
pub(crate) mod thread_exit;
