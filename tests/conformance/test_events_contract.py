"""Lane events, checked on every backend: what observers see of their jobs."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from executus import EventKind, JobState, LaneBusy, LaneEvent, Preemption
from tests.helpers import Gate, value

from .conftest import MakeLane
from .helpers import until

pytestmark = pytest.mark.timeout(30)


class Log:
    def __init__(self) -> None:
        self.events: list[LaneEvent] = []

    def __call__(self, event: LaneEvent) -> None:
        self.events.append(event)

    def kinds(self, job_id: str) -> list[str]:
        return [e.kind.value for e in self.events if e.job_id == job_id]


async def test_lifecycle_events(make_lane: MakeLane) -> None:
    """A queued job reports submitted, started with its wait, and finished with its run."""
    lane = await make_lane("ev", 1)
    log = Log()
    lane.add_observer(log)
    gate = Gate()
    await lane.submit(gate, job_id="first")
    await until(lambda: gate.running)
    second = await lane.submit(value("v"), job_id="second", key="k")
    gate.release()
    assert await second == "v"
    await until(lambda: log.kinds("second") == ["submitted", "started", "finished"])
    submitted, started, finished = (e for e in log.events if e.job_id == "second")
    assert (submitted.state, submitted.position, submitted.key) == (JobState.QUEUED, 1, "k")
    assert submitted.eta is not None  # a queued job's event carries its ETA
    assert submitted.eta >= 0
    assert started.wait is not None
    assert started.wait >= 0
    assert finished.state is JobState.SUCCEEDED
    assert finished.run is not None
    assert finished.run >= 0


async def test_refusals_cancels_and_preemptions(make_lane: MakeLane) -> None:
    """Rejected, cancelled and preempted jobs are reported, each job ending once."""
    lane = await make_lane("ev", 1, preemption=Preemption(min_runtime=0))
    log = Log()
    lane.add_observer(log)
    victim = Gate()
    await lane.submit(victim, job_id="victim", preemptible=True)
    await until(lambda: victim.running)
    queued = await lane.submit(Gate(), job_id="queued")
    with pytest.raises(LaneBusy):
        await lane.submit(value(1), job_id="refused", max_wait=0)
    await queued.cancel()
    urgent = Gate()
    await lane.submit(urgent, job_id="urgent", priority=5)
    await until(lambda: urgent.running)
    urgent.release()
    await until(lambda: "finished" in log.kinds("urgent"))
    assert [e.kind for e in log.events].count(EventKind.REJECTED) == 1
    assert log.kinds("queued") == ["submitted", "cancelled"]
    assert log.kinds("victim")[-1] == "preempted"
    ends = Counter(
        e.job_id
        for e in log.events
        if e.kind in (EventKind.FINISHED, EventKind.CANCELLED, EventKind.PREEMPTED)
    )
    assert ends == {"victim": 1, "queued": 1, "urgent": 1}


async def test_a_requeued_jobs_start_reports_its_wait_since_the_requeue(
    make_lane: MakeLane,
) -> None:
    """STARTED.wait of a requeued job's next start counts from its requeue: its first
    run (here a whole second) is not queue time."""
    lane = await make_lane("ev", 1, preemption=Preemption(min_runtime=0, requeue=True))
    log = Log()
    lane.add_observer(log)
    runs = 0

    async def victim() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(60)  # until preempted

    handle = await lane.submit(victim, job_id="victim", preemptible=True)
    await until(lambda: runs == 1)
    await asyncio.sleep(1.0)
    urgent = Gate()
    await lane.submit(urgent, job_id="urgent", priority=5)
    await until(lambda: urgent.running)
    urgent.release()
    await handle
    await until(lambda: log.kinds("victim").count("started") == 2)
    waits = [e.wait for e in log.events if e.job_id == "victim" and e.kind is EventKind.STARTED]
    assert waits[1] is not None
    assert 0 <= waits[1] < 1.0
