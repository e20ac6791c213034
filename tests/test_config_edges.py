"""Edge cases of executus.config: sources without keys(), odd spellings, extreme values."""

from __future__ import annotations

from pathlib import Path

import pytest

from executus.config import (
    ChainSource,
    ConfigError,
    EnvSource,
    Lanes,
    MappingSource,
    ReloadResult,
    TomlSource,
    get_duration,
    get_int,
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
