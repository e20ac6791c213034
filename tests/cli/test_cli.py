"""The ``executus`` command without Redis: help, the in-process demo, bench, fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from executus.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [[], ["demo"], ["top"], ["lane"], ["lane", "set-max"], ["lane", "cancel"], ["bench"]],
)
def test_every_command_has_help(args: list[str]) -> None:
    """--help works on every command and subcommand, exit 0, usage on stdout."""
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: executus {' '.join(args)}".rstrip() + " [OPTIONS]")


def test_local_demo_runs_and_keeps_the_limits() -> None:
    """A short demo draws both lanes and their keys, and reports the limits held."""
    result = CliRunner().invoke(cli, ["demo", "--seconds", "1", "--users", "3", "--policy", "fifo"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "executus demo - 3 users, policy fifo, 1s of traffic - done" in out
    for name in ("gpu: per key", "api: per key", "mallory", "alice", "bob"):
        assert name in out
    assert "carol" not in out
    at_most = [line for line in out.splitlines() if "jobs ran at once" in line]
    assert len(at_most) == 2
    assert "max_concurrent=2" in at_most[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--policy", "lifo"], "Invalid value for '--policy': 'lifo' is not one of"),
        (["demo", "--seconds", "0"], "Invalid value for '--seconds': 0.0 is not in the range"),
        (
            ["demo", "--users", "x"],
            "Invalid value for '--users': 'x' is not a valid integer range.",
        ),
        (["demo", "--namespace", "a{b"], "namespace must not contain '{' or '}', got 'a{b'"),
        (
            ["demo", "--namespace", "acme:prod"],
            "namespace must not contain ':' (it ends the namespace in the lane's keys), got "
            "'acme:prod'",
        ),
        (["demo", "--cluster"], "Error: --cluster needs --redis URL (the URL of a node of the"),
        (["demo", "--processes", "2"], "Error: --processes needs --redis URL (it sets the lane"),
        (["demo", "--namespace", "x"], "Error: --namespace needs --redis URL (it sets the lane"),
        (["top", "--interval", "0"], "Invalid value for '--interval': 0.0 is not in the range"),
        (["bench", "--only", "nope"], "Invalid value for '--only': 'nope' is not one of"),
        (["frobnicate"], "No such command 'frobnicate'."),
    ],
)
def test_usage_errors_exit_2_on_stderr(args: list[str], message: str) -> None:
    """Bad values are usage errors: exit 2, the rule on stderr, no traceback."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["demo"], ["top"], ["lane", "set-max"], ["lane", "cancel"]])
def test_every_redis_command_takes_cluster(args: list[str]) -> None:
    """Every command with a Redis URL option has --cluster; those reading env name the variable."""
    out = CliRunner().invoke(cli, [*args, "--help"]).stdout
    assert "--cluster" in out
    assert ("$EXECUTUS_REDIS_CLUSTER" in out) == (args != ["demo"])


def test_bad_cluster_variable_is_a_usage_error_naming_it() -> None:
    """$EXECUTUS_REDIS_CLUSTER that is not a boolean: exit 2, the variable and value named."""
    for args in (["top", "--once"], ["lane", "set-max", "gpu", "2"]):
        result = CliRunner().invoke(
            cli,
            [*args, "--redis", "redis://127.0.0.1:1/0"],
            env={"EXECUTUS_REDIS_CLUSTER": "maybe"},
        )
        assert result.exit_code == 2
        assert result.stderr.endswith(
            "Error: Invalid value for '--cluster': $EXECUTUS_REDIS_CLUSTER must be a boolean "
            "(true/false, yes/no, on/off, 1/0), got 'maybe'\n"
        )


def test_bench_runs_a_script_and_prints_its_table() -> None:
    """bench --quick --only fairness runs bench/bench_fairness.py and relays its table."""
    result = CliRunner().invoke(
        cli, ["bench", "--quick", "--only", "fairness", "--dir", str(ROOT / "bench")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("== bench_fairness.py (quick) ==\n")
    assert "| slots |" in result.stdout


def test_bench_reports_a_missing_script(tmp_path: Path) -> None:
    """A bench directory without the script fails with exit 1 and names it."""
    result = CliRunner().invoke(cli, ["bench", "--only", "eta", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"executus bench: {tmp_path / 'bench_eta.py'} is missing" in result.stderr
    assert result.stderr.endswith("Error: benchmarks failed: eta\n")


def test_main_returns_the_exit_code() -> None:
    """executus.__main__.main runs the click command and returns its exit code."""
    from executus.__main__ import main

    assert main(["--help"]) == 0
    assert main(["lane", "set-max", "gpu", "0", "--redis", "redis://127.0.0.1:1/0"]) == 2


def test_without_click_the_stdlib_fallback_runs() -> None:
    """With click unavailable, ``python -m executus`` falls back and says how to install."""
    code = (
        "import sys; sys.modules['click'] = None; "
        "from executus.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    help_ = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, env=env, timeout=30
    )
    assert help_.returncode == 0
    assert "pip install 'executus[cli]'" in help_.stdout
    bad = subprocess.run(
        [sys.executable, "-c", code, "top"], capture_output=True, text=True, env=env, timeout=30
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("executus: unknown command 'top'")
