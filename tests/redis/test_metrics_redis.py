"""Prometheus metrics of a RedisLane, fed by the same lane events."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from executus import LaneBusy
from executus.metrics import LaneMetrics
from executus.redis import RedisLane
from tests.conformance.helpers import until
from tests.helpers import Gate
from tests.test_metrics import parse, sample

from .helpers import RedisServer

pytestmark = pytest.mark.redis


async def test_metrics_of_a_redis_lane(redis_server: RedisServer, namespace: str) -> None:
    """A RedisLane is watched through the same events: outcomes and gauges add up."""
    registry = CollectorRegistry()
    metrics = LaneMetrics(registry=registry, interval=0.05)
    lane = RedisLane("gpu", redis_server.url, 1, namespace=namespace, lease=5.0)
    try:
        metrics.watch(lane)
        gate = Gate()
        running = await lane.submit(gate)
        queued = await lane.submit(Gate())
        with pytest.raises(LaneBusy):
            await lane.submit(Gate(), max_wait=0)
        await queued.cancel()
        await until(lambda: gate.running)
        gate.release()
        await running
        for _ in range(200):  # events arrive on a later loop step; stats on the poll
            await asyncio.sleep(0.01)
            s = parse(generate_latest(registry).decode())
            if sample(s, "executus_lane_jobs_total", outcome="succeeded") == 1:
                break
        assert sample(s, "executus_lane_submitted_total") == 2
        assert sample(s, "executus_lane_jobs_total", outcome="cancelled") == 1
        assert sample(s, "executus_lane_jobs_total", outcome="rejected") == 1
        assert sample(s, "executus_lane_run_seconds_count") == 1
        assert sample(s, "executus_lane_max_concurrent") == 1
    finally:
        await metrics.aclose()
        await lane.aclose(drain=False)
