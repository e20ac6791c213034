"""Tests for executus.config: sources, typed helpers and lanes built from config."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import pytest

from executus import FIFO, FairShare, Lane, Preemption, Priority
from executus.config import (
    ChainSource,
    ConfigError,
    EnvSource,
    Lanes,
    LaneSettings,
    ListableSource,
    MappingSource,
    ReloadResult,
    Source,
    TomlSource,
    get_bool,
    get_duration,
    get_float,
    get_int,
    get_str,
    normalize_key,
    parse_duration,
)
from executus.testing import ManualClock
from tests.helpers import Gate, settle

# -- sources ---------------------------------------------------------------------------------


def test_every_source_satisfies_the_protocols() -> None:
    """Env, mapping, TOML-less mapping and chain sources are listable Sources."""
    for s in (EnvSource(environ={}), MappingSource({}), ChainSource()):
        assert isinstance(s, Source)
        assert isinstance(s, ListableSource)


def test_env_source_reads_prefixed_variables() -> None:
    """EnvSource reads prefix + normalised key and lists keys without the prefix."""
    env = {"EXECUTUS_REDIS_URL": "redis://x", "EXECUTUS_LANE_A_POLICY": "fifo", "OTHER": "1"}
    src = EnvSource(environ=env)
    assert src.get("REDIS_URL") == "redis://x"
    assert src.get("redis-url") == "redis://x"
    assert src.get("MISSING") is None
    assert sorted(src.keys()) == ["LANE_A_POLICY", "REDIS_URL"]
    assert src.where("redis_url") == "$EXECUTUS_REDIS_URL"
    assert repr(src) == "EnvSource(prefix='EXECUTUS_')"


def test_env_source_reads_os_environ_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, EnvSource reads os.environ at each call."""
    src = EnvSource(prefix="XTEST_")
    assert src.get("WORKERS") is None
    monkeypatch.setenv("XTEST_WORKERS", "3")
    assert get_int(src, "workers", 1) == 3


def test_mapping_source_flat_and_nested_agree() -> None:
    """A flat and a nested mapping give the same keys and values."""
    flat = MappingSource({"lane_ollama_max_concurrent": 2, "redis_url": "redis://h"})
    nested = MappingSource({"lanes": {"ollama": {"max_concurrent": 2}}, "redis_url": "redis://h"})
    for src in (flat, nested):
        assert src.get("LANE_OLLAMA_MAX_CONCURRENT") == "2"
        assert src.get("REDIS_URL") == "redis://h"
        assert sorted(src.keys()) == ["LANE_OLLAMA_MAX_CONCURRENT", "REDIS_URL"]
    assert nested.where("LANE_OLLAMA_MAX_CONCURRENT") == "lanes.ollama.max_concurrent in mapping"


def test_mapping_source_renders_values_as_strings() -> None:
    """Booleans, numbers, lists and weight tables render as the strings a Source returns."""
    src = MappingSource(
        {
            "flag": True,
            "ratio": 0.5,
            "names": ["a", "b"],
            "lanes": {"x": {"weights": {"alice": 3, "bob": 1.5}}},
        }
    )
    assert src.get("FLAG") == "true"
    assert src.get("RATIO") == "0.5"
    assert src.get("NAMES") == "a,b"
    assert src.get("LANE_X_WEIGHTS") == "alice=3,bob=1.5"


def test_mapping_source_refuses_colliding_keys() -> None:
    """Two spellings of one key in a mapping are an error naming both."""
    with pytest.raises(ConfigError) as e:
        MappingSource({"a_b": 1, "a": {"b": 2}})
    assert str(e.value) == "config keys 'a_b' and 'a.b' both mean 'A_B' in mapping"


def test_toml_source_reads_tables(tmp_path: Path) -> None:
    """TomlSource flattens [lanes.<name>] into LANE_<NAME>_* and reads other tables too."""
    path = tmp_path / "bot.toml"
    path.write_text(
        'redis_url = "redis://h:1/0"\n'
        "[bot]\nworkers = 4\n"
        '[lanes.image-gen]\nmax_concurrent = 2\npolicy = "fair_share"\n'
        "weights = { alice = 3, bob = 1 }\n"
    )
    src = TomlSource(path)
    assert src.get("REDIS_URL") == "redis://h:1/0"
    assert get_int(src, "BOT_WORKERS", 1) == 4
    assert src.get("LANE_IMAGE_GEN_MAX_CONCURRENT") == "2"
    assert src.get("LANE_IMAGE_GEN_WEIGHTS") == "alice=3,bob=1"
    assert src.where("LANE_IMAGE_GEN_POLICY") == f"lanes.image-gen.policy in {path}"


def test_toml_source_bad_file_is_a_config_error(tmp_path: Path) -> None:
    """Invalid TOML and a missing file are ConfigErrors naming the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("x = = 1\n")
    with pytest.raises(ConfigError, match=r"^config file '.*bad\.toml' is not valid TOML: "):
        TomlSource(bad)
    with pytest.raises(ConfigError, match=r"^cannot read config file '.*missing\.toml': "):
        TomlSource(tmp_path / "missing.toml")


def test_chain_source_first_hit_wins() -> None:
    """ChainSource returns the first source's value and says where it came from."""
    env = EnvSource(environ={"EXECUTUS_WORKERS": "8"})
    file = MappingSource({"workers": 2, "name": "bot"}, name="bot.toml")
    src = ChainSource(env, None, file)
    assert src.get("WORKERS") == "8"
    assert src.get("NAME") == "bot"
    assert src.get("NOPE") is None
    assert src.where("WORKERS") == "$EXECUTUS_WORKERS"
    assert src.where("NAME") == "name in bot.toml"
    assert sorted(src.keys()) == ["NAME", "WORKERS"]


def test_normalize_key() -> None:
    """Keys are upper case with '-' and '.' as '_'."""
    assert normalize_key("lanes.image-gen.policy") == "LANES_IMAGE_GEN_POLICY"


# -- typed helpers ---------------------------------------------------------------------------


def test_helpers_accept_a_none_source() -> None:
    """Every helper returns its default when the source is None."""
    assert get_str(None, "K") is None
    assert get_str(None, "K", "d") == "d"
    assert get_int(None, "K", 3) == 3
    assert get_float(None, "K", 0.5) == 0.5
    assert get_bool(None, "K", True) is True
    assert get_duration(None, "K", 30.0) == 30.0


def test_helpers_return_the_default_when_absent_or_blank() -> None:
    """An absent key and a blank value ('FOO=') both give the default."""
    src = MappingSource({"blank": "  "})
    assert get_int(src, "blank", 7) == 7
    assert get_int(src, "absent", 7) == 7
    assert get_int(src, "absent") is None


def test_helpers_parse_values() -> None:
    """Helpers parse their types, stripping whitespace."""
    src = MappingSource(
        {"i": " 42 ", "f": "1e-3", "b1": "YES", "b0": "off", "s": " hi ", "d": "1m30s"}
    )
    assert get_int(src, "i") == 42
    assert get_float(src, "f") == 0.001
    assert get_bool(src, "b1") is True
    assert get_bool(src, "b0") is False
    assert get_str(src, "s") == "hi"
    assert get_duration(src, "d") == 90.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1500ms", 1.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2.5", 2.5), ("1d", 86400.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations with units and plain seconds parse to seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-3s", "s", "1h-", "1.2.3"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    """Malformed and negative durations are refused."""
    with pytest.raises(ValueError, match=f"^{re.escape(f'not a duration: {text!r}')}$"):
        parse_duration(text)


def test_helpers_name_the_key_and_value_on_bad_input() -> None:
    """A malformed value raises ConfigError with the key, its origin and the value."""
    src = EnvSource(
        environ={
            "EXECUTUS_N": "two",
            "EXECUTUS_F": "nan",
            "EXECUTUS_B": "maybe",
            "EXECUTUS_D": "soon",
        }
    )
    with pytest.raises(ConfigError) as e:
        get_int(src, "n", 1)
    assert str(e.value) == "config key 'N' ($EXECUTUS_N): expected an integer, got 'two'"
    assert (e.value.key, e.value.value) == ("N", "two")
    with pytest.raises(ConfigError) as e:
        get_float(src, "f", 1.0)
    assert str(e.value) == "config key 'F' ($EXECUTUS_F): expected a finite number, got 'nan'"
    with pytest.raises(ConfigError) as e:
        get_bool(src, "b", False)
    assert str(e.value) == (
        "config key 'B' ($EXECUTUS_B): expected a boolean (true/false, yes/no, on/off, 1/0), "
        "got 'maybe'"
    )
    with pytest.raises(ConfigError) as e:
        get_duration(src, "d", 1.0)
    assert str(e.value) == (
        'config key \'D\' ($EXECUTUS_D): expected a duration such as "1500ms", "30s", '
        '"5m", "1h" or seconds, got \'soon\''
    )


def test_custom_source_without_where_or_keys() -> None:
    """A bare Source (only get) works with the helpers; errors quote the key."""

    class Fixed:
        def get(self, key: str) -> str | None:
            return "x" if key == "K" else None

    with pytest.raises(ConfigError) as e:
        get_int(Fixed(), "K")
    assert str(e.value) == "config key 'K' ('K'): expected an integer, got 'x'"
    assert Lanes(Fixed()).configured() == []


# -- lanes from config -------------------------------------------------------------------------


def env(**values: str) -> EnvSource:
    """An EnvSource over the given EXECUTUS_* variables."""
    return EnvSource(environ={f"EXECUTUS_{k}": v for k, v in values.items()})


async def test_lanes_build_in_process_lanes_from_env() -> None:
    """Settings from the environment reach the built Lane."""
    lanes = Lanes(
        env(
            LANE_OLLAMA_MAX_CONCURRENT="3",
            LANE_OLLAMA_POLICY="fair_share",
            LANE_OLLAMA_WEIGHTS="alice=3, bob=1",
            LANE_OLLAMA_DEFAULT_WEIGHT="0.5",
            LANE_OLLAMA_PREEMPT_MIN_RUNTIME="1500ms",
            LANE_OLLAMA_PREEMPT_REQUEUE="yes",
            LANE_OLLAMA_ETA_WINDOW="4",
        )
    )
    async with lanes:
        lane = lanes.get("ollama")
        assert isinstance(lane, Lane)
        assert lane.max_concurrent == 3
        assert lane.policy == FairShare(weights={"alice": 3, "bob": 1}, default_weight=0.5)
        assert lane.preemption == Preemption(min_runtime=1.5, grace=0.0, requeue=True)
        assert lanes.get("ollama") is lane
        assert lanes["ollama"] is lane
        assert "ollama" in lanes
        assert list(lanes) == [lane]
        assert lanes.configured() == ["OLLAMA"]
        assert repr(lanes) == "<Lanes memory [1 live, 1 configured]>"
    assert lane.closed
    assert len(lanes) == 0


async def test_lanes_from_toml(tmp_path: Path) -> None:
    """[lanes.<name>] tables configure lanes; a priority policy gets its aging."""
    path = tmp_path / "lanes.toml"
    path.write_text(
        '[lanes.gpu]\nmax_concurrent = 2\npolicy = "priority"\naging = "30s"\n'
        'preempt = true\npreempt_grace = "5s"\n'
    )
    async with Lanes(TomlSource(path)) as lanes:
        lane = lanes.get("gpu")
        assert lane.max_concurrent == 2
        assert lane.policy == Priority(aging=30.0)
        assert lane.preemption == Preemption(min_runtime=30.0, grace=5.0)


async def test_lanes_code_defaults_and_config_precedence() -> None:
    """Config overrides the defaults given to get(); unset settings keep them."""
    lanes = Lanes(env(LANE_A_MAX_CONCURRENT="5"))
    a = lanes.get("a", max_concurrent=2, policy=Priority(), eta_window=8)
    b = lanes.get("b", max_concurrent=2, preemption=Preemption(min_runtime=1))
    c = lanes.get("c")
    assert (a.max_concurrent, a.policy) == (5, Priority())
    assert (b.max_concurrent, b.preemption) == (2, Preemption(min_runtime=1))
    assert (c.max_concurrent, c.policy, c.preemption) == (1, FIFO(), None)
    await lanes.aclose()


def test_lanes_none_source_reads_nothing() -> None:
    """Lanes(None) builds every lane from the code's defaults."""
    lanes = Lanes(None)
    assert lanes.configured() == []
    assert lanes.settings("x") == LaneSettings(name="X")
    assert lanes.redis_url is None


def test_lanes_default_source_is_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lanes() reads EXECUTUS_* variables from the process environment."""
    monkeypatch.setenv("EXECUTUS_LANE_ENVTEST_MAX_CONCURRENT", "6")
    assert Lanes().settings("envtest").max_concurrent == 6


def test_lane_names_match_case_and_dash_insensitively() -> None:
    """'image-gen' reads LANE_IMAGE_GEN_*; a second spelling of a live lane is refused."""
    lanes = Lanes(env(LANE_IMAGE_GEN_MAX_CONCURRENT="2"))
    lane = lanes.get("image-gen")
    assert lane.max_concurrent == 2
    with pytest.raises(ConfigError) as e:
        lanes.get("image_gen")
    assert str(e.value) == (
        "lane names 'image-gen' and 'image_gen' read the same settings "
        "(LANE_IMAGE_GEN_*); use one spelling"
    )


def test_lane_name_must_be_non_empty() -> None:
    """An empty lane name is a ValueError."""
    with pytest.raises(ValueError, match=r"^lane name must be a non-empty str, got ''$"):
        Lanes(None).get("")


def test_field_suffixes_resolve_longest_first() -> None:
    """A lane whose name ends like a setting still parses (X_PREEMPT's GRACE is not a key)."""
    lanes = Lanes(env(LANE_FAST_POLICY_MAX_CONCURRENT="2", LANE_X_PREEMPT_GRACE="1s"))
    assert lanes.configured() == ["FAST_POLICY", "X"]
    assert lanes.settings("x").preempt_grace == 1.0
    assert lanes.settings("fast-policy").max_concurrent == 2


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"LANE_OLLAMA_MAX_CONCURENT": "2"},
            "unknown lane setting 'LANE_OLLAMA_MAX_CONCURENT' "
            "($EXECUTUS_LANE_OLLAMA_MAX_CONCURENT); a lane setting is LANE_<NAME>_<SETTING> "
            "with SETTING one of MAX_CONCURRENT, POLICY, WEIGHTS, DEFAULT_WEIGHT, AGING, "
            "PREEMPT, PREEMPT_MIN_RUNTIME, PREEMPT_GRACE, PREEMPT_REQUEUE, ETA_WINDOW, LEASE",
        ),
        (
            {"LANE_A_MAX_CONCURRENT": "0"},
            "config key 'LANE_A_MAX_CONCURRENT' ($EXECUTUS_LANE_A_MAX_CONCURRENT) must be "
            ">= 1, got '0'",
        ),
        (
            {"LANE_A_MAX_CONCURRENT": "two"},
            "config key 'LANE_A_MAX_CONCURRENT' ($EXECUTUS_LANE_A_MAX_CONCURRENT): expected "
            "an integer, got 'two'",
        ),
        (
            {"LANE_A_ETA_WINDOW": "0"},
            "config key 'LANE_A_ETA_WINDOW' ($EXECUTUS_LANE_A_ETA_WINDOW) must be >= 1, got '0'",
        ),
        (
            {"LANE_A_POLICY": "lifo"},
            "config key 'LANE_A_POLICY' ($EXECUTUS_LANE_A_POLICY): expected one of fifo, "
            "priority, fair_share, got 'lifo'",
        ),
        (
            {"LANE_A_POLICY": "fair_share", "LANE_A_WEIGHTS": "alice=3,bob"},
            "config key 'LANE_A_WEIGHTS' ($EXECUTUS_LANE_A_WEIGHTS): expected comma-separated "
            "name=weight pairs with weights > 0, such as \"alice=3,bob=1\", got 'alice=3,bob'",
        ),
        (
            {"LANE_A_POLICY": "fair_share", "LANE_A_WEIGHTS": "alice=0"},
            "config key 'LANE_A_WEIGHTS' ($EXECUTUS_LANE_A_WEIGHTS): expected comma-separated "
            "name=weight pairs with weights > 0, such as \"alice=3,bob=1\", got 'alice=0'",
        ),
        (
            {"LANE_A_POLICY": "fair_share", "LANE_A_DEFAULT_WEIGHT": "0"},
            "config key 'LANE_A_DEFAULT_WEIGHT' ($EXECUTUS_LANE_A_DEFAULT_WEIGHT) must be > 0, "
            "got '0'",
        ),
        (
            {"LANE_A_WEIGHTS": "alice=3"},
            "config key 'LANE_A_WEIGHTS' ($EXECUTUS_LANE_A_WEIGHTS) applies only to policy "
            "'fair_share', but 'LANE_A_POLICY' is not set",
        ),
        (
            {"LANE_A_POLICY": "fifo", "LANE_A_AGING": "10s"},
            "config key 'LANE_A_AGING' ($EXECUTUS_LANE_A_AGING) applies only to policy "
            "'priority', but 'LANE_A_POLICY' is 'fifo'",
        ),
        (
            {"LANE_A_PREEMPT": "false", "LANE_A_PREEMPT_GRACE": "1s"},
            "config key 'LANE_A_PREEMPT_GRACE' ($EXECUTUS_LANE_A_PREEMPT_GRACE) is set but "
            "'LANE_A_PREEMPT' is false",
        ),
        (
            {"LANE_A_LEASE": "10s"},
            "config key 'LANE_A_LEASE' ($EXECUTUS_LANE_A_LEASE) applies only to Redis lanes, "
            "and REDIS_URL is not set",
        ),
    ],
)
def test_lanes_refuse_bad_config_at_load(variables: dict[str, str], message: str) -> None:
    """Unknown keys and bad values fail when the registry is built, naming key and value."""
    with pytest.raises(ConfigError) as e:
        Lanes(env(**variables))
    assert str(e.value) == message


def test_lanes_refuse_unknown_setting_in_toml(tmp_path: Path) -> None:
    """A misspelt setting in a [lanes.<name>] table is named with its file path."""
    path = tmp_path / "c.toml"
    path.write_text("[lanes.ollama]\nmax_concurent = 2\n")
    with pytest.raises(ConfigError, match=r"^unknown lane setting 'LANE_OLLAMA_MAX_CONCURENT' "):
        Lanes(TomlSource(path))


def test_redis_url_without_redis_backend_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REDIS_URL set while executus.redis cannot be imported fails at load, saying so."""
    monkeypatch.setitem(sys.modules, "executus.redis", None)  # makes the import fail
    with pytest.raises(ConfigError) as e:
        Lanes(env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert str(e.value).startswith(
        "REDIS_URL ($EXECUTUS_REDIS_URL) is set, but Redis lanes are unavailable: cannot "
        "import executus.redis ("
    )
    assert str(e.value).endswith("); install executus[redis] or unset REDIS_URL")
    assert e.value.key == "REDIS_URL"


def test_redis_cluster_is_read_from_env_and_toml(tmp_path: Path) -> None:
    """REDIS_CLUSTER is a boolean beside REDIS_URL, from the environment or a TOML file."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    url = "redis://127.0.0.1:1"
    assert Lanes(env(REDIS_URL=url)).redis_cluster is False
    assert Lanes(env(REDIS_URL=url, REDIS_CLUSTER="yes")).redis_cluster is True
    assert Lanes(env(REDIS_URL=url, REDIS_CLUSTER="0")).redis_cluster is False
    assert Lanes(None).redis_cluster is False
    path = tmp_path / "bot.toml"
    path.write_text(f'redis_url = "{url}"\nredis_cluster = true\n')
    assert Lanes(TomlSource(path)).redis_cluster is True


@pytest.mark.parametrize(
    ("variables", "message", "value"),
    [
        (
            {"REDIS_URL": "redis://127.0.0.1:1", "REDIS_CLUSTER": "maybe"},
            "config key 'REDIS_CLUSTER' ($EXECUTUS_REDIS_CLUSTER): expected a boolean "
            "(true/false, yes/no, on/off, 1/0), got 'maybe'",
            "maybe",
        ),
        (
            {"REDIS_CLUSTER": "true"},
            "config key 'REDIS_CLUSTER' ($EXECUTUS_REDIS_CLUSTER) applies only to Redis "
            "lanes, and REDIS_URL is not set (got 'true')",
            "true",
        ),
        (
            {"REDIS_CLUSTER": "off"},
            "config key 'REDIS_CLUSTER' ($EXECUTUS_REDIS_CLUSTER) applies only to Redis "
            "lanes, and REDIS_URL is not set (got 'off')",
            "off",
        ),
    ],
)
def test_redis_cluster_refuses_bad_values_and_a_missing_url(
    variables: dict[str, str], message: str, value: str
) -> None:
    """A malformed REDIS_CLUSTER, or one without REDIS_URL, fails at load naming key and value."""
    with pytest.raises(ConfigError) as e:
        Lanes(env(**variables))
    assert str(e.value) == message
    assert (e.value.key, e.value.value) == ("REDIS_CLUSTER", value)


def test_redis_cluster_error_names_the_toml_file(tmp_path: Path) -> None:
    """A bad redis_cluster in TOML is reported with its path in the file."""
    path = tmp_path / "bot.toml"
    path.write_text('redis_url = "redis://127.0.0.1:1"\nredis_cluster = "sometimes"\n')
    with pytest.raises(ConfigError) as e:
        Lanes(TomlSource(path))
    assert str(e.value) == (
        f"config key 'REDIS_CLUSTER' (redis_cluster in {path}): expected a boolean "
        "(true/false, yes/no, on/off, 1/0), got 'sometimes'"
    )


# -- reload ---------------------------------------------------------------------------------------


async def test_reload_applies_limits_to_live_lanes_without_dropping_jobs(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A raised limit starts queued jobs at once; every job still completes."""
    path = tmp_path / "c.toml"
    path.write_text("[lanes.gpu]\nmax_concurrent = 1\n")
    lanes = Lanes(TomlSource(path), clock=clock)
    lane = lanes.get("gpu")
    gates = [Gate() for _ in range(3)]
    handles = [await lane.submit(g, key=f"u{i}") for i, g in enumerate(gates)]
    await settle()
    assert [g.running for g in gates] == [True, False, False]

    path.write_text('[lanes.gpu]\nmax_concurrent = 3\npreempt_min_runtime = "2s"\neta_window = 4\n')
    result = await lanes.reload()
    assert result == ReloadResult(
        applied=(("gpu", "max_concurrent"), ("gpu", "preemption"), ("gpu", "eta_window"))
    )
    await settle()
    assert lane.max_concurrent == 3
    assert lane.preemption == Preemption(min_runtime=2.0)
    assert [g.running for g in gates] == [True, True, True]
    for i, g in enumerate(gates):
        g.release(i)
    assert [await h for h in handles] == [0, 1, 2]

    # Unchanged config: nothing to apply.
    assert await lanes.reload() == ReloadResult()
    # Settings removed from config fall back to the code's (here built-in) defaults.
    path.write_text("")
    assert await lanes.reload() == ReloadResult(
        applied=(("gpu", "max_concurrent"), ("gpu", "preemption"), ("gpu", "eta_window"))
    )
    assert (lane.max_concurrent, lane.preemption) == (1, None)
    await lanes.aclose()


async def test_reload_keeps_a_live_lanes_policy_and_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A policy change is logged and pending for live lanes; new lanes get the new policy."""
    values = {"EXECUTUS_LANE_A_POLICY": "fifo", "EXECUTUS_LANE_A_MAX_CONCURRENT": "1"}
    lanes = Lanes(EnvSource(environ=values))
    a = lanes.get("a")
    values["EXECUTUS_LANE_A_POLICY"] = "fair_share"
    values["EXECUTUS_LANE_A_MAX_CONCURRENT"] = "2"
    with caplog.at_level(logging.WARNING, logger="executus.config"):
        result = await lanes.reload()
    assert result == ReloadResult(
        applied=(("a", "max_concurrent"),), pending_restart=(("a", "policy"),)
    )
    assert (a.policy, a.max_concurrent) == (FIFO(), 2)
    assert caplog.messages == [
        "lane 'a': policy changed in config (FIFO() -> FairShare()); a live lane keeps its "
        "policy, the new one applies to lanes built afterwards"
    ]
    # Still pending on the next reload: the live lane still has the old policy.
    assert (await lanes.reload()).pending_restart == (("a", "policy"),)
    await lanes.aclose()
    assert lanes.get("a").policy == FairShare()
    await lanes.aclose()


async def test_reload_with_bad_config_changes_nothing() -> None:
    """An invalid new config raises ConfigError and leaves live lanes and settings alone."""
    values = {"EXECUTUS_LANE_A_MAX_CONCURRENT": "2"}
    lanes = Lanes(EnvSource(environ=values))
    a = lanes.get("a")
    values["EXECUTUS_LANE_A_MAX_CONCURRENT"] = "4"
    values["EXECUTUS_LANE_B_POLICY"] = "random"
    with pytest.raises(ConfigError, match=r"^config key 'LANE_B_POLICY' "):
        await lanes.reload()
    assert a.max_concurrent == 2
    assert lanes.settings("a").max_concurrent == 2
    await lanes.aclose()


async def test_concurrent_reloads_are_serialised(tmp_path: Path) -> None:
    """Racing reloads apply each change once and end with the latest config."""
    path = tmp_path / "c.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 1\n")
    lanes = Lanes(TomlSource(path))
    a = lanes.get("a")
    path.write_text("[lanes.a]\nmax_concurrent = 7\n")
    results = await asyncio.gather(*(lanes.reload() for _ in range(5)))
    assert sum(len(r.applied) for r in results) == 1
    assert a.max_concurrent == 7
    await lanes.aclose()


async def test_reload_treats_an_unset_policy_as_fifo() -> None:
    """Removing an explicit 'fifo' policy (the default) is not a pending change."""
    values = {"EXECUTUS_LANE_A_POLICY": "fifo"}
    lanes = Lanes(EnvSource(environ=values))
    lanes.get("a")
    del values["EXECUTUS_LANE_A_POLICY"]
    assert await lanes.reload() == ReloadResult()
    await lanes.aclose()


# -- Redis lanes from config -------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_url_builds_redis_lanes(redis_url: str) -> None:
    """With REDIS_URL set, lanes are RedisLanes with the configured lease and limits."""
    from executus.redis import RedisLane

    values = {
        "EXECUTUS_REDIS_URL": redis_url,
        "EXECUTUS_REDIS_NAMESPACE": "cfgtest",
        "EXECUTUS_LANE_GPU_MAX_CONCURRENT": "2",
        "EXECUTUS_LANE_GPU_LEASE": "5s",
        "EXECUTUS_LANE_GPU_POLICY": "fair_share",
    }
    lanes = Lanes(EnvSource(environ=values))
    assert lanes.redis_url == redis_url
    lane = lanes.get("gpu")
    try:
        assert isinstance(lane, RedisLane)
        assert lane.lease == 5.0
        assert lane.policy == FairShare()
        assert await lane.run(lambda: asyncio.sleep(0, "ok"), key="alice") == "ok"
        assert (await lane.stats()).max_concurrent == 2
        values["EXECUTUS_LANE_GPU_MAX_CONCURRENT"] = "3"
        assert (await lanes.reload()).applied == (("gpu", "max_concurrent"),)
        assert (await lane.stats()).max_concurrent == 3
    finally:
        await lanes.aclose()


@pytest.mark.redis
async def test_redis_cluster_reaches_the_lane(redis_url: str) -> None:
    """REDIS_CLUSTER=true builds cluster lanes: on a server not in cluster mode they say so."""
    from executus import LaneUnavailable

    values = {"EXECUTUS_REDIS_URL": redis_url, "EXECUTUS_REDIS_NAMESPACE": "cfgcluster"}
    async with Lanes(EnvSource(environ={**values, "EXECUTUS_REDIS_CLUSTER": "true"})) as lanes:
        with pytest.raises(LaneUnavailable) as e:
            await lanes.get("gpu").run(lambda: asyncio.sleep(0, "ok"))
        assert str(e.value).startswith(
            "lane 'gpu': cluster=True (or a RedisCluster client), but that Redis is not in "
            "cluster mode ("
        )
    async with Lanes(EnvSource(environ={**values, "EXECUTUS_REDIS_CLUSTER": "false"})) as lanes:
        assert await lanes.get("gpu").run(lambda: asyncio.sleep(0, "ok")) == "ok"


@pytest.mark.redis
async def test_reload_reports_a_changed_redis_cluster_as_pending(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Turning REDIS_CLUSTER on leaves a live lane as it is and reports it pending restart."""
    values = {"EXECUTUS_REDIS_URL": redis_url, "EXECUTUS_REDIS_NAMESPACE": "cfgreload"}
    lanes = Lanes(EnvSource(environ=values))
    lane = lanes.get("gpu")
    try:
        values["EXECUTUS_REDIS_CLUSTER"] = "1"
        with caplog.at_level(logging.WARNING, logger="executus.config"):
            result = await lanes.reload()
        assert result == ReloadResult(pending_restart=(("gpu", "redis_cluster"),))
        assert caplog.messages == [
            "lane 'gpu': redis_cluster changed in config (False -> True); a live lane keeps "
            "its redis_cluster, the new one applies to lanes built afterwards"
        ]
        assert lanes.redis_cluster is True
        assert await lane.run(lambda: asyncio.sleep(0, "ok")) == "ok"
    finally:
        await lanes.aclose()
