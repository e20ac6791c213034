"""A stateful model test: random submit, finish, fail, cancel, resize, preempt and close.

Hypothesis drives a real Lane on its own event loop. After every step it checks that
no start ever took more than ``max_concurrent`` slots (a preempted job counting until its
task ended), that positions are exactly 1..n, that a queued job implies a full lane and,
for FIFO, that queued jobs start in arrival order; at the end, that every job ended
exactly once and no waiter was left hanging.
"""

from __future__ import annotations

import asyncio
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
)
from executus.testing import ManualClock

POLICIES: dict[str, QueuePolicy] = {
    "fifo": FIFO(),
    "priority": Priority(),
    "aging": Priority(aging=5),
    "fair": FairShare(weights={"a": 2}),
}


class LaneModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.handles: list[JobHandle[Any]] = []
        self.gates: dict[str, asyncio.Future[object]] = {}
        self.outcomes: dict[str, str] = {}
        self.waiters: list[asyncio.Task[None]] = []
        self.live = 0
        self.cap = 0
        self.starts: list[tuple[int, str]] = []  # (seq, id) of first starts from the queue
        self.jumped: set[str] = set()  # started at once, or as a preemptor
        self.started_once: set[str] = set()
        self.closed = False
        self.violations: list[str] = []
        self.lane: Lane

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _settle(self) -> None:
        for _ in range(6):
            await asyncio.sleep(0)

    @initialize(
        policy=st.sampled_from(sorted(POLICIES)),
        slots=st.integers(1, 3),
        preempt=st.sampled_from(["off", "end", "requeue"]),
    )
    def make(self, policy: str, slots: int, preempt: str) -> None:
        preemption = None
        if preempt != "off":
            preemption = Preemption(min_runtime=0, requeue=preempt == "requeue")
        self.policy = policy
        self.lane = Lane(
            "m", slots, policy=POLICIES[policy], preemption=preemption, clock=self.clock
        )
        self.cap = slots

    def _body(self, job_id: str) -> Any:
        async def body() -> object:
            self.live += 1
            try:
                handle = next(h for h in self.handles if h.id == job_id)
                if job_id not in self.started_once and job_id not in self.jumped:
                    self.starts.append((handle._seq, job_id))
                self.started_once.add(job_id)
                if not self.live <= len(self.lane._running) <= self.cap:
                    self.violations.append(f"{self.live} live, {self.lane._running} running")
                fut = self.loop.create_future()
                self.gates[job_id] = fut
                return await fut
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

    @rule(
        key=st.sampled_from(["a", "b", "c"]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.0, 2.0]),
    )
    def submit(self, key: str, priority: int, preemptible: bool, max_wait: float | None) -> None:
        job_id = f"j{len(self.handles)}"

        async def go() -> None:
            try:
                handle = await self.lane.submit(
                    self._body(job_id),
                    job_id=job_id,
                    key=key,
                    priority=priority,
                    preemptible=preemptible,
                    max_wait=max_wait,
                )
            except LaneBusy:
                assert max_wait is not None
                return
            except LaneClosed:
                assert self.closed
                return
            assert not self.closed
            self.handles.append(handle)
            if handle.state is JobState.RUNNING or handle in self.lane._front:
                self.jumped.add(job_id)
            self.waiters.append(asyncio.create_task(self._watch(handle)))
            await self._settle()

        self.run(go())

    def _running_gate(self, i: int) -> tuple[str, asyncio.Future[object]] | None:
        live = [(k, f) for k, f in self.gates.items() if not f.done()]
        live = [
            (k, f)
            for k, f in live
            if any(h.id == k and h.state is JobState.RUNNING for h in self.handles)
        ]
        return live[i % len(live)] if live else None

    @rule(i=st.integers(0, 10), fail=st.booleans())
    def finish(self, i: int, fail: bool) -> None:
        picked = self._running_gate(i)
        if picked is None:
            return
        _, fut = picked
        if fail:
            fut.set_exception(ValueError("job failed"))
        else:
            fut.set_result("done")
        self.run(self._settle())

    @precondition(lambda self: bool(self.handles))
    @rule(i=st.integers(0, 50))
    def cancel_handle(self, i: int) -> None:
        handle = self.handles[i % len(self.handles)]
        was = handle.state

        async def go() -> None:
            result = await handle.cancel()
            if was.terminal:
                assert result is False
            await self._settle()

        self.run(go())

    @precondition(lambda self: bool(self.handles))
    @rule(i=st.integers(0, 50))
    def cancel_by_id(self, i: int) -> None:
        handle = self.handles[i % len(self.handles)]

        async def go() -> None:
            queued = handle.state is JobState.QUEUED
            try:
                await self.lane.cancel(handle.id)
            except NotQueued:
                assert not queued
            else:
                assert queued
            await self._settle()

        self.run(go())

    @rule(n=st.integers(1, 4))
    def resize(self, n: int) -> None:
        self.cap = max(n, len(self.lane._running))  # before any new start can run
        self.run(self.lane.set_max_concurrent(n))
        self.run(self._settle())

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.run(self._settle())

    @precondition(lambda self: not self.closed and len(self.handles) >= 8)
    @rule(drain=st.booleans())
    def close(self, drain: bool) -> None:
        self.closed = True
        closing = self.loop.create_task(self.lane.aclose(drain=drain))
        self.run(self._settle())
        if not drain:
            assert closing.done()
            closing.result()
        else:
            self.waiters.append(closing)

    @invariant()
    def slots_and_positions(self) -> None:
        if not hasattr(self, "lane"):
            return
        assert not self.violations, self.violations
        lane = self.lane
        lane._check()  # the lane's own invariants
        running = len(lane._running)
        assert running <= self.cap
        if running <= lane.max_concurrent:
            self.cap = lane.max_concurrent
        queued = [h for h in self.handles if h.state is JobState.QUEUED]
        assert len(queued) == len(lane._queue) + len(lane._front)
        if queued:
            assert running >= lane.max_concurrent
        assert sorted(h.position for h in queued) == list(range(1, len(queued) + 1))
        if self.policy == "fifo":
            seqs = [s for s, _ in self.starts]
            assert seqs == sorted(seqs), "FIFO started queued jobs out of arrival order"

    def teardown(self) -> None:
        if hasattr(self, "lane"):

            async def finish() -> None:
                await self.lane.aclose(drain=False)
                await self._settle()
                await asyncio.wait_for(asyncio.gather(*self.waiters), timeout=5)

            self.run(finish())
            assert all(h.done() for h in self.handles)
            assert set(self.outcomes) == {h.id for h in self.handles}
            assert len(self.lane._running) == 0
            assert not self.lane._jobs
        self.loop.close()


LaneModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLaneModel = LaneModel.TestCase
