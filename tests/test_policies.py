"""Queue policies: dispatch order, true positions, aging, fair share and custom policies."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from executus import (
    FIFO,
    FairShare,
    JobHandle,
    Lane,
    PolicyState,
    Preemption,
    Priority,
    QueuePolicy,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle


async def _start_order(lane: Lane, handles: list[JobHandle[Any]], blocker: Gate) -> list[str]:
    """Release the blocker and record the order in which queued jobs start."""
    order: list[str] = []
    await settle()
    blocker.release()
    while len(order) < len(handles):
        await asyncio.sleep(0)
        for h in handles:
            if h.id not in order and h.state.value != "queued":
                order.append(h.id)
    return order


async def _queue_order(lane: Lane, specs: list[dict[str, Any]]) -> list[str]:
    """Queue jobs behind one running blocker on a 1-slot lane; return their start order."""
    blocker = Gate()
    await lane.submit(blocker)
    handles = [await lane.submit(_instant, **spec) for spec in specs]
    positions = {h.id: h.position for h in handles}
    order = await _start_order(lane, handles, blocker)
    # Each job's reported position was its true place in the dispatch order.
    assert sorted(positions, key=positions.__getitem__) == order
    return order


async def _instant() -> None:
    return None


def test_priority_and_fair_share_validate() -> None:
    """Bad aging and weights are refused with the rule and the value."""
    with pytest.raises(ValueError, match=r"^aging must be > 0 seconds or None, got 0$"):
        Priority(aging=0)
    with pytest.raises(ValueError, match=r"^weights\['a'\] must be a finite number > 0, got 0$"):
        FairShare(weights={"a": 0})
    with pytest.raises(ValueError, match=r"^default_weight must be a finite number > 0, got -1$"):
        FairShare(default_weight=-1)
    with pytest.raises(TypeError, match=r"^weights keys must be str, got 1$"):
        FairShare(weights={1: 2.0})  # type: ignore[dict-item]


def test_policy_reprs_and_equality() -> None:
    """Policies compare by settings and have readable reprs."""
    assert repr(Priority(aging=5)) == "Priority(aging=5)"
    assert repr(FairShare()) == "FairShare()"
    assert FairShare(weights={"a": 2}) == FairShare(weights={"a": 2.0})
    assert Priority() != Priority(aging=1)
    assert FIFO() == FIFO()


async def test_fifo_is_arrival_order() -> None:
    """FIFO starts jobs in arrival order, whatever their priority."""
    lane = Lane("x", 1)
    order = await _queue_order(
        lane, [{"job_id": "a", "priority": 0}, {"job_id": "b", "priority": 9}, {"job_id": "c"}]
    )
    assert order == ["a", "b", "c"]


async def test_priority_orders_by_level_then_arrival() -> None:
    """Priority starts higher levels first and keeps arrival order within a level."""
    lane = Lane("x", 1, policy=Priority())
    order = await _queue_order(
        lane,
        [
            {"job_id": "a", "priority": 1},
            {"job_id": "b", "priority": 5},
            {"job_id": "c", "priority": 1},
            {"job_id": "d", "priority": 5},
            {"job_id": "e", "priority": -2},
        ],
    )
    assert order == ["b", "d", "a", "c", "e"]


async def test_aging_lets_old_jobs_overtake(clock: ManualClock) -> None:
    """With aging, a job gains one level per `aging` seconds waited."""
    lane = Lane("x", 1, policy=Priority(aging=10), clock=clock)
    blocker = Gate()
    await lane.submit(blocker)
    old = await lane.submit(_instant, job_id="old", priority=0)
    clock.advance(25)  # old is now worth 2.5 levels
    high = await lane.submit(_instant, job_id="high", priority=2)
    higher = await lane.submit(_instant, job_id="higher", priority=3)
    assert (higher.position, old.position, high.position) == (1, 2, 3)
    assert await _start_order(lane, [old, high, higher], blocker) == ["higher", "old", "high"]


async def test_fair_share_position_is_the_true_place() -> None:
    """A key flooding the lane does not push another key's job behind its flood."""
    lane = Lane("x", 1, policy=FairShare())
    blocker = Gate()
    await lane.submit(blocker)
    flood = [await lane.submit(_instant, key="flood") for _ in range(10)]
    lone = await lane.submit(_instant, key="lone", job_id="lone")
    assert lone.position == 2  # after the flood's first job, not at the queue's end
    assert [h.position for h in flood[:3]] == [1, 3, 4]
    order = await _start_order(lane, [*flood, lone], blocker)
    assert order.index("lone") == 1


async def test_fair_share_idle_key_earns_no_credit() -> None:
    """A key that was idle does not get a burst of catch-up starts."""
    lane = Lane("x", 1, policy=FairShare())
    blocker = Gate()
    await lane.submit(blocker)
    busy = [await lane.submit(_instant, key="busy") for _ in range(6)]
    await settle()
    blocker.release()
    await settle(30)
    # "late" arrives after busy had the lane to itself: it alternates, no burst.
    blocker2 = Gate()
    await lane.submit(blocker2, key="busy")
    busy2 = [await lane.submit(_instant, key="busy", job_id=f"b{i}") for i in range(4)]
    late = [await lane.submit(_instant, key="late", job_id=f"l{i}") for i in range(4)]
    order = await _start_order(lane, [*busy2, *late], blocker2)
    assert all(h.done() for h in busy)
    assert order[:4] in (["l0", "b0", "l1", "b1"], ["b0", "l0", "b1", "l1"])


async def test_fair_share_weights_split_starts() -> None:
    """With weights 3:1 and both keys backlogged, starts split 75/25."""
    lane = Lane("x", 1, policy=FairShare(weights={"a": 3.0}))
    blocker = Gate()
    await lane.submit(blocker)
    handles = [await lane.submit(_instant, key=k) for _ in range(100) for k in ("a", "b")]
    order = await _start_order(lane, handles, blocker)
    keys = {h.id: h.key for h in handles}
    window = Counter(keys[i] for i in order[:100])
    assert window == {"a": 75, "b": 25}


async def test_fair_share_priority_within_a_key() -> None:
    """Within one key, higher priority goes first; other keys keep their turn."""
    lane = Lane("x", 1, policy=FairShare())
    order = await _queue_order(
        lane,
        [
            {"job_id": "a1", "key": "a"},
            {"job_id": "b1", "key": "b"},
            {"job_id": "a2", "key": "a", "priority": 9},
            {"job_id": "b2", "key": "b"},
        ],
    )
    assert order == ["a2", "b1", "a1", "b2"]


class _LIFOState(PolicyState):
    def __init__(self) -> None:
        self.stack: list[JobHandle[Any]] = []

    def push(self, job: JobHandle[Any], now: float) -> None:
        self.stack.append(job)

    def pop(self) -> JobHandle[Any]:
        return self.stack.pop()

    def remove(self, job: JobHandle[Any]) -> None:
        self.stack.remove(job)

    def position(self, job: JobHandle[Any]) -> int:
        return len(self.stack) - self.stack.index(job)

    def __len__(self) -> int:
        return len(self.stack)


class LIFO(QueuePolicy):
    name = "lifo"

    def new_state(self) -> PolicyState:
        return _LIFOState()


async def test_custom_policy() -> None:
    """A QueuePolicy subclass orders the lane, positions included."""
    lane = Lane("x", 1, policy=LIFO())
    assert repr(lane) == "<Lane 'x' [0/1 running, 0 queued | lifo]>"
    order = await _queue_order(lane, [{"job_id": "a"}, {"job_id": "b"}, {"job_id": "c"}])
    assert order == ["c", "b", "a"]


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(["fifo", "priority", "aging", "fair"]),
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("push"),
                st.sampled_from("abc"),
                # Huge priorities take the queues' keys past 64 bits (they widen).
                st.one_of(st.integers(-2, 2), st.sampled_from([2**39, -(2**39), 2**40 - 1])),
            ),
            st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0)),
            st.tuples(st.just("pop"), st.just(""), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_positions_match_dispatch_order(policy: str, ops: list[tuple[str, str, int]]) -> None:
    """After any mix of arrivals, cancels and starts, positions are the dispatch order."""
    asyncio.run(_positions_match(policy, ops))


async def _positions_match(policy: str, ops: list[tuple[str, str, int]]) -> None:
    clock = ManualClock()
    made: dict[str, QueuePolicy] = {
        "fifo": FIFO(),
        "priority": Priority(),
        "aging": Priority(aging=2),
        "fair": FairShare(weights={"a": 2}),
    }
    lane = Lane("x", 1, policy=made[policy], clock=clock)
    running = await lane.submit(Gate())
    queued: list[JobHandle[Any]] = []
    for op, key, prio in ops:
        clock.advance(0.5)
        if op == "push":
            queued.append(await lane.submit(Gate(), key=key, priority=prio))
        elif op == "cancel" and queued:
            assert await queued.pop(prio % len(queued)).cancel()
        elif op == "pop" and queued:
            # End the running job: the job at position 1 must start in its place.
            expected = next(h for h in queued if h.position == 1)
            assert await running.cancel()
            assert expected.state.value == "running"
            queued.remove(expected)
            running = expected
        assert sorted(h.position for h in queued) == list(range(1, len(queued) + 1))
    await lane.aclose(drain=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**40 - 1)),
        min_size=1,
        max_size=30,
    )
)
def test_fair_share_slot_keys_sort_as_tag_then_key(pairs: list[tuple[float, int]]) -> None:
    """The single-int slot key compares exactly as (virtual-time tag, key order)."""
    from executus._policies import _slot_key

    for a in pairs:
        for b in pairs:
            assert (a < b) == (_slot_key(*a) < _slot_key(*b))
            assert (a == b) == (_slot_key(*a) == _slot_key(*b))


@settings(max_examples=150, deadline=None)
@given(
    levels=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("push"),
                st.one_of(st.integers(-3, 3), st.sampled_from([2**39, -(2**39)])),
            ),
            st.tuples(st.just("pop"), st.just(0)),
            st.tuples(st.just("remove"), st.integers(0, 60)),
            st.tuples(st.just("requeue"), st.integers(0, 60)),
        ),
        max_size=60,
    ),
)
def test_priority_levels_and_shared_queue_keep_the_order(
    levels: int, ops: list[tuple[str, int]]
) -> None:
    """With few own-queue levels, shared-queue levels still pop and rank in order."""
    from executus import _policies

    saved = _policies._MAX_LEVELS
    _policies._MAX_LEVELS = levels
    try:
        _check_priority_state(ops)
    finally:
        _policies._MAX_LEVELS = saved


def _check_priority_state(ops: list[tuple[str, int]]) -> None:
    state = Priority().new_state()
    owner = Lane("x", 1)
    queued: list[JobHandle[Any]] = []
    popped: list[JobHandle[Any]] = []
    seq = 0

    def order() -> list[JobHandle[Any]]:
        return sorted(queued, key=lambda h: (-h.priority, h._seq))

    for op, arg in ops:
        if op == "push":
            job: JobHandle[Any] = JobHandle(owner, str(seq), None, None, arg, False, seq, 0.0)
            seq += 1
            state.push(job, 0.0)
            queued.append(job)
        elif op == "pop" and queued:
            expected = order()[0]
            assert state.pop() is expected
            queued.remove(expected)
            popped.append(expected)
        elif op == "remove" and queued:
            job = queued.pop(arg % len(queued))
            state.remove(job)
        elif op == "requeue" and popped:
            job = popped.pop(arg % len(popped))
            state.requeue(job, 0.0)
            queued.append(job)
        assert len(state) == len(queued)
        assert [state.position(h) for h in order()] == list(range(1, len(queued) + 1))


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.sampled_from("abcd"), st.integers(-1, 1)),
            st.tuples(st.just("pop"), st.just(""), st.just(0)),
            st.tuples(st.just("remove"), st.just(""), st.integers(0, 40)),
            st.tuples(st.just("requeue"), st.just(""), st.integers(0, 40)),
        ),
        max_size=60,
    )
)
def test_fair_share_whole_number_keys_match_the_general_keys(
    ops: list[tuple[str, str, int]],
) -> None:
    """Default weights (whole-number slot keys) order jobs as the float-bit keys do."""
    unit: Any = FairShare().new_state()
    general: Any = FairShare(weights={"unused": 1.0}).new_state()  # float-bit keys
    assert unit._unit
    assert not general._unit
    owner = Lane("x", 1)
    Twin = tuple[JobHandle[Any], JobHandle[Any]]

    def twin(seq: int, key: str, priority: int) -> Twin:
        make = JobHandle[Any]
        return (
            make(owner, str(seq), None, key, priority, False, seq, 0.0),
            make(owner, str(seq), None, key, priority, False, seq, 0.0),
        )

    queued: list[Twin] = []
    popped: list[Twin] = []
    for seq, (op, key, arg) in enumerate(ops):
        if op == "push":
            pair = twin(seq, key, arg)
            unit.push(pair[0], 0.0)
            general.push(pair[1], 0.0)
            queued.append(pair)
        elif op == "pop" and queued:
            a, b = unit.pop(), general.pop()
            assert a.id == b.id
            pair = next(p for p in queued if p[0] is a)
            queued.remove(pair)
            popped.append(pair)
        elif op == "remove" and queued:
            pair = queued.pop(arg % len(queued))
            unit.remove(pair[0])
            general.remove(pair[1])
        elif op == "requeue" and popped:
            pair = popped.pop(arg % len(popped))
            unit.requeue(pair[0], 0.0)
            general.requeue(pair[1], 0.0)
            queued.append(pair)
        assert [unit.position(a) for a, _ in queued] == [general.position(b) for _, b in queued]


def test_fair_share_reuses_forgotten_flows_for_new_keys() -> None:
    """A flow forgotten once its key went idle serves a later key as a plain newcomer."""
    state: Any = FairShare().new_state()
    owner = Lane("x", 1)
    seq = itertools.count()

    def push(key: str) -> JobHandle[Any]:
        n = next(seq)
        job: JobHandle[Any] = JobHandle(owner, str(n), None, key, 0, False, n, 0.0)
        state.push(job, 0.0)
        return job

    push("a")
    assert state.pop().key == "a"
    push("b")
    assert state.pop().key == "b"
    old = {state._flows["a"], state._flows["b"]}
    push("c")
    push("c")
    assert [state.pop().key, state.pop().key] == ["c", "c"]  # V passes a's and b's finish
    assert "a" not in state._flows
    assert "b" not in state._flows
    d1 = push("d")
    a2 = push("a")
    assert {state._flows["d"], state._flows["a"]} == old  # the forgotten flows, reused
    assert (state.position(d1), state.position(a2)) == (1, 2)  # newcomers, in arrival order
    assert [state.pop(), state.pop()] == [d1, a2]
    assert len(state) == 0


class _ChargeAtStart:
    """Fair share charging a preemption arrival's start only when it starts: the
    accounts the charge made on arrival must end in (the queue then goes on as if the
    arrival had been charged only now), and the order whose positions it must report
    while the arrival waits (the order once the waiting arrivals have started)."""

    def __init__(self, policy: FairShare) -> None:
        self.state: Any = policy.new_state()

    def admit(self, job: JobHandle[Any]) -> None:
        state = self.state
        if not len(state):
            state.push(job, 0.0)
            state.pop()
            return
        flow = state._flows.get(job.key)
        if flow is not None and flow.n:
            state._slots.pop(state._key(flow.tag(flow.head), flow.order))
            state._slots.insert(state._key(flow.tag(flow.head + flow.n), flow.order), flow)
            flow.head += 1
            return
        flow = state._flow(job.key, flow)
        flow.head = 1
        state._idle[flow.key] = flow


@pytest.mark.parametrize("weights", [{}, {"a": 2.0, "c": 0.5}], ids=["unit", "weighted"])
@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["push", "cancel", "arrive", "withdraw", "start", "pop", "requeue"]),
            st.sampled_from("abc"),
            st.integers(-1, 2),
        ),
        max_size=50,
    ),
)
# Two arrivals waiting with nothing queued: the first to start moves V past the finish
# tag of the second's key, whose accounts are then forgotten while its charge waits.
@example(
    ops=[
        ("pop", "a", 0),
        ("pop", "a", 0),
        ("pop", "b", 0),
        ("arrive", "b", 0),
        ("arrive", "a", 0),
        ("start", "", 0),
        ("start", "", 0),
    ]
)
def test_fair_share_charges_an_arrival_when_it_comes(
    weights: dict[str, float], ops: list[tuple[str, str, int]]
) -> None:
    """An arrival charged when it comes: positions are the order once the waiting
    arrivals have started; each start leaves the accounts as a charge at the start
    would; a refund leaves them as if the arrival had never come."""
    policy = FairShare(weights=weights)
    state: Any = policy.new_state()
    owner = Lane("x", 1)
    history: list[tuple[str, JobHandle[Any]]] = []  # what a charge-at-start state sees
    queued: list[JobHandle[Any]] = []
    front: list[JobHandle[Any]] = []
    started: list[JobHandle[Any]] = []

    def replay() -> _ChargeAtStart:
        ref = _ChargeAtStart(policy)
        for what, job in history:
            if what == "push":
                ref.state.push(job, 0.0)
            elif what == "remove":
                ref.state.remove(job)
            elif what == "pop":
                assert ref.state.pop() is job
            elif what == "requeue":
                ref.state.requeue(job, 0.0)
            else:
                ref.admit(job)
        return ref

    for seq, (op, key, arg) in enumerate(ops):
        job: JobHandle[Any] = JobHandle(owner, str(seq), None, key, arg, False, seq, 0.0)
        if op == "push" or (op == "pop" and not (queued or front) and arg < 0):
            state.push(job, 0.0)
            history.append(("push", job))
            queued.append(job)
        elif op == "pop" and not (queued or front):  # a start on a free slot
            state.admit(job, 0.0)
            history.append(("admit", job))
            started.append(job)
        elif op == "cancel" and queued:
            job = queued.pop(arg % len(queued))
            state.remove(job)
            history.append(("remove", job))
        elif op == "arrive":
            state.charge(job, 0.0)
            front.append(job)
        elif op == "withdraw" and front:
            state.refund(front.pop(arg % len(front)))
        elif op == "start" and front:
            job = front.pop(0)
            state.admit_charged(job, 0.0)
            history.append(("admit", job))
            started.append(job)
        elif op == "pop" and not front:
            job = state.pop()
            history.append(("pop", job))
            queued.remove(job)
            started.append(job)
        elif op == "requeue" and started:
            job = started.pop(arg % len(started))
            state.requeue(job, 0.0)
            history.append(("requeue", job))
            queued.append(job)
        ref = replay()
        # The accounts are the charge-at-start state's, the waiting charges aside.
        assert state._vtime == ref.state._vtime
        assert list(state._idle) == list(ref.state._idle)
        for k, flow in state._flows.items():
            theirs = ref.state._flows.get(k)
            if theirs is None:  # it holds charges only
                assert (flow.order, flow.n) == (-1, 0)
                assert flow.charged > 0
                assert flow.charged == flow.head == sum(j.key == k for j in front)
                continue
            assert flow.charged == sum(j.key == k for j in front)
            mine = (flow.base, flow.head - flow.charged, flow.n, flow.order)
            assert mine == (theirs.base, theirs.head, theirs.n, theirs.order)
        assert set(ref.state._flows) <= set(state._flows)
        # Positions: the order once the waiting arrivals have started.
        for arrival in front:
            ref.admit(arrival)
        assert [state.position(j) for j in queued] == [ref.state.position(j) for j in queued]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Preemption(min_runtime=10**400), "min_runtime must be a finite number >= 0"),
        (lambda: Priority(aging=10**400), "aging must be a finite number >= 0"),
        (lambda: FairShare(default_weight=10**400), "default_weight must be a finite number > 0"),
    ],
)
def test_a_setting_too_large_for_a_float_is_refused_naming_it(make: Any, message: str) -> None:
    """An int too large for a float is a ValueError naming the setting, not OverflowError."""
    with pytest.raises(ValueError, match=message):
        make()
