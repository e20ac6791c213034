"""A sorted map with O(log n) insert, delete, pop-first and rank.

Queues can hold a million jobs, and a lane must answer "what is this job's place in
the dispatch order" without walking the queue. ``RankedMap`` keeps keys sorted in a
list of bounded buckets (the layout of the ``sortedcontainers`` package: bisect over the
bucket maxima, then within one bucket). For rank it keeps the bucket sizes and, per run
of 64 buckets, their sum (a two-level prefix index): an insert or delete updates two
counters, and a rank query adds at most 64 + B/64 counters with the C ``sum``. Inserts
and deletes move at most one bucket's worth of pointers (a C ``memmove``); the index is
rebuilt lazily, only after a bucket split or removal. Appending past the maximum (FIFO
arrival) and popping the first key (dispatch) are the fast paths.

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
from collections.abc import Iterator, MutableSequence
from typing import Any, Generic, TypeVar

__all__ = ["RankedMap"]

V = TypeVar("V")

_LOAD = 256  # buckets split at 2 * _LOAD keys
_RUN = 64  # buckets per second-level counter
_SHIFT = 6  # log2(_RUN)


class RankedMap(Generic[V]):
    """Unique sorted keys -> values, with rank (0-based position) queries."""

    __slots__ = ("_ints", "_keys", "_len", "_lens", "_maxes", "_runs", "_vals")

    def __init__(self, *, ints: bool = False) -> None:
        self._ints = ints  # key buckets are int64 arrays (until a key does not fit)
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
        for keys, vals in zip(self._keys, self._vals, strict=True):
            yield from zip(keys, vals, strict=True)

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
                i = bisect_left(keys, key)
                keys.insert(i, key)
                self._vals[b].insert(i, value)
        except (OverflowError, TypeError):
            if not self._ints:
                raise
            self._widen()  # nothing was changed: the key went nowhere
            self.insert(key, value)
            return
        self._len += 1
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

    def _widen(self) -> None:
        """Keep keys in plain lists from now on (a key does not fit an int64)."""
        self._ints = False
        self._keys = [list(keys) for keys in self._keys]

    def _drop(self, b: int, i: int) -> V:
        keys = self._keys[b]
        vals = self._vals[b]
        del keys[i]
        value = vals.pop(i)
        self._len -= 1
        if not keys:
            del self._keys[b]
            del self._vals[b]
            del self._maxes[b]
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
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                return self._drop(b, i)
        raise KeyError(key)

    def pop_first(self) -> tuple[Any, V]:
        """Remove and return the smallest (key, value). Raises IndexError if empty."""
        if not self._len:
            raise IndexError("pop from an empty RankedMap")
        key = self._keys[0][0]
        return key, self._drop(0, 0)

    def first_value(self) -> V:
        """The value of the smallest key. Raises IndexError if empty."""
        if not self._len:
            raise IndexError("first of an empty RankedMap")
        return self._vals[0][0]

    def pop_first_value(self) -> V:
        """Remove the smallest key and return its value. Raises IndexError if empty."""
        if not self._len:
            raise IndexError("pop from an empty RankedMap")
        keys = self._keys[0]
        if len(keys) > 1:  # the common case, inlined: the first bucket stays
            del keys[0]
            self._len -= 1
            lens = self._lens
            if lens is not None:
                lens[0] -= 1
                self._runs[0] -= 1
            return self._vals[0].pop(0)
        return self._drop(0, 0)

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
        return before + bisect_left(self._keys[b], key)

    def _build(self) -> list[int]:
        lens = self._lens = list(map(len, self._keys))
        self._runs = [sum(lens[i : i + _RUN]) for i in range(0, len(lens), _RUN)]
        return lens
