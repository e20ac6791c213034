"""The ``executus`` command: click commands over the library and a Redis."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.live import Live

from .. import __version__
from .._base import STORED_MAX, is_utf8
from .._errors import LaneError, NotQueued
from .._redis.keys import LaneKeys, check_key_part, check_namespace
from .._redisurl import masked_url as _masked_url
from .._redisurl import scrubbed as _scrubbed_text

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["cli", "main"]

_URL_HELP = "Redis URL (default: $EXECUTUS_REDIS_URL, else redis://localhost:6379/0)."
_DEFAULT_URL = "redis://localhost:6379/0"
_CLUSTER_ENV = "EXECUTUS_REDIS_CLUSTER"
_CLUSTER_HELP = (
    f"The URL names a node of a Redis Cluster; reach every node (default: ${_CLUSTER_ENV})."
)
BENCHMARKS = ("lane", "scale", "eta", "fairness", "fanout", "redis")


def safe_url(url: str) -> str:
    """The URL with its passwords masked, for messages: that of its user info
    (``redis://u:***@host``, also when written unencoded with ``/``, ``?`` or ``#``) and
    a ``password=`` in its query, which redis-py reads too."""
    return _masked_url(url)


def _scrubbed(error: BaseException, url: str) -> str:
    """``str(error)`` without the passwords of ``url``: redis-py quotes a part of an
    unencoded one as a bad port (``'pa'`` of ``redis://u:pa/ss@host``)."""
    return _scrubbed_text(str(error), url)


def _key_part(what: str, value: str) -> str:
    """A lane name or namespace as Redis can take it, else a usage error."""
    try:
        if what == "namespace":
            check_namespace(value)
        else:
            check_key_part(what, value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if not is_utf8(value):  # bytes of the command line that are not UTF-8
        raise click.BadParameter(f"{what} must be encodable as UTF-8, got {value!r}")
    return value


def _namespace(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    return _key_part("namespace", value)


def _url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The Redis URL stripped of surrounding blanks, as ``executus.config`` reads
    ``REDIS_URL``; a blank variable counts as unset (the default URL)."""
    if value is None:
        return None
    url = value.strip()
    if url:
        return url
    if param.name is not None and (
        ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    ):
        return _DEFAULT_URL
    raise click.BadParameter("the URL is blank")


def _lane_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    return _key_part("lane name", value)


class _FiniteRange(click.FloatRange):
    """A ``FloatRange`` that also refuses nan (it compares false with every bound)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        result = super().convert(value, param, ctx)
        if isinstance(result, float) and math.isnan(result):
            self.fail(f"{result} is not in the range {self._describe_range()}.", param, ctx)
        return result


class _EnvBool(click.types.BoolParamType):
    """A flag's boolean; a bad value of its environment variable names the variable."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            if (
                ctx is not None
                and param is not None
                and param.name is not None
                and isinstance(param.envvar, str)
                and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
            ):
                self.fail(
                    f"${param.envvar} must be a boolean (true/false, yes/no, on/off, 1/0), "
                    f"got {value!r}",
                    param,
                    ctx,
                )
            raise


def redis_options(f: Any) -> Any:
    """``--redis``, ``--cluster`` and ``--namespace``."""
    f = click.option(
        "--namespace",
        default="executus",
        show_default=True,
        callback=_namespace,
        help="Key namespace of the lanes.",
    )(f)
    f = click.option(
        "--cluster",
        is_flag=True,
        type=_EnvBool(),
        envvar=_CLUSTER_ENV,
        help=_CLUSTER_HELP,
    )(f)
    return click.option(
        "--redis",
        "url",
        envvar="EXECUTUS_REDIS_URL",
        default=_DEFAULT_URL,
        callback=_url,
        metavar="URL",
        help=_URL_HELP,
    )(f)


def need_redis() -> Any:
    """The redis module, or a click error saying how to install it."""
    try:
        import redis
    except ImportError:
        raise click.ClickException(
            "this needs redis-py: install executus[redis] (pip install 'executus[redis]')"
        ) from None
    return redis


def _is_cluster_node(client: redis.Redis | redis.cluster.RedisCluster) -> bool:
    """Whether the server runs in cluster mode (False if INFO is not allowed)."""
    import redis

    try:
        info = client.info("cluster")
    except redis.ResponseError:  # an ACL user without INFO: assume a single server
        return False
    return str(info.get("cluster_enabled", "0")) == "1"


@contextmanager
def redis_client(
    url: str, *, cluster: bool = False
) -> Iterator[redis.Redis | redis.cluster.RedisCluster]:
    """A client for ``url``, checked with PING; errors become one-line click errors.

    With ``cluster``, a ``RedisCluster`` client found from the node ``url`` names (it
    reaches every node). Without, a cluster node is refused: a plain client would see
    only the lanes that node serves.
    """
    need_redis()
    import redis.cluster

    failed = (redis.RedisError, redis.exceptions.RedisClusterException)
    options: dict[str, Any] = {
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "decode_responses": True,
    }
    client: redis.Redis | redis.cluster.RedisCluster
    try:
        if cluster:
            client = redis.cluster.RedisCluster.from_url(url, **options)
        else:
            client = redis.Redis.from_url(url, **options)
    except ValueError as e:
        raise click.ClickException(
            f"bad Redis URL {safe_url(url)!r}: {_scrubbed(e, url)}"
        ) from None
    except redis.exceptions.RedisClusterException as e:
        if "not enabled" in str(e).lower():
            raise click.ClickException(
                f"Redis at {safe_url(url)} is not in cluster mode: drop --cluster "
                f"(or unset ${_CLUSTER_ENV})"
            ) from None
        raise click.ClickException(
            f"cannot reach Redis at {safe_url(url)}: {_scrubbed(e, url)}"
        ) from None
    try:
        try:
            client.ping()
            wrong_mode = not cluster and _is_cluster_node(client)
        except failed as e:
            raise click.ClickException(
                f"cannot reach Redis at {safe_url(url)}: {_scrubbed(e, url)}"
            ) from None
        if wrong_mode:
            raise click.ClickException(
                f"Redis at {safe_url(url)} is a node of a Redis Cluster: pass --cluster "
                f"(or set ${_CLUSTER_ENV}=1) to reach the lanes on every node"
            )
        try:
            yield client
        except failed as e:
            raise click.ClickException(
                f"Redis at {safe_url(url)} failed: {_scrubbed(e, url)}"
            ) from None
    finally:
        client.close()


def _reader_gone() -> click.exceptions.Exit:
    """What to raise when stdout's reader went away (``executus top --json | head -1``):
    a quiet exit 0, as after Ctrl-C. The reader took what it wanted; the command has
    nothing left to do."""
    try:
        # Python flushes stdout at exit: let what is left of it go nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # io.UnsupportedOperation: stdout is not a file
        pass
    return click.exceptions.Exit(0)


class _Console(Console):
    """A rich ``Console`` whose closed stdout ends the command as a ``click.echo`` to it
    does (rich's own handling exits 1)."""

    def on_broken_pipe(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().on_broken_pipe()  # a Live refresh thread: rich ends it, output stops
            return
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


class _Group(click.Group):
    """The command group; a closed stdout ends any command quietly (see ``_reader_gone``).

    (click itself exits 1 then.)
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:  # while printing --help or --version
            raise _reader_gone() from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _reader_gone() from None


@click.group(name="executus", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="executus")
def cli() -> None:
    """executus: fair, predictable sharing of scarce back ends.

    Run the demo, watch the lanes of a Redis, change a lane's limit or cancel a
    queued job, and run the benchmarks.
    """


# -- demo ----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--seconds",
    type=_FiniteRange(min=0, min_open=True, max=3600),
    default=10.0,
    show_default=True,
    help="How long users send traffic.",
)
@click.option(
    "--users",
    type=click.IntRange(min=1, max=50),
    default=4,
    show_default=True,
    help="Interactive users (the first, mallory, floods).",
)
@click.option(
    "--policy",
    type=click.Choice(["fifo", "priority", "fair"]),
    default="fair",
    show_default=True,
    help="Queue policy of the lanes.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed of the traffic.")
@click.option(
    "--redis",
    "url",
    default=None,
    callback=_url,
    metavar="URL",
    help="Share one RedisLane across --processes processes in this Redis.",
)
@click.option(
    "--cluster",
    is_flag=True,
    help="The --redis URL names a node of a Redis Cluster; reach every node.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=32),
    default=3,
    show_default=True,
    help="Processes sharing the lane (with --redis).",
)
@click.option(
    "--namespace",
    default="executus",
    show_default=True,
    callback=_namespace,
    help="Key namespace of the demo's lane (with --redis).",
)
def demo(
    seconds: float,
    users: int,
    policy: str,
    seed: int,
    url: str | None,
    cluster: bool,
    processes: int,
    namespace: str,
) -> None:
    """Simulate users sharing lanes, shown live in a table.

    Users send requests to a GPU lane (2 slots, preemption with requeue) and an API lane
    (2 slots); one user floods, a batch key sends long preemptible jobs, an admin sends
    urgent ones, and some requests carry a max_wait and are refused at once. With
    --redis, N processes share one RedisLane (with --cluster, on a Redis Cluster) and
    the limit is checked lane-wide.
    """
    from ._demo import DemoSettings, run_local_demo

    if cluster and url is None:
        raise click.UsageError("--cluster needs --redis URL (the URL of a node of the cluster)")
    if url is None:
        ctx = click.get_current_context()
        for name in ("processes", "namespace"):
            source = ctx.get_parameter_source(name)
            if source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
                raise click.UsageError(
                    f"--{name} needs --redis URL (it sets the lane the processes share there)"
                )
    settings = DemoSettings(seconds=seconds, users=users, policy=policy, seed=seed)
    console = _Console()
    if url is None:
        code = run_local_demo(settings, console)
    else:
        need_redis()
        from ._redis_demo import RedisDemo, run_redis_demo

        with redis_client(url, cluster=cluster) as client:
            where = RedisDemo(url, namespace, processes, cluster)
            code = run_redis_demo(settings, where, console, client)
    if code:
        raise SystemExit(code)


# -- top -----------------------------------------------------------------------------


def _json_loop(
    client: redis.Redis | redis.cluster.RedisCluster,
    url: str,
    namespace: str,
    once: bool,
    interval: float,
) -> None:
    from ._top import read_lanes

    while True:
        doc = {
            "redis": safe_url(url),
            "namespace": namespace,
            "time": time.time(),
            "lanes": [s.to_json() for s in read_lanes(client, namespace)],
        }
        click.echo(json.dumps(doc, indent=2 if once else None))
        if once:
            return
        time.sleep(interval)


@cli.command()
@redis_options
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON (one document per snapshot).")
@click.option(
    "--interval",
    type=_FiniteRange(min=0.1, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
def top(
    url: str, cluster: bool, namespace: str, once: bool, as_json: bool, interval: float
) -> None:
    """Show every lane in a Redis live: slots, queue by key, waits, throughput.

    Read-only: the view never joins a lane. Ctrl-C stops it. Into a pipe or a file,
    one plain table per refresh. With --once --json, one JSON document for scripts;
    --json alone prints one line per refresh.
    """
    need_redis()
    from ._top import now_text, read_lanes, render_lanes

    with redis_client(url, cluster=cluster) as client:

        def title() -> str:
            return f"executus top - {safe_url(url)} namespace {namespace!r} - {now_text()}"

        if as_json:
            try:
                _json_loop(client, url, namespace, once, interval)
            except KeyboardInterrupt:
                return
            return
        console = _Console()
        if once:
            console.print(render_lanes(read_lanes(client, namespace), title=title()))
            return
        try:
            if console.is_terminal:
                # Redrawn in place from this thread only, on each refresh: a closed
                # stdout then ends the command here (see _Console).
                with Live(console=console, auto_refresh=False, screen=False) as live:
                    while True:
                        view = render_lanes(read_lanes(client, namespace), title=title())
                        live.update(view, refresh=True)
                        time.sleep(interval)
            else:
                # A pipe or a file gets each refresh as it comes, one plain table after
                # another (as ``top -b``): a live view would show only the last one, at exit.
                while True:
                    console.print(render_lanes(read_lanes(client, namespace), title=title()))
                    console.line()
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


# -- lane ----------------------------------------------------------------------------


@cli.group()
def lane() -> None:
    """Change a lane stored in a Redis."""


def _existing_lane(
    client: redis.Redis | redis.cluster.RedisCluster, namespace: str, name: str, url: str
) -> None:
    from ._top import find_lanes

    if client.hget(LaneKeys(namespace, name).cfg, "v") is not None:
        return
    known = find_lanes(client, namespace)
    hint = f"; lanes there: {', '.join(known)}" if known else "; there are none"
    raise click.ClickException(
        f"no lane {name!r} in namespace {namespace!r} at {safe_url(url)}{hint}"
    )


async def _with_lane(
    url: str, cluster: bool, namespace: str, name: str, action: str, arg: str
) -> Any:
    from ..redis import RedisLane

    redis_lane = RedisLane(name, url, namespace=namespace, cluster=cluster)
    try:
        if action == "set-max":
            before = (await redis_lane.stats()).max_concurrent
            await redis_lane.set_max_concurrent(int(arg))
            return before
        await redis_lane.cancel(arg)
        return None
    finally:
        await redis_lane.aclose(drain=False)


@lane.command("set-max")
@redis_options
@click.argument("name", callback=_lane_name)
@click.argument("n", type=int)
def set_max(url: str, cluster: bool, namespace: str, name: str, n: int) -> None:
    """Set lane NAME's max_concurrent to N, for every process at once.

    Raising it starts queued jobs at once; lowering it never cancels a running job.
    """
    if n < 1:
        raise click.BadParameter(f"max_concurrent must be >= 1, got {n}", param_hint="'N'")
    if n >= STORED_MAX:
        raise click.BadParameter(
            f"max_concurrent must be < 2**40 for a Redis lane, got {n}", param_hint="'N'"
        )
    with redis_client(url, cluster=cluster) as client:
        _existing_lane(client, namespace, name, url)
    try:
        before = asyncio.run(_with_lane(url, cluster, namespace, name, "set-max", str(n)))
    except LaneError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"lane {name!r}: max_concurrent {before} -> {n}")


@lane.command("cancel")
@redis_options
@click.argument("name", callback=_lane_name)
@click.argument("job_id")
def cancel(url: str, cluster: bool, namespace: str, name: str, job_id: str) -> None:
    """Cancel the queued job JOB_ID of lane NAME (its waiters get JobCancelled).

    A job that is not queued (unknown, running or ended) is an error.
    """
    if not job_id:
        raise click.BadParameter("job id must be a non-empty str, got ''", param_hint="'JOB_ID'")
    with redis_client(url, cluster=cluster) as client:
        _existing_lane(client, namespace, name, url)
    try:
        asyncio.run(_with_lane(url, cluster, namespace, name, "cancel", job_id))
    except NotQueued as e:
        raise click.ClickException(str(e)) from None
    except LaneError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"lane {name!r}: cancelled queued job {job_id!r}")


# -- bench ---------------------------------------------------------------------------


def _find_bench_dir() -> Path | None:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base / "bench"
        if (candidate / "bench_lane.py").is_file():
            return candidate
    return None


@cli.command()
@click.option("--quick", is_flag=True, help="Fewer runs and smaller sizes.")
@click.option(
    "--only",
    type=click.Choice(BENCHMARKS),
    multiple=True,
    help="Run only this benchmark (repeatable). Default: all.",
)
@click.option(
    "--dir",
    "bench_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The bench/ directory (default: found from here or the source tree).",
)
def bench(quick: bool, only: tuple[str, ...], bench_dir: Path | None) -> None:
    """Run the benchmark scripts (bench/bench_*.py) and print their tables.

    They measure executus against its peers on this machine; bench_redis starts its own
    redis-server. Exits non-zero if any script fails.
    """
    directory = bench_dir or _find_bench_dir()
    if directory is None:
        raise click.ClickException(
            "no bench/ directory found: run from a source checkout or pass --dir PATH"
        )
    failed = []
    for name in dict.fromkeys(only or BENCHMARKS):  # each once: --only lane --only lane
        script = directory / f"bench_{name}.py"
        if not script.is_file():
            failed.append(name)
            click.echo(f"executus bench: {script} is missing", err=True)
            continue
        args = [sys.executable, str(script)]
        if quick:
            # Every script takes --quick except those that only have --runs.
            args += ["--quick"] if "--quick" in script.read_text("utf-8") else ["--runs", "2"]
        click.echo(f"== {script.name}{' (quick)' if quick else ''} ==")
        started = time.monotonic()
        with subprocess.Popen(
            args,
            cwd=directory.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:  # relayed as it comes: the scripts print progress
                    click.echo(line, nl=False)
            except BrokenPipeError:
                proc.kill()  # nobody reads its tables any more
                raise
        click.echo(f"-- {script.name}: {time.monotonic() - started:.1f}s\n")
        if proc.returncode != 0:
            failed.append(name)
            click.echo(f"executus bench: {script.name} exited with {proc.returncode}", err=True)
    if failed:
        raise click.ClickException(f"benchmarks failed: {', '.join(failed)}")


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code instead of exiting."""
    try:
        cli.main(args=argv, prog_name="executus", standalone_mode=True)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 0
