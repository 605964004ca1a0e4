"""A lean HTTP/1.1 server for the stub CA: asyncio protocols, requests parsed by httptools.

The stub CA's figures are the truth its benchmarks compare the report with, so its server
stamps a request where it first reaches the server, not where a framework hands it over:
``received`` is when the request's first bytes reached the socket (over plain TCP on Linux,
:func:`serve_stamped`, the kernel's receive time, ``SO_TIMESTAMPNS``; else the time of the
``data_received`` call that brought them), and an answer is stamped just before it is
written (the handler learns that time, after the write). A connection's opening is not in
any request's time, as it is not in the client's (it times connections apart).
Everything a framework or the server's own event loop does between the socket and a handler
would otherwise be in the client's figure and not in the CA's.

Keep-alive, pipelined requests answered in order, ``Content-Length`` and chunked bodies,
``Expect: 100-continue``, HEAD; a malformed request gets 400 and its connection closes; a
body over ``max_body`` gets 413. A handler is ``async (ServerRequest) -> (status, headers,
body, then)``, called for one request of a connection at a time; ``then`` (or None) is
called with the time the answer was written, once it is.
"""

from __future__ import annotations

import asyncio
import http
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

__all__ = ["Answer", "Handler", "HttpServerProtocol", "ServerRequest", "StampedTransport",
           "serve_stamped"]

#: Linux's SO_TIMESTAMPNS: each read says when the kernel received its bytes
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG = socket.CMSG_SPACE(16)


@dataclass(slots=True)
class ServerRequest:
    method: str
    target: str  # the raw request target: path and query
    received: float  # time.time() when its first bytes arrived
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lowered
    body: bytes = b""
    keep_alive: bool = True


Answer = tuple[int, list[tuple[str, str]], bytes, Callable[[float], None] | None]
Handler = Callable[[ServerRequest], Awaitable[Answer]]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpServerProtocol(asyncio.Protocol):
    """One connection: parse requests as they arrive, answer them one at a time, in order."""

    def __init__(self, handler: Handler, max_body: int = 1 << 20) -> None:
        self.handler = handler
        self.max_body = max_body
        self.transport: asyncio.Transport | StampedTransport | None = None
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

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_at(data, time.time())

    def received_at(self, data: bytes, at: float) -> None:
        """``data`` arrived at ``at`` (the kernel's stamp, where a transport has one)."""
        self.now = at
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not served")
        except httptools.HttpParserError as exc:  # a callback's raise comes wrapped in one
            if self.size > self.max_body:
                self._fail(413, b"request body too large")
            else:
                self._fail(400, f"malformed request: {exc}".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.failure = None
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body, self.size = [], 0
        self.current = ServerRequest("", "", self.now)

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
                status, headers, body, then = 500, [("Content-Type", "text/plain")], \
                    f"{type(exc).__name__}: {exc}".encode(), None
            sent = self._write(req.method, status, headers, body, req.keep_alive)
            if not req.keep_alive:
                self._close()
            if then is not None:
                then(sent)
        if self.failure is not None:
            self._write_failure()

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


class StampedTransport:
    """A plain TCP connection read with ``recvmsg`` for the kernel's receive time of each read
    (the selector loop's reader and writer callbacks; the few methods the protocol uses)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: HttpServerProtocol) -> None:
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.out = bytearray()
        self.closed = False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        protocol.connection_made(self)  # type: ignore[arg-type]
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 16, _CMSG)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        at = time.time()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                at = sec + nsec / 1e9
        self.protocol.received_at(data, at)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            if n == len(data):
                return
            data = data[n:]
            self.loop.add_writer(self.sock.fileno(), self._writable)
        self.out += data

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self.out[:n]
        if not self.out:
            self.loop.remove_writer(self.sock.fileno())
            if self.closing_after_write:
                self._lost(None)

    closing_after_write = False

    def is_closing(self) -> bool:
        return self.closed or self.closing_after_write

    def close(self) -> None:
        if self.out:
            self.closing_after_write = True  # once what is written is sent
        else:
            self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self.sock.close()
        self.protocol.connection_lost(exc)


def serve_stamped(loop: asyncio.AbstractEventLoop, sock: socket.socket, handler: Handler,
                  backlog: int = 4096, max_body: int = 1 << 20) -> None:
    """Serve plain HTTP on the bound ``sock`` with kernel receive stamps (Linux)."""
    sock.listen(backlog)
    sock.setblocking(False)

    def accept() -> None:
        for _ in range(64):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors and the like: the client's connect fails
            StampedTransport(loop, conn, HttpServerProtocol(handler, max_body))

    loop.add_reader(sock.fileno(), accept)
