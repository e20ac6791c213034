"""RedisLane against a real redis-server: cancels whose reply was lost, releases meeting
damaged keys, and closes while Redis is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus import (
    FIFO,
    FairShare,
    JobCancelled,
    JobState,
    LaneClosed,
    LaneUnavailable,
    Preemption,
)
from executus.redis import RedisLane

from .helpers import LossyProxy, RedisServer, TcpProxy, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


@pytest.mark.parametrize("owner", ["self", "other"])
async def test_a_cancel_whose_reply_was_lost_reports_success_when_retried(
    make_lane: LaneFactory, lossy: LossyProxy, namespace: str, owner: str
) -> None:
    """A cancel that took effect but whose reply was lost succeeds when retried, and the
    job's waiter ends at once."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    canceller = RedisLane("lane", lossy.url, namespace=namespace, lease=30.0)
    submitter = canceller if owner == "self" else holder
    try:
        queued = await submitter.submit(lambda: asyncio.sleep(0))
        assert queued.state is JobState.QUEUED
        await canceller.stats()  # connected: the next bare {'OK'} is the cancel's reply
        lossy.cut_at = b"*1\r\n$2\r\nOK\r\n"
        async with asyncio.timeout(5):  # well before the next heartbeat (10 s)
            await canceller.cancel(queued.id)
            assert lossy.cut_at is None  # the reply was lost
            with pytest.raises(JobCancelled):
                await queued
        stats = await holder.stats()
        assert (stats.running, stats.queued, stats.cancelled) == (1, 0, 1)
    finally:
        await canceller.aclose(drain=False)
        gate.set()
        await held


DAMAGE = {
    "rs": ("hset", "d", "abc"),  # the count of ratios recorded since the sorted copy
    "tp": ("set", "x"),  # throughput buckets of the wrong type
    "rt": ("set", "x"),  # run times of the wrong type
    "rh": ("hset", "a", "1"),  # the shape history of the wrong type
}


@pytest.mark.parametrize("key", sorted(DAMAGE))
async def test_a_release_meeting_damaged_run_keys_changes_nothing(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, key: str
) -> None:
    """A release that meets a damaged run-time key fails with 'corrupt lane state' before
    it changes anything; once the key is repaired the release completes."""
    lane = make_lane(max_concurrent=1, lease=30.0)
    await lane.run(lambda: asyncio.sleep(0.01))  # a run time: releases now record ratios
    gate = asyncio.Event()
    running = await lane.submit(gate.wait)
    queued = await lane.submit(lambda: asyncio.sleep(0, "queued ran"))
    assert queued.state is JobState.QUEUED
    prefix = f"{{{namespace}:lane}}:"
    damaged = prefix + key
    op, *args = DAMAGE[key]
    if op == "set":
        await admin.delete(damaged)
    await getattr(admin, op)(damaged, *args)
    before = {k: await admin.dump(k) for k in await admin.keys(prefix + "*")}
    fence = lane._jobs[running.id].fence or "0"
    with pytest.raises(LaneUnavailable, match=rf"corrupt lane state: {key}"):
        await lane._eval("release", [lane.client_id, running.id, fence, "ok"])
    after = {k: await admin.dump(k) for k in await admin.keys(prefix + "*")}
    # nothing changed but the lease deadlines and liveness (score, not membership)
    moved = {prefix + "hold", prefix + "procs"}
    assert {k: v for k, v in before.items() if k not in moved} == {
        k: v for k, v in after.items() if k not in moved
    }
    assert await admin.zscore(prefix + "hold", running.id) is not None
    await admin.delete(damaged)
    gate.set()
    async with asyncio.timeout(10):
        await running
        assert await queued == "queued ran"
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.succeeded) == (0, 0, 3)


async def test_close_while_redis_is_unreachable_frees_its_jobs_if_redis_returns_in_time(
    make_lane: LaneFactory, proxy: TcpProxy, namespace: str
) -> None:
    """aclose(drain=False) whose take-back failed (Redis unreachable) frees the client's
    queued jobs in Redis with its final leave, when Redis is back by then."""
    holder = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    held = await holder.submit(gate.wait)
    lane = RedisLane("lane", proxy.url, namespace=namespace, lease=30.0)
    try:
        handles = [await lane.submit(asyncio.Event().wait) for _ in range(3)]
        assert all(h.state is JobState.QUEUED for h in handles)
        proxy.refusing = True
        proxy.cut()
        closing = asyncio.create_task(lane.aclose(drain=False))
        async with asyncio.timeout(10):
            await until(lambda: all(h.done() for h in handles))  # the take-back failed
            proxy.refusing = False  # Redis is back before the close's final attempt
            await closing
        assert [type(h.exception()) for h in handles] == [LaneClosed] * 3
        stats = await holder.stats()
        assert (stats.running, stats.queued, stats.cancelled) == (1, 0, 3)
        gate.set()
        await held
        stats = await holder.stats()
        assert (stats.running, stats.queued) == (0, 0)
    finally:
        await lane.aclose(drain=False)
        gate.set()
        await held


async def test_a_rebuild_restores_the_policy_the_client_last_saw(
    private_redis: RedisServer, namespace: str
) -> None:
    """The client that rebuilds a lost lane restores the policy it last saw, with its
    FairShare weights, even when another client stored it after this one attached."""
    lane = RedisLane("lane", private_redis.url, 2, namespace=namespace, policy=FIFO())
    weighted = FairShare(weights={"vip": 5}, default_weight=2)
    other = RedisLane("lane", private_redis.url, namespace=namespace, policy=weighted)
    try:
        await lane.stats()
        await other.stats()
        await other.aclose()
        await lane.refresh()  # a heartbeat
        private_redis.restart()  # without persistence: the lane's state is lost
        async with asyncio.timeout(10):
            await lane.stats()  # rebuilds the lane
        assert lane.policy == weighted
        admin = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
        try:
            prefix = f"{{{namespace}:lane}}:"
            assert await admin.hmget(prefix + "cfg", "pol", "dw", "max") == ["fair", "2.0", "2"]
            assert await admin.hgetall(prefix + "w") == {"vip": "5.0"}
        finally:
            await admin.aclose()
    finally:
        await lane.aclose(drain=False)
        await other.aclose(drain=False)


async def test_a_rebuild_waits_for_the_longest_lease_among_the_clients(
    private_redis: RedisServer, namespace: str
) -> None:
    """After the lane's state is lost, the client that rebuilds it holds new grants for
    the longest lease among the lane's clients, not its own shorter one: a client with
    a longer lease re-registers its running job before anything else starts."""
    short = RedisLane("lane", private_redis.url, 1, namespace=namespace, lease=1.0)
    long = RedisLane("lane", private_redis.url, namespace=namespace, lease=9.0)
    admin = aioredis.Redis.from_url(private_redis.url)
    running: set[str] = set()
    most = 0
    gate = asyncio.Event()

    def job(name: str) -> Callable[[], Any]:
        async def run() -> str:
            nonlocal most
            running.add(name)
            most = max(most, len(running))
            try:
                await gate.wait()
            finally:
                running.discard(name)
            return name

        return run

    try:
        held = await long.submit(job("long"))
        assert held.state is JobState.RUNNING
        await short.stats()
        old_epoch = short._epoch
        await admin.flushdb()  # the lane's state is lost, the connections stay up
        async with asyncio.timeout(10):
            await until(lambda: short._epoch != old_epoch)  # rebuilt by its heartbeat
        await asyncio.sleep(1.5)  # past the rebuilding client's own lease
        late = await short.submit(job("short"))
        assert late.state is JobState.QUEUED
        await long.refresh()  # re-registers its running job
        stats = await short.stats()
        assert (stats.running, stats.queued) == (1, 1)
        gate.set()
        async with asyncio.timeout(20):
            assert await asyncio.gather(held, late) == ["long", "short"]
        assert most == 1
    finally:
        gate.set()
        await admin.aclose()
        await short.aclose(drain=False)
        await long.aclose(drain=False)


async def test_a_requeued_job_counts_as_queued_from_its_requeue(
    private_redis: RedisServer, namespace: str
) -> None:
    """stats().oldest_queued_at of a job requeued by a preemption is its requeue, not its
    submit, and stays so when its client rebuilds the lane after a restart."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    lane = RedisLane("lane", private_redis.url, 1, namespace=namespace, preemption=pre, lease=5.0)
    gate = asyncio.Event()
    try:
        victim = await lane.submit(gate.wait, preemptible=True)
        assert victim.submitted_at is not None
        await asyncio.sleep(0.3)
        before = datetime.now(UTC) - timedelta(milliseconds=2)  # (server ms, rounded)
        urgent = await lane.submit(gate.wait, priority=1)
        await until(lambda: victim.preemptions == 1 and victim.state is JobState.QUEUED)
        oldest = (await lane.stats()).oldest_queued_at
        assert oldest is not None
        assert oldest >= before > victim.submitted_at + timedelta(seconds=0.2)
        old_epoch = lane._epoch
        await asyncio.to_thread(private_redis.restart)
        async with asyncio.timeout(10):
            await until(lambda: lane._epoch != old_epoch)
        stats = await lane.stats()
        assert (stats.running, stats.queued) == (1, 1)
        assert stats.oldest_queued_at is not None
        assert abs((stats.oldest_queued_at - oldest).total_seconds()) < 0.1
        gate.set()
        async with asyncio.timeout(20):
            await asyncio.gather(urgent, victim)
    finally:
        gate.set()
        await lane.aclose(drain=False)


async def test_a_preemption_in_its_grace_survives_a_restart_without_persistence(
    private_redis: RedisServer, namespace: str
) -> None:
    """A preemption whose victim is in its grace when Redis restarts without persistence
    holds on: the victim's grace goes on and its arrival takes the slot it frees."""
    pre = Preemption(min_runtime=0, grace=30)
    # A lease long enough that a slow restart does not end the running job (LeaseLost).
    a = RedisLane("lane", private_redis.url, 1, namespace=namespace, lease=5.0, preemption=pre)
    b = RedisLane("lane", private_redis.url, namespace=namespace, lease=5.0)
    gate = asyncio.Event()
    started: list[str] = []

    def job(name: str) -> Callable[[], Any]:
        async def run() -> str:
            started.append(name)
            return name

        return run

    async def victim_body() -> str:
        await gate.wait()
        return "finished"

    try:
        victim = await a.submit(victim_body, preemptible=True)
        plain = await b.submit(job("plain"))  # does not outrank the victim
        arrival = await b.submit(job("arrival"), priority=1)
        await until(lambda: victim.preempt_requested)  # its grace runs
        old_epoch = a._epoch
        await asyncio.to_thread(private_redis.restart)
        await until(lambda: a._epoch != old_epoch and b._epoch == a._epoch)
        await a.refresh()
        await b.refresh()
        assert victim.preempt_requested  # the grace was not called off
        gate.set()
        async with asyncio.timeout(15):
            assert await victim == "finished"
            assert await asyncio.gather(arrival, plain) == ["arrival", "plain"]
        assert started == ["arrival", "plain"]
    finally:
        gate.set()
        await a.aclose(drain=False)
        await b.aclose(drain=False)
