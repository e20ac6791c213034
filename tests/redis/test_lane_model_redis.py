"""A stateful model test of RedisLane: two clients sharing one lane on a real redis-server.

Hypothesis drives two ``RedisLane`` clients of one lane (a fresh namespace per example)
on one event loop: submit on either client (keys, priorities, preemptible, max_wait), a
duplicate id from the other client, finish or fail a running job, cancel a job by its
handle or by ``lane.cancel(id)`` from either client, resize, close one client (draining
or not). After each step, once the lane has settled (polled, bounded: the scripts'
replies and the directed wake-ups land asynchronously), it checks lane-wide:

- never more job bodies live than ``max_concurrent`` (a preempted job counting until
  its task has ended; a resize down lowers the bound once enough jobs have ended);
- no idle slot while jobs wait, and Redis's running / queued figures match the handles;
- queued positions are 1..n across both clients, in the policy's dispatch order;
- every job that ended did so exactly once (one terminal event, one outcome);
- both clients' ``stats()`` agree, and their counters match what the handles saw.

At teardown both clients are closed without draining: every handle must be done and
every waiter woken, within a bound.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from executus import (
    FIFO,
    DuplicateJob,
    EventKind,
    FairShare,
    JobHandle,
    JobState,
    LaneBusy,
    LaneClosed,
    LaneEvent,
    LaneStats,
    NotQueued,
    Preemption,
    Priority,
    QueuePolicy,
)
from executus.redis import RedisLane

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

POLICIES: dict[str, QueuePolicy] = {
    "fifo": FIFO(),
    "priority": Priority(),
    "fair": FairShare(weights={"a": 2}),
}

STEP = 10.0  # seconds any one step (its action and the settling after it) may take
_TERMINAL_EVENTS = {
    EventKind.FINISHED,
    EventKind.CANCELLED,
    EventKind.PREEMPTED,
}


def _figures(stats: LaneStats) -> tuple[int, ...]:
    """The lane-wide figures of a snapshot that do not move while the lane is still."""
    return (
        stats.max_concurrent,
        stats.running,
        stats.queued,
        stats.submitted,
        stats.succeeded,
        stats.failed,
        stats.cancelled,
        stats.preempted,
        stats.rejected,
    )


class Unsettled(AssertionError):
    """The lane did not settle within the step's bound."""


class RedisLaneModel(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.namespace = f"m{uuid.uuid4().hex[:12]}"
        self.loop = asyncio.new_event_loop()
        self.lanes: list[RedisLane] = []
        self.owner: dict[str, int] = {}  # job id -> index of the client that submitted it
        self.handles: list[JobHandle[Any]] = []
        self.gates: dict[str, asyncio.Future[object]] = {}  # the current run's gate
        self.waiting: set[str] = set()  # jobs whose body waits on its gate
        self.outcomes: dict[str, str] = {}
        self.watchers: list[asyncio.Task[None]] = []
        self.ends: list[Counter[str]] = [Counter(), Counter()]  # terminal events per client
        self.live = 0
        self.cap = 0
        self.accepted = 0
        self.busy = 0
        self.closed: set[int] = set()
        self.closing: asyncio.Task[None] | None = None
        self.violations: list[str] = []
        self.policy = "fifo"

    # -- plumbing --------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(STEP):
                return await coro

        return self.loop.run_until_complete(bounded())

    def _observer(self, index: int) -> Any:
        def observe(event: LaneEvent) -> None:
            terminal = event.kind in _TERMINAL_EVENTS and event.state is not JobState.QUEUED
            if terminal and event.job_id is not None:
                self.ends[index][event.job_id] += 1

        return observe

    def _open(self) -> list[int]:
        return [i for i in range(len(self.lanes)) if i not in self.closed]

    def _started(self) -> list[int]:
        """The clients still connected: open, or draining their jobs in a close."""
        draining = self.closing is not None and not self.closing.done()
        return [i for i in range(len(self.lanes)) if i not in self.closed or draining]

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
        self.cap = slots
        first = RedisLane(
            "m",
            self.url,
            slots,
            policy=POLICIES[policy],
            preemption=preemption,
            lease=5.0,
            namespace=self.namespace,
        )
        second = RedisLane("m", self.url, lease=5.0, namespace=self.namespace)  # adopts
        self.lanes = [first, second]
        for i, lane in enumerate(self.lanes):
            lane.add_observer(self._observer(i))

        async def go() -> None:
            await first.stats()  # stores the settings before the second client attaches
            await second.stats()

        self.run(go())

    def _body(self, job_id: str) -> Any:
        async def body() -> object:
            self.live += 1
            try:
                if self.live > self.cap:
                    self.violations.append(f"{self.live} bodies live, bound {self.cap}")
                fut = self.loop.create_future()
                self.gates[job_id] = fut
                self.waiting.add(job_id)
                try:
                    return await fut
                finally:
                    self.waiting.discard(job_id)
            finally:
                self.live -= 1

        return body

    async def _watch(self, handle: JobHandle[Any]) -> None:
        try:
            await handle
            outcome = "ok"
        except BaseException as exc:  # the outcome is what we record
            outcome = type(exc).__name__
        assert handle.id not in self.outcomes, f"{handle.id} ended twice"
        self.outcomes[handle.id] = outcome

    # -- rules -----------------------------------------------------------------------

    @rule(
        client=st.integers(0, 1),
        key=st.sampled_from(["a", "b", None]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.0, 30.0]),
    )
    def submit(
        self, client: int, key: str | None, priority: int, preemptible: bool, max_wait: float | None
    ) -> None:
        job_id = f"j{len(self.owner)}"
        lane = self.lanes[client]

        async def go() -> None:
            try:
                handle = await lane.submit(
                    self._body(job_id),
                    job_id=job_id,
                    key=key,
                    priority=priority,
                    preemptible=preemptible,
                    max_wait=max_wait,
                )
            except LaneBusy:
                assert max_wait is not None
                self.busy += 1
                return
            except LaneClosed:
                assert client in self.closed
                return
            assert client not in self.closed
            self.accepted += 1
            self.owner[job_id] = client
            self.handles.append(handle)
            self.watchers.append(asyncio.create_task(self._watch(handle)))

        self.run(go())

    @rule(
        client=st.integers(0, 1),
        key=st.sampled_from(["a", "b"]),
        priority=st.integers(0, 3),
        preemptible=st.booleans(),
    )
    def submit_more(self, client: int, key: str, priority: int, preemptible: bool) -> None:
        """A second submit rule, so that queues build up (rules are drawn evenly)."""
        self.submit(client, key, priority, preemptible, None)

    @precondition(lambda self: any(not h.done() for h in self.handles))
    @rule(i=st.integers(0, 50))
    def duplicate(self, i: int) -> None:
        """A queued or running id submitted again, by the other client: DuplicateJob."""
        live = [h for h in self.handles if not h.done()]
        handle = live[i % len(live)]
        client = 1 - self.owner[handle.id]

        async def go() -> None:
            try:
                await self.lanes[client].submit(self._body(handle.id), job_id=handle.id)
            except DuplicateJob:
                pass
            except LaneClosed:
                assert client in self.closed
            else:
                raise AssertionError(f"{handle.id} ({handle.state}) submitted twice")

        self.run(go())

    @precondition(lambda self: bool(self.waiting))
    @rule(i=st.integers(0, 50), fail=st.booleans())
    def finish(self, i: int, fail: bool) -> None:
        job_id = sorted(self.waiting)[i % len(self.waiting)]
        fut = self.gates[job_id]
        if fail:
            fut.set_exception(ValueError("job failed"))
        else:
            fut.set_result("done")

    @precondition(lambda self: bool(self.handles))
    @rule(i=st.integers(0, 50))
    def cancel_handle(self, i: int) -> None:
        handle = self.handles[i % len(self.handles)]
        was = handle.state

        async def go() -> None:
            result = await handle.cancel()
            assert result is not was.terminal, (handle.id, was, result, handle.state)
            assert handle.done()

        self.run(go())

    @precondition(lambda self: bool(self.handles))
    @rule(i=st.integers(0, 50), client=st.integers(0, 1))
    def cancel_by_id(self, i: int, client: int) -> None:
        handle = self.handles[i % len(self.handles)]
        lane = self.lanes[client]

        async def go() -> None:
            queued = handle.state is JobState.QUEUED
            try:
                await lane.cancel(handle.id)
            except NotQueued:
                assert not queued, f"{handle.id} was queued"
            except LaneClosed:
                assert client in self.closed
            else:
                assert queued, f"{handle.id} ({handle.state}) cancelled by id"
                await self._until(handle.done, f"{handle.id} ends once cancelled by id")
                assert handle.state is JobState.CANCELLED

        self.run(go())

    @precondition(lambda self: len(self._open()) > 0)
    @rule(n=st.integers(1, 4), which=st.integers(0, 1))
    def resize(self, n: int, which: int) -> None:
        open_ = self._open()
        lane = self.lanes[open_[which % len(open_)]]
        self.cap = max(n, self.live)  # before any new start can run
        self.run(lane.set_max_concurrent(n))

    @precondition(lambda self: not self.closed and len(self.handles) >= 3)
    @rule(client=st.integers(0, 1), drain=st.booleans())
    def close(self, client: int, drain: bool) -> None:
        self.closed.add(client)
        lane = self.lanes[client]
        if drain:
            # Returns once this client's jobs have ended: later steps finish them.
            self.closing = self.loop.create_task(lane.aclose(drain=True))
            return
        self.run(lane.aclose(drain=False))
        mine = [h for h in self.handles if self.owner[h.id] == client]
        assert all(h.done() for h in mine), [h for h in mine if not h.done()]

    # -- settling and invariants -----------------------------------------------------

    async def _until(self, cond: Any, what: str) -> None:
        try:
            async with asyncio.timeout(STEP / 2):
                while not cond():  # noqa: ASYNC110 - the changes arrive from Redis
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise Unsettled(f"not settled: {what}") from None

    def _quiet(self, stats: LaneStats) -> str | None:
        """What still moves (None when the lane has settled)."""
        running = [h for h in self.handles if h.state is JobState.RUNNING]
        queued = [h for h in self.handles if h.state is JobState.QUEUED]
        ids = {h.id for h in running}
        if ids != self.waiting or self.live != len(running):
            return f"running {sorted(ids)}, bodies waiting {sorted(self.waiting)}"
        if stats.running != len(running) or stats.queued != len(queued):
            return f"redis {stats.running}/{stats.queued}, here {len(running)}/{len(queued)}"
        if queued and stats.running < stats.max_concurrent:
            return f"idle slot: {stats.running} < {stats.max_concurrent} with jobs queued"
        for h in self.handles:
            if h.done() and self.ends[self.owner[h.id]][h.id] == 0:
                return f"no terminal event yet for {h.id}"
        if self.closing is not None and not self.closing.done():
            i = next(iter(self.closed))
            if all(h.done() for h in self.handles if self.owner[h.id] == i):
                return "a draining close whose jobs have all ended has not returned"
        return None

    async def _settle(self) -> LaneStats:
        reader = self.lanes[self._open()[0]]
        last: str | None = "not read yet"
        calm = 0
        try:
            async with asyncio.timeout(STEP / 2):
                # Quiet at two reads in a row: a snapshot read while a reply was on
                # its way can match the handles by chance once, hardly twice.
                while True:
                    stats = await reader.stats()
                    last = self._quiet(stats)
                    calm = calm + 1 if last is None else 0
                    if calm == 2:
                        return stats
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise Unsettled(f"the lane did not settle: {last}") from None

    async def _check(self) -> None:
        assert not self.violations, self.violations
        stats = await self._settle()
        if self.live <= stats.max_concurrent:
            self.cap = stats.max_concurrent
        if self.closing is not None and self.closing.done():
            self.closing.result()  # a draining close that failed
        # Every client's stats are the same lane-wide figures.
        for i in self._started():
            other = await self.lanes[i].stats()
            assert _figures(other) == _figures(stats), (i, other, stats)
        # Counters against what the handles saw.
        states = Counter(h.state for h in self.handles)
        assert stats.submitted == self.accepted
        assert stats.rejected == self.busy
        assert stats.succeeded == states[JobState.SUCCEEDED]
        assert stats.failed == states[JobState.FAILED]
        assert stats.cancelled == states[JobState.CANCELLED], (stats, states)
        requeues = sum(h.preemptions for h in self.handles)
        assert stats.preempted == states[JobState.PREEMPTED] + requeues, (stats, states)
        # Every job that ended did so exactly once, as its client reported it.
        for h in self.handles:
            seen = self.ends[self.owner[h.id]][h.id]
            assert seen == (1 if h.done() else 0), (h.id, h.state, seen)
        # Positions: 1..n across both clients, in dispatch order.
        for i in self._started():
            await self.lanes[i].refresh()
        queued = sorted(
            (h for h in self.handles if h.state is JobState.QUEUED), key=lambda h: h.position
        )
        assert [h.position for h in queued] == list(range(1, len(queued) + 1)), [
            (h.id, h.position) for h in queued
        ]
        if self.policy == "fifo":
            order = [h._seq for h in queued]
            assert order == sorted(order), [(h.id, h._seq) for h in queued]
        elif self.policy == "priority":
            ranks = [(-h.priority, h._seq) for h in queued]
            assert ranks == sorted(ranks), [(h.id, h.priority, h._seq) for h in queued]

    @invariant()
    def settled_lane(self) -> None:
        if self.lanes and self._open():
            self.run(self._check())

    def teardown(self) -> None:
        try:
            if self.lanes:

                async def finish() -> None:
                    closes = [lane.aclose(drain=False) for lane in self.lanes]
                    await asyncio.gather(*closes)
                    if self.closing is not None:
                        await self.closing
                    await asyncio.gather(*self.watchers)

                self.run(finish())
                left = [(h.id, h.state) for h in self.handles if not h.done()]
                assert not left, f"handles not done after both clients closed: {left}"
                assert set(self.outcomes) == {h.id for h in self.handles}
                assert self.live == 0
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=STEP))
            self.loop.close()


def test_two_clients_keep_the_lane_contract(redis_server: RedisServer) -> None:
    """Random steps on two clients of one lane keep its invariants lane-wide."""

    class OnTheSessionServer(RedisLaneModel):
        def __init__(self) -> None:
            super().__init__(redis_server.url)

    run_state_machine_as_test(
        OnTheSessionServer,
        settings=settings(
            max_examples=25,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
