"""Progress reporting under bad input, failing callbacks and repeated cancels."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executus import Lane, LaneBusy
from executus.deliver import Recorder
from executus.progress import ProgressReporter, ProgressUpdate, run_with_progress
from executus.testing import ManualClock

from .helpers import Gate, settle


async def _reply() -> str:
    return "reply"


class _CancellingDeliverer:
    """A deliverer whose sends end in a CancelledError of its own (its client was shut)."""

    def __init__(self) -> None:
        self.calls = 0

    async def deliver(self, target: str, message: str) -> None:
        self.calls += 1
        raise asyncio.CancelledError("the chat client was shut down")


@pytest.mark.parametrize("poll", [0, -1.0, "fast"])
async def test_run_with_progress_refuses_a_bad_poll_before_submitting(
    clock: ManualClock, poll: Any
) -> None:
    """A bad poll is an error of run_with_progress itself, and no job is submitted."""
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    async with Lane("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("a", Recorder(), interval=0, clock=clock)
        error = TypeError if isinstance(poll, str) else ValueError
        with pytest.raises(error, match=r"^poll must be"):
            await run_with_progress(lane, job, reporter, poll=poll)
        await settle()
        assert (await lane.stats()).submitted == 0
    assert ran == []


async def test_a_refused_submit_raises_lane_busy_even_if_reporting_fails(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """When the lane refuses the job, LaneBusy reaches the caller even if the formatter
    of its "failed" report raises (that is logged)."""

    def broken(update: ProgressUpdate) -> str:
        raise RuntimeError("formatter broke")

    gate = Gate()
    async with Lane("gpu", 1, clock=clock) as lane:
        busy = await lane.submit(gate)
        await settle()
        reporter = ProgressReporter("a", Recorder(), interval=0, clock=clock, formatter=broken)
        try:
            with pytest.raises(LaneBusy):
                await run_with_progress(lane, _reply, reporter, max_wait=0)
        finally:
            gate.release()
        await busy
    assert "formatter broke" in caplog.text


async def test_a_deliverer_raising_cancelled_error_does_not_fail_the_run(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A CancelledError the deliverer raises by itself is a failed delivery: it is
    counted and logged, and the run (and run_with_progress) goes on."""
    out = _CancellingDeliverer()
    reporter = ProgressReporter("a", out, interval=0, clock=clock)
    await reporter.started()
    await reporter.step(1, 2)
    assert (out.calls, reporter.failures, reporter.delivered) == (2, 2, 0)

    async with Lane("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("b", _CancellingDeliverer(), interval=0, clock=clock)
        assert await run_with_progress(lane, _reply, reporter) == "reply"
        assert reporter.final == ProgressUpdate("done")
    assert "progress delivery to 'a' failed" in caplog.text


async def test_a_formatter_raising_cancelled_error_leaves_the_job_outcome_alone(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracker that ends with a CancelledError of its own (a formatter raising it) is a
    reporting failure: run_with_progress still returns the job's value."""

    def cancelling(update: ProgressUpdate) -> str:
        raise asyncio.CancelledError("formatter gave up")

    async with Lane("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("a", Recorder(), interval=0, clock=clock, formatter=cancelling)
        assert await run_with_progress(lane, _reply, reporter) == "reply"
    assert "progress reporting for job" in caplog.text


async def test_cancelling_run_with_progress_twice_leaves_no_tracker_running(
    clock: ManualClock,
) -> None:
    """A second cancel while run_with_progress ends its job is passed on: when the
    CancelledError arrives, the job has ended and no reporting task is left."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # the job takes a while to unwind

    rec = Recorder()
    async with Lane("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("a", rec, interval=0, clock=clock)
        before = asyncio.all_tasks()
        task = asyncio.create_task(run_with_progress(lane, job, reporter, poll=1.0))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        await settle()
        task.cancel()  # cancelled again while the job unwinds
        await settle()
        try:
            assert not task.done()
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        left = asyncio.all_tasks() - before
        assert left == set(), left
        assert (await lane.stats()).cancelled == 1
    assert rec.messages() == ["started", "cancelled"]


def test_a_deliverer_without_deliver_is_refused() -> None:
    """A deliverer that has no deliver method is refused when the reporter is built."""
    with pytest.raises(
        TypeError,
        match=r"^deliverer must have an async deliver\(target, message\) method, got <built-in",
    ):
        ProgressReporter("a", print)  # type: ignore[arg-type]


def test_a_formatter_that_is_not_callable_is_refused() -> None:
    """A formatter that cannot be called is refused when the reporter is built."""
    with pytest.raises(TypeError, match=r"^formatter must be a callable or None, got 'text'$"):
        ProgressReporter("a", Recorder(), formatter="text")  # type: ignore[arg-type]
