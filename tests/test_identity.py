"""Tests for executus.identity: admin policies, member resolvers and LaneOps."""

from __future__ import annotations

import re

import pytest

from executus import JobCancelled, JobState, Lane, NotQueued
from executus.identity import (
    AdminPolicy,
    Forbidden,
    IdAsName,
    LaneOps,
    Member,
    MemberResolver,
    NoAdmins,
    RoleAdmins,
    StaticAdmins,
    StaticMembers,
    is_admin,
    resolve,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle


def test_stock_policies_and_resolvers_satisfy_the_protocols() -> None:
    """The stock implementations are runtime-checkable AdminPolicy / MemberResolver."""
    for p in (NoAdmins(), StaticAdmins({"a"}), RoleAdmins(IdAsName())):
        assert isinstance(p, AdminPolicy)
    for r in (IdAsName(), StaticMembers([])):
        assert isinstance(r, MemberResolver)


def test_none_safe_defaults() -> None:
    """With no policy nobody is admin; with no resolver the id is the name."""
    assert is_admin(None, "root") is False
    assert resolve(None, "u1") == Member("u1", "u1", frozenset())
    assert NoAdmins().is_admin("anyone") is False
    assert IdAsName().resolve("x").display_name == "x"


def test_static_admins() -> None:
    """StaticAdmins admits exactly its ids and refuses a bare string."""
    admins = StaticAdmins(["ops", "alice"])
    assert is_admin(admins, "ops")
    assert not is_admin(admins, "bob")
    assert repr(admins) == "StaticAdmins(['alice', 'ops'])"
    with pytest.raises(
        TypeError, match=r"^users must be a collection of ids, not one str, got 'ops'$"
    ):
        StaticAdmins("ops")


def test_static_members_and_role_admins() -> None:
    """StaticMembers names known ids; RoleAdmins makes admins of role holders."""
    people = StaticMembers([Member("u1", "Alice", frozenset({"admin"})), Member("u2", "Bob")])
    assert people.resolve("u1").display_name == "Alice"
    assert people.resolve("u9") == Member("u9", "u9")
    admins = RoleAdmins(people)
    assert admins.is_admin("u1")
    assert not admins.is_admin("u2")
    assert not admins.is_admin("u9")
    assert RoleAdmins(people, roles={"mod"}).is_admin("u1") is False


# -- LaneOps ----------------------------------------------------------------------------------


@pytest.fixture
async def lane(clock: ManualClock) -> Lane:
    """A one-slot lane on a manual clock."""
    return Lane("gpu", 1, clock=clock)


def make_ops(lane: Lane) -> LaneOps:
    """LaneOps with 'ops' as the only admin and display names for alice and bob."""
    members = StaticMembers([Member("alice", "Alice"), Member("bob", "Bob")])
    return LaneOps(lane, StaticAdmins({"ops"}), members)


async def test_user_cancels_own_queued_and_running_jobs(lane: Lane) -> None:
    """A user may cancel their own jobs, queued or running."""
    ops = make_ops(lane)
    running, queued = Gate(), Gate()
    h1 = await ops.submit(running, key="alice")
    h2 = await ops.submit(queued, key="alice")
    await settle()
    assert (h1.state, h2.state) == (JobState.RUNNING, JobState.QUEUED)
    assert ops.jobs("alice") == [h1, h2]
    assert await ops.cancel("alice", h2.id) is True
    assert await ops.cancel("alice", h1.id) is True
    assert (h1.state, h2.state) == (JobState.CANCELLED, JobState.CANCELLED)
    assert running.cancelled
    with pytest.raises(JobCancelled):
        await h1
    assert ops.jobs() == []
    await lane.aclose()


async def test_user_may_not_cancel_another_users_job(lane: Lane) -> None:
    """Cancelling someone else's job is Forbidden and leaves the job alone."""
    ops = make_ops(lane)
    gate = Gate()
    h = await ops.submit(gate, key="alice")
    with pytest.raises(Forbidden) as e:
        await ops.cancel("bob", h.id)
    assert str(e.value) == (
        f"Bob may not cancel job {h.id!r} of Alice: only its owner or an admin may"
    )
    assert (e.value.user, e.value.action) == ("bob", "cancel")
    await settle()
    assert h.state is JobState.RUNNING
    gate.release("ok")
    assert await h == "ok"
    await lane.aclose()


async def test_admin_cancels_any_job(lane: Lane) -> None:
    """An admin may cancel another user's job."""
    ops = make_ops(lane)
    gate = Gate()
    h = await ops.submit(gate, key="alice")
    await settle()
    assert await ops.cancel("ops", h.id) is True
    assert h.state is JobState.CANCELLED
    await lane.aclose()


async def test_cancel_of_an_ended_job_returns_false(lane: Lane) -> None:
    """Cancelling a job that already finished returns False."""
    ops = make_ops(lane)
    gate = Gate()
    h = await ops.submit(gate, key="alice")
    await settle()
    gate.release(1)
    assert await h == 1
    assert await ops.cancel("alice", h.id) is False
    await lane.aclose()


async def test_untracked_jobs_admin_only(lane: Lane) -> None:
    """A job not submitted through the facade: admins cancel it if queued, users are refused."""
    ops = make_ops(lane)
    blocker, other = Gate(), Gate()
    running = await lane.submit(blocker, key="carol")
    queued = await lane.submit(other, key="carol")
    with pytest.raises(Forbidden) as e:
        await ops.cancel("carol", queued.id)
    assert str(e.value) == (
        f"carol may not cancel job {queued.id!r}: its owner is unknown, and only an admin "
        "may cancel it"
    )
    assert await ops.cancel("ops", queued.id) is True
    assert queued.state is JobState.CANCELLED
    await settle()
    with pytest.raises(NotQueued):
        await ops.cancel("ops", running.id)
    blocker.release()
    await running
    await lane.aclose()


async def test_cancel_key(lane: Lane) -> None:
    """A user cancels all their own jobs by key; another user's key needs an admin."""
    ops = make_ops(lane)
    gates = [Gate() for _ in range(4)]
    hs = [
        await ops.submit(g, key=k)
        for g, k in zip(gates, ["alice", "alice", "bob", "alice"], strict=True)
    ]
    await settle()
    with pytest.raises(Forbidden) as e:
        await ops.cancel_key("bob", "alice")
    assert str(e.value) == "Bob may not cancel the jobs of Alice: only their owner or an admin may"
    assert await ops.cancel_key("alice", "alice") == 3
    assert [h.state for h in hs] == [
        JobState.CANCELLED,
        JobState.CANCELLED,
        JobState.RUNNING,
        JobState.CANCELLED,
    ]
    assert await ops.cancel_key("ops", "bob") == 1
    assert hs[2].state is JobState.CANCELLED
    await lane.aclose()


async def test_set_max_concurrent_is_admin_only(lane: Lane) -> None:
    """Only an admin may resize the lane."""
    ops = make_ops(lane)
    with pytest.raises(Forbidden) as e:
        await ops.set_max_concurrent("alice", 4)
    assert str(e.value) == "Alice may not change max_concurrent of lane 'gpu': only an admin may"
    assert e.value.action == "set_max_concurrent"
    assert lane.max_concurrent == 1
    await ops.set_max_concurrent("ops", 4)
    assert lane.max_concurrent == 4
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1, got 0$"):
        await ops.set_max_concurrent("ops", 0)


async def test_no_admin_policy_means_nobody_is_admin(lane: Lane) -> None:
    """LaneOps without an admin policy refuses every admin operation."""
    ops = LaneOps(lane)
    with pytest.raises(Forbidden):
        await ops.set_max_concurrent("root", 2)


async def test_ended_jobs_are_forgotten(lane: Lane) -> None:
    """The facade's table follows the live jobs, not every job ever submitted."""
    ops = make_ops(lane)
    for i in range(200):
        gate = Gate()
        h = await ops.submit(gate, key="alice")
        await settle(2)
        gate.release(i)
        assert await h == i
    assert len(ops._jobs) <= 64
    assert repr(ops) == "<LaneOps 'gpu' [0 tracked] admins=StaticAdmins(['ops'])>"
    await lane.aclose()


@pytest.mark.parametrize(
    ("user", "error", "message"),
    [
        (None, TypeError, "user must be a str, got None"),
        (42, TypeError, "user must be a str, got 42"),
        ("", ValueError, "user must be a non-empty str, got ''"),
    ],
    ids=["none", "int", "empty"],
)
async def test_laneops_refuses_a_user_that_is_not_a_non_empty_str(
    lane: Lane, user: object, error: type[Exception], message: str
) -> None:
    """None, a non-str or "" as the user is refused by every operation: None would pass for
    the owner of the jobs submitted without a key."""
    ops = make_ops(lane)
    gate = Gate()
    ownerless = await ops.submit(gate)
    await settle()
    calls = (
        lambda: ops.cancel(user, ownerless.id),  # type: ignore[arg-type]
        lambda: ops.cancel_key(user, None),  # type: ignore[arg-type]
        lambda: ops.set_max_concurrent(user, 4),  # type: ignore[arg-type]
    )
    for call in calls:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            await call()
    assert (ownerless.state, lane.max_concurrent) == (JobState.RUNNING, 1)
    gate.release()
    await ownerless
    await lane.aclose()


async def test_cancel_key_none_means_the_jobs_without_an_owner_and_needs_an_admin(
    lane: Lane,
) -> None:
    """cancel_key(user, None) is about the jobs submitted without a key only: a user is
    refused, and an admin cancels those jobs and leaves every owned job alone."""
    ops = make_ops(lane)
    gates = [Gate() for _ in range(4)]
    owned = [await ops.submit(gates[0], key="alice"), await ops.submit(gates[1], key="bob")]
    ownerless = [await ops.submit(gates[2]), await ops.submit(gates[3])]
    await settle()
    with pytest.raises(Forbidden) as e:
        await ops.cancel_key("alice", None)
    assert str(e.value) == (
        "Alice may not cancel the jobs without an owner: only their owner or an admin may"
    )
    assert await ops.cancel_key("ops", None) == 2
    assert [h.state for h in ownerless] == [JobState.CANCELLED, JobState.CANCELLED]
    assert [h.state for h in owned] == [JobState.RUNNING, JobState.QUEUED]
    with pytest.raises(TypeError, match=r"^key must be a str or None, got 7$"):
        await ops.cancel_key("ops", 7)  # type: ignore[arg-type]
    await lane.aclose(drain=False)


def test_member_refuses_one_str_for_roles_and_keeps_roles_as_a_frozenset() -> None:
    """Member(roles="admin") is refused (it would be read as the roles a, d, m, i, n); a
    list of roles is kept as a frozenset, and a role that is not a str is refused."""
    with pytest.raises(
        TypeError, match=r"^roles must be a collection of role names, not one str, got 'admin'$"
    ):
        Member("ops", "Ops", "admin")  # type: ignore[arg-type]
    member = Member("ops", "Ops", ["admin", "mod"])  # type: ignore[arg-type]
    assert member.roles == frozenset({"admin", "mod"})
    assert isinstance(member.roles, frozenset)
    assert RoleAdmins(StaticMembers([member])).is_admin("ops")
    with pytest.raises(TypeError, match=r"^roles must be role names \(str\), got 1$"):
        Member("ops", "Ops", frozenset({1}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^roles must be role names \(str\), got 1$"):
        RoleAdmins(None, [1])  # type: ignore[list-item]


def test_static_admins_refuses_ids_that_are_not_str() -> None:
    """StaticAdmins([42]) is refused: the id 42 would never match the user "42"."""
    with pytest.raises(TypeError, match=r"^users must be str ids, got 42$"):
        StaticAdmins([42])  # type: ignore[list-item]
