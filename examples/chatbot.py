"""A simulated chat bot that uses every harness seam of executus. No network.

Run it with ``python examples/chatbot.py``: about ten simulated minutes of a busy chat
play out in well under a second.

The bot (class ``ChatBot``) is written the way a real one would be:

- settings come from ``executus.config`` (``$CHATBOT_*`` over built-in defaults), and
  its LLM lane is built by name from them: one slot, fair share across users;
- incoming messages pass a ``DispatchGuard``: redelivered events are dropped, and a
  user's newer message supersedes an older one still waiting;
- files uploaded before (or while) a request waits are held in ``PendingAttachments``
  and claimed when the request starts;
- requests run through the lane with ``max_wait``: when the wait would be too long the
  user is told "busy - try again in ~40s" from ``LaneBusy.eta``;
- progress ("queued (#2, ~25s)", "started", "done") goes through a ``ProgressReporter``
  to a ``Deliverer``;
- ``/cancel <user>`` goes through ``LaneOps``: an admin may cancel anyone's request, a
  user only their own.

The simulated world (class ``World``) drives a ``ManualClock``: events arrive at
scripted times, the fake LLM takes 20 simulated seconds per answer, and time moves
only when every task is idle, so each run prints the same transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from executus import JobState, LaneBusy
from executus.config import (
    ChainSource,
    EnvSource,
    Lanes,
    MappingSource,
    Source,
    get_duration,
    get_int,
)
from executus.deliver import CallbackDeliverer, Deliverer
from executus.dispatchguard import DispatchGuard, DuplicateEvent, Superseded
from executus.identity import Forbidden, LaneOps, Member, StaticAdmins, StaticMembers
from executus.pendingattach import PendingAttachments
from executus.progress import ProgressReporter, format_eta
from executus.testing import ManualClock

#: The bot's built-in settings; ``$CHATBOT_<KEY>`` overrides any of them.
DEFAULTS: dict[str, object] = {
    "max_wait": "45s",  # refuse a request that would wait longer than this
    "dedup_ttl": "10m",  # how long a delivered event id is remembered
    "attach_ttl": "5m",  # how long an uploaded file waits for a message
    "attach_max": 4,  # files held per user
    "progress_interval": "10s",  # at most one progress message per user per 10 s
    "lanes": {"llm": {"max_concurrent": 1, "policy": "fair_share"}},
}

LOG = "#log"  # the target the bot reports its own decisions to


# -- the bot -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something the chat host delivered."""

    id: str
    user: str
    kind: str  # "message" or "upload"
    text: str = ""


@dataclass
class Summary:
    """What happened, for the caller of ``main``."""

    replies: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0
    superseded: int = 0
    busy: int = 0
    cancelled: int = 0
    forbidden: int = 0
    peak_model_calls: int = 0


class ChatBot:
    """Answers chat messages through one shared LLM lane."""

    def __init__(
        self,
        out: Deliverer,
        llm: Callable[[str, list[str]], Awaitable[str]],
        *,
        source: Source,
        clock: ManualClock,
    ) -> None:
        self.out = out
        self.llm = llm
        self.clock = clock
        self.max_wait = get_duration(source, "MAX_WAIT", 45.0)
        self.interval = get_duration(source, "PROGRESS_INTERVAL", 10.0)
        self.lanes = Lanes(source, clock=clock)
        members = StaticMembers([Member("ops", "the operator"), Member("alice", "Alice")])
        self.ops = LaneOps(self.lanes.get("llm"), StaticAdmins({"ops"}), members)
        self.guard = DispatchGuard(
            ttl=get_duration(source, "DEDUP_TTL", 600.0), mode="coalesce", clock=clock
        )
        self.pending = PendingAttachments[str](
            ttl=get_duration(source, "ATTACH_TTL", 300.0),
            max_per_key=get_int(source, "ATTACH_MAX", 4),
            clock=clock,
        )
        self.summary = Summary()

    async def handle(self, event: Event) -> None:
        """Handle one event from the host."""
        if event.kind == "upload":
            # An eviction over max_total may drop another user's upload: tell its owner.
            for owner, dropped in self.pending.add(event.user, event.text):
                await self.out.deliver(owner, f"(dropped older attachment {dropped})")
            return
        command = event.text.startswith("/")
        try:
            # Commands are only deduplicated; chat messages also hold the user's key.
            async with self.guard.dispatch(None if command else event.user, event_id=event.id):
                if command:
                    await self.command(event)
                else:
                    await self.answer(event)
        except DuplicateEvent:
            self.summary.duplicates += 1
            await self.out.deliver(LOG, f"dropped duplicate event {event.id}")
        except Superseded as e:
            self.summary.superseded += 1
            await self.out.deliver(LOG, f"event {event.id} superseded by {e.by}")

    async def answer(self, event: Event) -> None:
        """Run the user's request through the lane, reporting progress."""
        user = event.user
        claimed: list[str] = []

        async def job() -> str:
            # Claimed when the job starts, so files sent while it waited are included.
            claimed.extend(self.pending.claim(user))
            return await self.llm(event.text, claimed)

        try:
            handle = await self.ops.submit(job, key=user, max_wait=self.max_wait)
        except LaneBusy as e:
            self.summary.busy += 1
            await self.out.deliver(user, f"busy - try again in {format_eta(e.eta)}")
            return
        async with ProgressReporter(
            user, self.out, interval=self.interval, clock=self.clock, prefix="(llm) "
        ) as reporter:
            state = await reporter.track(handle)
        if state is JobState.SUCCEEDED:
            reply = handle.result()
            self.summary.replies.setdefault(user, []).append(reply)
            await self.out.deliver(user, reply)
        elif state is JobState.CANCELLED:
            self.summary.cancelled += 1

    async def command(self, event: Event) -> None:
        """``/cancel <user>``: cancel that user's requests (yours, or anyone's as admin)."""
        verb, _, arg = event.text.partition(" ")
        if verb != "/cancel" or not arg:
            await self.out.deliver(event.user, "usage: /cancel <user>")
            return
        try:
            n = await self.ops.cancel_key(event.user, arg.strip())
        except Forbidden as e:
            self.summary.forbidden += 1
            await self.out.deliver(event.user, f"not allowed: {e}")
            return
        await self.out.deliver(event.user, f"cancelled {n} request(s) of {arg}")

    async def aclose(self) -> None:
        """Close the bot's lanes (queued requests still run)."""
        await self.lanes.aclose()


# -- the simulated world -----------------------------------------------------------------------

ANSWER_SECONDS = 20.0

#: (simulated seconds, event). Redeliveries reuse an event id.
SCRIPT: list[tuple[float, Event]] = [
    (0.0, Event("m0", "carol", "message", "good morning")),
    (21.0, Event("u1", "alice", "upload", "cat.png")),
    (22.0, Event("m1", "alice", "message", "what is in this picture?")),
    (22.5, Event("m1", "alice", "message", "what is in this picture?")),  # redelivered
    (23.0, Event("m2", "bob", "message", "summarise my notes")),
    (24.0, Event("u2", "bob", "upload", "notes.txt")),  # sent while bob's request waits
    (25.0, Event("m3", "alice", "message", "also, what breed is it?")),
    (26.0, Event("m4", "alice", "message", "never mind: is it cute?")),  # supersedes m3
    (28.0, Event("m5", "erin", "message", "tell me a joke")),
    (29.0, Event("m6", "dave", "message", "translate this to French")),  # would wait too long
    (44.0, Event("c1", "bob", "message", "/cancel erin")),  # not bob's to cancel
    (45.0, Event("c2", "ops", "message", "/cancel erin")),  # an admin may
    (45.5, Event("c2", "ops", "message", "/cancel erin")),  # redelivered
    (50.0, Event("u3", "alice", "upload", "cat2.png")),
]


class World:
    """Simulated time: a ManualClock that moves only while every task is idle."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.t0 = self.clock.monotonic()
        self.model_calls = 0  # model calls in progress
        self.peak_model_calls = 0

    def now(self) -> float:
        """Simulated seconds since the world began."""
        return self.clock.monotonic() - self.t0

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.clock.call_later(seconds, wake)
        await fut

    async def settle(self) -> None:
        """Let every ready task run until it waits for the clock."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def run_until(self, t: float, step: float = 0.5) -> None:
        """Advance simulated time to ``t`` in small steps, settling after each."""
        while self.now() < t:
            self.clock.advance(min(step, t - self.now()))
            await self.settle()

    async def llm(self, prompt: str, files: list[str]) -> str:
        """The fake model: 20 simulated seconds per answer."""
        self.model_calls += 1
        self.peak_model_calls = max(self.peak_model_calls, self.model_calls)
        try:
            await self.sleep(ANSWER_SECONDS)
        finally:
            self.model_calls -= 1
        seen = f" (read {', '.join(files)})" if files else ""
        return f"answer to {prompt!r}{seen}"


async def main(
    deliverer: Deliverer, *, source: Source | None = None, world: World | None = None
) -> Summary:
    """Play the script against a bot that sends everything to ``deliverer``.

    Args:
        deliverer: where the bot's messages go (``Stdout()``, or a ``Recorder`` in tests).
        source: the bot's settings (default: ``$CHATBOT_*`` over ``DEFAULTS``).
        world: the simulated world (default: a new one, starting at 0 s).

    Returns:
        What happened.
    """
    world = World() if world is None else world
    if source is None:
        source = ChainSource(EnvSource(prefix="CHATBOT_"), MappingSource(DEFAULTS))
    bot = ChatBot(deliverer, world.llm, source=source, clock=world.clock)
    tasks: list[asyncio.Task[None]] = []
    try:
        for at, event in SCRIPT:
            await world.run_until(at)
            tasks.append(asyncio.create_task(bot.handle(event)))
            await world.settle()
        # Let the conversation play out (bounded: ten simulated minutes).
        deadline = world.now() + 600.0
        while not all(t.done() for t in tasks) and world.now() < deadline:
            await world.run_until(world.now() + 1.0)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await bot.aclose()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    bot.summary.peak_model_calls = world.peak_model_calls
    return bot.summary


if __name__ == "__main__":
    world = World()

    def show(target: str, message: str) -> None:
        print(f"[{world.now():5.1f}s] {target}: {message}")

    print(asyncio.run(main(CallbackDeliverer(show), world=world)))
