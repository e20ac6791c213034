"""The in-process Lane: submitting, waiting, cancelling, stats, resizing, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC

import pytest

from executus import (
    FIFO,
    DuplicateJob,
    FairShare,
    JobCancelled,
    JobHandle,
    JobState,
    Lane,
    LaneBusy,
    LaneClosed,
    NotQueued,
    current_job,
)
from executus.testing import ManualClock
from tests.helpers import Gate, granted_not_entered, settle, value

# -- construction ----------------------------------------------------------------------


def test_name_must_be_non_empty() -> None:
    """An empty name is refused with the rule and the value."""
    with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
        Lane("")


def test_name_must_be_str() -> None:
    """A non-str name is a TypeError."""
    with pytest.raises(TypeError, match=r"^name must be a str, got 5$"):
        Lane(5)  # type: ignore[arg-type]


def test_max_concurrent_must_be_positive() -> None:
    """max_concurrent < 1 is a ValueError naming the value."""
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        Lane("x", 0)


@pytest.mark.parametrize("bad", [True, 1.5, "2"])
def test_max_concurrent_must_be_int(bad: object) -> None:
    """A bool or non-int max_concurrent is a TypeError."""
    with pytest.raises(TypeError, match=r"^max_concurrent must be an int, got "):
        Lane("x", bad)  # type: ignore[arg-type]


def test_bad_policy_preemption_and_window() -> None:
    """policy, preemption and eta_window are validated at construction."""
    with pytest.raises(TypeError, match=r"^policy must be a QueuePolicy \(FIFO\(\), ...\), got"):
        Lane("x", policy="fifo")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^preemption must be a Preemption or None, got 30$"):
        Lane("x", preemption=30)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^eta_window must be >= 1, got 0$"):
        Lane("x", eta_window=0)


async def test_repr_reads_like_a_dashboard() -> None:
    """repr shows running/max, queued and the policy."""
    lane = Lane("ollama", 2, policy=FairShare())
    assert repr(lane) == "<Lane 'ollama' [0/2 running, 0 queued | fair-share]>"
    gates = [Gate() for _ in range(3)]
    for g in gates:
        await lane.submit(g)
    assert repr(lane) == "<Lane 'ollama' [2/2 running, 1 queued | fair-share]>"
    await lane.aclose(drain=False)
    assert repr(lane) == "<Lane 'ollama' [0/2 running, 0 queued | fair-share] closed>"


# -- submitting --------------------------------------------------------------------------


async def test_slot_available_starts_at_once() -> None:
    """With a free slot a job is RUNNING on return, position 0 and eta 0.0."""
    lane = Lane("x", 1)
    gate = Gate()
    handle = await lane.submit(gate)
    assert handle.state is JobState.RUNNING
    assert (handle.position, handle.eta) == (0, 0.0)
    await settle()
    assert gate.running
    gate.release("ok")
    assert await handle == "ok"
    assert handle.state is JobState.SUCCEEDED


async def test_slot_full_queues_with_position_and_eta() -> None:
    """With every slot taken a job is QUEUED with position >= 1 and an ETA."""
    lane = Lane("x", 1)
    first = await lane.submit(Gate())
    second = await lane.submit(Gate())
    third = await lane.submit(Gate())
    assert first.state is JobState.RUNNING
    assert (second.state, second.position) == (JobState.QUEUED, 1)
    assert (third.state, third.position) == (JobState.QUEUED, 2)
    assert 0 < second.eta < third.eta
    await lane.aclose(drain=False)


async def test_fn_must_be_callable() -> None:
    """A non-callable fn is a TypeError at submit and nothing is enqueued."""
    lane = Lane("x", 1)
    with pytest.raises(
        TypeError,
        match=r"^fn must be a zero-argument callable returning an awaitable, got 42$",
    ):
        await lane.submit(42)  # type: ignore[arg-type]
    assert (await lane.stats()).submitted == 0


async def test_fn_returning_a_non_awaitable_fails_the_job() -> None:
    """A fn that returns a plain value ends the job FAILED with a clear TypeError."""
    lane = Lane("x", 1)
    handle: JobHandle[object] = await lane.submit(lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"^fn must return an awaitable, got int: 3$"):
        await handle
    assert handle.state is JobState.FAILED
    assert (await lane.stats()).running == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"key": 5}, TypeError, r"^key must be a str or None, got 5$"),
        ({"priority": "1"}, TypeError, r"^priority must be an int, got '1'$"),
        ({"priority": True}, TypeError, r"^priority must be an int, got True$"),
        ({"preemptible": 1}, TypeError, r"^preemptible must be a bool, got 1$"),
        ({"max_wait": -1}, ValueError, r"^max_wait must be >= 0 seconds, got -1$"),
        ({"max_wait": "5"}, TypeError, r"^max_wait must be a number of seconds or None, got '5'$"),
        ({"job_id": ""}, ValueError, r"^job_id must be a non-empty str, got ''$"),
        ({"job_id": 7}, TypeError, r"^job_id must be a str or None, got 7$"),
    ],
)
async def test_bad_submit_options(options: dict[str, object], error: type, message: str) -> None:
    """Each submit option is validated with the rule and the value; nothing is enqueued."""
    lane = Lane("x", 1)
    with pytest.raises(error, match=message):
        await lane.submit(value(1), **options)  # type: ignore[arg-type]
    stats = await lane.stats()
    assert (stats.submitted, stats.running, stats.queued) == (0, 0, 0)


async def test_duplicate_job_id_is_refused_and_accounting_stays_right() -> None:
    """A queued or running id is refused with DuplicateJob; slots stay correct."""
    lane = Lane("x", 1)
    gate = Gate()
    first = await lane.submit(gate, job_id="a")
    with pytest.raises(DuplicateJob, match=r"^job 'a' is already queued or running in lane 'x'$"):
        await lane.submit(value(2), job_id="a")
    queued = await lane.submit(value(3), job_id="b")
    with pytest.raises(DuplicateJob):
        await lane.submit(value(4), job_id="b")
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.submitted) == (1, 1, 2)
    await settle()
    gate.release(1)
    assert await first == 1
    assert await queued == 3
    again = await lane.submit(value(5), job_id="a")  # ended ids may be reused
    assert await again == 5
    assert (await lane.stats()).running == 0


async def test_generated_ids_are_unique() -> None:
    """Generated ids never collide, even with a caller-chosen id of the same shape."""
    lane = Lane("x", 1)
    taken = await lane.submit(Gate(), job_id="x-1")
    handles = [await lane.submit(value(i)) for i in range(3)]
    ids = {taken.id, *(h.id for h in handles)}
    assert len(ids) == 4
    await lane.aclose(drain=False)


async def test_submit_to_closed_lane() -> None:
    """Submitting to a closed lane raises LaneClosed."""
    lane = Lane("x", 1)
    await lane.aclose()
    with pytest.raises(LaneClosed, match=r"^lane 'x' is closed$"):
        await lane.submit(value(1))
    with pytest.raises(LaneClosed):
        async with lane.slot():
            pass


# -- handles -----------------------------------------------------------------------------


async def test_await_raises_the_jobs_own_exception() -> None:
    """Awaiting a failed job raises the same exception object; the slot is freed."""
    lane = Lane("x", 1)
    boom = RuntimeError("boom")

    async def fails() -> None:
        raise boom

    handle = await lane.submit(fails)
    with pytest.raises(RuntimeError) as info:
        await handle
    assert info.value is boom
    assert handle.state is JobState.FAILED
    assert handle.exception() is boom
    assert (await lane.stats()).running == 0


async def test_timestamps_are_aware_utc(clock: ManualClock) -> None:
    """submitted_at, started_at and finished_at are aware UTC datetimes from the clock."""
    lane = Lane("x", 1, clock=clock)
    gate = Gate()
    handle = await lane.submit(gate)
    await settle()
    clock.advance(2.5)
    gate.release()
    await handle
    assert handle.submitted_at.tzinfo is UTC
    assert handle.started_at == handle.submitted_at
    assert handle.finished_at is not None
    assert (handle.finished_at - handle.submitted_at).total_seconds() == pytest.approx(2.5)


async def test_many_waiters_all_get_the_result() -> None:
    """Every task awaiting a handle gets the value."""
    lane = Lane("x", 1)
    gate = Gate()
    handle = await lane.submit(gate)
    waiters = [asyncio.create_task(_await(handle)) for _ in range(3)]
    await settle()
    gate.release("v")
    assert await asyncio.gather(*waiters) == ["v", "v", "v"]


async def _await(handle: object) -> object:
    return await handle  # type: ignore[misc]


async def test_cancelling_an_awaiter_leaves_the_job_running() -> None:
    """A task awaiting a handle does not own the job: cancelling it keeps the job."""
    lane = Lane("x", 1)
    gate = Gate()
    handle = await lane.submit(gate)
    waiter = asyncio.create_task(_await(handle))
    other = asyncio.create_task(_await(handle))
    await settle()
    waiter.cancel()
    await settle()
    assert handle.state is JobState.RUNNING
    gate.release(7)
    assert await other == 7
    assert handle.state is JobState.SUCCEEDED


async def test_result_before_end_is_an_error() -> None:
    """result() on a job that has not ended says so."""
    lane = Lane("x", 1)
    handle = await lane.submit(Gate(), job_id="j")
    with pytest.raises(RuntimeError, match=r"^job 'j' has not ended \(state running\)$"):
        handle.result()
    await lane.aclose(drain=False)


# -- run -------------------------------------------------------------------------------


async def test_run_returns_the_value() -> None:
    """run() submits and returns the job's value."""
    lane = Lane("x", 2)
    assert await lane.run(value(11)) == 11


async def test_cancelling_run_cancels_its_running_job() -> None:
    """Cancelling the caller of run() cancels the job it owns and frees the slot."""
    lane = Lane("x", 1)
    gate = Gate()
    caller = asyncio.create_task(lane.run(gate, job_id="owned"))
    await settle()
    assert gate.running
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await settle()
    assert gate.cancelled
    stats = await lane.stats()
    assert (stats.running, stats.cancelled) == (0, 1)


async def test_cancelling_run_while_queued_removes_the_job() -> None:
    """Cancelling run() while its job waits removes the job from the queue."""
    lane = Lane("x", 1)
    blocker = Gate()
    await lane.submit(blocker)
    queued = Gate()
    caller = asyncio.create_task(lane.run(queued))
    await settle()
    assert (await lane.stats()).queued == 1
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (await lane.stats()).queued == 0
    blocker.release()
    await settle()
    assert queued.started == 0


# -- slot --------------------------------------------------------------------------------


async def test_slot_runs_the_body_as_a_job() -> None:
    """slot() holds a slot for the body, current_job() works, and the slot is freed."""
    lane = Lane("x", 1)
    async with lane.slot(key="u", job_id="s") as job:
        ctx = current_job()
        assert ctx is not None
        assert (ctx.id, ctx.lane, ctx.key) == ("s", "x", "u")
        assert job.state is JobState.RUNNING
        assert (await lane.stats()).running == 1
    assert job.state is JobState.SUCCEEDED
    assert current_job() is None
    assert (await lane.stats()).running == 0


async def test_slot_waits_its_turn() -> None:
    """A slot request waits under the policy like any job."""
    lane = Lane("x", 1)
    gate = Gate()
    await lane.submit(gate)
    entered = asyncio.Event()

    async def user() -> None:
        async with lane.slot():
            entered.set()

    task = asyncio.create_task(user())
    await settle()
    assert not entered.is_set()
    assert (await lane.stats()).queued == 1
    gate.release()
    await task
    assert entered.is_set()


async def test_slot_body_error_fails_the_job_and_frees_the_slot() -> None:
    """An exception in the body ends the slot job FAILED and propagates."""
    lane = Lane("x", 1)
    with pytest.raises(KeyError):
        async with lane.slot() as job:
            raise KeyError("k")
    assert job.state is JobState.FAILED
    assert await lane.run(value(1)) == 1


async def test_cancelling_a_waiting_slot_withdraws_it() -> None:
    """Cancelling a task waiting for a slot withdraws the request; nothing leaks."""
    lane = Lane("x", 1)
    gate = Gate()
    await lane.submit(gate)

    async def user() -> None:
        async with lane.slot():
            raise AssertionError("must not run")

    task = asyncio.create_task(user())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await lane.stats()
    assert (stats.queued, stats.cancelled) == (0, 1)
    gate.release()
    await settle()
    assert (await lane.stats()).running == 0


async def test_slot_granted_then_cancelled_before_resuming_gives_it_back() -> None:
    """A slot granted to a task that is cancelled before it resumes is released."""
    lane = Lane("x", 1)
    task = await granted_not_entered(lane)
    task.cancel()  # cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await lane.stats()).running == 0
    assert await lane.run(value(2)) == 2


async def test_slot_max_wait_refuses() -> None:
    """A slot request honours max_wait with LaneBusy."""
    lane = Lane("x", 1)
    await lane.submit(Gate())
    with pytest.raises(LaneBusy) as info:
        async with lane.slot(max_wait=0):
            pass
    assert info.value.position == 1
    await lane.aclose(drain=False)


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_queued_job_wakes_its_waiters() -> None:
    """lane.cancel(job_id) removes a queued job; its waiters get JobCancelled."""
    lane = Lane("x", 1)
    await lane.submit(Gate())
    queued = await lane.submit(Gate(), job_id="q")
    waiter = asyncio.create_task(_await(queued))
    await settle()
    await lane.cancel("q")
    with pytest.raises(JobCancelled, match=r"^job 'q' in lane 'x' was cancelled$"):
        await waiter
    assert queued.state is JobState.CANCELLED
    assert (await lane.stats()).queued == 0
    await lane.aclose(drain=False)


async def test_cancel_not_queued() -> None:
    """lane.cancel of a running, finished or unknown job raises NotQueued."""
    lane = Lane("x", 1)
    await lane.submit(Gate(), job_id="r")
    with pytest.raises(NotQueued, match=r"^job 'r' is not queued in lane 'x' \(running\)$"):
        await lane.cancel("r")
    with pytest.raises(NotQueued, match=r"^job 'nope' is not queued in lane 'x' \(unknown\)$"):
        await lane.cancel("nope")
    await lane.aclose(drain=False)
    with pytest.raises(NotQueued):
        await lane.cancel("r")


async def test_handle_cancel_queued_running_and_finished() -> None:
    """handle.cancel() is True for queued and running jobs, False once ended."""
    lane = Lane("x", 1)
    gate = Gate()
    running = await lane.submit(gate)
    queued = await lane.submit(Gate())
    assert await queued.cancel() is True
    assert queued.state is JobState.CANCELLED
    await settle()
    assert await running.cancel() is True
    assert running.state is JobState.CANCELLED
    assert gate.cancelled
    assert await running.cancel() is False
    done = await lane.submit(value(1))
    await done
    assert await done.cancel() is False
    assert (await lane.stats()).cancelled == 2


async def test_job_that_swallows_cancel_and_returns_succeeds() -> None:
    """A running job that catches the cancellation and returns ends SUCCEEDED."""
    lane = Lane("x", 1)

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "kept"
        return "slept"

    handle = await lane.submit(stubborn)
    await settle()
    assert await handle.cancel() is False
    assert await handle == "kept"


# -- stats -------------------------------------------------------------------------------


async def test_stats_accuracy(clock: ManualClock) -> None:
    """stats() counts running, queued, outcomes, refusals and the oldest queued job."""
    lane = Lane("x", 2, clock=clock)
    a, b = Gate(), Gate()
    ha = await lane.submit(a)
    await lane.submit(b)
    clock.advance(1)
    q1 = await lane.submit(Gate())
    q2 = await lane.submit(Gate())
    with pytest.raises(LaneBusy):
        await lane.submit(value(0), max_wait=0)
    await settle()
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.submitted, stats.rejected) == (2, 2, 4, 1)
    assert stats.oldest_queued_at == q1.submitted_at
    await lane.cancel(q2.id)
    clock.advance(3)
    a.release()
    await ha
    b.fail(ValueError())
    await settle()
    stats = await lane.stats()
    assert (stats.succeeded, stats.failed, stats.cancelled) == (1, 1, 1)
    assert stats.mean_runtime == pytest.approx(4.0)
    assert stats.throughput_1m == 2
    await lane.aclose(drain=False)


async def test_throughput_window_is_one_minute(clock: ManualClock) -> None:
    """throughput_1m counts runs ended in the last 60 s and forgets older ones."""
    lane = Lane("x", 4, clock=clock)
    for i in range(10):
        await lane.run(value(i))
    clock.advance(30)
    for i in range(5):
        await lane.run(value(i))
    assert (await lane.stats()).throughput_1m == 15
    clock.advance(31)
    assert (await lane.stats()).throughput_1m == 5
    clock.advance(60)
    assert (await lane.stats()).throughput_1m == 0


async def test_throughput_window_memory_does_not_grow_with_rate(clock: ManualClock) -> None:
    """The throughput window keeps 60 counters however many runs end per second."""
    lane = Lane("x", 64, clock=clock)
    for _ in range(50):
        await asyncio.gather(*(lane.run(value(i)) for i in range(100)))
        clock.advance(0.01)
    window = lane._throughput
    assert (len(window._counts), len(window._stamps)) == (60, 60)
    assert (await lane.stats()).throughput_1m == 5000


# -- resizing ----------------------------------------------------------------------------


async def test_raising_max_starts_queued_jobs_at_once() -> None:
    """set_max_concurrent up starts queued jobs in the same step."""
    lane = Lane("x", 1)
    await lane.submit(Gate())
    queued = [await lane.submit(Gate()) for _ in range(3)]
    await lane.set_max_concurrent(3)
    assert [h.state for h in queued] == [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED]
    assert queued[2].position == 1
    await lane.aclose(drain=False)


async def test_lowering_max_never_cancels_running_jobs() -> None:
    """set_max_concurrent down keeps running jobs; new starts wait until fewer than n run."""
    lane = Lane("x", 3)
    gates = [Gate() for _ in range(3)]
    handles = [await lane.submit(g) for g in gates]
    waiting = await lane.submit(Gate())
    await settle()
    await lane.set_max_concurrent(1)
    assert all(h.state is JobState.RUNNING for h in handles)
    gates[0].release()
    await handles[0]
    assert waiting.state is JobState.QUEUED  # 2 still run, limit is 1
    gates[1].release()
    await handles[1]
    assert waiting.state is JobState.QUEUED
    gates[2].release()
    await handles[2]
    assert waiting.state is JobState.RUNNING
    await lane.aclose(drain=False)


async def test_set_max_concurrent_validates() -> None:
    """set_max_concurrent refuses n < 1 and non-ints."""
    lane = Lane("x", 1)
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        await lane.set_max_concurrent(0)
    with pytest.raises(TypeError, match=r"^max_concurrent must be an int, got 2.0$"):
        await lane.set_max_concurrent(2.0)  # type: ignore[arg-type]
    assert lane.max_concurrent == 1


async def test_set_eta_window_and_preemption_validate() -> None:
    """set_eta_window and set_preemption validate their argument."""
    lane = Lane("x", 1)
    with pytest.raises(ValueError, match=r"^eta_window must be >= 1, got 0$"):
        await lane.set_eta_window(0)
    with pytest.raises(TypeError, match=r"^preemption must be a Preemption or None, got 'on'$"):
        await lane.set_preemption("on")  # type: ignore[arg-type]


# -- closing -----------------------------------------------------------------------------


async def test_close_draining_runs_queued_jobs() -> None:
    """aclose(drain=True) refuses new jobs, runs queued ones, returns when all ended."""
    lane = Lane("x", 1)
    handles = [await lane.submit(value(i)) for i in range(5)]
    await lane.aclose()
    assert [h.result() for h in handles] == [0, 1, 2, 3, 4]
    with pytest.raises(LaneClosed):
        await lane.submit(value(0))
    await lane.aclose()  # again: harmless


@pytest.mark.parametrize(("drain", "shown"), [("no", "'no'"), (0, "0"), (None, "None")])
async def test_close_drain_must_be_a_bool(drain: object, shown: str) -> None:
    """aclose(drain=...) with anything but a bool is a TypeError, and the lane stays open
    (a truthy "no" must not drain)."""
    lane = Lane("x", 1)
    with pytest.raises(TypeError, match=rf"^drain must be a bool, got {shown}$"):
        await lane.aclose(drain=drain)  # type: ignore[arg-type]
    assert not lane.closed
    assert await lane.run(value(1)) == 1


async def test_close_without_drain_wakes_every_waiter() -> None:
    """aclose(drain=False): queued waiters get LaneClosed, running jobs JobCancelled."""
    lane = Lane("x", 1)
    gate = Gate()
    running = await lane.submit(gate)
    queued = [await lane.submit(Gate()) for _ in range(3)]
    waiters = [asyncio.create_task(_await(h)) for h in [running, *queued]]
    await settle()
    await lane.aclose(drain=False)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], JobCancelled)
    assert str(results[0]).endswith("was cancelled: the lane was closed")
    assert all(isinstance(r, LaneClosed) for r in results[1:])
    assert gate.cancelled
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 4)


async def test_close_without_drain_after_draining_close() -> None:
    """A forced close after a draining one cancels what is left and both return."""
    lane = Lane("x", 1)
    gate = Gate()
    await lane.submit(gate)
    queued = await lane.submit(Gate())
    draining = asyncio.create_task(lane.aclose())
    await settle()
    assert not draining.done()
    await lane.aclose(drain=False)
    await draining
    assert queued.state is JobState.CANCELLED


async def test_async_with_closes_draining() -> None:
    """`async with Lane(...)` drains the lane on exit."""
    async with Lane("x", 2) as lane:
        handles = [await lane.submit(value(i)) for i in range(4)]
    assert lane.closed
    assert [h.result() for h in handles] == [0, 1, 2, 3]


async def test_current_job_outside_a_job_is_none() -> None:
    """current_job() is None outside a job and the job's context inside."""
    lane = Lane("x", 1)
    assert current_job() is None

    async def body() -> tuple[str, int, bool]:
        ctx = current_job()
        assert ctx is not None
        return ctx.id, ctx.priority, ctx.preempt_requested

    assert await lane.run(body, job_id="me", priority=3) == ("me", 3, False)


async def test_policy_property_and_fifo_default() -> None:
    """A lane without a policy is FIFO."""
    assert Lane("x").policy == FIFO()


# -- estimates ---------------------------------------------------------------------------


async def _history(lane: Lane, clock: ManualClock, seconds: float, runs: int) -> None:
    """Record `runs` run times of `seconds` each."""
    for _ in range(runs):
        gate = Gate()
        handle = await lane.submit(gate)
        await settle()
        clock.advance(seconds)
        gate.release()
        await handle


async def test_eta_uses_elapsed_time_of_running_jobs(clock: ManualClock) -> None:
    """The ETA counts how long running jobs have already run, not whole run times."""
    lane = Lane("x", 2, clock=clock)
    await _history(lane, clock, 10.0, 4)
    await lane.submit(Gate())
    await lane.submit(Gate())
    clock.advance(4)
    first = await lane.submit(Gate())
    second = await lane.submit(Gate())
    third = await lane.submit(Gate())
    # Both slots free up about 6 s from now (10 s runs, 4 s done), the third job
    # waits for one of them plus about one more run.
    assert 5.0 <= first.eta <= 6.0
    assert first.eta <= second.eta <= 6.0
    assert 11.0 <= third.eta <= 16.0
    before = first.eta
    clock.advance(1)
    assert first.eta == pytest.approx(before - 1.0)  # live
    await lane.aclose(drain=False)


async def test_busy_eta_is_the_queued_eta(clock: ManualClock) -> None:
    """LaneBusy reports the very ETA a queued job at that position is given."""
    lane = Lane("x", 2, clock=clock)
    await _history(lane, clock, 10.0, 3)
    await lane.submit(Gate())
    await lane.submit(Gate())
    clock.advance(3)
    await lane.submit(Gate())
    with pytest.raises(LaneBusy) as info:
        await lane.submit(Gate(), max_wait=5)
    busy = info.value
    assert (busy.position, busy.lane, busy.max_wait) == (2, "x", 5)
    assert busy.eta > 5
    assert str(busy) == (
        f"lane 'x' is busy: position 2, estimated wait {busy.eta:.1f}s exceeds max_wait 5s"
    )
    queued = await lane.submit(Gate())
    assert (queued.position, queued.eta) == (2, busy.eta)
    accepted = await lane.submit(Gate(), max_wait=60.0)
    assert accepted.position == 3
    assert (await lane.stats()).rejected == 1
    await lane.aclose(drain=False)


async def test_eta_fallbacks_without_run_times(clock: ManualClock) -> None:
    """Without run times the ETA uses the recent rate, and one second per place before."""
    lane = Lane("x", 1, clock=clock)
    await lane.submit(Gate())
    queued = await lane.submit(Gate())
    assert queued.eta == 1.0
    clock.advance(60)
    running = next(iter(lane._running))
    await running.cancel()  # ends a run without a run time: the rate is 1 per minute
    await settle()
    later = await lane.submit(Gate())
    assert later.position == 1
    assert later.eta == pytest.approx(60.0)
    await lane.aclose(drain=False)


async def test_run_blocks_until_its_queued_job_has_run() -> None:
    """run() on a full lane waits while its job is queued, then returns its value."""
    lane = Lane("x", 1)
    gate = Gate()
    await lane.submit(gate)
    caller = asyncio.create_task(lane.run(value("mine")))
    await settle()
    assert not caller.done()
    assert (await lane.stats()).queued == 1
    gate.release()
    assert await caller == "mine"


async def test_slot_request_cancelled_by_id_raises_job_cancelled() -> None:
    """A waiting slot() cancelled by lane.cancel or a forced close raises, not CancelledError."""
    lane = Lane("x", 1)
    await lane.submit(Gate())

    async def user(job_id: str) -> None:
        async with lane.slot(job_id=job_id):
            raise AssertionError("must not run")

    first = asyncio.create_task(user("s1"))
    second = asyncio.create_task(user("s2"))
    await settle()
    await lane.cancel("s1")
    with pytest.raises(JobCancelled, match=r"^job 's1' in lane 'x' was cancelled$"):
        await first
    await lane.aclose(drain=False)
    with pytest.raises(LaneClosed):
        await second


async def test_type_error_raised_by_fn_itself_is_kept() -> None:
    """A TypeError raised by fn (not by awaiting its result) reaches the caller unchanged."""
    lane = Lane("x", 1)
    mine = TypeError("bad argument in my code")

    def fn() -> Awaitable[None]:
        raise mine

    handle: JobHandle[None] = await lane.submit(fn)
    with pytest.raises(TypeError) as info:
        await handle
    assert info.value is mine
