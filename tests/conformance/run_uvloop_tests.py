#!/usr/bin/env python3
"""Run uvloop's own test suite with ferroloop as the loop under test.

The tests are not part of this repository.  Each run downloads the sdist of the
installed uvloop version from PyPI (``pip download --no-binary :all: --no-deps
uvloop==<version>``), extracts its ``tests/`` directory into a temporary
directory and imports the test files from there.  The directory is removed
after a clean run and kept, with its path printed, otherwise.  pyOpenSSL and
psutil, which test_tcp and test_process import, are pip-installed into the same
temporary directory when the interpreter lacks them.

How ferroloop is put in place (``--loop ferroloop``, the default).  uvloop's
test files define pairs of classes: ``Test_UV_X(_TestX, tb.UVTestCase)`` and
``Test_AIO_X(_TestX, tb.AIOTestCase)``.  Only the uvloop variants run (and the
plain ``unittest.TestCase`` classes of the selected files), with, in the child
process that runs them:

* ``uvloop._testbase.UVTestCase.new_loop`` returning ``ferroloop.new_event_loop()``
  and ``UVTestCase.new_policy`` returning ``ferroloop.EventLoopPolicy()``: that
  is how every UVTestCase gets its loop (setUp) and its policy.
* ``uvloop.new_event_loop``, ``uvloop.EventLoopPolicy`` and ``uvloop.install``
  building ferroloop loops, for the tests that call them directly (TestPolicy,
  test_regr1's server thread, test_process_spawning).  ``uvloop.Loop`` itself
  is left alone, so ``isinstance(loop, uvloop.Loop)`` is false for a ferroloop
  loop, and a test that subclasses ``uvloop.Loop`` builds a uvloop loop.
* test_signals' ``NEW_LOOP`` (the expression its child programs build their
  loop with) set to ``__import__('ferroloop').new_event_loop()``.

``UVTestCase.implementation`` stays ``'uvloop'``: where a test expects
different behaviour from uvloop and from asyncio, ferroloop is held to
uvloop's.  Every loop a test builds is counted by type (ferroloop, uvloop,
stock asyncio).  With ``--loop ferroloop`` a test that built a uvloop loop did
not test ferroloop, so it is reported as an error ("RAN ON UVLOOP") whatever
its outcome; the one test whose uvloop code runs in a child interpreter that
nothing here can reach is skipped (SKIP_ON_FERROLOOP, with the reason).
``--loop uvloop`` runs the same tests unpatched, on uvloop itself.

Test files run (from uvloop 0.23's tests/): test_aiohttp (an aiohttp server
and client on the loop), test_base, test_context, test_dns, test_executors,
test_pipes, test_process, test_process_spawning, test_regr1, test_signals,
test_sockets, test_tcp (TCP and TLS), test_udp, test_unix.  Left out, as tests
of uvloop itself rather than of the event loop API (LEFT_OUT):

  test_cython      uvloop's Cython coroutine wrapper (uvloop.loop._test_coroutine_1)
  test_libuv_api   uvloop.loop.libuv_get_loop_t_ptr/libuv_get_version, libuv's C API
  test_fs_event    uvloop.loop.FileSystemEvent, a uvloop-only loop extension
  test_dealloc     uvloop's Cython __dealloc__ methods at exit, in a program that
                   imports uvloop in a fresh interpreter
  test_runner      uvloop.run(), uvloop's module-level runner, and its check that
                   the loop is a uvloop.Loop
  test_sourcecode  flake8 and mypy over uvloop's own source files
  test_testbase    uvloop/_testbase.py's duplicate-test-name metaclass

A test file of the sdist that is in neither list is reported, not run.

Each test file runs in its own child process (this script with ``--child``),
which streams one JSON line per test.  A test that outlives --test-timeout is
recorded as a HANG (with the frame it was stuck in, from faulthandler), a child
that dies in a test records a CRASH; either way the child is restarted without
the tests already done.  A file that outlives --file-timeout is reported as
timed out with what had finished.  Failures that are in neither KNOWN nor
FLAKY are run once more, alone; one that then passes is reported as flaky.

Exit status: non-zero if a test of the gating loop (ferroloop when selected,
otherwise every selected loop) fails, errs, hangs or crashes and is not in
that loop's KNOWN list and did not pass on its re-run; if a KNOWN test now
passes (remove it from the list); or if a file could not run.  --report-only
always exits 0.

    python tests/conformance/run_uvloop_tests.py                  # ferroloop, gating
    python tests/conformance/run_uvloop_tests.py --loop uvloop    # uvloop itself
    python tests/conformance/run_uvloop_tests.py --files test_tcp,test_udp --keep
    python tests/conformance/run_uvloop_tests.py --tests-dir DIR  # a kept tests/, no download
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from child_processes import innermost_frame, kill_group, signal_name

HERE = Path(__file__).resolve()

LOOPS = ("ferroloop", "uvloop")

FILES = ("test_aiohttp", "test_base", "test_context", "test_dns", "test_executors",
         "test_pipes", "test_process", "test_process_spawning", "test_regr1",
         "test_signals", "test_sockets", "test_tcp", "test_udp", "test_unix")

LEFT_OUT = {
    "test_cython": "uvloop's Cython coroutine wrapper",
    "test_libuv_api": "libuv's C API through uvloop.loop",
    "test_fs_event": "uvloop.loop.FileSystemEvent, a uvloop-only extension",
    "test_dealloc": "uvloop's Cython __dealloc__ methods, in a fresh interpreter",
    "test_runner": "uvloop.run()",
    "test_sourcecode": "flake8 and mypy over uvloop's source",
    "test_testbase": "uvloop/_testbase.py's metaclass",
}

# Modules the test files import that are not uvloop's own requirements.
TEST_DEPS = {"psutil": "psutil", "OpenSSL": "pyOpenSSL"}

# Tests ferroloop fails, each with the reason, checked against the traceback,
# the test's code and the same test run on stock asyncio.  Each reason starts
# with its kind, by which the report groups them:
#   uvloop-only API        a uvloop (or private, or other-Python-version) name
#   uvloop-only behaviour  a guarantee uvloop gives and asyncio does not; the
#                          test skips that check on asyncio, and ferroloop,
#                          which takes these parts from asyncio, does as asyncio
#   ferroloop bug          wrong on ferroloop (expected vs got)
# They run and are listed in every report but do not fail the run; one that
# passes fails the run, so that the list stays true.
KNOWN: dict[str, str] = {
    # -- uvloop-only API --------------------------------------------------
    "test_base.TestBaseUV.test_default_exc_handler_broken":
        "uvloop-only API: subclasses uvloop.Loop (class Loop(uvloop.Loop)), so the "
        "test builds and runs a uvloop loop, not ferroloop",
    "test_base.TestBaseUV.test_thread_name_prefix_in_default_executor":
        "uvloop-only API: expects the default executor's threads to be named "
        "'uvloop...'; ferroloop names them as asyncio does ('asyncio_0')",
    "test_base.TestPolicy.test_uvloop_policy":
        "uvloop-only API: asserts isinstance(loop, uvloop.Loop) for the loop the "
        "policy built (a ferroloop.Loop here)",
    "test_process.Test_UV_Process_Delayed.test_process_delayed_stdio__paused__no_stdin":
        "uvloop-only API: passes uvloop's private subprocess_shell() keyword "
        "__uvloop_sleep_after_fork=True, which ferroloop, like asyncio, hands to "
        "subprocess.Popen (TypeError)",
    "test_process.Test_UV_Process_Delayed.test_process_delayed_stdio__paused__stdin_pipe":
        "uvloop-only API: passes uvloop's private subprocess_shell() keyword "
        "__uvloop_sleep_after_fork=True, which ferroloop, like asyncio, hands to "
        "subprocess.Popen (TypeError)",
    "test_sockets.TestUVSockets.test_socket_sync_remove":
        "uvloop-only API: loop._get_backend_id() (the fd of libuv's epoll)",
    "test_sockets.TestUVSockets.test_pseudosocket":
        "uvloop-only API: tests uvloop's PseudoSocket (its repr naming AF_UNIX, its "
        "'does not support X() method' errors); get_extra_info('socket') is "
        "asyncio's TransportSocket on ferroloop, as on asyncio",
    "test_tcp.Test_UV_TCPSSL.test_flush_before_shutdown":
        "uvloop-only API: get_extra_info('uvloop.sslproto') (None on ferroloop), "
        "then calls its pause_writing()",
    "test_udp.Test_UV_UDP.test_create_datagram_endpoint_reuse_address_error":
        "uvloop-only API: create_datagram_endpoint(reuse_address=True); asyncio "
        "removed the parameter in 3.11 (TypeError), uvloop keeps it; the test "
        "skips itself on asyncio 3.11+",
    "test_udp.Test_UV_UDP.test_create_datagram_endpoint_reuse_address_warning":
        "uvloop-only API: create_datagram_endpoint(reuse_address=False); asyncio "
        "removed the parameter in 3.11 (TypeError), uvloop keeps it; the test "
        "skips itself on asyncio 3.11+",
    # -- uvloop-only behaviour --------------------------------------------
    "test_context.Test_UV_Context.test_create_connection_protocol":
        "uvloop-only behaviour: uvloop runs a transport's protocol callbacks in the "
        "context the transport was made in; ferroloop, like asyncio, calls "
        "pause_writing() in the context of the write() that filled the buffer "
        "(expected 'inner', got 'write_over'); the check is skipped on asyncio",
    "test_context.Test_UV_Context.test_create_server_manual_connection_lost":
        "uvloop-only behaviour: connection_lost() runs in the context of the code "
        "that called transport.close() (expected 'inner', got 'closing'), as on "
        "asyncio; uvloop uses the transport's context; the test skips itself on asyncio",
    "test_context.Test_UV_Context.test_create_ssl_server_connection_protocol":
        "uvloop-only behaviour: after pause_reading(), data_received() runs in the "
        "context of the resume_reading() call (got 'resume_reading', expected "
        "'inner'), as with asyncio's SSLProtocol; the check is skipped on asyncio",
    "test_context.Test_UV_Context.test_datagram_protocol":
        "uvloop-only behaviour: a datagram transport's connection_lost() runs in the "
        "context that called close() (expected 'inner', got 'closing'), as on "
        "asyncio; the check is skipped on asyncio",
    "test_context.Test_UV_Context.test_subprocess_protocol":
        "uvloop-only behaviour: process_exited() runs in the context the child "
        "watcher calls back in (got 'outer', expected 'inner'), as on asyncio; the "
        "check is skipped on asyncio",
    "test_signals.Test_UV_Signals.test_signals_no_SIGCHLD":
        "uvloop-only behaviour: expects add_signal_handler(SIGCHLD) to raise "
        "RuntimeError (libuv reserves SIGCHLD); ferroloop allows it, as asyncio does",
    "test_sockets.TestUVSockets.test_socket_close_loop_and_close":
        "uvloop-only behaviour: uvloop holds an io-ref on a socket while a sock_*() "
        "call on it is pending, so sock.close() waits for loop.close(); ferroloop, "
        "like asyncio, closes it at once (fileno() -1)",
    "test_sockets.TestUVSockets.test_socket_connect_and_close":
        "uvloop-only behaviour (HANG): sock.close() during a pending sock_connect(); "
        "uvloop defers the close (io-ref) and the connect completes; on ferroloop, "
        "as on asyncio, the fd is closed under the pending call, which never "
        "completes, and the test has no timeout of its own",
    "test_sockets.TestUVSockets.test_socket_recv_and_close":
        "uvloop-only behaviour: sock.close() during a pending sock_recv(); uvloop "
        "defers the close (io-ref) and the recv gets b'helo'; on ferroloop, as on "
        "asyncio, the recv never completes (TimeoutError after 5 s)",
    "test_sockets.TestUVSockets.test_socket_recv_into_and_close":
        "uvloop-only behaviour: sock.close() during a pending sock_recv_into(); "
        "uvloop defers the close (io-ref); on ferroloop, as on asyncio, the call "
        "never completes (TimeoutError after 5 s)",
    "test_tcp.Test_UV_TCP.test_create_server_buffered_1":
        "uvloop-only behaviour: the protocol is an asyncio.BaseProtocol with "
        "get_buffer()/buffer_updated() but no BufferedProtocol base; uvloop treats "
        "it as buffered, ferroloop (like asyncio) calls data_received(), which it lacks",
    "test_tcp.Test_UV_TCP.test_create_server_buffered_2":
        "uvloop-only behaviour: protocols that are asyncio.BaseProtocol with "
        "get_buffer() but no BufferedProtocol base; ferroloop (like asyncio) calls "
        "data_received() (AttributeError) instead of get_buffer()",
    "test_unix.Test_UV_Unix.test_epollhup":
        "uvloop-only behaviour: the protocol is an asyncio.BaseProtocol with "
        "get_buffer() but no BufferedProtocol base; ferroloop (like asyncio) calls "
        "data_received(), which it lacks, and the connection is aborted before EOF",
    "test_tcp.Test_UV_TCPSSL.test_start_tls_client_buf_proto_1":
        "uvloop-only behaviour (HANG or error): the protocol is an "
        "asyncio.BaseProtocol with get_buffer() but no BufferedProtocol base; "
        "ferroloop's SSLProtocol, as asyncio's does, calls its missing "
        "data_received() and aborts; the server thread then calls loop.stop() from "
        "its own thread, which ends the test at once or only at its 60 s timeout, "
        "depending on timing; the test skips itself on asyncio",
    "test_tcp.Test_UV_TCP.test_tcp_handle_abort_in_connection_made":
        "uvloop-only behaviour: after abort() in connection_made(), uvloop's "
        "get_extra_info('socket') is None; ferroloop returns the closed "
        "TransportSocket (fd=-1), as asyncio does (the test's comment says so)",
    "test_tcp.Test_UV_TCPSSL.test_shutdown_timeout_handler_not_set":
        "uvloop-only behaviour (HANG): the peer sends data, then a TCP EOF without "
        "close_notify, while reading is paused; uvloop drops the data and closes, "
        "and the test waits for that close. asyncio keeps the data for the "
        "protocol until reading resumes, and CPython's test of the same name "
        "(test_asyncio.test_ssl) asserts exactly that, which ferroloop passes; "
        "both cannot hold (the test skips itself on asyncio)",
    "test_udp.Test_UV_UDP.test_udp_sendto_dns":
        "uvloop-only behaviour: expects sendto(data, ('example.com', 80)) to raise "
        "ValueError (uvloop refuses addresses that need a DNS lookup); ferroloop, "
        "like asyncio, hands the address to socket.sendto()",
    # -- ferroloop bugs ---------------------------------------------------
}

# KNOWN tests that hang on ferroloop, or wait out a long timeout of their own:
# they run with --known-hang-timeout instead of --test-timeout (on uvloop each
# takes under 2 s), so that they cost seconds, not minutes.
KNOWN_HANGS = {
    "test_sockets.TestUVSockets.test_socket_connect_and_close",
    "test_tcp.Test_UV_TCPSSL.test_shutdown_timeout_handler_not_set",
    "test_tcp.Test_UV_TCPSSL.test_start_tls_client_buf_proto_1",
}

# uvloop's own failures in this environment (--loop uvloop).
KNOWN_UVLOOP: dict[str, str] = {
}

# Timing-sensitive tests: reported whatever they do, never gating.
FLAKY: dict[str, str] = {
}

# Tests that cannot be made to run on ferroloop: skipped with --loop ferroloop.
SKIP_ON_FERROLOOP: dict[str, str] = {
    "test_process.Test_UV_Process.test_process_double_close":
        "its script runs uvloop.run() in a fresh interpreter and checks the fds "
        "that importing uvloop opens; no ferroloop code would run",
}

KNOWN_BY_LOOP = {"ferroloop": KNOWN, "uvloop": KNOWN_UVLOOP}
BAD = ("failure", "error", "unexpected_success")
MAX_RESTARTS = 25
KILL_GRACE = 5.0
POLL = 0.1


def timeout_for(loop: str, test_id: str, opts: argparse.Namespace) -> float:
    limit = float(opts.test_timeout)
    if loop == "ferroloop" and test_id in KNOWN_HANGS:
        return min(float(opts.known_hang_timeout), limit)
    return limit


# ===========================================================================
# Child: runs one test file on one loop
# ===========================================================================

def child_main(args: argparse.Namespace) -> int:
    import asyncio
    import asyncio.base_events
    import faulthandler
    import importlib
    import threading
    import traceback
    import unittest

    tests_dir = str(Path(args.tests_dir).resolve())
    sys.path.insert(0, tests_dir)
    if args.deps_dir:
        sys.path.append(args.deps_dir)     # after site-packages: never shadows them
    faulthandler.enable(all_threads=True)

    events = open(args.events, "a", encoding="utf-8")
    lock = threading.Lock()

    def emit(record: dict[str, Any]) -> None:
        with lock:
            events.write(json.dumps(record) + "\n")
            events.flush()

    try:
        import uvloop
        from uvloop import _testbase as tb
        ferroloop: Any = (importlib.import_module("ferroloop")
                          if args.loop == "ferroloop" else None)
    except Exception as exc:
        emit({"event": "unavailable", "error": f"{type(exc).__name__}: {exc}"})
        return 3

    # -- loop accounting (both loops) ------------------------------------
    counts = {"ferroloop": 0, "uvloop": 0, "stock": 0}

    def counting(cls: type, kind: str) -> None:
        base_init = getattr(cls, "__init__")    # its own or the inherited one

        def __init__(self: Any, *a: Any, **kw: Any) -> None:
            base_init(self, *a, **kw)
            with lock:
                counts[kind] += 1

        setattr(cls, "__init__", __init__)

    counting(uvloop.Loop, "uvloop")
    counting(asyncio.base_events.BaseEventLoop, "stock")
    if args.loop == "ferroloop":
        counting(ferroloop.Loop, "ferroloop")

    # -- ferroloop in place of uvloop --------------------------------------
    patches: list[str] = []
    if args.loop == "ferroloop":
        setattr(tb.UVTestCase, "new_loop", lambda self: ferroloop.new_event_loop())
        setattr(tb.UVTestCase, "new_policy", lambda self: ferroloop.EventLoopPolicy())
        setattr(uvloop, "new_event_loop", ferroloop.new_event_loop)
        setattr(uvloop, "EventLoopPolicy", ferroloop.EventLoopPolicy)

        def install() -> None:
            asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())

        setattr(uvloop, "install", install)
        patches += ["uvloop._testbase.UVTestCase.new_loop -> ferroloop.new_event_loop()",
                    "uvloop._testbase.UVTestCase.new_policy -> ferroloop.EventLoopPolicy()",
                    "uvloop.new_event_loop, uvloop.EventLoopPolicy, uvloop.install -> ferroloop's"]

    # Keep the first context passed to the test's exception handler, so that
    # "unexpected calls to loop.call_exception_handler()" can say what it was.
    handler_contexts: list[dict[str, Any]] = []
    original_handler = tb.BaseTestCase.loop_exception_handler

    def loop_exception_handler(self: Any, loop: Any, context: dict[str, Any]) -> None:
        handler_contexts.append(context)
        original_handler(self, loop, context)

    setattr(tb.BaseTestCase, "loop_exception_handler", loop_exception_handler)

    try:
        module = importlib.import_module(args.file)
    except Exception as exc:
        emit({"event": "unavailable", "error": f"import {args.file}: {type(exc).__name__}: {exc}"})
        traceback.print_exc()
        return 3

    if args.loop == "ferroloop":
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, tb.UVTestCase)
                    and getattr(obj, "NEW_LOOP", None) == "uvloop.new_event_loop()"):
                setattr(obj, "NEW_LOOP", "__import__('ferroloop').new_event_loop()")
                patches.append(f"{args.file}.{obj.__name__}.NEW_LOOP -> "
                               "__import__('ferroloop').new_event_loop()")

    # -- the tests: uvloop variants and plain TestCases, no asyncio variants
    def flatten(suite: Any) -> list[Any]:
        if isinstance(suite, unittest.TestSuite):
            return [t for item in suite for t in flatten(item)]
        return [suite]

    tests = [t for t in flatten(unittest.TestLoader().loadTestsFromModule(module))
             if not isinstance(t, tb.AIOTestCase)]
    skip = set(Path(args.skip_file).read_text().split()) if args.skip_file else set()
    only = set(Path(args.only_file).read_text().split()) if args.only_file else None
    tests = [t for t in tests if t.id() not in skip and (only is None or t.id() in only)]
    if args.loop == "ferroloop":
        for t in tests:
            reason = SKIP_ON_FERROLOOP.get(t.id())
            if reason:
                setattr(t, t._testMethodName, unittest.skip(reason)(lambda: None))
    if args.list:
        print("\n".join(t.id() for t in tests))
        return 0

    version = getattr(ferroloop if args.loop == "ferroloop" else uvloop, "__version__", "?")
    where = (ferroloop if args.loop == "ferroloop" else uvloop).__file__
    emit({"event": "hello", "loop": args.loop, "version": version, "path": where,
          "patches": patches, "selected": len(tests)})

    rank = {"success": 0, "expected_failure": 1, "skipped": 2,
            "unexpected_success": 3, "failure": 4, "error": 5}
    unittest_dir = os.path.dirname(unittest.__file__) + os.sep

    def one_line(err: Any) -> str:
        text = "".join(traceback.format_exception_only(err[0], err[1])).strip()
        return text.splitlines()[0] if text else err[0].__name__

    def location(err: Any) -> str:
        frames = [f for f in traceback.extract_tb(err[2])
                  if not f.filename.startswith(unittest_dir)]
        in_tests = [f for f in frames if f.filename.startswith(tests_dir)]
        where = ""
        if in_tests:
            where = f"{os.path.basename(in_tests[-1].filename)}:{in_tests[-1].lineno}"
        if frames and not frames[-1].filename.startswith(tests_dir):
            last = frames[-1]
            raised = f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"
            where = f"{where} -> {raised}" if where else raised
        return where

    class Result(unittest.TextTestResult):
        current: dict[str, Any] | None = None

        def startTest(self, test: Any) -> None:
            super().startTest(test)
            handler_contexts.clear()
            with lock:
                before = dict(counts)
            self.current = {"outcome": "success", "reason": "", "where": "", "traceback": "",
                            "started": time.monotonic(), "before": before}
            emit({"event": "start", "id": test.id()})
            faulthandler.dump_traceback_later(timeout_for(args.loop, test.id(), args), exit=False)

        def stopTest(self, test: Any) -> None:
            faulthandler.cancel_dump_traceback_later()
            cur = self.current or {"outcome": "success", "reason": "", "where": "",
                                   "traceback": "", "started": time.monotonic(),
                                   "before": dict(counts)}
            self.current = None
            with lock:
                loops = {k: counts[k] - cur["before"][k] for k in counts}
            if "call_exception_handler" in cur["reason"] and handler_contexts:
                ctx = handler_contexts[0]
                exc = ctx.get("exception")
                detail = ctx.get("message", "")
                if exc is not None:
                    detail += f" ({type(exc).__name__}: {exc})"
                cur["reason"] += f": {detail}"
            if args.loop == "ferroloop" and loops["uvloop"] and cur["outcome"] != "skipped":
                note = (f"RAN ON UVLOOP: built {loops['uvloop']} uvloop.Loop, "
                        f"{loops['ferroloop']} ferroloop loop(s)")
                if cur["outcome"] in BAD:
                    note += f"; {cur['outcome']}: {cur['reason']}"
                cur["outcome"], cur["reason"] = "error", note
            emit({"event": "result", "id": test.id(), "outcome": cur["outcome"],
                  "reason": cur["reason"], "where": cur["where"],
                  "traceback": cur["traceback"],
                  "duration": round(time.monotonic() - cur["started"], 3), "loops": loops})
            super().stopTest(test)

        def _record(self, test: Any, outcome: str, err: Any = None, reason: str = "") -> None:
            where = tb_text = ""
            if err is not None:
                reason, where = one_line(err), location(err)
                tb_text = getattr(self, "_exc_info_to_string")(err, test)
            if self.current is None:          # setUpClass / setUpModule
                emit({"event": "result", "id": test.id(), "outcome": outcome,
                      "reason": reason, "where": where, "traceback": tb_text,
                      "duration": 0.0, "loops": {k: 0 for k in counts}})
            elif rank[outcome] > rank[self.current["outcome"]]:
                self.current.update(outcome=outcome, reason=reason, where=where,
                                    traceback=tb_text)

        def addError(self, test: Any, err: Any) -> None:
            super().addError(test, err)
            self._record(test, "error", err)

        def addFailure(self, test: Any, err: Any) -> None:
            super().addFailure(test, err)
            self._record(test, "failure", err)

        def addSkip(self, test: Any, reason: str) -> None:
            super().addSkip(test, reason)
            self._record(test, "skipped", reason=reason)

        def addExpectedFailure(self, test: Any, err: Any) -> None:
            super().addExpectedFailure(test, err)
            self._record(test, "expected_failure")

        def addUnexpectedSuccess(self, test: Any) -> None:
            super().addUnexpectedSuccess(test)
            self._record(test, "unexpected_success", reason="unexpected success")

        def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
            super().addSubTest(test, subtest, err)
            if err is not None:
                failed = issubclass(err[0], test.failureException)
                self._record(test, "failure" if failed else "error", err)

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=args.verbosity,
                                     resultclass=Result)  # type: ignore[arg-type]
    runner.run(unittest.TestSuite(tests))
    emit({"event": "done"})
    sys.stdout.flush()
    sys.stderr.flush()
    # A loop that misbehaves at interpreter teardown must not turn a finished
    # file into a crash.
    os._exit(0)


# ===========================================================================
# Parent: fetch the tests, run the files, report, gate
# ===========================================================================

def run_pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in (proc.stdout or "").splitlines():
        if line.startswith(("Saved ", "Successfully ", "Downloading ")):
            print(f"  pip: {line.strip()}", flush=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"{what} failed (pip exit status {proc.returncode})")


def fetch_tests(work: Path) -> tuple[Path, str]:
    from importlib.metadata import version

    uv_version = version("uvloop")
    sdist_dir = work / "sdist"
    print(f"Downloading the sdist of uvloop=={uv_version} from PyPI into {sdist_dir} "
          "(pip download --no-binary :all: --no-deps)", flush=True)
    run_pip(["download", "--no-binary", ":all:", "--no-deps", f"uvloop=={uv_version}",
             "-d", str(sdist_dir)], "downloading uvloop's sdist")
    tarballs = sorted(sdist_dir.glob("uvloop-*.tar.gz"))
    if not tarballs:
        raise SystemExit(f"no uvloop-*.tar.gz in {sdist_dir}")
    tarball = tarballs[0]
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    tests_dir = work / "tests"
    count = 0
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) < 3 or parts[1] != "tests" or not (member.isfile() or member.isdir()):
                continue
            member.name = "/".join(parts[1:])       # strip uvloop-<version>/
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, work, filter="data")
            else:
                tar.extract(member, work)
            count += member.isfile()
    print(f"Extracted tests/ ({count} files) from {tarball.name} "
          f"({tarball.stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}...) into {tests_dir}",
          flush=True)
    return tests_dir, uv_version


def install_deps(work: Path) -> Path | None:
    import importlib.util

    missing = [pkg for mod, pkg in TEST_DEPS.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return None
    deps = work / "deps"
    print(f"Installing the test dependencies this interpreter lacks ({', '.join(missing)}) "
          f"from PyPI into {deps} (pip install --target)", flush=True)
    run_pip(["install", "--target", str(deps), *missing], "installing test dependencies")
    return deps


@dataclass
class FileRun:
    loop: str
    file: str
    status: str = "ok"               # ok | timeout | aborted | unavailable
    note: str = ""
    elapsed: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, *outcomes: str) -> int:
        return sum(1 for t in self.tests.values() if t["outcome"] in outcomes)

    def nums(self) -> list[int]:
        return [len(self.tests), self.count("success", "expected_failure"),
                self.count("failure", "unexpected_success"), self.count("error"),
                self.count("skipped")]


# Each child leads its own process group, which holds only what it spawned
# (process pools, the tests' subprocesses): all of it goes when it is killed.
OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})


def child_env(opts: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FERROLOOP_INSTALL", None)   # ferroloop.pth would install its policy
    env.pop("PYTHONASYNCIODEBUG", None)
    if opts.debug:
        env["PYTHONASYNCIODEBUG"] = "1"
    return env


def run_file(loop: str, file: str, opts: argparse.Namespace, only: list[str] | None = None,
             tag: str = "") -> FileRun:
    run = FileRun(loop, file)
    started = time.monotonic()
    deadline = started + opts.file_timeout
    done: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        base = opts.log_dir / f"{loop}-{file}{tag}-{attempt}"
        events, log = base.with_suffix(".jsonl"), base.with_suffix(".log")
        skip_file, only_file = base.with_suffix(".skip"), base.with_suffix(".only")
        skip_file.write_text("\n".join(done))
        cmd = [sys.executable, str(HERE), "--child", "--loop", loop, "--file", file,
               "--tests-dir", str(opts.tests_dir), "--events", str(events),
               "--skip-file", str(skip_file), "--test-timeout", str(opts.test_timeout),
               "--known-hang-timeout", str(opts.known_hang_timeout),
               "--verbosity", "2"]
        if opts.deps_dir:
            cmd += ["--deps-dir", str(opts.deps_dir)]
        if only is not None:
            only_file.write_text("\n".join(only))
            cmd += ["--only-file", str(only_file)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **OWN_GROUP,
                                    cwd=opts.work_dir, env=child_env(opts))
        pos, partial, current, since = 0, "", None, 0.0
        finished = unavailable = False
        killed = ""

        def poll() -> None:
            nonlocal pos, partial, current, since, finished, unavailable
            if not events.exists():
                return
            with open(events, encoding="utf-8") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                if not line.strip():
                    continue
                ev = json.loads(line)
                kind = ev["event"]
                if kind == "start":
                    current, since = ev["id"], time.monotonic()
                elif kind == "result":
                    run.tests[ev["id"]] = ev
                    if ev["id"] == current:
                        current = None
                elif kind == "hello":
                    run.info = run.info or ev
                elif kind == "done":
                    finished = True
                elif kind == "unavailable":
                    unavailable = True
                    run.status, run.note = "unavailable", ev["error"]

        try:
            while proc.poll() is None:
                poll()
                now = time.monotonic()
                if now > deadline:
                    killed = "file"
                elif current and now - since > timeout_for(loop, current, opts) + KILL_GRACE:
                    killed = "test"
                if killed:
                    kill_group(proc)
                    break
                time.sleep(POLL)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        poll()
        if unavailable or (finished and not killed):
            break
        text = log.read_text(encoding="utf-8", errors="replace")
        if current:
            if killed:
                frame = innermost_frame(text, "Timeout (")
                reason = (f"HANG: no result after {time.monotonic() - since:.0f}s"
                          + (f" (stuck at {frame})" if frame else ""))
            else:
                frame = innermost_frame(text, "Fatal Python error")
                reason = f"CRASH: child died with {signal_name(proc.returncode)}" + (
                    f" at {frame}" if frame else "")
            run.tests[current] = {"id": current, "outcome": "error", "reason": reason,
                                  "where": "", "traceback": text[-4000:], "duration": 0.0,
                                  "loops": None}     # not known: the child was killed
        if killed == "file":
            run.status = "timeout"
            run.note = f"file exceeded {opts.file_timeout:.0f}s" + (
                f" in {current}" if current else "")
            break
        if not current:
            run.status = "aborted"
            run.note = f"child ended with {signal_name(proc.returncode)} outside a test; see {log}"
            break
        if attempt > MAX_RESTARTS:
            run.status, run.note = "aborted", f"gave up after {attempt} restarts"
            break
        done = sorted(run.tests)
    run.elapsed = time.monotonic() - started
    return run


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(headers), "-" * len(fmt(headers)), *(fmt(r) for r in rows)])


def status_of(loop: str, test: dict[str, Any],
              reruns: dict[str, dict[str, dict[str, Any]]]) -> str:
    """known | flaky | rerun-passed | new: how a bad outcome counts."""
    if test["id"] in KNOWN_BY_LOOP.get(loop, {}):
        return "known"
    if test["id"] in FLAKY:
        return "flaky"
    again = reruns.get(loop, {}).get(test["id"])
    if again is not None and again["outcome"] in ("success", "skipped", "expected_failure"):
        return "rerun-passed"
    return "new"


def report(loop: str, runs: list[FileRun],
           reruns: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, bool]:
    out: list[str] = []
    info = next((r.info for r in runs if r.info), {})
    out.append(f"=== {loop} {info.get('version', '?')} ({info.get('path', '?')}) ===")
    rows, total = [], [0] * 5
    for r in runs:
        nums = r.nums()
        total = [a + b for a, b in zip(total, nums)]
        cells = [str(n) for n in nums]
        if r.status != "ok":
            cells[0] += "!"
        rows.append([r.file, *cells, f"{r.elapsed:.0f}s"])
    rows.append(["TOTAL", *(str(n) for n in total), ""])
    out.append(table(["file", "run", "passed", "failed", "errors", "skipped", "time"], rows))

    # Which loops the tests ran on.  Hung or crashed tests are left out: the
    # child died before it could count.
    kinds = [loop] + [k for k in ("uvloop", "stock") if k != loop]
    use = []
    for r in runs:
        loops_of = [t["loops"] for t in r.tests.values()
                    if t["outcome"] != "skipped" and t.get("loops") is not None]
        use.append([r.file, str(sum(d.get(loop, 0) for d in loops_of)),
                    *(str(sum(1 for d in loops_of if d.get(k))) for k in kinds),
                    str(sum(1 for d in loops_of if not any(d.values())))])
    out.append(f"\nLoops built by the non-skipped tests that ran to the end: {loop} loops in "
               "all, then how many tests built at least one loop of each kind, or none:")
    out.append(table(["file", f"{loop} loops", *(f"on {k}" for k in kinds), "no loop"], use))

    notes = [f"  {r.file}: {r.status.upper()}: {r.note}" for r in runs if r.status != "ok"]
    if notes:
        out.append("\nFiles that did not finish normally:\n" + "\n".join(notes))
    patches = list(dict.fromkeys(p for r in runs for p in r.info.get("patches", [])))
    if patches:
        out.append("\nPatched in the children:")
        out += [f"  - {p}" for p in patches]

    known = KNOWN_BY_LOOP.get(loop, {})
    bad = [t for r in runs for t in r.tests.values() if t["outcome"] in BAD]
    groups: dict[str, list[str]] = {"new": [], "rerun-passed": [], "flaky": []}
    for t in sorted(bad, key=lambda t: (known.get(t["id"], "").split(":")[0], t["id"])):
        st = status_of(loop, t, reruns)
        where = f" [{t['where']}]" if t.get("where") else ""
        line = f"  {t['id']}: {t['outcome'].upper()}{where}: {t['reason']}"
        if st == "known":
            kind, _, why = known[t["id"]].partition(": ")
            st = "known: " + kind.split(" (")[0]
            line += f"\n      why: {why}"
        elif st == "flaky":
            line += f"\n      flaky: {FLAKY[t['id']]}"
        elif st == "rerun-passed":
            line += "\n      passed when run again alone: flaky (add it to FLAKY if it recurs)"
        elif t["id"] in reruns.get(loop, {}):
            again = reruns[loop][t["id"]]
            line += f"\n      failed again when run alone: {again['outcome'].upper()}: {again['reason']}"
        groups.setdefault(st, []).append(line)
    titles = {"new": "NOT IN KNOWN (these fail the run)",
              "rerun-passed": "failed, then passed when run again",
              "flaky": "in FLAKY"}
    out.append(f"\nFailing tests on {loop}: {len(bad)}")
    for key, lines in groups.items():
        if lines:
            out.append(f"\n{titles.get(key, key)} ({len(lines)}):")
            out += lines
    seen = {t["id"]: t for r in runs for t in r.tests.values()}
    fixed = [tid for tid in known if tid in seen
             and seen[tid]["outcome"] not in (*BAD, "skipped")]
    unchecked = [tid for tid in known if tid in seen and seen[tid]["outcome"] == "skipped"]
    missing = [tid for tid in known if tid not in seen]
    files_run = {r.file for r in runs}
    missing = [tid for tid in missing if tid.split(".")[0] in files_run]
    if fixed:
        out.append(f"\nKNOWN tests that did not fail on {loop} (remove them; these fail the run):")
        out += [f"  {tid}: {seen[tid]['outcome']}" for tid in fixed]
    if unchecked:
        out.append(f"\nKNOWN tests skipped here, so not checked:")
        out += [f"  {tid}: {seen[tid]['reason']}" for tid in unchecked]
    if missing:
        out.append("\nKNOWN tests that did not run (these fail the run):")
        out += [f"  {tid}" for tid in missing]
    ok = (all(r.status == "ok" for r in runs) and not groups["new"] and not fixed
          and not missing)
    return "\n".join(out), ok


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--loop", default="ferroloop",
                   help="ferroloop (default), uvloop, or both comma-separated")
    p.add_argument("--files", help=f"comma-separated subset of: {', '.join(FILES)}")
    p.add_argument("--tests-dir", type=Path,
                   help="use this already-extracted uvloop tests/ directory; no download")
    p.add_argument("--test-timeout", type=float, default=90.0, help="per test, seconds")
    p.add_argument("--file-timeout", type=float, default=300.0, help="per file, seconds")
    p.add_argument("--known-hang-timeout", type=float, default=20.0,
                   help="per test, seconds, for the KNOWN_HANGS tests on ferroloop")
    p.add_argument("--jobs", type=int, default=2, help="files run at the same time")
    p.add_argument("--no-rerun", action="store_true",
                   help="do not run unexpected failures a second time")
    p.add_argument("--debug", action="store_true", help="run with PYTHONASYNCIODEBUG=1")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", type=Path, help="write every test's result here")
    p.add_argument("--report-only", action="store_true", help="always exit 0")
    # Child mode (one file on one loop), used by the parent.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    p.add_argument("--only-file", help=argparse.SUPPRESS)
    p.add_argument("--deps-dir", help=argparse.SUPPRESS)
    p.add_argument("--verbosity", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.loops = [x.strip() for x in opts.loop.split(",") if x.strip()]
    bad = [x for x in opts.loops if x not in LOOPS]
    if bad or not opts.loops:
        p.error(f"unknown loop(s) {bad}; choose from {', '.join(LOOPS)}")
    opts.file_list = list(FILES)
    if opts.files:
        opts.file_list = [f.strip() for f in opts.files.split(",") if f.strip()]
        unknown = [f for f in opts.file_list if f not in FILES]
        if unknown:
            p.error(f"unknown file(s) {unknown}; choose from {', '.join(FILES)}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.child:
        return child_main(opts)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ferroloop-uvloop-tests-"))
    opts.work_dir = work
    opts.log_dir = work / "logs"
    opts.log_dir.mkdir()
    print(f"Temporary directory: {work}", flush=True)
    if opts.tests_dir:
        opts.tests_dir = opts.tests_dir.resolve()
        print(f"Using the uvloop tests in {opts.tests_dir} (no download)", flush=True)
    else:
        opts.tests_dir, _ = fetch_tests(work)
    unknown = sorted(p.stem for p in opts.tests_dir.glob("test_*.py")
                     if p.stem not in FILES and p.stem not in LEFT_OUT)
    if unknown:
        print(f"Not run, in neither FILES nor LEFT_OUT (new in this uvloop?): "
              f"{', '.join(unknown)}", flush=True)
    opts.deps_dir = install_deps(work)
    print(f"Python {sys.version.split()[0]} ({sys.executable}); per-test timeout "
          f"{opts.test_timeout:.0f}s, per-file {opts.file_timeout:.0f}s, {opts.jobs} at a time\n",
          flush=True)

    # Longest files first, so that the run ends with the short ones.
    def size(file: str) -> int:
        path = opts.tests_dir / f"{file}.py"
        return path.stat().st_size if path.exists() else 0

    order = sorted(opts.file_list, key=lambda f: -size(f))
    results: dict[str, dict[str, FileRun]] = {lp: {} for lp in opts.loops}

    def job(loop: str, file: str) -> FileRun:
        r = run_file(loop, file, opts)
        n = r.nums()
        flag = "" if r.status == "ok" else f"  {r.status.upper()}: {r.note}"
        print(f"[{loop}] {file}: {n[0]} run, {n[1]} passed, {n[2]} failed, {n[3]} errors, "
              f"{n[4]} skipped ({r.elapsed:.1f}s){flag}", flush=True)
        return r

    with ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        futures = [(lp, f, pool.submit(job, lp, f)) for lp in opts.loops for f in order]
        for lp, f, fut in futures:
            results[lp][f] = fut.result()

    # Run failures that no list explains once more, alone, to tell timing
    # trouble from a real failure.
    reruns: dict[str, dict[str, dict[str, Any]]] = {lp: {} for lp in opts.loops}
    if not opts.no_rerun:
        todo = [(lp, f, [t["id"] for t in r.tests.values() if t["outcome"] in BAD
                         and t["id"] not in KNOWN_BY_LOOP.get(lp, {}) and t["id"] not in FLAKY])
                for lp in opts.loops for f, r in results[lp].items()]
        todo = [(lp, f, ids) for lp, f, ids in todo if ids]
        if todo:
            print(f"\nRunning {sum(len(i) for _, _, i in todo)} unexpected failure(s) again, "
                  "one child per test", flush=True)
        for lp, f, ids in todo:
            for tid in ids:
                again = run_file(lp, f, opts, only=[tid], tag="-rerun")
                rec = again.tests.get(tid, {"outcome": "error",
                                            "reason": again.note or "did not run"})
                reruns[lp][tid] = rec
                print(f"  [{lp}] {tid}: {rec['outcome']}", flush=True)

    ok = True
    gating = ["ferroloop"] if "ferroloop" in opts.loops else opts.loops
    for lp in opts.loops:
        text, clean = report(lp, [results[lp][f] for f in opts.file_list], reruns)
        print("\n" + text)
        if lp in gating:
            ok = ok and clean

    if opts.json:
        doc = {"python": sys.version.split()[0],
               "loops": {lp: {f: {"status": r.status, "note": r.note, "info": r.info,
                                  "elapsed": round(r.elapsed, 1),
                                  "tests": list(r.tests.values())}
                              for f, r in results[lp].items()} for lp in opts.loops},
               "reruns": reruns}
        opts.json.write_text(json.dumps(doc, indent=1))

    print(f"\nRuntime: {time.monotonic() - started:.0f}s")
    if ok and not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"Kept (tests, sdist, child logs): {work}")
    print("Result: " + ("OK" if ok else "FAILED") + (" (gating: " + ", ".join(gating) + ")"))
    return 0 if ok or opts.report_only else 1


if __name__ == "__main__":
    sys.exit(main())
