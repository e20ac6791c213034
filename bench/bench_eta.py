"""Benchmark: how accurate is a queued job's ETA?

The workload: 4 slots, run times drawn from a lognormal distribution (median 20 ms,
sigma 0.5, so the mean run time is 22.7 ms), Poisson arrivals at 90% load. Two queue
policies: ``FIFO()`` and ``FairShare()`` with three keys (50% / 30% / 20% of the
arrivals).

The figure: for every job that had to queue, ``|ETA at submit - actual wait|``; the
table shows the median over those jobs, in units of the mean run time, for

- executus: ``handle.eta`` read right after ``submit``;
- the seed's ``Submit`` estimate (``60 s / completions per minute`` per position) and
  its ``SubmitWithMaxWait`` estimate (mean of the last 16 run times per round of
  slots), both ported in ``seed_estimator.py``, fed the same completions and using the
  seed's position (the queue length).

The traces are replayed exactly: a discrete-event simulation drives a real ``Lane``
whose clock is an ``executus.testing.ManualClock``. Jobs are futures released at
their drawn end time; the clock jumps to each next arrival or completion, and the
event loop settles before the next event. So the figures do not depend on the
machine's load and a trace of 30,000 jobs takes a few seconds. A short real-time run
(the system clock, ``asyncio.sleep`` jobs) checks that the simulation tells the truth.

Run: ``.venv/bin/python bench/bench_eta.py`` (``--quick``: shorter traces, fewer of
them; ``--no-real``: skip the real-time run).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table
from executus import FIFO, FairShare, JobState, Lane, QueuePolicy
from executus.testing import ManualClock
from seed_estimator import SeedEstimator

SLOTS = 4
REAL_WARMUP = 200  # real-time run: jobs not counted while the run-time window fills
MEDIAN_RUN = 0.020
SIGMA = 0.5
MEAN_RUN = MEDIAN_RUN * math.exp(SIGMA**2 / 2)
LOAD = 0.9
KEYS = (("a", 0.5), ("b", 0.3), ("c", 0.2))
# Jobs submitted in the first minute are not counted: the estimators have no history yet,
# and the seed's throughput figure needs a full minute of completions.
WARMUP = 60.0


@dataclass
class Trace:
    """One workload: arrival times, run times and keys, drawn from a seed."""

    arrivals: list[float]
    runs: list[float]
    keys: list[str]

    @classmethod
    def draw(cls, n: int, seed: int) -> Trace:
        rng = random.Random(seed)
        rate = LOAD * SLOTS / MEAN_RUN
        t = 0.0
        arrivals, runs, keys = [], [], []
        names = [k for k, _ in KEYS]
        weights = [w for _, w in KEYS]
        for _ in range(n):
            t += rng.expovariate(rate)
            arrivals.append(t)
            runs.append(rng.lognormvariate(math.log(MEDIAN_RUN), SIGMA))
            keys.append(rng.choices(names, weights)[0])
        return cls(arrivals, runs, keys)


@dataclass
class Result:
    """Per queued job: the actual wait and each estimator's ETA at submit."""

    actual: list[float] = field(default_factory=list)
    executus: list[float] = field(default_factory=list)
    seed_submit: list[float] = field(default_factory=list)
    seed_maxwait: list[float] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def error(self, estimates: list[float]) -> float:
        """Median |estimate - actual| in mean run times."""
        errs = [abs(e - a) for e, a in zip(estimates, self.actual, strict=True)]
        return statistics.median(errs) / MEAN_RUN


async def simulate(trace: Trace, policy: QueuePolicy, eta_window: int = 16) -> Result:
    """Replay ``trace`` through a real lane on a manual clock; collect the estimates."""
    loop = asyncio.get_running_loop()
    clock = ManualClock(start=0.0)
    lane = Lane("sim", SLOTS, policy=policy, clock=clock, eta_window=eta_window)
    seed = SeedEstimator(SLOTS)
    n = len(trace.arrivals)
    starts: list[float | None] = [None] * n
    ends: list[tuple[float, int, asyncio.Future[None]]] = []  # heap of pending completions
    counts = {"started": 0, "released": 0, "submitted": 0}

    def body_for(i: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            now = clock.monotonic()
            starts[i] = now
            counts["started"] += 1
            fut = loop.create_future()
            heapq.heappush(ends, (now + trace.runs[i], i, fut))
            await fut

        return body

    async def settle() -> None:
        # Let released jobs end and newly started ones reach their body.
        for _ in range(1000):
            active = counts["submitted"] - counts["released"]
            if counts["started"] - counts["released"] == min(SLOTS, active):
                await asyncio.sleep(0)  # one more step: released tasks finish their end
                return
            await asyncio.sleep(0)
        raise RuntimeError(f"the lane did not settle: {counts} {len(ends)}")

    pending: list[tuple[int, float | None, float, float, int]] = []
    nxt = 0
    while nxt < n or ends:
        if ends and (nxt >= n or ends[0][0] <= trace.arrivals[nxt]):
            end, i, fut = heapq.heappop(ends)
            clock.advance(end - clock.monotonic())
            start = starts[i]
            assert start is not None
            seed.complete(start, end)
            counts["released"] += 1
            fut.set_result(None)
        else:
            clock.advance(trace.arrivals[nxt] - clock.monotonic())
            i = nxt
            nxt += 1
            handle = await lane.submit(body_for(i), key=trace.keys[i])
            counts["submitted"] += 1
            if handle.state is JobState.QUEUED and trace.arrivals[i] >= WARMUP:
                qlen = counts["submitted"] - counts["started"]
                pending.append((i, handle.eta, seed.eta(qlen), seed.wait(qlen), handle.position))
        await settle()
        if counts["started"] - counts["released"] > SLOTS:
            raise RuntimeError(f"more than {SLOTS} jobs run at once: {counts}")
    await lane.aclose()

    result = Result()
    for i, eta, s_eta, s_wait, pos in pending:
        start = starts[i]
        assert start is not None
        assert eta is not None
        result.actual.append(start - trace.arrivals[i])
        result.executus.append(eta)
        result.seed_submit.append(s_eta)
        result.seed_maxwait.append(s_wait)
        result.positions.append(pos)
    return result


async def real_time(trace: Trace, policy: QueuePolicy) -> Result:
    """The same workload on the system clock: jobs sleep, arrivals sleep between."""
    lane = Lane("real", SLOTS, policy=policy)
    seed = SeedEstimator(SLOTS)
    loop = asyncio.get_running_loop()
    n = len(trace.arrivals)
    starts: list[float | None] = [None] * n
    submitted_at: list[float] = [0.0] * n
    queued: list[tuple[int, float, float, float, int]] = []
    counts = {"started": 0, "submitted": 0}

    def body_for(i: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            t0 = time.monotonic()
            starts[i] = t0
            counts["started"] += 1
            await asyncio.sleep(trace.runs[i])
            seed.complete(t0, time.monotonic())

        return body

    handles = []
    t0 = loop.time()
    for i in range(n):
        delay = t0 + trace.arrivals[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted_at[i] = time.monotonic()
        handle = await lane.submit(body_for(i), key=trace.keys[i])
        counts["submitted"] += 1
        handles.append(handle)
        if handle.state is JobState.QUEUED and i >= REAL_WARMUP:
            qlen = counts["submitted"] - counts["started"]
            queued.append((i, handle.eta, seed.eta(qlen), seed.wait(qlen), handle.position))
    await lane.aclose()
    result = Result()
    for i, eta, s_eta, s_wait, pos in queued:
        start = starts[i]
        assert start is not None
        result.actual.append(start - submitted_at[i])
        result.executus.append(eta)
        result.seed_submit.append(s_eta)
        result.seed_maxwait.append(s_wait)
        result.positions.append(pos)
    return result


def policies() -> dict[str, Callable[[], QueuePolicy]]:
    return {"FIFO": FIFO, "FairShare (3 keys)": FairShare}


def main() -> None:
    parser = argparse.ArgumentParser(description="ETA accuracy: executus against the seed")
    parser.add_argument("--quick", action="store_true", help="shorter traces, fewer of them")
    parser.add_argument("--runs", type=int, default=None, help="traces per policy")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per trace")
    parser.add_argument("--no-real", action="store_true", help="skip the real-time run")
    parser.add_argument("--seed", type=int, default=1, help="first trace's random seed")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    jobs = args.jobs or (15_000 if args.quick else 30_000)

    print(
        f"ETA error at submit: median |ETA - actual wait| over queued jobs, in mean run "
        f"times ({MEAN_RUN * 1000:.1f} ms); {SLOTS} slots, lognormal(median "
        f"{MEDIAN_RUN * 1000:.0f} ms, sigma {SIGMA}), Poisson arrivals at {LOAD:.0%} load; "
        f"median of {runs} traces x {jobs:,} jobs (the first {WARMUP:.0f} s not counted), "
        f"simulated on a ManualClock\n",
        flush=True,
    )
    table = Table(
        "policy",
        "queued jobs",
        "mean wait",
        "executus",
        "executus, eta_window=64",
        "seed Submit",
        "seed MaxWait",
        "executus / seed MaxWait",
    )
    for name, make in policies().items():
        traces = [Trace.draw(jobs, args.seed + r) for r in range(runs)]
        results = [asyncio.run(simulate(t, make())) for t in traces]
        wide = [asyncio.run(simulate(t, make(), eta_window=64)) for t in traces]
        ex = statistics.median(r.error(r.executus) for r in results)
        ex64 = statistics.median(r.error(r.executus) for r in wide)
        s1 = statistics.median(r.error(r.seed_submit) for r in results)
        s2 = statistics.median(r.error(r.seed_maxwait) for r in results)
        queued = statistics.median(len(r.actual) for r in results)
        wait = statistics.median(statistics.fmean(r.actual) for r in results) / MEAN_RUN
        table.add(
            name, int(queued), f"{wait:.2f}", f"{ex:.3f}", f"{ex64:.3f}", f"{s1:.3f}",
            f"{s2:.3f}", f"{ex / s2:.2f}x",
        )  # fmt: skip
    table.print()

    if not args.no_real:
        n = 800 if args.quick else 2_500
        print(
            f"\nReal-time check (system clock, asyncio.sleep jobs, {n:,} jobs, one trace, "
            f"the first {REAL_WARMUP} not counted; timer jitter included. The seed's "
            f"Submit figure needs a minute of history, longer than this run: not shown)\n",
            flush=True,
        )
        real = Table("policy", "queued jobs", "executus", "seed MaxWait")
        for name, make in policies().items():
            r = asyncio.run(real_time(Trace.draw(n, args.seed), make()))
            real.add(
                name,
                len(r.actual),
                f"{r.error(r.executus):.3f}",
                f"{r.error(r.seed_maxwait):.3f}",
            )
        real.print()


if __name__ == "__main__":
    main()
