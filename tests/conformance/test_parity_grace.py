"""Parity of RedisLane with the in-process Lane, checked on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executus import JobHandle, JobState, Preemption
from tests.helpers import Gate

from .conftest import MakeLane
from .helpers import AnyLane, refresh, until

pytestmark = pytest.mark.timeout(30)


async def started(lane: AnyLane, gate: Gate, **options: Any) -> JobHandle[object]:
    """Submit ``gate`` and wait until its body runs."""
    handle: JobHandle[object] = await lane.submit(gate, **options)
    await until(lambda: gate.running)
    return handle


async def test_a_grace_under_way_keeps_its_length_when_the_setting_changes(
    make_lane: MakeLane,
) -> None:
    """set_preemption during a victim's grace leaves that grace as it was asked: the
    ETA behind the victim still counts it, and it can still be called off."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30))
    gate = Gate()
    victim = await started(lane, gate, preemptible=True)
    arrival = await lane.submit(Gate(), priority=1)
    await until(lambda: victim.preempt_requested)
    await lane.set_preemption(Preemption(min_runtime=0, grace=0))
    behind = await lane.submit(Gate())
    await refresh(lane)
    # The arrival starts when the victim's 30 s grace is over; the next job after that.
    assert arrival.eta > 25
    assert behind.eta > 25
    assert await arrival.cancel()
    await until(lambda: not victim.preempt_requested)  # spared: its grace still ran
    gate.release("kept")
    async with asyncio.timeout(5):
        assert await victim == "kept"
    assert victim.state is JobState.SUCCEEDED


async def test_an_arrival_takes_the_slot_of_a_victim_nobody_waits_for(
    make_lane: MakeLane,
) -> None:
    """A victim whose task was cancelled (grace 0) but whose arrival was then cancelled
    still frees its slot: the next urgent arrival takes it and evicts nobody else."""
    lane = await make_lane("gpu", 2, preemption=Preemption(min_runtime=0, grace=0))
    unwind = asyncio.Event()
    unwinding = asyncio.Event()
    bodies: list[str] = []

    async def slow_to_stop() -> None:
        bodies.append("running")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            unwinding.set()
            await unwind.wait()  # the victim takes a moment to unwind
            raise

    victim = await lane.submit(slow_to_stop, preemptible=True)
    other = await lane.submit(slow_to_stop, preemptible=True)
    await until(lambda: len(bodies) == 2)
    first = await lane.submit(Gate(), priority=5)
    async with asyncio.timeout(5):
        await unwinding.wait()  # the victim's task has been cancelled
    await first.cancel()
    gate = Gate()
    second = await lane.submit(gate, priority=5)
    unwind.set()
    await until(lambda: second.state is JobState.RUNNING)
    assert victim.state is JobState.PREEMPTED
    assert other.state is JobState.RUNNING
    assert not other.preempt_requested
    stats = await lane.stats()
    assert (stats.running, stats.preempted) == (2, 1)
    gate.release()
    await lane.aclose(drain=False)
