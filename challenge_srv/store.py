"""The challenge store: one Redis key schema, shared by the requesters and the challenge server.

Requesters (``pytest_wec.worker.publish.RedisPublisher``) and the management API write these keys;
the challenge server reads them on every query, so a freshly written token is served at once.
Every key of a run lives under ``wec:NS:`` where ``NS`` is the run's namespace:

    wec:NS:http01:<token>       string  key authorization                 expires (CHALLENGE_TTL)
    wec:NS:tlsalpn01:<host>     string  key authorization                 expires
    wec:NS:txt:<host>           set     TXT values (dns-01)               expires
    wec:NS:a:<host>             list    IPv4 addresses (A override)
    wec:NS:aaaa:<host>          list    IPv6 addresses (AAAA override)
    wec:NS:caa:<host>           list    JSON {"flag": int, "tag": str, "value": str}
    wec:NS:cname:<host>         string  alias target
    wec:NS:servfail:<host>      string  "1": every query for <host> gets SERVFAIL
    wec:NS:redirect:<path>      string  http-01 301 target URL for <path>
    wec:NS:default-ipv4         string  A answer for every other name; "" disables;
    wec:NS:default-ipv6         string  AAAA likewise (absent: the server's command-line default)
    wec:NS:seen                 channel each validation request answered (``challenge_srv.seen``)

Hosts are stored lower-case without a trailing dot. A tls-alpn-01 host that is an IP literal
is stored under its reverse-DNS name (RFC 8738 §6: that is the SNI the CA sends), so both
``127.0.0.1`` and ``1.0.0.127.in-addr.arpa`` address the same entry.

The challenge server reads them with :class:`ChallengeStore`, one round trip per query
(two for a DNS name with a CNAME) and the same commands whatever the client:

    http-01 fetch     GET redirect:<path>, GET http01:<token>
    DNS question      GET servfail:<host>, GET cname:<host>, then by type: SMEMBERS txt
                      (TXT); LRANGE a|aaaa and GET default-ipv4|6 (A, AAAA); LRANGE caa (CAA)
    CNAME followed    the target's commands of that type, in a second round trip
    tls-alpn-01       GET tlsalpn01:<host>

With the lean client (:class:`.resp.RespClient`, for ``redis://`` URLs) those commands,
and the writes of the requesters and the management API, go out in one write on its one
connection and the replies are decoded here as redis-py decodes them; without one
(``rediss://``, ``unix://``, ``--redis-client redis-py``), through redis-py. A read whose
connection is lost while it is in flight (Redis restarted) is sent once more on a new
connection, as redis-py's pool retries it; any other failure is raised to the responder,
which answers SERVFAIL or 503.

This module imports nothing heavy at run time: ``redis`` is imported by :func:`connect` only.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .resp import RespConnectionError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .resp import RespClient

__all__ = [
    "CHALLENGE_TTL",
    "CaaPolicy",
    "ChallengeStore",
    "DnsData",
    "Keys",
    "connect",
    "ip_from_reverse_name",
    "normalize_host",
    "redact_url",
    "tlsalpn_host",
]

#: Seconds a challenge entry (http-01, tls-alpn-01, TXT) lives without being removed.
CHALLENGE_TTL = 3600

_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def normalize_host(host: str) -> str:
    """``Example.COM.`` -> ``example.com``: the form every host key uses."""
    return host.strip().rstrip(".").lower()


def tlsalpn_host(host: str) -> str:
    """The SNI name a CA sends for *host*: the host itself, or an IP's reverse-DNS name."""
    name = normalize_host(host)
    try:
        return ipaddress.ip_address(name.strip("[]")).reverse_pointer
    except ValueError:
        return name


def ip_from_reverse_name(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``1.0.0.127.in-addr.arpa`` -> ``127.0.0.1`` (and ip6.arpa nibbles); None otherwise."""
    labels = normalize_host(name).split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = labels[:32]
            if all(len(n) == 1 for n in nibbles):
                return ipaddress.IPv6Address(bytes.fromhex("".join(reversed(nibbles))))
    except ValueError:
        return None
    return None


def redact_url(url: str) -> str:
    """*url* without its password, for messages and logs."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


class Keys:
    """The Redis keys of one namespace (see the module docstring for the schema)."""

    def __init__(self, namespace: str) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(
                f"namespace: expected 1-128 characters of A-Z a-z 0-9 . _ -, got {namespace!r}"
            )
        self.namespace = namespace
        self.prefix = f"wec:{namespace}:"

    def http01(self, token: str) -> str:
        return f"{self.prefix}http01:{token}"

    def tlsalpn01(self, host: str) -> str:
        return f"{self.prefix}tlsalpn01:{tlsalpn_host(host)}"

    def txt(self, host: str) -> str:
        return f"{self.prefix}txt:{normalize_host(host)}"

    def a(self, host: str) -> str:
        return f"{self.prefix}a:{normalize_host(host)}"

    def aaaa(self, host: str) -> str:
        return f"{self.prefix}aaaa:{normalize_host(host)}"

    def caa(self, host: str) -> str:
        return f"{self.prefix}caa:{normalize_host(host)}"

    def cname(self, host: str) -> str:
        return f"{self.prefix}cname:{normalize_host(host)}"

    def servfail(self, host: str) -> str:
        return f"{self.prefix}servfail:{normalize_host(host)}"

    def redirect(self, path: str) -> str:
        return f"{self.prefix}redirect:{path}"

    def default_ip(self, version: int) -> str:
        return f"{self.prefix}default-ipv{version}"

    def seen(self) -> str:
        """The pub/sub channel of the validation requests seen (``challenge_srv.seen``)."""
        return f"{self.prefix}seen"


@dataclass(frozen=True)
class CaaPolicy:
    """One CAA record (RFC 8659): flag (128 = critical), tag and value."""

    tag: str
    value: str
    flag: int = 0

    def encode(self) -> str:
        return json.dumps({"flag": self.flag, "tag": self.tag, "value": self.value})

    @classmethod
    def decode(cls, raw: str) -> CaaPolicy | None:
        try:
            d = json.loads(raw)
            return cls(str(d["tag"]), str(d["value"]), int(d.get("flag", 0)) & 0xFF)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(frozen=True)
class DnsData:
    """What the store holds for one DNS question: the answer before it becomes records."""

    servfail: bool = False
    cname: str | None = None  # the alias target, without trailing dot
    values: tuple[str, ...] = ()  # TXT values, IP addresses, or encoded CAA policies
    default: str | None = None  # the stored default-ipv4/6 (None: not set, "": disabled)


def connect(url: str, *, timeout: float = 5.0, max_connections: int = 64) -> Redis:
    """A ``redis.asyncio`` client that decodes replies as text.

    Its pool is a blocking one: past ``max_connections`` a command waits (up to *timeout*)
    for a free connection instead of failing, so a burst of queries queues up. A command on
    a connection that broke (Redis restarted) is tried once more on a new one, so that each
    pooled connection does not fail one command after a restart.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


class ChallengeStore:
    """Reads and writes the challenge data of one namespace (one Redis round trip each).

    Every read and write goes through *client* (the lean client) when given, else through
    *redis* (redis-py): the same commands either way (see the module docstring)."""

    def __init__(self, redis: Redis | None, keys: Keys, *, ttl: int = CHALLENGE_TTL,
                 client: RespClient | None = None) -> None:
        if redis is None and client is None:
            raise ValueError("ChallengeStore needs a Redis client")
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.client = client

    async def _write(self, *commands: tuple[Any, ...], transaction: bool = False) -> None:
        """*commands* in one round trip (in MULTI/EXEC with *transaction*)."""
        if self.client is not None:
            if transaction:
                commands = (("MULTI",), *commands, ("EXEC",))
            await self.client.execute(*commands)
            return
        assert self.redis is not None
        async with self.redis.pipeline(transaction=transaction) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()

    # -- challenge entries (with expiry) -------------------------------------------------

    async def add_http01(self, token: str, key_authz: str) -> None:
        await self._write(("SET", self.keys.http01(token), key_authz, "EX", self.ttl))

    async def del_http01(self, token: str) -> None:
        await self._write(("DEL", self.keys.http01(token)))

    async def add_tlsalpn01(self, host: str, key_authz: str) -> None:
        await self._write(("SET", self.keys.tlsalpn01(host), key_authz, "EX", self.ttl))

    async def del_tlsalpn01(self, host: str) -> None:
        await self._write(("DEL", self.keys.tlsalpn01(host)))

    async def add_txt(self, host: str, value: str) -> None:
        key = self.keys.txt(host)
        await self._write(("SADD", key, value), ("EXPIRE", key, self.ttl), transaction=True)

    async def clear_txt(self, host: str) -> None:
        await self._write(("DEL", self.keys.txt(host)))

    # -- DNS data (kept until cleared) ---------------------------------------------------

    async def set_default_ip(self, version: int, ip: str) -> None:
        await self._write(("SET", self.keys.default_ip(version), ip))

    def _addresses_key(self, version: int, host: str) -> str:
        return self.keys.a(host) if version == 4 else self.keys.aaaa(host)

    async def add_addresses(self, version: int, host: str, addresses: list[str]) -> None:
        await self._write(("RPUSH", self._addresses_key(version, host), *addresses))

    async def clear_addresses(self, version: int, host: str) -> None:
        await self._write(("DEL", self._addresses_key(version, host)))

    async def add_caa(self, host: str, policies: list[CaaPolicy]) -> None:
        await self._write(("RPUSH", self.keys.caa(host), *(p.encode() for p in policies)))

    async def clear_caa(self, host: str) -> None:
        await self._write(("DEL", self.keys.caa(host)))

    async def set_cname(self, host: str, target: str) -> None:
        await self._write(("SET", self.keys.cname(host), normalize_host(target)))

    async def clear_cname(self, host: str) -> None:
        await self._write(("DEL", self.keys.cname(host)))

    async def set_servfail(self, host: str) -> None:
        await self._write(("SET", self.keys.servfail(host), "1"))

    async def clear_servfail(self, host: str) -> None:
        await self._write(("DEL", self.keys.servfail(host)))

    async def add_redirect(self, path: str, target: str) -> None:
        await self._write(("SET", self.keys.redirect(path), target))

    async def del_redirect(self, path: str) -> None:
        await self._write(("DEL", self.keys.redirect(path)))

    # -- reads of the challenge server ---------------------------------------------------

    async def _read(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to *commands*, sent in one round trip, as text."""
        if self.client is None:
            assert self.redis is not None
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())
        try:
            replies = await self.client.execute(*commands)
        except RespConnectionError:  # a broken connection: once more, on a new one
            replies = await self.client.execute(*commands)
        return [_text(r) for r in replies]

    async def http01(self, path: str, token: str | None) -> tuple[str | None, str | None]:
        """(redirect target for *path*, key authorization for *token*), one round trip."""
        commands: list[tuple[Any, ...]] = [("GET", self.keys.redirect(path))]
        if token:
            commands.append(("GET", self.keys.http01(token)))
        res = await self._read(commands)
        return res[0], (res[1] if token else None)

    async def tlsalpn01(self, host: str) -> str | None:
        (value,) = await self._read([("GET", self.keys.tlsalpn01(host))])
        return None if value is None else str(value)

    async def dns(self, host: str, qtype: str, *, follow: bool = True) -> DnsData:
        """The data for a question (qtype ``A``, ``AAAA``, ``TXT``, ``CAA`` or ``CNAME``)."""
        k = self.keys
        commands: list[tuple[Any, ...]] = []
        if follow:
            commands += [("GET", k.servfail(host)), ("GET", k.cname(host))]
        if qtype == "TXT":
            commands.append(("SMEMBERS", k.txt(host)))
        elif qtype in ("A", "AAAA"):
            version = 4 if qtype == "A" else 6
            commands.append(("LRANGE", k.a(host) if version == 4 else k.aaaa(host), 0, -1))
            commands.append(("GET", k.default_ip(version)))
        elif qtype == "CAA":
            commands.append(("LRANGE", k.caa(host), 0, -1))
        res = await self._read(commands) if commands else []
        if follow:
            servfail, cname, rest = res[0] is not None, res[1], res[2:]
        else:
            servfail, cname, rest = False, None, res
        values, default = self._values(qtype, rest)
        return DnsData(servfail, cname or None, values, default)

    @staticmethod
    def _values(qtype: str, rest: list[Any]) -> tuple[tuple[str, ...], str | None]:
        if qtype == "TXT":
            return tuple(sorted(rest[0] or ())), None
        if qtype in ("A", "AAAA"):
            return tuple(rest[0] or ()), rest[1]
        if qtype == "CAA":
            return tuple(rest[0] or ()), None
        return (), None


def _text(reply: Any) -> Any:
    """A lean client's reply as redis-py decodes it (``decode_responses``): bytes as text."""
    if type(reply) is bytes:
        return reply.decode()
    if type(reply) is list:
        return [_text(r) for r in reply]
    return reply
