"""What a type checker sees of ferroloop's public API.

A user file that uses the API is checked with ``mypy --strict``: the
correct uses must pass, and each deliberate misuse, marked ``# E: <code>``
on its line, must be reported with that error code (and nothing else may
be reported). ``# R: <text>`` lines check a ``reveal_type``. Then the
standard ``Loop`` methods are compared with typeshed's
``asyncio.AbstractEventLoop``, and the TypedDicts with what the loop
really returns.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ferroloop
import mypy  # noqa: F401 - installed by the test command; the tests run it

# The directory ferroloop is imported from here, so that mypy checks the
# same package (the in-tree one or the installed one).
PACKAGE = Path(ferroloop.__file__).resolve().parent
IMPORT_ROOT = PACKAGE.parent

USER_FILE = '''
import asyncio
import contextvars
import signal
import socket
import sys
from typing import Any, Optional

import ferroloop
import ferroloop.opentelemetry


def on_ready(n: int) -> None: ...


def takes_str(text: str) -> None: ...


async def work() -> int:
    return 1


class Echo(asyncio.Protocol):
    pass


def scheduling(loop: ferroloop.Loop) -> None:
    handle: ferroloop.Handle = loop.call_soon(on_ready, 1)
    loop.call_soon(on_ready, 1, context=contextvars.copy_context())
    timer: ferroloop.TimerHandle = loop.call_later(0.5, on_ready, 2)
    loop.call_at(loop.time() + 1, on_ready, 3)
    threadsafe: ferroloop.Handle = loop.call_soon_threadsafe(on_ready, 4)
    when: float = timer.when()
    handle.cancel()
    cancelled: bool = threadsafe.cancelled()
    loop.call_soon("not callable")  # E: arg-type
    loop.call_soon(on_ready, "1")  # E: arg-type
    loop.call_soon(on_ready)  # E: arg-type
    loop.call_soon(on_ready, 1, 2)  # E: arg-type
    loop.call_soon(on_ready, 1, contxt=None)  # E: call-arg
    loop.call_later("soon", on_ready, 1)  # E: arg-type
    loop.call_at(1.0, on_ready, 1, context=1)  # E: arg-type
    loop.call_soon_threadsafe(takes_str, 1)  # E: arg-type
    loop.call_soon(on_ready, 1).when()  # E: attr-defined
    # ferroloop's handles are not asyncio's classes (nor subclasses).
    as_asyncio: asyncio.TimerHandle = loop.call_later(1, on_ready, 1)  # E: assignment
    plain: asyncio.Handle = loop.call_soon(on_ready, 1)  # E: assignment
    reveal_type(loop.call_later)  # R: -> ferroloop._native.TimerHandle
    reveal_type(loop.call_soon)  # R: -> ferroloop._native.Handle


def core(loop: ferroloop.Loop) -> None:
    as_base: asyncio.AbstractEventLoop = loop
    future: asyncio.Future[Any] = loop.create_future()
    task: asyncio.Task[int] = loop.create_task(work(), name="w")
    loop.create_task(work(), nmae="w")  # E: call-arg
    loop.create_task(work)  # E: arg-type
    result: int = loop.run_until_complete(work())
    wrong: str = loop.run_until_complete(work())  # E: assignment
    loop.run_until_complete(1)  # E: arg-type
    ran: asyncio.Future[None] = loop.run_in_executor(None, on_ready, 1)
    loop.run_in_executor(None, on_ready, "x")  # E: arg-type
    loop.add_reader(0, on_ready, 1)
    loop.add_writer(socket.socket(), on_ready, 1)
    loop.add_reader(0, on_ready, "x")  # E: arg-type
    loop.add_reader("0", on_ready, 1)  # E: arg-type
    removed: bool = loop.remove_reader(0) or loop.remove_writer(0)
    loop.add_signal_handler(15, on_ready, 1)
    loop.add_signal_handler(15, on_ready)  # E: arg-type
    loop.set_exception_handler(lambda lp, context: None)
    loop.set_exception_handler(lambda: None)  # E: arg-type, misc
    loop.call_exception_handler({"message": "m"})
    loop.call_exception_handler("m")  # E: arg-type
    loop.set_debug(True)
    debug: bool = loop.get_debug() and loop.is_running() and loop.is_closed()
    loop.slow_callback_duration = 0.5
    loop.stop()
    loop.close()
    loop.time("now")  # E: call-arg
    reveal_type(loop.run_until_complete(work()))  # R: "int"


async def network(loop: ferroloop.Loop, sock: socket.socket) -> None:
    server: asyncio.Server = await loop.create_server(Echo, "127.0.0.1", 0)
    transport, protocol = await loop.create_connection(Echo, "127.0.0.1", 8000)
    same: Echo = protocol
    stream: asyncio.Transport = transport
    await loop.create_server(Echo, "127.0.0.1", "8000")  # E: call-overload
    await loop.create_connection(Echo, "127.0.0.1", 8000, ssl_handshake_timeout="x")  # E: call-overload
    await loop.create_server(lambda: 1, "127.0.0.1", 0)  # E: arg-type, return-value
    unix_server: asyncio.Server = await loop.create_unix_server(Echo, "/tmp/x.sock")
    await loop.create_unix_connection(Echo, "/tmp/x.sock")
    endpoint, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    datagram: asyncio.DatagramTransport = endpoint
    await loop.connect_read_pipe(asyncio.Protocol, sys.stdin)
    await loop.subprocess_exec(asyncio.SubprocessProtocol, "true")
    await loop.start_tls(stream, same, True)  # E: arg-type
    data: bytes = await loop.sock_recv(sock, 10)
    received: int = await loop.sock_recv_into(sock, bytearray(10))
    await loop.sock_sendall(sock, b"bytes")
    await loop.sock_sendall(sock, "text")  # E: arg-type
    await loop.sock_connect(sock, ("127.0.0.1", 80))
    conn, address = await loop.sock_accept(sock)
    accepted: socket.socket = conn
    with open(__file__, "rb") as file:
        sent: int = await loop.sock_sendfile(sock, file)
    await loop.sock_sendfile(sock, "file")  # E: arg-type
    infos = await loop.getaddrinfo("localhost", 80)
    family: socket.AddressFamily = infos[0][0]
    names: tuple[str, str] = await loop.getnameinfo(("127.0.0.1", 80))
    await loop.getaddrinfo("localhost", 80.0)  # E: arg-type
    reveal_type(loop.create_server)  # R: -> typing.Coroutine[Any, Any, asyncio.base_events.Server]


def on_stall(record: ferroloop.StallRecord) -> None:
    event: str = record["event"]
    task: Optional[str] = record["task"]
    for filename, lineno, function, line in record["stack"]:
        where: str = f"{filename}:{lineno} in {function}: {line}"
    duration: float = record["duration"]
    record["nope"]  # E: typeddict-item


def observing(loop: ferroloop.Loop) -> None:
    metrics: ferroloop.LoopMetrics = loop.metrics()
    lag: float = metrics["lag_p99_seconds"]
    alive: int = metrics["tasks_alive"]
    metrics["lag_p99"]  # E: typeddict-item
    count: str = metrics["callbacks_total"]  # E: assignment
    state: ferroloop.LoopDiagnostics = loop.diagnostics()
    stalled: bool = state["stalled"]
    inner: ferroloop.LoopMetrics = state["metrics"]
    for info in state["tasks"]:
        name: str = info["name"]
        age: float = info["age"]  # E: assignment
        known: Optional[float] = info["age"]
        row: ferroloop.TaskInfo = info
    stall = state["stall"]
    if stall is not None:
        on_stall(stall)
    state["nope"]  # E: typeddict-item
    loop.enable_watchdog(0.1, callback=on_stall)
    loop.enable_watchdog(0.1, callback=lambda record: print(record["duration"]))
    loop.enable_watchdog(0.1, callback=lambda record: record["nope"])  # E: typeddict-item
    loop.enable_watchdog(0.1, callback=on_ready)  # E: arg-type
    loop.enable_watchdog("0.1")  # E: arg-type
    loop.enable_watchdog(0.1, track_tasks=False)
    threshold: Optional[float] = loop.watchdog_threshold
    loop.disable_watchdog()
    text: str = ferroloop.openmetrics_text() + ferroloop.openmetrics_text([loop])
    reveal_type(metrics["callbacks_total"])  # R: "int"
    reveal_type(state["stall"])  # R: StallRecord
__KEY_ACCESSES__

def inspecting(loop: ferroloop.Loop) -> None:
    ferroloop.allow_attach()
    ferroloop.allow_attach(signal.SIGUSR2)
    ferroloop.allow_attach("SIGUSR1")
    ferroloop.allow_attach(1.5)  # E: arg-type
    for done in loop.diagnostics()["finished"]:
        ended: str = done["outcome"]
        when: float = done["finished_at"]
        entry: ferroloop.FinishedTask = done
        done["result"]  # E: typeddict-item
    for task in loop.diagnostics()["tasks"]:
        ident: int = task["id"]
    handle = ferroloop.opentelemetry.instrument(loop, watchdog=0.1)
    handle.uninstrument()
    ferroloop.opentelemetry.instrument(watchdog="fast")  # E: arg-type
    culprit: str = ferroloop.opentelemetry.culprit(loop.diagnostics()["stall"])  # E: arg-type


def entry_points() -> None:
    loop: ferroloop.Loop = ferroloop.new_event_loop()
    also: ferroloop.Loop = ferroloop.Loop()
    result: int = ferroloop.run(work())
    ferroloop.run(work(), debug=True, watchdog=0.1)
    ferroloop.run(work)  # E: arg-type
    wrong: str = ferroloop.run(work())  # E: assignment
    ferroloop.run(work(), watchdog="fast")  # E: arg-type
    ferroloop.install()
    ferroloop.install(True)  # E: call-arg
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
            runner.run(work())
    policy = ferroloop.EventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    made: ferroloop.Loop = policy.new_event_loop()
    ferroloop.EventLoopPolicy(1)  # E: call-arg
    version: str = ferroloop.__version__
'''


def _key_accesses() -> str:
    """A function reading every key the loop's dicts really have, so that a
    key the TypedDicts lack is an error."""
    loop = ferroloop.new_event_loop()
    try:
        metrics, diagnostics = loop.metrics(), loop.diagnostics()
    finally:
        loop.close()
    lines = ["", "", "def every_key(loop: ferroloop.Loop) -> None:"]
    lines += [f"    loop.metrics()[{key!r}]" for key in metrics]
    lines += [f"    loop.diagnostics()[{key!r}]" for key in diagnostics]
    return "\n".join(lines)


_OUTPUT_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<message>.*?)(?:  \[(?P<code>[a-z-]+)\])?$")


def _mypy_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(IMPORT_ROOT), os.environ.get("PYTHONPATH")]))}


def run_mypy(tmp_path: Path, source: str, *extra: str) -> list[re.Match[str]]:
    (tmp_path / "user.py").write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "", "--strict", "--show-error-codes", "--no-pretty",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), *extra, "user.py"],
        cwd=tmp_path, env=_mypy_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    found = [_OUTPUT_LINE.match(line) for line in result.stdout.splitlines()]
    unparsed = [line for line, match in zip(result.stdout.splitlines(), found) if match is None]
    assert not unparsed, result.stdout + result.stderr
    return [match for match in found if match is not None]


def test_user_file_passes_and_each_misuse_is_reported(tmp_path):
    source = textwrap.dedent(USER_FILE).replace("__KEY_ACCESSES__", _key_accesses())
    expected_errors: set[tuple[int, str]] = set()
    expected_reveals: dict[int, str] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        if "# E:" in line:
            for code in line.split("# E:")[1].split(","):
                expected_errors.add((number, code.strip()))
        if "# R:" in line:
            expected_reveals[number] = line.split("# R:")[1].strip()
    assert len(expected_errors) > 30

    output = run_mypy(tmp_path, source)
    errors = {(int(m["line"]), m["code"] or "?") for m in output if m["kind"] == "error"}
    lines = source.splitlines()
    unexpected = sorted(errors - expected_errors)
    missing = sorted(expected_errors - errors)
    details = "\n".join(m.group(0) for m in output if m["kind"] == "error")
    assert not unexpected, "reported on correct code:\n" + "\n".join(
        f"  {n}: {c}: {lines[n - 1].strip()}" for n, c in unexpected) + "\n" + details
    assert not missing, "misuse not reported:\n" + "\n".join(
        f"  {n}: {c}: {lines[n - 1].strip()}" for n, c in missing) + "\n" + details

    # Older mypy versions spell builtins with their module.
    revealed = {
        int(m["line"]): m["message"].replace("builtins.", "")
        for m in output
        if m["kind"] == "note" and m["message"].startswith("Revealed type")
    }
    for number, text in expected_reveals.items():
        assert text in revealed.get(number, ""), (lines[number - 1], revealed.get(number))
    for number, message in revealed.items():
        assert "Any" != message.removeprefix("Revealed type is ").strip('"'), (lines[number - 1], message)


def test_pyright_reports_the_same_lines(tmp_path):
    """The same file under pyright (installed by the test command; it runs
    on node): errors on exactly the marked lines."""
    assert shutil.which("node") is not None, "pyright needs node on PATH"
    source = textwrap.dedent(USER_FILE).replace("__KEY_ACCESSES__", _key_accesses())
    (tmp_path / "user.py").write_text(source)
    config = {
        "extraPaths": [str(IMPORT_ROOT)],
        "pythonVersion": "%d.%d" % sys.version_info[:2],
        "typeCheckingMode": "standard",
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--outputjson", "user.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"},
    )
    report = json.loads(result.stdout)
    errors = {d["range"]["start"]["line"] + 1 for d in report["generalDiagnostics"] if d["severity"] == "error"}
    lines = source.splitlines()
    expected = {number for number, line in enumerate(lines, start=1) if "# E:" in line}
    assert errors == expected, (
        [lines[n - 1].strip() for n in sorted(errors - expected)],
        [lines[n - 1].strip() for n in sorted(expected - errors)],
    )


# Where ferroloop.Loop's type deliberately differs from typeshed's
# AbstractEventLoop (see the comment in ferroloop/_loop.py): the scheduling
# methods return ferroloop's handles; shutdown_default_executor takes
# asyncio 3.12's timeout on every version; sock_recv's second parameter is
# named as at runtime (`n`, as in asyncio's own selector loop).
_DIFFERENCES = {
    "call_soon": lambda base: base.replace("asyncio.events.Handle", "ferroloop._native.Handle"),
    "call_soon_threadsafe": lambda base: base.replace("asyncio.events.Handle", "ferroloop._native.Handle"),
    "call_later": lambda base: base.replace("asyncio.events.TimerHandle", "ferroloop._native.TimerHandle"),
    "call_at": lambda base: base.replace("asyncio.events.TimerHandle", "ferroloop._native.TimerHandle"),
    "shutdown_default_executor": lambda base: base.replace("def ()", "def (timeout: float | None =)"),
    "sock_recv": lambda base: base.replace("nbytes: int", "n: int"),
}


def test_standard_methods_have_abstract_event_loops_signatures(tmp_path):
    names = sorted(name for name in dir(asyncio.AbstractEventLoop) if not name.startswith("_"))
    body = "".join(f"    reveal_type(base.{name})\n    reveal_type(loop.{name})\n" for name in names)
    source = f"import asyncio\nimport ferroloop\n\n\ndef f(base: asyncio.AbstractEventLoop, loop: ferroloop.Loop) -> None:\n{body}"
    output = run_mypy(tmp_path, source)
    assert not [m.group(0) for m in output if m["kind"] == "error"]
    revealed = {int(m["line"]): m["message"].removeprefix("Revealed type is ").strip('"') for m in output if m["kind"] == "note"}
    first = 6
    assert len(revealed) == 2 * len(names)
    for index, name in enumerate(names):
        base, ours = revealed[first + 2 * index], revealed[first + 2 * index + 1]
        assert base != "Any", name
        assert ours == _DIFFERENCES.get(name, lambda same: same)(base), (name, base, ours)


def test_typed_dicts_list_every_key_the_loop_returns(loop):
    records: list[ferroloop.StallRecord] = []
    loop.enable_watchdog(0.05, callback=records.append)

    async def stalls() -> None:
        time.sleep(0.2)
        await asyncio.sleep(0.1)

    async def waits() -> None:
        await asyncio.sleep(10)

    async def observe() -> ferroloop.LoopDiagnostics:
        waiter = loop.create_task(waits())
        await asyncio.sleep(0)
        state = loop.diagnostics()
        waiter.cancel()
        return state

    loop.run_until_complete(stalls())
    state = loop.run_until_complete(observe())
    loop.disable_watchdog()

    def keys(typed_dict: type) -> set[str]:
        return set(typed_dict.__annotations__)

    assert set(loop.metrics()) == keys(ferroloop.LoopMetrics)
    assert set(state) == keys(ferroloop.LoopDiagnostics)
    assert set(state["metrics"]) == keys(ferroloop.LoopMetrics)
    assert state["tasks"] and all(set(task) == keys(ferroloop.TaskInfo) for task in state["tasks"])
    assert [record["event"] for record in records] == ["stall", "stall_end"]
    assert all(set(record) == keys(ferroloop.StallRecord) for record in records)
    assert all(isinstance(entry, tuple) and len(entry) == 4 for entry in records[0]["stack"])
    for name in ("LoopMetrics", "LoopDiagnostics", "TaskInfo", "StallRecord"):
        assert name in ferroloop.__all__


def _stub_docstrings() -> set[str]:
    """The LoopCore methods that _native.pyi documents."""
    stub = PACKAGE / "_native.pyi"
    assert stub.exists(), "the package ships _native.pyi next to the native module"
    tree = ast.parse(stub.read_text())
    core = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "LoopCore")
    documented = set()
    for node in ast.walk(core):
        if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
            documented.add(node.name)
    return documented


def test_every_public_method_is_documented():
    """Every public method has a docstring at run time (help(), IDEs), the
    native ones from the Rust source; the stubs document the native ones
    too."""
    stub_documented = _stub_docstrings()
    undocumented = []
    for name in dir(ferroloop.Loop):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(ferroloop.Loop, name)
        if not callable(attribute) and not isinstance(attribute, property):
            continue  # slow_callback_duration and the like
        owner = next(klass for klass in ferroloop.Loop.__mro__ if name in klass.__dict__)
        if not (getattr(attribute, "__doc__", None) or "").strip():
            undocumented.append(name)
        elif owner is ferroloop._native.LoopCore and name not in stub_documented:
            undocumented.append(f"{name} (in _native.pyi)")
    assert not undocumented


def test_package_passes_mypy(tmp_path):
    """The package is mypy-clean (see README): the one imported here."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "", "--cache-dir", str(tmp_path / "cache"), "-p", "ferroloop"],
        cwd=tmp_path, env=_mypy_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
