"""Controllable jobs and small async helpers for the tests."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from executus import JobHandle, Lane, LaneUnavailable


class Gate:
    """A job body the test ends at will: ``release(value)`` or ``fail(exc)``.

    ``started`` counts how often the body began (a requeued job starts again).
    """

    def __init__(self) -> None:
        self._fut: asyncio.Future[object] | None = None
        self.started = 0
        self.running = False
        self.cancelled = False

    def __call__(self) -> Awaitable[object]:
        return self._body()

    async def _body(self) -> object:
        self.started += 1
        self.running = True
        self._fut = asyncio.get_running_loop().create_future()
        try:
            return await self._fut
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.running = False

    def release(self, value: object = None) -> None:
        assert self._fut is not None, "the job has not started"
        self._fut.set_result(value)

    def fail(self, exc: BaseException) -> None:
        assert self._fut is not None, "the job has not started"
        self._fut.set_exception(exc)


async def settle(rounds: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def value(v: object) -> Callable[[], Awaitable[object]]:
    """A job that returns ``v`` at once."""

    async def body() -> object:
        return v

    return body


async def granted_not_entered(lane: Any, **options: Any) -> asyncio.Task[None]:
    """A task waiting in ``lane.slot(**options)`` that has been granted the slot (the
    lane's only one, freed by a job that ends) but has not resumed to enter it."""
    gate = Gate()
    first = await lane.submit(gate)

    async def user() -> None:
        async with lane.slot(**options):
            raise AssertionError("must not run")

    task = asyncio.create_task(user())
    await settle()
    gate.release()
    await first  # the slot is granted; the waiting task has not resumed yet
    return task


class UnreachableOnCancel(Lane):
    """An in-process lane whose backend cannot be reached to cancel a job, as a
    ``RedisLane`` whose Redis is down: ``handle.cancel()`` raises ``LaneUnavailable``."""

    async def _job_cancel(self, job: JobHandle[Any]) -> bool:
        raise LaneUnavailable(f"lane {self.name!r}: redis unreachable")


ROOT = Path(__file__).resolve().parents[1]


def run_plain_executus(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -S -m executus ARGS`` from the source tree: no site packages, so only
    the standard library (the plain-text fallback of the command)."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "executus", *args],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def newer_pythons() -> list[str]:
    """Python 3.12+ interpreters on this machine other than this one's version, one per
    version, newest first (found on ``PATH``, in pyenv and in the usual prefixes)."""
    home = os.path.expanduser("~")
    candidates = [
        *(shutil.which(f"python3.{minor}") for minor in range(12, 20)),
        *glob.glob(f"{home}/.pyenv/versions/3.1[2-9]*/bin/python"),
        *glob.glob("/usr/bin/python3.1[2-9]"),
        *glob.glob("/usr/local/bin/python3.1[2-9]"),
    ]
    found: dict[tuple[int, int], str] = {}
    for exe in candidates:
        if not exe:
            continue
        try:
            probe = subprocess.run(
                [exe, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode != 0:  # e.g. a pyenv shim for a version not selected
            continue
        major, minor = map(int, probe.stdout.split())
        if (major, minor) >= (3, 12) and (major, minor) != sys.version_info[:2]:
            found.setdefault((major, minor), exe)
    return [found[v] for v in sorted(found, reverse=True)]
