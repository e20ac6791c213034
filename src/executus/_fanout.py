"""Fanout: run ``fn(item)`` for many items under a global cap and per-key caps.

Architecture (why it is shaped this way):

- **A bounded pool of worker tasks, not a task per item.** Each worker loops: take the
  next runnable item (one synchronous step, ``_Swarm._take``), await ``fn(item)``,
  record its ``Outcome``, repeat. The pool never exceeds ``max_concurrent`` workers, so
  the global cap holds by construction, and an item costs no task creation, no
  semaphore and no gather bookkeeping. Workers are spawned on demand (a worker that
  takes an item while more are runnable and nobody is idle spawns a helper), so a swarm
  of instant items runs on one or two tasks.
- **A read-ahead window.** Items are read lazily from the input (an iterable or an
  async iterable) into per-key queues; at most ``read_ahead`` items are read but not
  started at any time. Memory is bounded by the caps and the window, not by the input
  size (``fanout_iter``; ``fanout`` keeps one ``Outcome`` per item for its result).
- **Fair interleaving.** Keys that have a queued item and a free per-key slot wait in
  one round-robin ring; each start takes the ring's head and puts it back at the tail.
  A key with many items therefore takes turns with a key with few, and an item of a
  key that has a free slot never waits behind a key at its cap: no global slot stays
  idle while a runnable item is within the window.
- **Lanes.** A key mapped to a lane runs its items as jobs of that lane (with the
  swarm's priority and preemptibility). The item holds its fanout slot while it is
  queued or running in the lane, so the fanout caps still bound what the swarm has in
  flight, and the lane decides when each job runs.

Invariants (checked by the tests that record concurrency):

1. ``running <= max_concurrent`` and, per key, ``running[k] <= cap(k)`` at all times.
2. ``queued <= read_ahead`` (items read but not started).
3. Every item read gets exactly one ``Outcome`` (ok, failed or cancelled), unless the
   caller abandons the swarm (cancels ``fanout`` or closes ``fanout_iter``).
4. When ``fanout``/``fanout_iter`` returns or raises, no task it started is left.
5. An async input the swarm stopped reading before it ended is closed (``aclose()``,
   as ``async for`` inside ``contextlib.aclosing`` would) by then too, once its reader
   has ended; an input that ended by itself (exhausted, or it raised) is left alone, and
   so is the input of a ``fanout_iter`` that the event loop closes (see ``_iterate``).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import sys
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Generic, Literal, Protocol, TextIO, TypeVar

from ._cleanup import end_job, wait_ended
from ._clock import Clock, SystemClock
from ._errors import JobPreempted
from ._job import JobHandle, JobState
from ._tasks import spawn

__all__ = [
    "DEFAULT_READ_AHEAD",
    "FanoutProgress",
    "KeyProgress",
    "LaneLike",
    "Outcome",
    "ProgressLine",
    "fanout",
    "fanout_iter",
    "grid",
]

T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C")

log = logging.getLogger("executus.fanout")

DEFAULT_READ_AHEAD = 256
"""How many items ``fanout`` reads ahead of the ones running, unless told otherwise."""

_CANCELLED_MSG = "cancelled: the swarm stopped before this item finished"

# A worker (or the reader) lets the event loop run at least once per this many items, in
# case none of them suspended.
_YIELD_EVERY = 256


class LaneLike(Protocol):
    """The part of a lane's interface that fanout uses (``Lane`` and ``RedisLane``)."""

    async def submit(
        self,
        fn: Callable[[], Awaitable[Any]],
        *,
        key: str | None = ...,
        priority: int = ...,
        preemptible: bool = ...,
    ) -> JobHandle[Any]:
        """Submit a job and return its handle."""
        ...


# -- outcomes ------------------------------------------------------------------------------


class Outcome(Generic[T, R]):
    """What happened to one item of a swarm.

    Attributes are read-only by convention (the class is built for speed, one per item).

    Attributes:
        index: the item's position in the input (0-based).
        item: the item itself (for ``grid``, the ``(row, col)`` pair).
        key: the item's key (``key(item)``; None when no key function was given).
        ok: True when ``fn`` returned a value.
        value: what ``fn`` returned, or None.
        error: the exception ``fn`` raised; ``asyncio.CancelledError`` for an item the
            swarm cancelled (``fail_fast``); ``JobPreempted`` for an item preempted in
            its lane with ``on_preempt="report"``; else None.
        preemptions: how many times the item was preempted and run again.

    Example::

        for o in await fanout(urls, fetch, max_concurrent=8):
            print(o.item, o.value if o.ok else f"failed: {o.error!r}", f"{o.run:.2f}s")
    """

    __slots__ = (
        "_t_end",
        "_t_read",
        "_t_start",
        "_wall",
        "error",
        "index",
        "item",
        "key",
        "ok",
        "preemptions",
        "value",
    )

    def __init__(
        self,
        index: int,
        item: T,
        key: Hashable,
        ok: bool,
        value: R | None,
        error: BaseException | None,
        t_read: float,
        t_start: float | None,
        t_end: float,
        wall: float,
        preemptions: int = 0,
    ) -> None:
        self.index = index
        self.item = item
        self.key = key
        self.ok = ok
        self.value = value
        self.error = error
        self.preemptions = preemptions
        self._t_read = t_read
        self._t_start = t_start
        self._t_end = t_end
        self._wall = wall  # wall clock minus monotonic clock, read once per swarm

    @property
    def cancelled(self) -> bool:
        """True when the swarm cancelled the item (fail-fast) before it finished."""
        return isinstance(self.error, asyncio.CancelledError)

    @property
    def wait(self) -> float:
        """Seconds from being read to starting (to ending, if it never started)."""
        start = self._t_end if self._t_start is None else self._t_start
        return max(0.0, start - self._t_read)

    @property
    def run(self) -> float:
        """Seconds from its (last) start to its end; 0.0 if it never started."""
        if self._t_start is None:
            return 0.0
        return max(0.0, self._t_end - self._t_start)

    @property
    def started_at(self) -> datetime | None:
        """When the item (last) started, aware UTC; None if it never started."""
        if self._t_start is None:
            return None
        return datetime.fromtimestamp(self._t_start + self._wall, UTC)

    @property
    def finished_at(self) -> datetime:
        """When the item ended, aware UTC."""
        return datetime.fromtimestamp(self._t_end + self._wall, UTC)

    def result(self) -> R:
        """The item's value, or raise its error.

        Raises:
            BaseException: the item's ``error`` (the same object).
        """
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        if self.ok:
            what = f"ok value={self.value!r:.60}"
        elif self.cancelled:
            what = "cancelled"
        else:
            what = f"failed error={self.error!r:.60}"
        return f"<Outcome #{self.index} key={self.key!r} {what}>"


# -- progress ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyProgress:
    """Counts for one key of a swarm.

    Attributes:
        done: items of this key that ended (in any way).
        failed: items that ended with an error (cancellations not included).
        cancelled: items the swarm cancelled.
        running: items holding a slot now (for a lane key: queued or running in the lane).
        queued: items read and waiting for a slot.
    """

    done: int
    failed: int
    cancelled: int
    running: int
    queued: int


@dataclass(frozen=True, slots=True)
class FanoutProgress:
    """A snapshot of a swarm's progress, handed to the ``progress`` callback.

    Attributes:
        done: items that ended (succeeded, failed or cancelled).
        succeeded: items whose ``fn`` returned a value.
        failed: items that ended with an error (cancellations not included).
        cancelled: items the swarm cancelled.
        running: items holding a slot now.
        queued: items read from the input and waiting for a slot.
        total: how many items there are, when the input has a length; else None.
        elapsed: seconds since the swarm started.
        eta: estimated seconds until the swarm ends (needs ``total`` and one finished
            item; else None).
        keys: per-key counts, by key.
        finished: True on the last report of the swarm.
    """

    done: int
    succeeded: int
    failed: int
    cancelled: int
    running: int
    queued: int
    total: int | None
    elapsed: float
    eta: float | None
    keys: Mapping[Hashable, KeyProgress] = field(default_factory=dict)
    finished: bool = False


def _fmt_seconds(s: float) -> str:
    """A duration for a progress line: ``"9.5s"``, ``"4m05s"``, ``"2h07m"``.

    The value is rounded (half up) once, to the last digit of the unit it is shown in,
    and the unit is chosen after rounding: 59.96 s reads ``"1m00s"`` (not ``"60.0s"``),
    3599.6 s ``"1h00m"`` (not ``"60m00s"``).
    """
    if not math.isfinite(s):
        return "?"
    tenths = math.floor(s * 10 + 0.5)
    if tenths < 600:
        return f"{tenths / 10:.1f}s"
    secs = math.floor(s + 0.5)
    if secs < 3600:
        m, sec = divmod(secs, 60)
        return f"{m}m{sec:02d}s"
    h, m = divmod(math.floor(s / 60 + 0.5), 60)
    return f"{h}h{m:02d}m"


class ProgressLine:
    """A ``progress`` callback that draws one live line on a terminal.

    On a TTY it rewrites a single line (``\\r``) at each report and ends it with a
    newline on the final one; on anything else (a file, a pipe, CI logs) it writes only
    one plain summary line at the end. ``fanout(..., progress=True)`` uses
    ``ProgressLine()``.

    Args:
        stream: where to write; None means ``sys.stderr`` at the time of each report.
        label: the word that opens each line.

    Example::

        outcomes = await fanout(items, fn, max_concurrent=8, progress=ProgressLine(label="crawl"))
    """

    __slots__ = ("_label", "_stream", "_width")

    def __init__(self, stream: TextIO | None = None, *, label: str = "fanout") -> None:
        self._stream = stream
        self._label = label
        self._width = 0

    def _tty(self, stream: TextIO) -> bool:
        isatty = getattr(stream, "isatty", None)
        try:
            return bool(isatty()) if isatty is not None else False
        except (ValueError, OSError):  # a closed or detached stream
            return False

    def format(self, p: FanoutProgress) -> str:
        """The text of one report (without line control characters)."""
        count = f"{p.done}/{p.total}" if p.total is not None else f"{p.done}"
        if p.finished:
            return (
                f"{self._label}: {count} done: {p.succeeded} succeeded, {p.failed} failed, "
                f"{p.cancelled} cancelled in {_fmt_seconds(p.elapsed)}"
            )
        parts = [f"{self._label}: {count} done"]
        if p.failed:
            parts.append(f"{p.failed} failed")
        parts.append(f"{p.running} running, {p.queued} queued")
        eta = "" if p.eta is None else f", ~{_fmt_seconds(p.eta)} left"
        parts.append(f"{_fmt_seconds(p.elapsed)}{eta}")
        return " | ".join(parts)

    def __call__(self, p: FanoutProgress) -> None:
        """Draw (TTY) or, at the end, print (otherwise) the report ``p``."""
        stream = sys.stderr if self._stream is None else self._stream
        if self._tty(stream):
            text = self.format(p)
            pad = max(0, self._width - len(text))
            self._width = len(text)
            stream.write("\r" + text + " " * pad + ("\n" if p.finished else ""))
            stream.flush()
        elif p.finished:
            stream.write(self.format(p) + "\n")
            stream.flush()

    def __repr__(self) -> str:
        return f"ProgressLine(label={self._label!r})"


ProgressCallback = Callable[[FanoutProgress], object]


# -- the engine ----------------------------------------------------------------------------


class _LaneBudget:
    """The in-flight budget of one lane, shared by the keys it serves that have no
    ``per_key`` entry: together they keep at most the lane's ``max_concurrent`` jobs in
    it, read again as the lane learns its limit (a ``RedisLane`` adopts the stored one at
    its first call) or is resized. ``waiting``: those keys with items to start, out of
    the ring until the budget has room (in the order they ran out of it)."""

    __slots__ = ("cap", "lane", "running", "waiting")

    def __init__(self, lane: LaneLike, cap: int) -> None:
        self.lane = lane
        self.cap = cap
        self.running = 0
        self.waiting: deque[_KeyState] = deque()

    def follow(self) -> None:
        """Read the lane's limit again."""
        cap = _lane_limit(self.lane)
        if cap is not None:
            self.cap = cap


class _KeyState:
    """One key's queue and counters. ``in_ring``: it is in the round-robin ring, or
    waits in its lane budget's ``waiting`` for room. ``budget``: the lane budget the key
    counts against (a lane key without its own ``per_key`` entry), or None."""

    __slots__ = (
        "budget",
        "cancelled",
        "cap",
        "done",
        "failed",
        "in_ring",
        "key",
        "lane",
        "lane_key",
        "pending",
        "running",
    )

    def __init__(
        self,
        key: Hashable,
        cap: int | None,
        lane: LaneLike | None,
        budget: _LaneBudget | None = None,
    ) -> None:
        self.key = key
        self.cap = cap
        self.lane = lane
        self.budget = budget
        self.lane_key: str | None = key if key is None or isinstance(key, str) else str(key)
        self.pending: deque[tuple[int, Any, float, int]] = deque()
        self.running = 0
        self.in_ring = False
        self.done = 0
        self.failed = 0
        self.cancelled = 0


def _check_cap(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _is_async(fn: object) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one (not a class:
    calling a class makes an instance, whatever its instances' ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isclass(fn)
        and inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts
        )
    )


def _refuse_awaitable(what: str, fn: object, result: object) -> TypeError:
    """The error of a callable that must be plain but returned an awaitable (closed here,
    so it is not reported as never awaited)."""
    close = getattr(result, "close", None)
    if callable(close):
        close()
    return TypeError(
        f"{what} must be a plain (not async) callable, as it is called synchronously; "
        f"{fn!r} returned {result!r}"
    )


def _check_key(key: object) -> None:
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable or None, got {key!r}")
    if _is_async(key):  # its coroutine would be taken for the key
        raise TypeError(
            f"key must be a plain (not async) callable returning the item's key, got {key!r}"
        )


def _lane_limit(lane: object) -> int | None:
    """The slot limit ``lane`` reports now (``max_concurrent``), or None."""
    n = getattr(lane, "max_concurrent", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    return None


def _is_lane(obj: object) -> bool:
    return callable(getattr(obj, "submit", None))


class _Swarm(Generic[T, R]):
    """One fanout run: the window, the ring, the workers and the results."""

    def __init__(
        self,
        items: Iterable[T] | AsyncIterable[T],
        fn: Callable[[T], Awaitable[R]],
        *,
        key: Callable[[T], Hashable] | None,
        max_concurrent: int | None,
        per_key: int | Mapping[Hashable, int] | None,
        lanes: Mapping[Hashable, LaneLike] | LaneLike | None,
        fail_fast: bool,
        progress: ProgressCallback | bool | None,
        progress_interval: float,
        read_ahead: int | None,
        lane_priority: int,
        lane_preemptible: bool,
        on_preempt: str,
        clock: Clock | None,
        collect: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be a callable returning an awaitable, got {fn!r}")
        _check_key(key)
        self._fn = fn
        self._key = key
        self._cap = None if max_concurrent is None else _check_cap("max_concurrent", max_concurrent)
        self._default_cap: int | None = None
        self._caps: Mapping[Hashable, int] = {}
        if isinstance(per_key, Mapping):
            self._caps = {k: _check_cap(f"per_key[{k!r}]", v) for k, v in per_key.items()}
        elif per_key is not None:
            self._default_cap = _check_cap("per_key", per_key)
        self._lane_all: LaneLike | None = None
        self._lanes: Mapping[Hashable, LaneLike] = {}
        if lanes is not None:
            if _is_lane(lanes):
                self._lane_all = lanes  # type: ignore[assignment]
            elif isinstance(lanes, Mapping):
                for k, lane in lanes.items():
                    if not _is_lane(lane):
                        raise TypeError(f"lanes[{k!r}] must be a lane, got {lane!r}")
                self._lanes = lanes
            else:
                raise TypeError(f"lanes must be a lane or a mapping of key to lane, got {lanes!r}")
        if not isinstance(fail_fast, bool):
            raise TypeError(f"fail_fast must be a bool, got {fail_fast!r}")
        self._fail_fast = fail_fast
        self._read_ahead = (
            DEFAULT_READ_AHEAD if read_ahead is None else _check_cap("read_ahead", read_ahead)
        )
        if isinstance(lane_priority, bool) or not isinstance(lane_priority, int):
            raise TypeError(f"lane_priority must be an int, got {lane_priority!r}")
        self._lane_priority = lane_priority
        if not isinstance(lane_preemptible, bool):
            raise TypeError(f"lane_preemptible must be a bool, got {lane_preemptible!r}")
        self._lane_preemptible = lane_preemptible
        if on_preempt not in ("requeue", "report"):
            raise ValueError(f'on_preempt must be "requeue" or "report", got {on_preempt!r}')
        self._requeue = on_preempt == "requeue"
        if progress is True:
            progress = ProgressLine()
        elif progress is False:
            progress = None
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable, True or None, got {progress!r}")
        if _is_async(progress):
            raise TypeError(
                "progress must be a plain (not async) callable, as it is called "
                f"synchronously, got {progress!r}"
            )
        if isinstance(progress_interval, bool) or not isinstance(progress_interval, int | float):
            raise TypeError(f"progress_interval must be a number >= 0, got {progress_interval!r}")
        if not progress_interval >= 0:  # also refuses NaN
            raise ValueError(f"progress_interval must be >= 0, got {progress_interval!r}")
        self._progress: ProgressCallback | None = progress
        self._progress_interval = progress_interval
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must be a Clock (monotonic, time and call_later), got {clock!r}"
            )
        self._clock = SystemClock() if clock is None else clock
        self._mono = self._clock.monotonic
        self._wall = self._clock.time() - self._mono()

        # Input.
        self._total: int | None = None
        self._ait: AsyncIterator[T] | None = None
        self._it: Iterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self._ait = aiter(items)
        elif isinstance(items, Iterable):
            if isinstance(items, Sized):
                self._total = len(items)
            self._it = iter(items)
        else:
            raise TypeError(f"items must be an iterable or an async iterable, got {items!r}")
        self._index = 0
        self._exhausted = False  # nothing more will be read (the reader has ended)
        self._input_ended = False  # the async input ended by itself: no aclose() needed

        # Scheduling state.
        self._keys: dict[Hashable, _KeyState] = {}
        self._budgets: dict[int, _LaneBudget] = {}  # by id() of the lane
        self._keep_keys = self._progress is not None  # per-key counts outlive idle keys
        self._ring: deque[_KeyState] = deque()
        self._n_pending = 0
        self._running = 0
        self._n_workers = 0
        self._unstarted: set[asyncio.Task[None]] = set()  # workers before their first step
        self._idle: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # fail-fast, a fatal error, or the caller left
        self._fatal: BaseException | None = None
        self._space: asyncio.Future[None] | None = None  # the reader waits for room
        self._finished: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker_task: asyncio.Task[None] | None = None

        # Results.
        self._collect = collect
        self._results: list[Outcome[T, R] | None] = []
        self._out: deque[Outcome[T, R]] = deque()
        self._out_limit = max(self._read_ahead, self._cap or 0, 1)
        self._out_waiter: asyncio.Future[None] | None = None  # the consumer waits
        self._n_held = 0  # workers waiting for the consumer before they start an item
        self._out_space: asyncio.Future[None] | None = None  # workers wait
        self._done = 0
        self._failed = 0
        self._cancelled = 0
        self._t0 = self._mono()
        self._last_report = -1.0e18

    # -- keys and the ring (all synchronous) -------------------------------------------------

    def _key_state(self, k: Hashable) -> _KeyState:
        ks = self._keys.get(k)
        if ks is None:
            lane = self._lanes.get(k, self._lane_all)
            cap = self._caps.get(k, self._default_cap)
            budget = None
            if cap is None and lane is not None:
                # Lane keys without their own cap keep at most one job per lane slot in
                # flight between them, so interactive jobs are not queued behind a swarm
                # backlog.
                budget = self._budgets.get(id(lane))
                if budget is None:
                    limit = _lane_limit(lane)
                    if limit is not None:
                        budget = self._budgets[id(lane)] = _LaneBudget(lane, limit)
            ks = self._keys[k] = _KeyState(k, cap, lane, budget)
        return ks

    def _sync_lane_cap(self, ks: _KeyState) -> None:
        """Follow the lane's limit in a key's lane budget: a ``RedisLane`` knows the
        lane-wide limit only once it has talked to Redis, and any lane may be resized
        while the swarm runs. A raised limit puts waiting keys' items in reach."""
        budget = ks.budget
        if budget is None:
            return
        cap = budget.cap
        budget.follow()
        if budget.cap > cap and self._unpark(budget):
            self._more_hands()

    def _unpark(self, budget: _LaneBudget) -> int:
        """Put keys waiting for room in ``budget`` back in the ring, as many as it has
        room for; return how many."""
        waiting = budget.waiting
        moved = max(0, min(len(waiting), budget.cap - budget.running))
        for _ in range(moved):
            self._ring.append(waiting.popleft())  # (in_ring stays True)
        return moved

    def _read_one(self, item: T) -> None:
        """Put a freshly read item into its key's queue (or record its key error)."""
        index = self._index
        self._index = index + 1
        if self._collect:
            self._results.append(None)
        try:
            k = None if self._key is None else self._key(item)
            if k is not None and type(k) is not str and inspect.isawaitable(k):
                raise _refuse_awaitable("key", self._key, k)
            ks = self._key_state(k)
        # The key function failed: the item's own error. It runs synchronously, so a
        # CancelledError out of it is its own, not a cancel of this task.
        except (Exception, asyncio.CancelledError) as exc:
            now = self._mono()
            self._record(
                None, Outcome(index, item, None, False, None, exc, now, None, now, self._wall)
            )
            return
        ks.pending.append((index, item, self._mono(), 0))
        self._n_pending += 1
        if not ks.in_ring and (ks.cap is None or ks.running < ks.cap):
            ks.in_ring = True
            self._ring.append(ks)  # (``_take`` checks its lane budget)

    def _fill(self) -> None:
        """Read from a synchronous input until the window is full or it ends.

        Items whose key function fails never enter the window, so two more bounds stop
        a run of them: at most ``read_ahead`` items per call (the event loop is not held
        for a whole input of them), and for ``fanout_iter`` no reading while the
        consumer is behind (their outcomes wait for it like any other). The worker that
        finds nothing to start then yields or waits for the consumer (``_worker``).
        """
        it = self._it
        assert it is not None
        budget = self._read_ahead
        while self._n_pending < self._read_ahead and not self._stopping:
            if not budget or (not self._collect and len(self._out) >= self._out_limit):
                return
            budget -= 1
            try:
                item = next(it)
            except StopIteration:
                self._exhausted = True
                self._it = None
                if not self._n_pending:
                    self._wake_all()  # nothing left to start: let idle workers leave
                return
            self._read_one(item)

    def _take(self) -> tuple[_KeyState, int, Any, float, int] | None:
        """The next item to start (round robin over runnable keys), or None."""
        if self._stopping:
            return None
        ring = self._ring
        if not ring:
            if self._it is None:
                return None
            self._fill()
            if not ring:
                return None
        ks = ring.popleft()
        while (budget := ks.budget) is not None:
            budget.follow()  # a lane lowered since its last start or end counts now
            if budget.running < budget.cap:
                budget.running += 1
                break
            budget.waiting.append(ks)  # its lane has the swarm's share in flight
            if not ring:
                if self._it is not None:
                    self._fill()  # other keys' items may be next in the input
                if not ring:
                    return None
            ks = ring.popleft()
        entry = ks.pending.popleft()
        self._n_pending -= 1
        ks.running += 1
        self._running += 1
        if ks.pending and (ks.cap is None or ks.running < ks.cap):
            ring.append(ks)
        else:
            ks.in_ring = False
        if self._it is not None:
            try:
                self._fill()  # keep the window full, so other keys' items are in sight
            except BaseException:
                # The input (or a key function's KeyboardInterrupt) broke the swarm: this
                # item never started, so it goes back to waiting, not counted as running.
                ks.pending.appendleft(entry)
                self._n_pending += 1
                self._release(ks)
                raise
            if self._stopping:  # reading failed an item under fail_fast: drop this one too
                self._release(ks)
                self._record(ks, self._cancel_outcome(ks, entry[0], entry[1], entry[2], None, 0))
                return None
        if ring:
            self._more_hands()
        elif self._exhausted and not self._n_pending:
            self._wake_all()  # nothing left to start: let idle workers leave
        if self._space is not None and self._n_pending < self._read_ahead:
            space, self._space = self._space, None
            if not space.done():
                space.set_result(None)
        return ks, entry[0], entry[1], entry[2], entry[3]

    def _release(self, ks: _KeyState) -> None:
        """A slot of ``ks`` is free again."""
        ks.running -= 1
        self._running -= 1
        budget = ks.budget
        if budget is not None:
            budget.running -= 1
            budget.follow()
            # The worker releasing takes one; more room (a raised limit) wants more.
            if budget.waiting and not self._stopping and self._unpark(budget) > 1:
                self._more_hands()
        if ks.pending:
            if not ks.in_ring and (ks.cap is None or ks.running < ks.cap):
                ks.in_ring = True
                self._ring.append(ks)
        elif not ks.running and not self._keep_keys:
            del self._keys[ks.key]

    def _more_hands(self) -> None:
        """Runnable items are waiting: wake an idle worker, or start workers if allowed.

        Workers are started for every queued item at once (not one per loop step), up
        to the global cap: a burst of slow items gets all its slots in one step. Some
        queued items may belong to keys at their cap; the extra workers then idle, which
        the cap bounds.
        """
        idle = self._idle
        while idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        if self._stopping:
            return
        want = self._n_pending - len(self._unstarted) - self._n_held
        if self._cap is not None:
            want = min(want, self._cap - self._n_workers)
        for _ in range(want):
            self._spawn_worker()

    def _wake_all(self) -> None:
        idle = self._idle
        while idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)

    def _spawn(
        self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any
    ) -> asyncio.Task[None]:
        assert self._loop is not None
        task = spawn(self._loop, fn, *args)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_worker(self) -> None:
        # Counted from now, not from its first step, so the swarm is never seen as
        # finished while a worker is about to start; the done callback runs even if the
        # task is cancelled before its first step.
        self._n_workers += 1
        task = self._spawn(self._worker)
        self._unstarted.add(task)
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._n_workers -= 1
        self._unstarted.discard(task)  # in case it was cancelled before its first step
        self._check_finished()

    # -- outcomes ----------------------------------------------------------------------------

    def _record(self, ks: _KeyState | None, outcome: Outcome[T, R]) -> None:
        """Store an outcome; count it; start fail-fast on a first error."""
        self._done += 1
        if outcome.ok:
            pass
        elif isinstance(outcome.error, asyncio.CancelledError):
            self._cancelled += 1
            if ks is not None:
                ks.cancelled += 1
        else:
            self._failed += 1
            if ks is not None:
                ks.failed += 1
        if ks is not None:
            ks.done += 1
        if self._collect:
            self._results[outcome.index] = outcome
        else:
            self._out.append(outcome)
            waiter = self._out_waiter
            if waiter is not None:
                self._out_waiter = None
                if not waiter.done():
                    waiter.set_result(None)
        if self._progress is not None:
            self._report()
        if (
            self._fail_fast
            and not outcome.ok
            and not self._stopping
            and not isinstance(outcome.error, asyncio.CancelledError)
        ):
            self._stop()  # after storing: the error comes before the cancellations

    def _cancel_outcome(
        self,
        ks: _KeyState | None,
        index: int,
        item: T,
        t_read: float,
        t_start: float | None,
        pre: int,
    ) -> Outcome[T, R]:
        return Outcome(
            index,
            item,
            None if ks is None else ks.key,
            False,
            None,
            asyncio.CancelledError(_CANCELLED_MSG),
            t_read,
            t_start,
            self._mono(),
            self._wall,
            pre,
        )

    def _stop(self) -> None:
        """Fail fast: cancel what is queued or running, read nothing more."""
        self._stopping = True
        for ks in list(self._keys.values()):
            while ks.pending:
                index, item, t_read, pre = ks.pending.popleft()
                self._n_pending -= 1
                self._record(ks, self._cancel_outcome(ks, index, item, t_read, None, pre))
            ks.in_ring = False
        self._ring.clear()
        for budget in self._budgets.values():
            budget.waiting.clear()
        if self._collect and self._it is not None and self._total is not None:
            # A sized input (a list, a range...) gets one outcome per element, so the
            # result lines up with it; unread items are reported cancelled too.
            try:
                for item in self._it:
                    index = self._index
                    self._index += 1
                    self._results.append(None)
                    now = self._mono()
                    self._record(None, self._cancel_outcome(None, index, item, now, None, 0))
            except BaseException as exc:  # the input broke while being drained
                self._it = None
                self._fail(exc)
                return
        self._it = None
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:
                task.cancel()
        self._wake_all()

    def _fail(self, exc: BaseException) -> None:
        """The input or the machinery broke: stop everything and raise ``exc`` later."""
        if self._fatal is None:
            self._fatal = exc
        self._stopping = True
        self._ring.clear()
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:
                task.cancel()
        self._wake_all()

    # -- progress ----------------------------------------------------------------------------

    def snapshot(self, *, finished: bool = False) -> FanoutProgress:
        """The swarm's counts now."""
        elapsed = max(0.0, self._mono() - self._t0)
        eta: float | None = None
        if self._total is not None:
            if finished or self._done >= self._total:
                eta = 0.0
            elif self._done and elapsed > 0:
                eta = (self._total - self._done) * elapsed / self._done
        keys = {
            ks.key: KeyProgress(ks.done, ks.failed, ks.cancelled, ks.running, len(ks.pending))
            for ks in self._keys.values()
        }
        return FanoutProgress(
            done=self._done,
            succeeded=self._done - self._failed - self._cancelled,
            failed=self._failed,
            cancelled=self._cancelled,
            running=self._running,
            queued=self._n_pending,
            total=self._total,
            elapsed=elapsed,
            eta=eta,
            keys=MappingProxyType(keys),
            finished=finished,
        )

    def _report(self, *, force: bool = False, finished: bool = False) -> None:
        """Call the progress callback, at most once per ``progress_interval``."""
        cb = self._progress
        if cb is None:
            return
        now = self._mono()
        if not force and now - self._last_report < self._progress_interval:
            return
        self._last_report = now
        try:
            result = cb(self.snapshot(finished=finished))
            if result is not None and inspect.isawaitable(result):
                self._progress = None  # said once, not at every report
                raise _refuse_awaitable("progress", cb, result)
        # A broken display must not break the swarm. The callback runs synchronously, so
        # a CancelledError out of it is its own, not a cancel of this task.
        except (Exception, asyncio.CancelledError):
            log.exception("fanout progress callback %r failed", cb)
        # KeyboardInterrupt, SystemExit...: the program is asked to stop. Raised here it
        # would end whichever task reported (a worker, the ticker) and escape the event
        # loop with the swarm half running; instead the swarm stops and fanout raises it.
        except BaseException as exc:
            self._fail(exc)

    async def _ticker(self) -> None:
        """Report at the interval even while nothing ends (long items)."""
        interval = max(self._progress_interval, 0.01)
        while True:
            await asyncio.sleep(interval)
            self._report()

    # -- workers -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        self._unstarted.discard(asyncio.current_task())
        fn = self._fn
        mono = self._mono
        wall = self._wall
        loop = self._loop
        assert loop is not None
        streak = 0
        while True:
            if (
                not self._collect
                and len(self._out) + self._running >= self._out_limit
                and not self._stopping
            ):
                # The consumer is behind: start nothing (a worker just spawned included).
                await self._wait_out_space(starting=True)
            try:
                job = self._take()
            except BaseException as exc:  # the input iterator failed
                self._fail(exc)
                return
            if job is None:
                if self._stopping or (self._exhausted and not self._n_pending):
                    return
                if self._it is not None and self._n_pending < self._read_ahead:
                    # Reading paused with room in the window (see ``_fill``): let the
                    # loop run, or wait for the consumer, then read on.
                    if not self._collect and len(self._out) >= self._out_limit:
                        await self._wait_out_space()
                    else:
                        await asyncio.sleep(0)
                    continue
                fut = loop.create_future()
                self._idle.append(fut)
                await fut
                continue
            ks, index, item, t_read, pre = job
            if ks.lane is not None:
                await self._run_in_lane(ks, index, item, t_read, pre)
            else:
                t_start = mono()
                try:
                    value = await fn(item)
                except Exception as exc:
                    self._release(ks)
                    self._record(
                        ks,
                        Outcome(
                            index, item, ks.key, False, None, exc, t_read, t_start, mono(), wall
                        ),
                    )
                except asyncio.CancelledError as exc:
                    if self._item_cancelled(ks, index, item, t_read, t_start, pre, exc):
                        raise
                except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                    self._release(ks)
                    self._fail(exc)
                    return
                else:
                    self._release(ks)
                    self._record(
                        ks,
                        Outcome(
                            index, item, ks.key, True, value, None, t_read, t_start, mono(), wall
                        ),
                    )
            # Items that end without suspending (cached, instant) would otherwise run the
            # whole swarm in one step, starving every other task and deferring a cancel
            # or timeout of the caller until the input ends.
            streak += 1
            if streak >= _YIELD_EVERY:
                streak = 0
                await asyncio.sleep(0)

    def _item_cancelled(
        self,
        ks: _KeyState,
        index: int,
        item: T,
        t_read: float,
        t_start: float | None,
        pre: int,
        exc: asyncio.CancelledError,
    ) -> bool:
        """An item's run ended with ``CancelledError``: free its key's place and record
        it. True when this worker itself is being cancelled (the swarm stops, or its
        caller was cancelled): the caller re-raises. Otherwise ``fn`` or the lane raised
        it by itself, and the item ends with that error.
        """
        self._release(ks)
        if self._stopping and not self._fatal:
            self._record(ks, self._cancel_outcome(ks, index, item, t_read, t_start, pre))
        if _cancelling():
            return True
        if not self._stopping:
            self._record(
                ks,
                Outcome(
                    index, item, ks.key, False, None, exc, t_read, t_start, self._mono(), self._wall
                ),
            )
        return False

    async def _run_in_lane(
        self, ks: _KeyState, index: int, item: T, t_read: float, pre: int
    ) -> None:
        """Run one item as a job of its key's lane; requeue or report a preemption."""
        lane = ks.lane
        assert lane is not None
        fn = self._fn
        mono = self._mono
        started: list[float] = []

        def job() -> Awaitable[R]:
            started.append(mono())
            return fn(item)

        handle: JobHandle[R] | None = None
        try:
            handle = await lane.submit(
                job,
                key=ks.lane_key,
                priority=self._lane_priority,
                preemptible=self._lane_preemptible,
            )
            self._sync_lane_cap(ks)
            value = await handle
        except asyncio.CancelledError as exc:
            if handle is not None:
                if not handle.done():
                    await end_job(handle, log, "a stopping swarm")
                pre += handle.preemptions  # requeues inside the lane before the cancel
            t_start = started[-1] if started else None
            if self._item_cancelled(ks, index, item, t_read, t_start, pre, exc):
                raise
        except Exception as exc:
            if handle is not None:
                pre += handle.preemptions
            # Only the lane evicting this item's own job is a preemption; a JobPreempted
            # that fn raised (from another lane it uses) is an ordinary item error.
            if (
                isinstance(exc, JobPreempted)
                and handle is not None
                and handle.state is JobState.PREEMPTED
            ):
                pre += 1
                if self._requeue and not self._stopping:
                    # Back to the head of its key's queue (before the slot is released, so
                    # the key stays known): it runs again at the key's next turn.
                    ks.pending.appendleft((index, item, t_read, pre))
                    self._n_pending += 1
                    self._release(ks)
                    return
            self._release(ks)
            t_start = started[-1] if started else None
            self._record(
                ks,
                Outcome(
                    index, item, ks.key, False, None, exc, t_read, t_start, mono(), self._wall, pre
                ),
            )
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...
            self._release(ks)
            self._fail(exc)
        else:
            self._release(ks)
            t_start = started[-1] if started else None
            pre += handle.preemptions
            self._record(
                ks,
                Outcome(
                    index, item, ks.key, True, value, None, t_read, t_start, mono(), self._wall, pre
                ),
            )

    async def _wait_out_space(self, *, starting: bool = False) -> None:
        """Backpressure for ``fanout_iter``: wait while the consumer is behind, that is
        while the outcomes waiting for it reach the limit, counting, for a worker about
        to start an item (``starting``), the items running too (each an outcome to
        come): so they stay bounded however large the input and however many workers
        wait. A worker waiting so is not a free hand (``_more_hands``)."""
        assert self._loop is not None
        self._n_held += starting
        try:
            while (
                len(self._out) + (self._running if starting else 0) >= self._out_limit
                and not self._stopping
            ):
                if self._out_space is None or self._out_space.done():
                    self._out_space = self._loop.create_future()
                await self._out_space
        finally:
            self._n_held -= starting

    async def _reader(self) -> None:
        """Read an async input into the window, waiting while the window is full."""
        ait = self._ait
        assert ait is not None
        assert self._loop is not None
        streak = 0
        try:
            while not self._stopping:
                while self._n_pending >= self._read_ahead:
                    self._space = self._loop.create_future()
                    await self._space
                    streak = 0
                    if self._stopping:
                        return
                if not self._collect and len(self._out) >= self._out_limit:
                    # Outcomes of items whose key failed pile up here too: read on only
                    # as the consumer takes them.
                    await self._wait_out_space()
                    continue
                streak += 1
                if streak >= _YIELD_EVERY:
                    # An input that never suspends, read for items that all fail their
                    # key (they never fill the window), must not hold the loop.
                    streak = 0
                    await asyncio.sleep(0)
                    if self._stopping:
                        return
                try:
                    item = await anext(ait)
                except StopAsyncIteration:
                    self._input_ended = True
                    break
                except BaseException as exc:
                    # The input raised, so it is finished; unless what came out of it is
                    # this task's own cancellation passing through (aclose() closes it).
                    self._input_ended = not (
                        isinstance(exc, asyncio.CancelledError) and _cancelling()
                    )
                    raise
                if self._stopping:
                    return
                self._read_one(item)
                if self._ring:
                    self._more_hands()
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise  # the swarm stopped reading
            self._fail(exc)  # the input raised CancelledError by itself: an input error
            return
        except BaseException as exc:
            self._fail(exc)
            return
        finally:
            self._exhausted = True
            if not self._n_pending:
                self._wake_all()
            self._check_finished()

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        # The reader's own ``finally`` does this, unless it was cancelled before its first
        # step (a progress callback's KeyboardInterrupt in the first report stops the
        # swarm at once): then nothing more is read either.
        self._exhausted = True
        if not self._n_pending:
            self._wake_all()
        self._check_finished()

    def _check_finished(self) -> None:
        fin = self._finished
        if fin is None or fin.done():
            return
        reader_busy = self._ait is not None and not self._exhausted
        if self._n_workers == 0 and not reader_busy and (self._stopping or not self._n_pending):
            fin.set_result(None)

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader (async input) and the first worker."""
        self._loop = asyncio.get_running_loop()
        self._finished = self._loop.create_future()
        self._t0 = self._mono()
        if self._ait is not None:
            self._spawn(self._reader).add_done_callback(self._reader_done)
        else:
            self._spawn_worker()
        if self._progress is not None:
            self._report(force=True)
            self._ticker_task = self._spawn(self._ticker)

    async def wait_finished(self) -> None:
        assert self._finished is not None
        self._check_finished()
        await self._finished

    async def aclose(self, *, close_input: bool = True) -> None:
        """Cancel every task still running and wait until all have ended; then close an
        async input the swarm stopped reading before it ended (unless ``close_input`` is
        False: the input is then left to its owner).

        Cancelled while cleaning up: finish cleaning (passing the cancel on to what is
        still running), then raise ``CancelledError``.
        """
        self._stopping = True
        self._wake_all()
        if self._out_space is not None and not self._out_space.done():
            self._out_space.set_result(None)
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        cancelled_again = await wait_ended(pending)
        # The reader has ended, so the input is not running: it can be closed. Once only:
        # the flag is set before the first await. aclose() runs in a task of its own so
        # that a cancel of this task (asyncio.wait raising) is told apart from a
        # CancelledError that aclose() raises by itself; Task.cancelling() cannot tell,
        # as the caller of fanout may be cancelled already.
        ait = self._ait
        aclose = getattr(ait, "aclose", None)
        if close_input and ait is not None and not self._input_ended and aclose is not None:
            self._input_ended = True
            assert self._loop is not None
            closing = spawn(self._loop, self._close_input, ait, aclose)
            if await wait_ended({closing}):
                cancelled_again = True
        if cancelled_again:
            raise asyncio.CancelledError

    async def _close_input(self, ait: object, aclose: Callable[[], Awaitable[object]]) -> None:
        """Await the input's ``aclose()``; report what it raises instead of raising it.

        The swarm's own outcome (its results, or its fatal error) stays the outcome of
        ``fanout``: a failure to close the input is reported to the loop's exception
        handler, as asyncio does for async generators it fails to close at shutdown.
        """
        try:
            await aclose()
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise  # the caller was cancelled again: aclose() ended with that cancel
            self._report_close_error(ait, exc)  # aclose() raised it by itself
        except Exception as exc:
            self._report_close_error(ait, exc)

    def _report_close_error(self, ait: object, exc: BaseException) -> None:
        assert self._loop is not None
        self._loop.call_exception_handler(
            {
                "message": "fanout's async input raised an error in aclose()",
                "exception": exc,
                "input": ait,
            }
        )

    def finish_progress(self) -> None:
        if self._ticker_task is not None:
            self._ticker_task.cancel()
        self._report(force=True, finished=True)

    def results(self) -> list[Outcome[T, R]]:
        return self._results  # type: ignore[return-value]


def _cancelling() -> bool:
    """Whether the running task is being cancelled (not merely handed a
    ``CancelledError`` raised by the code it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _no_items() -> AsyncGenerator[None, None]:
    yield None  # never iterated: only the type of its aclose() awaitable is used


def _aclose_awaitable_type() -> type:
    """The type of an async generator's ``aclose()`` awaitable (``types`` does not name
    it). The sample is closed unused: Python 3.13 warns about one never awaited."""
    closing = _no_items().aclose()
    closing.close()
    return type(closing)


_ACLOSE_AWAITABLE = _aclose_awaitable_type()


def _closed_by_loop() -> bool:
    """Whether the running task is the event loop closing an async generator itself: the
    task runs the generator's ``aclose()`` awaitable, not code that awaits it. asyncio
    does that for a generator collected while suspended (its asyncgen finalizer) and in
    ``shutdown_asyncgens()``; a consumer's ``aclose()`` or ``contextlib.aclosing`` runs
    in the consumer's own task."""
    task = asyncio.current_task()
    return task is not None and type(task.get_coro()) is _ACLOSE_AWAITABLE


# -- public functions ----------------------------------------------------------------------


async def fanout(
    items: Iterable[T] | AsyncIterable[T],
    fn: Callable[[T], Awaitable[R]],
    *,
    key: Callable[[T], Hashable] | None = None,
    max_concurrent: int | None = None,
    per_key: int | Mapping[Hashable, int] | None = None,
    lanes: Mapping[Hashable, LaneLike] | LaneLike | None = None,
    fail_fast: bool = False,
    progress: ProgressCallback | bool | None = None,
    read_ahead: int | None = None,
    lane_priority: int = 0,
    lane_preemptible: bool = False,
    on_preempt: Literal["requeue", "report"] = "requeue",
    progress_interval: float = 0.1,
    clock: Clock | None = None,
) -> list[Outcome[T, R]]:
    """Run ``fn(item)`` for every item under a global cap and per-key caps.

    Items are read lazily (an iterator of a million items never becomes a million
    tasks); each key's items take turns with the other keys'. Errors in ``fn`` do not
    propagate: each item's ``Outcome`` holds its value or its error.

    Args:
        items: an iterable or an async iterable of items. An async input that the swarm
            stops reading before it ends (``fail_fast``, an error, the caller cancelled)
            is closed with its ``aclose()``, if it has one, before ``fanout`` returns or
            raises; an error from ``aclose()`` goes to the loop's exception handler.
        fn: called as ``fn(item)``; must return an awaitable (an ``async def``).
        key: ``key(item)`` gives the item's key (hashable); None puts every item under
            the key None.
        max_concurrent: at most this many items run at once overall; None for no global
            limit (every runnable item within the window starts at once).
        per_key: at most this many items of one key run at once: an int for every key,
            or a mapping from key to int. Keys missing from the mapping have no per-key
            limit, except lane keys (below). None: no per-key limits.
        lanes: a mapping from key to a ``Lane``/``RedisLane`` (or one lane for every
            key). Such a key's items run as jobs of its lane, submitted with
            ``priority=lane_priority`` and ``preemptible=lane_preemptible``; an item
            holds its fanout slot while its job is queued or running. The job's lane key
            is the item's key (``str(key)`` unless it is a str or None). The keys a
            lane serves without a ``per_key`` entry of their own keep at most the
            lane's ``max_concurrent`` jobs in it between them.
        fail_fast: on the first item that fails, cancel every item still queued or
            running (their outcomes are cancelled: ``error`` is a CancelledError) and
            stop reading the input. For a sized input (list, tuple, range...) the unread
            items are reported cancelled too (with key None: their key is not computed),
            so the result lines up with the input.
        progress: a callable receiving a ``FanoutProgress`` (at most once per
            ``progress_interval`` seconds, and always once at the end), or True for a
            live line on stderr (``ProgressLine``). It is called synchronously (so not
            an ``async def``) and must not block; its exceptions are logged and ignored,
            except ``KeyboardInterrupt`` and ``SystemExit``, which stop the swarm (as an
            input error does) and are raised by ``fanout``. The last report
            (``finished`` True) comes however the swarm ends: done, an error, a cancel.
        read_ahead: how many items may be read from the input but not yet started
            (default ``DEFAULT_READ_AHEAD``, 256). Bigger lets items of other keys fill
            slots that a key's cap leaves idle further ahead in the input; smaller
            holds less in memory.
        lane_priority: the priority of the swarm's lane jobs.
        lane_preemptible: whether higher-priority lane jobs may evict the swarm's.
        on_preempt: what happens to an item whose lane job is preempted (with a lane
            ``Preemption(requeue=False)``): ``"requeue"`` runs it again (first in its
            key's turn), ``"report"`` ends it with ``error`` = ``JobPreempted``. A lane
            with ``Preemption(requeue=True)`` requeues inside the lane instead.
        progress_interval: the minimum seconds between two progress reports.
        clock: the time source for timings and progress (default: the system clock).

    Returns:
        One ``Outcome`` per item read, in input order.

    Raises:
        TypeError: a wrong argument type (not callable ``fn``, a non-int cap, a
            non-bool flag, an ``async def`` ``key`` or ``progress``, a ``clock`` that is
            not a ``Clock``...).
        ValueError: a cap or ``read_ahead`` below 1, a negative ``progress_interval``,
            an unknown ``on_preempt``.
        Exception: whatever the input iterator raised (after cancelling the swarm).
        KeyboardInterrupt: (or ``SystemExit``) raised by ``fn``, ``key`` or the
            ``progress`` callback, after cancelling the swarm.
        asyncio.CancelledError: the caller was cancelled; every item was cancelled and
            no task is left running. A lane job that its lane fails to cancel (its
            backend unreachable) is logged (logger ``executus.fanout``) and left to end
            by itself; the ``CancelledError`` still propagates.

    Example::

        outcomes = await fanout(
            prompts, lambda p: llm.chat(p), key=lambda p: p.user,
            max_concurrent=16, per_key=2,
        )
        replies = [o.value for o in outcomes if o.ok]
    """
    swarm: _Swarm[T, R] = _Swarm(
        items,
        fn,
        key=key,
        max_concurrent=max_concurrent,
        per_key=per_key,
        lanes=lanes,
        fail_fast=fail_fast,
        progress=progress,
        progress_interval=progress_interval,
        read_ahead=read_ahead,
        lane_priority=lane_priority,
        lane_preemptible=lane_preemptible,
        on_preempt=on_preempt,
        clock=clock,
        collect=True,
    )
    swarm.start()
    try:
        await swarm.wait_finished()
    finally:
        try:
            await swarm.aclose()
        finally:
            swarm.finish_progress()  # the final report, however the swarm ended
    if swarm._fatal is not None:
        raise swarm._fatal
    return swarm.results()


def fanout_iter(
    items: Iterable[T] | AsyncIterable[T],
    fn: Callable[[T], Awaitable[R]],
    *,
    key: Callable[[T], Hashable] | None = None,
    max_concurrent: int | None = None,
    per_key: int | Mapping[Hashable, int] | None = None,
    lanes: Mapping[Hashable, LaneLike] | LaneLike | None = None,
    fail_fast: bool = False,
    progress: ProgressCallback | bool | None = None,
    read_ahead: int | None = None,
    lane_priority: int = 0,
    lane_preemptible: bool = False,
    on_preempt: Literal["requeue", "report"] = "requeue",
    progress_interval: float = 0.1,
    clock: Clock | None = None,
) -> AsyncGenerator[Outcome[T, R], None]:
    """Like ``fanout``, but yield each ``Outcome`` as soon as its item ends.

    The arguments are ``fanout``'s. Memory stays bounded whatever the input size: at
    most ``read_ahead`` items wait to start, ``max_concurrent`` run, workers start no
    item while the outcomes waiting to be consumed and the items running reach
    ``max(read_ahead, max_concurrent)`` (without ``max_concurrent``, at most
    ``read_ahead`` items run), and reading pauses while that many outcomes wait, the
    outcomes of items whose key fails included.
    With ``fail_fast``, unread items of a sized input are not reported (reading stops).

    Leaving the loop early (``break``, an exception) stops the swarm: its items are
    cancelled and its tasks end. Use ``contextlib.aclosing`` (or ``aclose()``) to have
    that happen at once rather than when the generator is collected; closed so, it also
    closes an async input not read to its end (as ``fanout`` does). A generator left to
    the garbage collector leaves its input to the input's owner: closing it from the
    event loop's finalizer could collide with the owner's own ``aclose()``.

    Yields:
        Outcomes in completion order (``outcome.index`` is the input position).

    Example::

        async with contextlib.aclosing(fanout_iter(urls, fetch, max_concurrent=8)) as it:
            async for o in it:
                print(o.index, o.ok)
    """
    swarm: _Swarm[T, R] = _Swarm(
        items,
        fn,
        key=key,
        max_concurrent=max_concurrent,
        per_key=per_key,
        lanes=lanes,
        fail_fast=fail_fast,
        progress=progress,
        progress_interval=progress_interval,
        read_ahead=read_ahead,
        lane_priority=lane_priority,
        lane_preemptible=lane_preemptible,
        on_preempt=on_preempt,
        clock=clock,
        collect=False,
    )
    return _iterate(swarm)


async def _iterate(swarm: _Swarm[T, R]) -> AsyncGenerator[Outcome[T, R], None]:
    swarm.start()
    out = swarm._out
    loop = asyncio.get_running_loop()
    try:
        while True:
            while out:
                outcome = out.popleft()
                space = swarm._out_space
                if space is not None and not space.done():
                    swarm._out_space = None
                    space.set_result(None)
                yield outcome
            fin = swarm._finished
            assert fin is not None
            swarm._check_finished()
            if fin.done():
                if out:
                    continue
                break
            waiter = loop.create_future()
            swarm._out_waiter = waiter
            done, _ = await asyncio.wait({waiter, fin}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                swarm._out_waiter = None
    finally:
        # A generator the consumer dropped without closing it is closed later by the
        # event loop, in a task of its own that runs alongside the consumer: the input
        # may be the consumer's (an async generator it holds and closes itself, e.g. with
        # contextlib.aclosing), and closing it from here then collides with that close
        # ("aclose(): asynchronous generator is already running"). So only a close by
        # the consumer closes the input; otherwise the swarm stops and leaves the input
        # to its owner, and an async generator nobody holds is closed by asyncio's own
        # finalizer when it is collected, as the dropped generator was.
        try:
            await swarm.aclose(close_input=not _closed_by_loop())
        finally:
            swarm.finish_progress()  # the final report, however the swarm ended
    if swarm._fatal is not None:
        raise swarm._fatal


class _Product(Sized, Iterable[tuple[T, C]]):
    """The pairs of ``rows`` x ``cols``, row by row, with a length (for the ETA)."""

    def __init__(self, rows: Sequence[T], cols: Sequence[C]) -> None:
        self._rows = rows
        self._cols = cols

    def __len__(self) -> int:
        return len(self._rows) * len(self._cols)

    def __iter__(self) -> Iterator[tuple[T, C]]:
        return itertools.product(self._rows, self._cols)


async def grid(
    rows: Iterable[T],
    cols: Iterable[C],
    fn: Callable[[T, C], Awaitable[R]],
    *,
    key: Callable[[T, C], Hashable] | None = None,
    max_concurrent: int | None = None,
    per_key: int | Mapping[Hashable, int] | None = None,
    lanes: Mapping[Hashable, LaneLike] | LaneLike | None = None,
    fail_fast: bool = False,
    progress: ProgressCallback | bool | None = None,
    read_ahead: int | None = None,
    lane_priority: int = 0,
    lane_preemptible: bool = False,
    on_preempt: Literal["requeue", "report"] = "requeue",
    progress_interval: float = 0.1,
    clock: Clock | None = None,
) -> list[list[Outcome[tuple[T, C], R]]]:
    """Run ``fn(row, col)`` for every pair: the N x M form of ``fanout``.

    Typical use: every prompt (rows) against every model (cols), each model with its own
    cap or lane. Items are read row by row; keys interleave, so every column makes
    progress from the start.

    Args:
        rows: the row values (read once, into a list).
        cols: the column values (read once, into a list).
        fn: called as ``fn(row, col)``; must return an awaitable.
        key: ``key(row, col)`` gives the pair's key; None (the default) keys by column
            value, so ``per_key`` and ``lanes`` name columns (the column values must then
            be hashable: for dicts of settings, pass e.g.
            ``key=lambda row, col: col["model"]``).
        max_concurrent: see ``fanout``; the other keyword arguments too.
        per_key: see ``fanout``.
        lanes: see ``fanout``.
        fail_fast: see ``fanout``.
        progress: see ``fanout``.
        read_ahead: see ``fanout``.
        lane_priority: see ``fanout``.
        lane_preemptible: see ``fanout``.
        on_preempt: see ``fanout``.
        progress_interval: see ``fanout``.
        clock: see ``fanout``.

    Returns:
        A ``len(rows)`` x ``len(cols)`` matrix: ``result[i][j]`` is the ``Outcome`` of
        ``fn(rows[i], cols[j])``; its ``item`` is the pair ``(row, col)``.

    Raises:
        TypeError: ``rows`` or ``cols`` is not iterable; without ``key``, a column value
            is not hashable (nothing runs); the rest as ``fanout``.

    Example::

        table = await grid(prompts, ["llama", "mistral"], ask, per_key={"llama": 1, "mistral": 2})
        for prompt, row in zip(prompts, table):
            print(prompt, [o.value for o in row])
    """
    _check_key(key)
    if not callable(fn):
        raise TypeError(f"fn must be a callable returning an awaitable, got {fn!r}")
    for name, axis in (("rows", rows), ("cols", cols)):
        if not isinstance(axis, Iterable):
            raise TypeError(f"{name} must be an iterable of values, got {axis!r}")
    row_list: Sequence[T] = rows if isinstance(rows, Sequence) else list(rows)
    col_list: Sequence[C] = cols if isinstance(cols, Sequence) else list(cols)
    pair_key: Callable[[tuple[T, C]], Hashable]
    if key is None:
        # Keyed by column value, a column that cannot be a key would fail every cell of
        # its column with the same error: refuse it before anything runs.
        for j, col in enumerate(col_list):
            try:
                hash(col)
            except TypeError as exc:
                raise TypeError(
                    "grid keys cells by column value, which must be hashable, got "
                    f"cols[{j}] = {col!r} ({exc}); pass key=lambda row, col: ... "
                    "returning a hashable key"
                ) from exc

        def pair_key(pair: tuple[T, C]) -> Hashable:
            return pair[1]

    else:
        user_key = key

        def pair_key(pair: tuple[T, C]) -> Hashable:
            return user_key(pair[0], pair[1])

    def call(pair: tuple[T, C]) -> Awaitable[R]:
        return fn(pair[0], pair[1])

    outcomes = await fanout(
        _Product(row_list, col_list),
        call,
        key=pair_key,
        max_concurrent=max_concurrent,
        per_key=per_key,
        lanes=lanes,
        fail_fast=fail_fast,
        progress=progress,
        read_ahead=read_ahead,
        lane_priority=lane_priority,
        lane_preemptible=lane_preemptible,
        on_preempt=on_preempt,
        progress_interval=progress_interval,
        clock=clock,
    )
    n = len(col_list)
    return [outcomes[i * n : (i + 1) * n] for i in range(len(row_list))]
