"""The exceptions of executus.

The hierarchy::

    Exception
    └── LaneError                 every error a lane raises
        ├── LaneClosed            the lane was closed (by its owner): no new work
        ├── LaneBusy              refused by admission control (max_wait); nothing enqueued
        ├── NotQueued             cancel(job_id) of a job that is not queued
        ├── DuplicateJob          job_id already queued or running in this lane
        ├── JobCancelled          the job was cancelled (handle.cancel, lane.cancel, aclose)
        ├── JobPreempted          the job was evicted for a higher-priority arrival
        └── LaneUnavailable       the world broke it: the backend (e.g. Redis) failed
            └── LeaseLost         a distributed job outlived its lease and was stopped

"You closed it" (``LaneClosed``, ``JobCancelled``) is kept apart from "the world broke
it" (``LaneUnavailable``): the first is an expected outcome of your own calls, the
second is an outage to alert on.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DuplicateJob",
    "JobCancelled",
    "JobPreempted",
    "LaneBusy",
    "LaneClosed",
    "LaneError",
    "LaneUnavailable",
    "LeaseLost",
    "NotQueued",
]


def _rebuilt(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """An exception of ``cls`` with ``args`` and the attributes in ``state``, made without
    calling its ``__init__`` (whose parameters are not its ``args``): unpickling."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def reduce_error(exc: BaseException) -> tuple[Any, ...]:
    """``__reduce__`` for an exception whose ``__init__`` takes other parameters than its
    ``args`` (``JobCancelled(lane, job_id)`` keeps its message as ``args``): pickle its
    type, message and attributes, so it crosses a process boundary (multiprocessing, a
    process pool, a logging queue) intact instead of failing to unpickle."""
    return (_rebuilt, (type(exc), exc.args, dict(exc.__dict__)))


class LaneError(Exception):
    """Base class of every error raised by a lane."""

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_error(self)


class LaneClosed(LaneError):
    """The lane is closed: it takes no new jobs, and queued jobs it dropped end with this.

    Attributes:
        lane: the lane's name.
    """

    def __init__(self, lane: str, message: str | None = None) -> None:
        self.lane = lane
        super().__init__(message or f"lane {lane!r} is closed")


class LaneBusy(LaneError):
    """Admission refused: the job could not start at once and its ETA exceeds ``max_wait``.

    Nothing was enqueued. ``position`` and ``eta`` are what the job would have had.

    Attributes:
        lane: the lane's name.
        position: the place in the dispatch order the job would have taken (1 = next).
        eta: the estimated seconds until it would have started.
        max_wait: the caller's limit, in seconds.
    """

    def __init__(self, lane: str, position: int, eta: float, max_wait: float) -> None:
        self.lane = lane
        self.position = position
        self.eta = eta
        self.max_wait = max_wait
        if max_wait == 0:
            rule = "max_wait 0 admits only a job that can start at once"
            message = f"estimated wait {eta:.1f}s; {rule}"
        else:
            message = (
                f"estimated wait {_seconds_above(eta, max_wait)} exceeds max_wait {max_wait:g}s"
            )
        super().__init__(f"lane {lane!r} is busy: position {position}, {message}")


def _seconds_above(eta: float, limit: float) -> str:
    """``eta`` in seconds, with one decimal, or as many more (up to six) as it takes to
    read above ``limit``: a wait of 0.04 s over a limit of 0.03 s is not "0.0s"."""
    for digits in range(1, 7):
        text = f"{eta:.{digits}f}"
        if float(text) > limit:
            return f"{text}s"
    return f"{eta:g}s"


class NotQueued(LaneError, LookupError):
    """``lane.cancel(job_id)`` named a job that is not queued (unknown, running or ended)."""

    def __init__(self, lane: str, job_id: str, state: str | None = None) -> None:
        self.lane = lane
        self.job_id = job_id
        what = "unknown" if state is None else state
        super().__init__(f"job {job_id!r} is not queued in lane {lane!r} ({what})")


class DuplicateJob(LaneError, ValueError):
    """A job with this id is already queued or running in the lane; nothing was enqueued."""

    def __init__(self, lane: str, job_id: str) -> None:
        self.lane = lane
        self.job_id = job_id
        super().__init__(f"job {job_id!r} is already queued or running in lane {lane!r}")


class JobCancelled(LaneError):
    """The job was cancelled before it could finish."""

    def __init__(self, lane: str, job_id: str, reason: str = "cancelled") -> None:
        self.lane = lane
        self.job_id = job_id
        super().__init__(f"job {job_id!r} in lane {lane!r} was {reason}")


class JobPreempted(LaneError):
    """The job was evicted from its slot to make room for a higher-priority job."""

    def __init__(self, lane: str, job_id: str) -> None:
        self.lane = lane
        self.job_id = job_id
        super().__init__(f"job {job_id!r} in lane {lane!r} was preempted")


class LaneUnavailable(LaneError):
    """The lane's backend failed (e.g. Redis unreachable); the operation did not happen."""


class LeaseLost(LaneUnavailable):
    """A distributed job outlived its lease (e.g. a frozen process) and was stopped."""
