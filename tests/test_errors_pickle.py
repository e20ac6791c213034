"""Every executus error survives pickling (a process pool, multiprocessing, a logging
queue): same type, message and attributes."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from executus import (
    DuplicateJob,
    JobCancelled,
    JobPreempted,
    LaneBusy,
    LaneClosed,
    LaneUnavailable,
    LeaseLost,
    NotQueued,
)
from executus.config import ConfigError
from executus.dispatchguard import DuplicateEvent, KeyBusy, Superseded
from executus.identity import Forbidden
from executus.pendingattach import AttachmentLimit

ERRORS: list[BaseException] = [
    LaneClosed("gpu"),
    LaneClosed("gpu", "lane 'gpu' was closed before the job started"),
    LaneBusy("gpu", 3, 2.5, 1.0),
    NotQueued("gpu", "j1", "running"),
    DuplicateJob("gpu", "j1"),
    JobCancelled("gpu", "j1"),
    JobCancelled("gpu", "j1", "cancelled: the lane was closed"),
    JobPreempted("gpu", "j1"),
    LaneUnavailable("lane 'gpu': Redis is unreachable"),
    LeaseLost("job 'j1' lost its lease"),
    ConfigError("bad value", key="LANE_GPU_MAX_CONCURRENT", value="0"),
    DuplicateEvent("alice", "ev1", 600),
    KeyBusy("alice", "ev2", nested=True),
    Superseded("alice", "ev3", "ev4"),
    Forbidden("mallory", "cancel", "mallory may not cancel job 'j1'"),
    AttachmentLimit("alice", "max_per_key", 8),
]


def _public(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in vars(exc).items() if not k.startswith("_")}


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: BaseException) -> None:
    """An error unpickles with its type, message, args and attributes."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert _public(copy) == _public(error)
