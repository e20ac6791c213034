"""The in-process lane: small deterministic cases the lane model found."""

from __future__ import annotations

import asyncio

from executus import JobState, Lane, Preemption
from executus.testing import ManualClock
from tests.helpers import Gate, settle


async def test_a_draining_close_inside_a_job_returns_once_a_requeued_victim_has_left(
    clock: ManualClock,
) -> None:
    """A job's own draining close returns when a requeue leaves it the only running job."""
    lane = Lane("x", 2, preemption=Preemption(min_runtime=0, grace=2, requeue=True), clock=clock)
    close, closed = asyncio.Event(), asyncio.Event()

    async def closer() -> None:
        await close.wait()
        await lane.aclose()
        closed.set()

    victim = Gate()
    closing = await lane.submit(closer)
    requeued = await lane.submit(victim, preemptible=True)
    await settle()
    await lane.submit(Gate(), priority=1)  # preempts the victim, after its grace
    close.set()
    await settle()  # the closing job waits for the victim
    await lane.set_max_concurrent(1)
    clock.advance(2)  # the victim is requeued; the limit keeps the arrival queued
    await settle()
    assert requeued.state is JobState.QUEUED
    assert closed.is_set()  # was: waited for a slot only the closing job could free
    assert closing.state is JobState.SUCCEEDED
    await lane.aclose(drain=False)
