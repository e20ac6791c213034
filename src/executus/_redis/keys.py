"""The key layout of a Redis lane.

Every key of a lane starts with ``{<namespace>:<name>}:`` (a namespace has no ``:``, so
each namespace and name have keys of their own). The braces are a Redis
Cluster hash tag: all of a lane's keys live in one hash slot, so each Lua script
touches a single slot and the lane works on Redis Cluster (and Valkey) unchanged.

Keys (after the prefix)::

    cfg          hash   format version, epoch, max, policy, weights' default, preemption,
                        ETA window, counters, fence and sequence counters, virtual time,
                        recovery deadline and the longest lease it was set for,
                        creation time (server ms)
    hold         zset   running job id -> lease deadline (server ms)
    q            zset   FIFO / priority queue: "<16-digit seq><job id>" by score
    qt           zset   queued job id -> when it was queued: submitted or requeued (server ms)
    pq           list   preemption arrivals waiting for their victim's slot
    fk, fi       zset   fair share: backlogged flows by head tag, idle flows by finish tag
    fl:<key>     hash   fair share: one key's flow (base tag, head, length, order, weight)
    fq:<key>     zset   fair share: one key's queued jobs (priority, then arrival)
    w            hash   fair share: key -> weight
    j:<id>       hash   one queued or running job's metadata (never its payload)
    rt           list   recent run times (seconds), newest first
    rh           list   the last 256 run times, each over the window's mean before it
    rs           hash   field "s": rh sorted, with its mean and cv^2 (msgpack; rebuilt on demand)
    tp           hash   unix second -> runs ended in it (the last minute's throughput)
    procs        zset   client id -> liveness deadline (server ms); -1: lapsed, its queued
                        jobs dropped, some of its jobs still holding slots
    pl           zset   client id -> its lease (ms); the longest sets the recovery window
    pj:<client>  set    a client's queued and running job ids
    wake:<client> list  wake-ups for one client: grants, preemptions, lost leases
    sweep        string the guard (SET NX PX) of the sweep's second look at dead clients
"""

from __future__ import annotations

__all__ = ["LaneKeys", "check_key_part", "check_namespace"]


def check_key_part(what: str, value: object) -> str:
    """Validate a lane name or namespace; return it.

    Raises:
        TypeError: not a str.
        ValueError: empty, or containing a brace (it would break the hash tag).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {value!r}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str, got ''")
    if "{" in value or "}" in value:
        raise ValueError(f"{what} must not contain '{{' or '}}', got {value!r}")
    return value


def check_namespace(value: object) -> str:
    """Validate a namespace (``check_key_part``, and no ``:``); return it.

    The prefix ``{<namespace>:<name>}:`` ends the namespace at its first ``:``, so that
    every (namespace, name) pair has keys of its own: ``("acme:prod", "gpu")`` and
    ``("acme", "prod:gpu")`` would otherwise share one lane. A lane's name may contain
    ``:`` (``"ollama:llama3"``).

    Raises:
        TypeError: not a str.
        ValueError: empty, or containing a brace or a colon.
    """
    namespace = check_key_part("namespace", value)
    if ":" in namespace:
        raise ValueError(
            "namespace must not contain ':' (it ends the namespace in the lane's keys), "
            f"got {namespace!r}"
        )
    return namespace


class LaneKeys:
    """The names of one lane's keys.

    Attributes:
        prefix: ``{<namespace>:<name>}:``, shared by every key of the lane.
        cfg: the configuration hash (the first key every script is given).
    """

    __slots__ = ("cfg", "prefix")

    def __init__(self, namespace: str, name: str) -> None:
        self.prefix = f"{{{namespace}:{name}}}:"
        self.cfg = self.prefix + "cfg"

    def wake(self, client: str) -> str:
        """The wake-up list of one client."""
        return f"{self.prefix}wake:{client}"

    def job(self, job_id: str) -> str:
        """The metadata hash of one job."""
        return f"{self.prefix}j:{job_id}"

    def hold(self) -> str:
        """The zset of running jobs by lease deadline."""
        return self.prefix + "hold"
