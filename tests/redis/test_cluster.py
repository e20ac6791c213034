"""RedisLane on a real Redis Cluster: 3 masters and a replica, made by the fixtures.

Lane names are chosen per test so that their hash tag lands on the master a test wants
(``LocalCluster.name_on``). The slot moves and the failover are done with the cluster's
own commands (``CLUSTER SETSLOT``, ``MIGRATE``, ``CLUSTER FAILOVER``), synchronously, so
the lanes under test send nothing while a slot changes hands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from executus import JobState, LaneBusy, LaneUnavailable
from executus.redis import RedisLane
from tests.helpers import Gate, value

from .helpers import Interval, LocalCluster, RedisServer, max_overlap
from .test_security import DOCS, PASSWORD, documented_acl_rule

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A redis-py cluster client of the session's cluster (closed afterwards)."""
    client = RedisCluster.from_url(redis_cluster.url())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_lane(cluster_client: RedisCluster, namespace: str) -> AsyncIterator[LaneFactory]:
    """Make RedisLane clients in this test's namespace; by default of the shared cluster
    client, with a lease long enough that no heartbeat runs during the test."""
    lanes: list[RedisLane] = []

    def make(name: str, max_concurrent: int | None = None, **kw: Any) -> RedisLane:
        kw.setdefault("lease", 30.0)
        conn = kw.pop("redis", cluster_client)
        lane = RedisLane(name, conn, max_concurrent, namespace=namespace, **kw)
        lanes.append(lane)
        return lane

    yield make
    for lane in lanes:
        await lane.aclose(drain=False)


def cfg_key(namespace: str, name: str) -> str:
    """The lane's configuration key (the one every script declares)."""
    return f"{{{namespace}:{name}}}:cfg"


def slot_of(namespace: str, name: str) -> int:
    """The hash slot of a lane's keys."""
    return key_slot(cfg_key(namespace, name).encode())


def commands_of(cluster: LocalCluster, port: int, client_name: str) -> set[str]:
    """The last command of each connection named ``client_name`` on node ``port``."""
    clients = str(cluster.call(port, "CLIENT", "LIST")).splitlines()
    return {c.split(" cmd=")[1].split()[0] for c in clients if f" name={client_name} " in c}


async def test_lanes_on_every_master_submit_run_cancel_and_report(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """One cluster client runs lanes on all three masters: start, queue, max_wait, cancel, stats."""
    masters = redis_cluster.masters()
    assert len(masters) == 3
    for port in masters:
        name = redis_cluster.name_on(port, namespace)
        lane = make_lane(name, 1)
        gate = Gate()
        running = await lane.submit(gate)
        queued = await lane.submit(value("second"))
        doomed = await lane.submit(value("third"))
        assert (running.state, queued.state, doomed.state) == (
            JobState.RUNNING,
            JobState.QUEUED,
            JobState.QUEUED,
        )
        assert (queued.position, doomed.position) == (1, 2)
        with pytest.raises(LaneBusy) as busy:
            await lane.submit(value("refused"), max_wait=0.5)
        assert busy.value.position == 3
        await lane.cancel(doomed.id)
        assert doomed.state is JobState.CANCELLED
        stats = await lane.stats()
        assert (stats.running, stats.queued, stats.submitted, stats.rejected) == (1, 1, 3, 1)
        gate.release("first")
        assert [await running, await queued] == ["first", "second"]
        stats = await lane.stats()
        assert (stats.running, stats.queued, stats.succeeded, stats.cancelled) == (0, 0, 2, 1)
        slot = slot_of(namespace, name)
        assert cfg_key(namespace, name) in redis_cluster.keys_in_slot(port, slot)
        assert [redis_cluster.keys_in_slot(p, slot) for p in masters if p != port] == [[], []]


async def test_two_clients_share_slots_on_the_cluster(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """Two clients of one lane on the cluster never exceed max_concurrent; each job runs once."""
    name = redis_cluster.name_on(redis_cluster.masters()[1], namespace)
    other_node = redis_cluster.masters()[2]
    a = make_lane(name, 2)
    b = make_lane(name, redis=redis_cluster.url(other_node), cluster=True)
    runs: list[Interval] = []

    def job(i: int) -> Callable[[], Any]:
        async def body() -> int:
            start = time.monotonic()
            await asyncio.sleep(0.02)
            runs.append(Interval(str(i), start, time.monotonic()))
            return i

        return body

    handles = [await (a if i % 2 else b).submit(job(i)) for i in range(12)]
    assert await asyncio.gather(*handles) == list(range(12))
    assert max_overlap(runs) == 2
    assert sorted(int(r.job) for r in runs) == list(range(12))
    sa, sb = await a.stats(), await b.stats()
    assert (sa.submitted, sa.succeeded, sa.running, sa.queued) == (12, 12, 0, 0)
    assert (sb.submitted, sb.succeeded, sb.max_concurrent) == (12, 12, 2)


async def test_cluster_url_finds_the_slot_from_any_node(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """cluster=True reaches the lane's master from any node's URL; without it, a clear error."""
    owner = redis_cluster.masters()[0]
    name = redis_cluster.name_on(owner, namespace)
    elsewhere = redis_cluster.masters()[1]
    url = f"{redis_cluster.url(elsewhere)}?client_name={namespace}"
    lane = make_lane(name, 1, redis=url, cluster=True)
    assert await lane.run(value("ok")) == "ok"
    assert (await lane.stats()).succeeded == 1
    # The URL's client_name is on the scripts' and the blocking pop's connections to
    # the slot's master. The pop is sent by a background task: poll the server's list
    # of clients (no event to wait on) until it shows.
    named: set[str] = set()
    async with asyncio.timeout(5):
        while "blpop" not in named:
            named = commands_of(redis_cluster, owner, namespace)
            await asyncio.sleep(0.01)
    assert named & {"eval", "evalsha"}

    plain = make_lane(name, redis=redis_cluster.url(elsewhere))
    slot = slot_of(namespace, name)
    expected = (
        f"lane {name!r}: Redis is a cluster node that does not serve the lane's hash slot "
        f"{slot} (MovedError: {slot} 127.0.0.1:{owner}); pass cluster=True with the URL, "
        "or a redis.asyncio.cluster.RedisCluster client"
    )
    with pytest.raises(LaneUnavailable) as refused:
        await plain.run(value("never"))
    assert str(refused.value) == expected


async def test_cluster_true_on_a_plain_server_says_so(
    redis_server: RedisServer, namespace: str
) -> None:
    """cluster=True with the URL of a server not in cluster mode fails at once, saying so."""
    url = redis_server.url.removesuffix("/0")
    lane = RedisLane("plain", url, namespace=namespace, cluster=True)
    try:
        with pytest.raises(
            LaneUnavailable,
            match=(
                r"^lane 'plain': cluster=True \(or a RedisCluster client\), but that Redis is "
                r"not in cluster mode \(.*Cluster mode is not enabled on this node.*\); "
                r"pass its URL without cluster=True$"
            ),
        ):
            await lane.stats()
    finally:
        await lane.aclose()


async def test_wrong_client_types_are_refused(redis_cluster: LocalCluster) -> None:
    """Wrong client types and a non-bool cluster flag raise a TypeError saying what is accepted."""
    accepted = (
        "redis must be a URL or a redis.asyncio.Redis client (or a "
        "redis.asyncio.cluster.RedisCluster client for a Redis Cluster), got "
    )
    with pytest.raises(TypeError) as e:
        RedisLane("x", 42)  # type: ignore[arg-type]
    assert str(e.value) == accepted + "42"

    sync_client = redis.Redis(host="127.0.0.1", port=redis_cluster.ports[0])
    sync_cluster = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        for client in (sync_client, sync_cluster):
            with pytest.raises(TypeError) as e:
                RedisLane("x", client)  # type: ignore[arg-type]
            assert str(e.value) == (
                f"{accepted}{client!r} (a synchronous client: pass its redis.asyncio counterpart)"
            )
    finally:
        sync_client.close()
        sync_cluster.close()

    single = aioredis.Redis(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        with pytest.raises(TypeError) as e:
            RedisLane("x", single, cluster=True)
        assert str(e.value) == (
            "cluster=True needs a URL or a redis.asyncio.cluster.RedisCluster client, "
            f"got a redis.asyncio.Redis client: {single!r}"
        )
    finally:
        await single.aclose()

    with pytest.raises(TypeError) as e:
        RedisLane("x", redis_cluster.url(), cluster="yes")  # type: ignore[arg-type]
    assert str(e.value) == "cluster must be a bool, got 'yes'"


async def test_slot_migration_moves_the_lane_with_its_state(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """A slot migrated with its keys mid-job: both clients follow MOVED and every job ends."""
    source, target = redis_cluster.masters()[:2]
    name = redis_cluster.name_on(source, namespace)
    other = RedisCluster.from_url(redis_cluster.url(target))
    try:
        a = make_lane(name, 1)
        b = make_lane(name, redis=other)
        gate = Gate()
        first = await a.submit(gate)
        second = await b.submit(value("second"))
        assert second.state is JobState.QUEUED

        slot = slot_of(namespace, name)
        redis_cluster.move_slot(slot, target)
        assert redis_cluster.keys_in_slot(source, slot) == []
        assert cfg_key(namespace, name) in redis_cluster.keys_in_slot(target, slot)

        gate.release("first")
        async with asyncio.timeout(5):
            assert [await first, await second] == ["first", "second"]
        stats = await b.stats()
        assert (stats.submitted, stats.succeeded, stats.running, stats.queued) == (2, 2, 0, 0)
        assert await a.run(value("after")) == "after"
    finally:
        await other.aclose()


async def test_new_owner_without_the_lane_state_rebuilds_it(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """A slot moved without its keys: the clients re-route and rebuild the lane, order kept."""
    source, target = redis_cluster.masters()[1:]
    name = redis_cluster.name_on(source, namespace)
    other = RedisCluster.from_url(redis_cluster.url(target))
    try:
        a = make_lane(name, 1, lease=2.0)
        b = make_lane(name, redis=other, lease=2.0)
        gate = Gate()
        started: list[str] = []

        def record(job: str) -> Callable[[], Any]:
            async def body() -> str:
                started.append(job)
                return job

            return body

        first = await a.submit(gate)
        second = await b.submit(record("second"))
        third = await a.submit(record("third"))
        await a.refresh()
        await b.refresh()

        redis_cluster.move_slot(slot_of(namespace, name), target, keep_keys=False)
        assert redis_cluster.call(target, "EXISTS", cfg_key(namespace, name)) == 0

        stats = await a.stats()  # re-routes, finds no lane, rebuilds it
        assert redis_cluster.call(target, "EXISTS", cfg_key(namespace, name)) == 1
        assert (stats.running, stats.max_concurrent) == (1, 1)
        await b.refresh()  # re-submits its job before a's, in their original order
        await a.refresh()
        assert (await a.stats()).queued == 2
        assert (second.position, third.position) == (1, 2)
        gate.release("first")
        async with asyncio.timeout(10):
            assert [await first, await second, await third] == ["first", "second", "third"]
        assert started == ["second", "third"]
    finally:
        await other.aclose()


async def test_manual_failover_keeps_the_lane_running(
    redis_cluster: LocalCluster, make_lane: LaneFactory, namespace: str
) -> None:
    """A manual failover mid-job: both clients move to the promoted replica, state intact."""
    replica, master = redis_cluster.replica()
    name = redis_cluster.name_on(master, namespace)
    other = RedisCluster.from_url(redis_cluster.url(replica))
    try:
        a = make_lane(name, 1)
        b = make_lane(name, redis=other)
        gate = Gate()
        first = await a.submit(gate)
        second = await b.submit(value("second"))

        redis_cluster.failover(replica)
        assert redis_cluster.call(replica, "EXISTS", cfg_key(namespace, name)) == 1

        gate.release("first")
        async with asyncio.timeout(5):
            assert [await first, await second] == ["first", "second"]
        stats = await a.stats()
        assert (stats.submitted, stats.succeeded, stats.running, stats.queued) == (2, 2, 0, 0)
    finally:
        await other.aclose()


async def test_documented_acl_user_runs_a_lane_on_the_cluster(
    redis_cluster: LocalCluster, namespace: str
) -> None:
    """The documented ACL rule plus its cluster addition runs a lane; without it, a clear error."""
    assert "`+cluster|slots +command`" in DOCS.read_text("utf-8")
    user = f"u{namespace}"
    rule = [r.replace("~{executus:*", f"~{{{namespace}:*") for r in documented_acl_rule()]
    url = f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_cluster.ports[0]}"
    try:
        for port in redis_cluster.ports:
            redis_cluster.call(port, "ACL", "SETUSER", user, *rule)
        lane = RedisLane("acl", url, 1, namespace=namespace, cluster=True, lease=30.0)
        try:
            with pytest.raises(LaneUnavailable) as denied:
                await lane.stats()
            assert str(denied.value) == (
                "lane 'acl': the Redis user lacks a permission the lane needs (this user has "
                "no permissions to run the 'cluster|slots' command); it needs the keys "
                f"'~{{{namespace}:*' and the commands listed in the ACL section of "
                "docs/redis.md"
            )
        finally:
            await lane.aclose()
        for port in redis_cluster.ports:
            redis_cluster.call(port, "ACL", "SETUSER", user, "+cluster|slots", "+command")
        async with RedisLane("acl", url, 1, namespace=namespace, cluster=True) as lane:
            assert await lane.run(value("allowed")) == "allowed"
    finally:
        for port in redis_cluster.ports:
            redis_cluster.call(port, "ACL", "DELUSER", user)
