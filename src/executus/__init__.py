"""executus: share scarce back ends fairly and predictably among many users and tasks.

The layers, bottom up:

- jobs and errors (``_job``, ``_errors``, ``_stats``, ``_clock``): the vocabulary;
- queue policies and estimates (``_policies``, ``_ranked``, ``_eta``): pure, no I/O;
- the in-process ``Lane`` (``_lane``): one synchronous decision step over asyncio;
- around it, standard library only: ``fanout`` swarms and the harness seams
  (``config``, ``deliver``, ``identity``, ``dispatchguard``, ``pendingattach``,
  ``progress``);
- optional extras, imported only on request: ``executus.redis`` (``RedisLane``),
  ``executus.cli`` and ``executus.metrics``.
"""

from ._errors import DuplicateJob as DuplicateJob
from ._errors import JobCancelled as JobCancelled
from ._errors import JobPreempted as JobPreempted
from ._errors import LaneBusy as LaneBusy
from ._errors import LaneClosed as LaneClosed
from ._errors import LaneError as LaneError
from ._errors import LaneUnavailable as LaneUnavailable
from ._errors import LeaseLost as LeaseLost
from ._errors import NotQueued as NotQueued
from ._events import EventKind as EventKind
from ._events import LaneEvent as LaneEvent
from ._events import LaneObserver as LaneObserver
from ._events import LoggingObserver as LoggingObserver
from ._fanout import FanoutProgress as FanoutProgress
from ._fanout import KeyProgress as KeyProgress
from ._fanout import Outcome as Outcome
from ._fanout import ProgressLine as ProgressLine
from ._fanout import fanout as fanout
from ._fanout import fanout_iter as fanout_iter
from ._fanout import grid as grid
from ._job import JobContext as JobContext
from ._job import JobHandle as JobHandle
from ._job import JobState as JobState
from ._job import current_job as current_job
from ._lane import Lane as Lane
from ._policies import FIFO as FIFO
from ._policies import FairShare as FairShare
from ._policies import PolicyState as PolicyState
from ._policies import Preemption as Preemption
from ._policies import Priority as Priority
from ._policies import QueuePolicy as QueuePolicy
from ._stats import LaneStats as LaneStats

__version__ = "0.1.0"

__all__ = [
    # lanes
    "Lane",
    "JobHandle",
    "JobState",
    "JobContext",
    "LaneStats",
    "current_job",
    # observing
    "LaneEvent",
    "EventKind",
    "LaneObserver",
    "LoggingObserver",
    # swarms
    "fanout",
    "fanout_iter",
    "grid",
    "Outcome",
    "FanoutProgress",
    "KeyProgress",
    "ProgressLine",
    # policies
    "QueuePolicy",
    "PolicyState",
    "FIFO",
    "Priority",
    "FairShare",
    "Preemption",
    # errors
    "LaneError",
    "LaneClosed",
    "LaneBusy",
    "NotQueued",
    "DuplicateJob",
    "JobCancelled",
    "JobPreempted",
    "LaneUnavailable",
    "LeaseLost",
]
