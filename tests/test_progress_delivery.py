"""Progress deliveries: updates made inside a delivery, a delivery that hangs or fails,
reports left running when the event loop shuts down, and the arguments updates check."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from executus import Lane
from executus.deliver import Recorder
from executus.progress import ProgressReporter, format_eta, run_with_progress
from executus.testing import ManualClock

from .helpers import settle


class _SlowReentrant:
    """A deliverer that, on ``step 1/2``, reports ``step 2/2`` from inside its own
    ``deliver``, then takes ``took`` seconds (advancing ``clock``, if given) and waits
    until the test opens ``gate``."""

    def __init__(self, clock: ManualClock | None = None, took: float = 0.0) -> None:
        self.rec = Recorder()
        self.gate = asyncio.Event()
        self.reporter: ProgressReporter | None = None
        self._clock = clock
        self._took = took

    async def deliver(self, target: str, message: str) -> None:
        await self.rec.deliver(target, message)
        if message == "step 1/2":
            assert self.reporter is not None
            await self.reporter.step(2, 2, "from deliver")
            if self._clock is not None:
                self._clock.advance(self._took)  # the chat API call is slow
            await self.gate.wait()


class _Hung:
    """A deliverer whose first delivery hangs until the test opens ``gate``."""

    def __init__(self) -> None:
        self.rec = Recorder()
        self.gate = asyncio.Event()

    async def deliver(self, target: str, message: str) -> None:
        await self.rec.deliver(target, message)
        if len(self.rec.deliveries) == 1:
            await self.gate.wait()


class _FailsFirst:
    """A deliverer whose first delivery raises ``ConnectionError``."""

    def __init__(self) -> None:
        self.calls = 0
        self.rec = Recorder()

    async def deliver(self, target: str, message: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("chat API blip")
        await self.rec.deliver(target, message)


# -- an update made inside a delivery ------------------------------------------------------


async def test_an_update_made_inside_a_delivery_is_delivered_by_its_timer(
    clock: ManualClock,
) -> None:
    """A step reported from inside the deliverer's own deliver, whose interval passes while
    that delivery is still under way, is delivered as soon as the delivery ends."""
    out = _SlowReentrant(clock, took=0.2)
    reporter = ProgressReporter("t", out, interval=0.05, clock=clock, deliver_timeout=None)
    out.reporter = reporter
    first = asyncio.create_task(reporter.step(1, 2))
    await settle()
    assert out.rec.messages() == ["step 1/2"]
    out.gate.set()
    await first
    await settle()
    assert out.rec.messages() == ["step 1/2", "step 2/2: from deliver"]
    assert (reporter.delivered, clock.pending_timers) == (2, 0)


async def test_an_update_made_inside_a_delivery_is_delivered_after_it_on_the_loop_clock() -> None:
    """With the event loop's timers (which run a callback in the context it was set in),
    an update made from inside a delivery is delivered once that delivery ends."""
    out = _SlowReentrant()
    reporter = ProgressReporter("t", out, interval=0, deliver_timeout=None)
    out.reporter = reporter
    first = asyncio.create_task(reporter.step(1, 2))
    await settle()  # the update's timer fires while the delivery waits
    assert out.rec.messages() == ["step 1/2"]
    out.gate.set()
    await first
    await settle()
    assert out.rec.messages() == ["step 1/2", "step 2/2: from deliver"]


# -- a delivery that hangs -----------------------------------------------------------------


async def test_updates_during_a_hung_delivery_leave_one_task_waiting(clock: ManualClock) -> None:
    """While a delivery hangs, updates made each interval leave at most one task waiting
    to deliver, and it delivers the newest once the delivery ends."""
    out = _Hung()
    reporter = ProgressReporter("t", out, interval=1.0, clock=clock, deliver_timeout=None)
    first = asyncio.create_task(reporter.started())
    await settle()
    tasks = len(asyncio.all_tasks())
    for i in range(1, 101):
        await reporter.step(i, 100)
        clock.advance(1.0)
        await asyncio.sleep(0)
    await settle()
    assert len(asyncio.all_tasks()) <= tasks + 1
    out.gate.set()
    await first
    await settle()
    assert out.rec.messages() == ["started", "step 100/100"]
    await reporter.aclose()
    assert len(asyncio.all_tasks()) == tasks - 1  # the test's own task is left


# -- a delivery that fails -----------------------------------------------------------------


async def test_a_text_whose_delivery_failed_is_delivered_when_reported_again(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed delivery is not what the target has: the same update reported again later
    is delivered, and once delivered it is not repeated."""
    out = _FailsFirst()
    reporter = ProgressReporter("t", out, interval=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="executus.progress"):
        await reporter.queued(3, 30)  # this delivery fails
    clock.advance(5)
    await reporter.queued(3, 30)  # the same state again (a poll of the queued job)
    clock.advance(5)
    await reporter.queued(3, 30)
    await settle()
    assert out.rec.messages() == ["queued (#3, ~30s)"]
    assert (out.calls, reporter.failures, reporter.delivered) == (2, 1, 1)
    assert "progress delivery to 't' failed" in caplog.text


# -- the event loop shuts down -------------------------------------------------------------


def test_runs_left_waiting_when_the_loop_ends_are_reported_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When asyncio.run ends with run_with_progress calls still waiting (it cancels every
    task, their trackers too), each job is reported cancelled and no reporting failure is
    logged."""
    rec = Recorder()

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        clock = ManualClock()
        lane = Lane("gpu", 1, clock=clock)
        for user in ("running", "queued"):
            reporter = ProgressReporter(user, rec, interval=0, clock=clock)
            asyncio.create_task(run_with_progress(lane, forever, reporter))  # noqa: RUF006
        await rec.wait_for(2)

    with caplog.at_level(logging.WARNING, logger="executus.progress"):
        asyncio.run(main())
    assert rec.messages("running") == ["started", "cancelled"]
    assert rec.messages("queued") == ["queued (#1, ~1s)", "cancelled"]
    assert caplog.records == []


# -- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        ("interval", "interval must be a finite number >= 0, got {}"),
        ("deliver_timeout", "deliver_timeout must be a finite number > 0 or None, got {}"),
    ],
    ids=["interval", "deliver_timeout"],
)
def test_a_setting_too_large_for_a_float_is_refused(setting: str, text: str) -> None:
    """An interval or deliver_timeout too large for a float is refused with a ValueError
    naming the setting."""
    with pytest.raises(ValueError, match=f"^{re.escape(text.format(10**400))}$"):
        ProgressReporter("t", **{setting: 10**400})  # type: ignore[arg-type]


def test_a_prefix_that_is_not_a_str_is_refused() -> None:
    """A prefix that is not a str is refused when the reporter is made."""
    with pytest.raises(TypeError) as info:
        ProgressReporter("t", prefix=5)  # type: ignore[arg-type]
    assert str(info.value) == "prefix must be a str, got 5"


@pytest.mark.parametrize(
    ("position", "eta", "error", "text"),
    [
        (2, "30s", TypeError, "eta must be a number of seconds or None, got '30s'"),
        (2, True, TypeError, "eta must be a number of seconds or None, got True"),
        ("2", 30, TypeError, "position must be an int or None, got '2'"),
        (2.0, 30, TypeError, "position must be an int or None, got 2.0"),
        (-1, 30, ValueError, "position must be >= 0 or None, got -1"),
    ],
    ids=["eta-str", "eta-bool", "position-str", "position-float", "position-negative"],
)
async def test_queued_refuses_a_bad_position_or_eta(
    clock: ManualClock, position: object, eta: object, error: type[Exception], text: str
) -> None:
    """queued() refuses a position or eta of the wrong type or range, naming it, and
    delivers nothing."""
    rec = Recorder()
    reporter = ProgressReporter("t", rec, interval=0, clock=clock)
    with pytest.raises(error) as info:
        await reporter.queued(position, eta)  # type: ignore[arg-type]
    assert str(info.value) == text
    await reporter.queued(2, 30)
    assert rec.messages() == ["queued (#2, ~30s)"]


def test_format_eta_of_an_int_too_large_for_a_float_is_unknown() -> None:
    """An ETA too large for a float is shown as unknown, like an infinite one."""
    assert format_eta(10**400) == "~?"
