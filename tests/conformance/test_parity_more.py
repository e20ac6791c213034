"""More parity of RedisLane with the in-process Lane, checked on every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from executus import FairShare, JobHandle, JobState, Preemption
from tests.helpers import Gate

from .conftest import MakeLane
from .helpers import until

pytestmark = pytest.mark.timeout(30)


async def test_a_requeue_into_an_idle_key_restarts_where_new_work_starts(
    make_lane: MakeLane,
) -> None:
    """A job requeued into a key with nothing queued gets its start back, but no credit
    for the time the key was idle: the key goes on from where new work starts (V), not
    from its old place in the fair-share order."""
    lane = await make_lane(
        "gpu",
        2,
        policy=FairShare(weights={"a": 0.25}),  # each start of "a" costs 4 turns
        preemption=Preemption(min_runtime=0, requeue=True),
    )
    log: list[str] = []
    gates: dict[str, Gate] = {}
    handles: dict[str, JobHandle[object]] = {}

    def job(name: str) -> Callable[[], Awaitable[object]]:
        gate = gates[name] = Gate()

        async def body() -> object:
            log.append(name)
            return await gate()

        return body

    async def submit(name: str, key: str, **options: Any) -> None:
        handles[name] = await lane.submit(job(name), job_id=name, key=key, **options)

    async def finish(name: str) -> None:
        """End the running job ``name`` and wait for the slot's next start."""
        starts = len(log)
        gates[name].release()
        await handles[name]
        await until(lambda: len(log) > starts)

    # "a" starts at virtual time 0 (its next start is due at 4); "c" at 0 too.
    await submit("a1", "a", preemptible=True)
    await submit("c1", "c")
    await until(lambda: log == ["a1", "c1"])
    for i in range(2, 7):
        await submit(f"c{i}", "c")  # queued at virtual times 1 .. 5
    await finish("c1")
    await finish("c2")  # c3 started: V = 2, while "a" has had nothing queued
    assert log == ["a1", "c1", "c2", "c3"]

    # "x" preempts a1, which goes back to the queue of a key that is idle.
    await submit("x1", "x", priority=1)
    await until(lambda: log[-1] == "x1" and handles["a1"].state is JobState.QUEUED)
    # a1 restarts at V = 2 (its refunded start at 0 would be credit for idle time), so
    # a2 is due 4 turns later, at 6: after c4, c5 and c6 (3, 4, 5), not before c5.
    await submit("a2", "a")
    del log[:]
    for name in ("c3", "x1", "a1", "c4", "c5"):
        await finish(name)
    assert log == ["a1", "c4", "c5", "c6", "a2"]
    assert gates["a1"].started == 2
    for name in ("c6", "a2"):
        gates[name].release(name)
        assert await handles[name] == name
