"""RedisLane with an ACL user and over TLS, against a real redis-server.

The ACL server grants the user exactly the rule documented in docs/redis.md (so the
documentation is what is tested); the TLS server uses a throwaway CA and server
certificate made with the ``openssl`` command in a temporary directory.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executus import JobState, LaneUnavailable
from executus.redis import RedisLane
from tests.helpers import Gate, value

from .conftest import free_port, need_redis_server
from .helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "redis.md"
LUA = Path(__file__).resolve().parents[2] / "src" / "executus" / "_redis" / "lua"
PASSWORD = "s3cret"


def documented_acl_rule() -> list[str]:
    """The user's rights from the ``ACL SETUSER lanes ...`` line of docs/redis.md."""
    for line in DOCS.read_text("utf-8").splitlines():
        if line.startswith("ACL SETUSER lanes "):
            return shlex.split(line)[3:]
    raise AssertionError("docs/redis.md has no 'ACL SETUSER lanes ...' line")


def test_documented_acl_rule_covers_every_command_the_scripts_run() -> None:
    """The documented ACL grants exactly the commands the Lua scripts call, plus the
    three the client sends itself."""
    used = set()
    for path in LUA.glob("*.lua"):
        used |= {c.lower() for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", path.read_text())}
    granted = {r[1:] for r in documented_acl_rule() if r.startswith("+")}
    assert granted == used | {"evalsha", "eval", "blpop"}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server whose default user is off; user ``lanes`` has the documented
    rights, user ``stranger`` every command but on other keys only."""
    need_redis_server()
    rights = documented_acl_rule()
    assert f">{PASSWORD}" in rights
    server = RedisServer(
        free_port(),
        tmp_path_factory.mktemp("redis-acl"),
        extra_args=[
            *("--user", "default", "off"),
            *("--user", "lanes", *rights),
            *("--user", "stranger", "on", ">pw", "~elsewhere:*", "+@all"),
        ],
    )
    with server:
        yield server


def acl_url(server: RedisServer, user: str, password: str) -> str:
    """The server's URL with credentials."""
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


async def test_acl_user_with_the_documented_rights_runs_a_lane(acl_server: RedisServer) -> None:
    """A user with the documented rights submits, queues, is granted across clients,
    holds slots and reads stats."""
    url = acl_url(acl_server, "lanes", PASSWORD)
    a = RedisLane("acl-ok", url, 1)
    b = RedisLane("acl-ok", url)
    try:
        gate = Gate()
        first = await a.submit(gate)
        queued = await b.submit(value("granted over BLPOP"))
        assert queued.state is JobState.QUEUED
        async with asyncio.timeout(5):
            while not gate.running:  # noqa: ASYNC110 - the body starts in its own task
                await asyncio.sleep(0.001)
        gate.release()
        await first
        async with asyncio.timeout(10):
            assert await queued == "granted over BLPOP"
        async with b.slot() as job:
            assert job.state is JobState.RUNNING
        stats = await a.stats()
        assert (stats.succeeded, stats.running, stats.queued) == (3, 0, 0)
    finally:
        await a.aclose(drain=False)
        await b.aclose(drain=False)


async def test_wrong_password_is_lane_unavailable(acl_server: RedisServer) -> None:
    """A wrong password fails at once with LaneUnavailable naming the refusal."""
    lane = RedisLane("acl-bad", acl_url(acl_server, "lanes", "wrong"), 1)
    message = (
        r"^lane 'acl-bad': Redis refused the credentials \(AuthenticationError: "
        r"invalid username-password pair or user is disabled\.\)$"
    )
    try:
        with pytest.raises(LaneUnavailable, match=message):
            await lane.run(value(1))
        assert not lane.closed
    finally:
        await lane.aclose()


async def test_no_credentials_when_the_default_user_is_off(acl_server: RedisServer) -> None:
    """Without credentials (and the default user off) the lane says Redis refused them."""
    lane = RedisLane("acl-none", acl_server.url, 1)
    try:
        with pytest.raises(
            LaneUnavailable, match=r"^lane 'acl-none': Redis refused the credentials"
        ):
            await lane.stats()
    finally:
        await lane.aclose()


async def test_user_without_the_namespace_keys_is_told_what_is_missing(
    acl_server: RedisServer,
) -> None:
    """A user without the namespace's keys gets LaneUnavailable naming the key pattern."""
    lane = RedisLane("acl-keys", acl_url(acl_server, "stranger", "pw"), 1)
    message = (
        r"^lane 'acl-keys': the Redis user lacks a permission the lane needs \(this user "
        r"has no permissions to access one of the keys used as arguments\); it needs the "
        r"keys '~\{executus:\*' and the commands listed in the ACL section of docs/redis.md$"
    )
    try:
        with pytest.raises(LaneUnavailable, match=message):
            await lane.submit(value(1))
    finally:
        await lane.aclose()


# -- a unix socket -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that also listens on a unix socket (``redis.sock`` in its
    directory) and wants a password."""
    need_redis_server()
    directory = tmp_path_factory.mktemp("redis-unix")
    server = RedisServer(
        free_port(),
        directory,
        extra_args=[
            *("--unixsocket", str(directory / "redis.sock")),
            *("--requirepass", PASSWORD),
        ],
    )
    with server:
        yield server


@pytest.mark.parametrize(
    ("credentials", "db", "refusal"),
    [
        pytest.param(
            "wrong",
            0,
            "Redis refused the credentials (AuthenticationError: invalid username-password "
            "pair or user is disabled.)",
            id="wrong-password",
        ),
        pytest.param(
            PASSWORD,
            99,
            "Redis refused the connection's setup: DB index is out of range (check the URL "
            "or the client's settings)",
            id="database-out-of-range",
        ),
    ],
)
async def test_a_refusal_over_a_unix_socket_is_reported_at_once(
    unix_server: RedisServer, credentials: str, db: int, refusal: str
) -> None:
    """Over unix://, wrong credentials or a database Redis lacks fail at once, as over TCP."""
    lane = RedisLane("unix-bad", f"unix://:{credentials}@{unix_server.dir}/redis.sock?db={db}", 1)
    try:
        started = time.monotonic()
        with pytest.raises(LaneUnavailable) as e:
            await lane.stats()
        assert str(e.value) == f"lane 'unix-bad': {refusal}"
        assert time.monotonic() - started < 1.0  # no retries: the budget is 3 s
    finally:
        await lane.aclose()


# -- TLS -----------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    """Run the openssl command; fail the test with its output if it fails."""
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr.decode()}")


def make_certificates(directory: Path) -> None:
    """A throwaway CA (ca.crt) and a server certificate for 127.0.0.1 signed by it."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        *("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"),
        *("-subj", "/CN=executus test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign"),
        cwd=directory,
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=directory)  # fmt: skip
    (directory / "san.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
    )
    openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf"),
        cwd=directory,
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that speaks TLS only, with a certificate from a throwaway CA."""
    need_redis_server()
    if shutil.which("openssl") is None:  # pragma: no cover - depends on the machine
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("redis-tls")
    make_certificates(directory)
    trust = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    server = RedisServer(
        free_port(),
        directory,
        extra_args=[
            *("--tls-cert-file", str(directory / "server.crt")),
            *("--tls-key-file", str(directory / "server.key")),
            *("--tls-ca-cert-file", str(directory / "ca.crt")),
            *("--tls-auth-clients", "no"),
        ],
        tls=trust,
    )
    try:
        server.start()
    except RuntimeError as e:  # pragma: no cover - depends on how redis-server was built
        if "tls" in str(e).lower() and "Bad directive" in str(e):
            pytest.skip("redis-server was built without TLS support")
        raise
    try:
        yield server
    finally:
        server.stop()


def tls_url(server: RedisServer, query: str) -> str:
    """The server's rediss:// URL with ``query``."""
    return f"rediss://127.0.0.1:{server.port}/0?{query}"


async def test_tls_with_the_ca_runs_a_lane(tls_server: RedisServer) -> None:
    """Over rediss:// with the CA, a lane runs jobs and grants across clients."""
    ca = tls_server.dir / "ca.crt"
    url = tls_url(tls_server, f"ssl_cert_reqs=required&ssl_ca_certs={ca}")
    a = RedisLane("tls-ok", url, 1)
    b = RedisLane("tls-ok", url)
    try:
        gate = Gate()
        first = await a.submit(gate)
        queued = await b.submit(value("over TLS"))
        async with asyncio.timeout(5):
            while not gate.running:  # noqa: ASYNC110 - the body starts in its own task
                await asyncio.sleep(0.001)
        gate.release()
        await first
        async with asyncio.timeout(10):
            assert await queued == "over TLS"
        assert (await b.stats()).succeeded == 2
    finally:
        await a.aclose(drain=False)
        await b.aclose(drain=False)


async def test_tls_without_the_ca_is_refused(tls_server: RedisServer) -> None:
    """A server certificate the client does not trust fails at once with LaneUnavailable."""
    lane = RedisLane("tls-bad", tls_url(tls_server, "ssl_cert_reqs=required"), 1)
    message = (
        r"^lane 'tls-bad': the TLS certificate of Redis was not trusted \(.*"
        r"CERTIFICATE_VERIFY_FAILED.*\); pass the CA with ssl_ca_certs=\.\.\. in the URL$"
    )
    try:
        with pytest.raises(LaneUnavailable, match=message):
            await lane.run(value(1))
    finally:
        await lane.aclose()
