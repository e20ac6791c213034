"""Tests for fanout, fanout_iter and grid: caps, fairness, laziness, failure, lanes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executus import JobPreempted, Lane, Preemption, Priority, current_job
from executus._fanout import (
    DEFAULT_READ_AHEAD,
    FanoutProgress,
    Outcome,
    ProgressLine,
    fanout,
    fanout_iter,
    grid,
)
from executus.testing import ManualClock

from .helpers import settle


class Probe:
    """Records how many items run at once, overall and per key, and in what order."""

    def __init__(self) -> None:
        self.running: Counter[Hashable] = Counter()
        self.peak: Counter[Hashable] = Counter()
        self.total = 0
        self.peak_total = 0
        self.started: list[Hashable] = []
        self.cancelled = 0

    def enter(self, key: Hashable) -> None:
        self.running[key] += 1
        self.total += 1
        self.peak[key] = max(self.peak[key], self.running[key])
        self.peak_total = max(self.peak_total, self.total)
        self.started.append(key)

    def leave(self, key: Hashable) -> None:
        self.running[key] -= 1
        self.total -= 1


class GateAll:
    """Items that block until the test opens the gate, recording concurrency."""

    def __init__(self, key: Callable[[Any], Hashable] | None = None) -> None:
        self.probe = Probe()
        self.gate = asyncio.Event()
        self.key = key or (lambda item: None)

    async def __call__(self, item: object) -> object:
        k = self.key(item)
        self.probe.enter(k)
        try:
            await self.gate.wait()
            return item
        except asyncio.CancelledError:
            self.probe.cancelled += 1
            raise
        finally:
            self.probe.leave(k)


def leftover_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks alive now that were not alive before (excluding the current one)."""
    return {t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()}


async def double(x: int) -> int:
    """Return twice x after one suspension."""
    await asyncio.sleep(0)
    return 2 * x


# -- basics --------------------------------------------------------------------------------


async def test_outcomes_in_input_order_with_values_and_keys() -> None:
    """fanout returns one Outcome per item, in input order, with key, value and timing."""
    outcomes = await fanout(range(20), double, key=lambda x: x % 3, max_concurrent=4)
    assert [o.index for o in outcomes] == list(range(20))
    assert [o.item for o in outcomes] == list(range(20))
    assert [o.value for o in outcomes] == [2 * x for x in range(20)]
    assert [o.key for o in outcomes] == [x % 3 for x in range(20)]
    assert all(o.ok and o.error is None and not o.cancelled for o in outcomes)
    first = outcomes[0]
    assert first.wait >= 0.0
    assert first.run >= 0.0
    assert first.started_at is not None
    assert first.started_at.tzinfo is UTC
    assert first.finished_at >= first.started_at
    assert first.preemptions == 0
    assert first.result() == 0
    assert repr(first) == "<Outcome #0 key=0 ok value=0>"


async def test_errors_are_captured_per_item() -> None:
    """An item's exception lands in its Outcome; the others still succeed."""
    boom = ValueError("bad item 3")

    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == 3:
            raise boom
        return x

    outcomes = await fanout(range(6), fn, max_concurrent=2)
    assert [o.ok for o in outcomes] == [True, True, True, False, True, True]
    assert outcomes[3].error is boom
    assert outcomes[3].value is None
    with pytest.raises(ValueError, match=r"^bad item 3$") as info:
        outcomes[3].result()
    assert info.value is boom
    assert repr(outcomes[3]) == "<Outcome #3 key=None failed error=ValueError('bad item 3')>"


async def test_empty_input() -> None:
    """An empty input gives an empty result and leaves no task behind."""
    before = asyncio.all_tasks()
    assert await fanout([], double, max_concurrent=3) == []
    empty: list[Outcome[int, int]] = [o async for o in fanout_iter(list[int](), double)]
    assert empty == []
    assert leftover_tasks(before) == set()


async def test_key_function_error_is_the_items_error() -> None:
    """A key function that raises fails that item only."""

    def key(x: int) -> int:
        if x == 2:
            raise KeyError("no key for 2")
        return x % 2

    outcomes = await fanout(range(4), double, key=key, max_concurrent=2)
    assert [o.ok for o in outcomes] == [True, True, False, True]
    assert isinstance(outcomes[2].error, KeyError)
    assert outcomes[2].key is None
    assert outcomes[2].started_at is None
    assert outcomes[2].run == 0.0


async def test_input_iterator_error_propagates_without_leaks() -> None:
    """An input iterator that raises ends the swarm and fanout raises that error."""
    gate = GateAll()
    bad = RuntimeError("input broke")

    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise bad

    before = asyncio.all_tasks()
    with pytest.raises(RuntimeError) as info:
        await fanout(items(), gate, max_concurrent=4, read_ahead=1)
    assert info.value is bad
    assert leftover_tasks(before) == set()
    assert gate.probe.cancelled == 1  # item 1 was running; item 2 never started


async def test_async_iterable_input() -> None:
    """Async iterables are read lazily like iterables."""

    async def items() -> AsyncIterator[int]:
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    outcomes = await fanout(items(), double, key=lambda x: x % 4, max_concurrent=5, per_key=2)
    assert [o.value for o in outcomes] == [2 * i for i in range(30)]


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_concurrent": 0}, ValueError, "max_concurrent must be >= 1, got 0"),
        ({"max_concurrent": True}, TypeError, "max_concurrent must be an int >= 1, got True"),
        ({"per_key": 0}, ValueError, "per_key must be >= 1, got 0"),
        ({"per_key": {"a": -1}}, ValueError, "per_key['a'] must be >= 1, got -1"),
        ({"per_key": 1.5}, TypeError, "per_key must be an int >= 1, got 1.5"),
        ({"read_ahead": 0}, ValueError, "read_ahead must be >= 1, got 0"),
        (
            {"on_preempt": "drop"},
            ValueError,
            'on_preempt must be "requeue" or "report", got \'drop\'',
        ),
        ({"lanes": 3}, TypeError, "lanes must be a lane or a mapping of key to lane, got 3"),
        ({"lanes": {"a": 3}}, TypeError, "lanes['a'] must be a lane, got 3"),
        ({"progress": 3}, TypeError, "progress must be a callable, True or None, got 3"),
        ({"lane_priority": "hi"}, TypeError, "lane_priority must be an int, got 'hi'"),
        ({"progress_interval": -1}, ValueError, "progress_interval must be >= 0, got -1"),
        ({"key": 5}, TypeError, "key must be a callable or None, got 5"),
    ],
)
async def test_arguments_are_validated(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Bad arguments raise at once with the rule and the value."""
    with pytest.raises(error) as info:
        await fanout([1], double, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    with pytest.raises(error) as info:
        fanout_iter([1], double, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


async def test_bad_items_and_fn_are_refused() -> None:
    """A non-iterable input or a non-callable fn is a TypeError."""
    with pytest.raises(TypeError) as info:
        await fanout(5, double)  # type: ignore[arg-type]
    assert str(info.value) == "items must be an iterable or an async iterable, got 5"
    with pytest.raises(TypeError) as info:
        await fanout([1], "fn")  # type: ignore[arg-type]
    assert str(info.value) == "fn must be a callable returning an awaitable, got 'fn'"


# -- caps and fairness ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n_items=st.integers(min_value=0, max_value=60),
    n_keys=st.integers(min_value=1, max_value=5),
    max_concurrent=st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    default_cap=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    read_ahead=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_caps_never_exceeded_under_random_durations(
    n_items: int,
    n_keys: int,
    max_concurrent: int | None,
    default_cap: int | None,
    read_ahead: int,
    seed: int,
) -> None:
    """With random 0-2 ms items, running counts stay within the global and per-key caps."""
    rng = random.Random(seed)
    durations = [rng.random() * 0.002 for _ in range(n_items)]
    caps: dict[Hashable, int] = {k: rng.randint(1, 3) for k in range(n_keys) if rng.random() < 0.5}
    per_key: int | dict[Hashable, int] | None = caps if default_cap is None else default_cap
    probe = Probe()

    async def fn(i: int) -> int:
        k = i % n_keys
        probe.enter(k)
        try:
            await asyncio.sleep(durations[i])
        finally:
            probe.leave(k)
        return i

    async def main() -> list[Outcome[int, int]]:
        before = asyncio.all_tasks()
        outcomes = await fanout(
            iter(range(n_items)),
            fn,
            key=lambda i: i % n_keys,
            max_concurrent=max_concurrent,
            per_key=per_key,
            read_ahead=read_ahead,
        )
        assert leftover_tasks(before) == set()
        return outcomes

    outcomes = asyncio.run(main())
    assert [o.value for o in outcomes] == list(range(n_items))
    if max_concurrent is not None:
        assert probe.peak_total <= max_concurrent
    for k, peak in probe.peak.items():
        cap = per_key if isinstance(per_key, int) else caps.get(k)
        if cap is not None:
            assert peak <= cap, (k, peak, cap)
    assert probe.total == 0


async def test_per_key_mapping_missing_keys_are_uncapped() -> None:
    """Keys without a per_key entry have no per-key cap (only the global one)."""
    gate = GateAll(key=lambda x: "a" if x < 10 else "b")
    task = asyncio.create_task(
        fanout(
            range(20),
            gate,
            key=lambda x: "a" if x < 10 else "b",
            max_concurrent=6,
            per_key={"a": 1},
        )
    )
    await settle(10)
    assert gate.probe.running == Counter({"a": 1, "b": 5})
    gate.gate.set()
    outcomes = await task
    assert all(o.ok for o in outcomes)


async def test_keys_interleave_fairly() -> None:
    """A key with many items does not run them all before a key with few starts."""
    probe = Probe()
    items = ["big"] * 50 + ["small1"] * 3 + ["small2"] * 2

    async def fn(k: str) -> str:
        probe.enter(k)
        await asyncio.sleep(0)
        probe.leave(k)
        return k

    outcomes = await fanout(items, fn, key=lambda k: k, max_concurrent=2, read_ahead=64)
    assert set(probe.started[:3]) == {"big", "small1", "small2"}
    # The small keys are done long before the big one.
    last_small = max(i for i, k in enumerate(probe.started) if k != "big")
    assert last_small < 10
    assert [o.item for o in outcomes] == items


async def test_capped_key_leaves_no_global_slot_idle() -> None:
    """Items of an uncapped key fill the slots a capped key's cap leaves idle."""
    key = lambda x: "slow" if x < 30 else "fast"  # noqa: E731
    gate = GateAll(key=key)
    task = asyncio.create_task(
        fanout(range(35), gate, key=key, max_concurrent=4, per_key={"slow": 1}, read_ahead=40)
    )
    await settle(10)
    assert gate.probe.running == Counter({"slow": 1, "fast": 3})
    gate.gate.set()
    await task


async def test_unbounded_global_cap_starts_everything_in_the_window() -> None:
    """max_concurrent=None starts every runnable item that has been read."""
    gate = GateAll()
    task = asyncio.create_task(fanout(range(10), gate))
    await settle(10)
    assert gate.probe.total == 10
    gate.gate.set()
    assert len(await task) == 10


# -- laziness and memory -------------------------------------------------------------------


async def test_input_is_consumed_lazily() -> None:
    """At most max_concurrent + read_ahead items are read while items are blocked."""
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(1_000_000):
            consumed += 1
            yield i

    gate = GateAll()
    task = asyncio.create_task(fanout(items(), gate, max_concurrent=3, read_ahead=5))
    await settle(10)
    assert gate.probe.total == 3
    assert consumed == 3 + 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumed == 8


async def test_async_input_is_consumed_lazily() -> None:
    """An async input is read only as far as the window allows."""
    consumed = 0

    async def items() -> AsyncIterator[int]:
        nonlocal consumed
        for i in range(1_000):
            consumed += 1
            yield i

    gate = GateAll()
    task = asyncio.create_task(fanout(items(), gate, max_concurrent=2, read_ahead=4))
    await settle(20)
    assert gate.probe.total == 2
    assert consumed <= 2 + 4 + 1  # the reader may hold one item it has just read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_fanout_iter_bounds_outcomes_waiting_for_a_slow_consumer() -> None:
    """Workers pause while the consumer is behind: reading stops, nothing piles up."""
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield i

    async def instant(x: int) -> int:
        return x

    it = fanout_iter(items(), instant, max_concurrent=2, read_ahead=8)
    first = await anext(it)
    await settle(10)
    # One outcome consumed; at most max(read_ahead, max_concurrent) wait, plus the window.
    assert consumed <= 1 + 8 + 8 + 2
    assert first.index == 0
    await it.aclose()


async def test_fanout_iter_without_a_global_cap_starts_nothing_while_the_consumer_is_behind() -> (
    None
):
    """With no max_concurrent, no item starts once read_ahead outcomes wait for the consumer."""
    ended = 0
    late: list[int] = []
    consumed = 0

    async def fn(x: int) -> int:
        nonlocal ended
        if ended - consumed >= 8:  # read_ahead outcomes wait already
            late.append(x)
        await asyncio.sleep(0.001 if x % 2 else 0)
        ended += 1
        return x

    it = fanout_iter(range(100_000), fn, read_ahead=8)
    await anext(it)
    consumed = 1
    await asyncio.sleep(0.1)
    await it.aclose()
    assert late == []
    assert ended < 1_000


async def test_fanout_iter_without_a_global_cap_keeps_outcomes_and_tasks_bounded() -> None:
    """Without max_concurrent, fanout_iter keeps running items plus waiting outcomes
    within read_ahead, and its tasks few, however long the input."""
    running = peak_running = peak_tasks = 0

    async def fn(x: int) -> int:
        nonlocal running, peak_running, peak_tasks
        running += 1
        peak_running = max(peak_running, running)
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return x

    seen: list[int] = []
    async with contextlib.aclosing(fanout_iter(range(2_000), fn, read_ahead=4)) as it:
        async for outcome in it:
            assert outcome.value is not None
            seen.append(outcome.value)
            await asyncio.sleep(0)
    assert sorted(seen) == list(range(2_000))
    assert peak_running <= 4
    assert peak_tasks <= 4 + 8  # workers, this test's task and a few of the swarm's


def test_default_read_ahead() -> None:
    """The default window is documented as 256 items."""
    assert DEFAULT_READ_AHEAD == 256


# -- failure and cancellation --------------------------------------------------------------


async def test_fail_fast_cancels_queued_and_running_items() -> None:
    """The first error cancels what runs and what waits; a sized input is fully reported."""
    probe = Probe()
    started = asyncio.Event()

    async def fn(x: int) -> int:
        probe.enter(x)
        try:
            if x == 5:
                await started.wait()
                raise ValueError("item 5 failed")
            if x in (0, 1, 2):
                if x == 2:
                    started.set()  # 0, 1 and 2 are all running: let item 5 fail
                await asyncio.Event().wait()  # runs until cancelled
            return x
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        finally:
            probe.leave(x)

    before = asyncio.all_tasks()
    outcomes = await fanout(range(100), fn, max_concurrent=4, read_ahead=3, fail_fast=True)
    assert leftover_tasks(before) == set()
    assert len(outcomes) == 100
    assert outcomes[5].ok is False
    assert str(outcomes[5].error) == "item 5 failed"
    assert [o.cancelled for o in outcomes[:3]] == [True, True, True]
    assert probe.cancelled == 3
    assert outcomes[3].ok
    assert outcomes[4].ok
    assert all(o.cancelled for o in outcomes[6:])
    assert all(o.started_at is None for o in outcomes[9:])
    assert str(outcomes[99].error) == "cancelled: the swarm stopped before this item finished"
    assert probe.total == 0


async def test_fail_fast_with_an_iterator_stops_reading() -> None:
    """With an iterator input, fail-fast stops reading and reports only what was read."""
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield i

    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == 2:
            raise ValueError("stop")
        return x

    outcomes = await fanout(items(), fn, max_concurrent=2, read_ahead=4, fail_fast=True)
    assert consumed < 20
    assert len(outcomes) == consumed
    assert sum(1 for o in outcomes if not o.ok and not o.cancelled) == 1


async def test_caller_cancellation_cancels_the_whole_swarm() -> None:
    """Cancelling the caller cancels every item and leaves no task running."""
    gate = GateAll()
    before = asyncio.all_tasks()
    task = asyncio.create_task(fanout(range(1000), gate, max_concurrent=7))
    await settle(10)
    assert gate.probe.total == 7
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.probe.cancelled == 7
    assert gate.probe.total == 0
    assert leftover_tasks(before) == set()


async def test_fn_raising_cancelled_error_itself_is_an_item_error() -> None:
    """A CancelledError that fn raises on its own (not a cancel) is that item's outcome."""

    async def fn(x: int) -> int:
        if x == 1:
            raise asyncio.CancelledError("inner")
        return x

    outcomes = await fanout(range(3), fn, max_concurrent=1)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].cancelled


# -- fanout_iter ---------------------------------------------------------------------------


async def test_fanout_iter_yields_in_completion_order() -> None:
    """fanout_iter yields each outcome as its item ends, with its input index."""
    events = [asyncio.Event() for _ in range(3)]

    async def fn(i: int) -> int:
        await events[i].wait()
        return i

    got: list[int] = []
    async with contextlib.aclosing(fanout_iter(range(3), fn, max_concurrent=3)) as it:
        for i in (2, 0, 1):
            events[i].set()
            got.append((await anext(it)).index)
        with pytest.raises(StopAsyncIteration):
            await anext(it)
    assert got == [2, 0, 1]


async def test_fanout_iter_early_exit_cancels_everything() -> None:
    """Closing fanout_iter early cancels its running items and leaves no task."""
    key = lambda x: x % 2  # noqa: E731
    probe = Probe()

    async def fn(x: int) -> int:
        probe.enter(x % 2)
        try:
            if x:
                await asyncio.Event().wait()
            return x
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        finally:
            probe.leave(x % 2)

    before = asyncio.all_tasks()
    async with contextlib.aclosing(
        fanout_iter(range(100), fn, key=key, max_concurrent=5, per_key=3)
    ) as it:
        async for o in it:
            assert o.index == 0
            await settle(10)
            assert probe.total == 5
            break
    assert leftover_tasks(before) == set()
    assert probe.total == 0
    assert probe.cancelled == 5


async def test_fanout_iter_break_without_aclosing_still_cleans_up() -> None:
    """A plain break out of fanout_iter cancels the swarm once the generator is dropped."""
    probe = Probe()

    async def fn(x: int) -> int:
        probe.enter(None)
        try:
            if x:
                await asyncio.Event().wait()
            return x
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        finally:
            probe.leave(None)

    before = asyncio.all_tasks()
    async for o in fanout_iter(range(100), fn, max_concurrent=4):
        assert o.index == 0
        break
    await settle(10)
    assert leftover_tasks(before) == set()
    assert probe.total == 0
    assert probe.cancelled == 4


async def test_fanout_iter_fail_fast_yields_cancelled_outcomes() -> None:
    """fanout_iter with fail_fast yields the error, then the cancelled items, then stops."""

    async def fn(x: int) -> int:
        if x == 0:
            await asyncio.sleep(0)
            raise ValueError("first")
        await asyncio.Event().wait()
        return x

    outcomes = [o async for o in fanout_iter(range(50), fn, max_concurrent=3, fail_fast=True)]
    assert outcomes[0].index == 0
    assert str(outcomes[0].error) == "first"
    assert len(outcomes) > 1
    assert all(o.cancelled for o in outcomes[1:])


# -- grid ----------------------------------------------------------------------------------


async def test_grid_shape_items_and_column_keys() -> None:
    """grid returns a rows x cols matrix of outcomes of fn(row, col), keyed by column."""
    probe = Probe()

    async def fn(row: int, col: str) -> str:
        probe.enter(col)
        await asyncio.sleep(0)
        probe.leave(col)
        return f"{row}{col}"

    table = await grid(
        iter(range(4)), ("x", "y", "z"), fn, max_concurrent=5, per_key={"x": 1, "y": 2}
    )
    assert [[o.value for o in row] for row in table] == [
        [f"{r}{c}" for c in "xyz"] for r in range(4)
    ]
    assert table[2][1].item == (2, "y")
    assert table[2][1].key == "y"
    assert probe.peak["x"] <= 1
    assert probe.peak["y"] <= 2


async def test_grid_custom_key() -> None:
    """grid's key receives (row, col); keying by row caps each row."""
    probe = Probe()

    async def fn(row: int, col: int) -> int:
        probe.enter(row)
        await asyncio.sleep(0)
        probe.leave(row)
        return row * col

    table = await grid([1, 2], [3, 4, 5], fn, key=lambda r, c: r, per_key=1)
    assert [[o.value for o in row] for row in table] == [[3, 4, 5], [6, 8, 10]]
    assert table[1][0].key == 2
    assert max(probe.peak.values()) == 1


# -- progress ------------------------------------------------------------------------------


async def test_progress_callback_counts_and_eta(clock: ManualClock) -> None:
    """The progress callback gets counts per key, elapsed time and an ETA from the clock."""
    reports: list[FanoutProgress] = []

    async def fn(x: int) -> int:
        clock.advance(1.0)
        if x == 3:
            raise ValueError("x")
        return x

    await fanout(
        range(4),
        fn,
        key=lambda x: "even" if x % 2 == 0 else "odd",
        max_concurrent=1,
        progress=reports.append,
        progress_interval=0,
        clock=clock,
    )
    first_done = next(r for r in reports if r.done == 1)
    assert first_done.elapsed == 1.0
    assert first_done.eta == 3.0
    assert first_done.total == 4
    final = reports[-1]
    assert final.finished
    assert (final.done, final.succeeded, final.failed, final.cancelled) == (4, 3, 1, 0)
    assert (final.running, final.queued, final.eta) == (0, 0, 0.0)
    assert final.keys["even"].done == 2
    assert final.keys["odd"].failed == 1


async def test_progress_is_throttled(clock: ManualClock) -> None:
    """With the clock standing still, only the first and the final reports are made."""
    reports: list[FanoutProgress] = []
    await fanout(range(50), double, progress=reports.append, progress_interval=1.0, clock=clock)
    assert len(reports) == 2
    assert reports[0].done == 0
    assert reports[-1].finished


async def test_progress_callback_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A failing progress callback never fails the swarm."""

    def broken(p: FanoutProgress) -> None:
        raise RuntimeError("display broke")

    with caplog.at_level(logging.ERROR, logger="executus.fanout"):
        outcomes = await fanout(range(5), double, progress=broken)
    assert all(o.ok for o in outcomes)
    assert "fanout progress callback" in caplog.text


async def test_progress_true_prints_a_summary_when_not_a_tty(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """progress=True writes one plain summary line to stderr when it is not a terminal."""
    await fanout(range(3), double, progress=True)
    err = capsys.readouterr().err
    assert err.startswith("fanout: 3/3 done: 3 succeeded, 0 failed, 0 cancelled in ")
    assert err.count("\n") == 1


class FakeTTY(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_line_redraws_on_a_tty() -> None:
    """On a TTY, ProgressLine rewrites one line with \\r and ends it on the final report."""
    stream = FakeTTY()
    line = ProgressLine(stream, label="crawl")
    line(FanoutProgress(5, 4, 1, 0, 2, 3, 10, 2.0, 2.0))
    line(FanoutProgress(10, 9, 1, 0, 0, 0, 10, 4.0, 0.0, finished=True))
    text = stream.getvalue()
    assert text.startswith("\rcrawl: 5/10 done | 1 failed | 2 running, 3 queued | 2.0s, ~2.0s left")
    last = text.rsplit("\r", 1)[1]
    assert last.rstrip(" \n") == "crawl: 10/10 done: 9 succeeded, 1 failed, 0 cancelled in 4.0s"
    assert last.endswith("\n")
    assert repr(line) == "ProgressLine(label='crawl')"


# -- lanes ---------------------------------------------------------------------------------


async def test_lane_keys_run_as_lane_jobs_within_the_lane_cap() -> None:
    """Items of a lane key run as jobs of that lane; other keys run directly."""
    probe = Probe()
    in_lane: list[bool] = []

    async def fn(x: int) -> int:
        k = "gpu" if x % 2 else "cpu"
        probe.enter(k)
        in_lane.append(current_job() is not None)
        await asyncio.sleep(0.001)
        probe.leave(k)
        return x

    async with Lane("gpu", 2) as lane:
        outcomes = await fanout(
            range(20),
            fn,
            key=lambda x: "gpu" if x % 2 else "cpu",
            lanes={"gpu": lane},
            max_concurrent=6,
        )
        stats = await lane.stats()
    assert all(o.ok for o in outcomes)
    assert stats.submitted == 10
    assert stats.succeeded == 10
    assert probe.peak["gpu"] <= 2
    assert in_lane.count(True) == 10


async def test_lane_shared_with_interactive_traffic_requeues_preempted_items() -> None:
    """A preemptible low-priority swarm gives way to an interactive job and is requeued."""
    release = asyncio.Event()
    runs: Counter[int] = Counter()

    async def swarm_item(x: int) -> int:
        runs[x] += 1
        await release.wait()
        return x

    async with Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0)) as lane:
        task = asyncio.create_task(
            fanout(range(3), swarm_item, lanes=lane, lane_preemptible=True, max_concurrent=1)
        )
        await settle(10)
        assert runs == Counter({0: 1})

        async def interactive() -> str:
            return "reply"

        assert await lane.run(interactive, priority=10) == "reply"
        release.set()
        outcomes = await task
    assert [o.value for o in outcomes] == [0, 1, 2]
    assert outcomes[0].preemptions == 1
    assert runs[0] == 2


async def test_lane_preemption_reported_when_asked() -> None:
    """on_preempt="report" ends a preempted item with JobPreempted."""
    release = asyncio.Event()

    async def swarm_item(x: int) -> int:
        await release.wait()
        return x

    async with Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0)) as lane:
        task = asyncio.create_task(
            fanout(
                range(2),
                swarm_item,
                lanes={None: lane},
                lane_preemptible=True,
                on_preempt="report",
                lane_priority=-1,
            )
        )
        await settle(10)

        async def interactive() -> str:
            return "reply"

        assert await lane.run(interactive, priority=5) == "reply"
        release.set()
        outcomes = await task
    assert isinstance(outcomes[0].error, JobPreempted)
    assert outcomes[0].preemptions == 1
    assert outcomes[1].ok


async def test_lane_requeue_inside_the_lane() -> None:
    """With Preemption(requeue=True) the lane requeues; the outcome counts the preemption."""
    release = asyncio.Event()

    async def swarm_item(x: int) -> int:
        await release.wait()
        return x

    lane = Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0, requeue=True))
    async with lane:
        task = asyncio.create_task(
            fanout([7], swarm_item, lanes=lane, lane_preemptible=True, on_preempt="report")
        )
        await settle(10)

        async def interactive() -> str:
            return "reply"

        assert await lane.run(interactive, priority=5) == "reply"
        release.set()
        outcomes = await task
    assert outcomes[0].ok
    assert outcomes[0].value == 7
    assert outcomes[0].preemptions == 1


async def test_lane_key_default_cap_is_the_lane_size() -> None:
    """A lane key without a per_key entry keeps at most lane.max_concurrent jobs in flight."""
    gate = GateAll()
    async with Lane("gpu", 2) as lane:
        task = asyncio.create_task(fanout(range(10), gate, lanes=lane, max_concurrent=8))
        await settle(10)
        stats = await lane.stats()
        assert (stats.running, stats.queued) == (2, 0)
        gate.gate.set()
        await task


async def test_cancelling_the_caller_cancels_lane_jobs() -> None:
    """Cancelling fanout cancels its lane jobs, queued or running."""
    gate = GateAll()
    async with Lane("gpu", 1) as lane:
        task = asyncio.create_task(fanout(range(5), gate, lanes=lane, per_key=3, max_concurrent=3))
        await settle(10)
        stats = await lane.stats()
        assert (stats.running, stats.queued) == (1, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await lane.stats()
        assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 3)


async def test_fail_fast_on_a_key_error_while_reading_ahead() -> None:
    """A key error met while topping up the window cancels the item just taken too."""

    def key(x: int) -> int:
        if x == 1:
            raise LookupError("no key")
        return 0

    outcomes = await fanout(range(5), double, key=key, read_ahead=1, fail_fast=True)
    assert len(outcomes) == 5
    assert isinstance(outcomes[1].error, LookupError)
    assert outcomes[0].cancelled
    assert all(o.cancelled for o in outcomes[2:])


@pytest.mark.redis
async def test_redis_lane_keys_use_the_lane_wide_cap(redis_url: str) -> None:
    """A RedisLane serves a key's items through its shared interface, within its cap."""
    pytest.importorskip("redis")
    from executus.redis import RedisLane

    probe = Probe()

    async def fn(x: int) -> int:
        probe.enter("gpu")
        await asyncio.sleep(0.001)
        probe.leave("gpu")
        return x

    async with RedisLane("gpu", redis_url, max_concurrent=2, namespace="fanout") as lane:
        outcomes = await fanout(range(12), fn, lanes={"gpu": lane}, key=lambda x: "gpu")
        stats = await lane.stats()
    assert [o.value for o in outcomes] == list(range(12))
    assert probe.peak["gpu"] <= 2
    assert (stats.submitted, stats.succeeded) == (12, 12)


async def test_lane_keys_share_their_lane_s_cap() -> None:
    """Keys served by one lane keep at most its max_concurrent jobs in it between them."""
    gate = GateAll(key=lambda x: f"user{x % 10}")
    async with Lane("gpu", 2) as lane:
        task = asyncio.create_task(
            fanout(range(40), gate, key=lambda x: f"user{x % 10}", lanes=lane)
        )
        try:
            await settle(10)
            stats = await lane.stats()
            assert (stats.running, stats.queued) == (2, 0)
            interactive = await lane.submit(lambda: asyncio.sleep(0), key="interactive")
            assert interactive.position == 1
        finally:
            gate.gate.set()
        outcomes = await task
    assert [o.value for o in outcomes] == list(range(40))


async def test_a_lane_s_shared_cap_follows_a_resize_and_spares_other_lanes() -> None:
    """A raised lane lets more of its keys' items in at once; another lane counts apart."""
    gate = GateAll(key=lambda x: x % 4)
    async with Lane("gpu", 1) as gpu, Lane("cpu", 2) as cpu:
        lanes: dict[Hashable, Lane] = {0: gpu, 1: gpu, 2: cpu, 3: cpu}
        task = asyncio.create_task(fanout(range(40), gate, key=lambda x: x % 4, lanes=lanes))
        try:
            await settle(10)
            in_lanes = [(s.running, s.queued) for s in (await gpu.stats(), await cpu.stats())]
            assert in_lanes == [(1, 0), (2, 0)]
            await gpu.set_max_concurrent(3)
            gate.gate.set()  # the items running end; the next ones wait again
            gate.gate.clear()
            await settle(20)
            stats = await gpu.stats()
            assert (stats.running, stats.queued) == (3, 0)
        finally:
            gate.gate.set()
        outcomes = await task
    assert [o.value for o in outcomes] == list(range(40))


async def test_a_lane_lowered_while_a_swarm_waits_for_input_is_followed_at_the_next_start() -> None:
    """A lane lowered while the swarm had fewer jobs in it than the old limit: items read
    afterwards keep to the new limit from their first start."""
    go = asyncio.Event()
    release = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        yield 0
        await go.wait()
        for i in range(1, 4):
            yield i

    async def fn(x: int) -> int:
        await release.wait()
        return x

    async with Lane("gpu", 4) as gpu:
        task = asyncio.create_task(fanout(items(), fn, key=lambda x: f"user{x}", lanes=gpu))
        try:
            await settle(10)
            await gpu.set_max_concurrent(1)
            go.set()
            await settle(20)
            stats = await gpu.stats()
            assert (stats.running, stats.queued) == (1, 0)
        finally:
            release.set()
        outcomes = await task
    assert [o.value for o in outcomes] == [0, 1, 2, 3]
