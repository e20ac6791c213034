"""Lanes, fanout and observers under task factories, eager ones included.

The scenarios are in ``tests/eager_scenarios.py``. Where this interpreter has
``asyncio.eager_task_factory`` (3.12+) they run here; otherwise they run in a
subprocess under a 3.12+ interpreter found on this machine. Under a task factory that
does not start tasks eagerly they run everywhere.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from executus import JobState, Lane
from tests import eager_scenarios
from tests.eager_scenarios import SCENARIOS
from tests.helpers import Gate, newer_pythons, settle, value

HAS_EAGER = hasattr(asyncio, "eager_task_factory")
SCRIPT = Path(eager_scenarios.__file__).resolve()

pytestmark = pytest.mark.timeout(120)


def _plain_factory(
    loop: asyncio.AbstractEventLoop, coro: Any, /, **kwargs: Any
) -> asyncio.Task[Any]:
    """A task factory that starts tasks as asyncio's default does (a tracing hook's
    shape)."""
    return asyncio.Task(coro, loop=loop, **kwargs)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_under_a_task_factory(scenario: Callable[[], Awaitable[None]]) -> None:
    """Each scenario passes on a loop with a (non-eager) task factory."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_plain_factory)
    try:
        async with asyncio.timeout(eager_scenarios.LIMIT):
            await scenario()
    finally:
        loop.set_task_factory(None)


@pytest.mark.skipif(not HAS_EAGER, reason="asyncio.eager_task_factory needs Python 3.12+")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_under_the_eager_task_factory(scenario: Callable[[], Awaitable[None]]) -> None:
    """Each scenario passes on a loop that starts tasks eagerly."""
    await eager_scenarios.run_eagerly(scenario)


@pytest.mark.skipif(HAS_EAGER, reason="this interpreter runs the scenarios itself")
def test_under_the_eager_task_factory_of_a_newer_python() -> None:
    """Each scenario passes under a 3.12+ interpreter's eager task factory."""
    newer = newer_pythons()
    if not newer:
        pytest.skip("no Python 3.12+ interpreter on this machine")
    exe = newer[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run(
        [exe, "-I", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )
    assert run.returncode == 0, (exe, run.stdout, run.stderr[-3000:])
    assert run.stdout.split() == [word for s in SCENARIOS for word in ("ok", s.__name__)], (
        run.stdout
    )
    assert sys.version_info < (3, 12)


def _old_style_factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    """A task factory written to the signature before Python 3.11 (no ``context``)."""
    return asyncio.Task(coro, loop=loop)


async def test_a_job_whose_task_factory_raises_ends_failed_with_its_error() -> None:
    """A job started at once on a loop whose task factory raises is returned FAILED with
    the factory's error, its slot free; the lane runs jobs again once the factory works."""
    lane = Lane("gpu", 1)
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_old_style_factory)
    try:
        handle = await lane.submit(value("never"))
        assert handle.state is JobState.FAILED
        error = handle.exception()
        with pytest.raises(TypeError) as raised:
            await handle
        assert raised.value is error
        with pytest.raises(TypeError):
            await lane.run(value("never"))
    finally:
        loop.set_task_factory(None)
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.failed) == (0, 0, 2)
    assert await lane.run(value("ran")) == "ran"


async def test_queued_jobs_whose_task_factory_raises_all_end_failed() -> None:
    """Thousands of queued jobs that cannot get a task each end FAILED, one after
    another (not one inside another's end), and their slot is free again."""
    lane = Lane("gpu", 1)
    gate = Gate()
    first = await lane.submit(gate)
    await settle()
    queued = [await lane.submit(value(i)) for i in range(3000)]
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_old_style_factory)
    try:
        gate.release("first")
        assert await first == "first"
        for handle in queued:
            with pytest.raises(TypeError):
                await handle
    finally:
        loop.set_task_factory(None)
    stats = await lane.stats()
    assert (stats.running, stats.queued, stats.failed, stats.succeeded) == (0, 0, 3000, 1)
    assert await lane.run(value("ran")) == "ran"
