"""Challenge publishers: how a worker puts challenge responses where the CA will look for them.

Runs in the requester (an xdist worker, or the controller without ``-n``).

    ChallengePublisher        the seam (Protocol) chains publish through
     ├── RedisPublisher       writes the challenge server's Redis store directly (fast path,
     │                        a lean RESP writer: ``challenge_srv.resp``; the key schema is
     │                        ``challenge_srv.store.Keys``)
     └── ChallTestSrvPublisher  speaks the pebble-challtestsrv management API over HTTP
                              (Boulder's chall-test-srv, Debian's pebble-challtestsrv, or
                              this project's challenge server)

Errors:

    WecError
     └── ChallengePublishError   a publish or removal failed, was refused or timed out

Every call is bounded by the publisher's ``timeout`` (seconds). Hosts are DNS names or IP
literals as in the ACME identifier; ``set_txt``/``clear_txt`` take the full
``_acme-challenge.`` name (RFC 8555 §8.4).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pytest_wec.errors import WecError

if TYPE_CHECKING:  # the checkout's folder; installed as pytest_wec_challenge_srv (_shipped.py)
    from challenge_srv.resp import RespClient
    from challenge_srv.store import (
        CHALLENGE_TTL,
        ChallengeStore,
        Keys,
        connect,
        redact_url,
        tlsalpn_host,
    )
else:
    from pytest_wec_challenge_srv.resp import RespClient
    from pytest_wec_challenge_srv.store import (
        CHALLENGE_TTL,
        ChallengeStore,
        Keys,
        connect,
        redact_url,
        tlsalpn_host,
    )

if TYPE_CHECKING:
    import aiohttp
    from redis.asyncio import Redis

__all__ = [
    "ChallTestSrvPublisher",
    "ChallengePublishError",
    "ChallengePublisher",
    "RedisPublisher",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


class ChallengePublishError(WecError):
    """Challenge data could not be published or removed (the message says where and why)."""


class ChallengePublisher(Protocol):
    """Publishes challenge responses (RFC 8555 §8.3 http-01, §8.4 dns-01, RFC 8737)."""

    async def add_http01(self, token: str, key_authz: str) -> None: ...

    async def del_http01(self, token: str) -> None: ...

    async def add_tlsalpn01(self, host: str, key_authz: str) -> None: ...

    async def del_tlsalpn01(self, host: str) -> None: ...

    async def set_txt(self, host: str, value: str) -> None: ...

    async def clear_txt(self, host: str) -> None: ...

    async def add_address(self, host: str, address: str) -> None: ...

    async def clear_address(self, host: str, address: str) -> None: ...

    async def aclose(self) -> None: ...


class RedisPublisher:
    """Writes the challenge store in Redis; the challenge server serves it at once.

    A plain ``redis://[[user]:password@]host:port[/db]`` URL is written through the lean
    writer (``challenge_srv.resp``, the challenge server's own client: one pipelined
    connection, the commands of ``ChallengeStore``); any other form, or ``lean=False``,
    through redis-py's ``ChallengeStore``. Challenge entries expire after ``ttl`` seconds
    even if never removed. The entries it published and did not remove yet (those of the
    chains in flight, at most ``keep``) are kept, so that :meth:`republish` writes them
    again into a Redis that restarted empty.
    """

    keep = 10_000

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ttl: int = CHALLENGE_TTL,
        lean: bool = True,
    ) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.timeout = timeout
        self.keys = Keys(namespace)
        #: the lean writer (challenge_srv.resp) for plain ``redis://`` URLs unless
        #: ``lean=False``; redis-py (ChallengeStore) for any other form
        self._lean = RespClient.from_url(redis_url, timeout=timeout) if lean else None
        self._redis: Redis | None = None
        if self._lean is None:
            self._redis = connect(redis_url, timeout=timeout)
        self._store = ChallengeStore(self._redis, self.keys, ttl=ttl, client=self._lean)
        #: (kind, name) -> values, oldest first: what a restarted Redis needs again
        self._live: dict[tuple[str, str], list[str]] = {}

    def _hold(self, kind: str, name: str, value: str | None) -> None:
        key = (kind, name)
        if value is None:
            self._live.pop(key, None)
            return
        values = self._live.pop(key, [])
        if kind != "txt":
            values = []
        values.append(value)
        self._live[key] = values
        while len(self._live) > self.keep:
            del self._live[next(iter(self._live))]

    async def republish(self) -> int:
        """Writes again every entry published and not removed (Redis came back without its
        data); the number written. Errors are logged: the chains then fail, counted."""
        items = list(self._live.items())
        adds = {"http01": self._store.add_http01, "tlsalpn01": self._store.add_tlsalpn01,
                "txt": self._store.add_txt, "address": self._route}
        done = 0
        for (kind, name), values in items:
            for value in values:
                try:
                    await self._call(f"republish {kind} {name}", adds[kind](name, value))
                    done += 1
                except ChallengePublishError as exc:
                    log.warning("%s", exc)
                    return done
        log.info("challenge data written again after a Redis restart: %d entries", done)
        return done

    async def _call(self, what: str, op: Awaitable[T]) -> T:
        try:
            if self._lean is not None:  # it bounds every wait by the timeout itself
                return await op
            async with asyncio.timeout(self.timeout):
                return await op
        except TimeoutError:
            raise ChallengePublishError(
                f"{what}: Redis {redact_url(self.redis_url)} did not answer within "
                f"{self.timeout:g}s"
            ) from None
        except Exception as exc:
            raise ChallengePublishError(
                f"{what}: Redis {redact_url(self.redis_url)}: {type(exc).__name__}: {exc}"
            ) from exc

    async def add_http01(self, token: str, key_authz: str) -> None:
        await self._call(f"add http-01 {token}", self._store.add_http01(token, key_authz))
        self._hold("http01", token, key_authz)

    async def del_http01(self, token: str) -> None:
        self._hold("http01", token, None)
        await self._call(f"delete http-01 {token}", self._store.del_http01(token))

    async def add_tlsalpn01(self, host: str, key_authz: str) -> None:
        await self._call(f"add tls-alpn-01 {host}", self._store.add_tlsalpn01(host, key_authz))
        self._hold("tlsalpn01", host, key_authz)

    async def del_tlsalpn01(self, host: str) -> None:
        self._hold("tlsalpn01", host, None)
        await self._call(f"delete tls-alpn-01 {host}", self._store.del_tlsalpn01(host))

    async def set_txt(self, host: str, value: str) -> None:
        await self._call(f"set TXT {host}", self._store.add_txt(host, value))
        self._hold("txt", host, value)

    async def clear_txt(self, host: str) -> None:
        self._hold("txt", host, None)
        await self._call(f"clear TXT {host}", self._store.clear_txt(host))

    def _route(self, host: str, address: str) -> Awaitable[None]:
        return self._store.add_addresses(_version(address), host, [address])

    async def add_address(self, host: str, address: str) -> None:
        """Route *host* to *address*: an A (or AAAA) record in the challenge server's DNS."""
        await self._call(f"add address {host}", self._route(host, address))
        self._hold("address", host, address)

    async def clear_address(self, host: str, address: str) -> None:
        self._hold("address", host, None)
        await self._call(f"clear address {host}",
                         self._store.clear_addresses(_version(address), host))

    async def aclose(self) -> None:
        try:
            if self._lean is not None:
                await self._lean.aclose()
            if self._redis is not None:
                await self._redis.aclose()
        except Exception as exc:  # closing must not mask the caller's outcome
            log.debug("closing the Redis publisher: %s", exc)


class ChallTestSrvPublisher:
    """Publishes through a pebble-challtestsrv compatible management API.

    Hosts are sent the way pebble-challtestsrv matches them: TXT hosts fully qualified
    (with the trailing dot), tls-alpn-01 IP hosts as their reverse-DNS name (RFC 8738 §6).
    With ``token``, every request carries ``Authorization: Bearer <token>``.
    """

    def __init__(
        self, management_url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        from pytest_wec.worker.janitor import HistoryJanitor

        self.management_url = management_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        #: clears the request history each removed challenge left (pytest_wec.worker.janitor)
        self.janitor = HistoryJanitor(self._post)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=headers
            )
        return self._session

    async def _request(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        import aiohttp

        url = self.management_url + path
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().post(url, data=json.dumps(body)) as resp:
                    return resp.status, await resp.text(errors="replace")
        except TimeoutError:
            raise ChallengePublishError(f"POST {url}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ChallengePublishError(f"POST {url}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _refused(url: str, status: int, text: str) -> ChallengePublishError:
        detail = text.strip().splitlines()[0][:200] if text.strip() else "(empty body)"
        return ChallengePublishError(f"POST {url}: HTTP {status}: {detail}")

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        status, text = await self._request(path, body)
        if status != 200:
            raise self._refused(self.management_url + path, status, text)

    async def history(self, kind: str, host: str) -> list[dict[str, Any]] | None:
        """The request history of *host* for *kind* (``http``, ``dns``, ``tlsalpn``): the
        requests the server answered for it, oldest first; None when the server offers no
        such history (404). A challtestsrv files DNS questions under the name asked
        (``_acme-challenge.NAME`` for dns-01), HTTP requests under the Host without port,
        TLS-ALPN handshakes under the SNI."""
        path = {"http": "/http-request-history", "dns": "/dns-request-history",
                "tlsalpn": "/tlsalpn01-request-history"}[kind]
        status, text = await self._request(path, {"host": host})
        if status == 404:
            return None
        if status != 200:
            raise self._refused(self.management_url + path, status, text)
        try:
            events = json.loads(text) if text.strip() else []
        except ValueError as exc:
            raise ChallengePublishError(f"POST {self.management_url + path}: not JSON: "
                                        f"{exc}") from None
        if events is None:  # Go's encoding of an empty (nil) list
            return []
        if not isinstance(events, list):
            raise ChallengePublishError(f"POST {self.management_url + path}: not a JSON list")
        return [e for e in events if isinstance(e, dict)]

    async def add_http01(self, token: str, key_authz: str) -> None:
        await self._post("/add-http01", {"token": token, "content": key_authz})

    async def del_http01(self, token: str) -> None:
        await self._post("/del-http01", {"token": token})

    async def add_tlsalpn01(self, host: str, key_authz: str) -> None:
        await self._post("/add-tlsalpn01", {"host": tlsalpn_host(host), "content": key_authz})

    async def del_tlsalpn01(self, host: str) -> None:
        await self._post("/del-tlsalpn01", {"host": tlsalpn_host(host)})

    async def set_txt(self, host: str, value: str) -> None:
        await self._post("/set-txt", {"host": _fqdn(host), "value": value})

    async def clear_txt(self, host: str) -> None:
        await self._post("/clear-txt", {"host": _fqdn(host)})

    async def add_address(self, host: str, address: str) -> None:
        """Route *host* to *address*: an A (``/add-a``) or AAAA (``/add-aaaa``) record in the
        challtestsrv's DNS, as Boulder's integration tests route a name to its tls-alpn-01
        responder, which listens on another address than the http-01 one."""
        path = "/add-a" if _version(address) == 4 else "/add-aaaa"
        await self._post(path, {"host": _bare(host), "addresses": [address]})

    async def clear_address(self, host: str, address: str) -> None:
        path = "/clear-a" if _version(address) == 4 else "/clear-aaaa"
        await self._post(path, {"host": _bare(host)})

    def forget(self, kind: str, ident: str) -> None:
        """The challenge *kind* of *ident* was removed: clear, in the background, the
        request history its validation left (:mod:`pytest_wec.worker.janitor`)."""
        self.janitor.forget(kind, ident)

    async def aclose(self) -> None:
        await self.janitor.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _bare(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _fqdn(host: str) -> str:
    return host.strip().rstrip(".").lower() + "."
