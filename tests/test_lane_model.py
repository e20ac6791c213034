"""A stateful model test: random submit, run, slot, finish, fail, cancel, resize, preempt
and close.

Hypothesis drives a real Lane on its own event loop. Jobs come three ways: ``submit``
(a handle), ``run`` (a caller task that owns its job and may be cancelled from outside)
and ``slot()`` (a holder task whose body is the job). Each job's body waits on a gate the
model opens with an instruction: return, raise, cancel itself through its own handle,
submit an urgent job, or close its own lane. After every step the model checks that no
start ever took more than ``max_concurrent`` slots (a preempted job counting until its
task ended), that positions are exactly 1..n, that a queued job implies a full lane, that
only running victims have ``preempt_requested``, that a draining close has returned once
what it waits for has ended, that the lane's stats add up (``submitted == succeeded +
failed + cancelled + preempted - requeues + queued + running``, each term matching the
handles' states; a refusal counts in ``rejected`` only) and, for FIFO, that queued jobs
start in arrival order; at the end, that every job ended exactly once, that what each
caller saw matches the job's final state, that a requeued job ran once per eviction plus
once, and that no waiter was left hanging.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from executus import (
    FIFO,
    FairShare,
    JobHandle,
    JobState,
    Lane,
    LaneBusy,
    LaneClosed,
    NotQueued,
    Preemption,
    Priority,
    QueuePolicy,
    current_job,
)
from executus.testing import ManualClock

POLICIES: dict[str, QueuePolicy] = {
    "fifo": FIFO(),
    "priority": Priority(),
    "aging": Priority(aging=5),
    "fair": FairShare(weights={"a": 2}),
}

# Preemption settings by name (shrinking goes towards the first).
PREEMPTIONS: dict[str, Preemption | None] = {
    "off": None,
    "end": Preemption(min_runtime=0),
    "requeue": Preemption(min_runtime=0, requeue=True),
    "end-grace": Preemption(min_runtime=0, grace=2),
    "requeue-grace": Preemption(min_runtime=0, grace=2, requeue=True),
    "end-long-grace": Preemption(min_runtime=1, grace=20),
    "requeue-long-grace": Preemption(min_runtime=1, grace=20, requeue=True),
}

# What a caller may see, by the job's final state.
SEEN: dict[JobState, set[str]] = {
    JobState.SUCCEEDED: {"ok"},
    JobState.FAILED: {"ValueError"},
    JobState.CANCELLED: {"JobCancelled", "LaneClosed", "CancelledError"},
    JobState.PREEMPTED: {"JobPreempted"},
}

INSTRUCTIONS = ["done", "fail", "self-cancel", "spawn"]


def now(coro: Coroutine[Any, Any, Any]) -> Any:
    """The value of a coroutine that never suspends, without running the loop (so no
    other task moves while an invariant reads the lane)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


class LaneModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.handles: list[JobHandle[Any]] = []
        self.gates: dict[str, asyncio.Future[str]] = {}
        self.errors: dict[str, ValueError] = {}  # the error each failing job raised
        self.outcomes: dict[str, str] = {}  # what awaiting the handle gave
        self.seen: dict[str, str] = {}  # what a run() caller or slot() holder saw
        self.callers: dict[str, asyncio.Task[None]] = {}  # run() callers, slot() holders
        self.outside: set[str] = set()  # callers cancelled from outside
        self.runs: Counter[str] = Counter()  # bodies started, per job
        self.waiters: list[asyncio.Task[Any]] = []
        self.live = 0
        self.cap = 0
        self.n = 0
        self.rejected = 0
        self.submitting = ""  # the job the current submit rule makes
        self.starts: list[tuple[int, str]] = []  # (seq, id) of first starts from the queue
        self.jumped: set[str] = set()  # started at once, or as a preemptor
        self.closed = False
        self.closing: asyncio.Task[None] | None = None  # the model's draining close
        self.draining: set[str] = set()  # jobs inside their own lane's draining close
        self.violations: list[str] = []
        self.lane: Lane

    def run(self, coro: Any) -> Any:
        # A hang fails the step (in real time, never reached when the lane is right).
        return self.loop.run_until_complete(asyncio.wait_for(coro, 2))

    async def _settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    @initialize(
        policy=st.sampled_from(sorted(POLICIES)),
        slots=st.integers(1, 3),
        preempt=st.sampled_from(list(PREEMPTIONS)[1:]),  # set_preemption turns it off
    )
    def make(self, policy: str, slots: int, preempt: str) -> None:
        self.policy = policy
        self.lane = Lane(
            "m", slots, policy=POLICIES[policy], preemption=PREEMPTIONS[preempt], clock=self.clock
        )
        self.cap = slots

    # -- job bodies ------------------------------------------------------------------

    def _entered(self, job_id: str) -> None:
        """A body starts: count it live, check the slot limit, note a first start."""
        self.live += 1
        self.runs[job_id] += 1
        if self.runs[job_id] == 1 and job_id != self.submitting and job_id not in self.jumped:
            job = current_job()
            assert job is not None
            assert job.id == job_id
            self.starts.append((job.handle._seq, job_id))
        if not self.live <= len(self.lane._running) <= self.cap:
            self.violations.append(f"{self.live} live, {self.lane._running} running")

    async def _gated(self, job_id: str) -> str:
        """Wait for the model's instruction and carry it out."""
        what = "spawn"
        while what == "spawn":
            fut: asyncio.Future[str] = self.loop.create_future()
            self.gates[job_id] = fut
            what = await fut
            if what == "spawn":
                await self._spawn()
        if what == "fail":
            raise self.errors.setdefault(job_id, ValueError(f"{job_id} failed"))
        if what == "self-cancel":
            job = current_job()
            assert job is not None
            await job.handle.cancel()
            self.violations.append(f"{job_id}: cancelling itself did not raise")
        elif what.startswith("close"):
            self.draining.add(job_id)
            try:
                await self.lane.aclose(drain=what == "close")
            finally:
                self.draining.discard(job_id)
        return "done"

    async def _spawn(self) -> None:
        """Submit an urgent job from inside a job (which its arrival may preempt)."""
        self.n += 1
        job_id = f"j{self.n}"
        try:
            handle = await self.lane.submit(self._body(job_id), job_id=job_id, priority=4)
        except LaneClosed:
            assert self.closed
            return
        if handle.state is JobState.RUNNING:
            self.jumped.add(job_id)
        self._track(job_id, handle)

    def _body(self, job_id: str) -> Any:
        async def body() -> str:
            self._entered(job_id)
            try:
                return await self._gated(job_id)
            finally:
                self.live -= 1

        return body

    async def _watch(self, handle: JobHandle[Any]) -> None:
        try:
            await handle
            outcome = "ok"
        except BaseException as exc:  # the outcome is what we record
            outcome = type(exc).__name__
        assert handle.id not in self.outcomes, "a job ended twice"
        self.outcomes[handle.id] = outcome

    def _track(self, job_id: str, handle: JobHandle[Any] | None) -> None:
        """After a submit rule: keep the new job's handle (None: refused)."""
        if handle is None:
            return
        assert not self.closed
        self.handles.append(handle)
        if handle.state is JobState.QUEUED and handle in self.lane._front:
            self.jumped.add(job_id)  # a preemptor still waiting for its victim
        self.waiters.append(self.loop.create_task(self._watch(handle)))

    def _refused(self, exc: BaseException, max_wait: float | None) -> None:
        if isinstance(exc, LaneBusy):
            assert max_wait is not None
            self.rejected += 1
        else:
            assert isinstance(exc, LaneClosed)
            assert self.closed

    def _new_id(self) -> str:
        self.n += 1
        self.submitting = f"j{self.n}"
        return self.submitting

    # -- submitting ------------------------------------------------------------------

    @rule(
        key=st.sampled_from(["a", "b", "c"]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.0, 2.0]),
    )
    def submit(self, key: str, priority: int, preemptible: bool, max_wait: float | None) -> None:
        job_id = self._new_id()

        async def go() -> JobHandle[Any] | None:
            try:
                handle = await self.lane.submit(
                    self._body(job_id),
                    job_id=job_id,
                    key=key,
                    priority=priority,
                    preemptible=preemptible,
                    max_wait=max_wait,
                )
            except (LaneBusy, LaneClosed) as exc:
                self._refused(exc, max_wait)
                return None
            await self._settle()
            return handle

        self._track(job_id, self.run(go()))
        self.submitting = ""

    def _caller(self, job_id: str, max_wait: float | None, enter: Any) -> None:
        """Start a caller task (``enter()`` makes its job) and track its job."""

        async def caller() -> None:
            task = asyncio.current_task()
            assert task is not None
            try:
                await enter()
            except (LaneBusy, LaneClosed) as exc:
                if job_id not in self.lane._jobs and not any(
                    h.id == job_id for h in self.handles
                ):  # refused at submit
                    self._refused(exc, max_wait)
                    self.seen[job_id] = "refused"
                    return
                self.seen[job_id] = type(exc).__name__
            except asyncio.CancelledError:
                self.seen[job_id] = "CancelledError"
                if job_id not in self.outside:
                    self.violations.append(f"{job_id}: a bare CancelledError")
                return
            except BaseException as exc:
                self.seen[job_id] = type(exc).__name__
                if isinstance(exc, ValueError) and exc is not self.errors.get(job_id):
                    self.violations.append(f"{job_id}: not the job's own error")
            else:
                self.seen[job_id] = "ok"
            if task.cancelling():
                self.violations.append(f"{job_id}: the caller's task is left cancelling")
            try:
                await asyncio.sleep(0)  # a cancel left pending would hit here
            except asyncio.CancelledError:
                self.violations.append(f"{job_id}: a stray cancel reached the caller")

        self.callers[job_id] = self.loop.create_task(caller())
        self.run(self._settle())
        self._track(job_id, self.lane._jobs.get(job_id))
        self.submitting = ""

    @rule(
        key=st.sampled_from(["a", "b", "c"]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.0]),
    )
    def run_caller(
        self, key: str, priority: int, preemptible: bool, max_wait: float | None
    ) -> None:
        job_id = self._new_id()

        async def enter() -> None:
            await self.lane.run(
                self._body(job_id),
                job_id=job_id,
                key=key,
                priority=priority,
                preemptible=preemptible,
                max_wait=max_wait,
            )

        self._caller(job_id, max_wait, enter)

    @rule(
        key=st.sampled_from(["a", "b", "c"]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.0]),
    )
    def slot_holder(
        self, key: str, priority: int, preemptible: bool, max_wait: float | None
    ) -> None:
        job_id = self._new_id()

        async def enter() -> None:
            async with self.lane.slot(
                job_id=job_id,
                key=key,
                priority=priority,
                preemptible=preemptible,
                max_wait=max_wait,
            ) as job:
                assert job.id == job_id
                self._entered(job_id)
                try:
                    await self._gated(job_id)
                finally:
                    self.live -= 1

        self._caller(job_id, max_wait, enter)

    @rule(how=st.sampled_from(["submit", "run", "slot"]))
    def urgent(self, how: str) -> None:
        """An arrival that outranks every other job (so preempts when it can)."""
        if how == "submit":
            self.submit(key="c", priority=4, preemptible=False, max_wait=None)
        elif how == "run":
            self.run_caller(key="c", priority=4, preemptible=False, max_wait=None)
        else:
            self.slot_holder(key="c", priority=4, preemptible=False, max_wait=None)

    # -- what jobs and callers do ----------------------------------------------------

    def _open_gates(self) -> list[tuple[str, asyncio.Future[str]]]:
        running = {h.id for h in self.handles if h.state is JobState.RUNNING}
        return [(k, f) for k, f in self.gates.items() if not f.done() and k in running]

    @rule(i=st.integers(0, 10), how=st.sampled_from(INSTRUCTIONS))
    def finish(self, i: int, how: str) -> None:
        """A running job returns, raises, cancels itself through its own handle, or
        submits an urgent job (and goes on)."""
        gates = self._open_gates()
        if gates:
            gates[i % len(gates)][1].set_result(how)
            self.run(self._settle())

    @precondition(lambda self: not self.closed and self.n >= 10)
    @rule(i=st.integers(0, 10), drain=st.booleans())
    def job_closes_lane(self, i: int, drain: bool) -> None:
        """A running job closes its own lane (draining or not) from inside."""
        gates = self._open_gates()
        if gates:
            self.closed = True
            gates[i % len(gates)][1].set_result("close" if drain else "close-now")
            self.run(self._settle())

    @precondition(lambda self: bool(self.handles))
    @rule(
        i=st.integers(0, 50),
        how=st.sampled_from(["handle", "id", "caller", "caller-as-a-slot-frees"]),
    )
    def cancel(self, i: int, how: str) -> None:
        """Cancel a job by handle or by id, or cancel its run() caller or slot() holder
        from outside (waiting or holding; or as a finishing job frees a slot for it)."""
        handle = self.handles[i % len(self.handles)]
        task = self.callers.get(handle.id)
        if how.startswith("caller") and task is not None and not task.done():
            self._cancel_caller(handle, task, how != "caller")
            return
        was = handle.state

        async def go() -> None:
            if how == "id":
                try:
                    await self.lane.cancel(handle.id)
                except NotQueued:
                    assert was is not JobState.QUEUED
                else:
                    assert was is JobState.QUEUED
            else:
                result = await handle.cancel()
                if was.terminal:
                    assert result is False
                else:  # it has ended: cancelled, or it finished while being cancelled
                    assert handle.done()
                    assert result is (handle.state is JobState.CANCELLED), (result, handle)
            await self._settle()

        self.run(go())

    def _cancel_caller(self, handle: JobHandle[Any], task: asyncio.Task[None], free: bool) -> None:
        if free:  # another job returns in the same loop step the caller is cancelled
            gates = [f for k, f in self._open_gates() if k != handle.id]
            if gates:
                gates[0].set_result("done")
        self.outside.add(handle.id)
        task.cancel()
        self.run(self._settle())
        assert task.done()
        # The caller owned its job: cancelled with it (removed if queued, else stopped).
        assert handle.done(), handle

    # -- the lane's settings, time, closing -------------------------------------------

    @rule(n=st.integers(1, 4))
    def resize(self, n: int) -> None:
        self.cap = max(n, len(self.lane._running))  # before any new start can run
        self.run(self.lane.set_max_concurrent(n))
        self.run(self._settle())

    @rule(preempt=st.sampled_from(list(PREEMPTIONS)))
    def set_preemption(self, preempt: str) -> None:
        self.run(self.lane.set_preemption(PREEMPTIONS[preempt]))
        self.run(self._settle())

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.run(self._settle())

    @precondition(lambda self: not self.closed and self.n >= 10)
    @rule(drain=st.booleans())
    def close(self, drain: bool) -> None:
        self.closed = True
        closing = self.loop.create_task(self.lane.aclose(drain=drain))
        self.run(self._settle())
        if not drain:
            assert closing.done()
            closing.result()
        else:
            self.closing = closing
            self.waiters.append(closing)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def slots_and_positions(self) -> None:
        if not hasattr(self, "lane"):
            return
        assert not self.violations, self.violations
        lane = self.lane
        lane._check()  # the lane's own invariants
        running = len(lane._running)
        assert self.live <= running <= self.cap
        if running <= lane.max_concurrent:
            self.cap = lane.max_concurrent
        queued = [h for h in self.handles if h.state is JobState.QUEUED]
        assert len(queued) == len(lane._queue) + len(lane._front)
        if queued:
            assert running >= lane.max_concurrent
        assert sorted(h.position for h in queued) == list(range(1, len(queued) + 1))
        assert all(h.eta >= 0 for h in queued)
        for h in self.handles:
            # Only a running victim has been asked to give up its slot.
            if not h.done():
                assert h.preempt_requested == (h in lane._victims), h
        # A draining close returns once the jobs it waits for have ended: all of them
        # (from outside), or the other running ones (from inside a job).
        if self.closing is not None and not lane._jobs:
            assert self.closing.done()
        if self.draining:
            assert running >= 2, (self.draining, lane._running)
        if self.policy == "fifo":
            seqs = [s for s, _ in self.starts]
            assert seqs == sorted(seqs), "FIFO started queued jobs out of arrival order"

    @invariant()
    def stats_add_up(self) -> None:
        if not hasattr(self, "lane"):
            return
        stats = now(self.lane.stats())
        states = Counter(h.state for h in self.handles)
        requeues = sum(h.preemptions for h in self.handles)
        assert stats.submitted == len(self.handles)
        assert stats.rejected == self.rejected
        assert stats.succeeded == states[JobState.SUCCEEDED]
        assert stats.failed == states[JobState.FAILED]
        assert stats.cancelled == states[JobState.CANCELLED]
        assert stats.preempted - requeues == states[JobState.PREEMPTED]
        assert stats.queued == states[JobState.QUEUED]
        assert stats.running == states[JobState.RUNNING]
        assert stats.submitted == (
            stats.succeeded
            + stats.failed
            + stats.cancelled
            + stats.preempted
            - requeues
            + stats.queued
            + stats.running
        )

    def teardown(self) -> None:
        if hasattr(self, "lane"):

            async def finish() -> None:
                await self.lane.aclose(drain=False)
                await self._settle()
                await asyncio.gather(*self.waiters, *self.callers.values())

            self.run(finish())
            assert not self.violations, self.violations
            assert all(h.done() for h in self.handles)
            assert set(self.outcomes) == {h.id for h in self.handles}
            assert len(self.lane._running) == 0
            assert not self.lane._jobs
            for h in self.handles:
                # What the handle's waiters and the job's caller saw match its state.
                assert self.outcomes[h.id] in SEEN[h.state], (h, self.outcomes[h.id])
                seen = self.seen.get(h.id)
                assert seen is None or seen in SEEN[h.state], (h, seen)
                if seen == "CancelledError":
                    assert h.id in self.outside
                if h.state is JobState.FAILED:
                    assert h.exception() is self.errors[h.id]
                if h.state in (JobState.SUCCEEDED, JobState.FAILED):
                    # A requeued job ran again from scratch: once per eviction, plus one.
                    assert self.runs[h.id] == h.preemptions + 1, (h, self.runs[h.id])
                assert self.runs[h.id] <= h.preemptions + 1
        self.loop.close()


LaneModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestLaneModel = LaneModel.TestCase
