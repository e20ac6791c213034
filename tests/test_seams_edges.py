"""Edge cases of the harness seams: None-safe defaults, input validation."""

from __future__ import annotations

import ast
import asyncio
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executus import JobState, Lane, NotQueued
from executus.deliver import CallbackDeliverer
from executus.dispatchguard import DispatchGuard
from executus.identity import (
    Forbidden,
    LaneOps,
    Member,
    RoleAdmins,
    StaticAdmins,
    StaticMembers,
    is_admin,
    resolve,
)
from executus.pendingattach import PendingAttachments
from executus.progress import ProgressReporter
from executus.testing import ManualClock

from .helpers import Gate, settle, value

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


# -- LaneOps: cancelling an ended job ------------------------------------------------------------


def _ops(lane: Lane, **options: Any) -> LaneOps:
    """LaneOps with 'ops' as the only admin and display names for alice and bob."""
    members = StaticMembers([Member("alice", "Alice"), Member("bob", "Bob")])
    return LaneOps(lane, StaticAdmins({"ops"}), members, **options)


async def _answers(ops: LaneOps, job_id: str) -> list[object]:
    """What alice (the owner), ops (an admin) and bob get when cancelling ``job_id``."""
    answers: list[object] = []
    for user in ("alice", "ops", "bob"):
        try:
            answers.append(await ops.cancel(user, job_id))
        except (Forbidden, NotQueued) as e:
            answers.append(f"{type(e).__name__}: {e}")
    return answers


async def _ended_jobs(ops: LaneOps, n: int) -> None:
    """Submit ``n`` jobs through ``ops`` and let each end."""
    for i in range(n):
        assert await (await ops.submit(value(i), key="carol")) == i


async def test_laneops_cancel_of_an_ended_job_does_not_depend_on_the_sweep(
    clock: ManualClock,
) -> None:
    """An ended job's owner and an admin get False, others Forbidden, before and after a sweep."""
    expected = [
        False,
        False,
        "Forbidden: Bob may not cancel job 'a1' of Alice: only its owner or an admin may",
    ]
    async with Lane("gpu", 1, clock=clock) as lane:
        ops = _ops(lane)
        for job_id in ("a1", "a2"):
            assert await (await ops.submit(value(job_id), job_id=job_id, key="alice")) == job_id
        assert await _answers(ops, "a1") == expected
        await _ended_jobs(ops, 64)  # the table fills up: ended jobs are swept out of it
        assert ops.jobs() == []
        assert await _answers(ops, "a1") == expected  # asked again
        assert await _answers(ops, "a2") == [
            False,
            False,
            "Forbidden: Bob may not cancel job 'a2' of Alice: only its owner or an admin may",
        ]


async def test_laneops_forgets_ended_jobs_beyond_remember_ended(clock: ManualClock) -> None:
    """Past the remember_ended most recent ended jobs, an old job's owner is unknown."""
    async with Lane("gpu", 1, clock=clock) as lane:
        ops = _ops(lane, remember_ended=8)
        assert ops.remember_ended == 8
        assert await (await ops.submit(value("x"), job_id="a1", key="alice")) == "x"
        await _ended_jobs(ops, 200)
        assert len(ops._ended) <= 8
        assert len(ops._jobs) <= 64
        assert await _answers(ops, "a1") == [
            "Forbidden: Alice may not cancel job 'a1': its owner is unknown, and only an "
            "admin may cancel it",
            "NotQueued: job 'a1' is not queued in lane 'gpu' (unknown)",
            "Forbidden: Bob may not cancel job 'a1': its owner is unknown, and only an admin "
            "may cancel it",
        ]


@pytest.mark.parametrize("swept", [False, True])
async def test_laneops_admin_cancels_a_direct_job_reusing_an_ended_jobs_id(
    clock: ManualClock, swept: bool
) -> None:
    """An admin's cancel of an ended job's id reaches a queued job submitted to the lane
    directly under that id since; its owner still gets False, others Forbidden."""
    async with Lane("gpu", 1, clock=clock) as lane:
        ops = _ops(lane)
        assert await (await ops.submit(value("x"), job_id="a1", key="alice")) == "x"
        if swept:
            await _ended_jobs(ops, 64)
        blocker = Gate()
        await lane.submit(blocker, key="carol")  # holds the only slot
        await settle()
        try:
            direct = await lane.submit(value("y"), job_id="a1", key="dave")  # queued
            assert await ops.cancel("alice", "a1") is False
            with pytest.raises(Forbidden) as info:
                await ops.cancel("bob", "a1")
            assert str(info.value) == (
                "Bob may not cancel job 'a1' of Alice: only its owner or an admin may"
            )
            assert await ops.cancel("ops", "a1") is True
            assert direct.state is JobState.CANCELLED
            assert await ops.cancel("ops", "a1") is False  # nothing of that id is queued now
        finally:
            blocker.release()


@pytest.mark.parametrize("bad", [0, -1, True, "8", 2.5])
async def test_laneops_refuses_a_bad_remember_ended(clock: ManualClock, bad: object) -> None:
    """remember_ended must be an int >= 1."""
    lane = Lane("gpu", 1, clock=clock)
    message = f"remember_ended must be an int >= 1, got {bad!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _ops(lane, remember_ended=bad)


# -- ProgressReporter: nothing after the terminal update --------------------------------------


async def test_no_timer_or_flush_after_the_terminal_update(clock: ManualClock) -> None:
    """A throttled flush queued behind a slow delivery arms no timer after the final update."""
    sent: list[str] = []
    slow = asyncio.Event()

    async def deliver(target: str, message: str) -> None:
        if message == "step 2/3":
            await slow.wait()
        sent.append(message)

    r = ProgressReporter("t", CallbackDeliverer(deliver), interval=2.0, clock=clock)
    await r.started()
    await r.step(1, 3)  # throttled: a timer is armed for the end of the interval
    go = asyncio.Event()

    async def step_two() -> None:
        await go.wait()
        await r.step(2, 3)  # due by then: delivered at once, slowly

    stepper = asyncio.create_task(step_two())
    await settle()
    go.set()  # step_two resumes before the flush that the timer starts below
    clock.advance(2.0)  # the timer fires: its flush queues behind step 2's delivery
    await settle()
    final = asyncio.create_task(r.done())  # queues behind that flush
    await settle()
    slow.set()
    await stepper
    await final
    assert sent == ["started", "step 2/3", "done"]
    assert clock.pending_timers == 0
    clock.advance(10.0)
    await settle()
    assert sent == ["started", "step 2/3", "done"]
    assert (r.delivered, clock.pending_timers) == (3, 0)


# -- DispatchGuard and PendingAttachments: settings are read-only --------------------------------


@pytest.mark.parametrize(
    ("name", "bad"), [("ttl", 0), ("ttl", math.nan), ("max_seen", -1), ("mode", "drop")]
)
async def test_dispatch_guard_settings_are_read_only(
    clock: ManualClock, name: str, bad: object
) -> None:
    """A guard's ttl, max_seen and mode cannot be changed after it was built."""
    guard = DispatchGuard(ttl=60, max_seen=10, mode="reject", clock=clock)
    with pytest.raises(
        AttributeError, match=rf"^property '{name}' of 'DispatchGuard' object has no setter$"
    ):
        setattr(guard, name, bad)
    assert (guard.ttl, guard.max_seen, guard.mode) == (60.0, 10, "reject")
    assert guard.remember("e1")
    clock.advance(60)
    assert guard.remember("e1")  # expiry still works


@pytest.mark.parametrize(
    ("name", "bad"),
    [("ttl", -5), ("ttl", "300"), ("max_per_key", 0), ("max_total", math.nan), ("overflow", "x")],
)
def test_pending_attachments_settings_are_read_only(
    clock: ManualClock, name: str, bad: object
) -> None:
    """The ttl, bounds and overflow of PendingAttachments cannot be changed after it was built."""
    pending = PendingAttachments[str](ttl=30, max_per_key=2, max_total=5, clock=clock)
    with pytest.raises(
        AttributeError, match=rf"^property '{name}' of 'PendingAttachments' object has no setter$"
    ):
        setattr(pending, name, bad)
    settings = (pending.ttl, pending.max_per_key, pending.max_total, pending.overflow)
    assert settings == (30.0, 2, 5, "drop_oldest")
    assert pending.add("alice", "a") == []
    clock.advance(30)
    assert pending.claim("alice") == []  # expiry still works
