"""Tests for run_with_progress when the lane fails to cancel its job, for updates made
from inside a deliverer, and for the rounding of ETAs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from executus import LaneUnavailable
from executus.deliver import Recorder
from executus.progress import ProgressReporter, format_eta, run_with_progress
from executus.testing import ManualClock

from .helpers import Gate, UnreachableOnCancel, settle


class _Reentrant:
    """A deliverer that records each message, then calls back into the reporter from
    inside its own ``deliver`` on the message ``trigger``."""

    def __init__(self, trigger: str, call: Callable[[ProgressReporter], Awaitable[None]]) -> None:
        self.rec = Recorder()
        self.reporter: ProgressReporter | None = None
        self._trigger = trigger
        self._call = call

    async def deliver(self, target: str, message: str) -> None:
        await self.rec.deliver(target, message)
        if message == self._trigger:
            assert self.reporter is not None
            await self._call(self.reporter)


# -- a lane that fails to cancel ----------------------------------------------------------


async def test_cancelling_run_with_progress_raises_cancelled_error_when_the_lane_cannot_cancel(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling run_with_progress raises CancelledError even when the lane fails to cancel
    the job: the lane's error is logged, the job runs on to its own end, and nothing
    reports on it after the call has left."""
    gate = Gate()
    rec = Recorder()
    async with UnreachableOnCancel("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("a", rec, interval=0, clock=clock)
        task = asyncio.create_task(run_with_progress(lane, gate, reporter, poll=1.0))
        await settle()
        assert gate.running
        try:
            with caplog.at_level(logging.WARNING, logger="executus.progress"):
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            gate.release("late")  # the lane's exit waits for the job
        await settle()
        stats = await lane.stats()
    logged = [r.exc_info for r in caplog.records if r.name == "executus.progress"]
    assert [type(info[1]) for info in logged if info] == [LaneUnavailable]
    assert (stats.succeeded, stats.cancelled) == (1, 0)
    assert rec.messages() == ["started"]


# -- updates from inside deliver ----------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda r: r.done("chat closed"), ["step 1/2", "done: chat closed"]),
        (lambda r: r.failed("chat gone"), ["step 1/2", "failed: chat gone"]),
        (lambda r: r.flush(), ["step 1/2"]),
        (lambda r: r.aclose(), ["step 1/2"]),
    ],
    ids=["done", "failed", "flush", "aclose"],
)
async def test_an_update_from_inside_deliver_is_queued_not_deadlocked(
    clock: ManualClock,
    call: Callable[[ProgressReporter], Awaitable[None]],
    expected: list[str],
) -> None:
    """A terminal update, flush or aclose made from inside the deliverer's own deliver
    returns at once; a terminal update is delivered right after the delivery in
    progress."""
    out = _Reentrant("step 1/2", call)
    reporter = ProgressReporter("t", out, interval=0, clock=clock, deliver_timeout=None)
    out.reporter = reporter
    async with asyncio.timeout(10):  # a deadlock fails here instead of hanging
        await reporter.step(1, 2)
        await reporter.aclose()
    assert out.rec.messages() == expected
    assert reporter.failures == 0


async def test_a_terminal_update_from_inside_a_delayed_delivery_is_delivered_after_it(
    clock: ManualClock,
) -> None:
    """A terminal update made from inside a throttled (timer) delivery is delivered right
    after it, and aclose() waits for both."""
    out = _Reentrant("step 2/2", lambda r: r.done())
    reporter = ProgressReporter("t", out, interval=2.0, clock=clock, deliver_timeout=None)
    out.reporter = reporter
    async with asyncio.timeout(10):
        await reporter.step(1, 2)
        await reporter.step(2, 2)  # throttled: delivered when the interval is over
        clock.advance(2.0)
        await out.rec.wait_for(3)
        await reporter.aclose()
    assert out.rec.messages() == ["step 1/2", "step 2/2", "done"]
    assert reporter.final is not None
    assert reporter.final.kind == "done"


# -- ETAs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (59.0, "~59s"),
        (59.2, "~1m"),
        (60.0, "~1m"),
        (60.5, "~2m"),
        (3540.0, "~59m"),
        (3540.5, "~1h00m"),
        (3599.9, "~1h00m"),
        (3600.5, "~1h01m"),
    ],
)
def test_format_eta_rounds_up_once_at_every_unit(seconds: float, text: str) -> None:
    """format_eta rounds up and picks the unit after rounding: 59.2 s is "~1m", 3599.9 s
    "~1h00m", never "~60s" or "~60m"."""
    assert format_eta(seconds) == text
