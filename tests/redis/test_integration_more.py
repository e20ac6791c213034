"""fanout, LaneMetrics and config Lanes working with RedisLanes on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from executus import fanout
from executus.config import Lanes, MappingSource
from executus.redis import RedisLane

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LaneFactory = Callable[..., RedisLane]


class Peak:
    """Counts items running at once; each waits (bounded) until ``want`` run together."""

    def __init__(self, want: int, limit: float = 2.0) -> None:
        self.want = want
        self.limit = limit
        self.now = 0
        self.peak = 0
        self.full = asyncio.Event()

    async def __call__(self, x: int) -> int:
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self.now >= self.want:
            self.full.set()
        try:
            async with asyncio.timeout(self.limit):
                await self.full.wait()
        except TimeoutError:
            pass
        finally:
            self.now -= 1
        return x


async def test_a_lane_key_is_capped_by_the_stored_limit_of_a_lane_not_yet_attached(
    make_lane: LaneFactory,
) -> None:
    """A RedisLane that adopts its stored limit caps its swarm key at that limit, not 1."""
    await make_lane("gpu", 3).stats()  # the lane stores 3 slots
    lane = make_lane("gpu")  # adopts the stored limit at its first call
    peak = Peak(3)
    outcomes = await fanout(range(6), peak, key=lambda x: "gpu", lanes={"gpu": lane})
    assert [o.value for o in outcomes] == list(range(6))
    assert peak.peak == 3
    assert (await lane.stats()).max_concurrent == 3


async def test_lanes_from_config_adopt_the_stored_eta_window(
    redis_server: RedisServer, namespace: str, admin: aioredis.Redis
) -> None:
    """A RedisLane built from config that sets no ETA window keeps the lane's stored one."""
    first = Lanes(
        MappingSource(
            {"redis_url": redis_server.url, "redis_namespace": namespace, "lane_gpu_eta_window": 40}
        )
    )
    try:
        await first.get("gpu").stats()
        second = Lanes(MappingSource({"redis_url": redis_server.url, "redis_namespace": namespace}))
        try:
            await second.get("gpu").stats()
        finally:
            await second.aclose()
        win = await admin.hget(f"{{{namespace}:gpu}}:cfg", "win")
        assert win == "40"
    finally:
        await first.aclose()
