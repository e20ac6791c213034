"""Helpers for the conformance suite: one lane type, bounded waits, outcome capture."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from executus import JobHandle, Lane, LaneStats
from executus.redis import RedisLane

AnyLane: TypeAlias = Lane | RedisLane


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (polling every millisecond) until ``predicate()`` holds; fail after ``within``
    seconds.

    A RedisLane learns of grants, preemption requests and remote cancels over the
    network, so the tests wait for the state they expect instead of counting loop steps.
    """
    try:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - the state changes in other tasks
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within}s") from None


async def stats_until(
    lane: AnyLane, check: Callable[[LaneStats], bool], within: float = 5.0
) -> None:
    """Wait until ``check(await lane.stats())`` holds; fail after ``within`` seconds.

    A RedisLane finishes some steps in the background (the cancel of a cancelled
    ``run()``, the release of a cancelled job), so the tests wait for the figures.
    """
    try:
        async with asyncio.timeout(within):
            while not check(await lane.stats()):  # noqa: ASYNC110 - figures live in Redis
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"stats never matched: {await lane.stats()}") from None


async def refresh(lane: AnyLane) -> None:
    """Bring cached positions and ETAs up to date (a no-op for the in-process Lane).

    ``Lane`` computes ``handle.position`` and ``handle.eta`` on every read; ``RedisLane``
    reads them without I/O from its last submit reply or heartbeat, so after other jobs
    arrived or left the test asks it to refresh before reading them.
    """
    if isinstance(lane, RedisLane):
        await lane.refresh()


async def outcome(handle: JobHandle[Any]) -> Any:
    """Await a handle (for ``create_task``: a handle is awaitable, not a coroutine)."""
    return await handle


def recorder(
    log: list[str], name: str, gate: asyncio.Event | None = None
) -> Callable[[], Awaitable[str]]:
    """A job that appends ``name`` to ``log`` when it starts, waits for ``gate`` (if
    given), and returns ``name``."""

    async def body() -> str:
        log.append(name)
        if gate is not None:
            await gate.wait()
        return name

    return body
