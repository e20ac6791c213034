"""The documentation's examples run as shown: README.md's tour, every complete example in
docs/ (the ones that end in ``asyncio.run``; those of ``RedisLane`` against a private
redis-server), the custom policy of docs/lanes.md, and the error messages the docs quote."""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executus import DuplicateJob, Lane, LaneBusy, NotQueued

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, in order."""
    return _BLOCK.findall(page.read_text("utf-8"))


def complete_examples() -> list[Any]:
    """Every block that runs itself (``asyncio.run``) and needs no Redis server."""
    found = []
    for page in PAGES:
        for i, block in enumerate(python_blocks(page)):
            if "asyncio.run(" in block and "executus.redis" not in block:
                found.append(pytest.param(block, id=f"{page.name}#{i}"))
    return found


def redis_examples() -> list[Any]:
    """Every block that runs itself against the Redis of ``redis://localhost:6379/0``."""
    found = []
    for page in PAGES:
        for i, block in enumerate(python_blocks(page)):
            if "asyncio.run(" in block and "executus.redis" in block:
                found.append(pytest.param(block, id=f"{page.name}#{i}"))
    return found


def expected_output(block: str) -> list[str] | None:
    """The ``# ...`` lines after an example's last ``asyncio.run(main())``: what it prints."""
    tail = block.rsplit("asyncio.run(main())", 1)[1]
    lines = [line.strip() for line in tail.strip().splitlines()]
    if not lines or not all(line.startswith("# ") for line in lines):
        return None
    return [line[2:] for line in lines]


@pytest.mark.parametrize("block", complete_examples())
def test_complete_example_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A complete example runs as shown and prints what its trailing comments say."""
    exec(compile(block, "<docs example>", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    expected = expected_output(block)
    if expected is not None:
        assert printed == expected


@pytest.mark.redis
@pytest.mark.parametrize("block", redis_examples())
def test_complete_redis_example_runs(block: str, redis_url: str) -> None:
    """A complete RedisLane example runs as shown, against a private redis-server."""
    source = block.replace("redis://localhost:6379/0", redis_url)
    assert source != block, "the example no longer names redis://localhost:6379/0"
    exec(compile(source, "<docs example>", "exec"), {"__name__": "__main__"})


def test_there_are_complete_examples() -> None:
    """The examples above are found (a change to the docs' fences would hide them)."""
    ids = {p.id for p in complete_examples()}
    assert {"fanout.md#0", "progress.md#2", "progress.md#3"} <= ids
    assert "redis.md#0" in {p.id for p in redis_examples()}


class _Llm:
    """A stand-in for a model client: ``chat`` answers, ``stream`` yields chunks."""

    async def chat(self, prompt: str) -> str:
        await asyncio.sleep(0.001)
        return f"reply to {prompt}"

    async def stream(self, prompt: str) -> AsyncIterator[str]:
        for chunk in ("chunk-1", "chunk-2"):
            await asyncio.sleep(0)
            yield chunk


async def test_readme_tour_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """README.md's tour runs against an in-process Lane with stand-in services."""
    tour = python_blocks(ROOT / "README.md")[0]
    said: list[str] = []
    sent: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    async def send(chunk: str) -> None:
        sent.append(chunk)

    async def render(scene: str) -> str:
        await asyncio.sleep(0.001)
        return f"image of {scene}"

    async def embed(docs: list[str]) -> int:
        await asyncio.sleep(0.001)
        return len(docs)

    namespace: dict[str, Any] = {
        "llm": _Llm(),
        "say": say,
        "send": send,
        "render": render,
        "embed": embed,
        "prompt": "hello",
        "urgent": "now",
        "scene": "a cat",
        "docs": ["a", "b"],
    }
    source = "async def _tour():\n" + textwrap.indent(tour, "    ") + "    return locals()\n"
    exec(compile(source, "<README tour>", "exec"), namespace)
    tour_fn: Callable[[], Any] = namespace["_tour"]
    seen: dict[str, Any] = await tour_fn()

    lane: Lane = seen["lane"]
    assert seen["reply"] == "reply to hello"
    assert seen["image"] == "image of a cat"
    assert sent == ["chunk-1", "chunk-2"]
    assert said == []  # the lane was never busy: nothing refused, nothing queued
    assert lane.closed
    assert lane.max_concurrent == 4
    stats = await lane.stats()
    assert (stats.submitted, stats.succeeded, stats.running, stats.queued) == (6, 6, 0, 0)
    assert "LaneStats(name='ollama'" in capsys.readouterr().out


async def test_custom_policy_example_orders_by_cost() -> None:
    """docs/lanes.md's ShortestFirst policy runs and orders the queue by estimated cost."""
    block = next(b for b in python_blocks(ROOT / "docs" / "lanes.md") if "ShortestFirst" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, "<lanes.md policy>", "exec"), namespace)
    lane: Lane = namespace["lane"]
    expected_seconds: dict[str, float] = namespace["expected_seconds"]
    gate = asyncio.Event()
    started: list[str] = []

    async def job(name: str) -> None:
        started.append(name)

    await lane.submit(gate.wait, job_id="first")
    handles = {}
    for job_id, cost in (("a", 5.0), ("b", 1.0), ("c", 3.0), ("d", 1.0)):
        expected_seconds[job_id] = cost
        handles[job_id] = await lane.submit(lambda j=job_id: job(j), job_id=job_id)  # type: ignore[misc]
    assert {j: h.position for j, h in handles.items()} == {"a": 4, "b": 1, "c": 3, "d": 2}
    await lane.cancel("c")
    assert handles["a"].position == 3
    gate.set()
    await lane.aclose()
    assert started == ["b", "d", "a"]


async def test_quoted_error_messages_are_the_real_ones() -> None:
    """The error messages docs/lanes.md quotes are the ones the lane raises."""
    text = (ROOT / "docs" / "lanes.md").read_text("utf-8")

    def message(call: Callable[[], object]) -> str:
        try:
            call()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        raise AssertionError("no error raised")

    assert message(lambda: Lane("")) in text
    assert message(lambda: Lane("x", 0)) in text
    assert message(lambda: Lane("x", eta_window=0)) in text
    lane = Lane("x", 1)
    gate = asyncio.Event()
    running = await lane.submit(gate.wait, job_id="j")
    with pytest.raises(NotQueued) as not_queued:
        await lane.cancel(running.id)
    assert f"`{not_queued.value}`" in text
    with pytest.raises(ValueError, match="max_wait") as bad_wait:
        await lane.submit(gate.wait, max_wait=-1)
    assert f"`{bad_wait.value}`" in text
    with pytest.raises(DuplicateJob):
        await lane.submit(gate.wait, job_id="j")
    with pytest.raises(LaneBusy):
        await lane.submit(gate.wait, max_wait=0)
    gate.set()
    await lane.aclose()
