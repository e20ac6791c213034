"""The demos: scales, honest summaries, time budget, Ctrl-C during clean-up."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from executus._demo import run_demo
from executus.cli import _demo, _worker
from executus.cli._demo import DemoSettings, run_local_demo
from tests.helpers import run_plain_executus
from tests.redis.helpers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


# -- the plain demo's --scale ----------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ("0.01", "--scale must be >= 0.1 (shorter jobs are lost in timing noise), got 0.01"),
        ("1e-300", "--scale must be >= 0.1 (shorter jobs are lost in timing noise), got 1e-300"),
        ("2.5", "--scale must be <= 2 (the demo lasts about 5 s x scale), got 2.5"),
        ("1e300", "--scale must be <= 2 (the demo lasts about 5 s x scale), got 1e+300"),
        ("nan", "--scale must be finite, got nan"),
    ],
)
def test_plain_demo_refuses_scales_where_its_story_cannot_happen(scale: str, message: str) -> None:
    """A --scale too small for the story, or so large the demo never ends, is a usage error."""
    result = run_plain_executus("demo", "--scale", scale, timeout=10)
    assert result.returncode == 2, result.stdout
    assert result.stderr.endswith(f"executus demo: error: {message}\n")
    assert result.stdout == ""


def test_plain_demo_help_speaks_to_the_user() -> None:
    """`demo --help` says what the demo shows and the --scale range, not a docstring."""
    result = run_plain_executus("demo", "--help", timeout=10)
    assert result.returncode == 0, result.stderr
    assert "returns the exit code" not in result.stdout
    assert "``" not in result.stdout
    assert "about 5 s x --scale" in result.stdout
    assert "time scale, 0.1 to 2 (default 1.0)" in result.stdout


def _row(text: str, user: str) -> list[str]:
    """The cells of ``user``'s row of the wait table."""
    [line] = [ln for ln in text.splitlines() if ln.startswith(f"  {user} ")]
    return line.split()


def test_plain_demo_at_its_smallest_scale_tells_its_story_and_its_summary_adds_up() -> None:
    """At --scale 0.1 the story happens, and the summary's figures are the table's."""
    out = io.StringIO()
    assert run_demo(["--scale", "0.1"], out=out) == 0
    text = out.getvalue()
    assert "urgent job (priority 10) preempts batch-" in text
    assert "mallory's request with a max_wait was refused (#" in text
    assert "carol, new to the lane, asked with the same max_wait and was let in" in text
    assert "one more, with max_wait=0.15s: refused" in text
    # Let in with a max_wait, carol did not wait longer than it.
    assert float(_row(text, "carol")[3]) <= 0.15
    # "alice and bob waited at most X (under FIFO: Y)": the worst of both rows.
    alice, bob = _row(text, "alice"), _row(text, "bob")
    fair = max(float(alice[3]), float(bob[3]))
    fifo = max(float(alice[5]), float(bob[5]))
    assert fair < fifo
    assert f"yet alice and bob waited at most {fair:.2f}s (under FIFO: {fifo:.2f}s," in text
    assert "; 1 batch job was requeued and still finished (2/2 batch jobs done)." in text


# -- the time budget -------------------------------------------------------------------


def test_local_demo_traffic_stops_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The traffic of `executus demo --seconds 1` ends at 1 s: the admin's 2.5 s pause is cut."""
    overrun: list[float] = []
    traffic = _demo._traffic

    async def timed(*args: Any) -> Any:
        handles = await traffic(*args)
        overrun.append(time.monotonic() - args[-1])
        return handles

    monkeypatch.setattr(_demo, "_traffic", timed)
    settings = DemoSettings(seconds=1.0, users=2, policy="fair")
    assert run_local_demo(settings, Console(file=io.StringIO(), width=120)) == 0
    [late] = overrun
    assert late < 0.5


@pytest.mark.redis
async def test_redis_demo_worker_stops_its_traffic_at_the_deadline(
    redis_server: RedisServer, namespace: str
) -> None:
    """A worker of 8 ends within ~1 s of its 0.5 s of traffic, not after an 8 s batch pause."""
    cfg = {
        "index": 0,
        "url": redis_server.url,
        "cluster": False,
        "namespace": namespace,
        "lane": "demo-t",
        "max_concurrent": 2,
        "policy": "fair",
        "seconds": 0.5,
        "users": 1,
        "seed": 1,
        "counter": f"{namespace}-demo:demo-t:live",
        "processes": 8,
    }
    start = time.monotonic()
    result = await asyncio.wait_for(_worker._run(cfg), timeout=20)
    assert time.monotonic() - start < 3.0
    assert result["peak"] <= 2
    client = redis.Redis.from_url(redis_server.url)
    try:
        for key in client.scan_iter(match=f"*{namespace}*"):
            client.delete(key)
    finally:
        client.close()


# -- Ctrl-C during the Redis demo's clean-up --------------------------------------------

# Runs the command, pausing (until ``go`` exists) at one step of the clean-up:
# ``kill`` (ending the first worker) or ``cleanup`` (deleting the lane's keys).
_PAUSING = """
import os, subprocess, sys, time
from pathlib import Path
from executus.cli import _redis_demo, main

marks = Path(os.environ["DEMO_MARKS"])
step = os.environ["DEMO_PAUSE_AT"]

def pause():
    (marks / step).touch()
    end = time.monotonic() + 20
    while not (marks / "go").exists() and time.monotonic() < end:
        time.sleep(0.01)

if step == "kill":
    kill = subprocess.Popen.kill
    def paused_kill(self):
        if not (marks / step).exists():
            pause()
        kill(self)
    subprocess.Popen.kill = paused_kill
else:
    cleanup = _redis_demo._cleanup
    def paused_cleanup(*args):
        pause()
        cleanup(*args)
    _redis_demo._cleanup = paused_cleanup
sys.exit(main(sys.argv[1:]))
"""


def _workers(pid: int) -> set[int]:
    """The live worker processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"_worker" in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(what: Any, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def keys_of(redis_server: RedisServer) -> Iterator[Any]:
    """``keys_of(namespace)``: the keys of the namespace in the session's server."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield lambda ns: sorted(client.scan_iter(match=f"*{ns}*"))
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("step", ["kill", "cleanup"])
def test_redis_demo_cleans_up_whatever_ctrl_cs_follow_the_first(
    redis_server: RedisServer, namespace: str, keys_of: Any, tmp_path: Path, step: str
) -> None:
    """Ctrl-C, then three more while the clean-up ends the workers or deletes the keys:
    every worker ends, no key is left, and the command says Aborted! (exit 1)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "DEMO_MARKS": str(marks),
        "DEMO_PAUSE_AT": step,
    }
    args = ["demo", "--redis", redis_server.url, "--processes", "2", "--seconds", "30",
            "--namespace", namespace]  # fmt: skip
    with (tmp_path / "out").open("w+") as out, (tmp_path / "err").open("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSING, *args], env=env, stdout=out, stderr=err
        )
        workers: set[int] = set()
        try:
            # Both workers joined the lane: its keys exist.
            _wait_for(lambda: len(workers.union(_workers(proc.pid))) == 2)
            workers.update(_workers(proc.pid))
            _wait_for(lambda: any(b":cfg" in k for k in keys_of(namespace)))
            proc.send_signal(signal.SIGINT)
            _wait_for(lambda: (marks / step).exists())
            for _ in range(3):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
            (marks / "go").touch()
            proc.wait(timeout=30)
            survivors = [pid for pid in workers if _alive(pid)]
        finally:
            for pid in [proc.pid, *workers]:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)
        err.seek(0)
        stderr = err.read()
    left = keys_of(namespace)
    if left:
        client = redis.Redis.from_url(redis_server.url)
        client.delete(*left)
        client.close()
    assert survivors == []
    assert left == []
    assert proc.returncode == 1, stderr
    assert re.search(r"\nAborted!\n$", stderr), stderr
