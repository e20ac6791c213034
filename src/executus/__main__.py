"""``python -m executus``: the command line (stdlib fallback when the cli extra is absent)."""

from __future__ import annotations

import sys

USAGE = """usage: executus <command> [options]

commands:
  demo      simulate a shared GPU lane (fair share, preemption, admission control)

Install executus[cli] for the full command (top, lane, bench)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``executus`` command."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import run_demo

        return run_demo(rest)
    print(f"executus: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
