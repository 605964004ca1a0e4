"""A lean Redis client: RESP2 over one persistent TCP connection, pipelined.

The challenge server's reads and seen events go through it (:class:`.store.ChallengeStore`,
:class:`.seen.SeenPublisher`): one query is one write and one reply, at a fraction of
redis-py's CPU per command (``bench/bench_challenge_srv.py``). It speaks only plain URLs:

    RespClient.from_url(url)   ``redis://[[user]:password@]host[:port][/db]``; None for any
                               other form (the server then reads through redis-py)
    await client.execute(cmd, ...)
                               sends the commands in one write and returns their replies;
                               several calls may be in flight, replies match in order

Replies: ``+simple`` and ``$bulk`` as bytes (``$-1`` None), ``:integer`` as int, ``*array``
as a list, ``-error`` raised as :class:`RespError` naming the command (an error inside an
EXEC's reply names the queued command). Every call, connecting included, is bounded by the
client's ``timeout``: past it the connection is dropped and the calls in flight raise
``TimeoutError``. A lost connection fails the calls in flight with
:class:`RespConnectionError`; the next call connects again (AUTH and SELECT first).

The requesters' writer (``pytest_wec.worker.publish.RedisPublisher``) uses the same client
(this package imports nothing from ``pytest_wec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

__all__ = ["RespClient", "RespConnectionError", "RespError", "pack"]

Arg = bytes | str | int
Command = Sequence[Arg]

_CRLF = b"\r\n"


class RespError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``, ``-WRONGTYPE ...``)."""


class RespConnectionError(ConnectionError):
    """No connection to Redis, or it was lost with commands in flight."""


class RespProtocolError(RespConnectionError):
    """Redis sent something that is not a RESP reply to the commands sent."""


def pack(commands: Sequence[Command]) -> bytes:
    """*commands* as RESP arrays of bulk strings, one buffer."""
    out: list[bytes] = []
    for cmd in commands:
        out.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            b = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply at *pos* and the position after it; position -1 while it is incomplete."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None, -1
    kind = buf[pos]
    if kind == 43:  # +
        return buf[pos + 1:end], end + 2
    if kind == 58:  # :
        return int(buf[pos + 1:end]), end + 2
    if kind == 36:  # $
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None, -1
        return buf[end + 2:stop], stop + 2
    if kind == 45:  # -
        return RespError(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    if kind == 42:  # *
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(n):
            item, at = _parse(buf, at)
            if at < 0:
                return None, -1
            items.append(item)
        return items, at
    raise ValueError(f"not a RESP reply: {buf[pos:pos + 40]!r}")


def _name(cmd: Command) -> str:
    """A command as an error message names it: its name and key (never AUTH's arguments)."""
    name = cmd[0].decode() if isinstance(cmd[0], bytes) else str(cmd[0])
    if len(cmd) < 2 or name.upper() == "AUTH":
        return name
    key = cmd[1]
    return f"{name} {key.decode('utf-8', 'replace') if isinstance(key, bytes) else key}"


def _check(commands: Sequence[Command], replies: list[Any]) -> None:
    multi = -1
    for i, reply in enumerate(replies):
        if type(reply) is RespError:
            raise RespError(f"{_name(commands[i])}: {reply}")
        name = commands[i][0]
        name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
        if name == "MULTI":
            multi = i
        elif name == "EXEC" and type(reply) is list:
            for j, r in enumerate(reply):
                if type(r) is RespError:
                    raise RespError(f"{_name(commands[multi + 1 + j])}: {r}")


class _Protocol(asyncio.Protocol):
    """One connection: futures of the calls in flight, oldest first, and their replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str, timeout: float) -> None:
        self.loop = loop
        self.where = where
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        #: (future, replies expected, deadline) of each call in flight
        self.pending: deque[tuple[asyncio.Future[list[Any]], int, float]] = deque()
        self.replies: list[Any] = []  # those of the oldest call so far
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.error: str | None = None  # set once the connection is not usable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def eof_received(self) -> bool:
        self.connection_lost(None)  # Redis closed it: the calls in flight fail at once
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else " (Redis closed it)"
        self.fail(RespConnectionError, f"connection to {self.where} lost{why}")

    def send(self, payload: bytes, count: int, deadline: float) -> asyncio.Future[list[Any]]:
        if self.error is not None or self.transport is None:
            raise RespConnectionError(self.error or f"not connected to {self.where}")
        fut = self.loop.create_future()
        self.pending.append((fut, count, deadline))
        self.transport.write(payload)
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._watch)
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, size, pending = 0, len(buf), self.pending
        while pos < size:
            try:
                value, end = _parse(buf, pos)
            except ValueError as exc:
                self.abort(RespProtocolError, f"{self.where}: {exc}")
                return
            if end < 0:
                break
            if not pending:
                self.abort(RespProtocolError, f"{self.where}: a reply to no command")
                return
            pos = end
            self.replies.append(value)
            fut, count, _ = pending[0]
            if len(self.replies) == count:
                pending.popleft()
                replies, self.replies = self.replies, []
                if not fut.done():  # its caller may have been cancelled
                    fut.set_result(replies)
        self.buf = buf[pos:] if pos < size else b""

    def _watch(self) -> None:
        """The one timer of the connection: at the earliest deadline of the calls in flight."""
        self.timer = None
        if not self.pending:
            return
        soonest = min(p[2] for p in self.pending)
        if soonest <= self.loop.time():
            self.abort(TimeoutError, f"{self.where}: no reply within {self.timeout:g}s")
        else:
            self.timer = self.loop.call_at(soonest, self._watch)

    def fail(self, kind: type[Exception], message: str) -> None:
        if self.error is None:
            self.error = message
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, deque()
        for fut, _, _ in pending:
            if not fut.done():
                with contextlib.suppress(RuntimeError):  # its event loop closed
                    fut.set_exception(kind(message))

    def abort(self, kind: type[Exception], message: str) -> None:
        self.fail(kind, message)
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.abort()


class RespClient:
    """Commands to one Redis over one persistent connection (see the module docstring)."""

    def __init__(self, host: str, port: int = 6379, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout: float = 10.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._proto: _Protocol | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0) -> RespClient | None:
        """A client for ``redis://[[user]:password@]host[:port][/db]``; None for any other
        form (``rediss://``, ``unix://``, query options, a user without password)."""
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            return None
        path = parts.path.lstrip("/")
        if (parts.scheme != "redis" or not parts.hostname or parts.query or parts.fragment
                or not (path == "" or path.isdigit())
                or (parts.username and parts.password is None)):
            return None
        return cls(parts.hostname, port, db=int(path or 0),
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password is not None else None,
                   timeout=timeout)

    async def execute(self, *commands: Command) -> list[Any]:
        """Sends *commands* in one write; their replies, in order (see the module doc)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        proto = self._proto
        if proto is None or proto.error is not None or proto.loop is not loop:
            proto = await self._connect(loop, deadline)
        replies = await proto.send(pack(commands), len(commands), deadline)
        _check(commands, replies)
        return replies

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Protocol:
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout_at(deadline), self._lock[1]:
                current = self._proto
                if current is not None and current.error is None and current.loop is loop:
                    return current  # another call connected meanwhile
                self._drop()
                try:
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(loop, self.where, self.timeout), self.host, self.port)
                except OSError as exc:
                    raise RespConnectionError(f"cannot connect to {self.where}: {exc}") from None
                hello: list[Command] = []
                if self.password is not None:
                    hello.append((b"AUTH", self.username, self.password) if self.username
                                 else (b"AUTH", self.password))
                if self.db:
                    hello.append((b"SELECT", self.db))
                if hello:
                    _check(hello, await proto.send(pack(hello), len(hello), deadline))
                self._proto = proto
                return proto
        except TimeoutError:
            if proto is not None and self._proto is not proto:
                proto.abort(TimeoutError, "connecting timed out")
            raise TimeoutError(f"{self.where}: no connection within {self.timeout:g}s") from None
        except BaseException:
            if proto is not None and self._proto is not proto:
                proto.abort(RespConnectionError, f"connecting to {self.where} failed")
            raise

    def _drop(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.abort(RespConnectionError, f"connection to {self.where} closed")

    async def aclose(self) -> None:
        """Closes the connection; calls still in flight raise RespConnectionError."""
        self._drop()
