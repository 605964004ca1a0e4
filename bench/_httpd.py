"""The stub CA's HTTP server: :mod:`challenge_srv.httpd`'s protocol, stamped by the kernel.

The stub CA's figures are the truth its benchmarks compare the report with, so its server
stamps a request where it first reaches the server, not where a framework hands it over:
``received`` is when the request's first bytes reached the socket (over plain TCP on Linux,
:func:`serve_stamped`, the kernel's receive time, ``SO_TIMESTAMPNS``; else the time of the
``data_received`` call that brought them), and an answer is stamped just before it is
written (the handler learns that time, after the write). A connection's opening is not in
any request's time, as it is not in the client's (it times connections apart).
Everything a framework or the server's own event loop does between the socket and a handler
would otherwise be in the client's figure and not in the CA's.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

from pytest_wec_challenge_srv.httpd import Answer, Handler, HttpServerProtocol, ServerRequest

__all__ = ["Answer", "Handler", "HttpServerProtocol", "ServerRequest", "StampedTransport",
           "serve_stamped"]

#: Linux's SO_TIMESTAMPNS: each read says when the kernel received its bytes
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG = socket.CMSG_SPACE(16)


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
        if not data:  # the client's half-close: the answers due still go out
            self.loop.remove_reader(self.sock.fileno())
            if not self.protocol.eof_received():
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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            try:
                return self.sock.getpeername()
            except OSError:
                return default
        return default

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
    # on the listener, so that a connection's first bytes, which may arrive before it is
    # accepted, are stamped too (an accepted socket inherits the option)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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
