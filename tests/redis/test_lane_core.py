"""RedisLane against a real redis-server: slots, order, admission, control, closing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from executus import (
    FIFO,
    DuplicateJob,
    EventKind,
    FairShare,
    JobCancelled,
    JobPreempted,
    JobState,
    Lane,
    LaneBusy,
    LaneClosed,
    LaneEvent,
    LaneUnavailable,
    NotQueued,
    Preemption,
    Priority,
    QueuePolicy,
    current_job,
)
from executus._policies import PolicyState
from executus.redis import RedisLane

from .helpers import RedisServer, until

pytestmark = [pytest.mark.redis, pytest.mark.also_valkey, pytest.mark.timeout(30)]

LaneFactory = Callable[..., RedisLane]


async def test_each_run_talks_to_the_server_it_names(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    """The redis run is served by Redis and the valkey run by Valkey (INFO server)."""
    kind = request.node.callspec.params["redis_server"]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    assert ("valkey_version" in info) == (kind == "valkey"), info
    assert "redis_version" in info  # Valkey answers with a compatible version too


class Gate:
    """Jobs that block until released, recording the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.events: dict[str, asyncio.Event] = {}

    def job(self, name: str) -> Callable[[], Any]:
        event = self.events.setdefault(name, asyncio.Event())

        async def run() -> str:
            self.started.append(name)
            await event.wait()
            return name

        return run

    def open(self, name: str) -> None:
        self.events.setdefault(name, asyncio.Event()).set()

    def open_all(self) -> None:
        for e in self.events.values():
            e.set()


async def test_starts_at_once_then_queues(make_lane: LaneFactory) -> None:
    """Jobs start at once while slots are free, then queue with positions and ETAs."""
    lane = make_lane(max_concurrent=2)
    gate = Gate()
    hs = [await lane.submit(gate.job(f"j{i}")) for i in range(4)]
    assert [h.state for h in hs] == [JobState.RUNNING] * 2 + [JobState.QUEUED] * 2
    assert [h.position for h in hs] == [0, 0, 1, 2]
    assert hs[0].eta == 0.0
    assert 0 < hs[2].eta <= 1.0 < hs[3].eta <= 2.0  # no run times yet: 1 s per position
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.submitted) == (2, 2, 4)
    assert stats.oldest_queued_at is not None
    gate.open_all()
    assert await asyncio.gather(*hs) == ["j0", "j1", "j2", "j3"]
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.succeeded, stats.throughput_1m) == (0, 0, 4, 4)
    assert stats.mean_runtime is not None


async def test_fifo_order_across_clients(make_lane: LaneFactory) -> None:
    """Two clients of one lane share its slot in arrival order, lane-wide."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    first = await a.submit(gate.job("a0"))
    hs = []
    for i in range(3):
        hs.append(await b.submit(gate.job(f"b{i}")))
        hs.append(await a.submit(gate.job(f"a{i + 1}")))
    await a.refresh()
    await b.refresh()
    assert [h.position for h in hs] == [1, 2, 3, 4, 5, 6]
    assert b.max_concurrent == 1  # adopted from the lane
    for name in ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]:
        await until(lambda n=name: gate.started[-1:] == [n])  # type: ignore[misc]
        gate.open(name)
    await asyncio.gather(first, *hs)
    assert gate.started == ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]


async def test_priority_order(make_lane: LaneFactory) -> None:
    """Priority: higher first, arrival order within a level."""
    lane = make_lane(max_concurrent=1, policy=Priority())
    gate = Gate()
    h0 = await lane.submit(gate.job("first"))
    hs = [
        await lane.submit(gate.job("low"), priority=0),
        await lane.submit(gate.job("high"), priority=5),
        await lane.submit(gate.job("mid"), priority=2),
        await lane.submit(gate.job("high2"), priority=5),
    ]
    assert [h.position for h in hs] == [1, 1, 2, 2]  # at their submit
    await lane.refresh()
    assert [h.position for h in hs] == [4, 1, 3, 2]
    gate.open_all()
    await asyncio.gather(h0, *hs)
    assert gate.started == ["first", "high", "high2", "mid", "low"]


async def test_priority_aging_orders_by_virtual_arrival(make_lane: LaneFactory) -> None:
    """With aging, an older low-priority job goes before a much later higher one."""
    lane = make_lane(max_concurrent=1, policy=Priority(aging=0.05))
    gate = Gate()
    h0 = await lane.submit(gate.job("first"))
    old = await lane.submit(gate.job("old"), priority=0)
    await asyncio.sleep(0.2)  # server time: aging is measured on the Redis clock
    new = await lane.submit(gate.job("new"), priority=1)
    await lane.refresh()
    assert (old.position, new.position) == (1, 2)
    gate.open_all()
    await asyncio.gather(h0, old, new)
    assert gate.started == ["first", "old", "new"]


async def test_fair_share_matches_the_in_process_lane(make_lane: LaneFactory) -> None:
    """FairShare with stored weights starts jobs in the same order as the in-process Lane."""

    async def order(lane: Lane | RedisLane, other: Lane | RedisLane) -> list[str]:
        gate = Gate()
        hs = [await lane.submit(gate.job("first"), key="x")]
        hs += [await lane.submit(gate.job(f"flood{i}"), key="flood") for i in range(4)]
        hs += [await other.submit(gate.job(f"gold{i}"), key="gold") for i in range(4)]
        gate.open_all()
        await asyncio.gather(*hs)
        return gate.started

    policy = FairShare(weights={"gold": 2.0})
    reference = Lane("ref", 1, policy=policy)
    lane = make_lane(max_concurrent=1, policy=policy)
    other = make_lane()  # a second client: adopts the stored policy and weights
    assert await order(lane, other) == await order(reference, reference)
    assert other.policy == policy or isinstance(other.policy, FairShare)


async def test_fair_share_positions_match_dispatch_order(make_lane: LaneFactory) -> None:
    """A queued job's position is its true place in the fair-share dispatch order."""
    lane = make_lane(max_concurrent=1, policy=FairShare())
    gate = Gate()
    h0 = await lane.submit(gate.job("first"), key="z")
    hs = [await lane.submit(gate.job(f"a{i}"), key="a") for i in range(3)]
    hs += [await lane.submit(gate.job(f"b{i}"), key="b") for i in range(3)]
    await lane.refresh()
    by_position = sorted(hs, key=lambda h: h.position)
    gate.open_all()
    await asyncio.gather(h0, *hs)
    assert [h.result() for h in by_position] == gate.started[1:]
    assert gate.started[1:] == ["a0", "b0", "a1", "b1", "a2", "b2"]


async def test_max_wait_refuses_and_enqueues_nothing(make_lane: LaneFactory) -> None:
    """max_wait: LaneBusy with position and ETA; nothing enqueued; counted as rejected."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    h0 = await lane.submit(gate.job("run"))
    with pytest.raises(LaneBusy) as info:
        await lane.submit(gate.job("refused"), max_wait=0)
    assert (info.value.position, info.value.max_wait) == (1, 0)
    assert info.value.eta == pytest.approx(1.0, abs=0.01)
    assert str(info.value) == (
        "lane 'lane' is busy: position 1, estimated wait 1.0s; "
        "max_wait 0 admits only a job that can start at once"
    )
    ok = await lane.submit(gate.job("fits"), max_wait=5)
    stats = await lane.stats()
    assert (stats.queued, stats.rejected, stats.submitted) == (1, 1, 2)
    gate.open_all()
    await asyncio.gather(h0, ok)


async def test_run_computes_position_and_eta_when_they_are_read(make_lane: LaneFactory) -> None:
    """run()'s queued job: max_wait still gates on its ETA, an observer still sees it."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    h0 = await lane.submit(gate.job("run"))
    queued = asyncio.create_task(lane.run(gate.job("queued")))  # no estimate needed
    await until(lambda: len(lane._jobs) == 2)
    with pytest.raises(LaneBusy) as info:
        await lane.run(gate.job("refused"), max_wait=0)
    assert (info.value.position, info.value.eta) == (2, pytest.approx(2.0, abs=0.01))
    seen: list[LaneEvent] = []
    lane.add_observer(seen.append)
    observed = asyncio.create_task(lane.run(gate.job("observed")))
    await until(lambda: any(e.kind is EventKind.SUBMITTED for e in seen))
    submitted = next(e for e in seen if e.kind is EventKind.SUBMITTED)
    assert (submitted.position, submitted.eta) == (2, pytest.approx(2.0, abs=0.01))
    gate.open_all()
    assert await asyncio.gather(h0, queued, observed) == ["run", "queued", "observed"]


async def test_duplicate_job_across_clients(make_lane: LaneFactory) -> None:
    """A job id queued or running in the lane (in any client) is refused."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    h = await a.submit(gate.job("x"), job_id="same")
    with pytest.raises(
        DuplicateJob, match=r"^job 'same' is already queued or running in lane 'lane'$"
    ):
        await b.submit(gate.job("y"), job_id="same")
    gate.open_all()
    await h
    h2 = await b.submit(gate.job("y"), job_id="same")  # ended: the id is free again
    assert await h2 == "y"


async def test_cancel_queued_from_another_client(make_lane: LaneFactory) -> None:
    """lane.cancel from another client ends the owner's waiter with JobCancelled."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    running = await a.submit(gate.job("r"), job_id="r")
    queued = await a.submit(gate.job("q"), job_id="q")
    await b.cancel("q")
    await until(queued.done)
    assert queued.state is JobState.CANCELLED
    with pytest.raises(JobCancelled, match=r"^job 'q' in lane 'lane' was cancelled$"):
        await queued
    with pytest.raises(NotQueued, match=r"^job 'r' is not queued in lane 'lane' \(running\)$"):
        await b.cancel("r")
    with pytest.raises(NotQueued, match=r"^job 'nope' is not queued in lane 'lane' \(unknown\)$"):
        await b.cancel("nope")
    gate.open_all()
    await running
    assert (await b.stats()).cancelled == 1


async def test_handle_cancel_running_and_queued(make_lane: LaneFactory) -> None:
    """handle.cancel() ends a running or queued job CANCELLED and frees its slot."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    a = await lane.submit(gate.job("a"))
    b = await lane.submit(gate.job("b"))
    c = await lane.submit(gate.job("c"))
    assert await b.cancel() is True
    assert await a.cancel() is True
    assert (a.state, b.state) == (JobState.CANCELLED, JobState.CANCELLED)
    await until(lambda: c.state is JobState.RUNNING)
    gate.open_all()
    assert await c == "c"
    assert await a.cancel() is False


async def test_set_max_concurrent_from_another_client(make_lane: LaneFactory) -> None:
    """Raising max_concurrent in one client starts another client's queued jobs."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    hs = [await a.submit(gate.job(f"j{i}")) for i in range(3)]
    await b.set_max_concurrent(3)
    await until(lambda: all(h.state is JobState.RUNNING for h in hs))
    assert (await a.stats()).max_concurrent == 3
    await b.set_max_concurrent(1)  # lowering cancels nothing
    assert all(h.state is JobState.RUNNING for h in hs)
    late = await b.submit(gate.job("late"))
    assert late.state is JobState.QUEUED
    gate.open_all()
    await asyncio.gather(*hs, late)
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        await a.set_max_concurrent(0)


async def test_run_cancelled_cancels_the_job(make_lane: LaneFactory) -> None:
    """Cancelling the task awaiting lane.run cancels the job and frees its slot."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    task = asyncio.create_task(lane.run(gate.job("owned")))
    await until(lambda: gate.started == ["owned"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    h = await lane.submit(gate.job("next"))
    await until(lambda: h.state is JobState.RUNNING)
    gate.open_all()
    await h


async def test_slot_holds_a_lane_wide_slot(make_lane: LaneFactory) -> None:
    """slot(): the body runs as a job (current_job works) and frees the slot on exit."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    async with a.slot(key="k") as job:
        ctx = current_job()
        assert ctx is not None
        assert (ctx.id, ctx.key) == (job.id, "k")
        other = await b.submit(gate.job("other"))
        assert other.state is JobState.QUEUED
    await until(lambda: other.state is JobState.RUNNING)
    assert job.state is JobState.SUCCEEDED
    gate.open_all()
    await other


async def test_slot_waiting_then_withdrawn(make_lane: LaneFactory) -> None:
    """Cancelling a task waiting in slot() withdraws the request."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    h = await lane.submit(gate.job("hold"))
    entered = False

    async def wait_slot() -> None:
        nonlocal entered
        async with lane.slot():
            entered = True

    task = asyncio.create_task(wait_slot())
    await until(lambda: any(r.seq is not None and r.handle is not h for r in lane._jobs.values()))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await lane.stats()).queued == 0
    gate.open_all()
    await h
    assert not entered


async def test_preemption_evicts_across_clients(make_lane: LaneFactory) -> None:
    """A higher-priority arrival in one client preempts a job running in another."""
    a = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0))
    b = make_lane()
    gate = Gate()
    victim = await a.submit(gate.job("victim"), preemptible=True, priority=0)
    urgent = await b.submit(gate.job("urgent"), priority=5)
    assert urgent.position == 1
    with pytest.raises(JobPreempted, match=r"^job '.*' in lane 'lane' was preempted$"):
        await victim
    await until(lambda: urgent.state is JobState.RUNNING)
    gate.open_all()
    await urgent
    assert (await b.stats()).preempted == 1


async def test_preemption_requeue_runs_again(make_lane: LaneFactory) -> None:
    """requeue=True: the victim goes back to the queue and runs again later."""
    lane = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0, requeue=True))
    gate = Gate()
    victim = await lane.submit(gate.job("victim"), preemptible=True)
    await until(lambda: gate.started == ["victim"])
    urgent = await lane.submit(gate.job("urgent"), priority=1)
    await until(lambda: urgent.state is JobState.RUNNING)
    assert (victim.state, victim.preemptions) == (JobState.QUEUED, 1)
    gate.open_all()
    assert await urgent == "urgent"
    assert await victim == "victim"
    assert gate.started == ["victim", "urgent", "victim"]


async def test_preemption_grace_and_min_runtime(make_lane: LaneFactory) -> None:
    """The victim sees preempt_requested during its grace; a young job is not evicted."""
    lane = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0, grace=0.2))
    seen: list[bool] = []

    async def cooperative() -> str:
        ctx = current_job()
        assert ctx is not None
        while not ctx.preempt_requested:  # noqa: ASYNC110 - a cooperative job polls
            await asyncio.sleep(0.005)
        seen.append(True)
        return "saved"

    victim = await lane.submit(cooperative, preemptible=True)
    urgent = await lane.submit(lambda: asyncio.sleep(0, "urgent"), priority=1)
    assert await victim == "saved"  # it returned within its grace: it succeeded
    assert await urgent == "urgent"
    assert seen == [True]
    await lane.set_preemption(Preemption(min_runtime=60))
    gate = Gate()
    young = await lane.submit(gate.job("young"), preemptible=True)
    waits = await lane.submit(gate.job("waits"), priority=9)
    assert (waits.state, young.state) == (JobState.QUEUED, JobState.RUNNING)
    gate.open_all()
    await asyncio.gather(young, waits)


async def test_adopts_stored_configuration(make_lane: LaneFactory) -> None:
    """max_concurrent=None and policy=None adopt what the lane stores."""
    first = make_lane(max_concurrent=3, policy=Priority(aging=30))
    await first.stats()
    later = make_lane()
    stats = await later.stats()
    assert stats.max_concurrent == 3
    assert later.policy == Priority(aging=30)
    fresh = make_lane("fresh")
    assert (await fresh.stats()).max_concurrent == 1


async def test_the_view_of_the_settings_follows_the_stored_ones(make_lane: LaneFactory) -> None:
    """lane.policy (with its FairShare weights), lane.preemption and lane.max_concurrent
    follow what another client stores: refreshed by stats() and by each heartbeat."""
    lane = make_lane(max_concurrent=1, policy=FIFO())
    await lane.stats()
    weighted = FairShare(weights={"vip": 5}, default_weight=2)
    await make_lane(max_concurrent=3, policy=weighted, preemption=Preemption(5)).stats()
    await lane.stats()
    assert (lane.max_concurrent, lane.policy, lane.preemption) == (3, weighted, Preemption(5))
    await make_lane(policy=FairShare(weights={"vip": 7})).stats()
    await lane.refresh()  # a heartbeat
    assert lane.policy == FairShare(weights={"vip": 7})
    await make_lane(policy=Priority(aging=30), preemption=Preemption(9)).stats()
    await lane.refresh()
    assert (lane.policy, lane.preemption) == (Priority(aging=30), Preemption(9))
    await make_lane(policy=FairShare(weights={"vip": 7})).stats()  # the weights seen before
    await lane.stats()
    assert lane.policy == FairShare(weights={"vip": 7})


async def test_policy_change_refused_while_queued(make_lane: LaneFactory) -> None:
    """Switching the stored policy while jobs are queued is refused."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    hs = [await lane.submit(gate.job(f"j{i}")) for i in range(2)]
    other = make_lane(policy=FairShare())
    with pytest.raises(Exception, match=r"has queued jobs under the stored policy 'fifo'"):
        await other.stats()
    gate.open_all()
    await asyncio.gather(*hs)


async def test_validation_errors(make_lane: LaneFactory, redis_server: RedisServer) -> None:
    """Constructor and submit arguments are validated at once with exact messages."""

    class Custom(QueuePolicy):
        def new_state(self) -> PolicyState:
            raise NotImplementedError

    with pytest.raises(TypeError, match=r"^RedisLane supports the built-in policies FIFO"):
        RedisLane("x", redis_server.url, policy=Custom())
    with pytest.raises(ValueError, match=r"^name must not contain '{' or '}', got 'a{b'$"):
        RedisLane("a{b", redis_server.url)
    with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
        RedisLane("", redis_server.url)
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        RedisLane("x", redis_server.url, 0)
    with pytest.raises(TypeError, match=r"^max_concurrent must be an int, got True$"):
        RedisLane("x", redis_server.url, True)
    with pytest.raises(ValueError, match=r"^lease must be >= 0.1 seconds, got 0$"):
        RedisLane("x", redis_server.url, lease=0)
    with pytest.raises(TypeError, match=r"^redis must be a URL or a redis.asyncio.Redis client"):
        RedisLane("x", 42)  # type: ignore[arg-type]
    lane = make_lane()
    with pytest.raises(TypeError, match=r"^fn must be a zero-argument callable"):
        await lane.submit(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_wait must be >= 0 seconds, got -1$"):
        await lane.submit(lambda: asyncio.sleep(0), max_wait=-1)
    assert FIFO() == lane.policy


async def test_a_namespace_and_a_name_have_keys_of_their_own(
    redis_server: RedisServer, namespace: str
) -> None:
    """A namespace containing ':' is refused, so that no two (namespace, name) pairs share
    one lane's keys; a lane's name may contain ':'."""
    with pytest.raises(
        ValueError,
        match=r"^namespace must not contain ':' \(it ends the namespace in the lane's keys\), "
        r"got 'acme:prod'$",
    ):
        RedisLane("gpu", redis_server.url, namespace="acme:prod")
    lane = RedisLane("prod:gpu", redis_server.url, 1, namespace=namespace)
    try:
        assert lane._keys.prefix == f"{{{namespace}:prod:gpu}}:"
        assert await lane.run(lambda: asyncio.sleep(0, "ran")) == "ran"
    finally:
        await lane.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://127.0.0.1:6379",
            "redis URL must start with redis://, rediss:// or unix://, got 'http://127.0.0.1:6379'",
        ),
        ("", "redis URL must start with redis://, rediss:// or unix://, got ''"),
        (
            "redis://u:s3cret@127.0.0.1:notaport/0",
            "redis URL 'redis://u:***@127.0.0.1:notaport/0' is not valid: Port could not be "
            "cast to integer value as 'notaport'",
        ),
        (
            "redis://127.0.0.1:6379/abc",
            "redis URL 'redis://127.0.0.1:6379/abc' is not valid: its database must be a "
            "number, got 'abc'",
        ),
    ],
    ids=["scheme", "empty", "port", "database"],
)
def test_a_url_redis_py_cannot_use_is_refused_at_construction(url: str, message: str) -> None:
    """A URL with another scheme, a port or a database that is not a number is refused by
    the constructor, naming the rule and the URL (its password masked)."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RedisLane("lane", url)


async def test_a_database_redis_refuses_is_reported_as_the_connections_setup(
    redis_server: RedisServer, namespace: str
) -> None:
    """A database number Redis does not have fails with Redis's own words about the
    connection, not a hint about damaged lane keys."""
    lane = RedisLane("lane", redis_server.url.rsplit("/", 1)[0] + "/99", namespace=namespace)
    try:
        with pytest.raises(LaneUnavailable) as e:
            await lane.stats()
        assert str(e.value) == (
            "lane 'lane': Redis refused the connection's setup: DB index is out of range "
            "(check the URL or the client's settings)"
        )
    finally:
        await lane.aclose()


async def test_close_refuses_a_drain_that_is_not_a_bool(make_lane: LaneFactory) -> None:
    """aclose(drain="no") is a TypeError and closes nothing ("no" would drain)."""
    lane = make_lane()
    await lane.stats()
    with pytest.raises(TypeError, match=r"^drain must be a bool, got 'no'$"):
        await lane.aclose(drain="no")  # type: ignore[arg-type]
    assert not lane.closed


async def test_closed_lane(make_lane: LaneFactory) -> None:
    """aclose(drain=False) cancels queued and running jobs; later submits: LaneClosed."""
    lane = make_lane(max_concurrent=1)
    gate = Gate()
    running = await lane.submit(gate.job("r"))
    queued = await lane.submit(gate.job("q"))
    await until(lambda: gate.started == ["r"])
    await lane.aclose(drain=False)
    assert (running.state, queued.state) == (JobState.CANCELLED, JobState.CANCELLED)
    with pytest.raises(LaneClosed, match=r"^lane 'lane' was closed before the job started$"):
        await queued
    with pytest.raises(JobCancelled, match=r"was cancelled: the lane was closed$"):
        await running
    with pytest.raises(LaneClosed, match=r"^lane 'lane' is closed$"):
        await lane.submit(gate.job("late"))
    await lane.aclose()  # again: harmless


async def test_drain_runs_queued_jobs(make_lane: LaneFactory) -> None:
    """aclose(drain=True) returns when every job of this client has run."""
    lane = make_lane(max_concurrent=1)
    done: list[int] = []

    async def job(i: int) -> None:
        await asyncio.sleep(0.01)
        done.append(i)

    for i in range(3):
        await lane.submit(lambda i=i: job(i))  # type: ignore[misc]
    await lane.aclose()
    assert done == [0, 1, 2]


async def test_accepts_a_client_object(redis_server: RedisServer, namespace: str) -> None:
    """A redis.asyncio.Redis client (decoding replies) can be passed; the lane does not
    close it, and keeps all its keys under one hash tag."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with RedisLane("c", client, 2, namespace=namespace) as lane:
        assert await lane.run(lambda: asyncio.sleep(0, "ok")) == "ok"
        assert repr(lane) == "<RedisLane 'c' [max 2 | fifo | here: 0 running, 0 queued]>"
    assert await client.ping()
    keys = [str(k) for k in await client.keys(f"*{namespace}*")]
    assert keys  # the lane's configuration stays
    assert all(k.startswith(f"{{{namespace}:c}}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one Cluster hash slot
    await client.aclose()


async def test_slot_preempted_raises_job_preempted(make_lane: LaneFactory) -> None:
    """A preemptible slot() evicted by another client's arrival leaves with JobPreempted."""
    a = make_lane(max_concurrent=1, preemption=Preemption(min_runtime=0, requeue=True))
    b = make_lane()
    inside = asyncio.Event()
    urgent: list[Any] = []

    async def hold() -> None:
        async with a.slot(preemptible=True):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await inside.wait()
    urgent.append(await b.submit(lambda: asyncio.sleep(0, "urgent"), priority=1))
    with pytest.raises(JobPreempted, match=r"^job '.*' in lane 'lane' was preempted$"):
        await task
    assert await urgent[0] == "urgent"  # a slot cannot be requeued: it just ends


async def test_job_ids_with_spaces_in_wake_ups(make_lane: LaneFactory) -> None:
    """Grants and remote cancels reach jobs whose ids contain spaces (wake-up messages
    are parsed from the right, where only numbers follow the id)."""
    a, b = make_lane(max_concurrent=1), make_lane()
    gate = Gate()
    first = await a.submit(gate.job("first"), job_id="user 1 first")
    granted = await b.submit(gate.job("granted"), job_id="user 2 gets it next")
    dropped = await b.submit(gate.job("dropped"), job_id="user 3 gives up")
    await a.cancel("user 3 gives up")
    # Within a second: before the first heartbeat (lease / 3) could repair a lost message.
    await until(dropped.done, limit=1.0)
    assert dropped.state is JobState.CANCELLED
    gate.open("first")
    await first
    await until(lambda: gate.started == ["first", "granted"], limit=1.0)
    gate.open("granted")
    assert await granted == "granted"


async def test_killed_connections_are_replaced(
    make_lane: LaneFactory, redis_server: RedisServer
) -> None:
    """The connections a client keeps between calls are replaced when the server drops
    them: calls go on, and a grant still reaches the other client's blocking pop."""
    a, b = make_lane(max_concurrent=1), make_lane()
    assert await a.run(lambda: asyncio.sleep(0, "warm")) == "warm"
    assert await b.run(lambda: asyncio.sleep(0, "warm")) == "warm"
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
    finally:
        await admin.aclose()
    assert killed >= 4  # each lane's script and blocking connections
    gate = Gate()
    first = await a.submit(gate.job("first"))
    queued = await b.submit(lambda: asyncio.sleep(0, "granted"))
    assert queued.state is JobState.QUEUED
    gate.open("first")
    await first
    assert await asyncio.wait_for(queued, 5) == "granted"


async def test_close_gives_a_passed_client_its_connections_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """A client passed with a one-connection pool can still be used after the lane that
    borrowed its connection between calls is closed."""
    client = aioredis.Redis.from_url(redis_server.url, max_connections=1)
    try:
        async with RedisLane("c", client, 1, namespace=namespace) as lane:
            assert await lane.run(lambda: asyncio.sleep(0, "ok")) == "ok"
        assert await asyncio.wait_for(client.ping(), 5)
    finally:
        await client.aclose()
