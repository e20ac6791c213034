"""Test helpers: a redis-server process, a cuttable TCP proxy, an overlap checker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class RedisServer:
    """A redis-server child process on ``port``, without persistence.

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
    ) -> None:
        self.port = port
        self.dir = directory
        self.extra_args = list(extra_args)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """What the server wrote to stderr and stdout so far."""
        path = self.dir / "redis-server.log"
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
        with (self.dir / "redis-server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
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
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{self.log}")
            try:
                if self._ping():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log}")

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
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
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
