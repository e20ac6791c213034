"""Helpers for testing code that uses executus.

``ManualClock`` replaces the system clocks of a lane (or any executus component that
takes ``clock=``): time stands still until ``advance`` moves it, and timers set through
``call_later`` fire during ``advance``, so behaviour over minutes is tested in
microseconds and without flakiness.

Example::

    clock = ManualClock()
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=30), clock=clock)
    ...
    clock.advance(31)   # the running job is now old enough to be preempted
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

__all__ = ["ManualClock"]


class _Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: the initial monotonic reading.
        wall: the wall time (seconds since the epoch) at ``start``.
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_767_225_600.0) -> None:
        for name, value in (("start", start), ("wall", wall)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        self._now = float(start)
        self._offset = float(wall) - float(start)
        self._timers: list[tuple[float, int, _Timer, Callable[[], object]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """The current monotonic reading."""
        return self._now

    def time(self) -> float:
        """The current wall time, seconds since the epoch."""
        return self._now + self._offset

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        """Run ``callback`` once the clock has advanced by ``delay`` seconds."""
        if math.isnan(delay):
            raise ValueError(f"delay must be a number, got {delay}")
        timer = _Timer()
        heapq.heappush(
            self._timers, (self._now + max(0.0, delay), next(self._order), timer, callback)
        )
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order (each at its own time)."""
        if not (0 <= seconds < math.inf):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer, callback = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                callback()
        # A callback may have advanced the clock itself, past ``target``: never go back.
        self._now = max(self._now, target)

    @property
    def pending_timers(self) -> int:
        """How many timers are set and not yet fired or cancelled."""
        return sum(1 for _, _, t, _ in self._timers if not t.cancelled)
