"""RedisLane against the in-process Lane: same start order and positions, random cases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executus import FIFO, FairShare, JobHandle, Lane, Priority, QueuePolicy
from executus.redis import RedisLane

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(60)]

POLICIES: dict[str, QueuePolicy] = {
    "fifo": FIFO(),
    "priority": Priority(),
    "fair-share": FairShare(weights={"a": 2.0, "c": 0.5}),
}

jobs_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(-2, 3), st.booleans()),
    min_size=1,
    max_size=14,
)


async def play(
    lanes: list[Any], jobs: list[tuple[str | None, int, bool]], slots: int
) -> tuple[list[int], list[int]]:
    """Fill the slots, queue ``jobs`` (alternating clients), then release one at a time.

    Returns the queued jobs' positions just after all were queued, and their start order.
    """
    started: list[int] = []
    gates: dict[int, asyncio.Event] = {}

    def body(i: int) -> Callable[[], Any]:
        gates[i] = asyncio.Event()

        async def run() -> None:
            started.append(i)
            await gates[i].wait()

        return run

    handles: list[JobHandle[Any]] = [await lanes[0].submit(body(-1 - i)) for i in range(slots)]
    for i, (key, priority, which) in enumerate(jobs):
        lane = lanes[int(which) % len(lanes)]
        handles.append(await lane.submit(body(i), key=key, priority=priority))
    for lane in lanes:
        if isinstance(lane, RedisLane):
            await lane.refresh()
    positions = [h.position for h in handles[slots:]]
    # Free one slot at a time, and only once the previous free slot was taken, so the
    # start order is the lane's grant order (not a race between two clients' tasks).
    total = len(handles)
    for released in range(total):
        want = min(total, released + slots)
        async with asyncio.timeout(10):
            while len(started) < want:  # noqa: ASYNC110 - grants arrive from Redis
                await asyncio.sleep(0.001)
        gates[next(i for i in started if not gates[i].is_set())].set()
    await asyncio.gather(*handles)
    return positions, [i for i in started if i >= 0]


@pytest.mark.parametrize("policy", sorted(POLICIES))
# redis_server is function-scoped only to run on both servers; it hands out a session
# server, so reusing it across examples is safe.
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(jobs=jobs_strategy, slots=st.integers(1, 2))
def test_same_order_as_lane(
    policy: str, jobs: list[tuple[str | None, int, bool]], slots: int, redis_server: RedisServer
) -> None:
    """Queued jobs start in the in-process Lane's order and report its positions."""

    async def main() -> None:
        namespace = f"c{uuid.uuid4().hex[:12]}"
        reference = Lane("lane", slots, policy=POLICIES[policy])
        ref = await play([reference], jobs, slots)
        a = RedisLane("lane", redis_server.url, slots, policy=POLICIES[policy],
                      namespace=namespace)  # fmt: skip
        b = RedisLane("lane", redis_server.url, namespace=namespace)
        try:
            got = await play([a, b], jobs, slots)
        finally:
            await a.aclose(drain=False)
            await b.aclose(drain=False)
        assert got == ref

    asyncio.run(main())
