"""RedisLane against a real redis-server: what a client gave up on while Redis was
unreachable (a close, a cancel) is withdrawn from Redis once it is reachable again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from executus import JobCancelled, JobState, LaneClosed, LeaseLost
from executus.redis import RedisLane

from .helpers import TcpProxy, until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def queued_drops_to(lane: RedisLane, n: int, *, within: float) -> None:
    """Wait until ``lane.stats().queued == n``; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        # Polling Redis: another client's change there has no local event to wait on.
        while (await lane.stats()).queued != n:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("drain", [False, True])
async def test_a_close_while_redis_is_unreachable_withdraws_its_jobs_once_redis_returns(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str, drain: bool
) -> None:
    """A close that could not reach Redis withdraws the client's queued jobs as soon as
    Redis is reachable again, not one liveness period later."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    # lease 3 s: a retry budget of 1 s; Redis takes the client for dead 3 s after its
    # last heartbeat (the holder's first heartbeat, which would sweep, is 10 s away).
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=3.0)
    try:
        handles = [await lane.submit(asyncio.Event().wait) for _ in range(3)]
        assert all(h.state is JobState.QUEUED for h in handles)
        await lane.refresh()  # its liveness runs from here
        proxy.refusing = True
        proxy.cut()
        async with asyncio.timeout(10):
            if drain:
                # Cancelled while Redis is unreachable: they end here at once.
                assert await asyncio.gather(*(h.cancel() for h in handles)) == [True] * 3
            closing = asyncio.create_task(lane.aclose(drain=drain))
            await until(closing.done)  # returns although Redis is still unreachable
            await closing
        error = JobCancelled if drain else LaneClosed
        assert [type(h.exception()) for h in handles] == [error] * 3
        assert (await holder.stats()).queued == 3  # Redis still holds them
        proxy.refusing = False
        # Well before the client's liveness lapses (3 s after the refresh).
        await queued_drops_to(holder, 0, within=1.5)
        stats = await holder.stats()
        assert (stats.running, stats.queued, stats.cancelled) == (1, 0, 3)
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held


async def test_a_cancel_that_could_not_reach_redis_is_withdrawn_once_redis_returns(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """A queued job cancelled while Redis is unreachable (it ends here at once) leaves
    the lane's queue once Redis is reachable again, not when it would be granted."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=3.0)  # budget: 1 s
    try:
        queued = await lane.submit(asyncio.Event().wait)
        assert queued.state is JobState.QUEUED
        proxy.refusing = True
        proxy.cut()
        async with asyncio.timeout(5):
            assert await queued.cancel()
        assert isinstance(queued.exception(), JobCancelled)
        assert (await holder.stats()).queued == 1  # Redis still holds it
        proxy.refusing = False
        await queued_drops_to(holder, 0, within=2.5)  # the client stays alive meanwhile
        stats = await holder.stats()
        assert (stats.running, stats.queued, stats.cancelled) == (1, 0, 1)
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held


async def test_queued_jobs_a_long_outage_ended_here_leave_the_queue_when_redis_returns(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """Queued jobs that end with LeaseLost after an outage longer than the lease do not
    stay queued in Redis (revived by the client's next heartbeat) once it returns."""
    holder = make_lane(max_concurrent=1, lease=30.0)  # its heartbeat (and sweep): 10 s
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=1.0)
    try:
        handles = [await lane.submit(asyncio.Event().wait) for _ in range(2)]
        assert all(h.state is JobState.QUEUED for h in handles)
        proxy.refusing = True
        proxy.cut()
        async with asyncio.timeout(5):
            await until(lambda: all(h.done() for h in handles))  # after one lease
        assert [type(h.exception()) for h in handles] == [LeaseLost] * 2
        proxy.refusing = False
        await until(lambda: lane._last_beat > time.monotonic() - 0.5, 5)  # alive again
        await queued_drops_to(holder, 0, within=2.0)
        stats = await holder.stats()
        assert (stats.running, stats.queued) == (1, 0)
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held
