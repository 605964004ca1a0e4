"""Clears the request history a run leaves in a challtestsrv, so that a long run against
Boulder's chall-test-srv (which keeps every request it answered, per host, until told to
forget) does not grow that server's memory without end.

The publisher tells the :class:`HistoryJanitor` each challenge it removed
(:meth:`HistoryJanitor.forget`); the janitor then clears, in the background and in order,
what the CA's validation left under that identifier (``/clear-request-history``):

    http-01      the HTTP requests filed under the name (or the IP address)
    tls-alpn-01  the TLS handshakes filed under the SNI (the reverse-DNS name of an IP)
    dns          the DNS questions for the name (A, AAAA, CAA) and, for dns-01, for
                 ``_acme-challenge.NAME``

The CA also asks CAA of every parent of a name (RFC 8659 §3): those names are shared by the
run's chains, so they are cleared at most every :data:`PARENTS_EVERY` seconds, and once more
when the publisher closes. A chain's own validation requests have been counted
(:mod:`pytest_wec.worker.validations`) before its challenge is removed. Clearing never
delays a chain, and a failure to clear is logged, never raised: the history is the
server's housekeeping, not the chain's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the checkout's folder; installed as pytest_wec_challenge_srv (_shipped.py)
    from challenge_srv.store import tlsalpn_host
else:
    from pytest_wec_challenge_srv.store import tlsalpn_host

__all__ = ["PARENTS_EVERY", "HistoryJanitor", "history_entries"]

log = logging.getLogger(__name__)

#: seconds between two clearings of the names' parents (shared by the run's chains)
PARENTS_EVERY = 10.0
#: entries waiting to be cleared at most; past it new ones are dropped (and counted)
QUEUE_LIMIT = 10_000
#: seconds the last clearings may take when the publisher closes
CLOSE_TIMEOUT = 3.0

Post = Callable[[str, dict[str, Any]], Awaitable[None]]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def history_entries(kind: str, ident: str) -> list[tuple[str, str]]:
    """The (history type, host) pairs the validation of *ident* by challenge *kind* files
    its requests under in a challtestsrv."""
    if _is_ip(ident):
        return {"http-01": [("http", ident)],
                "tls-alpn-01": [("tlsalpn", tlsalpn_host(ident))]}.get(kind, [])
    name = ident.removeprefix("*.").rstrip(".").lower()
    entries = [("dns", name)]
    if kind == "http-01":
        entries.append(("http", name))
    elif kind == "tls-alpn-01":
        entries.append(("tlsalpn", name))
    elif kind == "dns-01":
        entries.append(("dns", "_acme-challenge." + name))
    return entries


def parents(ident: str) -> list[str]:
    """The parent domains of a DNS name (``b.example.com``, ``example.com``, ``com`` for
    ``a.b.example.com``): where the CA's CAA lookups climb."""
    if _is_ip(ident):
        return []
    labels = ident.removeprefix("*.").rstrip(".").lower().split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


class HistoryJanitor:
    """Clears a challtestsrv's request history in the background (see the module doc).

    *post* sends one management request (``path``, JSON body) and raises on failure.
    """

    def __init__(self, post: Post, *, parents_every: float = PARENTS_EVERY) -> None:
        self._post = post
        self.parents_every = parents_every
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._parents: set[str] = set()
        self._parents_at = time.monotonic()
        self.cleared = 0
        self.failed = 0
        self.dropped = 0

    def forget(self, kind: str, ident: str) -> None:
        """Clear, soon, what validating *ident* by *kind* left in the history."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_LIMIT)
        for entry in history_entries(kind, ident):
            try:
                self._queue.put_nowait(entry)
            except asyncio.QueueFull:
                self.dropped += 1
        self._parents.update(parents(ident))
        if time.monotonic() - self._parents_at >= self.parents_every:
            self._queue_parents()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="wec-history-janitor")

    def _queue_parents(self) -> None:
        assert self._queue is not None
        self._parents_at = time.monotonic()
        due, self._parents = self._parents, set()
        for host in sorted(due):
            try:
                self._queue.put_nowait(("dns", host))
            except asyncio.QueueFull:
                self.dropped += 1

    async def _clear(self, kind: str, host: str) -> None:
        try:
            await self._post("/clear-request-history", {"host": host, "type": kind})
            self.cleared += 1
        except Exception as exc:  # housekeeping: never the chain's failure
            self.failed += 1
            log.debug("clearing the %s request history of %s: %s", kind, host, exc)

    async def _run(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            kind, host = self._queue.get_nowait()
            await self._clear(kind, host)

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Clear what is left, the parents too, within *timeout* seconds."""
        if self._queue is None:
            return
        self._queue_parents()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._task is not None and not self._task.done():
                    await self._task
                await self._run()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.failed or self.dropped:
            log.info("challtestsrv request history: %d cleared, %d failed, %d left",
                     self.cleared, self.failed, self.dropped)
