"""The demo: one shared GPU lane, simulated in real time (a few seconds).

Users send chat requests to a lane with two slots. One user floods it, a nightly batch
runs preemptible jobs, an admin's urgent job preempts a batch job, and a caller with a
deadline is refused with its ETA. The same traffic also runs through a plain FIFO lane
side by side, so the table shows what fair share changed.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TextIO

from ._errors import JobPreempted, LaneBusy
from ._job import JobHandle
from ._lane import Lane
from ._policies import FIFO, FairShare, Preemption, QueuePolicy

__all__ = ["run_demo"]

MIN_SCALE = 0.1
MAX_SCALE = 2.0


@dataclass
class _Record:
    user: str
    submitted: float
    started: float | None = None
    outcome: str = ""


@dataclass
class _Run:
    lane: Lane
    t0: float
    records: list[_Record] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    live: int = 0
    peak: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, who: str, what: str) -> None:
        self.events.append((self.now(), who, what))


async def _job(run: _Run, rec: _Record, seconds: float) -> None:
    if rec.started is None:
        rec.started = run.now()
    run.live += 1
    run.peak = max(run.peak, run.live)
    try:
        await asyncio.sleep(seconds)
    finally:
        run.live -= 1


async def _submit(
    run: _Run,
    user: str,
    seconds: float,
    *,
    priority: int = 0,
    preemptible: bool = False,
    max_wait: float | None = None,
    job_id: str | None = None,
) -> JobHandle[None] | None:
    rec = _Record(user, run.now())
    try:
        handle = await run.lane.submit(
            lambda: _job(run, rec, seconds),
            key=user,
            priority=priority,
            preemptible=preemptible,
            max_wait=max_wait,
            job_id=job_id,
        )
    except LaneBusy as busy:
        rec.outcome = f"refused (#{busy.position}, ~{busy.eta:.1f}s)"
        run.records.append(rec)
        return None
    run.records.append(rec)

    async def watch() -> None:
        try:
            await handle
            rec.outcome = "done"
        except JobPreempted:
            rec.outcome = "preempted"
        except Exception as exc:  # a demo job does not fail, but say so if one does
            rec.outcome = f"failed: {exc!r}"

    run.tasks.append(asyncio.create_task(watch()))
    return handle


async def _scenario(run: _Run, scale: float) -> None:
    s = scale
    for i in range(2):
        await _submit(run, "batch", 2.0 * s, preemptible=True, job_id=f"batch-{i + 1}")
    run.note("batch", "starts 2 long jobs (preemptible, priority 0)")
    await asyncio.sleep(0.1 * s)
    for _ in range(12):
        await _submit(run, "mallory", 0.25 * s)
    run.note("mallory", "floods the lane with 12 requests")
    await asyncio.sleep(0.1 * s)
    for user in ("alice", "bob"):
        for _ in range(2):
            await _submit(run, user, 0.25 * s)
    run.note("alice, bob", "send 2 requests each")
    await asyncio.sleep(0.6 * s)
    urgent = await _submit(run, "admin", 0.3 * s, priority=10, job_id="admin-urgent")
    victims = [r.id for r in run.lane._running if r.preempt_requested]
    if urgent is not None and victims:
        run.note("admin", f"urgent job (priority 10) preempts {victims[0]}, which is requeued")
    else:
        run.note("admin", "urgent job (priority 10)")
    await asyncio.sleep(0.8 * s)
    # Above carol's wait and well below mallory's (behind her own flood): the gate tells
    # them apart whatever the timing noise. Carol's estimate (~0.5 s: four jobs ahead, two
    # slots) is short of her real wait (~1.15 s: a 2 s batch job still holds one slot), so
    # the limit must clear the real wait, or the table shows her waiting past her max_wait.
    limit = 1.5 * s
    greedy = await _submit(run, "mallory", 0.25 * s, max_wait=limit)
    if greedy is None:
        outcome = run.records[-1].outcome
        run.note("mallory", f"one more, with max_wait={limit:g}s: {outcome}")
    carol = await _submit(run, "carol", 0.25 * s, max_wait=limit)
    if carol is not None:
        where = "starts at once" if carol.position == 0 else f"#{carol.position}"
        run.note(
            "carol", f"first request, max_wait={limit:g}s: accepted ({where}, ~{carol.eta:.1f}s)"
        )
    else:
        run.note("carol", f"first request, max_wait={limit:g}s: {run.records[-1].outcome}")
    await run.lane.aclose(drain=True)
    await asyncio.gather(*run.tasks)


def _waits(run: _Run) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for rec in run.records:
        if rec.started is not None:
            out[rec.user].append(rec.started - rec.submitted)
    return out


async def _main(scale: float, out: TextIO) -> int:
    def lane(policy: QueuePolicy) -> Lane:
        return Lane(
            "gpu",
            2,
            policy=policy,
            preemption=Preemption(min_runtime=0.3 * scale, requeue=True),
        )

    t0 = time.monotonic()
    fair = _Run(lane(FairShare()), t0)
    fifo = _Run(lane(FIFO()), t0)
    try:
        await asyncio.gather(_scenario(fair, scale), _scenario(fifo, scale))
    except BaseException:
        # Interrupted (Ctrl-C cancels this task): end every job and watcher before the
        # loop closes, so no task is left pending and no queued job starts on the way.
        for run in (fair, fifo):
            await run.lane.aclose(drain=False)
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)
        raise

    w = out.write
    w("executus demo - one GPU lane with 2 slots, fair share across users, preemption on\n\n")
    for t, who, what in fair.events:
        w(f"  t={t:4.1f}s  {who:<11} {what}\n")
    fair_waits, fifo_waits = _waits(fair), _waits(fifo)
    w("\nHow long each user waited for a slot (seconds from submit to start):\n\n")
    w("                      fair share         plain FIFO, same traffic\n")
    w("  user       jobs    median     max       median     max\n")
    for user in ("alice", "bob", "carol", "mallory", "admin", "batch"):
        a, b = fair_waits.get(user, []), fifo_waits.get(user, [])
        if not a:
            continue
        under_fifo = f"{statistics.median(b):8.2f} {max(b):7.2f}" if b else "   (refused)"
        w(f"  {user:<9} {len(a):>5}  {statistics.median(a):8.2f} {max(a):7.2f}     {under_fifo}\n")
    stats = await fair.lane.stats()
    requeued = [r for r in fair.records if r.user == "batch"]
    # "alice and bob": the worst wait of either (bob's second job starts after alice's).
    both_fair = max(fair_waits["alice"] + fair_waits["bob"])
    both_fifo = max(fifo_waits["alice"] + fifo_waits["bob"])
    w("\nWhat happened:\n")
    if round(both_fair, 2) < round(both_fifo, 2):  # as printed
        w(
            f"  - fairness: mallory queued 12 requests first, yet alice and bob waited at most "
            f"{both_fair:.2f}s (under FIFO: {both_fifo:.2f}s, behind the whole flood).\n"
        )
    else:
        w(
            f"  - fairness: alice and bob waited at most {both_fair:.2f}s, under FIFO "
            f"{both_fifo:.2f}s: fair share gained them nothing in this run.\n"
        )
    done = sum(1 for r in requeued if r.outcome == "done")
    admin_wait = f"the admin's job started after {max(fair_waits['admin']):.2f}s"
    if stats.preempted:
        jobs = "batch job was" if stats.preempted == 1 else "batch jobs were"
        w(
            f"  - preemption: {admin_wait} by evicting a batch job; "
            f"{stats.preempted} {jobs} requeued and still finished "
            f"({done}/2 batch jobs done).\n"
        )
    else:
        w(f"  - preemption: {admin_wait}, evicting nothing ({done}/2 batch jobs done).\n")
    for r in fair.records:
        if r.outcome.startswith("refused"):
            w(
                f"  - admission: {r.user}'s request with a max_wait was {r.outcome} - told "
                "at once, nothing queued.\n"
            )
        elif r.user == "carol":
            w(
                "  - admission: carol, new to the lane, asked with the same max_wait and was "
                "let in: fair share puts a new key near the front.\n"
            )
    w(
        f"  - totals: {stats.submitted} jobs run, {stats.succeeded} succeeded, "
        f"{stats.rejected} refused; at most {fair.peak} ran at once "
        f"(max_concurrent={stats.max_concurrent}).\n"
    )
    return 0


def run_demo(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit code. ``--scale S`` stretches time (default 1)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="executus demo",
        description="One GPU lane shared by simulated users, in real time: about 5 s x --scale.",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help=f"time scale, {MIN_SCALE:g} to {MAX_SCALE:g} (default 1.0)",
    )
    args = parser.parse_args(argv)
    if not math.isfinite(args.scale):  # first: nan is not "> 0" either
        parser.error(f"--scale must be finite, got {args.scale}")
    if not args.scale > 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    # Below MIN_SCALE the jobs last a few milliseconds: the event loop's own delays then
    # decide who runs when, and preemption, refusal and fairness no longer show. Above
    # MAX_SCALE the run (about 5 s x scale) outlasts anyone's patience.
    if args.scale < MIN_SCALE:
        parser.error(
            f"--scale must be >= {MIN_SCALE:g} (shorter jobs are lost in timing noise), "
            f"got {args.scale:g}"
        )
    if args.scale > MAX_SCALE:
        parser.error(
            f"--scale must be <= {MAX_SCALE:g} (the demo lasts about 5 s x scale), "
            f"got {args.scale:g}"
        )
    try:
        return asyncio.run(_main(args.scale, out or sys.stdout))
    except KeyboardInterrupt:
        # As the full command does on Ctrl-C: one line, no traceback.
        print("\nAborted!", file=sys.stderr)
        return 1
