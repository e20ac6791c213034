"""Tests for executus.progress: formatting, throttling, coalescing, lane tracking."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from executus import JobPreempted, JobState, Lane, LaneBusy, Preemption, Priority
from executus.deliver import CallbackDeliverer, Recorder
from executus.progress import (
    ProgressReporter,
    ProgressUpdate,
    format_eta,
    format_update,
    run_with_progress,
)
from executus.testing import ManualClock

from .helpers import Gate, settle


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "~0s"), (0.2, "~1s"), (29.5, "~30s"), (60, "~1m"), (61, "~2m"), (3700, "~1h02m")],
)
def test_format_eta(seconds: float, text: str) -> None:
    """ETAs are rounded up and short."""
    assert format_eta(seconds) == text
    assert format_eta(math.inf) == "~?"


@pytest.mark.parametrize(
    ("update", "text"),
    [
        (ProgressUpdate("queued", position=3, eta=30), "queued (#3, ~30s)"),
        (ProgressUpdate("queued", position=2), "queued (#2)"),
        (ProgressUpdate("queued"), "queued"),
        (ProgressUpdate("started"), "started"),
        (ProgressUpdate("step", step=2, steps=5, message="parsing"), "step 2/5: parsing"),
        (ProgressUpdate("step", step=4), "step 4"),
        (ProgressUpdate("done"), "done"),
        (ProgressUpdate("done", message="3 files"), "done: 3 files"),
        (ProgressUpdate("failed", error=ValueError("bad input")), "failed: bad input"),
        (ProgressUpdate("failed", error=TimeoutError()), "failed: TimeoutError"),
        (ProgressUpdate("failed"), "failed"),
        (ProgressUpdate("cancelled"), "cancelled"),
        (ProgressUpdate("preempted"), "preempted"),
    ],
)
def test_format_update(update: ProgressUpdate, text: str) -> None:
    """The default texts are short and stable."""
    assert format_update(update) == text
    assert update.terminal is (update.kind in {"done", "failed", "cancelled", "preempted"})


def test_invalid_settings_are_refused() -> None:
    """A negative interval or deliver_timeout is refused with the rule and the value."""
    with pytest.raises(ValueError, match=r"^interval must be a finite number >= 0, got -1$"):
        ProgressReporter("t", interval=-1)
    with pytest.raises(TypeError) as info:
        ProgressReporter("t", interval="2s")  # type: ignore[arg-type]
    assert str(info.value) == "interval must be a number of seconds, got '2s'"
    with pytest.raises(
        ValueError, match=r"^deliver_timeout must be a finite number > 0 or None, got 0$"
    ):
        ProgressReporter("t", deliver_timeout=0)


async def test_updates_are_throttled_and_coalesced(clock: ManualClock) -> None:
    """Within an interval only the newest update is delivered, once the interval is over."""
    rec = Recorder()
    r = ProgressReporter("user-1", rec, interval=2.0, clock=clock)
    await r.started()
    assert rec.messages() == ["started"]
    for i in range(1, 6):
        clock.advance(0.1)
        await r.step(i, 5)
    assert rec.messages() == ["started"]  # a burst inside the interval: nothing yet
    clock.advance(1.5)  # t = 2.0 since "started": the timer fires
    await rec.wait_for(2)
    assert rec.messages() == ["started", "step 5/5"]
    await r.step(6, 6)
    assert len(rec) == 2  # the next one waits for its own interval
    clock.advance(2.0)
    await rec.wait_for(3)
    assert rec.messages("user-1") == ["started", "step 5/5", "step 6/6"]
    assert r.delivered == 3
    await r.aclose()


async def test_terminal_update_is_immediate_and_final(clock: ManualClock) -> None:
    """done is delivered at once, replaces what waits, and ends the report."""
    rec = Recorder()
    r = ProgressReporter("t", rec, interval=10.0, clock=clock, prefix="job: ")
    await r.started()
    await r.step(1, 3)
    await r.done()
    assert rec.messages() == ["job: started", "job: done"]
    await r.step(2, 3)
    await r.failed("late")
    clock.advance(20)
    await settle()
    assert rec.messages() == ["job: started", "job: done"]
    assert r.finished
    assert r.final == ProgressUpdate("done")
    assert clock.pending_timers == 0
    assert repr(r) == "<ProgressReporter target='t' finished delivered=2 interval=10s>"


async def test_same_text_is_not_repeated(clock: ManualClock) -> None:
    """An update that says what the target already has is dropped."""
    rec = Recorder()
    r = ProgressReporter("t", rec, interval=1.0, clock=clock)
    await r.queued(2, 10)
    clock.advance(5)
    await r.queued(2, 10)
    await r.queued(2, 9.6)  # rounds up to the same text
    assert rec.messages() == ["queued (#2, ~10s)"]
    await r.queued(1, 4)
    assert rec.messages() == ["queued (#2, ~10s)", "queued (#1, ~4s)"]


async def test_failing_deliverer_never_fails_the_run(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A deliverer that raises is logged and counted; reporting goes on."""
    calls: list[str] = []

    def flaky(target: str, message: str) -> None:
        calls.append(message)
        if message == "started":
            raise ConnectionError("chat API down")

    r = ProgressReporter("t", CallbackDeliverer(flaky), interval=0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="executus.progress"):
        await r.started()
        await r.done()
    assert calls == ["started", "done"]
    assert (r.failures, r.delivered) == (1, 1)
    assert "progress delivery to 't' failed" in caplog.text
    assert "chat API down" in caplog.text


async def test_hanging_deliverer_is_abandoned_after_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A delivery that hangs is given up after deliver_timeout and logged."""

    async def hang(target: str, message: str) -> None:
        await asyncio.Event().wait()

    r = ProgressReporter("t", CallbackDeliverer(hang), deliver_timeout=0.01)
    with caplog.at_level(logging.WARNING, logger="executus.progress"):
        await r.done()
    assert r.failures == 1
    assert "progress delivery to 't' failed" in caplog.text


async def test_flush_delivers_a_waiting_update_now(clock: ManualClock) -> None:
    """flush() delivers the coalesced update without waiting for the interval."""
    rec = Recorder()
    r = ProgressReporter("t", rec, interval=60, clock=clock)
    await r.started()
    await r.step(1, 2)
    await r.flush()
    assert rec.messages() == ["started", "step 1/2"]
    assert clock.pending_timers == 0


async def test_context_manager_reports_the_end(clock: ManualClock) -> None:
    """async with reports done, failed or cancelled unless the body reported an end."""
    rec = Recorder()
    async with ProgressReporter("ok", rec, interval=0, clock=clock) as r:
        await r.started()
    with pytest.raises(ValueError, match=r"^no$"):
        async with ProgressReporter("bad", rec, interval=0, clock=clock):
            raise ValueError("no")

    async def body() -> None:
        async with ProgressReporter("stop", rec, interval=0, clock=clock):
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with ProgressReporter("own", rec, interval=0, clock=clock) as r:
        await r.preempted()
    assert rec.messages("ok") == ["started", "done"]
    assert rec.messages("bad") == ["failed: no"]
    assert rec.messages("stop") == ["cancelled"]
    assert rec.messages("own") == ["preempted"]


# -- driven by a lane ----------------------------------------------------------------------


async def test_track_reports_queue_position_start_and_end(clock: ManualClock) -> None:
    """track() reports a queued job's place and ETA, its start and its end."""
    rec = Recorder()
    first, second = Gate(), Gate()
    async with Lane("gpu", 1, clock=clock) as lane:
        h1 = await lane.submit(first)
        h2 = await lane.submit(second)
        r = ProgressReporter("user-2", rec, interval=0, clock=clock)
        tracker = asyncio.create_task(r.track(h2, poll=1.0))
        await rec.wait_for(1)
        assert rec.messages()[0].startswith("queued (#1, ~")
        await settle()
        first.release("a")
        assert await h1 == "a"
        await settle()
        clock.advance(1.0)  # the next poll sees it running
        await rec.wait_for(2)
        assert rec.messages()[1] == "started"
        second.release("b")
        assert await tracker is JobState.SUCCEEDED
    assert rec.messages()[1:] == ["started", "done"]


async def test_run_with_progress_success_and_failure(clock: ManualClock) -> None:
    """run_with_progress returns the job's value or raises its error, reporting both."""
    rec = Recorder()
    async with Lane("gpu", 1, clock=clock) as lane:

        async def ok() -> str:
            return "reply"

        async def bad() -> str:
            raise ValueError("model crashed")

        r1 = ProgressReporter("a", rec, interval=0, clock=clock)
        assert await run_with_progress(lane, ok, r1, key="a") == "reply"
        r2 = ProgressReporter("b", rec, interval=0, clock=clock)
        with pytest.raises(ValueError, match=r"^model crashed$"):
            await run_with_progress(lane, bad, r2, key="b")
    # Both jobs ended before their first poll: only the end is worth saying.
    assert rec.messages("a") == ["done"]
    assert rec.messages("b") == ["failed: model crashed"]


async def test_run_with_progress_cancelling_the_caller_cancels_the_job(
    clock: ManualClock,
) -> None:
    """Cancelling the caller of run_with_progress cancels the job and reports it."""
    rec = Recorder()
    gate = Gate()
    async with Lane("gpu", 1, clock=clock) as lane:
        r = ProgressReporter("a", rec, interval=0, clock=clock)
        task = asyncio.create_task(run_with_progress(lane, gate, r))
        await rec.wait_for(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await lane.stats()
    assert gate.cancelled
    assert stats.cancelled == 1
    assert rec.messages() == ["started", "cancelled"]


async def test_run_with_progress_reports_preemption(clock: ManualClock) -> None:
    """A preempted job (no requeue) is reported preempted and raises JobPreempted."""
    rec = Recorder()
    low = Gate()
    lane = Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0), clock=clock)
    async with lane:
        r = ProgressReporter("batch", rec, interval=0, clock=clock)
        task = asyncio.create_task(run_with_progress(lane, low, r, preemptible=True))
        await rec.wait_for(1)

        async def urgent() -> str:
            return "now"

        assert await lane.run(urgent, priority=9) == "now"
        with pytest.raises(JobPreempted):
            await task
    assert rec.messages() == ["started", "preempted"]


async def test_run_with_progress_reports_a_refusal(clock: ManualClock) -> None:
    """A LaneBusy refusal at submit is reported failed and raised."""
    rec = Recorder()
    gate = Gate()
    async with Lane("gpu", 1, clock=clock) as lane:
        h = await lane.submit(gate)
        r = ProgressReporter("a", rec, interval=0, clock=clock)

        async def job() -> None:
            return None

        with pytest.raises(LaneBusy):
            await run_with_progress(lane, job, r, max_wait=0)
        await settle()
        gate.release()
        await h
    assert rec.messages()[0].startswith("failed: lane 'gpu' is busy")
