"""The second transport, on ``httpx.AsyncClient``: HTTP/2 capable, costlier.

Measured here, httpx costs 0.6-2.3 ms of CPU per request (aiohttp:
0.13-0.2 ms); use it to cross-check the default transport or to test a CA
over HTTP/2 (``http2=True`` needs the ``h2`` package).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping

import httpx

from ._errors import (
    AcmeBodyTooLarge,
    AcmeConnectError,
    AcmeHttpError,
    AcmeTimeout,
    AcmeTransportError,
)
from ._transport import DEFAULT_MAX_BODY, USER_AGENT, Headers, Response

__all__ = ["HttpxTransport"]

log = logging.getLogger(__name__)


class HttpxTransport:
    """A :class:`~pytest_wec.acme._transport.Transport` on httpx.

    ``verify``: an ``ssl.SSLContext``, True (system trust) or False.
    ``limit``: the most open connections (0: no limit). ``max_body`` as for
    :class:`~pytest_wec.acme._aiohttp.AiohttpTransport`.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        http2: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        limit: int = 0,
    ) -> None:
        self.verify = verify
        self.http2 = http2
        self.max_body = max_body
        self.limit = limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _open(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("HttpxTransport is closed")
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("HttpxTransport used from a second event loop")
            log.debug("event loop changed; opening new connections")
        self._loop = loop
        self._client = httpx.AsyncClient(
            verify=self.verify,
            http2=self.http2,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=self.limit or None, max_keepalive_connections=self.limit or None
            ),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        return self._client

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            client = self._open()
        max_body = self.max_body
        try:
            async with asyncio.timeout(timeout):
                req = client.build_request(
                    method, url, headers=headers, content=body, timeout=httpx.Timeout(timeout)
                )
                resp = await client.send(req, stream=True)
                try:
                    length = resp.headers.get("content-length")
                    if length is not None and length.isdigit() and int(length) > max_body:
                        raise AcmeBodyTooLarge(
                            f"{method} {url}: Content-Length {length} exceeds {max_body} bytes"
                        )
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.aiter_raw():
                        size += len(chunk)
                        if size > max_body:
                            raise AcmeBodyTooLarge(f"{method} {url}: body exceeds {max_body} bytes")
                        chunks.append(chunk)
                finally:
                    await resp.aclose()
                return Response(
                    resp.status_code, Headers(resp.headers.multi_items()), b"".join(chunks)
                )
        except AcmeTransportError:
            raise
        except (TimeoutError, httpx.TimeoutException):
            raise AcmeTimeout(f"{method} {url}: no complete response within {timeout:g}s") from None
        except (httpx.NetworkError, OSError) as exc:
            raise AcmeConnectError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise AcmeHttpError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
