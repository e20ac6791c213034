"""The ``executus`` command: passwords in URLs, markup in names, narrow terminals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from executus.cli import cli
from executus.cli._app import safe_url
from executus.cli._top import KeyLoad, LaneSnapshot, render_lanes
from tests.redis.conftest import free_port


def _snapshot(name: str, keys: tuple[KeyLoad, ...] = ()) -> LaneSnapshot:
    return LaneSnapshot(
        namespace="executus",
        name=name,
        policy="fair-share",
        preemption=True,
        max_concurrent=2,
        running=2,
        queued=15,
        oldest_wait=2.46,
        throughput_1m=15,
        mean_runtime=0.43,
        processes=2,
        submitted=28,
        succeeded=12,
        failed=0,
        cancelled=0,
        preempted=0,
        rejected=1,
        keys=keys,
    )


def _render(snapshots: list[LaneSnapshot], title: str, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render_lanes(snapshots, title=title))
    return out.getvalue()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://u:pa/ss@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:p#w@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:p?w@h/0", "redis://u:***@h/0"),
        ("redis://h:6379/0?password=secret", "redis://h:6379/0?password=***"),
        ("unix:///tmp/r.sock?db=0&password=secret", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://u:p@ss@h/0?client_name=a@b", "redis://u:***@h/0?client_name=a@b"),
        ("redis://u@h:6379/0", "redis://u@h:6379/0"),
    ],
    ids=["slash", "hash", "question-mark", "query", "unix-query", "at-signs", "no-password"],
)
def test_safe_url_masks_every_password_redis_py_would_send(url: str, masked: str) -> None:
    """safe_url masks unencoded passwords and a password= query, and nothing else."""
    assert safe_url(url) == masked


def test_a_password_read_as_a_bad_port_is_not_quoted_in_the_error() -> None:
    """redis://u:pa/ss@host: the bad-URL line shows no part of the password, port or URL."""
    result = CliRunner().invoke(cli, ["top", "--once", "--redis", "redis://u:pa/ss@127.0.0.1/0"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: bad Redis URL 'redis://u:***@127.0.0.1/0': Port could not be cast to "
        "integer value as '***'\n"
    )


def test_a_password_in_the_query_is_masked_when_redis_is_unreachable() -> None:
    """redis://host/0?password=secret: the 'cannot reach Redis' line masks the password."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0?password=hunter2"
    result = CliRunner().invoke(cli, ["top", "--once", "--json", "--redis", url])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: cannot reach Redis at redis://127.0.0.1:{port}/0?password=***: "
    )
    assert "hunter2" not in result.output


def test_names_keys_and_title_are_shown_as_written_not_as_markup() -> None:
    """A lane, key or namespace such as '[/]' or '[bold]x' is shown literally (no MarkupError)."""
    keys = (KeyLoad("[bold]alice", 1, 0, None), KeyLoad("[/x]", 0, 1, 2.0))
    text = _render([_snapshot("gpu[/]", keys)], "executus top - namespace '[/y]'", 100)
    assert text.splitlines()[0].rstrip() == "executus top - namespace '[/y]'"
    assert "gpu[/]" in text
    assert "[bold]alice" in text
    assert "[/x]" in text


@pytest.mark.parametrize("width", [40, 60])
def test_a_narrow_terminal_keeps_every_lane_name_and_figure(width: int) -> None:
    """Narrower than the table: the lane name and the figures fold, none is cut or dropped."""
    lines = _render([_snapshot("demo-0646e2c4")], "executus top", width).splitlines()
    assert all(len(line) <= width for line in lines)
    assert not any("…" in line for line in lines)
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    row = lines[rule + 1 : lines.index(" " * width, rule)]
    # The lane column comes first: its folded pieces start each line of the row.
    assert "".join(line.split()[0] for line in row if line[1] != " ") == "demo-0646e2c4"


def test_bench_runs_a_benchmark_named_twice_once(tmp_path: Path) -> None:
    """bench --only eta --only eta runs bench_eta.py once."""
    (tmp_path / "bench_eta.py").write_text("print('eta ran')\n")
    result = CliRunner().invoke(
        cli, ["bench", "--only", "eta", "--only", "eta", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("eta ran") == 1
    assert result.stdout.startswith("== bench_eta.py ==\neta ran\n-- bench_eta.py: ")
