"""The in-process lane: a misbehaving custom policy, priority bounds, and preemption on a
lane whose limit was lowered below its running count."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from executus import (
    FIFO,
    FairShare,
    JobCancelled,
    JobHandle,
    JobState,
    Lane,
    PolicyState,
    Preemption,
    Priority,
    QueuePolicy,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle, value


class _Queue(PolicyState):
    """A FIFO queue whose ``position`` can be told to raise and whose ``pop`` can be
    told to return something else than the job it holds."""

    def __init__(self) -> None:
        self.jobs: deque[JobHandle[Any]] = deque()
        self.position_fails = False
        self.pop_returns: list[Any] = []  # returned by the next pops instead of a job

    def push(self, job: JobHandle[Any], now: float) -> None:
        self.jobs.append(job)

    def pop(self) -> JobHandle[Any]:
        if self.pop_returns:
            self.jobs.popleft()
            popped: JobHandle[Any] = self.pop_returns.pop(0)
            return popped
        return self.jobs.popleft()

    def remove(self, job: JobHandle[Any]) -> None:
        self.jobs.remove(job)

    def position(self, job: JobHandle[Any]) -> int:
        if self.position_fails:
            raise RuntimeError("position is broken")
        return self.jobs.index(job) + 1

    def __len__(self) -> int:
        return len(self.jobs)


class _QueuePolicy(QueuePolicy):
    name = "odd"

    def new_state(self) -> PolicyState:
        return _Queue()


def _queue(lane: Lane) -> _Queue:
    queue = lane._queue
    assert isinstance(queue, _Queue)
    return queue


async def test_repr_of_a_handle_survives_a_policy_whose_position_raises() -> None:
    """repr(handle) of a queued job does not raise when the policy's position does."""
    lane = Lane("x", 1, policy=_QueuePolicy())
    await lane.submit(Gate())
    waiting = await lane.submit(value(1), job_id="w")
    _queue(lane).position_fails = True
    assert repr(waiting) == "<JobHandle 'w' queued #? prio=0>"
    await lane.aclose(drain=False)


@pytest.mark.parametrize("kind", ["none", "ended", "running", "other-lane"])
async def test_a_policy_whose_pop_returns_no_queued_job_of_the_lane_fails_as_a_policy_error(
    kind: str,
) -> None:
    """A pop that returns None, an ended or running job, or another lane's job ends the
    queued jobs CANCELLED (caused by a RuntimeError naming what pop returned), touches
    nothing else, and the lane goes on with a fresh queue."""
    lane = Lane("x", 1, policy=_QueuePolicy())
    other = Lane("y", 1)
    other_gate = Gate()
    other_running = await other.submit(other_gate)
    foreign = await other.submit(value("foreign"), job_id="f")
    ended = await lane.submit(value(0), job_id="e")
    await ended
    first = Gate()
    running = await lane.submit(first, job_id="r")
    waiting = await lane.submit(value(1), job_id="w")
    await settle()
    returned: dict[str, Any] = {
        "none": None,
        "ended": ended,
        "running": running,
        "other-lane": foreign,
    }
    _queue(lane).pop_returns.append(returned[kind])
    if kind == "running":
        await lane.set_max_concurrent(2)  # a free slot: the lane pops the queue
    else:
        first.release()  # the running job ends: the lane pops the queue
    await settle()
    assert waiting.state is JobState.CANCELLED
    error = waiting.exception()
    assert isinstance(error, JobCancelled)
    assert str(error).startswith(
        "job 'w' in lane 'x' was cancelled: queue policy 'odd' failed (RuntimeError: "
    )
    what = {
        "none": "None",
        "ended": "job 'e', which is succeeded",
        "running": "job 'r', which is running",
        "other-lane": "job 'f' of lane 'y'",
    }[kind]
    assert str(error.__cause__) == (f"_Queue.pop() returned {what}, not a job queued in lane 'x'")
    assert foreign.state is JobState.QUEUED  # the other lane's job is untouched
    stats = await lane.stats()
    assert stats.queued == 0
    assert running.state is (JobState.RUNNING if kind == "running" else JobState.SUCCEEDED)
    assert await lane.run(value(2)) == 2
    if kind == "running":
        first.release()
        await running
    other_gate.release()
    await other_running
    assert await foreign == "foreign"
    await asyncio.wait_for(lane.aclose(), 1)
    await asyncio.wait_for(other.aclose(), 1)


async def test_closing_without_drain_survives_a_pop_that_returns_none() -> None:
    """aclose(drain=False) ends every queued job even when the policy's pop returns None."""
    lane = Lane("x", 1, policy=_QueuePolicy())
    await lane.submit(Gate())
    waiting = await lane.submit(value(1))
    _queue(lane).pop_returns.append(None)
    await asyncio.wait_for(lane.aclose(drain=False), 1)
    assert waiting.state is JobState.CANCELLED
    assert (await lane.stats()).queued == 0


@pytest.mark.parametrize("policy", [FIFO(), Priority(), Priority(aging=30), FairShare()], ids=repr)
@pytest.mark.parametrize("priority", [2**40, -(2**40), 10**309], ids=["2**40", "-2**40", "10**309"])
async def test_a_priority_outside_the_bound_is_refused(policy: QueuePolicy, priority: int) -> None:
    """A priority outside (-2**40, 2**40) is a ValueError naming the rule and the value,
    under every policy, and nothing is enqueued."""
    lane = Lane("x", 1, policy=policy)
    await lane.submit(Gate())
    with pytest.raises(ValueError, match=r"^priority must be between") as info:
        await lane.submit(value(1), priority=priority)
    assert str(info.value) == f"priority must be between -2**40 and 2**40, got {priority}"
    stats = await lane.stats()
    assert (stats.queued, stats.submitted) == (0, 1)
    await lane.aclose(drain=False)


async def test_aging_orders_the_largest_allowed_priorities_exactly() -> None:
    """Under Priority(aging=...) the largest allowed priorities still rank one level apart
    and age: a job one level below the top overtakes it after waiting one aging period."""
    clock = ManualClock()
    lane = Lane("x", 1, policy=Priority(aging=60), clock=clock)
    await lane.submit(Gate())
    top = 2**40 - 1
    low = await lane.submit(value(1), priority=top - 1)
    high = await lane.submit(value(2), priority=top)
    assert (high.position, low.position) == (1, 2)
    clock.advance(61)
    later = await lane.submit(value(3), priority=top)
    assert (high.position, low.position, later.position) == (1, 2, 3)
    await lane.aclose(drain=False)


async def test_an_arrival_does_not_preempt_on_a_lane_over_its_lowered_limit() -> None:
    """After the limit is lowered below the running count, an arrival preempts nothing
    (one freed slot would not let it start); it queues and starts once fewer than the
    limit run."""
    lane = Lane("x", 3, policy=Priority(), preemption=Preemption(min_runtime=0))
    gates = [Gate() for _ in range(3)]
    jobs = [await lane.submit(g, preemptible=True) for g in gates]
    await settle()
    await lane.set_max_concurrent(1)
    arrival = await lane.submit(value("urgent"), priority=5)
    await settle()
    assert [j.state for j in jobs] == [JobState.RUNNING] * 3
    assert not any(j.preempt_requested for j in jobs)
    assert arrival.state is JobState.QUEUED
    gates[0].release()
    gates[1].release()
    await settle()
    assert arrival.state is JobState.QUEUED  # still one running: the limit is 1
    gates[2].release()
    assert await asyncio.wait_for(arrival, 1) == "urgent"
    assert (await lane.stats()).preempted == 0
    await lane.aclose()


async def test_an_arrival_preempts_once_the_lane_is_back_at_its_limit() -> None:
    """Once a lane that was over its lowered limit is back at it, an arrival preempts as
    on any full lane."""
    lane = Lane("x", 2, preemption=Preemption(min_runtime=0))
    gates = [Gate() for _ in range(2)]
    jobs = [await lane.submit(g, preemptible=True) for g in gates]
    await settle()
    await lane.set_max_concurrent(1)
    gates[0].release()
    await settle()
    arrival = await lane.submit(value("urgent"), priority=5)
    assert await asyncio.wait_for(arrival, 1) == "urgent"
    assert jobs[1].state is JobState.PREEMPTED
    await lane.aclose()
