"""Run progress for people: "queued (#3, ~30s)", "step 2/5: parsing", "done".

A ``ProgressReporter`` is bound to one target (a user, a chat thread) and a
``Deliverer``. Each update (queued, started, step, done, failed, cancelled, preempted)
is turned into text and delivered, **throttled** (at most one delivery per
``interval`` seconds) and **coalesced** (a burst of updates delivers only the newest,
once the interval has passed), so a chat API is not flooded. A terminal update (done,
failed, cancelled, preempted) is delivered at once, replacing anything still waiting,
and ends the report: later updates are ignored. A deliverer that raises never fails
the run: the error is logged (logger ``executus.progress``) and reporting goes on. A
deliverer may call its own reporter from ``deliver``: such a call returns at once, and
a terminal update made so (or what is pending, on ``flush()`` or ``aclose()``) is
delivered right after the delivery under way; another update, once its interval has
passed and that delivery has ended.

A lane job can drive a reporter without its code doing anything::

    reporter = ProgressReporter("user-42", chat, interval=2.0)
    reply = await run_with_progress(lane, lambda: llm.chat(prompt), reporter, key="user-42")

or, for a handle you already hold, ``await reporter.track(handle)``. Time comes from an
injectable clock (``clock=``, e.g. ``executus.testing.ManualClock``), which also drives
the delayed deliveries and the polling of a tracked handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from ._cleanup import end_job, wait_ended
from ._clock import Clock, SystemClock, TimerHandle
from ._job import JobHandle, JobState
from ._tasks import spawn
from .deliver import Deliverer, Discard

__all__ = [
    "ProgressReporter",
    "ProgressUpdate",
    "format_eta",
    "format_update",
    "run_with_progress",
]

T = TypeVar("T")

log = logging.getLogger("executus.progress")

Kind = Literal["queued", "started", "step", "done", "failed", "cancelled", "preempted"]
_TERMINAL_KINDS = frozenset({"done", "failed", "cancelled", "preempted"})
_FLOAT_MAX = sys.float_info.max  # the largest finite float

# The deliveries under way in the current context, one token per delivery: code that a
# deliverer runs from its ``deliver`` (in its task, or in tasks it starts) sees them, so
# a reporter can tell an update made from inside its own delivery (which must not wait
# for that delivery to end) from one made elsewhere.
_IN_DELIVERY: ContextVar[tuple[object, ...]] = ContextVar(
    "executus_progress_in_delivery", default=()
)


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One progress event, before it is turned into text.

    Attributes:
        kind: ``"queued"``, ``"started"``, ``"step"``, ``"done"``, ``"failed"``,
            ``"cancelled"`` or ``"preempted"``.
        position: for ``queued``: the place in the lane's dispatch order (1 = next).
        eta: for ``queued``: the estimated seconds until it starts, or None.
        step: for ``step``: the step number (1-based).
        steps: for ``step``: the number of steps, or None if unknown.
        message: free text (a step's description, a final note), or "".
        error: for ``failed``: the error, or None.
    """

    kind: Kind
    position: int | None = None
    eta: float | None = None
    step: int | None = None
    steps: int | None = None
    message: str = ""
    error: BaseException | str | None = None

    @property
    def terminal(self) -> bool:
        """True for done, failed, cancelled and preempted."""
        return self.kind in _TERMINAL_KINDS


def format_eta(seconds: float) -> str:
    """A short, rounded-up duration for people: ``"~30s"``, ``"~2m"``, ``"~1h05m"``."""
    if not abs(seconds) <= _FLOAT_MAX:  # not finite (an int beyond a float's range too)
        return "~?"
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"~{s}s"
    m = math.ceil(s / 60)
    if m < 60:
        return f"~{m}m"
    h, m = divmod(m, 60)
    return f"~{h}h{m:02d}m"


def format_update(update: ProgressUpdate) -> str:
    """The default text of an update.

    ``queued (#3, ~30s)``, ``started``, ``step 2/5: parsing``, ``done``,
    ``failed: <error>``, ``cancelled``, ``preempted``; a ``message`` is appended after
    a colon.
    """
    kind = update.kind
    if kind == "queued":
        parts = []
        if update.position:
            parts.append(f"#{update.position}")
        if update.eta is not None:
            parts.append(format_eta(update.eta))
        text = f"queued ({', '.join(parts)})" if parts else "queued"
    elif kind == "step":
        of = "" if update.steps is None else f"/{update.steps}"
        text = f"step {update.step}{of}"
    elif kind == "failed":
        err = update.error
        detail = (str(err) or type(err).__name__) if isinstance(err, BaseException) else err
        text = f"failed: {detail}" if detail else "failed"
    else:
        text = kind
    if update.message:
        text = f"{text}: {update.message}"
    return text


class _Formatter(Protocol):
    def __call__(self, update: ProgressUpdate, /) -> str: ...


class ProgressReporter:
    """Sends a run's progress to one target, throttled and coalesced.

    Args:
        target: who the updates are for (passed to ``deliverer.deliver``).
        deliverer: where updates go; None means ``Discard()``.
        interval: the minimum seconds between two deliveries (>= 0). Updates in between
            are coalesced: only the newest is delivered, when the interval has passed.
        clock: the time source and timer (default: the system clock).
        formatter: turns a ``ProgressUpdate`` into text (default ``format_update``).
        prefix: text put before every message (e.g. ``"render: "``).
        deliver_timeout: seconds one delivery may take before it is abandoned (and
            logged); None for no limit.

    Raises:
        TypeError: ``interval`` or ``deliver_timeout`` is not a number, ``deliverer`` has
            no ``deliver`` method, ``formatter`` is not callable, ``prefix`` is not a
            ``str``, or ``clock`` is not a ``Clock``.
        ValueError: ``interval`` is negative or not finite, or ``deliver_timeout`` is
            not > 0 or not finite.

    Example::

        reporter = ProgressReporter("user-42", Stdout(), interval=1.0)
        await reporter.started()
        for i, page in enumerate(pages, 1):
            await reporter.step(i, len(pages), f"page {page}")
            ...
        await reporter.done()
    """

    def __init__(
        self,
        target: str,
        deliverer: Deliverer | None = None,
        *,
        interval: float = 2.0,
        clock: Clock | None = None,
        formatter: _Formatter | None = None,
        prefix: str = "",
        deliver_timeout: float | None = 10.0,
    ) -> None:
        if deliver_timeout is not None and (
            isinstance(deliver_timeout, bool) or not isinstance(deliver_timeout, int | float)
        ):
            raise TypeError(
                f"deliver_timeout must be a number of seconds or None, got {deliver_timeout!r}"
            )
        # Compared, not converted: an int too large for a float is out of range too.
        if deliver_timeout is not None and not 0 < deliver_timeout <= _FLOAT_MAX:
            raise ValueError(
                f"deliver_timeout must be a finite number > 0 or None, got {deliver_timeout!r}"
            )
        self._deliver_timeout = deliver_timeout
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise TypeError(f"interval must be a number of seconds, got {interval!r}")
        if not 0 <= interval <= _FLOAT_MAX:
            raise ValueError(f"interval must be a finite number >= 0, got {interval!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if deliverer is not None and not callable(getattr(deliverer, "deliver", None)):
            raise TypeError(
                f"deliverer must have an async deliver(target, message) method, got {deliverer!r}"
            )
        if formatter is not None and not callable(formatter):
            raise TypeError(f"formatter must be a callable or None, got {formatter!r}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must be a Clock (monotonic, time and call_later), got {clock!r}"
            )
        self.target = target
        self._deliverer: Deliverer = Discard() if deliverer is None else deliverer
        self._interval = float(interval)
        self._clock: Clock = SystemClock() if clock is None else clock
        self._format: _Formatter = format_update if formatter is None else formatter
        self._prefix = prefix
        self._pending: str | None = None  # newest undelivered text
        self._last_text: str | None = None  # last text delivered (or under way)
        self._last_at: float | None = None  # when the last delivery started
        self._timer: TimerHandle | None = None
        self._lock = asyncio.Lock()  # deliveries happen one at a time, in order
        self._delivery: object | None = None  # the token of the delivery under way
        self._flush_asked = False  # flush()/aclose() called from inside that delivery
        self._flushers: set[asyncio.Task[None]] = set()
        # The timer flush that waits for the lock (a delivery is under way): while there
        # is one, timers start no other, as it reads the newest pending text once it
        # holds the lock (one task per update would pile up behind a slow delivery).
        self._timer_flusher: asyncio.Task[None] | None = None
        self._final: ProgressUpdate | None = None
        self.delivered = 0
        self.failures = 0

    # -- state -------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """The minimum seconds between two deliveries."""
        return self._interval

    @property
    def finished(self) -> bool:
        """True once a terminal update (done, failed, cancelled, preempted) was made."""
        return self._final is not None

    @property
    def final(self) -> ProgressUpdate | None:
        """The terminal update, once there is one."""
        return self._final

    def __repr__(self) -> str:
        state = "finished" if self._final is not None else "open"
        return (
            f"<ProgressReporter target={self.target!r} {state} "
            f"delivered={self.delivered} interval={self._interval:g}s>"
        )

    # -- updates -----------------------------------------------------------------------------

    async def update(self, update: ProgressUpdate) -> None:
        """Report ``update`` (throttled and coalesced unless it is terminal).

        Returns once the update is delivered (terminal updates, and those the throttle
        lets through at once) or scheduled. Updates after a terminal one are ignored.

        Made from inside this reporter's own delivery (the deliverer's ``deliver``
        reporting, e.g. ``done()`` when the chat is gone), an update cannot wait for
        that delivery to end: it returns at once, and a terminal update is delivered
        right after the delivery under way; another update, by its timer, once its
        interval has passed and that delivery has ended.
        """
        if self._final is not None:
            return
        text = self._prefix + self._format(update)
        if update.terminal:
            self._final = update
            self._cancel_timer()
            self._pending = text
            await self._flush(force=True)
            return
        if text == self._last_text:
            # The newest state is what the target already has (e.g. a poll that found
            # the same position): drop anything older that still waits.
            self._pending = None
            self._cancel_timer()
            return
        self._pending = text
        now = self._clock.monotonic()
        due = 0.0 if self._last_at is None else self._last_at + self._interval - now
        if due <= 0 and not self._lock.locked():
            self._cancel_timer()
            await self._flush()
        elif self._timer is None:
            self._timer = self._clock.call_later(max(due, 0.0), self._on_timer)

    async def queued(self, position: int | None = None, eta: float | None = None) -> None:
        """Report that the run waits: ``queued (#3, ~30s)``.

        Args:
            position: the place in the dispatch order (1 = next; 0 or None: unknown).
            eta: the estimated seconds until the run starts, or None.

        Raises:
            TypeError: ``position`` is not an int or None, or ``eta`` is not a number or
                None.
            ValueError: ``position`` is negative.
        """
        if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
            raise TypeError(f"position must be an int or None, got {position!r}")
        if position is not None and position < 0:
            raise ValueError(f"position must be >= 0 or None, got {position!r}")
        if eta is not None and (isinstance(eta, bool) or not isinstance(eta, int | float)):
            raise TypeError(f"eta must be a number of seconds or None, got {eta!r}")
        await self.update(ProgressUpdate("queued", position=position, eta=eta))

    async def started(self, message: str = "") -> None:
        """Report that the run started."""
        await self.update(ProgressUpdate("started", message=message))

    async def step(self, i: int, n: int | None = None, message: str = "") -> None:
        """Report step ``i`` of ``n``: ``step 2/5: parsing``."""
        await self.update(ProgressUpdate("step", step=i, steps=n, message=message))

    async def done(self, message: str = "") -> None:
        """Report success (terminal)."""
        await self.update(ProgressUpdate("done", message=message))

    async def failed(self, error: BaseException | str | None = None, message: str = "") -> None:
        """Report failure (terminal): ``failed: <error>``."""
        await self.update(ProgressUpdate("failed", error=error, message=message))

    async def cancelled(self, message: str = "") -> None:
        """Report that the run was cancelled (terminal)."""
        await self.update(ProgressUpdate("cancelled", message=message))

    async def preempted(self, message: str = "") -> None:
        """Report that the run was preempted and will not run again (terminal)."""
        await self.update(ProgressUpdate("preempted", message=message))

    # -- delivery ----------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._timer_flusher is not None:
            return  # the timer flush waiting for the lock delivers the newest text
        # A timer flush is never part of a delivery, though its timer may have been armed
        # inside one (the loop's call_later runs it in that context) or fire there (a
        # test clock advanced by the deliverer): with the delivery's token, the flush
        # would take itself for a call from that delivery and leave the update waiting.
        context = copy_context()
        context.run(_IN_DELIVERY.set, ())
        task = spawn(asyncio.get_running_loop(), self._flush, context=context)
        self._timer_flusher = task
        self._flushers.add(task)
        task.add_done_callback(self._flusher_done)

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        self._flushers.discard(task)
        if self._timer_flusher is task:  # it ended (was cancelled) before it got the lock
            self._timer_flusher = None

    async def _flush(self, *, force: bool = False) -> None:
        """Deliver the newest pending text, if any (one delivery at a time).

        Once a terminal update was made, whatever is pending is that update, and it is
        delivered at once by whichever flush gets the lock first. A throttled flush that
        queued for the lock before the terminal update (a timer that had fired) must not
        arm a new timer then: the terminal update has cancelled the timer for good, and
        nothing may wake the reporter after its final delivery.

        Called from inside a delivery of this reporter (the deliverer calling ``done()``,
        ``flush()`` or ``aclose()`` from its ``deliver``), it returns at once: the lock
        is held by that delivery, which delivers a terminal update made meanwhile, or
        what is pending when a flush was asked for (``flush()`` and ``aclose()`` stop
        the timer), as soon as its own delivery ends; an update made so otherwise waits
        for its timer.
        """
        if self._in_own_delivery():
            if force:
                self._flush_asked = True
            return
        async with self._lock:
            if self._timer_flusher is asyncio.current_task():
                self._timer_flusher = None  # it reads the newest text now: timers may spawn
            self._flush_asked = False  # a request from a delivery that was cancelled
            while True:
                text = self._pending
                if text is None:
                    return
                if not force and self._final is None and self._last_at is not None:
                    due = self._last_at + self._interval - self._clock.monotonic()
                    if due > 0:  # another delivery got in first: wait for the next slot
                        if self._timer is None:
                            self._timer = self._clock.call_later(due, self._on_timer)
                        return
                await self._deliver(text)
                if self._final is None and not self._flush_asked:
                    return
                # Loop: a terminal update, or a flush, was asked for inside that delivery.
                self._flush_asked = False
                force = True

    def _in_own_delivery(self) -> bool:
        """Whether the running code was called from inside a delivery of this reporter."""
        return self._delivery is not None and self._delivery in _IN_DELIVERY.get()

    async def _deliver(self, text: str) -> None:
        """Deliver ``text`` now (the lock is held); count or log the result.

        ``_last_text`` is set before the attempt, so that the same text reported while
        it is under way is dropped, and put back if the attempt fails or is cancelled:
        the target does not have that text, and a later report of it is delivered.
        """
        self._pending = None
        had = self._last_text
        self._last_text = text
        self._last_at = self._clock.monotonic()
        token = self._delivery = object()
        entered = _IN_DELIVERY.set((*_IN_DELIVERY.get(), token))
        delivered = False
        try:
            async with asyncio.timeout(self._deliver_timeout):
                await self._deliverer.deliver(self.target, text)
        except asyncio.CancelledError:
            if _cancelling():
                raise  # the reporting task itself is cancelled
            self._delivery_failed()  # the deliverer raised it by itself
        except Exception:
            self._delivery_failed()
        else:
            delivered = True
            self.delivered += 1
        finally:
            if not delivered:
                self._last_text = had
            _IN_DELIVERY.reset(entered)
            self._delivery = None

    def _delivery_failed(self) -> None:
        self.failures += 1
        log.warning("progress delivery to %r failed (the run goes on)", self.target, exc_info=True)

    async def flush(self) -> None:
        """Deliver a coalesced update that waits for its interval now.

        Called from inside a delivery of this reporter, it returns at once, and the
        update is delivered right after that delivery.
        """
        self._cancel_timer()
        await self._flush(force=True)

    async def aclose(self) -> None:
        """Deliver what is pending and stop the timer; wait for deliveries in flight.

        Called from inside a delivery of this reporter, it returns at once (the delivery
        under way is in flight and cannot be waited for from inside itself); what is
        pending is delivered right after that delivery.
        """
        self._cancel_timer()
        await self._flush(force=True)
        if self._flushers and not self._in_own_delivery():
            await asyncio.gather(*self._flushers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Report the run's end if nothing terminal was reported: done, failed or cancelled."""
        if self._final is None:
            if exc is None:
                await self.done()
            elif isinstance(exc, asyncio.CancelledError):
                await self.cancelled()
            else:
                await self.failed(exc)
        await self.aclose()

    # -- driving from a lane job -------------------------------------------------------------

    async def _sleep(self, delay: float, until: asyncio.Future[Any]) -> None:
        """Wait ``delay`` seconds on the reporter's clock, or until ``until`` is done."""
        loop = asyncio.get_running_loop()
        tick: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not tick.done():
                tick.set_result(None)

        timer = self._clock.call_later(delay, wake)
        try:
            await asyncio.wait({tick, until}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not tick.done():
                tick.cancel()

    def _poll_every(self, poll: float | None) -> float:
        """The seconds between two reads of a queued job's position; checks ``poll``."""
        if poll is not None and (isinstance(poll, bool) or not isinstance(poll, int | float)):
            raise TypeError(f"poll must be a number of seconds, got {poll!r}")
        every = max(self._interval, 0.05) if poll is None else poll
        if not every > 0:  # also refuses NaN
            raise ValueError(f"poll must be > 0, got {poll!r}")
        return every

    async def track(self, handle: JobHandle[Any], *, poll: float | None = None) -> JobState:
        """Report a lane job's life from its handle, until it ends.

        While the job is queued, its position and ETA are read every ``poll`` seconds
        (default: the reporter's interval, at least 0.05 s) and reported; then
        ``started``; then its end: done, failed (with the job's error), cancelled or
        preempted. A job preempted and requeued by its lane is reported queued again.
        The job's code does nothing; cancelling ``track`` leaves the job alone.

        Args:
            handle: the job's handle (from ``lane.submit``).
            poll: seconds between two reads of a queued job's position.

        Returns:
            The job's terminal state.

        Raises:
            TypeError: ``poll`` is not a number.
            ValueError: ``poll`` is not > 0.
        """
        every = self._poll_every(poll)
        ended = asyncio.ensure_future(_wait_handle(handle))
        try:
            reported_run = -1  # the handle's preemption count when "started" was sent
            while not handle.done():
                state = handle.state
                if state is JobState.QUEUED:
                    await self.queued(handle.position, handle.eta)
                    reported_run = -1
                elif state is JobState.RUNNING and reported_run != handle.preemptions:
                    reported_run = handle.preemptions
                    await self.started()
                if handle.done():
                    break
                await self._sleep(every, ended)
        finally:
            if not ended.done():
                ended.cancel()
        return await self._report_end(handle)

    async def _report_end(self, handle: JobHandle[Any]) -> JobState:
        """Report the end of ``handle``'s job (it has ended); return its state."""
        final = handle.state
        if final is JobState.SUCCEEDED:
            await self.done()
        elif final is JobState.FAILED:
            await self.failed(handle.exception())
        elif final is JobState.PREEMPTED:
            await self.preempted()
        else:
            await self.cancelled()
        return final


def _cancelling() -> bool:
    """Whether the running task is being cancelled (not merely handed a
    ``CancelledError`` raised by the code it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _wait_handle(handle: JobHandle[Any]) -> None:
    """Wait for a handle to end, whatever its outcome."""
    with contextlib.suppress(Exception):  # the outcome is read from the handle's state
        await handle


class _Submitter(Protocol):
    """What ``run_with_progress`` needs of a lane (``Lane`` and ``RedisLane``)."""

    async def submit(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        job_id: str | None = ...,
        key: str | None = ...,
        priority: int = ...,
        preemptible: bool = ...,
        max_wait: float | None = ...,
    ) -> JobHandle[T]: ...


async def run_with_progress(
    lane: _Submitter,
    fn: Callable[[], Awaitable[T]],
    reporter: ProgressReporter,
    *,
    poll: float | None = None,
    **submit_options: Any,
) -> T:
    """Run ``fn`` as a job of ``lane`` while ``reporter`` reports its progress.

    Like ``lane.run``: the caller owns the job (cancelling the caller cancels the job,
    which is reported ``cancelled``). The reporter says queued (position and ETA),
    started, then done / failed / cancelled / preempted; the job's code does nothing.

    Args:
        lane: a ``Lane`` or ``RedisLane``.
        fn: the job (a zero-argument callable returning an awaitable).
        reporter: where progress goes.
        poll: seconds between two reads of a queued job's position (see ``track``).
        **submit_options: passed to ``lane.submit`` (``key``, ``priority``, ...).

    Returns:
        The job's value.

    Raises:
        TypeError: ``poll`` is not a number (nothing is submitted).
        ValueError: ``poll`` is not > 0 (nothing is submitted).
        Everything ``lane.submit`` and awaiting the job raise (``LaneBusy``, the job's
        own error, ``JobPreempted``...). A ``LaneBusy`` refusal is reported as failed.
        asyncio.CancelledError: the caller was cancelled; the job was cancelled too. If
            the lane fails to cancel it (``LaneUnavailable``), that is logged, the job
            is left to end by itself and is no longer reported. When the event loop
            ends meanwhile (``asyncio.run`` cancels every task left, the tracking too),
            the job is still reported ``cancelled``.

    Example::

        reporter = ProgressReporter("user-42", chat)
        reply = await run_with_progress(lane, lambda: llm.chat(prompt), reporter, key="user-42")
    """
    every = reporter._poll_every(poll)  # checked before anything is submitted
    try:
        handle = await lane.submit(fn, **submit_options)
    except Exception as exc:
        try:
            await reporter.failed(exc)
        except Exception:
            log.warning(
                "progress reporting of a refused job failed (its error stands)", exc_info=True
            )
        raise
    tracker = spawn(asyncio.get_running_loop(), partial(reporter.track, handle, poll=every))
    try:
        value: T = await handle
    except asyncio.CancelledError:
        ended = await end_job(handle, log, "a cancelled run")
        await _finish_tracker(tracker, reporter, handle, stop=not ended)
        raise
    except BaseException:
        await _finish_tracker(tracker, reporter, handle)
        raise
    await _finish_tracker(tracker, reporter, handle)
    return value


async def _finish_tracker(
    tracker: asyncio.Future[JobState],
    reporter: ProgressReporter,
    handle: JobHandle[Any],
    *,
    stop: bool = False,
) -> None:
    """Let the tracker report the end; if we are cancelled meanwhile, cancel it too.

    Returns (or raises ``CancelledError``, when a cancel arrived) only once the tracker
    has ended. The tracker ends soon after its job: its deliveries are bounded by the
    reporter's ``deliver_timeout``, and a cancel of this task cancels it. Reporting is
    best effort: if the tracker itself fails (a formatter that raises, even
    ``CancelledError``), that is logged and the job's own outcome stands.

    A tracker cancelled from outside while this task is being cancelled too (as
    ``asyncio.run`` cancels every task left when its main coroutine returns) has not
    failed: the job's end, which it could not report, is reported from here, each
    delivery bounded by ``deliver_timeout`` like the tracker's.

    ``stop``: cancel the tracker at once instead (the job could not be cancelled and may
    run on long after its caller has left; nothing reports its end then).
    """
    if stop:
        tracker.cancel()
    if await wait_ended({tracker}):
        raise asyncio.CancelledError
    if stop and tracker.cancelled():
        return
    if tracker.cancelled() and _cancelling():
        if handle.done() and not reporter.finished:
            try:
                await reporter._report_end(handle)
            except Exception:
                log.warning(
                    "progress reporting for job %r failed (its outcome stands)",
                    handle.id,
                    exc_info=True,
                )
        return
    error = asyncio.CancelledError() if tracker.cancelled() else tracker.exception()
    if error is not None:
        log.warning(
            "progress reporting for job %r failed (its outcome stands)",
            handle.id,
            exc_info=error,
        )
