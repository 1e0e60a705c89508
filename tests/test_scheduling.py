"""call_soon / call_later / call_at / stop: asyncio's scheduling semantics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import sys
import threading
import time

import pytest

import ferroloop


def test_call_soon_runs_fifo_with_args(loop):
    calls = []
    for i in range(5):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [0, 1, 2, 3, 4]


def test_callbacks_scheduled_during_an_iteration_run_in_the_next(loop):
    order = []

    def first():
        order.append(("first", loop._activity()[2]))
        loop.call_soon(second)

    def second():
        order.append(("second", loop._activity()[2]))
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    (name1, iter1), (name2, iter2) = order
    assert (name1, name2) == ("first", "second")
    assert iter2 == iter1 + 1


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.stop()
    loop.call_soon(calls.append, 1)
    loop.run_forever()
    assert calls == [1]
    # The stop request was consumed: the loop runs again normally.
    loop.call_soon(calls.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2]


def test_call_soon_returns_cancellable_handle(loop):
    calls = []
    handle = loop.call_soon(calls.append, "x")
    assert isinstance(handle, ferroloop.Handle)
    assert not handle.cancelled()
    handle.cancel()
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == []


def test_callback_runs_in_its_context(loop):
    var = contextvars.ContextVar("var", default="default")
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    var.set("outer")  # copied at call_soon time below
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "outer"]
    handle = loop.call_soon(lambda: None, context=ctx)
    assert handle.get_context() is ctx


def test_call_later_orders_by_time_then_fifo(loop):
    calls = []
    loop.call_later(0.03, calls.append, "c")
    loop.call_later(0.01, calls.append, "a")
    loop.call_later(0.01, calls.append, "b")
    loop.call_later(0.05, loop.stop)
    started = time.monotonic()
    loop.run_forever()
    assert calls == ["a", "b", "c"]
    assert time.monotonic() - started >= 0.045


def test_call_at_uses_loop_time(loop):
    fired = []
    when = loop.time() + 0.02
    handle = loop.call_at(when, lambda: fired.append(loop.time()))
    assert handle.when() == when
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert fired and fired[0] >= when


def test_loop_time_is_time_monotonic(loop):
    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before <= now <= after


def test_cancelled_timers_are_removed_from_the_heap(loop):
    handles = [loop.call_later(10 + i, lambda: None) for i in range(300)]
    for handle in handles[:200]:
        handle.cancel()
    assert loop._queue_sizes()[1:] == (300, 200)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # More than half of a large heap was cancelled: it was compacted.
    assert loop._queue_sizes()[1:] == (100, 0)
    assert all(not h._scheduled for h in handles[:200])
    assert all(h._scheduled for h in handles[200:])


def test_cancelled_timer_releases_its_callback(loop):
    handle = loop.call_later(10, print, "x")
    assert handle._callback is print
    handle.cancel()
    assert handle._callback is None and handle._args is None


def test_nan_delay_runs_at_next_iteration_like_asyncio(loop):
    calls = []
    handle = loop.call_later(math.nan, calls.append, "nan")
    assert math.isnan(handle.when())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["nan"]


def test_infinite_delay_never_fires(loop):
    calls = []
    loop.call_later(math.inf, calls.append, "inf")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == []


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_none_time_is_refused_with_asyncio_message(loop, method):
    expected = "delay must not be None" if method == "call_later" else "when cannot be None"
    if sys.version_info < (3, 11):
        # 3.10 has no None check: the arithmetic on the time fails (asyncio
        # 3.10's call_at only when the timer is due; see the README).
        expected = r"unsupported operand type\(s\)"
    with pytest.raises(TypeError, match=expected):
        getattr(loop, method)(None, lambda: None)


def test_non_numeric_delay_raises_type_error(loop):
    with pytest.raises(TypeError, match="unsupported operand"):
        loop.call_later("soon", lambda: None)


def test_non_callable_is_refused(loop):
    with pytest.raises(TypeError, match=r"a callable object was expected by call_soon\(\), got 42"):
        loop.call_soon(42)
    with pytest.raises(TypeError, match=r"a callable object was expected by call_at\(\)"):
        loop.call_later(1, "nope")


def test_coroutine_is_refused(loop):
    async def coro():
        pass

    c = coro()
    try:
        with pytest.raises(TypeError, match=r"coroutines cannot be used with call_soon\(\)"):
            loop.call_soon(c)
    finally:
        c.close()
    loop.set_debug(True)
    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_soon\(\)"):
        loop.call_soon(coro)


def test_closed_loop_refuses_work(loop):
    loop.close()
    assert loop.is_closed()
    for call in (
        lambda: loop.call_soon(print),
        lambda: loop.call_later(1, print),
        lambda: loop.call_soon_threadsafe(print),
        lambda: loop.run_forever(),
    ):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()
    loop.close()  # closing twice is allowed


def test_run_forever_while_running_is_refused(loop):
    errors = []

    def reenter():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(reenter)
    loop.run_forever()
    assert errors == ["This event loop is already running"]


def test_running_another_loop_in_the_same_thread_is_refused(loop):
    other = ferroloop.new_event_loop()
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        try:
            other.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        coro.close()
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    other.close()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_close_running_loop_is_refused(loop):
    errors = []

    def close_me():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(close_me)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    woke = []

    def from_thread():
        time.sleep(0.05)
        loop.call_soon_threadsafe(lambda: (woke.append(time.monotonic()), loop.stop()))

    # Without the wakeup the loop would sleep for 10 s on this timer.
    guard = loop.call_later(10, loop.stop)
    thread = threading.Thread(target=from_thread)
    started = time.monotonic()
    thread.start()
    loop.run_forever()
    thread.join()
    guard.cancel()
    assert woke and woke[0] - started < 2


def test_debug_mode_refuses_calls_from_other_threads(loop):
    loop.set_debug(True)
    errors = []

    def other_thread():
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=other_thread).start())
    loop.run_forever()
    assert errors == ["Non-thread-safe operation invoked on an event loop other than the current one"]


def test_debug_mode_records_where_handles_were_created(loop):
    loop.set_debug(True)
    handle = loop.call_soon(print)
    frame = handle._source_traceback[-1]
    assert frame.name == "test_debug_mode_records_where_handles_were_created"
    assert "created at" in repr(handle) and __file__ in repr(handle)
    handle.cancel()


def test_debug_mode_logs_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.03)

    loop.call_soon(slow)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Executing <Handle") and "slow" in m and "took" in m for m in messages), messages


def test_slow_task_step_is_attributed_to_task_and_coroutine(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow_step():
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(loop.create_task(slow_step(), name="sluggish"))
    [message] = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert message.startswith("Executing <Task")
    definition_line = slow_step.__code__.co_firstlineno
    assert f"(task 'sluggish', coroutine {slow_step.__qualname__}() defined at {__file__}:{definition_line})" in message


def test_exception_in_callback_goes_to_the_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))

    def boom():
        raise ValueError("boom")

    handle = loop.call_soon(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [(seen_loop, ctx)] = contexts
    assert seen_loop is loop
    assert ctx["message"].startswith("Exception in callback ") and "boom" in ctx["message"]
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["exception"].__traceback__ is not None
    assert ctx["handle"] is handle


def failing_callback(value):
    raise ValueError(value)


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_a_failing_callback_is_reported_with_asyncios_message(debug):
    """The message names the callback as asyncio's Handle does: with its
    arguments, which 3.13+ shows in debug mode only."""
    messages = []
    for factory in (asyncio.new_event_loop, ferroloop.new_event_loop):
        lp = factory()
        try:
            lp.set_debug(debug)
            seen = []
            lp.set_exception_handler(lambda _lp, ctx: seen.append(ctx["message"]))
            lp.call_soon(failing_callback, 42)
            lp.call_soon(lp.stop)
            lp.run_forever()
            messages.append(seen)
        finally:
            lp.close()
    assert messages[1] == messages[0]
    shows_args = debug or sys.version_info < (3, 13)
    assert messages[0][0].startswith("Exception in callback failing_callback(" + ("42)" if shows_args else ")"))


def test_default_exception_handler_logs_to_asyncio_logger(loop, caplog):
    def boom():
        raise ValueError("logged")

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("Exception in callback")
    assert record.exc_info[0] is ValueError


def test_keyboard_interrupt_escapes_and_keeps_pending_callbacks(loop):
    calls = []

    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(calls.append, 1)
    loop.call_soon(interrupt)
    loop.call_soon(calls.append, 2)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert calls == [1]
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2]


def test_set_exception_handler_requires_callable(loop):
    with pytest.raises(TypeError, match="A callable object or None is expected"):
        loop.set_exception_handler(42)


def test_handle_repr_names_the_callback(loop):
    def my_callback():
        pass

    handle = loop.call_soon(my_callback)
    assert repr(handle).startswith("<Handle ") and "my_callback" in repr(handle)
    timer = loop.call_later(5, my_callback)
    assert repr(timer).startswith("<TimerHandle when=") and "my_callback" in repr(timer)
    timer.cancel()
    assert repr(timer).startswith("<TimerHandle cancelled when=")


def test_watchdog_activity_counter_is_readable_from_another_thread(loop):
    samples = []

    def blocker():
        time.sleep(0.2)

    def sampler():
        time.sleep(0.05)
        samples.append(loop._activity())
        time.sleep(0.05)
        samples.append(loop._activity())

    thread = threading.Thread(target=sampler)
    loop.call_soon(thread.start)
    loop.call_soon(blocker)
    loop.call_soon(loop.stop)
    loop.run_forever()
    thread.join()
    (phase1, count1, _), (phase2, count2, _) = samples
    # Both samples land inside blocker(): same callback, phase "running".
    assert phase1 == phase2 == 2
    assert count1 == count2


def test_run_once_runs_one_iteration_and_can_be_wrapped(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop._run_once()
    assert calls == [1]

    # As with asyncio's BaseEventLoop, wrapping _run_once on the instance
    # sees every iteration of run_forever.
    original = loop._run_once
    iterations = []

    def counting_run_once():
        iterations.append(loop.time())
        original()

    loop._run_once = counting_run_once

    async def sleeps():
        for delay in (1e-2, 1e-4, 1e-6):
            await asyncio.sleep(delay)

    loop.run_until_complete(sleeps())
    assert 4 <= len(iterations) <= 20


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lp: lp.call_soon(), r"call_soon\(\) missing 1 required positional argument: 'callback'"),
        (lambda lp: lp.call_later(1), r"call_later\(\) missing 1 required positional argument: 'callback'"),
        (lambda lp: lp.call_at(), r"call_at\(\) missing 2 required positional arguments: 'when' and 'callback'"),
        (lambda lp: lp.call_soon(print, bogus=1), r"call_soon\(\) got an unexpected keyword argument 'bogus'"),
        (lambda lp: lp.call_later(1, print, delay=2), r"call_later\(\) got multiple values for argument 'delay'"),
    ],
)
def test_scheduling_argument_errors_match_python(loop, call, message):
    with pytest.raises(TypeError, match=message):
        call(loop)


def test_scheduling_parameters_can_be_passed_by_keyword(loop):
    calls = []
    loop.call_later(delay=0, callback=calls.append, context=None).cancel()
    loop.call_at(when=loop.time(), callback=lambda: calls.append("at"))
    loop.call_later(0.001, calls.append, "later")
    loop.call_soon(callback=lambda: calls.append("soon"))
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == ["soon", "at", "later"]


def test_exception_handler_context_follows_asyncio_version(loop):
    """From 3.12 on, asyncio runs a custom exception handler in the failing
    callback's context (gh-96704); 3.10 and 3.11 run it in the loop's."""
    name = contextvars.ContextVar("name", default="loop")
    seen = []
    loop.set_exception_handler(lambda lp, context: seen.append(name.get()))

    def callback():
        name.set("callback")
        raise ZeroDivisionError

    loop.call_soon(callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    import sys

    assert seen == (["callback"] if sys.version_info >= (3, 12) else ["loop"])
