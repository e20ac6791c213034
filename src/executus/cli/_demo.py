"""``executus demo``: simulated traffic on shared lanes, shown live in a table.

Users send requests to two lanes: ``gpu`` (2 slots, preemption with requeue on) and
``api`` (2 slots, shorter jobs). ``mallory`` floods (four times the others' rate), a ``batch`` key
keeps a long preemptible job on the GPU, an ``admin`` sends an urgent job (priority
10) now and then, and one request in four carries a ``max_wait`` deadline, so some are
refused at once. The table is fed by the lanes' events (``lane.add_observer``) and
``stats()``: what an operator's dashboard would show.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._errors import LaneBusy, LaneError
from .._events import EventKind, LaneEvent
from .._job import JobHandle, JobState
from .._lane import Lane
from .._policies import FIFO, FairShare, Preemption, Priority, QueuePolicy
from .._stats import LaneStats

__all__ = ["USER_NAMES", "DemoSettings", "KeyRow", "make_policy", "run_local_demo", "users_for"]

USER_NAMES = ("mallory", "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


def users_for(n: int) -> list[str]:
    """The demo's user names: ``mallory`` (the flooder) first."""
    names = list(USER_NAMES[:n])
    names += [f"user-{i + 1}" for i in range(len(names), n)]
    return names


def make_policy(name: str) -> QueuePolicy:
    """The queue policy called ``name`` (fifo, priority, fair)."""
    if name == "fifo":
        return FIFO()
    if name == "priority":
        return Priority(aging=5.0)
    return FairShare()


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs.

    Attributes:
        seconds: how long users send traffic (the lanes then drain, briefly).
        users: interactive users (``mallory`` floods).
        policy: ``fifo``, ``priority`` or ``fair``.
        seed: the random seed of the traffic.
        job_scale: multiplies every job's duration.
    """

    seconds: float
    users: int
    policy: str
    seed: int = 1
    job_scale: float = 1.0


@dataclass
class KeyRow:
    """What one key did in one lane."""

    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    preempted: int = 0
    refused: int = 0
    waits: list[float] = field(default_factory=list)

    def wait_text(self) -> tuple[str, str]:
        """Median and max wait, formatted."""
        if not self.waits:
            return "-", "-"
        return f"{statistics.median(self.waits):.2f}s", f"{max(self.waits):.2f}s"


class _Board:
    """Per lane and key figures, fed by the lanes' events."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, KeyRow]] = {}
        self.stats: dict[str, LaneStats] = {}
        self.peak: dict[str, int] = {}
        self.live: dict[str, int] = {}

    def row(self, lane: str, key: str | None) -> KeyRow:
        return self.rows.setdefault(lane, {}).setdefault(key or "-", KeyRow())

    def __call__(self, event: LaneEvent) -> None:
        kind = event.kind
        if event.job_id is None:
            return  # lane events (REJECTED carries no key: refusals are counted at submit)
        row = self.row(event.lane, event.key)
        if kind is EventKind.SUBMITTED:
            row.queued += 1  # a job that starts at once is STARTED next, in the same step
        elif kind is EventKind.STARTED:
            row.queued -= 1
            row.running += 1
            if event.wait is not None:
                row.waits.append(event.wait)
            live = self.live[event.lane] = self.live.get(event.lane, 0) + 1
            self.peak[event.lane] = max(self.peak.get(event.lane, 0), live)
        elif kind in (EventKind.FINISHED, EventKind.CANCELLED, EventKind.PREEMPTED):
            ran = event.run is not None
            if ran:
                self.live[event.lane] -= 1
                row.running -= 1
            else:
                row.queued -= 1
            if kind is EventKind.FINISHED:
                if event.state is JobState.SUCCEEDED:
                    row.done += 1
                else:
                    row.failed += 1
            elif kind is EventKind.CANCELLED:
                row.cancelled += 1
            else:
                row.preempted += 1
                if event.state is JobState.QUEUED:
                    row.queued += 1  # requeued: back in the queue


def _lane_table(board: _Board, lanes: list[Lane], title: str) -> Group:
    parts: list[Table | Text] = []
    summary = Table(title=title, title_justify="left")
    for col in ("lane", "policy", "slots", "queued", "peak", "done", "preempted", "refused"):
        summary.add_column(col, justify="left" if col in ("lane", "policy") else "right")
    for lane in lanes:
        st = board.stats.get(lane.name)
        if st is None:
            continue
        full = st.running >= st.max_concurrent
        summary.add_row(
            lane.name,
            lane.policy.name,
            Text(f"{st.running}/{st.max_concurrent}", style="red" if full else "green"),
            str(st.queued),
            str(board.peak.get(lane.name, 0)),
            str(st.succeeded),
            str(st.preempted),
            str(st.rejected),
        )
    parts.append(summary)
    for lane in lanes:
        rows = board.rows.get(lane.name, {})
        table = Table(title=f"{lane.name}: per key", title_justify="left")
        for col in ("key", "running", "queued", "done", "median wait", "max wait"):
            table.add_column(col, justify="left" if col == "key" else "right")
        table.add_column("preempted", justify="right")
        table.add_column("refused", justify="right")
        for key in sorted(rows):
            r = rows[key]
            median, worst = r.wait_text()
            table.add_row(
                key,
                str(max(0, r.running)),
                str(max(0, r.queued)),
                str(r.done),
                median,
                worst,
                str(r.preempted),
                str(r.refused),
            )
        parts.append(table)
    return Group(*parts)


async def _job(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _traffic(
    settings: DemoSettings, gpu: Lane, api: Lane, board: _Board, deadline: float
) -> list[JobHandle[None]]:
    rng = random.Random(settings.seed)
    handles: list[JobHandle[None]] = []
    s = settings.job_scale

    async def submit(
        lane: Lane, key: str, seconds: float, *, priority: int = 0, preemptible: bool = False
    ) -> None:
        max_wait = 1.5 if rng.random() < 0.25 and key not in ("batch", "admin") else None
        try:
            handles.append(
                await lane.submit(
                    lambda: _job(seconds * s),
                    key=key,
                    priority=priority,
                    preemptible=preemptible,
                    max_wait=max_wait,
                )
            )
        except LaneBusy:
            board.row(lane.name, key).refused += 1

    async def pause(seconds: float) -> bool:
        """Sleep ``seconds``, or until the deadline if sooner; whether traffic goes on."""
        await asyncio.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
        return time.monotonic() < deadline

    async def user(name: str) -> None:
        rate = 4.0 if name == "mallory" else 1.0  # requests per second
        sent = False  # every user sends once, however short --seconds: at its end at the latest
        while await pause(rng.expovariate(rate)) or not sent:
            sent = True
            if rng.random() < 0.6:
                await submit(gpu, name, rng.uniform(0.2, 0.6))
            else:
                await submit(api, name, rng.uniform(0.1, 0.4))

    async def batch() -> None:
        while time.monotonic() < deadline:
            st = await gpu.stats()
            mine = board.row(gpu.name, "batch")
            if mine.queued + mine.running < 1 and st.queued < 20:
                await submit(gpu, "batch", 1.5, preemptible=True)
            await pause(0.2)

    async def admin() -> None:
        # Sleeps end at the deadline: traffic lasts --seconds, not up to 2.5 s more.
        if not await pause(min(1.0, settings.seconds / 3)):
            return
        while True:
            await submit(gpu, "admin", 0.3, priority=10)
            if not await pause(2.5):
                return

    await asyncio.gather(*(user(u) for u in users_for(settings.users)), batch(), admin())
    return handles


async def _refresh(board: _Board, lanes: list[Lane]) -> None:
    for lane in lanes:
        board.stats[lane.name] = await lane.stats()


async def _local(settings: DemoSettings, console: Console) -> int:
    policy = make_policy(settings.policy)
    scale = settings.job_scale
    gpu = Lane(
        "gpu", 2, policy=policy, preemption=Preemption(min_runtime=0.5 * scale, requeue=True)
    )
    api = Lane("api", 2, policy=policy)
    lanes = [gpu, api]
    board = _Board()
    for lane in lanes:
        lane.add_observer(board)
    title = (
        f"executus demo - {settings.users} users, policy {settings.policy}, "
        f"{settings.seconds:g}s of traffic"
    )
    await _refresh(board, lanes)
    deadline = time.monotonic() + settings.seconds
    traffic = asyncio.create_task(_traffic(settings, gpu, api, board, deadline))
    with Live(_lane_table(board, lanes, title), console=console, refresh_per_second=4) as live:
        try:
            while not traffic.done():
                await asyncio.wait({traffic}, timeout=0.25)
                await _refresh(board, lanes)
                live.update(_lane_table(board, lanes, title))
            handles = traffic.result()
            # Let the queues drain for a moment, then stop what is left.
            drain = asyncio.gather(*(lane.aclose(drain=True) for lane in lanes))
            end = time.monotonic() + max(1.0, min(3.0, settings.seconds))
            while not drain.done() and time.monotonic() < end:
                await asyncio.wait({drain}, timeout=0.25)
                await _refresh(board, lanes)
                live.update(_lane_table(board, lanes, title + " - draining"))
            if not drain.done():
                await asyncio.gather(*(lane.aclose(drain=False) for lane in lanes))
            await drain
            await asyncio.gather(*handles, return_exceptions=True)
            await _refresh(board, lanes)
            live.update(_lane_table(board, lanes, title + " - done"))
        finally:
            if not traffic.done():
                traffic.cancel()
                await asyncio.gather(traffic, return_exceptions=True)
            for lane in lanes:
                if not lane.closed:
                    await lane.aclose(drain=False)
    console.line()
    _conclude(board, lanes, console)
    worst = max(board.peak.get(lane.name, 0) - lane.max_concurrent for lane in lanes)
    return 0 if worst <= 0 else 1


def _conclude(board: _Board, lanes: list[Lane], console: Console) -> None:
    for lane in lanes:
        st = board.stats[lane.name]
        console.print(
            f"{lane.name}: at most {board.peak.get(lane.name, 0)} jobs ran at once "
            f"(max_concurrent={st.max_concurrent}); {st.succeeded} done, "
            f"{st.preempted} preempted, {st.rejected} refused by max_wait, "
            f"{st.cancelled} cancelled when the demo ended."
        )
    rows = board.rows.get("gpu", {})
    flood, others = rows.get("mallory"), [r for k, r in rows.items() if k not in ("mallory",)]
    waits = [w for r in others for w in r.waits]
    if flood is not None and flood.waits and waits:
        console.print(
            f"gpu: median wait mallory (the flood) {statistics.median(flood.waits):.2f}s, "
            f"everyone else {statistics.median(waits):.2f}s."
        )


def run_local_demo(settings: DemoSettings, console: Console) -> int:
    """Run the in-process demo; returns the exit code (1 if a limit was exceeded)."""
    try:
        return asyncio.run(_local(settings, console))
    except LaneError as exc:  # pragma: no cover - the demo's own traffic never errs
        console.print(Text(f"demo failed: {exc}"))  # lane names are not markup
        return 1
