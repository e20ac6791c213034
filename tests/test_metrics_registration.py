"""LaneMetrics construction that fails: the rule in the error, nothing left registered."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter

from executus.metrics import LaneMetrics


@pytest.mark.parametrize(
    ("option", "buckets"),
    [
        ("run_buckets", (5.0, 1.0)),
        ("run_buckets", ()),
        ("wait_buckets", (0.1, math.nan, 1.0)),
        ("wait_buckets", (0.1, 0.1)),
    ],
    ids=["unsorted", "empty", "nan", "repeated"],
)
def test_bad_buckets_are_refused_and_leave_the_registry_usable(
    option: str, buckets: Sequence[float]
) -> None:
    """Buckets that are not increasing numbers: ValueError naming them; the registry is clean."""
    registry = CollectorRegistry()
    message = f"{option} must be increasing numbers of seconds, got {buckets!r}"
    if option == "run_buckets":
        make = functools.partial(LaneMetrics, registry=registry, run_buckets=buckets)
    else:
        make = functools.partial(LaneMetrics, registry=registry, wait_buckets=buckets)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()
    assert list(registry.collect()) == []
    LaneMetrics(registry=registry)


def test_a_name_taken_in_the_registry_leaves_none_of_the_others_registered() -> None:
    """A clash on one metric name registers none of the others: freed, the names register."""
    registry = CollectorRegistry()
    taken = Counter("executus_lane_jobs", "Someone else's.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LaneMetrics(registry=registry)
    registry.unregister(taken)
    assert list(registry.collect()) == []
    LaneMetrics(registry=registry)
