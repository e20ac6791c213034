"""The entry points on a real Redis Cluster: ``Lanes`` with ``REDIS_CLUSTER`` and the
``executus`` command with ``--cluster``.

Every test is given the URL of one master and works on lanes whose hash slots other
masters serve (``LocalCluster.name_on``), so only a client that follows the cluster's
slot map can reach them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
import redis.cluster
from click.testing import CliRunner, Result
from redis.crc import key_slot

from executus import JobCancelled, JobHandle, LaneUnavailable
from executus.cli import cli
from executus.cli._top import read_lanes
from executus.config import EnvSource, Lanes
from executus.redis import RedisLane
from tests.helpers import Gate, value

from .helpers import LocalCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def invoke(args: Sequence[str], env: Mapping[str, str | None] | None = None) -> Result:
    """Run the command in a thread (it runs its own event loop), the test's loop going on.

    ``$EXECUTUS_REDIS_CLUSTER`` is unset unless ``env`` sets it.
    """
    runner = CliRunner(env={"EXECUTUS_REDIS_CLUSTER": None, **(env or {})})
    return await asyncio.to_thread(runner.invoke, cli, list(args))


def lane_env(cluster: LocalCluster, namespace: str, **values: str) -> EnvSource:
    """The environment of a harness whose REDIS_URL is the first master's."""
    environ = {
        "EXECUTUS_REDIS_URL": cluster.url(cluster.masters()[0]),
        "EXECUTUS_REDIS_NAMESPACE": namespace,
        **{f"EXECUTUS_{k}": v for k, v in values.items()},
    }
    return EnvSource(environ=environ)


@dataclass
class Busy:
    """A lane on each master but the first: one job running (``r1``), two queued."""

    names: list[str]
    lanes: dict[str, RedisLane]
    queued: dict[str, dict[str, JobHandle[object]]]
    url: str
    namespace: str


@pytest.fixture
async def busy(redis_cluster: LocalCluster, namespace: str) -> AsyncIterator[Busy]:
    """The busy lanes, built by ``Lanes`` from REDIS_URL and REDIS_CLUSTER; closed
    without draining afterwards."""
    masters = redis_cluster.masters()
    names = [redis_cluster.name_on(port, namespace) for port in masters[1:]]
    lanes = Lanes(lane_env(redis_cluster, namespace, REDIS_CLUSTER="1"))
    built: dict[str, RedisLane] = {}
    queued: dict[str, dict[str, JobHandle[object]]] = {}
    try:
        for name in names:
            lane = built[name] = lanes.get(name, max_concurrent=1)
            await lane.submit(Gate(), job_id="r1", key="carol")
            queued[name] = {
                job_id: await lane.submit(Gate(), job_id=job_id, key="alice")
                for job_id in ("q1", "q2")
            }
        yield Busy(names, built, queued, redis_cluster.url(masters[0]), namespace)
    finally:
        await lanes.aclose(drain=False)


async def test_lanes_from_env_run_a_job_on_a_lane_another_node_serves(
    redis_cluster: LocalCluster, namespace: str
) -> None:
    """REDIS_CLUSTER=1 makes Lanes reach a lane on another master; without it, a clear error."""
    masters = redis_cluster.masters()
    name = redis_cluster.name_on(masters[1], namespace)
    token = name.upper()
    source = lane_env(
        redis_cluster, namespace, REDIS_CLUSTER="1", **{f"LANE_{token}_MAX_CONCURRENT": "2"}
    )
    async with Lanes(source) as lanes:
        assert lanes.redis_cluster is True
        lane = lanes.get(name)
        assert await lane.run(value("ok"), key="alice") == "ok"
        stats = await lane.stats()
        assert (stats.max_concurrent, stats.succeeded) == (2, 1)
    cfg = f"{{{namespace}:{name}}}:cfg"
    assert cfg in redis_cluster.keys_in_slot(masters[1], key_slot(cfg.encode()))

    async with Lanes(lane_env(redis_cluster, namespace)) as plain:
        with pytest.raises(LaneUnavailable) as e:
            await plain.get(name).run(value("never"))
        assert str(e.value).startswith(
            f"lane {name!r}: Redis is a cluster node that does not serve the lane's hash slot "
        )


async def test_top_with_cluster_shows_the_lanes_of_every_node(busy: Busy) -> None:
    """top --cluster (or $EXECUTUS_REDIS_CLUSTER=1) given one node reads the lanes of all."""
    base = ["--redis", busy.url, "--namespace", busy.namespace, "--once"]
    result = await invoke(["top", *base, "--json", "--cluster"])
    assert result.exit_code == 0, result.output
    lanes = json.loads(result.stdout)["lanes"]
    assert [lane["name"] for lane in lanes] == sorted(busy.names)
    for lane in lanes:
        assert (lane["max_concurrent"], lane["running"], lane["queued"]) == (1, 1, 2)
        assert (lane["submitted"], lane["processes"]) == (3, 1)
        keys = {k["key"]: (k["running"], k["queued"]) for k in lane["keys"]}
        assert keys == {"carol": (1, 0), "alice": (0, 2)}

    result = await invoke(["top", *base], env={"EXECUTUS_REDIS_CLUSTER": "1"})
    assert result.exit_code == 0, result.output
    rows = [line.split()[:4] for line in result.stdout.splitlines()]
    for name in busy.names:
        assert [name, "fifo", "1/1", "2"] in rows


async def test_without_cluster_a_cluster_node_is_refused(busy: Busy) -> None:
    """Without --cluster, the URL of a cluster node is an error saying to pass it: exit 1."""
    expected = (
        f"Error: Redis at {busy.url} is a node of a Redis Cluster: pass --cluster "
        "(or set $EXECUTUS_REDIS_CLUSTER=1) to reach the lanes on every node\n"
    )
    base = ["--redis", busy.url, "--namespace", busy.namespace]
    for args in (["top", "--once"], ["lane", "set-max", busy.names[0], "3"]):
        result = await invoke([*args, *base])
        assert (result.exit_code, result.stderr) == (1, expected)
    result = await invoke(["top", "--once", *base], env={"EXECUTUS_REDIS_CLUSTER": "0"})
    assert (result.exit_code, result.stderr) == (1, expected)
    assert (await busy.lanes[busy.names[0]].stats()).max_concurrent == 1


async def test_lane_commands_with_cluster_reach_a_lane_on_another_node(busy: Busy) -> None:
    """lane cancel and lane set-max with --cluster change a lane another master serves."""
    name = busy.names[-1]
    base = ["--redis", busy.url, "--namespace", busy.namespace, "--cluster"]
    result = await invoke(["lane", "cancel", name, "q2", *base])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lane {name!r}: cancelled queued job 'q2'\n"
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(busy.queued[name]["q2"], timeout=10)

    result = await invoke(["lane", "set-max", name, "2", *base])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lane {name!r}: max_concurrent 1 -> 2\n"
    stats = await busy.lanes[name].stats()
    assert (stats.max_concurrent, stats.running, stats.queued) == (2, 2, 0)

    result = await invoke(["lane", "set-max", "nolane", "2", *base])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no lane 'nolane' in namespace {busy.namespace!r} at {busy.url}; "
        f"lanes there: {', '.join(sorted(busy.names))}\n"
    )


async def test_top_reads_a_lane_again_after_its_slot_moved(
    redis_cluster: LocalCluster, namespace: str
) -> None:
    """A long-lived top client finds a lane on its new master after the slot moved."""
    masters = redis_cluster.masters()
    name = redis_cluster.name_on(masters[1], namespace)
    lane = RedisLane(name, redis_cluster.url(), 3, cluster=True, namespace=namespace, lease=30)
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url(), decode_responses=True)
    try:
        assert await lane.run(value("ok")) == "ok"
        [before] = read_lanes(client, namespace)
        assert (before.name, before.max_concurrent, before.succeeded) == (name, 3, 1)
        redis_cluster.move_slot(key_slot(f"{{{namespace}:{name}}}:cfg".encode()), masters[2])
        [after] = read_lanes(client, namespace)
        assert (after.name, after.max_concurrent, after.succeeded) == (name, 3, 1)
    finally:
        client.close()
        await lane.aclose()


def test_redis_demo_on_the_cluster_holds_the_limit(
    redis_cluster: LocalCluster, namespace: str
) -> None:
    """demo --redis NODE --cluster with 2 processes: the limit holds, no key is left behind."""
    url = redis_cluster.url(redis_cluster.masters()[0])
    result = CliRunner(env={"EXECUTUS_REDIS_CLUSTER": None}).invoke(
        cli,
        [
            *("demo", "--redis", url, "--cluster", "--processes", "2"),
            *("--seconds", "1", "--users", "3", "--namespace", namespace),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2/2 processes finished; at most " in result.stdout
    assert "the limit held lane-wide." in result.stdout
    client = redis.cluster.RedisCluster.from_url(url)
    try:
        assert list(client.scan_iter(match=f"*{namespace}*")) == []
    finally:
        client.close()
