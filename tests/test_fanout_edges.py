"""Tests for fanout edge cases: lane errors, input errors, repeated cancellation, validation,
closing an async input the swarm stops reading early."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from executus import JobPreempted, Lane
from executus._fanout import fanout, fanout_iter, grid
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


# -- closing an async input the swarm stops reading early ----------------------------------


async def _numbers(events: list[str], n: int = 1000) -> AsyncIterator[int]:
    """Yield 0..n-1; record "finally" in ``events`` when the generator's cleanup runs."""
    try:
        for i in range(n):
            yield i
    finally:
        events.append("finally")


async def fail_at_one(x: int) -> int:
    """Return x after one suspension; item 1 fails."""
    await asyncio.sleep(0)
    if x == 1:
        raise ValueError("item 1 failed")
    return x


async def test_fail_fast_closes_the_async_input_before_returning() -> None:
    """A fail-fast stop closes an async generator input before fanout returns."""
    events: list[str] = []
    source = _numbers(events)
    outcomes = await fanout(source, fail_at_one, max_concurrent=1, read_ahead=1, fail_fast=True)
    assert events == ["finally"]
    assert str(outcomes[1].error) == "item 1 failed"
    assert len(outcomes) < 10  # reading stopped early


async def test_fanout_iter_break_inside_aclosing_closes_the_async_input() -> None:
    """Breaking out of fanout_iter inside aclosing closes its async input by the exit."""
    events: list[str] = []
    source = _numbers(events, 10_000)
    async with contextlib.aclosing(
        fanout_iter(source, settle_and_return, max_concurrent=2, read_ahead=4)
    ) as it:
        async for o in it:
            assert o.ok
            break
        assert events == []
    assert events == ["finally"]


async def test_cancelling_fanout_closes_the_async_input() -> None:
    """Cancelling the task running fanout closes its async input before CancelledError."""
    events: list[str] = []
    source = _numbers(events)

    async def fn(x: int) -> int:
        await asyncio.Event().wait()
        return x

    task = asyncio.create_task(fanout(source, fn, max_concurrent=1, read_ahead=1))
    await settle(10)
    assert events == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["finally"]


async def test_cancelling_again_while_the_input_closes_is_passed_on_to_it() -> None:
    """A second cancel during the input's slow cleanup reaches it; fanout waits for it."""
    events: list[str] = []
    cleaning = asyncio.Event()
    release = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(1000):
                yield i
        finally:
            cleaning.set()
            try:
                await release.wait()  # a slow cleanup: cancelled below
            except asyncio.CancelledError:
                events.append("cleanup cancelled")
                raise
            finally:
                events.append("finally")

    async def fn(x: int) -> int:
        await asyncio.Event().wait()
        return x

    items = source()
    task = asyncio.create_task(fanout(items, fn, max_concurrent=1, read_ahead=1))
    try:
        await settle(10)
        task.cancel()
        await settle(20)
        assert cleaning.is_set()
        assert not task.done()  # fanout waits for the input's cleanup
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events == ["cleanup cancelled", "finally"]
    finally:
        release.set()  # never leave the input's cleanup waiting on the way out


class _Numbers:
    """An async iterator over 0..n-1 (without aclose) that fails at ``fail_at``."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.next = 0

    def __aiter__(self) -> _Numbers:
        return self

    async def __anext__(self) -> int:
        i = self.next
        if i == self.fail_at:
            raise RuntimeError("input broke")
        if i >= self.n:
            raise StopAsyncIteration
        self.next = i + 1
        return i


class _Closable(_Numbers):
    """``_Numbers`` with an ``aclose()`` that counts its calls."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        super().__init__(n, fail_at)
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


async def test_async_input_is_closed_once_and_only_when_stopped_early() -> None:
    """aclose() runs once for an input stopped early, never for one that ended by itself."""
    events: list[str] = []
    outcomes = await fanout(_numbers(events, 5), settle_and_return, max_concurrent=2)
    assert [o.value for o in outcomes] == [0, 1, 2, 3, 4]
    assert events == ["finally"]

    exhausted = _Closable(5)
    outcomes = await fanout(exhausted, settle_and_return, max_concurrent=2)
    assert [o.value for o in outcomes] == [0, 1, 2, 3, 4]

    broken = _Closable(5, fail_at=2)
    with pytest.raises(RuntimeError, match=r"^input broke$"):
        await fanout(broken, settle_and_return, max_concurrent=2)

    stopped = _Closable(1000)
    outcomes = await fanout(stopped, fail_at_one, max_concurrent=1, read_ahead=1, fail_fast=True)
    assert str(outcomes[1].error) == "item 1 failed"
    assert (exhausted.closes, broken.closes, stopped.closes) == (0, 0, 1)

    unclosable = _Numbers(1000)  # no aclose(): stopping early leaves it as it is
    outcomes = await fanout(unclosable, fail_at_one, max_concurrent=1, read_ahead=1, fail_fast=True)
    assert str(outcomes[1].error) == "item 1 failed"


class _Fatal(BaseException):
    """An error that is not an item's (like KeyboardInterrupt): fanout raises it."""


@pytest.mark.parametrize("ending", ["fail_fast", "fatal"])
async def test_input_aclose_error_is_reported_and_the_outcome_kept(ending: str) -> None:
    """An error from the input's aclose() goes to the loop's exception handler; fanout's
    results, or its own error, stay what they were."""
    broken_close = OSError("connection reset while closing")

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(1000):
                yield i
        finally:
            raise broken_close

    fatal = _Fatal("stop everything")

    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == 1:
            raise ValueError("item 1 failed") if ending == "fail_fast" else fatal
        return x

    contexts: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    try:
        items = source()
        if ending == "fail_fast":
            outcomes = await fanout(items, fn, max_concurrent=1, read_ahead=1, fail_fast=True)
            assert [o.value for o in outcomes[:1]] == [0]
            assert str(outcomes[1].error) == "item 1 failed"
            assert all(o.cancelled for o in outcomes[2:])
        else:
            with pytest.raises(_Fatal) as info:
                await fanout(items, fn, max_concurrent=1, read_ahead=1)
            assert info.value is fatal
    finally:
        loop.set_exception_handler(previous)
    assert contexts == [
        {
            "message": "fanout's async input raised an error in aclose()",
            "exception": broken_close,
            "input": items,
        }
    ]


async def test_fanout_iter_left_to_the_collector_leaves_its_input_to_its_owner() -> None:
    """A fanout_iter dropped without aclosing does not close the input its caller holds, so
    the caller's own aclosing of that input neither collides with nor reports anything."""
    events: list[str] = []
    release = asyncio.Event()

    async def source() -> AsyncGenerator[int, None]:
        try:
            for i in range(1000):
                yield i
        finally:
            events.append("cleanup")
            await release.wait()  # a cleanup that awaits (closing a connection)
            events.append("closed")

    contexts: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    try:
        async with contextlib.aclosing(source()) as items:
            async for o in fanout_iter(items, settle_and_return, max_concurrent=1, read_ahead=1):
                assert o.ok
                break  # the generator is collected here; the loop closes it
            await settle(20)
            assert events == []  # the swarm has stopped; the input is still its owner's
            release.set()
    finally:
        release.set()
        loop.set_exception_handler(previous)
    assert events == ["cleanup", "closed"]
    assert contexts == []
