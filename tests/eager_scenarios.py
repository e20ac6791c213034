"""Lanes, fanout and observers on a loop whose task factory starts tasks eagerly.

Python 3.12's ``asyncio.eager_task_factory`` runs a task's first step inside
``create_task``. Each scenario here runs on such a loop and checks that every job ends
exactly once, that no waiter hangs and that nothing runs inside executus's own
bookkeeping. The scenarios need only the standard library and executus, so that
``tests/test_eager_tasks.py`` can also run them under another interpreter:
``python tests/eager_scenarios.py`` runs them all and prints ``ok`` per scenario.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the source tree's executus
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from executus import (
    EventKind,
    JobCancelled,
    JobHandle,
    JobState,
    Lane,
    LaneEvent,
    Preemption,
    Priority,
    current_job,
    fanout,
)

LIMIT = 10.0  # seconds a scenario may take before it counts as hung


async def instant(i: int) -> int:
    return i


async def queue_of_instant_jobs() -> None:
    """Thousands of queued jobs that end in their first step all end, one at a time."""
    lane = Lane("eager", 1)
    gate = asyncio.Event()
    first = await lane.submit(gate.wait)
    handles = [await lane.submit(partial(instant, i)) for i in range(3000)]
    assert first.state is JobState.RUNNING
    gate.set()
    assert [await h for h in handles] == list(range(3000))
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.succeeded) == (0, 0, 3001), stats
    await lane.aclose()


async def free_slots_and_run() -> None:
    """Jobs started straight from submit and ``run`` callers get their values."""
    async with Lane("eager", 4) as lane:
        assert await asyncio.gather(*(lane.run(partial(instant, i)) for i in range(200))) == (
            list(range(200))
        )
        handle = await lane.submit(lambda: instant(7))
        assert handle.state is JobState.RUNNING  # its body has not run yet
        assert await handle == 7


async def job_cancels_itself_first() -> None:
    """A job whose first step cancels it ends CANCELLED, and its slot is free again."""
    lane = Lane("eager", 1)
    mine: list[JobHandle[None]] = []

    async def stop_myself() -> None:
        assert current_job() is not None
        await mine[0].cancel()  # its own handle: submit has returned by its first step

    handle = await lane.submit(stop_myself)
    mine.append(handle)
    try:
        await handle
    except JobCancelled:
        pass
    else:
        raise AssertionError("the job was not cancelled")
    assert handle.state is JobState.CANCELLED
    assert await lane.run(lambda: instant(1)) == 1
    await lane.aclose()


async def job_task_cancelled_from_outside_first() -> None:
    """A job whose task something else cancels before its body began ends CANCELLED,
    wakes its waiters and frees its slot for the next job."""
    lane = Lane("eager", 1)
    before = asyncio.all_tasks()
    first = await lane.submit(lambda: instant(1))
    second = await lane.submit(lambda: instant(2))
    for task in asyncio.all_tasks() - before:
        task.cancel()
    try:
        await first
    except JobCancelled:
        pass
    else:
        raise AssertionError("the job was not cancelled")
    assert await second == 2
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.cancelled, stats.succeeded) == (0, 0, 1, 1), stats
    await lane.aclose()


async def preemption_arrival_from_a_first_step() -> None:
    """A job whose first step submits a preempting job is preempted and requeued."""
    lane = Lane("eager", 1, policy=Priority(), preemption=Preemption(min_runtime=0, requeue=True))
    arrivals: list[Any] = []
    arrived = asyncio.Event()

    async def low() -> str:
        if not arrivals:
            arrivals.append(await lane.submit(lambda: instant(1), priority=5))
            arrived.set()
        await asyncio.sleep(0.01)
        return "low"

    handle = await lane.submit(low, preemptible=True)
    await arrived.wait()
    assert await arrivals[0] == 1
    assert await handle == "low"
    assert handle.preemptions == 1
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.succeeded, stats.preempted) == (0, 0, 2, 1)
    await lane.aclose()


async def observer_sees_every_event() -> None:
    """An async observer gets every event of jobs that end in their first step."""
    seen: list[LaneEvent] = []

    async def observe(event: LaneEvent) -> None:
        seen.append(event)

    lane = Lane("eager", 2)
    lane.add_observer(observe)
    for h in [await lane.submit(partial(instant, i)) for i in range(100)]:
        await h
    await lane.aclose()
    for _ in range(10):
        await asyncio.sleep(0)
    kinds = Counter(e.kind for e in seen)
    assert kinds[EventKind.SUBMITTED] == kinds[EventKind.STARTED] == 100, kinds
    assert kinds[EventKind.FINISHED] == 100, kinds
    assert kinds[EventKind.CLOSED] == 1, kinds


async def fanout_of_instant_items() -> None:
    """fanout under caps runs every item once, items that end in their first step too."""
    outcomes = await fanout(range(2000), instant, key=lambda i: i % 7, max_concurrent=8, per_key=2)
    assert [o.value for o in outcomes] == list(range(2000))


async def fanout_input_error() -> None:
    """An input iterator that raises ends the swarm with its error and no task left."""
    gate = asyncio.Event()
    cancelled: list[int] = []
    bad = RuntimeError("input broke")

    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise bad

    async def held(item: int) -> int:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return item

    before = asyncio.all_tasks()
    raised: BaseException | None = None
    try:
        await fanout(items(), held, max_concurrent=4, read_ahead=1)
    except RuntimeError as exc:
        raised = exc
    assert raised is bad, raised
    left = {t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()}
    assert not left, left
    assert cancelled == [1], cancelled


async def fanout_of_an_async_iterable() -> None:
    """Items read from an async iterable through a lane all run."""

    async def items() -> AsyncIterator[int]:
        for i in range(300):
            await asyncio.sleep(0)
            yield i

    async with Lane("eager", 3) as lane:
        outcomes = await fanout(items(), instant, key=lambda i: i % 5, per_key=1, lanes=lane)
    assert [o.value for o in outcomes] == list(range(300))


SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    queue_of_instant_jobs,
    free_slots_and_run,
    job_cancels_itself_first,
    job_task_cancelled_from_outside_first,
    preemption_arrival_from_a_first_step,
    observer_sees_every_event,
    fanout_of_instant_items,
    fanout_input_error,
    fanout_of_an_async_iterable,
]


async def run_eagerly(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` with the running loop's tasks started eagerly."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(LIMIT):
            await scenario()
    finally:
        loop.set_task_factory(None)


def main() -> int:
    if not hasattr(asyncio, "eager_task_factory"):
        print(f"Python {sys.version_info[:2]} has no eager_task_factory", file=sys.stderr)
        return 2
    failed = 0
    for scenario in SCENARIOS:
        try:
            asyncio.run(run_eagerly(scenario))
        except BaseException as exc:
            failed += 1
            print(f"FAILED {scenario.__name__}: {type(exc).__name__}: {exc}")
        else:
            print(f"ok {scenario.__name__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
