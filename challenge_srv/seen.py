"""Validation requests seen: each one the challenge server answers, published for the chain.

RFC 8555 §7.5.1: "For challenges where the client can tell when the server has validated the
challenge (e.g., by seeing an HTTP or DNS request from the server), the client SHOULD NOT
begin polling until it has seen the validation request from the server." The challenge
server sees every validation request; it publishes each one, once answered, on the Redis
channel ``wec:NS:seen`` (``Keys.seen``) as one compact JSON object:

    {"type": "http-01", "name": "x.example", "token": "TOKEN", "source": "127.0.0.1",
     "time": 1700000000.123, "served": true}

    type     the challenge type answered: ``http-01`` (a GET or HEAD of
             ``/.well-known/acme-challenge/TOKEN``, RFC 8555 §8.3), ``dns-01`` (a TXT query
             for ``_acme-challenge.NAME``, §8.4) or ``tls-alpn-01`` (a ClientHello offering
             ``acme-tls/1`` with SNI NAME, RFC 8737 §3)
    name     the identifier validated (:func:`seen_name`): lower-case, no trailing dot, no
             ``_acme-challenge.``; an IP literal (the Host of an http-01 request, the
             reverse-DNS SNI of RFC 8738 §6) in its canonical text form
    token    the http-01 token; null for the other types
    source   the address the request came from (the CA's validation agent)
    time     when it was seen (seconds since the epoch, this host's clock)
    served   whether a key authorization (TXT records) was found for it

:class:`SeenPublisher` keeps the answering path cheap: :meth:`SeenPublisher.seen` only
queues the event (dropped when the bounded queue is full); one background task sends what is
queued in one pipelined round trip (through the lean client when the server has one,
:mod:`.resp`), and a Redis error is logged, never raised into an
answer. Delivery is best-effort (Redis PUBLISH reaches only subscribers connected at the
time): a waiting chain that gets no event falls back on its polling schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .resp import RespConnectionError
from .store import ip_from_reverse_name, normalize_host

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .resp import RespClient

__all__ = ["SEEN_TYPES", "SeenEvent", "SeenPublisher", "decode", "encode", "seen_name"]

log = logging.getLogger(__name__)

#: The challenge types whose validation requests are published.
SEEN_TYPES = ("http-01", "dns-01", "tls-alpn-01")
_DNS_PREFIX = "_acme-challenge."
_MAX_QUEUE = 4096
_MAX_BATCH = 256
_SEND_TIMEOUT = 2.0
_STOP_TIMEOUT = 1.0


def seen_name(host: str, kind: str = "") -> str:
    """The identifier a validation request is for, in the form events and waiters share.

    ``Example.COM.`` -> ``example.com``; for dns-01 ``_acme-challenge.x.example.`` ->
    ``x.example``; ``*.x.example`` -> ``x.example`` (a wildcard's authorization names its
    base domain, RFC 8555 §7.1.4); ``[::1]``/``::0:1`` -> ``::1``; an IP's reverse-DNS name
    (the tls-alpn-01 SNI of RFC 8738 §6) -> the IP.
    """
    name = normalize_host(host)
    if kind == "dns-01" and name.startswith(_DNS_PREFIX):
        name = name[len(_DNS_PREFIX):]
    name = name.removeprefix("*.")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name or name[-1:].isdigit():  # could be an address (IPv4 ends in a digit)
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            pass
    ip = ip_from_reverse_name(name) if name.endswith(".arpa") else None
    return str(ip) if ip is not None else name


@dataclass(frozen=True)
class SeenEvent:
    """One validation request the challenge server answered (see the module docstring)."""

    type: str
    name: str
    token: str | None
    source: str
    time: float
    served: bool = True


def encode(event: SeenEvent) -> str:
    return json.dumps(
        {"type": event.type, "name": event.name, "token": event.token,
         "source": event.source, "time": event.time, "served": event.served},
        separators=(",", ":"))


def decode(raw: str | bytes) -> SeenEvent | None:
    """The event in *raw*; None when it is not one (never raises)."""
    try:
        d = json.loads(raw)
        token = d.get("token")
        return SeenEvent(str(d["type"]), str(d["name"]), None if token is None else str(token),
                         str(d.get("source") or ""), float(d["time"]), bool(d.get("served", True)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class SeenPublisher:
    """Publishes validation requests on *channel*, from one background task (through
    *client* when given, else *redis*)."""

    def __init__(self, redis: Redis, channel: str, *, max_queue: int = _MAX_QUEUE,
                 client: RespClient | None = None) -> None:
        self.redis = redis
        self.client = client
        self.channel = channel
        self.dropped = 0
        self.failed = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def seen(self, kind: str, host: str, source: Any, *, token: str | None = None,
             served: bool = True) -> None:
        """Queue the event for a validation request of *kind* for *host* from *source*
        (a peer address tuple or a host string). Cheap and synchronous; never raises."""
        try:
            if isinstance(source, tuple | list):
                source = source[0] if source else ""
            event = SeenEvent(kind, seen_name(host, kind), token, str(source or ""),
                              time.time(), served)
            self._queue.put_nowait(encode(event))
        except asyncio.QueueFull:
            self.dropped += 1
        except Exception as exc:  # an odd name or address must not break the answer
            log.debug("seen %s %r: not published: %s", kind, host, exc)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Send what is queued (bounded by a second), then end the background task."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_TIMEOUT):
                while not self._queue.empty() and not task.done():
                    await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with asyncio.timeout(_SEND_TIMEOUT):
                    await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost events only cost a chain its polling schedule
                self.failed += len(batch)
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "seen: %d event(s) not published: %s: %s", len(batch),
                        type(exc).__name__, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("seen: publishing again")
                self._failing = False

    async def _send(self, batch: list[str]) -> None:
        if self.client is not None:
            commands = [("PUBLISH", self.channel, m) for m in batch]
            try:
                await self.client.execute(*commands)
            except RespConnectionError:  # a broken connection: once more, on a new one
                await self.client.execute(*commands)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for message in batch:
                pipe.publish(self.channel, message)
            await pipe.execute()
