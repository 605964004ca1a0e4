"""The lean transport: HTTP/1.1 keep-alive on asyncio protocols, parsed by httptools.

An ACME client needs little of HTTP: one request at a time per connection, bodies
sized by Content-Length or chunked, no redirects, no cookies, no compression. This
transport does exactly that on :class:`asyncio.Protocol` connections and parses
responses with httptools (llhttp, the parser in C that uvicorn uses), so that a
request costs about a third of what a general client spends on it
(``bench/bench_transport_floor.py``; docs/performance.md).

A connection pool per origin (scheme, host, port) hands idle connections out last in,
first out; one the server closed while idle is retried once on a new connection when
nothing of its response arrived. Every exchange is bounded by its ``timeout`` (connect
included); a connection whose exchange failed, timed out or was cancelled is closed,
never reused. One connection and the parsing of its responses are
:mod:`pytest_wec.acme._httpconn`; this module is the pool: origins, request heads, reuse,
limits and timeouts. On Linux (``kernel_stamps``) a connection is read with ``recvmsg`` and
the kernel's receive time of each read (:mod:`pytest_wec.acme._stamped`), so that a
response's arrival is when its bytes reached the machine, not when the loop got to them;
elsewhere, or with ``kernel_stamps=False``, through the event loop's own transport.
"""

from __future__ import annotations

import asyncio
import re
import ssl as _ssl
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ._errors import AcmeConnectError, AcmeHttpError, AcmeTimeout, AcmeTransportError
from ._httpconn import Connection, ConnectionLost
from ._stamped import KERNEL_STAMPS, open_stamped
from ._transport import DEFAULT_MAX_BODY, USER_AGENT, Response, make_ssl_context

__all__ = ["HttptoolsTransport"]

_perf = time.perf_counter
_BAD_URL = re.compile(r"[\x00-\x20\x7f]")
_BAD_FIELD = re.compile(r"[\r\n\x00]")
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _Origin(NamedTuple):
    key: str  # the pool's key: scheme://host:port
    host: str
    port: int
    tls: bool
    netloc: str  # the Host header


#: seconds: a deadline this close is due when the sweep runs (libuv's timers count whole
#: milliseconds, so one may fire a fraction early)
_TIMER_SLACK = 0.001


class HttptoolsTransport:
    """A :class:`~pytest_wec.acme._transport.Transport` on asyncio and httptools.

    ``ssl``: an ``ssl.SSLContext``, True (system trust) or False (no verification).
    ``limit``: the most connections in use at once (0: no limit); a request waits
    for one within its timeout. ``max_body``: the largest response body read, in
    bytes; larger ones fail fast with :class:`AcmeBodyTooLarge` (from Content-Length
    when given). ``keepalive_timeout``: idle connections older than this are closed
    rather than reused. ``kernel_stamps``: read connections with the kernel's receive
    stamps (the default on Linux; module doc).
    """

    def __init__(
        self,
        ssl: _ssl.SSLContext | bool = True,
        limit: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        keepalive_timeout: float = 30.0,
        kernel_stamps: bool = KERNEL_STAMPS,
    ) -> None:
        if ssl is True:
            ctx: _ssl.SSLContext = make_ssl_context()
        elif ssl is False:
            ctx = make_ssl_context(insecure=True)
        else:
            ctx = ssl
        self.ssl = ctx
        self.limit = limit
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.kernel_stamps = kernel_stamps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[str, list[Connection]] = {}
        self._conns: set[Connection] = set()
        self._origins: dict[str, _Origin] = {}
        self._field_cache: dict[int, tuple[dict[str, str], str]] = {}
        self._sem: asyncio.Semaphore | None = None
        self._closed = False
        # exchanges in flight, each bounded by its deadline: one timer for all of them, at
        # the earliest (a timer per request cost more than the rest of the pool's work)
        self._busy: set[Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0

    def _split(self, method: str, url: str) -> tuple[_Origin, str]:
        """The origin of ``url`` (parsed once per origin) and its request target."""
        if _BAD_URL.search(url) or not url.isascii():
            raise AcmeHttpError(
                f"{method} {url!r}: whitespace, control or non-ASCII characters in the URL")
        i = url.find("://")
        j = url.find("/", i + 3) if i > 0 else -1
        origin_text, target = (url, "/") if j < 0 else (url[:j], url[j:])
        if "#" in target:
            target = target.partition("#")[0]
        if "?" in origin_text:
            origin_text, _, query = origin_text.partition("?")
            target = f"/?{query}"
        origin = self._origins.get(origin_text)
        if origin is None:
            origin = self._parse_origin(method, url, origin_text)
            if len(self._origins) < 256:
                self._origins[origin_text] = origin
        return origin, target

    @staticmethod
    def _parse_origin(method: str, url: str, origin_text: str) -> _Origin:
        parts = urlsplit(origin_text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise AcmeHttpError(f"{method} {url}: not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise AcmeHttpError(f"{method} {url}: {exc}") from None
        netloc = parts.netloc.rpartition("@")[2]
        return _Origin(f"{scheme}://{netloc}", parts.hostname, port, scheme == "https", netloc)

    def _fields(self, headers: Mapping[str, str]) -> str:
        """The header lines for ``headers`` with User-Agent and Accept-Encoding, checked
        once per distinct mapping (a client sends the same few again and again)."""
        cached = self._field_cache.get(id(headers))
        if cached is not None and cached[0] == headers:
            return cached[1]
        out = []
        seen_ua = False
        for name, value in headers.items():
            lname = name.lower()
            if lname in _RESERVED:
                continue
            if _BAD_FIELD.search(name) or _BAD_FIELD.search(value) or ":" in name:
                raise AcmeHttpError(f"header {name!r}: invalid characters")
            if not (name + value).isascii():
                raise AcmeHttpError(f"header {name!r}: non-ASCII characters")
            seen_ua = seen_ua or lname == "user-agent"
            out.append(f"{name}: {value}\r\n")
        if not seen_ua:
            out.append(f"User-Agent: {USER_AGENT}\r\n")
        out.append("Accept-Encoding: identity\r\n")
        text = "".join(out)
        if len(self._field_cache) >= 64:
            self._field_cache.clear()
        self._field_cache[id(headers)] = (dict(headers), text)
        return text

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("HttptoolsTransport is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed() and self._conns:
                raise RuntimeError("HttptoolsTransport used from a second event loop")
            self._idle.clear()
            self._conns.clear()
            self._busy.clear()
            self._sweep = None
            self._loop = loop
            self._sem = asyncio.Semaphore(self.limit) if self.limit > 0 else None
        return loop

    def _take_idle(self, key: str) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = time.monotonic() - self.keepalive_timeout
        while idle:
            conn = idle.pop()
            if not conn.lost and conn.idle_since >= oldest:
                return conn
            conn.close()
            self._conns.discard(conn)
        return None

    def _bound(self, loop: asyncio.AbstractEventLoop, conn: Connection,
               deadline: float) -> None:
        """Time *conn*'s exchange out at *deadline* (:meth:`_expire_due`)."""
        conn.deadline = deadline
        self._busy.add(conn)
        if self._sweep is None or deadline < self._sweep_at:
            if self._sweep is not None:
                self._sweep.cancel()
            self._sweep_at = deadline
            self._sweep = loop.call_at(deadline, self._expire_due)

    def _expire_due(self) -> None:
        """Fail the exchanges whose deadline has come with TimeoutError; run again at the
        earliest deadline left."""
        self._sweep = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        due = loop.time() + _TIMER_SLACK
        nearest: float | None = None
        for conn in list(self._busy):
            if conn.deadline <= due:
                self._busy.discard(conn)
                waiter = conn.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_exception(TimeoutError())
            elif nearest is None or conn.deadline < nearest:
                nearest = conn.deadline
        if nearest is not None:
            self._sweep_at = nearest
            self._sweep = loop.call_at(nearest, self._expire_due)

    async def _connect(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                       tls: bool) -> Connection:
        if self.kernel_stamps:
            conn = Connection()
            await open_stamped(loop, conn, host, port, self.ssl if tls else None)
        else:
            _, conn = await loop.create_connection(
                Connection, host, port,
                ssl=self.ssl if tls else None, server_hostname=host if tls else None,
            )
        self._conns.add(conn)
        return conn

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        loop = self._check_loop()
        deadline = loop.time() + timeout
        origin, target = self._split(method, url)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            length = f"Content-Length: {len(body) if body else 0}\r\n"
        else:
            length = ""
        head = (f"{method} {target} HTTP/1.1\r\nHost: {origin.netloc}\r\n"
                f"{self._fields(headers)}{length}\r\n").encode("ascii")
        data = head + body if body else head
        try:
            if self._sem is None:
                return await self._exchange(loop, origin, data, method == "HEAD", deadline)
            async with asyncio.timeout_at(deadline):
                await self._sem.acquire()
            try:
                return await self._exchange(loop, origin, data, method == "HEAD", deadline)
            finally:
                self._sem.release()
        except AcmeConnectError as exc:
            raise AcmeConnectError(f"{method} {url}: {exc}") from exc.__cause__
        except AcmeTransportError as exc:
            raise type(exc)(f"{method} {url}: {exc}") from None
        except TimeoutError:
            raise AcmeTimeout(f"{method} {url}: no complete response within {timeout:g}s") from None
        except OSError as exc:
            # DNS, refused, TLS handshake or certificate, reset
            raise AcmeConnectError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(self, loop: asyncio.AbstractEventLoop, origin: _Origin, data: bytes,
                        is_head: bool, deadline: float) -> Response:
        key = origin.key
        for attempt in (0, 1):
            conn = self._take_idle(key)
            reused = conn is not None
            if conn is None:
                opening = _perf()
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(loop, origin.host, origin.port, origin.tls)
                conn.connect = _perf() - opening
            else:
                conn.connect = 0.0
            waiter: asyncio.Future[Response] = loop.create_future()
            conn.begin(waiter, self.max_body, is_head)
            # the pool's one timer rather than asyncio.timeout() or a timer per request:
            # the same bound, a fraction of the cost
            self._bound(loop, conn, deadline)
            assert conn.transport is not None
            conn.sent = _perf()
            conn.transport.write(data)
            try:
                resp = await waiter
            except ConnectionLost as lost:
                self._conns.discard(conn)
                if reused and not lost.got_bytes and attempt == 0:
                    continue  # the server closed it while it was idle: try a new one
                if lost.got_bytes:
                    raise AcmeHttpError(str(lost)) from None
                raise AcmeConnectError(str(lost)) from None
            except BaseException:
                # failed, timed out or cancelled mid-exchange: the stream's state is unknown
                conn.close()
                self._conns.discard(conn)
                raise
            finally:
                self._busy.discard(conn)
            if conn.lost:
                self._conns.discard(conn)
            else:
                conn.waiter = None
                conn.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(conn)
            return resp
        raise AcmeConnectError("the connection closed twice before any response")

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._busy.clear()
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        self._idle.clear()

    def stats(self) -> dict[str, Any]:
        """Open and idle connections, for debugging."""
        return {"open": len(self._conns),
                "idle": sum(len(v) for v in self._idle.values())}
