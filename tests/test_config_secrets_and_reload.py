"""executus.config and the command: passwords in URLs, arrays, ETA windows, closed lanes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from executus.config import ConfigError, EnvSource, Lanes, MappingSource, ReloadResult, TomlSource
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("default:hunter2@cache.internal:6379/0", "default:***@cache.internal:6379/0"),
        ("redis:/u:hunter2@cache", "redis:***@cache"),
        ("redis:u:hunter2@cache", "redis:***@cache"),
        ("u:hunter2@cache:6379/0?x=//y", "u:***@cache:6379/0?x=//y"),
    ],
    ids=["no-scheme", "one-slash", "no-slashes", "slashes-in-the-query"],
)
def test_a_url_without_its_slashes_is_quoted_with_its_password_masked(url: str, shown: str) -> None:
    """REDIS_URL written without '//' before its user info: the error masks the password
    (everything from the first ':' to the last '@')."""
    with pytest.raises(ConfigError) as e:
        Lanes(EnvSource(environ={"EXECUTUS_REDIS_URL": url}))
    assert str(e.value) == (
        "config key 'REDIS_URL' ($EXECUTUS_REDIS_URL): expected a redis://, rediss:// or "
        f"unix:// URL, got {shown!r}"
    )
    assert "hunter2" not in str(e.value)


def test_an_array_of_urls_without_their_slashes_is_quoted_masked() -> None:
    """Each URL of an array given as redis_url is masked, also one without '//'."""
    source = MappingSource({"redis_url": ["u:hunter2@n1:6379", "redis://u:hunter2@n2"]})
    with pytest.raises(ConfigError) as e:
        Lanes(source)
    assert str(e.value) == (
        "config key 'REDIS_URL' (redis_url in mapping): expected a single value, got an "
        "array ['u:***@n1:6379', 'redis://u:***@n2']"
    )


def test_redis_lane_masks_the_password_of_a_url_without_its_scheme() -> None:
    """RedisLane refuses a URL without a scheme, quoting it with its password masked."""
    redis_lane = pytest.importorskip("executus.redis", reason="executus.redis is not available")
    with pytest.raises(
        ValueError,
        match=r"^redis URL must start with redis://, rediss:// or unix://, got "
        r"'default:\*\*\*@cache\.internal:6379/0'$",
    ):
        redis_lane.RedisLane("gpu", "default:hunter2@cache.internal:6379/0")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://cache/0?password=s3cr;et-Tail", "http://cache/0?password=***"),
        ("http://cache/0?db=0&pass%77ord=hunter2", "http://cache/0?db=0&pass%77ord=***"),
        ("http://cache/0?password=pa#ss&db=0", "http://cache/0?password=***&db=0"),
        (
            "http://cache/0?client_name=a;password=hunter2",
            "http://cache/0?client_name=a;password=***",
        ),
    ],
    ids=["semicolon", "encoded-name", "hash", "after-a-semicolon"],
)
def test_a_password_in_the_query_is_masked_whole(url: str, shown: str) -> None:
    """A password= query parameter is masked up to the next '&' (redis-py splits the query
    on '&' only), also when its name is percent-encoded."""
    with pytest.raises(ConfigError) as e:
        Lanes(EnvSource(environ={"EXECUTUS_REDIS_URL": url}))
    assert str(e.value) == (
        "config key 'REDIS_URL' ($EXECUTUS_REDIS_URL): expected a redis://, rediss:// or "
        f"unix:// URL, got {shown!r}"
    )


async def test_a_changed_url_with_a_semicolon_in_its_password_is_logged_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reload log masks all of a ?password= holding ';', not only its start."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    values = {"EXECUTUS_REDIS_URL": "redis://127.0.0.1:1/0?password=old;Tail1"}
    lanes = Lanes(EnvSource(environ=values))
    lanes.get("gpu")  # built, never used: it does not connect
    try:
        values["EXECUTUS_REDIS_URL"] = "redis://127.0.0.1:1/0?password=new;Tail2"
        with caplog.at_level(logging.WARNING, logger="executus.config"):
            await lanes.reload()
        assert caplog.messages == [
            "lane 'gpu': redis_url changed in config ('redis://127.0.0.1:1/0?password=***' -> "
            "'redis://127.0.0.1:1/0?password=***'); a live lane keeps its redis_url, the new "
            "one applies to lanes built afterwards"
        ]
    finally:
        await lanes.aclose()


def test_a_value_of_an_unsupported_type_is_named_by_its_type_only() -> None:
    """A mapping value of a type no config file has (bytes holding a URL) is refused
    without quoting the value."""
    source = {"redis_url": b"redis://default:hunter2@cache:6379/0"}
    with pytest.raises(ConfigError) as e:
        MappingSource(source)
    assert str(e.value) == (
        "config key 'REDIS_URL' (redis_url in mapping): unsupported value type bytes; a value "
        "is a str, number, bool, date or time, array or table"
    )
