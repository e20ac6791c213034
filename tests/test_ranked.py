"""RankedMap: a sorted map with rank, checked against a plain sorted list."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executus._ranked import RankedMap


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "pop", "pop_first"]), st.integers(0, 3000))))
def test_matches_a_sorted_list(ops: list[tuple[str, int]]) -> None:
    """Any mix of inserts and removals keeps order, length and ranks of a sorted list."""
    ranked: RankedMap[str] = RankedMap()
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
