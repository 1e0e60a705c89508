//! The `bytes` objects reads hand to `data_received`, with the last one
//! reused when nothing kept it.
//!
//! A read of more than pymalloc's 512-byte limit is a `malloc`/`free` pair
//! in the system allocator: about 450 instructions, an eighth of a whole
//! Protocol echo round trip. Most protocols parse or forward the data and
//! drop it; when `data_received` returns and the loop holds the only
//! reference, no other code can reach the object (`bytes` has no weak
//! references, and every other reference, a memoryview's included, counts),
//! so the next read of about the same size may be copied into it instead of
//! into a new one. The loop keeps one such spare; a protocol that keeps its
//! data gets a new object every time, as it would from asyncio.

use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::sync::lock;

/// Smaller objects come from pymalloc, about as cheap as reusing one.
const MIN_REUSED: usize = 513;

/// A reused object may carry at most this fraction of its allocation as
/// slack past its length (1/8): a protocol that keeps it wastes no more.
const SLACK_SHIFT: u32 = 3;

struct Spare {
    bytes: Py<PyBytes>,
    /// The length the object was allocated with; its current length may be
    /// shorter after a reuse.
    capacity: usize,
}

#[derive(Default)]
pub struct ReadBytes {
    spare: Mutex<Option<Spare>>,
}

/// A `bytes` holding one read, and the length it was allocated with.
pub struct Received<'py> {
    pub data: Bound<'py, PyBytes>,
    capacity: usize,
}

fn fits(capacity: usize, len: usize) -> bool {
    len >= MIN_REUSED && len <= capacity && capacity - len <= capacity >> SLACK_SHIFT
}

impl ReadBytes {
    /// A `bytes` with the contents of `chunk`: the spare, overwritten, if it
    /// fits and is still unshared, else a new object.
    pub fn bytes_from<'py>(&self, py: Python<'py>, chunk: &[u8]) -> Received<'py> {
        let reusable = {
            let mut spare = lock(&self.spare);
            match spare.as_ref() {
                Some(s) if fits(s.capacity, chunk.len()) => spare.take(),
                _ => None,
            }
        };
        if let Some(Spare { bytes, capacity }) = reusable {
            let bytes = bytes.into_bound(py);
            if is_unshared(&bytes) {
                overwrite(&bytes, chunk);
                return Received { data: bytes, capacity };
            }
        }
        Received { data: PyBytes::new(py, chunk), capacity: chunk.len() }
    }

    /// Called once `data_received` has returned: keeps the object for the
    /// next read if the caller's reference is the only one left.
    pub fn give_back(&self, received: Received<'_>) {
        if received.capacity >= MIN_REUSED && is_unshared(&received.data) {
            *lock(&self.spare) = Some(Spare { bytes: received.data.unbind(), capacity: received.capacity });
        }
    }

    /// Drops the spare (the loop is closing).
    pub fn clear(&self) {
        let spare = lock(&self.spare).take();
        drop(spare);
    }
}

fn is_unshared(bytes: &Bound<'_, PyBytes>) -> bool {
    // SAFETY: the GIL is held and `bytes` is a live object.
    unsafe { ffi::Py_REFCNT(bytes.as_ptr()) == 1 }
}

/// Replaces the contents of an unshared `bytes` whose allocation holds at
/// least `chunk.len()` bytes.
fn overwrite(bytes: &Bound<'_, PyBytes>, chunk: &[u8]) {
    let object = bytes.as_ptr() as *mut ffi::PyBytesObject;
    // SAFETY: the caller checked that the GIL-holding loop owns the only
    // reference, so no other code can observe the object while it changes,
    // and that its allocation (`capacity` bytes plus the terminating NUL,
    // as PyBytes_FromStringAndSize made it) holds `chunk.len() + 1` bytes.
    // The cached hash is reset as _PyBytes_Resize does; the field exists,
    // deprecated, on every supported version (3.10-3.14).
    unsafe {
        let storage = std::ptr::addr_of_mut!((*object).ob_sval) as *mut u8;
        std::ptr::copy_nonoverlapping(chunk.as_ptr(), storage, chunk.len());
        *storage.add(chunk.len()) = 0;
        (*object).ob_base.ob_size = chunk.len() as ffi::Py_ssize_t;
        #[allow(deprecated)]
        {
            (*object).ob_shash = -1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fits;

    #[test]
    fn reuse_needs_a_large_object_with_little_slack() {
        assert!(fits(1024, 1024));
        assert!(fits(1024, 1024 - 128));
        assert!(!fits(1024, 1024 - 129));
        assert!(!fits(1024, 1025));
        assert!(!fits(512, 512));
        assert!(fits(600, 600));
    }
}
