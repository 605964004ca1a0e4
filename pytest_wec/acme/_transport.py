"""The HTTP seam under the ACME client (RFC 8555 §6.1).

A :class:`Transport` sends one request and returns one :class:`Response` with
the whole body, or raises an :class:`~pytest_wec.acme._errors.AcmeTransportError`.
Transports follow no redirects, keep connections alive, bound every request
by a total ``timeout`` and refuse bodies larger than their ``max_body``
(:class:`AcmeBodyTooLarge`) without reading them into memory.

Implementations: :class:`~pytest_wec.acme._httptools.HttptoolsTransport` (the
default, cheapest per request), :class:`~pytest_wec.acme._aiohttp.AiohttpTransport`,
:class:`~pytest_wec.acme._httpx.HttpxTransport` and :class:`MockTransport` for
offline tests; :func:`make_transport` builds one of the first three by name.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ._errors import AcmeBodyTooLarge, AcmeTimeout

__all__ = [
    "DEFAULT_MAX_BODY",
    "TRANSPORT_NAMES",
    "USER_AGENT",
    "Headers",
    "MockHandler",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
    "make_ssl_context",
    "make_transport",
]

#: The transports :func:`make_transport` builds, the default first.
TRANSPORT_NAMES = ("httptools", "aiohttp", "httpx")

#: Default bound on a response body: certificate chains are a few KiB.
DEFAULT_MAX_BODY = 8 * 1024 * 1024

#: RFC 8555 §6.1: clients MUST send a User-Agent.
USER_AGENT = "pytest-wec/0.1 (ACME load tester)"


class Headers(Mapping[str, str]):
    """Read-only response headers with case-insensitive lookups.

    ``headers["link"]`` joins repeated fields with ", " (RFC 9110 §5.3);
    :meth:`get_all` returns them one by one.
    """

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._set([(name.lower(), value) for name, value in pairs])

    @classmethod
    def from_lowered(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers from (name, value) pairs whose names are already lower case (a
        transport's parser); the list is kept, not copied."""
        self = cls.__new__(cls)
        self._set(pairs)
        return self

    def _set(self, flat: list[tuple[str, str]]) -> None:
        joined: dict[str, str] = {}
        for key, value in flat:
            prev = joined.get(key)
            joined[key] = value if prev is None else f"{prev}, {value}"
        self._map = joined
        self._items = flat

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._map.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, key: str) -> list[str]:
        """Every value of a repeated field (e.g. ``Link``), in order."""
        lk = key.lower()
        return [v for k, v in self._items if k == lk]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Request:
    """One outgoing request, as a :class:`MockTransport` handler sees it."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None

    def json(self) -> Any:
        """The body decoded as JSON (the flattened JWS of a POST)."""
        return orjson.loads(self.body or b"null")


@dataclass(frozen=True, slots=True)
class Response:
    """One response: status, headers and the complete body.

    ``sent`` and ``arrived`` (``time.perf_counter()``; 0.0 when the transport does not
    stamp them): just before the request was written and when the bytes that completed the
    response arrived (the kernel's receive time of the read that brought them, on Linux:
    :mod:`pytest_wec.acme._stamped`; else that read's), before they were parsed. A
    request's latency is from the one to the other when both are there, so that what the
    client does around the exchange is not in it. ``connect``: the seconds it took to open
    the connection the request went on (TCP, and TLS for https), for a request that opened
    one; 0.0 otherwise.
    """

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    sent: float = field(default=0.0, compare=False)
    arrived: float = field(default=0.0, compare=False)
    connect: float = field(default=0.0, compare=False)

    @classmethod
    def make(
        cls,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        *,
        json: Any = None,
        content_type: str | None = None,
    ) -> Response:
        """Build a response; ``json`` sets the body and, unless given, the Content-Type."""
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        if json is not None:
            body = orjson.dumps(json)
            if content_type is None:
                problem = status >= 400 and isinstance(json, dict) and "type" in json
                content_type = "application/problem+json" if problem else "application/json"
        if content_type is not None:
            pairs.append(("Content-Type", content_type))
        raw = body.encode("utf-8") if isinstance(body, str) else body
        return cls(status, Headers(pairs), raw)


class Transport(Protocol):
    """Sends one HTTP request; the seam that makes the client testable offline."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        """Send and read the whole response within ``timeout`` seconds.

        Raises :class:`~pytest_wec.acme._errors.AcmeTransportError` subclasses only.
        """
        ...

    async def aclose(self) -> None:
        """Close connections; the transport may not be used afterwards."""
        ...


MockHandler = Callable[[Request], Response | Awaitable[Response]]


class MockTransport:
    """A transport that answers from ``handler`` (like ``httpx.MockTransport``).

    The handler may be sync or async; an async handler is bound by the
    request's timeout (:class:`AcmeTimeout`), and bodies beyond ``max_body``
    raise :class:`AcmeBodyTooLarge` as a real transport would. The handler may
    raise any :class:`~pytest_wec.acme._errors.AcmeTransportError` to simulate
    a network failure. The last ``keep`` requests are kept in :attr:`requests`.
    """

    def __init__(
        self, handler: MockHandler, *, max_body: int = DEFAULT_MAX_BODY, keep: int = 10_000
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.requests: deque[Request] = deque(maxlen=keep)
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        if self.closed:
            raise RuntimeError("MockTransport is closed")
        req = Request(method, url, dict(headers), body)
        self.requests.append(req)
        result = self.handler(req)
        if inspect.isawaitable(result):
            try:
                async with asyncio.timeout(timeout):
                    result = await result
            except TimeoutError:
                raise AcmeTimeout(f"{method} {url}: no response within {timeout:g}s") from None
        if not isinstance(result, Response):
            raise TypeError(f"MockTransport handler returned {type(result).__name__}")
        if len(result.body) > self.max_body:
            raise AcmeBodyTooLarge(f"{method} {url}: body larger than {self.max_body} bytes")
        return result

    async def aclose(self) -> None:
        self.closed = True


def make_ssl_context(ca_bundle: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context: verify against ``ca_bundle`` (or the system store),
    or verify nothing when ``insecure`` (a test CA such as Pebble on loopback)."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_bundle)


def transport_module(name: str) -> str | None:
    """The module that implements the transport called *name* (None: no such transport),
    so that a worker can import it ahead of :func:`make_transport`."""
    module = {"httptools": "_httptools", "aiohttp": "_aiohttp", "httpx": "_httpx"}.get(name)
    return f"{__package__}.{module}" if module else None


def make_transport(name: str = "httptools", *, ca_bundle: str | None = None,
                   insecure: bool = False, max_body: int = DEFAULT_MAX_BODY) -> Transport:
    """The transport called ``name`` (one of :data:`TRANSPORT_NAMES`), verifying
    TLS against ``ca_bundle`` (or the system store), or not at all when ``insecure``."""
    ctx = make_ssl_context(ca_bundle, insecure)
    if name == "httptools":
        from ._httptools import HttptoolsTransport

        return HttptoolsTransport(ssl=ctx, max_body=max_body)
    if name == "aiohttp":
        from ._aiohttp import AiohttpTransport

        return AiohttpTransport(ssl=ctx, max_body=max_body)
    if name == "httpx":
        from ._httpx import HttpxTransport

        return HttpxTransport(verify=ctx, max_body=max_body)
    raise ValueError(f"unknown transport {name!r}: one of {', '.join(TRANSPORT_NAMES)}")
