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
//! to its task, and entries whose task is gone are swept out whenever the
//! table has doubled since the last sweep (amortised O(1) per task). A weak
//! reference callback per task would remove entries sooner but cost more
//! than the rest of the record, and the collector clears weak references
//! before running finalizers anyway, so a dead reference must be accepted
//! while a task is being finalized: that is when "Task was destroyed but it
//! is pending!" asks for its creation site.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::time::clock;
use crate::support::int_hash::IntMap;
use crate::support::sync::lock;

/// The table is swept once it holds this many entries, and from then on
/// whenever it has doubled since the last sweep.
const FIRST_SWEEP: usize = 1024;

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
    /// A weak reference to the task.
    task_ref: Py<PyAny>,
    /// The task's coroutine's address: with the weak reference dead, the
    /// entry is taken to be this task's only if the coroutine matches too.
    coro_addr: usize,
    code: Py<PyAny>,
    position: Position,
    created_ns: u64,
}

#[derive(Default)]
struct Table {
    /// Task address -> entry.
    entries: IntMap<usize, Entry>,
    /// Sweep when `entries` reaches this size.
    sweep_at: usize,
    /// Code address -> (the code, kept so its address stays its own; whether
    /// it is asyncio's or ferroloop's).
    internal: IntMap<usize, (Py<PyAny>, bool)>,
}

pub struct TaskSites {
    enabled: AtomicBool,
    table: Mutex<Table>,
    /// Filename prefixes of the packages whose frames are skipped to find
    /// the caller: asyncio's and ferroloop's.
    internal_prefixes: Mutex<Vec<String>>,
}

impl Default for TaskSites {
    fn default() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            table: Mutex::new(Table::default()),
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
    pub fn set_enabled(&self, enabled: bool, internal_prefixes: Vec<String>) {
        if enabled {
            *lock(&self.internal_prefixes) = internal_prefixes;
        }
        self.enabled.store(enabled, Ordering::Relaxed);
        if !enabled {
            let forgotten = std::mem::take(&mut *lock(&self.table));
            drop(forgotten);
        }
    }

    /// Records where `task` is being created: the innermost Python frame
    /// outside asyncio and ferroloop (or, when every frame is theirs, the
    /// innermost one).
    pub fn record(&self, task: &Bound<'_, PyAny>, coro: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = task.py();
        let Some((code, position)) = self.caller(py)? else { return Ok(()) };
        // SAFETY: `task` is a live object and the GIL is held;
        // PyWeakref_NewRef returns a new reference or NULL with an exception
        // set (a task type that takes no weak references), which
        // from_owned_ptr_or_err turns into an error.
        let Ok(task_ref) = (unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyWeakref_NewRef(task.as_ptr(), std::ptr::null_mut())) }) else {
            // A task factory's result that is no task: asyncio returns it as
            // it is, so it is not tracked.
            return Ok(());
        };
        // A weak reference is a GC-tracked object, and one per live task,
        // outliving its task until the next sweep, made the collector's
        // older generations grow: creating tasks cost 20-47% more CPU time
        // with no more instructions (pointer chasing). Without a callback
        // a weak reference holds no strong reference the collector could
        // need to see, so it can leave the collector's lists.
        // SAFETY: `task_ref` is a live weak reference with no callback (we
        // passed none; a shared basic reference has none either), and the
        // GIL is held; weakref_dealloc untracks only if still tracked.
        unsafe {
            if ffi::PyObject_GC_IsTracked(task_ref.as_ptr()) != 0 {
                ffi::PyObject_GC_UnTrack(task_ref.as_ptr().cast());
            }
        }
        let entry = Entry {
            task_ref: task_ref.unbind(),
            coro_addr: coro.as_ptr() as usize,
            code: code.unbind(),
            position,
            created_ns: clock::monotonic_ns(),
        };
        let released = {
            let mut table = lock(&self.table);
            let replaced = table.entries.insert(task.as_ptr() as usize, entry);
            let swept = if table.entries.len() >= table.sweep_at.max(FIRST_SWEEP) { Self::sweep(&mut table) } else { Vec::new() };
            (replaced, swept)
        };
        // Dropped with the lock released: dropping references runs no
        // Python code here, but nothing has to be proved that way.
        drop(released);
        Ok(())
    }

    /// Takes out the entries whose task is gone (to be dropped by the
    /// caller, outside the lock).
    fn sweep(table: &mut Table) -> Vec<Entry> {
        let dead: Vec<usize> = table
            .entries
            .iter()
            .filter(|(_, entry)| !referent_alive(&entry.task_ref))
            .map(|(key, _)| *key)
            .collect();
        let removed = dead.iter().filter_map(|key| table.entries.remove(key)).collect();
        table.sweep_at = (table.entries.len() * 2).max(FIRST_SWEEP);
        removed
    }

    /// Where and when `task` was created, if recorded.
    pub fn lookup(&self, task: &Bound<'_, PyAny>) -> PyResult<Option<SiteInfo>> {
        let py = task.py();
        let found = {
            let table = lock(&self.table);
            table
                .entries
                .get(&(task.as_ptr() as usize))
                .map(|e| (e.task_ref.clone_ref(py), e.coro_addr, e.code.clone_ref(py), e.position, e.created_ns))
        };
        let Some((task_ref, coro_addr, code, position, created_ns)) = found else { return Ok(None) };
        // A live reference must point at this task. A dead one is expected
        // while the task is being finalized (see the module comment), and
        // then the coroutine must match too, so that an entry left by a
        // dead task whose address a new, unrecorded task took is not
        // mistaken for the new task's.
        let referent = task_ref.bind(py).call0()?;
        let same_task = if referent.is_none() {
            task.call_method0(pyo3::intern!(py, "get_coro"))?.as_ptr() as usize == coro_addr
        } else {
            referent.is(task)
        };
        if !same_task {
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
            let evicted = if table.internal.len() >= INTERNAL_CACHE_LIMIT { std::mem::take(&mut table.internal) } else { IntMap::default() };
            table.internal.insert(key, (code.clone().unbind(), internal));
            evicted
        };
        drop(evicted);
        Ok(internal)
    }
}

/// Whether the object a weak reference points to is still alive (the GIL
/// must be held, as it is wherever a `Py` is read).
fn referent_alive(weak: &Py<PyAny>) -> bool {
    #[cfg(Py_3_13)]
    {
        let mut referent: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `weak` is a weak reference object and the GIL is held;
        // PyWeakref_GetRef stores a new reference (or NULL when the referent
        // is gone) into `referent`, which is released at once.
        unsafe {
            let found = ffi::PyWeakref_GetRef(weak.as_ptr(), &mut referent);
            if referent.is_null() {
                return false;
            }
            ffi::Py_DECREF(referent);
            found > 0
        }
    }
    #[cfg(not(Py_3_13))]
    {
        // SAFETY: `weak` is a weak reference object and the GIL is held;
        // PyWeakref_GetObject returns a borrowed reference: None once the
        // referent is gone.
        unsafe { ffi::PyWeakref_GetObject(weak.as_ptr()) != ffi::Py_None() }
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
