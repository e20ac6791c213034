"""RedisLane against a real redis-server: cancellation races, odd inputs, lost replies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from executus import (
    FairShare,
    JobCancelled,
    JobState,
    LaneBusy,
    LaneClosed,
    NotQueued,
    Preemption,
)
from executus.redis import RedisLane

from .helpers import BlocksOnce, RedisServer, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def held_keys(admin: aioredis.Redis, namespace: str, name: str = "lane") -> list[str]:
    """What the lane's keys still hold of jobs: running, queued, per-client job sets."""
    prefix = f"{{{namespace}:{name}}}:"
    left = [f"hold {m!s}" for m in await admin.zrange(prefix + "hold", 0, -1)]
    left += [f"qt {m!s}" for m in await admin.zrange(prefix + "qt", 0, -1)]
    left += [f"pq {m!s}" for m in await admin.lrange(prefix + "pq", 0, -1)]
    pattern = prefix.replace("{", "[{]")
    async for key in admin.scan_iter(match=pattern + "pj:*"):
        left += [f"{key!s} {m!s}" for m in await admin.smembers(key)]
    async for key in admin.scan_iter(match=pattern + "j:*"):
        left.append(str(key))
    return sorted(left)


def forever() -> Callable[[], Any]:
    """A job that runs until cancelled."""

    async def run() -> None:
        await asyncio.Event().wait()

    return run


async def test_cancel_right_after_submit_ends_the_job(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A job cancelled before its task took a step ends CANCELLED and frees its slot."""
    lane = make_lane(max_concurrent=1)
    called: list[int] = []

    async def job() -> None:
        called.append(1)

    handle = await lane.submit(job)
    assert handle.state is JobState.RUNNING
    async with asyncio.timeout(5):
        assert await handle.cancel() is True
    assert handle.state is JobState.CANCELLED
    assert called == []
    with pytest.raises(JobCancelled):
        await handle
    assert await held_keys(admin, namespace) == []
    assert await lane.run(lambda: asyncio.sleep(0, "next")) == "next"


async def test_close_without_drain_right_after_submit(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """aclose(drain=False) just after submits started their jobs ends them and returns."""
    lane = make_lane(max_concurrent=2)
    hs = [await lane.submit(forever()) for _ in range(2)]
    async with asyncio.timeout(5):
        await lane.aclose(drain=False)
    assert [h.state for h in hs] == [JobState.CANCELLED] * 2
    with pytest.raises(JobCancelled, match=r"was cancelled: the lane was closed$"):
        await hs[1]
    assert await held_keys(admin, namespace) == []


async def test_ids_and_keys_that_are_not_utf8_are_refused(make_lane: LaneFactory) -> None:
    """A job id or key Redis cannot store (a lone surrogate) is refused with a ValueError
    naming the rule, and calls in flight beside it are not disturbed."""
    lane = make_lane(max_concurrent=1)
    inside, finish = asyncio.Event(), asyncio.Event()

    async def job() -> str:
        inside.set()
        await finish.wait()
        return "ok"

    handle = await lane.submit(job)
    await inside.wait()
    finish.set()  # its release goes out in the next batch, with the submit below
    with pytest.raises(
        ValueError, match=r"^job_id must be encodable as UTF-8 \(for Redis\), got 'a\\udc80'$"
    ):
        await lane.submit(job, job_id="a\udc80")
    async with asyncio.timeout(5):
        assert await handle == "ok"
    with pytest.raises(
        ValueError, match=r"^key must be encodable as UTF-8 \(for Redis\), got '\\ud800'$"
    ):
        await lane.run(job, key="\ud800")
    with pytest.raises(NotQueued, match=r"^job 'b\\udc80' is not queued in lane 'lane'"):
        await lane.cancel("b\udc80")
    assert await lane.run(lambda: asyncio.sleep(0, "after")) == "after"


def test_names_and_weights_that_are_not_utf8_are_refused(redis_server: RedisServer) -> None:
    """A lane name, namespace or fair-share key Redis cannot store is refused at once."""
    url = redis_server.url
    with pytest.raises(ValueError, match=r"^name must be encodable as UTF-8 \(for Redis\)"):
        RedisLane("l\udc80", url)
    with pytest.raises(ValueError, match=r"^namespace must be encodable as UTF-8"):
        RedisLane("l", url, namespace="\udc80")
    with pytest.raises(
        ValueError, match=r"^FairShare weights' keys must be encodable as UTF-8 .*'\\udc80'$"
    ):
        RedisLane("l", url, policy=FairShare(weights={"\udc80": 2}))


async def test_grant_made_by_a_refused_submit_is_delivered(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A submit refused by max_wait still hands over the grants its script made (here to
    a queued job of the same client, after an expired lease was reaped)."""
    lane = make_lane(max_concurrent=1, lease=30.0)  # heartbeats 10 s apart
    stuck = await lane.submit(forever(), job_id="stuck")
    waiting = await lane.submit(lambda: asyncio.sleep(0, "waited"), job_id="waiting")
    assert waiting.state is JobState.QUEUED
    # The running job's lease runs out in Redis (as if its renewals had stopped).
    await admin.zadd(f"{{{namespace}:lane}}:hold", {"stuck": 0})
    with pytest.raises(LaneBusy):
        await lane.submit(forever(), max_wait=0)
    async with asyncio.timeout(5):  # well before the next heartbeat could repair it
        assert await waiting == "waited"
    await until(stuck.done)
    assert await held_keys(admin, namespace) == []


async def test_requeued_job_granted_again_by_its_own_release_runs_again(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A preempted job requeued while a slot is free is granted again by its own release
    and runs again (here its preemptor was withdrawn while the victim was stopping)."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    a = make_lane(max_concurrent=1, preemption=pre, lease=30.0)  # heartbeats 10 s apart
    b = make_lane(lease=30.0)
    runs: list[int] = []
    withdrawn = asyncio.Event()

    async def victim() -> str:
        runs.append(len(runs))
        if len(runs) == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await withdrawn.wait()  # stops only once its preemptor is gone
                raise
        return "again"

    handle = await a.submit(victim, preemptible=True)
    await until(lambda: runs == [0])
    urgent = await b.submit(forever(), priority=1)
    await until(lambda: handle.preempt_requested)
    await urgent.cancel()  # too late to spare the victim: its grace (0 s) is over
    withdrawn.set()
    async with asyncio.timeout(5):
        assert await handle == "again"
    assert handle.preemptions == 1
    assert runs == [0, 1]
    assert await held_keys(admin, namespace) == []


async def test_close_while_the_first_call_connects(
    redis_server: RedisServer, namespace: str
) -> None:
    """aclose() while the first call is joining the lane makes that call raise LaneClosed
    and leaves no background task running."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        lane = RedisLane("lane", client, 1, namespace=namespace)
        first = asyncio.create_task(lane.stats())
        await asyncio.sleep(0)  # the join is on its way to Redis
        await lane.aclose()
        with pytest.raises(LaneClosed):
            await first
        names = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
        assert not [n for n in names if n.startswith("executus-redis-")], names
        await lane.aclose()
    finally:
        await client.aclose()


@pytest.mark.parametrize("how", ["handle", "lane"])
async def test_cancel_whose_caller_is_cancelled_still_ends_the_job(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, how: str
) -> None:
    """A cancel that reached Redis ends the queued job with JobCancelled even when the
    task awaiting the cancel is itself cancelled."""
    lane = make_lane(max_concurrent=1, lease=30.0)  # heartbeats 10 s apart
    running = await lane.submit(forever())
    queued = await lane.submit(forever(), job_id="q")
    canceller = asyncio.create_task(queued.cancel() if how == "handle" else lane.cancel("q"))
    await asyncio.sleep(0)  # the cancel is on its way to Redis
    canceller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await canceller
    async with asyncio.timeout(5):  # well before the next heartbeat
        with pytest.raises(JobCancelled, match=r"^job 'q' in lane 'lane' was cancelled$"):
            await queued
    await running.cancel()
    assert await held_keys(admin, namespace) == []


async def test_a_granted_job_runs_in_its_submitters_context(make_lane: LaneFactory) -> None:
    """A job started by a grant sees its submitter's context variables, not those of the
    code that received the grant."""
    import contextvars

    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    lane = make_lane(max_concurrent=1)
    seen: list[str] = []
    release = asyncio.Event()

    async def job() -> None:
        seen.append(user.get())
        user.set("changed by the job")
        if len(seen) == 1:
            await release.wait()

    async def submit_as(name: str) -> Any:
        user.set(name)
        return await lane.submit(job)

    first = await asyncio.create_task(submit_as("alice"))
    await until(lambda: seen == ["alice"])
    second = await asyncio.create_task(submit_as("bob"))
    assert second.state is JobState.QUEUED
    release.set()
    await first
    await second
    assert seen == ["alice", "bob"]


async def test_a_repeated_preemption_request_keeps_one_grace(make_lane: LaneFactory) -> None:
    """A preemption request that arrives twice (wake-up and heartbeat) starts one grace
    period, and a job already being cancelled is not turned into a preemption."""
    lane = make_lane(max_concurrent=1)
    release = asyncio.Event()

    async def job() -> None:
        await release.wait()

    handle = await lane.submit(job, preemptible=True)
    await until(lambda: handle.state is JobState.RUNNING)
    rec = lane._jobs[handle.id]
    lane._on_message(f"P {handle.id} {rec.fence} 60000")
    timer = rec.timer
    assert timer is not None
    assert handle.preempt_requested
    lane._on_message(f"P {handle.id} {rec.fence} 60000")
    assert rec.timer is timer  # the first grace stands; no second timer
    release.set()
    await handle
    assert timer.cancelled()  # the run ended: its grace timer went with it

    blocked = await lane.submit(asyncio.Event().wait, preemptible=True)
    await until(lambda: blocked.state is JobState.RUNNING)
    rec = lane._jobs[blocked.id]
    rec.cause = "cancel"  # as set by a cancel whose task has not unwound yet
    lane._on_message(f"P {blocked.id} {rec.fence} 0")
    assert not blocked.preempt_requested
    assert rec.cause == "cancel"
    rec.cause = None
    assert await blocked.cancel()


@pytest.mark.parametrize("setting", ["max_concurrent", "eta_window"])
async def test_counts_beyond_what_redis_stores_are_refused(
    make_lane: LaneFactory, setting: str
) -> None:
    """max_concurrent and eta_window must stay below 2**40 (Redis stores numbers)."""
    message = rf"^{setting} must be < 2\*\*40 for a RedisLane, got {2**40}$"
    with pytest.raises(ValueError, match=message):
        make_lane(**{setting: 2**40})
    lane = make_lane(max_concurrent=2)
    setter = lane.set_max_concurrent if setting == "max_concurrent" else lane.set_eta_window
    with pytest.raises(ValueError, match=message):
        await setter(2**40)
    await setter(2**40 - 1)
    if setting == "max_concurrent":
        assert (await lane.stats()).max_concurrent == 2**40 - 1


async def test_victim_spared_when_its_preemptor_is_cancelled(make_lane: LaneFactory) -> None:
    """A victim in its grace keeps running when the arrival that chose it is cancelled."""
    a = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0, grace=30))
    b = make_lane()
    release = asyncio.Event()

    async def low() -> str:
        await release.wait()
        return "finished"

    victim = await a.submit(low, preemptible=True)
    await until(lambda: victim.state is JobState.RUNNING)
    arrival = await b.submit(lambda: asyncio.sleep(0, "urgent"), priority=5)
    await until(lambda: victim.preempt_requested)
    assert arrival.state is JobState.QUEUED
    assert await arrival.cancel()
    await until(lambda: not victim.preempt_requested)
    release.set()
    assert await victim == "finished"
    assert victim.state is JobState.SUCCEEDED


async def test_victim_spared_when_its_preemptor_starts_elsewhere(make_lane: LaneFactory) -> None:
    """A victim in its grace keeps running when its arrival starts on a slot that another
    job's end freed."""
    a = make_lane(max_concurrent=2, preemption=Preemption(min_runtime=0, grace=30))
    b = make_lane()
    release_low, release_other = asyncio.Event(), asyncio.Event()

    async def low() -> str:
        await release_low.wait()
        return "finished"

    victim = await a.submit(low, preemptible=True)
    other = await a.submit(release_other.wait)
    await until(lambda: victim.state is JobState.RUNNING and other.state is JobState.RUNNING)
    arrival = await b.submit(lambda: asyncio.sleep(0, "urgent"), priority=5)
    await until(lambda: victim.preempt_requested)
    release_other.set()
    await other
    assert await arrival == "urgent"
    await until(lambda: not victim.preempt_requested)
    release_low.set()
    assert await victim == "finished"
    assert victim.state is JobState.SUCCEEDED


@pytest.mark.parametrize("busy", [False, True], ids=["started", "queued"])
async def test_a_submit_answered_after_its_job_ended_here_frees_it_at_once(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str, busy: bool
) -> None:
    """A job that ended here (withdrawn by a close) while its submit was on its way is
    freed in Redis as soon as the reply comes, not when its lease runs out."""
    lane = make_lane(max_concurrent=1, lease=30.0)
    blocker = make_lane(lease=30.0)
    if busy:
        holder = await blocker.submit(asyncio.Event().wait)
        await until(lambda: holder.state is JobState.RUNNING)
    real_eval = lane._eval

    async def racing(name: str, args: Any, **kw: Any) -> list[Any]:
        if name == "submit":  # the close's withdrawal overtakes the submit in flight
            lane._end_queued(lane._jobs[args[1]], LaneClosed("lane"))
        return await real_eval(name, args, **kw)

    lane._eval = racing  # type: ignore[method-assign]
    handle = await lane.submit(asyncio.Event().wait, job_id="raced")
    assert handle.state is JobState.CANCELLED
    async with asyncio.timeout(3):  # well within the 30 s lease
        # Polling Redis: the keys change there, with no event here to wait on.
        while any("raced" in k for k in await held_keys(admin, namespace)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_close_without_drain_takes_back_a_job_requeued_meanwhile(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A preempted job whose requeue lands while a close without drain runs is taken back
    too: the close returns, the job ends with LaneClosed, and Redis keeps none of it."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    a = make_lane(max_concurrent=1, preemption=pre, lease=30.0)
    b = make_lane(lease=30.0)
    victim = await a.submit(asyncio.Event().wait, preemptible=True, job_id="victim")
    await until(lambda: victim.state is JobState.RUNNING)
    real_release = a._release
    closers: list[asyncio.Task[None]] = []

    async def release(job_id: str, fence: str, outcome: str) -> list[Any] | None:
        if outcome == "preq" and not closers:  # the close starts as the requeue is sent
            closers.append(asyncio.create_task(a.aclose(drain=False)))
            await asyncio.sleep(0)
        return await real_release(job_id, fence, outcome)

    a._release = release  # type: ignore[method-assign]
    await b.submit(asyncio.Event().wait, priority=1)  # holds the slot from now on
    await until(lambda: bool(closers))
    async with asyncio.timeout(5):
        await closers[0]
    assert victim.state is JobState.CANCELLED
    assert isinstance(victim.exception(), LaneClosed)
    assert not any("victim" in k for k in await held_keys(admin, namespace))


async def test_a_damaged_fair_flow_does_not_hold_up_the_others(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """Under fair share, a key whose job queue was deleted from Redis while it still
    counts as backlogged is passed over: the next key's job starts at the next release."""
    lane = make_lane(max_concurrent=1, policy=FairShare(weights={"b": 0.25}))
    assert await lane.run(lambda: asyncio.sleep(0, "b0"), key="b") == "b0"  # b paid 4 ahead
    release = asyncio.Event()
    first = await lane.submit(release.wait, key="a")
    await until(lambda: first.state is JobState.RUNNING)
    await lane.submit(asyncio.Event().wait, key="a")  # key a's flow: one queued job, first
    other = await lane.submit(lambda: asyncio.sleep(0, "b ran"), key="b")  # next
    prefix = f"{{{namespace}:lane}}:"
    damaged = [k async for k in admin.scan_iter(match=prefix.replace("{", "[{]") + "fq:=a")]
    assert damaged, "key a's job queue"
    await admin.delete(*damaged)
    release.set()
    async with asyncio.timeout(1):  # before a heartbeat (lease / 3) could grant it
        assert await other == "b ran"


async def test_a_grant_names_its_submit_and_a_reused_id_ignores_an_earlier_ones(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A grant carries the nonce of the submit it answers. When an id is submitted again
    after a submit whose reply was lost, a late grant of the earlier submit does not
    start the new job: its slot is handed back and the new job waits for its own."""
    prefix = f"{{{namespace}:lane}}:"
    lane = make_lane(max_concurrent=1, lease=30.0)
    gate = asyncio.Event()
    holder = await lane.submit(gate.wait)
    # A client that stays silent (registered, never reading its wake-ups) submits
    # "order-1": the grant it gets is pushed onto its wake-up list, where it stays.
    await admin.zadd(prefix + "procs", {"ghost": 2**50})
    queued = await lane._eval(
        "submit", ["ghost", "order-1", "77", "0", "", "0", "0", "30000", "-1", "1"]
    )
    assert queued[0] == b"Q"
    gate.set()
    await holder
    async with asyncio.timeout(5):
        while not await admin.llen(prefix + "wake:ghost"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    message = await admin.lpop(prefix + "wake:ghost")
    fence = str(await admin.hget(prefix + "j:order-1", "f"))
    assert message == f"G order-1 {fence} 77"
    await lane._eval("cancel", ["ghost", "order-1", "1", "77"])  # its owner gives it up
    assert (await lane.stats()).running == 0

    # This client submits "order-1" while the slot is held, and then receives a grant
    # that names another submit of that id (as after a lost reply): it is not taken.
    gate = asyncio.Event()
    holder = await lane.submit(gate.wait)
    again = await lane.submit(lambda: asyncio.sleep(0, "mine"), job_id="order-1")
    assert again.state is JobState.QUEUED
    lane._on_message(f"G order-1 {fence} 77")
    await asyncio.sleep(0.05)
    assert again.state is JobState.QUEUED
    assert holder.state is JobState.RUNNING
    gate.set()
    async with asyncio.timeout(5):
        assert await again == "mine"
    await holder
    assert await held_keys(admin, namespace) == []


async def test_a_requeue_granted_by_another_client_before_the_reply_runs_again(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A preempted job that its release requeues, and that another client's script grants
    again before this client has read that release's reply, runs again (the grant is not
    handed back as stale)."""
    pre = Preemption(min_runtime=0, grace=0, requeue=True)
    a = make_lane(max_concurrent=1, preemption=pre, lease=30.0)  # heartbeats 10 s apart
    b = make_lane(lease=30.0)
    victim = BlocksOnce()
    runs = victim.runs

    handle = await a.submit(victim, preemptible=True)
    await until(lambda: runs == [0])
    job_key = f"{{{namespace}:lane}}:j:{handle.id}"
    first_fence = await admin.hget(job_key, "f")
    real_eval = a._eval

    async def reply_late(name: str, args: Any, **options: Any) -> list[Any]:
        reply = await real_eval(name, args, **options)
        if name == "release" and args[1] == handle.id and reply[0] in (b"REQ", "REQ"):
            # Hold the reply until the other client's job has ended and its script has
            # granted this job again (its wake-up then reaches this client first).
            async with asyncio.timeout(5):
                while await admin.hget(job_key, "f") in (None, first_fence):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)  # the wake-up is read meanwhile
        return reply

    a._eval = reply_late  # type: ignore[method-assign]
    urgent = await b.submit(lambda: asyncio.sleep(0, "urgent"), priority=1)
    async with asyncio.timeout(5):
        assert await urgent == "urgent"
        assert await handle == "again"
    assert (runs, handle.preemptions) == ([0, 1], 1)
    await until(lambda: not a._jobs)
    assert await held_keys(admin, namespace) == []


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking-pool", "plain-pool"])
async def test_a_client_with_a_one_connection_pool_sends_unknown_scripts_on_it(
    redis_server: RedisServer, admin: aioredis.Redis, namespace: str, blocking: bool
) -> None:
    """A client passed with a pool of one connection runs the lane when Redis does not
    know the scripts (SCRIPT FLUSH): they are sent in full on that one connection."""
    pool: aioredis.ConnectionPool
    if blocking:
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_server.url, max_connections=1, timeout=5
        )
    else:
        pool = aioredis.ConnectionPool.from_url(redis_server.url, max_connections=1)
    client = aioredis.Redis.from_pool(pool)  # closes the pool with the client
    lane = RedisLane("lane", client, 1, namespace=namespace)
    try:
        await admin.script_flush()
        async with asyncio.timeout(10):
            assert await lane.run(lambda: asyncio.sleep(0, "first")) == "first"
            await admin.script_flush()
            assert await lane.run(lambda: asyncio.sleep(0, "again")) == "again"
        assert await client.ping()
    finally:
        await lane.aclose(drain=False)
        await client.aclose()


async def test_a_client_with_a_small_blocking_pool_is_shared_with_the_application(
    redis_server: RedisServer, namespace: str
) -> None:
    """A client passed with a small BlockingConnectionPool serves many concurrent jobs,
    and the lane keeps none of its connections: the application can still take them all."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_server.url, max_connections=4, timeout=2)
    client = aioredis.Redis.from_pool(pool)  # closes the pool with the client
    lane = RedisLane("lane", client, 8, namespace=namespace)
    try:
        async with asyncio.timeout(10):
            handles = await asyncio.gather(
                *(lane.submit(lambda: asyncio.sleep(0.05)) for _ in range(16))
            )
            await asyncio.gather(*handles)
            taken = [await pool.get_connection() for _ in range(4)]  # type: ignore[no-untyped-call]
            for conn in taken:
                await pool.release(conn)
    finally:
        await lane.aclose(drain=False)
        await client.aclose()


async def test_a_job_whose_task_is_cancelled_from_outside_before_its_first_step_ends(
    make_lane: LaneFactory, admin: aioredis.Redis, namespace: str
) -> None:
    """A job whose task something else cancels before its first step (a shutdown handler
    cancelling every task) ends CANCELLED, wakes its waiters and frees its slot."""
    lane = make_lane(max_concurrent=1)
    await lane.stats()  # the client's own tasks are running before the job's is made
    before = asyncio.all_tasks()
    handle = await lane.submit(forever())
    assert handle.state is JobState.RUNNING
    for task in asyncio.all_tasks() - before:
        task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(JobCancelled):
            await handle
    async with asyncio.timeout(5):
        while await held_keys(admin, namespace):  # noqa: ASYNC110 - the release reaches Redis
            await asyncio.sleep(0.01)
        assert await lane.run(lambda: asyncio.sleep(0, "next")) == "next"
