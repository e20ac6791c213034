"""A RedisLane client left open when its event loop shuts down (``asyncio.run``
returning) closes as ``aclose(drain=False)`` does: every local job ends, its slots are
free at once for other clients, and nothing is left pending or unclosed."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from typing import Any

import pytest

from executus import JobCancelled, JobHandle, JobState, LaneClosed
from executus.redis import RedisLane

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def _forever() -> None:
    await asyncio.sleep(3600)


def test_a_client_left_open_ends_its_jobs_and_frees_its_slots(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its jobs end CANCELLED, no task is destroyed pending, no connection is left
    open, and the next client gets the slot at once (not after a lease)."""
    handles: list[JobHandle[Any]] = []

    async def first() -> None:
        lane = RedisLane("gpu", redis_url, max_concurrent=1, lease=30.0, namespace="shut")
        handles.extend([await lane.submit(_forever) for _ in range(4)])
        await asyncio.sleep(0.3)  # the first job runs, the rest wait

    with (
        caplog.at_level(logging.ERROR, logger="asyncio"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(first())
        gc.collect()
    assert [r.getMessage() for r in caplog.records] == []
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [h.state for h in handles] == [JobState.CANCELLED] * 4
    # The running job was cancelled; queued ones end as in a closing client (one may
    # have started as the runner cancelled the first, and was cancelled then).
    assert isinstance(handles[0].exception(), JobCancelled)
    assert all(isinstance(h.exception(), JobCancelled | LaneClosed) for h in handles)

    async def second() -> tuple[str, int, int]:
        async with RedisLane("gpu", redis_url, lease=30.0, namespace="shut") as lane:
            async with asyncio.timeout(10):  # a held slot would wait for its 30 s lease
                value = await lane.run(lambda: asyncio.sleep(0, "next client"))
            stats = await lane.stats()
            return value, stats.running, stats.queued

    assert asyncio.run(second()) == ("next client", 0, 0)


def test_a_client_left_open_while_redis_is_down_does_not_hold_the_loop_for_a_lease(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis down, asyncio.run returns within a few retry budgets, not after the
    lease; the client's jobs end and no task is destroyed pending."""
    handles: list[JobHandle[Any]] = []

    async def main() -> None:
        lane = RedisLane("gpu", private_redis.url, max_concurrent=1, lease=30.0)  # budget 3 s
        handles.extend([await lane.submit(_forever) for _ in range(2)])
        await asyncio.sleep(0.3)  # the first job runs, the second waits
        private_redis.stop()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        began = time.monotonic()
        asyncio.run(main())
        took = time.monotonic() - began
        gc.collect()
    assert took < 20  # waiting for the lease took over 30 s
    assert [r.getMessage() for r in caplog.records] == []
    assert [h.state for h in handles] == [JobState.CANCELLED] * 2
