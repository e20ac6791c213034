"""Tests for executus.pendingattach: attachments held per key until the next run claims them."""

from __future__ import annotations

import asyncio
import math
import pickle
import re

import pytest

from executus import pendingattach
from executus.deliver import Delivery, Recorder
from executus.pendingattach import AttachmentLimit, Evicted, PendingAttachments
from executus.testing import ManualClock
from tests.helpers import settle


def test_claim_returns_all_items_oldest_first_and_removes_them(clock: ManualClock) -> None:
    """claim(key) takes every live item of the key, oldest first; other keys keep theirs."""
    pending = PendingAttachments[str](clock=clock)
    pending.add("alice", "a1")
    pending.add("bob", "b1")
    pending.add("alice", "a2")
    assert pending.peek("alice") == ["a1", "a2"]
    assert pending.count("alice") == 2
    assert pending.claim("alice") == ["a1", "a2"]
    assert pending.claim("alice") == []
    assert pending.count("alice") == 0
    assert pending.claim("bob") == ["b1"]
    assert len(pending) == 0
    assert pending._by_key == {}


def test_items_expire_after_ttl(clock: ManualClock) -> None:
    """Items older than the TTL are not claimed and leave memory."""
    pending = PendingAttachments[str](ttl=60, clock=clock)
    pending.add("alice", "old")
    clock.advance(30)
    pending.add("alice", "new")
    pending.add("bob", "b")
    clock.advance(30)
    assert len(pending) == 2
    assert pending.claim("alice") == ["new"]
    clock.advance(30)
    assert len(pending) == 0
    assert pending._by_key == {}


def test_per_key_bound_drops_the_oldest_of_that_key(clock: ManualClock) -> None:
    """Over max_per_key, the key's oldest item is evicted and returned by add, with its key."""
    pending = PendingAttachments[int](max_per_key=2, clock=clock)
    assert pending.add("alice", 1) == []
    assert pending.add("bob", 10) == []
    assert pending.add("alice", 2) == []
    assert pending.add("alice", 3) == [Evicted("alice", 1)]
    assert pending.claim("alice") == [2, 3]
    assert pending.claim("bob") == [10]


def test_total_bound_drops_the_oldest_overall(clock: ManualClock) -> None:
    """Over max_total, the oldest item of any key is evicted and returned by add, with its
    key."""
    pending = PendingAttachments[int](max_per_key=10, max_total=3, clock=clock)
    pending.add("alice", 1)
    pending.add("bob", 2)
    pending.add("alice", 3)
    assert pending.add("carol", 4) == [Evicted("alice", 1)]
    assert len(pending) == 3
    assert pending.add("carol", 5) == [Evicted("bob", 2)]
    assert pending.claim("bob") == []
    assert pending.claim("alice") == [3]
    assert pending.claim("carol") == [4, 5]


async def test_an_eviction_over_max_total_tells_its_owner(clock: ManualClock) -> None:
    """An item of another key evicted over max_total is returned with that key, so the
    harness tells its owner, not the user who added the new item."""
    pending = PendingAttachments[str](ttl=300, max_per_key=8, max_total=2, clock=clock)
    out = Recorder()

    async def on_upload(user: str, name: str) -> None:
        for owner, item in pending.add(user, name):
            await out.deliver(owner, f"dropped your older attachment {item}")

    await on_upload("bob", "bob-passport.jpg")
    await on_upload("bob", "bob-notes.txt")
    await on_upload("alice", "alice-cat.png")
    assert out.deliveries == [Delivery("bob", "dropped your older attachment bob-passport.jpg")]
    assert (pending.peek("alice"), pending.peek("bob")) == (["alice-cat.png"], ["bob-notes.txt"])


def test_evicted_is_a_named_pair_that_pickles(clock: ManualClock) -> None:
    """An Evicted record unpacks as (key, item), names both fields and pickles."""
    pending = PendingAttachments[str](max_per_key=1, clock=clock)
    pending.add("alice", "a1")
    [evicted] = pending.add("alice", "a2")
    key, item = evicted
    assert (key, item) == (evicted.key, evicted.item) == ("alice", "a1")
    assert repr(evicted) == "Evicted(key='alice', item='a1')"
    assert pickle.loads(pickle.dumps(evicted)) == evicted
    assert "Evicted" in pendingattach.__all__


@pytest.mark.parametrize(
    "ttl", [10**400, math.inf, math.nan, "300"], ids=["10**400", "inf", "nan", "str"]
)
def test_a_ttl_that_is_not_a_finite_number_is_refused(ttl: object) -> None:
    """A ttl that is infinite, NaN, too large for a float or not a number is refused with
    a ValueError naming the setting."""
    text = f"ttl must be a finite number > 0, got {ttl!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        PendingAttachments[int](ttl=ttl)  # type: ignore[arg-type]


def test_reject_overflow_raises_and_keeps_what_is_held(clock: ManualClock) -> None:
    """overflow='reject' refuses the new item with AttachmentLimit and changes nothing."""
    pending = PendingAttachments[int](max_per_key=2, max_total=3, overflow="reject", clock=clock)
    pending.add("alice", 1)
    pending.add("alice", 2)
    with pytest.raises(AttachmentLimit) as e:
        pending.add("alice", 3)
    assert str(e.value) == "max_per_key is 2: key 'alice' already holds 2 pending items"
    assert (e.value.key, e.value.limit, e.value.bound) == ("alice", "max_per_key", 2)
    pending.add("bob", 4)
    with pytest.raises(AttachmentLimit) as e:
        pending.add("carol", 5)
    assert str(e.value) == "max_total is 3: all keys already hold 3 pending items"
    assert pending.claim("alice") == [1, 2]
    assert pending.claim("bob") == [4]
    # Expiry makes room again.
    pending.add("x", 6)
    clock.advance(600)
    pending.add("x", 7)
    assert pending.claim("x") == [7]


async def test_claim_is_atomic_between_racing_runs(clock: ManualClock) -> None:
    """Racing claims and adds never hand one item to two runs nor lose one."""
    pending = PendingAttachments[int](max_per_key=10_000, max_total=10_000, clock=clock)
    claimed: list[int] = []

    async def uploader(start: int) -> None:
        for i in range(start, start + 100):
            pending.add("alice", i)
            await asyncio.sleep(0)

    async def run() -> None:
        for _ in range(50):
            claimed.extend(pending.claim("alice"))
            await asyncio.sleep(0)

    await asyncio.gather(uploader(0), uploader(1000), run(), run(), run())
    await settle()
    claimed.extend(pending.claim("alice"))
    assert sorted(claimed) == [*range(100), *range(1000, 1100)]
    assert len(pending) == 0


def test_constructor_validates() -> None:
    """Bad ttl, bounds and overflow are refused with the rule and the value."""
    with pytest.raises(ValueError, match=r"^ttl must be a finite number > 0, got -1$"):
        PendingAttachments[int](ttl=-1)
    with pytest.raises(ValueError, match=r"^max_per_key must be an int >= 1, got 0$"):
        PendingAttachments[int](max_per_key=0)
    with pytest.raises(ValueError, match=r"^max_total must be an int >= 1, got 0$"):
        PendingAttachments[int](max_total=0)
    with pytest.raises(
        ValueError, match=r"^overflow must be 'drop_oldest' or 'reject', got 'grow'$"
    ):
        PendingAttachments[int](overflow="grow")  # type: ignore[arg-type]


def test_repr(clock: ManualClock) -> None:
    """The repr shows items, bound, keys and TTL."""
    pending = PendingAttachments[str](ttl=90, max_total=5, clock=clock)
    pending.add("a", "x")
    assert repr(pending) == "<PendingAttachments [1/5 items, 1 keys] ttl=90s>"
