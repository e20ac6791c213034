"""Fixtures for the Redis tests: a private redis-server per session, a TCP proxy, a
local Redis Cluster.

Nothing here touches a Redis the machine may already run: every server is started on a
free port in a temporary directory, without persistence, and stopped afterwards.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .helpers import LocalCluster, RedisServer, TcpProxy


def need_redis_server() -> None:
    """Skip the test when the redis-server binary is not installed."""
    if shutil.which("redis-server") is None:  # pragma: no cover - depends on the machine
        pytest.skip("redis-server is not installed")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session, on a free port."""
    need_redis_server()
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (for tests that restart or break it)."""
    need_redis_server()
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the session's server, whose connections can be cut."""
    p = TcpProxy("127.0.0.1", redis_server.port)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster for the whole session: 3 masters (made with ``redis-cli
    --cluster create``) and a replica of the first, on free ports; stopped afterwards."""
    need_redis_server()
    if shutil.which("redis-cli") is None:  # pragma: no cover - depends on the machine
        pytest.skip("redis-cli is not installed")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), free_port, replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
