"""Time sources: the system clock, and the seam that lets tests replace it.

A lane reads two clocks: a monotonic one for every duration (runtimes, waits, aging,
the throughput window) and a wall clock only to stamp ``datetime`` fields. Timers the
lane sets (the preemption grace period) go through the clock too, so a test clock
(``executus.testing.ManualClock``) controls them without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """What ``Clock.call_later`` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """The time source of a lane.

    ``monotonic()`` measures durations (seconds, arbitrary origin); ``time()`` is wall
    time in seconds since the epoch; ``call_later`` runs a callback after a delay
    measured on ``monotonic()``.
    """

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...


class SystemClock:
    """The real clocks: ``time.monotonic``, ``time.time`` and the running loop's timers."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    def __repr__(self) -> str:
        return "SystemClock()"
