"""FairShare while a preemption arrival waits for its victim's slot, on every backend.

The arrival starts ahead of every queued job; its key is charged that start as soon as
it arrives, so queued jobs' positions during the victim's grace are the order in which
they then start, and an arrival that leaves without starting takes its charge back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from executus import FairShare, JobHandle, JobState, Preemption
from tests.helpers import Gate

from .conftest import MakeLane
from .helpers import AnyLane, outcome, recorder, refresh, until

pytestmark = pytest.mark.timeout(30)

GRACE = Preemption(min_runtime=0, grace=30)


async def in_grace(lane: AnyLane, key: str = "x") -> tuple[JobHandle[object], Gate]:
    """Start a preemptible job of ``key`` on the lane's one slot: the victim to be."""
    gate = Gate()
    victim: JobHandle[object] = await lane.submit(gate, key=key, preemptible=True)
    await until(lambda: gate.running)
    return victim, gate


async def positions(lane: AnyLane, handles: dict[str, JobHandle[Any]]) -> dict[str, int]:
    await refresh(lane)
    return {name: h.position for name, h in handles.items()}


def by_position(places: dict[str, int]) -> list[str]:
    return sorted(places, key=places.__getitem__)


async def test_positions_during_a_grace_count_the_arrivals_start(make_lane: MakeLane) -> None:
    """While an arrival of a backlogged key waits out its victim's grace, that key's
    queued jobs already sit one turn back (a job another key queues meanwhile too):
    their positions are the order in which they start once the arrival has run."""
    lane = await make_lane("x", 1, policy=FairShare(), preemption=GRACE)
    log: list[str] = []
    victim, victim_gate = await in_grace(lane)
    queued = {
        name: await lane.submit(recorder(log, name), key=name[0])
        for name in ("a1", "a2", "b1", "b2")
    }
    urgent = asyncio.Event()
    arrival = await lane.submit(recorder(log, "u", urgent), key="a", priority=5)
    await until(lambda: victim.preempt_requested)
    queued["c1"] = await lane.submit(recorder(log, "c1"), key="c")
    places = await positions(lane, queued)
    assert arrival.position == 1
    assert places == {"b1": 2, "c1": 3, "a1": 4, "b2": 5, "a2": 6}
    victim_gate.release("done")  # the victim ends within its grace: the arrival starts
    await until(lambda: log == ["u"])
    assert await victim == "done"
    assert await positions(lane, queued) == {name: p - 1 for name, p in places.items()}
    urgent.set()
    await asyncio.gather(arrival, *queued.values())
    assert log == ["u", *by_position(places)]


async def test_a_job_of_an_idle_arrivals_key_queues_behind_its_start(
    make_lane: MakeLane,
) -> None:
    """A job queued during the grace by the key of a waiting arrival that had nothing
    queued is placed after the start charged to that key: its position is where it
    starts once the arrival has run."""
    lane = await make_lane("x", 1, policy=FairShare(), preemption=GRACE)
    log: list[str] = []
    victim, victim_gate = await in_grace(lane)
    queued = {name: await lane.submit(recorder(log, name), key="b") for name in ("b1", "b2")}
    urgent = asyncio.Event()
    arrival = await lane.submit(recorder(log, "u", urgent), key="a", priority=5)
    await until(lambda: victim.preempt_requested)
    queued["a1"] = await lane.submit(recorder(log, "a1"), key="a")
    places = await positions(lane, queued)
    assert places == {"b1": 2, "b2": 3, "a1": 4}
    victim_gate.release()
    await until(lambda: log == ["u"])
    urgent.set()
    await asyncio.gather(arrival, victim, *queued.values())
    assert log == ["u", *by_position(places)]


@pytest.mark.parametrize("how", ["handle", "lane", "run"])
async def test_an_arrival_that_leaves_in_its_grace_takes_its_charge_back(
    make_lane: MakeLane, how: str
) -> None:
    """An arrival cancelled while its victim's grace runs (by its handle, by id, or by
    cancelling the task of its ``run``) leaves no trace in the fair-share order: the
    queued jobs' positions, and the order they start in, are as if it had never come."""
    lane = await make_lane("x", 1, policy=FairShare(), preemption=GRACE)
    log: list[str] = []
    victim, victim_gate = await in_grace(lane)
    queued = {
        name: await lane.submit(recorder(log, name), key=name[0])
        for name in ("a1", "a2", "b1", "b2")
    }
    before = await positions(lane, queued)
    assert before == {"a1": 1, "b1": 2, "a2": 3, "b2": 4}
    task: asyncio.Task[Any] | None = None
    handle: JobHandle[str] | None = None
    if how == "run":
        task = asyncio.create_task(lane.run(recorder(log, "u"), job_id="u", key="a", priority=5))
    else:
        handle = await lane.submit(recorder(log, "u"), job_id="u", key="a", priority=5)
    await until(lambda: victim.preempt_requested)
    queued["c1"] = await lane.submit(recorder(log, "c1"), key="c")
    assert await positions(lane, queued) == {"b1": 2, "c1": 3, "a1": 4, "b2": 5, "a2": 6}
    if how == "handle":
        assert handle is not None
        assert await handle.cancel()
    elif how == "lane":
        await lane.cancel("u")
    else:
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: not victim.preempt_requested)  # spared: nobody waits for its slot
    # As if the arrival had never come: c1 is a newcomer next to a1 and b1.
    expected = {"a1": 1, "b1": 2, "c1": 3, "a2": 4, "b2": 5}
    for _ in range(100):
        if await positions(lane, queued) == expected:
            break
        await asyncio.sleep(0.01)
    assert await positions(lane, queued) == expected
    victim_gate.release()
    await victim
    await asyncio.gather(*queued.values())
    assert log == by_position(expected)
    assert "u" not in log


async def test_a_requeued_victim_of_the_arrivals_key_goes_where_it_would_have(
    make_lane: MakeLane,
) -> None:
    """A victim requeued into the key of its arrival, whose accounts the lane had
    forgotten while its other jobs ran, gets that key's next turn after the arrival's
    start, behind the jobs queued in the meantime: the same order on every backend,
    whether the start was counted when the arrival came or when it started."""
    lane = await make_lane(
        "x", 2, policy=FairShare(), preemption=Preemption(min_runtime=0, requeue=True)
    )
    log: list[str] = []
    gates: dict[str, Gate] = {}
    handles: dict[str, JobHandle[object]] = {}
    unwind = asyncio.Event()

    def job(name: str, *, slow_to_stop: bool = False) -> Callable[[], Awaitable[object]]:
        gate = gates[name] = Gate()

        async def body() -> object:
            log.append(name)
            try:
                return await gate()
            except asyncio.CancelledError:
                if slow_to_stop:
                    await unwind.wait()  # the arrival waits until the victim has unwound
                raise

        return body

    async def submit(name: str, key: str, **options: Any) -> None:
        slow = options.pop("slow_to_stop", False)
        handles[name] = await lane.submit(
            job(name, slow_to_stop=slow), job_id=name, key=key, **options
        )

    async def finish(name: str) -> None:
        starts = len(log)
        gates[name].release()
        await handles[name]
        await until(lambda: len(log) > starts)

    await submit("v", "a", preemptible=True, slow_to_stop=True)
    await submit("c1", "c")
    await until(lambda: log == ["v", "c1"])
    for name in ("c2", "c3", "c4"):
        await submit(name, "c")
    await finish("c1")
    await finish("c2")  # c3 runs: "a" has had nothing queued while "c" moved on
    await submit("b1", "b")
    await submit("u", "a", priority=5)
    await until(lambda: gates["v"].cancelled)
    wait = {name: handles[name] for name in ("b1", "c4")}
    assert handles["u"].position == 1
    assert await positions(lane, wait) == {"b1": 2, "c4": 3}
    unwind.set()
    await until(lambda: log[-1] == "u" and handles["v"].state is JobState.QUEUED)
    wait["v"] = handles["v"]
    assert await positions(lane, wait) == {"b1": 1, "c4": 2, "v": 3}
    del log[:]
    for name in ("c3", "u", "b1"):
        await finish(name)
    assert log == ["b1", "c4", "v"]
    assert gates["v"].started == 2
    for name in ("c4", "v"):
        gates[name].release(name)
        assert await outcome(handles[name]) == name
