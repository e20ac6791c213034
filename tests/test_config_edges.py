"""Edge cases of executus.config: sources without keys(), odd spellings, extreme values."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from executus import Preemption
from executus.config import (
    ChainSource,
    ConfigError,
    EnvSource,
    Lanes,
    MappingSource,
    ReloadResult,
    Source,
    TomlSource,
    get_bool,
    get_duration,
    get_float,
    get_int,
    get_str,
    parse_duration,
)

_FIELDS = (
    "MAX_CONCURRENT, POLICY, WEIGHTS, DEFAULT_WEIGHT, AGING, PREEMPT, PREEMPT_MIN_RUNTIME, "
    "PREEMPT_GRACE, PREEMPT_REQUEUE, ETA_WINDOW, LEASE"
)


class DictSource:
    """A Source with only get(): no keys(), no where()."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str) -> str | None:
        return self.values.get(key)


async def test_lanes_read_settings_from_a_source_without_keys() -> None:
    """A get-only Source configures the lanes asked for by name, and reload re-reads it."""
    src = DictSource({"LANE_GPU_MAX_CONCURRENT": "3", "LANE_GPU_POLICY": "priority"})
    lanes = Lanes(src)
    assert lanes.settings("gpu").max_concurrent == 3
    gpu = lanes.get("gpu")
    assert (gpu.max_concurrent, gpu.policy.name) == (3, "priority")
    src.values["LANE_GPU_MAX_CONCURRENT"] = "5"
    assert await lanes.reload() == ReloadResult(applied=(("gpu", "max_concurrent"),))
    assert gpu.max_concurrent == 5
    await lanes.aclose()


async def test_reload_refuses_a_bad_value_from_a_get_only_source_and_changes_nothing() -> None:
    """A live lane's setting turned invalid in a get-only source fails reload; nothing changes."""
    src = DictSource({"LANE_A_MAX_CONCURRENT": "2", "LANE_B_MAX_CONCURRENT": "2"})
    lanes = Lanes(src)
    a, b = lanes.get("a"), lanes.get("b")
    src.values.update(LANE_A_MAX_CONCURRENT="3", LANE_B_MAX_CONCURRENT="zero")
    with pytest.raises(ConfigError, match=r"^config key 'LANE_B_MAX_CONCURRENT' "):
        await lanes.reload()
    assert (a.max_concurrent, b.max_concurrent) == (2, 2)
    assert lanes.settings("a").max_concurrent == 2
    await lanes.aclose()


async def test_lanes_read_a_get_only_source_inside_a_chain() -> None:
    """In a chain, a source without keys() still supplies lane settings."""
    lanes = Lanes(ChainSource(EnvSource(environ={}), DictSource({"LANE_A_MAX_CONCURRENT": "4"})))
    assert lanes.get("a").max_concurrent == 4
    await lanes.aclose()


def test_lanes_refuse_a_bad_value_from_a_get_only_source_naming_it() -> None:
    """A malformed setting from a get-only source is a ConfigError naming key and value."""
    lanes = Lanes(DictSource({"LANE_A_MAX_CONCURRENT": "0"}))
    with pytest.raises(ConfigError) as e:
        lanes.get("a")
    assert str(e.value) == (
        "config key 'LANE_A_MAX_CONCURRENT' ('LANE_A_MAX_CONCURRENT') must be >= 1, got '0'"
    )
    assert len(lanes) == 0


def test_env_source_reads_the_variables_it_lists_in_any_case() -> None:
    """A variable EnvSource lists (EXECUTUS_lane_a_max_concurrent) is also the one it reads."""
    environ = {"EXECUTUS_lane_a_max_concurrent": "3", "EXECUTUS_LANE_B-C_POLICY": "priority"}
    src = EnvSource(environ=environ)
    assert sorted(src.keys()) == ["LANE_A_MAX_CONCURRENT", "LANE_B_C_POLICY"]
    assert src.get("LANE_A_MAX_CONCURRENT") == "3"
    assert src.where("LANE_A_MAX_CONCURRENT") == "$EXECUTUS_lane_a_max_concurrent"
    assert src.get("LANE_B_C_POLICY") == "priority"
    lanes = Lanes(src)
    assert lanes.settings("a").max_concurrent == 3
    assert lanes.settings("b-c").policy == "priority"


def test_env_source_prefers_the_exact_upper_case_variable() -> None:
    """When two variables spell one key, the upper-case one wins."""
    src = EnvSource(environ={"EXECUTUS_workers": "1", "EXECUTUS_WORKERS": "2"})
    assert src.get("workers") == "2"
    assert src.where("workers") == "$EXECUTUS_WORKERS"


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "s", "1s" + "9" * 400 + "ms"])
def test_parse_duration_refuses_an_infinite_duration(text: str) -> None:
    """A duration too large to be a finite float is refused, not returned as inf."""
    with pytest.raises(ValueError, match=r"^not a finite duration: "):
        parse_duration(text)


def test_an_infinite_duration_is_a_config_error_at_load() -> None:
    """An overflowing aging is refused when Lanes is built, naming the key."""
    huge = "9" * 400 + "s"
    src = MappingSource({"lanes": {"a": {"policy": "priority", "aging": huge}}})
    with pytest.raises(ConfigError) as e:
        Lanes(src)
    assert e.value.key == "LANE_A_AGING"
    assert str(e.value).startswith("config key 'LANE_A_AGING' (lanes.a.aging in mapping): ")
    with pytest.raises(ConfigError):
        get_duration(MappingSource({"t": huge}), "T")


def test_unknown_setting_in_a_lane_table_is_not_given_to_another_lane() -> None:
    """[lanes.x_preempt] grace is refused, not read as lane X's PREEMPT_GRACE."""
    with pytest.raises(ConfigError) as e:
        MappingSource({"lanes": {"x_preempt": {"grace": "5s"}}})
    assert str(e.value) == (
        "unknown lane setting 'LANE_X_PREEMPT_GRACE' (lanes.x_preempt.grace in mapping); "
        f"a lane setting is LANE_<NAME>_<SETTING> with SETTING one of {_FIELDS}"
    )
    assert e.value.key == "LANE_X_PREEMPT_GRACE"


def test_misspelt_setting_in_a_toml_lane_table_names_the_file(tmp_path: Path) -> None:
    """[lanes.ollama] queue_policy is refused with its file path, not given to lane OLLAMA_QUEUE."""
    path = tmp_path / "bot.toml"
    path.write_text('[lanes.ollama]\nmax_concurrent = 2\nqueue_policy = "priority"\n')
    with pytest.raises(ConfigError) as e:
        Lanes(TomlSource(path))
    assert str(e.value).startswith(
        f"unknown lane setting 'LANE_OLLAMA_QUEUE_POLICY' (lanes.ollama.queue_policy in {path}); "
    )


def test_nested_tables_inside_a_lane_table_still_name_known_settings() -> None:
    """[lanes.gpu.preempt] min_runtime is PREEMPT_MIN_RUNTIME; a weights table is one value."""
    src = MappingSource(
        {
            "lanes": {
                "gpu": {
                    "policy": "fair_share",
                    "weights": {"alice": 3},
                    "preempt": {"min_runtime": "2s"},
                }
            }
        }
    )
    settings = Lanes(src).settings("gpu")
    assert settings.preempt_min_runtime == 2.0
    assert settings.weights == (("alice", 3.0),)


def test_chain_source_passes_over_a_blank_value() -> None:
    """A blank value counts as unset in a chain: the next source that sets the key wins."""
    src = ChainSource(
        EnvSource(environ={"EXECUTUS_LANE_A_MAX_CONCURRENT": " "}),
        MappingSource({"lanes": {"a": {"max_concurrent": 4}}}),
    )
    assert get_int(src, "LANE_A_MAX_CONCURRENT", 1) == 4
    assert src.where("LANE_A_MAX_CONCURRENT") == "lanes.a.max_concurrent in mapping"
    assert Lanes(src).settings("a").max_concurrent == 4


# -- numbers, arrays and tables in a file -------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [("1.5", '"1.5s"'), ("30", '"30s"'), ("1e-5", '"0.01ms"'), ("0.00001", '"0.00001"')],
)
def test_toml_numbers_are_seconds_like_the_equivalent_strings(
    tmp_path: Path, number: str, text: str
) -> None:
    """A duration written as a TOML int or float reads as the same seconds as its string."""
    settings = []
    for value in (number, text):
        path = tmp_path / "bot.toml"
        path.write_text(
            f"timeout = {value}\n[lanes.a]\npolicy = 'priority'\naging = {value}\n"
            f"preempt_min_runtime = {value}\npreempt_grace = {value}\n"
        )
        src = TomlSource(path)
        a = Lanes(src).settings("a")
        settings.append(
            (get_duration(src, "TIMEOUT"), a.aging, a.preempt_min_runtime, a.preempt_grace)
        )
    assert settings[0] == settings[1]
    assert settings[0][0] == parse_duration(text.strip('"'))


_EXPECTED = {
    "get_int": "an integer",
    "get_float": "a finite number",
    "get_bool": "a boolean (true/false, yes/no, on/off, 1/0)",
    "get_duration": 'a duration such as "1500ms", "30s", "5m", "1h" or seconds',
}

_DURATION = 'expected a duration such as "1500ms", "30s", "5m", "1h" or seconds'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("true", f"{_DURATION}, got 'true'"),
        ("-1", f"{_DURATION}, got '-1'"),
        ("-0.5", f"{_DURATION}, got '-0.5'"),
        ("[1]", f"{_DURATION}, got an array [1]"),
        ("[1, 2]", f"{_DURATION}, got an array [1, 2]"),
        ("{ s = 1 }", "expected a single value, got a table {'s': 1}"),
    ],
    ids=["bool", "negative-int", "negative-float", "array-of-one", "array", "table"],
)
def test_a_bad_toml_duration_names_key_value_and_file(
    tmp_path: Path, value: str, problem: str
) -> None:
    """A bool, a negative number, an array or a table as a lane's duration is refused by name."""
    path = tmp_path / "bot.toml"
    path.write_text(f"[lanes.a]\npreempt_grace = {value}\n")
    with pytest.raises(ConfigError) as e:
        Lanes(TomlSource(path))
    assert str(e.value) == (
        f"config key 'LANE_A_PREEMPT_GRACE' (lanes.a.preempt_grace in {path}): {problem}"
    )
    assert e.value.key == "LANE_A_PREEMPT_GRACE"


def test_an_array_is_not_a_number_for_the_helpers(tmp_path: Path) -> None:
    """get_int/float/bool/duration refuse an array (also in a chain); get_str reads it joined."""
    path = tmp_path / "bot.toml"
    path.write_text("n = [2]\nnames = ['a', 'b']\n")
    src = ChainSource(EnvSource(environ={}), TomlSource(path))
    for helper in (get_int, get_float, get_bool, get_duration):
        with pytest.raises(ConfigError) as e:
            helper(src, "N")
        expected = _EXPECTED[helper.__name__]
        assert (
            str(e.value) == f"config key 'N' (n in {path}): expected {expected}, got an array [2]"
        )
        assert (e.value.key, e.value.value) == ("N", "2")
    assert get_str(src, "NAMES") == "a,b"


def test_a_lane_policy_written_as_an_array_is_refused() -> None:
    """policy = ["fifo"] is not taken for "fifo"."""
    with pytest.raises(ConfigError) as e:
        Lanes(MappingSource({"lanes": {"a": {"policy": ["fifo"]}}}, name="defaults"))
    assert str(e.value) == (
        "config key 'LANE_A_POLICY' (lanes.a.policy in defaults): expected one of fifo, "
        "priority, fair_share, got an array ['fifo']"
    )


# -- where a bad value comes from -----------------------------------------------------------------


@pytest.mark.parametrize("helper", [get_int, get_float, get_bool, get_duration])
@pytest.mark.parametrize(
    ("source", "where"),
    [
        (EnvSource(environ={"EXECUTUS_K": "x"}), "$EXECUTUS_K"),
        (EnvSource(prefix="", environ={"k": "x"}), "$k"),
        (MappingSource({"k": "x"}, name="defaults"), "k in defaults"),
        (MappingSource({"lanes": {"k": {}}, "k": "x"}), "k in mapping"),
        (
            ChainSource(
                EnvSource(environ={"EXECUTUS_K": " "}),
                MappingSource({}, name="first"),
                MappingSource({"k": "x"}, name="second"),
            ),
            "k in second",
        ),
        (ChainSource(ChainSource(EnvSource(environ={"EXECUTUS_K": "x"}))), "$EXECUTUS_K"),
    ],
    ids=["env", "env-no-prefix", "named-mapping", "mapping", "chain", "nested-chain"],
)
def test_every_helper_names_where_a_bad_value_is_set(
    helper: Callable[[Source, str], object], source: Source, where: str
) -> None:
    """Each typed helper names the variable or mapping a bad value came from, in any chain."""
    with pytest.raises(ConfigError) as e:
        helper(source, "K")
    assert (
        str(e.value) == f"config key 'K' ({where}): expected {_EXPECTED[helper.__name__]}, got 'x'"
    )
    assert (e.value.key, e.value.value) == ("K", "x")


@pytest.mark.parametrize(
    ("mapping", "message", "key"),
    [
        (
            {"x": object},
            "config key 'X' (x in defaults): unsupported value type type; a value is a str, "
            "number, bool, date or time, array or table",
            "X",
        ),
        (
            {"lanes": {"a": 3}},
            "config key 'LANE_A' (lanes.a in defaults) must be a table of lane settings, got 3",
            "LANE_A",
        ),
        (
            {"lanes": {"a": {"policy": "fair_share", "weights": {"bob": [1]}}}},
            "config key 'LANE_A_WEIGHTS' (lanes.a.weights in defaults): a table value must map "
            "names to scalars, got 'bob' = [1]",
            "LANE_A_WEIGHTS",
        ),
        ({"bot": {1: 2}}, "config keys must be str, got 1 in 'bot' of defaults", None),
    ],
    ids=["value-type", "lane-not-a-table", "nested-weights", "key-not-str"],
)
def test_a_malformed_mapping_is_refused_naming_it(
    mapping: dict[str, object], message: str, key: str | None
) -> None:
    """Errors about a mapping's shape name the mapping and the key as lanes read it."""
    with pytest.raises(ConfigError) as e:
        MappingSource(mapping, name="defaults")
    assert str(e.value) == message
    assert e.value.key == key


def test_an_unknown_blank_setting_in_a_chain_names_its_variable() -> None:
    """A misspelt lane variable set blank is reported with the variable, not a bare key."""
    src = ChainSource(
        EnvSource(environ={"EXECUTUS_LANE_A_MAX_CONCURENT": ""}), MappingSource({"workers": 1})
    )
    with pytest.raises(ConfigError) as e:
        Lanes(src)
    assert str(e.value) == (
        "unknown lane setting 'LANE_A_MAX_CONCURENT' ($EXECUTUS_LANE_A_MAX_CONCURENT); "
        f"a lane setting is LANE_<NAME>_<SETTING> with SETTING one of {_FIELDS}"
    )


# -- where a conflicting setting is set -----------------------------------------------------------

_CONFLICTS = pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        (
            {"weights": "alice=3"},
            "LANE_A_WEIGHTS",
            "applies only to policy 'fair_share', but 'LANE_A_POLICY' is not set",
        ),
        (
            {"policy": "priority", "default_weight": "2"},
            "LANE_A_DEFAULT_WEIGHT",
            "applies only to policy 'fair_share', but 'LANE_A_POLICY' is 'priority'",
        ),
        (
            {"policy": "fifo", "aging": "10s"},
            "LANE_A_AGING",
            "applies only to policy 'priority', but 'LANE_A_POLICY' is 'fifo'",
        ),
        (
            {"preempt": "false", "preempt_min_runtime": "1s"},
            "LANE_A_PREEMPT_MIN_RUNTIME",
            "is set but 'LANE_A_PREEMPT' is false",
        ),
        (
            {"preempt": "off", "preempt_grace": "1s"},
            "LANE_A_PREEMPT_GRACE",
            "is set but 'LANE_A_PREEMPT' is false",
        ),
        (
            {"preempt": "no", "preempt_requeue": "yes"},
            "LANE_A_PREEMPT_REQUEUE",
            "is set but 'LANE_A_PREEMPT' is false",
        ),
        (
            {"lease": "10s"},
            "LANE_A_LEASE",
            "applies only to Redis lanes, and REDIS_URL is not set",
        ),
    ],
    ids=[
        "weights",
        "default-weight",
        "aging",
        "preempt-min-runtime",
        "preempt-grace",
        "preempt-requeue",
        "lease",
    ],
)


@_CONFLICTS
def test_a_conflicting_lane_setting_names_its_variable(
    settings: dict[str, str], key: str, problem: str
) -> None:
    """A lane setting that another setting rules out names the variable that sets it."""
    src = EnvSource(environ={f"EXECUTUS_LANE_A_{k.upper()}": v for k, v in settings.items()})
    message = f"config key {key!r} ($EXECUTUS_{key}) {problem}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as e:
        Lanes(src)
    assert e.value.key == key


@_CONFLICTS
def test_a_conflicting_lane_setting_names_its_path_in_the_file(
    tmp_path: Path, settings: dict[str, str], key: str, problem: str
) -> None:
    """A lane setting that another setting rules out names its path in the TOML file."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\n" + "".join(f'{k} = "{v}"\n' for k, v in settings.items()))
    where = f"lanes.a.{key.removeprefix('LANE_A_').lower()} in {path}"
    message = f"config key {key!r} ({where}) {problem}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as e:
        Lanes(TomlSource(path))
    assert e.value.key == key


def test_a_conflicting_setting_in_a_chain_names_the_source_that_sets_it(tmp_path: Path) -> None:
    """PREEMPT=false in the environment and a grace in the file: the file's grace is named."""
    path = tmp_path / "bot.toml"
    path.write_text('[lanes.a]\npreempt_grace = "5s"\n')
    src = ChainSource(EnvSource(environ={"EXECUTUS_LANE_A_PREEMPT": "false"}), TomlSource(path))
    message = (
        f"config key 'LANE_A_PREEMPT_GRACE' (lanes.a.preempt_grace in {path}) is set but "
        "'LANE_A_PREEMPT' is false"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Lanes(src)


def test_a_conflicting_setting_from_a_get_only_source_quotes_the_key() -> None:
    """A source without where() is named by the key, as the typed helpers do."""
    lanes = Lanes(DictSource({"LANE_A_LEASE": "10s"}))
    with pytest.raises(
        ConfigError,
        match=(
            r"^config key 'LANE_A_LEASE' \('LANE_A_LEASE'\) applies only to Redis lanes, "
            r"and REDIS_URL is not set$"
        ),
    ):
        lanes.get("a")


def test_redis_cluster_without_a_url_names_its_path_in_the_file(tmp_path: Path) -> None:
    """redis_cluster in a file without redis_url names its path, like the environment's."""
    path = tmp_path / "bot.toml"
    path.write_text("redis_cluster = true\n")
    message = (
        f"config key 'REDIS_CLUSTER' (redis_cluster in {path}) applies only to Redis lanes, "
        "and REDIS_URL is not set (got 'true')"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Lanes(TomlSource(path))


@pytest.mark.parametrize(
    ("text", "first", "second", "key"),
    [
        ("a_b = 1\n[a]\nb = 2\n", "a_b", "a.b", "A_B"),
        (
            '[lanes.x]\nmax_concurrent = 1\n"max-concurrent" = 2\n',
            "lanes.x.max_concurrent",
            "lanes.x.max-concurrent",
            "LANE_X_MAX_CONCURRENT",
        ),
    ],
    ids=["top-level", "lane-table"],
)
def test_colliding_keys_in_a_toml_file_name_the_file(
    tmp_path: Path, text: str, first: str, second: str, key: str
) -> None:
    """Two spellings of one key in a TOML file are refused naming both and the file."""
    path = tmp_path / "bot.toml"
    path.write_text(text)
    message = f"config keys {first!r} and {second!r} both mean {key!r} in {path}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as e:
        TomlSource(path)
    assert e.value.key == key


def test_colliding_keys_in_a_named_mapping_name_the_mapping() -> None:
    """Two spellings of one key in a mapping are refused naming the mapping."""
    with pytest.raises(
        ConfigError, match=r"^config keys 'a_b' and 'a\.b' both mean 'A_B' in defaults$"
    ):
        MappingSource({"a_b": 1, "a": {"b": 2}}, name="defaults")


def test_colliding_keys_on_toml_reload_name_the_file(tmp_path: Path) -> None:
    """A collision written into the file before reload() is refused naming the file."""
    path = tmp_path / "bot.toml"
    path.write_text("a_b = 1\n")
    src = TomlSource(path)
    path.write_text("a_b = 1\n[a]\nb = 2\n")
    message = f"config keys 'a_b' and 'a.b' both mean 'A_B' in {path}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        src.reload()
    assert src.get("A_B") == "1"


@pytest.fixture
def without_redis(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``import executus.redis`` fail; returns the ImportError's text."""
    monkeypatch.setitem(sys.modules, "executus.redis", None)
    with pytest.raises(ImportError) as e:
        importlib.import_module("executus.redis")
    return str(e.value)


def _unavailable(where: str, reason: str) -> str:
    return (
        f"REDIS_URL ({where}) is set, but Redis lanes are unavailable: cannot import "
        f"executus.redis ({reason}); install executus[redis] or unset REDIS_URL"
    )


def test_redis_url_without_the_backend_names_its_variable(without_redis: str) -> None:
    """REDIS_URL from the environment without executus.redis names $EXECUTUS_REDIS_URL."""
    src = EnvSource(environ={"EXECUTUS_REDIS_URL": "redis://127.0.0.1:1/0"})
    message = _unavailable("$EXECUTUS_REDIS_URL", without_redis)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as e:
        Lanes(src)
    assert e.value.key == "REDIS_URL"


def test_redis_url_without_the_backend_names_its_path_in_the_file(
    tmp_path: Path, without_redis: str
) -> None:
    """redis_url in a TOML file without executus.redis names the file."""
    path = tmp_path / "bot.toml"
    path.write_text('redis_url = "redis://127.0.0.1:1/0"\n')
    message = _unavailable(f"redis_url in {path}", without_redis)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Lanes(TomlSource(path))


@pytest.mark.parametrize("in_file", [False, True], ids=["env", "toml"])
def test_redis_url_with_a_backend_lacking_redis_lane_names_where_it_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_file: bool
) -> None:
    """An executus.redis without RedisLane is refused naming where REDIS_URL is set."""
    monkeypatch.setitem(sys.modules, "executus.redis", ModuleType("executus.redis"))
    url = "redis://127.0.0.1:1/0"
    path = tmp_path / "bot.toml"
    path.write_text(f'redis_url = "{url}"\n')
    if in_file:
        src: Source = TomlSource(path)
        where = f"redis_url in {path}"
    else:
        src = EnvSource(environ={"EXECUTUS_REDIS_URL": url})
        where = "$EXECUTUS_REDIS_URL"
    message = (
        f"REDIS_URL ({where}) is set, but executus.redis has no RedisLane; "
        "install executus[redis] or unset REDIS_URL"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Lanes(src)


# -- reload: all or nothing ---------------------------------------------------------------------


def test_chain_reload_keeps_every_file_when_one_is_broken(tmp_path: Path) -> None:
    """ChainSource.reload takes no file's new settings unless every file parses."""
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text("workers = 1\n")
    two.write_text("threads = 1\n")
    src = ChainSource(TomlSource(one), ChainSource(TomlSource(two)))
    one.write_text("workers = 2\n")
    two.write_text("threads = [\n")
    with pytest.raises(ConfigError, match=rf"^config file '{two}' is not valid TOML: "):
        src.reload()
    assert (src.get("WORKERS"), src.get("THREADS")) == ("1", "1")
    two.write_text("threads = 2\n")
    src.reload()
    assert (src.get("WORKERS"), src.get("THREADS")) == ("2", "2")


async def test_a_refused_reload_leaves_the_file_source_as_it_was(tmp_path: Path) -> None:
    """When Lanes.reload refuses a file, the TomlSource keeps the settings it read before."""
    path = tmp_path / "bot.toml"
    path.write_text("workers = 1\n[lanes.a]\nmax_concurrent = 2\n")
    src = TomlSource(path)
    lanes = Lanes(src)
    a = lanes.get("a")
    path.write_text("workers = 9\n[lanes.a]\nmax_concurrent = 0\n")
    with pytest.raises(ConfigError, match=r"^config key 'LANE_A_MAX_CONCURRENT' .* must be >= 1, "):
        await lanes.reload()
    assert (get_int(src, "WORKERS"), src.get("LANE_A_MAX_CONCURRENT")) == (1, "2")
    assert (a.max_concurrent, lanes.settings("a").max_concurrent) == (2, 2)
    await lanes.aclose()


async def test_reload_puts_back_what_it_changed_when_a_lane_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane that fails to take a new limit undoes the reload: earlier lanes get theirs back."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n")
    src = TomlSource(path)
    lanes = Lanes(src)
    a, b = lanes.get("a"), lanes.get("b")

    async def unreachable(n: int) -> None:
        raise RuntimeError("backend unreachable")

    monkeypatch.setattr(b, "set_max_concurrent", unreachable)
    path.write_text(
        "[lanes.a]\nmax_concurrent = 3\npreempt_grace = 1\n[lanes.b]\nmax_concurrent = 5\n"
    )
    with pytest.raises(RuntimeError, match=r"^backend unreachable$"):
        await lanes.reload()
    assert (a.max_concurrent, a.preemption, b.max_concurrent) == (2, None, 2)
    assert (lanes.settings("a").max_concurrent, src.get("LANE_A_MAX_CONCURRENT")) == (2, "2")
    monkeypatch.undo()
    assert await lanes.reload() == ReloadResult(
        applied=(("a", "max_concurrent"), ("a", "preemption"), ("b", "max_concurrent"))
    )
    assert (a.max_concurrent, a.preemption, b.max_concurrent) == (3, Preemption(grace=1), 5)
    await lanes.aclose()


async def test_a_removed_setting_falls_back_to_the_next_source_then_the_default(
    tmp_path: Path,
) -> None:
    """Removing a setting from the first file reloads the second file's, then the code's."""
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text("[lanes.a]\nmax_concurrent = 3\npreempt_grace = '1s'\n")
    two.write_text("[lanes.a]\nmax_concurrent = 4\n")
    lanes = Lanes(ChainSource(TomlSource(one), TomlSource(two)))
    a = lanes.get("a", max_concurrent=2, preemption=Preemption(min_runtime=5))
    # Setting by setting: the file's grace, the code's min_runtime.
    assert (a.max_concurrent, a.preemption) == (3, Preemption(min_runtime=5, grace=1))
    one.write_text("")
    assert await lanes.reload() == ReloadResult(
        applied=(("a", "max_concurrent"), ("a", "preemption"))
    )
    assert (a.max_concurrent, a.preemption) == (4, Preemption(min_runtime=5))
    two.write_text("")
    assert await lanes.reload() == ReloadResult(applied=(("a", "max_concurrent"),))
    assert (a.max_concurrent, a.preemption) == (2, Preemption(min_runtime=5))
    await lanes.aclose()


@pytest.mark.redis
async def test_reload_refuses_a_limit_a_redis_lane_cannot_store(
    redis_url: str, tmp_path: Path
) -> None:
    """A limit a RedisLane refuses is a ConfigError naming it; lanes changed before revert."""
    path = tmp_path / "bot.toml"
    head = f"redis_url = '{redis_url}'\nredis_namespace = 'cfgedges'\n"
    path.write_text(head + "[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n")
    lanes = Lanes(TomlSource(path))
    a = lanes.get("a")
    lanes.get("b")
    try:
        assert await a.run(lambda: asyncio.sleep(0, "ok")) == "ok"
        path.write_text(
            head + f"[lanes.a]\nmax_concurrent = 3\n[lanes.b]\nmax_concurrent = {2**40}\n"
        )
        with pytest.raises(ConfigError) as e:
            await lanes.reload()
        assert str(e.value) == (
            f"config key 'LANE_B_MAX_CONCURRENT' (lanes.b.max_concurrent in {path}): lane 'b' "
            f"cannot take max_concurrent {2**40}: max_concurrent must be < 2**40 for a "
            f"RedisLane, got {2**40}"
        )
        assert (e.value.key, e.value.value) == ("LANE_B_MAX_CONCURRENT", str(2**40))
        assert (await a.stats()).max_concurrent == 2
        assert lanes.settings("a").max_concurrent == 2
    finally:
        await lanes.aclose()


# -- plain floats, reloads cancelled or failing midway ----------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e16, "10000000000000000.0"), (1.2345678901234568e17, "123456789012345680.0")],
)
def test_a_large_float_reads_as_a_float_not_an_integer(value: float, text: str) -> None:
    """A float written without its exponent keeps a point, so get_int refuses it as it does 2.0."""
    src = MappingSource({"n": value}, name="defaults")
    assert (src.get("N"), get_float(src, "N")) == (text, value)
    with pytest.raises(
        ConfigError,
        match=rf"^config key 'N' \(n in defaults\): expected an integer, got '{re.escape(text)}'$",
    ):
        get_int(src, "N")


def test_a_lane_limit_written_as_a_large_float_is_refused(tmp_path: Path) -> None:
    """max_concurrent = 1e16 in a file is a float, not the integer 10**16."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 1e16\n")
    message = (
        f"config key 'LANE_A_MAX_CONCURRENT' (lanes.a.max_concurrent in {path}): expected an "
        "integer, got '10000000000000000.0'"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Lanes(TomlSource(path))


class Stall:
    """Makes a lane's ``set_max_concurrent`` make its change, then wait (as a RedisLane
    awaits its reply) on the calls given a value in ``stall_on``."""

    def __init__(self, lane: Any, *stall_on: int) -> None:
        self.lane, self.stall_on = lane, set(stall_on)
        self.real = lane.set_max_concurrent
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        lane.set_max_concurrent = self

    async def __call__(self, n: int) -> None:
        await self.real(n)
        if n in self.stall_on:
            self.stall_on.discard(n)
            self.stalled.set()
            await self.release.wait()


async def test_a_reload_cancelled_midway_puts_back_the_lane_it_was_changing(
    tmp_path: Path,
) -> None:
    """Cancelling reload while a lane takes its new limit puts back that lane and earlier ones."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n")
    src = TomlSource(path)
    lanes = Lanes(src)
    a, b = lanes.get("a"), lanes.get("b")
    stall = Stall(b, 5)
    path.write_text("[lanes.a]\nmax_concurrent = 3\n[lanes.b]\nmax_concurrent = 5\n")
    reload = asyncio.create_task(lanes.reload())
    await stall.stalled.wait()
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    assert (a.max_concurrent, b.max_concurrent) == (2, 2)
    assert (src.get("LANE_B_MAX_CONCURRENT"), lanes.settings("b").max_concurrent) == ("2", 2)
    assert await lanes.reload() == ReloadResult(
        applied=(("a", "max_concurrent"), ("b", "max_concurrent"))
    )
    assert (a.max_concurrent, b.max_concurrent) == (3, 5)
    await lanes.aclose()


async def test_a_reload_cancelled_again_while_putting_back_still_puts_back_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second cancellation during the put-back stops one lane's, not the earlier lanes'."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n")
    lanes = Lanes(TomlSource(path))
    a, b, c = lanes.get("a"), lanes.get("b"), lanes.get("c")
    stall = Stall(b, 2)  # b's put-back waits

    async def unreachable(n: int) -> None:
        raise RuntimeError("backend unreachable")

    monkeypatch.setattr(c, "set_max_concurrent", unreachable)
    path.write_text(
        "[lanes.a]\nmax_concurrent = 3\n[lanes.b]\nmax_concurrent = 5\n"
        "[lanes.c]\nmax_concurrent = 4\n"
    )
    reload = asyncio.create_task(lanes.reload())
    await stall.stalled.wait()
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    assert (a.max_concurrent, c.max_concurrent) == (2, 1)
    await lanes.aclose()


async def test_a_failed_reload_puts_back_what_the_lane_itself_was_set_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit and preemption set on a lane at run time are what a failed reload puts back."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n")
    lanes = Lanes(TomlSource(path))
    a, b = lanes.get("a"), lanes.get("b")
    await a.set_max_concurrent(7)
    await a.set_preemption(Preemption(grace=2))

    async def unreachable(n: int) -> None:
        raise RuntimeError("backend unreachable")

    monkeypatch.setattr(b, "set_max_concurrent", unreachable)
    path.write_text(
        "[lanes.a]\nmax_concurrent = 3\npreempt_grace = 1\n[lanes.b]\nmax_concurrent = 5\n"
    )
    with pytest.raises(RuntimeError, match=r"^backend unreachable$"):
        await lanes.reload()
    assert (a.max_concurrent, a.preemption) == (7, Preemption(grace=2))
    await lanes.aclose()


async def test_a_lane_built_during_a_failed_reload_gets_the_kept_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane get() builds while reload awaits ends with the config kept when the reload fails."""
    path = tmp_path / "bot.toml"
    path.write_text(
        "[lanes.a]\nmax_concurrent = 2\n[lanes.b]\nmax_concurrent = 2\n"
        "[lanes.c]\nmax_concurrent = 2\n"
    )
    lanes = Lanes(TomlSource(path))
    a, b = lanes.get("a"), lanes.get("b")
    stall = Stall(a, 3)

    async def unreachable(n: int) -> None:
        raise RuntimeError("backend unreachable")

    monkeypatch.setattr(b, "set_max_concurrent", unreachable)
    path.write_text(
        "[lanes.a]\nmax_concurrent = 3\n[lanes.b]\nmax_concurrent = 5\n"
        "[lanes.c]\nmax_concurrent = 4\npreempt_grace = 1\n"
    )
    reload = asyncio.create_task(lanes.reload())
    await stall.stalled.wait()
    c = lanes.get("c")
    stall.release.set()
    with pytest.raises(RuntimeError, match=r"^backend unreachable$"):
        await reload
    assert (a.max_concurrent, c.max_concurrent, c.preemption) == (2, 2, None)
    monkeypatch.undo()
    assert await lanes.reload() == ReloadResult(
        applied=(
            ("a", "max_concurrent"),
            ("b", "max_concurrent"),
            ("c", "max_concurrent"),
            ("c", "preemption"),
        )
    )
    assert (c.max_concurrent, c.preemption) == (4, Preemption(grace=1))
    await lanes.aclose()


@pytest.mark.redis
async def test_a_failed_reload_puts_back_the_stored_settings_a_redis_lane_adopted(
    redis_url: str, tmp_path: Path
) -> None:
    """A RedisLane that adopted the stored limit and preemption gets them back, not None."""
    from executus.redis import RedisLane

    stored = RedisLane(
        "a", redis_url, 4, preemption=Preemption(min_runtime=10), namespace="cfgedges"
    )
    assert await stored.run(lambda: asyncio.sleep(0, "ok")) == "ok"
    await stored.aclose()
    path = tmp_path / "bot.toml"
    head = f"redis_url = '{redis_url}'\nredis_namespace = 'cfgedges'\n"
    path.write_text(head + "[lanes.b]\nmax_concurrent = 2\n")
    lanes = Lanes(TomlSource(path))
    lanes.get("a")
    lanes.get("b")
    try:
        path.write_text(
            head + "[lanes.a]\nmax_concurrent = 3\npreempt_grace = 1\n"
            f"[lanes.b]\nmax_concurrent = {2**40}\n"
        )
        with pytest.raises(ConfigError, match=r"^config key 'LANE_B_MAX_CONCURRENT' "):
            await lanes.reload()
    finally:
        await lanes.aclose()
    check = RedisLane("a", redis_url, namespace="cfgedges")
    try:
        assert (await check.stats()).max_concurrent == 4
        assert check.preemption == Preemption(min_runtime=10)
    finally:
        await check.aclose()


def test_config_preemption_fields_override_the_codes_one_by_one() -> None:
    """A PREEMPT_* setting replaces that field of the code's Preemption only; the
    fields config leaves unset keep the code's values, and PREEMPT=false disables it."""
    code = Preemption(min_runtime=10, grace=3, requeue=True)
    lanes = Lanes(MappingSource({"LANE_A_PREEMPT_GRACE": "2s", "LANE_B_PREEMPT": "false"}))
    assert lanes.get("a", preemption=code).preemption == Preemption(10, 2, True)
    assert lanes.get("b", preemption=code).preemption is None
    assert lanes.get("c", preemption=code).preemption == code
    bare = Lanes(MappingSource({"LANE_D_PREEMPT_REQUEUE": "yes"}))
    assert bare.get("d").preemption == Preemption(requeue=True)


# -- defaults given to Lanes.get --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eta_window": 0}, ValueError, "eta_window must be >= 1, got 0"),
        ({"eta_window": False}, TypeError, "eta_window must be an int, got False"),
        ({"max_concurrent": 0}, ValueError, "max_concurrent must be >= 1, got 0"),
        ({"max_concurrent": 2.5}, TypeError, "max_concurrent must be an int, got 2.5"),
        ({"policy": "fifo"}, TypeError, "policy must be a QueuePolicy (FIFO(), ...), got 'fifo'"),
        ({"preemption": 30}, TypeError, "preemption must be a Preemption or None, got 30"),
    ],
    ids=["window-zero", "window-false", "limit-zero", "limit-float", "policy", "preemption"],
)
def test_a_default_the_lane_would_refuse_is_refused_even_where_config_overrides_it(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Lanes.get refuses a default the lane's constructor refuses, with its words, also
    when config sets that setting (a reload that unsets it would bring the default in);
    nothing is built."""
    values = {"LANE_A_ETA_WINDOW": "8", "LANE_A_MAX_CONCURRENT": "2", "LANE_A_POLICY": "fifo"}
    for source in (None, MappingSource(values)):
        lanes = Lanes(source)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            lanes.get("a", **kwargs)
        assert "a" not in lanes


# -- numbers too long to read, sources that are not sources -----------------------------------


def test_an_integer_of_too_many_digits_is_a_config_error(tmp_path: Path) -> None:
    """An integer longer than Python converts to text is a ConfigError naming the file (a
    TOML file) or the key and the mapping, not a bare ValueError."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as e:
        TomlSource(path)
    assert str(e.value) == (
        f"cannot read config file {str(path)!r}: Exceeds the limit "
        f"({sys.get_int_max_str_digits()} digits) for integer string conversion: value has "
        "5000 digits; use sys.set_int_max_str_digits() to increase the limit"
    )
    with pytest.raises(ConfigError) as e:
        MappingSource({"lanes": {"a": {"max_concurrent": 10**5000}}}, name="defaults")
    assert str(e.value) == (
        "config key 'LANE_A_MAX_CONCURRENT' (lanes.a.max_concurrent in defaults): expected a "
        f"number of at most {sys.get_int_max_str_digits()} digits, got a longer integer"
    )
    assert e.value.key == "LANE_A_MAX_CONCURRENT"


async def test_a_reload_of_a_file_with_an_integer_of_too_many_digits_changes_nothing(
    tmp_path: Path,
) -> None:
    """Lanes.reload of a file now holding a 5000-digit integer raises ConfigError and
    keeps the lane and the source as they were."""
    path = tmp_path / "bot.toml"
    path.write_text("[lanes.a]\nmax_concurrent = 2\n")
    async with Lanes(TomlSource(path)) as lanes:
        a = lanes.get("a")
        path.write_text("[lanes.a]\nmax_concurrent = " + "9" * 5000 + "\n")
        with pytest.raises(ConfigError, match=r"^cannot read config file "):
            await lanes.reload()
        assert (a.max_concurrent, lanes.settings("a").max_concurrent) == (2, 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Lanes("bot.toml"),  # type: ignore[arg-type]
            "source must be a Source, got the path 'bot.toml': wrap it as TomlSource(path)",
        ),
        (
            lambda: Lanes(Path("bot.toml")),  # type: ignore[arg-type]
            "source must be a Source, got the path PosixPath('bot.toml'): wrap it as "
            "TomlSource(path)",
        ),
        (
            lambda: Lanes({"lanes": {"ollama": {"max_concurrent": 4}}}),  # type: ignore[dict-item]
            "source must be a Source, got a dict: wrap it as MappingSource(mapping)",
        ),
        (
            lambda: Lanes(os.environ),
            "source must be a Source, got os.environ: read it with EnvSource(prefix)",
        ),
        (
            lambda: Lanes(3),  # type: ignore[arg-type]
            "source must be a Source (an object with get(key)), got 3",
        ),
        (
            lambda: ChainSource(EnvSource(), "bot.toml"),  # type: ignore[arg-type]
            "source 1 must be a Source, got the path 'bot.toml': wrap it as TomlSource(path)",
        ),
        (
            lambda: MappingSource([("a", 1)]),  # type: ignore[arg-type]
            "mapping must be a Mapping (a dict), got [('a', 1)]",
        ),
        (
            lambda: MappingSource(None),  # type: ignore[arg-type]
            "mapping must be a Mapping (a dict), got None",
        ),
    ],
    ids=[
        "path-str",
        "path",
        "dict",
        "environ",
        "int",
        "chain-path",
        "mapping-list",
        "mapping-none",
    ],
)
def test_an_argument_that_is_not_a_source_is_refused_saying_what_to_wrap_it_in(
    make: Callable[[], object], message: str
) -> None:
    """Lanes and ChainSource refuse a path or a mapping given as a source (a dict would be
    read as no settings at all), saying which source to wrap it in; MappingSource refuses
    what is not a mapping."""
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        make()


class IntSource:
    """A broken Source whose get returns an int."""

    def get(self, key: str) -> Any:
        return 3

    def __repr__(self) -> str:
        return "IntSource()"


def test_a_source_answering_something_other_than_a_str_is_named() -> None:
    """A Source whose get returns an int is a TypeError naming it and the key, alone or
    in a chain."""
    message = (
        "IntSource() returned a value of type int for config key 'X'; a Source's get returns "
        "a str or None"
    )
    for source in (IntSource(), ChainSource(IntSource())):
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            get_int(source, "X")


# -- environment variables that spell one key -------------------------------------------------


def test_two_environment_variables_spelling_one_key_are_refused_naming_both() -> None:
    """Without the upper-case variable, two spellings of one key are a ConfigError naming
    both (whichever the environment listed first would win); keys() lists the key once."""
    env = {"EXECUTUS_lane_a_max_concurrent": "1", "EXECUTUS_Lane-A-Max-Concurrent": "8"}
    message = (
        "config key 'LANE_A_MAX_CONCURRENT' is set by 2 environment variables spelt "
        "differently ($EXECUTUS_Lane-A-Max-Concurrent, $EXECUTUS_lane_a_max_concurrent); set "
        "it once, as $EXECUTUS_LANE_A_MAX_CONCURRENT"
    )
    for environ in (env, dict(reversed(env.items()))):
        source = EnvSource(environ=environ)
        assert list(source.keys()) == ["LANE_A_MAX_CONCURRENT"]
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            get_int(source, "LANE_A_MAX_CONCURRENT")
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            Lanes(source)
    # The upper-case variable is the key's own: it wins over other spellings.
    exact = EnvSource(environ={**env, "EXECUTUS_LANE_A_MAX_CONCURRENT": "4"})
    assert get_int(exact, "LANE_A_MAX_CONCURRENT") == 4
    assert exact.where("lane_a_max_concurrent") == "$EXECUTUS_LANE_A_MAX_CONCURRENT"


# -- number syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "as_int", "as_float", "as_duration"),
    [
        ("1_000", 1000, 1000.0, 1000.0),
        ("+5", 5, 5.0, 5.0),
        ("1_0.5", None, 10.5, 10.5),
        ("1e3", None, 1000.0, 1000.0),
        ("2.", None, 2.0, 2.0),
        (".5", None, 0.5, 0.5),
        ("-1", -1, -1.0, None),
        ("1__0", None, None, None),
        ("_1", None, None, None),
        ("1_", None, None, None),
        ("1 000", None, None, None),
        ("0x10", None, None, None),
    ],
)
def test_the_helpers_read_numbers_alike(
    text: str, as_int: int | None, as_float: float | None, as_duration: float | None
) -> None:
    """get_int, get_float and get_duration agree on how a number is written: "_" between
    digits, a leading "+"; a point and an exponent for the last two; no space inside
    (a duration is never negative)."""
    source = MappingSource({"N": text})
    for helper, expected in ((get_int, as_int), (get_float, as_float), (get_duration, as_duration)):
        if expected is None:
            with pytest.raises(ConfigError):
                helper(source, "N")
        else:
            assert helper(source, "N") == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h 30m", 5400.0),
        ("30 s", 30.0),
        (" 1m  30s ", 90.0),
        ("1_500ms", 1.5),
        ("+1h", 3600.0),
        ("1e3ms", 1.0),
        ("1M30S", 90.0),
    ],
)
def test_a_duration_takes_spaces_between_its_parts(text: str, seconds: float) -> None:
    """Whitespace may surround a duration, its units and its parts."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 m s", "1 5", "3 0 s", "1 0 0 0", "1 h30 m s", "m 5", "+ 5"])
def test_a_duration_takes_no_space_inside_a_number_or_a_unit(text: str) -> None:
    """A space inside a number or a unit (or a unit without a number) is refused, as
    get_int and get_float refuse "1 5", instead of being deleted."""
    with pytest.raises(ValueError, match=f"^{re.escape(f'not a duration: {text!r}')}$"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [(t, True) for t in ("1", "true", "YES", "On", "y", "T")]
    + [(f, False) for f in ("0", "false", "NO", "Off", "n", "F")],
)
def test_get_bool_reads_its_documented_spellings(text: str, value: bool) -> None:
    """get_bool reads 1/true/yes/on/y/t and 0/false/no/off/n/f, in any case."""
    assert get_bool(MappingSource({"B": text}), "B") is value
