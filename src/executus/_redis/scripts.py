"""The lane's Lua scripts, loaded from the ``lua/`` package data.

Each script is ``lib.lua`` (shared functions) followed by its own file. Scripts are run
with ``EVALSHA`` and sent in full only when the server does not know them
(``NOSCRIPT``: a restarted or flushed server, or a new node).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

__all__ = ["SCRIPT_NAMES", "Script", "load"]

SCRIPT_NAMES = ("attach", "submit", "release", "heartbeat", "cancel", "control", "stats")


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 digest.

    Attributes:
        name: the script's file name without ``.lua``.
        source: the full source (shared library included).
        sha: the SHA1 hex digest ``EVALSHA`` uses.
        sha_bytes: the same digest as ASCII bytes.
    """

    name: str
    source: str
    sha: str
    sha_bytes: bytes  # ``sha`` as ASCII, as the lane packs it


@cache
def load(name: str) -> Script:
    """The script called ``name`` (one of ``SCRIPT_NAMES``)."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown script {name!r}; known: {', '.join(SCRIPT_NAMES)}")
    pkg = files("executus._redis") / "lua"
    source = (pkg / "lib.lua").read_text("utf-8") + "\n" + (pkg / f"{name}.lua").read_text("utf-8")
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return Script(name, source, sha, sha.encode("ascii"))
