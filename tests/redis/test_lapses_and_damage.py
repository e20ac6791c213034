"""RedisLane against a real redis-server: answers during an outage, and
lane keys another client wrote badly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from executus import JobCancelled, JobState, LaneUnavailable, Preemption, Priority
from executus.redis import RedisLane

from .helpers import TcpProxy, until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def test_cancel_of_a_running_job_during_an_outage_answers_within_the_retry_budget(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """handle.cancel() of a running job while Redis is unreachable returns within the
    retry budget, not a lease; the release lands once Redis is back (a cancel, not a
    lease expiry)."""
    watcher = make_lane(max_concurrent=1)
    # lease 6 s: a retry budget of 2 s, a release retried for up to 6 s.
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=6.0)
    try:
        handle = await lane.submit(asyncio.Event().wait)
        assert handle.state is JobState.RUNNING
        proxy.refusing = True
        proxy.cut()
        began = time.monotonic()
        assert await handle.cancel()
        assert time.monotonic() - began < 4.0
        assert handle.state is JobState.CANCELLED
        proxy.refusing = False
        async with asyncio.timeout(3):  # well before the 6 s lease would end
            while (await watcher.stats()).running:  # noqa: ASYNC110 - figures in Redis
                await asyncio.sleep(0.02)
        stats = await watcher.stats()
        assert (stats.cancelled, stats.failed) == (1, 0)
    finally:
        await lane.aclose(drain=False)


@pytest.mark.parametrize(("field", "text"), [("max", "nan"), ("aging", "inf"), ("win", "1e999")])
async def test_a_lane_setting_that_is_not_a_finite_number_is_reported(
    make_lane: LaneFactory, admin: aioredis.Redis, field: str, text: str
) -> None:
    """A setting stored as nan or inf fails scripts cleanly, naming the damage, instead
    of stalling every grant or failing a script half way."""
    lane = make_lane(max_concurrent=1, policy=Priority(aging=60))
    gate = asyncio.Event()
    first = await lane.submit(gate.wait)
    await admin.hset(f"{{{lane._namespace}:lane}}:cfg", field, text)
    with pytest.raises(LaneUnavailable, match="corrupt lane state"):
        await lane.submit(gate.wait, max_wait=None)
    await admin.hset(f"{{{lane._namespace}:lane}}:cfg", field, "1" if field != "aging" else "60")
    gate.set()
    await first


async def test_a_running_job_with_a_damaged_priority_is_not_a_victim(
    make_lane: LaneFactory, admin: aioredis.Redis
) -> None:
    """A running job whose stored priority is not a number is passed over when a victim
    is chosen; the arrival queues instead of failing the submit half way."""
    lane = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0))
    gate = asyncio.Event()
    running = await lane.submit(gate.wait, preemptible=True)
    await admin.hset(f"{{{lane._namespace}:lane}}:j:{running.id}", "p", "abc")
    urgent = await lane.submit(gate.wait, priority=5)
    assert urgent.state is JobState.QUEUED
    assert not running.preempt_requested
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.submitted) == (1, 1, 2)
    gate.set()
    await running
    await urgent


async def test_a_queued_job_with_a_damaged_lease_is_dropped_not_half_granted(
    make_lane: LaneFactory, admin: aioredis.Redis
) -> None:
    """A queued job whose stored lease is not a number is dropped when its turn comes
    (its waiter gets JobCancelled); the release that reached it completes and the next
    job starts."""
    lane = make_lane(max_concurrent=1, lease=1.5)
    gate = asyncio.Event()
    first = await lane.submit(gate.wait)
    damaged = await lane.submit(gate.wait)
    after = await lane.submit(gate.wait)
    await admin.hset(f"{{{lane._namespace}:lane}}:j:{damaged.id}", "l", "x")
    gate.set()
    await first
    await until(lambda: damaged.done(), 5)
    with pytest.raises(JobCancelled):
        await damaged
    await after
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.succeeded) == (0, 0, 2)


async def test_queued_jobs_of_a_lapsed_client_leave_other_clients_positions_at_once(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """Once a client's liveness lapses, the next heartbeat (any client's) drops its
    queued jobs: another client's position no longer counts them, without waiting for
    the once-per-interval sweep."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    await holder.refresh()  # its heartbeat takes the sweep's guard for 15 s
    # lease 1.5 s: Redis takes this client for dead 1.5 s after its last heartbeat.
    lapsing = RedisLane("lane", proxy.url, namespace=namespace, lease=1.5)
    try:
        mine = [await lapsing.submit(asyncio.Event().wait) for _ in range(2)]
        assert [h.position for h in mine] == [1, 2]
        await lapsing.refresh()
        proxy.refusing = True
        proxy.cut()
        waiting = await holder.submit(gate.wait)
        assert waiting.position == 3

        async def position() -> int:
            await holder.refresh()
            return waiting.position

        async with asyncio.timeout(4):  # the liveness lapses 1.5 s after the refresh
            while await position() != 1:  # noqa: ASYNC110 - figures live in Redis
                await asyncio.sleep(0.05)
        assert (await holder.stats()).queued == 1
    finally:
        await lapsing.aclose(drain=False)
        gate.set()
        await held
