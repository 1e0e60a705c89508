"""Child side of the CPython asyncio conformance runner.

One invocation runs ONE suite (a slice of ``test.test_asyncio``) on ONE event
loop and streams a JSON line per test to ``--events``.  The parent,
``run_cpython_asyncio.py``, starts one of these per (loop, suite) so that a
hang or a crash in the loop under test costs one test, not the whole report.

How the loop under test is plugged in:

* Suites whose tests get their loop from an abstract factory method
  (``create_event_loop`` / ``new_loop``) run on a class we build here whose
  factory returns the loop under test.  The module's own selector/proactor
  classes are never run.
* Everything else builds loops through the policy (``asyncio.new_event_loop``,
  ``asyncio.run``, ``asyncio.Runner``, ``IsolatedAsyncioTestCase``).  The
  tests and ``tearDownModule`` reset the policy with
  ``set_event_loop_policy(None)``, after which asyncio lazily instantiates
  ``asyncio.DefaultEventLoopPolicy``.  We replace that attribute, so the
  "default" policy is always a counting subclass of the loop's own policy.
* Every loop that comes out of those two paths is counted, and so is every
  stock ``BaseEventLoop`` built anywhere else, so a test that silently runs on
  stock asyncio shows up in the report instead of inflating the pass count.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.base_events
import faulthandler
import importlib
import json
import os
import platform
import sys
import threading
import time
import traceback
import types
import unittest
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

Loop = asyncio.AbstractEventLoop
ExcInfo = tuple[type[BaseException], BaseException, types.TracebackType | None]

CORE = "core"
NETWORK = "network"
GROUPS = (CORE, NETWORK)
LOOPS = ("asyncio", "uvloop", "ferroloop")
PACKAGE = "test.test_asyncio"


# ---------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Suite:
    name: str    # row label in the report; ``--modules`` matches it or ``module``
    module: str  # submodule of test.test_asyncio
    group: str


SUITES: tuple[Suite, ...] = (
    Suite("test_events", "test_events", CORE),
    Suite("test_tasks", "test_tasks", CORE),
    Suite("test_taskgroups", "test_taskgroups", CORE),
    Suite("test_timeouts", "test_timeouts", CORE),
    Suite("test_locks", "test_locks", CORE),
    Suite("test_queues", "test_queues", CORE),
    Suite("test_futures", "test_futures", CORE),
    Suite("test_futures2", "test_futures2", CORE),
    Suite("test_context", "test_context", CORE),
    Suite("test_pep492", "test_pep492", CORE),
    Suite("test_waitfor", "test_waitfor", CORE),
    Suite("test_threads", "test_threads", CORE),
    Suite("test_runners", "test_runners", CORE),
    Suite("test_events[net]", "test_events", NETWORK),
    Suite("test_sock_lowlevel", "test_sock_lowlevel", NETWORK),
    Suite("test_sendfile", "test_sendfile", NETWORK),
    Suite("test_server", "test_server", NETWORK),
    Suite("test_buffered_proto", "test_buffered_proto", NETWORK),
    Suite("test_streams", "test_streams", NETWORK),
    Suite("test_subprocess", "test_subprocess", NETWORK),
    Suite("test_ssl", "test_ssl", NETWORK),
    Suite("test_sslproto", "test_sslproto", NETWORK),
)
SUITES_BY_NAME = {s.name: s for s in SUITES}


# EventLoopTestsMixin (test_events) holds both pure loop tests and I/O tests.
# Rule: a test is "network" if its name contains one of these markers, i.e. it
# goes through sockets/transports/servers/pipes/ptys/subprocesses.  Raw fd
# readiness (add_reader/add_writer on a socketpair: test_reader_callback,
# test_writer_callback, test_{add,remove}_fds_after_closing) and signal
# handlers are the heart of an event loop, not networking, so they stay core.
NETWORK_MARKERS = ("sock", "connect", "server", "datagram", "unix", "ssl",
                   "pipe", "pty", "subprocess", "sendfile", "tcp", "udp")
# Reviewed exceptions to the name rule (name -> group).
EVENTS_OVERRIDES = {
    "test_prompt_cancellation": NETWORK,  # cancels a pending loop.sock_recv()
}


def events_test_group(method_name: str) -> str:
    if method_name in EVENTS_OVERRIDES:
        return EVENTS_OVERRIDES[method_name]
    if any(marker in method_name for marker in NETWORK_MARKERS):
        return NETWORK
    return CORE


# ---------------------------------------------------------------------------
# Loops under test and loop accounting
# ---------------------------------------------------------------------------

@dataclass
class LoopUnderTest:
    name: str
    version: str
    make_loop: Callable[[], Loop]           # for create_event_loop()/new_loop()
    policy_base: type[asyncio.AbstractEventLoopPolicy]
    loop_type: type                         # what a loop built by it must be


_STOCK_DEFAULT_POLICY = asyncio.DefaultEventLoopPolicy


def load_loop(name: str) -> LoopUnderTest:
    """Import the loop; an ImportError here means "loop unavailable"."""
    if name == "asyncio":
        return LoopUnderTest("asyncio", platform.python_version(),
                             asyncio.SelectorEventLoop, _STOCK_DEFAULT_POLICY,
                             asyncio.SelectorEventLoop)
    if name == "uvloop":
        import uvloop

        # uvloop 0.23's own EventLoopPolicy already follows the Python 3.14
        # get_event_loop() rules (no implicit loop creation), which fails
        # tests for reasons that have nothing to do with the loop.  Pair
        # uvloop's loop with the stock 3.11 policy so we compare loops.
        class UvloopPolicy(_STOCK_DEFAULT_POLICY):
            _loop_factory = staticmethod(uvloop.new_event_loop)

        return LoopUnderTest("uvloop", getattr(uvloop, "__version__", "?"),
                             uvloop.new_event_loop,
                             UvloopPolicy, uvloop.Loop)
    if name == "ferroloop":
        import ferroloop

        return LoopUnderTest("ferroloop", getattr(ferroloop, "__version__", "?"),
                             ferroloop.new_event_loop, ferroloop.EventLoopPolicy,
                             ferroloop.Loop)
    raise ValueError(f"unknown loop {name!r}")


@dataclass
class LoopCounts:
    under_test: int = 0  # loops made by the loop under test (factory or policy)
    foreign: int = 0     # made by the factory/policy but not of loop_type
    virtual: int = 0     # test_utils.TestLoop: virtual-time stock BaseEventLoop
    stock: int = 0       # any other stock BaseEventLoop: test ran on stock asyncio

    def minus(self, other: LoopCounts) -> LoopCounts:
        return LoopCounts(self.under_test - other.under_test, self.foreign - other.foreign,
                          self.virtual - other.virtual, self.stock - other.stock)


class LoopAccounting:
    def __init__(self, lut: LoopUnderTest) -> None:
        self.lut = lut
        self.counts = LoopCounts()
        self._lock = threading.Lock()
        # Depth of factory calls on this thread.  For --loop asyncio the loop
        # under test is itself a BaseEventLoop; the depth tells the stock-loop
        # detector that this one is expected.
        self._building = threading.local()

    def building(self) -> bool:
        return getattr(self._building, "depth", 0) > 0

    def make(self, factory: Callable[[], Loop]) -> Loop:
        depth = getattr(self._building, "depth", 0)
        self._building.depth = depth + 1
        try:
            loop = factory()
        finally:
            self._building.depth = depth
        if depth == 0:
            with self._lock:
                if isinstance(loop, self.lut.loop_type):
                    self.counts.under_test += 1
                else:
                    self.counts.foreign += 1
        return loop

    def new_loop(self) -> Loop:
        return self.make(self.lut.make_loop)

    def note_stock_loop(self, loop: Any) -> None:
        if self.building():
            return
        from test.test_asyncio import utils as test_utils
        with self._lock:
            if isinstance(loop, test_utils.TestLoop):
                self.counts.virtual += 1
            else:
                self.counts.stock += 1

    def snapshot(self) -> LoopCounts:
        with self._lock:
            return LoopCounts(**asdict(self.counts))


def install_loop(acct: LoopAccounting) -> None:
    """Make every policy-built loop, and the default policy, the loop under test."""

    class LoopUnderTestPolicy(acct.lut.policy_base):  # type: ignore[misc,name-defined]
        def new_event_loop(self) -> Loop:
            return acct.make(super().new_event_loop)

    # set_event_loop_policy(None) followed by get_event_loop_policy() runs
    # events._init_event_loop_policy(), which does
    # "from . import DefaultEventLoopPolicy", i.e. reads this attribute at call
    # time.  Tests that instantiate/subclass asyncio.DefaultEventLoopPolicy
    # explicitly get the loop under test too.
    asyncio.DefaultEventLoopPolicy = LoopUnderTestPolicy
    unix_events = getattr(asyncio, "unix_events", None)
    if unix_events is not None:
        unix_events.DefaultEventLoopPolicy = LoopUnderTestPolicy
    asyncio.set_event_loop_policy(None)

    # Count stock loops created outside our factories.
    base_init = asyncio.base_events.BaseEventLoop.__init__

    def counting_init(self: asyncio.base_events.BaseEventLoop) -> None:
        base_init(self)
        acct.note_stock_loop(self)

    asyncio.base_events.BaseEventLoop.__init__ = counting_init  # type: ignore[method-assign,assignment]


# ---------------------------------------------------------------------------
# Adaptations of the test modules (disabled by --pristine)
# ---------------------------------------------------------------------------

def adapt_harness(acct: LoopAccounting) -> list[str]:
    """Patch test *infrastructure* so it can drive a non-stock loop.

    Each entry is reported in the output so nobody mistakes it for upstream.
    """
    from test.test_asyncio import test_pep492, test_runners
    from test.test_asyncio import utils as test_utils

    notes: list[str] = []

    # test_utils.TestCase.close_loop() reads the private loop._default_executor
    # (uvloop has no such attribute).  For such loops, shut the executor down
    # through the public coroutine, then let the original run on a view whose
    # executor is None so that it still closes the loop and joins watchers.
    original_close_loop = test_utils.TestCase.close_loop

    class _NoExecutorView:
        _default_executor = None

        def __init__(self, loop: Loop) -> None:
            self.close = loop.close

    def close_loop(loop: Loop) -> None:
        if hasattr(loop, "_default_executor"):
            original_close_loop(loop)
            return
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        original_close_loop(_NoExecutorView(loop))

    test_utils.TestCase.close_loop = staticmethod(close_loop)
    notes.append("test_utils.TestCase.close_loop: loops without a private "
                 "_default_executor shut it down via shutdown_default_executor()")

    # test_utils.run_until() signals a timeout with futures.TimeoutError, gone
    # from asyncio.futures in 3.11, so a loop that never makes the predicate
    # true shows up as a baffling AttributeError.  Alias it so it reads as a
    # TimeoutError.
    if not hasattr(asyncio.futures, "TimeoutError"):
        asyncio.futures.TimeoutError = asyncio.TimeoutError  # type: ignore[attr-defined]
        notes.append("asyncio.futures.TimeoutError aliased so test_utils.run_until() "
                     "timeouts read as TimeoutError")

    # test_runners and test_pep492 hand-build a stock BaseEventLoop with a
    # mocked selector.  What they test (asyncio.run/Runner, async with/for,
    # coroutine wrappers) is meaningful on any loop, so give them the loop
    # under test; test_runners' tearDown checks that shutdown_asyncgens() ran.
    def runners_new_loop(self: unittest.TestCase) -> Loop:
        loop = acct.new_loop()
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens() -> None:
            loop.shutdown_ag_run = True  # type: ignore[attr-defined]
            await real_shutdown_asyncgens()

        loop.shutdown_ag_run = False  # type: ignore[attr-defined]
        loop.shutdown_asyncgens = shutdown_asyncgens  # type: ignore[method-assign]
        return loop

    test_runners.BaseTest.new_loop = runners_new_loop
    notes.append("test_runners.BaseTest.new_loop: loop under test instead of a "
                 "mocked stock BaseEventLoop")

    def pep492_setup(self: Any) -> None:
        test_utils.TestCase.setUp(self)
        self.loop = acct.new_loop()
        self.set_event_loop(self.loop)

    test_pep492.BaseTest.setUp = pep492_setup
    notes.append("test_pep492.BaseTest.setUp: loop under test instead of a "
                 "mocked stock BaseEventLoop")
    return notes


# ---------------------------------------------------------------------------
# Building the test list of a suite
# ---------------------------------------------------------------------------

def iter_tests(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for item in suite:
            yield from iter_tests(item)
    else:
        yield suite


def loop_class(module: types.ModuleType, name: str, bases: tuple[type, ...],
               factory_method: str, acct: LoopAccounting) -> type[unittest.TestCase]:
    """A TestCase like the module's own SelectorEventLoop classes, on our loop.

    ``__module__`` is the test module so ids read naturally and unittest runs
    that module's setUpModule/tearDownModule around it, as upstream would.
    """
    def factory(self: unittest.TestCase) -> Loop:
        return acct.new_loop()

    namespace = {factory_method: factory, "__module__": module.__name__, "__qualname__": name}
    return type(name, bases, namespace)


def build_suite(suite: Suite, acct: LoopAccounting) -> list[unittest.TestCase]:
    loader = unittest.TestLoader()
    module = importlib.import_module(f"{PACKAGE}.{suite.module}")
    from test.test_asyncio import utils as test_utils

    def from_class(cls: type[unittest.TestCase],
                   keep: Callable[[str], bool] = lambda _name: True) -> list[unittest.TestCase]:
        tests = iter_tests(loader.loadTestsFromTestCase(cls))
        return [t for t in tests if keep(t._testMethodName)]

    if suite.module == "test_events":
        # Only our EventLoopTestsMixin class plus the module-level classes that
        # build loops through asyncio.new_event_loop()/the policy and run them:
        #   core: Test{Py,C}GetEventLoop (get_event_loop/get_running_loop while
        #         a loop runs, incl. run_in_executor with a process pool);
        #   network: TestServer (create_server through new_event_loop()).
        # Left out on purpose: the module's own Select/EPoll/Poll classes
        # (stock selectors), and HandleTests, TimerTests,
        # AbstractEventLoopTests, PolicyTests, TestAbstractServer, which unit
        # test asyncio's own classes rather than a loop.
        if suite.group == CORE:
            cls = loop_class(module, "LoopUnderTestEventLoopTests",
                             (module.EventLoopTestsMixin, test_utils.TestCase),
                             "create_event_loop", acct)
            tests = from_class(cls, lambda n: events_test_group(n) == CORE)
            for extra in ("TestPyGetEventLoop", "TestCGetEventLoop"):
                if hasattr(module, extra):
                    tests += from_class(getattr(module, extra))
            return tests
        cls = loop_class(module, "LoopUnderTestEventLoopTests",
                         (module.EventLoopTestsMixin, module.SubprocessTestsMixin,
                          test_utils.TestCase),
                         "create_event_loop", acct)
        return (from_class(cls, lambda n: events_test_group(n) == NETWORK)
                + from_class(module.TestServer))

    # Network modules whose tests get the loop from a factory method; the
    # concrete classes upstream only differ in which stock selector they use.
    factory_classes: dict[str, tuple[tuple[type, ...], str]] = {
        "test_sock_lowlevel": ((getattr(module, "BaseSockTestsMixin", object),
                                test_utils.TestCase), "create_event_loop"),
        "test_sendfile": ((getattr(module, "SendfileTestsBase", object),
                           test_utils.TestCase), "create_event_loop"),
        # Subclass the selector class: it adds test_start_unix_server_1.
        "test_server": ((getattr(module, "SelectorStartServerTests", object),), "new_loop"),
        "test_buffered_proto": ((getattr(module, "BufferedProtocolSelectorTests", object),),
                                "new_loop"),
    }
    if suite.module in factory_classes:
        bases, method = factory_classes[suite.module]
        return from_class(loop_class(module, "LoopUnderTestTests", bases, method, acct))

    if suite.module == "test_sslproto":
        # start_tls() on the loop under test (the selector class's tests, from
        # its factory method), and the handshake tests, which build their
        # loop through asyncio.new_event_loop().  ProactorStartTLSTests is
        # Windows-only.
        start_tls = loop_class(module, "LoopUnderTestStartTLSTests",
                               (module.BaseStartTLS, unittest.TestCase), "new_loop", acct)
        return from_class(start_tls) + from_class(module.SslProtoHandshakeTests)

    # Policy-driven modules: the whole module, as regrtest would load it.
    return list(iter_tests(loader.loadTestsFromModule(module)))


# ---------------------------------------------------------------------------
# Recording results
# ---------------------------------------------------------------------------

OUTCOME_RANK = {"success": 0, "expected_failure": 1, "skipped": 2,
                "unexpected_success": 3, "failure": 4, "error": 5}


def exception_line(err: ExcInfo) -> str:
    """First line of the exception as traceback prints it: "Type: message"."""
    text = "".join(traceback.format_exception_only(err[0], err[1])).strip()
    return text.splitlines()[0] if text else err[0].__name__


def test_location(err: ExcInfo) -> str:
    """Innermost test_asyncio frame, plus the raising frame if elsewhere.

    E.g. "test_events.py:2701 -> events.py:641 in set_child_watcher": where
    to look in the test, and which implementation code raised.
    """
    # unittest's own frames (assertEqual -> fail) say nothing useful.
    unittest_dir = os.path.dirname(unittest.__file__) + os.sep
    frames = [f for f in traceback.extract_tb(err[2])
              if not f.filename.startswith(unittest_dir)]
    # Prefer the test module's own frame over helpers such as utils.run_until.
    in_tests = [f for f in frames if f"{os.sep}test_asyncio{os.sep}" in f.filename]
    in_modules = [f for f in in_tests if os.path.basename(f.filename).startswith("test_")]
    where = ""
    if in_modules or in_tests:
        frame = (in_modules or in_tests)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    if frames and f"{os.sep}test_asyncio{os.sep}" not in frames[-1].filename:
        last = frames[-1]
        raised = f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"
        where = f"{where} -> {raised}" if where else raised
    return where


class EventSink:
    """Append-only JSON lines, flushed per record so a crash loses nothing."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()


@dataclass
class TestRecord:
    outcome: str = "success"
    reason: str = ""
    where: str = ""
    traceback: str = ""
    started: float = field(default_factory=time.monotonic)
    counts_before: LoopCounts = field(default_factory=LoopCounts)

    def update(self, outcome: str, reason: str = "", where: str = "", tb: str = "") -> None:
        if OUTCOME_RANK[outcome] > OUTCOME_RANK[self.outcome]:
            self.outcome, self.reason, self.where, self.traceback = outcome, reason, where, tb


def loop_usage(counts: LoopCounts) -> str:
    if counts.under_test:
        return "loop_under_test"
    if counts.stock or counts.foreign:
        return "stock"
    if counts.virtual:
        return "virtual"
    return "none"


class RecordingResult(unittest.TextTestResult):
    """TextTestResult that also emits one JSON record per test."""

    sink: EventSink
    acct: LoopAccounting
    test_timeout: float

    def __init__(self, stream: Any, descriptions: bool, verbosity: int) -> None:
        super().__init__(stream, descriptions, verbosity)
        self._current: TestRecord | None = None

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._current = TestRecord(counts_before=self.acct.snapshot())
        self.sink.write({"event": "start", "id": test.id()})
        # If the test hangs, the stack lands in the log before the parent
        # kills us; the parent quotes its innermost frame.
        faulthandler.dump_traceback_later(self.test_timeout, exit=False)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        record = self._current or TestRecord()
        self._current = None
        counts = self.acct.snapshot().minus(record.counts_before)
        self.sink.write({
            "event": "result", "id": test.id(), "outcome": record.outcome,
            "reason": record.reason, "where": record.where, "traceback": record.traceback,
            "duration": round(time.monotonic() - record.started, 3),
            "loops": asdict(counts), "usage": loop_usage(counts),
        })
        super().stopTest(test)

    def _record(self, test: Any, outcome: str, err: ExcInfo | None = None,
                reason: str = "") -> None:
        tb = where = ""
        if err is not None:
            reason = exception_line(err)
            where = test_location(err)
            # Formats like unittest does, minus unittest's own frames.
            tb = self._exc_info_to_string(err, test)  # type: ignore[attr-defined]
        if self._current is None:
            # setUpClass/setUpModule failures come without startTest.
            self.sink.write({"event": "result", "id": test.id(), "outcome": outcome,
                             "reason": reason, "where": where, "traceback": tb,
                             "duration": 0.0, "loops": asdict(LoopCounts()),
                             "usage": "none"})
        else:
            self._current.update(outcome, reason, where, tb)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", err)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failure", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason=reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success", reason="unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase,
                   err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "failure" if failed else "error", err)
            if self._current is not None:
                params = subtest.id()[len(test.id()):].strip()
                self._current.reason = f"{params}: {self._current.reason}"


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--suite", choices=sorted(SUITES_BY_NAME), required=True)
    parser.add_argument("--events", help="JSON-lines output file")
    parser.add_argument("--skip-file", help="file with test ids to leave out, one per line")
    parser.add_argument("--verbosity", type=int, default=1)
    parser.add_argument("--test-timeout", type=float, default=120.0)
    parser.add_argument("--pristine", action="store_true",
                        help="do not adapt test_runners/test_pep492/close_loop")
    parser.add_argument("--list", action="store_true", help="print test ids and exit")
    args = parser.parse_args(argv)

    faulthandler.enable(all_threads=True)
    sink = EventSink(args.events or os.devnull)
    try:
        lut = load_loop(args.loop)
    except Exception as exc:  # ImportError, or a half-built extension module
        sink.write({"event": "unavailable", "error": f"{type(exc).__name__}: {exc}"})
        print(f"loop {args.loop} unavailable: {exc!r}", file=sys.stderr)
        return 3

    acct = LoopAccounting(lut)
    install_loop(acct)
    adaptations = [] if args.pristine else adapt_harness(acct)
    suite = SUITES_BY_NAME[args.suite]
    tests = build_suite(suite, acct)

    skip: set[str] = set()
    if args.skip_file:
        with open(args.skip_file, encoding="utf-8") as f:
            skip = {line.strip() for line in f if line.strip()}
    tests = [t for t in tests if t.id() not in skip]

    if args.list:
        for t in tests:
            print(t.id())
        return 0

    sink.write({"event": "hello", "loop": lut.name, "version": lut.version,
                "loop_type": f"{lut.loop_type.__module__}.{lut.loop_type.__qualname__}",
                "policy": f"{lut.policy_base.__module__}.{lut.policy_base.__qualname__}",
                "adaptations": adaptations, "selected": len(tests)})

    RecordingResult.sink = sink
    RecordingResult.acct = acct
    RecordingResult.test_timeout = args.test_timeout
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=args.verbosity,
                                     resultclass=RecordingResult)
    started = time.monotonic()
    result = runner.run(unittest.TestSuite(tests))
    sink.write({"event": "done", "elapsed": round(time.monotonic() - started, 3),
                "tests_run": result.testsRun})
    sys.stderr.flush()
    # Skip interpreter teardown: a loop implementation that misbehaves at
    # finalization must not turn a finished suite into a "crash".
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
