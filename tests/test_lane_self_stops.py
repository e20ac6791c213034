"""The in-process lane: user objects that misbehave while a run ends, a
policy that fails on a preemption arrival, a slot that swallows its own cancel, and the
context observers run in."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import pytest

from executus import (
    EventKind,
    JobCancelled,
    JobContext,
    JobHandle,
    JobPreempted,
    JobState,
    Lane,
    LaneEvent,
    PolicyState,
    Preemption,
    QueuePolicy,
    current_job,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle, value


class _BadRepr:
    """Not awaitable, and its repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_a_non_awaitable_whose_repr_raises_still_ends_the_job() -> None:
    """fn returning a non-awaitable whose repr raises ends the job FAILED; no slot leaks."""
    lane = Lane("x", 1)
    handle: JobHandle[Any] = await lane.submit(_BadRepr)  # type: ignore[arg-type]
    await settle()
    assert handle.state is JobState.FAILED
    error = handle.exception()
    assert isinstance(error, TypeError)
    assert str(error) == "fn must return an awaitable, got _BadRepr: <_BadRepr object>"
    stats = await lane.stats()
    assert (stats.running, stats.failed) == (0, 1)
    assert await lane.run(value(1)) == 1
    await asyncio.wait_for(lane.aclose(), 1)


class _AdmitFails(PolicyState):
    """A FIFO queue whose ``admit`` raises once told to."""

    def __init__(self) -> None:
        self.jobs: deque[JobHandle[Any]] = deque()
        self.admit_fails = False

    def push(self, job: JobHandle[Any], now: float) -> None:
        self.jobs.append(job)

    def admit(self, job: JobHandle[Any], now: float) -> None:
        if self.admit_fails:
            raise RuntimeError("admit is broken")

    def pop(self) -> JobHandle[Any]:
        return self.jobs.popleft()

    def remove(self, job: JobHandle[Any]) -> None:
        self.jobs.remove(job)

    def position(self, job: JobHandle[Any]) -> int:
        return self.jobs.index(job) + 1

    def __len__(self) -> int:
        return len(self.jobs)


class _AdmitFailsPolicy(QueuePolicy):
    name = "admit-fails"

    def new_state(self) -> PolicyState:
        return _AdmitFails()


async def test_a_preemption_arrival_whose_admit_raises_still_runs() -> None:
    """A preemption arrival whose policy's admit raises starts and runs its fn all the
    same; the queued jobs the policy held end CANCELLED, and no slot leaks."""
    lane = Lane("x", 1, policy=_AdmitFailsPolicy(), preemption=Preemption(min_runtime=0))
    victim = await lane.submit(Gate(), preemptible=True)
    await settle()
    queued = await lane.submit(value(0))
    queue = lane._queue
    assert isinstance(queue, _AdmitFails)
    queue.admit_fails = True
    arrival = await lane.submit(value(7), priority=5)
    await settle()
    assert victim.state is JobState.PREEMPTED
    assert queued.state is JobState.CANCELLED
    assert isinstance(queued.exception(), JobCancelled)
    assert arrival.state is JobState.SUCCEEDED
    assert await arrival == 7
    stats = await lane.stats()
    assert (stats.running, stats.queued) == (0, 0)
    assert (stats.succeeded, stats.cancelled, stats.preempted) == (1, 1, 1)
    assert not lane._jobs
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_slot_that_swallowed_its_own_cancel_is_still_cancelled_by_close() -> None:
    """A slot body that catches the cancel it raised on its own handle and goes on is
    still cancelled by aclose(drain=False), which returns; the block raises JobCancelled."""
    lane = Lane("x", 1)
    entered = asyncio.Event()

    async def user() -> None:
        async with lane.slot() as job:
            with contextlib.suppress(asyncio.CancelledError):
                await job.cancel()
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(user())
    await entered.wait()
    await asyncio.wait_for(lane.aclose(drain=False), 1)
    error = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(error[0], JobCancelled)
    assert str(error[0]) == "job 'x-0' in lane 'x' was cancelled: the lane was closed"
    assert task.cancelling() == 0


async def test_a_slot_cancelling_itself_raises_job_cancelled_with_no_pending_cancel() -> None:
    """A slot body cancelling its own handle leaves the block with JobCancelled; a later
    outside cancel of the task is not taken back by the lane."""
    lane = Lane("x", 1)

    async def user() -> None:
        async with lane.slot() as job:
            await job.cancel()

    task = asyncio.create_task(user())
    error = (await asyncio.gather(task, return_exceptions=True))[0]
    assert isinstance(error, JobCancelled)
    assert task.cancelling() == 0
    assert (await lane.stats()).cancelled == 1
    await asyncio.wait_for(lane.aclose(), 1)


async def test_observers_run_outside_any_job() -> None:
    """current_job() is None inside a plain or an async observer, even for events a job's
    own task caused (its end, a submit from inside it)."""
    lane = Lane("x", 2)
    plain: list[JobContext | None] = []
    in_async: list[JobContext | None] = []

    async def watch(event: LaneEvent) -> None:
        in_async.append(current_job())

    lane.add_observer(lambda event: plain.append(current_job()))
    lane.add_observer(watch)

    async def parent() -> object:
        return await lane.run(value(1))

    assert await lane.run(parent) == 1
    await settle()
    assert len(plain) == 6  # submitted, started, finished; twice
    assert plain == [None] * 6
    assert in_async == [None] * 6
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_plain_observer_returning_an_awaitable_has_it_awaited() -> None:
    """A plain callable that returns an awaitable (``lambda e: queue.put(e)``) is awaited,
    one call after another, events in order; none is left never awaited."""
    lane = Lane("x", 1)
    queue: asyncio.Queue[LaneEvent] = asyncio.Queue()
    lane.add_observer(lambda event: queue.put(event))
    await lane.run(value(1))
    await lane.set_max_concurrent(2)
    await settle()
    kinds = [queue.get_nowait().kind.value for _ in range(queue.qsize())]
    assert kinds == ["submitted", "started", "finished", "resized"]
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_requeued_job_reports_its_queue_wait_since_the_requeue(
    clock: ManualClock,
) -> None:
    """STARTED.wait of a requeued job's next start is the time it queued since the
    requeue, not since its submit (its first run is not queue time)."""
    lane = Lane("x", 1, preemption=Preemption(min_runtime=0, requeue=True), clock=clock)
    events: list[LaneEvent] = []
    lane.add_observer(events.append)
    victim = Gate()
    await lane.submit(victim, job_id="v", preemptible=True)
    await settle()
    clock.advance(10)  # the victim runs 10 s
    urgent = Gate()
    await lane.submit(urgent, job_id="u", priority=5)
    await settle()
    clock.advance(3)  # then queues 3 s behind the urgent job
    urgent.release()
    await settle()
    victim.release()
    await settle()
    waits = [e.wait for e in events if e.kind is EventKind.STARTED and e.job_id == "v"]
    assert waits == [0.0, 3.0]
    await asyncio.wait_for(lane.aclose(), 1)


def test_manual_clock_refuses_a_start_or_wall_that_is_not_finite() -> None:
    """A ManualClock start or wall that is not finite is a ValueError naming the value."""
    with pytest.raises(ValueError, match=r"^start must be a finite number, got nan$"):
        ManualClock(float("nan"))
    with pytest.raises(ValueError, match=r"^wall must be a finite number, got inf$"):
        ManualClock(0.0, wall=float("inf"))


async def test_a_slot_that_preempts_itself_and_leaves_at_once_leaves_no_pending_cancel() -> None:
    """A preemptible slot body whose own submit preempts it and that leaves without
    another await ends SUCCEEDED, and its task carries no cancel on past the block."""
    lane = Lane("x", 1, preemption=Preemption(min_runtime=0))

    async def user() -> str:
        async with lane.slot(preemptible=True) as job:
            urgent = await lane.submit(value(1), priority=5)
            assert job.preempt_requested
        assert job.state is JobState.SUCCEEDED
        await asyncio.sleep(0)  # no cancel is pending here
        assert await urgent == 1
        return "done"

    task = asyncio.create_task(user())
    assert await asyncio.wait_for(task, 1) == "done"
    assert task.cancelling() == 0
    stats = await lane.stats()
    assert (stats.succeeded, stats.preempted, stats.running) == (2, 0, 0)
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_slot_that_preempts_itself_and_awaits_raises_job_preempted() -> None:
    """A preemptible slot body whose own submit preempts it is cancelled at its next
    await: JobPreempted leaves the block and the urgent job then runs."""
    lane = Lane("x", 1, preemption=Preemption(min_runtime=0))
    urgent: list[JobHandle[Any]] = []

    async def user() -> None:
        async with lane.slot(preemptible=True):
            urgent.append(await lane.submit(value(1), priority=5))
            await asyncio.sleep(10)

    task = asyncio.create_task(user())
    error = (await asyncio.gather(task, return_exceptions=True))[0]
    assert isinstance(error, JobPreempted)
    assert task.cancelling() == 0
    assert await asyncio.wait_for(urgent[0], 1) == 1
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_slot_closing_its_lane_and_leaving_at_once_leaves_no_pending_cancel() -> None:
    """A slot body that force-closes its own lane and leaves without another await ends
    SUCCEEDED and its task carries no cancel on past the block."""
    lane = Lane("x", 1)

    async def user() -> JobHandle[None]:
        async with lane.slot() as job:
            await lane.aclose(drain=False)
        await asyncio.sleep(0)  # no cancel is pending here
        return job

    task = asyncio.create_task(user())
    job = await asyncio.wait_for(task, 1)
    assert job.state is JobState.SUCCEEDED
    assert task.cancelling() == 0
    assert (await lane.stats()).running == 0
