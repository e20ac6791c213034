"""Prometheus metrics for lanes: ``pip install 'executus[prometheus]'``.

Two sources feed the metrics, each where it is exact:

- the lane's events (``lane.add_observer``) feed the counters and histograms: jobs by
  outcome, queue waits, run times. They count what *this process* saw, so summing a
  metric over the processes that share a Redis lane gives the lane-wide figure;
- the lane's ``stats()`` feeds the gauges: running, queued, max_concurrent and the
  oldest queued job's age. It is re-read (at most one read in flight per lane) after
  events and every ``interval`` seconds. For a ``RedisLane`` these are lane-wide
  snapshots: every process reports the same value, so aggregate them with ``max``,
  not ``sum``.

Any lane that has ``name``, ``add_observer(fn)``, ``remove_observer(fn)`` and ``async
stats()`` can be watched: ``Lane`` and ``RedisLane`` alike.

Example::

    from executus import metrics

    metrics.serve(9464)        # /metrics on port 9464, default registry
    metrics.watch(lane)        # inside the running event loop

or, with a registry of your own::

    lane_metrics = metrics.LaneMetrics(registry=my_registry)
    lane_metrics.watch(lane)
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from wsgiref.simple_server import WSGIServer

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import start_http_server as _start_http_server
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "executus.metrics needs prometheus_client: install executus[prometheus] "
        "(pip install 'executus[prometheus]')"
    ) from e

from ._errors import LaneClosed
from ._events import EventKind, LaneEvent, LaneObserver
from ._job import JobState
from ._stats import LaneStats
from ._tasks import spawn

__all__ = [
    "DEFAULT_RUN_BUCKETS",
    "DEFAULT_WAIT_BUCKETS",
    "OUTCOMES",
    "LaneMetrics",
    "MetricsServer",
    "ObservableLane",
    "default_metrics",
    "serve",
    "watch",
]

#: Histogram buckets (seconds) for queue waits: from an instant start to ten minutes.
DEFAULT_WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)  # fmt: skip
#: Histogram buckets (seconds) for run times: LLM calls and GPU jobs run long.
DEFAULT_RUN_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip

# The outcome label of each job-ending event.
_OUTCOMES = {
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
    JobState.PREEMPTED: "preempted",
}
#: The values of the ``outcome`` label.
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "preempted", "rejected")


@runtime_checkable
class ObservableLane(Protocol):
    """What ``LaneMetrics.watch`` needs of a lane (``Lane`` and ``RedisLane`` have it)."""

    @property
    def name(self) -> str:
        """The lane's name (the ``lane`` label)."""
        ...

    def add_observer(self, observer: LaneObserver) -> None:
        """Send every later ``LaneEvent`` to ``observer``."""
        ...

    def remove_observer(self, observer: LaneObserver) -> None:
        """Stop sending events to ``observer``."""
        ...

    async def stats(self) -> LaneStats:
        """A snapshot of the lane."""
        ...


class _Watch:
    """One watched lane: its observer, its gauge refreshes and its poll task."""

    def __init__(self, owner: LaneMetrics, lane: ObservableLane) -> None:
        self.owner = owner
        self.lane = lane
        self.name = lane.name
        self.refreshing: asyncio.Task[None] | None = None
        self.again = False  # an event arrived during a refresh: refresh once more
        self.poller: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # the last stats() failure, if any

    def __call__(self, event: LaneEvent) -> None:
        self.owner._count(event)
        self.kick()
        if event.kind is EventKind.CLOSED and self.poller is not None:
            # A closed lane changes only through its own last events (which still
            # refresh the gauges): polling it would go on until aclose() for nothing.
            self.poller.cancel()

    def kick(self) -> asyncio.Task[None]:
        """Refresh the gauges soon; coalesced to one ``stats()`` call in flight.

        Returns the refresh task; a read that starts after this call ends it. (A read
        in flight may have begun before what the caller wants seen: one more follows.)
        """
        if self.refreshing is not None and not self.refreshing.done():
            self.again = True
            return self.refreshing
        self.refreshing = spawn(
            asyncio.get_running_loop(), self._refresh_loop, name=f"executus-metrics-{self.name}"
        )
        return self.refreshing

    async def _refresh_loop(self) -> None:
        while True:
            self.again = False
            await self.refresh()
            if not self.again:
                return

    async def refresh(self) -> None:
        try:
            stats = await self.lane.stats()
        except LaneClosed:  # closed (a RedisLane's stats() refuses then): last gauges stay
            self.error = None
            return
        except Exception as exc:  # a lane that cannot answer keeps its last gauges
            self.error = exc
            return
        self.error = None
        self.owner._set_gauges(self.name, stats)

    async def poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.kick()

    async def aclose(self) -> None:
        tasks = [t for t in (self.refreshing, self.poller) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _buckets(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as histogram bounds: at least one, numbers, strictly increasing.

    prometheus_client sorts out only some of this: a NaN or a repeated bound would be
    exported as a bucket of its own.
    """
    bounds = tuple(values)
    if (
        not bounds
        or any(
            isinstance(b, bool) or not isinstance(b, int | float) or math.isnan(b) for b in bounds
        )
        or any(a >= b for a, b in itertools.pairwise(bounds))
    ):
        raise ValueError(f"{name} must be increasing numbers of seconds, got {values!r}")
    return bounds


class LaneMetrics:
    """The metrics of any number of lanes, registered in one ``CollectorRegistry``.

    Metrics (label ``lane``; ``outcome`` on the jobs counter)::

        executus_lane_running              gauge      jobs holding a slot
        executus_lane_queued               gauge      jobs waiting for a slot
        executus_lane_max_concurrent       gauge      the slot limit
        executus_lane_oldest_wait_seconds  gauge      age of the oldest queued job (0: none)
        executus_lane_submitted_total      counter    jobs accepted
        executus_lane_jobs_total           counter    outcome = succeeded | failed |
                                                      cancelled | preempted | rejected
        executus_lane_queue_wait_seconds   histogram  queue wait of each start
        executus_lane_run_seconds          histogram  run time of each ended run

    ``preempted`` counts every eviction (a requeued job may count several times);
    ``rejected`` counts submissions refused by ``max_wait`` (nothing was enqueued).

    Example::

        registry = CollectorRegistry()
        lane_metrics = LaneMetrics(registry=registry)
        lane_metrics.watch(lane)          # in the event loop that runs the lane
        ...
        await lane_metrics.aclose()

    Args:
        registry: where the metrics are registered (default: prometheus_client's global
            ``REGISTRY``). One ``LaneMetrics`` per registry: the names can be
            registered once.
        prefix: the metric name prefix.
        wait_buckets: histogram buckets for queue waits, in seconds.
        run_buckets: histogram buckets for run times, in seconds.
        interval: seconds between gauge refreshes when nothing happens in this process
            (a ``RedisLane`` changes through other processes too); ``None``: only after
            events and ``refresh()``.

    Raises:
        ValueError: ``interval`` is not a positive number of seconds, the buckets are
            not increasing numbers, or a name is registered in ``registry`` already
            (then none of the metrics is registered).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "executus",
        wait_buckets: Sequence[float] = DEFAULT_WAIT_BUCKETS,
        run_buckets: Sequence[float] = DEFAULT_RUN_BUCKETS,
        interval: float | None = 5.0,
    ) -> None:
        if interval is not None and (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ValueError(f"interval must be > 0 seconds or None, got {interval!r}")
        wait_bounds = _buckets("wait_buckets", wait_buckets)
        run_bounds = _buckets("run_buckets", run_buckets)
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self.interval = interval
        p = f"{prefix}_lane"
        # Made unregistered, then registered together: a name the registry holds already
        # leaves none of the others behind.
        self.running = Gauge(f"{p}_running", "Jobs holding a slot.", ["lane"], registry=None)
        self.queued = Gauge(f"{p}_queued", "Jobs waiting for a slot.", ["lane"], registry=None)
        self.max_concurrent = Gauge(
            f"{p}_max_concurrent", "The lane's slot limit.", ["lane"], registry=None
        )
        self.oldest_wait = Gauge(
            f"{p}_oldest_wait_seconds",
            "Seconds the oldest queued job has waited (0 when nothing is queued).",
            ["lane"],
            registry=None,
        )
        self.submitted = Counter(
            f"{p}_submitted", "Jobs accepted by the lane.", ["lane"], registry=None
        )
        self.jobs = Counter(
            f"{p}_jobs",
            "Jobs by outcome: succeeded, failed, cancelled, preempted (each eviction), "
            "rejected (refused by max_wait).",
            ["lane", "outcome"],
            registry=None,
        )
        self.queue_wait = Histogram(
            f"{p}_queue_wait_seconds",
            "Seconds a job waited in the queue before it started.",
            ["lane"],
            buckets=wait_bounds,
            registry=None,
        )
        self.run_time = Histogram(
            f"{p}_run_seconds",
            "Seconds a run held its slot (any outcome).",
            ["lane"],
            buckets=run_bounds,
            registry=None,
        )
        registered: list[Gauge | Counter | Histogram] = []
        try:
            for metric in (
                self.running,
                self.queued,
                self.max_concurrent,
                self.oldest_wait,
                self.submitted,
                self.jobs,
                self.queue_wait,
                self.run_time,
            ):
                self.registry.register(metric)
                registered.append(metric)
        except BaseException:
            for metric in registered:
                self.registry.unregister(metric)
            raise
        self._watches: dict[int, _Watch] = {}

    def watch(self, lane: ObservableLane) -> None:
        """Export ``lane``'s metrics from now on. Call it inside the lane's event loop.

        The label series of every outcome appear at once (at 0); the gauges are read
        right away, and every ``interval`` seconds unless the lane is closed already.
        Watching a lane twice is a no-op.

        Raises:
            TypeError: ``lane`` lacks ``name``, ``add_observer``, ``remove_observer``
                or ``stats``.
            ValueError: another lane of the same name is watched here (the two would
                write one set of series: the ``lane`` label is the name).
            RuntimeError: no event loop is running.
        """
        if not isinstance(lane, ObservableLane):
            raise TypeError(
                "lane must have name, add_observer(fn), remove_observer(fn) and async "
                f"stats() (a Lane or RedisLane), got {lane!r}"
            )
        if id(lane) in self._watches:
            return
        name = lane.name
        if any(w.name == name for w in self._watches.values()):
            raise ValueError(
                f"a lane named {name!r} is watched already: two lanes cannot share the "
                "series of one name (unwatch the other first)"
            )
        loop = asyncio.get_running_loop()
        w = _Watch(self, lane)
        self.submitted.labels(name)
        for outcome in OUTCOMES:
            self.jobs.labels(name, outcome)
        self.queue_wait.labels(name)
        self.run_time.labels(name)
        self._watches[id(lane)] = w
        lane.add_observer(w)
        w.kick()
        # A closed lane changes only through its last events, which reach the observer.
        if self.interval is not None and not getattr(lane, "closed", False):
            w.poller = spawn(loop, w.poll, self.interval, name=f"executus-metrics-poll-{name}")

    async def unwatch(self, lane: ObservableLane) -> None:
        """Stop following ``lane`` (its series stay at their last values)."""
        w = self._watches.pop(id(lane), None)
        if w is not None:
            lane.remove_observer(w)
            await w.aclose()

    async def refresh(self) -> None:
        """Re-read every watched lane's ``stats()`` into the gauges now.

        Each lane keeps at most one read in flight: if one is under way, it is awaited
        and the lane read once more (the read under way may have begun before the
        change the caller wants seen).

        Raises:
            Exception: the first error a lane's ``stats()`` raised (the other lanes
                are refreshed all the same).
        """
        watches = list(self._watches.values())
        # asyncio.wait: a refresh task ended by unwatch() or aclose() meanwhile is not an
        # error here, and cancelling this call leaves the shared tasks running.
        tasks = {w.kick() for w in watches}
        if tasks:
            await asyncio.wait(tasks)
        for w in watches:
            if w.error is not None:
                raise w.error

    async def aclose(self) -> None:
        """Stop following every lane and end the background tasks."""
        for w in list(self._watches.values()):
            await self.unwatch(w.lane)

    # -- updates (on the event loop) ---------------------------------------------------

    def _count(self, event: LaneEvent) -> None:
        lane = event.lane
        kind = event.kind
        if kind is EventKind.SUBMITTED:
            self.submitted.labels(lane).inc()
        elif kind is EventKind.STARTED:
            if event.wait is not None:
                self.queue_wait.labels(lane).observe(max(0.0, event.wait))
        elif kind is EventKind.REJECTED:
            self.jobs.labels(lane, "rejected").inc()
        elif kind in (EventKind.FINISHED, EventKind.CANCELLED, EventKind.PREEMPTED):
            # A requeue is PREEMPTED with state QUEUED: one eviction, the job goes on.
            if kind is EventKind.PREEMPTED:
                outcome: str | None = "preempted"
            else:
                outcome = None if event.state is None else _OUTCOMES.get(event.state)
            if outcome is not None:
                self.jobs.labels(lane, outcome).inc()
            if event.run is not None:
                self.run_time.labels(lane).observe(max(0.0, event.run))

    def _set_gauges(self, lane: str, stats: LaneStats) -> None:
        self.running.labels(lane).set(stats.running)
        self.queued.labels(lane).set(stats.queued)
        self.max_concurrent.labels(lane).set(stats.max_concurrent)
        oldest = stats.oldest_queued_at
        age = 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        self.oldest_wait.labels(lane).set(max(0.0, age))


_default: LaneMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> LaneMetrics:
    """The ``LaneMetrics`` on prometheus_client's global ``REGISTRY`` (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LaneMetrics()
        return _default


def watch(lane: ObservableLane) -> None:
    """Export ``lane``'s metrics in the global registry (see ``LaneMetrics.watch``)."""
    default_metrics().watch(lane)


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (a daemon thread).

    Attributes:
        port: the port it listens on (the real one when 0 was asked for).
        address: the address it is bound to.
    """

    port: int
    address: str
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and wait (at most 5 s) for the thread to end."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    port: int = 9464, *, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the metrics in Prometheus' text format over HTTP, from a daemon thread.

    Args:
        port: the TCP port; 0 picks a free one (see ``MetricsServer.port``).
        addr: the address to bind; ``"127.0.0.1"`` keeps it local.
        registry: the registry to serve (default: the global ``REGISTRY``, where
            ``watch`` registers).

    Returns:
        The running server; ``close()`` stops it.

    Raises:
        ValueError: ``port`` is not in 0..65535.
        OSError: the port cannot be bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    reg = REGISTRY if registry is None else registry
    server, thread = _start_http_server(port, addr=addr, registry=reg)
    real_port = int(server.server_port)
    return MetricsServer(real_port, addr, server, thread)
