"""The demo runs, says what happened, and keeps to the lane's limit."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from executus._demo import run_demo
from tests.helpers import ROOT, run_plain_executus


def test_demo_reports_fairness_preemption_and_limits() -> None:
    """A fast run of the demo prints its timeline, the wait table and the summary."""
    out = io.StringIO()
    assert run_demo(["--scale", "0.4"], out=out) == 0
    text = out.getvalue()
    assert "admin       urgent job (priority 10) preempts batch-" in text
    assert "How long each user waited for a slot" in text
    for user in ("alice", "bob", "mallory", "admin", "batch"):
        assert f"\n  {user}" in text
    assert "at most 2 ran at once (max_concurrent=2)" in text
    # The max_wait gate: the flooder is refused, the newcomer with the same limit admitted.
    assert "mallory's request with a max_wait was refused (#" in text
    assert "carol, new to the lane, asked with the same max_wait and was let in" in text
    assert "carol's request with a max_wait was refused" not in text


def test_demo_command_needs_only_the_standard_library() -> None:
    """`python -m executus demo --help` runs from the source tree with no install."""
    result = run_plain_executus("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: executus demo" in result.stdout


def test_bad_scale_is_refused() -> None:
    """A non-positive --scale is a usage error of the plain demo, naming the value."""
    result = run_plain_executus("demo", "--scale", "0")
    assert result.returncode == 2
    assert "--scale must be > 0, got 0.0" in result.stderr


def test_the_readme_demo_command_runs_the_plain_demo() -> None:
    """`bash scripts/demo` (the README's first command) runs the plain-text demo with no
    site packages, whatever the interpreter has installed, and exits 0."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--scale", "0.1"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "What happened:" in result.stdout
    assert "the plain-text demo" in result.stderr  # not the live one, though click is here
