"""Output egress: where a harness sends what it has to say.

A ``Deliverer`` is anything with ``async deliver(target, message)``: a chat API client,
a webhook poster, a terminal. executus code that produces output for people (progress
reports, replies) takes a deliverer and never knows which host it talks to.

Provided here:

- ``Discard``: drops everything (the ``None``-safe default).
- ``Stdout``: writes ``"target: message"`` lines to a text stream.
- ``CallbackDeliverer``: adapts a plain function or coroutine function.
- ``Recorder``: keeps every delivery in memory, for tests.

Example::

    from executus.deliver import Recorder, Stdout

    out = Stdout()
    await out.deliver("user-42", "queued (#3, ~30s)")   # prints "user-42: queued (#3, ~30s)"

    rec = Recorder()
    await rec.deliver("user-42", "done")
    assert rec.messages("user-42") == ["done"]
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol, TextIO, runtime_checkable

from ._base import wait_woken, wake_all

__all__ = [
    "CallbackDeliverer",
    "Deliverer",
    "Delivery",
    "Discard",
    "Recorder",
    "Stdout",
]


@runtime_checkable
class Deliverer(Protocol):
    """Something that sends a message to a target (a user, a channel, a log).

    Implementations may raise on failure; callers that must not fail because output
    failed (the progress reporter) catch and log the error.
    """

    async def deliver(self, target: str, message: str) -> None:
        """Send ``message`` to ``target``.

        Args:
            target: who or where the message is for (a user id, a channel, a thread).
            message: the text to send.
        """
        ...


class Discard:
    """A deliverer that drops every message.

    Example::

        await Discard().deliver("anyone", "nobody hears this")
    """

    __slots__ = ()

    async def deliver(self, target: str, message: str) -> None:
        """Drop the message."""

    def __repr__(self) -> str:
        return "Discard()"


class Stdout:
    """A deliverer that writes one ``"target: message"`` line per message to a stream.

    Args:
        stream: a text stream; ``None`` (the default) means ``sys.stdout`` as it is at
            the time of each delivery (so redirection and capturing work).
        flush: flush the stream after each line (default True, for live output).

    Example::

        await Stdout().deliver("user-42", "started")   # prints "user-42: started"
    """

    __slots__ = ("_flush", "_stream")

    def __init__(self, stream: TextIO | None = None, *, flush: bool = True) -> None:
        self._stream = stream
        self._flush = flush

    async def deliver(self, target: str, message: str) -> None:
        """Write ``"target: message"`` and a newline to the stream."""
        stream = sys.stdout if self._stream is None else self._stream
        stream.write(f"{target}: {message}\n")
        if self._flush:
            stream.flush()

    def __repr__(self) -> str:
        where = "sys.stdout" if self._stream is None else repr(self._stream)
        return f"Stdout({where})"


class CallbackDeliverer:
    """Adapts a function ``fn(target, message)`` to the ``Deliverer`` protocol.

    ``fn`` may be a plain function or return an awaitable (a coroutine function, or a
    function returning a future); an awaitable result is awaited. Its return value is
    ignored; its exceptions propagate to the caller of ``deliver``.

    Args:
        fn: the callable to call with ``(target, message)``.

    Raises:
        TypeError: ``fn`` is not callable.

    Example::

        lines: list[str] = []
        out = CallbackDeliverer(lambda target, message: lines.append(message))
        await out.deliver("user-42", "done")
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[str, str], object]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._fn = fn

    async def deliver(self, target: str, message: str) -> None:
        """Call ``fn(target, message)`` and await its result if it is awaitable."""
        result = self._fn(target, message)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"CallbackDeliverer({self._fn!r})"


class Delivery(NamedTuple):
    """One message a ``Recorder`` received."""

    target: str
    """Who the message was for."""
    message: str
    """The text delivered."""


class Recorder:
    """A deliverer that keeps every delivery in memory, for tests.

    Attributes:
        deliveries: every ``Delivery(target, message)`` received, oldest first.

    Example::

        rec = Recorder()
        await rec.deliver("user-42", "queued (#2, ~10s)")
        await rec.deliver("user-42", "done")
        assert rec.messages("user-42") == ["queued (#2, ~10s)", "done"]
        assert rec.last() == Delivery("user-42", "done")
    """

    __slots__ = ("_waiters", "deliveries")

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        # One future per pending ``wait_for`` step, made in the waiter's own loop and
        # removed when it leaves (timeout, cancel): nothing bound to a loop outlives its
        # wait, so a recorder can be reused from another event loop (another test).
        self._waiters: list[asyncio.Future[None]] = []

    async def deliver(self, target: str, message: str) -> None:
        """Record ``(target, message)``."""
        self.deliveries.append(Delivery(target, message))
        wake_all(self._waiters)

    def messages(self, target: str | None = None) -> list[str]:
        """The messages delivered, oldest first: all of them, or only those to ``target``."""
        return [d.message for d in self.deliveries if target is None or d.target == target]

    def targets(self) -> list[str]:
        """The distinct targets delivered to, in order of their first delivery."""
        return list(dict.fromkeys(d.target for d in self.deliveries))

    def last(self, target: str | None = None) -> Delivery | None:
        """The newest delivery (to ``target`` if given), or None if there is none."""
        for d in reversed(self.deliveries):
            if target is None or d.target == target:
                return d
        return None

    def clear(self) -> None:
        """Forget every delivery recorded so far."""
        self.deliveries.clear()

    # A bounded wait is the point of this test helper: it must never hang a test.
    async def wait_for(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:  # noqa: ASYNC109
        """Wait until at least ``count`` deliveries have been recorded.

        Args:
            count: the number of deliveries to wait for (in total, not new ones).
            timeout: seconds to wait at most.

        Returns:
            The deliveries recorded so far (a copy).

        Raises:
            TimeoutError: fewer than ``count`` arrived within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while len(self.deliveries) < count:
                await wait_woken(self._waiters)
        return list(self.deliveries)

    def __len__(self) -> int:
        return len(self.deliveries)

    def __iter__(self) -> Iterator[Delivery]:
        return iter(list(self.deliveries))

    def __repr__(self) -> str:
        return f"<Recorder {len(self.deliveries)} deliveries>"
