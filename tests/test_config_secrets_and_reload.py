"""executus.config and the command: passwords in URLs, arrays, ETA windows, closed lanes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from executus.config import ConfigError, EnvSource, Lanes, ReloadResult, TomlSource
from tests.redis.conftest import namespace as namespace
from tests.redis.conftest import redis_server as redis_server
from tests.redis.conftest import session_redis as session_redis
from tests.redis.helpers import RedisServer


def test_a_bad_scheme_masks_a_password_written_with_a_slash() -> None:
    """REDIS_URL with a wrong scheme and a password holding '/': the message masks all of it."""
    env = EnvSource(environ={"EXECUTUS_REDIS_URL": "http://user:pa/ss@10.0.0.5:6379/0"})
    with pytest.raises(ConfigError) as e:
        Lanes(env)
    assert str(e.value) == (
        "config key 'REDIS_URL' ($EXECUTUS_REDIS_URL): expected a redis://, rediss:// or "
        "unix:// URL, got 'http://user:***@10.0.0.5:6379/0'"
    )


async def test_a_changed_redis_url_is_logged_without_its_passwords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload that changes REDIS_URL reports it pending and logs both URLs masked."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    values = {"EXECUTUS_REDIS_URL": "redis://:old-secret@127.0.0.1:1/0"}
    lanes = Lanes(EnvSource(environ=values))
    lanes.get("gpu")  # built, never used: it does not connect
    try:
        values["EXECUTUS_REDIS_URL"] = "redis://127.0.0.1:1/0?password=new-secret"
        with caplog.at_level(logging.WARNING, logger="executus.config"):
            result = await lanes.reload()
        assert result == ReloadResult(pending_restart=(("gpu", "redis_url"),))
        assert caplog.messages == [
            "lane 'gpu': redis_url changed in config ('redis://:***@127.0.0.1:1/0' -> "
            "'redis://127.0.0.1:1/0?password=***'); a live lane keeps its redis_url, the new "
            "one applies to lanes built afterwards"
        ]
    finally:
        await lanes.aclose()


def test_an_eta_window_no_lane_can_hold_is_refused_at_load() -> None:
    """ETA_WINDOW beyond sys.maxsize: ConfigError at load stating the rule, not OverflowError."""
    big = str(sys.maxsize + 1)
    env = EnvSource(environ={"EXECUTUS_LANE_A_ETA_WINDOW": big})
    with pytest.raises(ConfigError) as e:
        Lanes(env)
    assert str(e.value) == (
        "config key 'LANE_A_ETA_WINDOW' ($EXECUTUS_LANE_A_ETA_WINDOW) must be "
        f"<= {sys.maxsize}, got '{big}'"
    )
    lanes = Lanes(EnvSource(environ={"EXECUTUS_LANE_A_ETA_WINDOW": str(sys.maxsize)}))
    assert lanes.settings("a").eta_window == sys.maxsize


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'redis_url = ["redis://:pw@n1:7000", "redis://n2:7000"]\n',
            "config key 'REDIS_URL' (redis_url in {path}): expected a single value, got an "
            "array ['redis://:***@n1:7000', 'redis://n2:7000']",
        ),
        (
            'redis_url = "redis://h:6379/0"\nredis_namespace = ["bots"]\n',
            "config key 'REDIS_NAMESPACE' (redis_namespace in {path}): expected a single "
            "value, got an array ['bots']",
        ),
    ],
    ids=["url", "namespace"],
)
def test_an_array_is_not_a_redis_url_or_namespace(tmp_path: Path, toml: str, message: str) -> None:
    """An array for redis_url or redis_namespace is refused at load, not joined with commas."""
    path = tmp_path / "bot.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        Lanes(TomlSource(path))
    assert str(e.value) == message.format(path=path)


@pytest.mark.redis
async def test_a_lane_its_owner_closed_does_not_stop_a_reload(
    redis_server: RedisServer, namespace: str
) -> None:
    """A reload leaves out a RedisLane closed by its owner and still changes the others."""
    values = {
        "EXECUTUS_REDIS_URL": redis_server.url,
        "EXECUTUS_REDIS_NAMESPACE": namespace,
        "EXECUTUS_LANE_A_MAX_CONCURRENT": "1",
        "EXECUTUS_LANE_B_MAX_CONCURRENT": "1",
    }
    lanes = Lanes(EnvSource(environ=values))
    a, b = lanes.get("a"), lanes.get("b")
    try:
        await a.stats()
        await b.stats()
        await a.aclose()
        values["EXECUTUS_LANE_A_MAX_CONCURRENT"] = "3"
        values["EXECUTUS_LANE_B_MAX_CONCURRENT"] = "3"
        assert await lanes.reload() == ReloadResult(applied=(("b", "max_concurrent"),))
        assert (await b.stats()).max_concurrent == 3
    finally:
        await lanes.aclose(drain=False)
