"""A lane whose event loop shuts down (``asyncio.run`` returning) with jobs still on it.

The runner cancels the loop's tasks, then closes its async generators; the lane ends
every job it still holds there, and a later ``asyncio.run`` can use it again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from executus import EventKind, JobCancelled, JobHandle, JobState, Lane, LaneEvent


async def _forever() -> None:
    await asyncio.sleep(3600)


def _fill(lane: Lane, handles: list[JobHandle[Any]], n: int) -> None:
    async def main() -> None:
        handles.extend([await lane.submit(_forever) for _ in range(n)])
        await asyncio.sleep(0.01)  # the first job runs, the rest wait

    asyncio.run(main())
    gc.collect()


def test_jobs_left_on_a_finished_run_end_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """Queued and running jobs end CANCELLED when asyncio.run returns, none starts
    in a task left pending, and the lane serves the next asyncio.run."""
    lane = Lane("gpu", 1)
    handles: list[JobHandle[Any]] = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _fill(lane, handles, 5)
    assert [h.state for h in handles] == [JobState.CANCELLED] * 5
    assert [r.getMessage() for r in caplog.records] == []
    # The runner cancelled the running job; the next one may start in that moment,
    # and is cancelled with the rest; the others never started.
    assert [str(h.exception()) for h in handles] == [
        "job 'gpu-0' in lane 'gpu' was cancelled",
        "job 'gpu-1' in lane 'gpu' was cancelled",
        *(
            f"job {h.id!r} in lane 'gpu' was cancelled: its event loop shut down"
            for h in handles[2:]
        ),
    ]
    assert all(isinstance(h.exception(), JobCancelled) for h in handles)

    async def again() -> str:
        return await lane.run(lambda: asyncio.sleep(0, "next run"))

    assert asyncio.run(again()) == "next run"

    async def stats() -> tuple[int, int, int]:
        s = await lane.stats()
        return s.running, s.queued, s.cancelled

    assert asyncio.run(stats()) == (0, 0, 5)


def test_preemption_arrivals_and_a_deep_queue_end_too() -> None:
    """Every kind of waiting job ends: a preemption arrival and many queued jobs."""
    from executus import Preemption, Priority

    lane = Lane("gpu", 2, policy=Priority(), preemption=Preemption(min_runtime=0, grace=60))
    handles: list[JobHandle[Any]] = []

    async def main() -> None:
        handles.extend([await lane.submit(_forever, preemptible=True) for _ in range(2)])
        await asyncio.sleep(0)
        handles.append(await lane.submit(_forever, priority=9))  # waits for a grace
        handles.extend([await lane.submit(_forever) for _ in range(200)])
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert Counter(h.state for h in handles) == {JobState.CANCELLED: 203}


def test_observers_get_every_last_event(caplog: pytest.LogCaptureFixture) -> None:
    """Async and plain observers get the CANCELLED events of the shutdown, and no
    observer task is left pending with the loop."""
    lane = Lane("gpu", 1)
    seen: list[tuple[str, EventKind]] = []

    async def recorder(event: LaneEvent) -> None:
        # (An observer cancelled by the runner in the middle of an event loses that
        # event; this one finishes each event in one step.)
        seen.append(("async", event.kind))

    def plain(event: LaneEvent) -> None:
        seen.append(("plain", event.kind))

    lane.add_observer(recorder)
    lane.add_observer(plain)
    handles: list[JobHandle[Any]] = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _fill(lane, handles, 4)
    assert [r.getMessage() for r in caplog.records] == []
    for who in ("async", "plain"):
        kinds = Counter(kind for w, kind in seen if w == who)
        assert kinds[EventKind.SUBMITTED] == 4, (who, kinds)
        assert kinds[EventKind.CANCELLED] == 4, (who, kinds)


def test_an_idle_lane_and_a_closed_one_are_left_as_they_are() -> None:
    """A lane with nothing on its loop, or one closed already, is not changed."""
    idle = Lane("idle", 1)
    closed = Lane("closed", 1)

    async def main() -> None:
        assert await idle.run(lambda: asyncio.sleep(0, 1)) == 1
        assert await closed.run(lambda: asyncio.sleep(0, 2)) == 2
        await closed.aclose()

    asyncio.run(main())

    async def after() -> tuple[int, bool]:
        return (await idle.stats()).succeeded, closed.closed

    assert asyncio.run(after()) == (1, True)


def test_a_job_started_as_the_run_stops_ends_cancelled() -> None:
    """A queued job that starts in the loop's last step (a job ended there, as when a
    KeyboardInterrupt stops the run) is cancelled by the runner before its first step:
    it ends CANCELLED, and the lane serves the next run."""
    lane = Lane("gpu", 1)
    handles: list[JobHandle[Any]] = []

    async def main() -> None:
        gate = asyncio.Event()
        handles.append(await lane.submit(gate.wait))
        handles.append(await lane.submit(_forever))
        await asyncio.sleep(0)
        gate.set()  # the first job ends in the step after this one, as the run stops

    asyncio.run(main())
    assert [h.state for h in handles] == [JobState.SUCCEEDED, JobState.CANCELLED]

    async def again() -> str:
        return await lane.run(lambda: asyncio.sleep(0, "next run"))

    assert asyncio.run(again()) == "next run"


def test_a_slot_in_an_async_generator_left_suspended_ends_cancelled() -> None:
    """A slot held by an async generator left suspended when asyncio.run returns ends
    CANCELLED as the runner closes the generator, and the lane serves the next run."""
    lane = Lane("gpu", 1)
    jobs: list[JobHandle[None]] = []
    left: list[AsyncGenerator[int, None]] = []

    async def stream() -> AsyncGenerator[int, None]:
        async with lane.slot() as job:
            jobs.append(job)
            yield 1
            yield 2

    async def main() -> None:
        chunks = stream()
        left.append(chunks)  # kept alive: the runner's shutdown_asyncgens closes it
        assert await chunks.__anext__() == 1

    asyncio.run(main())
    assert jobs[0].state is JobState.CANCELLED
    assert isinstance(jobs[0].exception(), JobCancelled)

    async def again() -> str:
        return await lane.run(lambda: asyncio.sleep(0, "next run"))

    assert asyncio.run(again()) == "next run"


def test_an_async_observer_finishes_the_events_it_handles_at_shutdown() -> None:
    """An async observer that awaits while handling each event (a write) gets every
    CANCELLED event of the shutdown, the one it is handling as the lane closes included."""
    lane = Lane("gpu", 1)
    seen: list[EventKind] = []

    async def writer(event: LaneEvent) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(event.kind)

    lane.add_observer(writer)
    handles: list[JobHandle[Any]] = []
    _fill(lane, handles, 3)
    assert Counter(seen)[EventKind.CANCELLED] == 3, seen


# A lane dropped between two runs of a loop the program drives itself, then the loop
# closed without ``shutdown_asyncgens()``.
DROPPED = """
import asyncio, gc
from executus import Lane

async def use() -> str:
    lane = Lane("x", 1)
    return await lane.run(lambda: asyncio.sleep(0, "ok"))

loop = asyncio.new_event_loop()
print(loop.run_until_complete(use()))
gc.collect()
loop.close()
"""


def test_a_lane_dropped_on_a_loop_closed_without_shutdown_leaves_no_pending_task() -> None:
    """A lane collected while its loop lives, on a loop later closed without
    shutdown_asyncgens(), leaves no task destroyed pending (its watch closes with it)."""
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", DROPPED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "ok\n", "")
