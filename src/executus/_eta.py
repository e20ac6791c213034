"""Wait estimates and the lane's rolling figures.

``RuntimeWindow`` keeps the last N run times; ``ThroughputWindow`` counts the runs that
ended in the last 60 seconds in O(1) memory (one counter per second, in a ring), however
high the job rate. ``estimate_wait`` turns a queue position into seconds.

The estimate (one function for every caller: ``handle.eta``, ``LaneBusy.eta`` and the
``max_wait`` gate) is the *median* time at which the lane will have freed as many slots
as there are jobs ahead, counting slot-free events ``N(t)``:

1. A running job that has run ``e`` seconds ends after a residual time drawn from the
   sampled run times longer than ``e``, minus ``e`` (the empirical residual life; a job
   that outlived them all is given half the mean run time). The sample is the last 256
   run times, each divided by the window's mean when it ended, times the window's
   current mean (see ``RuntimeWindow.shape``): the mean is the last ``eta_window``
   runs', the shape is read from many more runs. A free slot counts as a
   residual of 0; a slot held by a preemption grace, as its known remaining time.
2. After its residual ``r``, a slot goes on freeing up once per run: the expected
   number of further runs ended by ``t`` is the renewal function
   ``M(u) = max(0, u / mu + (cv^2 - 1) / 2)`` at ``u = t - r`` (its asymptote, with
   ``mu`` and ``cv`` the window's mean and coefficient of variation).
3. ``E[N(t)]`` sums, over slots, the chance each residual has passed plus the runs
   after it. A count of independent events has its median within half an event of its
   mean, so the job at position ``p`` starts when ``E[N(t)] = p - 1/2``. ``E[N(t)]`` is
   piecewise linear in ``t``: one sorted sweep over the residual points solves it.

   This beats "sorted expected residuals plus whole rounds of the mean": the first of
   m running jobs to end comes sooner than the smallest of their expected ends (the
   expected minimum is below the minimum of expectations), and later starts are
   spread by the run times' variance, not stacked in rounds.
4. Without any recorded run time: ``p * 60 / throughput_1m``; with no throughput either,
   one second per position.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from itertools import islice, repeat

__all__ = ["RuntimeWindow", "ThroughputWindow", "estimate_wait"]

# The sorted shape history is refreshed once 1/STALE_PART of it is newer than the copy.
STALE_PART = 16
# Batches of fewer runs (or end times) than this are recorded one at a time: the batch
# passes pay a fixed set-up that only a longer batch (a busy lane's) earns back.
_SHORT = 64


class RuntimeWindow:
    """The last ``size`` run times, with their mean and mean residual life.

    The mean is always the window's. The *shape* of the run-time distribution (how
    spread out runs are, which sets the residual life of a running job) comes from a
    longer history: the last ``history`` run times, each divided by the window's mean
    when it was recorded. Scaled by the current mean, those ratios give as many samples
    of the distribution as ``history`` (256 by default, a fixed amount of memory)
    rather than ``size``, yet still follow a change of level as soon as the window does.
    Until the history holds more ratios than the window holds runs (at start, or with a
    window longer than the history), the window's own runs serve as the sample.

    Recording a run is O(1). The estimates read sorted copies, rebuilt only when an
    estimate asks for them: the window's after any change, the history's once at least
    1/16 of it (16 of 256 ratios) is newer than its sorted copy, so a busy lane with
    many waiters sorts the history once per 16 runs, not once per run. ``RedisLane``
    applies the same rule, so both backends give the same figures.

    Args:
        size: how many recent run times the mean averages (``eta_window``).
        history: how many normalised run times describe the shape (0: the window's
            runs only).

    Example::

        window = RuntimeWindow(16)
        window.add(0.020)
        window.mean()  # 0.02
    """

    __slots__ = (
        "_history",
        "_next",
        "_ratio_sorted",
        "_ratio_stale",
        "_ratio_stats",
        "_ratios",
        "_recent",
        "_shape",
        "_sorted",
        "_suffix",
        "_total",
    )

    def __init__(self, size: int, *, history: int = 256) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] | None = []
        self._suffix: list[float] | None = None
        self._total = 0.0
        # The shape history: a ring of ratios (run time / window mean before it) in
        # arrival order; a sorted copy with its mean and squared cv, and how many ratios
        # arrived since the copy was made.
        self._ratios: list[float] = []
        self._ratio_sorted: list[float] = []
        self._ratio_stats = (0.0, 0.0)
        self._ratio_stale = 0
        self._next = 0 if history > 0 else -1  # ring slot to overwrite; -1: no history
        self._shape: tuple[list[float], float, float] | None = None
        self._history = history

    @property
    def size(self) -> int:
        """The window's capacity."""
        maxlen = self._recent.maxlen
        assert maxlen is not None
        return maxlen

    def resize(self, size: int) -> None:
        """Keep the most recent ``size`` run times from now on (the history stays)."""
        self._recent = deque(list(self._recent)[-size:], maxlen=size)
        self._total = math.fsum(self._recent)
        self._sorted = None
        self._suffix = None
        self._shape = None

    def add(self, seconds: float) -> None:
        """Record one run time."""
        self._add_each((seconds,))

    def add_many(self, runs: Iterable[float]) -> None:
        """Record run times in order, as many ``add`` calls would (a busy lane records
        its runs in batches).

        Each run's ratio is taken over the window's total just before it, and the total
        moves as one ``add`` moves it (``total - leaving + run``), so a batch gives the
        very floats a run-by-run record gives. The totals are one pass of a
        comprehension; the ratios and the ring are written with C-level ``map`` and
        slices, since a busy lane records every run it ends.
        """
        runs = runs if type(runs) is list else list(runs)
        if len(runs) < _SHORT:
            self._add_each(runs)
            return
        recent = self._recent
        size = recent.maxlen
        assert size is not None
        n0 = len(recent)
        total = self._total
        # The run leaving the window as each run enters: none (0.0, and ``total - 0.0``
        # is ``total``) while the window fills, then its oldest runs, then this batch's.
        filling = min(size - n0, len(runs))
        leaving = [0.0] * filling
        leaving += islice(recent, len(runs) - filling)
        leaving += runs
        # befores[k]: the window's total just before run k; befores[-1], after them all.
        befores = [total]
        befores += [total := total - old + run for run, old in zip(runs, leaving, strict=False)]
        recent.extend(runs)
        self._total = total
        self._sorted = None
        self._shape = None
        if self._next < 0 or not runs:  # no history kept
            return
        if n0 == size and min(befores) > 0.0:  # a full window of runs that took time
            ratios = list(map(operator.truediv, map(operator.mul, runs, repeat(size)), befores))
        else:  # filling up, or runs that took no measurable time: no ratio over 0
            ratios = []
            for k, run in enumerate(runs):
                n = min(n0 + k, size)
                if n and befores[k] > 0.0:
                    ratios.append(run * n / befores[k])
        self._ring_extend(ratios)

    def _add_each(self, runs: Iterable[float]) -> None:
        """``add_many`` for a few runs (the lane folds its ended runs in before an
        estimate or a stats read, often one or two): the same rule, one run at a time,
        without the set-up of the batch passes."""
        recent = self._recent
        size = recent.maxlen
        total = self._total
        ring = self._ratios
        history = self._history
        at = self._next
        stale = self._ratio_stale
        for seconds in runs:
            n = len(recent)
            if at >= 0 and n and total > 0.0:  # the run over the mean before it
                stale += 1
                if len(ring) < history:
                    ring.append(seconds * n / total)
                else:
                    ring[at] = seconds * n / total
                    at = (at + 1) % len(ring)
            if n == size:
                total -= recent[0]
            recent.append(seconds)
            total += seconds
        self._total = total
        self._next = at
        self._ratio_stale = stale
        self._sorted = None
        self._shape = None

    def _ring_extend(self, ratios: list[float]) -> None:
        """Write ``ratios`` into the history ring in order, as one by one: appended
        until the ring holds ``history``, then over the oldest, from ``_next`` on."""
        if not ratios:
            return
        self._ratio_stale += len(ratios)
        ring = self._ratios
        history = self._history
        room = history - len(ring)
        if room > 0:
            ring += ratios[:room]
            ratios = ratios[room:]
            if not ratios:
                return
        at = self._next
        if len(ratios) > history:  # all but the last ``history`` are overwritten anyway
            at = (at + len(ratios) - history) % history
            ratios = ratios[-history:]
        first = min(history - at, len(ratios))
        ring[at : at + first] = ratios[:first]
        ring[: len(ratios) - first] = ratios[first:]
        self._next = (at + len(ratios)) % history

    def _sorted_ratios(self) -> list[float] | None:
        """The sorted history, or None when it does not hold more ratios than the
        window holds runs (then the window's runs are the sample). The sorted copy is
        made again once 1/16 of the history is newer than it."""
        srt = self._ratio_sorted
        if self._ratio_stale >= max(1, len(srt) // STALE_PART):
            if len(self._ratios) <= len(self._recent):
                return None
            srt = self._ratio_sorted = sorted(self._ratios)
            k = len(srt)
            avg = math.fsum(srt) / k if k else 0.0
            cv2 = 0.0
            if k > 1 and avg * avg > 0.0:  # the square: a subnormal mean squares to 0
                cv2 = math.fsum((v - avg) * (v - avg) for v in srt) / (k - 1) / (avg * avg)
            self._ratio_stats = (avg, cv2)
            self._ratio_stale = 0
        return srt if len(srt) > len(self._recent) else None

    def __len__(self) -> int:
        return len(self._recent)

    def mean(self) -> float | None:
        """The mean run time, or None without data."""
        n = len(self._recent)
        return self._total / n if n else None

    def sorted_runs(self) -> list[float]:
        """The window's run times in ascending order (do not modify the list)."""
        srt = self._sorted
        if srt is None:
            srt = self._sorted = sorted(self._recent)
            self._suffix = None
        return srt

    def shape(self) -> tuple[list[float], float, float]:
        """The run-time sample the estimates use, as ``(values, scale, cv2)``.

        ``values[k] * scale`` are run times in seconds, ascending, with the window's
        mean as their mean; ``cv2`` is their squared coefficient of variation (the
        unbiased sample variance over the squared mean). Without data: ``([], 0.0,
        0.0)``. Do not modify the list.
        """
        shape = self._shape
        if shape is not None:
            return shape
        mean = self.mean()
        if mean is None:
            shape = ([], 0.0, 0.0)
        elif (ratios := self._sorted_ratios()) is not None and self._ratio_stats[0] > 0.0:
            avg, cv2 = self._ratio_stats
            shape = (ratios, mean / avg, cv2)
        else:
            runs = self.sorted_runs()
            n = len(runs)
            var = sum((s - mean) ** 2 for s in runs) / (n - 1) if n > 1 else 0.0
            shape = (runs, 1.0, var / (mean * mean) if mean * mean > 0.0 else 0.0)
        self._shape = shape
        return shape

    def remaining(self, elapsed: float, mean: float) -> float:
        """Expected seconds left for a job that has run ``elapsed`` seconds.

        The mean residual life over the sample of :meth:`shape`; a job that outlived
        every sampled run is given ``mean / 2``.
        """
        values, scale, _ = self.shape()
        if not values or scale <= 0.0:
            return 0.5 * mean
        i = bisect_right(values, elapsed / scale)
        n = len(values) - i
        if n <= 0:
            return 0.5 * mean
        if values is self._sorted:
            suffix = self._suffix
            if suffix is None:
                suffix = self._suffix = _suffix_sums(values)
            return suffix[i] / n - elapsed
        return math.fsum(values[i:]) * scale / n - elapsed


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
        self.record_many((now,))

    def record_many(self, ends: Iterable[float]) -> None:
        """Count runs ending at each of ``ends`` (monotonic times, in order).

        A busy lane's batch spans a second or two: each second's runs are counted at
        once, found by bisection (the times are in order), not one by one.
        """
        ends = ends if type(ends) is list else list(ends)
        counts = self._counts
        stamps = self._stamps
        span = self.SPAN
        if len(ends) < _SHORT:  # a few: one by one, without the bisections
            for now in ends:
                second = int(now) if now >= 0.0 else math.floor(now)
                i = second % span
                if stamps[i] != second:
                    stamps[i] = second
                    counts[i] = 0
                counts[i] += 1
            return
        i, n = 0, len(ends)
        while i < n:
            now = ends[i]
            second = int(now) if now >= 0.0 else math.floor(now)  # int() is the cheap floor
            j = bisect_left(ends, second + 1, i) if ends[-1] >= second + 1 else n
            k = second % span
            if stamps[k] != second:
                stamps[k] = second
                counts[k] = 0
            counts[k] += j - i
            i = j

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

    Returns:
        The median estimate of the wait, in seconds (0.0 for ``position <= 0``).
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
    elapsed = list(elapsed)
    held = list(held)
    busy = len(elapsed) + len(held)
    # The first ``excess`` slot events free nothing for the queue when more jobs run
    # than the limit (it was lowered); free slots are events at time 0.
    excess = busy - slots
    target = position - 0.5 + max(0, excess)
    if mean <= 0.0:
        # Every run took no measurable time: the first slot that frees for the queue runs
        # every queued job at once. Free slots and running jobs free at once; the first
        # ``excess`` of those events and then of the promised slots (in time order) free
        # nothing for the queue.
        k = max(0, excess) - len(elapsed) - max(0, -excess)
        return 0.0 if k < 0 else sorted(held)[k]  # k < len(held) since slots >= 1
    return _solve(target, mean, window, elapsed, held, max(0, -excess))


_MAX_POINTS = 128  # residual points per estimate; more slots share them (quantiles)


def _solve(
    target: float,
    mean: float,
    window: RuntimeWindow,
    elapsed: list[float],
    held: list[float],
    free: int,
) -> float:
    """The time ``t`` at which ``E[N(t)]`` reaches ``target`` (see the module notes)."""
    values, scale, cv2 = window.shape()
    n_all = len(values)
    c = 0.5 * (cv2 - 1.0)  # M(u) = max(0, u / mean + c)
    delay = max(0.0, -c * mean)  # M starts to grow this long after a slot frees
    jump = 1.0 + max(0.0, c)  # the count added when a residual passes
    rate = 1.0 / mean

    # Residual points (time, weight); each busy or free slot's weights sum to 1. With
    # many slots, each running job keeps only evenly spaced quantiles of its residuals
    # (the sum over many slots needs less detail per slot), bounding the work.
    points: list[tuple[float, float]] = [(0.0, 1.0)] * free
    points.extend((h, 1.0) for h in held)
    per_job = max(2, _MAX_POINTS // max(1, len(elapsed)))
    for e in elapsed:
        i = bisect_right(values, e / scale)
        n = n_all - i
        if n <= 0:
            points.append((0.5 * mean, 1.0))
        elif n <= per_job:
            w = 1.0 / n
            points.extend((values[k] * scale - e, w) for k in range(i, n_all))
        else:
            w = 1.0 / per_job
            points.extend(
                (values[i + (2 * q + 1) * n // (2 * per_job)] * scale - e, w)
                for q in range(per_job)
            )

    # Once every point and its delayed slope have passed, E[N] is one straight line:
    # total * jump + (total * t - sum(w * r) - total * delay) / mean. Far positions
    # land there, with no sort.
    total = float(free + len(held) + len(elapsed))
    sum_wr = 0.0
    last = 0.0
    for r, w in points:
        sum_wr += w * r
        if r > last:
            last = r
    line_at = total * jump + (total * (last + delay) - sum_wr - total * delay) * rate
    if target >= line_at:
        return (target - total * jump) * mean / total + (sum_wr + total * delay) / total

    # Otherwise sweep the points in time order: E[N] jumps by ``w * jump`` at each point
    # ``r`` and its slope grows by ``w / mean`` at ``r + delay`` (the same order shifted
    # by a constant, so one sorted list serves both).
    points.sort()
    n_pts = len(points)
    level = 0.0
    slope = 0.0
    t = 0.0
    i = k = 0
    while i < n_pts or k < n_pts:
        if i < n_pts and points[i][0] <= points[k][0] + delay:
            when, w = points[i]
            is_jump = True
        else:
            when, w = points[k][0] + delay, points[k][1]
            is_jump = False
        if slope > 0.0 and level + slope * (when - t) >= target:
            return t + (target - level) / slope
        level += slope * (when - t)
        t = when
        if is_jump:
            i += 1
            level += w * jump
            if level >= target:
                return max(0.0, t)
        else:
            k += 1
            slope += w * rate
    return t + (target - level) / slope if slope > 0.0 else t
