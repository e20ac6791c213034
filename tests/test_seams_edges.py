"""Edge cases of the harness seams: None-safe defaults, input validation."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executus import Lane
from executus.identity import Forbidden, Member, RoleAdmins, StaticMembers, is_admin, resolve
from executus.progress import ProgressReporter
from executus.testing import ManualClock

from .helpers import Gate, value

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(page: str, section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of a docs page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    part = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, re.S)


async def _run_line(code: str, ns: dict[str, Any]) -> None:
    """Run one line of a docs example, with top-level await, in ``ns``."""
    compiled = compile(code, "<docs>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, ns)
    if result is not None:
        await result


class _EmptyAdmins(set[str]):
    """An admin policy that is also a (here empty) container: falsy, yet a policy."""

    def is_admin(self, user: str) -> bool:
        return user == "root" or user in self


class _Directory(dict[str, Member]):
    """A member resolver that is also an (empty) cache: falsy, yet a resolver."""

    def resolve(self, user: str) -> Member:
        return self.get(user) or Member(user, f"Dr. {user}")


def test_is_admin_asks_a_falsy_policy() -> None:
    """is_admin falls back to nobody only for None, not for a policy that is falsy."""
    assert is_admin(_EmptyAdmins(), "root") is True


def test_resolve_asks_a_falsy_resolver() -> None:
    """resolve falls back to the id as name only for None, not for a falsy resolver."""
    assert resolve(_Directory(), "u1") == Member("u1", "Dr. u1")


def test_role_admins_refuses_a_bare_string() -> None:
    """RoleAdmins refuses one str for roles instead of splitting it into letters."""
    people = StaticMembers([Member("u1", "Alice", frozenset({"admin"}))])
    with pytest.raises(TypeError) as info:
        RoleAdmins(people, "admin")
    assert str(info.value) == ("roles must be a collection of role names, not one str, got 'admin'")


@pytest.mark.parametrize("bad", ["5", True, [1]])
def test_deliver_timeout_of_the_wrong_type_is_refused(bad: object) -> None:
    """A deliver_timeout that is not a number is refused naming the setting and value."""
    with pytest.raises(TypeError) as info:
        ProgressReporter("t", deliver_timeout=bad)  # type: ignore[arg-type]
    assert str(info.value) == f"deliver_timeout must be a number of seconds or None, got {bad!r}"


async def test_track_refuses_a_nan_poll(clock: ManualClock) -> None:
    """track() refuses a poll interval that is not a number > 0, such as NaN."""
    async with Lane("gpu", 1, clock=clock) as lane:
        handle = await lane.submit(value("v"))
        assert await handle == "v"
        reporter = ProgressReporter("t", clock=clock)
        with pytest.raises(ValueError, match=r"^poll must be > 0, got nan$"):
            await reporter.track(handle, poll=math.nan)
        with pytest.raises(TypeError) as info:
            await reporter.track(handle, poll="1")  # type: ignore[arg-type]
        assert str(info.value) == "poll must be a number of seconds, got '1'"


async def test_identity_docs_example_runs_as_written(clock: ManualClock) -> None:
    """The identity example of the harness page runs, refusing exactly where it says."""
    setup, usage = _python_blocks("harness.md", "identity")
    ns: dict[str, Any] = {}
    exec(setup, ns)
    async with Lane("gpu", 1, clock=clock) as lane:
        gate = Gate()
        ns.update(lane=lane, llm=SimpleNamespace(chat=lambda prompt: gate()), prompt="hi")
        for line in usage.splitlines():
            code, _, comment = line.partition("#")
            comment = comment.strip()
            if comment.startswith("Forbidden: "):
                said = re.escape(comment.removeprefix("Forbidden: "))
                with pytest.raises(Forbidden, match=said.replace(r"\.\.\.", ".*")):
                    await _run_line(code, ns)
            else:
                await _run_line(code, ns)
        assert lane.max_concurrent == 4


async def test_a_failing_progress_formatter_leaves_the_job_outcome_alone(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A formatter that raises is logged; run_with_progress still returns the job's value
    or raises the job's own error."""
    from executus.deliver import Recorder
    from executus.progress import run_with_progress

    def broken(update: Any) -> str:
        raise RuntimeError("formatter broke")

    async def ok() -> str:
        return "reply"

    async def bad() -> str:
        raise ValueError("model crashed")

    rec = Recorder()
    async with Lane("gpu", 1, clock=clock) as lane:
        reporter = ProgressReporter("a", rec, interval=0, clock=clock, formatter=broken)
        assert await run_with_progress(lane, ok, reporter) == "reply"
        reporter = ProgressReporter("b", rec, interval=0, clock=clock, formatter=broken)
        with pytest.raises(ValueError, match=r"^model crashed$"):
            await run_with_progress(lane, bad, reporter)
    assert "progress reporting for job" in caplog.text
    assert "formatter broke" in caplog.text
