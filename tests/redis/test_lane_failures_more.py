"""RedisLane against a real redis-server: lost replies, stalled wake-ups, closes and
outages meeting grants."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from executus import JobState, LaneClosed, LaneUnavailable, Preemption
from executus.redis import RedisLane
from tests.conformance.helpers import stats_until

from .helpers import BlocksOnce, LossyProxy, TcpProxy, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def test_close_without_drain_frees_a_grant_whose_wake_up_it_never_read(
    make_lane: LaneFactory, lossy: LossyProxy, namespace: str
) -> None:
    """aclose(drain=False) frees a queued job that Redis granted while its wake-up was
    unread: the slot returns at once, not when the grant's lease runs out."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    lane = RedisLane("lane", lossy.url, namespace=namespace, lease=30.0)
    try:
        queued = await lane.submit(asyncio.Event().wait)
        assert queued.state is JobState.QUEUED
        lossy.stalled = True
        await holder.set_max_concurrent(2)  # grants the queued job: "G <id> ..."
        await until(lambda: lossy.holds(b"G " + queued.id.encode()))
        async with asyncio.timeout(10):
            await lane.aclose(drain=False)
        assert isinstance(queued.exception(), LaneClosed)
        stats = await holder.stats()
        assert (stats.running, stats.queued) == (1, 0)  # only the holder's job
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held


async def test_close_without_drain_while_redis_is_unreachable_is_not_one_wait_per_job(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """aclose(drain=False) while Redis is unreachable takes its queued jobs back together:
    it returns after one retry budget, not one per queued job."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=30.0)  # budget: 3 s
    try:
        handles = [await lane.submit(asyncio.Event().wait) for _ in range(20)]
        assert all(h.state is JobState.QUEUED for h in handles)
        proxy.refusing = True
        proxy.cut()
        async with asyncio.timeout(10):  # one budget per job would be 60 s
            await lane.aclose(drain=False)
        assert [type(h.exception()) for h in handles] == [LaneClosed] * 20
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held


async def test_close_without_drain_while_redis_is_unreachable_does_not_wait_a_lease(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """aclose(drain=False) of a client running a job while Redis is unreachable returns
    within the retry budget, not a lease; its leave frees the slot once Redis is back."""
    watcher = make_lane(max_concurrent=1, lease=30.0)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=30.0)  # budget: 3 s
    try:
        handle = await lane.submit(asyncio.Event().wait)
        assert handle.state is JobState.RUNNING
        proxy.refusing = True
        proxy.cut()
        async with asyncio.timeout(10):  # a wait for the lease would take 30 s
            await lane.aclose(drain=False)
        assert handle.state is JobState.CANCELLED
        proxy.refusing = False
        await stats_until(watcher, lambda s: s.running == 0, within=10)  # a lease: 30 s
    finally:
        await lane.aclose(drain=False)


async def test_close_after_a_job_ended_while_redis_was_unreachable_does_not_wait_a_lease(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """aclose() after a job ended while Redis was unreachable (its release still being
    retried) returns within the retry budget; the slot is freed once Redis is back."""
    watcher = make_lane(max_concurrent=1, lease=30.0)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=30.0)  # budget: 3 s
    gate = asyncio.Event()
    try:
        handle = await lane.submit(gate.wait)
        assert handle.state is JobState.RUNNING
        proxy.refusing = True
        proxy.cut()
        gate.set()
        async with asyncio.timeout(10):
            assert await handle is True
            await lane.aclose()  # a wait for the release's retries would take 30 s
        proxy.refusing = False
        await stats_until(watcher, lambda s: s.running == 0, within=10)  # a lease: 30 s
    finally:
        await lane.aclose(drain=False)


async def test_a_requeue_whose_reply_was_lost_runs_the_job_again(
    make_lane: LaneFactory, lossy: LossyProxy, namespace: str
) -> None:
    """A preempted job whose release requeued it, the reply lost with its connection, is
    requeued for its client too when the release is retried: it runs again, once."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    lane = RedisLane("lane", lossy.url, 1, namespace=namespace, lease=30.0, preemption=pre)
    other = make_lane(lease=30.0)
    victim = BlocksOnce()
    try:
        handle = await lane.submit(victim, preemptible=True)
        await until(lambda: victim.runs == [0])
        lossy.cut_at = b"REQ"  # the release's reply: {'REQ', position, eta, ...}
        urgent = await other.submit(lambda: asyncio.sleep(0, "urgent"), priority=1)
        async with asyncio.timeout(10):
            assert await urgent == "urgent"
            assert await handle == "again"
        assert lossy.cut_at is None  # the reply was lost
        assert (victim.runs, handle.preemptions) == ([0, 1], 1)
        stats = await other.stats()
        assert (stats.running, stats.queued, stats.preempted, stats.cancelled) == (0, 0, 1, 0)
    finally:
        await lane.aclose(drain=False)


async def test_a_preemption_called_off_while_its_wake_up_was_lost_lets_the_victim_run_on(
    make_lane: LaneFactory, lossy: LossyProxy, namespace: str
) -> None:
    """A victim in its grace whose preemption was called off (its arrival cancelled)
    runs on even when that wake-up was lost: the next heartbeat calls the grace off."""
    pre = Preemption(min_runtime=0, grace=30)
    lane = RedisLane("lane", lossy.url, 1, namespace=namespace, lease=30.0, preemption=pre)
    other = make_lane(lease=30.0)
    gate = asyncio.Event()

    async def victim_body() -> str:
        await gate.wait()
        return "finished"

    try:
        victim = await lane.submit(victim_body, preemptible=True)
        arrival = await other.submit(lambda: asyncio.sleep(0), priority=1)
        await until(lambda: victim.preempt_requested)  # its grace runs
        lossy.stalled = True
        assert await arrival.cancel()  # calls the preemption off: "U <id> <fence>"
        await until(lambda: lossy.holds(b"U " + victim.id.encode()))
        await lane.refresh()
        assert not victim.preempt_requested
        gate.set()
        async with asyncio.timeout(5):
            assert await victim == "finished"
        assert victim.preemptions == 0
    finally:
        await lane.aclose(drain=False)


@pytest.mark.parametrize("field", ["fence", "n_ok"])
async def test_a_damaged_counter_fails_a_script_before_it_changes_anything(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, field: str
) -> None:
    """A lane counter that is not an integer fails every script with LaneUnavailable
    naming it, before the script changes anything: once it is repaired, the queued job
    starts and nothing of the job whose release failed is left."""
    lane = make_lane(max_concurrent=1, lease=2.0)
    gate = asyncio.Event()
    first = await lane.submit(gate.wait)
    queued = await lane.submit(lambda: asyncio.sleep(0, "queued ran"))
    assert queued.state is JobState.QUEUED
    cfg = f"{{{namespace}:lane}}:cfg"
    saved = await admin.hget(cfg, field)
    await admin.hset(cfg, field, "abc")
    with pytest.raises(LaneUnavailable, match=rf"corrupt lane state: {field} abc"):
        await lane.stats()
    gate.set()
    await first  # its release fails: the slot returns when its lease ends
    await admin.hset(cfg, field, saved or "0")
    async with asyncio.timeout(10):
        assert await queued == "queued ran"
    stats = await lane.stats()
    assert (stats.running, stats.queued) == (0, 0)
    assert await lane.run(lambda: asyncio.sleep(0, "again"), job_id=first.id) == "again"
