"""The test servers end with the test run that started them, however it ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.redis.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for a test run: it starts a server with the tests' helper, says so, and
# waits to be killed.
RUN = """
import sys, time
from pathlib import Path
from tests.redis.helpers import RedisServer
server = RedisServer(int(sys.argv[1]), Path(sys.argv[2]))
server.start()
print("up", flush=True)
time.sleep(60)
"""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_server_dies_with_a_run_killed_outright(tmp_path: Path) -> None:
    """A run killed with SIGKILL (no fixture teardown) takes its redis-server with it."""
    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, str(port), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == b"up\n"
        assert _accepts(port)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        if run.stdout is not None:
            run.stdout.close()
    deadline = time.monotonic() + 10
    while _accepts(port):
        assert time.monotonic() < deadline, f"the server on port {port} outlived its run"
        time.sleep(0.05)
