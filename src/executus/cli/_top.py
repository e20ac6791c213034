"""Reading lanes out of a Redis, read-only, for ``executus top`` and the Redis demo.

Lanes are found by scanning for their configuration keys (``{namespace:name}:cfg``, see
``executus._redis.keys``) and read with plain read-only commands in one ``MULTI``
block per lane, so a snapshot is consistent and a viewer never joins the lane (it does
not register as a client, hold a slot or change a counter). Every value read is
parsed as a number or kept as text; nothing is evaluated.

On a Redis Cluster (a ``redis.cluster.RedisCluster`` client) the scan covers every
master, and each lane is read on the master serving its hash slot, where all its keys
live (they share the hash tag ``{namespace:name}``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import redis.cluster
from redis.crc import key_slot
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .._redis.keys import LaneKeys

__all__ = [
    "Client",
    "KeyLoad",
    "LaneSnapshot",
    "find_lanes",
    "read_lane",
    "read_lanes",
    "render_lanes",
]

_POLICIES = {"fifo": "fifo", "prio": "priority", "fair": "fair-share"}
_SHORT = {"priority": "prio", "fair-share": "fair"}
# Running jobs, and queued jobs, per lane whose key is looked up (the rest are counted):
# a snapshot reads at most 2 * _KEY_LIMIT job hashes per lane.
_KEY_LIMIT = 1000

# What the readers take: a client of one server, or of a Redis Cluster.
Client = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True)
class KeyLoad:
    """One key's share of a lane.

    Attributes:
        key: the job key (None: jobs submitted without one).
        running: its jobs holding a slot.
        queued: its queued jobs.
        oldest_wait: seconds its oldest queued job has waited, or None.
    """

    key: str | None
    running: int = 0
    queued: int = 0
    oldest_wait: float | None = None


@dataclass(frozen=True)
class LaneSnapshot:
    """A lane as read from Redis at one instant.

    Attributes:
        namespace, name: which lane.
        policy: ``fifo``, ``priority`` or ``fair-share``.
        preemption: whether preemption is on.
        max_concurrent, running, queued: slots and queue.
        oldest_wait: seconds the oldest queued job has waited, or None.
        throughput_1m: runs that ended in the last 60 s.
        mean_runtime: mean seconds of the recent runs (the ETA's window), or None.
        processes: clients whose liveness has not lapsed.
        submitted, succeeded, failed, cancelled, preempted, rejected: lane-wide counters.
        keys: per key, busiest first. They count at most 1000 running jobs (those whose
            leases end soonest) and 1000 queued jobs (the longest waiting).
        keys_truncated: ``keys`` leaves jobs out: more than 1000 jobs were running, or
            more than 1000 were queued (``running`` and ``queued`` say which).
    """

    namespace: str
    name: str
    policy: str
    preemption: bool
    max_concurrent: int
    running: int
    queued: int
    oldest_wait: float | None
    throughput_1m: int
    mean_runtime: float | None
    processes: int
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    preempted: int
    rejected: int
    keys: tuple[KeyLoad, ...] = field(default=())
    keys_truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON types."""
        return asdict(self)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _s(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: object, default: int = 0) -> int:
    try:
        return int(_s(value))
    except (TypeError, ValueError):
        return default


def _float(value: object) -> float | None:
    try:
        return float(_s(value))
    except (TypeError, ValueError):
        return None


def _key(ek: str | None) -> str | None:
    # Stored job keys are "~" (no key) or "=" + key.
    if ek is None or ek == "~":
        return None
    return ek[1:] if ek.startswith("=") else ek


def find_lanes(client: Client, namespace: str) -> list[str]:
    """The names of the lanes stored under ``namespace``, sorted (on every master of a
    cluster)."""
    head = "{" + namespace + ":"
    tail = "}:cfg"
    names = set()
    for raw in client.scan_iter(match=_glob_escape(head) + "*" + _glob_escape(tail), count=1000):
        key = _s(raw)
        if key.startswith(head) and key.endswith(tail):
            name = key[len(head) : -len(tail)]
            if name and "{" not in name and "}" not in name:
                names.add(name)
    return sorted(names)


def read_lane(client: Client, namespace: str, name: str) -> LaneSnapshot | None:
    """Read one lane; None when it does not exist (or is not a lane).

    On a cluster, the lane is read on the master serving its slot; if the slot moved
    since the client last read the slot map, the map is read again and the lane once
    more. A lane whose slot is being migrated right now reads as None.
    """
    if not isinstance(client, redis.cluster.RedisCluster):
        return _read_lane(client, namespace, name)
    slot = key_slot(LaneKeys(namespace, name).cfg.encode())

    def node(cluster: redis.cluster.RedisCluster) -> redis.Redis:
        return cluster.get_redis_connection(cluster.nodes_manager.get_node_from_slot(slot))

    try:
        return _read_lane(node(client), namespace, name)
    except redis.exceptions.AskError:  # MOVED (a subclass) or ASK: the slot moved or moves
        client.nodes_manager.initialize()
    try:
        return _read_lane(node(client), namespace, name)
    except redis.exceptions.AskError:
        return None


def _read_lane(client: redis.Redis, namespace: str, name: str) -> LaneSnapshot | None:
    keys = LaneKeys(namespace, name)
    p = keys.prefix
    sec, usec = client.time()
    now = int(sec) * 1000 + int(usec) // 1000
    pipe = client.pipeline(transaction=True)
    pipe.hmget(
        keys.cfg,
        ["v", "max", "pol", "pon", "win", "n_sub", "n_ok", "n_fail", "n_can", "n_pre", "n_rej"],
    )
    pipe.zrangebyscore(p + "hold", f"({now}", "+inf", start=0, num=_KEY_LIMIT)
    pipe.zcount(p + "hold", f"({now}", "+inf")
    pipe.zcard(p + "qt")
    pipe.zrange(p + "qt", 0, _KEY_LIMIT - 1, withscores=True)
    pipe.hgetall(p + "tp")
    pipe.lrange(p + "rt", 0, 999)
    pipe.zcount(p + "procs", f"({now}", "+inf")
    try:
        cfg, holds, running, queued, qt, tp, rt, procs = pipe.execute()
    except redis.exceptions.AskError:
        raise  # on a cluster: the slot is served elsewhere (see read_lane)
    except redis.ResponseError:
        return None  # a key of the wrong type: not a lane of ours
    if cfg[0] is None:
        return None
    text = [None if x is None else _s(x) for x in cfg]
    _, max_, pol, pon, win, *counts = text
    s = _s
    hold_ids = [s(x) for x in holds]
    queue = [(s(m), float(score)) for m, score in qt]
    look = client.pipeline(transaction=False)
    for job_id in [*hold_ids, *(m for m, _ in queue)]:
        look.hget(keys.job(job_id), "ek")
    eks = [None if x is None else s(x) for x in look.execute()] if hold_ids or queue else []
    loads: dict[str | None, dict[str, Any]] = {}
    for ek in eks[: len(hold_ids)]:
        entry = loads.setdefault(_key(ek), {"running": 0, "queued": 0, "oldest": None})
        entry["running"] += 1
    for ek, (_, submitted_ms) in zip(eks[len(hold_ids) :], queue, strict=True):
        entry = loads.setdefault(_key(ek), {"running": 0, "queued": 0, "oldest": None})
        entry["queued"] += 1
        wait = max(0.0, (now - submitted_ms) / 1000)
        if entry["oldest"] is None or wait > entry["oldest"]:
            entry["oldest"] = wait
    key_loads = sorted(
        (KeyLoad(k, v["running"], v["queued"], v["oldest"]) for k, v in loads.items()),
        key=lambda kl: (-(kl.running + kl.queued), kl.key or ""),
    )
    second = now // 1000
    throughput = sum(_int(n) for sec_, n in tp.items() if _int(sec_, -1) > second - 60)
    window = max(1, _int(win, 16))
    runs = [v for v in (_float(s(x)) for x in rt[:window]) if v is not None]
    c = [_int(x) for x in counts]
    return LaneSnapshot(
        namespace=namespace,
        name=name,
        policy=_POLICIES.get(pol or "", pol or "?"),
        preemption=pon == "1",
        max_concurrent=_int(max_),
        running=int(running),
        queued=int(queued),
        oldest_wait=None if not queue else max(0.0, (now - queue[0][1]) / 1000),
        throughput_1m=throughput,
        mean_runtime=statistics.fmean(runs) if runs else None,
        processes=int(procs),
        submitted=c[0],
        succeeded=c[1],
        failed=c[2],
        cancelled=c[3],
        preempted=c[4],
        rejected=c[5],
        keys=tuple(key_loads),
        keys_truncated=int(running) > len(hold_ids) or int(queued) > len(queue),
    )


def read_lanes(client: Client, namespace: str) -> list[LaneSnapshot]:
    """Snapshots of every lane under ``namespace`` (lanes that vanish are skipped)."""
    out = []
    for name in find_lanes(client, namespace):
        snap = read_lane(client, namespace, name)
        if snap is not None:
            out.append(snap)
    return out


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}s"
    if value < 600:
        return f"{value:.0f}s"
    return f"{value / 60:.0f}m"


def _truncation(snap: LaneSnapshot) -> str:
    """What a truncated snapshot's keys count: "keys of the first 1000 running jobs"."""
    parts = [
        f"{_KEY_LIMIT} {what}"
        for what, count in (("running", snap.running), ("queued", snap.queued))
        if count > _KEY_LIMIT
    ]
    return f"keys of the first {' and '.join(parts) or str(_KEY_LIMIT)} jobs"


def render_lanes(snapshots: Iterable[LaneSnapshot], *, title: str, keys_per_lane: int = 6) -> Group:
    """A table with one row per lane, then the busiest keys of each lane.

    Lane-wide counters (preempted, refused, ...) are in the JSON output only: the
    table keeps to 80 columns. On a narrower terminal every column folds, so no figure
    or name is cut off (rich squeezes a lone foldable column to nothing). Names, keys
    and the title are plain text: a job key such as ``[/b]`` is not markup.
    """
    snaps = list(snapshots)
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("lane", style="bold", overflow="fold")
    table.add_column("policy", overflow="fold")
    for col in ("slots", "queued", "oldest", "ended/1m", "mean run", "procs"):
        table.add_column(col, justify="right", overflow="fold")
    for snap in snaps:
        full = snap.running >= snap.max_concurrent
        table.add_row(
            Text(snap.name),
            Text(_SHORT.get(snap.policy, snap.policy) + ("*" if snap.preemption else "")),
            Text(f"{snap.running}/{snap.max_concurrent}", style="red" if full else "green"),
            str(snap.queued),
            _secs(snap.oldest_wait),
            str(snap.throughput_1m),
            _secs(snap.mean_runtime),
            str(snap.processes),
        )
    if not snaps:
        table.caption = "no lanes"
        return Group(table)
    legend = "oldest: the longest a queued job has waited"
    if any(snap.preemption for snap in snaps):
        legend = "* preemption on; " + legend
    table.caption = legend
    table.caption_justify = "left"
    keys = Table(title="by key (busiest first)", title_justify="left", box=box.SIMPLE_HEAD)
    keys.add_column("lane", overflow="fold")
    keys.add_column("key", overflow="fold")
    for col in ("running", "queued", "oldest"):
        keys.add_column(col, justify="right", overflow="fold")
    for snap in snaps:
        for kl in snap.keys[:keys_per_lane]:
            keys.add_row(
                Text(snap.name),
                Text("(none)" if kl.key is None else kl.key),
                str(kl.running),
                str(kl.queued),
                _secs(kl.oldest_wait),
            )
        more = len(snap.keys) - keys_per_lane
        if more > 0 or snap.keys_truncated:
            note = f"+{more} keys" if more > 0 else ""
            if snap.keys_truncated:
                note += f" ({_truncation(snap)})"
            keys.add_row(Text(snap.name), Text(note.strip(), style="dim"), "", "", "")
    return Group(table, keys)


def now_text() -> str:
    """The local time for a title."""
    return datetime.now(UTC).astimezone().strftime("%H:%M:%S")
