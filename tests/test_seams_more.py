"""More edge cases of the harness seams: dispatch guard and identity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executus.dispatchguard import Admission, DispatchGuard
from executus.identity import RoleAdmins
from tests.helpers import settle


async def test_an_arrival_cancelled_while_it_waits_can_be_redelivered() -> None:
    """An event whose wait for a busy key is cancelled never reached the agent: its id
    is forgotten, so a redelivery of it is admitted."""
    guard = DispatchGuard(mode="coalesce")
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    first = asyncio.create_task(guard.run("alice", hold, event_id="m1"))
    await settle()

    async def later(event_id: str) -> Admission:
        async with guard.dispatch("alice", event_id=event_id) as admission:
            return admission

    waiting = asyncio.create_task(later("m2"))
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not guard.seen("m2")
    gate.set()
    await first
    assert await later("m2") == Admission("alice", "m2", waited=False, superseded=0)


async def test_run_refuses_a_body_that_is_not_callable_before_admitting() -> None:
    """guard.run with a body that is not callable raises TypeError and neither records
    the event id nor holds the key."""
    guard = DispatchGuard()
    body: Any = "not callable"
    with pytest.raises(TypeError) as info:
        await guard.run("alice", body, event_id="m1")
    assert str(info.value) == (
        "fn must be a zero-argument callable returning an awaitable, got 'not callable'"
    )
    assert not guard.seen("m1")
    assert not guard.busy("alice")


def test_role_admins_without_a_resolver_has_no_admins() -> None:
    """RoleAdmins(None) is None-safe: with no resolver nobody holds a role, so nobody is
    an admin."""
    admins = RoleAdmins(None)
    assert admins.is_admin("ops") is False
