"""Edge cases of the in-process lane: cancellation and preemption races, closing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executus import (
    FairShare,
    JobCancelled,
    JobHandle,
    JobPreempted,
    JobState,
    Lane,
    Preemption,
)
from executus.testing import ManualClock
from tests.helpers import Gate, granted_not_entered, newer_pythons, settle, value


async def test_a_job_being_cancelled_is_not_requeued_by_a_later_preemption() -> None:
    """A running job whose cancel is in progress ends CANCELLED even if an arrival preempts it."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, requeue=True))
    unwind = asyncio.Event()
    runs = 0

    async def slow_to_stop() -> None:
        nonlocal runs
        runs += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await unwind.wait()
            raise

    victim = await lane.submit(slow_to_stop, preemptible=True)
    await settle()
    canceller = asyncio.create_task(victim.cancel())
    await settle()
    arrival = await lane.submit(Gate(), priority=5)
    unwind.set()
    await settle()
    assert victim.state is JobState.CANCELLED
    assert await canceller is True
    assert runs == 1
    assert arrival.state is JobState.RUNNING
    await lane.aclose(drain=False)


async def test_granted_slot_cancelled_by_close_raises_job_cancelled() -> None:
    """A slot granted but not yet entered when the lane force-closes raises JobCancelled."""
    lane = Lane("x", 1)
    task = await granted_not_entered(lane)
    await lane.aclose(drain=False)
    with pytest.raises(JobCancelled):
        await task
    assert (await lane.stats()).running == 0


async def test_granted_slot_preempted_before_entering_raises_job_preempted() -> None:
    """A slot preempted before its task resumed raises JobPreempted, not CancelledError."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    task = await granted_not_entered(lane, preemptible=True)
    arrival = await lane.submit(Gate(), priority=1)
    with pytest.raises(JobPreempted):
        await task
    await settle()
    assert arrival.state is JobState.RUNNING
    await lane.aclose(drain=False)


async def test_aclose_inside_a_job_does_not_wait_for_itself() -> None:
    """A job that closes its own lane (draining) returns once the other jobs have ended."""
    lane = Lane("x", 2)
    other = Gate()
    await lane.submit(other)

    async def closer() -> str:
        await lane.aclose()
        return "closed"

    handle = await lane.submit(closer)
    await settle()
    other.release()
    assert await asyncio.wait_for(handle, 1) == "closed"


async def test_victim_spared_when_its_preemptor_starts_elsewhere(clock: ManualClock) -> None:
    """A victim in its grace period is not cancelled once the arrival started on a freed slot."""
    lane = Lane("gpu", 2, preemption=Preemption(min_runtime=0, grace=10), clock=clock)
    victim_gate = Gate()
    victim = await lane.submit(victim_gate, preemptible=True)
    other = Gate()
    await lane.submit(other)
    await settle()
    arrival = await lane.submit(Gate(), priority=1)
    assert victim.preempt_requested
    other.release()
    await settle()
    assert arrival.state is JobState.RUNNING
    clock.advance(11)
    await settle()
    assert victim.state is JobState.RUNNING
    await lane.aclose(drain=False)


async def test_double_lane_cancel_of_a_slot_body_raises_job_cancelled() -> None:
    """A slot body preempted and then force-closed raises JobCancelled, not CancelledError."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0))
    inside = asyncio.Event()
    unwind = asyncio.Event()

    async def batch() -> None:
        async with lane.slot(preemptible=True):
            inside.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await unwind.wait()
                raise

    task = asyncio.create_task(batch())
    await inside.wait()
    await lane.submit(Gate(), priority=1)
    await settle()
    closing = asyncio.create_task(lane.aclose(drain=False))
    await settle()
    unwind.set()
    with pytest.raises(JobCancelled, match=r"the lane was closed"):
        await task
    await closing


async def test_victim_spared_when_its_preemptor_is_cancelled(clock: ManualClock) -> None:
    """A victim in its grace period keeps running once the arrival that chose it is cancelled."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=10), clock=clock)
    victim = await lane.submit(Gate(), preemptible=True)
    await settle()
    arrival = await lane.submit(Gate(), priority=1)
    assert victim.preempt_requested
    assert await arrival.cancel() is True
    assert not victim.preempt_requested
    clock.advance(11)
    await settle()
    assert victim.state is JobState.RUNNING
    assert (await lane.stats()).preempted == 0
    await lane.aclose(drain=False)


def test_fair_share_weights_must_be_a_mapping() -> None:
    """FairShare refuses weights that are not a mapping, naming the value."""
    with pytest.raises(
        TypeError,
        match=r"^weights must be a mapping of key -> weight or None, got \[\('a', 1\.0\)\]$",
    ):
        FairShare(weights=[("a", 1.0)])  # type: ignore[arg-type]


async def test_a_queued_job_runs_in_its_submitters_context() -> None:
    """A job sees the context variables of the code that submitted it, not those of the
    job whose end started it, and a requeued rerun does not see its first run's changes."""
    import contextvars

    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    seen: list[tuple[str, str]] = []
    first_run = asyncio.Event()
    release = asyncio.Event()

    async def job(name: str) -> None:
        seen.append((name, user.get()))
        user.set(f"changed by {name}")
        if name == "alice" and not first_run.is_set():
            first_run.set()
            await release.wait()

    async with Lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=0, requeue=True)) as lane:

        async def submit_as(name: str, **options: Any) -> JobHandle[None]:
            user.set(name)  # this task's own context: the caller of submit
            return await lane.submit(lambda: job(name), **options)

        alice = await asyncio.create_task(submit_as("alice", preemptible=True))
        await first_run.wait()
        bob = await asyncio.create_task(submit_as("bob", priority=1))
        await bob
        await alice
    assert seen == [("alice", "alice"), ("bob", "bob"), ("alice", "alice")]


async def test_context_values_whose_comparison_raises_are_kept_apart() -> None:
    """Jobs submitted under context values whose == raises still each see their own."""
    import contextvars

    class Strict:
        def __init__(self, name: str) -> None:
            self.name = name

        def __eq__(self, other: object) -> bool:
            raise TypeError("no comparing")

        __hash__ = object.__hash__

    var: contextvars.ContextVar[Strict | None] = contextvars.ContextVar("strict", default=None)
    seen: list[str] = []

    async def job() -> None:
        value = var.get()
        seen.append("none" if value is None else value.name)

    async with Lane("gpu", 1) as lane:
        gate = Gate()
        first = await lane.submit(gate)
        await settle()
        handles = []
        for name in ("a", "b", "c"):
            var.set(Strict(name))
            handles.append(await lane.submit(job))
        gate.release()
        await first
        for h in handles:
            await h
    assert seen == ["a", "b", "c"]


async def test_jobs_submitted_under_equal_but_distinct_context_values_see_their_own() -> None:
    """Two requests that each set a variable to their own empty list get jobs that see
    their own list, not the other's (equal values are not the same values)."""
    import contextvars

    collected: contextvars.ContextVar[list[str]] = contextvars.ContextVar("collected")

    async def request(lane: Lane, name: str) -> list[str]:
        mine: list[str] = []
        collected.set(mine)

        async def job() -> None:
            collected.get().append(name)

        await lane.run(job)
        return mine

    async with Lane("gpu", 1) as lane:
        lists = await asyncio.gather(request(lane, "a"), request(lane, "b"))
    assert lists == [["a"], ["b"]]


async def test_context_values_are_never_compared_with_eq() -> None:
    """A submit compares the context's values by identity: no value's __eq__ is called."""
    import contextvars

    compared: list[str] = []

    class Loud:
        def __eq__(self, other: object) -> bool:
            compared.append("eq")
            return True

        __hash__ = object.__hash__

    var: contextvars.ContextVar[Loud] = contextvars.ContextVar("loud")
    async with Lane("gpu", 1) as lane:
        for _ in range(3):
            var.set(Loud())
            await lane.run(value(None))
    assert compared == []


def test_a_lane_moves_to_another_event_loop_once_its_jobs_have_ended() -> None:
    """A lane whose jobs have all ended serves the next event loop (asyncio.run twice)."""
    lane = Lane("x", 1)

    async def main() -> object:
        return await lane.run(value(42))

    assert asyncio.run(main()) == 42
    assert asyncio.run(main()) == 42
    stats = asyncio.run(lane.stats())
    assert (stats.submitted, stats.succeeded, stats.running) == (2, 2, 0)


def test_a_submit_from_another_loop_while_jobs_are_live_is_refused() -> None:
    """A submit from a second event loop while the first loop's jobs are live raises
    RuntimeError and changes nothing; the first loop's job still runs."""
    lane = Lane("x", 1)
    first = asyncio.new_event_loop()
    try:
        gate = Gate()
        handle = first.run_until_complete(lane.submit(gate))

        async def elsewhere() -> None:
            await lane.submit(value(1))

        with pytest.raises(
            RuntimeError,
            match=r"^lane 'x' has jobs on another event loop: a lane serves one event loop "
            r"at a time \(it can move to another once its jobs have ended\)$",
        ):
            asyncio.run(elsewhere())
        stats = first.run_until_complete(lane.stats())
        assert (stats.submitted, stats.running, stats.queued) == (1, 1, 0)

        async def finish() -> object:
            await settle()
            gate.release(7)
            return await handle

        assert first.run_until_complete(finish()) == 7
    finally:
        first.close()


async def test_a_job_whose_task_is_cancelled_from_outside_before_its_first_step_ends() -> None:
    """A job whose task something else cancels before its first step (a shutdown handler
    cancelling every task) ends CANCELLED, wakes its waiters and frees its slot."""
    lane = Lane("gpu", 1)
    before = asyncio.all_tasks()
    first = await lane.submit(value("first"))
    second = await lane.submit(value("second"))
    for task in asyncio.all_tasks() - before:
        task.cancel()
    with pytest.raises(JobCancelled, match=r"^job 'gpu-0' in lane 'gpu' was cancelled$"):
        await first
    assert await second == "second"
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.cancelled, stats.succeeded) == (0, 0, 1, 1)
    await lane.aclose()


# Python 3.13's ``uncancel()`` takes back a cancel not yet delivered: the scenario runs
# under this interpreter and every newer one on the machine.
UNCANCELLED = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from executus import JobState, Lane

async def main():
    lane = Lane("x", 1)
    ran = []

    async def body(name):
        ran.append(name)
        await asyncio.sleep(0)
        return name

    before = asyncio.all_tasks()
    first = await lane.submit(lambda: body("a"))
    second = await lane.submit(lambda: body("b"))
    (task,) = asyncio.all_tasks() - before
    task.cancel()
    task.uncancel()
    assert await second == "b"
    await asyncio.sleep(0.01)
    assert first.state is JobState.CANCELLED, first.state
    assert ran == ["b"], ran
    print("ok")

asyncio.run(asyncio.wait_for(main(), 10))
"""


def test_a_job_ended_before_its_first_step_stays_ended_when_its_cancel_is_taken_back() -> None:
    """A job task cancelled before its first step (the job ends CANCELLED, the next job
    takes its slot) never runs the body when the cancel is taken back with uncancel()."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    for exe in [sys.executable, *newer_pythons()]:
        run = subprocess.run(
            [exe, "-I", "-c", UNCANCELLED, src],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (run.returncode, run.stdout) == (0, "ok\n"), (exe, run.stderr[-2000:])
