"""A worker process for the multi-process Redis tests (run as a script, not collected).

It submits jobs to a RedisLane and appends one JSON line per event to a log file:
``{"ev": "start"|"end"|"ready"|"done", "job", "fence", "seq", "t", "outcome"}``, with
``t`` from ``time.monotonic()`` (one clock for every process on the machine).

Modes:
    flow: ``--submitters`` tasks each run ``--jobs`` jobs of ``--duration`` seconds.
    hold: start ``--hold`` jobs that run until the process ends (or loses its lease),
        then queue ``--queue`` more; log "ready" once the held jobs run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any, TextIO

from executus import FIFO, FairShare, Priority, QueuePolicy, current_job
from executus.redis import RedisLane


def emit(out: TextIO, **fields: Any) -> None:
    fields.setdefault("t", time.monotonic())
    fields.setdefault("pid", os.getpid())
    out.write(json.dumps(fields) + "\n")
    out.flush()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ns", required=True)
    p.add_argument("--lane", default="lane")
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--policy", default="fifo")
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--mode", default="flow")
    p.add_argument("--submitters", type=int, default=8)
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--duration", type=float, default=0.005)
    p.add_argument("--hold", type=int, default=1)
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    policy: QueuePolicy = {"fifo": FIFO(), "prio": Priority(), "fair": FairShare()}[a.policy]
    lane = RedisLane(a.lane, a.url, a.max, policy=policy, lease=a.lease, namespace=a.ns)
    with open(a.log, "a", encoding="utf-8") as out:  # noqa: ASYNC230 - one small file

        def body(duration: float | None) -> Any:
            async def run() -> None:
                ctx = current_job()
                assert ctx is not None
                rec = lane._jobs[ctx.id]
                emit(out, ev="start", job=ctx.id, fence=int(rec.fence or 0), seq=rec.seq)
                outcome = "ok"
                try:
                    if duration is None:
                        await asyncio.Event().wait()
                    else:
                        await asyncio.sleep(duration)
                except BaseException as e:
                    outcome = type(e).__name__
                    raise
                finally:
                    # seq again: a grant can start the job before its submit's reply
                    # (which carries the seq) has been read.
                    emit(
                        out,
                        ev="end",
                        job=ctx.id,
                        fence=int(rec.fence or 0),
                        seq=rec.seq,
                        outcome=outcome,
                    )

            return run

        if a.mode == "flow":

            async def submitter(s: int) -> None:
                for i in range(a.jobs):
                    await lane.run(
                        body(a.duration),
                        job_id=f"{os.getpid()}-{s}-{i}",
                        key=f"k{s % 3}",
                        priority=random.randint(0, 3),
                    )

            async with lane:
                await asyncio.gather(*(submitter(s) for s in range(a.submitters)))
                emit(out, ev="done")
        else:
            await lane.stats()
            held = [
                await lane.submit(body(None), job_id=f"{os.getpid()}-hold-{i}")
                for i in range(a.hold)
            ]
            while any(h.state.value != "running" for h in held):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            queued = [
                await lane.submit(body(0.001), job_id=f"{os.getpid()}-q-{i}")
                for i in range(a.queue)
            ]
            emit(out, ev="ready", queued=[h.state.value for h in queued])
            for h in held:
                try:
                    await h
                except Exception as e:
                    emit(out, ev="outcome", job=h.id, error=type(e).__name__, msg=str(e))
            emit(out, ev="done")
            await lane.aclose(drain=False)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
