"""Configuration: where a harness reads its settings, and lanes built from them.

A ``Source`` is anything with ``get(key) -> str | None``. Keys are flat,
case-insensitive names such as ``REDIS_URL`` or ``LANE_OLLAMA_MAX_CONCURRENT``; every
source answers the same key, so a chain of sources can layer an environment over a
file over built-in values.

Sources provided here:

- ``EnvSource(prefix="EXECUTUS_")``: the process environment (the default);
  ``LANE_OLLAMA_POLICY`` is read from ``$EXECUTUS_LANE_OLLAMA_POLICY``.
- ``MappingSource(mapping)``: a flat (``{"LANE_OLLAMA_POLICY": "fifo"}``) or nested
  (``{"lanes": {"ollama": {"policy": "fifo"}}}``) mapping.
- ``TomlSource(path)``: a TOML file, read with the standard ``tomllib``. Tables flatten
  into keys (``[lanes.ollama] policy = "fifo"`` is ``LANE_OLLAMA_POLICY``).
- ``ChainSource(*sources)``: the first source that has the key wins.

Typed helpers (``get_str``, ``get_int``, ``get_float``, ``get_bool``,
``get_duration``) accept a ``None`` source, return the default when the key is absent
and raise ``ConfigError`` naming the key, where it is set and the bad value when it is
malformed. A number in a mapping or TOML file reads as its string would (``lease = 1.5``
is ``"1.5"``: 1.5 seconds); an array is a value only ``get_str`` reads (``"a,b"``).

``Lanes`` builds lanes by name from a source and reloads their limits live::

    lanes = Lanes(ChainSource(EnvSource(), TomlSource("bot.toml")))
    ollama = lanes.get("ollama")             # Lane, or RedisLane when REDIS_URL is set
    ...
    await lanes.reload()                     # apply edited limits to the live lanes
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    NamedTuple,
    Protocol,
    TypeVar,
    overload,
    runtime_checkable,
)

from ._base import STORED_MAX, is_utf8
from ._redisurl import REDIS_SCHEMES as _REDIS_SCHEMES
from ._redisurl import check_redis_url as _check_redis_url
from ._redisurl import masked_url as _masked_url

if TYPE_CHECKING:
    from ._clock import Clock
    from ._policies import Preemption, QueuePolicy

__all__ = [
    "ChainSource",
    "ConfigError",
    "EnvSource",
    "LaneSettings",
    "Lanes",
    "ListableSource",
    "MappingSource",
    "ReloadResult",
    "Source",
    "TomlSource",
    "get_bool",
    "get_duration",
    "get_float",
    "get_int",
    "get_str",
    "lane_token",
    "normalize_key",
    "parse_duration",
]

logger = logging.getLogger("executus.config")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is malformed, unknown or cannot be applied.

    Attributes:
        key: the flat config key concerned (e.g. ``"LANE_OLLAMA_MAX_CONCURRENT"``), or
            None for an error about the configuration as a whole.
        value: the offending raw value, or None.
    """

    def __init__(self, message: str, *, key: str | None = None, value: str | None = None) -> None:
        self.key = key
        self.value = value
        super().__init__(message)


# -- sources ------------------------------------------------------------------------------


@runtime_checkable
class Source(Protocol):
    """Where settings come from: ``get(key)`` returns the raw string or None if absent.

    Keys are flat and case-insensitive; the helpers and ``Lanes`` always ask for the
    normalised spelling (``normalize_key``: ``"LANE_OLLAMA_POLICY"``). A source may also
    offer ``keys()`` (see ``ListableSource``), which lets ``Lanes`` reject unknown lane
    settings at load (a source without it is asked for each lane's settings by name, when
    the lane is first used), and ``where(key)``, a description of where a key is read from
    (``"$EXECUTUS_REDIS_URL"``), which error messages quote. A ``get`` that returns
    anything but a str or None is a ``TypeError`` naming the source and the key.
    """

    def get(self, key: str) -> str | None:
        """The raw value of ``key``, or None when the source does not set it."""
        ...


@runtime_checkable
class ListableSource(Source, Protocol):
    """A source that can list the keys it sets (every source in this module can)."""

    def keys(self) -> Iterable[str]:
        """The normalised (upper-case) keys this source sets."""
        ...


# Upper case for ASCII letters only: str.upper() turns some letters into ASCII ones
# ("ß" into "SS", "ﬁ" into "FI"), which would let a key no lane name reads pass for one.
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalize_key(key: str) -> str:
    """The canonical spelling of a config key: ASCII letters in upper case, ``-`` and
    ``.`` as ``_`` (other characters are kept as they are).

    Example::

        normalize_key("lanes.image-gen.policy")   # "LANES_IMAGE_GEN_POLICY"
    """
    return key.translate(_ASCII_UPPER).replace("-", "_").replace(".", "_")


def _check_source(source: object, what: str) -> None:
    """Refuse, as ``what``, an object that is not a ``Source``: a path or a mapping (the
    usual slips, which would be read as no settings or fail at first use) is named
    with the source to wrap it in."""
    if isinstance(source, str | bytes | os.PathLike):
        raise TypeError(
            f"{what} must be a Source, got the path {source!r}: wrap it as TomlSource(path)"
        )
    if source is os.environ:
        raise TypeError(f"{what} must be a Source, got os.environ: read it with EnvSource(prefix)")
    if isinstance(source, Mapping):
        # A mapping has a get(), but of raw values under exact keys: a nested dict
        # would be read as no settings at all.
        raise TypeError(
            f"{what} must be a Source, got a {type(source).__name__}: wrap it as "
            "MappingSource(mapping)"
        )
    if not callable(getattr(source, "get", None)):
        raise TypeError(f"{what} must be a Source (an object with get(key)), got {source!r}")


def _get(source: Source, key: str) -> str | None:
    """``source.get(key)``, refusing an answer that is neither a str nor None."""
    value = source.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(
            f"{source!r} returned a value of type {type(value).__name__} for config key "
            f"{key!r}; a Source's get returns a str or None"
        )
    return value


def _where(source: Source, key: str) -> str:
    where = getattr(source, "where", None)
    if callable(where):
        return str(where(key))
    return repr(key)


class EnvSource:
    """Settings from environment variables: key ``K`` is the variable ``prefix + K``.

    The part after the prefix may be spelt in any case, with ``-`` or ``.`` for ``_``
    (``$EXECUTUS_lane-a-policy``). The upper-case variable wins over other spellings;
    without it, two other spellings of one key are a ``ConfigError`` (which one was
    meant is not known).

    Args:
        prefix: prepended to every key (``"EXECUTUS_"``: ``REDIS_URL`` is read from
            ``$EXECUTUS_REDIS_URL``). May be empty.
        environ: the variables to read (default: ``os.environ``, read live on each call).

    Example::

        src = EnvSource(prefix="MYBOT_")
        workers = get_int(src, "WORKERS", 4)     # $MYBOT_WORKERS, or 4
    """

    __slots__ = ("_environ", "prefix")

    def __init__(self, prefix: str = "EXECUTUS_", *, environ: Mapping[str, str] | None = None):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        self.prefix = prefix
        self._environ = os.environ if environ is None else environ

    def _variables(self, key: str) -> list[str]:
        """The variables that set ``key``: ``prefix + normalize_key(key)`` alone if it is
        set, else every other spelling of it that ``keys()`` lists
        (``EXECUTUS_lane_a_policy``), sorted."""
        exact = self.prefix + normalize_key(key)
        if exact in self._environ:
            return [exact]
        n, wanted = len(self.prefix), normalize_key(key)
        return sorted(
            name
            for name in list(self._environ)
            if name.startswith(self.prefix) and normalize_key(name[n:]) == wanted
        )

    def get(self, key: str) -> str | None:
        """The variable ``prefix + normalize_key(key)`` (or, if that is unset, the one
        whose suffix normalises to the same key), or None if none is set.

        Raises:
            ConfigError: that variable is unset and several others spell ``key``
                (``EXECUTUS_lane_a_policy`` and ``EXECUTUS_Lane-A-Policy``): which one
                was meant is not known.
        """
        names = self._variables(key)
        if len(names) > 1:
            nk = normalize_key(key)
            raise ConfigError(
                f"config key {nk!r} is set by {len(names)} environment variables spelt "
                f"differently ({', '.join('$' + name for name in names)}); set it once, "
                f"as ${self.prefix}{nk}",
                key=nk,
            )
        return self._environ.get(names[0]) if names else None

    def keys(self) -> Iterator[str]:
        """The keys set by variables starting with the prefix (prefix removed), each once."""
        n = len(self.prefix)
        seen: set[str] = set()
        for name in list(self._environ):
            if name.startswith(self.prefix) and len(name) > n:
                key = normalize_key(name[n:])
                if key not in seen:
                    seen.add(key)
                    yield key

    def where(self, key: str) -> str:
        """The variable ``key`` is read from, e.g. ``"$EXECUTUS_REDIS_URL"`` (all of them,
        when several spell it)."""
        names = self._variables(key) or [self.prefix + normalize_key(key)]
        return " or ".join(f"${name}" for name in names)

    def __repr__(self) -> str:
        return f"EnvSource(prefix={self.prefix!r})"


def _render(value: object, path: str, key: str, source_name: str) -> str:
    """A TOML or mapping value as the string a ``Source`` returns.

    ``path`` (the dotted path), ``key`` (the flat key) and ``source_name`` are how errors
    name the value.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return repr(value)
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            raise ConfigError(
                f"config key {key!r} ({path} in {source_name}): expected a number of at most "
                f"{sys.get_int_max_str_digits()} digits, got a longer integer",
                key=key,
            ) from None
    if isinstance(value, float):
        return _plain_float(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(_render(v, path, key, source_name) for v in value)
    if isinstance(value, Mapping):
        # A table read as one value ("weights"): "alice=3,bob=1".
        parts = []
        for k, v in value.items():
            if isinstance(v, Mapping | list | tuple):
                raise ConfigError(
                    f"config key {key!r} ({path} in {source_name}): a table value must map "
                    f"names to scalars, got {k!r} = {v!r}",
                    key=key,
                )
            parts.append(f"{k}={_render(v, path, key, source_name)}")
        return ",".join(parts)
    # The type only: the value may be a secret (bytes holding a URL with its password).
    raise ConfigError(
        f"config key {key!r} ({path} in {source_name}): unsupported value type "
        f"{type(value).__name__}; a value is a str, number, bool, date or time, array or "
        "table",
        key=key,
    )


def _plain_float(value: float) -> str:
    """A float as decimal digits without an exponent (``1e-05`` as ``"0.00001"``), so it
    reads as the same number wherever a number is accepted, durations included.

    The digits are those of ``repr`` (the shortest that round-trip), so the text parses
    back to exactly ``value``. Infinities and NaN keep their ``repr`` (every helper
    refuses them). A float keeps a decimal point (``1e16`` as ``"10000000000000000.0"``),
    as ``repr`` writes ``2.0``: an integer setting refuses it.
    """
    text = repr(value)
    if "e" not in text or not math.isfinite(value):
        return text
    plain = format(Decimal(text), "f")
    return plain if "." in plain else f"{plain}.0"


# Inside a lane's table, these sub-tables are one value each, not more keys.
_TABLE_VALUES = frozenset({"WEIGHTS"})


class _Flat(NamedTuple):
    """One flattened setting of a mapping or TOML file."""

    value: str  # as ``get`` returns it
    path: str  # the dotted path it was written at (``lanes.ollama.policy``)
    array: list[Any] | None  # the array it was written as, if it was one


def _flatten(data: Mapping[Any, Any], source_name: str = "mapping") -> dict[str, _Flat]:
    """Flatten nested tables into ``{KEY: _Flat(value, dotted path, array)}``.

    ``lanes.<name>.<field>`` becomes ``LANE_<NAME>_<FIELD>`` (one variable names one
    lane, hence the singular), every other ``a.b.c`` becomes ``A_B_C``. Two paths that
    flatten to one key are an error, and so is an unknown field in a lane's table: once
    flattened, ``[lanes.x_preempt] grace`` would read as lane ``x``'s ``PREEMPT_GRACE``.
    A table given to a lane setting that takes one value (``lease = {s = 1}``) is an
    error too, and so is a top-level ``lanes`` that is not a table (``lanes = 3``).
    ``source_name`` is how errors refer to the source.
    """
    out: dict[str, _Flat] = {}

    def put(flat: str, value: object, path: str) -> None:
        if flat in out:
            raise ConfigError(
                f"config keys {out[flat].path!r} and {path!r} both mean {flat!r} in {source_name}",
                key=flat,
            )
        array = list(value) if isinstance(value, list | tuple) else None
        out[flat] = _Flat(_render(value, path, flat, source_name), path, array)

    def walk(
        table: Mapping[Any, Any], flat: str, path: str, depth_in_lane: int, lane: str = ""
    ) -> None:
        for k, v in table.items():
            if not isinstance(k, str):
                raise ConfigError(
                    f"config keys must be str, got {k!r} in {path or 'root'!r} of {source_name}"
                )
            sub_path = f"{path}.{k}" if path else k
            if not flat and normalize_key(k) == "LANES":
                if not isinstance(v, Mapping):
                    raise ConfigError(
                        f"config key 'LANES' ({sub_path} in {source_name}) must be a table of "
                        f"lanes ([lanes.<name>] tables), got {v!r}",
                        key="LANES",
                    )
                for name, lane_table in v.items():
                    lane_path = f"{sub_path}.{name}"
                    if name == "":  # [lanes.""]: LANE__* names no lane
                        raise ConfigError(
                            f"config key 'LANES' ({sub_path}.\"\" in {source_name}): a lane "
                            "name must be a non-empty str, got ''",
                            key="LANES",
                        )
                    # Spelt as Lanes.get(name) reads it: "llama3:8b" is LANE_LLAMA3_8B_*.
                    lane_flat = f"LANE_{lane_token(str(name))}"
                    if not isinstance(lane_table, Mapping):
                        raise ConfigError(
                            f"config key {lane_flat!r} ({lane_path} in {source_name}) must be "
                            f"a table of lane settings, got {lane_table!r}",
                            key=lane_flat,
                        )
                    walk(lane_table, lane_flat, lane_path, 1, lane_flat)
                continue
            sub_flat = f"{flat}_{normalize_key(k)}" if flat else normalize_key(k)
            if isinstance(v, Mapping) and not (
                depth_in_lane == 1 and normalize_key(k) in _TABLE_VALUES
            ):
                if lane and sub_flat[len(lane) + 1 :] in _SINGLE_VALUED:
                    raise ConfigError(
                        f"config key {sub_flat!r} ({sub_path} in {source_name}): expected a "
                        f"single value, got a table {dict(v)!r}",
                        key=sub_flat,
                    )
                walk(v, sub_flat, sub_path, depth_in_lane + 1 if depth_in_lane else 0, lane)
            else:
                if lane and sub_flat[len(lane) + 1 :] not in _LANE_FIELDS:
                    raise ConfigError(
                        f"unknown lane setting {sub_flat!r} ({sub_path} in {source_name}); a lane "
                        f"setting is LANE_<NAME>_<SETTING> with SETTING one of "
                        f"{', '.join(_LANE_FIELDS)}",
                        key=sub_flat,
                    )
                put(sub_flat, v, sub_path)

    walk(data, "", "", 0)
    return out


class MappingSource:
    """Settings from a mapping, flat or nested.

    Flat keys are normalised (``"lane_ollama_policy"`` is ``LANE_OLLAMA_POLICY``);
    nested tables flatten as in ``TomlSource``. Non-string values are rendered as
    strings (``True`` as ``"true"``, ``3`` as ``"3"``, ``1e-05`` as ``"0.00001"``, lists
    comma-separated). A list is one value for ``get_str`` only: the other helpers and
    lane settings refuse it (``[2]`` is not the number 2).

    Args:
        mapping: the settings.
        name: how error messages refer to this source (default ``"mapping"``).

    Raises:
        TypeError: ``mapping`` is not a ``Mapping``.
        ConfigError: two keys mean the same normalised key, a key is not a str, a value
            has a type no config file has (named by its type only: the value may be a
            secret) or is an integer too long to convert to text, ``lanes`` is not a
            table, a lane's table has an empty name or holds an unknown setting or a
            table where a setting takes one value. The message names the source.

    Example::

        src = MappingSource({"lanes": {"ollama": {"max_concurrent": 2}}})
        get_int(src, "LANE_OLLAMA_MAX_CONCURRENT", 1)   # 2
    """

    __slots__ = ("_data", "name")

    def __init__(self, mapping: Mapping[str, object], *, name: str = "mapping") -> None:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping (a dict), got {mapping!r}")
        self.name = name
        self._data = _flatten(mapping, name)

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        hit = self._data.get(normalize_key(key))
        return None if hit is None else hit.value

    def keys(self) -> Iterator[str]:
        """Every key this source sets."""
        return iter(list(self._data))

    def where(self, key: str) -> str:
        """Where ``key`` is set, e.g. ``"lanes.ollama.policy in mapping"``."""
        hit = self._data.get(normalize_key(key))
        path = normalize_key(key) if hit is None else hit.path
        return f"{path} in {self.name}"

    def __repr__(self) -> str:
        return f"MappingSource(<{len(self._data)} keys>, name={self.name!r})"


class TomlSource(MappingSource):
    """Settings from a TOML file, read once at construction (``reload()`` rereads it).

    Tables flatten into keys joined by ``_``; ``[lanes.<name>]`` holds the settings of
    lane ``<name>`` (``LANE_<NAME>_*``), where a ``weights`` table is one value::

        redis_url = "redis://10.0.0.5:6379/0"

        [lanes.ollama]
        max_concurrent = 2
        policy = "fair_share"
        weights = { alice = 3, bob = 1 }
        preempt_min_runtime = "30s"

    Args:
        path: the TOML file.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML, holds an integer too
            long for Python to convert, or holds a setting ``MappingSource`` refuses.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__(self._load(), name=str(self.path))

    def _load(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as f:
                return tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(self.path)!r}: {e}") from e
        except UnicodeDecodeError as e:  # TOML is UTF-8 text; tomllib decodes it as such
            raise ConfigError(
                f"config file {str(self.path)!r} is not valid TOML: it is not UTF-8 text ({e})"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(self.path)!r} is not valid TOML: {e}") from e
        except ValueError as e:  # an integer of more digits than Python converts
            raise ConfigError(f"cannot read config file {str(self.path)!r}: {e}") from e

    def _read(self) -> dict[str, _Flat]:
        """The file's settings, read and flattened now (nothing is changed)."""
        return _flatten(self._load(), self.name)

    def reload(self) -> None:
        """Read the file again. On error nothing changes.

        Raises:
            ConfigError: the file cannot be read or parsed.
        """
        self._data = self._read()

    def __repr__(self) -> str:
        return f"TomlSource({str(self.path)!r})"


class ChainSource:
    """Several sources in order: the first one that sets a key wins.

    Args:
        *sources: the sources, highest precedence first. ``None`` entries are skipped,
            and so is a blank value (``FOO=`` counts as unset).

    Raises:
        TypeError: an entry is not a ``Source`` (a path or a mapping: wrap it in
            ``TomlSource`` or ``MappingSource``).

    Example::

        src = ChainSource(EnvSource(), TomlSource("bot.toml"), MappingSource(DEFAULTS))
    """

    __slots__ = ("sources",)

    def __init__(self, *sources: Source | None) -> None:
        for i, source in enumerate(sources):
            if source is not None:
                _check_source(source, f"source {i}")
        self.sources: tuple[Source, ...] = tuple(s for s in sources if s is not None)

    def get(self, key: str) -> str | None:
        """The value from the first source that sets ``key``, or None.

        A blank value counts as unset (as in the helpers), so the next source is asked.
        """
        for source in self.sources:
            value = _get(source, key)
            if value is not None and value.strip():
                return value
        return None

    def keys(self) -> Iterator[str]:
        """The keys set by any listable source (each once)."""
        seen: set[str] = set()
        for source in self.sources:
            keys = getattr(source, "keys", None)
            if not callable(keys):
                continue
            for k in keys():
                nk = normalize_key(k)
                if nk not in seen:
                    seen.add(nk)
                    yield nk

    def _winner(self, key: str) -> Source | None:
        """The source whose value of ``key`` wins (as in ``get``), or None."""
        for source in self.sources:
            value = _get(source, key)
            if value is not None and value.strip():
                return source
        return None

    def where(self, key: str) -> str:
        """Where the winning value of ``key`` comes from; when no source sets it to a
        non-blank value, where the first source that has it (blank) reads it."""
        source = self._winner(key)
        if source is None:
            source = next((s for s in self.sources if s.get(key) is not None), None)
        return repr(normalize_key(key)) if source is None else _where(source, key)

    def reload(self) -> None:
        """Reload every source that can reload (e.g. ``TomlSource``), all or nothing.

        Every ``TomlSource`` in the chain (in nested chains too) rereads its file first;
        only when all of them parsed do they take their new settings, so a broken file
        leaves every file's old settings in force. Other sources with a ``reload()``
        method are reloaded after the files have been read; they cannot be undone.

        Raises:
            ConfigError: a file cannot be read or parsed (no file's settings changed).
        """
        _reload_source(self)

    def __repr__(self) -> str:
        return f"ChainSource({', '.join(map(repr, self.sources))})"


def _reload_source(source: object) -> Callable[[], None]:
    """Reload ``source`` all or nothing and return a function that puts the files' old
    settings back.

    Files (``TomlSource``, alone or in chains) are read first and swapped in together
    once every one of them parsed; other sources with a ``reload()`` (which cannot be
    undone) are reloaded in between, so one that fails also leaves the files unchanged.
    """
    files: list[TomlSource] = []
    others: list[Callable[[], object]] = []

    def collect(s: object) -> None:
        # A subclass that overrides reload() keeps its own (it is called as is).
        if isinstance(s, ChainSource) and type(s).reload is ChainSource.reload:
            for member in s.sources:
                collect(member)
        elif isinstance(s, TomlSource) and type(s).reload is TomlSource.reload:
            files.append(s)
        else:
            reload = getattr(s, "reload", None)
            if callable(reload):
                others.append(reload)

    collect(source)
    fresh = [(f, f._read()) for f in files]
    for reload in others:
        reload()
    old = [(f, f._data) for f in files]
    for f, data in fresh:
        f._data = data

    def undo() -> None:
        for f, data in reversed(old):
            f._data = data

    return undo


# -- typed helpers --------------------------------------------------------------------------


def _raw(source: Source | None, key: str) -> str | None:
    """The stripped value, or None when absent or blank (``FOO=`` means unset)."""
    if source is None:
        return None
    value = _get(source, normalize_key(key))
    if value is None:
        return None
    value = value.strip()
    return value or None


def _bad(source: Source, key: str, value: str, expected: str) -> ConfigError:
    key = normalize_key(key)
    return ConfigError(
        f"config key {key!r} ({_where(source, key)}): expected {expected}, got {value!r}",
        key=key,
        value=value,
    )


def _array(source: Source, key: str) -> list[Any] | None:
    """The array a mapping or TOML file wrote the winning value of ``key`` as, or None
    (a list renders as ``"a,b"``, which ``[2]`` must not pass for the number 2)."""
    if isinstance(source, ChainSource):
        winner = source._winner(key)
        return None if winner is None else _array(winner, key)
    if isinstance(source, MappingSource):
        hit = source._data.get(normalize_key(key))
        return None if hit is None else hit.array
    return None


def _single(source: Source | None, key: str, expected: str) -> str | None:
    """``_raw``, refusing a value written as an array: the helpers other than
    ``get_str`` read one value."""
    value = _raw(source, key)
    if value is None:
        return None
    assert source is not None
    array = _array(source, normalize_key(key))
    if array is not None:
        key = normalize_key(key)
        raise ConfigError(
            f"config key {key!r} ({_where(source, key)}): expected {expected}, "
            f"got an array {array!r}",
            key=key,
            value=value,
        )
    return value


def _parsed(
    source: Source | None, key: str, default: T | None, parse: Callable[[str], T], expected: str
) -> T | None:
    """The setting ``key`` through ``parse``, or ``default`` when absent or blank.

    ``parse`` raises ``ValueError`` for a value it refuses; the ``ConfigError`` then
    says ``expected``.
    """
    value = _single(source, key, expected)
    if value is None:
        return default
    assert source is not None
    try:
        return parse(value)
    except ValueError:
        raise _bad(source, key, value, expected) from None


@overload
def get_str(source: Source | None, key: str, default: str) -> str: ...
@overload
def get_str(source: Source | None, key: str, default: None = None) -> str | None: ...
def get_str(source: Source | None, key: str, default: str | None = None) -> str | None:
    """A string setting, stripped of surrounding whitespace.

    Args:
        source: where to read it; None reads nothing (the default is returned).
        key: the config key.
        default: returned when the key is absent or blank.

    Returns:
        The value or the default.
    """
    value = _raw(source, key)
    return default if value is None else value


@overload
def get_int(source: Source | None, key: str, default: int) -> int: ...
@overload
def get_int(source: Source | None, key: str, default: None = None) -> int | None: ...
def get_int(source: Source | None, key: str, default: int | None = None) -> int | None:
    """An integer setting: ASCII digits with an optional sign and ``_`` between digits
    (``"8"``, ``"-1"``, ``"+5"``, ``"1_000"``).

    Args:
        source: where to read it; None reads nothing (the default is returned).
        key: the config key.
        default: returned when the key is absent or blank.

    Returns:
        The value or the default.

    Raises:
        ConfigError: the value is not an integer.
    """
    return _parsed(source, key, default, _int, "an integer")


@overload
def get_float(source: Source | None, key: str, default: float) -> float: ...
@overload
def get_float(source: Source | None, key: str, default: None = None) -> float | None: ...
def get_float(source: Source | None, key: str, default: float | None = None) -> float | None:
    """A finite float setting: an integer as ``get_int`` reads it, with a decimal point
    and an exponent if wanted (``"0.5"``, ``".5"``, ``"3"``, ``"1_000.5"``, ``"1e-3"``).

    Args:
        source: where to read it; None reads nothing (the default is returned).
        key: the config key.
        default: returned when the key is absent or blank.

    Returns:
        The value or the default.

    Raises:
        ConfigError: the value is not a finite number.
    """
    return _parsed(source, key, default, _finite_float, "a finite number")


_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


# int() and float() also read digits of other scripts (U+FF15, U+0663); a setting is ASCII.
def _int(text: str) -> int:
    if not text.isascii():
        raise ValueError(text)
    return int(text, 10)


def _finite_float(text: str) -> float:
    if not text.isascii():
        raise ValueError(text)
    result = float(text)
    if not math.isfinite(result):
        raise ValueError(text)
    return result


@overload
def get_bool(source: Source | None, key: str, default: bool) -> bool: ...
@overload
def get_bool(source: Source | None, key: str, default: None = None) -> bool | None: ...
def get_bool(source: Source | None, key: str, default: bool | None = None) -> bool | None:
    """A boolean setting: ``1/true/yes/on/y/t`` or ``0/false/no/off/n/f`` (any case).

    Args:
        source: where to read it; None reads nothing (the default is returned).
        key: the config key.
        default: returned when the key is absent or blank.

    Returns:
        The value or the default.

    Raises:
        ConfigError: the value is none of the accepted spellings.
    """
    return _parsed(source, key, default, _bool, "a boolean (true/false, yes/no, on/off, 1/0)")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A number without its sign as get_float reads it: Python's syntax in ASCII digits (a
# str pattern's \d also matches other scripts' digits), "_" between two digits, a
# decimal point, an exponent: "1_000", "0.5", ".5", "2.", "1e-3".
_DIGITS = r"\d(?:_?\d)*"
_NUMBER = rf"(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:e[+-]?{_DIGITS})?"
_PART = rf"({_NUMBER})\s*(ms|s|m|h|d)"
_PLAIN_NUMBER = re.compile(_NUMBER, re.ASCII)
# Whitespace around a unit and between parts ("1h 30m", "30 s"), never inside a number
# or a unit ("1 5", "5 m s").
_DURATION = re.compile(rf"{_PART}(?:\s*{_PART})*", re.ASCII)
_DURATION_PART = re.compile(_PART, re.ASCII)


def parse_duration(text: str) -> float:
    """Parse a duration into seconds: ``"1500ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"2.5"``.

    A plain number is seconds. Units: ``ms``, ``s``, ``m``, ``h``, ``d`` (any case);
    several parts add up (``"1m30s"`` and ``"1m 30s"`` are 90). Numbers are written as
    for ``get_float``: ASCII digits, ``_`` between digits (``"1_000ms"``), a decimal
    point, an exponent (``"1e3"``), a leading ``+``. Whitespace may surround the value,
    a unit and each part, but not split a number or a unit (``"1 5"`` and ``"5 m s"``
    are refused). Negative (any ``-`` sign) and infinite durations are refused.

    Raises:
        ValueError: the text is not a duration.
    """
    s = text.strip().lower()
    if s.startswith("+"):
        s = s[1:]
    if _PLAIN_NUMBER.fullmatch(s):
        total = float(s)
    elif _DURATION.fullmatch(s):
        total = 0.0
        for number, unit in _DURATION_PART.findall(s):
            total += float(number) * _UNITS[unit]
    else:
        raise ValueError(f"not a duration: {text!r}")
    if not math.isfinite(total):  # "999...9s" overflows to inf
        raise ValueError(f"not a finite duration: {text!r}")
    return total


@overload
def get_duration(source: Source | None, key: str, default: float) -> float: ...
@overload
def get_duration(source: Source | None, key: str, default: None = None) -> float | None: ...
def get_duration(source: Source | None, key: str, default: float | None = None) -> float | None:
    """A duration setting in seconds: ``"1500ms"``, ``"30s"``, ``"5m"``, ``"1h 30m"``,
    ``"2.5"`` (the syntax is ``parse_duration``'s).

    Args:
        source: where to read it; None reads nothing (the default is returned).
        key: the config key.
        default: returned when the key is absent or blank (in seconds).

    Returns:
        The value in seconds, or the default.

    Raises:
        ConfigError: the value is not a duration (see ``parse_duration``).
    """
    expected = 'a duration such as "1500ms", "30s", "5m", "1h" or seconds'
    return _parsed(source, key, default, parse_duration, expected)


# -- lanes from config -----------------------------------------------------------------------

_POLICIES = {
    "fifo": "fifo",
    "priority": "priority",
    "fair_share": "fair_share",
    "fair-share": "fair_share",
    "fairshare": "fair_share",
}

# Every setting a lane reads, as the suffix of LANE_<NAME>_<SUFFIX>.
_LANE_FIELDS = (
    "MAX_CONCURRENT",
    "POLICY",
    "WEIGHTS",
    "DEFAULT_WEIGHT",
    "AGING",
    "PREEMPT",
    "PREEMPT_MIN_RUNTIME",
    "PREEMPT_GRACE",
    "PREEMPT_REQUEUE",
    "ETA_WINDOW",
    "LEASE",
)
# Longest first, so "X_PREEMPT_GRACE" is lane X's PREEMPT_GRACE, not lane X_PREEMPT's GRACE.
_FIELDS_BY_LENGTH = tuple(sorted(_LANE_FIELDS, key=len, reverse=True))
# Settings that take one value: a table there is an error, not more keys. (PREEMPT also
# heads the PREEMPT_* settings, so [lanes.x.preempt] grace = "5s" is PREEMPT_GRACE.)
_SINGLE_VALUED = frozenset(
    f for f in _LANE_FIELDS if not any(g.startswith(f + "_") for g in _LANE_FIELDS)
)


# What a RedisLane can take: counts are stored as numbers (doubles) in Redis, a lease is
# renewed every lease / 3 seconds, and braces would break a lane's hash tag.
_REDIS_MIN_LEASE = 0.1
_REDIS_DEFAULT_NAMESPACE = "executus"


def lane_token(name: str) -> str:
    """The form of a lane name used in config keys: ``"image-gen"`` is ``IMAGE_GEN``."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """The settings of one lane, as read from config (None: not set there).

    Attributes:
        name: the lane's name as used in config keys (``IMAGE_GEN``).
        max_concurrent: ``LANE_<NAME>_MAX_CONCURRENT`` (int >= 1).
        policy: ``LANE_<NAME>_POLICY``: ``"fifo"``, ``"priority"`` or ``"fair_share"``.
        weights: ``LANE_<NAME>_WEIGHTS`` (``"alice=3,bob=1"``), fair share only.
        default_weight: ``LANE_<NAME>_DEFAULT_WEIGHT`` (> 0), fair share only.
        aging: ``LANE_<NAME>_AGING`` (a duration > 0), priority only.
        preempt: ``LANE_<NAME>_PREEMPT`` (bool); setting any ``PREEMPT_*`` implies True.
        preempt_min_runtime: ``LANE_<NAME>_PREEMPT_MIN_RUNTIME`` (a duration).
        preempt_grace: ``LANE_<NAME>_PREEMPT_GRACE`` (a duration).
        preempt_requeue: ``LANE_<NAME>_PREEMPT_REQUEUE`` (bool).
        eta_window: ``LANE_<NAME>_ETA_WINDOW`` (int >= 1).
        lease: ``LANE_<NAME>_LEASE`` (a duration >= 0.1 s), Redis lanes only.
    """

    name: str
    max_concurrent: int | None = None
    policy: str | None = None
    weights: tuple[tuple[str, float], ...] | None = None
    default_weight: float | None = None
    aging: float | None = None
    preempt: bool | None = None
    preempt_min_runtime: float | None = None
    preempt_grace: float | None = None
    preempt_requeue: bool | None = None
    eta_window: int | None = None
    lease: float | None = None

    def make_policy(self) -> QueuePolicy | None:
        """The queue policy these settings describe, or None when ``policy`` is unset."""
        from ._policies import FIFO, FairShare, Priority

        if self.policy is None:
            return None
        if self.policy == "priority":
            return Priority(aging=self.aging)
        if self.policy == "fair_share":
            return FairShare(
                weights=dict(self.weights or ()),
                default_weight=1.0 if self.default_weight is None else self.default_weight,
            )
        return FIFO()

    def make_preemption(self, base: Preemption | None = None) -> Preemption | bool | None:
        """The preemption these settings describe.

        Args:
            base: the code's default preemption: a field config leaves unset keeps its
                value (setting by setting), else ``Preemption()``'s.

        Returns:
            A ``Preemption`` when enabled, None when explicitly disabled
            (``PREEMPT=false``), False when config says nothing about preemption.
        """
        from ._policies import Preemption

        if self.preempt is False:
            return None
        if self.preempt is None and all(
            v is None for v in (self.preempt_min_runtime, self.preempt_grace, self.preempt_requeue)
        ):
            return False
        base = base or Preemption()
        return Preemption(
            min_runtime=(
                base.min_runtime if self.preempt_min_runtime is None else self.preempt_min_runtime
            ),
            grace=base.grace if self.preempt_grace is None else self.preempt_grace,
            requeue=base.requeue if self.preempt_requeue is None else self.preempt_requeue,
        )


def _lane_key(token: str, suffix: str) -> str:
    return f"LANE_{token}_{suffix}"


def _read_lane(source: Source, token: str, *, redis: bool, live: bool = False) -> LaneSettings:
    """Parse and validate every setting of lane ``token``; all errors are ConfigError.

    ``redis``: the lane is a Redis lane, with its own limits. ``live``: it is built
    already, and refuses a count it cannot store itself when a reload applies it (the
    lanes changed before it are then put back).
    """

    def key(suffix: str) -> str:
        return _lane_key(token, suffix)

    def refuse(suffix: str, rule: str) -> ConfigError:
        raw = _get(source, key(suffix)) or ""
        return ConfigError(
            f"config key {key(suffix)!r} ({_where(source, key(suffix))}) must be {rule}, "
            f"got {raw.strip()!r}",
            key=key(suffix),
            value=raw,
        )

    def at_least(suffix: str, value: float | None, low: float, strict: bool = False) -> None:
        if value is not None and (value < low or (strict and value == low)):
            raise refuse(suffix, f"> {low:g}" if strict else f">= {low:g}")

    def stored_count(suffix: str, value: int | None) -> None:
        if redis and not live and value is not None and value >= STORED_MAX:
            raise refuse(suffix, "< 2**40 for a Redis lane")

    max_concurrent = get_int(source, key("MAX_CONCURRENT"))
    at_least("MAX_CONCURRENT", max_concurrent, 1)
    stored_count("MAX_CONCURRENT", max_concurrent)
    eta_window = get_int(source, key("ETA_WINDOW"))
    at_least("ETA_WINDOW", eta_window, 1)
    stored_count("ETA_WINDOW", eta_window)
    if not redis and eta_window is not None and eta_window > sys.maxsize:
        # A Lane keeps its run times in a deque, whose length is a C ssize_t.
        raise refuse("ETA_WINDOW", f"<= {sys.maxsize}")

    policy_expected = "one of fifo, priority, fair_share"
    policy_raw = _single(source, key("POLICY"), policy_expected)
    policy: str | None = None
    if policy_raw is not None:
        policy = _POLICIES.get(policy_raw.lower())
        if policy is None:
            raise _bad(source, key("POLICY"), policy_raw, policy_expected)

    weights: tuple[tuple[str, float], ...] | None = None
    weights_raw = _single(source, key("WEIGHTS"), _WEIGHTS_EXPECTED)
    if weights_raw is not None:
        weights = _parse_weights(source, key("WEIGHTS"), weights_raw)
    default_weight = get_float(source, key("DEFAULT_WEIGHT"))
    at_least("DEFAULT_WEIGHT", default_weight, 0, strict=True)
    aging = get_duration(source, key("AGING"))
    at_least("AGING", aging, 0, strict=True)

    for suffix, value, wanted in (
        ("WEIGHTS", weights, "fair_share"),
        ("DEFAULT_WEIGHT", default_weight, "fair_share"),
        ("AGING", aging, "priority"),
    ):
        if value is not None and policy != wanted:
            got = "is not set" if policy is None else f"is {policy!r}"
            raise ConfigError(
                f"config key {key(suffix)!r} ({_where(source, key(suffix))}) applies only "
                f"to policy {wanted!r}, but {key('POLICY')!r} {got}",
                key=key(suffix),
            )

    preempt = get_bool(source, key("PREEMPT"))
    min_runtime = get_duration(source, key("PREEMPT_MIN_RUNTIME"))
    grace = get_duration(source, key("PREEMPT_GRACE"))
    requeue = get_bool(source, key("PREEMPT_REQUEUE"))
    if preempt is False:
        for suffix, value in (
            ("PREEMPT_MIN_RUNTIME", min_runtime),
            ("PREEMPT_GRACE", grace),
            ("PREEMPT_REQUEUE", requeue),
        ):
            if value is not None:
                raise ConfigError(
                    f"config key {key(suffix)!r} ({_where(source, key(suffix))}) is set but "
                    f"{key('PREEMPT')!r} is false",
                    key=key(suffix),
                )

    lease = get_duration(source, key("LEASE"))
    if lease is not None and not redis:
        raise ConfigError(
            f"config key {key('LEASE')!r} ({_where(source, key('LEASE'))}) applies only to "
            "Redis lanes, and REDIS_URL is not set",
            key=key("LEASE"),
        )
    at_least("LEASE", lease, _REDIS_MIN_LEASE)

    return LaneSettings(
        name=token,
        max_concurrent=max_concurrent,
        policy=policy,
        weights=weights,
        default_weight=default_weight,
        aging=aging,
        preempt=preempt,
        preempt_min_runtime=min_runtime,
        preempt_grace=grace,
        preempt_requeue=requeue,
        eta_window=eta_window,
        lease=lease,
    )


_WEIGHTS_EXPECTED = 'comma-separated name=weight pairs with weights > 0, such as "alice=3,bob=1"'


def _parse_weights(source: Source, key: str, raw: str) -> tuple[tuple[str, float], ...]:
    """``"alice=3, bob=1"`` -> ``(("alice", 3.0), ("bob", 1.0))``; weights must be > 0."""
    out: dict[str, float] = {}
    expected = _WEIGHTS_EXPECTED
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or not name or name in out:
            raise _bad(source, key, raw, expected)
        try:
            value = _finite_float(weight.strip())
        except ValueError:
            raise _bad(source, key, raw, expected) from None
        if value <= 0:
            raise _bad(source, key, raw, expected)
        out[name] = value
    return tuple(out.items())


def _check_redis(source: Source, url: str, namespace: str | None, cluster: bool) -> None:
    """Refuse a Redis URL or namespace a ``RedisLane`` would refuse at first use.

    The URL gets the checks ``RedisLane`` makes (``check_redis_url``); its password is
    masked in every message (one may end up in a log), and no error keeps the URL.
    """
    if not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(
            f"config key 'REDIS_URL' ({_where(source, 'REDIS_URL')}): expected a redis://, "
            f"rediss:// or unix:// URL, got {_masked_url(url)!r}",
            key="REDIS_URL",
        )
    try:
        _check_redis_url(url, cluster=cluster, cluster_option="REDIS_CLUSTER true")
    except ValueError as e:
        raise ConfigError(
            f"config key 'REDIS_URL' ({_where(source, 'REDIS_URL')}): {e}", key="REDIS_URL"
        ) from None
    if namespace is None:
        return
    where = _where(source, "REDIS_NAMESPACE")
    if "{" in namespace or "}" in namespace:
        rule = "must not contain '{' or '}'"
    elif ":" in namespace:
        rule = "must not contain ':' (it ends the namespace in the lane's keys)"
    elif not is_utf8(namespace):
        rule = "must be encodable as UTF-8"
    else:
        return
    raise ConfigError(
        f"config key 'REDIS_NAMESPACE' ({where}) {rule}, got {namespace!r}",
        key="REDIS_NAMESPACE",
        value=namespace,
    )


def _lists_every_key(source: Source) -> bool:
    """True when ``source`` (every source, for a chain) can list the keys it sets."""
    if isinstance(source, ChainSource):
        return all(_lists_every_key(s) for s in source.sources)
    return callable(getattr(source, "keys", None))


def _has_settings(settings: LaneSettings) -> bool:
    return any(getattr(settings, f.name) is not None for f in fields(settings) if f.name != "name")


def _configured_tokens(source: Source) -> set[str]:
    """The lane tokens a listable source sets keys for; unknown lane keys are errors."""
    keys = getattr(source, "keys", None)
    if not callable(keys):
        return set()
    tokens: set[str] = set()
    for k in keys():
        nk = normalize_key(k)
        if not nk.startswith("LANE_"):
            continue
        rest = nk[len("LANE_") :]
        if rest.startswith("_") and rest[1:] in _LANE_FIELDS:  # LANE__POLICY: no lane name
            raise ConfigError(
                f"config key {nk!r} ({_where(source, nk)}): the lane name in it is empty; "
                f"a lane setting is LANE_<NAME>_<SETTING>",
                key=nk,
            )
        for suffix in _FIELDS_BY_LENGTH:
            if rest.endswith("_" + suffix) and len(rest) > len(suffix) + 1:
                token = rest[: -len(suffix) - 1]
                # A token no lane name spells ("LLAMA3:8B"): its settings would be lost.
                if token != lane_token(token):
                    raise ConfigError(
                        f"config key {nk!r} ({_where(source, nk)}): a lane name in a key is spelt "
                        f"with A-Z, 0-9 and _ only; write {_lane_key(lane_token(token), suffix)}",
                        key=nk,
                    )
                tokens.add(token)
                break
        else:
            raise ConfigError(
                f"unknown lane setting {nk!r} ({_where(source, nk)}); a lane setting is "
                f"LANE_<NAME>_<SETTING> with SETTING one of {', '.join(_LANE_FIELDS)}",
                key=nk,
            )
    return tokens


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything read from the source in one load: validated, ready to apply."""

    redis_url: str | None
    redis_namespace: str | None
    redis_cluster: bool
    lanes: Mapping[str, LaneSettings]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What ``Lanes.reload()`` did to the live lanes.

    Attributes:
        applied: ``(lane, setting)`` pairs changed on live lanes, e.g.
            ``("ollama", "max_concurrent")``.
        pending_restart: ``(lane, setting)`` pairs that changed in config but cannot
            change on a live lane (the policy, the lease, the backend: ``redis_url``,
            ``redis_namespace``, ``redis_cluster``); they apply to lanes created
            afterwards.
    """

    applied: tuple[tuple[str, str], ...] = ()
    pending_restart: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Entry:
    """A live lane and what it was built with."""

    lane: Any
    defaults: _Defaults
    applied: _Effective


@dataclass(frozen=True, slots=True)
class _Defaults:
    """What the code asked for in ``Lanes.get``; config overrides it."""

    max_concurrent: int | None = None
    policy: Any = None
    preemption: Any = None
    eta_window: int | None = None


@dataclass(frozen=True, slots=True)
class _Effective:
    """The settings a lane gets: config, else the code's default, else the built-in one."""

    max_concurrent: int | None
    policy: Any
    preemption: Any
    eta_window: int | None  # None: a Redis lane adopts the stored window
    lease: float | None
    redis_url: str | None
    redis_namespace: str | None = None
    redis_cluster: bool = False


# The settings a reload changes on a live lane, and the config keys that set each.
_LIVE_SETTINGS = {
    "max_concurrent": ("MAX_CONCURRENT",),
    "preemption": ("PREEMPT", "PREEMPT_MIN_RUNTIME", "PREEMPT_GRACE", "PREEMPT_REQUEUE"),
    "eta_window": ("ETA_WINDOW",),
}


def _namespace(eff: _Effective) -> str:
    """The namespace a Redis lane built with ``eff`` has (RedisLane's default if unset)."""
    return _REDIS_DEFAULT_NAMESPACE if eff.redis_namespace is None else eff.redis_namespace


def _live_changes(old: _Effective, new: _Effective) -> list[tuple[str, Any, Any]]:
    """``(setting, old, new)`` for each live-changeable setting that differs, in the
    order they are applied (a Redis lane adopting its stored limit keeps it)."""
    out = []
    if new.max_concurrent is not None and new.max_concurrent != old.max_concurrent:
        out.append(("max_concurrent", old.max_concurrent, new.max_concurrent))
    if new.preemption != old.preemption:
        out.append(("preemption", old.preemption, new.preemption))
    if new.eta_window is not None and new.eta_window != old.eta_window:
        out.append(("eta_window", old.eta_window, new.eta_window))
    return out


def _with_live(applied: _Effective, new: _Effective) -> _Effective:
    """``applied`` with the live-changeable settings of ``new`` taken (a limit of None:
    the lane kept the one it had), the others as they were (they need a restart)."""
    return replace(
        applied,
        max_concurrent=new.max_concurrent
        if new.max_concurrent is not None
        else applied.max_concurrent,
        preemption=new.preemption,
        eta_window=new.eta_window if new.eta_window is not None else applied.eta_window,
    )


def _live_value(lane: Any, what: str, applied: Any) -> Any:
    """The value of setting ``what`` that ``lane`` has now (set on the lane itself
    perhaps, not by config), or ``applied`` when the lane does not say (the ETA window)."""
    if what in ("max_concurrent", "preemption"):
        return getattr(lane, what)
    if applied is None:  # a RedisLane that adopted the stored window: the one it saw
        return getattr(lane, "_window", None)
    return applied


async def _put_back(done: list[tuple[Any, str, Any]]) -> None:
    """Undo the settings a failed reload changed, newest first (best effort: one that
    cannot be put back is logged and the rest are still tried; a cancellation meanwhile
    is raised once every one was tried)."""
    interrupted: BaseException | None = None
    for lane, what, value in reversed(done):
        try:
            await getattr(lane, f"set_{what}")(value)
        except Exception:
            logger.warning(
                "lane %r: could not put %s back to %r after a failed reload",
                lane.name,
                what,
                value,
                exc_info=True,
            )
        except BaseException as e:  # cancelled again: the other lanes still get theirs
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


def _first(*values: int | None) -> int | None:
    """The first of ``values`` that is not None (None when all are)."""
    return next((v for v in values if v is not None), None)


def _check_defaults(
    max_concurrent: object, policy: object, preemption: object, eta_window: object
) -> None:
    """Refuse a default given to ``Lanes.get`` that the lane's constructor would refuse,
    with its words, whether config overrides it or not (a later reload may unset the
    setting, and the default then applies)."""
    from ._base import check_count, check_preemption, check_window
    from ._policies import QueuePolicy

    if max_concurrent is not None:
        check_count("max_concurrent", max_concurrent)
    if policy is not None and not isinstance(policy, QueuePolicy):
        raise TypeError(f"policy must be a QueuePolicy (FIFO(), ...), got {policy!r}")
    check_preemption(preemption)
    if eta_window is not None:
        check_window(eta_window)


_REDIS_MODULE = "executus.redis"
_DEFAULT_SOURCE = EnvSource()


class Lanes:
    """A registry of lanes built by name from configuration.

    For a lane named ``ollama`` it reads ``LANE_OLLAMA_MAX_CONCURRENT``,
    ``LANE_OLLAMA_POLICY`` (``fifo``, ``priority``, ``fair_share``),
    ``LANE_OLLAMA_WEIGHTS`` (``"alice=3,bob=1"``), ``LANE_OLLAMA_DEFAULT_WEIGHT``,
    ``LANE_OLLAMA_AGING``, ``LANE_OLLAMA_PREEMPT`` and ``LANE_OLLAMA_PREEMPT_MIN_RUNTIME``,
    ``_PREEMPT_GRACE``, ``_PREEMPT_REQUEUE``, ``LANE_OLLAMA_ETA_WINDOW`` and (Redis
    only) ``LANE_OLLAMA_LEASE``. Names match case-insensitively, with ``-`` and ``_``
    alike. With ``REDIS_URL`` set (``$EXECUTUS_REDIS_URL``, or ``redis_url`` in TOML),
    lanes are ``executus.redis.RedisLane`` (namespace from ``REDIS_NAMESPACE``; with
    ``REDIS_CLUSTER`` true, ``REDIS_URL`` names a node of a Redis Cluster and the lanes
    are built with ``cluster=True``); otherwise in-process ``Lane``.

    Everything is validated when the registry is built (and again on ``reload``):
    malformed values and unknown ``LANE_*`` keys are ``ConfigError`` at load, not at
    first use. (A source without ``keys()`` cannot say which lanes it configures: its
    settings for a lane are read, and checked, when ``get`` or ``settings`` first asks.)

    Precedence for each setting: the source, then the default passed to ``get``, then
    the lane's built-in default.

    Args:
        source: where to read settings (default: the environment, ``EXECUTUS_`` prefix);
            None reads nothing (every lane gets the code's defaults).
        clock: passed to every in-process ``Lane`` (tests use ``ManualClock``).

    Raises:
        ConfigError: a setting is malformed or unknown, ``REDIS_CLUSTER`` or
            ``REDIS_NAMESPACE`` is set without ``REDIS_URL``, ``REDIS_URL`` is a URL a
            ``RedisLane`` refuses (scheme, port, database, ``REDIS_CLUSTER`` with a
            database other than 0), or ``REDIS_URL`` is set and ``executus.redis``
            cannot be imported.
        TypeError: ``source`` is not a ``Source``: a path (wrap it in ``TomlSource``), a
            mapping (wrap it in ``MappingSource``) or an object without ``get``.

    Example::

        lanes = Lanes(TomlSource("bot.toml"))
        ollama = lanes.get("ollama", max_concurrent=2)   # config may override the 2
        try:
            ...
        finally:
            await lanes.aclose()
    """

    def __init__(
        self, source: Source | None = _DEFAULT_SOURCE, *, clock: Clock | None = None
    ) -> None:
        if source is not None:
            _check_source(source, "source")
        self.source = source
        self._clock = clock
        self._lanes: dict[str, _Entry] = {}
        self._reload_lock: asyncio.Lock | None = None  # made on first reload (in a loop)
        self._snapshot = self._load()

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> _Snapshot:
        source = self.source
        if source is None:
            return _Snapshot(None, None, False, {})
        for key in ("REDIS_URL", "REDIS_NAMESPACE"):
            # get_str would join an array ("redis://n1,redis://n2"): one URL, one namespace.
            array = _array(source, key) if _raw(source, key) is not None else None
            if array is not None:
                shown = [_masked_url(str(v)) for v in array] if key == "REDIS_URL" else array
                raise ConfigError(
                    f"config key {key!r} ({_where(source, key)}): expected a single value, "
                    f"got an array {shown!r}",
                    key=key,
                )
        redis_url = get_str(source, "REDIS_URL")
        namespace = get_str(source, "REDIS_NAMESPACE")
        cluster = get_bool(source, "REDIS_CLUSTER")
        if redis_url is None:
            # Like a lane's LEASE, these mean nothing to in-process lanes: a typo or a
            # lost REDIS_URL, not something to ignore.
            for redis_key, value in (("REDIS_CLUSTER", cluster), ("REDIS_NAMESPACE", namespace)):
                if value is not None:
                    raw = get_str(source, redis_key, "")
                    raise ConfigError(
                        f"config key {redis_key!r} ({_where(source, redis_key)}) applies only "
                        f"to Redis lanes, and REDIS_URL is not set (got {raw!r})",
                        key=redis_key,
                        value=raw,
                    )
        if redis_url is not None:
            _check_redis(source, redis_url, namespace, bool(cluster))
            self._redis_lane_class(source)  # fail at load when executus.redis is missing
        configured = _configured_tokens(source)
        lanes = {}
        # Live lanes are re-read too: a source without keys() may set them unlisted.
        for token in sorted(configured | set(self._lanes)):
            settings = _read_lane(
                source, token, redis=redis_url is not None, live=token in self._lanes
            )
            if token in configured or _has_settings(settings):
                lanes[token] = settings
        return _Snapshot(redis_url, namespace, bool(cluster), lanes)

    @staticmethod
    def _redis_lane_class(source: Source | None) -> Any:
        """``executus.redis.RedisLane``; errors name where ``source`` sets REDIS_URL."""
        where = repr("REDIS_URL") if source is None else _where(source, "REDIS_URL")
        try:
            module = importlib.import_module(_REDIS_MODULE)
        except ImportError as e:
            raise ConfigError(
                f"REDIS_URL ({where}) is set, but Redis lanes are unavailable: cannot import "
                f"{_REDIS_MODULE} ({e}); install executus[redis] or unset REDIS_URL",
                key="REDIS_URL",
            ) from e
        cls = getattr(module, "RedisLane", None)
        if cls is None:
            raise ConfigError(
                f"REDIS_URL ({where}) is set, but {_REDIS_MODULE} has no RedisLane; "
                "install executus[redis] or unset REDIS_URL",
                key="REDIS_URL",
            )
        return cls

    def _settings(self, token: str) -> LaneSettings:
        snap = self._snapshot
        settings = snap.lanes.get(token)
        if settings is None and self.source is not None and not _lists_every_key(self.source):
            # A source without keys() cannot say which lanes it configures: ask it by name
            # (its errors come at first use) and keep the answer until the next reload.
            settings = _read_lane(self.source, token, redis=snap.redis_url is not None)
            if _has_settings(settings):
                self._snapshot = replace(snap, lanes={**snap.lanes, token: settings})
        return settings or LaneSettings(name=token)

    def settings(self, name: str) -> LaneSettings:
        """The settings config gives lane ``name`` (all None when it sets nothing)."""
        return self._settings(lane_token(name))

    def configured(self) -> list[str]:
        """The lane names the source has settings for (as ``lane_token`` spells them)."""
        return sorted(self._snapshot.lanes)

    @property
    def redis_url(self) -> str | None:
        """The configured Redis URL, or None for in-process lanes."""
        return self._snapshot.redis_url

    @property
    def redis_cluster(self) -> bool:
        """True when ``REDIS_URL`` names a node of a Redis Cluster (``REDIS_CLUSTER``)."""
        return self._snapshot.redis_cluster

    # -- building --------------------------------------------------------------------------------

    def _effective(self, token: str, defaults: _Defaults, snap: _Snapshot) -> _Effective:
        s = snap.lanes.get(token) or LaneSettings(name=token)
        policy = s.make_policy()
        preemption = s.make_preemption(defaults.preemption)
        redis = snap.redis_url is not None
        max_concurrent = (
            s.max_concurrent if s.max_concurrent is not None else defaults.max_concurrent
        )
        if max_concurrent is None and not redis:
            max_concurrent = 1
        return _Effective(
            max_concurrent=max_concurrent,
            policy=policy if policy is not None else defaults.policy,
            preemption=defaults.preemption if preemption is False else preemption,
            # A Redis lane adopts the stored window unless config or the code sets one
            # (as it adopts the stored limit): 16 would overwrite it lane-wide.
            # (``is not None``: a falsy default is refused by _check_defaults, not replaced.)
            eta_window=_first(s.eta_window, defaults.eta_window, None if redis else 16),
            lease=s.lease,
            redis_url=snap.redis_url,
            redis_namespace=snap.redis_namespace,
            redis_cluster=snap.redis_cluster,
        )

    def get(
        self,
        name: str,
        *,
        max_concurrent: int | None = None,
        policy: QueuePolicy | None = None,
        preemption: Preemption | None = None,
        eta_window: int | None = None,
    ) -> Any:
        """The lane called ``name``, built from config on first use.

        The keyword arguments are the code's defaults, used where config sets nothing;
        they count only when the lane is first built (later calls return that lane).

        Args:
            name: the lane's name (non-empty).
            max_concurrent: default slot count (built-in: 1; a Redis lane adopts its
                stored value).
            policy: default queue policy (built-in: ``FIFO()``).
            preemption: default preemption (built-in: None, disabled).
            eta_window: default ETA window (built-in: 16; a Redis lane adopts its stored
                window).

        Returns:
            A ``Lane``, or a ``RedisLane`` when ``REDIS_URL`` is set (``cluster=True``
            when ``REDIS_CLUSTER`` is true).

        Raises:
            ValueError: ``name`` is empty, or a default is one the lane would refuse
                (``max_concurrent=0``, ``eta_window=0``), whether or not config
                overrides it; the message is the lane constructor's.
            TypeError: a default has the wrong type (``eta_window=False``).
            ConfigError: another live lane's name reads the same settings
                (``image-gen`` and ``image_gen``).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"lane name must be a non-empty str, got {name!r}")
        _check_defaults(max_concurrent, policy, preemption, eta_window)
        token = lane_token(name)
        entry = self._lanes.get(token)
        if entry is not None:
            if entry.lane.name != name:
                raise ConfigError(
                    f"lane names {entry.lane.name!r} and {name!r} read the same settings "
                    f"(LANE_{token}_*); use one spelling",
                    key=f"LANE_{token}",
                )
            return entry.lane
        defaults = _Defaults(max_concurrent, policy, preemption, eta_window)
        self._settings(token)  # reads a source without keys() for this lane
        eff = self._effective(token, defaults, self._snapshot)
        lane = self._build(name, eff)
        self._lanes[token] = _Entry(lane, defaults, eff)
        return lane

    __getitem__ = get

    def _build(self, name: str, eff: _Effective) -> Any:
        if eff.redis_url is None:
            from ._lane import Lane

            kwargs: dict[str, Any] = {}
            if self._clock is not None:
                kwargs["clock"] = self._clock
            return Lane(
                name,
                eff.max_concurrent if eff.max_concurrent is not None else 1,
                policy=eff.policy,
                preemption=eff.preemption,
                eta_window=eff.eta_window if eff.eta_window is not None else 16,
                **kwargs,
            )
        cls = self._redis_lane_class(self.source)
        kwargs = {"policy": eff.policy, "preemption": eff.preemption}
        if eff.lease is not None:
            kwargs["lease"] = eff.lease
        if eff.redis_namespace is not None:
            kwargs["namespace"] = eff.redis_namespace
        if eff.redis_cluster:
            kwargs["cluster"] = True
        params = inspect.signature(cls).parameters
        if "eta_window" in params and eff.eta_window is not None:
            kwargs["eta_window"] = eff.eta_window
        return cls(name, eff.redis_url, eff.max_concurrent, **kwargs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and lane_token(name) in self._lanes

    def __iter__(self) -> Iterator[Any]:
        return iter([e.lane for e in self._lanes.values()])

    def __len__(self) -> int:
        return len(self._lanes)

    # -- reloading -------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-read the source and apply changed settings to the live lanes.

        ``max_concurrent``, preemption and the ETA window change on a live lane at once
        (``set_max_concurrent`` and friends: no job is dropped; lowering the limit never
        cancels a running job). A changed **policy** (or weights, aging, lease, Redis
        URL, a Redis lane's namespace, ``REDIS_CLUSTER``) cannot change under queued
        jobs: it is logged and reported in ``pending_restart`` and applies to lanes
        built afterwards, as a database reports settings that need a restart
        (PostgreSQL's ``pending_restart``).
        A setting removed from config falls back to the next source of a chain, then to
        the default given to ``get``, then to the built-in one.

        Reloading is all or nothing:

        1. The source is re-read (``TomlSource`` rereads its file, ``ChainSource`` each of
           its files, see ``ChainSource.reload``) and the whole configuration validated.
           When anything is invalid, ``ConfigError`` is raised and nothing changes: no
           lane, no lane setting, and the source keeps the settings it read before.
        2. Then the changes are applied, lane by lane in the order the lanes were built:
           ``max_concurrent``, then preemption, then the ETA window. If a lane refuses a
           value (a ``RedisLane`` keeps counts below ``2**40``: ``ConfigError``) or its
           backend fails (``LaneUnavailable``), or the reload is cancelled, the lanes
           changed so far, the one being changed included, get back the values they had
           (a limit set on a lane itself too; one that cannot is logged), the source its
           old settings, and the error is raised. A lane ``get`` built from the new
           settings meanwhile gets the old ones.

        Returns:
            What was applied and what waits for a restart.

        Raises:
            ConfigError: the new configuration is invalid, or a lane refuses a value
                from it (nothing was changed).
        """
        from ._policies import FIFO

        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            undo_source = _reload_source(self.source)
            try:
                snap = self._load()
                plan = [
                    (entry, self._effective(token, entry.defaults, snap))
                    for token, entry in self._lanes.items()
                ]
            except BaseException:
                undo_source()
                raise
            # A lane its owner closed is not live: nothing is changed on it or reported
            # (a closed RedisLane refuses every change, which would fail every reload).
            closed = {id(entry) for entry, _ in plan if getattr(entry.lane, "closed", False)}
            old_snapshot = self._snapshot
            self._snapshot = snap  # a lane built meanwhile (a RedisLane awaits) gets it too
            # (lane, setting, value to put back), recorded before the change is awaited: a
            # change cancelled or failing midway (a RedisLane's reply lost) may be made.
            done: list[tuple[Any, str, Any]] = []
            try:
                for entry, new in plan:
                    if id(entry) in closed:
                        continue
                    changes = _live_changes(entry.applied, new)
                    if changes and entry.applied.redis_url is not None:
                        # A RedisLane knows the stored settings it adopted once attached.
                        await entry.lane.stats()
                    for what, old_value, new_value in changes:
                        back = _live_value(entry.lane, what, old_value)
                        # An ETA window never seen (a lane not attached yet) has nothing
                        # to put back.
                        known = back is not None or what != "eta_window"
                        if known:
                            done.append((entry.lane, what, back))
                        try:
                            await self._set(entry.lane, what, new_value)
                        except ConfigError:
                            if known:
                                done.pop()  # refused before anything changed
                            raise
            except BaseException:
                self._snapshot = old_snapshot
                undo_source()
                done += self._undo_built_meanwhile(plan, old_snapshot)
                await _put_back(done)
                raise
            applied: list[tuple[str, str]] = []
            pending: list[tuple[str, str]] = []
            for entry, new in plan:
                if id(entry) in closed:
                    continue
                old = entry.applied
                name = entry.lane.name
                applied.extend((name, what) for what, _, _ in _live_changes(old, new))
                for what, a, b in (
                    ("policy", old.policy or FIFO(), new.policy or FIFO()),
                    ("lease", old.lease, new.lease),
                    ("redis_url", old.redis_url, new.redis_url),
                    ("redis_namespace", _namespace(old), _namespace(new)),
                    ("redis_cluster", old.redis_cluster, new.redis_cluster),
                ):
                    # An in-process lane has no namespace to keep.
                    if a != b and (what != "redis_namespace" or old.redis_url is not None):
                        pending.append((name, what))
                        if what == "redis_url":  # the log must not hold a password
                            a, b = (u if u is None else _masked_url(str(u)) for u in (a, b))
                        logger.warning(
                            "lane %r: %s changed in config (%r -> %r); a live lane keeps "
                            "its %s, the new one applies to lanes built afterwards",
                            name,
                            what,
                            a,
                            b,
                            what,
                        )
                # Remember what is live: the applied values, the old un-appliable ones.
                entry.applied = _with_live(old, new)
            return ReloadResult(tuple(applied), tuple(pending))

    def _undo_built_meanwhile(
        self, plan: list[tuple[_Entry, _Effective]], snap: _Snapshot
    ) -> list[tuple[Any, str, Any]]:
        """The live settings to put back on lanes ``get`` built from a reload's new
        config while it awaited, which then failed: those of ``snap``, the config kept.
        (Their policy and lease cannot change: the next reload reports them.)"""
        planned = {id(entry) for entry, _ in plan}
        out: list[tuple[Any, str, Any]] = []
        for token, entry in self._lanes.items():
            if id(entry) in planned:
                continue
            old = self._effective(token, entry.defaults, snap)
            if entry.applied.redis_url is not None and old.preemption is None:
                # None would turn a RedisLane's preemption off, not give back the stored
                # one this lane replaced (unknown here): leave it.
                old = replace(old, preemption=entry.applied.preemption)
            out += [
                (entry.lane, what, value) for what, _, value in _live_changes(entry.applied, old)
            ]
            entry.applied = _with_live(entry.applied, old)
        return out

    async def _set(self, lane: Any, what: str, value: Any) -> None:
        """``lane.set_<what>(value)``; a value the lane refuses is a ConfigError naming
        the setting and where config sets it."""
        try:
            await getattr(lane, f"set_{what}")(value)
        except (TypeError, ValueError, ArithmeticError) as e:
            token = lane_token(lane.name)
            keys = [_lane_key(token, suffix) for suffix in _LIVE_SETTINGS[what]]
            source = self.source
            key = next((k for k in keys if _raw(source, k) is not None), None)
            if key is None or source is None:  # the code's default (config no longer sets it)
                origin = f"config key {keys[0]!r} is not set; the default given to Lanes.get"
            else:
                origin = f"config key {key!r} ({_where(source, key)})"
            raise ConfigError(
                f"{origin}: lane {lane.name!r} cannot take {what} {value!r}: {e}",
                key=keys[0] if key is None else key,
                value=None if key is None else _raw(source, key),
            ) from e

    # -- closing ---------------------------------------------------------------------------------

    async def aclose(self, *, drain: bool = True) -> None:
        """Close every lane built here (see ``Lane.aclose``) and forget them.

        Lanes built afterwards by ``get`` use the current configuration, policy included.
        """
        entries = list(self._lanes.values())
        self._lanes.clear()
        error: BaseException | None = None
        for entry in entries:
            try:
                await entry.lane.aclose(drain=drain)
            except BaseException as e:  # close the others before re-raising
                error = error or e
        if error is not None:
            raise error

    async def __aenter__(self) -> Lanes:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        backend = "memory" if self._snapshot.redis_url is None else "redis"
        return (
            f"<Lanes {backend} [{len(self._lanes)} live, {len(self._snapshot.lanes)} configured]>"
        )
