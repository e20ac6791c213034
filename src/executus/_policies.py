"""Queue policies (who runs next) and the preemption setting.

A policy object is immutable settings; every lane gets its own mutable queue from
``policy.new_state()`` (the settings/state split keeps one policy object safe to share
between lanes). Queue code never awaits: the lane calls it from its one synchronous
decision step.

Every built-in queue answers ``position`` in O(log n) from ``RankedMap`` (see
``_ranked.py``; strict ``Priority`` adds the sizes of at most 128 levels), so a live
position never walks the queue. Queues whose keys come in arrival order (FIFO, each
``Priority`` level, each ``FairShare`` key) keep them in an ``ArrivalMap``: an arrival
is an append and a dispatch a read at the head of a tail of plain lists; a position
in the tail is a bisection, and a cancel there a tombstone.
"""

from __future__ import annotations

import itertools
import operator
import struct
import sys
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._job import JobHandle
from ._ranked import ArrivalMap, RankedMap

__all__ = ["FIFO", "FairShare", "PolicyState", "Preemption", "Priority", "QueuePolicy"]

_FLOAT_MAX = sys.float_info.max  # the largest finite float
_SEQ_SPAN = 1 << 48  # arrival numbers stay below this; priority is scaled above it


def _check_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 <= value <= _FLOAT_MAX:  # (compared: an int too large for a float too)
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class PolicyState(ABC):
    """A lane's queue under some policy. Holds QUEUED jobs only.

    The lane calls these from its synchronous decision step; they must not await, block
    or call back into the lane. ``job._seq`` is the job's arrival number (smaller is
    earlier, kept across requeues); ``job._qkey`` is free for the state's own use.
    """

    @abstractmethod
    def push(self, job: JobHandle[Any], now: float) -> None:
        """Add a newly submitted job. ``now`` is the lane's monotonic time."""

    def requeue(self, job: JobHandle[Any], now: float) -> None:
        """Put back a preempted job at its original arrival place (default: ``push``)."""
        self.push(job, now)

    def admit(self, job: JobHandle[Any], now: float) -> None:  # noqa: B027 - optional hook
        """A job started without going through the queue: at once on a free slot (the
        queue was empty), or, through the default ``admit_charged``, as a preemption
        arrival ahead of the queued jobs (the queue may hold others).

        The default does nothing; a policy that keeps accounts (fair share charges the
        job's key one start) records the start here.
        """

    def charge(self, job: JobHandle[Any], now: float) -> None:  # noqa: B027 - optional hook
        """A preemption arrival: it starts ahead of every queued job once its victim's
        slot is free (after the victim's grace, or sooner if another slot frees). Nothing
        is popped before it starts.

        A policy that keeps accounts records the start here, so that queued jobs'
        positions count it while the arrival waits; ``admit_charged`` is then called when
        it starts, or ``refund`` if it ends without starting. The default does nothing
        (the start is recorded by ``admit`` when it happens).
        """

    def admit_charged(self, job: JobHandle[Any], now: float) -> None:
        """A preemption arrival passed to ``charge`` starts.

        The default calls ``admit``: a state that overrides ``charge`` overrides this
        too.
        """
        self.admit(job, now)

    def refund(self, job: JobHandle[Any]) -> None:  # noqa: B027 - optional hook
        """A preemption arrival passed to ``charge`` ended without starting (cancelled,
        or the lane stopped): take the charge back, leaving the queue's order as if the
        arrival had never come. The default does nothing."""

    @abstractmethod
    def pop(self) -> JobHandle[Any]:
        """Remove and return the job to start next. Only called when non-empty."""

    @abstractmethod
    def remove(self, job: JobHandle[Any]) -> None:
        """Remove a queued job (cancelled or refused)."""

    @abstractmethod
    def position(self, job: JobHandle[Any]) -> int:
        """The job's place in the dispatch order if nothing else arrived (1 = next)."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of queued jobs."""


class QueuePolicy(ABC):
    """Base class of queue policies. Subclass it for a custom order.

    Example::

        class ShortestFirst(QueuePolicy):
            name = "shortest-first"

            def new_state(self) -> PolicyState:
                return MyState()   # a PolicyState subclass
    """

    name: str = "custom"

    @abstractmethod
    def new_state(self) -> PolicyState:
        """A fresh, empty queue for one lane."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- FIFO --------------------------------------------------------------------------------


class _SortedState(PolicyState):
    """A queue ordered by a per-job sort key computed at push."""

    __slots__ = ("_map",)

    def __init__(self, *, ints: bool = True) -> None:
        # Keys are arrival numbers (ints) unless a subclass's ``_key`` makes others.
        self._map: RankedMap[JobHandle[Any]] | ArrivalMap[JobHandle[Any]] = RankedMap(ints=ints)

    def _key(self, job: JobHandle[Any], now: float) -> Any:
        return job._seq

    def push(self, job: JobHandle[Any], now: float) -> None:
        key = job._qkey
        if key is None:  # a requeued job keeps the key of its first arrival
            key = job._qkey = self._key(job, now)
        self._map.insert(key, job)

    def pop(self) -> JobHandle[Any]:
        return self._map.pop_first_value()

    def remove(self, job: JobHandle[Any]) -> None:
        self._map.pop(job._qkey)

    def position(self, job: JobHandle[Any]) -> int:
        return self._map.rank(job._qkey) + 1

    def __len__(self) -> int:
        return len(self._map)


class _FifoState(_SortedState):
    """Arrival order: the sort key is the arrival number, which arrivals bring in order
    (a requeued job keeps its first one), so an arrival is an append (``ArrivalMap``)."""

    __slots__ = ()

    _map: ArrivalMap[JobHandle[Any]]

    def __init__(self) -> None:
        self._map = ArrivalMap(ints=True)

    def push(self, job: JobHandle[Any], now: float) -> None:
        key = job._qkey
        if key is None:  # a requeued job keeps the key of its first arrival
            key = job._qkey = job._seq
        arrivals = self._map
        tkeys = arrivals._tkeys
        if tkeys and key > tkeys[-1]:  # ``ArrivalMap.insert``'s first case, written out:
            tkeys.append(key)  # every queued job's path
            arrivals._tvals.append(job)
            arrivals._len += 1
        else:
            arrivals.insert(key, job)


class FIFO(QueuePolicy):
    """First in, first out: arrival order. Priority matters only for preemption.

    Example::

        lane = Lane("image-gen", 1, policy=FIFO())
    """

    name = "fifo"

    def new_state(self) -> PolicyState:
        return _FifoState()

    def __eq__(self, other: object) -> bool:
        return type(other) is FIFO

    def __hash__(self) -> int:
        return hash(FIFO)


# -- Priority ----------------------------------------------------------------------------


_MAX_LEVELS = 128  # priority levels with a queue of their own; the rest share one
_LEN: Callable[[ArrivalMap[Any]], int] = operator.attrgetter("_len")


class _PriorityState(PolicyState):
    """Strict priority: one arrival-ordered queue per priority level.

    Jobs of a level arrive in order, so a push appends to its level's queue and a pop
    takes the head of the highest level: neither searches a large sorted map (which
    costs cache misses in a deep queue). Up to ``_MAX_LEVELS`` levels get a queue of
    their own; jobs of further levels share one queue sorted by (priority, arrival),
    so any number of levels works and a position adds at most ``_MAX_LEVELS`` sizes.
    A level is in exactly one place: its own queue, or the shared one.
    """

    __slots__ = ("_levels", "_maps", "_order", "_shared", "_shared_levels")

    def __init__(self) -> None:
        # Non-empty level queues by priority; arrivals within a level come in order.
        self._levels: dict[int, ArrivalMap[JobHandle[Any]]] = {}
        self._order: list[int] = []  # the levels' negated priorities, ascending
        self._maps: list[ArrivalMap[JobHandle[Any]]] = []  # the levels' queues, that order
        # Jobs of levels without a queue of their own, keyed seq - priority * span.
        self._shared: RankedMap[JobHandle[Any]] = RankedMap(ints=True)
        self._shared_levels: dict[int, int] = {}  # priority -> its jobs in _shared

    def push(self, job: JobHandle[Any], now: float) -> None:
        p = job.priority
        level = self._levels.get(p)
        if level is None:
            if len(self._levels) >= _MAX_LEVELS or p in self._shared_levels:
                self._shared.insert(job._seq - p * _SEQ_SPAN, job)
                self._shared_levels[p] = self._shared_levels.get(p, 0) + 1
                return
            level = self._levels[p] = ArrivalMap(ints=True)
            i = bisect_left(self._order, -p)
            self._order.insert(i, -p)
            self._maps.insert(i, level)
        level.insert(job._seq, job)  # a requeued job keeps its arrival number

    def pop(self) -> JobHandle[Any]:
        maps = self._maps
        shared = self._shared
        if shared._len and (not maps or shared.first_value().priority > -self._order[0]):
            job = shared.pop_first_value()
            self._forget_shared(job.priority)
            return job
        level = maps[0]
        job = level.pop_first_value()
        if not level._len:
            del maps[0]
            del self._levels[-self._order.pop(0)]
        return job

    def _forget_shared(self, p: int) -> None:
        left = self._shared_levels[p] - 1
        if left:
            self._shared_levels[p] = left
        else:
            del self._shared_levels[p]

    def remove(self, job: JobHandle[Any]) -> None:
        p = job.priority
        level = self._levels.get(p)
        if level is None:
            self._shared.pop(job._seq - p * _SEQ_SPAN)
            self._forget_shared(p)
            return
        level.pop(job._seq)
        if not level._len:
            i = bisect_left(self._order, -p)
            del self._order[i]
            del self._maps[i]
            del self._levels[p]

    def position(self, job: JobHandle[Any]) -> int:
        p = job.priority
        ahead = sum(map(_LEN, self._maps[: bisect_left(self._order, -p)]))
        level = self._levels.get(p)
        if level is not None:
            ahead += level.rank(job._seq)
        if self._shared._len:
            ahead += self._shared.rank(job._seq - p * _SEQ_SPAN)
        return ahead + 1

    def __len__(self) -> int:
        return sum(map(_LEN, self._maps)) + self._shared._len


class _AgingState(_SortedState):
    __slots__ = ("_aging",)

    def __init__(self, aging: float) -> None:
        super().__init__(ints=False)  # keys are (virtual arrival, arrival number)
        self._aging = aging

    def _key(self, job: JobHandle[Any], now: float) -> Any:
        # A job of priority p that has waited w seconds ranks as priority p + w / aging.
        # Comparing p1 + (t - s1)/a with p2 + (t - s2)/a does not depend on t, so the
        # order is fixed at arrival: rank by s - p * a (a "virtual arrival time").
        return (job._t_submit - job.priority * self._aging, job._seq)


class Priority(QueuePolicy):
    """Higher priority first; arrival order within a level.

    Args:
        aging: None (strict priority), or seconds: a queued job then gains one priority
            level per ``aging`` seconds waited (continuously), so nothing starves. A job
            of priority 1 thus goes ahead of priority-0 jobs submitted less than
            ``aging`` seconds before it, and behind older ones.

    Example::

        lane = Lane("gpu", 2, policy=Priority(aging=60))
    """

    name = "priority"

    __slots__ = ("aging",)

    def __init__(self, aging: float | None = None) -> None:
        _check_seconds("aging", aging, allow_none=True)
        if aging is not None and aging <= 0:
            raise ValueError(f"aging must be > 0 seconds or None, got {aging!r}")
        self.aging = None if aging is None else float(aging)

    def new_state(self) -> PolicyState:
        if self.aging is None:
            return _PriorityState()
        return _AgingState(self.aging)

    def __repr__(self) -> str:
        return "Priority()" if self.aging is None else f"Priority(aging={self.aging:g})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Priority and other.aging == self.aging

    def __hash__(self) -> int:
        return hash((Priority, self.aging))


# -- FairShare ---------------------------------------------------------------------------


class _Flow:
    """One key's backlog in a fair-share queue.

    The key owns a run of virtual-time slots ``base + j / weight`` for ``j`` in
    ``[head, head + n)``; its queued jobs fill them in (priority, arrival) order.

    ``charged`` preemption arrivals of the key wait ahead of the queue with their starts
    counted (``_FairShareState.charge``): its slots begin that many starts later than
    its accounts, whose own head is ``head - charged``. A flow with ``order`` -1 only
    holds such charges for a key the state otherwise has no accounts for; it gets its
    order (ties) when the key queues or starts, as a new key would then.
    """

    __slots__ = ("base", "charged", "head", "key", "n", "order", "queue", "weight")

    def __init__(self, key: str | None, weight: float, order: int, base: float) -> None:
        # Keyed (priority, arrival): arrivals of one priority come in order.
        self.queue: ArrivalMap[JobHandle[Any]] = ArrivalMap(ints=True)
        self.reset(key, weight, order, base)

    def reset(self, key: str | None, weight: float, order: int, base: float) -> None:
        """Make this (empty) flow the flow of ``key``."""
        self.key = key
        self.weight = weight
        self.order = order
        self.base = base
        self.head = 0
        self.n = 0
        self.charged = 0

    def tag(self, j: int) -> float:
        return self.base + j / self.weight


_PACK_DOUBLE = struct.Struct("<d").pack
_UNPACK_U64 = struct.Struct("<Q").unpack
_SIGN = 1 << 63
_ALL = (1 << 64) - 1
_ORDER_BITS = 40  # keys seen by one lane: fewer than 2**40
_SPARE_FLOWS = 64  # forgotten flows kept for reuse


def _slot_key(tag: float, order: int) -> int:
    """One int that sorts exactly as ``(tag, order)``.

    The IEEE 754 bits of a double, with the sign bit flipped for positives and all bits
    flipped for negatives, sort as the doubles do; ``order`` fills the low bits. Int keys
    compare and store cheaper than tuples of a float and an int.
    """
    bits: int = _UNPACK_U64(_PACK_DOUBLE(tag + 0.0))[0]  # + 0.0: -0.0 sorts as 0.0
    bits = bits ^ _ALL if bits & _SIGN else bits | _SIGN
    return (bits << _ORDER_BITS) | order


def _within_key(job: JobHandle[Any]) -> int:
    """A job's order among its key's queued jobs (priority first, then arrival), made
    once: a requeued job keeps its place."""
    qkey = job._qkey
    if qkey is None:
        p = job.priority
        qkey = job._qkey = job._seq if not p else job._seq - p * _SEQ_SPAN
    return qkey  # type: ignore[no-any-return]


class _FairShareState(PolicyState):
    """Start-time fair queueing (Goyal, Vin and Cheng, 1996) with unit job cost.

    Each start costs its key ``1 / weight`` of virtual time. A key that becomes
    backlogged starts at ``max(V, its finish tag)`` where ``V`` is the tag of the last
    start, so an idle key earns no credit and a newcomer is served next. Jobs go out in
    tag order; ties go to the key seen first.

    Slots rather than jobs carry tags: a key's k-th queued job (by priority, then arrival)
    sits in its k-th slot, so a high-priority arrival inside a key reorders that key
    only. One global ``RankedMap`` of all slots gives positions in O(log n).

    A preemption arrival is charged when it arrives (``charge``), not when it starts:
    while it waits for its victim's slot, the queued jobs' positions already count its
    start. The charge is kept apart from the key's accounts (``_Flow.charged``), which
    go on exactly as if the arrival were not there: the start is recorded in them when
    it happens (``admit_charged``, the same step ``admit`` takes), and a refund only
    drops the charge. Nothing is popped while an arrival waits (it starts first), so V
    holds still meanwhile, and a charge moves its key's queued jobs one start back,
    which is exactly what recording the start does then.
    """

    __slots__ = (
        "_charged",
        "_flows",
        "_idle",
        "_len",
        "_order",
        "_policy",
        "_slots",
        "_spare",
        "_unit",
        "_vtime",
    )

    def __init__(self, policy: FairShare) -> None:
        self._policy = policy
        self._flows: dict[str | None, _Flow] = {}
        self._idle: OrderedDict[str | None, _Flow] = OrderedDict()
        self._vtime = 0.0
        self._len = 0
        self._order = itertools.count()
        # Every weight is 1 (the default): every tag is then a whole number (V starts at
        # 0 and each start adds 1), so a slot key is the tag's int and the key order,
        # without the float's bits.
        self._unit = not policy.weights and policy.default_weight == 1.0
        # Unit slot keys are ints (int64 while the tags stay below 2**23); others, the
        # bits of a double and an order, are wider.
        self._slots: RankedMap[_Flow] = RankedMap(ints=self._unit)
        # Forgotten flows kept for reuse (with their empty queues): with many keys of one
        # job each, a flow is made and forgotten per job.
        self._spare: list[_Flow] = []
        self._charged: set[JobHandle[Any]] = set()  # arrivals charged, not yet started

    def _key(self, tag: float, order: int) -> int:
        """The slot key of ``(tag, order)`` (see ``_slot_key``)."""
        return (int(tag) << _ORDER_BITS | order) if self._unit else _slot_key(tag, order)

    def _flow(self, key: str | None, flow: _Flow | None) -> _Flow:
        if flow is None:
            weight = self._policy.weight(key)
            if self._spare:
                flow = self._spare.pop()
                flow.reset(key, weight, next(self._order), self._vtime)
            else:
                flow = _Flow(key, weight, next(self._order), self._vtime)
            self._flows[key] = flow
        else:  # idle: it restarts at V, or later if it was served ahead of V
            self._idle.pop(key, None)
            lead = flow.charged
            if lead:  # its slots begin after its waiting arrivals' starts
                flow.base = max(self._vtime, flow.tag(flow.head - lead))
                flow.head = lead
                if flow.order < 0:  # it held charges only: the key is new to the queue
                    flow.order = next(self._order)
            else:
                flow.base = max(self._vtime, flow.tag(flow.head))  # n = 0: its finish tag
                flow.head = 0
        return flow

    def push(self, job: JobHandle[Any], now: float) -> None:
        key = job.key
        flow = self._flows.get(key)
        if flow is None or not flow.n:
            flow = self._flow(key, flow)
        n = flow.n
        # ``_key(flow.tag(j), flow.order)`` and ``_within_key(job)``, written out: this
        # is every queued job's path.
        j = flow.head + n
        if self._unit:
            slot = int(flow.base + j) << _ORDER_BITS | flow.order
        else:
            slot = _slot_key(flow.base + j / flow.weight, flow.order)
        self._slots.insert(slot, flow)
        flow.n = n + 1
        qkey = job._qkey
        if qkey is None:
            p = job.priority
            qkey = job._qkey = job._seq if not p else job._seq - p * _SEQ_SPAN
        arrivals = flow.queue
        tkeys = arrivals._tkeys
        if tkeys and qkey > tkeys[-1]:  # ``ArrivalMap.insert``'s first case, written out
            tkeys.append(qkey)
            arrivals._tvals.append(job)
            arrivals._len += 1
        else:
            arrivals.insert(qkey, job)
        self._len += 1

    def requeue(self, job: JobHandle[Any], now: float) -> None:
        # Refund the preempted start: the key gets its slot back at the head.
        flow = self._flows.get(job.key)
        if flow is not None and flow.n > 0:
            flow.head -= 1
            self._slots.insert(self._key(flow.tag(flow.head), flow.order), flow)
            flow.n += 1
            # A job that started as a preemptor never went through push: its order
            # within the key is made here.
            flow.queue.insert(_within_key(job), job)
            self._len += 1
            return
        if flow is not None:
            # Its finish tag drops by one start, then it re-backlogs as an idle key
            # does, at max(V, that tag): no credit for the time it had nothing queued.
            flow.head -= 1
        self.push(job, now)

    def admit(self, job: JobHandle[Any], now: float) -> None:
        # A key whose jobs start without queueing still pays for its starts.
        if not self._len:
            # Nothing queued: as if the job had queued and been dispatched at once.
            self.push(job, now)
            self.pop()
            return
        # A job started ahead of the queue.
        self.charge(job, now)
        self.admit_charged(job, now)

    def charge(self, job: JobHandle[Any], now: float) -> None:
        key = job.key
        flow = self._flows.get(key)
        if flow is None:
            weight = self._policy.weight(key)
            if self._spare:
                flow = self._spare.pop()
                flow.reset(key, weight, -1, self._vtime)
            else:
                flow = _Flow(key, weight, -1, self._vtime)
            self._flows[key] = flow
        elif flow.n:
            # Backlogged: the arrival takes its key's head slot, and the key's queued
            # jobs move one slot back.
            self._slots.pop(self._key(flow.tag(flow.head), flow.order))
            self._slots.insert(self._key(flow.tag(flow.head + flow.n), flow.order), flow)
        # (Not backlogged: a job the key queues meanwhile goes one slot later.)
        flow.head += 1
        flow.charged += 1
        self._charged.add(job)

    def admit_charged(self, job: JobHandle[Any], now: float) -> None:
        if job not in self._charged:  # (a state made after the arrival came)
            self.charge(job, now)
        self._charged.discard(job)
        flow = self._flows[job.key]
        lead = flow.charged - 1
        flow.charged = lead
        if flow.n:
            # Backlogged: its accounts' head moves one slot on (V stays: the queue's
            # order goes on where it was), where its slots sit already.
            return
        # Not backlogged: it restarts where an idle key would (max(V, its finish tag)),
        # with this start made.
        base = max(self._vtime, flow.tag(flow.head - lead - 1))
        flow.base = base
        flow.head = 1 + lead
        if flow.order < 0:
            flow.order = next(self._order)
        self._idle.pop(flow.key, None)
        self._idle[flow.key] = flow
        if not self._len:
            # Nothing queued: as if it had queued and been dispatched at once (``admit``
            # on a free slot): V moves to its tag.
            self._vtime = base
            self._forget_idle()

    def refund(self, job: JobHandle[Any]) -> None:
        if job not in self._charged:
            return
        self._charged.discard(job)
        flow = self._flows[job.key]
        if flow.n:
            # Backlogged: the key's queued jobs move one slot forward again.
            self._slots.pop(self._key(flow.tag(flow.head + flow.n - 1), flow.order))
            flow.head -= 1
            self._slots.insert(self._key(flow.tag(flow.head), flow.order), flow)
        else:
            flow.head -= 1
        flow.charged -= 1
        if not flow.charged and flow.order < 0:  # it held this charge only
            del self._flows[flow.key]
            if len(self._spare) < _SPARE_FLOWS:
                self._spare.append(flow)

    def pop(self) -> JobHandle[Any]:
        flow = self._slots.pop_first_value()
        head = flow.head  # the popped slot is its flow's head slot
        self._vtime = flow.base + head / flow.weight
        flow.head = head + 1
        n = flow.n = flow.n - 1
        job: JobHandle[Any] = flow.queue.pop_first_value()
        self._len -= 1
        if not n:
            self._idle[flow.key] = flow
        if self._idle:
            self._forget_idle()
        return job

    def _forget_idle(self) -> None:
        # A key idle with finish tag <= V would restart at V anyway: forget it, so
        # memory follows the keys active lately, not every key ever seen. A key whose
        # preemption arrivals still wait keeps their charges (``charge``), and comes back
        # as a new key would.
        idle = self._idle
        for _ in range(2):
            if not idle:
                return
            key, flow = next(iter(idle.items()))
            lead = flow.charged
            if flow.tag(flow.head - lead) > self._vtime:  # its finish tag (n = 0)
                return
            del idle[key]
            if lead:
                flow.reset(key, flow.weight, -1, self._vtime)
                flow.head = flow.charged = lead
                continue
            del self._flows[key]
            if len(self._spare) < _SPARE_FLOWS:
                self._spare.append(flow)

    def remove(self, job: JobHandle[Any]) -> None:
        flow = self._flows[job.key]
        flow.queue.pop(job._qkey)
        n = flow.n = flow.n - 1  # the key gives up its last slot
        self._slots.pop(self._key(flow.tag(flow.head + n), flow.order))
        self._len -= 1
        if not n:
            self._idle[flow.key] = flow

    def position(self, job: JobHandle[Any]) -> int:
        flow = self._flows[job.key]
        head = flow.head
        j = head + flow.queue.rank(job._qkey)
        key = self._key(flow.tag(j), flow.order)
        rank = self._slots.rank(key)
        if j > head and self._key(flow.tag(j - 1), flow.order) == key:
            # A weight so large (or small) that ``j / weight`` is lost in the tag's
            # precision gives several of the key's slots one slot key: count the ones
            # before slot j (the first slot with this key, by bisection; tags only grow).
            lo, hi = head, j - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if self._key(flow.tag(mid), flow.order) == key:
                    hi = mid
                else:
                    lo = mid + 1
            rank += j - lo
        return rank + 1

    def __len__(self) -> int:
        return self._len


class FairShare(QueuePolicy):
    """Weighted fair queueing across keys.

    When several keys are backlogged, key k receives starts in proportion to its weight;
    a key that was idle earns no credit for the idle time; within one key, higher
    priority first, then arrival order. One key flooding the lane delays another key's
    job by at most about one job per slot. Jobs without a key share the key ``None``.

    Args:
        weights: key -> weight (> 0). Keys not listed get ``default_weight``.
        default_weight: the weight of unlisted keys (> 0).

    Example::

        lane = Lane("ollama", 2, policy=FairShare(weights={"paying": 3, "free": 1}))
    """

    name = "fair-share"

    __slots__ = ("_weights", "default_weight")

    def __init__(
        self, weights: Mapping[str, float] | None = None, default_weight: float = 1.0
    ) -> None:
        self.default_weight = _check_weight("default_weight", default_weight)
        if weights is not None and not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a mapping of key -> weight or None, got {weights!r}")
        checked: dict[str, float] = {}
        for key, weight in (weights or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"weights keys must be str, got {key!r}")
            checked[key] = _check_weight(f"weights[{key!r}]", weight)
        self._weights = MappingProxyType(checked)

    @property
    def weights(self) -> Mapping[str, float]:
        """The configured weights (read-only)."""
        return self._weights

    def weight(self, key: str | None) -> float:
        """The weight of ``key``."""
        if key is None:
            return self.default_weight
        return self._weights.get(key, self.default_weight)

    def new_state(self) -> PolicyState:
        return _FairShareState(self)

    def __repr__(self) -> str:
        if not self._weights and self.default_weight == 1.0:
            return "FairShare()"
        return f"FairShare(weights={dict(self._weights)!r}, default_weight={self.default_weight:g})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is FairShare
            and dict(other._weights) == dict(self._weights)
            and other.default_weight == self.default_weight
        )

    def __hash__(self) -> int:
        return hash((FairShare, tuple(sorted(self._weights.items())), self.default_weight))


def _check_weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 < value <= _FLOAT_MAX:  # (compared: an int too large for a float too)
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# -- Preemption --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preemption:
    """Let a higher-priority arrival evict a running preemptible job.

    When a job arrives to a full lane, a victim is chosen among running jobs that are
    preemptible, have strictly lower priority than the arrival and have run at least
    ``min_runtime`` seconds: lowest priority first, then the earliest started. The
    victim's ``current_job().preempt_requested`` turns True; after ``grace`` seconds its
    task is cancelled. The arrival takes the slot as soon as the victim's task has
    ended, ahead of every queued job.

    Args:
        min_runtime: seconds a job runs before it may be preempted (no thrashing).
        grace: seconds between the request and the cancellation (0: at once).
        requeue: False: the victim ends PREEMPTED (its waiters get JobPreempted).
            True: it goes back to the queue at its original arrival place and runs
            again from scratch later.

    Example::

        lane = Lane("gpu", 2, preemption=Preemption(min_runtime=30, grace=5, requeue=True))
    """

    min_runtime: float = 30.0
    grace: float = 0.0
    requeue: bool = False

    def __post_init__(self) -> None:
        _check_seconds("min_runtime", self.min_runtime)
        _check_seconds("grace", self.grace)
        if not isinstance(self.requeue, bool):
            raise TypeError(f"requeue must be a bool, got {self.requeue!r}")
