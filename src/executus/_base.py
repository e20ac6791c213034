"""What every lane backend shares: its settings, observers, ``async with``, and the
checks on ``submit``'s options (so ``Lane`` and ``RedisLane`` refuse bad input with the
same words)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import sys
import weakref
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any, Self

from ._events import Emitter, LaneObserver
from ._job import CURRENT_JOB, JobHandle, JobState
from ._policies import Preemption, QueuePolicy

__all__ = [
    "STORED_MAX",
    "LaneBase",
    "check_count",
    "check_drain",
    "check_preemption",
    "check_priority",
    "check_submit_options",
    "check_window",
    "is_utf8",
    "wait_woken",
    "wake_all",
]

# Redis keeps a lane's counts and its jobs' priorities as numbers (doubles): they stay
# exact below this. Lane keeps priorities to the same range, so both take the same.
STORED_MAX = 2**40


def check_count(name: str, value: object) -> int:
    """``value`` as an int >= 1, or TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_window(value: object) -> int:
    """An ``eta_window``: an int from 1 to ``sys.maxsize`` (a window keeps its run times
    in a deque, whose length is a C ``ssize_t``), else TypeError / ValueError."""
    n = check_count("eta_window", value)
    if n > sys.maxsize:
        raise ValueError(f"eta_window must be <= {sys.maxsize}, got {n}")
    return n


def check_priority(priority: int) -> None:
    """Refuse a priority outside ``-STORED_MAX .. STORED_MAX`` (exclusive)."""
    if not -STORED_MAX < priority < STORED_MAX:
        raise ValueError(f"priority must be between -2**40 and 2**40, got {priority}")


def is_utf8(text: str) -> bool:
    """True when ``text`` encodes as UTF-8 (no lone surrogates, as bytes of a command
    line or an environment variable that are not UTF-8 read)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def wait_woken(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until whoever holds ``waiters`` resolves the future this adds to it (it takes
    the list's futures out, or swaps the list, as it wakes them); a wait cut short
    (cancelled, timed out) takes its own future out."""
    fut = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    finally:
        if fut in waiters:
            waiters.remove(fut)


def wake_all(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every ``wait_woken`` waiting on ``waiters`` (each checks again what it waits
    for), emptying the list."""
    woken = waiters[:]
    waiters.clear()
    for fut in woken:
        if not fut.done():
            fut.set_result(None)


_FLOAT_MAX = sys.float_info.max  # the largest finite float
_UNSET = object()  # submit_context: a variable the previous snapshot does not hold


def submit_context(last: contextvars.Context | None) -> contextvars.Context:
    """A snapshot of the current context for a submitted job's runs, or ``last`` (a
    previous snapshot) when it holds the same objects: a loop submitting many jobs from
    one unchanged context keeps one snapshot, not one per job.

    The same objects, not equal ones: two requests that each set a variable to a fresh
    ``[]`` must not share one list. Values are compared by identity only (no user
    ``__eq__`` is called), one variable at a time: contexts hold few.
    """
    ctx = contextvars.copy_context()
    if last is None:
        return ctx
    n = len(ctx)
    if n != len(last):
        return ctx
    if n:
        held = last.get
        for var, value in ctx.items():
            if held(var, _UNSET) is not value:
                return ctx
    return last


def check_ttl(ttl: object) -> None:
    """Refuse a ``ttl`` that is not a finite number of seconds > 0. Compared, not
    converted: an int too large for a float is out of range too."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= _FLOAT_MAX:
        raise ValueError(f"ttl must be a finite number > 0, got {ttl!r}")


def check_preemption(preemption: object) -> None:
    """Refuse anything but a ``Preemption`` or None."""
    if preemption is not None and not isinstance(preemption, Preemption):
        raise TypeError(f"preemption must be a Preemption or None, got {preemption!r}")


def check_drain(drain: object) -> None:
    """Refuse an ``aclose(drain=...)`` that is not a bool (``"no"`` would drain)."""
    if drain is not True and drain is not False:
        raise TypeError(f"drain must be a bool, got {drain!r}")


def check_job_fn(fn: object) -> None:
    """Refuse a job body that cannot be called."""
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable returning an awaitable, got {fn!r}")


def check_submit_options(
    job_id: object, key: object, priority: object, preemptible: object, max_wait: object
) -> None:
    """Refuse bad ``submit`` options with the rule and the value (nothing else is done)."""
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {key!r}")
    if type(priority) is not int and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise TypeError(f"priority must be an int, got {priority!r}")
    if preemptible is not False and preemptible is not True:
        raise TypeError(f"preemptible must be a bool, got {preemptible!r}")
    if max_wait is not None:
        if isinstance(max_wait, bool) or not isinstance(max_wait, int | float):
            raise TypeError(f"max_wait must be a number of seconds or None, got {max_wait!r}")
        if math.isnan(max_wait) or max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
    if job_id is not None:
        if type(job_id) is not str:
            raise TypeError(f"job_id must be a str or None, got {job_id!r}")
        if not job_id:
            raise ValueError("job_id must be a non-empty str, got ''")


class LaneBase:
    """The part of the lane interface that does not depend on the backend.

    Subclasses set ``_name``, ``_max``, ``_policy``, ``_preemption``, ``_closed`` and
    ``_events`` and implement the rest of the interface (``submit``, ``run``, ``slot``,
    ``cancel``, ``stats``, the setters and ``aclose``).
    """

    _name: str
    _max: int
    _policy: QueuePolicy
    _preemption: Preemption | None
    _closed: bool
    _events: Emitter
    _loop: asyncio.AbstractEventLoop | None
    # Suspended for the life of the lane's loop, closed by the loop's shutdown (``_bind``).
    _loop_watch: _Watch | None = None

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """Make ``loop`` the lane's loop, and learn when it shuts down while the lane
        still holds jobs on it. Returns ``loop``.

        ``asyncio.run`` (and any runner that calls ``loop.shutdown_asyncgens()``)
        cancels the loop's tasks, then closes the async generators the loop has seen
        start. A job cancelled there frees its slot, and the next queued job would start
        in a task nobody cancels any more, destroyed pending with the loop: the lane
        keeps one suspended generator on the loop, whose closing calls
        ``_loop_shut_down`` to end what is left.
        """
        self._loop = loop
        holder = self._loop_watch
        if holder is None:
            # A lane dropped while its loop lives on closes its watch as it goes: left
            # to the loop's finalizer, the close would be a task that a loop stopped
            # for good (closed without ``shutdown_asyncgens``) reports destroyed pending.
            holder = self._loop_watch = _Watch()
            weakref.finalize(self, holder.close)
        holder.close()  # the last loop's watch, if any: this lane is not on it any more
        watch = _loop_shutdown(weakref.ref(self), loop)
        with contextlib.suppress(StopIteration):  # run to its one ``yield``, in this call
            watch.asend(None).send(None)
        holder.gen = watch
        return loop

    async def _loop_shut_down(self) -> None:
        """End what the lane holds on its loop, which shuts down (see ``_bind``)."""

    @property
    def name(self) -> str:
        """The lane's name."""
        return self._name

    @property
    def max_concurrent(self) -> int:
        """The slot limit (for a distributed lane: as this client last saw it)."""
        return self._max

    @property
    def policy(self) -> QueuePolicy:
        """The queue policy."""
        return self._policy

    @property
    def preemption(self) -> Preemption | None:
        """The preemption setting, or None."""
        return self._preemption

    @property
    def closed(self) -> bool:
        """True once ``aclose`` was called."""
        return self._closed

    def add_observer(self, observer: LaneObserver) -> None:
        """Call ``observer(event)`` with every ``LaneEvent`` of this lane from now on.

        Events arrive on the next loop step, in order, never inside the lane's decision,
        in an empty context (outside any job). A plain function runs on the loop; an
        ``async def`` one (or a plain one returning an awaitable) in its own task, so a
        slow observer never delays a start (it loses its oldest events past 10,000
        behind). Errors are logged to ``executus.events`` and ignored. Adding the same
        observer twice is a no-op. A distributed lane reports the jobs of this client
        (process): sum counters across processes for lane-wide figures.
        """
        self._events.add(observer)

    def remove_observer(self, observer: LaneObserver) -> None:
        """Stop sending events to ``observer`` (unknown observers are ignored)."""
        self._events.remove(observer)

    def _calling_job(self) -> JobHandle[Any] | None:
        """This lane's running job whose own task is calling, if any (a close from inside
        a job must not wait for that job)."""
        job = CURRENT_JOB.get()
        backend: object = None if job is None else job._backend
        if job is None or backend is not self or job._state is not JobState.RUNNING:
            return None
        return job if job._task is asyncio.current_task() else None

    async def aclose(self, *, drain: bool = True) -> None:
        """Close the lane (see the backend's documentation)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(drain=True)


class _Watch:
    """Holds a lane's current ``_loop_shutdown`` generator (not the lane itself)."""

    __slots__ = ("gen",)

    def __init__(self) -> None:
        self.gen: AsyncGenerator[None, None] | None = None

    def close(self) -> None:
        """Close the generator here and now. Its lane is gone, or on another loop, so
        its ``finally`` has nothing to await and ends in this call."""
        gen, self.gen = self.gen, None
        if gen is None:
            return
        closing = gen.aclose()
        try:
            closing.send(None)
        except (StopIteration, RuntimeError):  # closed (RuntimeError: it was running)
            return
        closing.close()  # it waited for something after all: it is not this call's


async def _loop_shutdown(
    lane: weakref.ref[LaneBase], loop: asyncio.AbstractEventLoop
) -> AsyncGenerator[None, None]:
    """Suspended at its ``yield`` while ``loop`` lives (see ``LaneBase._bind``)."""
    try:
        yield
    finally:
        owner = lane()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # collected outside any loop: nothing to end here
            running = None
        if owner is not None and owner._loop is loop and running is loop:
            await owner._loop_shut_down()
