"""RedisLane against a redis-server frozen with SIGSTOP: it accepts connections but never
answers, so every wait for a reply must be bounded by the lane's own budgets (the retry
budget here: the default lease of 10 s gives 3 s, under the 5 s a round trip may take).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from executus import JobCancelled, JobState, LaneClosed, LaneUnavailable
from executus.redis import RedisLane

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

BUDGET = 3.0  # the retry budget of the default lease


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """``server`` stopped with SIGSTOP inside the block, woken with SIGCONT however the
    block ends."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def test_submit_and_stats_give_up_within_the_retry_budget(
    private_redis: RedisServer, namespace: str
) -> None:
    """With Redis frozen, submit and stats raise LaneUnavailable after the retry budget,
    saying Redis did not answer, not after a round trip's longer timeout."""
    lane = RedisLane("lane", private_redis.url, 1, namespace=namespace)
    message = "lane 'lane': Redis is unreachable (it did not answer within 3.0s)"
    try:
        await lane.stats()
        with frozen(private_redis):
            for call in (lambda: lane.submit(asyncio.Event().wait), lane.stats):
                started = time.monotonic()
                with pytest.raises(LaneUnavailable) as e:
                    await call()
                assert time.monotonic() - started < BUDGET + 1.5
                assert str(e.value) == message
    finally:
        await lane.aclose(drain=False)


async def test_close_without_drain_returns_within_two_retry_budgets(
    private_redis: RedisServer, namespace: str
) -> None:
    """With Redis frozen, aclose(drain=False) ends the queued and the running job and
    returns within about two retry budgets, each wait bounded by the budget left."""
    lane = RedisLane("lane", private_redis.url, 1, namespace=namespace)
    try:
        running = await lane.submit(asyncio.Event().wait)
        queued = await lane.submit(asyncio.Event().wait)
        assert (running.state, queued.state) == (JobState.RUNNING, JobState.QUEUED)
        with frozen(private_redis):
            started = time.monotonic()
            await lane.aclose(drain=False)
            assert time.monotonic() - started < 2 * BUDGET + 2.0
        assert isinstance(running.exception(), JobCancelled)
        assert isinstance(queued.exception(), LaneClosed)
    finally:
        await lane.aclose(drain=False)


async def test_draining_close_returns_within_a_retry_budget_of_its_last_jobs_end(
    private_redis: RedisServer, namespace: str
) -> None:
    """With Redis frozen, a draining aclose() returns within about one retry budget of
    the end of its last job (which ends within the budget, its release unanswered)."""
    lane = RedisLane("lane", private_redis.url, 1, namespace=namespace)
    try:
        handle = await lane.submit(lambda: asyncio.sleep(0.5, "done"))
        assert handle.state is JobState.RUNNING
        with frozen(private_redis):

            async def ended() -> float:
                await handle
                return time.monotonic()

            waiter = asyncio.create_task(ended())
            await lane.aclose()
            closed = time.monotonic()
        assert handle.result() == "done"
        assert closed - await waiter < BUDGET + 2.0
    finally:
        await lane.aclose(drain=False)
