"""The in-process lane: a named, concurrency-limited, policy-ordered job queue.

Every state change (submit, finish, cancel, resize, preemption, close) ends in one
synchronous step, ``_reconcile``, which starts queued jobs while slots are free. It never
awaits, so no other task can observe a half-made decision, and a slot freed by an
ending job goes to the policy's next job in the same step.

Invariants (asserted in ``_check`` under ``python -X dev`` / debug builds):

1. Starts happen only while ``len(running) < max_concurrent``; a job chosen for
   preemption keeps its slot until its task has actually ended, so never more than
   ``max_concurrent`` jobs run (the limit may only be exceeded transiently after it was
   lowered, never by a start).
2. A queued job implies no free slot: ``queued > 0 -> running >= max_concurrent``.
3. Every job in ``_jobs`` is QUEUED or RUNNING; it leaves ``_jobs`` when it ends, and it
   ends exactly once (``JobHandle._end`` wakes its waiters).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ._base import (
    LaneBase,
    check_count,
    check_drain,
    check_job_fn,
    check_preemption,
    check_priority,
    check_submit_options,
    check_window,
    submit_context,
    wait_woken,
    wake_all,
)
from ._clock import Clock, SystemClock, TimerHandle
from ._errors import (
    DuplicateJob,
    JobCancelled,
    JobPreempted,
    LaneBusy,
    LaneClosed,
    NotQueued,
)
from ._eta import RuntimeWindow, ThroughputWindow, estimate_wait
from ._events import Emitter, EventKind, LaneEvent
from ._job import CURRENT_JOB, JobHandle, JobState
from ._policies import FIFO, PolicyState, Preemption, QueuePolicy
from ._stats import LaneStats
from ._tasks import spawn

__all__ = ["Lane"]

T = TypeVar("T")

# Invariant checks on every decision run under `python -X dev` (and PYTHONDEVMODE=1).
_DEBUG = sys.flags.dev_mode

# Enum members as module constants: ``JobState.X`` is a descriptor lookup (~100 ns).
_QUEUED = JobState.QUEUED
_RUNNING = JobState.RUNNING
_SUCCEEDED = JobState.SUCCEEDED
_FAILED = JobState.FAILED
_CANCELLED = JobState.CANCELLED

# The event that reports each terminal state.
_END_EVENTS = {
    JobState.SUCCEEDED: EventKind.FINISHED,
    JobState.FAILED: EventKind.FINISHED,
    JobState.CANCELLED: EventKind.CANCELLED,
    JobState.PREEMPTED: EventKind.PREEMPTED,
}

# Why a running job was cancelled by the lane (recorded before ``task.cancel()``, so the
# job's end tells a lane-made cancellation from an outside one).
_CANCEL = "cancel"
_SELF_CANCEL = "self-cancel"  # raised in the job's own task: its task was not cancelled
_UNCALLED = object()  # _run: fn has not returned (yet)
_CLOSE = "close"
_PREEMPT = "preempt"
_PREEMPT_REQUEUE = "preempt-requeue"
_FOLD = 256  # ended runs kept aside before they are counted in the windows


def _not_awaitable(returned: object) -> TypeError:
    """The error of a job whose fn returned something that cannot be awaited (its repr
    is user code: one that raises must not keep the run from ending)."""
    name = type(returned).__name__
    try:
        shown = f"{returned!r:.80}"
    except Exception:
        shown = f"<{name} object>"
    return TypeError(f"fn must return an awaitable, got {name}: {shown}")


class _JobTask(asyncio.Task[None]):
    """A job's task (on a loop without a task factory), which ends its run when it is
    cancelled before its first step.

    A task cancelled before its first step never runs its coroutine, so ``_run``'s
    handlers never see that cancellation, whoever made it: the lane, a shutdown handler
    that cancels every task, ``asyncio.run`` cancelling what is left after a
    ``KeyboardInterrupt``. ``cancel`` ends such a run itself, as cancelled (``_ended``
    is idempotent). A subclass rather than a done-callback: a job pays nothing for it
    unless its task is cancelled.
    """

    __slots__ = ("_job", "_lane")
    _job: JobHandle[Any]
    _lane: Lane

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        job = self._job
        if job._task is self and not job._begun and job._state is _RUNNING:
            self._lane._ended(job, None, None, cancelled=True)
        return cancelled


# From Python 3.13, ``Task.uncancel()`` bringing the count to 0 also takes back a
# cancel not yet delivered: a task cancelled before its first step then runs after all.
_UNCANCEL_RESUMES = sys.version_info >= (3, 13)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a test clock advanced outside of it
        return None


class Lane(LaneBase):
    """A named, concurrency-limited queue of jobs in front of one scarce resource.

    Args:
        name: the lane's name (non-empty).
        max_concurrent: how many jobs may run at once (>= 1).
        policy: the queue order: ``FIFO()`` (default), ``Priority(aging=...)``,
            ``FairShare(weights=...)`` or a custom ``QueuePolicy``.
        preemption: ``Preemption(...)`` to let higher-priority arrivals evict running
            preemptible jobs, or None (disabled).
        eta_window: how many recent run times the wait estimate averages (>= 1).
        clock: the time source (default: the system clocks); tests pass a
            ``executus.testing.ManualClock``.

    Example::

        async with Lane("ollama", 2, policy=FairShare()) as lane:
            reply = await lane.run(lambda: llm.chat(prompt), key="user-42", max_wait=30)
    """

    def __init__(
        self,
        name: str,
        max_concurrent: int = 1,
        *,
        policy: QueuePolicy | None = None,
        preemption: Preemption | None = None,
        eta_window: int = 16,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if not name:
            raise ValueError("name must be a non-empty str, got ''")
        self._max = check_count("max_concurrent", max_concurrent)
        if policy is None:
            policy = FIFO()
        elif not isinstance(policy, QueuePolicy):
            raise TypeError(f"policy must be a QueuePolicy (FIFO(), ...), got {policy!r}")
        check_preemption(preemption)
        check_window(eta_window)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must be a Clock (monotonic, time and call_later), got {clock!r}"
            )
        self._name = name
        self._policy = policy
        self._queue: PolicyState = policy.new_state()
        # Only call admit() for states that override it (saves a call per job).
        self._admits = type(self._queue).admit is not PolicyState.admit
        self._nq = 0  # len(self._queue), kept here: the policy's __len__ is a Python call
        self._preemption = preemption
        self._clock: Clock = clock if clock is not None else SystemClock()
        # The hot paths read the monotonic clock through one bound function.
        self._now: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic
        )
        self._mono0 = self._now()
        self._wall0 = datetime.fromtimestamp(self._clock.time(), UTC)
        self._loop: asyncio.AbstractEventLoop | None = None

        self._jobs: dict[str, JobHandle[Any]] = {}  # queued and running, by id
        self._running: dict[JobHandle[Any], None] = {}  # holding a slot, start order
        self._front: deque[JobHandle[Any]] = deque()  # preemptors, ahead of the queue
        self._causes: dict[JobHandle[Any], str] = {}  # lane-made cancellations
        self._victims: dict[JobHandle[Any], float] = {}  # victim -> cancel deadline
        self._timers: dict[JobHandle[Any], TimerHandle] = {}  # grace timers
        self._grants: dict[JobHandle[Any], asyncio.Future[None]] = {}  # slot() waiters
        self._closed = False
        self._drained: list[asyncio.Future[None]] = []
        self._closers: set[JobHandle[Any]] = set()  # jobs in a draining close of their own
        self._seq = 0
        self._chosen_ids = False  # a caller has passed a job_id
        # The last context snapshot a submit took (see ``_submit``): later submits with
        # the same context state share it.
        self._last_ctx: contextvars.Context | None = None

        self._events = Emitter()
        self._window = RuntimeWindow(eta_window)
        self._throughput = ThroughputWindow()
        # Ended runs not yet counted in the two windows: appended per run, folded in by
        # ``_fold`` in batches and before any read of the windows.
        self._ends: list[float] = []  # end times (every run)
        self._runs: list[float] = []  # run times (runs that succeeded or failed)
        self._submitted = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._preempted = 0
        self._rejected = 0

    # -- properties ----------------------------------------------------------------

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        queued = self._nq + len(self._front)
        return (
            f"<Lane {self._name!r} [{len(self._running)}/{self._max} running, "
            f"{queued} queued | {self._policy.name}]{state}>"
        )

    # -- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> JobHandle[T]:
        """Submit a job; return its handle at once (running or queued).

        Args:
            fn: a zero-argument callable returning an awaitable, called once per run in
                the job's own task (``lambda: client.get(url)``).
            job_id: a unique id, or None to have one made.
            key: who the job is for (fair share is across keys).
            priority: higher is more important (for ``Priority`` and preemption).
            preemptible: whether a higher-priority arrival may evict this job.
            max_wait: None, or seconds: refuse with ``LaneBusy`` (enqueueing nothing)
                when the job cannot start at once and its ETA exceeds this (0: start
                now or refuse, whatever the estimate).

        Returns:
            The job's handle: RUNNING (position 0, eta 0.0) or QUEUED.

        Raises:
            TypeError: ``fn`` is not callable, or an option has the wrong type.
            ValueError: an option is out of range (e.g. a negative ``max_wait``).
            LaneClosed: the lane is closed.
            DuplicateJob: ``job_id`` is queued or running in this lane already.
            LaneBusy: refused by ``max_wait``.
        """
        if not callable(fn):  # (the check's call, only when it fails)
            check_job_fn(fn)
        return self._submit(fn, job_id, key, priority, preemptible, max_wait)

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> T:
        """Submit a job and wait for its result; the caller owns the job.

        If the awaiting task is cancelled, the job is cancelled too (removed if queued,
        its task cancelled if running) and ``CancelledError`` propagates.

        Returns:
            The job's return value.

        Raises:
            Everything ``submit`` raises, the job's own exception, ``JobCancelled``,
            ``JobPreempted`` or ``LaneClosed``.
        """
        check_job_fn(fn)
        job: JobHandle[T] = self._submit(fn, job_id, key, priority, preemptible, max_wait)
        try:
            return await job
        except asyncio.CancelledError:
            self._cancel_nowait(job, _CANCEL)
            raise

    @asynccontextmanager
    async def slot(
        self,
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> AsyncIterator[JobHandle[None]]:
        """Hold one slot for the body of an ``async with``, as a job of the lane.

        The request waits under the lane's policy like any job (position, ETA,
        ``LaneBusy``, fair share, cancel); the body then runs as that job in the
        caller's task (``current_job()`` works) and the slot is freed on exit, whatever
        the exit. Cancelling the waiting task withdraws the request. If the slot is
        preempted, the body's task is cancelled and ``JobPreempted`` leaves the block.

        Example::

            async with lane.slot(key="user-42") as job:
                async for chunk in llm.stream(prompt):
                    await send(chunk)
        """
        job: JobHandle[None] = self._submit(None, job_id, key, priority, preemptible, max_wait)
        task = asyncio.current_task()
        assert task is not None
        job._task = task
        if job._state is _QUEUED:
            grant = self._loop_().create_future()
            self._grants[job] = grant
            try:
                await grant
            except BaseException as exc:
                self._grants.pop(job, None)
                if job._state is _QUEUED:
                    self._cancel_queued(job, JobCancelled(self._name, job.id))
                elif job._state is _RUNNING:
                    # Granted, but cancelled before this task resumed: give it back.
                    delivered = self._cancel_delivered(job)
                    error = self._ended(job, None, None, cancelled=True)
                    if (
                        delivered
                        and error is not None
                        and isinstance(exc, asyncio.CancelledError)
                        and task.uncancel() == 0
                    ):
                        # The lane cancelled it (preemption, cancel, close), nobody else.
                        raise error from None
                raise
            if job._state is not _RUNNING:
                # Ended while waiting (cancelled by id or handle, or the lane closed).
                raise job.exception() or JobCancelled(self._name, job.id)
        token = CURRENT_JOB.set(job)
        try:
            yield job
        except asyncio.CancelledError as exc:
            delivered = self._cancel_delivered(job)
            own = self._causes.get(job) == _SELF_CANCEL
            error = self._ended(job, None, exc, cancelled=True)
            if error is not None and (
                (delivered and task.uncancel() == 0) or (own and task.cancelling() == 0)
            ):
                # The lane cancelled the body (preemption, cancel, close) or the body
                # its own job, and nobody else did: report why, not a bare CancelledError.
                raise error from None
            raise
        except BaseException as exc:
            self._slot_left(job, task, exc)
            raise
        else:
            self._slot_left(job, task, None)
        finally:
            # An async generator holding the slot may be closed by another task than
            # the one that entered it (its consumer stopped early: the loop's finalizer
            # or shutdown closes it), in another context: the entering context is not
            # this one to change, and resetting there would hide the GeneratorExit.
            with contextlib.suppress(ValueError):
                CURRENT_JOB.reset(token)

    def _slot_left(
        self, job: JobHandle[Any], task: asyncio.Task[Any], exc: BaseException | None
    ) -> None:
        """A slot body left without a ``CancelledError``: end its run. If the lane had
        cancelled the task and the body swallowed that, take the cancel back. A body
        left by ``GeneratorExit`` (an async generator holding the slot, closed by its
        consumer) was abandoned by its caller: it ends cancelled, not failed."""
        delivered = self._cancel_delivered(job)
        self._ended(job, None, exc, cancelled=isinstance(exc, GeneratorExit))
        if delivered:
            task.uncancel()

    def _cancel_delivered(self, job: JobHandle[Any]) -> bool:
        """Whether the lane has cancelled this running job's task (a cause is recorded
        and no grace timer still holds the cancel back). A job that cancelled itself
        raised ``CancelledError`` in its own task without cancelling the task."""
        cause = self._causes.get(job)
        return cause is not None and cause != _SELF_CANCEL and job not in self._timers

    def _submit(
        self,
        fn: Callable[[], Awaitable[Any]] | None,
        job_id: str | None,
        key: str | None,
        priority: int,
        preemptible: bool,
        max_wait: float | None,
    ) -> JobHandle[Any]:
        if self._closed:
            raise LaneClosed(self._name)
        if not (  # all defaults (the common case) need no checking call
            job_id is None
            and max_wait is None
            and preemptible is False
            and type(priority) is int
            # STORED_MAX, written out to fold to constants: priorities lie within it, as
            # in RedisLane; aging ranks a job by ``submitted - priority * aging`` in a
            # double, which keeps neighbouring levels apart well within this range.
            and -(2**40) < priority < 2**40
            and (key is None or type(key) is str)
        ):
            check_submit_options(job_id, key, priority, preemptible, max_wait)
            check_priority(priority)
        jobs = self._jobs
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if jobs:
                raise RuntimeError(
                    f"lane {self._name!r} has jobs on another event loop: a lane serves "
                    "one event loop at a time (it can move to another once its jobs "
                    "have ended)"
                )
            self._bind(loop)  # first use, or every job of the last loop has ended
        seq = self._seq
        self._seq = seq + 1
        if job_id is None:
            job_id = f"{self._name}-{seq}"
            if self._chosen_ids:  # made ids never collide unless a caller chose some
                while job_id in jobs:  # a caller chose an id of this shape
                    job_id += "'"
        elif job_id in jobs:
            raise DuplicateJob(self._name, job_id)
        else:
            self._chosen_ids = True
        now = self._now()
        ctx = None
        if fn is not None:  # runs start in the submitter's context, whoever starts them
            ctx = self._last_ctx = submit_context(self._last_ctx)
        job: JobHandle[Any] = JobHandle(self, job_id, fn, key, priority, preemptible, seq, now, ctx)
        if len(self._running) < self._max:
            # Free slot (so, by invariant 2, nothing is queued): start now.
            if self._admits:  # first: a policy that raises here leaves nothing behind
                self._queue.admit(job, now)
            jobs[job_id] = job
            self._submitted += 1
            if self._events.active:
                self._emit(EventKind.SUBMITTED, job, state=_RUNNING, position=0, eta=0.0)
            self._start(job, now)
            return job

        victim = self._choose_victim(job, now) if self._preemption is not None else None
        if victim is not None:
            assert self._preemption is not None
            grace = self._preemption.grace
            if max_wait is not None and grace > max_wait:
                self._refuse(len(self._front) + 1, grace, max_wait)
            # Its start is counted from now (first: a policy that raises here leaves
            # nothing behind): queued jobs' positions then count it while it waits.
            self._queue.charge(job, now)
            self._front.append(job)
            jobs[job_id] = job
            self._submitted += 1
            if self._events.active:  # it starts when its victim's grace is over, at most
                self._emit(
                    EventKind.SUBMITTED, job, state=_QUEUED, position=len(self._front), eta=grace
                )
            self._preempt(victim, now)
            return job

        self._queue.push(job, now)
        self._nq += 1
        if max_wait is not None or self._events.active:
            try:
                position = len(self._front) + self._queue.position(job)
                eta = self._estimate(position, now)
            except BaseException:
                self._withdraw(job)
                raise
            # max_wait=0 is "start now or refuse", whatever the estimate (runs that took
            # no measurable time estimate a wait of 0).
            if max_wait is not None and (eta > max_wait or max_wait == 0):
                self._withdraw(job)
                self._refuse(position, eta, max_wait)
            if self._events.active:
                self._emit(EventKind.SUBMITTED, job, state=_QUEUED, position=position, eta=eta)
        jobs[job_id] = job
        self._submitted += 1
        return job

    def _withdraw(self, job: JobHandle[Any]) -> None:
        """Take a job that ``_submit`` pushed (and did not register) out of the queue."""
        try:
            self._queue.remove(job)
        except Exception as exc:
            self._drop_queue(exc)  # the unregistered job goes with the old state
        else:
            self._nq -= 1

    def _refuse(self, position: int, eta: float, max_wait: float) -> None:
        self._rejected += 1
        if self._events.active:
            self._emit(EventKind.REJECTED, None, position=position, eta=eta)
        raise LaneBusy(self._name, position, eta, max_wait)

    def _loop_(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._bind(asyncio.get_running_loop())
        return loop

    async def _loop_shut_down(self) -> None:
        """The lane's loop shuts down: queued jobs end CANCELLED, running ones are
        cancelled, and this returns once their tasks have ended and observers have had
        every event. The lane stays open (a later ``asyncio.run`` may use it)."""
        await self._stop_everything(
            lambda job: JobCancelled(self._name, job.id, "cancelled: its event loop shut down"),
            _CANCEL,
        )
        # Observers get the last events while the loop still runs; their tasks stop,
        # and start again on the next loop that uses the lane.
        await self._events.aclose()

    # -- the decision step -----------------------------------------------------------------

    def _reconcile(self) -> None:
        """Start jobs while slots are free: preemptors first, then the policy's order."""
        running = self._running
        front = self._front
        queue = self._queue
        while len(running) < self._max:
            if front:
                job = front.popleft()
                try:  # a preemption arrival, charged when it came
                    queue.admit_charged(job, self._now())
                except Exception as exc:
                    self._drop_queue(exc, job)  # the arrival starts all the same
                    queue = self._queue
            elif self._nq:
                try:
                    job = queue.pop()
                except Exception as exc:
                    self._drop_queue(exc)
                    queue = self._queue
                    continue
                try:  # the one check a popped job needs (``_start`` trusts its callers)
                    if job._state is not _QUEUED or job._backend is not self:
                        raise AttributeError
                except AttributeError:
                    self._drop_queue(self._bad_pop(queue, job))
                    queue = self._queue
                    continue
                self._nq -= 1
            else:
                break
            self._start(job, self._now())
        if self._timers and len(self._victims) > len(self._front):
            self._spare_victims()
        if _DEBUG:
            self._check()

    def _check(self) -> None:
        assert self._nq == len(self._queue), "the queued count drifted"
        assert not (self._front or self._nq) or len(self._running) >= self._max, (
            "a job is queued while a slot is free"
        )

    def _start(self, job: JobHandle[Any], now: float) -> None:
        # QUEUED -> RUNNING is the only way into RUNNING (``_ALLOWED`` in _job.py). Every
        # caller passes a QUEUED job of this lane: ``_submit`` a new one, ``_reconcile``
        # a preemption arrival or a job the policy popped, which it has checked.
        if _DEBUG:
            assert job._state is _QUEUED, "an illegal start"
            assert job._backend is self, "a start of another lane's job"
        job._state = _RUNNING
        job._t_start = now
        self._running[job] = None
        if self._events.active:
            # The queue wait of this start: since the submit, or since the last requeue.
            queued = job._t_requeued if job._preemptions else job._t_submit
            self._emit(EventKind.STARTED, job, state=_RUNNING, wait=now - queued)
        fn = job._fn
        if fn is None:  # a slot() job: wake its waiting task, if it waits
            grant = self._grants.pop(job, None)
            if grant is not None and not grant.done():
                grant.set_result(None)
        else:
            job._begun = False
            loop = self._loop_()
            ctx = job._ctx
            if ctx is not None:  # each run gets its own copy of the (shared) snapshot
                ctx = ctx.copy()
            # asyncio.Task directly unless the loop has a task factory: the loop's
            # create_task adds a Python-level call per job. A factory may start tasks
            # eagerly; ``spawn`` keeps the body out of this call even then.
            if loop.get_task_factory() is None:
                task = _JobTask(self._run(job, fn), loop=loop, context=ctx)
                task._job = job
                task._lane = self
                job._task = task
            else:
                try:
                    made = spawn(loop, self._run, job, fn, context=ctx)
                except BaseException as exc:
                    # The loop's task factory raised (one written for another signature,
                    # say): the job cannot run. It ends FAILED with that error, and its
                    # slot is free again for the caller to fill (``_reconcile``'s loop,
                    # not a call back into it: every queued job may fail the same way).
                    self._not_started(job, exc)
                    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
                        raise
                    return
                job._task = made
                # The factory makes the task: a run whose task is cancelled before
                # ``_run`` has begun ends when the task does (see ``_JobTask``).
                made.add_done_callback(functools.partial(self._task_done, job))

    def _not_started(self, job: JobHandle[Any], exc: BaseException) -> None:
        """A job ``_start`` could not give a task ends FAILED with ``exc``, freeing its
        slot without starting another job (its caller fills free slots)."""
        now = self._now()
        started = job._t_start
        assert started is not None
        del self._running[job]
        self._failed += 1
        job._end(_FAILED, now, exc=exc)
        del self._jobs[job.id]
        if self._events.active:
            self._emit(EventKind.FINISHED, job, state=_FAILED, run=now - started, error=exc)
        if self._drained:
            self._wake_drained()

    def _task_done(self, job: JobHandle[Any], task: asyncio.Task[Any]) -> None:
        """A job's factory-made task has ended: a run it never began ends cancelled."""
        if job._task is task and job._state is _RUNNING:
            self._ended(job, None, None, cancelled=True)

    async def _run(self, job: JobHandle[Any], fn: Callable[[], Awaitable[Any]]) -> None:
        if _UNCANCEL_RESUMES and job._task is not asyncio.current_task():
            # A task the lane ended before its first step (``_JobTask.cancel``) whose
            # cancel someone took back with ``uncancel()``: from Python 3.13 that lets
            # the task run. Its run is over (the job has ended, or runs in a new task).
            return
        job._begun = True
        CURRENT_JOB.set(job)
        awaitable: Any = _UNCALLED
        try:
            awaitable = fn()
            value = await awaitable
        except asyncio.CancelledError as exc:
            # The lane owns this task: the cancellation ends here, recorded in the job.
            self._ended(job, None, exc, cancelled=True)
        except BaseException as exc:
            if (
                isinstance(exc, TypeError)
                and awaitable is not _UNCALLED
                and not hasattr(awaitable, "__await__")
            ):
                # Checked here, off the hot path: `await 3` raised this TypeError.
                exc = _not_awaitable(awaitable)
            self._ended(job, None, exc, cancelled=False)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        else:
            self._ended(job, value, None, cancelled=False)

    def _ended(
        self,
        job: JobHandle[Any],
        value: Any,
        exc: BaseException | None,
        *,
        cancelled: bool,
    ) -> BaseException | None:
        """A run is over: free its slot, record the outcome, start the next job.

        Returns the error the job ends with (None on success or requeue).
        """
        if job._state is not _RUNNING:  # already ended (e.g. its lane was force-closed)
            return job._exc
        now = self._now()
        started = job._t_start
        assert started is not None
        del self._running[job]
        cause = None
        if self._causes:  # victims and timers exist only alongside a recorded cause
            self._victims.pop(job, None)
            timer = self._timers.pop(job, None)
            if timer is not None:
                timer.cancel()
            cause = self._causes.pop(job, None)
            if cancelled and timer is not None:
                # The grace still held the lane's cancel back: this one came from
                # elsewhere (a timeout, the caller), and the preemption is over.
                cause = None
        ends = self._ends
        ends.append(now)
        if len(ends) >= _FOLD:
            self._fold()
        error: BaseException | None
        if cancelled:
            requeue_error: Exception | None = None
            if cause == _PREEMPT_REQUEUE:
                try:
                    self._queue.requeue(job, now)
                except Exception as policy_exc:
                    # The policy could not take it back: it ends PREEMPTED instead.
                    requeue_error = policy_exc
                    self._drop_queue(policy_exc)
                    cause = _PREEMPT
                else:
                    self._preempted += 1
                    job._preemptions += 1
                    job._t_requeued = now
                    job._preempt_requested = False
                    job._task = None
                    job._transition(_QUEUED)
                    self._nq += 1
                    if self._events.active:
                        self._emit(EventKind.PREEMPTED, job, state=_QUEUED, run=now - started)
                    self._reconcile()
                    if self._drained:
                        self._wake_drained()
                    return None
            if cause == _PREEMPT:
                self._preempted += 1
                error = JobPreempted(self._name, job.id)
                state = JobState.PREEMPTED
            else:
                self._cancelled += 1
                reason = "cancelled: the lane was closed" if cause == _CLOSE else "cancelled"
                error = JobCancelled(self._name, job.id, reason)
                state = JobState.CANCELLED
            if exc is not None and cause is None:
                error.__cause__ = exc
            elif requeue_error is not None:
                error.__cause__ = requeue_error
            job._end(state, now, exc=error)
        elif exc is not None:
            self._failed += 1
            self._runs.append(now - started)
            error = exc
            job._end(_FAILED, now, exc=exc)
        else:
            self._succeeded += 1
            self._runs.append(now - started)
            error = None
            job._end(_SUCCEEDED, now, value=value)
        del self._jobs[job.id]
        if self._events.active:
            kind = _END_EVENTS[job._state]
            failed = job._state is JobState.FAILED
            self._emit(
                kind, job, state=job._state, run=now - started, error=exc if failed else None
            )
        if self._nq or self._front or _DEBUG:
            self._reconcile()
        if self._drained:  # (tested here: every run's path)
            self._wake_drained()
        return error

    # -- preemption ------------------------------------------------------------------------

    def _choose_victim(self, job: JobHandle[Any], now: float) -> JobHandle[Any] | None:
        policy = self._preemption
        assert policy is not None
        # Preempt only when the victim's slot lets the arrival start: once the chosen
        # victims and this one have ended and the arrivals queued ahead have started,
        # fewer than max_concurrent must run. A lane whose limit was lowered below its
        # running count first shrinks to the limit by jobs ending on their own; until
        # then an arrival queues under the policy and evicts nobody.
        # And one arrival per victim: a victim no arrival waits for any more (its arrival
        # was cancelled or started elsewhere once its task had been cancelled, too late
        # to spare it) frees a slot soon, which goes to the queue: evicting another job
        # would stop two for one arrival and leave a slot idle.
        victims = len(self._victims)
        front = len(self._front)
        if victims > front or len(self._running) - victims + front > self._max:
            return None
        victim: JobHandle[Any] | None = None
        causes = self._causes
        for r in self._running:
            if not r.preemptible or r._preempt_requested or r.priority >= job.priority:
                continue
            if r in causes:  # already being stopped (cancel, close): not a victim
                continue
            started = r._t_start
            assert started is not None
            if now - started < policy.min_runtime:
                continue
            if victim is None or (r.priority, started) < (victim.priority, victim._t_start):
                victim = r
        return victim

    def _preempt(self, victim: JobHandle[Any], now: float) -> None:
        policy = self._preemption
        assert policy is not None
        victim._preempt_requested = True
        requeue = policy.requeue and victim._fn is not None
        self._causes[victim] = _PREEMPT_REQUEUE if requeue else _PREEMPT
        self._victims[victim] = now + policy.grace
        if policy.grace > 0:
            self._timers[victim] = self._clock.call_later(
                policy.grace, lambda: self._cancel_task(victim)
            )
        else:
            self._cancel_task(victim)

    def _spare_victims(self) -> None:
        """Call off preemptions no queued preemptor waits for any more.

        Each queued preemptor takes the slot of the next victim to end. One that started
        on another freed slot (a job ended, or the limit was raised) or was cancelled
        leaves a victim too many: spare the latest chosen ones still in their grace
        period (a victim whose task was cancelled already cannot be spared).
        """
        surplus = len(self._victims) - len(self._front)
        for victim in reversed(list(self._timers)):
            if surplus <= 0:
                break
            if victim not in self._victims:  # a slot's own cancel, held to its next await
                continue
            self._timers.pop(victim).cancel()
            del self._victims[victim]
            del self._causes[victim]
            victim._preempt_requested = False
            surplus -= 1

    def _cancel_task(self, job: JobHandle[Any]) -> None:
        self._timers.pop(job, None)
        task = job._task
        if job._state is not _RUNNING or task is None or task.done():
            return
        if job._fn is None and task is _current_task():
            # A slot body stopping its own job in its own step (its submit preempted
            # it, it closed the lane, a test clock fired its grace). Cancelling the
            # running task would outlive a body that then leaves without another
            # await (3.11's ``uncancel`` keeps such a cancel pending): cancel it
            # from the loop instead, at the body's next await, held back like a
            # grace timer until then (so a body that leaves first keeps no cancel).
            self._timers[job] = self._loop_().call_soon(self._cancel_task, job)
            return
        # (A task cancelled before its first step never runs ``_run``: a ``_JobTask``
        # ends that run in ``cancel``, a factory's task in ``_task_done``.)
        task.cancel()

    # -- cancellation ----------------------------------------------------------------------

    def _cancel_queued(self, job: JobHandle[Any], error: BaseException) -> None:
        if job in self._front:
            self._front.remove(job)
            try:
                self._queue.refund(job)  # it will not start: its charge goes
            except Exception as exc:
                self._drop_queue(exc)  # which ends this job too
            if self._timers and len(self._victims) > len(self._front):
                self._spare_victims()
            if job._state is not _QUEUED:
                return
        else:
            try:
                self._queue.remove(job)
            except Exception as exc:
                self._drop_queue(exc)  # which ends this job too
                return
            self._nq -= 1
        self._end_queued(job, error)

    def _drop_queue(self, error: Exception, keep: JobHandle[Any] | None = None) -> None:
        """The queue policy raised: its state is not trusted any more. End every job it
        held CANCELLED (``JobCancelled`` caused by ``error``, so no waiter is stranded)
        and go on with a fresh state. ``keep``: a queued job already taken out of the
        queue, about to start (a preemption arrival whose ``admit`` raised)."""
        reason = (
            f"cancelled: queue policy {self._policy.name!r} failed "
            f"({type(error).__name__}: {error})"
        )

        def cancelled(job: JobHandle[Any]) -> BaseException:
            exc = JobCancelled(self._name, job.id, reason)
            exc.__cause__ = error
            return exc

        self._clear_queue(cancelled, keep)

    def _clear_queue(
        self,
        error: Callable[[JobHandle[Any]], BaseException],
        keep: JobHandle[Any] | None = None,
    ) -> None:
        """End every job the policy's queue holds CANCELLED with ``error(job)``, without
        asking the policy (it may have failed), and go on with a fresh queue state, which
        the preemption arrivals still waiting are charged to again."""
        self._queue = self._policy.new_state()
        self._nq = 0
        front = self._front
        if front:
            now = self._now()
            try:
                for job in front:
                    self._queue.charge(job, now)
            except Exception:
                # Then they are charged as they start (``admit_charged`` on a state that
                # has not charged them).
                self._queue = self._policy.new_state()
        held = [
            j
            for j in self._jobs.values()
            if j._state is _QUEUED and j is not keep and j not in front
        ]
        for job in held:
            self._end_queued(job, error(job))

    async def _stop_everything(
        self, error: Callable[[JobHandle[Any]], BaseException], cause: str
    ) -> None:
        """End every queued job CANCELLED with ``error(job)`` (preemption arrivals
        first, so nothing is left to start), cancel every running job for ``cause``,
        and return once every run's task has ended."""
        front = self._front
        while front:
            job = front.popleft()
            self._end_queued(job, error(job))
        self._clear_queue(error)
        tasks = [
            job._task for job in self._running if job._fn is not None and job._task is not None
        ]
        for job in list(self._running):
            self._cancel_nowait(job, cause)
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending)

    def _bad_pop(self, queue: PolicyState, popped: object) -> RuntimeError:
        """The error of a policy whose ``pop`` returned something that is not a queued
        job of this lane (it is then not trusted any more: see ``_drop_queue``)."""
        if not isinstance(popped, JobHandle):
            what = "None" if popped is None else f"a {type(popped).__name__}"
        elif popped._backend is not self:
            what = f"job {popped.id!r} of lane {popped.lane!r}"
        else:
            what = f"job {popped.id!r}, which is {popped._state.value}"
        return RuntimeError(
            f"{type(queue).__name__}.pop() returned {what}, not a job queued in lane {self._name!r}"
        )

    def _end_queued(self, job: JobHandle[Any], error: BaseException) -> None:
        """End a job already taken out of the queue as CANCELLED with ``error``."""
        grant = self._grants.pop(job, None)
        if grant is not None and not grant.done():
            grant.set_result(None)  # the waiting slot() sees the ended job and raises
        self._cancelled += 1
        del self._jobs[job.id]
        job._end(_CANCELLED, self._now(), exc=error)
        if self._events.active:
            self._emit(EventKind.CANCELLED, job, state=JobState.CANCELLED)
        if self._drained:
            self._wake_drained()

    def _stop_for(self, job: JobHandle[Any], cause: str) -> None:
        """Record why a running job is being stopped (the last cause wins); a grace
        still running is over."""
        self._causes[job] = cause
        timer = self._timers.pop(job, None)
        if timer is not None:
            timer.cancel()

    def _cancel_nowait(self, job: JobHandle[Any], cause: str) -> None:
        """Cancel a queued job now, or ask a running job's task to stop."""
        if job._state is _QUEUED:
            self._cancel_queued(job, JobCancelled(self._name, job.id))
        elif job._state is _RUNNING:
            # A slot() body runs in the caller's task, which unwinds one lane-made
            # cancellation only (``uncancel`` once): cancel it once, record the last cause.
            again = job._fn is None and self._cancel_delivered(job)
            self._stop_for(job, cause)
            if not again:
                self._cancel_task(job)

    async def _job_cancel(self, job: JobHandle[Any]) -> bool:
        if job._state is _QUEUED:
            self._cancel_nowait(job, _CANCEL)
            return True
        if job._state is not _RUNNING:
            return False
        task = job._task
        if task is asyncio.current_task():
            # The job cancelling itself from its own task: the cancellation is raised
            # right here (cancelling the task would also hit the caller of a slot()
            # body that leaves without another await).
            self._stop_for(job, _SELF_CANCEL)
            raise asyncio.CancelledError
        self._cancel_nowait(job, _CANCEL)
        with contextlib.suppress(Exception):  # the outcome is read from the state
            await job
        if task is not None and job._fn is not None and not task.done():
            # Let the run's task finish its last step (a slot() body's task is the
            # caller's own and goes on after the job has ended).
            await asyncio.wait([task])
        return job._state is JobState.CANCELLED

    async def cancel(self, job_id: str) -> None:
        """Cancel a queued job; its waiters get ``JobCancelled``.

        Raises:
            NotQueued: the job is unknown, running or has ended.
        """
        job = self._jobs.get(job_id)
        if job is None or job._state is not _QUEUED:
            raise NotQueued(self._name, job_id, None if job is None else job._state.value)
        self._cancel_queued(job, JobCancelled(self._name, job.id))

    # -- estimates -------------------------------------------------------------------------

    def _fold(self) -> None:
        """Count the ended runs not yet in the throughput and run-time windows."""
        ends, runs = self._ends, self._runs
        if ends:
            self._throughput.record_many(ends)
            ends.clear()
        if runs:
            self._window.add_many(runs)
            runs.clear()

    def _estimate(self, position: int, now: float) -> float:
        held = []
        elapsed = []
        victims = self._victims
        for r in self._running:
            deadline = victims.get(r)
            if deadline is not None:
                held.append(max(0.0, deadline - now))
            else:
                started = r._t_start
                assert started is not None
                elapsed.append(now - started)
        # The fallback rate: runs per minute, extrapolated while the lane is younger
        # than the one-minute window (one run in its first second is 60/min, not 1/min).
        span = min(60.0, max(1.0, now - self._mono0))
        self._fold()
        per_minute = round(self._throughput.count(now) * 60.0 / span)
        return estimate_wait(position, self._max, elapsed, self._window, per_minute, held=held)

    def _job_position(self, job: JobHandle[Any]) -> int:
        front = self._front
        if front and job in front:
            return front.index(job) + 1
        return len(front) + self._queue.position(job)

    def _job_eta(self, job: JobHandle[Any]) -> float:
        return self._estimate(self._job_position(job), self._now())

    def _wall(self, mono: float) -> datetime:
        return self._wall0 + timedelta(seconds=mono - self._mono0)

    # -- control ---------------------------------------------------------------------------

    async def stats(self) -> LaneStats:
        """A consistent snapshot of the lane's figures."""
        self._fold()
        now = self._now()
        # The oldest queued job: the one queued longest ago, counting a job requeued by
        # a preemption from its requeue (as the STARTED event's ``wait`` does). In
        # submission order, the first queued job never requeued was queued before every
        # later one (a later job was submitted, and any requeue happened, after it): only
        # the requeued ones ahead of it can be older.
        since: float | None = None
        for job in self._jobs.values():  # submission order
            if job._state is _QUEUED:
                queued = job._t_requeued if job._preemptions else job._t_submit
                if since is None or queued < since:
                    since = queued
                if not job._preemptions:
                    break
        oldest = None if since is None else self._wall(since)
        return LaneStats(
            name=self._name,
            max_concurrent=self._max,
            running=len(self._running),
            queued=self._nq + len(self._front),
            oldest_queued_at=oldest,
            throughput_1m=self._throughput.count(now),
            submitted=self._submitted,
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            preempted=self._preempted,
            rejected=self._rejected,
            mean_runtime=self._window.mean(),
        )

    async def set_max_concurrent(self, n: int) -> None:
        """Change the slot limit. Raising it starts queued jobs at once; lowering it
        never cancels a running job (new starts wait until fewer than ``n`` run).

        Raises:
            TypeError, ValueError: ``n`` is not an int >= 1.
        """
        self._max = check_count("max_concurrent", n)
        if self._events.active:
            self._emit(EventKind.RESIZED, None, max_concurrent=n)
        self._reconcile()

    async def set_preemption(self, preemption: Preemption | None) -> None:
        """Change the preemption setting for later arrivals (None disables it)."""
        check_preemption(preemption)
        self._preemption = preemption

    async def set_eta_window(self, n: int) -> None:
        """Average the last ``n`` run times (>= 1) in wait estimates from now on."""
        check_window(n)
        self._fold()
        self._window.resize(n)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self, *, drain: bool = True) -> None:
        """Close the lane: refuse new submits (``LaneClosed``).

        Args:
            drain: True: queued jobs still run; return when every job has ended.
                False: queued jobs end CANCELLED (their waiters get ``LaneClosed``),
                running jobs are cancelled (``JobCancelled``); return when every task
                has ended.

        Calling it again is harmless (and ``drain=False`` after a draining close
        cancels what is left). Called from inside one of the lane's jobs, in its task,
        a draining close waits for the other running jobs only: not for the caller, nor
        for queued jobs that need its slot (they run once it has ended).

        Raises:
            TypeError: ``drain`` is not a bool (nothing is closed).
        """
        check_drain(drain)
        if not self._closed and self._events.active:
            self._emit(EventKind.CLOSED, None)
        self._closed = True
        if not drain:
            message = f"lane {self._name!r} was closed before the job started"
            await self._stop_everything(lambda _: LaneClosed(self._name, message), _CLOSE)
        # Called from inside one of this lane's jobs (its own task), wait for the
        # others only, and only for those that can end before it does: waiting for
        # itself, or for queued jobs that need the slot it holds (no other job runs),
        # would never return. Those queued jobs start once it has ended.
        # Several jobs closing the lane from inside wait for each other's end no more than
        # for their own: each returns once every running job is one of them.
        me = self._calling_job()
        if me is None or me._state is not _RUNNING:
            while self._jobs:
                await wait_woken(self._drained)
            return
        closers = self._closers
        closers.add(me)
        self._wake_drained()  # a close inside another job may be over now
        try:
            while self._jobs:
                if me._state is _RUNNING and (
                    len(self._jobs) == 1 or closers.issuperset(self._running)
                ):
                    break
                await wait_woken(self._drained)
        finally:
            closers.discard(me)

    # -- observers -------------------------------------------------------------------------

    def _emit(self, kind: EventKind, job: JobHandle[Any] | None, **fields: Any) -> None:
        wall = self._clock.time()
        if job is None:
            self._events.emit(LaneEvent(kind, self._name, wall, **fields))
        else:
            self._events.emit_job(kind, self._name, wall, job, **fields)

    def _wake_drained(self) -> None:
        """Wake the draining closes once at most one job runs, or only jobs closing the
        lane from inside do: what they wait for can only be over then (a close from
        outside waits for every job; one inside a job for the other running ones, those
        closing too aside). Each checks its own condition again."""
        running = self._running
        if len(running) > 1 and not (self._closers and self._closers.issuperset(running)):
            return
        wake_all(self._drained)
