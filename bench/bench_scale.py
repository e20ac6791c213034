"""Benchmark: does a lane stay fast with a million jobs queued?

Four figures, for ``FIFO()``, ``FairShare()`` (1,000 keys) and ``Priority()`` (random
priorities 0..99):

1. Per-job cost (submit + dispatch + finish) while the queue holds Q others, for
   Q = 1,000 and Q = 1,000,000. The lane's 64 slots are first held by blocked jobs
   while Q no-op jobs are queued (not timed); then, timed, the blocked jobs are
   released and 20,000 more no-op jobs are submitted, 64 per event-loop turn, while
   the lane runs them, until 20,000 jobs have finished. The queue stays at about Q
   throughout, so the figure is the marginal cost of a job in a lane that deep. Three
   rounds alternate between the two depths, each on a fresh lane timed over three
   phases (median of the round medians shown), so a drift in the machine's speed
   during the run hits both depths alike.
2. Cancelling 100,000 random queued jobs out of 1,000,000 with ``await lane.cancel(id)``.
3. ``handle.position`` of a random queued job, at 1,000 and 1,000,000 queued (mean
   time per query over 10,000 queries).
4. Memory per queued job: ``tracemalloc`` growth over 100,000 submits of the same
   function object (so the user's callable is not counted), divided by 100,000.

Run: ``.venv/bin/python bench/bench_scale.py`` (``--quick``: fewer repetitions and
100,000 instead of 1,000,000 as the big queue).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table, median
from executus import FIFO, FairShare, JobHandle, Lane, Priority, QueuePolicy

SLOTS = 64
KEYS = [f"user-{i}" for i in range(1_000)]
BATCH = 64  # submits per event-loop turn in the steady-state phase
ROUNDS = 3  # per-job cost: rounds alternating between the two depths


class Counter:
    """A no-op job body that counts how many times it finished."""

    def __init__(self) -> None:
        self.done = 0

    async def job(self) -> None:
        self.done += 1


def policies() -> dict[str, Callable[[], QueuePolicy]]:
    return {"FIFO": FIFO, "FairShare (1,000 keys)": FairShare, "Priority (random)": Priority}


class Filled:
    """A lane whose slots are held by blocked jobs, with ``queued`` jobs waiting."""

    def __init__(self, policy: QueuePolicy, queued: int, counter: Counter, seed: int) -> None:
        self.lane = Lane("scale", SLOTS, policy=policy)
        self.counter = counter
        self.queued = queued
        self.rng = random.Random(seed)
        self.handles: list[JobHandle[None]] = []
        self.blockers: list[asyncio.Future[None]] = []

    def options(self) -> dict[str, Any]:
        rng = self.rng
        return {"key": KEYS[rng.randrange(len(KEYS))], "priority": rng.randrange(100)}

    async def fill(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(SLOTS):
            fut: asyncio.Future[None] = loop.create_future()
            self.blockers.append(fut)
            await self.lane.submit(lambda fut=fut: fut)  # type: ignore[misc]
        job = self.counter.job
        submit = self.lane.submit
        self.handles = [await submit(job, **self.options()) for _ in range(self.queued)]
        await asyncio.sleep(0)  # the blocked jobs start

    async def steady(self, n: int) -> float:
        """Seconds to run ``n`` more jobs while the queue stays near ``queued``."""
        counter = self.counter
        job = counter.job
        submit = self.lane.submit
        opts = [self.options() for _ in range(n)]
        gc.collect()
        start = time.perf_counter()
        target = counter.done + n
        for fut in self.blockers:
            if not fut.done():
                fut.set_result(None)
        for i in range(0, n, BATCH):
            for o in opts[i : i + BATCH]:
                await submit(job, **o)
            await asyncio.sleep(0)
        while counter.done < target:
            await asyncio.sleep(0)
        return time.perf_counter() - start


async def per_job_cost(policy: QueuePolicy, queued: int, n: int, reps: int) -> float:
    filled = Filled(policy, queued, Counter(), seed=1)
    await filled.fill()
    times = [await filled.steady(n) for _ in range(reps)]
    await filled.lane.aclose(drain=False)
    return median(times) / n


async def cancel_cost(policy: QueuePolicy, queued: int, cancels: int) -> float:
    filled = Filled(policy, queued, Counter(), seed=2)
    await filled.fill()
    ids = [h.id for h in random.Random(3).sample(filled.handles, cancels)]
    cancel = filled.lane.cancel
    gc.collect()
    start = time.perf_counter()
    for job_id in ids:
        await cancel(job_id)
    elapsed = time.perf_counter() - start
    await filled.lane.aclose(drain=False)
    return elapsed


async def position_cost(policy: QueuePolicy, queued: int, queries: int) -> float:
    filled = Filled(policy, queued, Counter(), seed=4)
    await filled.fill()
    picks = random.Random(5).choices(filled.handles, k=queries)
    gc.collect()
    start = time.perf_counter()
    for h in picks:
        _ = h.position
    elapsed = time.perf_counter() - start
    await filled.lane.aclose(drain=False)
    return elapsed / queries


async def memory_per_job(policy: QueuePolicy, queued: int) -> float:
    filled = Filled(policy, 0, Counter(), seed=6)
    await filled.fill()
    job = filled.counter.job
    options = [filled.options() for _ in range(queued)]
    submit = filled.lane.submit
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    handles = [await submit(job, **o) for o in options]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The list holding the handles is the benchmark's, not the lane's.
    own = sys.getsizeof(handles)
    await filled.lane.aclose(drain=False)
    return (after - before - own) / queued


def main() -> None:
    parser = argparse.ArgumentParser(description="Lane cost with a deep queue")
    parser.add_argument("--quick", action="store_true", help="smaller big queue, fewer reps")
    parser.add_argument("--runs", type=int, default=None, help="timed phases per lane")
    args = parser.parse_args()
    reps = args.runs or (2 if args.quick else 3)
    big = 100_000 if args.quick else 1_000_000
    small = 1_000
    n = 20_000

    print(
        f"Per-job cost (submit+dispatch+finish), {n:,} jobs, {ROUNDS} alternating rounds "
        f"of {reps} phases\n",
        flush=True,
    )
    table = Table("policy", f"{small:,} queued", f"{big:,} queued", "ratio")
    for name, make in policies().items():
        # Rounds alternate between the two depths (a fresh lane each), so a drift in the
        # machine's speed during the run hits both alike.
        los: list[float] = []
        his: list[float] = []
        for _ in range(ROUNDS):
            los.append(asyncio.run(per_job_cost(make(), small, n, reps)))
            his.append(asyncio.run(per_job_cost(make(), big, n, reps)))
        lo, hi = median(los), median(his)
        table.add(name, f"{lo * 1e6:.1f} us", f"{hi * 1e6:.1f} us", f"{hi / lo:.2f}x")
    table.print()

    cancels = big // 10
    print(f"\nCancel {cancels:,} random queued jobs out of {big:,}\n", flush=True)
    table = Table("policy", "total", "per cancel")
    for name, make in policies().items():
        t = asyncio.run(cancel_cost(make(), big, cancels))
        table.add(name, f"{t:.3f} s", f"{t / cancels * 1e6:.2f} us")
    table.print()

    queries = 10_000
    print(f"\nhandle.position of a random queued job ({queries:,} queries)\n", flush=True)
    table = Table("policy", f"{small:,} queued", f"{big:,} queued", "ratio")
    for name, make in policies().items():
        lo = asyncio.run(position_cost(make(), small, queries))
        hi = asyncio.run(position_cost(make(), big, queries))
        table.add(name, f"{lo * 1e6:.2f} us", f"{hi * 1e6:.2f} us", f"{hi / lo:.2f}x")
    table.print()

    count = 100_000
    print(f"\nMemory per queued job (tracemalloc, {count:,} jobs, one fn object)\n", flush=True)
    table = Table("policy", "bytes per queued job")
    for name, make in policies().items():
        table.add(name, f"{asyncio.run(memory_per_job(make(), count)):.0f}")
    table.print()


if __name__ == "__main__":
    main()
