"""RedisLane against a real redis-server: closing, slots and submits racing each other."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus import (
    DuplicateJob,
    FairShare,
    JobCancelled,
    JobHandle,
    JobState,
    LaneBusy,
    Preemption,
)
from executus.redis import RedisLane

from .helpers import RedisServer, TcpProxy, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def drop_lane_state(admin: aioredis.Redis, namespace: str) -> None:
    """Delete every key of the lane (as a flush, or a restart without persistence)."""
    keys = [k async for k in admin.scan_iter(match=f"[{{]{namespace}:lane}}:*")]
    await admin.delete(*keys)


@pytest.mark.parametrize("refusal", ["max_wait", "duplicate id"])
async def test_aclose_returns_when_a_submit_in_flight_is_refused(
    make_lane: LaneFactory, refusal: str
) -> None:
    """aclose() returns once a submit it overlapped is refused (LaneBusy, DuplicateJob)."""
    holder = make_lane(max_concurrent=1)
    lane = make_lane()
    stop = asyncio.Event()
    await holder.submit(stop.wait, job_id="taken")
    await lane.stats()  # connected
    if refusal == "max_wait":
        submit = asyncio.create_task(lane.submit(stop.wait, max_wait=0))
        expected: type[Exception] = LaneBusy
    else:
        submit = asyncio.create_task(lane.submit(stop.wait, job_id="taken"))
        expected = DuplicateJob
    close = asyncio.create_task(lane.aclose())  # runs once the submit is on its way
    with pytest.raises(expected):
        await submit
    async with asyncio.timeout(5):
        await close
    stop.set()


async def test_a_granted_slot_not_yet_entered_raises_job_cancelled_on_close(
    make_lane: LaneFactory,
) -> None:
    """A slot granted but not yet entered when its lane closes without draining raises
    JobCancelled from the async with (not CancelledError), and frees its slot."""
    lane = make_lane(max_concurrent=1)
    other = make_lane()
    stop = asyncio.Event()
    await lane.submit(stop.wait)
    entered: list[bool] = []

    async def user() -> None:
        async with lane.slot() as job:
            entered.append(job.state is JobState.RUNNING)

    task = asyncio.create_task(user())
    await until(lambda: any(r.granted is not None for r in lane._jobs.values()))  # waiting
    await lane.set_max_concurrent(2)  # its reply grants the slot; the task has not resumed
    await lane.aclose(drain=False)
    with pytest.raises(JobCancelled, match=r"cancelled: the lane was closed$"):
        await task
    assert entered == []
    assert (await other.stats()).running == 0


async def test_a_cancel_during_a_slots_release_is_not_lost(make_lane: LaneFactory) -> None:
    """A task cancelled while its slot is being released on a normal exit is still
    cancelled: the CancelledError leaves the async with."""
    lane = make_lane(max_concurrent=1)
    after: list[str] = []

    async def user() -> None:
        task = asyncio.current_task()
        assert task is not None
        async with lane.slot():
            # Cancelled from outside once the body has left and the release is on its way.
            asyncio.get_running_loop().call_soon(task.cancel)
        after.append("left")
        await asyncio.sleep(0)

    task = asyncio.create_task(user())
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert after == []
    assert (await lane.stats()).running == 0


async def test_a_close_during_a_slots_grace_raises_job_cancelled(
    make_lane: LaneFactory,
) -> None:
    """A slot body in the grace of another client's preemption, when its own client
    closes without draining, leaves the async with by JobCancelled (the lane was
    closed), not by a bare CancelledError."""
    lane = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0, grace=30))
    arrival_lane = make_lane()
    entered = asyncio.Event()
    handles: list[JobHandle[None]] = []

    async def user() -> None:
        async with lane.slot(preemptible=True) as job:
            handles.append(job)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(user())
    async with asyncio.timeout(5):
        await entered.wait()
    arrival = await arrival_lane.submit(asyncio.Event().wait, priority=1)
    await until(lambda: handles[0].preempt_requested)
    await lane.aclose(drain=False)
    with pytest.raises(JobCancelled, match=r"cancelled: the lane was closed$"):
        async with asyncio.timeout(5):
            await task
    assert handles[0].state is JobState.CANCELLED
    await until(lambda: arrival.state is JobState.RUNNING)


@pytest.mark.parametrize("first", ["the client that set them", "a client that adopted them"])
async def test_fair_share_weights_survive_the_lane_state_being_lost(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, first: str
) -> None:
    """When the lane's state is lost and rebuilt by its clients, the FairShare weights
    stored with the lane are restored, whichever client rebuilds it first."""
    # Long leases: the heartbeats (lease / 3 apart) stay out of the way.
    setter = make_lane(max_concurrent=2, policy=FairShare(weights={"paying": 3}), lease=30.0)
    adopter = make_lane(lease=30.0)
    await setter.stats()
    await adopter.stats()
    prefix = f"{{{namespace}:lane}}:"
    assert await admin.hgetall(prefix + "w") == {"paying": "3.0"}
    await drop_lane_state(admin, namespace)
    order = [setter, adopter] if first == "the client that set them" else [adopter, setter]
    for lane in order:
        await lane.stats()  # finds the lane missing, rebuilds or rejoins it
    assert setter._epoch == adopter._epoch
    assert await admin.hgetall(prefix + "w") == {"paying": "3.0"}
    assert isinstance(adopter.policy, FairShare)
    assert dict(adopter.policy.weights) == {"paying": 3.0}


async def test_a_resize_survives_the_lane_state_being_lost(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A lane rebuilt after its state was lost keeps the size the first client to rebuild
    it knew: a client that rejoins later with an older view does not shrink it back."""
    a = make_lane(max_concurrent=2, lease=30.0)
    b = make_lane(lease=30.0)
    await a.stats()
    await b.set_max_concurrent(5)
    await drop_lane_state(admin, namespace)
    assert (await b.stats()).max_concurrent == 5  # b rebuilds the lane
    await a.stats()  # a, which last saw 2 slots, rejoins it
    assert (await b.stats()).max_concurrent == 5


async def test_a_heartbeat_refreshes_the_settings_a_rebuild_restores(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A client's heartbeat keeps its view of the lane's settings fresh: when the lane's
    state is lost, the client rebuilding it restores the slot limit, preemption and ETA
    window that another client set since it joined."""
    a = make_lane(max_concurrent=2, lease=30.0)
    b = make_lane(lease=30.0)
    await a.stats()
    await b.set_max_concurrent(5)
    await b.set_eta_window(7)
    await b.set_preemption(Preemption(min_runtime=1, grace=2))
    await b.aclose()
    await a._heartbeat()
    assert a.max_concurrent == 5
    assert a.preemption == Preemption(min_runtime=1, grace=2)
    await drop_lane_state(admin, namespace)
    assert (await a.stats()).max_concurrent == 5  # a rebuilds the lane
    cfg = await admin.hgetall(f"{{{namespace}:lane}}:cfg")
    assert (cfg["win"], cfg["pon"], cfg["pmin"], cfg["pgrace"]) == ("7", "1", "1000", "2000")


def test_a_lane_used_from_another_event_loop_says_so(redis_server: RedisServer) -> None:
    """A RedisLane started on one event loop and then used from another (a second
    asyncio.run) raises a RuntimeError saying a RedisLane serves one loop."""
    lane = RedisLane("x", redis_server.url, 1, namespace=f"loops-{uuid.uuid4().hex}")

    async def job() -> int:
        return 42

    async def use() -> int:
        return await lane.run(job)

    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(use()) == 42
        message = (
            r"^RedisLane 'x' runs on the event loop it started on: make one RedisLane per "
            r"event loop \(its connections and tasks belong to that loop\)$"
        )
        with pytest.raises(RuntimeError, match=message):
            asyncio.run(use())
        with pytest.raises(RuntimeError, match=message):
            asyncio.run(lane.aclose())
        first.run_until_complete(lane.aclose())
    finally:
        first.close()


async def test_freeing_a_lost_submit_spares_a_later_submit_of_its_id(
    make_lane: LaneFactory,
) -> None:
    """The forced cancel that frees what a lost submit recorded touches that submit
    only: a later submit of the same id (running here), or another client's queued job
    of that id, stays."""
    lane = make_lane(max_concurrent=1)
    other = make_lane()
    stop = asyncio.Event()
    running = await lane.submit(stop.wait, job_id="j")
    assert running.state is JobState.RUNNING
    queued = await other.submit(stop.wait, job_id="q")
    assert queued.state is JobState.QUEUED
    for job_id in ("j", "q"):
        reply = await lane._eval("cancel", [lane._client_id, job_id, "1", "a lost nonce"])
        assert [x.decode() if isinstance(x, bytes) else x for x in reply] == [
            "NQ",
            "another submit",
        ]
    stats = await other.stats()
    assert (stats.running, stats.queued, stats.cancelled) == (1, 1, 0)
    stop.set()
    async with asyncio.timeout(5):
        await running
        await queued


async def test_a_queued_job_cancelled_elsewhere_ends_cancelled_when_a_heartbeat_sees_it_first(
    make_lane: LaneFactory,
) -> None:
    """A queued job removed by a cancel whose wake-up this client has not read yet ends
    JobCancelled when a heartbeat finds it gone (LeaseLost is for a client that was
    taken for dead)."""
    lane = make_lane(max_concurrent=1, lease=30.0)
    stop = asyncio.Event()
    await lane.submit(stop.wait)
    queued = await lane.submit(stop.wait, job_id="q")
    assert queued.state is JobState.QUEUED
    # Removed on the server with no wake-up to this client (as if it were still on its
    # way): the cancel script tells a job's owner, and here the owner ran it.
    reply = await lane._eval("cancel", [lane._client_id, "q", "0"])
    assert reply[0] in (b"OK", "OK")
    assert queued.state is JobState.QUEUED
    await lane._heartbeat()
    assert queued.state is JobState.CANCELLED
    with pytest.raises(JobCancelled, match=r"^job 'q' in lane 'lane' was cancelled$"):
        await queued
    stop.set()


class _HoldsOneRequest(TcpProxy):
    """A proxy that holds back the first request containing ``hold_when`` (on that
    connection only) until ``release`` is set; later ones pass."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__("127.0.0.1", upstream_port)
        self.hold_when: bytes | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Any
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if self.hold_when is not None and self.hold_when in data:
                    self.hold_when = None
                    self.holding.set()
                    await self.release.wait()
                writer.write(data)
                await writer.drain()


async def test_a_submit_cancelled_on_its_way_to_redis_frees_its_slot_once_it_arrives(
    redis_server: RedisServer, make_lane: LaneFactory, namespace: str
) -> None:
    """A submit cancelled while its request is still on its way frees the slot it takes
    as soon as the request has reached Redis: the clean-up waits for the request, so it
    cannot overtake it (and miss the job, which then held its slot for a lease)."""
    proxy = _HoldsOneRequest(redis_server.port)
    await proxy.start()
    lane = RedisLane("lane", proxy.url, 1, namespace=namespace, lease=30.0)
    watcher = make_lane()
    try:
        await lane.stats()
        proxy.hold_when = b"held-job"
        submit = asyncio.create_task(lane.submit(asyncio.Event().wait, job_id="held-job"))
        async with asyncio.timeout(5):
            await proxy.holding.wait()
        submit.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await submit
        await asyncio.sleep(0.2)  # time for a clean-up that does not wait to go through
        proxy.release.set()
        async with asyncio.timeout(5):  # the lease is 30 s
            stats = await watcher.stats()
            while stats.running or stats.queued:
                await asyncio.sleep(0.02)
                stats = await watcher.stats()
    finally:
        proxy.release.set()
        await lane.aclose(drain=False)
        await proxy.stop()


async def test_a_first_call_cancelled_while_the_lane_connects_leaves_no_connection_open(
    redis_server: RedisServer, namespace: str
) -> None:
    """A lane's first call cancelled while the lane connects (at any point) leaves no
    connection of it open once the lane is closed."""
    for turns in range(30):  # the cancel lands after this many loop turns
        lane = RedisLane("lane", redis_server.url, 2, namespace=f"{namespace}-{turns}")
        task = asyncio.create_task(lane.submit(asyncio.Event().wait))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        try:
            handle = await task
        except asyncio.CancelledError:
            pass
        else:
            await handle.cancel()
        await lane.aclose(drain=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        unclosed = [str(w.message) for w in caught if "unclosed" in str(w.message)]
        assert not unclosed, f"cancelled after {turns} turns: {unclosed}"
