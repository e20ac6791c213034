"""Fixtures for the lane conformance suite: every test runs on ``Lane`` and ``RedisLane``.

``make_lane`` is parametrised over the backends (ids ``memory``, ``redis`` and
``valkey``: ``RedisLane`` on Redis and on Valkey); the server runs are marked ``redis``
and use the session's redis-server or valkey-server of the Redis tests, started on a free
port (never a server the machine may already run), with a fresh key namespace per test so
tests cannot see each other's lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from executus import Lane, Preemption, QueuePolicy
from executus.redis import RedisLane
from tests.redis.conftest import session_redis as session_redis
from tests.redis.conftest import session_valkey as session_valkey
from tests.redis.helpers import RedisServer

from .helpers import AnyLane

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("valkey", id="valkey", marks=pytest.mark.redis),
]


class MakeLane(Protocol):
    """``await make_lane(name, max_concurrent, policy=..., preemption=..., eta_window=...)``."""

    async def __call__(
        self,
        name: str = "x",
        max_concurrent: int = 1,
        *,
        policy: QueuePolicy | None = None,
        preemption: Preemption | None = None,
        eta_window: int | None = None,
    ) -> AnyLane: ...


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``"memory"`` (Lane), ``"redis"`` (RedisLane on Redis) or
    ``"valkey"`` (RedisLane on Valkey)."""
    name: str = request.param
    return name


@pytest.fixture
async def make_lane(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeLane]:
    """A factory of lanes of the backend under test; every lane made is closed
    (``aclose(drain=False)``) at teardown."""
    made: list[AnyLane] = []
    url = ""
    namespace = f"c{uuid.uuid4().hex[:12]}"
    if backend != "memory":
        server: RedisServer = request.getfixturevalue(f"session_{backend}")
        url = server.url

    async def make(
        name: str = "x",
        max_concurrent: int = 1,
        *,
        policy: QueuePolicy | None = None,
        preemption: Preemption | None = None,
        eta_window: int | None = None,
    ) -> AnyLane:
        lane: AnyLane
        if backend == "memory":
            lane = Lane(
                name,
                max_concurrent,
                policy=policy,
                preemption=preemption,
                eta_window=16 if eta_window is None else eta_window,
            )
        else:
            lane = RedisLane(
                name,
                url,
                max_concurrent,
                policy=policy,
                preemption=preemption,
                eta_window=eta_window,
                namespace=namespace,
            )
        made.append(lane)
        return lane

    yield make
    for lane in made:
        # A test that fails mid-way must not hang the teardown either.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await lane.aclose(drain=False)
