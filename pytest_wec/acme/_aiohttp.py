"""The default transport: one keep-alive ``aiohttp.ClientSession`` per worker.

Measured here, aiohttp costs 0.13-0.2 ms of CPU per request against httpx's
0.6-2.3 ms, which matters in a load generator that shares the CA's machine.
The session is created lazily inside the running loop, so a transport may be
built before the loop exists (but used from one loop only).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Mapping

import aiohttp

from ._errors import (
    AcmeBodyTooLarge,
    AcmeConnectError,
    AcmeHttpError,
    AcmeTimeout,
    AcmeTransportError,
)
from ._transport import DEFAULT_MAX_BODY, USER_AGENT, Headers, Response

__all__ = ["AiohttpTransport"]

log = logging.getLogger(__name__)


class AiohttpTransport:
    """A :class:`~pytest_wec.acme._transport.Transport` on aiohttp.

    ``ssl``: an ``ssl.SSLContext``, True (system trust) or False (no
    verification). ``limit``: the most open connections (0: no limit).
    ``max_body``: the largest response body read, in bytes; larger ones fail
    fast with :class:`AcmeBodyTooLarge`, from Content-Length when given.

    Responses are requested uncompressed (``Accept-Encoding: identity``): ACME
    bodies are small, and compression would cost CPU on both sides.
    """

    def __init__(
        self,
        ssl: _ssl.SSLContext | bool = True,
        limit: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self.ssl = ssl
        self.limit = limit
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("AiohttpTransport is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("AiohttpTransport used from a second event loop")
            log.debug("event loop changed; opening new connections")
        self._loop = loop
        connector = aiohttp.TCPConnector(
            limit=self.limit,
            ssl=self.ssl,
            keepalive_timeout=self.keepalive_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            skip_auto_headers=("Accept-Encoding",),
        )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        session = self._session
        if session is None or self._loop is not asyncio.get_running_loop():
            session = self._open()
        max_body = self.max_body
        try:
            async with (
                asyncio.timeout(timeout),
                session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as resp,
            ):
                length = resp.content_length
                if length is not None and length > max_body:
                    resp.close()
                    raise AcmeBodyTooLarge(
                        f"{method} {url}: Content-Length {length} exceeds {max_body} bytes"
                    )
                content = resp.content
                chunks: list[bytes] = []
                size = 0
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > max_body:
                        resp.close()
                        raise AcmeBodyTooLarge(f"{method} {url}: body exceeds {max_body} bytes")
                    chunks.append(chunk)
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return Response(resp.status, Headers(resp.headers.items()), data)
        except AcmeTransportError:
            raise
        except TimeoutError:
            raise AcmeTimeout(f"{method} {url}: no complete response within {timeout:g}s") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            # DNS, refused, TLS handshake, reset, or the server closed the connection
            raise AcmeConnectError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise AcmeHttpError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
