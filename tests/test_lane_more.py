"""More lane edge cases: admission at zero wait, observers, extreme weights, and queue
policies that fail."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from executus import (
    FairShare,
    JobCancelled,
    JobHandle,
    JobPreempted,
    JobState,
    Lane,
    LaneBusy,
    LaneEvent,
    PolicyState,
    Preemption,
    QueuePolicy,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle, value


async def test_max_wait_zero_refuses_a_queued_job_even_when_the_estimate_is_zero(
    clock: ManualClock,
) -> None:
    """max_wait=0 refuses a job that cannot start at once, even with an estimate of 0 s."""
    lane = Lane("x", 1, clock=clock)
    for i in range(3):  # runs that take no time: the mean run time is 0
        await lane.run(value(i))
    await lane.submit(Gate())
    with pytest.raises(LaneBusy) as busy:
        await lane.submit(value(9), max_wait=0)
    assert (busy.value.position, busy.value.eta) == (1, 0.0)
    stats = await lane.stats()
    assert (stats.queued, stats.rejected) == (0, 1)
    await lane.aclose(drain=False)


async def test_an_observer_removing_itself_holds_back_no_other_observer() -> None:
    """An observer that removes itself gets no more events, and the others get theirs now."""
    lane = Lane("x", 1)
    first: list[LaneEvent] = []
    second: list[LaneEvent] = []

    def once(event: LaneEvent) -> None:
        first.append(event)
        lane.remove_observer(once)

    lane.add_observer(once)
    lane.add_observer(second.append)
    await lane.set_max_concurrent(2)
    await lane.set_max_concurrent(3)
    await settle()
    assert [e.max_concurrent for e in first] == [2]
    assert [e.max_concurrent for e in second] == [2, 3]


@pytest.mark.parametrize("weight", [1e16, 1e300, 5e-324])
async def test_fair_share_positions_stay_distinct_with_an_extreme_weight(weight: float) -> None:
    """Under FairShare, positions are 1..n even when a weight is too large or too small
    for its key's turns to differ in virtual time."""
    lane = Lane("x", 1, policy=FairShare(weights={"a": weight}))
    first = Gate()
    await lane.submit(first, key="b")
    for _ in range(3):
        await lane.submit(Gate(), key="b")
    await settle()
    first.release()
    await settle()  # a start of "b" moved the virtual time on
    for _ in range(3):
        await lane.submit(Gate(), key="a")
    queued = [j for j in lane._jobs.values() if j.state is JobState.QUEUED]
    assert sorted(j.position for j in queued) == list(range(1, len(queued) + 1))
    await lane.aclose(drain=False)


class _Broken(PolicyState):
    """A FIFO queue whose methods can be told to raise."""

    def __init__(self) -> None:
        self.jobs: deque[JobHandle[Any]] = deque()
        self.fail: set[str] = set()

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise RuntimeError(f"{method} is broken")

    def push(self, job: JobHandle[Any], now: float) -> None:
        self._maybe_fail("push")
        self.jobs.append(job)

    def requeue(self, job: JobHandle[Any], now: float) -> None:
        self._maybe_fail("requeue")
        self.jobs.appendleft(job)

    def pop(self) -> JobHandle[Any]:
        self._maybe_fail("pop")
        return self.jobs.popleft()

    def remove(self, job: JobHandle[Any]) -> None:
        self._maybe_fail("remove")
        self.jobs.remove(job)

    def position(self, job: JobHandle[Any]) -> int:
        self._maybe_fail("position")
        return self.jobs.index(job) + 1

    def __len__(self) -> int:
        return len(self.jobs)


class _BrokenPolicy(QueuePolicy):
    name = "broken"

    def new_state(self) -> PolicyState:
        return _Broken()


def _broken(lane: Lane) -> _Broken:
    queue = lane._queue
    assert isinstance(queue, _Broken)
    return queue


async def test_a_policy_whose_pop_raises_ends_its_queued_jobs() -> None:
    """A queue policy that raises in pop ends its queued jobs CANCELLED, caused by its
    error, instead of stranding them; the lane goes on with a fresh queue."""
    lane = Lane("x", 1, policy=_BrokenPolicy())
    first = Gate()
    await lane.submit(first)
    waiting = await lane.submit(value(1))
    _broken(lane).fail.add("pop")
    await settle()
    first.release()
    await settle()
    assert waiting.state is JobState.CANCELLED
    error = waiting.exception()
    assert isinstance(error, JobCancelled)
    assert str(error) == (
        f"job {waiting.id!r} in lane 'x' was cancelled: queue policy 'broken' failed "
        "(RuntimeError: pop is broken)"
    )
    assert isinstance(error.__cause__, RuntimeError)
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 1)
    assert await lane.run(value(2)) == 2
    await asyncio.wait_for(lane.aclose(), 1)


async def test_a_policy_whose_position_raises_enqueues_nothing() -> None:
    """A submit whose policy raises while placing the job raises that error and enqueues
    nothing."""
    lane = Lane("x", 1, policy=_BrokenPolicy())
    await lane.submit(Gate())
    _broken(lane).fail.add("position")
    with pytest.raises(RuntimeError, match="position is broken"):
        await lane.submit(value(1), job_id="q", max_wait=5)
    assert "q" not in lane._jobs
    assert len(_broken(lane)) == 0
    assert (await lane.stats()).queued == 0
    await lane.aclose(drain=False)


async def test_a_policy_whose_requeue_raises_ends_the_victim_preempted() -> None:
    """A preempted job whose policy cannot take it back ends PREEMPTED, caused by the
    policy's error, and the arrival starts."""
    lane = Lane("x", 1, policy=_BrokenPolicy(), preemption=Preemption(min_runtime=0, requeue=True))
    victim = await lane.submit(Gate(), preemptible=True)
    await settle()
    _broken(lane).fail.add("requeue")
    arrival = await lane.submit(Gate(), priority=5)
    await settle()
    assert victim.state is JobState.PREEMPTED
    error = victim.exception()
    assert isinstance(error, JobPreempted)
    assert isinstance(error.__cause__, RuntimeError)
    assert arrival.state is JobState.RUNNING
    await asyncio.wait_for(lane.aclose(drain=False), 1)


async def test_a_policy_whose_admit_raises_refuses_the_submit() -> None:
    """A submit whose policy raises in admit raises that error and starts nothing."""

    class _NoAdmit(_Broken):
        def admit(self, job: JobHandle[Any], now: float) -> None:
            raise RuntimeError("admit is broken")

    class _NoAdmitPolicy(QueuePolicy):
        def new_state(self) -> PolicyState:
            return _NoAdmit()

    lane = Lane("x", 1, policy=_NoAdmitPolicy())
    with pytest.raises(RuntimeError, match="admit is broken"):
        await lane.submit(value(1), job_id="a")
    assert not lane._jobs
    stats = await lane.stats()
    assert (stats.submitted, stats.running) == (0, 0)
    await asyncio.wait_for(lane.aclose(), 1)


def test_clock_must_be_a_clock() -> None:
    """A clock without monotonic, time and call_later is refused with a TypeError."""
    with pytest.raises(TypeError) as error:
        Lane("x", clock=5)  # type: ignore[arg-type]
    assert str(error.value) == "clock must be a Clock (monotonic, time and call_later), got 5"


@pytest.mark.parametrize(
    ("eta", "max_wait", "shown"),
    [
        (3.04, 2.5, "estimated wait 3.0s exceeds max_wait 2.5s"),
        (0.04, 0.03, "estimated wait 0.04s exceeds max_wait 0.03s"),
        (0.0312, 0.031, "estimated wait 0.0312s exceeds max_wait 0.031s"),
        (2.0, 0, "estimated wait 2.0s; max_wait 0 admits only a job that can start at once"),
    ],
)
def test_lane_busy_reads_true(eta: float, max_wait: float, shown: str) -> None:
    """LaneBusy shows the wait with the digits it takes to exceed max_wait, and states the
    start-now rule of max_wait=0 instead of comparing with it."""
    assert str(LaneBusy("x", 2, eta, max_wait)) == f"lane 'x' is busy: position 2, {shown}"


async def test_a_job_draining_its_one_slot_lane_does_not_wait_for_the_queue_behind_it() -> None:
    """A job that closes its own one-slot lane with drain=True returns: the queued jobs
    need its slot, and run once it has ended."""
    lane = Lane("x", 1)
    queued = Gate()

    async def closer() -> str:
        await lane.submit(queued, job_id="queued")
        await lane.aclose()  # (in this task: ``wait_for`` would run it in another)
        return "closed"

    first = await lane.submit(closer)
    assert await asyncio.wait_for(first, 2) == "closed"
    await settle()
    assert queued.running
    queued.release("ran")
    assert await lane._jobs["queued"] == "ran"
    assert not lane._jobs


async def test_a_job_draining_its_lane_waits_for_jobs_that_can_end_first() -> None:
    """A job draining its own lane waits for the other running jobs; once only it runs
    and the queued jobs need its slot (the limit was lowered), it returns."""
    lane = Lane("x", 2)
    other, queued = Gate(), Gate()
    go, closed = asyncio.Event(), asyncio.Event()

    started_then: list[int] = []

    async def closer() -> None:
        await go.wait()
        await lane.aclose()
        started_then.append(queued.started)
        closed.set()

    await lane.submit(other, job_id="other")
    closing = await lane.submit(closer, job_id="closer")
    await lane.set_max_concurrent(1)
    waiting = await lane.submit(queued, job_id="queued")
    assert waiting.state is JobState.QUEUED
    go.set()
    await settle()
    assert not closed.is_set()  # "other" runs and can end first
    other.release()
    await asyncio.wait_for(closed.wait(), 1)
    assert started_then == [0]  # returned while the queued job waited for its slot
    await asyncio.wait_for(closing, 1)
    await settle()
    assert queued.running
    queued.release()
    await asyncio.wait_for(waiting, 1)


async def test_an_eta_window_beyond_what_a_lane_can_hold_is_a_value_error() -> None:
    """An eta_window above sys.maxsize is a ValueError naming the bound, at construction
    and in set_eta_window (it was a raw OverflowError)."""
    import sys

    message = rf"^eta_window must be <= {sys.maxsize}, got {sys.maxsize + 1}$"
    with pytest.raises(ValueError, match=message):
        Lane("x", eta_window=sys.maxsize + 1)
    lane = Lane("x")
    with pytest.raises(ValueError, match=message):
        await lane.set_eta_window(sys.maxsize + 1)
    assert lane._window.size == 16
