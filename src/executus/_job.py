"""Jobs: their states, the handle callers hold, and the context a running job sees.

A ``JobHandle`` is backend-agnostic: it keeps the job's state, outcome and waiters, and
asks its backend (a ``Lane``, or another backend implementing ``JobBackend``) only for
what the backend knows: live position and ETA, cancellation, and wall-clock stamps.
State changes go through one transition function with an allowed-transitions table.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Awaitable, Callable, Generator
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["JobBackend", "JobContext", "JobHandle", "JobState", "current_job"]

T = TypeVar("T")


class JobState(enum.Enum):
    """Where a job is in its life. The last four are terminal: a job ends exactly once."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"

    # Identity hash: the Enum default hashes the name in Python on every dict lookup,
    # and the lane looks states up on every transition.
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, CANCELLED and PREEMPTED."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED})
_QUEUED = JobState.QUEUED  # a module constant: ``JobState.QUEUED`` is a descriptor lookup

# The only state changes there are. RUNNING -> QUEUED is a requeue after preemption.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PREEMPTED,
            JobState.QUEUED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.PREEMPTED: frozenset(),
}


class JobBackend(Protocol):
    """What a ``JobHandle`` needs from the lane that owns it."""

    @property
    def name(self) -> str: ...

    def _job_position(self, job: JobHandle[Any]) -> int: ...

    def _job_eta(self, job: JobHandle[Any]) -> float: ...

    async def _job_cancel(self, job: JobHandle[Any]) -> bool: ...

    def _wall(self, mono: float) -> datetime: ...


class JobHandle(Generic[T]):
    """A submitted job. Await it for the job's value (or its exception).

    ``await handle`` returns the job's return value, or raises the job's own exception
    object, ``JobCancelled``, ``JobPreempted`` or ``LaneClosed``. Awaiting does not own
    the job: cancelling the awaiting task leaves the job running (own it with
    ``lane.run`` or end it with ``await handle.cancel()``).

    Example::

        handle = await lane.submit(lambda: llm.chat(prompt), key="user-42")
        if handle.state is JobState.QUEUED:
            print(f"queued (#{handle.position}, ~{handle.eta:.0f}s)")
        reply = await handle

    Attributes:
        id: the job id (unique among the lane's queued and running jobs).
        key: who the job is for (fair share is across keys), or None.
        priority: higher is more important.
        preemptible: whether a higher-priority arrival may evict it.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_begun",
        "_ctx",
        "_exc",
        "_fn",
        "_preempt_requested",
        "_preemptions",
        "_qkey",
        "_seq",
        "_state",
        "_t_end",
        "_t_requeued",
        "_t_start",
        "_t_submit",
        "_task",
        "_value",
        "_waiters",
        "id",
        "key",
        "preemptible",
        "priority",
    )

    # When the job was last requeued after a preemption: set by the backend's requeue
    # (not in ``__init__``, which every job pays), read only once ``_preemptions > 0``.
    _t_requeued: float

    def __init__(
        self,
        backend: JobBackend,
        job_id: str,
        fn: Callable[[], Awaitable[T]] | None,
        key: str | None,
        priority: int,
        preemptible: bool,
        seq: int,
        submitted: float,
        ctx: contextvars.Context | None = None,
    ) -> None:
        self._backend = backend
        self.id = job_id
        self.key = key
        self.priority = priority
        self.preemptible = preemptible
        self._fn = fn
        self._seq = seq
        self._qkey: Any = None  # owned by the queue policy's state
        self._state = _QUEUED
        self._t_submit = submitted
        self._t_start: float | None = None
        self._t_end: float | None = None
        self._value: T | None = None
        self._exc: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._begun = False  # the current run's task has started executing
        # The context the job's runs start from: the submitter's, copied at submit (the
        # backend passes it), so a job never runs in the context of whatever started it.
        self._ctx = ctx
        self._preemptions = 0
        self._preempt_requested = False

    # -- what callers read -------------------------------------------------------------

    @property
    def lane(self) -> str:
        """The name of the lane the job was submitted to."""
        return self._backend.name

    @property
    def state(self) -> JobState:
        """The job's current state."""
        return self._state

    @property
    def position(self) -> int:
        """The job's live place in the dispatch order (1 = next); 0 unless queued."""
        if self._state is not JobState.QUEUED:
            return 0
        return self._backend._job_position(self)

    @property
    def eta(self) -> float:
        """Live estimate of the seconds until the job starts; 0.0 unless queued."""
        if self._state is not JobState.QUEUED:
            return 0.0
        return self._backend._job_eta(self)

    @property
    def submitted_at(self) -> datetime:
        """When the job was submitted (aware UTC)."""
        return self._backend._wall(self._t_submit)

    @property
    def started_at(self) -> datetime | None:
        """When the job last started running (aware UTC), or None."""
        t = self._t_start
        return None if t is None else self._backend._wall(t)

    @property
    def finished_at(self) -> datetime | None:
        """When the job ended (aware UTC), or None."""
        t = self._t_end
        return None if t is None else self._backend._wall(t)

    @property
    def preemptions(self) -> int:
        """How many times the job was preempted and requeued."""
        return self._preemptions

    @property
    def preempt_requested(self) -> bool:
        """True once the lane has chosen this running job as a preemption victim."""
        return self._preempt_requested

    def done(self) -> bool:
        """True once the job has ended (in any terminal state)."""
        return self._state in _TERMINAL

    def result(self) -> T:
        """The outcome of an ended job: its value, or raise its error.

        Raises:
            RuntimeError: the job has not ended yet.
        """
        if self._state not in _TERMINAL:
            raise RuntimeError(f"job {self.id!r} has not ended (state {self._state.value})")
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        """The error an ended job raised or was ended with, or None if it succeeded."""
        if self._state not in _TERMINAL:
            raise RuntimeError(f"job {self.id!r} has not ended (state {self._state.value})")
        return self._exc

    async def cancel(self) -> bool:
        """Cancel the job if it is queued or running.

        A queued job is removed at once; a running job's task is cancelled and this
        waits until it has ended (a job in a preemption's grace ends cancelled, not
        preempted). Awaited by the job itself, from its own task (its body, or a
        ``slot()`` block), the cancellation is raised right there: the body unwinds with
        ``CancelledError`` and the job ends CANCELLED (a ``slot()`` block then raises
        ``JobCancelled``).

        Returns:
            True when the job was queued or running and is now cancelled; False when it
            had already ended (or finished on its own while being cancelled).
        """
        if self._state in _TERMINAL:
            return False
        return await self._backend._job_cancel(self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state not in _TERMINAL:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters
            if waiters is None:
                self._waiters = [fut]
            else:
                waiters.append(fut)
            try:
                yield from fut.__await__()
            finally:
                waiters = self._waiters
                if waiters is not None and fut in waiters:
                    # This awaiter was cancelled: forget its future, keep the job.
                    waiters.remove(fut)
        return self.result()

    def __repr__(self) -> str:
        extra = ""
        if self._state is JobState.QUEUED:
            # A repr must not raise (it is logged, shown in tracebacks): a custom
            # policy whose ``position`` fails shows an unknown place.
            try:
                extra = f" #{self.position}"
            except Exception:
                extra = " #?"
        key = "" if self.key is None else f" key={self.key!r}"
        return f"<JobHandle {self.id!r} {self._state.value}{extra}{key} prio={self.priority}>"

    # -- what backends call --------------------------------------------------------------

    def _transition(self, new: JobState) -> None:
        """Move to ``new``; any change not in the allowed table is a bug."""
        if new not in _ALLOWED[self._state]:
            raise RuntimeError(
                f"job {self.id!r}: illegal transition {self._state.value} -> {new.value}"
            )
        self._state = new

    def _end(
        self, state: JobState, now: float, value: Any = None, exc: BaseException | None = None
    ) -> None:
        """Record the terminal outcome and wake every waiter (exactly once)."""
        self._transition(state)
        self._t_end = now
        self._value = value
        self._exc = exc
        self._fn = None  # release the user's callable and what it closes over
        self._ctx = None
        self._task = None
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


class JobContext:
    """What a running job sees of itself through ``current_job()``.

    Attributes are read live: ``preempt_requested`` turns True when the lane chose the
    job as a preemption victim (a cooperative job can save its work and return).
    """

    __slots__ = ("_job",)

    def __init__(self, job: JobHandle[Any]) -> None:
        self._job = job

    @property
    def id(self) -> str:
        """The job id."""
        return self._job.id

    @property
    def lane(self) -> str:
        """The name of the job's lane."""
        return self._job.lane

    @property
    def key(self) -> str | None:
        """The job's key."""
        return self._job.key

    @property
    def priority(self) -> int:
        """The job's priority."""
        return self._job.priority

    @property
    def preempt_requested(self) -> bool:
        """True once the lane has asked this job to give up its slot."""
        return self._job._preempt_requested

    @property
    def handle(self) -> JobHandle[Any]:
        """The job's handle."""
        return self._job

    def __repr__(self) -> str:
        return f"<JobContext {self.id!r} lane={self.lane!r} key={self.key!r}>"


CURRENT_JOB: ContextVar[JobHandle[Any] | None] = ContextVar("executus_current_job", default=None)


def current_job() -> JobContext | None:
    """The context of the job running in this task, or None outside a job."""
    job = CURRENT_JOB.get()
    return None if job is None else JobContext(job)
