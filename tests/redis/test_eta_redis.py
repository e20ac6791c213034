"""RedisLane's wait estimate is the in-process estimator, computed inside Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from executus import JobHandle, LaneBusy
from executus._eta import RuntimeWindow, estimate_wait
from executus._redis.keys import LaneKeys
from executus.redis import RedisLane
from tests.helpers import Gate, settle, value

from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

SLOTS = 3


def sleeper(seconds: float) -> Callable[[], Awaitable[object]]:
    """A job that runs for about ``seconds``."""

    async def body() -> object:
        await asyncio.sleep(seconds)
        return seconds

    return body


async def server_ms(admin: aioredis.Redis) -> int:
    """The server's clock in milliseconds, as the lane's scripts read it."""
    sec, usec = await admin.time()
    return int(sec) * 1000 + int(usec) // 1000


async def hget_int(admin: aioredis.Redis, key: str, field: str) -> int:
    """An integer field of a hash the lane keeps."""
    raw = await admin.hget(key, field)
    assert raw is not None, (key, field)
    return int(raw)


async def busy_eta(lane: RedisLane, admin: aioredis.Redis) -> tuple[int, float, int, int]:
    """Position and ETA of a submit refused by max_wait=0, with the server ms around it."""
    before = await server_ms(admin)
    with pytest.raises(LaneBusy) as info:
        await lane.submit(value(None), max_wait=0)
    after = await server_ms(admin)
    return info.value.position, info.value.eta, before, after


async def wait_running(gates: list[Gate]) -> None:
    """Let the gated jobs begin (bounded)."""
    for _ in range(200):
        if all(g.running for g in gates):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the gated jobs did not start")


def python_range(
    position: int,
    slots: int,
    starts: list[int],
    window: RuntimeWindow,
    throughput: int,
    before: int,
    after: int,
) -> tuple[float, float]:
    """The least and greatest in-process estimate for any server ms in [before, after]."""
    figures = [
        estimate_wait(position, slots, [(now - st) / 1000 for st in starts], window, throughput)
        for now in range(before, after + 1)
    ]
    return min(figures), max(figures)


async def test_eta_matches_the_in_process_estimator(
    redis_server: RedisServer, namespace: str, admin: aioredis.Redis
) -> None:
    """ETAs of queued positions equal estimate_wait over the lane's runs and elapsed times."""
    keys = LaneKeys(namespace, "lane")
    lane = RedisLane("lane", redis_server.url, SLOTS, namespace=namespace, eta_window=64)
    try:
        # Runs of 10, 20, 30 and 40 ms: the window keeps them all, then shrinks to 4 so
        # the shape comes from the ratio history (11 ratios > 4 runs).
        done = [await lane.submit(sleeper(0.01 * (1 + i % 4))) for i in range(12)]
        await asyncio.gather(*done)
        await lane.set_eta_window(4)
        runs = [float(s) for s in reversed(await admin.lrange(keys.prefix + "rt", 0, -1))]
        assert len(runs) == 12
        window = RuntimeWindow(64)
        for s in runs:
            window.add(s)
        window.resize(4)
        ratios = sorted(float(r) for r in await admin.lrange(keys.prefix + "rh", 0, -1))
        values, _, _ = window.shape()
        assert ratios == pytest.approx(values, rel=1e-9)

        gates = [Gate() for _ in range(SLOTS)]
        held = [await lane.submit(g) for g in gates]
        await wait_running(gates)
        starts = [await hget_int(admin, keys.job(h.id), "st") for h in held]
        throughput = int((await lane.stats()).throughput_1m)

        queued: list[JobHandle[object]] = []
        for position in (1, 2, 3, 8):
            while len(queued) < position - 1:
                queued.append(await lane.submit(value(None)))
            pos, eta, before, after = await busy_eta(lane, admin)
            assert pos == position
            lo, hi = python_range(position, SLOTS, starts, window, throughput, before, after)
            assert lo - 1e-6 <= eta <= hi + 1e-6, (position, eta, lo, hi)
        # A lowered limit: the first slot to free up goes to no queued job.
        await lane.set_max_concurrent(SLOTS - 1)
        pos, eta, before, after = await busy_eta(lane, admin)
        lo, hi = python_range(pos, SLOTS - 1, starts, window, throughput, before, after)
        assert lo - 1e-6 <= eta <= hi + 1e-6, (pos, eta, lo, hi)
        for g in gates:
            g.release()
        await asyncio.gather(*held, *queued)
    finally:
        await lane.aclose(drain=False)


async def test_eta_reads_the_sorted_history_when_the_in_process_estimator_does(
    redis_server: RedisServer, namespace: str, admin: aioredis.Redis
) -> None:
    """After one new ratio of 40 (under 1/16), both backends keep the old sorted history."""
    keys = LaneKeys(namespace, "stale")
    lane = RedisLane("stale", redis_server.url, SLOTS, namespace=namespace, eta_window=64)
    try:
        for i in range(41):  # one at a time: nothing waits, so no estimate is made
            await lane.run(sleeper(0.001 * (1 + i % 4)))
        await lane.set_eta_window(4)
        runs = [float(s) for s in reversed(await admin.lrange(keys.prefix + "rt", 0, -1))]
        assert len(runs) == 41
        gates = [Gate() for _ in range(SLOTS)]
        held = [await lane.submit(g) for g in gates]
        await wait_running(gates)
        await busy_eta(lane, admin)  # sorts the history (40 ratios)
        await asyncio.sleep(0.05)
        gates[0].release()
        await held[0]  # a long run: its ratio is far above the others
        late = Gate()
        held[0] = await lane.submit(late)
        await wait_running([late])
        newest = await admin.lindex(keys.prefix + "rt", 0)
        assert newest is not None
        runs.append(float(newest))
        window = RuntimeWindow(64)
        for s in runs[:41]:
            window.add(s)
        window.resize(4)
        window.shape()  # the sorted copy the first estimate made
        window.add(runs[41])
        fresh = RuntimeWindow(64)
        for s in runs[:41]:
            fresh.add(s)
        fresh.resize(4)
        fresh.add(runs[41])

        starts = [await hget_int(admin, keys.job(h.id), "st") for h in held]
        throughput = int((await lane.stats()).throughput_1m)
        pos, eta, before, after = await busy_eta(lane, admin)
        lo, hi = python_range(pos, SLOTS, starts, window, throughput, before, after)
        assert lo - 1e-6 <= eta <= hi + 1e-6, (eta, lo, hi)
        lo, hi = python_range(pos, SLOTS, starts, fresh, throughput, before, after)
        assert not lo - 1e-6 <= eta <= hi + 1e-6, "the new ratio should change the estimate"
        for g in (*gates[1:], late):
            g.release()
        await asyncio.gather(*held)
    finally:
        await lane.aclose(drain=False)


async def test_eta_without_run_times_extrapolates_a_young_lane_throughput(
    redis_server: RedisServer, namespace: str, admin: aioredis.Redis
) -> None:
    """No run time yet: one run ended in the lane's first seconds counts as 60 per minute."""
    keys = LaneKeys(namespace, "lane")
    lane = RedisLane("lane", redis_server.url, 1, namespace=namespace)
    try:
        first = Gate()
        h = await lane.submit(first)
        await wait_running([first])
        assert await h.cancel()  # a run that ended, without a run time
        assert (await lane.stats()).throughput_1m == 1
        assert await admin.llen(keys.prefix + "rt") == 0
        gate = Gate()
        running = await lane.submit(gate)
        await settle()
        t0 = await hget_int(admin, keys.cfg, "t0")
        pos, eta, before, after = await busy_eta(lane, admin)
        assert pos == 1
        expected = set()
        for now in range(before, after + 1):
            span = min(60.0, max(1.0, (now - t0) / 1000))
            expected.add(60.0 / round(60.0 / span))
        assert any(eta == pytest.approx(e, rel=1e-9) for e in expected), (eta, expected)
        assert eta < 60.0  # not one run per whole minute
        await wait_running([gate])
        gate.release()
        await running
    finally:
        await lane.aclose(drain=False)
