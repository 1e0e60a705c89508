"""No silent fallback: once ferroloop is installed, the servers that pick
their own event loop instead of asking asyncio's policy (uvicorn, Sanic,
granian) are made to pick ferroloop, and any loop of another kind that runs
anyway is reported once on stderr, naming the library that started it.

An explicit choice of another loop (``uvicorn --loop uvloop``,
``granian --loop uvloop``, Sanic's ``USE_UVLOOP = True``) is kept, and
reported.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sys
import threading
from asyncio import events
from types import FrameType, ModuleType
from typing import Any, Callable, Optional, Sequence

from ._loop import Loop


def _new_loop() -> Loop:
    return Loop()


# -- uvicorn -----------------------------------------------------------------


def uvicorn_loop_factory(use_subprocess: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvicorn's loop-factory hook (uvicorn 0.36+): ferroloop loops."""
    return _new_loop


def uvicorn_loop_setup(use_subprocess: bool = False) -> None:
    """uvicorn's loop-setup hook (before 0.36): ferroloop's policy."""
    from ._policy import EventLoopPolicy

    asyncio.set_event_loop_policy(EventLoopPolicy())


def _patch_uvicorn(config: ModuleType) -> bool:
    factories = getattr(config, "LOOP_FACTORIES", None)
    hook, table = "ferroloop._takeover:uvicorn_loop_factory", factories
    if not isinstance(factories, dict):
        hook, table = "ferroloop._takeover:uvicorn_loop_setup", getattr(config, "LOOP_SETUPS", None)
    if not isinstance(table, dict) or "auto" not in table:
        return False
    for choice in ("auto", "asyncio"):
        if choice in table:
            table[choice] = hook
    return True


# -- Sanic -------------------------------------------------------------------


def _patch_sanic(startup: ModuleType) -> bool:
    mixin = getattr(startup, "StartupMixin", None)
    original = getattr(mixin, "setup_loop", None)
    if mixin is None or original is None:
        return False

    def setup_loop(self: Any) -> None:
        # Sanic installs uvloop's policy unless USE_UVLOOP is False; only an
        # explicit True keeps that.
        if getattr(self.config, "USE_UVLOOP", None) is True:
            original(self)

    setup_loop.__wrapped__ = original  # type: ignore[attr-defined]
    mixin.setup_loop = setup_loop
    return True


# -- granian -----------------------------------------------------------------


def _patch_granian(loops_module: ModuleType) -> bool:
    registry = getattr(loops_module, "loops", None)
    data = getattr(registry, "_data", None)
    if not isinstance(data, dict) or "asyncio" not in data:
        return False

    def build_ferroloop() -> asyncio.AbstractEventLoop:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        return loop

    # Entries are (builder, packages it needs); granian calls builder(**packages).
    for choice in ("auto", "asyncio"):
        data[choice] = (build_ferroloop, {})
    return True


# Module imported -> (library, patch, how to get ferroloop without it).
_PATCHES: dict[str, tuple[str, Callable[[ModuleType], bool], str]] = {
    "uvicorn.config": ("uvicorn", _patch_uvicorn, "uvicorn --loop ferroloop:new_event_loop"),
    "sanic.mixins.startup": ("Sanic", _patch_sanic, "set USE_UVLOOP = False in the app's config"),
    "granian._loops": ("granian", _patch_granian, "granian --loop asyncio under python -m ferroloop"),
}

_reported: set[str] = set()
_lock = threading.Lock()


def _say_once(key: str, message: str) -> None:
    with _lock:
        if key in _reported:
            return
        _reported.add(key)
    sys.stderr.write(f"ferroloop: {message}\n")
    sys.stderr.flush()


def _apply(name: str, module: ModuleType) -> None:
    library, patch, remedy = _PATCHES[name]
    try:
        patched = patch(module)
    except Exception:  # noqa: BLE001 - a library's internals changed: say so below
        patched = False
    if not patched:
        version = getattr(sys.modules.get(name.split(".")[0]), "__version__", "")
        _say_once(
            f"unreachable:{library}",
            f"cannot make {library} {version} pick ferroloop (its loop selection is not what ferroloop knows); "
            f"it may run on another loop: use {remedy}",
        )


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, name: str, loader: importlib.abc.Loader) -> None:
        self._name = name
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _apply(self._name, module)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._loader, attribute)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the known loop-choosing modules right after they load."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(fullname, spec.loader)
                return spec
        return None


# -- the report ----------------------------------------------------------------

# Frames of these packages are the machinery, not who started the loop.
_MACHINERY = ("asyncio", "ferroloop", "uvloop", "runpy", "threading", "concurrent", "contextlib", "functools")

_REMEDIES = {
    "uvicorn": "uvicorn picks another loop only when told to (--loop uvloop); give --loop ferroloop:new_event_loop",
    "granian": "granian picks another loop only when told to (--loop uvloop/rloop); give --loop asyncio",
    "sanic": "Sanic uses uvloop when USE_UVLOOP = True; set it to False",
    "hypercorn": "hypercorn's --worker-class uvloop picks uvloop; give --worker-class asyncio",
}


def _starter(frame: Optional[FrameType]) -> tuple[str, str]:
    """The first frame outside the loop machinery: (package, file:line)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        package = module.split(".")[0]
        if package and package not in _MACHINERY:
            return package, f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "", ""


def _make_reporting_setter(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def _set_running_loop(loop: Any) -> None:
        if loop is not None and not isinstance(loop, Loop):
            kind = f"{type(loop).__module__}.{type(loop).__qualname__}"
            package, where = _starter(sys._getframe(1))
            remedy = _REMEDIES.get(package.lower(), "create it with ferroloop.new_event_loop() (or loop_factory=ferroloop.new_event_loop)")
            started = f", started by {package} ({where})" if package else ""
            _say_once(
                f"loop:{kind}:{package}",
                f"an event loop of another kind is running: {kind}{started}, although ferroloop was asked for. {remedy}.",
            )
        original(loop)

    _set_running_loop.__wrapped__ = original  # type: ignore[attr-defined]
    return _set_running_loop


_installed = False


def install() -> None:
    """Patch the known libraries (now, and when they are imported later)
    and report loops of other kinds when they start running."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    # Loops bind asyncio's _set_running_loop when they are defined (uvloop
    # at import) or call it through asyncio.events (asyncio's own): both
    # names get the reporting one.
    original = events._set_running_loop
    reporting = _make_reporting_setter(original)
    events._set_running_loop = reporting
    asyncio._set_running_loop = reporting
    for name in _PATCHES:
        module = sys.modules.get(name)
        if module is not None:
            _apply(name, module)
    sys.meta_path.insert(0, _Finder())


def uninstall() -> None:
    """Stop reporting and patching what is imported from now on (what was
    patched stays patched)."""
    global _installed
    with _lock:
        if not _installed:
            return
        _installed = False
    original = original_set_running_loop()
    events._set_running_loop = original
    asyncio._set_running_loop = original
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]


def original_set_running_loop() -> Callable[[Any], None]:
    """asyncio's own setter, without the report."""
    setter = events._set_running_loop
    return getattr(setter, "__wrapped__", setter)
