"""Shared helpers for the lane benchmarks: repeated runs, medians and tables.

Every benchmark prints medians over several runs and ratios against peers measured in
the same process, in the same run, alternating between them so that a noisy neighbour
slows every contender alike. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["Table", "median", "parse_args", "run_rounds", "time_async", "time_sync"]


def parse_args(doc: str | None, *, runs: int = 7, quick_runs: int = 3) -> argparse.Namespace:
    """Parse the common options: ``--quick`` (fewer runs, smaller sizes) and ``--runs``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and smaller sizes")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per contender")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = quick_runs if args.quick else runs
    return args


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


async def time_async(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds one call of ``fn`` takes, with the garbage collector settled first."""
    gc.collect()
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def time_sync(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes, with the garbage collector settled first."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_rounds(
    contenders: dict[str, Callable[[], Awaitable[object]]], runs: int
) -> dict[str, list[float]]:
    """Time every contender ``runs`` times, alternating, each run in a fresh event loop."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            samples[name].append(asyncio.run(time_async(fn)))
    return samples


class Table:
    """A plain-text table, printed as GitHub markdown so it can be pasted into docs."""

    def __init__(self, *headers: str) -> None:
        self.headers = headers
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: object) -> None:
        """Add a row; floats are shown with 3 significant digits unless pre-formatted."""
        self.rows.append(tuple(_fmt(c) for c in cells))

    def render(self) -> str:
        """The table as markdown text."""
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines.extend(
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            for row in self.rows
        )
        return "\n".join(lines)

    def print(self) -> None:
        """Print the table, then flush (benchmarks run for a while)."""
        print(self.render(), flush=True)


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        if cell == 0:
            return "0"
        if abs(cell) >= 1000:
            return f"{cell:,.0f}"
        return f"{cell:.3g}"
    if isinstance(cell, int):
        return f"{cell:,}"
    return str(cell)
