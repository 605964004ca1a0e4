"""Validation requests seen by the challenge server, delivered to the chain waiting on them.

RFC 8555 §7.5.1: a client that can tell when the server has validated the challenge (it sees
the HTTP or DNS request) "SHOULD NOT begin polling until it has seen the validation
request". A chain registers a :class:`ValidationWatch` for (challenge type, identifier)
before it answers the challenge (§7.5.1), and its authorization poll waits on
:meth:`ValidationWatch.wait` instead of a fixed first step: it polls right after the CA's
validation request is seen, and where none is seen in time (a CA that validates from a
cache, events lost, no feed) the old schedule applies.

    RedisValidationFeed    our challenge server publishes each validation request it
                           answers on ``wec:NS:seen`` (``challenge_srv.seen``); ONE
                           subscriber per worker process, started by the first watch,
                           dispatches them to the watches by (type, name)
    HistoryValidationFeed  a challtestsrv (``--wec-challtestsrv``) offers its request
                           history (``/http-request-history`` ...): a watch reads its
                           length first, then polls it in short steps while waited on

A watch counts every validation request of its authorization until it is closed (a CA
validating from several perspectives sends several) and keeps the time of the first. Every
wait is bounded by its timeout; a feed that fails never fails a chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the checkout's folder; installed as pytest_wec_challenge_srv (_shipped.py)
    from challenge_srv.seen import SeenEvent, decode, seen_name
    from challenge_srv.store import Keys, redact_url, tlsalpn_host
else:
    from pytest_wec_challenge_srv.seen import SeenEvent, decode, seen_name
    from pytest_wec_challenge_srv.store import Keys, redact_url, tlsalpn_host

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from pytest_wec.worker.publish import ChallTestSrvPublisher

__all__ = ["Expectation", "HistoryValidationFeed", "HistoryWatch", "RedisValidationFeed",
           "ValidationFeed", "ValidationWatch", "make_feed"]

log = logging.getLogger(__name__)

#: seconds to connect and subscribe (the first watch of a process waits that long at most)
SUBSCRIBE_TIMEOUT = 2.0
#: seconds before a feed that failed to subscribe is tried again
RETRY_AFTER = 10.0
#: seconds between two reads of a challtestsrv's request history: first, then the longest
HISTORY_STEP = 0.005
HISTORY_MAX_STEP = 0.1
#: seconds a wait goes on after the first validation request for the rest expected
GRACE = 0.01
#: authorizations whose counts make the expectation
EXPECT_WINDOW = 16


class ValidationFeed(Protocol):
    async def watch(self, kind: str, name: str, token: str | None = None) -> ValidationWatch: ...

    async def aclose(self) -> None: ...


class Expectation:
    """How many validation requests the CA sends per authorization, as recently seen (a CA
    validating from several perspectives sends several: Pebble three at once)."""

    def __init__(self, size: int = EXPECT_WINDOW) -> None:
        self._counts: dict[str, deque[int]] = {}
        self.size = size

    def add(self, kind: str, count: int) -> None:
        if count > 0:
            self._counts.setdefault(kind, deque(maxlen=self.size)).append(count)

    def of(self, kind: str) -> int:
        """The median count of the last authorizations of *kind* (1 before any)."""
        counts = self._counts.get(kind)
        return sorted(counts)[(len(counts) - 1) // 2] if counts else 1


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ValidationWatch:
    """The validation requests of one authorization: ``first`` (epoch of the first seen,
    None before), ``received`` (epoch of its arrival here), ``last`` and ``count``;
    :meth:`wait` for them; :meth:`close` when done.

    *expect*: how many the CA is expected to send (:class:`Expectation`): once the first is
    seen, :meth:`wait` waits for that many, at most :data:`GRACE` seconds more."""

    def __init__(self, feed: Any, kind: str, name: str, token: str | None = None, *,
                 expect: int = 1) -> None:
        self.kind = kind
        self.name = seen_name(name, kind)
        self.token = token
        self.expect = max(1, expect)
        self.first: float | None = None
        self.last: float | None = None
        self.received: float | None = None
        self.count = 0
        self._feed = feed
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._all: asyncio.Future[None] = loop.create_future()
        self._first_at = 0.0  # loop time of the first's arrival
        self._closed = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    def saw(self, event: SeenEvent, count: int | None = None) -> None:
        """Count *event* (one of this watch's type and name; another token's is ignored);
        *count*: the total seen so far, where it is known (a request history)."""
        if self.token and event.token and event.token != self.token:
            return
        self.count = self.count + 1 if count is None else count
        self.last = event.time
        if self.first is None:
            self.first, self.received = event.time, time.time()
            self._first_at = asyncio.get_running_loop().time()
            _resolve(self._first)
        if self.count >= self.expect:
            _resolve(self._all)

    async def wait(self, timeout: float) -> bool:
        """True once the CA's validation requests were seen (the first, then the expected
        number or :data:`GRACE` seconds, whichever is first; at once if they were); False
        when *timeout* seconds pass without the first. Never raises (but cancellation)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        if not self._first.done() and (
                timeout <= 0 or not await self._until(self._first, timeout)):
            return False
        if not self._all.done():
            left = min(end, self._first_at + GRACE) - loop.time()
            if left > 0:
                await self._until(self._all, left)
        return True

    async def _until(self, fut: asyncio.Future[None], timeout: float) -> bool:
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        return bool(done)

    def close(self) -> None:
        """Stop counting: the chain is done with the authorization (idempotent)."""
        if not self._closed:
            self._closed = True
            self._feed.forget(self)


class RedisValidationFeed:
    """The events of the challenge server's ``seen`` channel, to the watches of this process."""

    def __init__(self, redis_url: str, namespace: str, *,
                 timeout: float = SUBSCRIBE_TIMEOUT) -> None:
        self.redis_url = redis_url
        self.channel = Keys(namespace).seen()
        self.timeout = timeout
        self.received = 0  # events read from the channel (for this process or another)
        self.expectation = Expectation()
        self._watches: dict[tuple[str, str], set[ValidationWatch]] = {}
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[bool] | None = None
        self._retry_at = 0.0

    async def watch(self, kind: str, name: str, token: str | None = None) -> ValidationWatch:
        """A watch for validation requests of *kind* for *name*, registered now (so that a CA
        answering fast is not missed); the subscriber is started by the first one."""
        watch = ValidationWatch(self, kind, name, token, expect=self.expectation.of(kind))
        self._watches.setdefault(watch.key, set()).add(watch)
        await self._ensure()
        return watch

    def forget(self, watch: ValidationWatch) -> None:
        self.expectation.add(watch.kind, watch.count)
        watches = self._watches.get(watch.key)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.key]

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watches.values())

    async def _ensure(self) -> bool:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return True
        if loop.time() < self._retry_at:
            return False
        if self._starting is None or self._starting.done() or self._starting.get_loop() is not loop:
            self._starting = loop.create_task(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> bool:
        from redis.asyncio import Redis

        await self._drop()
        loop = asyncio.get_running_loop()
        redis: Redis = Redis.from_url(self.redis_url, decode_responses=True,
                                      socket_connect_timeout=self.timeout, socket_keepalive=True)
        pubsub = redis.pubsub()
        self._redis, self._pubsub = redis, pubsub
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.subscribe(self.channel)
                while True:  # the confirmation: from now on every event reaches us
                    msg = await pubsub.get_message(timeout=self.timeout)
                    if msg is not None and msg.get("type") == "subscribe":
                        break
                    if msg is not None:
                        self._message(msg)
        except Exception as exc:  # polling on the old schedule is the fallback
            log.warning("validation requests: cannot subscribe to %s at Redis %s (polling "
                        "without them for %gs): %s: %s", self.channel,
                        redact_url(self.redis_url), RETRY_AFTER, type(exc).__name__, exc)
            self._retry_at = loop.time() + RETRY_AFTER
            await self._drop()
            return False
        self._task = loop.create_task(self._listen(pubsub))
        return True

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            async for msg in pubsub.listen():
                self._message(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next watch subscribes again
            log.warning("validation requests: the subscription to %s ended: %s: %s",
                        self.channel, type(exc).__name__, exc)

    def _message(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "message":
            return
        self.received += 1
        event = decode(msg.get("data") or "")
        if event is None:
            return
        for watch in list(self._watches.get((event.type, event.name), ())):
            watch.saw(event)

    async def _drop(self) -> None:
        task, self._task = self._task, None
        pubsub, self._pubsub = self._pubsub, None
        redis, self._redis = self._redis, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        for closer in (pubsub, redis):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closer.aclose(), 1.0)

    async def aclose(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        await self._drop()
        for watches in list(self._watches.values()):
            for watch in list(watches):
                watch.close()


_HISTORY = {"http-01": "http", "dns-01": "dns", "tls-alpn-01": "tlsalpn"}


class HistoryWatch(ValidationWatch):
    """A watch that reads the challtestsrv's request history while it is waited on."""

    baseline: int | None = None  # the history's length (this token's) before the answer

    async def wait(self, timeout: float) -> bool:
        if self._all.done() or self.baseline is None or timeout <= 0:
            return await super().wait(timeout)
        feed: HistoryValidationFeed = self._feed
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        step = HISTORY_STEP
        while True:
            count = await feed.count(self, end - loop.time())
            if count is None and feed.offered is False:  # no history: what was seen stands
                self.baseline = None
                return await super().wait(end - loop.time())
            if count is not None and count < self.baseline:  # the history was cleared
                self.baseline = 0  # meanwhile (pytest_wec.worker.janitor): count from zero
            if count is not None and count - self.baseline > self.count:
                self.saw(SeenEvent(self.kind, self.name, self.token, "", time.time()),
                         count - self.baseline)
            now = loop.time()
            seen = self._first.done()
            if self._all.done() or (seen and now >= self._first_at + GRACE):
                return True
            limit = min(end, self._first_at + GRACE) if seen else end
            if now >= limit:
                return seen
            await asyncio.sleep(min(step, limit - now))
            step = min(step * 2, HISTORY_MAX_STEP)


class HistoryValidationFeed:
    """Validation requests read from a challtestsrv's request history (pebble-challtestsrv,
    Boulder's chall-test-srv, this project's challenge server). A server without one (404)
    turns the feed off: every watch then keeps the old polling schedule."""

    def __init__(self, publisher: ChallTestSrvPublisher) -> None:
        self.publisher = publisher
        self.offered: bool | None = None  # None: not asked yet
        self.expectation = Expectation()

    async def watch(self, kind: str, name: str, token: str | None = None) -> HistoryWatch:
        watch = HistoryWatch(self, kind, name, token, expect=self.expectation.of(kind))
        if self.offered is not False and kind in _HISTORY:
            watch.baseline = await self.count(watch, self.publisher.timeout)
        return watch

    def forget(self, watch: ValidationWatch) -> None:
        self.expectation.add(watch.kind, watch.count)

    @staticmethod
    def host(kind: str, name: str) -> str:
        """The host a challtestsrv files the validation requests of *name* under."""
        if kind == "dns-01":
            return "_acme-challenge." + name
        if kind == "tls-alpn-01":
            return tlsalpn_host(name)
        return name

    async def count(self, watch: ValidationWatch, timeout: float) -> int | None:
        """How many validation requests of *watch* the history holds; None when it cannot
        be read (no history: :attr:`offered` is then False; an error; no time left)."""
        if timeout <= 0:
            return None
        from pytest_wec.worker.publish import ChallengePublishError

        try:
            async with asyncio.timeout(timeout):
                events = await self.publisher.history(_HISTORY[watch.kind],
                                                      self.host(watch.kind, watch.name))
        except (TimeoutError, ChallengePublishError) as exc:
            log.debug("request history of %s: %s", watch.name, exc)
            return None
        if events is None:
            if self.offered is None:
                log.info("the challtestsrv offers no request history: polling on the usual "
                         "schedule")
            self.offered = False
            return None
        self.offered = True
        if watch.kind == "http-01" and watch.token:
            suffix = "/" + watch.token
            return sum(1 for e in events
                       if str(e.get("URL", "")).split("?", 1)[0].endswith(suffix))
        return len(events)

    async def aclose(self) -> None:
        pass  # the publisher's session is the publisher's to close


def make_feed(info: dict[str, Any], publisher: Any) -> ValidationFeed | None:
    """The feed for this stack: a challtestsrv's history where challenges go through one
    (``--wec-challtestsrv``), else our challenge server's events in Redis; None without."""
    from pytest_wec.worker.publish import ChallTestSrvPublisher

    if info.get("challtestsrv"):
        if isinstance(publisher, ChallTestSrvPublisher):
            return HistoryValidationFeed(publisher)
        return None
    if info.get("redis_url") and info.get("namespace"):
        return RedisValidationFeed(info["redis_url"], info["namespace"])
    return None
