"""The ``executus`` command with values a Redis lane cannot take: usage errors, no traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from click.testing import CliRunner, Result

from executus.cli import cli
from executus.redis import RedisLane
from tests.redis.helpers import RedisServer

pytestmark = pytest.mark.redis


async def invoke(args: Sequence[str]) -> Result:
    """Run the command in a thread (it runs its own event loop), the test's loop going on."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def test_set_max_beyond_what_redis_stores_is_a_usage_error(
    redis_server: RedisServer, namespace: str
) -> None:
    """lane set-max N with N >= 2**40: exit 2 stating the rule, the limit unchanged."""
    lane = RedisLane("gpu", redis_server.url, 2, namespace=namespace)
    try:
        await lane.stats()
        base = ["--redis", redis_server.url, "--namespace", namespace]
        result = await invoke(["lane", "set-max", "gpu", str(2**40), *base])
        assert result.exit_code == 2
        assert result.stderr.endswith(
            f"Error: Invalid value for 'N': max_concurrent must be < 2**40 for a Redis lane, "
            f"got {2**40}\n"
        )
        assert "Traceback" not in result.output
        assert (await lane.stats()).max_concurrent == 2
    finally:
        await lane.aclose(drain=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["lane", "set-max", "gpu\udcff", "2"],
            "Error: Invalid value for 'NAME': lane name must be encodable as UTF-8, "
            "got 'gpu\\udcff'\n",
        ),
        (
            ["lane", "cancel", "gpu\udcff", "j1"],
            "Error: Invalid value for 'NAME': lane name must be encodable as UTF-8, "
            "got 'gpu\\udcff'\n",
        ),
        (
            ["top", "--once", "--namespace", "ns\udcff"],
            "Error: Invalid value for '--namespace': namespace must be encodable as UTF-8, "
            "got 'ns\\udcff'\n",
        ),
    ],
    ids=["set-max", "cancel", "top"],
)
async def test_a_name_that_is_not_utf8_is_a_usage_error(
    redis_server: RedisServer, args: list[str], message: str
) -> None:
    """A lane name or namespace Redis cannot be sent (bytes that are not UTF-8): exit 2."""
    result = await invoke([*args, "--redis", redis_server.url])
    assert result.exit_code == 2
    assert result.stderr.endswith(message)
    assert "Traceback" not in result.output
