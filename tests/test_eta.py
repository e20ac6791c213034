"""Unit tests of the wait estimator and the lane's rolling windows (``_eta``)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executus._eta import RuntimeWindow, ThroughputWindow, estimate_wait


def window(*runs: float, size: int = 16, history: int = 256) -> RuntimeWindow:
    w = RuntimeWindow(size, history=history)
    for r in runs:
        w.add(r)
    return w


# -- RuntimeWindow -----------------------------------------------------------------------


def test_empty_window_has_no_mean() -> None:
    """An empty window has length 0 and mean None."""
    w = RuntimeWindow(4)
    assert (len(w), w.mean(), w.size) == (0, None, 4)


def test_window_keeps_the_last_size_runs() -> None:
    """Past its size, the oldest run times drop out of the mean."""
    w = window(10.0, 1.0, 2.0, 3.0, size=3)
    assert len(w) == 3
    assert w.mean() == pytest.approx(2.0)


def test_remaining_is_the_mean_residual_of_longer_runs() -> None:
    """remaining(e) averages s - e over the recorded runs s longer than e."""
    w = window(1.0, 2.0, 4.0)
    assert w.remaining(0.0, 7 / 3) == pytest.approx(7 / 3)
    assert w.remaining(1.5, 7 / 3) == pytest.approx(((2.0 - 1.5) + (4.0 - 1.5)) / 2)
    assert w.remaining(2.0, 7 / 3) == pytest.approx(2.0)  # only 4.0 is longer than 2.0


def test_remaining_after_outliving_every_run_is_half_the_mean() -> None:
    """A job that ran longer than every recorded run is given half the mean."""
    w = window(1.0, 2.0)
    assert w.remaining(5.0, 1.5) == pytest.approx(0.75)


def test_remaining_follows_later_adds() -> None:
    """remaining reflects runs added after an earlier query."""
    w = window(1.0, 3.0)
    assert w.remaining(2.0, 2.0) == pytest.approx(1.0)
    w.add(6.0)
    assert w.remaining(2.0, w.mean() or 0.0) == pytest.approx(((3.0 - 2) + (6.0 - 2)) / 2)


def test_resize_keeps_the_most_recent_runs() -> None:
    """Shrinking keeps the newest runs; growing keeps all and admits more."""
    w = window(1.0, 2.0, 3.0, 4.0, size=4, history=0)
    w.resize(2)
    assert (w.size, len(w)) == (2, 2)
    assert w.mean() == pytest.approx(3.5)
    assert w.remaining(3.5, 3.5) == pytest.approx(0.5)  # 3.0 dropped out of the residuals
    w.resize(3)
    w.add(6.0)
    assert len(w) == 3
    assert w.mean() == pytest.approx((3.0 + 4.0 + 6.0) / 3)


def test_window_matches_a_plain_recomputation() -> None:
    """Without a history, mean and remaining match a direct computation over the runs."""
    rng = random.Random(7)
    w = RuntimeWindow(5, history=0)
    kept: list[float] = []
    for _ in range(200):
        d = rng.choice([0.5, 1.0, 1.0, 2.0, rng.random() * 3])
        w.add(d)
        kept = [*kept, d][-5:]
        mean = sum(kept) / len(kept)
        assert w.mean() == pytest.approx(mean)
        e = rng.random() * 3
        longer = [s - e for s in kept if s > e]
        expected = sum(longer) / len(longer) if longer else 0.5 * mean
        assert w.remaining(e, mean) == pytest.approx(expected)


# -- RuntimeWindow: the shape history ---------------------------------------------------


def test_history_records_each_run_over_the_mean_before_it() -> None:
    """Each run adds run / (window mean before it); the first run adds no ratio."""
    w = window(1.0, 1.0, 2.0, 4.0, size=2, history=8)
    values, scale, cv2 = w.shape()
    ratios = [1.0, 2.0, 4.0 / 1.5]  # means before: 1.0, 1.0, (1.0 + 2.0) / 2
    avg = sum(ratios) / 3
    assert values == pytest.approx(sorted(ratios))
    assert w.mean() == pytest.approx(3.0)
    assert scale == pytest.approx(3.0 / avg)  # the sample's mean is the window's
    var = sum((r - avg) ** 2 for r in ratios) / 2
    assert cv2 == pytest.approx(var / avg**2)


def test_the_window_runs_serve_until_the_history_holds_more() -> None:
    """With no more ratios than runs in the window, the sample is the window's runs."""
    w = window(1.0, 3.0, 2.0, size=4)  # 3 runs, 2 ratios
    assert w.shape() == (pytest.approx([1.0, 2.0, 3.0]), 1.0, pytest.approx(0.25))
    w.add(2.0)
    w.add(2.0)  # the window is full: 4 runs (3, 2, 2, 2), 4 ratios
    assert w.shape()[:2] == ([2.0, 2.0, 2.0, 3.0], 1.0)
    w.add(2.0)  # a 5th ratio: the history takes over
    ratios = [3.0, 1.0, 1.0, 1.0, 2.0 / 2.25]
    values, scale, _ = w.shape()
    assert values == pytest.approx(sorted(ratios))
    assert scale == pytest.approx(2.0 / (sum(ratios) / 5))


def test_history_keeps_only_its_last_ratios() -> None:
    """Past ``history`` ratios, the oldest drop out of the sample."""
    w = window(1.0, 2.0, 1.0, 4.0, 1.0, 1.0, size=1, history=3)
    # ratios (size 1: run / previous run): 2.0, 0.5, 4.0, 0.25, 1.0; the last three stay
    assert w.shape()[0] == pytest.approx([0.25, 1.0, 4.0])


def test_a_long_history_is_sorted_again_once_a_sixteenth_is_new() -> None:
    """With 64 ratios, the sorted sample is refreshed after 4 new ones, not each one."""
    w = window(*([1.0] * 65), size=1, history=64)  # 64 ratios of 1.0
    assert w.shape()[0] == [1.0] * 64
    for i in range(3):
        w.add(2.0 + i)  # ratios 2.0, 1.5, 4/3: too few to refresh the sorted copy
        assert w.shape()[0] == [1.0] * 64
    w.add(2.0)  # the 4th new ratio (1/16 of 64): the sample catches up
    values = w.shape()[0]
    assert values == pytest.approx(sorted([1.0] * 60 + [2.0, 1.5, 4.0 / 3.0, 0.5]))
    assert w.shape()[1] == pytest.approx(2.0 / (sum(values) / 64))


def test_a_short_history_is_always_current() -> None:
    """Under 32 ratios (1/16 of them is under two), every new ratio is in the sample."""
    w = window(*([1.0] * 20), size=1, history=64)  # 19 ratios
    assert w.shape()[0] == [1.0] * 19
    w.add(3.0)
    assert w.shape()[0] == [1.0] * 19 + [3.0]


def test_empty_window_has_an_empty_shape() -> None:
    """No runs: no sample, scale and cv2 are 0."""
    assert RuntimeWindow(4).shape() == ([], 0.0, 0.0)


def test_shape_follows_a_change_of_level() -> None:
    """After the runs grow tenfold, the sample is scaled to the new window mean."""
    w = window(*([1.0] * 300), size=16)
    for _ in range(16):
        w.add(10.0)
    values, scale, _ = w.shape()
    assert w.mean() == pytest.approx(10.0)
    runs = sorted(v * scale for v in values)
    assert sum(runs) / len(runs) == pytest.approx(10.0)
    assert 7.0 < runs[len(runs) // 2] < 10.0  # most ratios are 1: the median follows


def test_resize_keeps_the_history() -> None:
    """Resizing the window changes the mean it scales by, not the ratios."""
    w = window(1.0, 2.0, 1.0, 2.0, 1.0, 2.0, size=2, history=8)
    before = list(w.shape()[0])
    w.resize(1)
    values, scale, _ = w.shape()
    assert values == before
    assert scale * sum(values) / len(values) == pytest.approx(2.0)


def test_history_matches_a_plain_recomputation() -> None:
    """shape and remaining agree with a direct computation over random adds."""
    rng = random.Random(11)
    w = RuntimeWindow(3, history=8)
    runs: list[float] = []
    ratios: list[float] = []
    for step in range(300):
        d = rng.choice([0.5, 1.0, 2.0, rng.random() * 3])
        if runs:
            recent = runs[-3:]
            ratios = [*ratios, d * len(recent) / sum(recent)][-8:]
        runs.append(d)
        w.add(d)
        mean = sum(runs[-3:]) / len(runs[-3:])
        assert w.mean() == pytest.approx(mean)
        if len(ratios) <= len(runs[-3:]):
            continue
        avg = sum(ratios) / len(ratios)
        sample = sorted(r * mean / avg for r in ratios)
        values, scale, cv2 = w.shape()
        assert [v * scale for v in values] == pytest.approx(sample), step
        var = sum((r - avg) ** 2 for r in ratios) / (len(ratios) - 1)
        assert cv2 == pytest.approx(var / avg**2)
        e = rng.random() * 3
        longer = [s - e for s in sample if s > e]
        expected = sum(longer) / len(longer) if longer else 0.5 * mean
        assert w.remaining(e, mean) == pytest.approx(expected)


def test_estimates_read_the_spread_from_the_history() -> None:
    """The history's spread, scaled to the window mean, sets when running jobs end."""
    # size 1: ratios 0.5, 1.5, 0.5, 1.5 (mean 1); the window mean is the last run, 1.125,
    # so the sample is 0.5625 (twice) and 1.6875 (twice): half the jobs end at 0.5625.
    runs = (2.0, 1.0, 1.5, 0.75, 1.125)
    spread = window(*runs, size=1, history=4)
    assert estimate_wait(1, 4, [0.0] * 4, spread, 0) == pytest.approx(0.5625)
    assert estimate_wait(2, 4, [0.0] * 4, spread, 0) == pytest.approx(0.5625)
    # without a history the window's single run is the whole sample
    alone = window(*runs, size=1, history=0)
    assert estimate_wait(1, 4, [0.0] * 4, alone, 0) == pytest.approx(1.125)


# -- ThroughputWindow --------------------------------------------------------------------


def test_throughput_counts_the_last_minute() -> None:
    """Runs ended within 60 seconds count; older ones drop out."""
    t = ThroughputWindow()
    for now in (100.0, 100.5, 101.2, 130.0):
        t.record(now)
    assert t.count(130.0) == 4
    assert t.count(160.9) == 2  # second 100 is out of the window; 101 and 130 are in
    assert t.count(161.5) == 1
    assert t.count(200.0) == 0


def test_throughput_ring_reuses_buckets_after_a_minute() -> None:
    """A bucket reused 60 seconds later starts from zero."""
    t = ThroughputWindow()
    t.record(5.0)
    t.record(5.5)
    t.record(65.2)  # same ring slot as second 5
    assert t.count(65.2) == 1


def test_throughput_empty_is_zero() -> None:
    """No recorded run: a count of 0."""
    assert ThroughputWindow().count(1000.0) == 0


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 8),
    history=st.integers(0, 12),
    batches=st.lists(  # run times a clock can give: 0, or 1 us to 1,000 s
        st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e3)), max_size=20),
        min_size=1,
        max_size=6,
    ),
)
def test_add_many_is_add_one_by_one(size: int, history: int, batches: list[list[float]]) -> None:
    """Runs recorded in batches leave the window exactly as runs recorded one by one."""
    one = RuntimeWindow(size, history=history)
    many = RuntimeWindow(size, history=history)
    for batch in batches:
        for r in batch:
            one.add(r)
        many.add_many(batch)
        assert list(many._recent) == list(one._recent)
        assert many._total == one._total
        assert (many._ratios, many._next, many._ratio_stale) == (
            one._ratios,
            one._next,
            one._ratio_stale,
        )
        assert many.mean() == one.mean()
        assert many.shape() == one.shape()


def _one_run_at_a_time(
    size: int, history: int, runs: list[float]
) -> tuple[list[float], float, list[float], int, int]:
    """The window's rule written as a plain loop over single runs: the window, its
    total, the ratio ring, the ring's next slot and the count of new ratios."""
    recent: list[float] = []
    total = 0.0
    ring: list[float] = []
    at = 0 if history > 0 else -1
    stale = 0
    for seconds in runs:
        n = len(recent)
        if at >= 0 and n and total > 0.0:
            stale += 1
            if len(ring) < history:
                ring.append(seconds * n / total)
            else:
                ring[at] = seconds * n / total
                at = (at + 1) % len(ring)
        if n == size:
            total -= recent.pop(0)
        recent.append(seconds)
        total += seconds
    return recent, total, ring, at, stale


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 20),
    history=st.integers(0, 24),
    batches=st.lists(  # run times a clock can give: 0, or 1 us to 1,000 s (batches
        # of 64 runs and more take the batch passes, shorter ones the loop)
        st.one_of(
            st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e3)), max_size=70),
            st.lists(st.floats(1e-6, 1e3), min_size=64, max_size=200),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_batches_follow_the_one_run_rule(
    size: int, history: int, batches: list[list[float]]
) -> None:
    """Batches of any length (longer than the window or the ring included) leave the
    window, its total and the ratio ring exactly as the rule applied run by run."""
    window = RuntimeWindow(size, history=history)
    done: list[float] = []
    for batch in batches:
        window.add_many(batch)
        done += batch
        recent, total, ring, at, stale = _one_run_at_a_time(size, history, done)
        assert list(window._recent) == recent
        assert window._total == total
        assert window._ratios == ring
        assert window._next == at
        assert window._ratio_stale == stale


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(  # short batches are counted one by one, long ones by bisection
        st.lists(st.floats(-100.0, 500.0, allow_nan=False), max_size=60),
        st.lists(st.floats(-100.0, 500.0, allow_nan=False), min_size=64, max_size=200),
        st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=64, max_size=200),
    )
)
def test_record_many_is_record_one_by_one(ends: list[float]) -> None:
    """End times counted in a batch give the counts of end times counted one by one."""
    ends = sorted(ends)
    one = ThroughputWindow()
    many = ThroughputWindow()
    for now in ends:
        one.record(now)
    many.record_many(ends)
    assert (many._counts, many._stamps) == (one._counts, one._stamps)


# -- estimate_wait -----------------------------------------------------------------------


def test_not_queued_waits_nothing() -> None:
    """Position 0 (or less) is 0.0 seconds."""
    assert estimate_wait(0, 2, [1.0], window(1.0), 10) == 0.0
    assert estimate_wait(-1, 2, [1.0], window(1.0), 10) == 0.0


def test_without_history_one_second_per_position() -> None:
    """No run times and no throughput: one second per position."""
    assert estimate_wait(3, 2, [0.5, 0.7], RuntimeWindow(16), 0) == 3.0


def test_without_run_times_throughput_paces_the_queue() -> None:
    """No run times: position * 60 / throughput_1m."""
    assert estimate_wait(3, 2, [0.5], RuntimeWindow(16), 30) == pytest.approx(6.0)


def test_without_run_times_held_slots_free_first() -> None:
    """No run times: promised slots free at their known times, then the fallback pace."""
    w = RuntimeWindow(16)
    assert estimate_wait(1, 2, [], w, 0, held=[4.0, 2.5]) == 2.5
    assert estimate_wait(2, 2, [], w, 0, held=[4.0, 2.5]) == 4.0
    assert estimate_wait(4, 2, [], w, 0, held=[4.0, 2.5]) == 6.0


def test_first_round_is_the_order_statistic_of_residuals() -> None:
    """Equal run times: position k waits for the k-th running job to end."""
    w = window(1.0, 1.0, 1.0)
    assert estimate_wait(1, 2, [0.2, 0.6], w, 0) == pytest.approx(0.4)
    assert estimate_wait(2, 2, [0.2, 0.6], w, 0) == pytest.approx(0.8)


def test_later_rounds_follow_the_renewal_line() -> None:
    """Past the first round, slots free up once per mean run time each."""
    w = window(1.0, 1.0, 1.0)
    # residuals 0.4 and 0.8; each slot's next runs add (t - r) - 0.5 (zero variance);
    # E[N] = 2.5 at t = 1.35 (1.3 + 0.1 / 2).
    assert estimate_wait(3, 2, [0.2, 0.6], w, 0) == pytest.approx(1.35)
    # far out: 2 slots, one run per second each
    far = estimate_wait(203, 2, [0.2, 0.6], w, 0)
    assert far == pytest.approx(estimate_wait(3, 2, [0.2, 0.6], w, 0) + 100.0)


def test_the_first_end_comes_before_the_smallest_expected_end() -> None:
    """Spread run times: the next start is the median first end, below every mean."""
    w = window(0.5, 1.0, 1.5, 2.0)
    eta = estimate_wait(1, 4, [0.0, 0.0, 0.0, 0.0], w, 0)
    assert eta == pytest.approx(0.5)  # each job ends by 0.5 with chance 1/4: E[N] = 1
    assert eta < min(w.remaining(0.0, 1.25) for _ in range(4))


def test_a_free_slot_means_no_wait() -> None:
    """Fewer running jobs than slots: position 1 starts at once."""
    assert estimate_wait(1, 2, [0.3], window(1.0), 0) == 0.0
    assert estimate_wait(2, 2, [0.3], window(1.0), 0) == pytest.approx(0.7)


def test_over_the_limit_first_completions_free_nothing() -> None:
    """After the limit was lowered, the first ends only bring running down to it."""
    w = window(1.0, 1.0)
    # 3 running (residuals 0.9, 0.5, 0.1) in 2 slots: position 1 waits for the 2nd end.
    assert estimate_wait(1, 2, [0.1, 0.5, 0.9], w, 0) == pytest.approx(0.5)


def test_held_slots_count_as_known_residuals() -> None:
    """A slot held by a preemption grace frees at its known time."""
    w = window(1.0, 1.0)
    assert estimate_wait(1, 2, [0.2], w, 0, held=[0.3]) == pytest.approx(0.3)
    assert estimate_wait(2, 2, [0.2], w, 0, held=[0.3]) == pytest.approx(0.8)


def test_a_job_outliving_every_run_gets_half_the_mean() -> None:
    """A running job older than every recorded run is expected to end in mean / 2."""
    w = window(1.0, 1.0)
    assert estimate_wait(1, 1, [5.0], w, 0) == pytest.approx(0.5)


def test_instant_runs_mean_no_wait() -> None:
    """A window of zero-length runs: queued jobs are expected to start at once."""
    assert estimate_wait(5, 2, [0.0, 0.0], window(0.0, 0.0), 0) == 0.0
    # The running job ends at once and its slot then runs every queued zero-length job
    # at once: nothing waits for the other slot's 2 s grace.
    assert estimate_wait(5, 2, [0.0], window(0.0), 0, held=[2.0]) == 0.0


def test_instant_runs_over_the_limit_wait_for_the_first_slot_kept() -> None:
    """Zero-length runs over a lowered limit: the first slot ends that only bring running
    down to the limit free nothing; the next one serves every queued job at once."""
    w = window(0.0)
    # 4 busy in 2 slots: the running job ends at once and the 1 s grace ends next, both
    # taken by the excess of 2; the 3 s grace frees the first slot for the queue.
    for position in (1, 2, 9):
        assert estimate_wait(position, 2, [0.0], w, 0, held=[5.0, 1.0, 3.0]) == 3.0
    # 4 busy in 2 slots, 3 of them ending at once: one more than the excess.
    for position in (1, 2, 9):
        assert estimate_wait(position, 2, [0.0, 0.0, 0.0], w, 0, held=[4.0]) == 0.0
    # Every slot held, none over the limit: the first grace to end serves the queue.
    assert estimate_wait(3, 2, [], w, 0, held=[4.0, 1.5]) == 1.5


def test_many_slots_use_quantiles_of_the_residuals() -> None:
    """With more slots than points to spare, each job keeps quantiles: same answer here."""
    w = window(*([1.0] * 16))
    assert estimate_wait(1, 32, [0.0] * 32, w, 0) == pytest.approx(1.0)
    assert estimate_wait(32, 32, [0.0] * 32, w, 0) == pytest.approx(1.0)
    spread = window(*(0.5 + i / 15 for i in range(16)))
    etas = [estimate_wait(p, 64, [0.25] * 64, spread, 0) for p in (1, 32, 64, 65, 200)]
    assert etas == sorted(etas)
    assert 0.0 < etas[0] < etas[-1]


def test_estimate_grows_with_position() -> None:
    """Later positions never get a shorter estimate."""
    rng = random.Random(3)
    w = window(*(rng.lognormvariate(0.0, 0.5) for _ in range(16)))
    elapsed = [rng.random() for _ in range(4)]
    etas = [estimate_wait(p, 4, elapsed, w, 0) for p in range(1, 60)]
    assert all(a <= b for a, b in itertools.pairwise(etas))
    assert etas[0] > 0.0
