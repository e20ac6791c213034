"""Tests for executus.dispatchguard: duplicate events and one dispatch in flight per key."""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections import Counter

import pytest

from executus.dispatchguard import (
    Admission,
    DispatchGuard,
    DispatchRefused,
    DuplicateEvent,
    KeyBusy,
    Superseded,
)
from executus.testing import ManualClock
from tests.helpers import settle


async def nothing() -> str:
    """A dispatch body that returns at once."""
    return "ok"


class Hold:
    """A dispatch body that runs until the test opens it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self) -> str:
        self.entered.set()
        await self.gate.wait()
        return "done"


# -- deduplication ---------------------------------------------------------------------------


async def test_duplicate_event_within_ttl_is_refused(clock: ManualClock) -> None:
    """An event id seen within the TTL is refused; after the TTL it is admitted again."""
    guard = DispatchGuard(ttl=60, clock=clock)
    async with guard.dispatch("alice", event_id="e1") as admission:
        assert admission == Admission("alice", "e1", waited=False, superseded=0)
    with pytest.raises(DuplicateEvent) as e:
        async with guard.dispatch("alice", event_id="e1"):
            pytest.fail("a duplicate must not be admitted")
    assert str(e.value) == "event 'e1' was already seen in the last 60s"
    assert (e.value.key, e.value.event_id) == ("alice", "e1")
    clock.advance(59.9)
    assert guard.seen("e1")
    clock.advance(0.1)
    assert not guard.seen("e1")
    async with guard.dispatch("alice", event_id="e1"):
        pass


async def test_seen_ids_are_bounded_by_time_and_size(clock: ManualClock) -> None:
    """Expired ids leave memory; beyond max_seen the oldest ids are forgotten early."""
    guard = DispatchGuard(ttl=10, max_seen=3, clock=clock)
    for i in range(5):
        assert guard.remember(f"e{i}")
        clock.advance(1)
    assert len(guard._seen) == 3
    assert [guard.seen(f"e{i}") for i in range(5)] == [False, False, True, True, True]
    clock.advance(10)
    guard.remember("late")
    assert list(guard._seen) == ["late"]


def test_remember_and_forget() -> None:
    """remember() reports a first sighting; forget() lets an id through again."""
    guard = DispatchGuard()
    assert guard.remember("x") is True
    assert guard.remember("x") is False
    guard.forget("x")
    assert guard.remember("x") is True


async def test_event_without_key_is_only_deduplicated() -> None:
    """key=None skips the per-key limit: two such dispatches may overlap."""
    guard = DispatchGuard()
    async with guard.dispatch(None, event_id="a"), guard.dispatch(None, event_id="b"):
        assert len(guard) == 0
    with pytest.raises(DuplicateEvent):
        async with guard.dispatch(None, event_id="a"):
            pass


# -- reject mode --------------------------------------------------------------------------------


async def test_reject_mode_refuses_a_second_arrival() -> None:
    """While a key is in flight another arrival is refused; other keys proceed."""
    guard = DispatchGuard(mode="reject")
    hold = Hold()
    task = asyncio.create_task(guard.run("alice", hold, event_id="e1"))
    await hold.entered.wait()
    assert guard.busy("alice")
    with pytest.raises(KeyBusy) as e:
        await guard.run("alice", hold, event_id="e2")
    assert str(e.value) == "event 'e2' refused: a dispatch for key 'alice' is in flight"
    assert await guard.run("bob", nothing, event_id="e3") == "ok"
    hold.gate.set()
    assert await task == "done"
    assert not guard.busy("alice")
    assert len(guard) == 0


# -- coalesce mode -------------------------------------------------------------------------------


async def test_coalesce_keeps_only_the_latest_waiting_arrival() -> None:
    """Waiting arrivals are superseded by newer ones; the latest runs after the holder."""
    guard = DispatchGuard(mode="coalesce")
    hold = Hold()
    first = asyncio.create_task(guard.run("alice", hold, event_id="m1"))
    await hold.entered.wait()

    async def later(event_id: str) -> Admission:
        async with guard.dispatch("alice", event_id=event_id) as admission:
            return admission

    m2 = asyncio.create_task(later("m2"))
    await settle()
    assert guard.waiting("alice")
    m3 = asyncio.create_task(later("m3"))
    await settle()
    m4 = asyncio.create_task(later("m4"))
    await settle()
    with pytest.raises(Superseded) as e:
        await m2
    assert str(e.value) == "event 'm2' for key 'alice' was superseded by event 'm3'"
    assert e.value.by == "m3"
    with pytest.raises(Superseded) as e:
        await m3
    assert e.value.by == "m4"
    assert not m4.done()
    hold.gate.set()
    assert await first == "done"
    assert await m4 == Admission("alice", "m4", waited=True, superseded=2)
    assert len(guard) == 0


async def test_failed_dispatch_frees_the_key_and_hands_over() -> None:
    """A dispatch that raises frees its key; the waiting arrival then runs."""
    guard = DispatchGuard(mode="coalesce")
    entered = asyncio.Event()
    fail = asyncio.Event()

    async def boom() -> None:
        entered.set()
        await fail.wait()
        raise RuntimeError("model crashed")

    first = asyncio.create_task(guard.run("k", boom, event_id="a"))
    await entered.wait()
    second = asyncio.create_task(guard.run("k", nothing, event_id="b"))
    await settle()
    fail.set()
    with pytest.raises(RuntimeError, match=r"^model crashed$"):
        await first
    assert await second == "ok"
    assert len(guard) == 0
    # The failed event stays seen by default.
    assert guard.seen("a")


async def test_forget_failed_admits_a_redelivery() -> None:
    """forget_failed=True forgets a failed event so its redelivery is a retry."""
    guard = DispatchGuard(forget_failed=True)

    async def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match=r"^bad$"):
        await guard.run("k", boom, event_id="a")
    assert not guard.seen("a")
    assert await guard.run("k", nothing, event_id="a") == "ok"
    assert guard.seen("a")


async def test_cancelled_holder_frees_the_key() -> None:
    """Cancelling the task holding a key frees it and hands it to the waiter."""
    guard = DispatchGuard(mode="coalesce")
    hold = Hold()
    holder = asyncio.create_task(guard.run("k", hold, event_id="a"))
    await hold.entered.wait()
    waiter = asyncio.create_task(guard.run("k", nothing, event_id="b"))
    await settle()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert await waiter == "ok"
    assert len(guard) == 0


async def test_cancelled_waiter_leaves_nothing_behind() -> None:
    """A waiting arrival that is cancelled is removed; the key frees when the holder ends."""
    guard = DispatchGuard(mode="coalesce")
    hold = Hold()
    holder = asyncio.create_task(guard.run("k", hold, event_id="a"))
    await hold.entered.wait()
    waiter = asyncio.create_task(guard.run("k", nothing, event_id="b"))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not guard.waiting("k")
    hold.gate.set()
    await holder
    assert len(guard) == 0


async def test_waiter_cancelled_after_hand_over_passes_the_key_on() -> None:
    """A waiter handed the key but cancelled before it resumed passes the key on."""
    guard = DispatchGuard(mode="coalesce")
    ran: list[str] = []
    go_c = asyncio.Event()

    async def note(name: str) -> None:
        ran.append(name)

    async def arrive_c() -> None:
        await go_c.wait()
        await guard.run("k", lambda: note("c"), event_id="c")

    third = asyncio.create_task(arrive_c())
    async with guard.dispatch("k", event_id="a"):
        waiter = asyncio.create_task(guard.run("k", lambda: note("b"), event_id="b"))
        await settle()
        assert guard.waiting("k")
        go_c.set()  # c wakes before b: it arrives after the hand-over below
    # Leaving the block handed the key to b, which has not resumed yet.
    assert guard.busy("k")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(third, 5)
    assert ran == ["c"]
    assert len(guard) == 0


# -- racing tasks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reject", "coalesce"])
async def test_many_racing_tasks_keep_one_in_flight_per_key(mode: str) -> None:
    """Hundreds of racing arrivals with duplicates and cancellations never overlap a key."""
    rng = random.Random(7)
    guard = DispatchGuard(mode="reject" if mode == "reject" else "coalesce")
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()

    async def body(key: str, steps: int, fail: bool) -> None:
        in_flight[key] += 1
        peak[key] = max(peak[key], in_flight[key])
        try:
            for _ in range(steps):
                await asyncio.sleep(0)
            if fail:
                raise RuntimeError("boom")
        finally:
            in_flight[key] -= 1

    async def arrival(i: int) -> None:
        for _ in range(rng.randrange(20)):
            await asyncio.sleep(0)
        key = f"k{rng.randrange(4)}"
        event_id = f"e{rng.randrange(300)}"  # about a third are duplicates
        steps, fail = rng.randrange(6), rng.random() < 0.1
        try:
            await guard.run(key, lambda: body(key, steps, fail), event_id=event_id)
            outcomes["ok"] += 1
        except DispatchRefused as e:
            outcomes[type(e).__name__] += 1
        except RuntimeError:
            outcomes["failed"] += 1

    tasks = [asyncio.create_task(arrival(i)) for i in range(400)]
    for victim in rng.sample(tasks, 40):
        victim.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert cancelled + sum(outcomes.values()) == 400
    assert max(peak.values()) == 1
    assert outcomes["DuplicateEvent"] > 0
    assert outcomes["ok"] > 0
    refused = "KeyBusy" if mode == "reject" else "Superseded"
    assert outcomes[refused] > 0
    assert len(guard) == 0
    assert sum(in_flight.values()) == 0


def test_constructor_validates() -> None:
    """Bad ttl, max_seen and mode are refused with the rule and the value."""
    with pytest.raises(ValueError, match=r"^ttl must be a finite number > 0, got 0$"):
        DispatchGuard(ttl=0)
    with pytest.raises(ValueError, match=r"^max_seen must be an int >= 1, got 0$"):
        DispatchGuard(max_seen=0)
    with pytest.raises(ValueError, match=r"^mode must be 'reject' or 'coalesce', got 'drop'$"):
        DispatchGuard(mode="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ttl", [10**400, math.inf, math.nan, "600"], ids=["10**400", "inf", "nan", "str"]
)
def test_a_ttl_that_is_not_a_finite_number_is_refused(ttl: object) -> None:
    """A ttl that is infinite, NaN, too large for a float or not a number is refused with
    a ValueError naming the setting."""
    text = f"ttl must be a finite number > 0, got {ttl!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        DispatchGuard(ttl=ttl)  # type: ignore[arg-type]


def test_repr() -> None:
    """The repr shows the mode, the keys in flight and the ids remembered."""
    guard = DispatchGuard(ttl=30, mode="coalesce")
    guard.remember("a")
    assert repr(guard) == "<DispatchGuard coalesce [0 in flight, 1 ids seen] ttl=30s>"
