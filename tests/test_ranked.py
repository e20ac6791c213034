"""RankedMap: a sorted map with rank, checked against a plain sorted list."""

from __future__ import annotations

import gc
import weakref
from bisect import bisect_left
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executus import _ranked as ranked_module
from executus._ranked import ArrivalMap, RankedMap


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["insert", "pop", "pop_first"]), st.integers(0, 3000))),
    st.booleans(),
)
def test_matches_a_sorted_list(ops: list[tuple[str, int]], ints: bool) -> None:
    """Any mix of inserts and removals keeps order, length and ranks of a sorted list."""
    ranked: RankedMap[str] = RankedMap(ints=ints)
    model: list[int] = []
    for op, key in ops:
        if op == "insert" and key not in model:
            ranked.insert(key, str(key))
            model.append(key)
            model.sort()
        elif op == "pop" and model:
            victim = model[key % len(model)]
            assert ranked.pop(victim) == str(victim)
            model.remove(victim)
        elif op == "pop_first" and model:
            assert ranked.pop_first() == (model[0], str(model[0]))
            model.pop(0)
        assert len(ranked) == len(model)
    assert [k for k, _ in ranked] == model
    for probe in (-1, 0, 1500, 3001, *model[:20]):
        assert ranked.rank(probe) == sum(1 for k in model if k < probe)


def test_many_buckets_rank_and_pop() -> None:
    """Ranks stay right across bucket splits and removals of whole buckets."""
    ranked: RankedMap[int] = RankedMap()
    for k in range(0, 20000, 2):
        ranked.insert(k, k)
    for k in range(1, 20000, 4):
        ranked.insert(k, k)
    assert ranked.rank(10000) == 5000 + 2500
    for _ in range(3000):
        ranked.pop_first()
    keys = [k for k, _ in ranked]
    assert ranked.rank(keys[100]) == 100
    assert ranked.pop_first() == (keys[0], keys[0])


def test_missing_keys_and_empty() -> None:
    """Removing an absent key is a KeyError; an empty map has no first."""
    ranked: RankedMap[int] = RankedMap()
    with pytest.raises(IndexError):
        ranked.pop_first()
    ranked.insert(5, 5)
    with pytest.raises(KeyError):
        ranked.pop(4)
    assert ranked.rank(6) == 1
    assert not RankedMap()


def test_ranks_across_many_bucket_runs() -> None:
    """Ranks stay right with hundreds of buckets (several second-level runs)."""
    import random

    rng = random.Random(7)
    keys = rng.sample(range(1_000_000), 60_000)
    ranked: RankedMap[None] = RankedMap()
    for k in keys:
        ranked.insert(k, None)
    gone = set(rng.sample(keys, 20_000))
    for k in gone:
        ranked.pop(k)
    for _ in range(500):  # pops from the front remove whole buckets
        ranked.pop_first()
    model = sorted(set(keys) - gone)[500:]
    assert len(ranked) == len(model)
    for i in range(0, len(model), 997):
        assert ranked.rank(model[i]) == i
    ranked.insert(-1, None)
    assert ranked.rank(model[1000]) == 1001


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "pop", "pop_first"]),
            st.one_of(st.integers(-3000, 3000), st.integers(-(2**70), 2**70)),
        )
    )
)
def test_int_buckets_widen_for_keys_beyond_int64(ops: list[tuple[str, int]]) -> None:
    """An ``ints`` map given keys beyond 64 bits goes on as a plain one, losing nothing."""
    ranked: RankedMap[int] = RankedMap(ints=True)
    model: list[int] = []
    for op, key in ops:
        if op == "insert" and key not in model:
            ranked.insert(key, key)
            model.append(key)
            model.sort()
        elif op == "pop" and model:
            victim = model[key % len(model)]
            assert ranked.pop(victim) == victim
            model.remove(victim)
        elif op == "pop_first" and model:
            assert ranked.pop_first() == (model[0], model[0])
            model.pop(0)
        assert len(ranked) == len(model)
    assert [k for k, _ in ranked] == model
    for probe in (-(2**70), -1, 0, 2**64, *model[:20]):
        assert ranked.rank(probe) == sum(1 for k in model if k < probe)


def test_int_buckets_hold_int64_keys_and_widen_once() -> None:
    """Keys at the int64 bounds stay in machine-int buckets; one beyond widens the map."""
    ranked: RankedMap[str] = RankedMap(ints=True)
    for key in (0, 2**63 - 1, -(2**63), 5):
        ranked.insert(key, str(key))
    assert ranked._ints
    assert ranked.pop(2**63 - 1) == str(2**63 - 1)
    ranked.insert(2**63, "big")
    assert not ranked._ints
    assert [k for k, _ in ranked] == [-(2**63), 0, 5, 2**63]
    assert ranked.rank(2**63) == 3
    ranked.insert(2**63 - 1, "max")  # inserts go on as in a plain map
    assert ranked.rank(2**63) == 4
    with pytest.raises(KeyError):
        ranked.pop(2**64)


def test_int_buckets_refuse_what_a_plain_map_refuses() -> None:
    """A key that cannot be compared fails as in a plain map, with nothing added."""
    ranked: RankedMap[str] = RankedMap(ints=True)
    ranked.insert(1, "one")
    with pytest.raises(TypeError):
        ranked.insert("x", "x")
    assert len(ranked) == 1
    assert [k for k, _ in ranked] == [1]


class _Value:
    """A value a weak reference can follow."""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["insert", "insert", "pop", "pop_first", "pop_first_value", "pop_absent"]
            ),
            st.integers(-50, 300),
        ),
        max_size=400,
    ),
    st.booleans(),
)
def test_small_buckets_match_a_sorted_list(ops: list[tuple[str, int]], ints: bool) -> None:
    """With buckets of a few keys, pops from the front, inserts before them, splits and
    removals of whole buckets keep order, ranks, first values and lookups right."""
    with patch.object(ranked_module, "_LOAD", 2):
        ranked: RankedMap[int] = RankedMap(ints=ints)
        model: list[int] = []
        for op, key in ops:
            if op == "insert" and key not in model:
                ranked.insert(key, key * 10)
                model.append(key)
                model.sort()
            elif op == "pop" and model:
                victim = model[key % len(model)]
                assert ranked.pop(victim) == victim * 10
                model.remove(victim)
            elif op == "pop_first" and model:
                assert ranked.pop_first() == (model[0], model[0] * 10)
                model.pop(0)
            elif op == "pop_first_value" and model:
                assert ranked.first_value() == model[0] * 10
                assert ranked.pop_first_value() == model[0] * 10
                model.pop(0)
            elif op == "pop_absent" and key not in model:
                with pytest.raises(KeyError):
                    ranked.pop(key)
            assert len(ranked) == len(model)
            assert ranked.rank(key) == bisect_left(model, key)
        assert [k for k, _ in ranked] == model
        assert [v for _, v in ranked] == [k * 10 for k in model]
        for probe in (-51, 301, *model):
            assert ranked.rank(probe) == bisect_left(model, probe)


@pytest.mark.parametrize("ints", [True, False])
def test_popped_keys_are_gone_and_values_released(ints: bool) -> None:
    """A key popped from the front cannot be found, ranked or popped again, the map
    keeps no reference to its value, and it can be inserted anew."""
    ranked: RankedMap[_Value] = RankedMap(ints=ints)
    values = {k: _Value() for k in range(10)}
    for k, v in values.items():
        ranked.insert(k, v)
    refs = [weakref.ref(values.pop(k)) for k in range(3)]
    ranked.pop_first_value()
    ranked.pop_first_value()
    assert ranked.pop_first()[0] == 2
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    with pytest.raises(KeyError):
        ranked.pop(1)
    assert ranked.rank(1) == 0
    assert ranked.rank(5) == 2
    ranked.insert(1, values.setdefault(1, _Value()))  # before every key left
    ranked.insert(-5, values.setdefault(-5, _Value()))
    assert [k for k, _ in ranked] == [-5, 1, 3, 4, 5, 6, 7, 8, 9]
    assert ranked.rank(3) == 2
    assert ranked.pop(1) is values[1]
    assert ranked.pop_first() == (-5, values[-5])


@pytest.mark.parametrize("ints", [True, False])
def test_first_bucket_splits_behind_popped_entries(ints: bool) -> None:
    """A first bucket that fills up behind popped entries splits into live keys only."""
    with patch.object(ranked_module, "_LOAD", 2):
        ranked: RankedMap[int] = RankedMap(ints=ints)
        for k in range(3):
            ranked.insert(k, k)
        assert ranked.pop_first() == (0, 0)
        assert ranked.pop_first_value() == 1
        for k in range(3, 7):  # appends into the first (and last) bucket
            ranked.insert(k, k)
        assert [ranked.pop_first_value() for _ in range(3)] == [2, 3, 4]
        ranked.insert(-1, -1)
        assert [k for k, _ in ranked] == [-1, 5, 6]
        assert [ranked.rank(k) for k in (-1, 5, 6, 7)] == [0, 1, 2, 3]


# -- ArrivalMap and RankedMap.extend -------------------------------------------------------


def _check_against(arrivals: ArrivalMap[int], model: list[int]) -> None:
    assert len(arrivals) == arrivals._len == len(model)
    assert bool(arrivals) == bool(model)
    assert [k for k, _ in arrivals] == model
    assert [v for _, v in arrivals] == [k * 10 for k in model]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    *("arrive", "arrive", "arrive", "insert", "pop", "pop_first_value"),
                    *("rank", "pop_absent", "pop_newest", "pop_oldest"),
                ]
            ),
            st.one_of(st.integers(-50, 400), st.integers(-(2**70), 2**70)),
        ),
        max_size=300,
    ),
    st.booleans(),
    st.sampled_from([2, 3, 256]),
)
def test_arrival_map_matches_a_sorted_list(
    ops: list[tuple[str, int]], ints: bool, load: int
) -> None:
    """Arrivals past the last key, inserts anywhere, pops of any key, of the first and of
    either end of the tail, ranks and absent keys keep the order, length, ranks and
    values of a sorted list, whatever the keys' width and the bucket size."""
    with patch.object(ranked_module, "_LOAD", load):
        arrivals: ArrivalMap[int] = ArrivalMap(ints=ints)
        model: list[int] = []
        for op, key in ops:
            if op == "arrive":  # the next arrival number: past every key held
                key = (model[-1] + 1 + key % 3) if model else key
                op = "insert"
            if op == "insert" and key not in model:
                arrivals.insert(key, key * 10)
                model.append(key)
                model.sort()
            elif op == "pop" and model:
                victim = model[key % len(model)]
                assert arrivals.pop(victim) == victim * 10
                model.remove(victim)
            elif op == "pop_newest" and model:
                assert arrivals.pop(model[-1]) == model[-1] * 10
                model.pop()
            elif op == "pop_oldest" and model:
                tail = arrivals._tkeys[arrivals._head :]
                victim = tail[0] if tail else model[0]  # the tail's first, if any
                assert arrivals.pop(victim) == victim * 10
                model.remove(victim)
            elif op == "pop_first_value" and model:
                assert arrivals.first_value() == model[0] * 10
                assert arrivals.pop_first_value() == model[0] * 10
                model.pop(0)
            elif op == "pop_absent" and key not in model:
                with pytest.raises(KeyError):
                    arrivals.pop(key)
            elif op == "rank":
                probe = model[key % len(model)] if model else key
                assert arrivals.rank(probe) == bisect_left(model, probe)
            assert arrivals.rank(key) == bisect_left(model, key)
            _check_against(arrivals, model)
        for probe in (-(2**71), 2**71, *model):
            assert arrivals.rank(probe) == bisect_left(model, probe)


def test_arrivals_stay_in_the_tail_through_ranks_and_removals() -> None:
    """Arrivals in order, ranks anywhere, removals anywhere in the tail and pops from the
    front touch no sorted map; a key inserted among the tail's keys moves the keys
    before it there, and nothing else."""
    arrivals: ArrivalMap[int] = ArrivalMap(ints=True)
    for k in range(1000):
        arrivals.insert(k, -k)
        assert arrivals.rank(k) == k
    assert len(arrivals._map) == 1  # the first key; the rest arrived after it
    assert arrivals.pop_first_value() == 0
    assert arrivals.rank(500) == 499
    assert arrivals.pop(500) == -500  # a tombstone: ranks above it count one less
    assert arrivals.rank(501) == 499
    assert arrivals.rank(600) == 598
    with pytest.raises(KeyError):
        arrivals.pop(500)
    assert arrivals.pop(998) == -998  # a tombstone next to the newest key
    assert arrivals.pop(999) == -999  # the newest: it goes with the tombstone before it
    assert arrivals._tkeys[-1] == 997
    assert arrivals.pop(1) == -1
    assert len(arrivals._map) == 0
    assert len(arrivals) == 995
    assert [k for k, _ in arrivals] == [*range(2, 500), *range(501, 998)]
    gaps: ArrivalMap[int] = ArrivalMap(ints=True)
    for k in range(0, 100, 2):
        gaps.insert(k, k)
    gaps.pop(20)  # a tombstone before the insertion point
    gaps.insert(51, 51)  # among the tail's keys: the live ones before it move first
    assert len(gaps._map) == 25 + 1
    assert gaps._tkeys[gaps._head :] == list(range(52, 100, 2))
    assert gaps._gone is None
    assert gaps.rank(52) == 26
    assert [k for k, _ in gaps] == sorted({*range(0, 100, 2), 51} - {20})


def test_dispatches_from_a_long_tail_keep_keys_and_values_together() -> None:
    """Many arrivals taken from the front of the tail leave the rest with their own
    values and ranks, and removals at either end of the tail move nothing."""
    arrivals: ArrivalMap[int] = ArrivalMap(ints=True)
    for k in range(2000):
        arrivals.insert(k, -k)
    assert [arrivals.pop_first_value() for _ in range(1500)] == [-k for k in range(1500)]
    assert list(arrivals) == [(k, -k) for k in range(1500, 2000)]
    assert arrivals.pop(1500) == -1500
    assert arrivals.pop(1999) == -1999
    assert len(arrivals._map) == 0
    assert arrivals.rank(1700) == 199
    assert arrivals.pop(1700) == -1700
    assert arrivals.first_value() == -1501
    assert list(arrivals) == [(k, -k) for k in range(1501, 1999) if k != 1700]


def test_empty_arrival_map_refuses_as_a_ranked_map_does() -> None:
    """An empty map raises IndexError for its first value and KeyError for a key."""
    arrivals: ArrivalMap[int] = ArrivalMap()
    with pytest.raises(IndexError):
        arrivals.pop_first_value()
    with pytest.raises(IndexError):
        arrivals.first_value()
    with pytest.raises(KeyError):
        arrivals.pop(3)
    assert arrivals.rank(3) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=40),
    st.lists(st.integers(1, 40), max_size=8),
    st.integers(0, 30),
    st.booleans(),
    st.sampled_from([2, 3, 256]),
)
def test_extend_appends_runs_of_keys(
    first: list[int], runs: list[int], popped: int, ints: bool, load: int
) -> None:
    """``extend`` after any inserts and front pops appends its keys in order: the same
    order, ranks and values as inserting them one by one."""
    with patch.object(ranked_module, "_LOAD", load):
        ranked: RankedMap[int] = RankedMap(ints=ints)
        model: list[int] = []
        for k in sorted(set(first)):
            ranked.insert(k, -k)
            model.append(k)
        for _ in range(min(popped, len(model))):
            assert ranked.pop_first_value() == -model.pop(0)
        nxt = 10
        for count in runs:
            keys = list(range(nxt, nxt + count))
            ranked.extend(keys, [-k for k in keys])
            model += keys
            nxt += count + 1
            ranked.rank(model[0])  # builds the size index, which the next extend must keep
        assert [k for k, _ in ranked] == model
        assert [v for _, v in ranked] == [-k for k in model]
        for probe in (-1, *model, nxt):
            assert ranked.rank(probe) == bisect_left(model, probe)


def test_extend_with_keys_beyond_int64_widens_first() -> None:
    """Keys too wide for machine-int buckets widen the map before anything is added."""
    ranked: RankedMap[int] = RankedMap(ints=True)
    ranked.insert(1, 1)
    ranked.extend([2, 2**64, 2**65], [2, 3, 4])
    assert not ranked._ints
    assert [k for k, _ in ranked] == [1, 2, 2**64, 2**65]
    assert ranked.rank(2**65) == 3
