//! What asyncio's subprocess transport asks of `subprocess.Popen`, done
//! natively: the keywords sorted into what `spawn` does itself and what
//! only `Popen` can do, and, for a child `spawn` started, a real `Popen`
//! object in the state `Popen.__init__` leaves one in (with `bufsize=0` and
//! `universal_newlines=False`, as asyncio passes them), so that
//! `get_extra_info('subprocess')`, `poll()`, `send_signal()`, `wait()` and
//! `communicate()` behave as on asyncio.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::spawn::{spawn_child, SpawnOptions};

/// The keywords that ask nothing of the child when they have the value
/// `Popen` defaults them to; any other value, or any other keyword, is left
/// to `Popen`.
fn is_neutral(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(match name {
        "preexec_fn" | "startupinfo" | "group" | "extra_groups" | "user" => value.is_none(),
        "pass_fds" => !value.is_truthy()?,
        "creationflags" => value.extract::<i64>().is_ok_and(|flags| flags == 0),
        "umask" | "pipesize" => value.extract::<i64>().is_ok_and(|number| number == -1),
        _ => false,
    })
}

fn options_from<'py>(py: Python<'py>, shell: bool, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Option<SpawnOptions<'py>>> {
    let mut options = SpawnOptions {
        shell,
        executable: None,
        close_fds: true,
        cwd: None,
        env: None,
        restore_signals: true,
        start_new_session: false,
        process_group: -1,
    };
    let Some(kwargs) = kwargs else {
        return Ok(Some(options));
    };
    let has_process_group = py.version_info() >= (3, 11);
    for (name, value) in kwargs.iter() {
        let name = name.cast::<PyString>()?.to_cow()?;
        match &*name {
            "executable" => options.executable = (!value.is_none()).then_some(value),
            "close_fds" => options.close_fds = value.is_truthy()?,
            "cwd" => options.cwd = (!value.is_none()).then_some(value),
            "env" => options.env = (!value.is_none()).then_some(value),
            "restore_signals" => options.restore_signals = value.is_truthy()?,
            "start_new_session" => options.start_new_session = value.is_truthy()?,
            "process_group" if has_process_group => match value.extract::<i64>() {
                Ok(group) => options.process_group = group,
                Err(_) if value.is_none() => {}
                Err(_) => return Ok(None),
            },
            other if is_neutral(other, &value)? => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(options))
}

struct PopenRefs {
    file_io: Py<PyAny>,
    lock: Py<PyAny>,
}

fn refs(py: Python<'_>) -> PyResult<&'static PopenRefs> {
    static REFS: PyOnceLock<PopenRefs> = PyOnceLock::new();
    REFS.get_or_try_init(py, || {
        Ok(PopenRefs {
            file_io: py.import("io")?.getattr("FileIO")?.unbind(),
            lock: py.import("threading")?.getattr("Lock")?.unbind(),
        })
    })
}

fn file_for<'py>(py: Python<'py>, fd: RawFd, mode: &str) -> PyResult<Bound<'py, PyAny>> {
    if fd < 0 {
        return Ok(py.None().into_bound(py));
    }
    refs(py)?.file_io.bind(py).call1((fd, mode))
}

/// `subprocess.Popen(args, shell=shell, stdin=stdin, stdout=stdout,
/// stderr=stderr, bufsize=0, universal_newlines=False, **kwargs)`, the
/// child started natively: a `popen_type` instance, or None, with nothing
/// started, when only `Popen` can start it (the caller then calls `Popen`,
/// which also raises what it raises for bad values).
#[pyfunction]
#[pyo3(signature = (popen_type, args, shell, stdin, stdout, stderr, kwargs=None))]
pub fn spawn_popen<'py>(
    py: Python<'py>,
    popen_type: &Bound<'py, PyAny>,
    args: &Bound<'py, PyAny>,
    shell: bool,
    stdin: &Bound<'py, PyAny>,
    stdout: &Bound<'py, PyAny>,
    stderr: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(options) = options_from(py, shell, kwargs)? else {
        return Ok(None);
    };
    let argv = if args.is_instance_of::<PyString>() || args.is_instance_of::<pyo3::types::PyBytes>() {
        PyList::new(py, [args])?
    } else if let Ok(list) = args.cast::<PyList>() {
        PyList::new(py, list.iter())?
    } else if let Ok(tuple) = args.cast::<PyTuple>() {
        PyList::new(py, tuple.iter())?
    } else {
        return Ok(None);
    };
    let Some(spawned) = spawn_child(py, &argv, stdin, stdout, stderr, options)? else {
        return Ok(None);
    };
    let [stdin_fd, stdout_fd, stderr_fd] = spawned.pipes;
    let popen = popen_type.call_method1(intern!(py, "__new__"), (popen_type,))?;
    let state = popen.getattr(intern!(py, "__dict__"))?.cast_into::<PyDict>()?;
    let none = py.None();
    state.set_item(intern!(py, "_waitpid_lock"), refs(py)?.lock.bind(py).call0()?)?;
    state.set_item(intern!(py, "_input"), &none)?;
    state.set_item(intern!(py, "_communication_started"), false)?;
    state.set_item(intern!(py, "args"), args)?;
    state.set_item(intern!(py, "stdin"), file_for(py, stdin_fd, "wb")?)?;
    state.set_item(intern!(py, "stdout"), file_for(py, stdout_fd, "rb")?)?;
    state.set_item(intern!(py, "stderr"), file_for(py, stderr_fd, "rb")?)?;
    state.set_item(intern!(py, "pid"), spawned.pid)?;
    state.set_item(intern!(py, "returncode"), &none)?;
    state.set_item(intern!(py, "encoding"), &none)?;
    state.set_item(intern!(py, "errors"), &none)?;
    state.set_item(intern!(py, "pipesize"), -1)?;
    state.set_item(intern!(py, "text_mode"), false)?;
    state.set_item(intern!(py, "_sigint_wait_secs"), 0.25)?;
    state.set_item(intern!(py, "_closed_child_pipe_fds"), true)?;
    state.set_item(intern!(py, "_child_created"), true)?;
    Ok(Some(popen))
}
