"""Dispatch guard: admission for incoming events before they reach the agent.

Chat platforms and webhooks deliver at least once, and users type faster than an
agent answers. ``DispatchGuard`` sits between the host's event stream and the agent:

1. **Duplicates**: an event id seen within ``ttl`` seconds is refused with
   ``DuplicateEvent``. Memory is bounded by time (ids expire after ``ttl``) and by size
   (at most ``max_seen`` ids; beyond that the oldest are forgotten early, so a very late
   redelivery of one of them could get through again).
2. **One in flight per key** (a user, a channel): while a dispatch for a key runs,

   - ``mode="reject"``: a second arrival is refused with ``KeyBusy``;
   - ``mode="coalesce"``: it waits; only the latest waiting arrival is kept, and the
     earlier waiting ones are refused with ``Superseded``. When the running dispatch
     ends, the latest waiting one runs.

A dispatch nested in a dispatch of the same key *in the same task* is refused at once
with ``KeyBusy`` (``nested=True``) in both modes: in coalesce mode it would otherwise
wait for itself. From another task (a child task the body awaits) the guard cannot tell
a nested dispatch from a later arrival: in coalesce mode it waits for the body, so a
body that awaits such a task deadlocks. Do nested work inside the admitted dispatch.

Every refusal is a ``DispatchRefused``; a refused event's id stays seen, so a
redelivery of it is a duplicate. An arrival cancelled while it waits for its key never
reached the agent: its id is forgotten, so a redelivery of it is admitted. A dispatch
that raises or is cancelled frees its key like one that returns (nothing leaks), and
the next waiting arrival runs.

Example::

    guard = DispatchGuard(ttl=600, mode="coalesce")

    async def on_message(event):
        try:
            async with guard.dispatch(event.channel, event_id=event.id):
                await agent.reply(event)
        except DispatchRefused:
            pass   # a duplicate, or a message overtaken by a newer one
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._base import check_ttl
from ._clock import SystemClock
from ._errors import reduce_error

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = [
    "Admission",
    "DispatchGuard",
    "DispatchRefused",
    "DuplicateEvent",
    "KeyBusy",
    "Superseded",
]

T = TypeVar("T")

Mode = Literal["reject", "coalesce"]


class DispatchRefused(Exception):
    """An event was not admitted; subclasses say why.

    Attributes:
        key: the event's dispatch key (None when it had none).
        event_id: the event's id (None when it had none).
    """

    def __init__(self, key: str | None, event_id: str | None, message: str) -> None:
        self.key = key
        self.event_id = event_id
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_error(self)


class DuplicateEvent(DispatchRefused):
    """The event id was already seen within the guard's TTL."""

    def __init__(self, key: str | None, event_id: str, ttl: float) -> None:
        super().__init__(key, event_id, f"event {event_id!r} was already seen in the last {ttl:g}s")


class KeyBusy(DispatchRefused):
    """A dispatch for the key is already in flight.

    Raised in ``mode="reject"`` for a second arrival, and in either mode for a dispatch
    nested inside a dispatch of the same key in the same task (which, in coalesce mode,
    would otherwise wait for itself forever).

    Attributes:
        nested: True when the dispatch in flight is the caller's own (same task).
    """

    def __init__(self, key: str, event_id: str | None, *, nested: bool = False) -> None:
        self.nested = nested
        what = "event" if event_id is None else f"event {event_id!r}"
        if nested:
            message = (
                f"{what} refused: a dispatch for key {key!r} is already running in this "
                "task, and a dispatch cannot nest inside one for the same key"
            )
        else:
            message = f"{what} refused: a dispatch for key {key!r} is in flight"
        super().__init__(key, event_id, message)


class Superseded(DispatchRefused):
    """``mode="coalesce"``: a newer arrival for the key replaced this waiting one.

    Attributes:
        by: the event id of the newer arrival (None when it had none).
    """

    def __init__(self, key: str, event_id: str | None, by: str | None) -> None:
        self.by = by
        what = "event" if event_id is None else f"event {event_id!r}"
        newer = "a newer event" if by is None else f"event {by!r}"
        super().__init__(key, event_id, f"{what} for key {key!r} was superseded by {newer}")


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``dispatch`` yields to an admitted event.

    Attributes:
        key: the dispatch key.
        event_id: the event id.
        waited: True when the event waited for an earlier dispatch of its key to end.
        superseded: how many waiting events this one replaced (coalesce mode), with
            those they had replaced in turn; a waiting event that was cancelled was not
            replaced and is not counted.
    """

    key: str | None
    event_id: str | None
    waited: bool
    superseded: int


class _Waiter:
    """The one arrival waiting for a busy key (coalesce mode)."""

    __slots__ = ("by", "event_id", "future", "superseded", "task")

    def __init__(
        self,
        event_id: str | None,
        future: asyncio.Future[bool],
        superseded: int,
        task: asyncio.Task[object] | None,
    ):
        self.event_id = event_id
        self.future = future  # result True: the slot is handed over; False: superseded
        self.superseded = superseded
        self.by: str | None = None  # the id of the arrival that replaced this one
        self.task = task  # the waiting task: it holds the key once handed the slot


class _KeyState:
    """A key with a dispatch in flight. Exists only while the key is busy."""

    __slots__ = ("holder", "waiter")

    def __init__(self, holder: asyncio.Task[object] | None) -> None:
        # The task holding the key (from the hand-over on, for a waiter handed the slot):
        # a dispatch of the key from that same task is nested, and refused.
        self.holder = holder
        self.waiter: _Waiter | None = None


class DispatchGuard:
    """Admission control for incoming events: deduplication and one dispatch per key.

    Invariants (all state changes are synchronous, between awaits):

    - a key is in ``_busy`` exactly while one admitted dispatch holds it, and its
      ``holder`` is that dispatch's task (from the hand-over on, for a waiter);
    - a busy key has at most one waiter (coalesce mode), and the slot passes to it
      directly when the holder leaves, so no third arrival can slip in between;
    - seen ids are ordered by expiry, as the TTL is constant and the clock monotonic.

    The settings (``ttl``, ``max_seen``, ``mode``) are read-only: they are checked once,
    here, and the expiry order above relies on the TTL never changing.

    Args:
        ttl: seconds an event id is remembered (a finite number > 0).
        max_seen: at most this many ids are remembered (>= 1).
        mode: ``"reject"`` or ``"coalesce"`` (see the module docs).
        forget_failed: when True, an event whose dispatch raised an exception (not a
            cancellation) is forgotten, so a redelivery of it is admitted (a retry); by
            default it stays seen.
        clock: the time source for the TTL (anything with ``monotonic()``).

    Raises:
        ValueError: ``ttl``, ``max_seen`` or ``mode`` is out of range or of the wrong type.

    Example::

        guard = DispatchGuard(ttl=300, mode="reject")
        async with guard.dispatch("user-42", event_id="evt-1"):
            ...
    """

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_seen: int = 10_000,
        mode: Mode = "reject",
        forget_failed: bool = False,
        clock: Clock | None = None,
    ) -> None:
        check_ttl(ttl)
        if isinstance(max_seen, bool) or not isinstance(max_seen, int) or max_seen < 1:
            raise ValueError(f"max_seen must be an int >= 1, got {max_seen!r}")
        if mode not in ("reject", "coalesce"):
            raise ValueError(f"mode must be 'reject' or 'coalesce', got {mode!r}")
        self._ttl = float(ttl)
        self._max_seen = max_seen
        self._mode: Mode = mode
        self.forget_failed = forget_failed
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> expiry, oldest first
        self._busy: dict[str, _KeyState] = {}

    @property
    def ttl(self) -> float:
        """Seconds an event id is remembered."""
        return self._ttl

    @property
    def max_seen(self) -> int:
        """The most event ids remembered at once."""
        return self._max_seen

    @property
    def mode(self) -> Mode:
        """``"reject"`` or ``"coalesce"``: what a second arrival for a busy key gets."""
        return self._mode

    # -- deduplication --------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            event_id, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[event_id]

    def seen(self, event_id: str) -> bool:
        """True when ``event_id`` was recorded within the TTL (does not record it)."""
        self._expire(self._clock.monotonic())
        return event_id in self._seen

    def remember(self, event_id: str) -> bool:
        """Record ``event_id``; False when it was already seen within the TTL.

        Use this alone for events that need no per-key limit.
        """
        now = self._clock.monotonic()
        self._expire(now)
        if event_id in self._seen:
            return False
        self._seen[event_id] = now + self.ttl
        while len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        return True

    def forget(self, event_id: str) -> None:
        """Forget ``event_id``, so a redelivery of it is admitted."""
        self._seen.pop(event_id, None)

    # -- one in flight per key -----------------------------------------------------------------

    def busy(self, key: str) -> bool:
        """True while a dispatch for ``key`` is in flight."""
        return key in self._busy

    def waiting(self, key: str) -> bool:
        """True when an arrival for ``key`` waits for the one in flight (coalesce mode)."""
        state = self._busy.get(key)
        return state is not None and state.waiter is not None

    async def _acquire(self, key: str, event_id: str | None) -> tuple[bool, int]:
        """Take ``key``'s slot; returns (waited, superseded)."""
        task = asyncio.current_task()
        state = self._busy.get(key)
        if state is None:
            self._busy[key] = _KeyState(task)
            return False, 0
        if task is not None and state.holder is task:
            # Nested in this task's own dispatch of the key: waiting would wait for
            # ourselves (coalesce), so refuse it in both modes alike.
            raise KeyBusy(key, event_id, nested=True)
        if self.mode == "reject":
            raise KeyBusy(key, event_id)
        superseded = 0
        old = state.waiter
        if old is not None and not old.future.done():
            # Coalesce: the newer arrival replaces the waiting one. A waiter whose future
            # is done here was cancelled and has not resumed yet: it is not replaced (it
            # leaves on its own), so neither it nor those it replaced are counted.
            superseded = old.superseded + 1
            old.by = event_id
            old.future.set_result(False)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(event_id, fut, superseded, task)
        state.waiter = waiter
        try:
            granted = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.result():
                # Handed the slot, then cancelled before resuming: pass it on.
                self._release(key)
            elif state.waiter is waiter:
                state.waiter = None
            raise
        if not granted:
            raise Superseded(key, event_id, waiter.by)
        return True, superseded

    def _release(self, key: str) -> None:
        """Give ``key``'s slot to its waiter, or free the key."""
        state = self._busy[key]
        waiter = state.waiter
        state.waiter = None
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(True)  # direct hand-over: the key stays busy
            state.holder = waiter.task
            return
        del self._busy[key]

    @asynccontextmanager
    async def dispatch(
        self, key: str | None, *, event_id: str | None = None
    ) -> AsyncIterator[Admission]:
        """Admit one event, then hold its key while the body runs.

        Args:
            key: who the event is for (a user, a channel); None: no per-key limit.
            event_id: the event's id for deduplication; None: not deduplicated.

        Yields:
            The ``Admission``.

        Raises:
            DuplicateEvent: ``event_id`` was seen within the TTL.
            KeyBusy: ``mode="reject"`` and a dispatch for ``key`` is in flight; or, in
                either mode, this task is already running a dispatch for ``key``
                (``nested=True``).
            Superseded: ``mode="coalesce"`` and a newer arrival replaced this one while
                it waited.
            TypeError: ``key`` or ``event_id`` is neither a ``str`` nor None (checked
                before anything is recorded).
        """
        # Checked first: an id recorded for an event that then fails on its key would be
        # burned (a redelivery of it refused as a duplicate of an event never admitted).
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {key!r}")
        if event_id is not None and not isinstance(event_id, str):
            raise TypeError(f"event_id must be a str or None, got {event_id!r}")
        if event_id is not None and not self.remember(event_id):
            raise DuplicateEvent(key, event_id, self.ttl)
        if key is None:
            waited, superseded = False, 0
        else:
            try:
                waited, superseded = await self._acquire(key, event_id)
            except asyncio.CancelledError:
                # Cancelled while it waited for its key: the event never reached the
                # agent, so a redelivery of it must not be taken for a duplicate.
                if event_id is not None:
                    self.forget(event_id)
                raise
        try:
            yield Admission(key, event_id, waited, superseded)
        except Exception:
            if self.forget_failed and event_id is not None:
                self.forget(event_id)
            raise
        finally:
            if key is not None:
                self._release(key)

    async def run(
        self, key: str | None, fn: Callable[[], Awaitable[T]], *, event_id: str | None = None
    ) -> T:
        """``dispatch`` as a call: admit the event, then await ``fn()`` holding its key.

        Raises:
            TypeError: ``fn`` is not callable, or ``key`` or ``event_id`` is neither a
                ``str`` nor None (checked before the event is admitted).
            DispatchRefused: as ``dispatch``.
        """
        if not callable(fn):
            raise TypeError(
                f"fn must be a zero-argument callable returning an awaitable, got {fn!r}"
            )
        async with self.dispatch(key, event_id=event_id):
            return await fn()

    def __len__(self) -> int:
        """How many keys have a dispatch in flight."""
        return len(self._busy)

    def __repr__(self) -> str:
        return (
            f"<DispatchGuard {self.mode} [{len(self._busy)} in flight, "
            f"{len(self._seen)} ids seen] ttl={self.ttl:g}s>"
        )
