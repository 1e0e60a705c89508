"""Reports of the stall watchdog (the sampling runs natively: src/diagnostics/watchdog.rs).

The native watchdog thread calls a ``StallReporter`` while a callback is
still stalling the loop, and again once it returns. The reporter runs on the
watchdog thread, so it reads the loop thread's state from the outside: the
stack through ``sys._current_frames()`` and the running task through
``asyncio.current_task(loop)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import traceback
import types
import weakref
from typing import Any, Callable, Literal, Optional, TypedDict, cast

from . import _culprit

logger = logging.getLogger("ferroloop")


class ProfileEntry(TypedDict):
    """One line of a stall's profile (``StallRecord["profile"]``)."""

    function: str
    """The innermost function of the program's own code in these samples
    (or the innermost function, when no frame was the program's)."""
    filename: str
    lineno: int
    innermost: str
    """The innermost frame overall, ``function() at file:line``: the library
    code the program's line called into, or the same line."""
    blocking_kind: Optional[str]
    """What that frame blocks in, as ``StallRecord["blocking_kind"]``."""
    share: float
    """Share of the sampled stall time spent here, 0 to 1."""
    samples: int
    """Samples taken here."""


class StallRecord(TypedDict):
    """A stall watchdog report: what ``Loop.enable_watchdog``'s callback
    receives, and ``Loop.diagnostics()["stall"]``.

    Each stall gives two records: ``"stall"`` once the callback has run for
    the threshold, while it still runs, and ``"stall_end"`` when it returns,
    which repeats the first record's keys with the total duration and the
    stall's profile.
    """

    event: Literal["stall", "stall_end"]
    """``"stall"`` while the callback still runs, ``"stall_end"`` after."""
    duration: float
    """Seconds the callback had run when reported (its total at the end)."""
    threshold: float
    """The watchdog's threshold in seconds."""
    task: Optional[str]
    """Name of the task whose step stalls, None for a plain callback."""
    coroutine: Optional[str]
    """Qualified name of that task's coroutine."""
    coroutine_location: Optional[str]
    """``file:line`` where that coroutine is suspended or running."""
    culprit: Optional[tuple[str, int, str]]
    """``(filename, lineno, function)`` of the innermost frame of the
    program's own code (see ``ferroloop.set_own_code``), or of the innermost
    frame when none is the program's."""
    entry_point: Optional[tuple[str, int, str]]
    """``(filename, lineno, function)`` of the callback's outermost frame:
    the framework's coroutine or callback the loop called."""
    blocking_kind: Optional[str]
    """What the innermost frame blocks in: ``"sleep"``, ``"dns"``,
    ``"socket"``, ``"file"``, ``"subprocess"``, ``"lock"``, ``"http"``, or
    None (CPU work, or a call not recognised). At the end, that of the
    profile's first entry."""
    stack: list[tuple[str, Optional[int], str, Optional[str]]]
    """The loop thread's stack from the callback down, most recent call
    last: ``(filename, lineno, function, source line)``."""
    thread_id: Optional[int]
    """``threading.get_ident()`` of the loop's thread."""
    reported_at: float
    """When the record was made, on ``time.monotonic()``'s clock."""
    samples: int
    """Stack samples taken of the stall so far."""
    profile: list[ProfileEntry]
    """Where the stall's time went, most first (at most 10 entries; empty
    in the ``"stall"`` record)."""


# What the callback returns is ignored.
StallCallback = Callable[[StallRecord], object]

ENV_VARIABLE = "FERROLOOP_WATCHDOG"
TRACK_TASKS_VARIABLE = "FERROLOOP_TRACK_TASKS"

_LOOP_FILE = os.path.join(os.path.dirname(__file__), "_loop.py")


def threshold_from_environment() -> Optional[float]:
    """``FERROLOOP_WATCHDOG=<milliseconds>`` as seconds, or None if unset."""
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if not value:
        return None
    try:
        milliseconds = float(value)
    except ValueError:
        raise ValueError(f"{ENV_VARIABLE} must be a number of milliseconds, got {value!r}") from None
    if not milliseconds > 0:
        raise ValueError(f"{ENV_VARIABLE} must be a positive number of milliseconds, got {value!r}")
    return milliseconds / 1000


def track_tasks_from_environment() -> bool:
    """Task creation sites are tracked with the watchdog unless
    ``FERROLOOP_TRACK_TASKS=0``."""
    return os.environ.get(TRACK_TASKS_VARIABLE, "1").strip() != "0"


def _callback_frames(frame: Optional[types.FrameType]) -> list[types.FrameType]:
    """The loop thread's frames from the callback down, innermost first: the
    frames above it (the program's asyncio.run, our run_forever) only say
    "the loop runs"."""
    frames = _culprit.frames_of(frame)
    for index, candidate in enumerate(frames):
        if candidate.f_code.co_filename == _LOOP_FILE and candidate.f_code.co_name in ("run_forever", "_run_once"):
            return frames[:index]
    return frames


def _coroutine_location(coro: Any) -> Optional[str]:
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    if code is None:
        return None
    line = frame.f_lineno if frame is not None else code.co_firstlineno
    return f"{code.co_filename}:{line}"


def _loop_thread_frames(loop: asyncio.AbstractEventLoop) -> tuple[Optional[int], list[types.FrameType]]:
    thread_id: Optional[int] = getattr(loop, "_thread_id", None)
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return thread_id, _callback_frames(frame)


def describe_stall(
    loop: asyncio.AbstractEventLoop,
    seconds: float,
    threshold: float,
    captured: Optional[tuple[Optional[int], list[types.FrameType]]] = None,
) -> StallRecord:
    """A ``"stall"`` record of what the loop thread runs right now (or of
    ``captured``, its thread id and frames as ``_loop_thread_frames`` gives)."""
    thread_id, frames = captured if captured is not None else _loop_thread_frames(loop)
    stack = traceback.StackSummary.extract(((f, f.f_lineno) for f in reversed(frames)), lookup_lines=True)
    task = asyncio.current_task(loop)
    coro = task.get_coro() if task is not None else None
    own = _culprit.innermost_own(frames)
    culprit = own or (frames[0] if frames else None)
    return {
        "event": "stall",
        "duration": seconds,
        "threshold": threshold,
        "task": task.get_name() if task is not None else None,
        "coroutine": getattr(coro, "__qualname__", None) if coro is not None else None,
        "coroutine_location": _coroutine_location(coro) if coro is not None else None,
        "culprit": _culprit.site_of(culprit) if culprit is not None else None,
        "entry_point": _culprit.site_of(frames[-1]) if frames else None,
        "blocking_kind": _culprit.blocking_kind(frames, own),
        "stack": [(f.filename, f.lineno, f.name, f.line) for f in stack],
        "thread_id": thread_id,
        "reported_at": time.monotonic(),
        "samples": 1,
        "profile": [],
    }


# (culprit site, innermost site, blocking kind)
_SampleKey = tuple[_culprit.Site, _culprit.Site, Optional[str]]
_PROFILE_ENTRIES = 10


class StallProfile:
    """Where one stall's time goes: samples of the loop thread's stack, each
    weighted by the time since the previous one."""

    def __init__(self) -> None:
        self.samples = 0
        self._weights: dict[_SampleKey, list[float]] = {}
        self._sampled_up_to = 0.0

    def add(self, frames: list[types.FrameType], stalled_for: float) -> Optional[str]:
        """Counts the stack (innermost first) as running since the previous
        sample; returns its blocking kind."""
        if not frames:
            return None
        own = _culprit.innermost_own(frames)
        kind = _culprit.blocking_kind(frames, own)
        key = (_culprit.site_of(own or frames[0]), _culprit.site_of(frames[0]), kind)
        weight = max(stalled_for - self._sampled_up_to, 0.0)
        self._sampled_up_to = max(stalled_for, self._sampled_up_to)
        entry = self._weights.setdefault(key, [0.0, 0])
        entry[0] += weight
        entry[1] += 1
        self.samples += 1
        return kind

    def entries(self) -> list[ProfileEntry]:
        total = sum(weight for weight, _count in self._weights.values())
        ranked = sorted(self._weights.items(), key=lambda item: -item[1][0])[:_PROFILE_ENTRIES]
        return [
            {
                "function": own[2],
                "filename": own[0],
                "lineno": own[1],
                "innermost": f"{inner[2]}() at {inner[0]}:{inner[1]}",
                "blocking_kind": kind,
                "share": weight / total if total > 0 else 0.0,
                "samples": int(count),
            }
            for (own, inner, kind), (weight, count) in ranked
        ]


class StallReporter:
    """Turns the watchdog's events into records, log lines and callbacks."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        callback: Optional[StallCallback],
        track_tasks: bool = True,
    ) -> None:
        self._loop_ref = weakref.ref(loop)
        self.threshold = threshold
        self.callback = callback
        self.track_tasks = track_tasks
        self.stalls = 0
        self._stall: Optional[StallRecord] = None
        self._profile: Optional[StallProfile] = None

    @property
    def current_stall(self) -> Optional[StallRecord]:
        """The stall being reported right now, if any (for the live view)."""
        return self._stall

    def __call__(self, event: str, seconds: float) -> None:
        loop = self._loop_ref()
        if loop is None:
            return
        if event == "sample":
            self._sample(loop, seconds)
            return
        if event == "stall":
            captured = _loop_thread_frames(loop)
            record = describe_stall(loop, seconds, self.threshold, captured)
            self._profile = StallProfile()
            self._profile.add(captured[1], seconds)
            self._stall = record
            self.stalls += 1
        else:
            # The stall's record, with the end's event, duration, time and
            # profile (the stall was described first, unless that failed).
            profile = self._profile.entries() if self._profile is not None else []
            samples = self._profile.samples if self._profile is not None else 0
            record = cast(
                StallRecord,
                dict(
                    self._stall or {},
                    event="stall_end",
                    duration=seconds,
                    reported_at=time.monotonic(),
                    samples=samples,
                    profile=profile,
                ),
            )
            if profile:
                record["blocking_kind"] = profile[0]["blocking_kind"]
            self._stall = None
            self._profile = None
        logger.warning("%s", format_record(record))
        if self.callback is not None:
            self.callback(record)

    def _sample(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        if self._profile is None:
            return
        self._profile.add(_loop_thread_frames(loop)[1], seconds)
        stall = self._stall
        if stall is not None:
            self._stall = cast(StallRecord, dict(stall, samples=self._profile.samples))


def _site_text(site: Optional[tuple[str, int, str]]) -> str:
    return f"{site[2]}() at {site[0]}:{site[1]}" if site is not None else "?"


def format_record(record: StallRecord) -> str:
    """The log text of one watchdog record."""
    where = ""
    culprit = record.get("culprit")
    profile = record.get("profile") or []
    if record["event"] == "stall_end" and profile:
        top = profile[0]
        where = f", {top['share']:.0%} of it in {top['function']}() at {top['filename']}:{top['lineno']}"
        if top["blocking_kind"]:
            where += f" ({top['blocking_kind']})"
    elif culprit is not None:
        where = f" in {_site_text(culprit)}"
        if record.get("blocking_kind"):
            where += f" ({record['blocking_kind']})"
    if record.get("task") is not None:
        where += f"; task {record['task']!r}"
        if record.get("coroutine"):
            where += f" (coroutine {record['coroutine']}() at {record.get('coroutine_location')})"
    elif record.get("stack") and culprit is None:
        filename, lineno, name, _line = record["stack"][0]
        where = f" in callback {name}() at {filename}:{lineno}"
    elif record.get("entry_point") is not None and record.get("entry_point") != culprit:
        where += f"; callback {_site_text(record.get('entry_point'))}"
    if record["event"] == "stall_end":
        lines = [f"event loop stall ended after {record['duration']:.3f} s{where}"]
        if profile:
            lines.append(f"Profile of the stall ({record.get('samples', 0)} samples):")
            for entry in profile:
                kind = f" [{entry['blocking_kind']}]" if entry["blocking_kind"] else ""
                text = f"  {entry['share']:6.1%}  {entry['function']}() at {entry['filename']}:{entry['lineno']}{kind}"
                innermost = entry["innermost"]
                if not innermost.startswith(f"{entry['function']}() at {entry['filename']}:{entry['lineno']}"):
                    text += f" -> {innermost}"
                lines.append(text)
        return "\n".join(lines)
    lines = [f"event loop stalled: one callback has run for {record['duration']:.3f} s and is still running{where}"]
    if record.get("stack"):
        lines.append("Stack of the loop thread (most recent call last):")
        for filename, lineno, name, line in record["stack"]:
            lines.append(f'  File "{filename}", line {lineno}, in {name}')
            if line:
                lines.append(f"    {line}")
    return "\n".join(lines)
