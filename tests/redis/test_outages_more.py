"""fanout, LaneMetrics, config Lanes, progress and LaneOps with RedisLanes when Redis
misbehaves: swarms cancelled, Redis stopped and started again, a reload during an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry

from executus import (
    JobCancelled,
    JobPreempted,
    JobState,
    LaneUnavailable,
    Preemption,
    Priority,
    fanout,
)
from executus.config import Lanes, TomlSource
from executus.deliver import Recorder
from executus.identity import Forbidden, LaneOps, StaticAdmins
from executus.metrics import LaneMetrics
from executus.progress import ProgressReporter, run_with_progress
from executus.redis import RedisLane

from .helpers import RedisServer, until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LaneFactory = Callable[..., RedisLane]


async def test_cancelling_a_swarm_frees_every_slot_lane_wide(make_lane: LaneFactory) -> None:
    """Cancelling a swarm whose RedisLane jobs run and wait frees their slots lane-wide at once."""
    lane = make_lane("gpu", 2)
    watcher = make_lane("gpu")
    started: list[int] = []
    both = asyncio.Event()

    async def work(x: int) -> int:
        started.append(x)
        if len(started) == 2:
            both.set()
        await asyncio.sleep(3600)
        return x

    swarm = asyncio.create_task(fanout(range(6), work, key=lambda x: "gpu", lanes=lane))
    async with asyncio.timeout(5):
        await both.wait()
    assert (await watcher.stats()).running == 2
    swarm.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await swarm
    stats = await watcher.stats()
    assert (stats.running, stats.queued) == (0, 0)
    async with asyncio.timeout(2):  # the slots are free for another client now
        assert await watcher.run(lambda: asyncio.sleep(0, "next")) == "next"


async def test_redis_stopped_mid_swarm_ends_each_item_with_lane_unavailable(
    private_redis: RedisServer, namespace: str
) -> None:
    """Redis stopped while a swarm runs: every item ends with LaneUnavailable, in bounded time."""
    lane = RedisLane("gpu", private_redis.url, 1, namespace=namespace, lease=1.0)
    try:
        started = asyncio.Event()

        async def work(x: int) -> int:
            started.set()
            await asyncio.sleep(30)
            return x

        swarm = asyncio.create_task(fanout(range(3), work, key=lambda x: "gpu", lanes=lane))
        async with asyncio.timeout(5):
            await started.wait()
        private_redis.stop()
        t0 = time.monotonic()
        async with asyncio.timeout(20):
            outcomes = await swarm
        assert time.monotonic() - t0 < 15
        assert [type(o.error).__name__ for o in outcomes if o.ok] == []
        assert all(isinstance(o.error, LaneUnavailable) for o in outcomes), outcomes
    finally:
        async with asyncio.timeout(10):
            await lane.aclose(drain=False)


async def test_metrics_survive_an_outage_and_resume(
    private_redis: RedisServer, namespace: str
) -> None:
    """A watched RedisLane's poller outlives an outage, and its gauges follow again after."""
    lane = RedisLane("gpu", private_redis.url, 2, namespace=namespace, lease=1.0)
    other = RedisLane("gpu", private_redis.url, namespace=namespace, lease=1.0)
    registry = CollectorRegistry()
    metrics = LaneMetrics(registry, interval=0.05)
    try:
        await lane.stats()
        metrics.watch(lane)

        def gauge(name: str) -> float | None:
            return registry.get_sample_value(f"executus_lane_{name}", {"lane": "gpu"})

        await until(lambda: gauge("max_concurrent") == 2, 5)
        private_redis.stop()
        await asyncio.sleep(1.5)
        private_redis.start()
        await other.set_max_concurrent(5)
        await until(lambda: gauge("max_concurrent") == 5, 10)
        private_redis.stop()
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            await metrics.unwatch(lane)
        assert time.monotonic() - t0 < 1.0
    finally:
        await metrics.aclose()
        async with asyncio.timeout(10):
            await lane.aclose(drain=False)
        async with asyncio.timeout(10):
            await other.aclose(drain=False)


async def test_reload_during_an_outage_changes_nothing_and_close_is_bounded(
    private_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A reload that cannot reach Redis raises LaneUnavailable and leaves every lane as it was."""
    path = tmp_path / "lanes.toml"

    def write(a: int, b: int) -> None:
        path.write_text(
            f'redis_url = "{private_redis.url}"\nredis_namespace = "{namespace}"\n'
            f'[lanes.a]\nmax_concurrent = {a}\nlease = "1s"\n'
            f'[lanes.b]\nmax_concurrent = {b}\nlease = "1s"\n'
        )

    write(2, 2)
    lanes = Lanes(TomlSource(path))
    try:
        a, b = lanes.get("a"), lanes.get("b")
        await a.stats()
        await b.stats()
        write(3, 3)
        private_redis.stop()
        with pytest.raises(LaneUnavailable):
            async with asyncio.timeout(20):
                await lanes.reload()
        assert (a.max_concurrent, b.max_concurrent) == (2, 2)
        private_redis.start()
        assert (await a.stats()).max_concurrent == 2
        assert (await b.stats()).max_concurrent == 2
        result = await lanes.reload()
        assert set(result.applied) == {("a", "max_concurrent"), ("b", "max_concurrent")}
        private_redis.stop()
    finally:
        t0 = time.monotonic()
        async with asyncio.timeout(20):
            await lanes.aclose()
        assert time.monotonic() - t0 < 10


async def test_progress_reports_a_redis_job_through_an_outage(
    private_redis: RedisServer, namespace: str
) -> None:
    """run_with_progress reports a queued RedisLane job, then its end when Redis goes away."""
    lane = RedisLane("gpu", private_redis.url, 1, namespace=namespace, lease=1.0)
    rec = Recorder()
    try:
        hold = await lane.submit(lambda: asyncio.sleep(30))
        reporter = ProgressReporter("u", rec, interval=0.05)
        run = asyncio.create_task(
            run_with_progress(lane, lambda: asyncio.sleep(0.01, "x"), reporter, poll=0.05)
        )
        await until(lambda: any("queued" in m for m in rec.messages("u")), 5)
        private_redis.stop()
        async with asyncio.timeout(15):
            with pytest.raises(LaneUnavailable):
                await run
        assert reporter.finished
        assert hold.done()
    finally:
        async with asyncio.timeout(10):
            await lane.aclose(drain=False)


async def test_lane_ops_cancel_by_id_on_a_redis_lane(make_lane: LaneFactory) -> None:
    """LaneOps cancels RedisLane jobs by id: the owner and an admin may, others may not."""
    lane = make_lane("gpu", 1)
    other = make_lane("gpu")
    ops = LaneOps(lane, admins=StaticAdmins({"ops"}))
    first = await ops.submit(lambda: asyncio.sleep(30), key="alice")
    second = await ops.submit(lambda: asyncio.sleep(30), key="bob")
    foreign = await other.submit(lambda: asyncio.sleep(30), key="carol")

    with pytest.raises(Forbidden):
        await ops.cancel("bob", first.id)
    with pytest.raises(Forbidden):
        await ops.cancel("alice", foreign.id)
    assert await ops.cancel("ops", foreign.id)  # queued, submitted by another client
    assert await ops.cancel("ops", second.id)
    assert await ops.cancel("alice", first.id)
    assert not await ops.cancel("alice", first.id)
    async with asyncio.timeout(5):
        with pytest.raises(JobCancelled):
            await foreign
    assert foreign.state is JobState.CANCELLED
    stats = await other.stats()
    assert (stats.running, stats.queued) == (0, 0)


@pytest.mark.parametrize("on_preempt", ["requeue", "report"])
async def test_a_preempted_swarm_job_on_a_redis_lane_follows_on_preempt(
    make_lane: LaneFactory, on_preempt: Literal["requeue", "report"]
) -> None:
    """A swarm job a RedisLane preempts runs again ("requeue") or ends JobPreempted ("report")."""
    lane = make_lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0))
    runs: list[int] = []
    started = asyncio.Event()

    async def work(x: int) -> int:
        runs.append(x)
        started.set()
        await asyncio.sleep(0.3 if len(runs) > 1 else 30)
        return x

    swarm = asyncio.create_task(
        fanout([7], work, lanes=lane, lane_priority=0, lane_preemptible=True, on_preempt=on_preempt)
    )
    async with asyncio.timeout(5):
        await started.wait()
    async with asyncio.timeout(10):
        assert await lane.run(lambda: asyncio.sleep(0.01, "vip"), priority=10) == "vip"
        (outcome,) = await swarm
    assert outcome.preemptions == 1
    if on_preempt == "requeue":
        assert (outcome.ok, outcome.value, runs) == (True, 7, [7, 7])
    else:
        assert isinstance(outcome.error, JobPreempted)
        assert runs == [7]


async def test_fail_fast_on_a_redis_lane_cancels_the_lane_jobs(make_lane: LaneFactory) -> None:
    """fail_fast over a RedisLane cancels the other lane jobs and leaves no slot held."""
    lane = make_lane("gpu", 3)
    watcher = make_lane("gpu")
    gate = asyncio.Event()

    async def work(x: int) -> int:
        if x == 0:
            await gate.wait()
            raise ValueError("boom")
        if x == 2:
            gate.set()
        await asyncio.sleep(30)
        return x

    async with asyncio.timeout(10):
        outcomes = await fanout(range(6), work, lanes=lane, fail_fast=True)
    assert isinstance(outcomes[0].error, ValueError)
    assert all(o.cancelled for o in outcomes[1:])
    stats = await watcher.stats()
    assert (stats.running, stats.queued) == (0, 0)
