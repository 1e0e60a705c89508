"""Which frame of a stack is the program's own code, and what a frame blocks in.

A stall's stack under a framework is mostly the framework's: uvicorn's
request cycle, Starlette's middleware, FastAPI's routing, then the endpoint
that called ``time.sleep``. The watchdog names the innermost frame of *the
program's own code*, which by default is any file outside the standard
library (sysconfig's ``stdlib``/``platstdlib``), installed packages
(``purelib``/``platlib``, any ``site-packages`` or ``dist-packages``
directory) and ferroloop itself. ``FERROLOOP_OWN_CODE`` or
``ferroloop.set_own_code()`` replace that rule with a list of path prefixes
and module names.

A C function such as ``time.sleep`` has no Python frame: the innermost Python
frame is the caller, stopped at its call instruction. ``blocking_kind`` reads
that instruction's callee from the bytecode (the chain of loads that put the
callable on the stack, found from the instructions' stack effects) and
resolves it through the frame's globals, so ``time.sleep``, ``from time
import sleep`` and ``sock.recv`` are told apart from ``time.monotonic``.
"""

from __future__ import annotations

import builtins
import dis
import os
import site
import sys
import sysconfig
import types
from typing import Any, Iterable, Optional

ENV_VARIABLE = "FERROLOOP_OWN_CODE"

# (filename, lineno, function)
Site = tuple[str, int, str]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CACHE_LIMIT = 4096


def _library_prefixes() -> tuple[str, ...]:
    prefixes = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            prefixes.add(os.path.abspath(path) + os.sep)
    try:
        prefixes.update(os.path.abspath(p) + os.sep for p in site.getsitepackages())
    except AttributeError:  # an old virtualenv's site module
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user_site, str):
        prefixes.add(os.path.abspath(user_site) + os.sep)
    prefixes.add(_PACKAGE_DIR)
    return tuple(sorted(prefixes))


_LIBRARY_PREFIXES = _library_prefixes()
_LIBRARY_SEGMENTS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


class OwnCode:
    """The rule for "the program's own code": the default one, or an
    explicit list of path prefixes and module names."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.paths: tuple[str, ...] = ()
        self.modules: tuple[str, ...] = ()
        paths, modules = [], []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if os.sep in entry or entry.startswith(("~", ".")):
                paths.append(os.path.abspath(os.path.expanduser(entry)))
            else:
                modules.append(entry)
        self.paths, self.modules = tuple(paths), tuple(modules)
        self._cache: dict[tuple[str, Optional[str]], bool] = {}

    @property
    def explicit(self) -> bool:
        return bool(self.paths or self.modules)

    def is_own(self, filename: str, module: Optional[str]) -> bool:
        key = (filename, module)
        known = self._cache.get(key)
        if known is None:
            known = self._classify(filename, module)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = known
        return known

    def _classify(self, filename: str, module: Optional[str]) -> bool:
        if self.explicit:
            if module is not None and any(module == m or module.startswith(m + ".") for m in self.modules):
                return True
            path = os.path.abspath(filename) if not filename.startswith("<") else filename
            return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in self.paths)
        if filename.startswith("<"):
            # Code made at run time: libraries generate it too (dataclasses,
            # pydantic, namedtuple, all "<string>"), so it counts as the
            # program's only when run in its main module.
            return module == "__main__"
        path = os.path.abspath(filename)
        if any(segment in path for segment in _LIBRARY_SEGMENTS):
            return False
        return not path.startswith(_LIBRARY_PREFIXES)


def _from_environment() -> OwnCode:
    value = os.environ.get(ENV_VARIABLE, "")
    return OwnCode(value.replace(",", os.pathsep).split(os.pathsep))


_own_code = _from_environment()


def set_own_code(*entries: str) -> None:
    """Say which code is the program's own, for stall reports and the live
    view: each entry is a path prefix (containing ``/``, or starting with
    ``.`` or ``~``) or a module name (``myapp`` also covers ``myapp.api``).
    Frames elsewhere count as libraries. With no entries, the default rule
    applies again: everything outside the standard library, installed
    packages and ferroloop. Overrides ``FERROLOOP_OWN_CODE``."""
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(f"own code entries must be str, not {type(entry).__name__}")
    global _own_code
    _own_code = OwnCode(entries)


def own_code_entries() -> tuple[str, ...]:
    """The explicit path prefixes and module names, empty for the default rule."""
    return _own_code.paths + _own_code.modules


def _module_of(frame: types.FrameType) -> Optional[str]:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else None


def is_own_frame(frame: types.FrameType) -> bool:
    return _own_code.is_own(frame.f_code.co_filename, _module_of(frame))


def is_own_location(filename: str) -> bool:
    """The rule applied to a file alone (module names cannot match)."""
    return _own_code.is_own(filename, None)


def frames_of(frame: Optional[types.FrameType]) -> list[types.FrameType]:
    """``frame`` and its callers, innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def site_of(frame: types.FrameType) -> Site:
    code = frame.f_code
    if sys.version_info >= (3, 11):
        name = code.co_qualname
    else:
        name = code.co_name
    return (code.co_filename, frame.f_lineno or code.co_firstlineno, name)


def innermost_own(frames: list[types.FrameType]) -> Optional[types.FrameType]:
    """The innermost of ``frames`` (innermost first) that is the program's own code."""
    for frame in frames:
        if is_own_frame(frame):
            return frame
    return None


def culprit_of(frames: list[types.FrameType]) -> Optional[types.FrameType]:
    """The innermost own frame, or else the innermost frame."""
    return innermost_own(frames) or (frames[0] if frames else None)


# -- what a frame blocks in ----------------------------------------------

# Libraries whose frames say what the code waits for, by module name; the
# outermost such frame below the program's own frame decides (requests
# calls urllib3, which calls http.client, which calls socket).
_MODULE_KINDS = (
    ("requests", "http"),
    ("urllib3", "http"),
    ("httpx", "http"),
    ("http.client", "http"),
    ("urllib.request", "http"),
    ("subprocess", "subprocess"),
    ("queue", "lock"),
    ("threading", "lock"),
    ("concurrent.futures", "lock"),
    ("ssl", "socket"),
)
_DNS_FUNCTIONS = frozenset({"getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getfqdn"})

# C functions, by their module and qualified name.
_CALL_KINDS = {
    "time.sleep": "sleep",
    "io.open": "file",
    "builtins.open": "file",
    "posix.read": "file",
    "posix.readv": "file",
    "posix.pread": "file",
    "posix.waitpid": "subprocess",
    "posix.wait": "subprocess",
    "posix.system": "subprocess",
    "select.select": "socket",
}
# Methods called on objects the frame holds in local variables, whose type
# is not looked at (reading another thread's locals is not safe).
_METHOD_KINDS = {
    **dict.fromkeys(("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "send", "sendall", "sendto",
                     "sendmsg", "accept", "connect", "connect_ex"), "socket"),
    **dict.fromkeys(("read", "readline", "readlines", "readinto", "readall"), "file"),
    **dict.fromkeys(("acquire",), "lock"),
    "sleep": "sleep",
    **dict.fromkeys(_DNS_FUNCTIONS, "dns"),
}
_CALL_OPNAMES = frozenset({"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX", "CALL_KW"})
_NAME_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_LOCAL_LOADS = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_FAST_CHECK", "LOAD_FAST_LOAD_FAST"})
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})

# Code object -> (its instructions, instruction index by offset).
_instructions_cache: dict[types.CodeType, tuple[list[dis.Instruction], dict[int, int]]] = {}
_callee_cache: dict[tuple[types.CodeType, int], Optional[list[dis.Instruction]]] = {}


def _instructions(code: types.CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    found = _instructions_cache.get(code)
    if found is None:
        instructions = list(dis.get_instructions(code))
        found = (instructions, {ins.offset: index for index, ins in enumerate(instructions)})
        if len(_instructions_cache) >= _CACHE_LIMIT:
            _instructions_cache.clear()
            _callee_cache.clear()
        _instructions_cache[code] = found
    return found


def _stack_effect(instruction: dis.Instruction) -> int:
    arg = instruction.arg if instruction.opcode >= dis.HAVE_ARGUMENT else None
    try:
        return dis.stack_effect(instruction.opcode, arg, jump=False)
    except ValueError:
        return 0


def _callee_loads(code: types.CodeType, lasti: int) -> Optional[list[dis.Instruction]]:
    """The loads that put the callable of the call at ``lasti`` on the stack
    (``LOAD_GLOBAL time``, ``LOAD_ATTR sleep``), or None if ``lasti`` is not
    a call."""
    key = (code, lasti)
    if key in _callee_cache:
        return _callee_cache[key]
    found = None
    instructions, index_of = _instructions(code)
    index = _call_index(instructions, index_of.get(lasti))
    if index is not None:
        consumed = 1 - _stack_effect(instructions[index])
        start = index - 1
        if start >= 0 and instructions[start].opname == "PRECALL":  # 3.11 splits the call in two
            consumed -= _stack_effect(instructions[start])
            start -= 1
        depth = 0
        for i in range(start, -1, -1):
            depth += _stack_effect(instructions[i])
            if depth >= consumed:
                chain: list[dis.Instruction] = []
                for ins in instructions[i:index]:
                    if ins.opname == "PUSH_NULL" and not chain:
                        continue
                    if not chain and (ins.opname in _NAME_LOADS or ins.opname in _LOCAL_LOADS):
                        chain.append(ins)
                    elif chain and ins.opname in _ATTRIBUTE_LOADS:
                        chain.append(ins)
                    else:
                        break
                found = chain or None
                break
    _callee_cache[key] = found
    return found


def _static_attribute(obj: Any, name: str) -> Any:
    """``obj.name`` for a module or class, read from their dictionaries
    (no descriptor or module ``__getattr__`` runs on the watchdog thread)."""
    if isinstance(obj, types.ModuleType):
        return vars(obj).get(name)
    if isinstance(obj, type):
        for klass in obj.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
    return None


def _callee_name(frame: types.FrameType, loads: list[dis.Instruction]) -> tuple[Optional[str], str]:
    """(module.qualname of the resolved callable or None, last name in the chain)."""
    first, attributes = loads[0], loads[1:]
    names = [str(ins.argval) for ins in loads]
    resolved: Any = None
    if first.opname in _NAME_LOADS:
        resolved = frame.f_globals.get(names[0], vars(builtins).get(names[0]))
        for attribute in names[1:]:
            resolved = _static_attribute(resolved, attribute) if resolved is not None else None
    elif attributes:
        resolved = None
    module = getattr(resolved, "__module__", None) if resolved is not None else None
    qualname = getattr(resolved, "__qualname__", None) if resolved is not None else None
    qualified = f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else None
    return qualified, names[-1]


def _kind_of_call(frame: types.FrameType) -> Optional[str]:
    loads = _callee_loads(frame.f_code, frame.f_lasti)
    if not loads:
        return None
    qualified, last_name = _callee_name(frame, loads)
    if qualified is not None:
        if qualified in _CALL_KINDS:
            return _CALL_KINDS[qualified]
        module, _, function = qualified.rpartition(".")
        if module in ("socket", "_socket"):
            return "dns" if function in _DNS_FUNCTIONS else "socket"
        kind = _kind_of_module(module, function)
        if kind is not None:
            return kind
        if module in ("builtins", "time", "os", "posix", "math"):
            return None  # a known C function that does not block
    return _METHOD_KINDS.get(last_name)


def _kind_of_module(module: Optional[str], function: str) -> Optional[str]:
    if not module:
        return None
    if module == "socket":
        return "dns" if function in _DNS_FUNCTIONS else "socket"
    for prefix, kind in _MODULE_KINDS:
        if module == prefix or module.startswith(prefix + "."):
            return kind
    return None


def blocking_kind(frames: list[types.FrameType], own: Optional[types.FrameType] = None) -> Optional[str]:
    """What the stack (innermost first) is blocked in: ``"sleep"``, ``"dns"``,
    ``"socket"``, ``"file"``, ``"subprocess"``, ``"lock"``, ``"http"``, or None
    (CPU work, or a call not recognised). ``own`` is the program's innermost
    frame; the library frames below it are looked at first."""
    if not frames or not _at_call(frames[0]):
        return None  # running bytecode: CPU work, whoever's code it is
    kind = None
    for frame in frames:
        if frame is own:
            break
        found = _kind_of_module(_module_of(frame), frame.f_code.co_name)
        if found is not None:
            kind = found  # the outermost library frame wins
    if kind is not None:
        return kind
    return _kind_of_call(frames[0])


def _at_call(frame: types.FrameType) -> bool:
    """Whether the frame is stopped at a call instruction: in a C function
    (a Python callee would be a frame of its own)."""
    instructions, index_of = _instructions(frame.f_code)
    return _call_index(instructions, index_of.get(frame.f_lasti)) is not None


def _call_index(instructions: list[dis.Instruction], index: Optional[int]) -> Optional[int]:
    """The index of the call instruction a frame stopped at ``index`` is in,
    or None if it is not in a call. 3.11 splits a call into PRECALL and
    CALL, and once specialised, PRECALL makes calls to C functions itself
    (``time.sleep`` in a function that ran a few times)."""
    if index is None:
        return None
    if instructions[index].opname == "PRECALL" and index + 1 < len(instructions):
        index += 1
    return index if instructions[index].opname in _CALL_OPNAMES else None
