"""A lean HTTP/1.1 server on asyncio protocols, requests parsed by httptools (llhttp).

What an http-01 responder (and the benchmarks' stub CA) needs of HTTP and no more, at a
fraction of a framework's cost per request (``bench/bench_challenge_srv.py``): keep-alive,
pipelined requests answered in order, ``Content-Length`` and chunked bodies,
``Expect: 100-continue``, HEAD. A malformed request gets 400 and its connection closes (after
the answers due before it); a body over ``max_body`` gets 413; a handler that raises gets
500 (and is logged) and the server goes on; a connection that sends nothing for
``idle_timeout`` seconds (75, aiohttp's keep-alive default) is closed.

A handler is ``async (ServerRequest) -> (status, headers, body, then)``, called for one
request of a connection at a time; ``then`` (or None) is called with the time
(``time.time()``) the answer was written, once it is: what must follow the answer (telling
a waiting chain that the CA fetched its token) follows it. ``ServerRequest.received`` is
when the request's first bytes arrived: the time of the read that brought them, or the one a
transport stamps (:meth:`HttpServerProtocol.received_at`).
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

__all__ = ["Answer", "Handler", "HttpServerProtocol", "ServerRequest"]

log = logging.getLogger(__name__)

#: seconds a connection may send nothing before it is closed
IDLE_TIMEOUT = 75.0


@dataclass(slots=True)
class ServerRequest:
    method: str
    target: str  # the raw request target: path and query
    received: float  # time.time() when its first bytes arrived
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lowered
    body: bytes = b""
    keep_alive: bool = True
    peer: str | None = None  # the client's address

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (lower case), or ``default``."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


Answer = tuple[int, list[tuple[str, str]], bytes, Callable[[float], None] | None]
Handler = Callable[[ServerRequest], Awaitable[Answer]]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpServerProtocol(asyncio.Protocol):
    """One connection: parse requests as they arrive, answer them one at a time, in order."""

    def __init__(self, handler: Handler, max_body: int = 1 << 20,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.idle: asyncio.TimerHandle | None = None
        self.transport: Any = None  # an asyncio.Transport, or one with its write/close
        self.peer: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.now = 0.0
        self.url = b""
        self.current: ServerRequest | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.queue: deque[ServerRequest] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False  # nothing more is read
        self.failure: tuple[int, bytes] | None = None
        self.eof = False  # the client half-closed: close once the answers due are written

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._idle_from_now()

    def _idle_from_now(self) -> None:
        """(Re)start the idle timer: from the last bytes read or the last answer written."""
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.idle_timeout, self._idle_out)

    def _idle_out(self) -> None:
        self.idle = None
        log.debug("closing a connection from %s idle for %gs", self.peer, self.idle_timeout)
        self._close()

    def data_received(self, data: bytes) -> None:
        self.received_at(data, time.time())

    def received_at(self, data: bytes, at: float) -> None:
        """``data`` arrived at ``at`` (the kernel's stamp, where a transport has one)."""
        self.now = at
        if self.closing:
            return
        self._idle_from_now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not served")
        except httptools.HttpParserError as exc:  # a callback's raise comes wrapped in one
            if self.size > self.max_body:
                self._fail(413, b"request body too large")
            else:
                log.debug("malformed request from %s: %s", self.peer, exc)
                self._fail(400, f"malformed request: {exc}".encode())

    def eof_received(self) -> bool:
        """The client sent all it will (a half-close): answer what it asked, then close."""
        self.eof = True
        if self.task is None or self.task.done():
            if self.failure is not None:
                self._write_failure()
            self._close()
        return True  # the transport stays open for the answers due

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.closing = True
        self.failure = None
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body, self.size = [], 0
        self.current = ServerRequest("", "", self.now, peer=self.peer)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None and self.transport is not None
        if ("expect", "100-continue") in ((k, v.lower()) for k, v in self.current.headers):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise ValueError("request body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        self.current = None
        req.method = self.parser.get_method().decode("ascii", "replace")
        req.target = self.url.decode("latin-1")
        req.body = b"".join(self.body)
        req.keep_alive = self.parser.should_keep_alive()
        self.body = []
        self.queue.append(req)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._answer_all())

    # -- answering ----------------------------------------------------------------------

    async def _answer_all(self) -> None:
        while self.queue and self.transport is not None and not self.transport.is_closing():
            req = self.queue.popleft()
            try:
                status, headers, body, then = await self.handler(req)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a handler's bug: the client learns it, the server lives
                log.exception("%s %s from %s: the handler failed", req.method, req.target[:200],
                              req.peer)
                status, headers, body, then = 500, [("Content-Type", "text/plain")], \
                    f"{type(exc).__name__}: {exc}".encode(), None
            sent = self._write(req.method, status, headers, body, req.keep_alive)
            if not req.keep_alive:
                self._close()
            if then is not None:
                then(sent)
            if not self.closing:
                self._idle_from_now()
        if self.failure is not None:
            self._write_failure()
        elif self.eof:
            self._close()

    def _write(self, method: str, status: int, headers: list[tuple[str, str]], body: bytes,
               keep_alive: bool) -> float:
        """Write one answer; the time just before the write."""
        if self.transport is None or self.transport.is_closing():
            return time.time()
        lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers
                  if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        lines.append(f"Content-Length: {len(body)}\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        if method != "HEAD":
            data += body
        sent = time.time()
        self.transport.write(data)
        return sent

    def _fail(self, status: int, text: bytes) -> None:
        """Answer a bad request and close, after the answers due before it."""
        self.failure = (status, text)
        self.closing = True  # nothing more is read
        if self.task is None or self.task.done():
            self._write_failure()

    def _write_failure(self) -> None:
        status, text = self.failure or (500, b"")
        self._write("GET", status, [("Content-Type", "text/plain")], text, False)
        self._close()

    def _close(self) -> None:
        self.closing = True
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()
