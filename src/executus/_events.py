"""Lane events and observers: what operators see of a lane, without slowing it.

A lane with no observer pays one attribute test per event point. With observers, each
event is a frozen ``LaneEvent`` appended to a bounded buffer per observer and delivered
on the next loop step (``call_soon``), never inside the lane's decision step: an
observer can neither re-enter the lane half-way through a decision nor delay a start.

Observers are callables taking one ``LaneEvent``. A plain function is called on the
loop; an ``async def`` function (or a plain one found to return an awaitable) gets its
own task that awaits each call in order, so a slow one never stalls the lane (past
``buffer`` undelivered events it loses the oldest and counts them in ``dropped``).
Observers run in an empty context, outside any job. Whatever an observer raises is
logged to the ``executus.events`` logger and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from ._job import JobHandle, JobState
from ._tasks import spawn

__all__ = ["EventKind", "LaneEvent", "LaneObserver", "LoggingObserver"]

logger = logging.getLogger("executus.events")


class LaneObserver(Protocol):
    """An observer: called with each ``LaneEvent``; a plain or an ``async`` function.

    Example::

        def count_refusals(event: LaneEvent) -> None:
            if event.kind is EventKind.REJECTED:
                refusals[event.lane] += 1

        lane.add_observer(count_refusals)
    """

    def __call__(self, event: LaneEvent, /) -> Awaitable[None] | None: ...


class EventKind(enum.Enum):
    """What happened. Every job ends with exactly one of FINISHED, CANCELLED and
    PREEMPTED (the last with ``state`` PREEMPTED; a requeue is PREEMPTED with state
    QUEUED and is followed by another STARTED)."""

    SUBMITTED = "submitted"
    STARTED = "started"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    REJECTED = "rejected"
    RESIZED = "resized"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LaneEvent:
    """One thing that happened in a lane.

    Attributes:
        kind: what happened.
        lane: the lane's name.
        time: wall time of the event, seconds since the epoch.
        job_id, key, priority: the job's, for job events (None otherwise).
        state: the job's state after the event (FINISHED: SUCCEEDED or FAILED).
        wait: seconds the job waited in the queue before its (last) start.
        run: seconds the job ran (FINISHED, CANCELLED and PREEMPTED of a running job).
        position, eta: the job's place and estimated wait (SUBMITTED when queued;
            REJECTED: what it would have had).
        max_concurrent: the new limit (RESIZED).
        error: the job's exception (FAILED), or None.
    """

    kind: EventKind
    lane: str
    time: float
    job_id: str | None = None
    key: str | None = None
    priority: int | None = None
    state: JobState | None = None
    wait: float | None = None
    run: float | None = None
    position: int | None = None
    eta: float | None = None
    max_concurrent: int | None = None
    error: BaseException | None = None


class _Subscriber:
    __slots__ = ("buffer", "callback", "dropped", "is_async", "removed", "task", "wakeup")

    def __init__(self, callback: LaneObserver) -> None:
        self.callback = callback
        self.is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - an async __call__ counts
        )
        self.buffer: deque[LaneEvent] = deque()
        self.dropped = 0
        self.removed = False
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Event | None = None


class Emitter:
    """The observer list of one lane (shared by ``Lane`` and ``RedisLane``)."""

    __slots__ = ("_flush_scheduled", "_size", "_subs", "active")

    def __init__(self, buffer: int = 10_000) -> None:
        self._subs: list[_Subscriber] = []
        self._size = buffer
        self._flush_scheduled = False
        self.active = False  # any observer at all: the lane's one test per event point

    def add(self, observer: LaneObserver) -> None:
        if not callable(observer):
            raise TypeError(f"observer must be callable with one LaneEvent, got {observer!r}")
        if any(s.callback is observer for s in self._subs):
            return
        self._subs.append(_Subscriber(observer))
        self.active = True

    def remove(self, observer: LaneObserver) -> None:
        for sub in list(self._subs):
            if sub.callback is observer:
                self._subs.remove(sub)
                sub.removed = True
                sub.buffer.clear()  # what it has not been given yet, it never gets
                if sub.task is not None:
                    sub.task.cancel()
        self.active = bool(self._subs)

    def dropped(self, observer: LaneObserver) -> int:
        """Events an async observer lost because it fell ``buffer`` events behind."""
        return sum(s.dropped for s in self._subs if s.callback is observer)

    def emit_job(
        self, kind: EventKind, lane: str, wall: float, job: JobHandle[Any], **fields: Any
    ) -> None:
        """Emit an event about ``job``."""
        self.emit(LaneEvent(kind, lane, wall, job.id, job.key, job.priority, **fields))

    def emit(self, event: LaneEvent) -> None:
        for sub in self._subs:
            if len(sub.buffer) >= self._size:
                sub.buffer.popleft()
                sub.dropped += 1
            sub.buffer.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # In an empty context, not in that of the task that caused the event (often
            # a job's own): observers run outside any job, and so do their tasks.
            asyncio.get_running_loop().call_soon(self._flush, context=contextvars.Context())

    def _flush(self) -> None:
        self._flush_scheduled = False
        # A snapshot: an observer may add or remove observers (itself included) while
        # it is called, and the others still get their events in this step.
        for sub in tuple(self._subs):
            if sub.removed:
                continue
            if sub.is_async:
                if sub.task is None or sub.task.done():
                    sub.wakeup = asyncio.Event()
                    sub.task = spawn(
                        asyncio.get_running_loop(),
                        self._drain,
                        sub,
                        context=contextvars.Context(),
                    )
                elif sub.wakeup is not None:
                    sub.wakeup.set()
                continue
            while sub.buffer:
                event = sub.buffer.popleft()
                try:
                    result = sub.callback(event)
                except Exception:
                    logger.exception("lane observer %r failed on %s", sub.callback, event.kind)
                    continue
                if result is not None and inspect.isawaitable(result):
                    # A plain callable that returns an awaitable (``lambda e: q.put(e)``)
                    # is an async observer: its task awaits this call, then the rest.
                    sub.is_async = True
                    sub.wakeup = asyncio.Event()
                    sub.task = spawn(
                        asyncio.get_running_loop(),
                        self._drain,
                        sub,
                        result,
                        event,
                        context=contextvars.Context(),
                    )
                    break

    async def _drain(
        self,
        sub: _Subscriber,
        first: Awaitable[object] | None = None,
        first_event: LaneEvent | None = None,
    ) -> None:
        if first is not None:
            assert first_event is not None
            try:
                await first
            except Exception:
                logger.exception("lane observer %r failed on %s", sub.callback, first_event.kind)
        while True:
            while sub.buffer:
                event = sub.buffer.popleft()
                try:
                    result = sub.callback(event)
                    if result is not None:
                        await result
                except Exception:
                    logger.exception("lane observer %r failed on %s", sub.callback, event.kind)
            wakeup = sub.wakeup
            if wakeup is None:
                return
            wakeup.clear()
            if not sub.buffer:
                await wakeup.wait()

    async def aclose(self, *, bound: float = 1.0) -> None:
        """Deliver what is buffered, then stop the async observers' tasks.

        Each async observer's task finishes the events it holds, the one it is still
        handling included, and ends; one still busy ``bound`` seconds after the call
        (hung, or far behind) is cancelled then.
        """
        # A bound in seconds of loop time, not in loop steps: an observer doing real
        # I/O per event (a network write, a short sleep) spends steps waiting, and would
        # use up any step count long before it is done, while what the bound protects
        # is how long a closing lane (or a loop shutting down) can be held up.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        self._flush()
        while True:
            busy: list[asyncio.Task[None]] = []
            for sub in self._subs:
                task = sub.task
                if task is None or task.done():
                    continue
                # Without a wakeup the task returns once its buffer is empty (``_drain``),
                # not between taking an event and finishing its call.
                wakeup, sub.wakeup = sub.wakeup, None
                if wakeup is not None:
                    wakeup.set()
                busy.append(task)
            if not busy:
                break
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait(busy, timeout=left)
            if loop.time() >= deadline:
                for task in busy:
                    task.cancel()
                await asyncio.gather(*busy, return_exceptions=True)
        for sub in self._subs:
            sub.task = None


class LoggingObserver:
    """An observer that logs every event to a standard-library logger.

    Records carry the fields as ``extra`` (``lane``, ``job_id``, ``key``, ``event``,
    ``state``, ``wait``, ``run``), so structured handlers can index them. Job events are
    logged at DEBUG, refusals and preemptions at INFO, failures at WARNING.

    Example::

        lane.add_observer(LoggingObserver())
    """

    def __init__(self, logger_name: str = "executus.lane") -> None:
        self.logger = logging.getLogger(logger_name)

    def __call__(self, event: LaneEvent) -> None:
        level = logging.DEBUG
        if event.kind in (EventKind.REJECTED, EventKind.PREEMPTED, EventKind.RESIZED):
            level = logging.INFO
        elif event.state is JobState.FAILED:
            level = logging.WARNING
        if not self.logger.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "lane": event.lane,
            "job_id": event.job_id,
            "key": event.key,
            "event": event.kind.value,
            "state": None if event.state is None else event.state.value,
            "wait": event.wait,
            "run": event.run,
        }
        parts = [f"lane {event.lane!r}: {event.kind.value}"]
        if event.job_id is not None:
            parts.append(f"job {event.job_id!r}")
        if event.key is not None:
            parts.append(f"key {event.key!r}")
        if event.state is not None:
            parts.append(event.state.value)
        if event.wait is not None:
            parts.append(f"waited {event.wait:.3f}s")
        if event.run is not None:
            parts.append(f"ran {event.run:.3f}s")
        if event.position is not None:
            parts.append(f"position {event.position}")
        if event.eta is not None:
            parts.append(f"eta {event.eta:.1f}s")
        if event.max_concurrent is not None:
            parts.append(f"max_concurrent {event.max_concurrent}")
        self.logger.log(level, " ".join(parts), extra=extra)
