"""One process of ``executus demo --redis``: run demo traffic against a shared RedisLane.

Run as ``python -m executus.cli._worker`` with the settings as JSON on stdin (or as the
only argument); prints one JSON line with what it saw when done. Every job counts itself
in a shared Redis counter while it runs (``INCR`` after its slot was granted, ``DECR``
before the slot is released), so the highest value seen is a lower bound on the jobs
holding a slot at one instant, lane-wide: if it ever exceeds ``max_concurrent``, the
limit did not hold.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .._errors import JobPreempted, LaneBusy
from .._job import JobHandle
from .._policies import Preemption
from ..redis import RedisLane
from ._demo import make_policy, users_for

_DRAIN = 1.0  # seconds a worker drains its queue after the traffic, at most


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(int(cfg["seed"]) * 1000 + int(cfg["index"]))
    seconds = float(cfg["seconds"])
    counter = str(cfg["counter"])
    client: aioredis.Redis | RedisCluster
    if cfg.get("cluster"):
        client = RedisCluster.from_url(str(cfg["url"]), socket_timeout=10)
    else:
        client = aioredis.Redis.from_url(str(cfg["url"]), socket_timeout=10)
    lane = RedisLane(
        str(cfg["lane"]),
        client,
        int(cfg["max_concurrent"]),
        policy=make_policy(str(cfg["policy"])),
        preemption=Preemption(min_runtime=0.5, requeue=True),
        lease=5.0,
        namespace=str(cfg["namespace"]),
    )
    peak = 0
    keys: dict[str, dict[str, Any]] = {}
    handles: list[tuple[str, JobHandle[None]]] = []

    def row(key: str) -> dict[str, Any]:
        return keys.setdefault(key, {"waits": [], "done": 0, "preempted": 0, "refused": 0})

    async def job(duration: float) -> None:
        nonlocal peak
        live = int(await client.incr(counter))
        peak = max(peak, live)
        try:
            await asyncio.sleep(duration)
        finally:
            await client.decr(counter)

    async def submit(key: str, duration: float, **options: Any) -> None:
        max_wait = 2.0 if rng.random() < 0.25 and key not in ("batch", "admin") else None
        try:
            handle = await lane.submit(lambda: job(duration), key=key, max_wait=max_wait, **options)
        except LaneBusy:
            row(key)["refused"] += 1
            return
        handles.append((key, handle))

    deadline = time.monotonic() + seconds

    async def pause(duration: float) -> bool:
        """Sleep ``duration``, or until the deadline if sooner; whether traffic goes on.

        (The admin's pause is 3 s per process: unclipped, it would outlast the traffic.)
        """
        await asyncio.sleep(max(0.0, min(duration, deadline - time.monotonic())))
        return time.monotonic() < deadline

    async def user(name: str) -> None:
        # The demo's traffic, split over the processes.
        rate = (4.0 if name == "mallory" else 1.0) / int(cfg["processes"])
        sent = False  # every user sends once, however short the traffic: at its end at the latest
        while await pause(rng.expovariate(rate)) or not sent:
            sent = True
            await submit(name, rng.uniform(0.1, 0.4))

    async def batch() -> None:
        while time.monotonic() < deadline:
            await submit("batch", 1.0, preemptible=True)
            await pause(1.0 * int(cfg["processes"]))

    async def admin() -> None:
        if not await pause(rng.uniform(0.5, 1.5)):
            return
        while True:
            await submit("admin", 0.2, priority=10)
            if not await pause(3.0 * int(cfg["processes"])):
                return

    try:
        await lane.stats()  # attach (stores the lane's settings) before traffic starts
        users = users_for(int(cfg["users"]))
        await asyncio.gather(*(user(u) for u in users), batch(), admin())
        try:
            # Drain briefly, then stop what is left: the demo ends soon after --seconds.
            await asyncio.wait_for(lane.aclose(drain=True), timeout=_DRAIN)
        except TimeoutError:
            await lane.aclose(drain=False)
        for key, handle in handles:
            r = row(key)
            try:
                await handle
                r["done"] += 1
            except JobPreempted:
                r["preempted"] += 1
            except Exception:  # cancelled at the hard close: not counted as done
                continue
            r["preempted"] += handle.preemptions
            if handle.started_at is not None:
                r["waits"].append((handle.started_at - handle.submitted_at).total_seconds())
    finally:
        if not lane.closed:
            await lane.aclose(drain=False)
        await client.aclose()
    return {"index": cfg["index"], "peak": peak, "keys": keys}


def main() -> int:
    """Run one worker; its settings are JSON on stdin (or the only argument)."""
    cfg = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    result = asyncio.run(_run(cfg))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
