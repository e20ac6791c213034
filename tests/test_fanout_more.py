"""Tests for grid's column keys, a lane that fails to cancel a swarm's job, interrupts
raised by a progress callback, and the durations of a progress line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from executus import (
    FanoutProgress,
    LaneUnavailable,
    ProgressLine,
    fanout,
    fanout_iter,
    grid,
)
from executus.testing import ManualClock

from .helpers import Gate, UnreachableOnCancel, settle


def _others() -> set[asyncio.Task[Any]]:
    """The tasks of the loop other than the running one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


# -- grid keys ---------------------------------------------------------------------------


async def test_grid_refuses_unhashable_column_values_up_front() -> None:
    """grid keyed by column refuses an unhashable column value before any cell runs, with
    a TypeError naming the rule, the value and key=."""
    cells: list[tuple[str, dict[str, str]]] = []

    async def ask(prompt: str, settings: dict[str, str]) -> str:
        cells.append((prompt, settings))
        return prompt

    cols = [{"model": "small"}, {"model": "large"}]
    with pytest.raises(TypeError) as info:
        await grid(["hi"], cols, ask)
    assert str(info.value) == (
        "grid keys cells by column value, which must be hashable, got cols[0] = "
        "{'model': 'small'} (unhashable type: 'dict'); pass key=lambda row, col: ... "
        "returning a hashable key"
    )
    assert cells == []


async def test_grid_runs_unhashable_column_values_under_a_key_function() -> None:
    """With key=, grid runs columns whose values are not hashable, keyed as told."""

    async def ask(prompt: str, settings: dict[str, str]) -> str:
        return f"{settings['model']}:{prompt}"

    cols = [{"model": "small"}, {"model": "large"}]
    table = await grid(["hi", "yo"], cols, ask, key=lambda row, col: col["model"], per_key=1)
    assert [[o.value for o in row] for row in table] == [
        ["small:hi", "large:hi"],
        ["small:yo", "large:yo"],
    ]
    assert [o.key for o in table[0]] == ["small", "large"]


# -- a lane that fails to cancel ----------------------------------------------------------


async def test_cancelling_fanout_raises_cancelled_error_when_the_lane_cannot_cancel(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling fanout raises CancelledError even when the lane fails to cancel an item's
    job: the lane's error is logged, the item is reported cancelled, and the job runs on
    to its own end."""
    gate = Gate()
    reports: list[FanoutProgress] = []
    async with UnreachableOnCancel("gpu", 1, clock=clock) as lane:
        task = asyncio.create_task(
            fanout([1], lambda _: gate(), lanes=lane, progress=reports.append, clock=clock)
        )
        await settle()
        assert gate.running
        try:
            with caplog.at_level(logging.WARNING, logger="executus.fanout"):
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            gate.release("late")  # the lane's exit waits for the job
        await settle()
        stats = await lane.stats()
    logged = [r.exc_info for r in caplog.records if r.name == "executus.fanout"]
    assert [type(info[1]) for info in logged if info] == [LaneUnavailable]
    assert reports[-1].finished
    assert (reports[-1].running, reports[-1].cancelled) == (0, 1)
    assert (stats.succeeded, stats.cancelled) == (1, 0)


# -- interrupts from the progress callback ------------------------------------------------


@pytest.mark.parametrize("interrupt", [SystemExit, KeyboardInterrupt])
async def test_an_interrupt_from_a_worker_progress_report_leaves_fanout_after_the_swarm_stops(
    clock: ManualClock, interrupt: type[BaseException]
) -> None:
    """A KeyboardInterrupt or SystemExit raised by the progress callback after an item ends
    comes out of fanout, once the other items are cancelled and no task of it is left."""
    hung: list[int] = []
    reports: list[FanoutProgress] = []

    async def work(x: int) -> int:
        if x:
            hung.append(x)
            await asyncio.Event().wait()
        return x

    def show(p: FanoutProgress) -> None:
        reports.append(p)
        if p.done and not p.finished:
            raise interrupt

    async with asyncio.timeout(10):
        with pytest.raises(interrupt):
            await fanout(
                [1, 2, 0], work, max_concurrent=3, progress=show, progress_interval=0, clock=clock
            )
    assert hung == [1, 2]
    assert _others() == set()
    assert reports[-1].finished
    assert (reports[-1].running, reports[-1].queued) == (0, 0)


async def test_an_interrupt_from_progress_leaves_fanout_iter_after_the_swarm_stops(
    clock: ManualClock,
) -> None:
    """A KeyboardInterrupt raised by the progress callback of fanout_iter comes out of the
    iteration once the swarm has stopped, with no task of it left."""

    async def work(x: int) -> int:
        if x:
            await asyncio.Event().wait()
        return x

    def show(p: FanoutProgress) -> None:
        if p.done and not p.finished:
            raise KeyboardInterrupt

    async def consume() -> list[int]:
        swarm = fanout_iter(
            [1, 0, 2], work, max_concurrent=3, progress=show, progress_interval=0, clock=clock
        )
        async with contextlib.aclosing(swarm) as it:
            return [o.index async for o in it]

    async with asyncio.timeout(10):
        with pytest.raises(KeyboardInterrupt):
            await consume()
    assert _others() == set()


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize("interrupt", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("lazy", [False, True])
async def test_an_interrupt_from_the_first_progress_report_leaves_fanout_after_the_swarm_stops(
    clock: ManualClock, interrupt: type[BaseException], lazy: bool
) -> None:
    """A KeyboardInterrupt or SystemExit raised by the progress callback's first report
    comes out of fanout with no task of the swarm left running (a list or an async
    input)."""
    calls = 0

    def show(p: FanoutProgress) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise interrupt

    async def hang(x: int) -> int:
        await asyncio.Event().wait()
        return x

    items = _numbers(3) if lazy else range(3)
    async with asyncio.timeout(10):
        with pytest.raises(interrupt):
            await fanout(items, hang, max_concurrent=2, progress=show, clock=clock)
    assert _others() == set()


@pytest.mark.parametrize("interrupt", [SystemExit, KeyboardInterrupt])
async def test_an_interrupt_from_a_periodic_progress_report_leaves_fanout_after_the_swarm_stops(
    interrupt: type[BaseException],
) -> None:
    """A KeyboardInterrupt or SystemExit raised by the progress callback while items run
    (a periodic report) comes out of fanout with every item cancelled and no task left."""
    calls = 0
    cancelled: list[int] = []

    def show(p: FanoutProgress) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise interrupt

    async def hang(x: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async with asyncio.timeout(10):  # the periodic report comes after 0.01 s
        with pytest.raises(interrupt):
            await fanout(range(2), hang, max_concurrent=2, progress=show, progress_interval=0)
    assert sorted(cancelled) == [0, 1]
    assert _others() == set()


# -- durations in a progress line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "text"),
    [
        (59.94, "59.9s"),
        (59.96, "1m00s"),
        (119.96, "2m00s"),
        (3599.4, "59m59s"),
        (3599.6, "1h00m"),
        (3629.9, "1h00m"),
        (3630.0, "1h01m"),
        (7199.9, "2h00m"),
    ],
)
def test_a_progress_line_rounds_durations_into_the_next_unit(elapsed: float, text: str) -> None:
    """A duration just under a unit boundary is rounded once, at the unit it is shown in:
    59.96 s reads "1m00s" (not "60.0s"), 3599.6 s "1h00m", 3630 s "1h01m"."""
    p = FanoutProgress(
        done=1,
        succeeded=1,
        failed=0,
        cancelled=0,
        running=0,
        queued=0,
        total=1,
        elapsed=elapsed,
        eta=0.0,
        finished=True,
    )
    assert ProgressLine(label="crawl").format(p) == (
        f"crawl: 1/1 done: 1 succeeded, 0 failed, 0 cancelled in {text}"
    )
