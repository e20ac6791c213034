"""Benchmark: how accurate is a queued job's ETA?

The workload: 4 slots, run times drawn from a lognormal distribution (median 20 ms,
sigma 0.5, so the mean run time is 22.7 ms), Poisson arrivals at 90% load. Two queue
policies: ``FIFO()`` and ``FairShare()`` with three keys (50% / 30% / 20% of the
arrivals).

The figure: ``|ETA at submit - actual wait|``, as a median in units of the mean run
time, read two ways:

- over *every submission*: a job that starts at once has ETA 0 and waits 0, an error of
  0 (the literal reading of "median |ETA at submit - actual wait|");
- over *queued jobs only*: the jobs whose start had to be predicted (the harder figure).

Estimators compared on the same traces:

- executus: ``handle.eta`` read right after ``submit`` (default ``eta_window=16``; the
  run-time shape from the last 256 run times over the window mean);
- executus with the window-only shape (``history=0``: the shape from the 16 runs of the
  window alone, the estimator before the shape history) and with ``eta_window=64``;
- the seed's ``Submit`` estimate (``60 s / completions per minute`` per position) and
  its ``SubmitWithMaxWait`` estimate (mean of the last 16 run times per round of
  slots), both ported in ``seed_estimator.py``, fed the same completions and using the
  seed's position (the queue length);
- for FIFO, an *oracle*: the exact median wait (by Monte Carlo) given the job's
  position, the running jobs' elapsed times and the true lognormal distribution, which
  no estimator is told. It is the best estimate from that information (the least
  expected absolute error for every job), so it shows how much error any estimator
  must make on this workload. (Under FairShare a later arrival may go ahead of a
  queued job, so the wait also depends on the future: no oracle there.)

The traces are replayed exactly: a discrete-event simulation drives a real ``Lane``
whose clock is an ``executus.testing.ManualClock``. Jobs are futures released at
their drawn end time; the clock jumps to each next arrival or completion, and the
event loop settles before the next event. So the figures do not depend on the
machine's load and a trace of 30,000 jobs takes a few seconds. A short real-time run
(the system clock, ``asyncio.sleep`` jobs) checks that the simulation tells the truth.

The cost of one estimate (microseconds, at 4 and 64 running jobs) and of recording one
run time is timed last.

Run: ``.venv/bin/python bench/bench_eta.py`` (``--quick``: shorter traces, fewer of
them; ``--no-real``: skip the real-time run; ``--no-cost``: skip the timing).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table
from executus import FIFO, FairShare, JobState, Lane, QueuePolicy
from executus._eta import RuntimeWindow, estimate_wait
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
    """Per counted submission: the actual wait and each estimator's ETA at submit.

    A job that started at once has wait 0 and every estimate 0 (``queued`` False).
    """

    actual: list[float] = field(default_factory=list)
    executus: list[float] = field(default_factory=list)
    seed_submit: list[float] = field(default_factory=list)
    seed_maxwait: list[float] = field(default_factory=list)
    queued: list[bool] = field(default_factory=list)
    # Per counted submission: (position, running jobs' elapsed seconds) if it queued.
    snapshots: list[tuple[int, list[float]] | None] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)  # filled by ``add_oracle``

    def add(self, actual: float, eta: float, s_eta: float, s_wait: float, queued: bool) -> None:
        self.actual.append(actual)
        self.executus.append(eta)
        self.seed_submit.append(s_eta)
        self.seed_maxwait.append(s_wait)
        self.queued.append(queued)

    def error(self, estimates: list[float], *, queued_only: bool) -> float:
        """Median |estimate - actual| in mean run times."""
        errs = [
            abs(e - a)
            for e, a, q in zip(estimates, self.actual, self.queued, strict=True)
            if q or not queued_only
        ]
        return statistics.median(errs) / MEAN_RUN

    def count(self, *, queued_only: bool) -> int:
        return sum(self.queued) if queued_only else len(self.queued)


async def simulate(
    trace: Trace, policy: QueuePolicy, eta_window: int = 16, history: int | None = None
) -> Result:
    """Replay ``trace`` through a real lane on a manual clock; collect the estimates.

    ``history`` (when given) replaces the lane's run-time window by one with that shape
    history, to compare estimators on the same trace.
    """
    loop = asyncio.get_running_loop()
    clock = ManualClock(start=0.0)
    lane = Lane("sim", SLOTS, policy=policy, clock=clock, eta_window=eta_window)
    if history is not None:
        lane._window = RuntimeWindow(eta_window, history=history)  # the lane's estimator input
    seed = SeedEstimator(SLOTS)
    n = len(trace.arrivals)
    starts: list[float | None] = [None] * n
    ends: list[tuple[float, int, asyncio.Future[None]]] = []  # heap of pending completions
    counts = {"started": 0, "released": 0, "submitted": 0}
    running: set[int] = set()  # started, not yet released
    snapshots: dict[int, tuple[int, list[float]]] = {}  # queued at submit: what it saw

    def body_for(i: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            now = clock.monotonic()
            starts[i] = now
            counts["started"] += 1
            running.add(i)
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

    def starts_of_running() -> list[float]:
        return [s for s in (starts[j] for j in running) if s is not None]

    pending: list[tuple[int, float, float, float, bool]] = []
    nxt = 0
    while nxt < n or ends:
        if ends and (nxt >= n or ends[0][0] <= trace.arrivals[nxt]):
            end, i, fut = heapq.heappop(ends)
            clock.advance(end - clock.monotonic())
            start = starts[i]
            assert start is not None
            seed.complete(start, end)
            counts["released"] += 1
            running.discard(i)
            fut.set_result(None)
        else:
            clock.advance(trace.arrivals[nxt] - clock.monotonic())
            i = nxt
            nxt += 1
            handle = await lane.submit(body_for(i), key=trace.keys[i])
            counts["submitted"] += 1
            if trace.arrivals[i] >= WARMUP:
                if handle.state is JobState.QUEUED:
                    qlen = counts["submitted"] - counts["started"]
                    pending.append((i, handle.eta, seed.eta(qlen), seed.wait(qlen), True))
                    now = clock.monotonic()
                    elapsed = [now - s for s in starts_of_running()]
                    snapshots[i] = (handle.position, elapsed)
                else:
                    pending.append((i, 0.0, 0.0, 0.0, False))
        await settle()
        if counts["started"] - counts["released"] > SLOTS:
            raise RuntimeError(f"more than {SLOTS} jobs run at once: {counts}")
    await lane.aclose()

    result = Result()
    for i, eta, s_eta, s_wait, queued in pending:
        start = starts[i]
        assert start is not None
        result.add(start - trace.arrivals[i], eta, s_eta, s_wait, queued)
        result.snapshots.append(snapshots.get(i))
    return result


async def real_time(trace: Trace, policy: QueuePolicy) -> Result:
    """The same workload on the system clock: jobs sleep, arrivals sleep between."""
    lane = Lane("real", SLOTS, policy=policy)
    seed = SeedEstimator(SLOTS)
    loop = asyncio.get_running_loop()
    n = len(trace.arrivals)
    starts: list[float | None] = [None] * n
    submitted_at: list[float] = [0.0] * n
    counted: list[tuple[int, float, float, float, bool]] = []
    counts = {"started": 0, "submitted": 0}

    def body_for(i: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            t0 = time.monotonic()
            starts[i] = t0
            counts["started"] += 1
            await asyncio.sleep(trace.runs[i])
            seed.complete(t0, time.monotonic())

        return body

    t0 = loop.time()
    for i in range(n):
        delay = t0 + trace.arrivals[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted_at[i] = time.monotonic()
        handle = await lane.submit(body_for(i), key=trace.keys[i])
        counts["submitted"] += 1
        if i < REAL_WARMUP:
            continue
        if handle.state is JobState.QUEUED:
            qlen = counts["submitted"] - counts["started"]
            counted.append((i, handle.eta, seed.eta(qlen), seed.wait(qlen), True))
        else:
            counted.append((i, 0.0, 0.0, 0.0, False))
    await lane.aclose()
    result = Result()
    for i, eta, s_eta, s_wait, queued in counted:
        start = starts[i]
        assert start is not None
        # A job that started at once waited only the submit call: count it as 0.
        result.add(start - submitted_at[i] if queued else 0.0, eta, s_eta, s_wait, queued)
    return result


ORACLE_SAMPLES = 1000  # Monte Carlo draws per queued job
ORACLE_POOL = 2_000_000  # sorted draws of the true run-time distribution


def add_oracle(result: Result, seed: int, samples: int = ORACLE_SAMPLES) -> None:
    """Fill ``result.oracle``: each queued job's exact median wait, by Monte Carlo.

    The oracle knows what the lane knows at submit (the job's position and how long
    each running job has run) and, unlike any estimator, the true run-time
    distribution. A running job's residual is drawn from that distribution above its
    elapsed time; each slot then runs fresh draws; the job starts at the
    ``position``-th slot-free event. The median of that start time is the estimate
    with the least expected absolute error for every job: no estimator working from
    the same information beats it on average. Valid for FIFO only, where later
    arrivals cannot go ahead of a queued job.
    """
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.lognormal(math.log(MEDIAN_RUN), SIGMA, ORACLE_POOL))
    size = len(pool)
    oracle = [0.0] * len(result.snapshots)
    by_position: dict[int, list[int]] = {}
    for k, snap in enumerate(result.snapshots):
        if snap is not None:
            by_position.setdefault(snap[0], []).append(k)
    for position, members in by_position.items():
        step = max(1, 4_000_000 // (samples * SLOTS * position))  # bound the arrays
        for first in range(0, len(members), step):
            chunk = members[first : first + step]
            elapsed = np.array([result.snapshots[k][1] for k in chunk])  # type: ignore[index]
            assert elapsed.shape[1] == SLOTS, "a job queued while a slot was free"
            low = np.searchsorted(pool, elapsed, side="right")[:, None, :]
            picks = low + (rng.random((len(chunk), samples, SLOTS)) * (size - low)).astype(int)
            residual = np.maximum(pool[np.minimum(picks, size - 1)] - elapsed[:, None, :], 0.0)
            events = residual[..., None]
            if position > 1:
                fresh = pool[rng.integers(0, size, (len(chunk), samples, SLOTS, position - 1))]
                events = np.concatenate([events, events + np.cumsum(fresh, axis=-1)], axis=-1)
            events = events.reshape(len(chunk), samples, SLOTS * position)
            start = np.partition(events, position - 1, axis=-1)[..., position - 1]
            for k, median_wait in zip(chunk, np.median(start, axis=-1), strict=True):
                oracle[k] = float(median_wait)
    result.oracle = oracle


def policies() -> dict[str, Callable[[], QueuePolicy]]:
    return {"FIFO": FIFO, "FairShare (3 keys)": FairShare}


READINGS = (
    ("every submission (a job that starts at once: ETA 0, wait 0, error 0)", False),
    ("queued jobs only", True),
)


def _median_error(results: list[Result], estimator: str, queued_only: bool) -> float:
    """The median over traces of one estimator's median error."""
    errors = [r.error(getattr(r, estimator), queued_only=queued_only) for r in results]
    return statistics.median(errors)


def accuracy(runs: int, jobs: int, first_seed: int, oracle_samples: int) -> None:
    """Both error tables: every estimator on the same traces, per policy."""
    print(
        f"ETA error at submit: median |ETA - actual wait|, in mean run times "
        f"({MEAN_RUN * 1000:.1f} ms); {SLOTS} slots, lognormal(median "
        f"{MEDIAN_RUN * 1000:.0f} ms, sigma {SIGMA}), Poisson arrivals at {LOAD:.0%} load; "
        f"median of {runs} traces x {jobs:,} jobs (the first {WARMUP:.0f} s not counted), "
        f"simulated on a ManualClock",
        flush=True,
    )
    measured: dict[str, dict[str, list[Result]]] = {}
    for name, make in policies().items():
        traces = [Trace.draw(jobs, first_seed + r) for r in range(runs)]
        measured[name] = {
            "executus": [asyncio.run(simulate(t, make())) for t in traces],
            "window only": [asyncio.run(simulate(t, make(), history=0)) for t in traces],
            "w64": [asyncio.run(simulate(t, make(), eta_window=64)) for t in traces],
        }
    for title, queued_only in READINGS:
        print(f"\nOver {title}:\n", flush=True)
        table = Table(
            "policy",
            "jobs counted",
            "mean wait",
            "executus",
            "window-only shape",
            "eta_window=64",
            "seed Submit",
            "seed MaxWait",
            "executus / Submit",
            "executus / MaxWait",
        )
        for name, variants in measured.items():
            results = variants["executus"]

            ex = _median_error(results, "executus", queued_only)
            before = _median_error(variants["window only"], "executus", queued_only)
            ex64 = _median_error(variants["w64"], "executus", queued_only)
            s1 = _median_error(results, "seed_submit", queued_only)
            s2 = _median_error(results, "seed_maxwait", queued_only)
            counted = statistics.median(r.count(queued_only=queued_only) for r in results)
            waits = [
                statistics.fmean(
                    a for a, q in zip(r.actual, r.queued, strict=True) if q or not queued_only
                )
                for r in results
            ]
            wait = statistics.median(waits) / MEAN_RUN
            table.add(
                name, int(counted), f"{wait:.2f}", f"{ex:.3f}", f"{before:.3f}", f"{ex64:.3f}",
                f"{s1:.3f}", f"{s2:.3f}", f"{ex / s1:.2f}x", f"{ex / s2:.2f}x",
            )  # fmt: skip
        table.print()

    results = measured["FIFO"]["executus"]
    for k, result in enumerate(results):
        add_oracle(result, seed=first_seed + 1000 + k, samples=oracle_samples)
    print(
        f"\nAgainst the best possible estimate (FIFO): the oracle's ETA is the exact "
        f"median wait given the job's position, the running jobs' elapsed times and the "
        f"true run-time distribution ({oracle_samples} Monte Carlo draws per queued job)\n",
        flush=True,
    )
    table = Table("reading", "executus", "oracle", "executus / oracle")
    for title, queued_only in READINGS:
        ex = _median_error(results, "executus", queued_only)
        best = _median_error(results, "oracle", queued_only)
        table.add(title.split(" (")[0], f"{ex:.3f}", f"{best:.3f}", f"{ex / best:.2f}x")
    table.print()


def real(n: int, first_seed: int) -> None:
    """The short real-time check, both readings."""
    print(
        f"\nReal-time check (system clock, asyncio.sleep jobs, {n:,} jobs, one trace, "
        f"the first {REAL_WARMUP} not counted; timer jitter included. The seed's "
        f"Submit figure needs a minute of history, longer than this run: not shown)\n",
        flush=True,
    )
    table = Table(
        "policy",
        "executus, every submission",
        "seed MaxWait, every submission",
        "queued jobs",
        "executus, queued only",
        "seed MaxWait, queued only",
    )
    for name, make in policies().items():
        r = asyncio.run(real_time(Trace.draw(n, first_seed), make()))
        table.add(
            name,
            f"{r.error(r.executus, queued_only=False):.3f}",
            f"{r.error(r.seed_maxwait, queued_only=False):.3f}",
            r.count(queued_only=True),
            f"{r.error(r.executus, queued_only=True):.3f}",
            f"{r.error(r.seed_maxwait, queued_only=True):.3f}",
        )
    table.print()


def cost(first_seed: int) -> None:
    """Microseconds per estimate at 4 and 64 running jobs, and per recorded run."""
    print(
        "\nCost (microseconds; median of 5 rounds; a full window and history of "
        "lognormal runs; each estimate after a new run, as in a busy lane: the window's "
        "sorted copy is made again every time, the history's once per 16 runs)\n",
        flush=True,
    )
    table = Table("running jobs", "estimator", "per estimate", "per recorded run")
    rng = random.Random(first_seed)
    for slots in (4, 64):
        for label, history in (("executus", 256), ("window-only shape", 0)):
            w = RuntimeWindow(16, history=history)
            for _ in range(1000):
                w.add(rng.lognormvariate(math.log(MEDIAN_RUN), SIGMA))
            elapsed = [rng.random() * MEAN_RUN for _ in range(slots)]
            runs = [rng.lognormvariate(math.log(MEDIAN_RUN), SIGMA) for _ in range(2000)]
            positions = [1 + rng.randrange(2 * slots) for _ in range(2000)]
            per_est: list[float] = []
            per_add: list[float] = []
            for _ in range(5):
                t0 = time.perf_counter()
                for r in runs:
                    w.add(r)
                t1 = time.perf_counter()
                for r, p in zip(runs, positions, strict=True):
                    w.add(r)
                    estimate_wait(p, slots, elapsed, w, 0)
                t2 = time.perf_counter()
                per_add.append((t1 - t0) / len(runs))
                per_est.append((t2 - t1) / len(runs) - per_add[-1])
            table.add(
                slots,
                label,
                f"{statistics.median(per_est) * 1e6:.1f}",
                f"{statistics.median(per_add) * 1e6:.2f}",
            )
    table.print()


def main() -> None:
    parser = argparse.ArgumentParser(description="ETA accuracy: executus against the seed")
    parser.add_argument("--quick", action="store_true", help="shorter traces, fewer of them")
    parser.add_argument("--runs", type=int, default=None, help="traces per policy")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per trace")
    parser.add_argument("--no-real", action="store_true", help="skip the real-time run")
    parser.add_argument("--no-cost", action="store_true", help="skip the timing")
    parser.add_argument("--seed", type=int, default=1, help="first trace's random seed")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    jobs = args.jobs or (15_000 if args.quick else 30_000)

    accuracy(runs, jobs, args.seed, 400 if args.quick else ORACLE_SAMPLES)
    if not args.no_real:
        real(800 if args.quick else 2_500, args.seed)
    if not args.no_cost:
        cost(args.seed)


if __name__ == "__main__":
    main()
