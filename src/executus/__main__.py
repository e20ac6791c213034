"""``executus`` / ``python -m executus``: the command line.

With the ``cli`` extra (click and rich) this is the full ``executus`` command. Without
it, only ``demo`` is available, in plain text, from the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import sys

USAGE = """usage: executus <command> [options]

commands:
  demo      simulate a shared GPU lane (fair share, preemption, admission control)

This is the standard-library fallback. Install executus[cli] for the full command
(live demo, top, lane, bench): pip install 'executus[cli]'"""


def _fallback(args: list[str]) -> int:
    try:
        code = _plain(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whatever read the output went away (``| head``): not an error, as with the
        # full command. Nothing more can reach it, and the flush at exit must not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return code


def _plain(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import run_demo

        print(
            "executus: the plain-text demo; install executus[cli] for the live view "
            "(pip install 'executus[cli]')",
            file=sys.stderr,
        )
        return run_demo(rest)
    print(f"executus: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``executus`` command; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if any(importlib.util.find_spec(extra) is None for extra in ("click", "rich")):
        return _fallback(args)
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
