"""Preemption: who is evicted, when, and the slot limit while it happens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
    PolicyState,
    Preemption,
    Priority,
    current_job,
)
from executus._policies import _FairShareState
from executus.testing import ManualClock
from tests.helpers import Gate, settle


def test_preemption_settings_are_validated() -> None:
    """Preemption refuses negative times and non-bool requeue, naming the value."""
    with pytest.raises(ValueError, match=r"^min_runtime must be a finite number >= 0, got -1$"):
        Preemption(min_runtime=-1)
    with pytest.raises(TypeError, match=r"^grace must be a number of seconds, got '5'$"):
        Preemption(grace="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^requeue must be a bool, got 1$"):
        Preemption(requeue=1)  # type: ignore[arg-type]


async def test_never_more_than_max_while_the_victim_unwinds() -> None:
    """The arrival waits until the victim's task has ended: running never exceeds max."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    live = 0
    peak = 0
    unwind = asyncio.Event()

    async def slow_to_stop() -> None:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await unwind.wait()  # cleanup that takes a while
            raise
        finally:
            live -= 1

    async def urgent() -> str:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        live -= 1
        return "done"

    victim = await lane.submit(slow_to_stop, preemptible=True)
    await settle()
    arrival = await lane.submit(urgent, priority=5)
    assert arrival.state is JobState.QUEUED
    assert arrival.position == 1
    await settle(10)
    assert arrival.state is JobState.QUEUED  # the victim is still unwinding
    assert (await lane.stats()).running == 1
    unwind.set()
    assert await arrival == "done"
    assert peak == 1
    with pytest.raises(JobPreempted, match=r"^job '.*' in lane 'gpu' was preempted$"):
        await victim
    assert victim.state is JobState.PREEMPTED
    assert (await lane.stats()).preempted == 1


async def test_victim_choice_lowest_priority_then_earliest(clock: ManualClock) -> None:
    """The victim is the lowest-priority preemptible job, earliest started among equals."""
    lane = Lane("gpu", 4, preemption=Preemption(min_runtime=10), clock=clock)
    low_old = await lane.submit(Gate(), priority=1, preemptible=True, job_id="low-old")
    clock.advance(1)
    low_new = await lane.submit(Gate(), priority=1, preemptible=True, job_id="low-new")
    lowest_pinned = await lane.submit(Gate(), priority=0, job_id="pinned")
    mid = await lane.submit(Gate(), priority=2, preemptible=True, job_id="mid")
    await settle()
    clock.advance(20)
    await lane.submit(Gate(), priority=3)
    assert low_old.preempt_requested
    assert not any(h.preempt_requested for h in (low_new, lowest_pinned, mid))
    await lane.submit(Gate(), priority=3)
    assert low_new.preempt_requested
    await lane.submit(Gate(), priority=3)
    assert mid.preempt_requested
    # Nothing preemptible with lower priority is left: the next arrival queues.
    last = await lane.submit(Gate(), priority=3)
    await settle()
    assert last.state is JobState.QUEUED
    assert not lowest_pinned.preempt_requested
    await lane.aclose(drain=False)


async def test_min_runtime_and_strictly_lower_priority(clock: ManualClock) -> None:
    """Jobs younger than min_runtime, or of equal priority, are not preempted."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=30), clock=clock)
    victim = await lane.submit(Gate(), priority=1, preemptible=True)
    await settle()
    clock.advance(29)
    early = await lane.submit(Gate(), priority=5)
    assert not victim.preempt_requested
    await lane.cancel(early.id)
    clock.advance(1)
    equal = await lane.submit(Gate(), priority=1)
    assert not victim.preempt_requested
    await lane.cancel(equal.id)
    await lane.submit(Gate(), priority=2)
    assert victim.preempt_requested
    await lane.aclose(drain=False)


async def test_grace_delays_the_cancel(clock: ManualClock) -> None:
    """The victim sees preempt_requested at once and is cancelled after grace seconds."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=5), clock=clock)
    seen: list[bool] = []
    gate = Gate()

    async def victim_body() -> object:
        ctx = current_job()
        assert ctx is not None
        try:
            return await gate()
        finally:
            seen.append(ctx.preempt_requested)

    victim = await lane.submit(victim_body, preemptible=True)
    await settle()
    arrival = await lane.submit(Gate(), priority=1)
    assert victim.preempt_requested
    assert arrival.eta == pytest.approx(5.0)
    clock.advance(4.9)
    await settle()
    assert victim.state is JobState.RUNNING
    clock.advance(0.1)
    await settle()
    assert victim.state is JobState.PREEMPTED
    assert seen == [True]
    assert arrival.state is JobState.RUNNING
    await lane.aclose(drain=False)


async def test_cooperative_victim_that_returns_during_grace_succeeds(clock: ManualClock) -> None:
    """A victim that finishes on its own during the grace period ends SUCCEEDED."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=10), clock=clock)
    gate = Gate()
    victim = await lane.submit(gate, preemptible=True)
    await settle()
    arrival = await lane.submit(Gate(), priority=1)
    gate.release("saved")
    assert await victim == "saved"
    await settle()
    assert arrival.state is JobState.RUNNING
    assert clock.pending_timers == 0
    await lane.aclose(drain=False)


async def test_requeue_keeps_the_original_place_and_runs_again() -> None:
    """requeue=True puts the victim back at its arrival place; it reruns and succeeds."""
    lane = Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0, requeue=True))
    victim_gate = Gate()
    victim = await lane.submit(victim_gate, preemptible=True)
    await settle()
    later = await lane.submit(Gate(), job_id="later")  # same priority, arrived after
    urgent_gate = Gate()
    urgent = await lane.submit(urgent_gate, priority=9)
    await settle()
    assert victim.state is JobState.QUEUED
    assert victim.preemptions == 1
    assert victim.position == 1  # ahead of "later": its original arrival place
    assert later.position == 2
    urgent_gate.release()
    await urgent
    await settle()
    assert victim.state is JobState.RUNNING
    assert victim_gate.started == 2
    victim_gate.release("second run")
    assert await victim == "second run"
    stats = await lane.stats()
    assert (stats.preempted, stats.succeeded) == (1, 2)
    await lane.aclose(drain=False)


async def test_arrival_goes_ahead_of_every_queued_job() -> None:
    """The preemptor takes the freed slot before jobs that queued earlier."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    await lane.submit(Gate(), preemptible=True)
    queued = await lane.submit(Gate(), priority=0)
    await settle()
    arrival = await lane.submit(Gate(), priority=1)
    assert arrival.position == 1
    assert queued.position == 2
    await settle()
    assert arrival.state is JobState.RUNNING
    assert queued.state is JobState.QUEUED
    await lane.aclose(drain=False)


async def test_preempted_slot_raises_job_preempted() -> None:
    """A preempted slot() body is cancelled and JobPreempted leaves the async with."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    inside = asyncio.Event()

    async def batch() -> None:
        async with lane.slot(preemptible=True):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(batch())
    await inside.wait()
    arrival = await lane.submit(Gate(), priority=1)
    with pytest.raises(JobPreempted):
        await task
    await settle()
    assert arrival.state is JobState.RUNNING
    assert (await lane.stats()).preempted == 1
    await lane.aclose(drain=False)


async def test_outside_cancel_of_a_preempted_slot_stays_a_cancel() -> None:
    """If someone else also cancels the slot's task, CancelledError propagates."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    inside = asyncio.Event()

    async def batch() -> None:
        async with lane.slot(preemptible=True):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(batch())
    await inside.wait()
    await lane.submit(Gate(), priority=1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await lane.aclose(drain=False)


async def test_preemption_respects_max_wait_grace(clock: ManualClock) -> None:
    """An arrival that would wait out a grace longer than max_wait is refused."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=10), clock=clock)
    victim = await lane.submit(Gate(), preemptible=True)
    await settle()
    with pytest.raises(LaneBusy) as info:
        await lane.submit(Gate(), priority=1, max_wait=5)
    assert (info.value.position, info.value.eta) == (1, 10.0)
    assert not victim.preempt_requested  # refused arrivals preempt nothing
    await lane.aclose(drain=False)


async def test_set_preemption_none_disables_it() -> None:
    """After set_preemption(None), arrivals queue instead of preempting."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    victim = await lane.submit(Gate(), preemptible=True)
    await lane.set_preemption(None)
    await lane.submit(Gate(), priority=5)
    assert not victim.preempt_requested
    await lane.aclose(drain=False)


async def test_a_preemptor_preempted_in_turn_is_requeued_under_fair_share() -> None:
    """Under FairShare, a job that started as a preemptor and is then preempted with
    requeue goes back to its key's queue, ahead of that key's lower priorities, and
    every job runs to its end."""
    lane = Lane("gpu", 1, policy=FairShare(), preemption=Preemption(min_runtime=0, requeue=True))
    first, second, third = Gate(), Gate(), Gate()
    low = await lane.submit(first, key="a", preemptible=True)
    await settle()
    mid = await lane.submit(second, key="a", priority=1, preemptible=True)
    await settle()
    assert (low.state, mid.state) == (JobState.QUEUED, JobState.RUNNING)
    top = await lane.submit(third, key="b", priority=2)
    await settle()
    assert (low.state, mid.state, top.state) == (
        JobState.QUEUED,
        JobState.QUEUED,
        JobState.RUNNING,
    )
    assert (mid.position, low.position) == (1, 2)
    third.release("top")
    assert await top == "top"
    await settle()
    assert mid.state is JobState.RUNNING
    second.release("mid")
    assert await mid == "mid"
    await settle()
    first.release("low")
    assert await low == "low"
    assert (low.preemptions, mid.preemptions) == (1, 1)


async def test_oldest_queued_at_counts_a_requeued_job_from_its_requeue(
    clock: ManualClock,
) -> None:
    """stats().oldest_queued_at of a job requeued by a preemption is its requeue time,
    as its STARTED event's wait counts, unless a job queued earlier still waits."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, requeue=True), clock=clock)
    batch_gate, urgent_gate = Gate(), Gate()
    batch = await lane.submit(batch_gate, preemptible=True)
    await settle()
    clock.advance(100)  # the batch job runs 100 s
    urgent = await lane.submit(urgent_gate, priority=5)
    await settle()
    assert (batch.state, batch.preemptions, urgent.state) == (JobState.QUEUED, 1, JobState.RUNNING)
    requeued_at = urgent.started_at  # it started as the batch job's task ended
    assert requeued_at is not None
    assert (await lane.stats()).oldest_queued_at == requeued_at
    clock.advance(10)
    later = await lane.submit(Gate())  # queued after the requeue: not the oldest
    assert (await lane.stats()).oldest_queued_at == requeued_at
    urgent_gate.release()
    await settle()
    assert batch.state is JobState.RUNNING
    assert (await lane.stats()).oldest_queued_at == later.submitted_at
    await lane.aclose(drain=False)


async def test_oldest_queued_at_is_a_job_queued_before_a_requeue(clock: ManualClock) -> None:
    """A job submitted before another job's requeue and still queued is the oldest."""
    lane = Lane("gpu", 2, preemption=Preemption(min_runtime=0, requeue=True), clock=clock)
    first = await lane.submit(Gate(), preemptible=True)
    await lane.submit(Gate())
    await settle()
    clock.advance(50)
    waiting = await lane.submit(Gate())  # queued at 50
    clock.advance(50)
    await lane.submit(Gate(), priority=5)  # at 100: requeues the first job
    await settle()
    assert (first.state, first.preemptions) == (JobState.QUEUED, 1)
    assert (await lane.stats()).oldest_queued_at == waiting.submitted_at
    await lane.aclose(drain=False)


class _RemoveFails(FairShare):
    """FairShare whose queue raises on its next ``remove`` once told to."""

    name = "remove-fails"

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def new_state(self) -> PolicyState:
        policy = self

        class State(_FairShareState):
            def remove(self, job: JobHandle[Any]) -> None:
                if policy.fail_next:
                    policy.fail_next = False
                    raise RuntimeError("remove is broken")
                super().remove(job)

        return State(self)


async def test_a_fresh_queue_after_a_policy_failure_counts_the_waiting_arrival(
    clock: ManualClock,
) -> None:
    """When the policy fails while an arrival waits out its victim's grace, the fresh
    queue the lane goes on with counts the arrival's start too: jobs queued next report
    the places they start in."""
    policy = _RemoveFails()
    lane = Lane(
        "gpu", 1, policy=policy, preemption=Preemption(min_runtime=0, grace=30), clock=clock
    )
    victim_gate = Gate()
    victim = await lane.submit(victim_gate, key="x", preemptible=True)
    await settle()
    doomed = await lane.submit(Gate(), key="z")
    urgent = Gate()
    arrival = await lane.submit(urgent, key="a", priority=5)
    assert victim.preempt_requested
    policy.fail_next = True
    assert await doomed.cancel()
    assert isinstance(doomed.exception(), JobCancelled)
    log: list[str] = []

    def recorder(name: str) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            log.append(name)

        return body

    queued = {n: await lane.submit(recorder(n), key=n[0]) for n in ("b1", "b2", "a1")}
    places = {n: h.position for n, h in queued.items()}
    assert places == {"b1": 2, "b2": 3, "a1": 4}
    victim_gate.release()
    await settle()
    assert arrival.state is JobState.RUNNING
    urgent.release()
    await asyncio.gather(arrival, victim, *queued.values())
    assert log == sorted(places, key=places.__getitem__)
