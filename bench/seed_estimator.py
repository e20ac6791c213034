"""A faithful Python port of the seed lane pool's wait estimators (``pool.go``).

The seed answers "how long until this job starts" two ways:

- ``estimateETALocked(pos)`` (what ``Submit`` reports): ``pos * 60 s / completions in
  the last minute``; with no completion, one second per position.
- ``estimateWaitLocked(pos)`` (what ``SubmitWithMaxWait`` gates on): the integer mean
  of the last ``etaWindowSize`` (16) run times times ``ceil(pos / maxConcurrent)``;
  without run times it falls back to ``estimateETALocked``.

In both, ``pos`` is the queue length (the seed reports the queue length as the
position under every policy). Durations are integer nanoseconds as in Go
(``time.Duration``), so integer division truncates as it does there. The completion
list is pruned only when a job completes (and in ``Stats``), as in the seed: ``Submit``
reads it unpruned.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SeedEstimator"]

_NS = 1_000_000_000
_MINUTE_NS = 60 * _NS


class SeedEstimator:
    """The seed's estimator state for one lane: run times and completion stamps.

    Args:
        max_concurrent: the lane's slot limit.
        window: ``etaWindowSize`` (the seed's default is 16).
    """

    def __init__(self, max_concurrent: int, window: int = 16) -> None:
        self.max_concurrent = max_concurrent
        self.window = window
        self._runtimes: list[int] = []
        self._completions: deque[int] = deque()

    def complete(self, started: float, finished: float) -> None:
        """``complete()``: record a completion at ``finished`` (seconds) and its run time."""
        fin = round(finished * _NS)
        self._completions.append(fin)
        self._prune(fin)
        d = fin - round(started * _NS)
        if d > 0:  # recordRuntimeLocked ignores non-positive durations
            cap = self.window if self.window > 0 else 16
            self._runtimes.append(d)
            if len(self._runtimes) > cap:
                self._runtimes = self._runtimes[len(self._runtimes) - cap :]

    def _prune(self, now_ns: int) -> None:
        cutoff = now_ns - _MINUTE_NS
        completions = self._completions
        while completions and completions[0] < cutoff:  # Before(cutoff)
            completions.popleft()

    def eta(self, pos: int) -> float:
        """``estimateETALocked(pos)`` in seconds (the ``Submit`` figure)."""
        if pos <= 0:
            return 0.0
        thr = len(self._completions)
        if thr == 0:
            return float(pos)
        per_job = 60.0 / thr
        # time.Duration(perJob * pos * 1e9): a float64 truncated to integer nanoseconds.
        return int(per_job * pos * _NS) / _NS

    def wait(self, pos: int) -> float:
        """``estimateWaitLocked(pos)`` in seconds (the ``SubmitWithMaxWait`` figure)."""
        if pos <= 0:
            return 0.0
        if not self._runtimes:
            return self.eta(pos)
        avg = sum(self._runtimes) // len(self._runtimes)
        if avg <= 0:
            return self.eta(pos)
        concurrency = self.max_concurrent if self.max_concurrent > 0 else 1
        rounds = (pos + concurrency - 1) // concurrency
        return avg * rounds / _NS
