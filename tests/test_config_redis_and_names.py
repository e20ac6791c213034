"""executus.config: files that are not UTF-8, lane names in tables, Redis-only rules at load."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from executus.config import (
    ConfigError,
    EnvSource,
    Lanes,
    MappingSource,
    ReloadResult,
    TomlSource,
)
from tests.redis.conftest import redis_server as redis_server
from tests.redis.conftest import session_redis as session_redis
from tests.redis.helpers import RedisServer


def test_a_toml_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in a TOML file: ConfigError naming the file, at load and reload."""
    path = tmp_path / "bot.toml"
    bad = b'[lanes.a]\nmax_concurrent = 2\npolicy = "\xff"\n'
    path.write_bytes(bad)
    message = f"config file {str(path)!r} is not valid TOML: it is not UTF-8 text ("
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        TomlSource(path)
    path.write_text("[lanes.a]\nmax_concurrent = 2\n")
    src = TomlSource(path)
    path.write_bytes(bad)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        src.reload()
    assert src.get("LANE_A_MAX_CONCURRENT") == "2"


async def test_a_failed_reload_of_a_file_that_is_not_utf8_changes_nothing(tmp_path: Path) -> None:
    """Lanes.reload of a file turned to non-UTF-8 bytes raises ConfigError; the lane keeps 2."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n")
    async with Lanes(TomlSource(path)) as lanes:
        a = lanes.get("a")
        path.write_bytes(b"[lanes.a]\nmax_concurrent = 3\n# \xfe\n")
        with pytest.raises(ConfigError):
            await lanes.reload()
        assert (a.max_concurrent, lanes.settings("a").max_concurrent) == (2, 2)


@pytest.mark.parametrize("name", ["llama3:8b", "openai/gpt-4o", "image gen", "gpü"])
def test_a_lane_table_configures_the_lane_of_that_name(tmp_path: Path, name: str) -> None:
    """[lanes."llama3:8b"] configures lanes.get("llama3:8b"), whatever characters the name has."""
    path = tmp_path / "bot.toml"
    path.write_text(f'[lanes."{name}"]\nmax_concurrent = 3\n', encoding="utf-8")
    lanes = Lanes(TomlSource(path))
    assert lanes.settings(name).max_concurrent == 3
    assert lanes.get(name).max_concurrent == 3


def test_two_lane_tables_of_one_spelling_collide() -> None:
    """[lanes."a b"] and [lanes.a_b] read the same settings: a ConfigError naming both."""
    data = {"lanes": {"a b": {"max_concurrent": 2}, "a_b": {"max_concurrent": 3}}}
    with pytest.raises(
        ConfigError,
        match=r"^config keys 'lanes\.a b\.max_concurrent' and 'lanes\.a_b\.max_concurrent' "
        r"both mean 'LANE_A_B_MAX_CONCURRENT' in mapping$",
    ):
        MappingSource(data)


def test_a_flat_lane_key_no_lane_name_reads_is_refused() -> None:
    """A flat key whose lane part no lane name reads (LANE_LLAMA3:8B_...) is a ConfigError."""
    src = MappingSource({"LANE_LLAMA3:8B_MAX_CONCURRENT": 3}, name="defaults")
    with pytest.raises(ConfigError) as e:
        Lanes(src)
    assert str(e.value) == (
        "config key 'LANE_LLAMA3:8B_MAX_CONCURRENT' (LANE_LLAMA3:8B_MAX_CONCURRENT in "
        "defaults): a lane name in a key is spelt with A-Z, 0-9 and _ only; "
        "write LANE_LLAMA3_8B_MAX_CONCURRENT"
    )
    assert e.value.key == "LANE_LLAMA3:8B_MAX_CONCURRENT"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"EXECUTUS_REDIS_NAMESPACE": "a{b"},
            "config key 'REDIS_NAMESPACE' ($EXECUTUS_REDIS_NAMESPACE) must not contain '{' "
            "or '}', got 'a{b'",
        ),
        (
            {"EXECUTUS_REDIS_NAMESPACE": "acme:prod"},
            "config key 'REDIS_NAMESPACE' ($EXECUTUS_REDIS_NAMESPACE) must not contain ':' "
            "(it ends the namespace in the lane's keys), got 'acme:prod'",
        ),
        (
            {"EXECUTUS_REDIS_NAMESPACE": "ns\udcff"},
            "config key 'REDIS_NAMESPACE' ($EXECUTUS_REDIS_NAMESPACE) must be encodable as "
            "UTF-8, got 'ns\\udcff'",
        ),
        (
            {"EXECUTUS_LANE_GPU_MAX_CONCURRENT": str(2**40)},
            "config key 'LANE_GPU_MAX_CONCURRENT' ($EXECUTUS_LANE_GPU_MAX_CONCURRENT) must be "
            f"< 2**40 for a Redis lane, got '{2**40}'",
        ),
        (
            {"EXECUTUS_LANE_GPU_ETA_WINDOW": str(2**40)},
            "config key 'LANE_GPU_ETA_WINDOW' ($EXECUTUS_LANE_GPU_ETA_WINDOW) must be "
            f"< 2**40 for a Redis lane, got '{2**40}'",
        ),
        (
            {"EXECUTUS_LANE_GPU_LEASE": "50ms"},
            "config key 'LANE_GPU_LEASE' ($EXECUTUS_LANE_GPU_LEASE) must be >= 0.1, got '50ms'",
        ),
        (
            {"EXECUTUS_REDIS_URL": "http://user:secret@10.0.0.5:6379/0"},
            "config key 'REDIS_URL' ($EXECUTUS_REDIS_URL): expected a redis://, rediss:// or "
            "unix:// URL, got 'http://user:***@10.0.0.5:6379/0'",
        ),
    ],
    ids=[
        "namespace",
        "namespace-colon",
        "namespace-utf8",
        "max_concurrent",
        "eta_window",
        "lease",
        "url",
    ],
)
def test_a_value_a_redis_lane_refuses_is_a_config_error_at_load(
    values: dict[str, str], message: str
) -> None:
    """Redis-only rules are checked when Lanes is built, naming the key, variable and value."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    environ = {"EXECUTUS_REDIS_URL": "redis://127.0.0.1:1/0", **values}
    with pytest.raises(ConfigError) as e:
        Lanes(EnvSource(environ=environ))
    assert str(e.value) == message


@pytest.mark.redis
async def test_reload_reports_a_changed_redis_namespace_as_pending(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A live Redis lane keeps its namespace: a changed REDIS_NAMESPACE is pending restart."""
    values = {"EXECUTUS_REDIS_URL": redis_server.url, "EXECUTUS_REDIS_NAMESPACE": "cfgns1"}
    lanes = Lanes(EnvSource(environ=values))
    lane = lanes.get("gpu")
    try:
        assert await lane.run(lambda: asyncio.sleep(0, "ok")) == "ok"
        values["EXECUTUS_REDIS_NAMESPACE"] = "cfgns2"
        with caplog.at_level(logging.WARNING, logger="executus.config"):
            result = await lanes.reload()
        assert result == ReloadResult(pending_restart=(("gpu", "redis_namespace"),))
        assert caplog.messages == [
            "lane 'gpu': redis_namespace changed in config ('cfgns1' -> 'cfgns2'); a live lane "
            "keeps its redis_namespace, the new one applies to lanes built afterwards"
        ]
        values["EXECUTUS_REDIS_NAMESPACE"] = "cfgns1"
        assert await lanes.reload() == ReloadResult()
    finally:
        await lanes.aclose()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"EXECUTUS_REDIS_URL": "redis://u:hunter2@cache:63a79/0"},
            "redis URL 'redis://u:***@cache:63a79/0' is not valid: Port could not be cast to "
            "integer value as '63a79'",
        ),
        (
            {"EXECUTUS_REDIS_URL": "redis://cache:6379/zero"},
            "redis URL 'redis://cache:6379/zero' is not valid: its database must be a number, "
            "got 'zero'",
        ),
        (
            {"EXECUTUS_REDIS_URL": "redis://cache:6379/0?socket_timeout=soon"},
            "redis URL 'redis://cache:6379/0?socket_timeout=soon' is not valid: its query "
            "parameter 'socket_timeout' must be a number, got 'soon'",
        ),
        (
            {"EXECUTUS_REDIS_URL": "redis://cache:6379/2", "EXECUTUS_REDIS_CLUSTER": "true"},
            "redis URL 'redis://cache:6379/2' is not valid with REDIS_CLUSTER true: a Redis "
            "Cluster has database 0 only, got 2",
        ),
        (
            {"EXECUTUS_REDIS_URL": "redis://cache/0?db=3", "EXECUTUS_REDIS_CLUSTER": "1"},
            "redis URL 'redis://cache/0?db=3' is not valid with REDIS_CLUSTER true: a Redis "
            "Cluster has database 0 only, got 3",
        ),
    ],
    ids=["port", "database", "query-number", "cluster-database", "cluster-query-database"],
)
def test_a_redis_url_a_redis_lane_refuses_is_refused_at_load(
    values: dict[str, str], message: str
) -> None:
    """A REDIS_URL RedisLane would refuse (port, database, a number in the query, a
    database other than 0 for a cluster) is a ConfigError at load naming the key and
    where it is set, the URL's password masked."""
    with pytest.raises(ConfigError) as e:
        Lanes(EnvSource(environ=values))
    assert str(e.value) == f"config key 'REDIS_URL' ($EXECUTUS_REDIS_URL): {message}"
    assert (e.value.key, e.value.value) == ("REDIS_URL", None)


@pytest.mark.parametrize(
    ("url", "cluster", "message"),
    [
        (
            "redis://cache:6379/0?socket_timeout=soon",
            False,
            "redis URL 'redis://cache:6379/0?socket_timeout=soon' is not valid: its query "
            "parameter 'socket_timeout' must be a number, got 'soon'",
        ),
        (
            "redis://cache/0?db=3",
            True,
            "redis URL 'redis://cache/0?db=3' is not valid with cluster=True: a Redis Cluster "
            "has database 0 only, got 3",
        ),
    ],
    ids=["query-number", "cluster-query-database"],
)
def test_redis_lane_refuses_a_url_with_the_words_config_uses(
    url: str, cluster: bool, message: str
) -> None:
    """RedisLane's constructor makes config's URL checks, with the same words."""
    redis_lane = pytest.importorskip("executus.redis", reason="executus.redis is not available")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        redis_lane.RedisLane("gpu", url, cluster=cluster)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            EnvSource(environ={"EXECUTUS_LANE_straße_MAX_CONCURRENT": "4"}),
            "config key 'LANE_STRAßE_MAX_CONCURRENT' ($EXECUTUS_LANE_straße_MAX_CONCURRENT): "
            "a lane name in a key is spelt with A-Z, 0-9 and _ only; write "
            "LANE_STRA_E_MAX_CONCURRENT",
        ),
        (
            MappingSource({"lane_ﬁle_max_concurrent": 4}),
            "config key 'LANE_ﬁLE_MAX_CONCURRENT' (lane_ﬁle_max_concurrent in mapping): a lane "
            "name in a key is spelt with A-Z, 0-9 and _ only; write LANE__LE_MAX_CONCURRENT",
        ),
    ],
    ids=["sharp-s", "ligature"],
)
def test_a_flat_key_whose_lane_name_upper_case_makes_ascii_is_refused(
    source: EnvSource | MappingSource, message: str
) -> None:
    """A flat lane key with a letter upper case turns into ASCII ("ß" into "SS") is refused
    with the spelling lanes.get reads, not read for a lane no name reaches."""
    with pytest.raises(ConfigError) as e:
        Lanes(source)
    assert str(e.value) == message


def test_an_empty_lane_name_is_refused_naming_where() -> None:
    """[lanes.""] and a flat LANE__POLICY have no lane name: refused as such."""
    with pytest.raises(ConfigError) as e:
        MappingSource({"lanes": {"": {"policy": "fifo"}}}, name="defaults")
    assert str(e.value) == (
        "config key 'LANES' (lanes.\"\" in defaults): a lane name must be a non-empty str, got ''"
    )
    with pytest.raises(ConfigError) as e:
        Lanes(MappingSource({"LANE__POLICY": "fifo"}, name="defaults"))
    assert str(e.value) == (
        "config key 'LANE__POLICY' (LANE__POLICY in defaults): the lane name in it is empty; "
        "a lane setting is LANE_<NAME>_<SETTING>"
    )
