"""Shared fixtures."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from executus.testing import ManualClock

# A run started in the background of a shell without job control inherits SIGINT
# ignored, and so would every command the tests start: the Ctrl-C tests could not
# deliver one. A Python handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a private redis-server on a free port (skipped without the backend or
    the server binary)."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    if shutil.which("redis-server") is None:  # pragma: no cover - depends on the machine
        pytest.skip("redis-server is not installed")
    from tests.redis.conftest import running_server

    with running_server("redis", tmp_path) as server:
        yield server.url
