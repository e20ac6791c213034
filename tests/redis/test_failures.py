"""RedisLane under faults, with real processes and a real redis-server (every test also
runs on a real valkey-server).

Each test names the fault it injects: a SIGKILLed process, a SIGSTOPped one, a Redis
restart without persistence, cut connections, an unreachable server, damaged keys. An
interval-overlap checker on the machine's monotonic clock verifies the slot limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus import JobState, LaneUnavailable, Preemption, current_job
from executus.redis import RedisLane

from .helpers import BlocksOnce, Interval, RedisServer, TcpProxy, max_overlap, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(60)]

WORKER = str(Path(__file__).with_name("worker.py"))


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events a worker wrote (one JSON object per line)."""
    if not path.exists():
        return []
    lines = path.read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def intervals(events: list[dict[str, Any]], *, open_end: float | None = None) -> list[Interval]:
    """Pair start and end events by (job, fence); unended runs close at ``open_end``."""
    starts: dict[tuple[str, int], float] = {}
    out: list[Interval] = []
    for e in events:
        k = (e.get("job", ""), e.get("fence", 0))
        if e["ev"] == "start":
            starts[k] = e["t"]
        elif e["ev"] == "end" and k in starts:
            out.append(Interval(k[0], starts.pop(k), e["t"], k[1]))
    if open_end is not None:
        out += [Interval(j, t, open_end, f) for (j, f), t in starts.items()]
    return out


async def wait_for_event(path: Path, ev: str, limit: float = 20.0) -> dict[str, Any]:
    """Wait until the worker's log holds an event ``ev``; return it."""
    async with asyncio.timeout(limit):
        while True:  # another process writes the file: poll it
            for e in read_log(path):
                if e["ev"] == ev:
                    return e
            await asyncio.sleep(0.02)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Start worker processes; kill any still running at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    counter = iter(range(1000))

    def start(*args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"worker{next(counter)}.jsonl"
        proc = subprocess.Popen([sys.executable, WORKER, "--log", str(log), *args])
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            with_cont = proc.pid
            os.kill(with_cont, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("policy", ["fifo", "fair"])
async def test_processes_share_slots(
    policy: str,
    redis_server: RedisServer,
    namespace: str,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    """4 processes x 8 submitters: never more than max at once, each job ends once."""
    lane = RedisLane("lane", redis_server.url, 3, namespace=namespace, lease=2.0)
    await lane.stats()  # store max_concurrent=3 for the workers to adopt
    try:
        common = ["--url", redis_server.url, "--ns", namespace, "--policy", policy]
        workers = [spawn(*common, "--jobs", "6", "--duration", "0.005") for _ in range(4)]
        for proc, _ in workers:
            assert await asyncio.to_thread(proc.wait, 50) == 0
        events = [e for _, log in workers for e in read_log(log)]
        runs = intervals(events)
        jobs = [e["job"] for e in events if e["ev"] == "start"]
        assert len(jobs) == len(set(jobs)) == 4 * 8 * 6  # every job started exactly once
        assert all(e["outcome"] == "ok" for e in events if e["ev"] == "end")
        assert max_overlap(runs) <= 3
        if policy == "fifo":
            # Grants (fences) follow arrival (seq) order lane-wide.
            by_fence = sorted((e for e in events if e["ev"] == "start"), key=lambda e: e["fence"])
            # A job granted before its submit's reply was read logs its seq at its end.
            seq_of = {e["job"]: e["seq"] for e in events if e.get("seq") is not None}
            seqs = [seq_of[e["job"]] for e in by_fence]
            assert seqs == sorted(seqs)
        stats = await lane.stats()
        assert (stats.running, stats.queued, stats.succeeded) == (0, 0, 4 * 8 * 6)
    finally:
        await lane.aclose(drain=False)


async def test_sigkill_returns_slots_and_drops_queued_jobs(
    redis_server: RedisServer,
    namespace: str,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    """A SIGKILLed process's slots return after its lease; its queued jobs are dropped."""
    lane = RedisLane("lane", redis_server.url, 2, namespace=namespace, lease=1.0)
    await lane.stats()
    proc, log = spawn(
        "--url", redis_server.url, "--ns", namespace, "--lease", "1.0",
        "--mode", "hold", "--hold", "2", "--queue", "3",
    )  # fmt: skip
    ready = await wait_for_event(log, "ready")
    assert ready["queued"] == ["queued"] * 3
    mine = [await lane.submit(lambda: asyncio.sleep(0.01, "mine")) for _ in range(2)]
    assert [h.state for h in mine] == [JobState.QUEUED] * 2
    proc.kill()
    await asyncio.to_thread(proc.wait, 10)
    assert await asyncio.gather(*mine) == ["mine", "mine"]
    stats = await lane.stats()
    assert (stats.running, stats.queued) == (0, 0)
    assert stats.cancelled == 3  # the dead process's queued jobs, dropped
    assert stats.failed == 2  # its two runs, whose leases expired
    started = [e["job"] for e in read_log(log) if e["ev"] == "start"]
    assert len(started) == 2  # none of its queued jobs ran
    await lane.aclose()


async def test_sigstop_past_lease_loses_the_slot(
    redis_server: RedisServer,
    namespace: str,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    """A process frozen past its lease loses its slot; on waking it stops with LeaseLost."""
    lane = RedisLane("lane", redis_server.url, 1, namespace=namespace, lease=1.0)
    await lane.stats()
    proc, log = spawn(
        "--url", redis_server.url, "--ns", namespace, "--lease", "1.0",
        "--mode", "hold", "--hold", "1",
    )  # fmt: skip
    await wait_for_event(log, "ready")
    zombie = next(e for e in read_log(log) if e["ev"] == "start")
    release = asyncio.Event()

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        handle = await lane.submit(release.wait)
        await until(lambda: handle.state is JobState.RUNNING)  # the lane reclaimed the slot
        fence = int(lane._jobs[handle.id].fence or 0)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        outcome = await wait_for_event(log, "outcome")
        assert outcome["error"] == "LeaseLost"
        assert "lost its lease" in outcome["msg"]
        release.set()
        await handle
        assert await asyncio.to_thread(proc.wait, 10) == 0
        # This run holds the slot from its grant (its start in the lane, the same
        # monotonic clock as the other process's log), whenever its task first steps.
        assert handle._t_start is not None
        assert handle._t_end is not None
        mine = Interval("mine", handle._t_start, handle._t_end, fence)
        runs = [*intervals(read_log(log)), mine]
        assert fence > zombie["fence"]  # the fence tells the zombie's writes apart
        assert max_overlap(runs) == 2  # the documented zombie window...
        assert max_overlap(runs, exclude_fences=[zombie["fence"]]) <= 1  # ...and only it
    finally:
        await lane.aclose(drain=False)


async def test_redis_restart_without_persistence(
    private_redis: RedisServer, namespace: str
) -> None:
    """After SHUTDOWN NOSAVE and a restart, running jobs are re-registered and queued ones
    resubmitted in order; nothing runs twice and no waiter hangs."""
    a = RedisLane("lane", private_redis.url, 2, namespace=namespace, lease=2.0)
    b = RedisLane("lane", private_redis.url, namespace=namespace, lease=2.0)
    started: list[str] = []
    fences: dict[str, int] = {}
    gates: dict[str, asyncio.Event] = {}

    def job(name: str) -> Callable[[], Any]:
        gates[name] = asyncio.Event()

        async def run() -> str:
            ctx = current_job()
            assert ctx is not None
            rec = a._jobs.get(ctx.id) or b._jobs[ctx.id]
            started.append(name)
            fences[name] = int(rec.fence or 0)
            await gates[name].wait()
            return name

        return run

    handles = [await a.submit(job("run0")), await a.submit(job("run1"))]
    for name, lane in [("q0", a), ("q1", b), ("q2", a), ("q3", b)]:
        handles.append(await lane.submit(job(name)))
    await until(lambda: len(started) == 2)
    old_epoch = a._epoch
    await asyncio.to_thread(private_redis.restart)
    await until(lambda: a._epoch != old_epoch and b._epoch == a._epoch)
    stats = await b.stats()
    assert (stats.running, stats.queued, stats.max_concurrent) == (2, 4, 2)
    for name in ["run0", "run1", "q0", "q1", "q2", "q3"]:
        await until(lambda n=name: n in started)  # type: ignore[misc]
        gates[name].set()
    assert await asyncio.gather(*handles) == ["run0", "run1", "q0", "q1", "q2", "q3"]
    assert sorted(started) == sorted(set(started))  # each started once
    # granted (fences increase) in the original arrival order, across both clients
    assert sorted(started, key=fences.__getitem__) == ["run0", "run1", "q0", "q1", "q2", "q3"]
    await a.aclose()
    await b.aclose()


async def test_a_job_reregistered_after_a_restart_is_requeued_and_runs_again(
    private_redis: RedisServer, namespace: str
) -> None:
    """A job running across a Redis restart (re-registered by its client) that is then
    preempted with requeue is granted again and runs again, as before the restart."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    # A lease long enough that a slow restart does not end the running job (LeaseLost).
    a = RedisLane("lane", private_redis.url, 1, namespace=namespace, lease=5.0, preemption=pre)
    b = RedisLane("lane", private_redis.url, namespace=namespace, lease=5.0)
    victim = BlocksOnce()
    runs = victim.runs

    try:
        handle = await a.submit(victim, preemptible=True)
        await until(lambda: runs == [0])
        old_epoch = a._epoch
        await asyncio.to_thread(private_redis.restart)
        await until(lambda: a._epoch != old_epoch)
        assert (await a.stats()).running == 1  # re-registered
        # New grants (and preemptions) wait until every client could re-register.
        admin = aioredis.Redis.from_url(private_redis.url)
        try:
            rec = int(await admin.hget(f"{{{namespace}:lane}}:cfg", "rec") or 0)
            async with asyncio.timeout(15):
                while (await admin.time())[0] * 1000 <= rec:  # noqa: ASYNC110 - server clock
                    await asyncio.sleep(0.05)
        finally:
            await admin.aclose()
        urgent = await b.submit(lambda: asyncio.sleep(0, "urgent"), priority=1)
        async with asyncio.timeout(10):
            assert await urgent == "urgent"
            assert await handle == "again"
        assert (runs, handle.preemptions) == ([0, 1], 1)
    finally:
        await a.aclose(drain=False)
        await b.aclose(drain=False)


async def test_connection_cuts_lose_nothing(redis_server: RedisServer, namespace: str) -> None:
    """Connections cut again and again: no lost grant, no hang, each job runs once."""
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    lanes = [RedisLane("lane", proxy.url, 2, namespace=namespace, lease=3.0) for _ in range(2)]
    runs: list[Interval] = []
    starts: list[str] = []

    def job(name: str) -> Callable[[], Any]:
        async def run() -> str:
            starts.append(name)
            t0 = time.monotonic()
            await asyncio.sleep(0.003)
            runs.append(Interval(name, t0, time.monotonic()))
            return name

        return run

    async def submitter(lane: RedisLane, s: int) -> list[str]:
        return [await lane.run(job(f"{id(lane)}-{s}-{i}")) for i in range(15)]

    async def cutter() -> int:
        cuts = 0
        for _ in range(12):
            await asyncio.sleep(0.05)
            cuts += proxy.cut()
        return cuts

    try:
        results, cuts = await asyncio.gather(
            asyncio.gather(*(submitter(lane, s) for lane in lanes for s in range(3))),
            cutter(),
        )
        assert cuts > 0
        assert sum(len(r) for r in results) == 2 * 3 * 15
        assert len(starts) == len(set(starts)) == 2 * 3 * 15
        assert max_overlap(runs) <= 2
        stats = await lanes[0].stats()
        assert (stats.running, stats.queued) == (0, 0)
    finally:
        for lane in lanes:
            await lane.aclose(drain=False)
        await proxy.stop()


async def test_unreachable_redis_at_submit(redis_server: RedisServer, namespace: str) -> None:
    """Redis unreachable at submit: LaneUnavailable, and nothing is half-done."""
    from .conftest import free_port

    nowhere = RedisLane("lane", f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    with pytest.raises(LaneUnavailable, match=r"^lane 'lane': Redis is unreachable \("):
        await nowhere.submit(lambda: asyncio.sleep(0))
    await nowhere.aclose()

    proxy = TcpProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    lane = RedisLane("lane", proxy.url, 1, namespace=namespace, lease=3.0)
    try:
        await lane.run(lambda: asyncio.sleep(0))
        proxy.refusing = True
        proxy.cut()
        with pytest.raises(LaneUnavailable, match=r"^lane 'lane': Redis is unreachable \("):
            await lane.submit(lambda: asyncio.sleep(0), job_id="never")
        assert lane._jobs == {}
        proxy.refusing = False
        stats = await lane.stats()
        assert (stats.submitted, stats.queued, stats.running) == (1, 0, 0)
        assert await lane.run(lambda: asyncio.sleep(0, "again"), job_id="never") == "again"
    finally:
        await lane.aclose(drain=False)
        await proxy.stop()


async def test_damaged_keys_give_clear_errors(
    redis_server: RedisServer, namespace: str, admin: aioredis.Redis
) -> None:
    """Damaged lane keys raise LaneUnavailable naming the damage; the lane recovers
    once they are repaired, without a crash loop."""
    lane = RedisLane("lane", redis_server.url, 1, namespace=namespace, lease=2.0)
    await lane.stats()
    cfg = f"{{{namespace}:lane}}:cfg"
    await admin.hset(cfg, "max", "abc")
    with pytest.raises(LaneUnavailable, match=r"corrupt lane state: max abc"):
        await lane.submit(lambda: asyncio.sleep(0))
    await admin.hset(cfg, "max", "1")
    assert await lane.run(lambda: asyncio.sleep(0, "ok")) == "ok"

    wake = f"{{{namespace}:lane}}:wake:{lane.client_id}"
    await admin.set(wake, "not a list")  # the wake-up loop now fails: it backs off
    other = RedisLane("lane", redis_server.url, namespace=namespace, lease=2.0)
    gate = asyncio.Event()
    first = await other.submit(gate.wait)
    queued = await lane.submit(lambda: asyncio.sleep(0, "granted"))
    gate.set()
    assert await queued == "granted"  # the grant repaired the list and arrived
    await first

    saved = {str(k): str(v) for k, v in (await admin.hgetall(cfg)).items()}
    await admin.delete(cfg)
    await admin.set(cfg, "garbage")
    with pytest.raises(LaneUnavailable, match=r"WRONGTYPE"):
        await lane.stats()
    await admin.delete(cfg)
    for field, value in saved.items():
        await admin.hset(cfg, field, value)
    assert (await lane.stats()).max_concurrent == 1
    await other.aclose()
    await lane.aclose()
