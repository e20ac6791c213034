"""A sorted map with O(log n) insert, delete, pop-first and rank.

Queues can hold a million jobs, and a lane must answer "what is this job's place in
the dispatch order" without walking the queue. ``RankedMap`` keeps keys sorted in a
list of bounded buckets (the layout of the ``sortedcontainers`` package: bisect over the
bucket maxima, then within one bucket). For rank it keeps the bucket sizes and, per run
of 64 buckets, their sum (a two-level prefix index): an insert or delete updates two
counters, and a rank query adds at most 64 + B/64 counters with the C ``sum``. Inserts
and deletes move at most one bucket's worth of pointers (a C ``memmove``); the index is
rebuilt lazily, only after a bucket split or removal. Appending past the maximum (FIFO
arrival) and popping the first key (dispatch) are the fast paths. Popping the first key
moves nothing: the first bucket keeps a prefix of popped entries (their values
released), searched past and dropped with the bucket, so a dispatch from a queue whose
first bucket is cold in the cache (one of many per-key queues) touches one entry, not
the whole bucket.

Keys must be unique and totally ordered; values ride along in parallel buckets. A map
made with ``ints=True`` keeps its keys in buckets of 64-bit machine integers
(``array('q')``) for as long as every key fits one: a search then reads one contiguous
block per bucket instead of following a pointer to an int object per comparison, which
in a deep queue are scattered cache misses. A key that does not fit turns the map back
to plain lists, once.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, MutableSequence
from itertools import chain, compress, islice
from typing import Any, Generic, TypeVar

__all__ = ["ArrivalMap", "RankedMap"]

V = TypeVar("V")

_LOAD = 256  # buckets split at 2 * _LOAD keys
# What a popped entry's value slot holds: None, typed to fit any value list (a
# constant, not ``cast(V, None)``, which is a call on every dispatch's path).
_RELEASED: Any = None
_RUN = 64  # buckets per second-level counter
_SHIFT = 6  # log2(_RUN)


class RankedMap(Generic[V]):
    """Unique sorted keys -> values, with rank (0-based position) queries."""

    __slots__ = ("_dead", "_ints", "_keys", "_len", "_lens", "_maxes", "_runs", "_vals")

    def __init__(self, *, ints: bool = False) -> None:
        self._ints = ints  # key buckets are int64 arrays (until a key does not fit)
        # Popped entries at the front of the first bucket: their keys are stale (every
        # search in that bucket starts past them) and their values None.
        self._dead = 0
        self._keys: list[MutableSequence[Any]] = []
        self._vals: list[list[V]] = []
        self._maxes: list[Any] = []
        self._len = 0
        # Bucket sizes and their sums per run of _RUN buckets; None: rebuild on demand.
        self._lens: list[int] | None = None
        self._runs: list[int] = []

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[tuple[Any, V]]:
        skip = self._dead
        for keys, vals in zip(self._keys, self._vals, strict=True):
            yield from islice(zip(keys, vals, strict=True), skip, None)
            skip = 0

    def insert(self, key: Any, value: V) -> None:
        """Add ``key`` (which must not be present) with ``value``."""
        maxes = self._maxes
        try:  # (costs nothing unless a key overflows an int64 bucket)
            if not maxes:
                self._keys.append(array("q", (key,)) if self._ints else [key])
                self._vals.append([value])
                maxes.append(key)
                self._len += 1
                self._lens = None
                return
            if key > maxes[-1]:
                b = len(maxes) - 1
                keys = self._keys[b]
                keys.append(key)
                self._vals[b].append(value)
                maxes[b] = key
            else:
                b = bisect_left(maxes, key)
                keys = self._keys[b]
                dead = 0 if b else self._dead
                i = bisect_left(keys, key, dead)
                if i == dead and dead:  # a new first key takes the last popped entry
                    keys[i - 1] = key
                    self._vals[0][i - 1] = value
                    self._dead = i - 1
                else:
                    keys.insert(i, key)
                    self._vals[b].insert(i, value)
        except (OverflowError, TypeError):
            if not self._ints:
                raise
            self._widen()  # nothing was changed: the key went nowhere
            self.insert(key, value)
            return
        self._len += 1
        if len(keys) > 2 * _LOAD and not b and self._dead:
            self._compact()  # the first bucket is full of popped entries: drop them
        if len(keys) > 2 * _LOAD:
            vals = self._vals[b]
            self._keys[b : b + 1] = [keys[:_LOAD], keys[_LOAD:]]
            self._vals[b : b + 1] = [vals[:_LOAD], vals[_LOAD:]]
            maxes[b : b + 1] = [keys[_LOAD - 1], keys[-1]]
            self._lens = None
        else:
            lens = self._lens  # the bucket size and its run's sum: every job's path
            if lens is not None:
                lens[b] += 1
                self._runs[b >> _SHIFT] += 1

    def extend(self, keys: Iterable[Any], values: Iterable[V]) -> None:
        """Add keys in ascending order, each larger than every key held, with their
        values: appended to the last bucket, or cut into new buckets, in C slices."""
        keys = list(keys)
        values = list(values)
        if not keys:
            return
        try:  # nothing is changed until every key is known to fit
            self._extend(keys, values)
        except (OverflowError, TypeError):
            if not self._ints:
                raise
            self._widen()
            self._extend(keys, values)

    def _extend(self, keys: list[Any], values: list[V]) -> None:
        added = len(keys)
        ints = self._ints
        if self._keys:
            b = len(self._keys) - 1
            last = self._keys[b]
            if len(last) + added <= 2 * _LOAD:  # the last bucket takes them all
                last.extend(array("q", keys) if ints else keys)
                self._vals[b].extend(values)
                self._maxes[b] = keys[-1]
                self._len += added
                lens = self._lens
                if lens is not None:
                    lens[b] += added
                    self._runs[b >> _SHIFT] += added
                return
            # The last bucket and the new keys, cut again into buckets of _LOAD.
            dead = 0 if b else self._dead
            keys = list(islice(last, dead, None)) + keys
            values = self._vals[b][dead:] + values
        else:
            b = 0
            dead = 0
        cut = range(0, len(keys), _LOAD)
        # One conversion to machine ints, then C slices of it (a slice of an array is an
        # array): a million keys take tens of milliseconds.
        whole: MutableSequence[Any] = array("q", keys) if ints else keys
        buckets = [whole[i : i + _LOAD] for i in cut]
        if dead:
            self._dead = 0
        self._keys[b:] = buckets
        self._vals[b:] = [values[i : i + _LOAD] for i in cut]
        self._maxes[b:] = [bucket[-1] for bucket in buckets]
        self._len += added
        self._lens = None

    def _widen(self) -> None:
        """Keep keys in plain lists from now on (a key does not fit an int64)."""
        self._ints = False
        self._keys = [list(keys) for keys in self._keys]

    def _compact(self) -> None:
        """Drop the popped entries at the front of the first bucket."""
        dead = self._dead
        del self._keys[0][:dead]
        del self._vals[0][:dead]
        self._dead = 0

    def _drop(self, b: int, i: int) -> V:
        keys = self._keys[b]
        vals = self._vals[b]
        if not b and i == self._dead:  # the first key: mark it popped, move nothing
            value = vals[i]
            vals[i] = _RELEASED  # the map holds no reference to a popped value
            self._dead = i = i + 1
            empty = i == len(keys)
        else:
            del keys[i]
            value = vals.pop(i)
            empty = len(keys) == (0 if b else self._dead)
        self._len -= 1
        if empty:
            del self._keys[b]
            del self._vals[b]
            del self._maxes[b]
            if not b:
                self._dead = 0
            self._lens = None
        else:
            if i == len(keys):
                self._maxes[b] = keys[-1]
            lens = self._lens  # the bucket size and its run's sum
            if lens is not None:
                lens[b] -= 1
                self._runs[b >> _SHIFT] -= 1
        return value

    def pop(self, key: Any) -> V:
        """Remove ``key`` and return its value. Raises KeyError if absent."""
        maxes = self._maxes
        b = bisect_left(maxes, key)
        if b < len(maxes):
            keys = self._keys[b]
            i = bisect_left(keys, key, 0 if b else self._dead)
            if i < len(keys) and keys[i] == key:
                return self._drop(b, i)
        raise KeyError(key)

    def pop_first(self) -> tuple[Any, V]:
        """Remove and return the smallest (key, value). Raises IndexError if empty."""
        if not self._len:
            raise IndexError("pop from an empty RankedMap")
        dead = self._dead
        key = self._keys[0][dead]
        return key, self._drop(0, dead)

    def first_value(self) -> V:
        """The value of the smallest key. Raises IndexError if empty."""
        if not self._len:
            raise IndexError("first of an empty RankedMap")
        return self._vals[0][self._dead]

    def pop_first_value(self) -> V:
        """Remove the smallest key and return its value. Raises IndexError if empty."""
        if not self._len:
            raise IndexError("pop from an empty RankedMap")
        dead = self._dead
        if dead + 1 < len(self._keys[0]):  # the common case, inlined: the bucket stays
            vals = self._vals[0]
            value = vals[dead]
            vals[dead] = _RELEASED
            self._dead = dead + 1
            self._len -= 1
            lens = self._lens
            if lens is not None:
                lens[0] -= 1
                self._runs[0] -= 1
            return value
        return self._drop(0, dead)

    def rank(self, key: Any) -> int:
        """How many keys are smaller than ``key`` (present or not)."""
        maxes = self._maxes
        b = bisect_left(maxes, key)
        if b == len(maxes):
            return self._len
        lens = self._lens
        if lens is None:
            lens = self._build()
        run = b >> _SHIFT
        before = sum(self._runs[:run]) + sum(lens[run << _SHIFT : b])
        if b:
            return before + bisect_left(self._keys[b], key)
        dead = self._dead
        return bisect_left(self._keys[0], key, dead) - dead

    def _build(self) -> list[int]:
        lens = self._lens = list(map(len, self._keys))
        if lens:
            lens[0] -= self._dead
        self._runs = [sum(lens[i : i + _RUN]) for i in range(0, len(lens), _RUN)]
        return lens


_NO_TAIL: Any = ()  # an ArrivalMap's tail before its first key (see ``__init__``)
_GONE: Any = object()  # the value of a key removed from inside an ArrivalMap's tail
_TIDY_EVERY = 255  # an ArrivalMap tidies its taken entries every 256 takes (a mask)


class ArrivalMap(Generic[V]):
    """A ``RankedMap`` for keys that mostly come in ascending order: a queue's arrival
    numbers, where a requeued job (an older number) is the exception.

    A key larger than every key held joins a tail: two plain lists read from ``_head``
    on, so an arrival is an append and a dispatch from the tail a read at ``_head``,
    neither a search. The tail's keys are all larger than the sorted map's, so the map
    answers every rank below the tail's first key, and above it a rank is the map's size
    plus a bisection of the tail. A key removed from inside the tail leaves a tombstone
    (its value ``_GONE``, its key in the small sorted map ``_gone``, which ranks
    subtract), dropped when the head passes it: no query and no removal moves the tail.
    Only a key inserted among the tail's keys (a requeued job) moves the tail's keys
    before it into the map, in one ``extend``; each key moves at most once per stay.

    Same interface as ``RankedMap`` (what the queues use), including ``_len``.
    """

    __slots__ = ("_gone", "_head", "_len", "_map", "_tkeys", "_tvals")

    def __init__(self, *, ints: bool = False) -> None:
        self._map: RankedMap[V] = RankedMap(ints=ints)
        # The tail is ``_tkeys[_head:]`` and ``_tvals[_head:]``; the entries before
        # ``_head`` were taken (values released) and are dropped in bulk (``_tidy``).
        # The lists are made with the tail's first key (until then both are this empty
        # tuple: a key's queue whose keys come out of order never makes them). The
        # first and the last entry of a non-empty tail are live; ``_tkeys[-1]`` is the
        # largest key held whenever ``_tkeys`` is not empty (a taken one, when the tail
        # is), so an arrival is a key above it.
        self._tkeys: list[Any] = _NO_TAIL
        self._tvals: list[V] = _NO_TAIL
        self._head = 0
        self._gone: RankedMap[None] | None = None  # tombstoned keys of the tail, if any
        self._len = 0  # live keys: the map's and the tail's

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[tuple[Any, V]]:
        head = self._head
        tail = zip(self._tkeys[head:], self._tvals[head:], strict=True)
        return chain(self._map, ((k, v) for k, v in tail if v is not _GONE))

    def _settle(self, end: int) -> None:
        """Move the tail's live entries before index ``end`` into the sorted map."""
        head = self._head
        tkeys = self._tkeys
        tvals = self._tvals
        keys = tkeys[head:end]
        values = tvals[head:end]
        gone = self._gone
        if gone is not None:  # (then the tail has a live key at ``end`` or after it)
            dead = gone.rank(tkeys[end])  # the tombstones before ``end``: the first ones
            if dead:
                for _ in range(dead):
                    gone.pop_first()
                live = [v is not _GONE for v in values]
                keys = list(compress(keys, live))
                values = list(compress(values, live))
        self._map.extend(keys, values)
        tvals[head:end] = [_RELEASED] * (end - head)
        self._head = end
        self._tidy()

    def _tidy(self) -> None:
        """After the head moved: step past tombstones, and drop taken entries (all of
        them when no live key is left; else once they are most of the lists)."""
        head = self._head
        tkeys = self._tkeys
        tvals = self._tvals
        gone = self._gone
        if gone is not None:
            while head < len(tvals) and tvals[head] is _GONE:
                tvals[head] = _RELEASED
                gone.pop_first()
                head += 1
            if not gone._len:
                self._gone = None
        if head == len(tkeys):
            tkeys.clear()
            tvals.clear()
            head = 0
        elif head > _LOAD and 2 * head > len(tkeys):
            del tkeys[:head]
            del tvals[:head]
            head = 0
        self._head = head

    def _take(self) -> V:
        """Remove the tail's first entry (there is one) and return its value: the first
        of all when the map is empty."""
        head = self._head
        tvals = self._tvals
        value = tvals[head]
        tvals[head] = _RELEASED  # the map holds no reference to a taken value
        self._len -= 1
        head += 1
        self._head = head
        if self._gone is not None or not head & _TIDY_EVERY:
            self._tidy()
        return value

    def insert(self, key: Any, value: V) -> None:
        """Add ``key`` (which must not be present) with ``value``."""
        tkeys = self._tkeys
        if tkeys:
            if key > tkeys[-1]:  # an arrival: every queued job's path
                tkeys.append(key)
                self._tvals.append(value)
                self._len += 1
                return
            # Among the tail's keys (or before them): the ones before it move into the
            # map, whose last key it then follows.
            self._settle(bisect_left(tkeys, key, self._head))
            self._map.insert(key, value)
        elif not self._map._len or not key > self._map._maxes[-1]:
            self._map.insert(key, value)  # the first key goes to the map: the tail, later
        else:
            if tkeys is _NO_TAIL:
                tkeys = self._tkeys = []
                self._tvals = []
            tkeys.append(key)
            self._tvals.append(value)
        self._len += 1

    def pop(self, key: Any) -> V:
        """Remove ``key`` and return its value. Raises KeyError if absent."""
        tkeys = self._tkeys
        head = self._head
        if len(tkeys) == head or key < tkeys[head]:  # not in the tail
            value = self._map.pop(key)
            self._len -= 1
            return value
        if key == tkeys[head]:
            return self._take()
        tvals = self._tvals
        i = bisect_left(tkeys, key, head)
        if i == len(tkeys) or tkeys[i] != key or tvals[i] is _GONE:
            raise KeyError(key)
        value = tvals[i]
        if i == len(tkeys) - 1:  # the newest: drop it, and the tombstones before it
            tkeys.pop()
            tvals.pop()
            gone = self._gone
            if gone is not None:
                while tvals[-1] is _GONE:  # the head is live: this stops there at most
                    tvals.pop()
                    gone.pop(tkeys.pop())
                if not gone._len:
                    self._gone = None
        else:
            tvals[i] = _GONE
            if self._gone is None:
                self._gone = RankedMap()
            self._gone.insert(key, None)
        self._len -= 1
        return value

    def first_value(self) -> V:
        """The value of the smallest key. Raises IndexError if empty."""
        if self._map._len:
            return self._map.first_value()
        if len(self._tkeys) == self._head:
            raise IndexError("first of an empty ArrivalMap")
        return self._tvals[self._head]

    def pop_first_value(self) -> V:
        """Remove the smallest key and return its value. Raises IndexError if empty."""
        if self._map._len:
            self._len -= 1
            return self._map.pop_first_value()
        if len(self._tkeys) == self._head:
            raise IndexError("pop from an empty ArrivalMap")
        return self._take()

    def rank(self, key: Any) -> int:
        """How many keys are smaller than ``key`` (present or not)."""
        tkeys = self._tkeys
        head = self._head
        if len(tkeys) > head and key > tkeys[head]:
            rank = self._map._len + bisect_left(tkeys, key, head) - head
            gone = self._gone
            return rank if gone is None else rank - gone.rank(key)
        return self._map.rank(key)
