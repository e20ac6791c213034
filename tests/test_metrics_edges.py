"""Prometheus metrics at the edges: lanes that close while watched."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from executus import Lane, LaneClosed, LaneStats
from executus.metrics import LaneMetrics
from executus.testing import ManualClock
from tests.helpers import settle


async def test_poll_task_ends_when_the_lane_closes(clock: ManualClock) -> None:
    """A watched lane's poll task ends once the lane is closed, without aclose."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=30)
    lane = Lane("gpu", 1, clock=clock)
    metrics.watch(lane)
    await settle()
    assert "executus-metrics-poll-gpu" in {t.get_name() for t in asyncio.all_tasks()}
    await lane.aclose()
    await settle()
    assert "executus-metrics-poll-gpu" not in {t.get_name() for t in asyncio.all_tasks()}
    await metrics.aclose()


class _ClosingLane(Lane):
    """A lane whose stats() refuses once it is closed, as a RedisLane's does."""

    async def stats(self) -> LaneStats:
        if self.closed:
            raise LaneClosed(self.name)
        return await super().stats()


async def test_refresh_skips_a_closed_lane(clock: ManualClock) -> None:
    """refresh() after a watched lane closed does not raise; its last gauges stay."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    lane = _ClosingLane("gpu", 3, clock=clock)
    metrics.watch(lane)
    await settle()
    await lane.aclose()
    await settle()
    await metrics.refresh()
    assert metrics.registry.get_sample_value("executus_lane_max_concurrent", {"lane": "gpu"}) == 3
    await metrics.aclose()
