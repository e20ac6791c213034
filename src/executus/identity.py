"""Identity: who is an admin, what a user is called, and lane operations gated by both.

A harness plugs its host's notion of users in through two small protocols:

- ``AdminPolicy``: ``is_admin(user) -> bool``. Default ``NoAdmins`` (nobody);
  ``StaticAdmins({"ops"})`` for a fixed list; ``RoleAdmins(resolver, {"admin"})`` for
  "whoever has the admin role".
- ``MemberResolver``: ``resolve(user) -> Member`` (display name and roles). Default
  ``IdAsName`` (the id is the name, no roles); ``StaticMembers`` for a fixed table.

The ``is_admin`` and ``resolve`` functions accept ``None`` for the policy or resolver
and fall back to those defaults, so seams can be left unplugged.

``LaneOps`` puts a lane behind these rules: a user (a non-empty ``str``) may cancel
their own jobs (a job is yours when its key is your user id); an admin may cancel any
job, the jobs without a key included, and change the lane's ``max_concurrent``.
Anything else raises ``Forbidden``::

    ops = LaneOps(lane, StaticAdmins({"ops"}))
    handle = await ops.submit(lambda: llm.chat(prompt), key="alice")
    await ops.cancel("alice", handle.id)      # allowed: alice's own job
    await ops.cancel("bob", handle.id)        # Forbidden
    await ops.set_max_concurrent("ops", 4)    # allowed: ops is an admin
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._errors import NotQueued, reduce_error
from ._job import JobHandle

__all__ = [
    "AdminPolicy",
    "Forbidden",
    "IdAsName",
    "LaneOps",
    "Member",
    "MemberResolver",
    "NoAdmins",
    "RoleAdmins",
    "StaticAdmins",
    "StaticMembers",
    "is_admin",
    "resolve",
]

T = TypeVar("T")


class Forbidden(PermissionError):
    """A user asked for an operation their role does not allow.

    Attributes:
        user: who asked.
        action: what they asked for (``"cancel"``, ``"set_max_concurrent"``).
    """

    def __init__(self, user: str, action: str, message: str) -> None:
        self.user = user
        self.action = action
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_error(self)


@dataclass(frozen=True, slots=True)
class Member:
    """What a harness knows about a user.

    Attributes:
        id: the host's user id.
        display_name: how to address the user in messages.
        roles: the user's roles on the host (``{"admin", "moderator"}``); any collection
            of role names is kept as a ``frozenset``.

    Raises:
        TypeError: ``roles`` is one ``str`` (which would be split into letters), or
            holds something other than a ``str``.
    """

    id: str
    display_name: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # A frozen dataclass: the normalised roles go in through object.__setattr__.
        object.__setattr__(self, "roles", _role_names(self.roles))


def _role_names(roles: Iterable[str]) -> frozenset[str]:
    """``roles`` as a frozenset of names, refusing one ``str`` and non-str members."""
    if isinstance(roles, str):
        raise TypeError(f"roles must be a collection of role names, not one str, got {roles!r}")
    names = frozenset(roles)
    for role in names:
        if not isinstance(role, str):
            raise TypeError(f"roles must be role names (str), got {role!r}")
    return names


@runtime_checkable
class AdminPolicy(Protocol):
    """Decides who is an admin."""

    def is_admin(self, user: str) -> bool:
        """True when ``user`` may administer (cancel anyone's jobs, resize lanes)."""
        ...


@runtime_checkable
class MemberResolver(Protocol):
    """Turns a host user id into a ``Member``."""

    def resolve(self, user: str) -> Member:
        """The member with id ``user``; unknown users still resolve (id as name)."""
        ...


class NoAdmins:
    """The default admin policy: nobody is an admin."""

    __slots__ = ()

    def is_admin(self, user: str) -> bool:
        """Always False."""
        return False

    def __repr__(self) -> str:
        return "NoAdmins()"


class StaticAdmins:
    """A fixed set of admin user ids.

    Args:
        users: the admins' ids (``str``, as users are everywhere in executus).

    Raises:
        TypeError: ``users`` is one ``str`` (which would be split into letters), or holds
            something other than a ``str`` (``42`` would never match the user ``"42"``).

    Example::

        admins = StaticAdmins({"ops", "alice"})
        admins.is_admin("alice")   # True
    """

    __slots__ = ("users",)

    def __init__(self, users: Iterable[str]) -> None:
        if isinstance(users, str):
            raise TypeError(f"users must be a collection of ids, not one str, got {users!r}")
        self.users = frozenset(users)
        for user in self.users:
            if not isinstance(user, str):
                raise TypeError(f"users must be str ids, got {user!r}")

    def is_admin(self, user: str) -> bool:
        """True when ``user`` is in the set."""
        return user in self.users

    def __repr__(self) -> str:
        return f"StaticAdmins({sorted(self.users)!r})"


class IdAsName:
    """The default resolver: the id is the display name, and nobody has roles."""

    __slots__ = ()

    def resolve(self, user: str) -> Member:
        """``Member(user, user)``."""
        return Member(user, user)

    def __repr__(self) -> str:
        return "IdAsName()"


class StaticMembers:
    """A fixed table of members; ids not in it resolve as ``IdAsName`` does.

    Args:
        members: the known members (their ``id`` is the lookup key).

    Example::

        people = StaticMembers([Member("u1", "Alice", frozenset({"admin"}))])
        people.resolve("u1").display_name   # "Alice"
    """

    __slots__ = ("_members",)

    def __init__(self, members: Iterable[Member] | Mapping[str, Member]) -> None:
        values = members.values() if isinstance(members, Mapping) else members
        self._members = {m.id: m for m in values}

    def resolve(self, user: str) -> Member:
        """The member with id ``user``, or ``Member(user, user)``."""
        return self._members.get(user) or Member(user, user)

    def __repr__(self) -> str:
        return f"StaticMembers(<{len(self._members)} members>)"


class RoleAdmins:
    """Admins are the members holding any of the given roles.

    Args:
        resolver: where roles come from (None: ``IdAsName``, where nobody has a role,
            so nobody is an admin).
        roles: the roles that make a member an admin (default ``{"admin"}``).

    Raises:
        TypeError: ``roles`` is one ``str`` (which would be split into letters), or holds
            something other than a ``str``.
    """

    __slots__ = ("resolver", "roles")

    def __init__(self, resolver: MemberResolver | None, roles: Iterable[str] = ("admin",)) -> None:
        self.roles = _role_names(roles)
        self.resolver = resolver

    def is_admin(self, user: str) -> bool:
        """True when the resolved member holds one of ``roles``."""
        return not self.roles.isdisjoint(resolve(self.resolver, user).roles)

    def __repr__(self) -> str:
        return f"RoleAdmins({self.resolver!r}, {sorted(self.roles)!r})"


_NO_ADMINS = NoAdmins()
_ID_AS_NAME = IdAsName()


def is_admin(policy: AdminPolicy | None, user: str) -> bool:
    """``policy.is_admin(user)``, or False when there is no policy."""
    # ``is None``, not ``or``: a policy that is also an (empty) container is falsy.
    return (_NO_ADMINS if policy is None else policy).is_admin(user)


def resolve(resolver: MemberResolver | None, user: str) -> Member:
    """``resolver.resolve(user)``, or ``Member(user, user)`` when there is no resolver."""
    return (_ID_AS_NAME if resolver is None else resolver).resolve(user)


class LaneOps:
    """A lane's operations, authorised per user.

    Jobs submitted through ``submit`` are tracked, so their key (their owner) is known.
    The rules:

    - anyone may submit (the job's ``key`` is its owner; a job without a key has none);
    - a user may cancel their own jobs (``key == user``), queued or running;
    - an admin may cancel any job (also one submitted to the lane directly, if it is
      queued) and change ``max_concurrent``;
    - everything else raises ``Forbidden``.

    A user is a non-empty ``str``: every operation refuses anything else (``TypeError``,
    or ``ValueError`` for ``""``), so no user passes for the owner of the jobs without
    a key.

    Ended jobs leave the table of live jobs as the facade goes, but the owners of the
    last ``remember_ended`` of them are kept, so cancelling an ended job gets the same
    answer whenever it is asked: False for its owner or an admin, ``Forbidden`` for
    anyone else. Once a job has dropped out of that memory it is treated like a job
    submitted to the lane directly. Memory is bounded by the live jobs plus
    ``remember_ended`` ended ones.

    Args:
        lane: a ``Lane`` or ``RedisLane``.
        admins: who is an admin (None: nobody).
        members: how users are named in error messages (None: by id).
        remember_ended: how many ended jobs' owners are remembered (>= 1).

    Raises:
        ValueError: ``remember_ended`` is not an int >= 1.

    Example::

        ops = LaneOps(lane, StaticAdmins({"ops"}))
        h = await ops.submit(lambda: render(prompt), key="alice")
        await ops.cancel("ops", h.id)   # an admin may cancel alice's job
    """

    def __init__(
        self,
        lane: Any,
        admins: AdminPolicy | None = None,
        members: MemberResolver | None = None,
        *,
        remember_ended: int = 1024,
    ) -> None:
        if (
            isinstance(remember_ended, bool)
            or not isinstance(remember_ended, int)
            or remember_ended < 1
        ):
            raise ValueError(f"remember_ended must be an int >= 1, got {remember_ended!r}")
        self.lane = lane
        self.admins = admins
        self.members = members
        # Tracked jobs: the live ones, and ended ones the sweep has not reached yet.
        self._jobs: dict[str, JobHandle[Any]] = {}
        self._prune_at = 64
        # The owners (keys) of recently ended jobs, oldest first: a cancel of an ended
        # job must not depend on whether the sweep has run yet.
        self._ended: OrderedDict[str, str | None] = OrderedDict()
        self._remember_ended = remember_ended

    def _name(self, user: str) -> str:
        return resolve(self.members, user).display_name

    @staticmethod
    def _check_user(user: object) -> None:
        """Refuse a ``user`` that is not a non-empty str: None or "" would otherwise match
        the jobs without an owner (whose key is None) and pass for their owner."""
        if not isinstance(user, str):
            raise TypeError(f"user must be a str, got {user!r}")
        if not user:
            raise ValueError("user must be a non-empty str, got ''")

    @property
    def remember_ended(self) -> int:
        """How many ended jobs' owners are remembered."""
        return self._remember_ended

    def _remember(self, handle: JobHandle[Any]) -> None:
        """Keep the owner of the ended job ``handle``, forgetting the oldest over the bound."""
        self._ended[handle.id] = handle.key
        self._ended.move_to_end(handle.id)
        if len(self._ended) > self._remember_ended:
            self._ended.popitem(last=False)

    def _prune(self) -> None:
        # Amortised O(1): sweep ended jobs when the table doubles since the last sweep.
        # A swept job moves to the bounded memory of ended jobs (O(1) each).
        if len(self._jobs) >= self._prune_at:
            live: dict[str, JobHandle[Any]] = {}
            for job_id, handle in self._jobs.items():
                if handle.done():
                    self._remember(handle)
                else:
                    live[job_id] = handle
            self._jobs = live
            self._prune_at = max(64, 2 * len(self._jobs))

    def _untrack(self, handle: JobHandle[Any]) -> None:
        """Move ``handle`` from the live table to the ended memory once it has ended."""
        if handle.done() and self._jobs.get(handle.id) is handle:
            del self._jobs[handle.id]
            self._remember(handle)

    def _refuse_cancel(self, user: str, job_id: str, owner: str | None) -> Forbidden:
        return Forbidden(
            user,
            "cancel",
            f"{self._name(user)} may not cancel job {job_id!r} of "
            f"{self._name(owner) if owner else 'no one'}: only its owner or an admin may",
        )

    async def submit(
        self, fn: Callable[[], Awaitable[T]], *, key: str | None = None, **options: Any
    ) -> JobHandle[T]:
        """Submit ``fn`` for the user ``key`` (see ``Lane.submit`` for ``options``).

        A job without a key has no owner: only an admin may cancel it.

        Returns:
            The job's handle; the job is tracked so its owner can cancel it.
        """
        handle: JobHandle[T] = await self.lane.submit(fn, key=key, **options)
        self._prune()
        self._jobs[handle.id] = handle
        self._ended.pop(handle.id, None)  # a reused id names the new job now
        return handle

    def jobs(self, key: str | None = None) -> list[JobHandle[Any]]:
        """The live (queued or running) jobs submitted here, optionally only ``key``'s."""
        return [h for h in self._jobs.values() if not h.done() and (key is None or h.key == key)]

    async def cancel(self, user: str, job_id: str) -> bool:
        """Cancel job ``job_id`` on behalf of ``user``.

        Returns:
            True when the job was queued or running and is now cancelled; False when it
            had already ended (for as long as its owner is remembered: see the class).
            An admin cancelling an ended job's id cancels a job submitted to the lane
            directly under that id since, if it is queued (True).

        Raises:
            Forbidden: the job is not ``user``'s and ``user`` is not an admin, or the job
                was not submitted through this facade (or ended too long ago: its owner
                is unknown) and ``user`` is not an admin.
            NotQueued: an admin cancelled an untracked job that is not queued.
            TypeError: ``user`` is not a str (None is nobody, not the owner of the jobs
                without a key).
            ValueError: ``user`` is empty.
        """
        self._check_user(user)
        admin = is_admin(self.admins, user)
        handle = self._jobs.get(job_id)
        if handle is not None and handle.done():
            self._untrack(handle)  # answered below as after its sweep
            handle = None
        if handle is None:
            remembered = job_id in self._ended
            if not admin:
                if not remembered:
                    raise Forbidden(
                        user,
                        "cancel",
                        f"{self._name(user)} may not cancel job {job_id!r}: its owner is "
                        "unknown, and only an admin may cancel it",
                    )
                owner = self._ended[job_id]
                if owner != user:
                    raise self._refuse_cancel(user, job_id, owner)
                return False
            # An admin cancels what is queued under this id: an untracked job, or one
            # submitted to the lane directly since the remembered one ended (the lane
            # accepts an ended job's id again).
            try:
                await self.lane.cancel(job_id)
            except NotQueued:
                if remembered:
                    return False  # the job ended, and nothing took its id
                raise
            return True
        if not admin and handle.key != user:
            raise self._refuse_cancel(user, job_id, handle.key)
        cancelled = await handle.cancel()
        self._untrack(handle)
        return cancelled

    async def cancel_key(self, user: str, key: str | None) -> int:
        """Cancel every live tracked job of ``key`` on behalf of ``user``.

        Args:
            user: who asks.
            key: whose jobs; None means the jobs submitted without a key (no owner: an
                admin's only), not every job.

        Returns:
            How many jobs were cancelled.

        Raises:
            Forbidden: ``key`` is not ``user`` and ``user`` is not an admin.
            TypeError: ``user`` is not a str, or ``key`` is neither a str nor None.
            ValueError: ``user`` is empty.
        """
        self._check_user(user)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {key!r}")
        if key != user and not is_admin(self.admins, user):
            whose = "the jobs without an owner" if key is None else f"the jobs of {self._name(key)}"
            raise Forbidden(
                user,
                "cancel",
                f"{self._name(user)} may not cancel {whose}: only their owner or an admin may",
            )
        count = 0
        # h.key == key, not jobs(key): jobs(None) lists every key's jobs.
        for handle in [h for h in self._jobs.values() if not h.done() and h.key == key]:
            if await handle.cancel():
                count += 1
            self._untrack(handle)
        return count

    async def set_max_concurrent(self, user: str, n: int) -> None:
        """Change the lane's slot limit on behalf of ``user`` (admins only).

        Raises:
            Forbidden: ``user`` is not an admin.
            TypeError: ``user`` is not a str.
            ValueError: ``user`` is empty, or ``n`` is not >= 1.
        """
        self._check_user(user)
        if not is_admin(self.admins, user):
            raise Forbidden(
                user,
                "set_max_concurrent",
                f"{self._name(user)} may not change max_concurrent of lane "
                f"{self.lane.name!r}: only an admin may",
            )
        await self.lane.set_max_concurrent(n)

    def __repr__(self) -> str:
        return f"<LaneOps {self.lane.name!r} [{len(self.jobs())} tracked] admins={self.admins!r}>"
