"""Benchmark RedisLane against Dramatiq's ConcurrentRateLimiter on one private Redis.

Run:  .venv/bin/python bench/bench_redis.py [--quick] [--repeats N] [--server BINARY]

It starts its own redis-server (or, with ``--server``, another compatible server such as
a valkey-server) on a free port (no persistence) and never touches any other Redis.
Every scenario runs in real worker processes started from this file, which wait for a
common start instant so that they overlap fully. Each figure is the median
of ``--repeats`` runs.

Scenarios:
1. Slot utilisation: 8 slots, 10 ms jobs, 4 processes x 8 concurrent submitters
   (RedisLane) against ConcurrentRateLimiter(limit=8) with 4 processes x 8 threads
   polling with jittered exponential back-off (1 ms doubling to 32 ms). The slots allow
   800 jobs/s at most; also printed: each side's measured job run time (a 10 ms sleep
   as its runtime performs it), the rate the slots allow at that run time, and the
   CPU time the client processes spent per job. RedisLane runs twice: on asyncio's
   default loop, whose epoll waits round every timer up to a whole millisecond (a
   10 ms sleep takes about 10.6 ms there), and on a loop with a ``select()`` selector,
   whose waits have microsecond resolution (a 10 ms sleep takes about 10.1 ms, as
   ``time.sleep(0.01)`` does in Dramatiq's threads).
2. Hand-off latency: 1 slot, two processes taking turns with 1 ms jobs; the time from a
   job's end in one process to the next job's start in the other.
3. Throughput with free slots: no-op jobs, 64 submitters per process, 1 and 4 processes;
   script calls per job (EVALSHA, EVAL and BLPOP from INFO commandstats; the calls a
   client makes in one event-loop turn share one pipelined round trip).
4. Recovery after SIGKILL: a process holding the only slot is killed; the time until a
   job queued by another process starts, for several leases.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


# -- worker roles (run in child processes) ---------------------------------------------


async def role_util(a: argparse.Namespace) -> dict[str, Any]:
    from executus.redis import RedisLane

    lane = RedisLane("bench", a.url, namespace=a.ns, lease=10.0)
    await lane.stats()
    done = 0
    runs: list[float] = []
    end_at = a.start_at + a.seconds

    async def job() -> None:
        t0 = time.monotonic()
        await asyncio.sleep(a.job)
        runs.append(time.monotonic() - t0)

    async def submitter() -> None:
        nonlocal done
        while time.monotonic() < end_at:
            await lane.run(job)
            if a.start_at <= time.monotonic() <= end_at:
                done += 1

    await asyncio.sleep(max(0.0, a.start_at - time.monotonic()))
    cpu = time.process_time()
    await asyncio.gather(*(submitter() for _ in range(a.submitters)))
    cpu = time.process_time() - cpu
    await lane.aclose()
    return {"done": done, "run": statistics.mean(runs), "cpu": cpu}


def role_util_dramatiq(a: argparse.Namespace) -> dict[str, Any]:
    import redis
    from dramatiq.rate_limits import ConcurrentRateLimiter
    from dramatiq.rate_limits.backends import RedisBackend

    backend = RedisBackend(client=redis.Redis.from_url(a.url))
    limiter = ConcurrentRateLimiter(backend, f"{a.ns}-mutex", limit=8, ttl=10_000)  # type: ignore[no-untyped-call]
    done = 0
    runs: list[float] = []
    lock = threading.Lock()
    end_at = a.start_at + a.seconds

    def worker() -> None:
        nonlocal done
        time.sleep(max(0.0, a.start_at - time.monotonic()))
        while time.monotonic() < end_at:
            backoff = 0.001
            while True:
                with limiter.acquire(raise_on_failure=False) as acquired:
                    if acquired:
                        t0 = time.monotonic()
                        time.sleep(a.job)
                        with lock:
                            runs.append(time.monotonic() - t0)
                        break
                time.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 0.032)
            if a.start_at <= time.monotonic() <= end_at:
                with lock:
                    done += 1

    threads = [threading.Thread(target=worker) for _ in range(a.submitters)]
    time.sleep(max(0.0, a.start_at - time.monotonic()))
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu
    return {"done": done, "run": statistics.mean(runs), "cpu": cpu}


async def role_handoff(a: argparse.Namespace) -> dict[str, Any]:
    from executus.redis import RedisLane

    lane = RedisLane("handoff", a.url, namespace=a.ns, lease=10.0)
    await lane.stats()
    runs: list[tuple[float, float]] = []

    async def job() -> None:
        t0 = time.monotonic()
        await asyncio.sleep(a.job)
        runs.append((t0, time.monotonic()))

    await asyncio.sleep(max(0.0, a.start_at - time.monotonic()))
    end_at = a.start_at + a.seconds
    while time.monotonic() < end_at:
        await lane.run(job)
    await lane.aclose()
    return {"runs": runs}


async def role_free(a: argparse.Namespace) -> dict[str, Any]:
    from executus.redis import RedisLane

    lane = RedisLane("free", a.url, namespace=a.ns, lease=10.0)
    await lane.stats()
    done = 0
    end_at = a.start_at + a.seconds

    async def nothing() -> None:
        return None

    async def submitter() -> None:
        nonlocal done
        while time.monotonic() < end_at:
            await lane.run(nothing)
            done += 1

    await asyncio.sleep(max(0.0, a.start_at - time.monotonic()))
    await asyncio.gather(*(submitter() for _ in range(a.submitters)))
    await lane.aclose()
    return {"done": done}


async def role_hold(a: argparse.Namespace) -> dict[str, Any]:
    from executus.redis import RedisLane

    lane = RedisLane("recover", a.url, namespace=a.ns, lease=a.lease)
    await lane.submit(asyncio.Event().wait)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()
    return {}


def worker_main(a: argparse.Namespace) -> None:
    roles = {
        "util": role_util,
        "handoff": role_handoff,
        "free": role_free,
        "hold": role_hold,
    }
    if a.role == "util-dramatiq":
        out = role_util_dramatiq(a)
    elif a.loop == "select":
        loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        try:
            out = loop.run_until_complete(roles[a.role](a))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())  # as asyncio.run does
            loop.close()
    else:
        out = asyncio.run(roles[a.role](a))
    print(json.dumps(out), flush=True)


# -- orchestration ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, binary: str = "redis-server") -> None:
        self.name = Path(binary).name
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="executus-bench-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{binary} did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def round_trips(self) -> int:
        """Commands clients sent (commandstats also counts the scripts' inner calls)."""
        import redis

        client = redis.Redis.from_url(self.url)
        stats = client.info("commandstats")
        client.close()
        sent = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_blpop", "cmdstat_ping")
        return sum(int(v["calls"]) for k, v in stats.items() if k in sent)

    def reads(self) -> int:
        """Read events the server processed: one per request batch a client sent."""
        import redis

        client = redis.Redis.from_url(self.url)
        stats = client.info("stats")
        client.close()
        return int(stats["total_reads_processed"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_workers(specs: list[list[str]], timeout: float = 120) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen([sys.executable, str(HERE), "--worker", *spec], stdout=subprocess.PIPE)
        for spec in specs
    ]
    outs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        outs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return outs


def configure(server: Server, ns: str, name: str, max_concurrent: int) -> None:
    from executus.redis import RedisLane

    async def setup() -> None:
        lane = RedisLane(name, server.url, max_concurrent, namespace=ns, lease=10.0)
        await lane.stats()
        await lane.aclose()

    asyncio.run(setup())


# The utilisation contenders: a label, the worker role and the worker's extra options.
UTIL_CONTENDERS = [
    ("RedisLane", "util", ["--loop", "default"]),
    ("RedisLane, select() loop", "util", ["--loop", "select"]),
    ("ConcurrentRateLimiter", "util-dramatiq", []),
]


def bench_utilisation(server: Server, seconds: float) -> list[list[float]]:
    """Per contender of ``UTIL_CONTENDERS``: jobs/s, server reads per job, mean job run
    time (s) and the clients' CPU time per job (s)."""
    ns = f"u{random.getrandbits(32):x}"
    configure(server, ns, "bench", 8)
    figures: list[list[float]] = []
    for _, role, extra in UTIL_CONTENDERS:
        start_at = time.monotonic() + 1.5
        common = ["--url", server.url, "--ns", ns, "--start-at", repr(start_at),
                  "--seconds", repr(seconds), "--job", "0.01", "--submitters", "8"]  # fmt: skip
        before = server.reads()
        outs = run_workers([["--role", role, *common, *extra] for _ in range(4)])
        reads = server.reads() - before
        done = sum(o["done"] for o in outs)
        run = statistics.mean(o["run"] for o in outs)
        cpu = sum(o["cpu"] for o in outs)
        figures.append([done / seconds, reads / max(1, done), run, cpu / max(1, done)])
    return figures


def bench_handoff(server: Server, seconds: float) -> list[float]:
    ns = f"h{random.getrandbits(32):x}"
    configure(server, ns, "handoff", 1)
    start_at = time.monotonic() + 1.5
    common = ["--url", server.url, "--ns", ns, "--start-at", repr(start_at),
              "--seconds", repr(seconds), "--job", "0.001"]  # fmt: skip
    outs = run_workers([["--role", "handoff", *common] for _ in range(2)])
    runs = sorted((s, e, i) for i, o in enumerate(outs) for s, e in o["runs"])
    return [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(runs) if a[2] != b[2]]


def bench_free(server: Server, seconds: float, processes: int) -> tuple[float, float]:
    ns = f"f{random.getrandbits(32):x}"
    configure(server, ns, "free", 100_000)
    start_at = time.monotonic() + 1.5
    common = ["--url", server.url, "--ns", ns, "--start-at", repr(start_at),
              "--seconds", repr(seconds), "--submitters", "64"]  # fmt: skip
    before = server.round_trips()
    outs = run_workers([["--role", "free", *common] for _ in range(processes)])
    calls = server.round_trips() - before
    done = sum(o["done"] for o in outs)
    return done / seconds, calls / max(1, done)


def bench_recovery(server: Server, lease: float) -> float:
    from executus.redis import RedisLane

    ns = f"r{random.getrandbits(32):x}"
    configure(server, ns, "recover", 1)
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--worker", "--role", "hold", "--url", server.url,
         "--ns", ns, "--lease", repr(lease)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())

    async def measure() -> float:
        lane = RedisLane("recover", server.url, namespace=ns, lease=lease)
        started = asyncio.Event()

        async def job() -> None:
            started.set()

        handle = await lane.submit(job)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        await started.wait()
        elapsed = time.monotonic() - t0
        await handle
        await lane.aclose()
        return elapsed

    elapsed = asyncio.run(measure())
    proc.wait(timeout=10)
    return elapsed


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--server", default="redis-server", help="the server binary to start")
    a = p.parse_args()
    seconds = 2.0 if a.quick else 4.0
    server = Server(a.server)
    try:
        print(f"{server.name} on port {server.port}; {a.repeats} repeats; medians\n")
        util = [bench_utilisation(server, seconds) for _ in range(a.repeats)]
        print("1. slot utilisation (8 slots, 10 ms jobs, 4 processes x 8 submitters)")
        dramatiq = statistics.median(u[-1][0] for u in util)
        for i, (label, _, _) in enumerate(UTIL_CONTENDERS):
            rate, reads, run, cpu = (statistics.median(u[i][k] for u in util) for k in range(4))
            cap = 8 / run
            print(f"   {label + ':':<26} {rate:4.0f} jobs/s ({rate / 800:.0%} of 800)  "
                  f"job run {run * 1000:.2f} ms, the slots allow {cap:.0f} jobs/s: reached "
                  f"{rate / cap:.0%};  {reads:4.1f} server reads, {cpu * 1e6:5.0f} us "
                  f"client CPU per job;  vs Dramatiq {rate / dramatiq:.2f}x")  # fmt: skip
            print("      per-run jobs/s: " + ", ".join(f"{u[i][0]:.0f}" for u in util))
        print("   (job run: a 10 ms sleep as the runtime performs it: asyncio.sleep(0.01) on "
              "the loop named, time.sleep(0.01) in Dramatiq's threads)\n")  # fmt: skip

        p50s, p99s = [], []
        for _ in range(a.repeats):
            lat = bench_handoff(server, seconds)
            p50s.append(pct(lat, 0.5))
            p99s.append(pct(lat, 0.99))
        print("2. hand-off latency, release in A -> start in B (1 slot, 1 ms jobs)")
        print(f"   p50 {statistics.median(p50s):.2f} ms   p99 {statistics.median(p99s):.2f} ms\n")

        print("3. throughput with free slots (no-op jobs, 64 submitters per process)")
        for n in (1, 4):
            runs = [bench_free(server, seconds, n) for _ in range(a.repeats)]
            rate = statistics.median(r[0] for r in runs)
            rt = statistics.median(r[1] for r in runs)
            print(f"   {n} process{'es' if n > 1 else '  '}: {rate:8.0f} jobs/s   {rt:.2f} "
                  "script calls per job")  # fmt: skip
        print()
        print("4. recovery after SIGKILL of the slot holder (kill -> next start)")
        for lease in (1.0, 2.0, 4.0):
            rec = statistics.median(bench_recovery(server, lease) for _ in range(a.repeats))
            print(f"   lease {lease:3.1f}s: {rec:.2f}s  ({rec / lease:.2f} x lease)")
    finally:
        server.stop()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        wp = argparse.ArgumentParser()
        wp.add_argument("--worker", action="store_true")
        wp.add_argument("--role", required=True)
        wp.add_argument("--url", required=True)
        wp.add_argument("--ns", required=True)
        wp.add_argument("--start-at", type=float, default=0.0)
        wp.add_argument("--seconds", type=float, default=3.0)
        wp.add_argument("--job", type=float, default=0.01)
        wp.add_argument("--submitters", type=int, default=8)
        wp.add_argument("--lease", type=float, default=10.0)
        wp.add_argument("--loop", choices=("default", "select"), default="default")
        worker_main(wp.parse_args())
    else:
        main()
