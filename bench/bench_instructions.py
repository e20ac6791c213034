"""Benchmark: CPU instructions per job, counted by valgrind, against the same peers.

``bench_lane.py`` times its contenders; on a shared machine whose speed moves by a
third from one hour to the next, its ratios move by about 10% from run to run. This
script counts instead: each contender of ``bench_lane.py`` (the same functions, the
"return at once" workload) runs in its own process under ``valgrind --tool=callgrind``,
once with 2,000 jobs and once with 4,000, and the difference over 2,000 is the
instruction count of one job, start-up, imports and the making of the contenders (which
draws a random priority per job for all of them, counted apart) excluded. The count
repeats to within about 1% whatever the machine is doing.

Instructions are not time: cache misses, the memory allocator and the branch
predictor make an instruction cost more in one contender than in another, so these
ratios are a repeatable proxy for the timed ones, not a replacement for them.

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Slow: valgrind runs Python
about 50 times slower; the whole script takes about a minute per contender.

Run: ``.venv/bin/python bench/bench_instructions.py`` (``--only NAME``, repeatable:
only the contenders whose name contains NAME).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table

SMALL, LARGE = 2_000, 4_000
CONTENDERS = (
    "executus FIFO",
    "executus FairShare, 1,000 keys",
    "executus Priority (random)",
    "aiojobs Scheduler(limit=64)",
    "Semaphore+gather",
    "bare tasks+deque",
)


SETUP = "setup"  # make the contenders (the priorities drawn for n jobs), run none


def child(name: str, jobs: int) -> None:
    """Run one contender once (the process valgrind counts)."""
    from bench_lane import make_contenders, noop

    contenders = make_contenders(jobs, 1, noop)
    if name != SETUP:
        asyncio.run(contenders[name]())


def count(name: str, jobs: int) -> int:
    """Instructions a process running ``name`` with ``jobs`` jobs executes."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            name,
            "--jobs",
            str(jobs),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"{name}: valgrind run failed:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="contenders to count")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=SMALL, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_instructions needs valgrind (Debian: apt-get install valgrind)")
    names = [n for n in CONTENDERS if not args.only or any(o in n for o in args.only)]
    print(
        f"Instructions per no-op job (64 slots, jobs that return at once), from runs of "
        f"{SMALL:,} and {LARGE:,} jobs under callgrind (Python {sys.version.split()[0]})\n",
        flush=True,
    )

    def per_job(name: str) -> float:
        return (count(name, LARGE) - count(name, SMALL)) / (LARGE - SMALL)

    # Making the contenders draws a priority per job for all of them: not a job's cost.
    setup = per_job(SETUP)
    counts = {}
    for name in names:
        counts[name] = per_job(name) - setup
        print(f"  {name}: {counts[name]:,.0f}", flush=True)
    base = counts.get("executus FIFO")
    table = Table("contender", "instructions/job", "executus FIFO vs it")
    for name, n in counts.items():
        table.add(name, f"{n:,.0f}", f"{n / base:.2f}x" if base else "-")
    print()
    table.print()


if __name__ == "__main__":
    main()
