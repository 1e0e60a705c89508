//! Python objects the native loop uses often, looked up once per process.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

pub struct PyRefs {
    pub future_type: Py<PyAny>,
    /// `("loop",)`: the keyword names of a vectorcall `Future(loop=...)`.
    pub loop_keyword: Py<PyTuple>,
    pub task_type: Py<PyAny>,
    pub format_callback_source: Py<PyAny>,
    /// It takes `debug=` (3.13+: without it, arguments show as `()`).
    pub format_callback_takes_debug: bool,
    pub iscoroutine: Py<PyAny>,
    pub iscoroutinefunction: Py<PyAny>,
    /// `ferroloop._glue.extract_source_traceback`: the creation stack of a
    /// handle in debug mode, as asyncio records it.
    pub extract_source_traceback: Py<PyAny>,
}

static REFS: PyOnceLock<PyRefs> = PyOnceLock::new();

pub fn get(py: Python<'_>) -> PyResult<&'static PyRefs> {
    REFS.get_or_try_init(py, || {
        let asyncio = py.import("asyncio")?;
        let format_helpers = py.import("asyncio.format_helpers")?;
        let coroutines = py.import("asyncio.coroutines")?;
        let glue = py.import("ferroloop._glue")?;
        let format_callback_source = format_helpers.getattr("_format_callback_source")?;
        let format_callback_takes_debug = py
            .import("inspect")?
            .call_method1("signature", (&format_callback_source,))?
            .getattr("parameters")?
            .contains("debug")?;
        Ok(PyRefs {
            future_type: asyncio.getattr("Future")?.unbind(),
            loop_keyword: PyTuple::new(py, ["loop"])?.unbind(),
            task_type: asyncio.getattr("Task")?.unbind(),
            format_callback_source: format_callback_source.unbind(),
            format_callback_takes_debug,
            iscoroutine: coroutines.getattr("iscoroutine")?.unbind(),
            iscoroutinefunction: coroutines.getattr("iscoroutinefunction")?.unbind(),
            extract_source_traceback: glue.getattr("extract_source_traceback")?.unbind(),
        })
    })
}
