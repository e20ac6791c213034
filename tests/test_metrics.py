"""Prometheus metrics: the text format scraped after a known workload."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from executus import FIFO, Lane, LaneBusy, Preemption
from executus.metrics import LaneMetrics, serve
from executus.testing import ManualClock
from tests.helpers import Gate, settle

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError when absent)."""
    return samples[(name, tuple(sorted({"lane": "gpu", **labels}.items())))]


async def workload(lane: Lane, clock: ManualClock, metrics: LaneMetrics) -> None:
    """2 succeeded, 1 failed, 1 cancelled, 1 preempted, 1 rejected; waits 0,2,0,0; runs 2,3,1,4."""
    a, b, d, e, f = Gate(), Gate(), Gate(), Gate(), Gate()
    await lane.submit(a, job_id="a", key="u1")
    await lane.submit(b, job_id="b", key="u2")
    with pytest.raises(LaneBusy):
        await lane.submit(Gate(), job_id="c", key="u3", max_wait=0)
    await settle()
    await metrics.refresh()
    mid = parse(generate_latest(metrics.registry).decode())
    assert sample(mid, "executus_lane_running") == 1
    assert sample(mid, "executus_lane_queued") == 1
    clock.advance(2)
    a.release("ok")
    await settle()
    clock.advance(3)
    b.fail(ValueError("boom"))
    await settle()
    await lane.submit(d, job_id="d", key="batch", preemptible=True)
    await settle()
    clock.advance(1)
    await lane.submit(e, job_id="e", key="admin", priority=5)
    await settle()
    await lane.submit(f, job_id="f", key="u1")
    await lane.cancel("f")
    clock.advance(4)
    e.release()
    await settle()
    await metrics.refresh()


def check_workload(s: Samples) -> None:
    """The figures the workload must produce."""
    assert sample(s, "executus_lane_submitted_total") == 5
    jobs = {
        outcome: sample(s, "executus_lane_jobs_total", outcome=outcome)
        for outcome in ("succeeded", "failed", "cancelled", "preempted", "rejected")
    }
    assert jobs == {"succeeded": 2, "failed": 1, "cancelled": 1, "preempted": 1, "rejected": 1}
    assert sample(s, "executus_lane_queue_wait_seconds_count") == 4
    assert sample(s, "executus_lane_queue_wait_seconds_sum") == pytest.approx(2.0)
    assert sample(s, "executus_lane_queue_wait_seconds_bucket", le="0.005") == 3
    assert sample(s, "executus_lane_queue_wait_seconds_bucket", le="2.5") == 4
    assert sample(s, "executus_lane_run_seconds_count") == 4
    assert sample(s, "executus_lane_run_seconds_sum") == pytest.approx(10.0)
    assert sample(s, "executus_lane_run_seconds_bucket", le="1.0") == 1
    assert sample(s, "executus_lane_run_seconds_bucket", le="2.5") == 2
    assert sample(s, "executus_lane_run_seconds_bucket", le="5.0") == 4
    assert sample(s, "executus_lane_running") == 0
    assert sample(s, "executus_lane_queued") == 0
    assert sample(s, "executus_lane_max_concurrent") == 1
    assert sample(s, "executus_lane_oldest_wait_seconds") == 0


def make_lane(clock: ManualClock) -> Lane:
    """The workload's lane: one slot, preemption at once."""
    return Lane("gpu", 1, policy=FIFO(), preemption=Preemption(min_runtime=0), clock=clock)


async def test_scrape_matches_a_known_workload(clock: ManualClock) -> None:
    """Counters, histograms and gauges in the text format match the workload's figures."""
    registry = CollectorRegistry()
    metrics = LaneMetrics(registry=registry, interval=None)
    lane = make_lane(clock)
    metrics.watch(lane)
    await workload(lane, clock, metrics)
    check_workload(parse(generate_latest(registry).decode()))
    await metrics.aclose()
    await lane.aclose()


async def test_scrape_over_http(clock: ManualClock) -> None:
    """serve() on a free port answers a real HTTP scrape with the same figures."""
    registry = CollectorRegistry()
    metrics = LaneMetrics(registry=registry, interval=None)
    lane = make_lane(clock)
    metrics.watch(lane)
    await workload(lane, clock, metrics)
    server = serve(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"

        def fetch() -> tuple[str, str]:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.headers["Content-Type"], resp.read().decode()

        content_type, body = await asyncio.to_thread(fetch)
    finally:
        server.close()
    assert content_type.startswith("text/plain")
    check_workload(parse(body))
    await metrics.aclose()
    await lane.aclose()


async def test_gauges_follow_resizes_and_outcome_series_start_at_zero(clock: ManualClock) -> None:
    """Watching shows every outcome at 0 at once; a resize reaches the gauge."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    lane = Lane("gpu", 2, clock=clock)
    metrics.watch(lane)
    await settle()
    s = parse(generate_latest(metrics.registry).decode())
    for outcome in ("succeeded", "failed", "cancelled", "preempted", "rejected"):
        assert sample(s, "executus_lane_jobs_total", outcome=outcome) == 0
    assert sample(s, "executus_lane_max_concurrent") == 2
    await lane.set_max_concurrent(5)
    await settle()
    s = parse(generate_latest(metrics.registry).decode())
    assert sample(s, "executus_lane_max_concurrent") == 5
    await metrics.aclose()
    await lane.aclose()


async def test_unwatch_stops_counting(clock: ManualClock) -> None:
    """After unwatch, the lane's jobs no longer move the counters; watching twice is a no-op."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=None)
    lane = Lane("gpu", 1, clock=clock)
    metrics.watch(lane)
    metrics.watch(lane)
    gate = Gate()
    await lane.submit(gate, job_id="a")
    await settle()
    gate.release()
    await settle()
    await metrics.unwatch(lane)
    late = Gate()
    await lane.submit(late, job_id="b")
    await settle()
    late.release()
    await settle()
    s = parse(generate_latest(metrics.registry).decode())
    assert sample(s, "executus_lane_submitted_total") == 1
    assert sample(s, "executus_lane_jobs_total", outcome="succeeded") == 1
    await lane.aclose()


async def test_poll_task_ends_on_aclose(clock: ManualClock) -> None:
    """With an interval, the poll task runs until aclose, which ends it."""
    metrics = LaneMetrics(registry=CollectorRegistry(), interval=30)
    lane = Lane("gpu", 1, clock=clock)
    metrics.watch(lane)
    await settle()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "executus-metrics-poll-gpu" in names
    await metrics.aclose()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "executus-metrics-poll-gpu" not in names
    await lane.aclose()


def test_bad_arguments_are_refused() -> None:
    """A bad interval, a lane without events and a bad port are refused with the rule."""
    with pytest.raises(ValueError, match=r"^interval must be > 0 seconds or None, got 0$"):
        LaneMetrics(registry=CollectorRegistry(), interval=0)
    metrics = LaneMetrics(registry=CollectorRegistry())
    with pytest.raises(
        TypeError,
        match=r"^lane must have name, add_observer\(fn\), remove_observer\(fn\) and async "
        r"stats\(\)",
    ):
        metrics.watch(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^port must be an int in 0\.\.65535, got 70000$"):
        serve(70000)


def test_one_registry_holds_one_lane_metrics() -> None:
    """Registering the names twice in one registry is refused by prometheus_client."""
    registry = CollectorRegistry()
    LaneMetrics(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LaneMetrics(registry=registry)
