"""The ``executus`` command against a real redis-server: top, lane set-max / cancel, demo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
import redis
from click.testing import CliRunner, Result

from executus import FairShare, JobCancelled, JobHandle
from executus.cli import cli
from executus.redis import RedisLane
from tests.helpers import Gate
from tests.redis.conftest import free_port
from tests.redis.helpers import RedisServer

pytestmark = pytest.mark.redis


async def invoke(args: Sequence[str]) -> Result:
    """Run the command in a thread (it runs its own event loop), the test's loop going on."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


@dataclass
class Busy:
    """A lane 'gpu' with 2 slots taken and 3 jobs queued (alice x2, bob)."""

    lane: RedisLane
    gates: list[Gate]
    queued: dict[str, JobHandle[object]]
    url: str
    namespace: str


@pytest.fixture
async def busy(redis_server: RedisServer, namespace: str) -> AsyncIterator[Busy]:
    """The busy lane; closed without draining afterwards."""
    lane = RedisLane("gpu", redis_server.url, 2, policy=FairShare(), namespace=namespace)
    gates = [Gate(), Gate()]
    await lane.submit(gates[0], job_id="r1", key="carol")
    await lane.submit(gates[1], job_id="r2", key="carol")
    queued = {
        "q1": await lane.submit(Gate(), job_id="q1", key="alice"),
        "q2": await lane.submit(Gate(), job_id="q2", key="alice"),
        "q3": await lane.submit(Gate(), job_id="q3", key="bob"),
    }
    try:
        yield Busy(lane, gates, queued, redis_server.url, namespace)
    finally:
        await lane.aclose(drain=False)


async def test_top_once_json_reads_a_lane_without_joining_it(busy: Busy) -> None:
    """top --once --json reports slots, queue by key, policy; the viewer does not register."""
    result = await invoke(
        ["top", "--redis", busy.url, "--namespace", busy.namespace, "--once", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["namespace"] == busy.namespace
    [lane] = doc["lanes"]
    assert (lane["name"], lane["policy"], lane["preemption"]) == ("gpu", "fair-share", False)
    assert (lane["max_concurrent"], lane["running"], lane["queued"]) == (2, 2, 3)
    assert (lane["submitted"], lane["processes"]) == (5, 1)
    assert lane["oldest_wait"] >= 0
    keys = {k["key"]: (k["running"], k["queued"]) for k in lane["keys"]}
    assert keys == {"carol": (2, 0), "alice": (0, 2), "bob": (0, 1)}
    stats = await busy.lane.stats()
    assert (stats.running, stats.queued, stats.submitted) == (2, 3, 5)


async def test_top_once_draws_the_table(busy: Busy) -> None:
    """top --once prints one table: the lane's row and its busiest keys."""
    result = await invoke(["top", "--redis", busy.url, "--namespace", busy.namespace, "--once"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"executus top - {busy.url} namespace {busy.namespace!r}" in out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("gpu "))
    assert row.split()[:4] == ["gpu", "fair", "2/2", "3"]
    assert "alice" in out
    assert "bob" in out


async def test_top_of_an_empty_namespace_says_so(redis_server: RedisServer, namespace: str) -> None:
    """A namespace with no lanes gives an empty JSON list and a 'no lanes' table."""
    result = await invoke(
        ["top", "--redis", redis_server.url, "--namespace", namespace, "--once", "--json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["lanes"] == []
    result = await invoke(["top", "--redis", redis_server.url, "--namespace", namespace, "--once"])
    assert "no lanes" in result.stdout


async def test_set_max_reaches_every_client(busy: Busy) -> None:
    """lane set-max raises the limit lane-wide: the queued jobs start in their process."""
    result = await invoke(
        ["lane", "set-max", "gpu", "4", "--redis", busy.url, "--namespace", busy.namespace]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "lane 'gpu': max_concurrent 2 -> 4\n"
    stats = await busy.lane.stats()
    assert (stats.max_concurrent, stats.running, stats.queued) == (4, 4, 1)


async def test_cancel_a_queued_job_wakes_its_waiter(busy: Busy) -> None:
    """lane cancel ends the queued job in the process that submitted it (JobCancelled)."""
    result = await invoke(
        ["lane", "cancel", "gpu", "q3", "--redis", busy.url, "--namespace", busy.namespace]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "lane 'gpu': cancelled queued job 'q3'\n"
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(busy.queued["q3"], timeout=10)
    assert (await busy.lane.stats()).queued == 2


async def test_cancel_of_a_job_that_is_not_queued_fails(busy: Busy) -> None:
    """Cancelling a running or unknown job is an error naming the job: exit 1, stderr."""
    for job_id, state in (("r1", "running"), ("zz", "unknown")):
        result = await invoke(
            ["lane", "cancel", "gpu", job_id, "--redis", busy.url, "--namespace", busy.namespace]
        )
        assert result.exit_code == 1
        assert result.stderr == f"Error: job {job_id!r} is not queued in lane 'gpu' ({state})\n"
        assert result.stdout == ""


async def test_unknown_lane_and_bad_values_are_clear_errors(busy: Busy) -> None:
    """An unknown lane lists the known ones; N < 1 states the rule; nothing changes."""
    base = ["--redis", busy.url, "--namespace", busy.namespace]
    result = await invoke(["lane", "set-max", "cpu", "3", *base])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no lane 'cpu' in namespace {busy.namespace!r} at {busy.url}; lanes there: gpu\n"
    )
    result = await invoke(["lane", "cancel", "cpu", "q1", *base])
    assert result.exit_code == 1
    assert "Error: no lane 'cpu'" in result.stderr
    result = await invoke(["lane", "set-max", "gpu", "0", *base])
    assert result.exit_code == 2
    assert "Error: Invalid value for 'N': max_concurrent must be >= 1, got 0\n" in result.stderr
    result = await invoke(["lane", "set-max", "gpu", "two", *base])
    assert result.exit_code == 2
    assert "'two' is not a valid integer." in result.stderr
    result = await invoke(["lane", "set-max", "a}b", "2", *base])
    assert result.exit_code == 2
    assert "lane name must not contain '{' or '}', got 'a}b'" in result.stderr
    assert (await busy.lane.stats()).max_concurrent == 2


def test_unreachable_redis_is_one_line_on_stderr() -> None:
    """No Redis at the URL: exit 1, one line naming it (password masked), no traceback."""
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    for args in (
        ["top", "--once"],
        ["lane", "set-max", "gpu", "2"],
        ["top", "--once", "--cluster"],
        ["lane", "cancel", "gpu", "q1", "--cluster"],
    ):
        result = CliRunner().invoke(cli, [*args, "--redis", url])
        assert result.exit_code == 1
        masked = url.replace("secret", "***")
        assert result.stderr.startswith(f"Error: cannot reach Redis at {masked}: ")
        assert result.stderr.count("\n") == 1
        assert "secret" not in result.output
        assert "Traceback" not in result.output


async def test_cluster_flag_on_a_single_server_is_refused(busy: Busy) -> None:
    """--cluster or $EXECUTUS_REDIS_CLUSTER with a server not in cluster mode: exit 1, says so."""
    expected = (
        f"Error: Redis at {busy.url} is not in cluster mode: drop --cluster "
        "(or unset $EXECUTUS_REDIS_CLUSTER)\n"
    )
    base = ["--redis", busy.url, "--namespace", busy.namespace]
    for args in (
        ["top", "--once", "--cluster", *base],
        ["lane", "set-max", "gpu", "4", "--cluster", *base],
        ["demo", "--seconds", "1", "--cluster", *base],
    ):
        result = await invoke(args)
        assert (result.exit_code, result.stderr) == (1, expected)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["top", "--once", *base],
        env={"EXECUTUS_REDIS_CLUSTER": "1"},
    )
    assert (result.exit_code, result.stderr) == (1, expected)
    assert (await busy.lane.stats()).max_concurrent == 2


def test_redis_demo_across_processes_holds_the_limit(
    redis_server: RedisServer, namespace: str
) -> None:
    """demo --redis with 2 processes: both finish, the limit holds, no key is left behind."""
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "--redis",
            redis_server.url,
            "--processes",
            "2",
            "--seconds",
            "1",
            "--users",
            "3",
            "--namespace",
            namespace,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2/2 processes finished; at most " in result.stdout
    assert "the limit held lane-wide." in result.stdout
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match=f"*{namespace}*")) == []
    finally:
        client.close()
