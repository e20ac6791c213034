"""Distributed lanes on Redis (or Valkey): ``from executus.redis import RedisLane``.

Needs the ``redis`` extra (``pip install 'executus[redis]'``); everything else in
executus uses the standard library only.
"""

from __future__ import annotations

try:
    import redis.asyncio as _redis_asyncio  # noqa: F401  (checks the extra is installed)
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "executus.redis needs redis-py: install executus[redis] (pip install 'executus[redis]')"
    ) from e

from ._redis.lane import RedisLane as RedisLane

__all__ = ["RedisLane"]
