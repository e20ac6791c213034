"""RedisLane under FairShare while a preemption arrival waits for its victim's slot: the
arrival's start is counted from its arrival, and taken back when its client is gone or
recounted when the lane's state is rebuilt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus import FairShare, JobHandle, Preemption
from executus.redis import RedisLane

from .helpers import RedisServer, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]
GRACE = Preemption(min_runtime=0, grace=30)


def recorder(log: list[str], name: str) -> Callable[[], Awaitable[str]]:
    async def body() -> str:
        log.append(name)
        return name

    return body


async def positions(lane: RedisLane, handles: dict[str, JobHandle[Any]]) -> dict[str, int]:
    await lane.refresh()
    return {name: h.position for name, h in handles.items()}


@pytest.mark.parametrize("how", ["swept", "skipped"])
async def test_the_charge_of_an_arrival_whose_client_died_is_taken_back(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, how: str
) -> None:
    """An arrival whose client dies in its victim's grace leaves no trace in the
    fair-share order, whether a heartbeat sweeps it out of the queue (its client's
    liveness lapsed) or the grant that reaches it skips it (a client never seen alive)."""
    lane = make_lane(max_concurrent=1, policy=FairShare(), preemption=GRACE)
    gate = asyncio.Event()
    victim = await lane.submit(gate.wait, key="x", preemptible=True)
    await until(lambda: victim.state.value == "running")
    log: list[str] = []
    queued = {n: await lane.submit(recorder(log, n), key=n[0]) for n in ("a1", "a2", "b1", "b2")}
    procs = f"{{{namespace}:lane}}:procs"
    if how == "swept":
        await admin.zadd(procs, {"ghost": time.time() * 1000 + 60_000})
    # The arrival of a client that then dies without a word.
    reply = await lane._eval("submit", ["ghost", "u", "n1", "1", "a", "5", "0", "5000", "-1", "1"])
    assert reply[0] == b"QP"
    await until(lambda: victim.preempt_requested)
    assert await positions(lane, queued) == {"b1": 2, "a1": 3, "b2": 4, "a2": 5}
    if how == "swept":
        await admin.zadd(procs, {"ghost": 1})  # its liveness lapsed
        assert await positions(lane, queued) == {"a1": 1, "b1": 2, "a2": 3, "b2": 4}
    gate.set()  # the victim ends (a grant skips the arrival of a dead client)
    await victim
    await asyncio.gather(*queued.values())
    assert log == ["a1", "b1", "a2", "b2"]
    stats = await lane.stats()
    assert (stats.queued, stats.cancelled) == (0, 1)


async def test_an_arrival_is_charged_again_when_the_lane_is_rebuilt(
    private_redis: RedisServer, namespace: str
) -> None:
    """After Redis restarts without persistence, the arrival's client puts it back among
    the arrivals with its start counted again: its key's queued jobs still sit behind
    another key's, as they start."""
    url = private_redis.url
    a = RedisLane(
        "lane", url, 1, policy=FairShare(), preemption=GRACE, namespace=namespace, lease=5.0
    )
    b = RedisLane("lane", url, policy=FairShare(), namespace=namespace, lease=5.0)
    gate = asyncio.Event()
    log: list[str] = []
    try:
        victim = await a.submit(gate.wait, key="x", preemptible=True)
        await until(lambda: victim.state.value == "running")
        queued = {n: await b.submit(recorder(log, n), key=n[0]) for n in ("a1", "b1")}
        arrival = await b.submit(recorder(log, "u"), key="a", priority=5)
        await until(lambda: victim.preempt_requested)
        assert await positions(b, queued) == {"b1": 2, "a1": 3}
        old_epoch = a._epoch
        await asyncio.to_thread(private_redis.restart)
        await until(lambda: a._epoch != old_epoch and b._epoch == a._epoch)
        await a.refresh()
        assert arrival.position == 1
        assert await positions(b, queued) == {"b1": 2, "a1": 3}
        gate.set()
        async with asyncio.timeout(15):
            await victim
            await asyncio.gather(arrival, *queued.values())
        assert log == ["u", "b1", "a1"]
    finally:
        gate.set()
        await a.aclose(drain=False)
        await b.aclose(drain=False)
