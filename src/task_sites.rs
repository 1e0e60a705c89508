//! Where each task was created (the line of its `create_task` call) and
//! when, for the task hygiene reports and the live view's task ages.
//!
//! Coroutine origin tracking (`sys.set_coroutine_origin_tracking_depth`)
//! would record this too, but it runs for every coroutine and works out the
//! line number up front: on the streams echo server, which creates no task
//! per request, depth 1 still cost 51% more instructions per request, since
//! every `await reader.read()` makes a coroutine. Here only `create_task`
//! pays, and the line is worked out when a report asks for it: a capture
//! keeps the code object and the offset of the instruction that ran.
//!
//! Tasks are not kept alive by the table: each entry holds a weak reference
//! whose callback queues the entry for removal. Removal happens at the next
//! capture, not in the callback, because the collector clears weak
//! references before it runs finalizers, and a task's finalizer is what
//! reports "Task was destroyed but it is pending!" with its creation site.

use std::collections::HashMap;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::clock;
use crate::sync::lock;

/// Code objects remembered as asyncio's or ferroloop's (or not); cleared when
/// it grows past this, since code objects made at run time could fill it.
const INTERNAL_CACHE_LIMIT: usize = 4096;

/// Where in a code object a frame was: the instruction's byte offset where
/// the C API gives it (3.11+), else the line, resolved at capture.
#[derive(Clone, Copy)]
enum Position {
    #[cfg(Py_3_11)]
    Offset(c_int),
    #[cfg_attr(Py_3_11, allow(dead_code))]
    Line(c_int),
}

struct Entry {
    /// A weak reference to the task, with the reaper as its callback.
    task_ref: Py<PyAny>,
    code: Py<PyAny>,
    position: Position,
    created_ns: u64,
}

/// Weak references whose task has died, queued by the reaper.
#[derive(Default)]
struct DeadRefs {
    refs: Mutex<Vec<usize>>,
    any: AtomicBool,
}

/// The weak references' callback: queues the dead reference for removal.
#[pyclass(module = "ferroloop._native", frozen)]
pub struct SiteReaper {
    dead: Arc<DeadRefs>,
}

#[pymethods]
impl SiteReaper {
    fn __call__(&self, dead_ref: &Bound<'_, PyAny>) {
        lock(&self.dead.refs).push(dead_ref.as_ptr() as usize);
        self.dead.any.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Table {
    /// Task address -> entry.
    entries: HashMap<usize, Entry>,
    /// Weak reference address -> task address, to remove reaped entries.
    by_ref: HashMap<usize, usize>,
    /// Code address -> (the code, kept so its address stays its own; whether
    /// it is asyncio's or ferroloop's).
    internal: HashMap<usize, (Py<PyAny>, bool)>,
}

pub struct TaskSites {
    enabled: AtomicBool,
    table: Mutex<Table>,
    dead: Arc<DeadRefs>,
    reaper: Mutex<Option<Py<SiteReaper>>>,
    /// Filename prefixes of the packages whose frames are skipped to find
    /// the caller: asyncio's and ferroloop's.
    internal_prefixes: Mutex<Vec<String>>,
}

impl Default for TaskSites {
    fn default() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            table: Mutex::new(Table::default()),
            dead: Arc::new(DeadRefs::default()),
            reaper: Mutex::new(None),
            internal_prefixes: Mutex::new(Vec::new()),
        }
    }
}

/// What a report says about a task's creation.
pub struct SiteInfo {
    pub filename: Py<PyAny>,
    pub line: i32,
    pub function: Py<PyAny>,
    pub created_ns: u64,
}

impl TaskSites {
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off; off forgets every entry.
    pub fn set_enabled(&self, py: Python<'_>, enabled: bool, internal_prefixes: Vec<String>) -> PyResult<()> {
        if enabled {
            let mut reaper = lock(&self.reaper);
            if reaper.is_none() {
                *reaper = Some(Py::new(py, SiteReaper { dead: Arc::clone(&self.dead) })?);
            }
            *lock(&self.internal_prefixes) = internal_prefixes;
        }
        self.enabled.store(enabled, Ordering::Relaxed);
        if !enabled {
            let forgotten = std::mem::take(&mut *lock(&self.table));
            lock(&self.dead.refs).clear();
            drop(forgotten);
        }
        Ok(())
    }

    /// Records where `task` is being created: the innermost Python frame
    /// outside asyncio and ferroloop (or, when every frame is theirs, the
    /// innermost one).
    pub fn record(&self, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = task.py();
        self.remove_reaped();
        let Some((code, position)) = self.caller(py)? else { return Ok(()) };
        let Some(reaper) = lock(&self.reaper).as_ref().map(|r| r.clone_ref(py)) else { return Ok(()) };
        // SAFETY: `task` and `reaper` are live objects and the GIL is held;
        // PyWeakref_NewRef returns a new reference or NULL with an exception
        // set (a task type that takes no weak references), which
        // from_owned_ptr_or_err turns into an error.
        let task_ref = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyWeakref_NewRef(task.as_ptr(), reaper.as_ptr()))? };
        let key = task.as_ptr() as usize;
        let entry = Entry { task_ref: task_ref.unbind(), code: code.unbind(), position, created_ns: clock::monotonic_ns() };
        let replaced = {
            let mut table = lock(&self.table);
            table.by_ref.insert(entry.task_ref.as_ptr() as usize, key);
            let replaced = table.entries.insert(key, entry);
            if let Some(old) = &replaced {
                table.by_ref.remove(&(old.task_ref.as_ptr() as usize));
            }
            replaced
        };
        // Dropped with the lock released: dropping references runs no
        // Python code here, but nothing has to be proved that way.
        drop(replaced);
        Ok(())
    }

    /// Where and when `task` was created, if recorded.
    pub fn lookup(&self, task: &Bound<'_, PyAny>) -> PyResult<Option<SiteInfo>> {
        let py = task.py();
        let found = {
            let table = lock(&self.table);
            table.entries.get(&(task.as_ptr() as usize)).map(|e| (e.task_ref.clone_ref(py), e.code.clone_ref(py), e.position, e.created_ns))
        };
        let Some((task_ref, code, position, created_ns)) = found else { return Ok(None) };
        // A live reference must point at this task. A dead one is expected
        // while the task is being finalized (see the module comment);
        // removal at the next capture keeps a dead entry from outliving
        // that moment for long.
        let referent = task_ref.bind(py).call0()?;
        if !referent.is_none() && !referent.is(task) {
            return Ok(None);
        }
        let code = code.bind(py);
        let line = match position {
            #[cfg(Py_3_11)]
            // SAFETY: `code` is a code object (it came from PyFrame_GetCode)
            // and the GIL is held; PyCode_Addr2Line only reads it.
            Position::Offset(offset) => unsafe { ffi::PyCode_Addr2Line(code.as_ptr().cast(), offset) },
            Position::Line(line) => line,
        };
        Ok(Some(SiteInfo {
            filename: code.getattr(pyo3::intern!(py, "co_filename"))?.unbind(),
            line,
            function: code.getattr(pyo3::intern!(py, "co_name"))?.unbind(),
            created_ns,
        }))
    }

    /// Entries held, reaped ones not yet removed included.
    pub fn len(&self) -> usize {
        lock(&self.table).entries.len()
    }

    fn remove_reaped(&self) {
        if !self.dead.any.swap(false, Ordering::Relaxed) {
            return;
        }
        let dead = std::mem::take(&mut *lock(&self.dead.refs));
        let mut removed = Vec::with_capacity(dead.len());
        {
            let mut table = lock(&self.table);
            for dead_ref in dead {
                let Some(key) = table.by_ref.remove(&dead_ref) else { continue };
                if table.entries.get(&key).is_some_and(|e| e.task_ref.as_ptr() as usize == dead_ref) {
                    removed.extend(table.entries.remove(&key));
                }
            }
        }
        drop(removed);
    }

    /// The calling frame's code and position, skipping asyncio's and
    /// ferroloop's own frames.
    fn caller<'py>(&self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyAny>, Position)>> {
        // SAFETY: the GIL is held. PyEval_GetFrame returns a borrowed
        // reference (or NULL when no Python code is running), made owned at
        // once; PyFrame_GetCode and PyFrame_GetBack return new references
        // (GetBack may return NULL at the outermost frame) to objects that
        // are frames and code objects as the functions document.
        unsafe {
            let current = ffi::PyEval_GetFrame();
            if current.is_null() {
                return Ok(None);
            }
            let mut frame = Bound::from_borrowed_ptr(py, current.cast::<ffi::PyObject>());
            let mut innermost = None;
            loop {
                let frame_ptr = frame.as_ptr().cast::<ffi::PyFrameObject>();
                let code = Bound::from_owned_ptr(py, ffi::PyFrame_GetCode(frame_ptr).cast::<ffi::PyObject>());
                let position = frame_position(frame_ptr);
                if !self.is_internal(&code)? {
                    return Ok(Some((code, position)));
                }
                if innermost.is_none() {
                    innermost = Some((code, position));
                }
                let back = ffi::PyFrame_GetBack(frame_ptr);
                if back.is_null() {
                    return Ok(innermost);
                }
                frame = Bound::from_owned_ptr(py, back.cast::<ffi::PyObject>());
            }
        }
    }

    fn is_internal(&self, code: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = code.as_ptr() as usize;
        if let Some((_, internal)) = lock(&self.table).internal.get(&key) {
            return Ok(*internal);
        }
        let filename = code.getattr(pyo3::intern!(code.py(), "co_filename"))?;
        let filename = filename.cast::<PyString>().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let internal = lock(&self.internal_prefixes).iter().any(|prefix| filename.starts_with(prefix.as_str()));
        let evicted = {
            let mut table = lock(&self.table);
            let evicted = if table.internal.len() >= INTERNAL_CACHE_LIMIT { std::mem::take(&mut table.internal) } else { HashMap::new() };
            table.internal.insert(key, (code.clone().unbind(), internal));
            evicted
        };
        drop(evicted);
        Ok(internal)
    }
}

/// SAFETY: `frame` must be a live frame object and the GIL held.
unsafe fn frame_position(frame: *mut ffi::PyFrameObject) -> Position {
    #[cfg(Py_3_11)]
    {
        Position::Offset(ffi::PyFrame_GetLasti(frame))
    }
    #[cfg(not(Py_3_11))]
    {
        Position::Line(ffi::PyFrame_GetLineNumber(frame))
    }
}
