"""Fixtures for the command's tests: the Redis fixtures of tests/redis, reused."""

from __future__ import annotations

from tests.redis.conftest import namespace as namespace
from tests.redis.conftest import redis_server as redis_server
from tests.redis.conftest import session_redis as session_redis
