"""The ``executus`` command (``pip install 'executus[cli]'``: click and rich).

Commands: ``demo`` (simulated users on shared lanes, live), ``top`` (every lane of a
Redis, live), ``lane set-max`` / ``lane cancel`` (control a Redis lane) and ``bench``
(the benchmark scripts). ``import executus`` never imports this package, and importing
the package alone loads nothing: click and rich are imported on first use of ``cli``
or ``main``, so tools that walk the package tree stay within the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import cli as cli

__all__ = ["cli", "main"]


def _load() -> Any:
    try:
        from . import _app
    except ImportError as e:
        if e.name not in ("click", "rich", "redis"):
            raise
        raise ImportError(
            "the executus command needs click and rich: install executus[cli] "
            "(pip install 'executus[cli]')"
        ) from e
    return _app


def main(argv: list[str] | None = None) -> int:
    """Run the ``executus`` command with ``argv``; returns the exit code."""
    code: int = _load().main(argv)
    return code


def __getattr__(name: str) -> Any:
    if name == "cli":
        return _load().cli
    raise AttributeError(f"module 'executus.cli' has no attribute {name!r}")
