"""``RedisLane``: a lane whose slots, queue and figures live in Redis.

Jobs run in the process that submitted them; Redis decides who runs when. Every state
change is one Lua script (``lua/``), run atomically on the server with the server's
clock, so check-then-act never spans two round trips.

How a job moves (one client = one ``RedisLane`` object):

1. ``submit`` runs ``submit.lua``: the job starts at once (the reply carries its fence)
   or is queued (the reply carries its position and ETA), or is refused (``max_wait``).
2. A job that ends runs ``release.lua``: fenced and idempotent, it frees the slot and
   grants it to the next jobs in the same step. A grant for this client comes back in
   the reply; a grant for another client is pushed onto that client's ``wake:`` list.
3. Each client has one task blocking on its ``wake:`` list (``BLPOP`` with a bounded
   timeout, under a watchdog): grants, preemption requests, lost leases and remote
   cancels arrive there - directed to the one client concerned, never broadcast.
4. Each client's heartbeat task renews all its leases in one script every ``lease / 3``
   seconds, learns which it lost, picks up any grant whose wake-up was lost, refreshes
   the positions and ETAs of its queued jobs, and drops the queued jobs of clients whose
   liveness has lapsed (so nobody's position counts them any longer).
5. A job whose lease was not renewed for ``0.8 * lease`` is cancelled by its own client
   with ``LeaseLost`` before the server can hand its slot to someone else.
6. Redis losing the lane (a restart without persistence, a flush) shows up as a missing
   config or a changed epoch; every client then re-registers its running jobs and
   re-submits its queued ones in their original order (``attach.lua``), and new grants
   wait for the longest lease among the lane's clients so that every client can do so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._base import (
    STORED_MAX,
    LaneBase,
    check_count,
    check_drain,
    check_job_fn,
    check_preemption,
    check_priority,
    check_submit_options,
    is_utf8,
    submit_context,
    wait_woken,
    wake_all,
)
from .._errors import (
    DuplicateJob,
    JobCancelled,
    JobPreempted,
    LaneBusy,
    LaneClosed,
    LaneError,
    LaneUnavailable,
    LeaseLost,
    NotQueued,
)
from .._events import Emitter, EventKind, LaneEvent
from .._job import CURRENT_JOB, JobHandle, JobState
from .._policies import FIFO, FairShare, Preemption, Priority, QueuePolicy
from .._redisurl import check_redis_url, masked_url, scrubbed
from .._stats import LaneStats
from .._tasks import spawn
from . import scripts
from .keys import LaneKeys, check_key_part, check_namespace

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["RedisLane"]

T = TypeVar("T")

_QUEUED = JobState.QUEUED
_RUNNING = JobState.RUNNING

# Why a running job's task was cancelled by this client.
_CANCEL = "cancel"
_CLOSE = "close"
_PREEMPT = "preempt"
_LOST = "lost"

_LEASE_FRACTION = 0.8  # a client stops its job after this share of the lease unrenewed
_HEARTBEATS_PER_LEASE = 3
_MAX_QUEUED_REFRESH = 512  # queued jobs whose position one heartbeat refreshes
_HELD = 4  # idle connections a client keeps out of its pool (``_Held``)
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
# Redis Cluster replies meaning the lane's slot is served elsewhere, is moving, or has no
# serving node for now (a failover or a slot migration under way).
_REDIRECTS = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)
# Cluster replies by error code; older redis-py versions parse some as ResponseError.
_CLUSTER_REPLIES: dict[str, type[ResponseError]] = {
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "READONLY": ReadOnlyError,
}
# How a script fails when a key it touches is in a slot the node stopped serving.
_NOT_LOCAL = "non local key"
# redis-py's synchronous clients: refused with a hint to use the asyncio ones.
_SYNC_CLIENTS = (redis.Redis, redis.cluster.RedisCluster)
# Wake-up messages: kind -> how many space-free fields follow the job id.
_MESSAGE_FIELDS = {"G": 2, "P": 2, "L": 1, "C": 0, "U": 1}


def _s(value: object) -> str:
    """A reply element as text (clients may or may not decode responses)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _policy_args(policy: QueuePolicy) -> list[str]:
    if isinstance(policy, FairShare):
        args = ["fair", "0", repr(policy.default_weight), str(len(policy.weights))]
        for key, weight in policy.weights.items():
            args += [key, repr(weight)]
        return args
    if isinstance(policy, Priority):
        return ["prio", repr(policy.aging or 0.0), "1", "0"]
    return ["fifo", "0", "1", "0"]


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


def _ek(key: str | None) -> str:
    return "~" if key is None else "=" + key


_END_EVENTS = {
    JobState.SUCCEEDED: EventKind.FINISHED,
    JobState.FAILED: EventKind.FINISHED,
    JobState.CANCELLED: EventKind.CANCELLED,
    JobState.PREEMPTED: EventKind.PREEMPTED,
}


class _Local:
    """This client's record of one of its jobs."""

    __slots__ = (
        "arrival",
        "asked",
        "cause",
        "eta",
        "eta_at",
        "fence",
        "finishing",
        "fn",
        "granted",
        "handle",
        "nonce",
        "on_grant_cancel",
        "position",
        "regrant",
        "releasing",
        "renewed",
        "seq",
        "timer",
    )

    def __init__(
        self, handle: JobHandle[Any], fn: Callable[[], Awaitable[Any]] | None, nonce: str
    ) -> None:
        self.handle = handle
        self.fn = fn
        self.nonce = nonce  # unique among this client's submits; a retry sends it again
        self.fence: str | None = None
        self.finishing = False  # the job task's body is over: its release is under way
        self.seq: int | None = None  # known once the submit reply arrived
        self.renewed = 0.0
        self.cause: str | None = None
        self.asked = 0.0  # when a preemption request (its grace now running) was read
        self.arrival = False  # queued as a preemption arrival (waits for a victim's slot)
        self.position = 0
        self.eta = 0.0
        self.eta_at = 0.0
        self.granted: asyncio.Future[None] | None = None  # slot() waiting for its grant
        self.on_grant_cancel: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None
        # A run's release is on its way; a grant that arrives meanwhile (another
        # client's script granted the job again once the release requeued it) waits in
        # ``regrant`` (fence, nonce) until the release's reply says what happened.
        self.releasing = False
        self.regrant: tuple[str, str] | None = None


class RedisLane(LaneBase):
    """A lane shared by every process that uses the same Redis (or Valkey).

    Same interface and semantics as ``Lane``, lane-wide: slots, queue order (``FIFO``,
    ``Priority`` with aging, ``FairShare`` with weights stored with the lane),
    preemption, ``max_wait``, stats and ``set_max_concurrent`` hold across all
    processes. Jobs run in the process that submitted them; only their metadata (id,
    key, priority, times) is stored in Redis, never a payload, and nothing read from
    Redis is unpickled or evaluated.

    A process that dies does not leak slots: its leases expire after ``lease`` seconds
    and its queued jobs are dropped. A process frozen past its lease loses its slots,
    and on waking stops its jobs with ``LeaseLost``.

    Example::

        from executus.redis import RedisLane

        async with RedisLane("ollama", "redis://localhost:6379/0", 2,
                             policy=FairShare()) as lane:
            reply = await lane.run(lambda: llm.chat(prompt), key="user-42", max_wait=30)

    Args:
        name: the lane's name (non-empty, no braces).
        redis: a URL (``redis://``, ``rediss://`` for TLS, with user and password for
            ACL), a ``redis.asyncio.Redis`` client, or a
            ``redis.asyncio.cluster.RedisCluster`` client for a Redis Cluster. A client
            passed is not closed by the lane.
        max_concurrent: the lane-wide slot limit; None adopts the stored value (1 for a
            new lane). Given, it is stored for every process.
        policy: ``FIFO()``, ``Priority(...)`` or ``FairShare(...)``; None adopts the
            stored one (``FIFO()`` for a new lane). Custom policies are refused.
            Changing the policy of a lane with queued jobs is refused.
        preemption: ``Preemption(...)`` to store for the lane, or None to adopt the
            stored setting (off for a new lane; ``set_preemption(None)`` turns it off).
        lease: seconds a running job's slot is held without renewal (> 0); the
            heartbeat renews it every ``lease / 3``.
        namespace: the key prefix (``{namespace:name}:...``); no ``:`` in it (a lane's
            name may have one).
        eta_window: how many recent run times the estimate averages; None adopts the
            stored value (16 for a new lane).
        cluster: True when the URL names a node of a Redis Cluster: the lane then
            builds a ``RedisCluster`` from it (``RedisCluster.from_url``) and talks to
            whichever node serves the lane's hash slot, following failovers and slot
            migrations. Implied by a ``RedisCluster`` client.

    Raises:
        TypeError: ``redis`` is neither a URL nor an asyncio client of redis-py, or
            ``cluster=True`` comes with a ``redis.asyncio.Redis`` client; an option
            has the wrong type.
        ValueError: an option is out of range, or ``redis`` is not a URL redis-py can
            connect with (another scheme, a port that is not a number, ...).
    """

    def __init__(
        self,
        name: str,
        redis: str | aioredis.Redis | RedisCluster,
        max_concurrent: int | None = None,
        *,
        policy: QueuePolicy | None = None,
        preemption: Preemption | None = None,
        lease: float = 10.0,
        namespace: str = "executus",
        eta_window: int | None = None,
        cluster: bool = False,
    ) -> None:
        self._name = check_key_part("name", name)
        check_namespace(namespace)
        if max_concurrent is not None:
            _check_stored_count("max_concurrent", max_concurrent)
        if eta_window is not None:
            _check_stored_count("eta_window", eta_window)
        if policy is not None and not isinstance(policy, QueuePolicy):
            raise TypeError(f"policy must be a QueuePolicy (FIFO(), ...), got {policy!r}")
        if policy is not None and type(policy) not in (FIFO, Priority, FairShare):
            raise TypeError(
                "RedisLane supports the built-in policies FIFO, Priority and FairShare "
                f"only (the order is computed in Redis), got {policy!r}"
            )
        _check_utf8("name", name)
        _check_utf8("namespace", namespace)
        if isinstance(policy, FairShare):
            for weighted in policy.weights:
                _check_utf8("FairShare weights' keys", weighted)
        check_preemption(preemption)
        if isinstance(lease, bool) or not isinstance(lease, int | float):
            raise TypeError(f"lease must be a number of seconds, got {lease!r}")
        if not math.isfinite(lease) or lease < 0.1:
            raise ValueError(f"lease must be >= 0.1 seconds, got {lease!r}")
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be a bool, got {cluster!r}")
        # The client that runs the scripts: the one passed, one made from a plain URL,
        # or (on a cluster) one made for the node serving the lane's slot.
        self._client: aioredis.Redis | None = None
        self._url: str | None = None
        self._given_cluster: RedisCluster | None = None
        if isinstance(redis, str):
            _check_url(redis, cluster=cluster)
            self._url = redis
        elif isinstance(redis, RedisCluster):
            self._given_cluster = redis
            cluster = True
        elif isinstance(redis, aioredis.Redis):
            if cluster:
                raise TypeError(
                    "cluster=True needs a URL or a redis.asyncio.cluster.RedisCluster "
                    f"client, got a redis.asyncio.Redis client: {redis!r}"
                )
            self._client = redis
        else:
            raise TypeError(_client_type_message(redis))
        self._cluster_mode = cluster
        self._namespace = namespace
        self._keys = LaneKeys(namespace, name)
        self._cfg_arg = _bulk(self._keys.cfg)  # every script's one key, packed once
        self._want_max = max_concurrent
        self._want_policy = policy
        self._want_preemption = preemption
        self._want_window = eta_window
        self._window: int | None = None  # the stored ETA window, as last seen
        self._lease = float(lease)
        self._client_id = uuid.uuid4().hex
        self._nonce = 0  # submits numbered within this client (the scripts check both)
        self._ids = 0  # job ids made by this client
        # What this client last saw of the lane's configuration (and of the fair-share
        # weights: their digest, as the scripts compute it, and the weights).
        self._seen_weights: tuple[str, dict[str, float]] = ("", {})
        # The longest lease (ms) among the lane's clients: a client that rebuilds a lost
        # lane holds new grants that long, so that every client can re-register its jobs.
        self._longest_lease = 0
        self._max = max_concurrent or 1
        self._policy: QueuePolicy = policy or FIFO()
        self._preemption = preemption
        self._epoch = ""
        self._fence_floor = 0
        self._jobs: dict[str, _Local] = {}
        # Submits this client gave up (cancelled, or their reply lost) whose withdrawal
        # could not reach Redis: (job id, nonce), withdrawn after the next heartbeat
        # that gets through, so that no other client sees them queued meanwhile.
        self._orphans: set[tuple[str, str]] = set()
        # A close whose leave could not reach Redis goes on trying in this task until
        # Redis would take the client for dead anyway (``_leave_late``).
        self._farewell: asyncio.Task[None] | None = None
        # A close called from inside one of this client's jobs is finished by this task
        # once that job has ended (``_close_after``).
        self._finisher: asyncio.Task[None] | None = None
        self._last_ctx: contextvars.Context | None = None  # see ``_submit``
        self._closed = False
        self._hard = False  # closing with drain=False
        # When a close stops waiting for Redis (one retry budget after it began, without
        # drain; after the jobs ended, with drain): what is left goes on in the background.
        self._close_by: float | None = None
        self._stopping = False  # the background tasks are being stopped
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it started on
        self._start_lock = asyncio.Lock()
        self._recover_lock = asyncio.Lock()
        self._blocking: aioredis.Redis | None = None
        self._own_client = False
        # Connections kept between round trips (``_Held``), one set per client.
        self._held: _Held | None = None
        self._held_blocking: _Held | None = None
        # Redis Cluster: the cluster client (passed, or made from the URL) is used only
        # to find the node serving the lane's slot; scripts and the blocking pop go to
        # that node over plain clients (so batching works as on one server). A failed
        # call marks the route stale (if no other call re-routed since it was sent) and
        # the next attempt finds the node again, first where a MOVED reply pointed.
        self._cluster: RedisCluster | None = None
        self._own_cluster = False
        self._node: tuple[str, int] | None = None
        self._route_gen = 0
        self._route_stale = False
        self._route_hint: tuple[str, int] | None = None
        self._route_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[Any]] = set()
        self._detached: set[asyncio.Task[Any]] = set()  # the chores nobody awaits
        self._drained: list[asyncio.Future[None]] = []
        self._closers: set[JobHandle[Any]] = set()  # jobs in a draining close of their own
        self._hb_kick = asyncio.Event()
        self._batch: list[tuple[scripts.Script, Sequence[str], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._senders: set[asyncio.Task[None]] = set()
        self._last_beat = 0.0
        self._events = Emitter()
        # Blocking and retry bounds, derived from the lease (see docs/redis.md).
        self._block = max(0.5, min(5.0, self._lease / 2))
        self._op_timeout = max(1.0, min(5.0, self._lease / 2))
        self._retry_budget = max(1.0, min(3.0, self._lease / 3))

    # -- properties ------------------------------------------------------------------

    @property
    def lease(self) -> float:
        """Seconds a slot is held without renewal."""
        return self._lease

    @property
    def client_id(self) -> str:
        """This client's id in Redis (liveness, wake-up list)."""
        return self._client_id

    def __repr__(self) -> str:
        running = sum(1 for r in self._jobs.values() if r.handle._state is _RUNNING)
        queued = sum(1 for r in self._jobs.values() if r.handle._state is _QUEUED)
        state = " closed" if self._closed else ""
        return (
            f"<RedisLane {self._name!r} [max {self._max} | {self._policy.name} | "
            f"here: {running} running, {queued} queued]{state}>"
        )

    # -- connection ------------------------------------------------------------------

    def _check_loop(self) -> None:
        if self._started and asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                f"RedisLane {self._name!r} runs on the event loop it started on: make "
                "one RedisLane per event loop (its connections and tasks belong to "
                "that loop)"
            )

    async def _ensure(self) -> None:
        if self._started:
            self._check_loop()
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise LaneClosed(self._name)
            if self._cluster_mode:
                # The node clients are made by the first call (``_route``).
                if self._given_cluster is not None:
                    self._cluster = self._given_cluster
                elif self._cluster is None:
                    assert self._url is not None
                    self._cluster = RedisCluster.from_url(
                        self._url,
                        socket_timeout=self._op_timeout,
                        socket_connect_timeout=self._op_timeout,
                    )
                    self._own_cluster = True
            else:
                if self._client is None:
                    assert self._url is not None
                    self._client = aioredis.Redis.from_url(
                        self._url,
                        socket_timeout=self._op_timeout,
                        socket_connect_timeout=self._op_timeout,
                    )
                    self._own_client = True
                self._blocking = self._blocking_client(self._client)
            try:
                await self._attach(first=True)
                if self._closed:  # aclose() ran meanwhile: start nothing
                    raise LaneClosed(self._name)
            except BaseException as e:
                await self._close_clients()
                if self._closed and isinstance(e, LaneUnavailable):
                    raise LaneClosed(self._name) from e  # its connection was closed
                raise
            self._started = True
            self._last_beat = time.monotonic()
            loop = self._bind(asyncio.get_running_loop())
            self._tasks = [
                spawn(loop, self._wake_loop, name=f"executus-redis-wake-{self._name}"),
                spawn(loop, self._beat_loop, name=f"executus-redis-beat-{self._name}"),
            ]

    def _blocking_client(self, client: aioredis.Redis) -> aioredis.Redis:
        """A client like ``client`` (same server, credentials, TLS) for the blocking
        pop, whose socket timeout outlasts the pop's own."""
        pool: ConnectionPool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = self._block + 5.0
        kwargs.setdefault("socket_connect_timeout", self._op_timeout)
        return aioredis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=4, **kwargs
            )
        )

    async def _close_clients(self) -> None:
        if self._senders:
            # A round trip still on its way (its caller was cancelled) would take or
            # keep a connection after the clients are closed: let it end first.
            await asyncio.wait(list(self._senders), timeout=self._op_timeout)
        for held in (self._held, self._held_blocking):
            if held is not None:
                await held.give_back()
        self._held = self._held_blocking = None
        if self._blocking is not None:
            await _close_client(self._blocking)
            self._blocking = None
        if self._own_client and self._client is not None:
            await _close_client(self._client)
            self._client = None
        self._node = None
        if self._own_cluster and self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.aclose()
            self._cluster = None

    # -- Redis Cluster ---------------------------------------------------------------

    def _slot(self) -> int:
        return key_slot(self._keys.cfg.encode("utf-8"))

    def _route_failed(self, gen: int, error: BaseException) -> None:
        """A call sent on route ``gen`` failed with ``error``: find the node again
        before the next attempt, unless another call has re-routed since."""
        if self._cluster_mode and gen == self._route_gen:
            self._route_stale = True
            if isinstance(error, MovedError):
                self._route_hint = (error.host, int(error.port))

    async def _route(self) -> None:
        """Point the lane's clients at the node serving its slot (Redis Cluster only).

        Runs before a call when there is no route yet or the last one failed: the node
        is where a MOVED reply pointed, else where the cluster's refreshed slot map
        says. A new node gets new clients (the cluster client's connection settings:
        credentials, TLS, timeouts); calls in flight on the old ones fail and are
        retried. If the new node lacks the lane's state, the next script reports it
        and the lane's recovery (``attach``) rebuilds it.

        Raises:
            RedisConnectionError: the lane's clients were closed.
            RedisClusterException: no node of the cluster could be reached or none
                serves the slot (retried by ``_call`` like a lost connection).
        """
        async with self._route_lock:
            if self._client is not None and not self._route_stale:
                return  # another call routed while this one waited
            if self._closed and not self._started and self._farewell is None:
                raise RedisConnectionError("the lane's client is closed")
            cluster = self._cluster
            assert cluster is not None
            hint, self._route_hint = self._route_hint, None
            if self._node is None:
                await cluster.initialize()
            elif hint is None:
                await cluster.nodes_manager.initialize()
            if hint is not None:
                host, port = cluster.nodes_manager.remap_host_port(*hint)
                node = cluster.get_node(host=host, port=port)
            else:
                node = cluster.get_node_from_key(self._keys.cfg)
                if node is None:  # pragma: no cover - only replica lookups return None
                    raise RedisClusterException(f"no node serves hash slot {self._slot()}")
                host, port = node.host, int(node.port)
            if self._client is None or self._node != (host, port):
                # Same settings as the cluster client's connections to that node (or,
                # for a node it does not know yet, to any node), aimed at this one.
                template = node or cluster.get_default_node() or cluster.get_nodes()[0]
                kwargs = dict(template.connection_kwargs)
                kwargs.update(host=host, port=port)
                kwargs.pop("redis_connect_func", None)  # READONLY mode: replicas only
                client = _node_client(template.connection_class, kwargs)
                old = (self._client, self._blocking)
                self._client, self._blocking = client, self._blocking_client(client)
                self._own_client = True
                self._node = (host, port)
                for c in old:
                    if c is not None:
                        await _close_client(c)
            self._route_stale = False
            self._route_gen += 1

    async def _evalsha(self, script: scripts.Script, argv: Sequence[str]) -> Any:
        """Run a script in the next batch: every script call made in one turn of the
        event loop goes out in one pipelined write and one round trip (auto-pipelining,
        as ioredis does), which is what lets many submitters share one connection's
        system calls. The batch is packed here and its replies read straight off one
        pooled connection, under one timeout (``_send``)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((script, argv, fut))
        if not self._flush_scheduled:
            # The sender's first step runs in the loop's next turn and takes every
            # call queued by then.
            self._flush_scheduled = True
            task = spawn(asyncio.get_running_loop(), self._send)
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await fut

    async def _send(self) -> None:
        self._flush_scheduled = False
        batch, self._batch = self._batch, []
        if not batch:
            return
        client = self._client
        try:
            if client is None:
                raise RedisConnectionError("the lane's client is closed")
            held = self._held = _Held.of(self._held, client)
            async with asyncio.timeout(self._op_timeout):
                results = await _round_trip(held, _pack_batch(self._cfg_arg, batch), len(batch))
                unknown = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if unknown:
                    # The server does not know them (restarted, flushed, a new node): send
                    # them in full, on the same set of connections (the one just used is
                    # free again), never asking the pool for a second connection while
                    # holding one (a bounded pool could make that wait forever).
                    packed = b"".join(
                        _pack_eval(self._cfg_arg, batch[i][0], batch[i][1]) for i in unknown
                    )
                    again = await _round_trip(held, packed, len(unknown))
                    for i, result in zip(unknown, again, strict=True):
                        results[i] = result
        except Exception as e:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        except BaseException:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(RedisConnectionError("the request was abandoned"))
            raise
        for (_, _, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(_typed(result))
            else:
                fut.set_result(result)

    async def _call(
        self, name: str, argv: Sequence[str], *, budget: float | None = None
    ) -> list[Any]:
        """Run one script; retry connection failures within ``budget`` seconds.

        Every script is safe to retry: submit is idempotent by nonce, release by fence.
        On a Redis Cluster, a redirection (the slot moved, is moving, or lost its node
        for a moment) and a lost connection also find the slot's node again
        (``_route``) before the next attempt.

        Raises:
            LaneUnavailable: Redis stayed unreachable, or refused the script.
        """
        script = scripts.load(name)
        started = time.monotonic()
        deadline = started + (self._retry_budget if budget is None else budget)
        delay = 0.02
        while True:
            gen = self._route_gen
            try:
                # No attempt outlasts what is left of the budget: a Redis that accepts
                # connections but does not answer (frozen, overloaded) would otherwise
                # hold each attempt for the round trip's own timeout (``_op_timeout``,
                # longer than most budgets). Only this call stops waiting: the round trip
                # it joined goes on for the other calls of its batch (``_send``), and a
                # reply that lands late is dropped, as for a caller that was cancelled.
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancellation that races with the reply.
                async with asyncio.timeout(deadline - time.monotonic()):
                    if self._cluster_mode and (self._client is None or self._route_stale):
                        async with asyncio.timeout(self._op_timeout):
                            await self._route()
                        gen = self._route_gen
                    # The batch it joins is bounded by one timeout (``_send``).
                    reply = await self._evalsha(script, argv)
            except AuthenticationError as e:
                # Retrying cannot help: the URL's (or client's) credentials are wrong.
                raise self._refused_credentials(e) from e
            except _SetupRefused as e:
                raise LaneUnavailable(
                    f"lane {self._name!r}: Redis refused the connection's setup: {e} "
                    "(check the URL or the client's settings)"
                ) from e
            except ResponseError as e:
                if self._cluster_mode and (isinstance(e, _REDIRECTS) or _NOT_LOCAL in str(e)):
                    # The slot moved, is moving or lost its node for a moment: find its
                    # node again and retry there.
                    self._route_failed(gen, e)
                    if time.monotonic() + delay > deadline:
                        raise LaneUnavailable(
                            f"lane {self._name!r}: Redis Cluster did not serve the lane's "
                            f"hash slot {self._slot()} within the retry budget "
                            f"({type(e).__name__}: {e})"
                        ) from e
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.25)
                    continue
                if isinstance(e, AskError):  # MOVED or ASK to a single-server client
                    raise LaneUnavailable(
                        f"lane {self._name!r}: Redis is a cluster node that does not serve "
                        f"the lane's hash slot {self._slot()} ({type(e).__name__}: {e}); "
                        "pass cluster=True with the URL, or a "
                        "redis.asyncio.cluster.RedisCluster client"
                    ) from e
                if isinstance(e, NoPermissionError) or "can't run this command" in str(e):
                    raise self._lacks_permission(e) from e
                raise LaneUnavailable(
                    f"lane {self._name!r}: Redis refused the {name} script: {e} "
                    f"(if the lane's keys are damaged, delete the keys under "
                    f"{self._keys.prefix!r} to reset it)"
                ) from e
            except (*_TRANSIENT, RedisClusterException) as e:
                if _untrusted(e):
                    raise LaneUnavailable(
                        f"lane {self._name!r}: the TLS certificate of Redis was not "
                        f"trusted ({e}); pass the CA with ssl_ca_certs=... in the URL"
                    ) from e
                if isinstance(e, RedisClusterException):
                    # Finding the slot's node failed; the cluster client wraps the
                    # reason (bad credentials, a user without CLUSTER SLOTS, a server
                    # not in cluster mode).
                    cause = _cause(e, AuthenticationError)
                    if cause is not None:
                        raise self._refused_credentials(cause) from e
                    denied = _cause(e, NoPermissionError)
                    if denied is not None:
                        raise self._lacks_permission(denied) from e
                    if "not enabled" in str(e).lower():
                        raise LaneUnavailable(
                            f"lane {self._name!r}: cluster=True (or a RedisCluster client), "
                            f"but that Redis is not in cluster mode ({e}); pass its URL "
                            "without cluster=True"
                        ) from e
                self._route_failed(gen, e)
                if time.monotonic() + delay > deadline:
                    if isinstance(e, TimeoutError) and not str(e):  # asyncio's: no words
                        reason = f"it did not answer within {deadline - started:.1f}s"
                    else:
                        reason = f"{type(e).__name__}: {e}"
                    raise LaneUnavailable(
                        f"lane {self._name!r}: Redis is unreachable ({reason})"
                    ) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            if not isinstance(reply, list) or not reply:
                raise LaneUnavailable(
                    f"lane {self._name!r}: unexpected reply to the {name} script: {reply!r:.100}"
                )
            return reply

    def _lacks_permission(self, error: BaseException) -> LaneUnavailable:
        return LaneUnavailable(
            f"lane {self._name!r}: the Redis user lacks a permission the lane needs "
            f"({error}); it needs the keys '~{{{self._namespace}:*' and the commands "
            "listed in the ACL section of docs/redis.md"
        )

    def _refused_credentials(self, error: BaseException) -> LaneUnavailable:
        return LaneUnavailable(
            f"lane {self._name!r}: Redis refused the credentials ({type(error).__name__}: {error})"
        )

    async def _eval(
        self, name: str, args: Sequence[str], *, budget: float | None = None
    ) -> list[Any]:
        """Run a lane script with this client's epoch; recover once if the lane was lost."""
        for _ in range(3):
            epoch = self._epoch
            reply = await self._call(name, [epoch, *args], budget=budget)
            status = _s(reply[0])
            if status in ("NOLANE", "EPOCH"):
                await self._recover(epoch)
                continue
            return reply
        raise LaneUnavailable(f"lane {self._name!r}: its state in Redis keeps changing")

    async def _attach(self, *, first: bool) -> None:
        """Create or join the lane; when recovering, re-register this client's jobs."""
        if first:
            policy = self._want_policy
            pre = self._want_preemption
            max_arg = "" if self._want_max is None else str(self._want_max)
            win_arg = "" if self._want_window is None else str(self._want_window)
            pre_set = pre is not None
        else:
            # Recovering: the settings as last seen (a heartbeat ago at most).
            policy, pre, pre_set = self._policy, self._preemption, True
            max_arg = str(self._max)
            win_arg = "" if self._window is None else str(self._window)
        argv: list[str] = [self._client_id, self._epoch, uuid.uuid4().hex, _ms(self._lease)]
        argv += [str(self._longest_lease), max_arg]
        argv += _policy_args(policy) if policy is not None else ["", "0", "1", "0"]
        if pre_set and pre is not None:
            argv += ["1", _ms(pre.min_runtime), _ms(pre.grace), "1" if pre.requeue else "0"]
        elif pre_set:
            argv += ["0", "30000", "0", "0"]
        else:
            argv += ["", "0", "0", "0"]
        argv += [win_arg, str(self._fence_floor)]
        now = time.monotonic()
        running = [
            r for r in self._jobs.values() if r.handle._state is _RUNNING and r.fence is not None
        ]
        argv.append(str(len(running)))
        for r in running:
            job = r.handle
            argv += [
                job.id,
                r.fence or "0",
                _ek(job.key),
                str(job.priority),
                "1" if job.preemptible else "0",
                str(r.seq or 0),
                _ms(now - (job._t_start or now)),
                _ms(now - job._t_submit),
                r.nonce,  # a requeue of it is granted by this nonce again
                # a victim in its grace: marked again, its grace counted from the request
                _ms(now - r.asked) if r.cause == _PREEMPT and r.timer is not None else "",
            ]
        queued = sorted(
            (r for r in self._jobs.values() if r.handle._state is _QUEUED and r.seq is not None),
            key=lambda r: r.seq or 0,
        )
        for r in queued:
            job = r.handle
            argv += [
                job.id,
                _ek(job.key),
                str(job.priority),
                "1" if job.preemptible else "0",
                str(r.seq),
                _ms(now - job._t_submit),
                r.nonce,
                "1" if r.arrival else "0",
                _ms(now - job._t_requeued) if job._preemptions else "",
            ]
        reply = await self._call("attach", argv)
        if _s(reply[0]) == "POLICY":
            raise LaneUnavailable(
                f"lane {self._name!r} has queued jobs under the stored policy "
                f"{_s(reply[1])!r}; its policy can change only while nothing is queued"
            )
        self._epoch = _s(reply[1])
        self._settings(reply[2], reply[4])
        for r in running:
            r.renewed = now
        self._grants(reply[3])

    def _settings(
        self,
        view: Sequence[Any],
        weights: Sequence[Any],
        sent: tuple[str, dict[str, float]] = ("", {}),
    ) -> None:
        """Take the lane's stored settings as this client's view (from an attach, a
        heartbeat or ``stats``): slot limit, preemption, ETA window and policy, which
        is also what this client restores if it rebuilds a lost lane, and the longest
        lease among the lane's clients (how long such a rebuild holds new grants).

        The fair-share weights come only when their digest is not the one the request
        sent (``sent``: the digest and weights this client had seen when it sent it);
        else the weights are those.
        """
        max_, pon, pmin, pgrace, preq, win, pol, aging, dw, digest, longest = (_s(x) for x in view)
        self._max = int(max_)
        self._longest_lease = int(longest)
        preemption = Preemption(int(pmin) / 1000, int(pgrace) / 1000, preq == "1")
        self._preemption = preemption if pon == "1" else None
        self._window = int(win)
        policy: QueuePolicy
        if pol == "fifo":
            policy = FIFO()
        elif pol == "prio":
            policy = Priority(float(aging) or None)
        else:
            stored = sent[1] if digest == sent[0] else _weights([_s(x) for x in weights])
            self._seen_weights = (digest, stored)
            policy = FairShare(stored, default_weight=float(dw))
        if policy != self._policy:
            self._policy = policy

    async def _recover(self, seen_epoch: str) -> None:
        async with self._recover_lock:
            if self._epoch != seen_epoch:
                return  # another caller recovered already
            await self._attach(first=False)
            self._hb_kick.set()

    # -- submitting ------------------------------------------------------------------

    async def submit(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> JobHandle[T]:
        """Submit a job; return its handle at once (running or queued).

        Args:
            fn: a zero-argument callable returning an awaitable, called once per run in
                the job's own task, in this process.
            job_id: a unique id, or None to have one made.
            key: who the job is for (fair share is across keys).
            priority: higher is more important (for ``Priority`` and preemption).
            preemptible: whether a higher-priority arrival may evict this job.
            max_wait: None, or seconds: refuse with ``LaneBusy`` (enqueueing nothing)
                when the job cannot start at once and its ETA exceeds this.

        Returns:
            The job's handle: RUNNING (position 0, eta 0.0) or QUEUED.

        Raises:
            TypeError: ``fn`` is not callable, or an option has the wrong type.
            ValueError: an option is out of range.
            LaneClosed: the lane is closed.
            DuplicateJob: ``job_id`` is queued or running in this lane (in any process).
            LaneBusy: refused by ``max_wait``.
            LaneUnavailable: Redis is unreachable or refused; nothing was submitted.
        """
        check_job_fn(fn)
        handle: JobHandle[T] = (
            await self._submit(fn, job_id, key, priority, preemptible, max_wait)
        ).handle
        return handle

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> T:
        """Submit a job and wait for its result; the caller owns the job.

        If the awaiting task is cancelled, the job is cancelled too (removed if queued,
        its task cancelled if running) and ``CancelledError`` propagates.

        Returns:
            The job's return value.

        Raises:
            Everything ``submit`` raises, the job's own exception, ``JobCancelled``,
            ``JobPreempted``, ``LeaseLost`` or ``LaneClosed``.
        """
        check_job_fn(fn)
        # Nobody reads this handle's position or ETA: the submit computes them only
        # for max_wait or the SUBMITTED event.
        rec = await self._submit(fn, job_id, key, priority, preemptible, max_wait, estimate=False)
        handle: JobHandle[T] = rec.handle
        try:
            return await handle
        except asyncio.CancelledError:
            self._chore(handle.cancel())
            raise

    @asynccontextmanager
    async def slot(
        self,
        *,
        job_id: str | None = None,
        key: str | None = None,
        priority: int = 0,
        preemptible: bool = False,
        max_wait: float | None = None,
    ) -> AsyncIterator[JobHandle[None]]:
        """Hold one lane-wide slot for the body of an ``async with``, as a job.

        The request waits under the lane's policy like any job; the body then runs as
        that job in the caller's task (``current_job()`` works) and the slot is freed
        on exit, whatever the exit. Cancelling the waiting task withdraws the request.
        If the slot is preempted (or its lease is lost), the body's task is cancelled
        and ``JobPreempted`` (or ``LeaseLost``) leaves the block.

        Example::

            async with lane.slot(key="user-42") as job:
                async for chunk in llm.stream(prompt):
                    await send(chunk)
        """
        rec = await self._submit(None, job_id, key, priority, preemptible, max_wait)
        job: JobHandle[None] = rec.handle
        task = asyncio.current_task()
        assert task is not None
        job._task = task  # set before the grant: a preemption may follow it at once
        if job._state is _QUEUED:
            rec.granted = asyncio.get_running_loop().create_future()
            try:
                await rec.granted
            except BaseException as exc:
                rec.granted = None
                if job._state is not _RUNNING:
                    await _shielded(self._withdraw(rec, JobCancelled(self._name, job.id)))
                    raise
                # Granted, then cancelled before this task resumed: by the lane (a
                # close without drain, a preemption, a lost lease) or from outside.
                delivered = self._cancel_delivered(rec)
                rec.finishing = True
                error = await _shielded(self._finish(rec, None, None, cancelled=True))
                if (
                    isinstance(exc, asyncio.CancelledError)
                    and delivered
                    and error is not None
                    and task.uncancel() == 0
                ):
                    raise error from None
                raise
        if job._state is not _RUNNING:
            # Ended while waiting (closed, dropped): report it as the handle would.
            job.result()
            raise JobCancelled(self._name, job.id)
        token = CURRENT_JOB.set(job)
        try:
            yield job
        except asyncio.CancelledError as exc:
            delivered = self._cancel_delivered(rec)
            rec.finishing = True  # the lane cancels this task no more
            error = await _shielded(self._finish(rec, None, exc, cancelled=True))
            if delivered and error is not None and task.uncancel() == 0:
                # The lane cancelled the body (preemption, cancel, close, lost lease)
                # and nobody else did: report why instead of a bare CancelledError.
                raise error from None
            raise
        except BaseException as exc:
            await self._slot_left(rec, task, exc)
            raise
        else:
            await self._slot_left(rec, task, None)
        finally:
            # An async generator holding the slot may be closed by another task than
            # the one that entered it (its consumer stopped early: the loop's finalizer
            # or shutdown closes it), in another context: the entering context is not
            # this one to change, and resetting there would hide the GeneratorExit.
            with contextlib.suppress(ValueError):
                CURRENT_JOB.reset(token)

    async def _slot_left(
        self, rec: _Local, task: asyncio.Task[Any], exc: BaseException | None
    ) -> None:
        """A slot body left without a ``CancelledError``: release the slot. If the lane
        had cancelled the task and the body swallowed that, take the cancel back. After
        a normal exit the caller's code goes on, so a cancellation of its task while the
        slot is released reaches it."""
        delivered = self._cancel_delivered(rec)
        rec.finishing = True  # the lane cancels this task no more
        # A body left by ``GeneratorExit`` (an async generator holding the slot, closed
        # by its consumer) was abandoned by its caller: it ends cancelled, not failed.
        cancelled = isinstance(exc, GeneratorExit)
        try:
            await _shielded(
                self._finish(rec, None, exc, cancelled=cancelled), keep_cancel=exc is None
            )
        finally:
            if delivered:
                task.uncancel()

    async def _submit(
        self,
        fn: Callable[[], Awaitable[Any]] | None,
        job_id: str | None,
        key: str | None,
        priority: int,
        preemptible: bool,
        max_wait: float | None,
        *,
        estimate: bool = True,
    ) -> _Local:
        """Submit a job (``estimate=False``: its queued position and ETA are not read,
        so Redis works them out only for ``max_wait`` or an observed event)."""
        if self._closed:
            raise LaneClosed(self._name)
        check_submit_options(job_id, key, priority, preemptible, max_wait)
        if job_id is not None:
            _check_utf8("job_id", job_id)
        if key is not None:
            _check_utf8("key", key)
        check_priority(priority)
        if job_id is None:
            # Unique lane-wide: this client's id (random) and a count of its own.
            self._ids += 1
            job_id = f"{self._name}-{self._client_id[:16]}-{self._ids}"
        # An infinite max_wait admits every job: no gate.
        gate = "-1" if max_wait is None or math.isinf(max_wait) else _ms(max_wait)
        await self._ensure()
        if self._closed:
            raise LaneClosed(self._name)
        if job_id in self._jobs:
            raise DuplicateJob(self._name, job_id)
        now = time.monotonic()
        ctx = None
        if fn is not None:  # runs start in the submitter's context, whoever starts them
            ctx = self._last_ctx = submit_context(self._last_ctx)
        handle: JobHandle[Any] = JobHandle(
            self,
            job_id,
            fn,
            key=key,
            priority=priority,
            preemptible=preemptible,
            seq=0,
            submitted=now,
            ctx=ctx,
        )
        self._nonce += 1
        rec = _Local(handle, fn, str(self._nonce))
        self._jobs[job_id] = rec  # before the call: a grant may arrive before the reply
        args = [
            self._client_id,
            job_id,
            rec.nonce,
            "0" if key is None else "1",
            key or "",
            str(priority),
            "1" if preemptible else "0",
            _ms(self._lease),
            gate,
            "1" if estimate or self._events.active else "0",
        ]
        try:
            reply = await self._eval("submit", args)
        except BaseException:
            # Nothing half-done: forget it here, and free whatever the server may have
            # recorded before the reply was lost.
            if self._jobs.get(job_id) is rec and handle._state is _QUEUED:
                self._forget(rec)  # an aclose() may be waiting for this client's jobs
                self._chore(self._forget_remote(job_id, rec.nonce))
            elif handle._state is _RUNNING:  # granted meanwhile: give it back
                if fn is None:
                    self._chore(self._finish(rec, None, None, cancelled=True))
                else:
                    self._cancel_task(rec, _CANCEL)
            raise
        status = _s(reply[0])
        if status == "DUP":
            self._forget(rec)
            raise DuplicateJob(self._name, job_id)
        if status == "BUSY":
            self._forget(rec)
            self._grants(reply[3:])  # to this client's other jobs, before the refusal
            busy = LaneBusy(self._name, int(reply[1]), float(_s(reply[2])), max_wait or 0.0)
            if self._events.active:
                self._emit(EventKind.REJECTED, None, position=busy.position, eta=busy.eta)
            raise busy
        if self._events.active:
            queued = status != "RUN"
            self._emit(
                EventKind.SUBMITTED,
                handle,
                state=_QUEUED if queued else _RUNNING,
                position=int(reply[1]) if queued else 0,
                eta=float(_s(reply[2])) if queued else 0.0,
            )
        if handle.done():
            # Ended here while the submit was on its way (a close without drain withdrew
            # it before Redis had it): free what Redis has just recorded, now.
            self._chore(self._forget_remote(job_id, rec.nonce))
        if status == "RUN":
            rec.seq = int(reply[2])
            handle._seq = rec.seq
            if handle._state is _QUEUED:
                self._start(rec, _s(reply[1]))
            self._grants(reply[3:])
        else:
            rec.seq = int(reply[3])
            rec.arrival = status == "QP"
            handle._seq = rec.seq
            self._estimate(rec, int(reply[1]), float(_s(reply[2])))
            self._grants(reply[4:])
        return rec

    def _estimate(self, rec: _Local, position: int, eta: float) -> None:
        rec.position = position
        rec.eta = eta
        rec.eta_at = time.monotonic()

    async def _forget_remote(self, job_id: str, nonce: str) -> None:
        """Free what the server recorded of a submit this client has forgotten (its
        reply was lost, or the job ended here meanwhile), queued or granted: only that
        submit's (``nonce``), never a later submit of the same id."""
        # The submit may not have reached Redis yet (its batch still waits to be sent,
        # or is on its way on another connection): let the batches sent or queued so
        # far finish first, so this cancel cannot overtake it.
        senders = [t for t in self._senders if t is not asyncio.current_task()]
        if senders:
            await asyncio.wait(senders)
        try:
            reply = await self._eval("cancel", [self._client_id, job_id, "1", nonce])
        except LaneUnavailable:
            self._orphans.add((job_id, nonce))  # tried again once Redis answers
            return
        self._grants(reply[1:])

    # -- running ---------------------------------------------------------------------

    def _grants(self, flat: Sequence[Any]) -> None:
        """Start this client's jobs granted in a script reply (id, fence, nonce)."""
        for i in range(0, len(flat) - 2, 3):
            self._granted(_s(flat[i]), _s(flat[i + 1]), _s(flat[i + 2]))

    def _granted(self, job_id: str, fence: str, nonce: str) -> None:
        rec = self._jobs.get(job_id)
        if rec is not None and nonce and rec.nonce != nonce:
            # The grant of an earlier submit with this id (its reply was lost, and the
            # id was submitted again): not this job's, handed back below like any grant
            # of a job this client does not hold. A grant that names no nonce (a job
            # stored without one) is not checked.
            rec = None
        if rec is not None and rec.releasing and rec.fence != fence:
            # Granted again before this client has read its release's reply (a requeue
            # that another client's script granted at once): settled by ``_finish``.
            rec.regrant = (fence, nonce)
            return
        if rec is None or rec.handle._state is not _QUEUED or self._closing_hard():
            if rec is not None and rec.fence == fence:
                return  # a duplicate of a grant already taken
            # Granted after we gave it up (cancelled, failed submit, closing): hand the
            # slot straight back.
            self._chore(self._release(job_id, fence, "cancel"))
            if rec is not None and rec.handle._state is _QUEUED:
                self._end_queued(rec, LaneClosed(self._name, self._closed_message()))
            return
        if rec.on_grant_cancel is not None:
            self._chore(self._release(job_id, fence, "cancel"))
            self._end_queued(rec, rec.on_grant_cancel)
            return
        self._start(rec, fence)

    def _closing_hard(self) -> bool:
        return self._closed and self._hard

    def _start(self, rec: _Local, fence: str) -> None:
        job = rec.handle
        now = time.monotonic()
        job._transition(_RUNNING)
        job._t_start = now
        rec.fence = fence
        rec.renewed = now
        rec.cause = None
        rec.arrival = False
        rec.finishing = False
        job._begun = False
        self._fence_floor = max(self._fence_floor, int(fence))
        if self._events.active:
            # The queue wait of this start: since the submit, or since the last requeue.
            queued = job._t_requeued if job._preemptions else job._t_submit
            self._emit(EventKind.STARTED, job, state=_RUNNING, wait=now - queued)
        if rec.fn is None:  # a slot(): its body runs in the waiting task
            if rec.granted is not None and not rec.granted.done():
                rec.granted.set_result(None)
            return
        ctx = job._ctx
        task = job._task = spawn(
            asyncio.get_running_loop(),
            self._run,
            rec,
            rec.fn,
            name=f"executus-job-{job.id}",
            context=None if ctx is None else ctx.copy(),
        )
        task.add_done_callback(functools.partial(self._task_done, rec))

    def _task_done(self, rec: _Local, task: asyncio.Task[Any]) -> None:
        """A job's task has ended. One cancelled before its first step (by this client,
        or by anything else: a shutdown handler cancelling every task, ``asyncio.run``
        after a ``KeyboardInterrupt``) never ran ``_run``: end that run here."""
        job = rec.handle
        if job._task is task and job._state is _RUNNING and not job._begun:
            self._chore(self._finish(rec, None, None, cancelled=True))

    async def _run(self, rec: _Local, fn: Callable[[], Awaitable[Any]]) -> None:
        job = rec.handle
        job._begun = True
        CURRENT_JOB.set(job)
        try:
            awaitable = fn()
            if not hasattr(awaitable, "__await__"):
                raise TypeError(
                    f"fn must return an awaitable, got {type(awaitable).__name__}: "
                    f"{awaitable!r:.80}"
                )
            value = await awaitable
        except asyncio.CancelledError as exc:
            # This client owns the task: the cancellation ends here, recorded in the job.
            await _shielded(self._finish(rec, None, exc, cancelled=True))
        except BaseException as exc:
            await self._finish_body(rec, None, exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        else:
            await self._finish_body(rec, value, None)

    async def _finish_body(self, rec: _Local, value: Any, exc: BaseException | None) -> None:
        """End a job whose body returned or raised, from its own task.

        Every cancellation the lane makes goes through ``_cancel_task``, which leaves a
        finishing job alone; so unless a cancellation is already pending on the task,
        the release runs in this task, with no shielding task (one task and two loop
        turns fewer per job).
        """
        rec.finishing = True
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            await self._finish(rec, value, exc, cancelled=False)
        else:
            await _shielded(self._finish(rec, value, exc, cancelled=False))

    async def _finish(
        self, rec: _Local, value: Any, exc: BaseException | None, *, cancelled: bool
    ) -> BaseException | None:
        """A run is over: release its slot (fenced), then end or requeue the handle.

        Returns the error the job ends with (None on success or requeue).
        """
        job = rec.handle
        if job._state is not _RUNNING:
            return job._exc
        if cancelled:
            self._stop_grace(rec)  # cancelled in its grace, not by the preemption
        if rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None
        cause = rec.cause
        if not cancelled:
            outcome = "fail" if exc is not None else "ok"
        elif cause == _PREEMPT:
            outcome = "preq" if rec.fn is not None else "pre"  # a slot() cannot rerun
        else:
            outcome = "cancel"
        fence = rec.fence or "0"
        requeued = False
        grants: Sequence[Any] = ()  # a requeue's: taken once the job is QUEUED here
        if cause == _LOST:
            # The server has reclaimed the slot, or is about to: release it anyway
            # (fenced, so harmless) without making the job's waiters wait for Redis.
            self._chore(self._release(job.id, fence, "cancel"))
        else:
            rec.releasing = True
            try:
                if outcome == "preq":  # its reply says whether the job was requeued
                    reply = await self._release(job.id, fence, outcome)
                else:
                    reply = await self._release_bounded(job.id, fence, outcome)
            finally:
                rec.releasing = False
            if reply is not None and _s(reply[0]) == "REQ":
                requeued = True
                grants = reply[3:]
                self._estimate(rec, int(reply[1]), float(_s(reply[2])))
        regrant, rec.regrant = rec.regrant, None
        if regrant is not None and not requeued:
            # Not requeued here, so that grant is not this run's to take: hand it back.
            self._chore(self._release(job.id, regrant[0], "cancel"))
            regrant = None
        if job._state is not _RUNNING:
            self._grants(grants)
            if regrant is not None:
                self._granted(job.id, *regrant)
            return job._exc
        now = time.monotonic()
        rec.fence = None
        run = now - (job._t_start if job._t_start is not None else now)
        if requeued:
            job._preemptions += 1
            job._t_requeued = now
            job._preempt_requested = False
            job._task = None
            rec.cause = None
            job._transition(_QUEUED)
            if self._events.active:
                self._emit(EventKind.PREEMPTED, job, state=_QUEUED, run=run)
            self._grants(grants)  # maybe this job again, at once
            if regrant is not None:
                self._granted(job.id, *regrant)  # granted again by another client
            if self._closing_hard() and job._state is _QUEUED:
                # Requeued while a close without drain was under way (which took back
                # the queued jobs before this one returned to the queue): take it back.
                closed = LaneClosed(self._name, self._closed_message())
                self._chore(self._withdraw(rec, closed))
            return None
        error: BaseException | None
        if cancelled:
            if cause == _PREEMPT:
                error = JobPreempted(self._name, job.id)
                state = JobState.PREEMPTED
            elif cause == _LOST:
                error = self._lease_lost(job.id)
                state = JobState.CANCELLED
            else:
                reason = "cancelled: the lane was closed" if cause == _CLOSE else "cancelled"
                error = JobCancelled(self._name, job.id, reason)
                state = JobState.CANCELLED
            if exc is not None and cause is None:
                error.__cause__ = exc
            self._forget(rec)
            job._end(state, now, exc=error)
        elif exc is not None:
            error = exc
            self._forget(rec)
            job._end(JobState.FAILED, now, exc=exc)
        else:
            error = None
            self._forget(rec)
            job._end(JobState.SUCCEEDED, now, value=value)
        if self._events.active:
            failed = job._state is JobState.FAILED
            self._emit(
                _END_EVENTS[job._state],
                job,
                state=job._state,
                run=run,
                error=exc if failed else None,
            )
        return error

    def _lease_lost(self, job_id: str) -> LeaseLost:
        return LeaseLost(
            f"job {job_id!r} in lane {self._name!r} lost its lease: not renewed within "
            f"{_LEASE_FRACTION * self._lease:g}s (lease {self._lease:g}s), so its slot "
            "may have gone to another job"
        )

    async def _release(self, job_id: str, fence: str, outcome: str) -> list[Any] | None:
        """Free a slot (fenced, idempotent); retry until the lease would end anyway."""
        try:
            reply = await self._eval(
                "release", [self._client_id, job_id, fence, outcome], budget=self._lease
            )
        except LaneUnavailable:
            return None  # the lease expires on its own; the slot is not leaked
        if _s(reply[0]) != "REQ":  # a requeue's grants wait for ``_finish``
            self._grants(reply[3:])
        return reply

    async def _release_bounded(self, job_id: str, fence: str, outcome: str) -> list[Any] | None:
        """``_release`` for a run whose end does not depend on the reply: waited for
        within the retry budget, as any call is; past it (Redis unreachable) the release
        goes on in the background (fenced, so harmless whenever it lands) and the job's
        waiters get its outcome now instead of one lease later."""
        limit = self._retry_budget
        if self._close_by is not None:
            # A close is under way: its retry budget bounds this wait too (the close's
            # leave frees the slot if this release does not land).
            limit = max(0.5, min(limit, self._close_by - time.monotonic()))
        try:
            async with asyncio.timeout(limit):
                return await self._release(job_id, fence, outcome)
        except TimeoutError:
            self._chore(self._release(job_id, fence, outcome))
            return None

    def _forget(self, rec: _Local) -> None:
        job = rec.handle
        if self._jobs.get(job.id) is rec:
            del self._jobs[job.id]
        if self._drained and (not self._jobs or self._finisher is not None):
            # (a close begun inside a job waits for the other running jobs one by one)
            wake_all(self._drained)

    def _end_queued(self, rec: _Local, error: BaseException) -> None:
        job = rec.handle
        if job._state is not _QUEUED:
            return
        if rec.granted is not None and not rec.granted.done():
            rec.granted.set_result(None)  # the slot() waiter sees the ended handle
        self._forget(rec)
        job._end(JobState.CANCELLED, time.monotonic(), exc=error)
        if self._events.active:
            self._emit(EventKind.CANCELLED, job, state=JobState.CANCELLED)

    def _stop_grace(self, rec: _Local) -> bool:
        """Call off a preemption whose grace still runs (a cancel takes its place, or
        the preemption is no longer needed); whether there was one."""
        if rec.cause == _PREEMPT and rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None
            rec.cause = None
            return True
        return False

    def _cancel_delivered(self, rec: _Local) -> bool:
        """Whether this client has cancelled the running job's task (a cause is
        recorded and no grace timer still holds the cancel back)."""
        return rec.cause is not None and rec.timer is None

    def _grace_over(self, rec: _Local) -> None:
        rec.timer = None
        self._cancel_task(rec, _PREEMPT)

    def _cancel_task(self, rec: _Local, cause: str) -> None:
        job = rec.handle
        if job._state is not _RUNNING or rec.finishing:
            return
        if cause == _CANCEL:  # a cancel during a grace ends the job cancelled
            self._stop_grace(rec)
        if rec.cause is None or cause in (_LOST, _CLOSE):
            rec.cause = cause
        if rec.timer is not None:  # the cancel is delivered now: a grace is over
            rec.timer.cancel()
            rec.timer = None
        task = job._task
        if task is not None and not task.done():
            # (A task cancelled before its first step never runs its body, so never
            # reaches ``_run``'s handlers: ``_task_done`` ends that run.)
            task.cancel()

    # -- wake-ups and heartbeats -----------------------------------------------------

    def _on_message(self, raw: object) -> None:
        # "G <id> <fence> <nonce>", "P <id> <fence> <grace ms>", "L <id> <fence>", "C <id>",
        # "U <id> <fence>" (a preemption called off): the id may contain spaces, the
        # numbers after it cannot, so split from the right.
        kind, _, rest = _s(raw).partition(" ")
        trailing = _MESSAGE_FIELDS.get(kind)
        if trailing is None or not rest:
            return
        parts = rest.rsplit(" ", trailing) if trailing else [rest]
        if len(parts) != trailing + 1:
            return
        if kind == "G":
            self._granted(parts[0], parts[1], parts[2])
            return
        rec = self._jobs.get(parts[0])
        if rec is None:
            return
        job = rec.handle
        if kind == "P" and job._state is _RUNNING and rec.fence == parts[1]:
            if rec.cause is not None:
                # Requested again (wake-up and heartbeat: its grace already runs), or
                # the job is already being stopped (a cancel is not turned into a requeue).
                return
            job._preempt_requested = True
            rec.cause = _PREEMPT
            rec.asked = time.monotonic()
            grace = int(parts[2]) / 1000
            if grace > 0:
                rec.timer = asyncio.get_running_loop().call_later(grace, self._grace_over, rec)
            else:
                self._cancel_task(rec, _PREEMPT)
        elif kind == "L" and job._state is _RUNNING and rec.fence == parts[1]:
            self._cancel_task(rec, _LOST)
        elif kind == "U" and job._state is _RUNNING and rec.fence == parts[1]:
            # The preemption was called off (its arrival started elsewhere or was
            # cancelled): unless the grace is already over, the job runs on.
            if self._stop_grace(rec):
                job._preempt_requested = False
        elif kind == "C" and job._state is _QUEUED:
            self._end_queued(rec, JobCancelled(self._name, job.id))

    async def _wake_loop(self) -> None:
        """Block on this client's wake-up list; a watchdog bounds every wait."""
        key = self._keys.wake(self._client_id)
        packed = b"*3\r\n$5\r\nBLPOP\r\n" + _bulk(key) + _bulk(f"{self._block:.3f}")
        delay = 0.05
        while True:
            blocking = self._blocking
            assert blocking is not None
            held = self._held_blocking = _Held.of(self._held_blocking, blocking)
            try:
                # The watchdog: no reply well after the server's own timeout (a
                # half-open connection) ends the wait and closes the socket.
                async with asyncio.timeout(self._block + 3.0):
                    replies = await _round_trip(held, packed, 1)
                item = replies[0]
                if isinstance(item, Exception):
                    raise item
            except Exception:
                if self._stopping:
                    return
                # Lost connection, a hung socket, or a damaged key: drop the
                # connection, resynchronise through a heartbeat, back off. On a
                # cluster, a slot that moved ends the pop with MOVED: the heartbeat's
                # call follows it and replaces ``self._blocking`` (``_route``).
                with contextlib.suppress(Exception):
                    await blocking.connection_pool.disconnect()
                self._hb_kick.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            if item is not None:
                self._on_message(item[1])

    async def _beat_loop(self) -> None:
        """Renew leases every lease/3; stop jobs whose lease ran out unrenewed."""
        interval = self._lease / _HEARTBEATS_PER_LEASE
        next_beat = time.monotonic() + interval
        while True:
            now = time.monotonic()
            limit = _LEASE_FRACTION * self._lease
            soonest = next_beat
            for rec in list(self._jobs.values()):
                if rec.handle._state is _RUNNING and rec.fence is not None:
                    if now - rec.renewed >= limit:
                        self._cancel_task(rec, _LOST)
                    else:
                        soonest = min(soonest, rec.renewed + limit)
            if now - self._last_beat >= self._lease:
                # Unreachable past a lease: the server will drop our queued jobs, unless
                # this client's next heartbeat renews its liveness before another
                # client's sweep has: so they are withdrawn once Redis answers.
                for rec in list(self._jobs.values()):
                    if rec.handle._state is _QUEUED and rec.seq is not None:
                        self._orphans.add((rec.handle.id, rec.nonce))
                        self._end_queued(rec, self._lease_lost(rec.handle.id))
            if now >= next_beat or self._hb_kick.is_set():
                self._hb_kick.clear()
                # Errors are retried at the next beat; the leases' own deadlines
                # (checked above) stop jobs if renewals keep failing.
                with contextlib.suppress(Exception):
                    await self._heartbeat()
                next_beat = time.monotonic() + interval
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.005, soonest - now)):
                    await self._hb_kick.wait()

    async def _heartbeat(self) -> None:
        running = [
            r for r in self._jobs.values() if r.handle._state is _RUNNING and r.fence is not None
        ]
        queued = sorted(
            (r for r in self._jobs.values() if r.handle._state is _QUEUED and r.seq is not None),
            key=lambda r: r.seq or 0,
        )[:_MAX_QUEUED_REFRESH]
        fences = [r.fence for r in running]  # the runs this heartbeat speaks for
        seen = self._seen_weights
        args = [
            self._client_id,
            _ms(self._lease),
            _ms(self._lease / 2),
            seen[0],
            str(len(running)),
        ]
        for r in running:
            args += [r.handle.id, r.fence or "0"]
        args += [r.handle.id for r in queued]
        sent = time.monotonic()
        reply = await self._eval("heartbeat", args, budget=self._lease / _HEARTBEATS_PER_LEASE)
        # Renewed within a lease, this client was never taken for dead: a queued job of
        # it that is gone was cancelled by another client (its wake-up still on its way),
        # not dropped by the sweep.
        alive = sent - self._last_beat < self._lease
        self._last_beat = sent
        lost = {_s(x) for x in reply[1]}
        for r, fence in zip(running, fences, strict=True):
            if r.fence != fence:
                continue  # ended or re-granted meanwhile: this reply is not about that run
            if r.handle.id in lost:
                self._cancel_task(r, _LOST)
            elif r.handle._state is _RUNNING:
                r.renewed = sent
        self._grants(reply[2])
        info = reply[3]
        for i in range(0, len(info) - 2, 3):
            rec = self._jobs.get(_s(info[i]))
            if rec is not None and rec.handle._state is _QUEUED:
                self._estimate(rec, int(info[i + 1]), float(_s(info[i + 2])))
        for x in reply[4]:
            rec = self._jobs.get(_s(x))
            if rec is not None and rec.handle._state is _QUEUED and rec in queued:
                job_id = rec.handle.id
                gone = JobCancelled(self._name, job_id) if alive else self._lease_lost(job_id)
                self._end_queued(rec, gone)
        self._grants(reply[5])
        self._settings(reply[7], reply[8], seen)
        victims = reply[6]
        marked = {_s(victims[i]) for i in range(0, len(victims) - 2, 3)}
        for r, fence in zip(running, fences, strict=True):
            if (
                r.fence == fence
                and r.asked < sent
                and r.handle.id not in marked
                and r.handle.id not in lost
                and self._stop_grace(r)
            ):
                # Asked before this heartbeat, yet no longer marked a victim: the
                # preemption was called off and that wake-up ("U") was lost.
                r.handle._preempt_requested = False
        for i in range(0, len(victims) - 2, 3):
            rec = self._jobs.get(_s(victims[i]))
            if rec is not None and rec.cause is None:
                self._on_message(f"P {_s(victims[i])} {_s(victims[i + 1])} {_s(victims[i + 2])}")
        if self._orphans and not self._closed:
            # Redis answers again: withdraw what this client gave up while it did not
            # (a close's leave drops them all instead).
            orphans, self._orphans = self._orphans, set()
            for job_id, nonce in orphans:
                self._chore(self._forget_remote(job_id, nonce))

    def _own(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        """Run a step in a task of its own that ``aclose`` awaits, and return it."""
        task = asyncio.ensure_future(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    def _chore(self, coro: Awaitable[Any]) -> None:
        """Run a background step this lane owns (awaited in ``aclose``)."""

        async def wrapped() -> None:
            with contextlib.suppress(Exception):
                await coro

        task = self._own(wrapped())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    # -- handle backend --------------------------------------------------------------

    def _job_position(self, job: JobHandle[Any]) -> int:
        rec = self._jobs.get(job.id)
        return rec.position if rec is not None else 0

    def _job_eta(self, job: JobHandle[Any]) -> float:
        rec = self._jobs.get(job.id)
        if rec is None:
            return 0.0
        return max(0.0, rec.eta - (time.monotonic() - rec.eta_at))

    def _wall(self, mono: float) -> datetime:
        return datetime.fromtimestamp(time.time() - (time.monotonic() - mono), UTC)

    async def _job_cancel(self, job: JobHandle[Any]) -> bool:
        rec = self._jobs.get(job.id)
        if rec is None or rec.handle is not job:
            return False
        if job._state is _QUEUED:
            await self._withdraw(rec, JobCancelled(self._name, job.id))
            if job._state is _QUEUED:
                with contextlib.suppress(Exception):
                    await job  # granted meanwhile: its release is under way
            return job._state is JobState.CANCELLED
        if job._state is not _RUNNING:
            return False
        if job._task is asyncio.current_task():
            # The job cancelling itself from its own task: the cancellation is raised
            # right here (cancelling the task would also hit the caller of a slot()
            # body that leaves without another await).
            self._stop_grace(rec)
            if rec.cause is None:  # a lost lease or a close keeps its own outcome
                rec.cause = _CANCEL
            raise asyncio.CancelledError
        self._cancel_task(rec, _CANCEL)
        with contextlib.suppress(Exception):
            await job
        return job._state is JobState.CANCELLED

    async def _withdraw(self, rec: _Local, error: BaseException) -> None:
        """Take back a job that has not started here (queued, or granted unseen)."""
        job = rec.handle
        if job._state is _RUNNING:
            if rec.fn is None:  # a slot() granted while its waiter was cancelled
                await self._finish(rec, None, None, cancelled=True)
            else:
                self._cancel_task(rec, _CANCEL)
            return
        if job._state is not _QUEUED:
            return
        # Once sent, the cancel may take effect in Redis: its reply is acted on even if
        # the caller stops waiting.
        await asyncio.shield(self._own(self._withdraw_queued(rec, error)))

    async def _withdraw_queued(self, rec: _Local, error: BaseException) -> None:
        job = rec.handle
        try:
            reply = await self._eval("cancel", [self._client_id, job.id, "0"])
        except LaneUnavailable:
            # Ends here; Redis is told once it answers again (``_orphans``), and if it
            # grants the job before that, the grant is handed back.
            self._orphans.add((job.id, rec.nonce))
            self._end_queued(rec, error)
            return
        if _s(reply[0]) == "OK" or _s(reply[1]) == "":
            self._end_queued(rec, error)
        elif job._state is _QUEUED:
            # Granted in Redis; its wake-up is on the way: release it when it arrives.
            rec.on_grant_cancel = error
        elif job._state is _RUNNING:
            await self._withdraw(rec, error)

    # -- control and introspection ---------------------------------------------------

    async def cancel(self, job_id: str) -> None:
        """Cancel a queued job of this lane, submitted by any process.

        Its waiters (in the process that submitted it) get ``JobCancelled``.

        Raises:
            NotQueued: the job is unknown, running or has ended.
            LaneUnavailable: Redis is unreachable.
        """
        if not isinstance(job_id, str) or not is_utf8(job_id):
            raise NotQueued(self._name, job_id)  # no job can have this id
        await self._ensure()
        rec = self._jobs.get(job_id)
        # Acted on even if the caller stops waiting once it is sent.
        await asyncio.shield(self._own(self._cancel_queued(job_id, rec)))

    async def _cancel_queued(self, job_id: str, rec: _Local | None) -> None:
        # The token makes a retry of this cancel (its reply lost) answer OK again.
        token = uuid.uuid4().hex
        reply = await self._eval("cancel", [self._client_id, job_id, "0", token])
        if _s(reply[0]) != "OK":
            state = _s(reply[1]) or None
            if rec is not None and state is None:
                state = rec.handle._state.value
            raise NotQueued(self._name, job_id, state)
        if rec is not None:
            self._end_queued(rec, JobCancelled(self._name, job_id))

    async def refresh(self) -> None:
        """Renew this client's leases and refresh its queued jobs' positions and ETAs now.

        ``handle.position`` and ``handle.eta`` are read without I/O: they are set at
        submit and refreshed by every heartbeat (each ``lease / 3`` seconds), the ETA
        counting down in between. Call this for exact figures at a given moment.

        Raises:
            LaneUnavailable: Redis is unreachable.
        """
        await self._ensure()
        await self._heartbeat()

    async def stats(self) -> LaneStats:
        """A lane-wide snapshot, taken in one step on the server.

        Raises:
            LaneUnavailable: Redis is unreachable.
        """
        await self._ensure()
        seen = self._seen_weights
        r = await self._eval("stats", [seen[0]])
        oldest_ms = int(r[4])
        self._settings(r[16], r[17], seen)
        mean = _s(r[13])
        return LaneStats(
            name=self._name,
            max_concurrent=int(r[1]),
            running=int(r[2]),
            queued=int(r[3]),
            oldest_queued_at=None
            if oldest_ms < 0
            else datetime.fromtimestamp(oldest_ms / 1000, UTC),
            throughput_1m=int(r[6]),
            submitted=int(r[7]),
            succeeded=int(r[8]),
            failed=int(r[9]),
            cancelled=int(r[10]),
            preempted=int(r[11]),
            rejected=int(r[12]),
            mean_runtime=float(mean) if mean else None,
        )

    async def set_max_concurrent(self, n: int) -> None:
        """Change the lane-wide slot limit, for every process at once.

        Raising it starts queued jobs at once (in whichever process submitted them);
        lowering it never cancels a running job.

        Raises:
            ValueError: ``n < 1``. TypeError: not an int.
            LaneUnavailable: Redis is unreachable.
        """
        _check_stored_count("max_concurrent", n)
        await self._ensure()
        reply = await self._eval("control", [self._client_id, "max", str(n)])
        self._max = n
        if self._events.active:
            self._emit(EventKind.RESIZED, None, max_concurrent=n)
        self._grants(reply[1:])

    # -- observers -------------------------------------------------------------------

    def _emit(self, kind: EventKind, job: JobHandle[Any] | None, **fields: Any) -> None:
        if job is None:
            self._events.emit(LaneEvent(kind, self._name, time.time(), **fields))
        else:
            self._events.emit_job(kind, self._name, time.time(), job, **fields)

    async def set_preemption(self, preemption: Preemption | None) -> None:
        """Change (or, with None, turn off) the lane's preemption, for every process."""
        check_preemption(preemption)
        await self._ensure()
        if preemption is None:
            args = ["0", "30000", "0", "0"]
        else:
            args = [
                "1",
                _ms(preemption.min_runtime),
                _ms(preemption.grace),
                "1" if preemption.requeue else "0",
            ]
        await self._eval("control", [self._client_id, "pre", *args])
        self._preemption = preemption

    async def set_eta_window(self, n: int) -> None:
        """Change how many recent run times the lane's estimate averages."""
        _check_stored_count("eta_window", n)
        await self._ensure()
        await self._eval("control", [self._client_id, "win", str(n)])
        self._window = n

    # -- closing ---------------------------------------------------------------------

    def _closed_message(self) -> str:
        return f"lane {self._name!r} was closed before the job started"

    async def _loop_shut_down(self) -> None:
        """Its loop shuts down with this client open (a RedisLane serves one loop): close
        it as ``aclose(drain=False)`` does. Redis unreachable, the lane's leases and
        liveness recover the rest, as after a crash."""
        with contextlib.suppress(LaneError):
            await self.aclose(drain=False)
        farewell = self._farewell
        if farewell is not None and not farewell.done():
            # The loop ends: a leave still trying to reach Redis would be destroyed
            # pending with it. Stop it (and what it waits for) now; it closes the
            # client's connections as it ends.
            await self._drop_detached()
            farewell.cancel()
            await asyncio.wait([farewell])

    async def aclose(self, *, drain: bool = True) -> None:
        """Close this client of the lane: refuse new submits here (``LaneClosed``).

        Other processes' use of the lane is not affected.

        Args:
            drain: True: this client's queued jobs still run; return when all of its
                jobs have ended. False: its queued jobs end CANCELLED (their waiters get
                ``LaneClosed``), its running jobs are cancelled (``JobCancelled``);
                return when every task has ended.

        Raises:
            TypeError: ``drain`` is not a bool.

        Calling it again is harmless. Called from inside one of this client's jobs, in
        its task, a draining close waits for the other running jobs only; the rest of
        the close (draining, stopping the client) finishes once that job has ended, and
        a later ``aclose()`` waits for it.
        """
        check_drain(drain)
        self._check_loop()
        if not self._closed and self._events.active:
            self._emit(EventKind.CLOSED, None)
        self._closed = True
        if not self._started:
            if self._farewell is None or self._farewell.done():
                await self._close_clients()
            return
        if not drain:
            self._hard = True
            if self._close_by is None:
                self._close_by = time.monotonic() + self._retry_budget
            # All at once: one round trip (and, Redis unreachable, one retry budget).
            queued = [r for r in self._jobs.values() if r.handle._state is _QUEUED]
            await asyncio.gather(*(self._take_back(rec) for rec in queued))
            for rec in list(self._jobs.values()):
                self._cancel_task(rec, _CLOSE)
        me = self._calling_job()
        if me is not None:
            # Called from inside one of this client's jobs, in its task: waiting for
            # every job would wait for this one (and for queued jobs that may need its
            # slot). Wait for the other running jobs only; a task of its own finishes
            # the close (drains the rest, stops the client) once this job has ended.
            if self._finisher is None:
                self._finisher = spawn(
                    asyncio.get_running_loop(),
                    self._close_after,
                    me,
                    name=f"executus-redis-close-{self._name}",
                )
            # Several jobs closing from inside wait for each other's end no more than for
            # their own: each returns once every other running job is one of them.
            closers = self._closers
            closers.add(me)
            wake_all(self._drained)  # a close inside another job may be over now
            try:
                while any(
                    r.handle._state is _RUNNING and r.handle not in closers
                    for r in self._jobs.values()
                ):
                    await wait_woken(self._drained)
            finally:
                closers.discard(me)
            return
        finisher = self._finisher
        if finisher is not None and finisher is not asyncio.current_task():
            await asyncio.shield(finisher)  # a close begun inside a job: wait for it
            return
        while self._jobs:
            await wait_woken(self._drained)
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        if self._blocking is not None:
            # Close the blocked BLPOP's socket first: a cancelled blocking read can
            # otherwise wait for the server's reply.
            with contextlib.suppress(Exception):
                await self._blocking.connection_pool.disconnect()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._block + 3.0)
        # The steps still under way (a release that could not reach Redis, retried
        # for up to a lease; a withdrawal) and the leave share the close's retry budget
        # (counted from the close's start without drain, from here with drain): with
        # Redis unreachable the close returns after it, and the leave (which covers
        # what those steps would do) goes on in the background.
        if self._close_by is None:
            self._close_by = time.monotonic() + self._retry_budget
        deadline = self._close_by
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=max(0.0, deadline - time.monotonic()))
        # The leave drops whatever Redis still holds of this client (queued jobs, slots
        # granted to it, orphans) and hands the slots on. Redis takes the client for
        # dead one lease after its last heartbeat (then grants skip its jobs and the
        # sweep drops them); until then its jobs look queued to every other client, so
        # the leave is worth retrying until that moment: here within what is left of
        # the retry budget, then in the background (``_leave_late``) so that the close
        # stays bounded.
        self._orphans.clear()
        dead_at = self._last_beat + self._lease
        now = time.monotonic()
        budget = max(0.5, min(deadline - now, dead_at - now))
        try:
            await self._eval("control", [self._client_id, "bye"], budget=budget)
        except LaneUnavailable:
            if dead_at > time.monotonic() or self._chores:
                self._started = False
                self._farewell = spawn(
                    asyncio.get_running_loop(),
                    self._leave_late,
                    dead_at,
                    name=f"executus-redis-leave-{self._name}",
                )
                return
        self._started = False
        await self._drop_detached()  # the leave did their work
        await self._close_clients()  # (after the round trips still on their way)

    async def _close_after(self, job: JobHandle[Any]) -> None:
        """Finish a close called from inside ``job`` once that job has ended."""
        with contextlib.suppress(Exception):  # the job's outcome is its waiters' business
            await job
        await self.aclose(drain=not self._hard)

    async def _leave_late(self, dead_at: float) -> None:
        """A closed client's leave that could not reach Redis: retry it until Redis
        would take the client for dead anyway (``dead_at``), then close the clients.

        The background steps still under way (releases retried until their lease would
        end) go on meanwhile. Once the leave lands they are dropped: it has freed every
        slot of this client. If it never lands, they are waited for (each is bounded by
        a lease), so a slot whose release reaches Redis late is still freed.
        """
        try:
            left = False
            with contextlib.suppress(LaneUnavailable):
                budget = dead_at - time.monotonic()
                if budget > 0:
                    await self._eval("control", [self._client_id, "bye"], budget=budget)
                    left = True
            if left:
                await self._drop_detached()
            elif self._chores:
                await asyncio.wait(list(self._chores))
        finally:
            await self._close_clients()

    async def _drop_detached(self) -> None:
        """Cancel the background steps nobody awaits (``_chore``): the client's leave
        has done what they were retrying."""
        tasks = [t for t in self._detached if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _take_back(self, rec: _Local) -> None:
        """Closing without drain: end a queued job with ``LaneClosed`` and free what
        Redis holds of it."""
        closed = LaneClosed(self._name, self._closed_message())
        await self._withdraw(rec, closed)
        if rec.handle._state is _QUEUED:
            # Granted in Redis, its wake-up not read yet (it may never be: the wake-up
            # task stops with the close). No grant starts a job here any more, so free
            # that submit's slot now rather than leave it until its lease runs out.
            self._end_queued(rec, closed)
            await self._forget_remote(rec.handle.id, rec.nonce)

    async def __aenter__(self) -> Self:
        await self._ensure()  # connect now: errors surface at the ``async with``
        return self


async def _shielded(coro: Awaitable[T], *, keep_cancel: bool = False) -> T:
    """Await ``coro`` to the end even if the caller is cancelled meanwhile.

    A slot must be released and its job ended whatever happens to the task doing it.
    A cancellation arriving in this short window is absorbed when the caller is already
    unwinding (or ending its own job task); with ``keep_cancel`` (the caller's own code
    goes on) it is raised once ``coro`` is done.
    """
    task = asyncio.ensure_future(coro)
    absorbed = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            absorbed = True
            continue
        if absorbed and keep_cancel:
            raise asyncio.CancelledError
        return result


def _client_type_message(value: object) -> str:
    """Why ``value`` is refused as a lane's ``redis`` argument, for a ``TypeError``."""
    message = (
        "redis must be a URL or a redis.asyncio.Redis client (or a "
        f"redis.asyncio.cluster.RedisCluster client for a Redis Cluster), got {value!r}"
    )
    if isinstance(value, _SYNC_CLIENTS):
        message += " (a synchronous client: pass its redis.asyncio counterpart)"
    return message


def _check_url(url: str, *, cluster: bool) -> None:
    """Refuse at once a URL redis-py could not connect with, which it would otherwise
    report (in its own words) at the first call: ``ValueError`` naming the rule and the
    URL, its password masked. The checks are those ``executus.config`` makes at load;
    redis-py's parser then refuses what they do not cover."""
    check_redis_url(url, cluster=cluster)
    try:
        parse_url(url)
    except ValueError as e:
        raise ValueError(
            f"redis URL {masked_url(url)!r} is not valid: {scrubbed(str(e), url)}"
        ) from None


def _node_client(
    connection_class: type[AbstractConnection], kwargs: dict[str, Any]
) -> aioredis.Redis:
    """A plain client of one cluster node, with the cluster client's connection settings."""
    pool: ConnectionPool = aioredis.ConnectionPool(connection_class=connection_class, **kwargs)
    return aioredis.Redis(connection_pool=pool)


async def _close_client(client: aioredis.Redis) -> None:
    """Close a client of the lane's own and its connections (in-flight calls fail)."""
    with contextlib.suppress(Exception):
        await client.aclose()
        await client.connection_pool.disconnect()


_E = TypeVar("_E", bound=BaseException)


def _cause(error: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of type ``kind`` in ``error``'s chain of causes, if any."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _untrusted(error: BaseException) -> bool:
    """True when a connection failed because the server's certificate was not trusted
    (a setting to fix, not an outage to wait out)."""
    # The SSL error sits a link or two down the chain.
    return _cause(error, ssl.SSLCertVerificationError) is not None


def _weights(flat: Sequence[str]) -> dict[str, float]:
    """Fair-share weights from a stored ``key, weight, ...`` list; like the scripts, an
    entry that is not a number > 0 is left out (its key gets the default weight)."""
    weights: dict[str, float] = {}
    for key, text in zip(flat[::2], flat[1::2], strict=False):
        try:
            weight = float(text)
        except ValueError:
            continue
        if 0 < weight < math.inf:
            weights[key] = weight
    return weights


def _check_stored_count(name: str, value: object) -> int:
    """``check_count``, and below ``2**40``: Redis keeps the lane's counts as numbers."""
    n = check_count(name, value)
    if n >= STORED_MAX:
        raise ValueError(f"{name} must be < 2**40 for a RedisLane, got {n}")
    return n


def _check_utf8(name: str, text: str) -> None:
    """Refuse a str Redis cannot be sent (``ValueError`` naming ``name``)."""
    if not is_utf8(text):
        raise ValueError(f"{name} must be encodable as UTF-8 (for Redis), got {text!r}")


def _bulk(arg: str | bytes) -> bytes:
    data = arg if isinstance(arg, bytes) else arg.encode("utf-8")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack_batch(
    cfg: bytes, batch: Sequence[tuple[scripts.Script, Sequence[str], asyncio.Future[Any]]]
) -> bytes:
    """``EVALSHA sha 1 cfg argv...`` for every call of a batch, in RESP, one buffer."""
    parts: list[bytes] = []
    add = parts.append
    for script, argv, _ in batch:
        add(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (4 + len(argv), script.sha_bytes))
        add(cfg)
        for arg in argv:
            data = arg.encode()
            add(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _pack_eval(cfg: bytes, script: scripts.Script, argv: Sequence[str]) -> bytes:
    """``EVAL source 1 cfg argv...`` in RESP: a script the server does not know yet."""
    parts = [b"*%d\r\n$4\r\nEVAL\r\n" % (4 + len(argv)), _bulk(script.source), b"$1\r\n1\r\n", cfg]
    parts += [_bulk(arg) for arg in argv]
    return b"".join(parts)


class _Held:
    """Connections of one client kept out of its pool between round trips.

    A check-out from redis-py's pool takes a lock, probes the socket for stray data and
    runs metrics hooks: more than a short script's own cost in the client. A connection
    comes back here only after a clean exchange (every reply read), so it carries
    nothing unread; a failed exchange closes it and returns it to the pool. One that was
    closed meanwhile (the pool disconnected, a cluster route changed) reconnects when
    next taken, as the pool would. ``give_back`` returns them all to the pool, and any
    still in use return there when their exchange ends.
    """

    __slots__ = ("client", "given_back", "idle", "limit")

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.idle: list[AbstractConnection] = []
        self.given_back = False
        # A bounded pool (a client passed in may be shared with the application) keeps
        # at least seven eighths of its connections: one kept here while a caller waits
        # in the pool (a BlockingConnectionPool) would make that caller wait for nothing.
        bound = getattr(client.connection_pool, "max_connections", None)
        self.limit = _HELD if not isinstance(bound, int) else max(0, min(_HELD, bound // 8))

    @classmethod
    def of(cls, held: _Held | None, client: aioredis.Redis) -> _Held:
        """``held`` if it holds ``client``'s connections, else a new set for ``client``
        (the lane's clients change on a cluster route change)."""
        return held if held is not None and held.client is client else cls(client)

    async def take(self) -> AbstractConnection:
        idle = self.idle
        if idle:
            conn = idle.pop()
            if not conn.is_connected:
                try:
                    await conn.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    await self.client.connection_pool.release(conn)
                    raise
            return conn
        pool = self.client.connection_pool
        return await pool.get_connection()  # type: ignore[no-any-return,no-untyped-call]

    async def keep(self, conn: AbstractConnection) -> None:
        if len(self.idle) < self.limit and not self.given_back:
            self.idle.append(conn)
        else:
            await self.client.connection_pool.release(conn)

    async def give_back(self) -> None:
        self.given_back = True
        idle, self.idle = self.idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await self.client.connection_pool.release(conn)


async def _round_trip(held: _Held, packed: bytes, replies: int) -> list[Any]:
    """Send ``packed`` (``replies`` commands) on one connection of ``held``'s client and
    read every reply; a reply that is an error is returned, not raised.

    The caller bounds the whole exchange with one timeout, so no read sets its own. If
    the exchange stops part way (an error, a timeout, a cancellation), the connection is
    closed and returned to the pool: it may still carry unread replies.
    """
    try:
        conn = await held.take()
    except ResponseError as e:
        if type(e) is ResponseError:  # (redis-py's subclasses are told apart by callers)
            raise _SetupRefused(str(e)) from e
        raise
    except RedisConnectionError as e:
        refused = _setup_refusal(e)
        if refused is None:
            raise
        raise refused from e
    try:
        await _write(conn, packed)
        results: list[Any] = []
        for _ in range(replies):
            try:
                results.append(await conn.read_response(timeout=math.inf))
            except ResponseError as e:
                results.append(e)
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
        await held.client.connection_pool.release(conn)
        raise
    await held.keep(conn)
    return results


async def _write(conn: AbstractConnection, packed: bytes) -> None:
    """Write to a connected connection's stream at once; else through redis-py.

    redis-py's ``send_packed_command`` bounds each write with ``wait_for``, which on
    Python 3.11 runs the write in a new task, a loop turn later. The callers here bound
    the whole exchange already, so a connected stream is written directly.
    """
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected:
        await conn.send_packed_command(packed, check_health=False)
        return
    try:
        writer.write(packed)
        await writer.drain()
    except OSError as e:
        raise RedisConnectionError(f"Error while writing to Redis: {e}") from e


class _SetupRefused(ResponseError):
    """Redis refused to set up a new connection (the ``SELECT`` of the URL's database,
    say): an error of the connection's settings, not of a script or the lane's keys."""


def _setup_refusal(error: RedisConnectionError) -> Exception | None:
    """The refusal behind a connection that failed while being set up, if that is what
    ``error`` wraps: redis-py (8.x) sets a unix socket's connection up (``AUTH``,
    ``SELECT``, ...) inside its connect and wraps whatever that raised in a
    ``ConnectionError``, where over TCP the refusal is raised as itself. A refusal is a
    setting to fix, not a lost connection to retry."""
    cause = error.__cause__
    if type(error) is not RedisConnectionError or cause is None:
        return None
    if isinstance(cause, AuthenticationError):
        return AuthenticationError(str(cause))
    if isinstance(cause, NoPermissionError):  # (a user without CLIENT SETNAME, say)
        return NoPermissionError(str(cause))
    if isinstance(cause, ResponseError):
        return _SetupRefused(str(cause))
    return None


def _typed(error: Exception) -> Exception:
    """``error``, or for a plain ``ResponseError`` that some redis-py versions leave
    untyped, redis-py's class for it: a cluster reply (``MOVED``, ``ASK``,
    ``TRYAGAIN``, ...), or a server refusing a connection without credentials."""
    if type(error) is not ResponseError:
        return error
    text = str(error)
    if text.startswith("NOAUTH") or "unauthenticated" in text:
        return AuthenticationError(text)
    code, _, rest = text.partition(" ")
    cls = _CLUSTER_REPLIES.get(code)
    if cls is None:
        return error
    try:
        return cls(rest)
    except Exception:  # a reply that does not have the expected "slot host:port"
        return error
