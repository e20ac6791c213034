"""Benchmark: fanout against aiometer and asyncio.gather with semaphores.

The workload: 10,000 items over 10 keys, at most 8 at once per key and 64 at once
overall. Three ways to run it, measured in the same process, alternating:

- ``fanout``: ``fanout(items, fn, key=..., max_concurrent=64, per_key=8)``.
- ``aiometer``: ``aiometer.run_all(..., max_at_once=64)`` (global cap only: aiometer has
  no per-key caps, so it does less work than the others).
- ``gather+sems``: ``asyncio.gather`` of one task per item, each taking its key's
  semaphore (8) and a global one (64).

Two item functions: ``noop`` returns at once; ``yield`` awaits ``asyncio.sleep(0)``
once (a real I/O call always suspends at least once).

Memory: peak traced memory (tracemalloc) of ``fanout_iter`` over a lazy generator of
10,000 and of 1,000,000 items, outcomes consumed and dropped as they arrive.

Run: ``.venv/bin/python bench/bench_fanout.py`` (``--json`` for machine-readable output,
``--runs N`` for more repetitions, ``--no-memory`` to skip the memory part).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiometer

from executus._fanout import fanout, fanout_iter

N_ITEMS = 10_000
N_KEYS = 10
PER_KEY = 8
GLOBAL = 64


async def noop(i: int) -> int:
    return i


async def yield_once(i: int) -> int:
    await asyncio.sleep(0)
    return i


def key_of(i: int) -> int:
    return i % N_KEYS


async def run_fanout(fn: Callable[[int], Awaitable[int]], n: int) -> int:
    outcomes = await fanout(range(n), fn, key=key_of, max_concurrent=GLOBAL, per_key=PER_KEY)
    assert all(o.ok for o in outcomes)
    return len(outcomes)


async def run_aiometer(fn: Callable[[int], Awaitable[int]], n: int) -> int:
    results = await aiometer.run_all(
        [functools.partial(fn, i) for i in range(n)], max_at_once=GLOBAL
    )
    return len(results)


async def run_gather(fn: Callable[[int], Awaitable[int]], n: int) -> int:
    global_sem = asyncio.Semaphore(GLOBAL)
    key_sems = [asyncio.Semaphore(PER_KEY) for _ in range(N_KEYS)]

    async def guarded(i: int) -> int:
        async with key_sems[i % N_KEYS], global_sem:
            return await fn(i)

    results = await asyncio.gather(*(guarded(i) for i in range(n)))
    return len(results)


RUNNERS: dict[str, Callable[[Callable[[int], Awaitable[int]], int], Coroutine[Any, Any, int]]] = {
    "fanout": run_fanout,
    "aiometer": run_aiometer,
    "gather+sems": run_gather,
}
FUNCTIONS: dict[str, Callable[[int], Awaitable[int]]] = {"noop": noop, "yield": yield_once}


def time_one(
    runner: Callable[[Callable[[int], Awaitable[int]], int], Coroutine[Any, Any, int]],
    fn: Callable[[int], Awaitable[int]],
    n: int,
) -> float:
    gc.collect()
    t0 = time.perf_counter()
    count = asyncio.run(runner(fn, n))
    elapsed = time.perf_counter() - t0
    assert count == n, (count, n)
    return elapsed


def measure_speed(runs: int) -> dict[str, dict[str, float]]:
    """Median seconds per (function, runner), runners alternating within each round."""
    samples: dict[str, dict[str, list[float]]] = {f: {r: [] for r in RUNNERS} for f in FUNCTIONS}
    for fname, fn in FUNCTIONS.items():
        for runner in RUNNERS.values():  # warm up imports and code paths
            time_one(runner, fn, 1000)
        for _ in range(runs):
            for rname, runner in RUNNERS.items():
                samples[fname][rname].append(time_one(runner, fn, N_ITEMS))
    return {f: {r: statistics.median(v) for r, v in d.items()} for f, d in samples.items()}


def counting(n: int) -> Iterator[int]:
    yield from range(n)


async def drain_iter(n: int) -> int:
    count = 0
    async for o in fanout_iter(
        counting(n), noop, key=key_of, max_concurrent=GLOBAL, per_key=PER_KEY
    ):
        count += o.ok
    return count


def peak_memory(n: int) -> tuple[int, float]:
    """(peak traced bytes, seconds) of fanout_iter over a lazy n-item generator."""
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    count = asyncio.run(drain_iter(n))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    return peak, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="repetitions per runner")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    args = parser.parse_args(argv)

    speed = measure_speed(args.runs)
    memory: dict[str, float] = {}
    if not args.no_memory:
        small, t_small = peak_memory(10_000)
        big, t_big = peak_memory(1_000_000)
        memory = {
            "peak_bytes_10k": small,
            "peak_bytes_1m": big,
            "ratio": big / small,
            "seconds_10k": t_small,
            "seconds_1m": t_big,
        }

    if args.json:
        json.dump({"speed_seconds": speed, "memory": memory, "runs": args.runs}, sys.stdout)
        print()
        return 0

    print(
        f"{N_ITEMS:,} items, {N_KEYS} keys, per-key cap {PER_KEY}, global cap {GLOBAL}; "
        f"median of {args.runs} runs (Python {sys.version.split()[0]})"
    )
    print()
    header = f"{'fn':<6} {'runner':<12} {'ms':>8} {'items/s':>10} {'fanout is':>12}"
    print(header)
    print("-" * len(header))
    for fname, rows in speed.items():
        base = rows["fanout"]
        for rname, secs in rows.items():
            ratio = "" if rname == "fanout" else f"{secs / base:.2f}x faster"
            print(f"{fname:<6} {rname:<12} {secs * 1000:8.1f} {N_ITEMS / secs:10,.0f} {ratio:>12}")
    if memory:
        print()
        print("fanout_iter over a lazy generator, outcomes dropped as consumed (tracemalloc):")
        print(f"  10,000 items:    peak {memory['peak_bytes_10k'] / 1024:8.1f} KiB")
        print(f"  1,000,000 items: peak {memory['peak_bytes_1m'] / 1024:8.1f} KiB")
        print(f"  ratio 1M / 10k:  {memory['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
