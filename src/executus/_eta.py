"""Wait estimates and the lane's rolling figures.

``RuntimeWindow`` keeps the last N run times; ``ThroughputWindow`` counts the runs that
ended in the last 60 seconds in O(1) memory (one counter per second, in a ring), however
high the job rate. ``estimate_wait`` turns a queue position into seconds.

The estimate (one function for every caller: ``handle.eta``, ``LaneBusy.eta`` and the
``max_wait`` gate):

1. Each running job will free its slot after its expected *remaining* time, from how
   long it has already run: the mean of ``s - elapsed`` over the recent run times ``s``
   longer than ``elapsed`` (the empirical mean residual life), or half the mean run time
   if it has already outlived them all.
2. With ``m`` slots, the sorted free times ``F[0..m-1]`` repeat every mean run time
   ``mu``: the job at position ``p`` starts at ``F[(p-1) % m] + ((p-1) // m) * mu``.
   (The p-th slot event of m staggered renewal sequences with step mu.)
3. Without any recorded run time: ``p * 60 / throughput_1m``; with no throughput either,
   one second per position.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Iterable

__all__ = ["RuntimeWindow", "ThroughputWindow", "estimate_wait"]


class RuntimeWindow:
    """The last ``size`` run times, with their mean and mean residual life."""

    __slots__ = ("_recent", "_sorted", "_suffix", "_total")

    def __init__(self, size: int) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._suffix: list[float] | None = None
        self._total = 0.0

    @property
    def size(self) -> int:
        """The window's capacity."""
        maxlen = self._recent.maxlen
        assert maxlen is not None
        return maxlen

    def resize(self, size: int) -> None:
        """Keep the most recent ``size`` run times from now on."""
        kept = list(self._recent)[-size:]
        self._recent = deque(maxlen=size)
        self._sorted = []
        self._total = 0.0
        for d in kept:
            self.add(d)

    def add(self, seconds: float) -> None:
        """Record one run time."""
        recent = self._recent
        if len(recent) == recent.maxlen:
            old = recent[0]
            self._total -= old
            srt = self._sorted
            del srt[bisect_right(srt, old) - 1]
        recent.append(seconds)
        self._total += seconds
        insort(self._sorted, seconds)
        self._suffix = None

    def __len__(self) -> int:
        return len(self._recent)

    def mean(self) -> float | None:
        """The mean run time, or None without data."""
        n = len(self._recent)
        return self._total / n if n else None

    def remaining(self, elapsed: float, mean: float) -> float:
        """Expected seconds left for a job that has run ``elapsed`` seconds."""
        srt = self._sorted
        i = bisect_right(srt, elapsed)
        n = len(srt) - i
        if n <= 0:
            return 0.5 * mean
        suffix = self._suffix
        if suffix is None:
            suffix = self._suffix = _suffix_sums(srt)
        return suffix[i] / n - elapsed


def _suffix_sums(values: list[float]) -> list[float]:
    out = [0.0] * (len(values) + 1)
    acc = 0.0
    for i in range(len(values) - 1, -1, -1):
        acc += values[i]
        out[i] = acc
    return out


class ThroughputWindow:
    """Runs ended in the last 60 seconds, in 60 one-second buckets (O(1) memory)."""

    __slots__ = ("_counts", "_stamps")

    SPAN = 60

    def __init__(self) -> None:
        self._counts = [0] * self.SPAN
        self._stamps = [-1] * self.SPAN

    def record(self, now: float) -> None:
        """Count one run ending at monotonic time ``now``."""
        second = math.floor(now)
        i = second % self.SPAN
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._counts[i] = 0
        self._counts[i] += 1

    def count(self, now: float) -> int:
        """Runs ended in the 60 seconds up to ``now`` (to one-second resolution)."""
        oldest = math.floor(now) - self.SPAN
        return sum(c for c, s in zip(self._counts, self._stamps, strict=True) if s > oldest)


def estimate_wait(
    position: int,
    slots: int,
    elapsed: Iterable[float],
    window: RuntimeWindow,
    throughput_1m: int,
    *,
    held: Iterable[float] = (),
) -> float:
    """Seconds until the job at ``position`` (1 = next) starts.

    Args:
        position: the job's place in the dispatch order.
        slots: the lane's max_concurrent.
        elapsed: how long each running job has run so far.
        window: recent run times.
        throughput_1m: runs ended in the last minute (the fallback).
        held: known seconds until slots already promised free up (a preemption grace
            still running); they count as running jobs with that remaining time.
    """
    if position <= 0:
        return 0.0
    mean = window.mean()
    if mean is None:
        step = 60.0 / throughput_1m if throughput_1m > 0 else 1.0
        known = sorted(held)  # promised slots free up at known times
        if position <= len(known):
            return known[position - 1]
        return (known[-1] if known else 0.0) + (position - len(known)) * step
    free = sorted([window.remaining(e, mean) for e in elapsed] + list(held))
    excess = len(free) - slots
    if excess > 0:
        # More jobs run than the limit (it was lowered): the first completions free
        # nothing for the queue.
        free = free[excess:]
    elif excess < 0:
        free = [0.0] * (-excess) + free
    rounds, idx = divmod(position - 1, slots)
    return max(0.0, free[idx]) + rounds * mean
