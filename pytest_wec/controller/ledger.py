"""The failed chains of a load run by cause, and the CA events they count against.

:class:`FailureLedger` (every load run, on the controller) sorts the failed chains as they
arrive::

    ca_answer    failed on a problem document or an HTTP error status from the CA
    ca_event     failed because of a recorded CA event (:mod:`~pytest_wec.controller.doctor`)
    stack_event  failed because a part of our own stack died (redis-server, the challenge
                 server; :mod:`~pytest_wec.stack._keeper`)
    no_answer    a timeout or refused connection outside any event
    ours         the rest: the chain's own checks, the client, the generator

and keeps the CA events (summary.json ``ca_events``): a failure that got no answer, or was
cancelled, inside an event's window counts against it; after a restart, chains refused with
``accountDoesNotExist``, and chains that spanned the restart and failed on an answer, count
against the restart. It keeps the stack events too (``stack_events``): every chain that
failed, however, and was in flight while the part was down (ended after it died, started
before it was back) counts against it; a part that stays down takes every later failure.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pytest_wec.wire.results import ChainResult

__all__ = ["EXIT_INCOMPLETE", "FailureLedger", "failure_cause", "shard_of"]

#: The exit status of a run that lost results or had a part of its stack die without
#: recovery, whatever its thresholds say (pytest uses 0 to 6, the gates 7).
EXIT_INCOMPLETE = 8

ACME = "urn:ietf:params:acme:error:"
_KEEP_S = 120.0  # failures kept this long for an event found later
_KEEP_N = 50_000


def failure_cause(c: ChainResult) -> tuple[str, str]:
    """``(group, label)`` of a chain that did not succeed: group ``ca_answer``,
    ``no_answer``, ``cancelled`` or ``ours``; label e.g. ``timeout``, ``badNonce``,
    ``rateLimited (CertificatesPerDomain)``."""
    if c["outcome"] == "cancelled":
        return "cancelled", "cancelled"
    reqs = c["requests"]
    last = reqs[-1] if reqs else None
    if last is not None and not last["ok"]:
        if last["status"]:
            problem = last["problem"] or ""
            label = problem.removeprefix(ACME) or f"HTTP {last['status']}"
            limit = last.get("limit")  # a rateLimited problem's limit, when its detail names it
            return "ca_answer", f"{label} ({limit})" if limit else label
        if last["error"] in ("timeout", "connect"):
            return "no_answer", str(last["error"])
    err = c["error"] or ""
    if err.startswith("AcmeTimeout"):
        return "no_answer", "timeout"
    if err.startswith("AcmeConnectError"):
        return "no_answer", "connect"
    if err.startswith(ACME):
        return "ca_answer", err.split(" ", 1)[0].removeprefix(ACME)
    return "ours", err.split(":", 1)[0] or "error"


def shard_of(worker: str, shards: int) -> int:
    """The embedded Pebble worker *worker* (``gw3``; ``main`` without xdist) uses when a run
    spreads over *shards* of them (:meth:`pytest_wec.stack.Stack.info_for`)."""
    digits = "".join(ch for ch in worker if ch.isdigit())
    return int(digits) % shards if digits and shards > 1 else 0


@dataclass
class _Window:
    since: float  # epoch: the last POST answer before the event
    until: float | None  # epoch: the restart's end (or resume) plus the timeout; None: open
    restart_at: float | None = None  # a restart event: when Pebble answered again
    shard: int = 0  # the embedded Pebble it is about: only its workers' chains count


class FailureLedger:
    """Failed chains by cause, and the CA events they count against (thread-safe)."""

    def __init__(self, started: float, shards: int = 1) -> None:
        self.started = started  # epoch: second 0 of ``at_s``
        self._lock = threading.Lock()
        self.reshard(shards)
        self.events: list[dict[str, Any]] = []
        self._windows: list[_Window] = []
        self.stack_events: list[dict[str, Any]] = []
        self._stack_windows: list[_Window] = []
        self._recent: deque[list[Any]] = deque(maxlen=_KEEP_N)  # [end, started, group, label]
        self._counts = {"ca_answer": 0, "ca_event": 0, "stack_event": 0, "no_answer": 0,
                        "ours": 0}

    def reshard(self, shards: int) -> None:
        """The run spreads over *shards* embedded Pebbles (before any chain is observed)."""
        with self._lock:
            self.shards = max(shards, 1)
            #: epoch, per embedded Pebble: the latest POST it answered
            self.last_post_answer = dict.fromkeys(range(self.shards), self.started)
            #: per embedded Pebble: ends of requests that timed out after it
            self._timeouts: dict[int, list[float]] = {i: [] for i in range(self.shards)}

    def observe(self, chains: Iterable[ChainResult]) -> None:
        with self._lock:
            for c in chains:
                shard = shard_of(c["worker"], self.shards)
                timeouts = self._timeouts[shard]
                for r in c["requests"]:
                    end = r["started"] + r["took"]
                    last = self.last_post_answer[shard]
                    if r["status"] and r["method"] == "POST" and end > last:
                        self.last_post_answer[shard] = end
                        timeouts[:] = [t for t in timeouts if t > end]
                    elif r["error"] == "timeout" and end > last:
                        timeouts.append(end)
                if c["ok"] or c["outcome"] == "skipped":
                    continue
                group, label = failure_cause(c)
                entry = [c["started"] + c["took"], c["started"], group, label, shard]
                if self._match(entry) is None:
                    if group != "cancelled":
                        self._counts[group] += 1
                    self._recent.append(entry)  # it may still count against an event
            while self._recent and self._recent[0][0] < time.time() - _KEEP_S:
                self._recent.popleft()

    def _match(self, entry: list[Any]) -> int | None:
        """Count *entry* against the first event it belongs to; its index, or None."""
        end, started, group, label, shard = entry
        for i, w in enumerate(self._stack_windows):
            if end < w.since or (w.until is not None and started > w.until):
                continue
            ev = self.stack_events[i]
            ev["chains_failed"] += 1
            by = ev["failed_by_error"]
            by[label] = by.get(label, 0) + 1
            if group != "cancelled":
                self._counts["stack_event"] += 1
            entry[2] = "counted"
            return -1 - i
        for i, w in enumerate(self._windows):
            if w.shard != shard or end < w.since or (w.until is not None and end > w.until):
                continue
            if w.restart_at is None:
                hit = group in ("no_answer", "cancelled")
            else:
                hit = group == "ca_answer" and (started < w.restart_at or
                                                label == "accountDoesNotExist")
            if hit:
                ev = self.events[i]
                ev["chains_failed"] += 1
                by = ev["failed_by_error"]
                by[label] = by.get(label, 0) + 1
                if group != "cancelled":
                    self._counts["ca_event"] += 1
                entry[2] = "counted"
                return i
        return None

    def quiet(self, now: float, shard: int = 0) -> tuple[float, int]:
        """Seconds since embedded Pebble *shard* answered a POST, and requests that timed
        out since."""
        with self._lock:
            return now - self.last_post_answer[shard], len(self._timeouts[shard])

    def record(self, event: dict[str, Any], since: float | None = None,
               until: float | None = None, restart_at: float | None = None,
               shard: int = 0) -> int:
        """Add *event* (counting from *since*, epoch; None: it counts nothing) and count
        the failures already in that belong to it; its index."""
        event.setdefault("chains_failed", 0)
        event.setdefault("failed_by_error", {})
        with self._lock:
            if restart_at is not None and since is not None:
                for w in self._windows:  # an earlier restart's window ends at this one
                    if w.restart_at is not None and w.until is None and w.shard == shard:
                        w.until = since
            self.events.append(event)
            self._windows.append(_Window(since if since is not None else float("inf"),
                                         until, restart_at, shard))
            i = len(self.events) - 1
            self._rematch()
            return i

    def update(self, index: int, **fields: Any) -> None:
        """Set fields of the event at *index* (the dashboard may be reading it)."""
        with self._lock:
            self.events[index].update(fields)

    def close(self, index: int, until: float | None) -> None:
        """The event's window ends at *until* (epoch); failures after it are not its."""
        with self._lock:
            self._windows[index].until = until

    def answered_again(self, at: float, shard: int = 0) -> None:
        """Embedded Pebble *shard* answers again (restarted): POSTs are new from *at* on."""
        with self._lock:
            last = self.last_post_answer[shard] = max(self.last_post_answer[shard], at)
            self._timeouts[shard] = [t for t in self._timeouts[shard] if t > last]

    def _rematch(self) -> None:
        for entry in self._recent:
            group = entry[2]
            if group != "counted" and self._match(entry) is not None and group != "cancelled":
                self._counts[group] -= 1

    # -- stack events ----------------------------------------------------------------------

    def record_stack(self, event: dict[str, Any], since: float | None) -> int:
        """Add a stack event (counting failures from *since*, epoch, on; None: it counts
        nothing, e.g. a Pebble's, counted by its CA event) and count the failures already
        in that belong to it; its index in ``stack_events``."""
        event.setdefault("chains_failed", 0)
        event.setdefault("failed_by_error", {})
        with self._lock:
            self.stack_events.append(event)
            self._stack_windows.append(_Window(since if since is not None else float("inf"),
                                               None))
            self._rematch()
            return len(self.stack_events) - 1

    def close_stack(self, index: int, until: float | None) -> None:
        """The part is back from *until* (epoch) on: chains started after it are not the
        event's; None: it stays down."""
        with self._lock:
            self._stack_windows[index].until = until

    def update_stack(self, index: int, **fields: Any) -> None:
        with self._lock:
            self.stack_events[index].update(fields)

    def stack_snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**e, "failed_by_error": dict(e["failed_by_error"])}
                    for e in self.stack_events]

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**e, "failed_by_error": dict(e["failed_by_error"])} for e in self.events]

    def failed_by_cause(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
