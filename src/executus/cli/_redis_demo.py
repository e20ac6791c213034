"""``executus demo --redis URL --processes N``: the demo across N processes, one lane.

The parent starts N worker processes (``executus.cli._worker``) that share one
``RedisLane`` and shows the lane live, read-only (as ``executus top`` does). At the end
it merges the workers' figures and checks the limit held lane-wide. The lane's keys
and the demo's counter are deleted afterwards: the demo leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._redis.keys import LaneKeys
from ._demo import DemoSettings
from ._top import Client, LaneSnapshot, read_lane, render_lanes

__all__ = ["RedisDemo", "run_redis_demo"]

_MAX_CONCURRENT = 2


@dataclass(frozen=True)
class RedisDemo:
    """Where the Redis demo runs.

    Attributes:
        url: the Redis URL.
        namespace: the key namespace of the demo's lane.
        processes: how many worker processes share the lane.
        cluster: the URL names a node of a Redis Cluster.
    """

    url: str
    namespace: str
    processes: int
    cluster: bool = False


def _view(snap: LaneSnapshot | None, title: str, peak: int) -> Group:
    if snap is None:
        return Group(Text(f"{title}\n(waiting for the lane)"))
    note = Text(f"most jobs running at once, seen so far: {peak}/{snap.max_concurrent}")
    return Group(render_lanes([snap], title=title), note)


class _CtrlC:
    """Ctrl-C (SIGINT) during the demo: the first one stops it, as Python's own handler
    does (``KeyboardInterrupt``); any later one, or one during a ``held()`` block, is only
    noted, so it cannot cut short the clean-up the first began (ending the workers,
    deleting the lane's keys). A Ctrl-C noted during a ``held()`` block entered before any
    had arrived is raised when the block ends.

    Signals reach the main thread only: in another thread, or when SIGINT is ignored
    (a background job of a script), this changes nothing.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False
        self._holding = False
        self._noted = False

    def __enter__(self) -> _CtrlC:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        if self._holding:
            self._noted = True
            return
        self._holding = True  # the clean-up this one starts must run to its end
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Note a Ctrl-C during the block instead of raising it there; raise it after."""
        was = self._holding
        self._holding = True
        try:
            yield
        finally:
            self._holding = was
        if self._noted and not was:
            self._holding = True
            raise KeyboardInterrupt


def _cleanup(client: Client, keys: LaneKeys, counter: str) -> None:
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in keys.prefix) + "*"
    batch = list(client.scan_iter(match=pattern, count=1000))
    if batch:
        client.delete(*batch)
    client.delete(counter)


def run_redis_demo(
    settings: DemoSettings, where: RedisDemo, console: Console, client: Client
) -> int:
    """Run the multi-process demo; returns the exit code.

    ``client`` (of ``where.url``: a ``RedisCluster`` on a cluster) watches the lane and
    cleans up afterwards; the caller closes it.

    Raises:
        redis.RedisError: Redis failed.
    """
    lane = f"demo-{uuid.uuid4().hex[:8]}"
    keys = LaneKeys(where.namespace, lane)
    counter = f"{where.namespace}-demo:{lane}:live"
    title = (
        f"executus demo - lane {lane!r} shared by {where.processes} processes, "
        f"policy {settings.policy}, {settings.seconds:g}s of traffic"
    )
    procs: list[subprocess.Popen[str]] = []
    # The workers write to files, not pipes: a report larger than a pipe's buffer would
    # block its worker until this process read it, which it does only once all exited.
    files = contextlib.ExitStack()
    outputs: list[tuple[IO[str], IO[str]]] = []
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    peak_seen = 0
    with _CtrlC() as ctrl_c:
        try:
            for i in range(where.processes):
                cfg = {
                    "index": i,
                    "url": where.url,
                    "cluster": where.cluster,
                    "namespace": where.namespace,
                    "lane": lane,
                    "max_concurrent": _MAX_CONCURRENT,
                    "policy": settings.policy,
                    "seconds": settings.seconds,
                    "users": settings.users,
                    "seed": settings.seed,
                    "counter": counter,
                    "processes": where.processes,
                }
                # Closed by ``files`` (in the finally below, after the workers ended).
                # The settings go in on stdin, not on the command line: the URL may carry a
                # password, and any local user can read a process's arguments (``ps``).
                in_file = files.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))  # noqa: SIM115
                in_file.write(json.dumps(cfg))
                in_file.flush()
                in_file.seek(0)
                out_file = files.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))  # noqa: SIM115
                err_file = files.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))  # noqa: SIM115
                outputs.append((out_file, err_file))
                # Held: a Ctrl-C inside Popen, after the fork, would leave a worker untracked.
                with ctrl_c.held():
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "executus.cli._worker"],
                            stdin=in_file,
                            stdout=out_file,
                            stderr=err_file,
                            text=True,
                        )
                    )
            # A worker sends traffic for ``seconds``, then drains its queue briefly (see
            # _worker.py) before it reports; one not done long after that is stuck.
            deadline = time.monotonic() + settings.seconds + max(5.0, settings.seconds) + 60
            snap = None
            with Live(_view(None, title, 0), console=console, refresh_per_second=4) as live:
                while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                    time.sleep(0.25)
                    snap = read_lane(client, where.namespace, lane) or snap
                    if snap is not None:
                        peak_seen = max(peak_seen, snap.running)
                    live.update(_view(snap, title, peak_seen))
            console.line()
            for p, (out_io, err_io) in zip(procs, outputs, strict=True):
                if p.poll() is None:
                    p.kill()
                    failures.append(f"process {p.pid} did not finish in time")
                p.wait(timeout=10)
                out_io.seek(0)
                err_io.seek(0)
                out, err = out_io.read(), err_io.read()
                if p.returncode != 0:
                    tail = err.strip().splitlines()[-1:] or ["no output"]
                    failures.append(f"process {p.pid} exited with {p.returncode}: {tail[0]}")
                    continue
                try:
                    results.append(json.loads(out.strip().splitlines()[-1]))
                except (ValueError, IndexError):
                    failures.append(f"process {p.pid} printed no result")
        finally:
            # However many more Ctrl-Cs arrive: end the workers first (they would write the
            # lane's keys again), then delete the keys.
            with ctrl_c.held():
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            p.wait(timeout=10)
                files.close()
                _cleanup(client, keys, counter)
    return _conclude(results, failures, where, peak_seen, console)


def _conclude(
    results: list[dict[str, Any]],
    failures: list[str],
    where: RedisDemo,
    peak_seen: int,
    console: Console,
) -> int:
    merged: dict[str, dict[str, Any]] = {}
    for res in results:
        for key, r in res["keys"].items():
            m = merged.setdefault(key, {"waits": [], "done": 0, "preempted": 0, "refused": 0})
            m["waits"] += r["waits"]
            for f in ("done", "preempted", "refused"):
                m[f] += r[f]
    table = Table(title="per key, all processes", title_justify="left")
    for col in ("key", "done", "median wait", "max wait", "preempted", "refused"):
        table.add_column(col, justify="left" if col == "key" else "right")
    for key in sorted(merged):
        m = merged[key]
        waits = m["waits"]
        median = f"{statistics.median(waits):.2f}s" if waits else "-"
        worst = f"{max(waits):.2f}s" if waits else "-"
        table.add_row(key, str(m["done"]), median, worst, str(m["preempted"]), str(m["refused"]))
    console.print(table)
    peak = max((int(r["peak"]) for r in results), default=0)
    for failure in failures:
        console.print(Text(failure, style="red"))  # a worker's error is not markup
    held = peak <= _MAX_CONCURRENT and peak_seen <= _MAX_CONCURRENT
    verdict = "the limit held lane-wide" if held else "THE LIMIT WAS EXCEEDED"
    console.print(
        f"{len(results)}/{where.processes} processes finished; at most {peak} jobs ran at "
        f"once across all of them (max_concurrent={_MAX_CONCURRENT}): {verdict}."
    )
    return 0 if held and not failures else 1
