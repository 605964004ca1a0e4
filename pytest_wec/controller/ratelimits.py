"""Rate limits in a run's results (controller): refusals, the limits named, the waits.

:class:`RateLimitBook` is kept by the :class:`~pytest_wec.controller.aggregator.Aggregator`
and fed from every ChainResult:

- each request refused over a rate limit (a ``rateLimited`` problem or HTTP 429, RFC 8555
  §6.6), by endpoint and by the limit its detail names (``RequestResult["limit"]``;
  ``(unnamed)`` when it names none);
- each chain that ended on such a refusal, by chain (in the open model, the starts the CA
  refused);
- the client's Retry-After sleeps between attempts (``ChainResult["retry_waits"]``), by
  HTTP status: time in no request's latency;
- the virtual users' waits after a refusal (``ChainResult["rate_limit_wait"]``, closed
  model: :mod:`pytest_wec.worker.pacing`).

:func:`add_rate_limits` puts them in summary.json (``rate_limits``, ``totals.rate_limited``,
each endpoint's ``rate_limited``); :func:`format_rate_limit_lines` is the terminal's line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_wec.acme._ratelimits import is_rate_limited
from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.worker.pacing import refused

__all__ = ["UNNAMED", "RateLimitBook", "add_rate_limits", "format_rate_limit_lines"]

#: the limit of a refusal whose detail names none
UNNAMED = "(unnamed)"
_MAX_KEYS = 200  # limits (or endpoints, chains) kept by name; the rest share UNNAMED


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    if key not in counts and len(counts) >= _MAX_KEYS:
        key = UNNAMED
    counts[key] = counts.get(key, 0) + n


class RateLimitBook:
    """Refusals and waits of a run (module doc); merges and travels as plain data."""

    def __init__(self) -> None:
        self.refused: dict[str, dict[str, int]] = {}  # endpoint -> limit -> requests
        self.chains_refused: dict[str, int] = {}  # chain -> chains ended on a refusal
        self.retry_waits: dict[str, list[float]] = {}  # HTTP status -> [count, seconds]
        self.user_waits: list[float] = [0, 0.0]  # [count, seconds]

    # -- recording ---------------------------------------------------------------------
    def add_request(self, r: RequestResult) -> None:
        """A failed request: counted when a rate limit refused it."""
        if is_rate_limited(r["problem"], r["status"]):
            by = self.refused.get(r["endpoint"])
            if by is None:
                by = self.refused[r["endpoint"]] = {}
            _bump(by, str(r.get("limit") or UNNAMED))

    def add_chain(self, chain: str, c: ChainResult) -> None:
        """A chain's refusal, retry sleeps and its virtual user's wait."""
        if refused(c):
            _bump(self.chains_refused, chain)
        for wait in c.get("retry_waits") or ():
            status, seconds = str(wait[1]), float(wait[2])  # type: ignore[arg-type]
            entry = self.retry_waits.setdefault(status, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds
        paced = c.get("rate_limit_wait")
        if paced:
            self.user_waits[0] += 1
            self.user_waits[1] += float(paced)

    # -- reading -----------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Requests refused over a rate limit."""
        return sum(sum(by.values()) for by in self.refused.values())

    def table(self) -> dict[str, Any]:
        """summary.json's ``rate_limits``."""
        by_limit: dict[str, int] = {}
        for by in self.refused.values():
            for limit, n in by.items():
                by_limit[limit] = by_limit.get(limit, 0) + n
        waits = {s: {"count": int(n), "seconds": round(t, 3)}
                 for s, (n, t) in sorted(self.retry_waits.items())}
        limited = waits.get("429", {"count": 0, "seconds": 0.0})
        return {
            "refused": self.total,
            "by_limit": dict(sorted(by_limit.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_endpoint": {ep: {"refused": sum(by.values()), "by_limit": dict(sorted(by.items()))}
                            for ep, by in sorted(self.refused.items())},
            "chains_refused": dict(sorted(self.chains_refused.items())),
            "retry_waits": {"count": limited["count"], "seconds": limited["seconds"],
                            "by_status": waits},
            "user_waits": {"count": int(self.user_waits[0]),
                           "seconds": round(self.user_waits[1], 3)},
        }

    # -- merging and plain data ----------------------------------------------------------
    def merge(self, other: RateLimitBook) -> None:
        for ep, by in other.refused.items():
            mine = self.refused.setdefault(ep, {})
            for limit, n in by.items():
                _bump(mine, limit, n)
        for chain, n in other.chains_refused.items():
            _bump(self.chains_refused, chain, n)
        for status, (count, seconds) in other.retry_waits.items():
            entry = self.retry_waits.setdefault(status, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
        self.user_waits[0] += other.user_waits[0]
        self.user_waits[1] += other.user_waits[1]

    def to_plain(self) -> dict[str, Any]:
        return {"refused": {ep: dict(by) for ep, by in self.refused.items()},
                "chains_refused": dict(self.chains_refused),
                "retry_waits": {s: list(v) for s, v in self.retry_waits.items()},
                "user_waits": list(self.user_waits)}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any] | None) -> RateLimitBook:
        """From :meth:`to_plain`; None (written before rate limits were counted): empty."""
        book = cls()
        if not data:
            return book
        book.refused = {str(ep): {str(k): int(n) for k, n in by.items()}
                        for ep, by in (data.get("refused") or {}).items()}
        book.chains_refused = {str(k): int(n)
                               for k, n in (data.get("chains_refused") or {}).items()}
        book.retry_waits = {str(s): [int(v[0]), float(v[1])]
                            for s, v in (data.get("retry_waits") or {}).items()}
        waits = data.get("user_waits") or [0, 0.0]
        book.user_waits = [float(int(waits[0])), float(waits[1])]
        return book


def add_rate_limits(tables: dict[str, Any], book: RateLimitBook) -> None:
    """Put *book* in summary tables (:func:`~pytest_wec.controller.outputs.build_tables`):
    ``rate_limits``, ``totals.rate_limited`` and each endpoint's ``rate_limited``."""
    tables["rate_limits"] = book.table()
    tables["totals"]["rate_limited"] = book.total
    for ep, entry in tables["endpoints"].items():
        entry["rate_limited"] = sum(book.refused.get(ep, {}).values())


def format_rate_limit_lines(summary: Mapping[str, Any]) -> list[str]:
    """The terminal's lines on rate limits (none when nothing was refused or waited)."""
    rl = summary.get("rate_limits") or {}
    retry, users = rl.get("retry_waits") or {}, rl.get("user_waits") or {}
    if not (rl.get("refused") or retry.get("count") or users.get("count")):
        return []
    parts = []
    if rl.get("refused"):
        eps = "; ".join(
            f"{ep} {e['refused']}: " + ", ".join(f"{k} {n}" for k, n in e["by_limit"].items())
            for ep, e in (rl.get("by_endpoint") or {}).items())
        parts.append(f"{rl['refused']} requests refused ({eps})")
    chains = rl.get("chains_refused") or {}
    if chains:
        parts.append(f"{sum(chains.values())} chains ended refused ("
                     + ", ".join(f"{c} {n}" for c, n in chains.items()) + ")")
    if retry.get("count"):
        parts.append(f"the client slept {retry['seconds']:.1f}s on Retry-After in "
                     f"{retry['count']} retries (no request's latency holds it)")
    if users.get("count"):
        parts.append(f"virtual users waited {users['count']} times, "
                     f"{users['seconds']:.1f}s in all")
    return ["", "rate limits: " + "; ".join(parts)]
