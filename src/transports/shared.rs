//! What every native transport does the same way as asyncio's: report an
//! error to the loop's exception handler with asyncio's context keys, and
//! work out write-buffer water marks.

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::event_loop::{is_fatal, LoopCore};
use crate::support::thread_exit;

/// asyncio's default high-water mark for write buffers.
pub(crate) const DEFAULT_HIGH_WATER: i64 = 64 * 1024;

/// `loop.call_exception_handler` with asyncio's transport context keys.
pub(crate) fn report_to_loop(
    event_loop: &Bound<'_, LoopCore>,
    transport: &Bound<'_, PyAny>,
    message: &str,
    exc: &Bound<'_, PyAny>,
    protocol: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    let context = PyDict::new(py);
    context.set_item(intern!(py, "message"), message)?;
    context.set_item(intern!(py, "exception"), exc)?;
    context.set_item(intern!(py, "transport"), transport)?;
    context.set_item(intern!(py, "protocol"), protocol)?;
    thread_exit::call_method(event_loop, intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// Flow control's call into the protocol (`pause_writing`,
/// `resume_writing`): an error it raises goes to the exception handler with
/// `message`, as asyncio reports it; KeyboardInterrupt and SystemExit
/// propagate.
pub(crate) fn tell_protocol(
    event_loop: &Bound<'_, LoopCore>,
    transport: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    method: &Bound<'_, PyString>,
    message: &str,
) -> PyResult<()> {
    let py = event_loop.py();
    match thread_exit::call_method(protocol, method, ()) {
        Ok(_) => Ok(()),
        Err(err) if is_fatal(py, &err) => Err(err),
        Err(err) => report_to_loop(event_loop, transport, message, err.into_value(py).bind(py).as_any(), Some(protocol)),
    }
}

/// Water marks as `set_write_buffer_limits(high, low)` sets them: the sizes
/// to compare buffers with, and the objects given, which
/// `get_write_buffer_limits` returns as they were.
pub(crate) struct WaterMarks {
    pub high: f64,
    pub low: f64,
    pub given: (Py<PyAny>, Py<PyAny>),
}

/// asyncio's `_set_write_buffer_limits`: high defaults to `default_high`
/// (or 4 × low), low to high // 4, with its ValueError for bad marks. The
/// arithmetic is Python's, so any number type works as it does there.
pub(crate) fn water_marks(
    py: Python<'_>,
    high: Option<Bound<'_, PyAny>>,
    low: Option<Bound<'_, PyAny>>,
    default_high: i64,
) -> PyResult<WaterMarks> {
    let high = match (high, &low) {
        (Some(high), _) => high,
        (None, None) => default_high.into_pyobject(py)?.into_any(),
        (None, Some(low)) => 4i64.into_pyobject(py)?.mul(low)?,
    };
    let low = match low {
        Some(low) => low,
        None => high.floor_div(4)?,
    };
    if !(high.ge(&low)? && low.ge(0)?) {
        return Err(PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            high.repr()?,
            low.repr()?
        )));
    }
    // Beyond a float's range (a huge int) is as good as no limit.
    let as_size = |mark: &Bound<'_, PyAny>| mark.extract::<f64>().unwrap_or(f64::INFINITY);
    Ok(WaterMarks { high: as_size(&high), low: as_size(&low), given: (low.unbind(), high.unbind()) })
}
