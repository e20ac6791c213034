"""The ``executus`` command at its edges: odd numbers, odd URLs, large worker reports."""

from __future__ import annotations

import io
import json
import sys
import time
import types
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rich.console import Console

from executus._redis.keys import LaneKeys
from executus.cli import _redis_demo, cli
from executus.cli._app import safe_url
from executus.cli._demo import DemoSettings
from executus.cli._redis_demo import RedisDemo, run_redis_demo
from executus.cli._top import read_lane, render_lanes
from tests.redis.helpers import RedisServer


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["top", "--interval", "nan"], "--interval"),
        (["top", "--interval", "inf"], "--interval"),
        (["top", "--interval", "1e300"], "--interval"),
        (["demo", "--seconds", "nan"], "--seconds"),
    ],
)
def test_numbers_that_are_not_finite_are_usage_errors(args: list[str], option: str) -> None:
    """nan, inf and absurd durations are refused as usage errors (exit 2), before any I/O."""
    result = CliRunner().invoke(cli, [*args, "--redis", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for '{option}': " in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("port", ["notaport", "99999"])
def test_a_bad_port_in_a_url_with_a_password_is_one_line(port: str) -> None:
    """A URL with a password and a bad port: one masked 'bad Redis URL' line, exit 1."""
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    result = CliRunner().invoke(cli, ["top", "--once", "--redis", url])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: bad Redis URL ")
    assert result.stderr.count("\n") == 1
    assert "secret" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_masked_ipv6_host_keeps_its_brackets() -> None:
    """Masking the password of a URL with an IPv6 host keeps the host in brackets."""
    assert safe_url("redis://u:pw@[::1]:6380/0") == "redis://u:***@[::1]:6380/0"


@pytest.mark.timeout(10)
def test_redis_demo_reads_a_worker_report_larger_than_a_pipe(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A worker whose final report exceeds a pipe buffer still finishes and is merged."""
    report = {
        "index": 0,
        "peak": 1,
        "keys": {"alice": {"waits": [0.123456789] * 30_000, "done": 30_000, "preempted": 0,
                           "refused": 0}},
    }  # fmt: skip
    data = tmp_path / "report.json"
    data.write_text(json.dumps(report))
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(data)!r}).read() + '\\n')\n"
    )
    code, text = _demo_with_fake_worker(fake, 0.2, monkeypatch, redis_server, namespace)
    assert code == 0, text
    assert "1/1 processes finished; at most 1 jobs ran at once" in text
    assert "30000" in text


def _demo_with_fake_worker(
    fake: Path,
    seconds: float,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    namespace: str,
) -> tuple[int, str]:
    """Run the Redis demo (one process) with ``fake`` as the worker's interpreter."""
    fake.chmod(0o755)
    monkeypatch.setattr(_redis_demo, "sys", types.SimpleNamespace(executable=str(fake)))
    out = io.StringIO()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        code = run_redis_demo(
            DemoSettings(seconds=seconds, users=1, policy="fair"),
            RedisDemo(redis_server.url, namespace, 1),
            Console(file=out, width=120),
            client,
        )
    finally:
        client.close()
    return code, out.getvalue()


class _FastTime:
    """``time`` for the demo's parent with a monotonic clock running 400 times fast."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def monotonic(self) -> float:
        return self._start + (time.monotonic() - self._start) * 400

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


@pytest.mark.timeout(10)
def test_redis_demo_waits_for_workers_draining_their_queue(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A worker slow to report after its traffic is waited for, within the parent's
    allowance (traffic, then as long again, at least 5 s, plus 60 s)."""
    report = {"index": 0, "peak": 1, "keys": {}}
    fake = tmp_path / "fake-python"
    # 2.4 s real = 960 s on the parent's fast clock: past 600 s of traffic + 60 s, within
    # the parent's allowance of 600 s more.
    fake.write_text(
        f"#!{sys.executable}\nimport time\ntime.sleep(2.4)\nprint({json.dumps(report)!r})\n"
    )
    monkeypatch.setattr(_redis_demo, "time", _FastTime())
    code, text = _demo_with_fake_worker(fake, 600, monkeypatch, redis_server, namespace)
    assert code == 0, text
    assert "1/1 processes finished" in text


def _write_lane(client: redis.Redis, namespace: str, running: list[str], queued: list[str]) -> None:
    """Store lane 'gpu' as a RedisLane keeps it: one running job per entry of ``running``
    (its key; leases in that order) and one queued job per entry of ``queued``."""
    keys = LaneKeys(namespace, "gpu")
    sec, usec = client.time()
    now = int(sec) * 1000 + int(usec) // 1000
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.cfg, mapping={"v": 1, "max": len(running) or 1, "pol": "fifo", "pon": 0})
    for i, key in enumerate(running):
        pipe.zadd(keys.prefix + "hold", {f"r{i}": now + 600_000 + i})
        pipe.hset(keys.job(f"r{i}"), "ek", "=" + key)
    for i, key in enumerate(queued):
        pipe.zadd(keys.prefix + "qt", {f"q{i}": now - 1000 + i})
        pipe.hset(keys.job(f"q{i}"), "ek", "=" + key)
    pipe.execute()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("queued", "note"),
    [
        ([], "keys of the first 1000 running jobs"),
        (["carol"] * 1001, "keys of the first 1000 running and 1000 queued jobs"),
    ],
)
def test_top_says_when_more_than_1000_running_jobs_leave_keys_uncounted(
    redis_server: RedisServer, namespace: str, queued: list[str], note: str
) -> None:
    """With over 1000 running jobs, the by-key counts are marked truncated and the note says so."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        _write_lane(client, namespace, ["alice"] * 700 + ["bob"] * 500, queued)
        snap = read_lane(client, namespace, "gpu")
    finally:
        client.close()
    assert snap is not None
    assert (snap.running, snap.queued, snap.keys_truncated) == (1200, len(queued), True)
    expected = {"alice": (700, 0), "bob": (300, 0)}  # bob's last 200 leases are not read
    if queued:
        expected["carol"] = (0, 1000)
    assert {kl.key: (kl.running, kl.queued) for kl in snap.keys} == expected
    out = io.StringIO()
    Console(file=out, width=200).print(render_lanes([snap], title="top"))
    [row] = [line for line in out.getvalue().splitlines() if "keys of the first" in line]
    assert row.split() == ["gpu", *f"({note})".split()]


@pytest.mark.timeout(10)
def test_redis_demo_shows_a_worker_error_as_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A worker that fails with brackets in its error (``[/x]``) is reported as written,
    not parsed as markup (which crashed the report)."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('boom [/x] [bold]\\n')\nsys.exit(3)\n"
    )
    code, text = _demo_with_fake_worker(fake, 0.2, monkeypatch, redis_server, namespace)
    assert code == 1, text
    assert "exited with 3: boom [/x] [bold]" in text
