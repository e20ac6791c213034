"""Prometheus metrics: closed lanes, lanes sharing a name, and one stats() read at a time."""

from __future__ import annotations

import asyncio
import re

import pytest
from prometheus_client import CollectorRegistry

from executus import Lane, LaneStats
from executus.metrics import LaneMetrics
from executus.testing import ManualClock
from tests.helpers import settle


def task_names() -> set[str]:
    """The names of the tasks alive now."""
    return {t.get_name() for t in asyncio.all_tasks()}


async def test_watching_a_closed_lane_starts_no_poll_task(clock: ManualClock) -> None:
    """watch() of a lane closed already reads its gauges once and starts no poll task."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=30)
    lane = Lane("gpu", 3, clock=clock)
    await lane.aclose()
    await settle()
    metrics.watch(lane)
    await settle()
    assert "executus-metrics-poll-gpu" not in task_names()
    assert metrics.registry.get_sample_value("executus_lane_max_concurrent", {"lane": "gpu"}) == 3
    await metrics.aclose()


async def test_two_lanes_with_one_name_are_refused(clock: ManualClock) -> None:
    """Watching a second lane of the same name is a ValueError naming it; the first stays."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    first, second = Lane("gpu", 2, clock=clock), Lane("gpu", 5, clock=clock)
    metrics.watch(first)
    message = (
        "a lane named 'gpu' is watched already: two lanes cannot share the series of one "
        "name (unwatch the other first)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        metrics.watch(second)
    await settle()
    assert metrics.registry.get_sample_value("executus_lane_max_concurrent", {"lane": "gpu"}) == 2
    metrics.watch(first)  # the same lane again: still a no-op
    await metrics.unwatch(first)
    metrics.watch(second)
    await settle()
    assert metrics.registry.get_sample_value("executus_lane_max_concurrent", {"lane": "gpu"}) == 5
    await metrics.aclose()
    await first.aclose()
    await second.aclose()


class _SlowStats(Lane):
    """A lane whose stats() waits for the test, counting the reads in flight."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.in_flight = 0
        self.most_in_flight = 0
        self.reads = 0
        self.go = asyncio.Event()

    async def stats(self) -> LaneStats:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.reads += 1
        try:
            await self.go.wait()
            return await super().stats()
        finally:
            self.in_flight -= 1


async def test_refresh_waits_for_the_read_in_flight_then_reads_again(clock: ManualClock) -> None:
    """refresh() during a background read keeps one read in flight, then reads afresh."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    lane = _SlowStats("gpu", 2, clock=clock)
    metrics.watch(lane)
    await settle()
    assert (lane.in_flight, lane.reads) == (1, 1)  # the read watch() started
    refresh = asyncio.create_task(metrics.refresh())
    await settle()
    assert (lane.in_flight, lane.reads) == (1, 1)
    lane.go.set()
    await asyncio.wait_for(refresh, timeout=5)
    # The read in flight began before refresh() was called: one more read follows it.
    assert (lane.most_in_flight, lane.reads) == (1, 2)
    assert metrics.registry.get_sample_value("executus_lane_max_concurrent", {"lane": "gpu"}) == 2
    await metrics.aclose()
    await lane.aclose()


async def test_refresh_reports_the_error_of_its_read(clock: ManualClock) -> None:
    """refresh() still raises the error of the stats() read it waited for."""

    class Broken(Lane):
        async def stats(self) -> LaneStats:
            raise OSError("backend down")

    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    lane = Broken("gpu", 1, clock=clock)
    metrics.watch(lane)
    with pytest.raises(OSError, match=r"^backend down$"):
        await metrics.refresh()
    await metrics.aclose()
    await lane.aclose()
