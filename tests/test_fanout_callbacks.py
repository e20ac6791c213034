"""Tests for fanout's progress reports when a swarm stops early, and for callbacks that
cannot be awaited where fanout calls them synchronously."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest

from executus import FanoutProgress, fanout, fanout_iter, grid
from executus.testing import ManualClock

from .helpers import settle


async def _echo(x: int) -> int:
    await asyncio.sleep(0)
    return x


async def _broken_input() -> AsyncIterator[int]:
    yield 0
    yield 1
    raise OSError("the feed broke")


async def test_progress_gets_a_final_report_when_the_input_raises(clock: ManualClock) -> None:
    """A swarm stopped by its input's error still sends its final (finished) report."""
    reports: list[FanoutProgress] = []
    with pytest.raises(OSError, match=r"^the feed broke$"):
        await fanout(_broken_input(), _echo, progress=reports.append, clock=clock)
    assert reports[-1].finished


async def test_progress_gets_a_final_report_when_fanout_is_cancelled(
    clock: ManualClock,
) -> None:
    """Cancelling fanout still sends the final (finished) report before CancelledError."""
    reports: list[FanoutProgress] = []
    started = asyncio.Event()

    async def hang(x: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return x

    task = asyncio.create_task(
        fanout(range(3), hang, max_concurrent=1, progress=reports.append, clock=clock)
    )
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reports[-1].finished
    assert reports[-1].running == 0


async def test_progress_gets_a_final_report_when_fanout_iter_is_closed_early(
    clock: ManualClock,
) -> None:
    """Closing fanout_iter before its end still sends the final (finished) report."""
    reports: list[FanoutProgress] = []
    async with contextlib.aclosing(
        fanout_iter(range(100), _echo, max_concurrent=2, progress=reports.append, clock=clock)
    ) as it:
        async for _ in it:
            break
        assert not reports[-1].finished
    assert reports[-1].finished
    assert [r.finished for r in reports].count(True) == 1


async def test_an_async_progress_callback_is_refused() -> None:
    """An async def progress callback (never awaited: progress is called synchronously)
    is refused with the rule and the value."""

    async def show(p: FanoutProgress) -> None:
        pass

    with pytest.raises(TypeError) as info:
        await fanout([1], _echo, progress=show)
    assert str(info.value) == (
        f"progress must be a plain (not async) callable, as it is called synchronously, "
        f"got {show!r}"
    )


async def test_an_async_key_function_is_refused() -> None:
    """An async def key function (its coroutine would be the key) is refused with the
    rule and the value, by fanout and by grid."""

    async def user_of(x: int) -> Hashable:
        return x

    async def ask(row: int, col: int) -> int:
        return row * col

    async def pair_key(row: int, col: int) -> Hashable:
        return col

    message = "key must be a plain (not async) callable returning the item's key, got {!r}"
    with pytest.raises(TypeError) as info:
        await fanout([1, 2], _echo, key=user_of, per_key=1)  # type: ignore[arg-type]
    assert str(info.value) == message.format(user_of)
    with pytest.raises(TypeError) as info:
        await grid([1], [2], ask, key=pair_key)  # type: ignore[arg-type]
    assert str(info.value) == message.format(pair_key)
    await settle()


async def test_a_progress_callback_raising_cancelled_error_is_logged_and_ignored(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A CancelledError raised by the (synchronous) progress callback itself is logged and
    ignored like any of its errors: every item still runs and is reported."""
    calls = 0

    def show(p: FanoutProgress) -> None:
        nonlocal calls
        calls += 1
        if calls in (2, 5):
            raise asyncio.CancelledError("display gave up")

    outcomes = await asyncio.wait_for(
        fanout(
            range(10),
            _echo,
            max_concurrent=1,
            progress=show,
            progress_interval=0,
            clock=clock,
        ),
        5,
    )
    assert [o.value for o in outcomes] == list(range(10))
    assert calls == 12  # the first report, one per item, the final one
    assert caplog.text.count("fanout progress callback") == 2


@pytest.mark.parametrize("source", ["sync", "async"])
async def test_a_key_function_raising_cancelled_error_fails_only_its_item(source: str) -> None:
    """A CancelledError raised by the key function itself is that item's error (the
    caller was not cancelled): the other items run."""
    error = asyncio.CancelledError("no key for 2")

    def key(x: int) -> int:
        if x == 2:
            raise error
        return x % 2

    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    items: Any = range(5) if source == "sync" else numbers()
    outcomes = await asyncio.wait_for(fanout(items, _echo, key=key, max_concurrent=2), 5)
    assert [o.index for o in outcomes] == [0, 1, 2, 3, 4]
    assert outcomes[2].error is error
    assert outcomes[2].key is None
    assert [o.value for o in outcomes if o.ok] == [0, 1, 3, 4]


class _AsyncKey:
    async def __call__(self, item: int) -> Hashable:
        return item % 2


class _AsyncProgress:
    async def __call__(self, p: FanoutProgress) -> None:
        pass


async def test_an_object_with_an_async_call_is_refused_as_key_or_progress() -> None:
    """An instance whose __call__ is async def is refused as key and as progress, as an
    async def function is."""
    key = _AsyncKey()
    with pytest.raises(TypeError) as info:
        await fanout([1, 2], _echo, key=key, per_key=1)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"key must be a plain (not async) callable returning the item's key, got {key!r}"
    )
    show = _AsyncProgress()
    with pytest.raises(TypeError) as info:
        await fanout([1], _echo, progress=show)
    assert str(info.value) == (
        f"progress must be a plain (not async) callable, as it is called synchronously, "
        f"got {show!r}"
    )


async def test_a_key_function_returning_an_awaitable_fails_its_items() -> None:
    """A plain key function that returns a coroutine fails each item with a TypeError
    (the coroutine is closed, not taken for the key)."""

    async def user_of(x: int) -> int:
        return x % 2

    def key(x: int) -> Any:
        return user_of(x)

    ran: list[int] = []

    async def fn(x: int) -> int:
        ran.append(x)
        return x

    outcomes = await fanout([1, 2], fn, key=key, per_key=1)
    assert ran == []
    for o in outcomes:
        assert isinstance(o.error, TypeError)
        assert str(o.error).startswith(
            "key must be a plain (not async) callable, as it is called synchronously; "
            f"{key!r} returned <coroutine object"
        )


async def test_a_progress_callback_returning_an_awaitable_is_logged_once_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain progress callback that returns a coroutine is logged as refused once and
    not called again; the swarm runs on."""
    calls: list[FanoutProgress] = []

    async def record(p: FanoutProgress) -> None:
        calls.append(p)

    def show(p: FanoutProgress) -> Any:
        return record(p)

    outcomes = await fanout(range(5), _echo, progress=show, progress_interval=0)
    assert [o.value for o in outcomes] == list(range(5))
    assert calls == []
    refused = [r for r in caplog.records if r.name == "executus.fanout"]
    assert len(refused) == 1
    assert refused[0].exc_info is not None
    assert str(refused[0].exc_info[1]).startswith(
        f"progress must be a plain (not async) callable, as it is called synchronously; "
        f"{show!r} returned <coroutine object"
    )


class _KeyBox:
    """A class used as a key function: calling it is synchronous, whatever the
    ``__call__`` of its instances."""

    def __init__(self, item: int) -> None:
        self.item = item

    async def __call__(self) -> None:
        pass


async def test_a_class_whose_instances_have_an_async_call_is_a_plain_key_function() -> None:
    """A class is accepted as key even when its instances' __call__ is async: calling
    the class makes the key."""
    outcomes = await fanout([1, 2, 3], _echo, key=_KeyBox, per_key=1)
    assert [o.value for o in outcomes] == [1, 2, 3]
    assert all(isinstance(o.key, _KeyBox) for o in outcomes)
