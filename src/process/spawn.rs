//! Starting a child process natively, with `posix_spawn`, the way
//! `subprocess.Popen` starts one: the same argument, environment and
//! executable-path handling, the same standard-stream plumbing, and the same
//! exceptions when the program cannot be run.
//!
//! glibc's `posix_spawn` runs the child on a separate stack in the parent's
//! memory (`CLONE_VM | CLONE_VFORK`) and reports the exec's errno itself, so
//! no error pipe and no work between fork and exec is done here. The options
//! that need code in the child beyond what `posix_spawn` offers (`preexec_fn`,
//! `user`, `group`, `umask`, `pass_fds`, ...) are not taken (`popen.rs`
//! sorts them out): the caller then uses `subprocess.Popen`, as
//! `spawn_child` returning `None` tells it to.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::OnceLock;

use libc::{c_char, c_int, pid_t};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

// subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL.
const PIPE: i64 = -1;
const STDOUT: i64 = -2;
const DEVNULL: i64 = -3;

/// What a standard stream of the child is connected to.
#[derive(Clone, Copy, PartialEq)]
enum Stdio {
    Inherit,
    Pipe,
    DevNull,
    /// The child's stdout (only for stderr).
    SameAsStdout,
    Fd(RawFd),
}

type AddChdir = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, *const c_char) -> c_int;
type AddCloseFrom = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, c_int) -> c_int;

/// glibc's `posix_spawn` extensions (2.29 and 2.34), looked up when first
/// needed rather than linked, so that the module still loads on an older C
/// library; there a spawn that needs one goes through `subprocess.Popen`.
struct Extensions {
    add_chdir: Option<AddChdir>,
    add_close_from: Option<AddCloseFrom>,
}

fn extensions() -> &'static Extensions {
    static EXTENSIONS: OnceLock<Extensions> = OnceLock::new();
    EXTENSIONS.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads;
        // a non-null result is the address of the libc function of that name,
        // whose C signature is the one transmuted to.
        unsafe {
            let chdir = libc::dlsym(libc::RTLD_DEFAULT, c"posix_spawn_file_actions_addchdir_np".as_ptr());
            let close_from = libc::dlsym(libc::RTLD_DEFAULT, c"posix_spawn_file_actions_addclosefrom_np".as_ptr());
            Extensions {
                add_chdir: (!chdir.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, AddChdir>(chdir)),
                add_close_from: (!close_from.is_null())
                    .then(|| std::mem::transmute::<*mut libc::c_void, AddCloseFrom>(close_from)),
            }
        }
    })
}

/// `os.fsencode`, through the C function `Popen`'s C half uses: str, bytes
/// or path-like, with its TypeError and its ValueError for a NUL byte.
fn fs_encode(value: &Bound<'_, PyAny>) -> PyResult<CString> {
    let py = value.py();
    let mut encoded: *mut pyo3::ffi::PyObject = ptr::null_mut();
    // SAFETY: PyUnicode_FSConverter takes a borrowed object and, on success,
    // stores a new reference to a bytes object in `encoded`, which is owned
    // from here on; it checks for embedded NUL bytes itself.
    let converted = unsafe {
        pyo3::ffi::PyUnicode_FSConverter(value.as_ptr(), (&mut encoded as *mut *mut pyo3::ffi::PyObject).cast())
    };
    if converted == 0 || encoded.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `encoded` is the new, owned reference stored above.
    let bytes = unsafe { Bound::from_owned_ptr(py, encoded) };
    let bytes = bytes.cast_into::<PyBytes>()?;
    CString::new(bytes.as_bytes()).map_err(|_| PyValueError::new_err("embedded null byte"))
}

fn stdio_of(value: &Bound<'_, PyAny>, is_stderr: bool) -> PyResult<Option<Stdio>> {
    if value.is_none() {
        return Ok(Some(Stdio::Inherit));
    }
    let fd: i64 = match value.extract::<i64>() {
        Ok(number) => number,
        Err(_) => match value.call_method0("fileno").and_then(|fd| fd.extract::<i64>()) {
            Ok(number) => number,
            // Popen raises what it raises for such a value.
            Err(_) => return Ok(None),
        },
    };
    Ok(match fd {
        PIPE => Some(Stdio::Pipe),
        DEVNULL => Some(Stdio::DevNull),
        STDOUT if is_stderr => Some(Stdio::SameAsStdout),
        // A standard fd handed to another standard slot needs the reordering
        // Popen's child does; other descriptors are dup2'ed as they are.
        fd if fd > 2 && fd <= i64::from(i32::MAX) => Some(Stdio::Fd(fd as RawFd)),
        _ => None,
    })
}

/// File descriptors this module opened for one spawn, closed on every path.
#[derive(Default)]
struct OwnedFds(Vec<RawFd>);

impl OwnedFds {
    fn keep(&mut self, fd: RawFd) -> RawFd {
        self.0.push(fd);
        fd
    }

    fn release(&mut self, fd: RawFd) {
        self.0.retain(|&owned| owned != fd);
    }
}

impl Drop for OwnedFds {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: each fd was opened here and is closed once.
            unsafe { libc::close(fd) };
        }
    }
}

fn last_os_error(py: Python<'_>) -> PyErr {
    crate::transports::syscalls::os_error(py, &std::io::Error::last_os_error())
}

/// A new close-on-exec fd at 3 or above: the standard slots are the child's.
fn above_standard_fds(py: Python<'_>, fds: &mut OwnedFds, fd: RawFd) -> PyResult<RawFd> {
    if fd > 2 {
        return Ok(fds.keep(fd));
    }
    fds.keep(fd);
    // SAFETY: F_DUPFD_CLOEXEC on an fd this function owns.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(last_os_error(py));
    }
    Ok(fds.keep(moved))
}

fn pipe(py: Python<'_>, fds: &mut OwnedFds) -> PyResult<(RawFd, RawFd)> {
    let mut ends = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os_error(py));
    }
    let read_end = above_standard_fds(py, fds, ends[0])?;
    let write_end = above_standard_fds(py, fds, ends[1])?;
    Ok((read_end, write_end))
}

fn dev_null(py: Python<'_>, fds: &mut OwnedFds) -> PyResult<RawFd> {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_os_error(py));
    }
    above_standard_fds(py, fds, fd)
}

/// `os.get_exec_path(env)` joined with the program name, as `Popen` builds
/// its list of executables to try.
fn executable_candidates(env: Option<&Bound<'_, PyAny>>, program: &CString) -> PyResult<Vec<CString>> {
    if program.as_bytes().contains(&b'/') {
        return Ok(vec![program.clone()]);
    }
    let search_path: Vec<u8> = match env {
        None => {
            // SAFETY: getenv with a NUL-terminated name; the value is copied at
            // once, as os.environ's PATH is (os.environ writes through putenv).
            let value = unsafe { libc::getenv(c"PATH".as_ptr()) };
            if value.is_null() {
                b"/bin:/usr/bin".to_vec()
            } else {
                // SAFETY: a non-null getenv result is a NUL-terminated string.
                unsafe { CStr::from_ptr(value) }.to_bytes().to_vec()
            }
        }
        Some(env) => {
            let os = env.py().import("os")?;
            let dirs = os.call_method1("get_exec_path", (env,))?;
            let mut joined = Vec::new();
            for (index, dir) in dirs.try_iter()?.enumerate() {
                if index > 0 {
                    joined.push(b':');
                }
                joined.extend_from_slice(fs_encode(&dir?)?.as_bytes());
            }
            joined
        }
    };
    search_path
        .split(|&byte| byte == b':')
        .map(|dir| {
            let mut path = dir.to_vec();
            if !path.is_empty() && !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(program.as_bytes());
            CString::new(path).map_err(|_| PyValueError::new_err("embedded null byte"))
        })
        .collect()
}

fn environment(env: &Bound<'_, PyAny>) -> PyResult<Vec<CString>> {
    let mut entries = Vec::new();
    for item in env.call_method0("items")?.try_iter()? {
        let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        let key = fs_encode(&key)?;
        if key.as_bytes().contains(&b'=') {
            return Err(PyValueError::new_err("illegal environment variable name"));
        }
        let value = fs_encode(&value)?;
        let mut entry = key.into_bytes();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        entries.push(CString::new(entry).map_err(|_| PyValueError::new_err("embedded null byte"))?);
    }
    Ok(entries)
}

fn null_terminated(strings: &[CString]) -> Vec<*mut c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr() as *mut c_char)
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}

/// The file actions and attributes of one spawn, destroyed on drop.
struct SpawnSetup {
    actions: libc::posix_spawn_file_actions_t,
    attributes: libc::posix_spawnattr_t,
}

impl SpawnSetup {
    fn new() -> Box<Self> {
        // SAFETY: both are plain C structs that their init functions fill in;
        // zeroed memory is only a placeholder until then.
        let mut setup: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: init on the boxed (stable-address) structs; glibc's init
        // functions only fail with ENOMEM, which aborts elsewhere too.
        unsafe {
            libc::posix_spawn_file_actions_init(&mut setup.actions);
            libc::posix_spawnattr_init(&mut setup.attributes);
        }
        setup
    }

    fn check(py: Python<'_>, code: c_int) -> PyResult<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(crate::transports::syscalls::os_error(py, &std::io::Error::from_raw_os_error(code)))
        }
    }
}

impl Drop for SpawnSetup {
    fn drop(&mut self) {
        // SAFETY: both were initialised in new() and are destroyed once.
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attributes);
        }
    }
}

fn sys_audit(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static AUDIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(AUDIT.get_or_try_init(py, || py.import("sys")?.getattr("audit").map(Bound::unbind))?.bind(py))
}

fn raise_os_error(py: Python<'_>, code: c_int, filename: &Bound<'_, PyAny>) -> PyErr {
    let message = match py.import("os").and_then(|os| os.call_method1("strerror", (code,))) {
        Ok(message) => message,
        Err(err) => return err,
    };
    match py.get_type::<PyOSError>().call1((code, message, filename)) {
        Ok(value) => PyErr::from_value(value),
        Err(err) => err,
    }
}

/// Whether `chdir(cwd)` would fail, and with which errno: it is done in the
/// child, where a failure looks like the exec's, and `Popen` names the
/// directory, not the program, in that case.
fn chdir_error(cwd: &CString) -> Option<c_int> {
    // SAFETY: stat into a zeroed struct, with a NUL-terminated path.
    let mut info: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::stat(cwd.as_ptr(), &mut info) } != 0 {
        return std::io::Error::last_os_error().raw_os_error();
    }
    if info.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Some(libc::ENOTDIR);
    }
    // SAFETY: access with a NUL-terminated path.
    if unsafe { libc::access(cwd.as_ptr(), libc::X_OK) } != 0 {
        return std::io::Error::last_os_error().raw_os_error();
    }
    None
}

/// The options of one spawn, as `subprocess.Popen` takes them.
pub struct SpawnOptions<'py> {
    pub shell: bool,
    pub executable: Option<Bound<'py, PyAny>>,
    pub close_fds: bool,
    pub cwd: Option<Bound<'py, PyAny>>,
    pub env: Option<Bound<'py, PyAny>>,
    pub restore_signals: bool,
    pub start_new_session: bool,
    pub process_group: i64,
}

/// The child started, and the parent's ends of the pipes asked for (-1 for
/// none), for stdin, stdout and stderr.
pub struct Spawned {
    pub pid: pid_t,
    pub pipes: [RawFd; 3],
}

/// Starts `args` as `subprocess.Popen(args, stdin=..., stdout=...,
/// stderr=..., **options)` would. Returns None, having started nothing,
/// for what only `Popen` can do; the caller then uses it.
pub fn spawn_child<'py>(
    py: Python<'py>,
    args: &Bound<'py, PyList>,
    stdin: &Bound<'py, PyAny>,
    stdout: &Bound<'py, PyAny>,
    stderr: &Bound<'py, PyAny>,
    options: SpawnOptions<'py>,
) -> PyResult<Option<Spawned>> {
    let SpawnOptions { shell, executable, close_fds, cwd, env, restore_signals, start_new_session, process_group } = options;
    let ext = extensions();
    if args.is_empty() || (close_fds && ext.add_close_from.is_none()) || (cwd.is_some() && ext.add_chdir.is_none()) {
        return Ok(None);
    }
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdio_of(stdin, false)?, stdio_of(stdout, false)?, stdio_of(stderr, true)?) else {
        return Ok(None);
    };
    if stderr == Stdio::SameAsStdout && stdout == Stdio::Inherit {
        return Ok(None); // Popen dup2s its own stdout, fd 1, onto fd 2.
    }
    let pgroup: Option<pid_t> = match process_group {
        -1 => None,
        group if group >= 0 && group <= i64::from(pid_t::MAX) => Some(group as pid_t),
        _ => return Ok(None),
    };

    let mut argv: Vec<Bound<'py, PyAny>> = Vec::with_capacity(args.len() + 2);
    if shell {
        argv.push(pyo3::types::PyString::new(py, "/bin/sh").into_any());
        argv.push(pyo3::types::PyString::new(py, "-c").into_any());
    }
    argv.extend(args.iter());
    if let (true, Some(executable)) = (shell, executable.as_ref()) {
        argv[0] = executable.clone();
    }
    let program = match executable {
        Some(executable) => executable,
        None => argv[0].clone(),
    };
    let argv_list = PyList::new(py, &argv)?;
    sys_audit(py)?.call1(("subprocess.Popen", &program, &argv_list, &cwd, &env))?;

    let argv_c: Vec<CString> = argv.iter().map(fs_encode).collect::<PyResult<_>>()?;
    let envp_c: Option<Vec<CString>> = env.as_ref().map(environment).transpose()?;
    let program_c = fs_encode(&program)?;
    let candidates = executable_candidates(env.as_ref(), &program_c)?;
    let cwd_c: Option<CString> = cwd.as_ref().map(fs_encode).transpose()?;

    let mut fds = OwnedFds::default();
    let mut parent_ends: [RawFd; 3] = [-1; 3];
    let mut child_ends: [RawFd; 3] = [-1; 3];
    let mut null_fd: RawFd = -1;
    for (slot, kind) in [stdin, stdout, stderr].into_iter().enumerate() {
        child_ends[slot] = match kind {
            Stdio::Inherit => -1,
            Stdio::Fd(fd) => fd,
            Stdio::SameAsStdout => child_ends[1],
            Stdio::DevNull => {
                if null_fd < 0 {
                    null_fd = dev_null(py, &mut fds)?;
                }
                null_fd
            }
            Stdio::Pipe => {
                let (read_end, write_end) = pipe(py, &mut fds)?;
                if slot == 0 {
                    parent_ends[0] = write_end;
                    read_end
                } else {
                    parent_ends[slot] = read_end;
                    write_end
                }
            }
        };
    }

    let mut setup = SpawnSetup::new();
    for (slot, &fd) in child_ends.iter().enumerate() {
        if fd >= 0 {
            // SAFETY: the file actions were initialised; fds are plain ints.
            SpawnSetup::check(py, unsafe { libc::posix_spawn_file_actions_adddup2(&mut setup.actions, fd, slot as c_int) })?;
        }
    }
    if let (Some(cwd), Some(add_chdir)) = (cwd_c.as_ref(), ext.add_chdir) {
        // SAFETY: glibc copies the path into the file actions.
        SpawnSetup::check(py, unsafe { add_chdir(&mut setup.actions, cwd.as_ptr()) })?;
    }
    if let (true, Some(add_close_from)) = (close_fds, ext.add_close_from) {
        // SAFETY: the file actions were initialised.
        SpawnSetup::check(py, unsafe { add_close_from(&mut setup.actions, 3) })?;
    }
    // glibc's child sets the signals it uses internally (32 and 33) to
    // SIG_IGN unless they are in the set-to-default set, and an ignored
    // signal stays ignored across exec; a forked child has them at SIG_DFL
    // once it execs. sigaddset refuses them, so their bits are set directly.
    let mut flags: c_int = libc::POSIX_SPAWN_SETSIGDEF;
    // SAFETY: sigemptyset/sigaddset on a local set; sigset_t is glibc's
    // array of unsigned longs (1024 bits), bit (n - 1) for signal n, which the
    // two direct writes index within it; the set is then copied into the
    // initialised attributes.
    unsafe {
        let mut defaults: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut defaults);
        let words = (&mut defaults as *mut libc::sigset_t).cast::<libc::c_ulong>();
        let word_bits = libc::c_ulong::BITS as usize;
        for internal in [32usize, 33] {
            *words.add((internal - 1) / word_bits) |= 1 << ((internal - 1) % word_bits);
        }
        if restore_signals {
            libc::sigaddset(&mut defaults, libc::SIGPIPE);
            libc::sigaddset(&mut defaults, libc::SIGXFSZ);
        }
        SpawnSetup::check(py, libc::posix_spawnattr_setsigdefault(&mut setup.attributes, &defaults))?;
    }
    if start_new_session {
        flags |= c_int::from(libc::POSIX_SPAWN_SETSID);
    }
    if let Some(group) = pgroup {
        flags |= libc::POSIX_SPAWN_SETPGROUP;
        // SAFETY: the attributes were initialised.
        SpawnSetup::check(py, unsafe { libc::posix_spawnattr_setpgroup(&mut setup.attributes, group) })?;
    }
    // SAFETY: the attributes were initialised; flags are glibc's.
    SpawnSetup::check(py, unsafe { libc::posix_spawnattr_setflags(&mut setup.attributes, flags as libc::c_short) })?;

    let argv_p = null_terminated(&argv_c);
    let envp_p = envp_c.as_deref().map(null_terminated);
    extern "C" {
        static environ: *const *mut c_char;
    }
    // SAFETY: reading the process's environment pointer, as exec would.
    let envp: *const *mut c_char = match envp_p.as_ref() {
        Some(list) => list.as_ptr(),
        None => unsafe { environ },
    };

    let mut pid: pid_t = 0;
    let mut first_error: c_int = 0;
    let mut last_error: c_int = libc::ENOENT;
    let mut started = false;
    for candidate in &candidates {
        // SAFETY: access with a NUL-terminated path. A candidate that is not
        // there is what execve would refuse with the same errno, without
        // starting a child to learn it.
        if unsafe { libc::access(candidate.as_ptr(), libc::F_OK) } != 0 {
            let code = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOENT);
            if code == libc::ENOENT || code == libc::ENOTDIR {
                last_error = code;
                continue;
            }
        }
        // SAFETY: every pointer is to a NUL-terminated string or a
        // NULL-terminated array of them, alive until the call returns; the
        // file actions and attributes were initialised above. The GIL stays
        // held: the call returns once the child has exec'ed or failed to.
        let code = unsafe {
            libc::posix_spawn(&mut pid, candidate.as_ptr(), &setup.actions, &setup.attributes, argv_p.as_ptr(), envp)
        };
        if code == 0 {
            started = true;
            break;
        }
        if code != libc::ENOENT && code != libc::ENOTDIR && first_error == 0 {
            first_error = code;
        }
        last_error = code;
    }
    if !started {
        if let Some((cwd, code)) = cwd.as_ref().zip(cwd_c.as_ref().and_then(chdir_error)) {
            return Err(raise_os_error(py, code, cwd));
        }
        let code = if first_error != 0 { first_error } else { last_error };
        return Err(raise_os_error(py, code, &program));
    }
    for fd in parent_ends {
        if fd >= 0 {
            fds.release(fd);
        }
    }
    drop(fds); // the child's ends and /dev/null
    Ok(Some(Spawned { pid, pipes: parent_ends }))
}
