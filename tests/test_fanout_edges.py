"""Tests for fanout edge cases: lane errors, input errors, repeated cancellation, validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from executus import JobPreempted, Lane
from executus._fanout import fanout, grid
from executus._job import JobHandle

from .helpers import settle


async def test_lane_item_raising_job_preempted_itself_is_an_item_error() -> None:
    """A JobPreempted raised by fn itself (not its lane job) ends the item, not a rerun."""
    inner = JobPreempted("other", "inner-job")
    calls = 0

    async def fn(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise inner
        return x

    async with Lane("gpu", 1) as lane:
        outcomes = await fanout([7], fn, lanes=lane)
    assert calls == 1
    assert outcomes[0].error is inner
    assert outcomes[0].preemptions == 0


@pytest.mark.parametrize(
    ("interval", "error", "message"),
    [
        (None, TypeError, "progress_interval must be a number >= 0, got None"),
        ("1", TypeError, "progress_interval must be a number >= 0, got '1'"),
        (float("nan"), ValueError, "progress_interval must be >= 0, got nan"),
    ],
)
async def test_progress_interval_must_be_a_number(
    interval: object, error: type[Exception], message: str
) -> None:
    """A progress_interval that is not a number >= 0 is refused with the rule and the value."""
    with pytest.raises(error) as info:
        await fanout([1], asyncio.sleep, progress_interval=interval)  # type: ignore[arg-type]
    assert str(info.value) == message


class _BrokenSized:
    """A sized input whose iteration fails after three items."""

    def __len__(self) -> int:
        return 5

    def __iter__(self) -> Iterator[int]:
        yield 0
        yield 1
        yield 2
        raise RuntimeError("input broke")


async def test_sized_input_error_while_failing_fast_is_raised() -> None:
    """An input that raises while fail-fast reports its unread items makes fanout raise it."""

    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == 0:
            raise ValueError("item 0 failed")
        return x

    with pytest.raises(RuntimeError, match=r"^input broke$"):
        await fanout(_BrokenSized(), fn, max_concurrent=1, read_ahead=1, fail_fast=True)


async def test_async_input_raising_cancelled_error_is_an_input_error() -> None:
    """An async input that raises CancelledError by itself stops fanout with that error."""
    stop = asyncio.CancelledError("the stream died")

    async def items() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise stop

    with pytest.raises(asyncio.CancelledError) as info:
        await fanout(items(), settle_and_return)
    assert info.value is stop


async def settle_and_return(x: int) -> int:
    """Return x after one suspension."""
    await asyncio.sleep(0)
    return x


class _LaneRaising:
    """A lane-like object whose submit raises CancelledError without being cancelled."""

    max_concurrent = 1

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def submit(
        self,
        fn: Callable[[], Awaitable[Any]],
        *,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
    ) -> JobHandle[Any]:
        raise self.exc


async def test_lane_raising_cancelled_error_is_an_item_error() -> None:
    """A lane that raises CancelledError by itself fails that item; the swarm goes on."""
    exc = asyncio.CancelledError("lane backend")
    outcomes = await fanout([1], settle_and_return, lanes=_LaneRaising(exc))
    assert outcomes[0] is not None
    assert outcomes[0].error is exc
    assert not outcomes[0].ok


async def test_cancelling_the_caller_twice_still_ends_lane_jobs_first() -> None:
    """A second cancel during teardown still ends every lane job before CancelledError."""
    started = 0
    ended = 0
    cleanup = asyncio.Event()

    async def fn(x: int) -> int:
        nonlocal started, ended
        started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await cleanup.wait()  # slow cleanup: a second cancel arrives meanwhile
            raise
        finally:
            ended += 1
        return x

    async with Lane("gpu", 2) as lane:
        task = asyncio.create_task(fanout(range(2), fn, lanes=lane))
        try:
            await settle(10)
            assert started == 2
            task.cancel()
            await settle(10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ended == 2
            stats = await lane.stats()
            assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 2)
        finally:
            cleanup.set()  # never leave the lane's jobs waiting on the way out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fail_fast": "no"}, "fail_fast must be a bool, got 'no'"),
        ({"lane_preemptible": 1}, "lane_preemptible must be a bool, got 1"),
    ],
)
async def test_flags_must_be_bools(options: dict[str, Any], message: str) -> None:
    """fail_fast and lane_preemptible take a bool, not any truthy value."""

    async def fn(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=f"^{message}$"):
        await fanout([1], fn, **options)


async def test_grid_names_an_axis_that_is_not_iterable() -> None:
    """grid refuses rows or cols that are not iterable, naming which."""

    async def fn(row: int, col: int) -> int:
        return row * col

    with pytest.raises(TypeError, match=r"^rows must be an iterable of values, got 5$"):
        await grid(5, [1, 2], fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cols must be an iterable of values, got None$"):
        await grid([1], None, fn)  # type: ignore[arg-type]
