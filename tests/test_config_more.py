"""executus.config: settings that only make sense together, and numbers in ASCII only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from executus.config import (
    ChainSource,
    ConfigError,
    EnvSource,
    Lanes,
    MappingSource,
    TomlSource,
    get_duration,
    get_float,
    get_int,
    parse_duration,
)


def env(**values: str) -> EnvSource:
    """An EnvSource over the given EXECUTUS_* variables."""
    return EnvSource(environ={f"EXECUTUS_{k}": v for k, v in values.items()})


# -- REDIS_NAMESPACE without REDIS_URL ------------------------------------------------------


def test_redis_namespace_without_a_url_is_refused_naming_its_variable() -> None:
    """REDIS_NAMESPACE set without REDIS_URL is a ConfigError naming variable and value."""
    with pytest.raises(ConfigError) as e:
        Lanes(env(REDIS_NAMESPACE="bots"))
    assert str(e.value) == (
        "config key 'REDIS_NAMESPACE' ($EXECUTUS_REDIS_NAMESPACE) applies only to Redis "
        "lanes, and REDIS_URL is not set (got 'bots')"
    )
    assert (e.value.key, e.value.value) == ("REDIS_NAMESPACE", "bots")


def test_redis_namespace_without_a_url_names_its_path_in_the_file(tmp_path: Path) -> None:
    """A redis_namespace in a TOML file without redis_url names the file."""
    path = tmp_path / "bot.toml"
    path.write_text('redis_namespace = "bots"\n')
    with pytest.raises(ConfigError) as e:
        Lanes(ChainSource(env(), TomlSource(path)))
    assert str(e.value) == (
        f"config key 'REDIS_NAMESPACE' (redis_namespace in {path}) applies only to Redis "
        "lanes, and REDIS_URL is not set (got 'bots')"
    )


def test_a_blank_redis_namespace_without_a_url_is_unset() -> None:
    """A blank REDIS_NAMESPACE counts as unset: in-process lanes, no error."""
    assert Lanes(env(REDIS_NAMESPACE="  ")).redis_url is None


async def test_reload_refuses_a_namespace_left_without_its_url(tmp_path: Path) -> None:
    """Removing redis_url but keeping redis_namespace is refused on reload; nothing changes."""
    pytest.importorskip("executus.redis", reason="executus.redis is not available")
    path = tmp_path / "bot.toml"
    path.write_text('redis_url = "redis://127.0.0.1:1"\nredis_namespace = "bots"\n')
    lanes = Lanes(TomlSource(path))
    path.write_text('redis_namespace = "bots"\n')
    with pytest.raises(ConfigError, match=r"^config key 'REDIS_NAMESPACE' \(redis_namespace"):
        await lanes.reload()
    assert lanes.redis_url == "redis://127.0.0.1:1"


# -- lanes that is not a table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(3, "3"), ("gpu", "'gpu'"), (["gpu"], "['gpu']")],
    ids=["int", "str", "array"],
)
def test_lanes_that_is_not_a_table_is_refused_in_a_mapping(value: object, shown: str) -> None:
    """A top-level ``lanes`` that is not a table is a ConfigError naming the mapping."""
    with pytest.raises(ConfigError) as e:
        MappingSource({"lanes": value}, name="defaults")
    assert str(e.value) == (
        "config key 'LANES' (lanes in defaults) must be a table of lanes "
        f"([lanes.<name>] tables), got {shown}"
    )
    assert e.value.key == "LANES"


def test_lanes_that_is_not_a_table_is_refused_in_a_toml_file(tmp_path: Path) -> None:
    """``lanes = 3`` in a TOML file is a ConfigError naming the file."""
    path = tmp_path / "bot.toml"
    path.write_text("lanes = 3\n")
    with pytest.raises(ConfigError) as e:
        TomlSource(path)
    assert str(e.value) == (
        f"config key 'LANES' (lanes in {path}) must be a table of lanes "
        "([lanes.<name>] tables), got 3"
    )


def test_an_empty_lanes_table_and_a_nested_lanes_key_are_fine() -> None:
    """``lanes = {}`` configures no lane; ``bot.lanes = 3`` is an ordinary key."""
    assert Lanes(MappingSource({"lanes": {}})).configured() == []
    assert MappingSource({"bot": {"lanes": 3}}).get("BOT_LANES") == "3"


# -- ASCII numbers ----------------------------------------------------------------------------

_EXPECTED = {
    "get_int": "an integer",
    "get_float": "a finite number",
    "get_duration": 'a duration such as "1500ms", "30s", "5m", "1h" or seconds',
}


@pytest.mark.parametrize("helper", [get_int, get_float, get_duration])
@pytest.mark.parametrize(
    "text",
    ["\uff15", "\u0663", "1\u0660", "\u0663.5", "\uff15s", "1m\u0663s", "\uff11_000"],
    ids=["fullwidth", "arabic-indic", "mixed", "float", "unit", "parts", "underscore"],
)
def test_numbers_in_other_scripts_are_refused(
    helper: Callable[[MappingSource, str], object], text: str
) -> None:
    """Digits outside ASCII (fullwidth, Arabic-Indic) are not numbers: the usual ConfigError."""
    with pytest.raises(ConfigError) as e:
        helper(MappingSource({"k": text}), "K")
    expected = _EXPECTED[helper.__name__]
    assert str(e.value) == f"config key 'K' (k in mapping): expected {expected}, got {text!r}"


@pytest.mark.parametrize("text", ["\uff15", "\u0663s", "1h\uff13m", "\u0663.5"])
def test_parse_duration_refuses_digits_outside_ascii(text: str) -> None:
    """parse_duration reads ASCII digits only."""
    with pytest.raises(ValueError, match=r"^not a duration: "):
        parse_duration(text)


def test_lane_weights_in_other_scripts_are_refused() -> None:
    """A fair-share weight written with non-ASCII digits is refused; names may be any text."""
    ok = Lanes(env(LANE_A_POLICY="fair_share", LANE_A_WEIGHTS="\u00e9lodie=2"))
    assert ok.settings("a").weights == (("\u00e9lodie", 2.0),)
    with pytest.raises(ConfigError) as e:
        Lanes(env(LANE_A_POLICY="fair_share", LANE_A_WEIGHTS="alice=\uff13"))
    assert str(e.value) == (
        "config key 'LANE_A_WEIGHTS' ($EXECUTUS_LANE_A_WEIGHTS): expected comma-separated "
        "name=weight pairs with weights > 0, such as \"alice=3,bob=1\", got 'alice=\uff13'"
    )


def test_ascii_numbers_still_read() -> None:
    """ASCII integers, floats and durations read as before, surrounding blanks stripped."""
    src = MappingSource({"i": " 1_000 ", "f": "-1.5e-3", "d": "1h30m", "p": "2.5"})
    assert get_int(src, "I") == 1000
    assert get_float(src, "F") == -0.0015
    assert get_duration(src, "D") == 5400.0
    assert get_duration(src, "P") == 2.5
