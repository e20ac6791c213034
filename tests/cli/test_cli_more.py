"""The ``executus`` command in pipelines, and Redis URLs with blanks around them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rich.console import Console

from executus._redis.keys import LaneKeys
from executus.cli import _app, cli
from executus.cli._top import LaneSnapshot, render_lanes
from executus.redis import RedisLane
from tests.redis.conftest import free_port
from tests.redis.helpers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# Variables that would change what the command prints or where it connects.
_DROP = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


def pipeline(command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run the shell pipeline ``command`` with ``pipefail`` (its exit code is that of the
    last command to fail). ``executus`` in it runs this checkout. A pipeline still
    running after ``timeout`` seconds is killed and the test fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTUS_") and k not in _DROP}
    env["PYTHONPATH"] = str(ROOT / "src")
    executus = shlex.join([sys.executable, "-m", "executus"])
    with subprocess.Popen(
        ["bash", "-c", f'set -o pipefail; executus() {{ {executus} "$@"; }}; {command}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{command!r} still ran after {timeout}s; stdout {out!r}, stderr {err!r}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def lane_gpu(redis_server: RedisServer, namespace: str) -> Iterator[str]:
    """Lane 'gpu' (fifo, 2 slots) stored in the session's Redis; its top arguments."""
    client = redis.Redis.from_url(redis_server.url)
    keys = LaneKeys(namespace, "gpu")
    client.hset(keys.cfg, mapping={"v": 1, "max": 2, "pol": "fifo", "pon": 0})
    try:
        yield shlex.join(["--redis", redis_server.url, "--namespace", namespace])
    finally:
        client.delete(keys.cfg)
        client.close()


# -- top into a pipe ------------------------------------------------------------------------


@pytest.mark.redis
def test_top_into_a_pipe_prints_a_plain_table_per_refresh(lane_gpu: str) -> None:
    """top without --once into a pipe prints one plain table per refresh, as it goes."""
    result = pipeline(f"executus top --interval 0.1 {lane_gpu} | head -n 40")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("executus top - ") >= 2
    rows = [line.split()[:3] for line in out.splitlines() if line.lstrip().startswith("gpu ")]
    assert rows[0] == ["gpu", "fifo", "0/2"]
    assert "\x1b" not in out  # no cursor movement, no colour
    assert result.stderr == ""


# -- a reader that goes away ------------------------------------------------------------------


@pytest.mark.redis
def test_top_json_stops_quietly_when_the_reader_goes_away(lane_gpu: str) -> None:
    """top --json | head -1: one JSON line, then exit 0 without a message."""
    result = pipeline(f"executus top --json --interval 0.1 {lane_gpu} | head -1")
    assert (result.returncode, result.stderr) == (0, "")
    [line] = result.stdout.splitlines()
    assert [lane["name"] for lane in json.loads(line)["lanes"]] == ["gpu"]


@pytest.mark.redis
def test_top_table_stops_quietly_when_the_reader_goes_away(lane_gpu: str) -> None:
    """top (tables into a pipe) | head -1: exit 0 without a message."""
    result = pipeline(f"executus top --interval 0.1 {lane_gpu} | head -1")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("executus top - ")


def test_bench_stops_quietly_and_ends_its_script_when_the_reader_goes_away(
    tmp_path: Path,
) -> None:
    """bench | head -2: exit 0 without a message, and the script it relays is ended."""
    pid_file = tmp_path / "pid"
    # A script that prints its progress, then (its output gone) keeps computing silently.
    (tmp_path / "bench_lane.py").write_text(
        "import itertools, os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "try:\n"
        "    for i in itertools.count():\n"
        "        print(i, flush=True)\n"
        "        time.sleep(0.02)\n"
        "except BrokenPipeError:\n"
        "    time.sleep(600)\n"
    )
    result = pipeline(f"executus bench --only lane --dir {shlex.quote(str(tmp_path))} | head -2")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "== bench_lane.py ==\n0\n"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# -- blanks around a Redis URL ------------------------------------------------------------------


@pytest.mark.redis
async def test_a_redis_url_with_blanks_around_it_works_as_in_config(
    redis_server: RedisServer, namespace: str
) -> None:
    """$EXECUTUS_REDIS_URL and --redis are stripped of surrounding blanks, as config does."""
    lane = RedisLane("gpu", redis_server.url, 2, namespace=namespace)
    try:
        await lane.stats()
        padded = f"  {redis_server.url}\n"
        for args in (["top", "--once", "--json"], ["lane", "set-max", "gpu", "3"]):
            for env, more in (({"EXECUTUS_REDIS_URL": padded}, []), ({}, ["--redis", padded])):
                result = await asyncio.to_thread(
                    CliRunner().invoke, cli, [*args, "--namespace", namespace, *more], env=env
                )
                assert result.exit_code == 0, result.output
        assert (await lane.stats()).max_concurrent == 3
    finally:
        await lane.aclose(drain=False)


def test_a_blank_redis_url_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank $EXECUTUS_REDIS_URL counts as unset (as in config): the default URL is used."""
    default = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(_app, "_DEFAULT_URL", default)
    result = CliRunner().invoke(cli, ["top", "--once"], env={"EXECUTUS_REDIS_URL": "  "})
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach Redis at {default}: ")


def test_a_blank_redis_option_is_a_usage_error() -> None:
    """--redis given blank on the command line is a usage error (exit 2)."""
    result = CliRunner().invoke(cli, ["top", "--once", "--redis", " "])
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: Invalid value for '--redis': the URL is blank\n")


@pytest.mark.parametrize("preemption", [False, True])
def test_top_explains_the_preemption_mark_only_when_a_lane_shows_it(preemption: bool) -> None:
    """The table's legend explains the "*" after a policy only when a lane has it."""
    snap = LaneSnapshot(
        namespace="ns",
        name="gpu",
        policy="fifo",
        preemption=preemption,
        max_concurrent=2,
        running=1,
        queued=0,
        oldest_wait=None,
        throughput_1m=0,
        mean_runtime=None,
        processes=1,
        submitted=1,
        succeeded=0,
        failed=0,
        cancelled=0,
        preempted=0,
        rejected=0,
        keys=(),
    )
    out = io.StringIO()
    Console(file=out, width=120).print(render_lanes([snap], title="top"))
    assert ("* preemption on" in out.getvalue()) is preemption
    assert "oldest: the longest a queued job has waited" in out.getvalue()
