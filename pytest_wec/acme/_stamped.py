"""Connections read with the kernel's receive time of each read (Linux ``SO_TIMESTAMPNS``).

A response's end is stamped when its last bytes are read. Read through the event loop's own
transport, that is when the worker's loop gets to the socket, which under a burst (a CA
that answers many held requests at once, a loop busy with the chains those answers wake)
is milliseconds after the bytes arrived: the worker's own delay in the CA's latency. Read
here with ``recvmsg``, each read carries the time the kernel received its bytes, whatever
the loop was doing meanwhile, so the figure ends where the answer reached this machine.

:func:`open_stamped` opens a TCP connection (and TLS over it, with :mod:`ssl`'s memory
BIOs: the same ``SSLContext`` and checks as the loop's own TLS) and hands the protocol a
:class:`StampedTransport`: the few transport calls
:class:`~pytest_wec.acme._httpconn.Connection` makes, on the loop's reader and writer
callbacks. The protocol's ``received(data, at)`` gets each read's plaintext with its stamp
(``time.perf_counter()`` time: the kernel's wall-clock stamp moved onto that clock at the
read). Where the option or a stamp is missing, the stamp is the time of the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl
import struct
import sys
import time
from typing import Any, Protocol

__all__ = ["KERNEL_STAMPS", "StampedTransport", "open_stamped"]

#: Linux's SO_TIMESTAMPNS (and its control message's type): each read says when the kernel
#: received the bytes it returns (the last of them)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
#: the platform stamps reads (Linux)
KERNEL_STAMPS = sys.platform.startswith("linux")
_CMSG = socket.CMSG_SPACE(16) if KERNEL_STAMPS else 0
_READ = 1 << 16  # under malloc's mmap threshold: a read allocates this much
#: seconds: a kernel stamp older than this (or in the future) is taken for a clock step
_PLAUSIBLE_AGE = 60.0
_perf = time.perf_counter
_wall = time.time


class _Receiver(Protocol):
    def connection_made(self, transport: Any) -> None: ...
    def received(self, data: bytes, at: float) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class StampedTransport:
    """One connection on a non-blocking socket (TLS through *sslobj* when given): reads with
    ``recvmsg``, writes buffered when the socket is full; see the module's doc."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: _Receiver, sslobj: _ssl.SSLObject | None = None,
                 incoming: _ssl.MemoryBIO | None = None,
                 outgoing: _ssl.MemoryBIO | None = None) -> None:
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._ssl, self._in, self._out = sslobj, incoming, outgoing
        self._pending = bytearray()  # bytes the socket did not take yet
        self._closed = False
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._readable)

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self._sock.recvmsg(_READ, _CMSG)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        now = _perf()
        at = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                age = _wall() - (sec + nsec * 1e-9)
                if 0.0 <= age <= _PLAUSIBLE_AGE:
                    at = now - age
        if not data:
            self._lost(None)
            return
        if self._ssl is None:
            self._protocol.received(data, at)
            return
        incoming, sslobj = self._in, self._ssl
        assert incoming is not None
        incoming.write(data)
        chunks = []
        ended = False
        # read while TLS has bytes to work on (a record not yet whole: SSLWantReadError)
        while incoming.pending or sslobj.pending():
            try:
                chunk = sslobj.read(_READ)
            except _ssl.SSLWantReadError:
                break
            except _ssl.SSLZeroReturnError:  # the server's close_notify
                ended = True
                break
            except (_ssl.SSLError, OSError) as exc:
                self._lost(exc)
                return
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
        if self._out is not None and self._out.pending:  # what reading made TLS say
            self._send(self._out.read())
        if chunks:
            self._protocol.received(chunks[0] if len(chunks) == 1 else b"".join(chunks), at)
        if ended and not self._closed:
            self._lost(None)

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._ssl is not None:
            try:
                self._ssl.write(data)
            except (_ssl.SSLError, OSError) as exc:
                self._lost(exc)
                return
            self._flush_tls()
        else:
            self._send(data)

    def _flush_tls(self) -> None:
        assert self._out is not None
        if self._out.pending:
            self._send(self._out.read())

    def _send(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._pending += data[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self._fd)

    # -- the transport calls a protocol makes -------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            with contextlib.suppress(OSError):
                return self._sock.getpeername()
        if name == "ssl_object":
            return self._ssl
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._lost(None)

    def abort(self) -> None:
        self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


async def _handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     sslobj: _ssl.SSLObject, incoming: _ssl.MemoryBIO,
                     outgoing: _ssl.MemoryBIO) -> None:
    while True:
        try:
            sslobj.do_handshake()
        except _ssl.SSLWantReadError:
            if outgoing.pending:
                await loop.sock_sendall(sock, outgoing.read())
            data = await loop.sock_recv(sock, _READ)
            if not data:
                raise ConnectionResetError("the server closed the connection in the TLS "
                                           "handshake") from None
            incoming.write(data)
            continue
        break
    if outgoing.pending:  # the client's Finished
        await loop.sock_sendall(sock, outgoing.read())


async def open_stamped(loop: asyncio.AbstractEventLoop, protocol: _Receiver, host: str,
                       port: int, ssl: _ssl.SSLContext | None) -> StampedTransport:
    """Connect to *host*:*port* (each address in turn, as ``create_connection``), then TLS
    with *ssl* for *host* when given; the transport, *protocol* connected to it. OSError
    (``ssl.SSLError`` among them) when no address connects or the handshake fails."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    last: OSError | None = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if KERNEL_STAMPS:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await loop.sock_connect(sock, addr)
            if ssl is None:
                return StampedTransport(loop, sock, protocol)
            incoming, outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
            sslobj = ssl.wrap_bio(incoming, outgoing, server_hostname=host)
            await _handshake(loop, sock, sslobj, incoming, outgoing)
            return StampedTransport(loop, sock, protocol, sslobj, incoming, outgoing)
        except OSError as exc:
            sock.close()
            last = exc
            if isinstance(exc, _ssl.SSLError):
                raise  # the server answered: another address would answer the same
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last
