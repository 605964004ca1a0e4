"""The network layer shared by every chain of a worker (RFC 8555 §6, §7.1.1, §7.2).

One :class:`AcmeNetwork` per worker and CA holds the transport (one pool of
keep-alive connections), the directory (fetched once), and the nonce pool.
Chains talk through cheap per-chain views, :class:`~pytest_wec.acme._client.AcmeClient`,
which only add who is asking; every HTTP exchange, failed attempts and
retries included, becomes one :class:`~pytest_wec.wire.results.RequestResult`.

Retries are bounded: a ``badNonce`` problem is retried with the fresh nonce
the error response carried (§6.5), up to ``max_nonce_retries`` times; a 429
or 503 with a ``Retry-After`` no longer than ``max_retry_after`` seconds is
retried up to ``max_retries`` times (§6.6). Nothing else is retried: a POST
that timed out may have taken effect.

A retry's sleep is between two exchanges, so neither one's latency holds it; it is told to
the chain (:meth:`Observed.waited`), which counts it as a rate-limit wait. A ``rateLimited``
problem's RequestResult names the limit its detail states (``limit``,
:func:`~pytest_wec.acme._ratelimits.limit_name`). With ``client_ip_header``, every signed
request carries its account key's own address (:class:`~pytest_wec.acme._ratelimits.
ClientAddresses`) for a CA that trusts that header.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, TypeVar

import orjson

from ..wire.results import RequestObserver
from ._errors import (
    AcmeError,
    AcmeProblem,
    AcmeProtocolError,
    AcmeTransportError,
    AcmeUnexpectedStatus,
)
from ._jws import AccountKey, JwsSigner, sign_jws
from ._messages import Directory
from ._nonces import NoncePool, valid_nonce
from ._observed import Observed
from ._parse import media_type
from ._ratelimits import ClientAddresses
from ._transport import USER_AGENT, Response, Transport

if TYPE_CHECKING:
    from ._client import AcmeClient

__all__ = ["AcmeNetwork", "Observed", "retry_after_seconds"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_POST_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/jose+json",
    "User-Agent": USER_AGENT,
}
_GET_HEADERS: Mapping[str, str] = {"User-Agent": USER_AGENT}
_perf = time.perf_counter
_now = time.time


async def sleep_at_least(delay: float) -> None:
    """Sleep ``delay`` seconds and never less: a Retry-After is a floor, and uvloop's
    millisecond timers may fire a fraction of a millisecond early."""
    end = time.monotonic() + delay
    await asyncio.sleep(delay)
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(left + 0.0005)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - _now())


def _nonce_of(resp: Response) -> str:
    nonce = resp.headers.get("replay-nonce")
    if not nonce or not valid_nonce(nonce):
        raise AcmeProtocolError(
            f"newNonce: HTTP {resp.status} response has no valid Replay-Nonce header"
        )
    return str(nonce)


def error_from_response(resp: Response, endpoint: str) -> AcmeError:
    """The error an error status stands for: a problem document (§6.7) or not."""
    status = resp.status
    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
    mt = media_type(resp)
    if mt == "application/problem+json":
        try:
            obj = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return AcmeProtocolError(
                f"{endpoint}: HTTP {status} problem document is not valid JSON: {resp.body[:120]!r}"
            )
        if not isinstance(obj, dict):
            return AcmeProtocolError(f"{endpoint}: HTTP {status} problem document is not an object")
        try:
            return AcmeProblem.from_json(obj, status, retry_after)
        except AcmeProtocolError as exc:
            return AcmeProtocolError(f"{endpoint}: HTTP {status}: {exc}")
    return AcmeUnexpectedStatus(
        f"{endpoint}: HTTP {status} without a problem document "
        f"(Content-Type {mt or 'none'}): {resp.body[:120]!r}",
        status,
        retry_after,
    )


class AcmeNetwork:
    """Directory, nonces and transport for one CA, shared by a worker's chains.

    ``timeout`` bounds each HTTP exchange (total seconds). ``transport``
    defaults to an :class:`~pytest_wec.acme._httptools.HttptoolsTransport`
    with system TLS trust. ``signer`` is the JWS seam (:func:`sign_jws`, or the
    josepy-based reference). Without a Retry-After from the server, polls wait
    ``poll_first`` seconds, then twice as long each time up to ``poll_interval``.

    ``nonce_method``: HEAD, as §7.2 suggests, or GET (answered 204). The
    transports close the connection after a HEAD response (whether a body
    follows is unclear when Content-Length is missing, as from Go servers such
    as Pebble), so each HEAD costs a new TLS handshake; GET keeps the
    connection. The pool makes either rare.
    """

    def __init__(
        self,
        directory_url: str,
        transport: Transport | None = None,
        *,
        timeout: float = 30.0,
        max_nonce_retries: int = 20,
        max_retry_after: float = 10.0,
        max_retries: int = 3,
        poll_interval: float = 0.5,
        poll_first: float = 0.05,
        nonce_pool_size: int = 256,
        nonce_method: str = "HEAD",
        signer: JwsSigner = sign_jws,
        client_ip_header: str | None = None,
        client_addresses: ClientAddresses | None = None,
    ) -> None:
        if transport is None:
            from ._httptools import HttptoolsTransport

            transport = HttptoolsTransport()
        self.directory_url = directory_url
        self.transport = transport
        self.timeout = timeout
        self.max_nonce_retries = max_nonce_retries
        self.max_retry_after = max_retry_after
        self.max_retries = max_retries
        self.poll_interval = poll_interval
        self.poll_first = poll_first
        self.signer = signer
        #: every signed request carries its key's address in this header (None: none)
        self.client_ip_header = client_ip_header if client_addresses is not None else None
        self.client_addresses = client_addresses
        if nonce_method not in ("HEAD", "GET"):
            raise ValueError(f"nonce_method must be HEAD or GET, got {nonce_method!r}")
        self.nonce_method = nonce_method
        self.nonces = NoncePool(nonce_pool_size)
        self._directory: Directory | None = None
        self._directory_lock = asyncio.Lock()

    def client(
        self, chain: str = "", chain_id: str = "", observer: RequestObserver | None = None
    ) -> AcmeClient:
        """A per-chain view whose requests are reported to ``observer``."""
        from ._client import AcmeClient

        return AcmeClient(self, Observed(chain, chain_id, observer))

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self.transport.aclose()

    async def __aenter__(self) -> AcmeNetwork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one exchange ---------------------------------------------------------

    async def exchange(
        self,
        obs: Observed,
        endpoint: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        parse: Callable[[Response], T],
        *,
        pool_nonce: bool = True,
    ) -> T:
        """Send once, check and parse the response, report it; raise on failure.

        The response's Replay-Nonce goes to the pool, except for a successful
        newNonce (``pool_nonce=False``, the caller uses it) and a problem
        answering a POST (the nonce rides on the problem to its retry).
        """
        started = _now()
        t0 = _perf()
        obs.current = endpoint
        try:
            resp = await self.transport.request(
                method, url, headers=headers, body=body, timeout=self.timeout
            )
        except AcmeTransportError as exc:
            obs.emit(endpoint, method, 0, started, _perf() - t0, exc)
            raise
        if resp.arrived and resp.sent:  # the transport's own stamps: the exchange alone
            took = resp.arrived - resp.sent
            started += resp.sent - t0
        else:
            took = _perf() - t0
        status = resp.status
        nonce = resp.headers.get("replay-nonce")
        if not 200 <= status < 300:
            err = error_from_response(resp, endpoint)
            if method == "POST" and isinstance(err, AcmeProblem) and nonce and valid_nonce(nonce):
                err._nonce = nonce
            else:
                self.nonces.push(nonce)
            obs.emit(endpoint, method, status, started, took, err, resp.connect)
            raise err
        try:
            if method == "POST" and not nonce:
                raise AcmeProtocolError(
                    f"{endpoint}: HTTP {status} response to a POST has no Replay-Nonce header"
                )
            if pool_nonce:
                self.nonces.push(nonce)
            result = parse(resp)
        except AcmeProtocolError as exc:
            obs.emit(endpoint, method, status, started, took, exc, resp.connect)
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            bad = AcmeProtocolError(f"{endpoint}: unusable HTTP {status} response: {exc!r}")
            obs.emit(endpoint, method, status, started, took, bad, resp.connect)
            raise bad from exc
        obs.emit(endpoint, method, status, started, took, None, resp.connect)
        return result

    def _retry_delay(self, exc: AcmeProblem | AcmeUnexpectedStatus, retries: int) -> float | None:
        ra = exc.retry_after
        if (
            exc.status in (429, 503)
            and ra is not None
            and retries < self.max_retries
            and ra <= self.max_retry_after
        ):
            return ra
        return None

    # -- requests with retries ------------------------------------------------

    async def get(
        self,
        obs: Observed,
        endpoint: str,
        url: str,
        parse: Callable[[Response], T],
        *,
        method: str = "GET",
        pool_nonce: bool = True,
    ) -> T:
        """An unauthenticated GET or HEAD, retried on 429/503 with Retry-After."""
        retries = 0
        while True:
            try:
                return await self.exchange(
                    obs, endpoint, method, url, _GET_HEADERS, None, parse, pool_nonce=pool_nonce
                )
            except (AcmeProblem, AcmeUnexpectedStatus) as exc:
                delay = self._retry_delay(exc, retries)
                if delay is None:
                    raise
                obs.waited(endpoint, exc, delay)
            retries += 1
            log.debug("%s %s: HTTP 429/503, retry %d in %.3gs", method, endpoint, retries, delay)
            await sleep_at_least(delay)

    async def post(
        self,
        obs: Observed,
        endpoint: str,
        url: str,
        key: AccountKey,
        kid: str | None,
        payload: bytes | None,
        parse: Callable[[Response], T],
        *,
        accept: str | None = None,
    ) -> T:
        """A JWS-signed POST (§6.2); ``payload`` None is POST-as-GET (§6.3)."""
        headers = _POST_HEADERS if accept is None else {**_POST_HEADERS, "Accept": accept}
        if self.client_ip_header is not None and self.client_addresses is not None:
            headers = {**headers, self.client_ip_header: self.client_addresses.for_key(key)}
        nonce_retries = retries = 0
        nonce: str | None = None
        while True:
            if nonce is None:
                nonce = self.nonces.pop() or await self.new_nonce(obs)
            body = self.signer(key, url, payload, nonce, kid)
            try:
                return await self.exchange(obs, endpoint, "POST", url, headers, body, parse)
            except AcmeProblem as exc:
                fresh, exc._nonce = exc._nonce, None
                if exc.code == "badNonce" and nonce_retries < self.max_nonce_retries:
                    nonce_retries += 1
                    log.debug("%s: badNonce, retry %d", endpoint, nonce_retries)
                    nonce = fresh
                    continue
                self.nonces.push(fresh)
                delay = self._retry_delay(exc, retries)
                if delay is None:
                    raise
                obs.waited(endpoint, exc, delay)
            except AcmeUnexpectedStatus as exc:
                delay = self._retry_delay(exc, retries)
                if delay is None:
                    raise
                obs.waited(endpoint, exc, delay)
            retries += 1
            nonce = None
            log.debug("%s: HTTP 429/503, retry %d in %.3gs", endpoint, retries, delay)
            await sleep_at_least(delay)

    async def new_nonce(self, obs: Observed) -> str:
        """A fresh nonce from newNonce (§7.2), bypassing the pool."""
        directory = await self.directory(obs)
        return await self.get(
            obs,
            "newNonce",
            directory.new_nonce,
            _nonce_of,
            method=self.nonce_method,
            pool_nonce=False,
        )

    async def directory(self, obs: Observed) -> Directory:
        """The directory (§7.1.1), fetched on first use and cached."""
        directory = self._directory
        if directory is not None:
            return directory
        async with self._directory_lock:
            if self._directory is None:
                url = self.directory_url
                self._directory = await self.get(
                    obs, "directory", url, lambda r: Directory.from_response(url, r)
                )
            return self._directory

    @property
    def cached_directory(self) -> Directory | None:
        """The directory if it was fetched already."""
        return self._directory

    def __repr__(self) -> str:
        return f"AcmeNetwork({self.directory_url!r}, nonces={len(self.nonces)})"
