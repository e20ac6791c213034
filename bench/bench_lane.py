"""Benchmark: the lane's per-job overhead against its peers.

The workload: 50,000 no-op jobs through 64 slots, all submitted at once, then all
awaited, in two forms: jobs that return at once (``async def noop(): return None``) and
jobs that await once (``await asyncio.sleep(0)``, as any job doing I/O does). Only the
second makes the limiters limit: a job that never suspends never holds its slot across
a loop turn, so ``Semaphore`` + ``gather``, for one, then never blocks anyone. The
contenders, each in a fresh event loop, measured alternately in the same process:

- ``executus FIFO``: ``await lane.submit(noop)`` for every job, then ``await`` the
  handles; ``executus FIFO, run+gather``: ``asyncio.gather`` of ``lane.run(noop)``;
- ``executus FairShare, 1,000 keys``: the same submit loop, ``key`` cycling over 1,000
  keys; ``executus Priority``: random priorities in 0..99;
- ``aiojobs``: ``aiojobs.Scheduler(limit=64)``, ``spawn`` every job, then ``wait`` each;
- ``Semaphore+gather``: ``asyncio.gather`` of one coroutine per job, each in an
  ``async with asyncio.Semaphore(64)``;
- ``aiometer``: ``aiometer.run_all(jobs, max_at_once=64)``;
- ``anyio``: an ``anyio.CapacityLimiter(64)`` around each job, started in a task group;
- ``bare tasks+deque``: a hand-written floor: a deque of pending jobs and a done
  callback that starts the next task when one ends (no handles, no policy, no ETA).

Printed, per workload: median jobs/s over the runs and each contender's ratio to
executus FIFO (higher jobs/s is better). Plain ``python``, as users run it (debug asserts on).

Run: ``.venv/bin/python bench/bench_lane.py`` (``--quick``: 3 runs; ``--jobs N``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiojobs
import aiometer
import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table, median, run_rounds
from executus import FIFO, FairShare, Lane, Priority

SLOTS = 64
KEYS = 1_000


async def noop() -> None:
    return None


async def yielding_noop() -> None:
    await asyncio.sleep(0)


WORKLOADS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "jobs that return at once": noop,
    "jobs that await once (asyncio.sleep(0))": yielding_noop,
}


def make_contenders(
    n: int, seed: int, noop: Callable[[], Coroutine[Any, Any, None]]
) -> dict[str, Callable[[], Awaitable[object]]]:
    keys = [f"user-{i}" for i in range(KEYS)]
    rng = random.Random(seed)
    priorities = [rng.randrange(100) for _ in range(n)]

    async def executus_fifo() -> None:
        lane = Lane("bench", SLOTS, policy=FIFO())
        handles = [await lane.submit(noop) for _ in range(n)]
        for h in handles:
            await h

    async def executus_run_gather() -> None:
        lane = Lane("bench", SLOTS, policy=FIFO())
        await asyncio.gather(*(lane.run(noop) for _ in range(n)))

    async def executus_fair() -> None:
        lane = Lane("bench", SLOTS, policy=FairShare())
        handles = [await lane.submit(noop, key=keys[i % KEYS]) for i in range(n)]
        for h in handles:
            await h

    async def executus_priority() -> None:
        lane = Lane("bench", SLOTS, policy=Priority())
        handles = [await lane.submit(noop, priority=p) for p in priorities]
        for h in handles:
            await h

    async def aiojobs_scheduler() -> None:
        scheduler = aiojobs.Scheduler(limit=SLOTS, pending_limit=n)
        jobs = [await scheduler.spawn(noop()) for _ in range(n)]
        for job in jobs:
            await job.wait()
        await scheduler.close()

    async def semaphore_gather() -> None:
        sem = asyncio.Semaphore(SLOTS)

        async def guarded() -> None:
            async with sem:
                await noop()

        await asyncio.gather(*(guarded() for _ in range(n)))

    async def aiometer_run_all() -> None:
        await aiometer.run_all([noop] * n, max_at_once=SLOTS)

    async def anyio_limiter() -> None:
        limiter = anyio.CapacityLimiter(SLOTS)

        async def guarded() -> None:
            async with limiter:
                await noop()

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(guarded)

    async def bare_tasks() -> None:
        loop = asyncio.get_running_loop()
        pending: deque[Callable[[], Awaitable[None]]] = deque([noop] * n)
        done = loop.create_future()
        left = n

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            await fn()

        def finished(_: asyncio.Task[None]) -> None:
            nonlocal left
            left -= 1
            if pending:
                loop.create_task(run(pending.popleft())).add_done_callback(finished)
            elif left == 0:
                done.set_result(None)

        for _ in range(min(SLOTS, n)):
            loop.create_task(run(pending.popleft())).add_done_callback(finished)
        await done

    return {
        "executus FIFO": executus_fifo,
        "executus FIFO, run+gather": executus_run_gather,
        "executus FairShare, 1,000 keys": executus_fair,
        "executus Priority (random)": executus_priority,
        "aiojobs Scheduler(limit=64)": aiojobs_scheduler,
        "Semaphore+gather": semaphore_gather,
        "aiometer run_all": aiometer_run_all,
        "anyio CapacityLimiter+task group": anyio_limiter,
        "bare tasks+deque": bare_tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-job overhead against peers")
    parser.add_argument("--quick", action="store_true", help="3 runs instead of 7")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender")
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per run")
    parser.add_argument("--seed", type=int, default=1, help="random seed (priorities)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    n = args.jobs

    for workload, job in WORKLOADS.items():
        print(
            f"{n:,} no-op jobs through {SLOTS} slots, {workload}; median of {runs} runs "
            f"each (Python {sys.version.split()[0]})\n",
            flush=True,
        )
        samples = run_rounds(make_contenders(n, args.seed, job), runs)
        report(n, samples)
        print(flush=True)


def report(n: int, samples: dict[str, list[float]]) -> None:
    base = median(samples["executus FIFO"])
    table = Table("contender", "jobs/s", "us/job", "executus FIFO vs it")
    for name, times in samples.items():
        t = median(times)
        table.add(name, f"{n / t:,.0f}", f"{t / n * 1e6:.1f}", f"{t / base:.2f}x")
    table.print()
    fifo = n / base

    def rate(name: str) -> float:
        return float(n / median(samples[name]))

    print(
        f"\nexecutus FIFO / aiojobs: {fifo / rate('aiojobs Scheduler(limit=64)'):.2f}x "
        f"(goal >= 1.3x); / Semaphore+gather: {fifo / rate('Semaphore+gather'):.2f}x "
        f"(goal >= 2x)\n"
        f"FairShare / FIFO: {rate('executus FairShare, 1,000 keys') / fifo:.2f}x, "
        f"Priority / FIFO: {rate('executus Priority (random)') / fifo:.2f}x (goal >= 0.8x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
