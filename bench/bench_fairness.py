"""Benchmark: fair share in practice (counts, not timings).

1. Flood: key ``flood`` submits 1,000 jobs to a ``FairShare()`` lane; then key ``lone``
   submits one. Jobs end one at a time, oldest first; the table shows how many
   completions the lone job waited before it started, for 1, 4 and 16 slots, when it
   arrives right after the flood and after 500 of the flood's jobs have run (the
   flooding key has then consumed a lot of service: an idle key earns no credit, but
   it is served next). ``FIFO()`` shown for contrast.
2. Weights: keys ``gold`` (weight 3) and ``free`` (weight 1) both keep a backlog (2,000
   jobs each, all of ``gold``'s submitted first); the table shows each key's share of
   the first 1,000 starts taken from the queue.

Run: ``.venv/bin/python bench/bench_fairness.py`` (deterministic: no ``--quick`` needed;
the flag is accepted for symmetry).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table
from executus import FIFO, FairShare, JobHandle, JobState, Lane, QueuePolicy

FLOOD = 1_000


class Blocked:
    """A job body that waits until released; remembers start order."""

    def __init__(self, starts: list[Blocked]) -> None:
        self.fut: asyncio.Future[None] | None = None
        self.starts = starts

    async def __call__(self) -> None:
        self.fut = asyncio.get_running_loop().create_future()
        self.starts.append(self)
        await self.fut


async def settle() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


async def lone_wait(policy: QueuePolicy, slots: int, before: int) -> tuple[int, int]:
    """Completions the lone job waited, and its position at submit."""
    lane = Lane("fair", slots, policy=policy)
    starts: list[Blocked] = []
    for _ in range(FLOOD):
        await lane.submit(Blocked(starts), key="flood")
    await settle()
    done = 0

    async def complete_one() -> None:
        nonlocal done
        oldest = next(b for b in starts if b.fut is not None and not b.fut.done())
        assert oldest.fut is not None
        oldest.fut.set_result(None)
        done += 1
        await settle()

    for _ in range(before):
        await complete_one()
    lone: JobHandle[None] = await lane.submit(Blocked(starts), key="lone")
    position = lone.position
    waited_from = done
    while lone.state is JobState.QUEUED:
        await complete_one()
    waited = done - waited_from
    await lane.aclose(drain=False)
    return waited, position


async def shares(slots: int, jobs: int = 2_000, first: int = 1_000) -> dict[str, float]:
    """Each key's share of the first ``first`` starts taken from the queue."""
    lane = Lane("fair", slots, policy=FairShare(weights={"gold": 3, "free": 1}))
    order: list[str] = []

    def body(key: str) -> Blocked:
        async def run() -> None:
            order.append(key)

        return run  # type: ignore[return-value]

    handles = [await lane.submit(body("gold"), key="gold") for _ in range(jobs)]
    handles += [await lane.submit(body("free"), key="free") for _ in range(jobs)]
    for h in handles:
        await h
    counted = Counter(order[slots : slots + first])  # the first ``slots`` never queued
    return {k: counted[k] / first for k in ("gold", "free")}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fair-share counts")
    parser.add_argument("--quick", action="store_true", help="accepted; the run is short")
    parser.parse_args()

    print(f"A lone job behind a flood of {FLOOD:,} (completions waited; position at submit)\n")
    table = Table("slots", "policy", "lone arrives", "completions waited", "position")
    for slots in (1, 4, 16):
        for name, make in (("FairShare", FairShare), ("FIFO", FIFO)):
            for before in (0, 500):
                waited, position = asyncio.run(lone_wait(make(), slots, before))
                when = "at once" if before == 0 else f"after {before} completions"
                table.add(slots, name, when, waited, position)
    table.print()

    print("\nWeights gold=3, free=1, both backlogged: share of the first 1,000 starts\n")
    table = Table("slots", "gold", "free", "target")
    for slots in (1, 4, 16):
        s = asyncio.run(shares(slots))
        table.add(slots, f"{s['gold']:.1%}", f"{s['free']:.1%}", "75.0% / 25.0%")
    table.print()


if __name__ == "__main__":
    main()
