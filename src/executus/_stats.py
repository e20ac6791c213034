"""The snapshot a lane reports about itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["LaneStats"]


@dataclass(frozen=True, slots=True)
class LaneStats:
    """A consistent snapshot of a lane, taken in one step.

    Attributes:
        name: the lane's name.
        max_concurrent: the current slot limit.
        running: jobs holding a slot now (a preempted job counts until its task ended).
        queued: jobs waiting for a slot.
        oldest_queued_at: when the longest-waiting queued job was queued (submitted, or
            requeued after a preemption), or None.
        throughput_1m: runs that ended in the last 60 seconds (any outcome).
        submitted: jobs accepted since the lane was made (refusals not included).
        succeeded: jobs that returned a value.
        failed: jobs that raised.
        cancelled: jobs cancelled while queued or running (closing included).
        preempted: preemptions (a requeued job counts each time it was evicted).
        rejected: submissions refused by ``max_wait`` (``LaneBusy``).
        mean_runtime: mean seconds of the recent runs the ETA uses, or None.
    """

    name: str
    max_concurrent: int
    running: int
    queued: int
    oldest_queued_at: datetime | None
    throughput_1m: int
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    preempted: int
    rejected: int
    mean_runtime: float | None
