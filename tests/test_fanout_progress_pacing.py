"""fanout and run progress: backpressure and event-loop fairness, counts after
an input error or a lane requeue, a flush from inside a delivery, clock checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from executus import FanoutProgress, Lane, Preemption, Priority, fanout, fanout_iter
from executus.deliver import Recorder
from executus.progress import ProgressReporter
from executus.testing import ManualClock

from .helpers import Gate, settle


def _bad_key(x: int) -> int:
    raise ValueError(f"no key for {x}")


async def _same(x: int) -> int:
    return x


class _Ticker:
    """Counts the steps another task gets while a swarm runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        self.ticks = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _Counted:
    """An input of ``n`` ints, sync or async (never suspending), that counts its reads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def sync(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i

    async def asynchronous(self) -> AsyncIterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i

    def make(self, kind: str) -> Any:
        return self.sync() if kind == "sync" else self.asynchronous()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_fanout_iter_reads_no_further_while_outcomes_of_failed_keys_wait(kind: str) -> None:
    """Outcomes of items whose key fails count against fanout_iter's backpressure."""
    source = _Counted(1000)
    it = fanout_iter(source.make(kind), _same, key=_bad_key, max_concurrent=2, read_ahead=4)
    async with contextlib.aclosing(it):
        first = await anext(it)
        await settle(20)
        assert isinstance(first.error, ValueError)
        assert source.read <= 4 + 4 + 2  # the window, the outcome bound, a little slack
        rest = [o async for o in it]
    assert len(rest) == 999
    assert sorted(o.index for o in [first, *rest]) == list(range(1000))


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_items_whose_key_fails_do_not_hold_the_event_loop(kind: str) -> None:
    """Reading a run of items whose key fails lets other tasks run between window-fulls."""
    source = _Counted(5000)
    async with _Ticker() as ticker:
        outcomes = await fanout(source.make(kind), _same, key=_bad_key, read_ahead=16)
        ticks = ticker.ticks
    assert len(outcomes) == 5000
    assert all(isinstance(o.error, ValueError) for o in outcomes)
    assert ticks >= 10


async def test_items_that_never_suspend_let_other_tasks_run() -> None:
    """A swarm of instant items yields to the event loop instead of running in one step."""
    async with _Ticker() as ticker:
        outcomes = await fanout(range(5000), _same, max_concurrent=1)
        ticks = ticker.ticks
    assert [o.value for o in outcomes] == list(range(5000))
    assert ticks >= 10


async def test_a_timeout_around_a_swarm_of_instant_items_fires_in_time() -> None:
    """asyncio.timeout cancels a long swarm of instant items when it expires, not at its end."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await fanout(iter(range(300_000)), _same, max_concurrent=2)
    assert loop.time() - t0 < 0.25


async def test_final_progress_shows_nothing_running_after_the_input_raises() -> None:
    """An item taken just as the input raises is reported queued, not left running."""
    reports: list[FanoutProgress] = []

    def source() -> Iterator[int]:
        yield 0
        yield 1
        raise RuntimeError("input broke")

    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        return x

    with pytest.raises(RuntimeError, match="input broke"):
        await fanout(source(), fn, max_concurrent=1, read_ahead=1, progress=reports.append)
    final = reports[-1]
    assert final.finished
    assert (final.running, final.done, final.queued) == (0, 1, 1)
    assert final.keys[None].running == 0


class _FlushesInside:
    """A deliverer that, while delivering ``"step 1"``, makes a coalesced update and
    then asks its reporter to flush (or close)."""

    def __init__(self, how: str) -> None:
        self.rec = Recorder()
        self.reporter: ProgressReporter | None = None
        self._how = how

    async def deliver(self, target: str, message: str) -> None:
        await self.rec.deliver(target, message)
        if message == "step 1":
            assert self.reporter is not None
            await self.reporter.step(2)  # inside the interval: waits for its timer
            if self._how == "flush":
                await self.reporter.flush()
            else:
                await self.reporter.aclose()


@pytest.mark.parametrize("how", ["flush", "aclose"])
async def test_flush_from_inside_a_delivery_delivers_the_pending_update_after_it(
    how: str,
) -> None:
    """flush() or aclose() called from inside deliver still sends what is pending."""
    clock = ManualClock()
    sink = _FlushesInside(how)
    reporter = ProgressReporter("t", sink, interval=2.0, clock=clock)
    sink.reporter = reporter
    await reporter.step(1)
    await settle()
    assert sink.rec.messages() == ["step 1", "step 2"]
    assert clock.pending_timers == 0


async def test_idle_workers_leave_when_the_input_ends_on_items_whose_key_fails() -> None:
    """An input that ends after items whose key failed still lets idle workers leave."""
    keys = {0: 0, 1: 1, 2: 0}

    def key(x: int) -> int:
        return keys[x]  # item 3 has no key

    async def fn(x: int) -> int:
        for _ in range(2 if x == 0 else 1 if x == 2 else 0):
            await asyncio.sleep(0)
        return x

    async with asyncio.timeout(1):
        outcomes = await fanout(
            iter(range(4)), fn, key=key, max_concurrent=2, per_key={0: 1}, read_ahead=1
        )
    assert [o.value for o in outcomes] == [0, 1, 2, None]
    assert isinstance(outcomes[3].error, KeyError)


async def test_an_item_cancelled_after_its_lane_requeued_it_counts_that_preemption() -> None:
    """A lane item cancelled after its lane requeued it counts that preemption."""
    gpu = Lane("gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0, requeue=True))
    fail_now = asyncio.Event()

    async def fn(x: int) -> int:
        if x == 0:
            await asyncio.Event().wait()  # runs until preempted, then cancelled
        await fail_now.wait()
        raise ValueError("item 1 fails")

    async with gpu:
        swarm = asyncio.create_task(
            fanout(
                [0, 1],
                fn,
                key=lambda x: "gpu" if x == 0 else "cpu",
                lanes={"gpu": gpu},
                lane_preemptible=True,
                fail_fast=True,
            )
        )
        await settle()
        interactive = Gate()
        handle = await gpu.submit(interactive, priority=10)
        await settle()
        assert interactive.running  # the swarm's job went back to the lane's queue
        fail_now.set()
        outcomes = await swarm
        interactive.release()
        await handle
    assert outcomes[0].cancelled
    assert outcomes[0].preemptions == 1
    assert isinstance(outcomes[1].error, ValueError)


_NOT_A_CLOCK = "clock must be a Clock (monotonic, time and call_later), got 'system'"


async def test_fanout_refuses_a_clock_that_is_not_one() -> None:
    """fanout and fanout_iter refuse a bad clock up front, naming the rule and the value."""
    with pytest.raises(TypeError) as info:
        await fanout([1], _same, clock="system")  # type: ignore[arg-type]
    assert str(info.value) == _NOT_A_CLOCK
    with pytest.raises(TypeError) as info:
        fanout_iter([1], _same, clock="system")  # type: ignore[arg-type]
    assert str(info.value) == _NOT_A_CLOCK


def test_progress_reporter_refuses_a_clock_that_is_not_one() -> None:
    """ProgressReporter refuses a bad clock when built, not at its first update."""
    with pytest.raises(TypeError) as info:
        ProgressReporter("t", clock="system")  # type: ignore[arg-type]
    assert str(info.value) == _NOT_A_CLOCK
