"""The lane contract (docs/lanes.md), checked on every backend: Lane and RedisLane.

Each test runs twice, through the ``make_lane`` fixture (ids ``memory`` and ``redis``).
No fake clock: a RedisLane reads the Redis server's clock, so the tests avoid time
dependence instead (preemption with ``min_runtime=0``, estimates before any run time is
recorded) and wait for expected states with bounded polls (``until``). Where RedisLane
must differ, the test says so and why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from datetime import UTC
from typing import Any

import pytest

from executus import (
    FIFO,
    DuplicateJob,
    FairShare,
    JobCancelled,
    JobHandle,
    JobPreempted,
    JobState,
    LaneBusy,
    LaneClosed,
    NotQueued,
    Preemption,
    Priority,
    current_job,
)
from tests.helpers import Gate, value

from .conftest import MakeLane
from .helpers import AnyLane, outcome, recorder, refresh, stats_until, until

pytestmark = pytest.mark.timeout(30)


async def started(lane: AnyLane, gate: Gate, **options: Any) -> JobHandle[object]:
    """Submit ``gate`` and wait until its body runs."""
    handle: JobHandle[object] = await lane.submit(gate, **options)
    await until(lambda: gate.running)
    return handle


# -- starting and queueing -----------------------------------------------------------------


async def test_free_slot_starts_at_once(make_lane: MakeLane) -> None:
    """With a free slot a job is RUNNING on return, position 0 and eta 0.0."""
    lane = await make_lane("x", 2)
    gate = Gate()
    handle = await lane.submit(gate, key="u", priority=3)
    assert handle.state is JobState.RUNNING
    assert (handle.position, handle.eta) == (0, 0.0)
    assert (handle.id, handle.key, handle.priority, handle.lane) == (handle.id, "u", 3, "x")
    await until(lambda: gate.running)
    gate.release("ok")
    assert await handle == "ok"
    assert handle.state is JobState.SUCCEEDED
    assert (handle.position, handle.eta) == (0, 0.0)


async def test_full_lane_queues_with_position_and_eta(make_lane: MakeLane) -> None:
    """With every slot taken a job is QUEUED with its place and an ETA > 0."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    first = await lane.submit(Gate())
    second = await lane.submit(Gate())
    assert (first.state, second.state) == (JobState.QUEUED, JobState.QUEUED)
    assert (first.position, second.position) == (1, 2)
    assert 0 < first.eta <= second.eta
    assert not first.done()


async def test_timestamps_are_aware_utc_and_ordered(make_lane: MakeLane) -> None:
    """submitted_at, started_at and finished_at are aware UTC datetimes, in order."""
    lane = await make_lane("x", 1)
    handle = await lane.submit(value(1))
    assert handle.submitted_at.tzinfo is UTC
    await handle
    assert handle.started_at is not None
    assert handle.finished_at is not None
    assert handle.submitted_at <= handle.started_at <= handle.finished_at


# -- queue order ---------------------------------------------------------------------------


async def play(lane: AnyLane, jobs: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """Queue ``jobs`` (submit options + ``name``) behind a blocker on a one-slot lane.

    Returns their positions once all are queued, and the order in which they started.
    """
    blocker = Gate()
    first = await started(lane, blocker, key="z")
    log: list[str] = []
    handles = []
    for options in jobs:
        name = options.pop("name")
        handles.append(await lane.submit(recorder(log, name), **options))
    await refresh(lane)
    positions = [h.position for h in handles]
    blocker.release()
    await first
    async with asyncio.timeout(10):
        await asyncio.gather(*handles)
    return positions, log


async def test_fifo_order(make_lane: MakeLane) -> None:
    """FIFO starts jobs in arrival order whatever their priority."""
    lane = await make_lane("x", 1, policy=FIFO())
    jobs = [{"name": f"j{i}", "priority": p} for i, p in enumerate([0, 5, -1, 3])]
    positions, order = await play(lane, jobs)
    assert positions == [1, 2, 3, 4]
    assert order == ["j0", "j1", "j2", "j3"]


async def test_priority_order(make_lane: MakeLane) -> None:
    """Priority starts higher priorities first, in arrival order within a level."""
    lane = await make_lane("x", 1, policy=Priority())
    jobs = [
        {"name": "a", "priority": 0},
        {"name": "b", "priority": 2},
        {"name": "c", "priority": 1},
        {"name": "d", "priority": 2},
        {"name": "e", "priority": 0},
    ]
    positions, order = await play(lane, jobs)
    assert positions == [4, 1, 3, 2, 5]
    assert order == ["b", "d", "c", "a", "e"]


async def test_fair_share_order(make_lane: MakeLane) -> None:
    """FairShare alternates between backlogged keys; ties go to the key seen first."""
    lane = await make_lane("x", 1, policy=FairShare())
    jobs = [{"name": f"a{i}", "key": "a"} for i in range(4)]
    jobs += [{"name": f"b{i}", "key": "b"} for i in range(2)]
    positions, order = await play(lane, jobs)
    assert positions == [1, 3, 5, 6, 2, 4]
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3"]


async def test_fair_share_weights(make_lane: MakeLane) -> None:
    """A key of weight 2 gets two starts for every start of a key of weight 1."""
    lane = await make_lane("x", 1, policy=FairShare(weights={"pro": 2}))
    jobs = [{"name": f"p{i}", "key": "pro"} for i in range(4)]
    jobs += [{"name": f"f{i}", "key": "free"} for i in range(4)]
    _, order = await play(lane, jobs)
    assert order == ["p0", "f0", "p1", "p2", "f1", "p3", "f2", "f3"]


async def test_fair_share_charges_jobs_that_start_at_once(make_lane: MakeLane) -> None:
    """A key whose job started without queueing has used its turn: another key goes next."""
    lane = await make_lane("x", 1, policy=FairShare())
    log: list[str] = []
    blocker = Gate()
    first = await started(lane, blocker, key="a")  # key a starts at once
    a1 = await lane.submit(recorder(log, "a1"), key="a")
    b1 = await lane.submit(recorder(log, "b1"), key="b")
    await refresh(lane)
    assert (b1.position, a1.position) == (1, 2)
    blocker.release()
    await first
    await asyncio.gather(a1, b1)
    assert log == ["b1", "a1"]


async def test_fair_share_charges_a_preemptor_whose_key_is_backlogged(
    make_lane: MakeLane,
) -> None:
    """A preemption arrival pays its key one start: the key's queued jobs move one turn
    back, behind a key that queued later."""
    lane = await make_lane("x", 1, policy=FairShare(), preemption=Preemption(min_runtime=0))
    log: list[str] = []
    victim = await started(lane, Gate(), key="x", preemptible=True)
    a1 = await lane.submit(recorder(log, "a1"), key="a")
    b1 = await lane.submit(recorder(log, "b1"), key="b")
    await refresh(lane)
    assert (a1.position, b1.position) == (1, 2)
    urgent = Gate()
    arrival = await lane.submit(urgent, key="a", priority=5)
    await until(lambda: urgent.running)
    assert victim.state is JobState.PREEMPTED
    assert arrival.state is JobState.RUNNING
    await refresh(lane)
    assert (b1.position, a1.position) == (1, 2)
    urgent.release()
    await asyncio.gather(a1, b1)
    assert log == ["b1", "a1"]


async def test_fair_share_charges_a_preemptor_whose_key_is_idle(make_lane: MakeLane) -> None:
    """A preemption arrival of a key with nothing queued pays its key one start: that
    key's next job queues behind another key's second job."""
    lane = await make_lane("x", 1, policy=FairShare(), preemption=Preemption(min_runtime=0))
    log: list[str] = []
    victim = await started(lane, Gate(), key="x", preemptible=True)
    b1 = await lane.submit(recorder(log, "b1"), key="b")
    b2 = await lane.submit(recorder(log, "b2"), key="b")
    urgent = Gate()
    arrival = await lane.submit(urgent, key="a", priority=5)
    await until(lambda: urgent.running)
    assert victim.state is JobState.PREEMPTED
    assert arrival.state is JobState.RUNNING
    a1 = await lane.submit(recorder(log, "a1"), key="a")
    await refresh(lane)
    assert (b1.position, b2.position, a1.position) == (1, 2, 3)
    urgent.release()
    await asyncio.gather(a1, b1, b2)
    assert log == ["b1", "b2", "a1"]


async def test_fair_share_position_is_the_true_place(make_lane: MakeLane) -> None:
    """A flood by one key does not push back another key's newcomer: it is next but one."""
    lane = await make_lane("x", 1, policy=FairShare())
    log: list[str] = []
    blocker = Gate()
    first = await started(lane, blocker, key="z")
    flood = [await lane.submit(recorder(log, f"a{i}"), key="a") for i in range(10)]
    newcomer = await lane.submit(recorder(log, "b"), key="b")
    assert newcomer.position == 2  # behind a0 only (fresh from the submit on both)
    # The flood's positions changed when the newcomer arrived: a RedisLane reads them
    # from its last reply, so it refreshes first (the in-process Lane computes them live).
    await refresh(lane)
    assert [h.position for h in flood] == [1, *range(3, 12)]
    blocker.release()
    await first
    await asyncio.gather(*flood, newcomer)
    assert log[:3] == ["a0", "b", "a1"]


# -- awaiting ------------------------------------------------------------------------------


async def test_await_returns_the_value_to_every_waiter(make_lane: MakeLane) -> None:
    """Every task awaiting a handle gets the job's value."""
    lane = await make_lane("x", 1)
    gate = Gate()
    handle = await started(lane, gate)
    waiters = [asyncio.create_task(outcome(handle)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.release(42)
    assert await asyncio.gather(*waiters) == [42, 42, 42]
    assert await handle == 42
    assert handle.result() == 42
    assert handle.exception() is None


async def test_await_raises_the_jobs_own_exception(make_lane: MakeLane) -> None:
    """Awaiting a failed job raises the same exception object; the slot is freed."""
    lane = await make_lane("x", 1)
    error = ValueError("boom")

    async def fails() -> None:
        raise error

    handle = await lane.submit(fails)
    with pytest.raises(ValueError, match=r"^boom$") as info:
        await handle
    assert info.value is error
    assert handle.state is JobState.FAILED
    assert handle.exception() is error
    assert await lane.run(value(2)) == 2


async def test_fn_returning_a_non_awaitable_fails_the_job(make_lane: MakeLane) -> None:
    """A fn that returns a plain value ends the job FAILED with a clear TypeError."""
    lane = await make_lane("x", 1)
    handle: JobHandle[object] = await lane.submit(lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"^fn must return an awaitable, got int: 3$"):
        await handle
    assert handle.state is JobState.FAILED
    assert await lane.run(value(1)) == 1


async def test_cancelling_an_awaiter_leaves_the_job_running(make_lane: MakeLane) -> None:
    """A task awaiting a handle does not own the job: cancelling it keeps the job."""
    lane = await make_lane("x", 1)
    gate = Gate()
    handle = await started(lane, gate)
    waiter = asyncio.create_task(outcome(handle))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert handle.state is JobState.RUNNING
    gate.release("still here")
    assert await handle == "still here"


async def test_cancel_racing_the_end_of_a_job_leaves_it_succeeded(make_lane: MakeLane) -> None:
    """A cancel that arrives as the body returns finds the job done: it succeeds, once."""
    lane = await make_lane("x", 1)
    cancels: list[asyncio.Task[bool]] = []
    handles: list[JobHandle[object]] = []

    async def body() -> str:
        # Cancel on the next loop turn: while the lane is ending the job.
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: cancels.append(asyncio.ensure_future(handles[0].cancel())))
        return "done"

    handles.append(await lane.submit(body))
    assert await handles[0] == "done"
    await until(lambda: bool(cancels) and cancels[0].done())
    assert cancels[0].result() is False
    assert handles[0].state is JobState.SUCCEEDED
    assert await lane.run(value(2)) == 2  # the slot was given back
    await stats_until(lane, lambda s: (s.running, s.cancelled, s.succeeded) == (0, 0, 2))


# -- run() owns its job --------------------------------------------------------------------


async def test_run_returns_the_value(make_lane: MakeLane) -> None:
    """run() submits and returns the job's value."""
    lane = await make_lane("x", 2)
    assert await lane.run(value(11), key="k") == 11


async def test_cancelling_run_cancels_its_running_job(make_lane: MakeLane) -> None:
    """Cancelling the caller of run() cancels the job it owns and frees the slot."""
    lane = await make_lane("x", 1)
    gate = Gate()
    caller = asyncio.create_task(lane.run(gate, job_id="owned"))
    await until(lambda: gate.running)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await until(lambda: gate.cancelled)
    assert await lane.run(value(2)) == 2  # the only slot was given back
    await stats_until(lane, lambda s: (s.running, s.cancelled, s.succeeded) == (0, 1, 1))


async def test_cancelling_run_while_queued_removes_the_job(make_lane: MakeLane) -> None:
    """Cancelling run() while its job waits removes the job from the queue."""
    lane = await make_lane("x", 1)
    blocker = Gate()
    first = await started(lane, blocker)
    queued = Gate()
    caller = asyncio.create_task(lane.run(queued))
    await stats_until(lane, lambda s: s.queued == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await stats_until(lane, lambda s: (s.queued, s.cancelled) == (0, 1))
    blocker.release()
    await first
    assert await lane.run(value("next")) == "next"
    assert queued.started == 0


# -- slot() --------------------------------------------------------------------------------


async def test_slot_runs_the_body_as_a_job(make_lane: MakeLane) -> None:
    """slot() holds a slot for the body, current_job() works, and the slot is freed."""
    lane = await make_lane("x", 1)
    async with lane.slot(key="u", job_id="s", priority=2) as job:
        ctx = current_job()
        assert ctx is not None
        assert (ctx.id, ctx.lane, ctx.key, ctx.priority) == ("s", "x", "u", 2)
        assert job.state is JobState.RUNNING
        assert (await lane.stats()).running == 1
    assert job.state is JobState.SUCCEEDED
    assert current_job() is None
    stats = await lane.stats()
    assert (stats.running, stats.succeeded) == (0, 1)


async def test_slot_waits_its_turn(make_lane: MakeLane) -> None:
    """A slot request queues under the policy like any job and enters when granted."""
    lane = await make_lane("x", 1)
    gate = Gate()
    first = await started(lane, gate)
    entered = asyncio.Event()

    async def user() -> None:
        async with lane.slot():
            entered.set()

    task = asyncio.create_task(user())
    await stats_until(lane, lambda s: s.queued == 1)
    assert not entered.is_set()
    gate.release()
    await first
    async with asyncio.timeout(5):
        await task
    assert entered.is_set()
    assert (await lane.stats()).running == 0


async def test_slot_body_error_fails_the_job_and_frees_the_slot(make_lane: MakeLane) -> None:
    """An exception in the body ends the slot job FAILED, propagates, and frees the slot."""
    lane = await make_lane("x", 1)
    with pytest.raises(KeyError):
        async with lane.slot() as job:
            raise KeyError("k")
    assert job.state is JobState.FAILED
    assert isinstance(job.exception(), KeyError)
    assert await lane.run(value(1)) == 1
    assert (await lane.stats()).failed == 1


async def test_cancelling_a_waiting_slot_withdraws_it(make_lane: MakeLane) -> None:
    """Cancelling a task waiting for a slot withdraws the request; nothing leaks."""
    lane = await make_lane("x", 1)
    gate = Gate()
    first = await started(lane, gate)

    async def user() -> None:
        async with lane.slot():
            raise AssertionError("must not run")

    task = asyncio.create_task(user())
    await stats_until(lane, lambda s: s.queued == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await lane.stats()
    assert (stats.queued, stats.cancelled) == (0, 1)
    gate.release()
    await first
    assert await lane.run(value(3)) == 3


async def test_slot_max_wait_refuses(make_lane: MakeLane) -> None:
    """A slot request honours max_wait with LaneBusy and enqueues nothing."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    with pytest.raises(LaneBusy) as info:
        async with lane.slot(max_wait=0):
            raise AssertionError("must not run")
    assert info.value.position == 1
    stats = await lane.stats()
    assert (stats.queued, stats.rejected) == (0, 1)


# -- ids and bad input ---------------------------------------------------------------------


async def test_duplicate_job_id_is_refused_and_accounting_stays_right(
    make_lane: MakeLane,
) -> None:
    """A queued or running id is refused with DuplicateJob; nothing is enqueued."""
    lane = await make_lane("x", 1)
    gate = Gate()
    first = await started(lane, gate, job_id="a")
    with pytest.raises(DuplicateJob, match=r"^job 'a' is already queued or running in lane 'x'$"):
        await lane.submit(value(2), job_id="a")
    queued = await lane.submit(value(3), job_id="b")
    with pytest.raises(DuplicateJob, match=r"^job 'b' is already queued or running in lane 'x'$"):
        await lane.submit(value(4), job_id="b")
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.submitted) == (1, 1, 2)
    gate.release(1)
    assert await first == 1
    assert await queued == 3


async def test_ended_ids_may_be_reused(make_lane: MakeLane) -> None:
    """An id that has ended can be submitted again."""
    lane = await make_lane("x", 1)
    assert await lane.run(value(1), job_id="again") == 1
    assert await lane.run(value(2), job_id="again") == 2


async def test_generated_ids_are_unique(make_lane: MakeLane) -> None:
    """Jobs submitted without an id get distinct ids."""
    lane = await make_lane("x", 4)
    handles = [await lane.submit(value(i)) for i in range(8)]
    assert len({h.id for h in handles}) == 8
    await asyncio.gather(*handles)


async def test_fn_must_be_callable(make_lane: MakeLane) -> None:
    """A non-callable fn is a TypeError at submit (and at run) and nothing is enqueued."""
    lane = await make_lane("x", 1)
    message = r"^fn must be a zero-argument callable returning an awaitable, got 5$"
    with pytest.raises(TypeError, match=message):
        await lane.submit(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        await lane.run(5)  # type: ignore[arg-type]
    assert (await lane.stats()).submitted == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"key": 5}, TypeError, r"^key must be a str or None, got 5$"),
        ({"priority": "1"}, TypeError, r"^priority must be an int, got '1'$"),
        ({"priority": True}, TypeError, r"^priority must be an int, got True$"),
        ({"preemptible": 1}, TypeError, r"^preemptible must be a bool, got 1$"),
        ({"max_wait": -1}, ValueError, r"^max_wait must be >= 0 seconds, got -1$"),
        ({"max_wait": math.nan}, ValueError, r"^max_wait must be >= 0 seconds, got nan$"),
        ({"max_wait": "5"}, TypeError, r"^max_wait must be a number of seconds or None, got '5'$"),
        ({"job_id": ""}, ValueError, r"^job_id must be a non-empty str, got ''$"),
        ({"job_id": 7}, TypeError, r"^job_id must be a str or None, got 7$"),
    ],
)
async def test_bad_submit_options(
    make_lane: MakeLane, options: dict[str, object], error: type, message: str
) -> None:
    """Each submit option is validated with the same text on every backend."""
    lane = await make_lane("x", 1)
    with pytest.raises(error, match=message):
        await lane.submit(value(1), **options)  # type: ignore[arg-type]
    stats = await lane.stats()
    assert (stats.submitted, stats.running, stats.queued) == (0, 0, 0)


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        (("",), {}, ValueError, r"^name must be a non-empty str, got ''$"),
        ((5,), {}, TypeError, r"^name must be a str, got 5$"),
        (("x", 0), {}, ValueError, r"^max_concurrent must be >= 1, got 0$"),
        (("x", True), {}, TypeError, r"^max_concurrent must be an int, got True$"),
        (("x", 2.0), {}, TypeError, r"^max_concurrent must be an int, got 2.0$"),
        (("x", 1), {"eta_window": 0}, ValueError, r"^eta_window must be >= 1, got 0$"),
        (
            ("x", 1),
            {"preemption": "on"},
            TypeError,
            r"^preemption must be a Preemption or None, got 'on'$",
        ),
        (
            ("x", 1),
            {"policy": "fifo"},
            TypeError,
            r"^policy must be a QueuePolicy \(FIFO\(\), \.\.\.\), got 'fifo'$",
        ),
    ],
)
async def test_bad_construction(
    make_lane: MakeLane,
    args: tuple[object, ...],
    options: dict[str, object],
    error: type,
    message: str,
) -> None:
    """Construction arguments are validated at once, with the same text on every backend."""
    with pytest.raises(error, match=message):
        await make_lane(*args, **options)  # type: ignore[arg-type]


async def test_setters_validate(make_lane: MakeLane) -> None:
    """set_max_concurrent, set_eta_window and set_preemption validate their argument."""
    lane = await make_lane("x", 1)
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        await lane.set_max_concurrent(0)
    with pytest.raises(TypeError, match=r"^max_concurrent must be an int, got 2.0$"):
        await lane.set_max_concurrent(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^eta_window must be >= 1, got 0$"):
        await lane.set_eta_window(0)
    with pytest.raises(TypeError, match=r"^preemption must be a Preemption or None, got 'on'$"):
        await lane.set_preemption("on")  # type: ignore[arg-type]
    assert lane.max_concurrent == 1
    await lane.set_eta_window(4)
    assert await lane.run(value(1)) == 1


async def test_submit_to_closed_lane(make_lane: MakeLane) -> None:
    """Submitting, running or taking a slot on a closed lane raises LaneClosed."""
    lane = await make_lane("x", 1)
    assert await lane.run(value(1)) == 1
    await lane.aclose()
    assert lane.closed
    with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
        await lane.submit(value(0))
    with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
        await lane.run(value(0))
    with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
        async with lane.slot():
            raise AssertionError("must not run")


# -- cancelling ----------------------------------------------------------------------------


async def test_lane_cancel_of_a_queued_job_wakes_its_waiters(make_lane: MakeLane) -> None:
    """lane.cancel(job_id) removes a queued job; its waiters get JobCancelled."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    queued = await lane.submit(Gate(), job_id="q")
    waiter = asyncio.create_task(outcome(queued))
    await asyncio.sleep(0)
    await lane.cancel("q")
    with pytest.raises(JobCancelled, match=r"^job 'q' in lane 'x' was cancelled$"):
        await waiter
    assert queued.state is JobState.CANCELLED
    stats = await lane.stats()
    assert (stats.queued, stats.cancelled) == (0, 1)


async def test_lane_cancel_of_a_job_that_is_not_queued(make_lane: MakeLane, backend: str) -> None:
    """lane.cancel of a running, ended or unknown job raises NotQueued naming why."""
    lane = await make_lane("x", 1)
    gate = Gate()
    running = await started(lane, gate, job_id="r")
    with pytest.raises(NotQueued, match=r"^job 'r' is not queued in lane 'x' \(running\)$"):
        await lane.cancel("r")
    with pytest.raises(NotQueued, match=r"^job 'nope' is not queued in lane 'x' \(unknown\)$"):
        await lane.cancel("nope")
    gate.release()
    await running
    with pytest.raises(NotQueued, match=r"^job 'r' is not queued in lane 'x' \(unknown\)$"):
        await lane.cancel("r")
    await lane.aclose()
    if backend == "memory":
        with pytest.raises(NotQueued):
            await lane.cancel("r")
    else:
        # A closed RedisLane client has no connection left, and other processes may
        # still have jobs queued in the lane: it cannot say "not queued", so it says
        # that it is closed.
        with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
            await lane.cancel("r")


async def test_handle_cancel_queued_running_and_ended(make_lane: MakeLane) -> None:
    """handle.cancel() is True for queued and running jobs, False once ended."""
    lane = await make_lane("x", 1)
    gate = Gate()
    running = await started(lane, gate)
    queued = await lane.submit(Gate())
    assert await queued.cancel() is True
    assert queued.state is JobState.CANCELLED
    with pytest.raises(JobCancelled):
        await queued
    assert await running.cancel() is True
    assert running.state is JobState.CANCELLED
    assert gate.cancelled
    with pytest.raises(JobCancelled, match=rf"^job '{running.id}' in lane 'x' was cancelled$"):
        await running
    assert await running.cancel() is False
    done = await lane.submit(value(1))
    await done
    assert await done.cancel() is False
    stats = await lane.stats()
    assert (stats.cancelled, stats.running, stats.succeeded) == (2, 0, 1)


async def test_job_that_swallows_cancel_and_returns_succeeds(make_lane: MakeLane) -> None:
    """A running job that catches the cancellation and returns ends SUCCEEDED."""
    lane = await make_lane("x", 1)
    began = asyncio.Event()

    async def stubborn() -> str:
        began.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "kept"
        return "slept"

    handle = await lane.submit(stubborn)
    await began.wait()
    assert await handle.cancel() is False
    assert await handle == "kept"
    assert handle.state is JobState.SUCCEEDED


# -- max_wait ------------------------------------------------------------------------------


async def test_max_wait_refuses_with_position_and_eta(make_lane: MakeLane) -> None:
    """An ETA above max_wait raises LaneBusy with position and eta; nothing is enqueued."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    await lane.submit(Gate())
    await lane.submit(Gate())
    # No run has ended yet, so the estimate is one second per position (both backends).
    message = r"^lane 'x' is busy: position 3, estimated wait 3\.0s exceeds max_wait 2\.5s$"
    with pytest.raises(LaneBusy, match=message) as info:
        await lane.submit(Gate(), max_wait=2.5)
    busy = info.value
    assert (busy.lane, busy.position, busy.eta, busy.max_wait) == ("x", 3, 3.0, 2.5)
    accepted = await lane.submit(Gate(), max_wait=5)
    assert accepted.state is JobState.QUEUED
    assert accepted.position == 3
    assert 0 < accepted.eta <= 3.0
    stats = await lane.stats()
    assert (stats.queued, stats.submitted, stats.rejected) == (3, 4, 1)


async def test_max_wait_zero_means_start_now_or_refuse(make_lane: MakeLane) -> None:
    """max_wait=0 starts a job when a slot is free and refuses it otherwise."""
    lane = await make_lane("x", 1)
    gate = Gate()
    now = await lane.submit(gate, max_wait=0)
    assert now.state is JobState.RUNNING
    message = (
        r"^lane 'x' is busy: position 1, estimated wait 1\.0s; "
        r"max_wait 0 admits only a job that can start at once$"
    )
    with pytest.raises(LaneBusy, match=message):
        await lane.submit(Gate(), max_wait=0)
    with pytest.raises(LaneBusy):
        await lane.run(value(1), max_wait=0)
    stats = await lane.stats()
    assert (stats.queued, stats.rejected) == (0, 2)


async def test_max_wait_zero_refuses_even_an_estimate_of_zero(make_lane: MakeLane) -> None:
    """max_wait=0 refuses a job that would queue even when past runs took no measurable
    time, so its estimated wait is 0."""
    lane = await make_lane("x", 1)
    for i in range(3):
        assert await lane.run(value(i)) == i  # runs that take (next to) no time
    await started(lane, Gate())
    with pytest.raises(LaneBusy):
        await lane.submit(value("late"), max_wait=0)
    stats = await lane.stats()
    assert (stats.queued, stats.rejected) == (0, 1)


async def test_infinite_max_wait_never_refuses(make_lane: MakeLane) -> None:
    """max_wait=inf is a valid gate that admits every job."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    queued = await lane.submit(Gate(), max_wait=math.inf)
    assert queued.state is JobState.QUEUED


# -- stats ---------------------------------------------------------------------------------


async def test_stats_counts(make_lane: MakeLane) -> None:
    """stats() counts running, queued, outcomes, refusals and the oldest queued job."""
    lane = await make_lane("x", 2)
    a, b = Gate(), Gate()
    ha = await started(lane, a)
    hb = await started(lane, b)
    q1 = await lane.submit(Gate())
    q2 = await lane.submit(Gate())
    with pytest.raises(LaneBusy):
        await lane.submit(value(0), max_wait=0)
    stats = await lane.stats()
    assert stats.name == "x"
    assert stats.max_concurrent == 2
    assert (stats.running, stats.queued, stats.submitted, stats.rejected) == (2, 2, 4, 1)
    assert stats.oldest_queued_at is not None
    # RedisLane stamps the submit with the Redis server's clock (millisecond
    # resolution), the handle with the local one: the same instant, not the same float.
    assert abs((stats.oldest_queued_at - q1.submitted_at).total_seconds()) < 1.0
    assert (stats.succeeded, stats.failed, stats.cancelled, stats.throughput_1m) == (0, 0, 0, 0)
    assert stats.mean_runtime is None
    await lane.cancel(q2.id)
    a.release()
    await ha
    await until(lambda: q1.state is JobState.RUNNING)
    b.fail(ValueError("b failed"))
    with pytest.raises(ValueError, match=r"^b failed$"):
        await hb
    stats = await lane.stats()
    assert (stats.succeeded, stats.failed, stats.cancelled) == (1, 1, 1)
    assert (stats.running, stats.queued, stats.oldest_queued_at) == (1, 0, None)
    assert stats.throughput_1m == 2
    assert stats.mean_runtime is not None
    assert stats.mean_runtime >= 0


# -- resizing ------------------------------------------------------------------------------


async def test_raising_max_starts_queued_jobs_at_once(make_lane: MakeLane) -> None:
    """set_max_concurrent up starts queued jobs before it returns."""
    lane = await make_lane("x", 1)
    await started(lane, Gate())
    queued = [await lane.submit(Gate()) for _ in range(3)]
    await lane.set_max_concurrent(3)
    assert lane.max_concurrent == 3
    assert [h.state for h in queued] == [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED]
    # The third job moved from position 3 to 1: a RedisLane refreshes its cached figure.
    await refresh(lane)
    assert queued[2].position == 1
    stats = await lane.stats()
    assert (stats.max_concurrent, stats.running, stats.queued) == (3, 3, 1)


async def test_lowering_max_never_cancels_running_jobs(make_lane: MakeLane) -> None:
    """set_max_concurrent down keeps running jobs; new starts wait until fewer than n run."""
    lane = await make_lane("x", 3)
    gates = [Gate() for _ in range(3)]
    handles = [await started(lane, g) for g in gates]
    waiting = await lane.submit(Gate())
    await lane.set_max_concurrent(1)
    assert all(h.state is JobState.RUNNING for h in handles)
    gates[0].release()
    await handles[0]
    assert waiting.state is JobState.QUEUED  # 2 still run, the limit is 1
    gates[1].release()
    await handles[1]
    assert waiting.state is JobState.QUEUED
    gates[2].release()
    await handles[2]
    assert waiting.state is JobState.RUNNING
    assert not any(g.cancelled for g in gates)


# -- preemption ----------------------------------------------------------------------------


async def test_never_more_than_max_while_the_victim_unwinds(make_lane: MakeLane) -> None:
    """The arrival waits until the victim's task has ended: running never exceeds max."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0))
    live = peak = 0
    unwinding = asyncio.Event()
    unwind = asyncio.Event()

    async def slow_to_stop() -> None:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            unwinding.set()
            await unwind.wait()  # cleanup that takes a while
            raise
        finally:
            live -= 1

    async def urgent() -> str:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        live -= 1
        return "done"

    victim = await lane.submit(slow_to_stop, preemptible=True)
    await until(lambda: live == 1)
    arrival = await lane.submit(urgent, priority=5)
    assert arrival.state is JobState.QUEUED
    assert arrival.position == 1
    async with asyncio.timeout(5):
        await unwinding.wait()
    await asyncio.sleep(0.01)  # time for a wrong early start to show
    assert arrival.state is JobState.QUEUED  # the victim is still unwinding
    assert victim.state is JobState.RUNNING
    assert (await lane.stats()).running == 1
    unwind.set()
    assert await arrival == "done"
    assert peak == 1
    with pytest.raises(JobPreempted, match=rf"^job '{victim.id}' in lane 'gpu' was preempted$"):
        await victim
    assert victim.state is JobState.PREEMPTED
    stats = await lane.stats()
    assert (stats.preempted, stats.succeeded, stats.cancelled) == (1, 1, 0)


async def test_an_outside_cancel_of_a_victim_in_its_grace_is_a_cancel(
    make_lane: MakeLane,
) -> None:
    """A preempted slot body still in its grace that is cancelled from outside (say by
    asyncio.timeout) raises CancelledError, not JobPreempted, and ends CANCELLED; the
    arrival then starts."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30))
    entered = asyncio.Event()
    handles: list[JobHandle[None]] = []

    async def user() -> None:
        async with lane.slot(preemptible=True) as job:
            handles.append(job)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(user())
    async with asyncio.timeout(5):
        await entered.wait()
    arrival = await lane.submit(value("urgent"), priority=1)
    await until(lambda: handles[0].preempt_requested)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert handles[0].state is JobState.CANCELLED
    assert await arrival == "urgent"
    stats = await lane.stats()
    assert (stats.preempted, stats.cancelled) == (0, 1)


async def test_a_slot_body_that_swallows_the_lanes_cancel_leaves_its_task_clean(
    make_lane: MakeLane,
) -> None:
    """A slot body that catches the lane's cancellation and returns leaves its task with
    no pending cancellation: a later timeout in that task still works."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0))
    inside = asyncio.Event()
    outcome: list[object] = []

    async def hold() -> None:
        async with lane.slot(preemptible=True):
            inside.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("swallowed")
        task = asyncio.current_task()
        assert task is not None
        outcome.append(task.cancelling())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        outcome.append("timeout works")

    holder = asyncio.create_task(hold())
    async with asyncio.timeout(5):
        await inside.wait()
    urgent = await lane.submit(value("urgent"), priority=1)
    async with asyncio.timeout(5):
        await holder
    assert outcome == ["swallowed", 0, "timeout works"]
    assert await urgent == "urgent"


async def test_no_preemption_on_a_lane_over_its_lowered_limit(make_lane: MakeLane) -> None:
    """An arrival to a lane whose limit was lowered below its running count evicts
    nobody (the victim's slot would not let it start): it queues and starts once the
    lane has room."""
    lane = await make_lane("gpu", 2, preemption=Preemption(min_runtime=0))
    first, second = Gate(), Gate()
    a = await started(lane, first, preemptible=True)
    b = await started(lane, second, preemptible=True)
    await lane.set_max_concurrent(1)
    arrival = await lane.submit(value("urgent"), priority=5)
    assert arrival.state is JobState.QUEUED
    await asyncio.sleep(0.1)  # a preemption request would have reached its victim
    assert not a.preempt_requested
    assert not b.preempt_requested
    first.release("a")
    assert await a == "a"
    assert arrival.state is JobState.QUEUED  # one runs: the lane is at its limit
    second.release("b")
    assert await b == "b"
    assert await arrival == "urgent"
    stats = await lane.stats()
    assert (stats.preempted, stats.succeeded) == (0, 3)


async def test_victim_choice_lowest_priority_then_earliest(make_lane: MakeLane) -> None:
    """The victim is the lowest-priority preemptible job, the earliest started among equals."""
    lane = await make_lane("gpu", 3, preemption=Preemption(min_runtime=0))
    high = await started(lane, Gate(), job_id="high", priority=1, preemptible=True)
    early = await started(lane, Gate(), job_id="early", priority=0, preemptible=True)
    # RedisLane stamps starts with the server clock in milliseconds: keep them apart.
    await asyncio.sleep(0.005)
    late = await started(lane, Gate(), job_id="late", priority=0, preemptible=True)
    await lane.submit(Gate(), priority=5)
    await until(lambda: early.state is JobState.PREEMPTED)
    assert late.state is JobState.RUNNING
    await lane.submit(Gate(), priority=5)
    await until(lambda: late.state is JobState.PREEMPTED)
    # Equal priority is not enough: "high" (priority 1) stays for a priority-1 arrival.
    equal = await lane.submit(Gate(), priority=1)
    await refresh(lane)  # a RedisLane's heartbeat would repeat a preemption request
    assert not high.preempt_requested
    assert high.state is JobState.RUNNING
    assert equal.state is JobState.QUEUED
    assert (await lane.stats()).preempted == 2


async def test_min_runtime_protects_young_jobs(make_lane: MakeLane) -> None:
    """A job that has run less than min_runtime is not preempted; the arrival queues."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=60))
    young = await started(lane, Gate(), preemptible=True)
    arrival = await lane.submit(Gate(), priority=9)
    await refresh(lane)
    assert arrival.state is JobState.QUEUED
    assert not young.preempt_requested
    assert young.state is JobState.RUNNING


async def test_cooperative_victim_that_returns_during_grace_succeeds(
    make_lane: MakeLane,
) -> None:
    """A victim sees preempt_requested, saves its work and returns: it ends SUCCEEDED."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30))
    began = asyncio.Event()

    async def cooperative() -> str:
        began.set()
        ctx = current_job()
        assert ctx is not None
        while not ctx.preempt_requested:  # noqa: ASYNC110 - the job polls its flag
            await asyncio.sleep(0.001)
        return "saved"

    victim = await lane.submit(cooperative, preemptible=True)
    await began.wait()
    arrival = await lane.submit(value("urgent"), priority=1)
    async with asyncio.timeout(5):
        assert await victim == "saved"
        assert await arrival == "urgent"
    assert victim.state is JobState.SUCCEEDED
    stats = await lane.stats()
    assert (stats.preempted, stats.succeeded) == (0, 2)


async def test_requeue_keeps_the_original_place_and_runs_again(make_lane: MakeLane) -> None:
    """requeue=True puts the victim back at its arrival place; it reruns and succeeds."""
    lane = await make_lane(
        "gpu", 1, policy=Priority(), preemption=Preemption(min_runtime=0, requeue=True)
    )
    victim_gate = Gate()
    victim = await started(lane, victim_gate, preemptible=True)
    later = await lane.submit(Gate(), job_id="later")  # same priority, arrived after
    urgent_gate = Gate()
    urgent = await lane.submit(urgent_gate, priority=9)
    await until(lambda: urgent_gate.running)
    assert victim.state is JobState.QUEUED
    assert victim.preemptions == 1
    await refresh(lane)  # "later" moved from 1 to 2 behind the requeued victim
    assert victim.position == 1  # ahead of "later": its original arrival place
    assert later.position == 2
    urgent_gate.release()
    await urgent
    await until(lambda: victim_gate.running)
    assert victim.state is JobState.RUNNING
    assert victim_gate.started == 2
    victim_gate.release("second run")
    assert await victim == "second run"
    assert victim.preemptions == 1
    stats = await lane.stats()
    assert (stats.preempted, stats.succeeded) == (1, 2)


async def test_arrival_goes_ahead_of_every_queued_job(make_lane: MakeLane) -> None:
    """The preemptor takes the freed slot before jobs that queued earlier."""
    # A long grace: the victim holds its slot until the test ends it, so the arrival
    # is still queued while the positions are read.
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30))
    victim_gate = Gate()
    await started(lane, victim_gate, preemptible=True)
    queued = await lane.submit(Gate(), priority=0)
    arrival = await lane.submit(Gate(), priority=1)
    assert arrival.position == 1
    await refresh(lane)
    assert queued.position == 2
    victim_gate.release()  # the victim gives its slot up within its grace
    await until(lambda: arrival.state is JobState.RUNNING)
    assert queued.state is JobState.QUEUED


async def test_preempted_slot_raises_job_preempted(make_lane: MakeLane) -> None:
    """A preempted slot() body is cancelled and JobPreempted leaves the async with."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, requeue=True))
    inside = asyncio.Event()

    async def batch() -> None:
        async with lane.slot(preemptible=True, job_id="batch"):
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(batch())
    await inside.wait()
    arrival = await lane.submit(Gate(), priority=1)
    # A block of code cannot be requeued: even with requeue=True it ends PREEMPTED.
    with pytest.raises(JobPreempted, match=r"^job 'batch' in lane 'gpu' was preempted$"):
        async with asyncio.timeout(5):
            await task
    await until(lambda: arrival.state is JobState.RUNNING)
    assert (await lane.stats()).preempted == 1


# -- closing -------------------------------------------------------------------------------


async def test_close_draining_runs_queued_jobs(make_lane: MakeLane) -> None:
    """aclose(drain=True) refuses new jobs, runs queued ones, returns when all ended."""
    lane = await make_lane("x", 1)
    handles = [await lane.submit(value(i)) for i in range(5)]
    await lane.aclose()
    assert [h.result() for h in handles] == [0, 1, 2, 3, 4]
    with pytest.raises(LaneClosed):
        await lane.submit(value(0))
    await lane.aclose()  # again: harmless


async def test_close_without_drain_wakes_every_waiter(make_lane: MakeLane) -> None:
    """aclose(drain=False): queued waiters get LaneClosed, running jobs JobCancelled."""
    lane = await make_lane("x", 1)
    gate = Gate()
    running = await started(lane, gate)
    queued = [await lane.submit(Gate()) for _ in range(3)]
    waiters = [asyncio.create_task(outcome(h)) for h in [running, *queued]]
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await lane.aclose(drain=False)
        results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], JobCancelled)
    assert str(results[0]) == f"job '{running.id}' in lane 'x' was cancelled: the lane was closed"
    for r in results[1:]:
        assert isinstance(r, LaneClosed)
        assert str(r) == "lane 'x' was closed before the job started"
    assert gate.cancelled
    assert running.state is JobState.CANCELLED
    assert all(h.state is JobState.CANCELLED for h in queued)
    await lane.aclose(drain=False)  # again: harmless


async def test_close_without_drain_after_draining_close(make_lane: MakeLane) -> None:
    """A forced close after a draining one cancels what is left and both return."""
    lane = await make_lane("x", 1)
    gate = Gate()
    running = await started(lane, gate)
    queued = await lane.submit(Gate())
    draining = asyncio.create_task(lane.aclose())
    await asyncio.sleep(0.01)
    assert not draining.done()
    async with asyncio.timeout(10):
        await lane.aclose(drain=False)
        await draining
    assert queued.state is JobState.CANCELLED
    assert running.state is JobState.CANCELLED


async def test_async_with_closes_draining(make_lane: MakeLane) -> None:
    """`async with lane:` drains the lane on exit."""
    async with await make_lane("x", 2) as lane:
        handles = [await lane.submit(value(i)) for i in range(4)]
    assert lane.closed
    assert [h.result() for h in handles] == [0, 1, 2, 3]


async def test_current_job(make_lane: MakeLane) -> None:
    """current_job() is None outside a job and the job's context inside."""
    lane = await make_lane("x", 1)
    assert current_job() is None

    async def body() -> tuple[str, str, str | None, int, bool]:
        ctx = current_job()
        assert ctx is not None
        return ctx.id, ctx.lane, ctx.key, ctx.priority, ctx.preempt_requested

    assert await lane.run(body, job_id="me", key="k", priority=3) == ("me", "x", "k", 3, False)
    assert current_job() is None


async def test_preemption_respects_max_wait_over_the_grace(make_lane: MakeLane) -> None:
    """An arrival that would wait out a grace longer than max_wait is refused and
    preempts nothing."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=10))
    victim = await started(lane, Gate(), preemptible=True)
    message = r"^lane 'gpu' is busy: position 1, estimated wait 10\.0s exceeds max_wait 5s$"
    with pytest.raises(LaneBusy, match=message):
        await lane.submit(Gate(), priority=1, max_wait=5)
    await refresh(lane)  # a RedisLane's heartbeat would repeat a preemption request
    assert not victim.preempt_requested
    stats = await lane.stats()
    assert (stats.queued, stats.rejected, stats.preempted) == (0, 1, 0)


async def test_job_ids_with_spaces_are_preempted_and_granted(make_lane: MakeLane) -> None:
    """Any non-empty str is a job id: ids with spaces are preempted and granted too."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0))
    victim = await started(lane, Gate(), job_id="batch job 1", preemptible=True)
    arrival = await lane.submit(value("urgent"), job_id="user 42 reply", priority=1)
    async with asyncio.timeout(5):
        assert await arrival == "urgent"
    assert victim.state is JobState.PREEMPTED


async def test_handle_cancel_of_a_slot_held_by_another_task(make_lane: MakeLane) -> None:
    """handle.cancel() of a slot held in another task cancels the body; JobCancelled
    leaves the block and the slot is freed."""
    lane = await make_lane("x", 1)
    holding: asyncio.Future[JobHandle[None]] = asyncio.get_running_loop().create_future()

    async def holder() -> None:
        async with lane.slot(job_id="held") as job:
            holding.set_result(job)
            await asyncio.sleep(30)

    task = asyncio.create_task(holder())
    job = await holding
    assert await job.cancel() is True
    with pytest.raises(JobCancelled, match=r"^job 'held' in lane 'x' was cancelled$"):
        async with asyncio.timeout(5):
            await task
    assert job.state is JobState.CANCELLED
    assert await lane.run(value(1)) == 1


async def test_figures_of_a_closed_lane(make_lane: MakeLane, backend: str) -> None:
    """A closed in-process lane still reports its figures; a closed RedisLane client
    refuses every call with LaneClosed."""
    lane = await make_lane("x", 1)
    assert await lane.run(value(1)) == 1
    await lane.aclose()
    if backend == "memory":
        assert (await lane.stats()).succeeded == 1
    else:
        # aclose() closed this client's connections; the figures live on in Redis for
        # the lane's other clients (a new RedisLane object reads them).
        with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
            await lane.stats()


async def test_preemption_called_off_when_its_arrival_is_cancelled(make_lane: MakeLane) -> None:
    """A victim in its grace keeps running, and then succeeds, when the arrival that
    chose it is cancelled."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30))
    gate = Gate()
    victim = await started(lane, gate, preemptible=True)
    arrival = await lane.submit(Gate(), priority=1)
    await until(lambda: victim.preempt_requested)
    assert await arrival.cancel()
    await until(lambda: not victim.preempt_requested)
    gate.release("kept")
    async with asyncio.timeout(5):
        assert await victim == "kept"
    assert victim.state is JobState.SUCCEEDED


async def test_a_queued_job_sees_its_submitters_context(make_lane: MakeLane) -> None:
    """A job that waited in the queue runs with the context variables its submitter had,
    not those of the job whose end let it start."""
    import contextvars

    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    lane = await make_lane("gpu", 1)
    seen: list[str] = []

    async def job() -> None:
        seen.append(user.get())
        user.set("changed by the job")

    async def submit_as(name: str, fn: Any) -> JobHandle[Any]:
        user.set(name)
        handle: JobHandle[Any] = await lane.submit(fn)
        return handle

    gate = Gate()
    first = await asyncio.create_task(submit_as("alice", gate))
    await until(lambda: gate.running)
    second = await asyncio.create_task(submit_as("bob", job))
    gate.release()
    async with asyncio.timeout(5):
        await first
        await second
    assert seen == ["bob"]


async def test_a_job_cancelling_itself_ends_cancelled(make_lane: MakeLane) -> None:
    """A job awaiting cancel() on its own handle is cancelled right there: the body
    unwinds from that await, the job ends CANCELLED, and nothing else is cancelled."""
    lane = await make_lane("x", 1)
    handles: list[JobHandle[object]] = []
    after: list[str] = []

    async def quits() -> str:
        await asyncio.sleep(0)
        await handles[0].cancel()
        after.append("ran on")  # pragma: no cover - must not run
        return "done"

    handles.append(await lane.submit(quits))
    with pytest.raises(JobCancelled):
        await handles[0]
    assert handles[0].state is JobState.CANCELLED
    assert after == []

    # A slot() body doing the same leaves its block with JobCancelled, and the caller's
    # task carries no cancellation on (its next await runs normally).
    with pytest.raises(JobCancelled):
        async with lane.slot() as held:
            await held.cancel()
    assert held.state is JobState.CANCELLED
    await asyncio.sleep(0.01)
    assert await lane.run(value("next")) == "next"
    await stats_until(lane, lambda s: (s.running, s.cancelled, s.succeeded) == (0, 2, 1))


async def test_cancel_during_a_preemption_grace_cancels(make_lane: MakeLane) -> None:
    """Cancelling a victim during its grace ends it CANCELLED (not requeued, not run
    again), and cancel() returns True."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=30, requeue=True))
    victim_gate = Gate()
    victim = await started(lane, victim_gate, preemptible=True)
    arrival_gate = Gate()
    arrival = await lane.submit(arrival_gate, priority=1)
    await until(lambda: victim.preempt_requested)
    async with asyncio.timeout(5):
        assert await victim.cancel() is True
    assert victim.state is JobState.CANCELLED
    assert victim_gate.started == 1
    await until(lambda: arrival_gate.running)
    arrival_gate.release("urgent")
    assert await arrival == "urgent"


async def test_a_job_draining_its_own_lane_returns(make_lane: MakeLane) -> None:
    """A job that closes its own lane with drain=True returns once the other running
    jobs have ended; a queued job that needs its slot runs after it."""
    lane = await make_lane("x", 2)
    other, queued = Gate(), Gate()
    go = asyncio.Event()

    async def closer() -> str:
        await go.wait()
        await lane.aclose()
        return "closed"

    first = await started(lane, other)
    closing = await lane.submit(closer)
    await until(lambda: closing.state is JobState.RUNNING)
    await lane.set_max_concurrent(1)
    waiting = await lane.submit(queued)
    assert waiting.state is JobState.QUEUED
    go.set()
    other.release()
    await first
    async with asyncio.timeout(5):
        assert await closing == "closed"
    await until(lambda: queued.running)
    queued.release("ran")
    async with asyncio.timeout(5):
        assert await waiting == "ran"


async def test_jobs_draining_their_own_lane_together_all_return(make_lane: MakeLane) -> None:
    """Two running jobs that each close their lane with drain=True both return (neither
    waits for the other's end); a queued job that needs their slots runs after them."""
    lane = await make_lane("x", 2)
    go = asyncio.Event()

    async def closer() -> str:
        await go.wait()
        await lane.aclose()
        return "closed"

    first = await lane.submit(closer)
    second = await lane.submit(closer)
    waiting = await lane.submit(value("ran"))
    assert waiting.state is JobState.QUEUED
    go.set()
    async with asyncio.timeout(5):
        assert await asyncio.gather(first, second, waiting) == ["closed", "closed", "ran"]


async def test_a_job_closing_its_own_lane_without_drain_ends_cancelled(
    make_lane: MakeLane,
) -> None:
    """A job that closes its own lane with drain=False is cancelled with the rest, and
    a later close from outside returns once everything has ended."""
    lane = await make_lane("x", 2)
    other, queued = Gate(), Gate()
    go = asyncio.Event()

    async def closer() -> None:
        await go.wait()
        await lane.aclose(drain=False)
        await asyncio.sleep(30)  # cancelled before this

    first = await started(lane, other)
    closing = await lane.submit(closer)
    await until(lambda: closing.state is JobState.RUNNING)
    waiting = await lane.submit(queued)
    go.set()
    async with asyncio.timeout(5):
        with pytest.raises(JobCancelled):
            await closing
        with pytest.raises(JobCancelled):
            await first
        with pytest.raises(LaneClosed):
            await waiting
        await lane.aclose()
    assert (closing.state, first.state) == (JobState.CANCELLED, JobState.CANCELLED)


@pytest.mark.parametrize("grace", [0, 5])
async def test_max_wait_zero_admits_a_preemption_only_without_grace(
    make_lane: MakeLane, grace: float
) -> None:
    """With max_wait=0 an arrival that would preempt is admitted when the grace is 0 (it
    starts once its victim has ended) and refused when the victim has a grace."""
    lane = await make_lane("gpu", 1, preemption=Preemption(min_runtime=0, grace=grace))
    victim_gate = Gate()
    victim = await started(lane, victim_gate, preemptible=True)
    arrival_gate = Gate()
    if grace:
        with pytest.raises(LaneBusy) as info:
            await lane.submit(arrival_gate, priority=5, max_wait=0)
        assert (info.value.position, info.value.eta) == (1, grace)
        assert victim.state is JobState.RUNNING
        assert not victim.preempt_requested
        return
    arrival = await lane.submit(arrival_gate, priority=5, max_wait=0)
    assert arrival.state in (JobState.QUEUED, JobState.RUNNING)
    await until(lambda: arrival_gate.running)
    assert victim.state is JobState.PREEMPTED
    arrival_gate.release("urgent")
    assert await arrival == "urgent"


async def test_a_slot_in_an_async_generator_closed_by_another_task_ends_cancelled(
    make_lane: MakeLane,
) -> None:
    """A slot held by an async generator whose consumer stopped early, closed later from
    another task, ends CANCELLED (its caller abandoned it) and frees the slot; closing
    the generator raises nothing."""
    lane = await make_lane("gen", 1)
    jobs: list[JobHandle[None]] = []

    async def stream() -> AsyncGenerator[int, None]:
        async with lane.slot() as job:
            jobs.append(job)
            for i in range(10):
                yield i

    chunks = stream()
    async for chunk in chunks:
        if chunk == 1:
            break
    assert jobs[0].state is JobState.RUNNING
    await asyncio.create_task(chunks.aclose())  # as the loop's finalizer does
    assert jobs[0].state is JobState.CANCELLED
    assert isinstance(jobs[0].exception(), JobCancelled)
    async with asyncio.timeout(5):
        assert await lane.run(value("next")) == "next"
    await stats_until(lane, lambda s: (s.running, s.failed, s.cancelled) == (0, 0, 1))
