"""One HTTP/1.1 connection of :class:`~pytest_wec.acme._httptools.HttptoolsTransport`.

:class:`Connection` is the :class:`asyncio.Protocol`: the transport writes a request on it
and awaits the future handed to :meth:`Connection.begin`; the connection feeds the bytes that
arrive to httptools' response parser and settles that future with the
:class:`~pytest_wec.acme._transport.Response` (stamped with when its last bytes were read),
an :class:`AcmeTransportError` (malformed, head or body too large) or
:class:`ConnectionLost`. Interim 1xx responses are skipped; a body
without Content-Length or chunked ends with the connection; bytes nobody asked for close it.
"""

from __future__ import annotations

import asyncio
import time

import httptools

from ._errors import AcmeBodyTooLarge, AcmeHttpError, AcmeTransportError
from ._transport import DEFAULT_MAX_BODY, Headers, Response

__all__ = ["MAX_HEAD", "Connection", "ConnectionLost"]

_perf = time.perf_counter

#: Bound on a response's status line and header fields together.
MAX_HEAD = 256 * 1024


class ConnectionLost(Exception):
    """The connection closed before the response was complete."""

    def __init__(self, got_bytes: bool, cause: BaseException | None) -> None:
        super().__init__(f"connection closed before the response was complete ({cause})"
                         if cause else "connection closed before the response was complete")
        self.got_bytes = got_bytes


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection and the parser state of the exchange on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.lost = False
        self.idle_since = 0.0
        self.max_body = DEFAULT_MAX_BODY
        self.is_head = False
        self.sent = 0.0  # perf_counter: the exchange's request written (the transport sets it)
        self.connect = 0.0  # seconds the connection took to open; 0.0 once it was reused
        self.deadline = 0.0  # loop time: the exchange in flight times out then (the pool's)
        self.now = 0.0  # perf_counter: when the bytes being parsed were read
        self._reset()

    def _reset(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.head_size = 0
        self.headers_done = False
        self.got_bytes = False
        self.status = 0
        self.delimited = False  # Content-Length or chunked: the body has a known end

    def begin(self, waiter: asyncio.Future[Response], max_body: int, is_head: bool) -> None:
        self._reset()
        self.waiter = waiter
        self.max_body = max_body
        self.is_head = is_head

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received(data, _perf())

    def received(self, data: bytes, at: float) -> None:
        """*data* read at *at* (``time.perf_counter()``: the kernel's receive time on a
        :class:`~pytest_wec.acme._stamped.StampedTransport`, else the read's)."""
        self.now = at
        waiter = self.waiter
        if waiter is None or waiter.done():
            # bytes nobody asked for: the stream is out of step, never reuse it
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AcmeHttpError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            if not waiter.done():
                self._fail(AcmeHttpError(f"malformed HTTP response: {exc}"))
        else:
            if not self.headers_done and not waiter.done():
                self.head_size += len(data)
                if self.head_size > MAX_HEAD:
                    self._fail(AcmeHttpError(f"response head larger than {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.delimited and self.status >= 200:
            self.now = _perf()
            self._finish(keep=False)  # a body delimited by the end of the connection
        else:
            waiter.set_exception(ConnectionLost(self.got_bytes, exc))

    # httptools callbacks

    def on_message_begin(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # a second answer nobody asked for: the stream is out of step

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = status = self.parser.get_status_code()
        if status < 200:
            return  # an interim 1xx response: the real one follows
        length: int | None = None
        for lname, value in self.fields:
            if lname == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                self.delimited = True
            elif lname == "transfer-encoding":
                self.delimited = True
        if self.is_head or status in (204, 304):
            self.delimited = True
            if self.is_head:
                self._finish(keep=False)  # llhttp would wait for a HEAD's body
            return
        if length is not None and length > self.max_body:
            self._fail(AcmeBodyTooLarge(
                f"Content-Length {length} exceeds {self.max_body} bytes"))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self._fail(AcmeBodyTooLarge(f"body exceeds {self.max_body} bytes"))
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            self._reset()
            self.got_bytes = True
            return
        self._finish(keep=self.parser.should_keep_alive())

    # the exchange's end

    def _finish(self, keep: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        waiter.set_result(Response(self.status, Headers.from_lowered(self.fields), body,
                                   self.sent, self.now, self.connect))
        if not keep:
            self.close()

    def _fail(self, exc: AcmeTransportError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
