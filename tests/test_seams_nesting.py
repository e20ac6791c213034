"""The harness seams: nested dispatch, superseded counts, Recorder."""

from __future__ import annotations

import asyncio

import pytest

from executus.deliver import Delivery, Recorder
from executus.dispatchguard import Admission, DispatchGuard, KeyBusy, Superseded
from tests.helpers import settle


async def nothing() -> None:
    """A dispatch body that returns at once."""


NESTED = (
    "event 'inner' refused: a dispatch for key 'alice' is already running in this task, "
    "and a dispatch cannot nest inside one for the same key"
)


async def _nested(guard: DispatchGuard) -> KeyBusy:
    """Dispatch 'alice' inside a dispatch of 'alice' in one task; return the refusal."""
    async with asyncio.timeout(1):  # the old coalesce guard waited for itself forever
        async with guard.dispatch("alice", event_id="outer"):
            with pytest.raises(KeyBusy) as info:
                async with guard.dispatch("alice", event_id="inner"):
                    pytest.fail("a nested dispatch of the same key must not be admitted")
            assert guard.busy("alice")
            assert not guard.waiting("alice")
    return info.value


@pytest.mark.parametrize("mode", ["reject", "coalesce"])
async def test_nested_dispatch_of_the_same_key_in_one_task_is_refused(mode: str) -> None:
    """A dispatch nested in the same task's dispatch of the key fails fast with KeyBusy
    (nested=True), alike in both modes, instead of waiting for itself; the key then frees."""
    guard = DispatchGuard(mode="coalesce" if mode == "coalesce" else "reject")
    refusal = await _nested(guard)
    assert str(refusal) == NESTED
    assert (refusal.key, refusal.event_id, refusal.nested) == ("alice", "inner", True)
    assert len(guard) == 0
    assert guard.seen("inner")  # a refused event's id stays seen, as for any refusal
    async with guard.dispatch("alice", event_id="next") as admission:  # the key is free
        assert admission == Admission("alice", "next", waited=False, superseded=0)


async def test_a_second_arrival_from_another_task_is_not_called_nested() -> None:
    """In reject mode, an arrival from another task keeps the plain KeyBusy (nested=False)."""
    guard = DispatchGuard(mode="reject")
    async with guard.dispatch("alice", event_id="a"):
        task = asyncio.create_task(guard.run("alice", nothing, event_id="b"))
        with pytest.raises(KeyBusy) as info:
            await task
    assert str(info.value) == "event 'b' refused: a dispatch for key 'alice' is in flight"
    assert info.value.nested is False


async def test_nested_dispatch_after_waiting_for_the_key_is_refused() -> None:
    """An arrival that waited and was handed the key holds it: a dispatch nested in it
    is refused too (coalesce mode), not left waiting for itself."""
    guard = DispatchGuard(mode="coalesce")
    gate = asyncio.Event()
    first = asyncio.create_task(guard.run("alice", gate.wait, event_id="first"))
    await settle()

    async def waiter() -> KeyBusy:
        async with guard.dispatch("alice", event_id="outer") as admission:
            assert admission.waited
            with pytest.raises(KeyBusy) as info:
                async with guard.dispatch("alice", event_id="inner"):
                    pytest.fail("a nested dispatch of the same key must not be admitted")
        return info.value

    second = asyncio.create_task(waiter())
    await settle()
    gate.set()
    async with asyncio.timeout(1):
        refusal = await second
    await first
    assert str(refusal) == NESTED
    assert len(guard) == 0


async def test_a_task_that_handed_its_key_over_may_dispatch_it_again() -> None:
    """A task that left its dispatch (handing the key to a waiter) and dispatches the key
    again is a new arrival: it waits for the waiter, and is not refused as nested."""
    guard = DispatchGuard(mode="coalesce")
    order: list[str] = []

    async def note(name: str) -> None:
        order.append(name)
        await asyncio.sleep(0)

    async with guard.dispatch("alice", event_id="a1"):
        other = asyncio.create_task(guard.run("alice", lambda: note("b"), event_id="b"))
        await settle()
        assert guard.waiting("alice")
    async with asyncio.timeout(1):
        async with guard.dispatch("alice", event_id="a2") as admission:
            order.append("a2")
    await other
    assert order == ["b", "a2"]
    assert admission == Admission("alice", "a2", waited=True, superseded=0)
    assert len(guard) == 0


async def test_a_follow_up_from_a_child_task_waits_for_the_body() -> None:
    """Coalesce mode: a dispatch of the same key from a task the body starts (and does not
    await) is an ordinary arrival: it waits, and runs once the body has ended."""
    guard = DispatchGuard(mode="coalesce")
    follow_up: asyncio.Task[Admission] | None = None

    async def again() -> Admission:
        async with guard.dispatch("alice", event_id="follow-up") as admission:
            return admission

    async with guard.dispatch("alice", event_id="first"):
        follow_up = asyncio.create_task(again())
        await settle()
        assert guard.waiting("alice")
        assert not follow_up.done()
    async with asyncio.timeout(1):
        assert await follow_up == Admission("alice", "follow-up", waited=True, superseded=0)
    assert len(guard) == 0


async def _arrive(
    guard: DispatchGuard, event_id: str, go: asyncio.Event | None = None
) -> Admission:
    """Wait for ``go`` (if given), then dispatch ``event_id`` for 'alice'."""
    if go is not None:
        await go.wait()
    async with guard.dispatch("alice", event_id=event_id) as admission:
        return admission


@pytest.mark.parametrize("chained", [False, True])
async def test_superseded_does_not_count_a_cancelled_waiter(chained: bool) -> None:
    """A waiting arrival cancelled (and not yet resumed) when a newer one comes was not
    replaced by it: the newer one's superseded count leaves it (and any it replaced) out."""
    guard = DispatchGuard(mode="coalesce")
    gate = asyncio.Event()
    holder = asyncio.create_task(guard.run("alice", gate.wait, event_id="m0"))
    await settle()
    earlier: asyncio.Task[Admission] | None = None
    if chained:
        earlier = asyncio.create_task(_arrive(guard, "m1"))
        await settle()
    cancelled = asyncio.create_task(_arrive(guard, "m2"))
    await settle()
    go = asyncio.Event()
    newer = asyncio.create_task(_arrive(guard, "m3", go))
    await settle()
    go.set()  # m3 wakes first and arrives while m2 is cancelled but has not resumed
    cancelled.cancel()
    await settle()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not guard.seen("m2")  # it never reached the agent
    if earlier is not None:
        with pytest.raises(Superseded) as info:
            await earlier
        assert info.value.by == "m2"
    gate.set()
    await holder
    assert await newer == Admission("alice", "m3", waited=True, superseded=0)
    assert len(guard) == 0


async def test_superseded_counts_the_arrivals_actually_replaced() -> None:
    """Two waiting arrivals replaced in turn are both counted by the latest."""
    guard = DispatchGuard(mode="coalesce")
    gate = asyncio.Event()
    holder = asyncio.create_task(guard.run("alice", gate.wait, event_id="m0"))
    await settle()
    tasks = []
    for event_id in ("m1", "m2", "m3"):
        tasks.append(asyncio.create_task(_arrive(guard, event_id)))
        await settle()
    gate.set()
    await holder
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results[:2]] == ["Superseded", "Superseded"]
    assert results[2] == Admission("alice", "m3", waited=True, superseded=2)


def test_recorder_waits_again_in_another_event_loop() -> None:
    """A Recorder whose wait_for timed out can wait again from another event loop (a
    recorder shared by several tests) instead of failing on an object of the old loop."""
    rec = Recorder()

    async def times_out() -> None:
        with pytest.raises(TimeoutError):
            await rec.wait_for(1, timeout=0.01)

    async def waits() -> list[Delivery]:
        task = asyncio.create_task(rec.wait_for(1, timeout=1))
        await settle()
        await rec.deliver("alice", "done")
        return await task

    asyncio.run(times_out())
    assert asyncio.run(waits()) == [Delivery("alice", "done")]
    assert rec._waiters == []


async def test_recorder_wakes_every_concurrent_waiter_and_keeps_no_stale_waiter() -> None:
    """Two concurrent wait_for calls both wake; one that times out leaves nothing behind."""
    rec = Recorder()
    first = asyncio.create_task(rec.wait_for(1, timeout=1))
    second = asyncio.create_task(rec.wait_for(2, timeout=1))
    third = asyncio.create_task(rec.wait_for(5, timeout=0.01))
    await settle()
    await rec.deliver("a", "1")
    assert await first == [Delivery("a", "1")]
    await rec.deliver("a", "2")
    assert len(await second) == 2
    with pytest.raises(TimeoutError):
        await third
    assert rec._waiters == []


@pytest.mark.parametrize(
    ("key", "event_id", "message"),
    [
        (["alice"], "e1", "key must be a str or None, got ['alice']"),
        (42, "e1", "key must be a str or None, got 42"),
        ("alice", 7, "event_id must be a str or None, got 7"),
    ],
)
async def test_dispatch_refuses_a_bad_key_or_event_id_before_recording_anything(
    key: object, event_id: object, message: str
) -> None:
    """A key or event id that is not a str (or None) is a TypeError raised before the event
    is admitted: the id is not burned, and the key is not held."""
    guard = DispatchGuard()
    with pytest.raises(TypeError) as info:
        async with guard.dispatch(key, event_id=event_id):  # type: ignore[arg-type]
            pytest.fail("a bad key or event id must not be admitted")
    assert str(info.value) == message
    with pytest.raises(TypeError) as info:
        await guard.run(key, nothing, event_id=event_id)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert guard._seen == {}
    assert len(guard) == 0
    async with guard.dispatch("alice", event_id="e1") as admission:  # e1 was not burned
        assert admission.event_id == "e1"
