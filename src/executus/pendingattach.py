"""Pending attachments: files and snippets that arrive before (or during) a run.

A user drops an image, then types the question; or sends a file while the agent is
still answering the previous message. ``PendingAttachments`` holds such items per key
(a user, a channel) until the next run for that key claims them all at once.

- Items expire ``ttl`` seconds after they were added (an old upload does not leak into
  a much later question).
- Bounds: at most ``max_per_key`` items per key and ``max_total`` overall. Over a bound,
  ``overflow="drop_oldest"`` (the default) evicts the oldest item (of that key, or
  overall: possibly another key's) and ``add`` returns what it evicted as ``Evicted``
  records, each with the key it was held for, so the harness can tell each owner;
  ``overflow="reject"`` keeps what is held and raises ``AttachmentLimit``.
- ``claim(key)`` returns and removes every live item of the key, oldest first, in one
  synchronous step: two runs can never both get an item, and an item added after the
  claim waits for the next run.

Not thread-safe, like asyncio's own primitives: use it from the event loop.

Example::

    pending = PendingAttachments[bytes](ttl=300, max_per_key=8)

    async def on_upload(user, data):
        for owner, item in pending.add(user, data):   # evicted to stay within bounds
            await out.deliver(owner, "an older attachment was dropped")

    async def on_message(user, text):
        files = pending.claim(user)       # everything uploaded since the last run
        await agent.reply(text, files)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from ._base import check_ttl
from ._clock import SystemClock
from ._errors import reduce_error

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = ["AttachmentLimit", "Evicted", "PendingAttachments"]

T = TypeVar("T")

Overflow = Literal["drop_oldest", "reject"]


class AttachmentLimit(Exception):
    """``overflow="reject"``: adding the item would exceed a bound; nothing was added.

    Attributes:
        key: the key the item was for.
        limit: which bound: ``"max_per_key"`` or ``"max_total"``.
        bound: the bound's value.
    """

    def __init__(self, key: Hashable, limit: str, bound: int) -> None:
        self.key = key
        self.limit = limit
        self.bound = bound
        where = f"key {key!r} already holds" if limit == "max_per_key" else "all keys already hold"
        super().__init__(f"{limit} is {bound}: {where} {bound} pending items")

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_error(self)


class Evicted(NamedTuple, Generic[T]):
    """An item ``add`` dropped to stay within a bound (``overflow="drop_oldest"``).

    Over ``max_total`` the oldest item overall is dropped, which may be another key's:
    ``key`` says whose it was, so the harness can tell that owner.

    Attributes:
        key: the key the item was held for, as given to ``add``.
        item: the item.

    Example::

        for owner, item in pending.add(user, data):
            await out.deliver(owner, f"dropped your older attachment {item.name}")
    """

    # Any, not Hashable: the key comes back as it was given to ``add`` (a user id str,
    # say), and the harness passes it on (``out.deliver(owner, ...)``) without a cast.
    key: Any
    item: T


class PendingAttachments(Generic[T]):
    """Items held per key with a TTL and bounds, claimed by the next run for the key.

    Invariants: ``_items`` holds every live entry in insertion order (which is expiry
    order: the TTL is constant and the clock monotonic), and each key's deque lists
    that key's sequence numbers in the same order; a key with no items has no deque.

    The settings (``ttl``, ``max_per_key``, ``max_total``, ``overflow``) are read-only:
    they are checked once, here, and the expiry order above relies on the TTL never
    changing.

    Args:
        ttl: seconds an item stays claimable (a finite number > 0).
        max_per_key: most items held for one key (>= 1).
        max_total: most items held overall (>= 1).
        overflow: ``"drop_oldest"`` or ``"reject"`` (see the module docs).
        clock: the time source for the TTL (anything with ``monotonic()``).

    Raises:
        ValueError: a setting is out of range or of the wrong type.
    """

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_per_key: int = 16,
        max_total: int = 1024,
        overflow: Overflow = "drop_oldest",
        clock: Clock | None = None,
    ) -> None:
        check_ttl(ttl)
        for name, value in (("max_per_key", max_per_key), ("max_total", max_total)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if overflow not in ("drop_oldest", "reject"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'reject', got {overflow!r}")
        self._ttl = float(ttl)
        self._max_per_key = max_per_key
        self._max_total = max_total
        self._overflow: Overflow = overflow
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._items: OrderedDict[int, tuple[Hashable, T, float]] = OrderedDict()
        self._by_key: dict[Hashable, deque[int]] = {}
        self._seq = 0

    @property
    def ttl(self) -> float:
        """Seconds an item stays claimable after it was added."""
        return self._ttl

    @property
    def max_per_key(self) -> int:
        """The most items held for one key."""
        return self._max_per_key

    @property
    def max_total(self) -> int:
        """The most items held overall."""
        return self._max_total

    @property
    def overflow(self) -> Overflow:
        """``"drop_oldest"`` or ``"reject"``: what happens over a bound."""
        return self._overflow

    def _expire(self, now: float) -> None:
        items = self._items
        while items:
            seq, (key, _, expiry) = next(iter(items.items()))
            if expiry > now:
                break
            self._pop_oldest(seq, key)

    def _pop_oldest(self, seq: int, key: Hashable) -> T:
        """Remove entry ``seq``, the oldest of ``key``."""
        _, item, _ = self._items.pop(seq)
        seqs = self._by_key[key]
        assert seqs[0] == seq, "a key's deque must follow insertion order"
        seqs.popleft()
        if not seqs:
            del self._by_key[key]
        return item

    def add(self, key: Hashable, item: T) -> list[Evicted[T]]:
        """Hold ``item`` for the next run of ``key``.

        Returns:
            The item evicted to make room (``overflow="drop_oldest"``) as an ``Evicted``
            with the key it was held for: ``key``'s own oldest item over
            ``max_per_key``, the oldest overall (perhaps another key's) over
            ``max_total``. Usually empty; never more than one.

        Raises:
            AttachmentLimit: ``overflow="reject"`` and a bound is reached.
        """
        now = self._clock.monotonic()
        self._expire(now)
        seqs = self._by_key.get(key)
        held = 0 if seqs is None else len(seqs)
        if self.overflow == "reject":
            if held >= self.max_per_key:
                raise AttachmentLimit(key, "max_per_key", self.max_per_key)
            if len(self._items) >= self.max_total:
                raise AttachmentLimit(key, "max_total", self.max_total)
        evicted: list[Evicted[T]] = []
        if seqs is not None and held >= self.max_per_key:
            evicted.append(Evicted(key, self._pop_oldest(seqs[0], key)))
        if len(self._items) >= self.max_total:
            seq, (oldest_key, _, _) = next(iter(self._items.items()))
            evicted.append(Evicted(oldest_key, self._pop_oldest(seq, oldest_key)))
        self._seq += 1
        self._items[self._seq] = (key, item, now + self.ttl)
        self._by_key.setdefault(key, deque()).append(self._seq)
        return evicted

    def claim(self, key: Hashable) -> list[T]:
        """Take every live item of ``key``, oldest first; the key holds nothing after."""
        self._expire(self._clock.monotonic())
        seqs = self._by_key.pop(key, None)
        if seqs is None:
            return []
        return [self._items.pop(seq)[1] for seq in seqs]

    def peek(self, key: Hashable) -> list[T]:
        """The live items of ``key``, oldest first, without removing them."""
        self._expire(self._clock.monotonic())
        return [self._items[seq][1] for seq in self._by_key.get(key, ())]

    def count(self, key: Hashable) -> int:
        """How many live items ``key`` holds."""
        self._expire(self._clock.monotonic())
        seqs = self._by_key.get(key)
        return 0 if seqs is None else len(seqs)

    def __len__(self) -> int:
        """How many live items are held overall."""
        self._expire(self._clock.monotonic())
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<PendingAttachments [{len(self._items)}/{self.max_total} items, "
            f"{len(self._by_key)} keys] ttl={self.ttl:g}s>"
        )
