//! Lending the memory of Python bytes-like objects to a syscall, without
//! copying: the buffer protocol's `y*` (read) and `w*` (write) exports.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Runs `f` on the bytes of a bytes-like object. Err is the export's own
/// error (the object is not a contiguous bytes-like object).
pub fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `data` is a live object (GIL held); on success the buffer view
    // is filled in and stays valid until PyBuffer_Release below, and
    // PyBUF_SIMPLE guarantees a contiguous run of `len` bytes at `buf`.
    unsafe {
        if ffi::PyObject_GetBuffer(data.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return Err(PyErr::fetch(data.py()));
        }
        let view_ref = view.assume_init_mut();
        let slice: &[u8] = if view_ref.len <= 0 || view_ref.buf.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(view_ref.buf as *const u8, view_ref.len as usize)
        };
        let result = f(slice);
        ffi::PyBuffer_Release(view_ref);
        Ok(result)
    }
}

/// Runs `f` on the writable memory of a bytes-like object (a bytearray, a
/// writable memoryview...). Err is the TypeError the socket method named
/// `method` raises for an object that is not one (read-only, or not
/// contiguous, or no buffer at all).
pub fn with_writable_bytes<R>(buffer: &Bound<'_, PyAny>, method: &str, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: the GIL is held and `buffer` is alive; on success the view
    // describes a writable, contiguous region of `len` bytes that stays
    // valid until PyBuffer_Release below.
    unsafe {
        if ffi::PyObject_GetBuffer(buffer.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            drop(PyErr::fetch(buffer.py()));
            let type_name = buffer.get_type().name().map(|n| n.to_string()).unwrap_or_default();
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "{method}() argument 1 must be read-write bytes-like object, not {type_name}"
            )));
        }
        let view_ref = view.assume_init_mut();
        let len = view_ref.len.max(0) as usize;
        let slice: &mut [u8] = if len == 0 || view_ref.buf.is_null() {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(view_ref.buf as *mut u8, len)
        };
        let result = f(slice);
        ffi::PyBuffer_Release(view_ref);
        Ok(result)
    }
}
