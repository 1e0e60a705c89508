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

use std::cell::RefCell;
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::support::sync::lock;

/// Smaller objects come from pymalloc, about as cheap as reusing one.
const MIN_REUSED: usize = 513;

/// A reused object may carry at most this fraction of its allocation as
/// slack past its length (1/8): a protocol that keeps it wastes no more.
const SLACK_SHIFT: u32 = 3;

/// asyncio's `max_size` for one transport read.
pub const MAX_READ: usize = 256 * 1024;

/// The scratch buffer starts on a page boundary. On the AMD EPYC machines
/// the benchmarks ran on, the kernel's `recv` copy into a buffer starting 16
/// or 17 bytes past a page boundary (16 is where a fresh `malloc` of this
/// size lands) ran at about half speed, while offsets 0, 32, 64 and others
/// did not: 100 KiB `sock_recv` echo took 72-77 instead of 38-40 µs of
/// server CPU per request.
const SCRATCH_ALIGN: usize = 4096;

struct Scratch {
    storage: Vec<u8>,
    start: usize,
}

impl Scratch {
    fn new() -> Self {
        let storage = vec![0u8; MAX_READ + SCRATCH_ALIGN];
        let misalignment = storage.as_ptr() as usize % SCRATCH_ALIGN;
        let start = (SCRATCH_ALIGN - misalignment) % SCRATCH_ALIGN;
        Self { storage, start }
    }

    fn buffer(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + MAX_READ]
    }
}

thread_local! {
    /// Reads land here and are copied into a `bytes` of the exact size. A
    /// buffer of `MAX_READ` bytes allocated per read, as `sock.recv(max_size)`
    /// does, comes from mmap (it is over glibc's 128 KiB threshold): each
    /// read then costs mmap, mremap and munmap calls and a page fault per
    /// 4 KiB received, far more than copying what was received.
    static READ_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Runs `f` on a buffer of `MAX_READ` bytes that stays allocated (and
/// faulted in) across reads.
pub fn with_read_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(scratch.buffer()),
        // Only reachable if `f` re-entered a read on this thread.
        Err(_) => f(Scratch::new().buffer()),
    })
}

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
            let spare = Spare { bytes: received.data.unbind(), capacity: received.capacity };
            let previous = lock(&self.spare).replace(spare);
            drop(previous);
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
    fn scratch_buffer_is_page_aligned_and_full_size() {
        let mut scratch = super::Scratch::new();
        let buffer = scratch.buffer();
        assert_eq!(buffer.len(), super::MAX_READ);
        assert_eq!(buffer.as_ptr() as usize % super::SCRATCH_ALIGN, 0);
    }

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
