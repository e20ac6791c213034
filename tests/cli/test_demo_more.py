"""``executus demo --redis``: what its worker processes expose, run for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.redis.helpers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> dict[int, bytes]:
    """The command lines of the live child processes of ``pid`` (from /proc)."""
    found: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_redis_demo_workers_do_not_show_the_password_in_their_command_line(
    redis_server: RedisServer, namespace: str
) -> None:
    """The password of the --redis URL never appears in a worker process's command line
    (readable by every local user), and the workers still reach Redis with it."""
    secret = "s3cret-pw-for-the-demo"
    # The server's default user has no password, so it accepts any: the URL still works.
    url = f"redis://default:{secret}@127.0.0.1:{redis_server.port}/0"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "executus", "demo", "--redis", url, "--processes", "2",
         "--seconds", "1.5", "--namespace", namespace],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen: dict[int, bytes] = {}
    try:
        while proc.poll() is None and len(seen) < 2:
            seen.update((pid, cmd) for pid, cmd in _children(proc.pid).items() if b"_worker" in cmd)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(seen) == 2, (seen, out, err)
    for cmd in seen.values():
        assert secret.encode() not in cmd, cmd
    assert proc.returncode == 0, err
    assert "2/2 processes finished" in out
    assert secret not in out + err
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match=f"*{namespace}*")) == []
    finally:
        client.close()
