"""Controller-side merge of results (runs in the controller only).

Every ``ChainResult`` that reaches the controller goes through :meth:`Aggregator.add`:
counts and latency histograms per chain, per ACME endpoint and per second of the run (overall
and per chain and per endpoint, for the per-second percentile series); errors
grouped by (chain, endpoint, type) with one example each; certificates issued; starts the
generator dropped; the generator's own lag and CPU from worker status records.

Latencies go into sparse HDR histograms (:mod:`pytest_wec.controller.histogram`, re-exported here)
that merge losslessly. Percentiles are never averaged: merged aggregators are read from
merged histograms. The records themselves (per chain, per endpoint, per second) are in
:mod:`pytest_wec.controller.stats`.

The per-second series stay small over hours (:mod:`pytest_wec.controller.buckets`): the
last 15 minutes by the second, older seconds merged into coarser buckets as they age (10 s,
10 min, ...), at most about 1,750 buckets a series; each bucket starts at a second of the
run and has a width (:meth:`Buckets.spans`). At most ``MAX_SERIES`` chains and as many
endpoints get a series of their own; the rest share one named ``OTHER``.

Each chain keeps two latencies: from its real start (``took``) and from its intended start
(``started + took - scheduled``), the open-model view that a slow CA cannot hide by slowing
the generator down (coordinated omission).

The ACME phases of each chain (validation, issuance, ...) and the RFC deviations its checks
saw ride on its ChainResult; :attr:`Aggregator.phases` (:mod:`pytest_wec.controller.phases`)
keeps them per chain. :attr:`Aggregator.connects` is the time the requests that opened their
connection spent opening it. Refusals over rate limits and the waits they caused are
:attr:`Aggregator.rate_limits` (:mod:`pytest_wec.controller.ratelimits`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_wec.controller.buckets import LAYOUT, Buckets, Horizon, Layout, Series, series_rows
from pytest_wec.controller.health import HotTime
from pytest_wec.controller.histogram import HIGHEST_US, Histogram, index_range
from pytest_wec.controller.phases import PhaseBook
from pytest_wec.controller.ratelimits import RateLimitBook
from pytest_wec.controller.stats import ChainStats, EndpointStats, NameSecondStats, SecondStats

if TYPE_CHECKING:
    from pytest_wec.wire.results import ChainResult, RequestResult

__all__ = ["HIGHEST_US", "MAX_SERIES", "OTHER", "Aggregator", "Histogram", "index_range",
           "short_error_type"]

log = logging.getLogger(__name__)

_MAX_ERROR_KEYS = 1000
_TYPE_LEN = 120
_EXAMPLE_LEN = 500
_ACME_ERROR = "urn:ietf:params:acme:error:"
#: chains (and, apart, endpoints) with a per-second series of their own; the rest share OTHER
MAX_SERIES = 100
OTHER = "(other)"


class Aggregator:
    """Merges ChainResults; ``started`` (epoch s) is second 0 of the per-second series,
    which ``layout`` compacts as they age (``buckets.UNCOMPACTED``: never).

    Not thread-safe: add and read from one thread (or hold one lock for both).
    """

    def __init__(self, started: float, layout: Layout = LAYOUT) -> None:
        self.started = started
        self.chains: dict[str, ChainStats] = {}
        self.endpoints: dict[str, EndpointStats] = {}
        #: the latest second a result ended in, and the series it compacts
        self.horizon = Horizon(layout)
        self.seconds: Buckets[SecondStats] = Buckets(SecondStats, self.horizon)
        self.chain_seconds: Series = {}
        self.endpoint_seconds: Series = {}
        self.errors: dict[tuple[str, str | None, str], list[Any]] = {}  # key -> [count, example]
        self.certificates = 0
        self.dropped_starts = 0
        self.lost_chains = 0  # lost between worker and controller (not counted in workers)
        self.schedule_lag = Histogram()  # started - scheduled of every chain
        #: open model: the part of each start's lag the generator's own work explains, and
        #: per worker the time its CPU was over the limit (pytest_wec.controller.health)
        self.own_lag = Histogram()
        #: the time each request that opened its connection spent opening it (TCP, TLS)
        self.connects = Histogram()
        self.cpu_hot = HotTime()
        self.starts_late = 0  # chains started after ``until`` (outside the time under load)
        self.phases = PhaseBook()  # ACME phases per chain, RFC deviations by kind
        self.rate_limits = RateLimitBook()  # refusals over rate limits, and the waits
        self.workers: dict[str, dict[str, Any]] = {}  # "worker/session" -> latest status
        self.max_cpu_pct = 0.0
        self.max_loop_lag_ms = 0.0
        self.first_start: float | None = None
        self.last_end: float | None = None
        #: epoch seconds: the end of the time under load; what ends later counts as ``late``
        #: (rates are over the time under load, of what ended in it)
        self.until: float | None = None

    # -- recording ---------------------------------------------------------------------------

    def add(self, c: ChainResult) -> None:
        name = c["chain"]
        cs = self.chains.get(name)
        if cs is None:
            cs = self.chains[name] = ChainStats()
        started, took = c["started"], c["took"]
        end = started + took
        if self.first_start is None or started < self.first_start:
            self.first_start = started
        if self.last_end is None or end > self.last_end:
            self.last_end = end
        self.certificates += c["certificates"]
        lag_us = int((started - c["scheduled"]) * 1e6 + 0.5)
        if lag_us < 0:
            lag_us = 0
        self.schedule_lag.record(lag_us)
        own = c.get("lag_own")
        if own is not None:
            self.own_lag.record(max(int(own * 1e6 + 0.5), 0))
        if self.until is not None and started > self.until:
            self.starts_late += 1
        outcome = c["outcome"]
        if outcome == "cancelled":
            cs.cancelled += 1
        elif outcome == "skipped":
            cs.skipped += 1
        else:
            us = int(took * 1e6 + 0.5)
            cs.count += 1
            if self.until is not None and end > self.until:
                cs.late += 1
            cs.latency.record(us)
            cs.from_scheduled.record(us + lag_us)
            rel = end - self.started
            s = int(rel) if rel > 0 else 0
            sec = self.seconds.live.get(s)
            if sec is None:
                sec = self.seconds.second(s)
            sec.chains += 1
            sec.chain_latency.record(us)
            by_s = self.chain_seconds.get(name)
            if by_s is None:
                by_s = self._series(self.chain_seconds, name)
            ns = by_s.live.get(s)
            if ns is None:
                ns = by_s.second(s)
            ns.count += 1
            ns.latency.record(us)
            if c["ok"] and outcome == "ok":
                cs.ok += 1
                sec.ok += 1
            else:
                cs.failed += 1
                sec.failed += 1
                ns.failed += 1
                self._chain_error(name, c["error"])
        if c["requests"]:
            self._add_requests(name, c["requests"])
        if not c["ok"] or "retry_waits" in c:
            self.rate_limits.add_chain(name, c)
        phases, deviations = c.get("phases"), c.get("deviations")
        if phases or deviations:
            self.phases.add(name, phases, deviations)

    def _add_requests(self, name: str, requests: list[RequestResult]) -> None:
        endpoints, by_ep, seconds = self.endpoints, self.endpoint_seconds, self.seconds
        connects = self.connects
        base = self.started
        until = self.until
        last_s = -1
        sec = None
        for r in requests:
            ep = r["endpoint"]
            es = endpoints.get(ep)
            if es is None:
                es = endpoints[ep] = EndpointStats()
            took = r["took"]
            us = int(took * 1e6 + 0.5)
            es.count += 1
            es.latency.record(us)
            if until is not None and r["started"] + took > until:
                es.late += 1
            rel = r["started"] + took - base
            s = int(rel) if rel > 0 else 0
            if s != last_s or sec is None:
                sec = seconds.live.get(s)
                if sec is None:
                    sec = seconds.second(s)
                last_s = s
            sec.requests += 1
            sec.request_latency.record(us)
            by_s = by_ep.get(ep)
            if by_s is None:
                by_s = self._series(by_ep, ep)
            ns = by_s.live.get(s)
            if ns is None:
                ns = by_s.second(s)
            ns.count += 1
            ns.latency.record(us)
            if r["ok"]:
                es.ok += 1
            else:
                es.failed += 1
                sec.requests_failed += 1
                ns.failed += 1
                self._request_error(name, r)
            opened = r.get("connect")
            if opened:
                connects.record(int(opened * 1e6 + 0.5))

    def _series(self, series: Series, name: str) -> Buckets[NameSecondStats]:
        """The series of ``name`` (``OTHER``'s once ``MAX_SERIES`` names have one)."""
        by_s = series.get(name)
        if by_s is None:
            if len(series) >= MAX_SERIES:
                name = OTHER
                by_s = series.get(name)
            if by_s is None:
                by_s = series[name] = Buckets(NameSecondStats, self.horizon)
        return by_s

    def _chain_error(self, chain: str, error: str | None) -> None:
        text = error or "unknown"
        if " :: " in text:
            kind = text.split(" :: ", 1)[0]
        else:
            kind = text.split(":", 1)[0] if ": " in text else text
        self._error(chain, None, kind, text)

    def _request_error(self, chain: str, r: RequestResult) -> None:
        kind = r["problem"] or r["error"] or f"http {r['status']}"
        example = f"{r['method']} {r['endpoint']} -> HTTP {r['status']}"
        if r["problem"]:
            example += f" {r['problem']}"
        if r["error"]:
            example += f" ({r['error']})"
        if r.get("limit"):
            example += f" [{r.get('limit')}]"
        self.rate_limits.add_request(r)
        self._error(chain, r["endpoint"], kind, example)

    def _error(self, chain: str, endpoint: str | None, kind: str, example: str) -> None:
        key = (chain, endpoint, kind[:_TYPE_LEN])
        entry = self.errors.get(key)
        if entry is None:
            if len(self.errors) >= _MAX_ERROR_KEYS:
                key = (chain, endpoint, "other")
                entry = self.errors.get(key)
            if entry is None:
                entry = self.errors[key] = [0, example[:_EXAMPLE_LEN]]
        entry[0] += 1

    def add_dropped(self, n: int) -> None:
        """Starts the generator could not make on time (open model) and skipped."""
        self.dropped_starts += n

    def add_lost(self, n: int) -> None:
        """Chains known to be lost between a worker and the controller."""
        self.lost_chains += n

    def add_status(self, status: Mapping[str, Any]) -> None:
        """A worker status or end record (``stream.WorkerStatus``)."""
        key = f"{status['worker']}/{status.get('session', '')}"
        prev = self.workers.get(key)
        if prev is None or float(status.get("t", 0)) >= float(prev.get("t", 0)):
            before = int(prev.get("dropped_starts", 0)) if prev else 0
            self.dropped_starts += max(int(status.get("dropped_starts", 0)) - before, 0)
            self.workers[key] = dict(status)
        self.max_cpu_pct = max(self.max_cpu_pct, float(status.get("cpu_pct", 0.0)))
        self.max_loop_lag_ms = max(self.max_loop_lag_ms, float(status.get("loop_lag_ms", 0.0)))
        self.cpu_hot.status(status)

    # -- reading -----------------------------------------------------------------------------

    @property
    def dropped_results(self) -> int:
        """Chains workers dropped (buffer full while Redis was away) plus chains lost on the way."""
        sinks = sum(int(w.get("dropped", 0)) for w in self.workers.values())
        return sinks + self.lost_chains

    def generator_stats(self) -> dict[str, Any]:
        lag = self.schedule_lag.summary_ms((50, 99))
        own = self.own_lag.summary_ms((50, 99))
        extra = {"own_schedule_lag_ms": {"p50": own["p50"], "p99": own["p99"],
                                         "max": own["max"]}} if self.own_lag.total else {}
        return {**extra,
            "cpu_s": round(sum(float(w.get("cpu_s", 0.0)) for w in self.workers.values()), 3),
            "max_cpu_pct": round(self.max_cpu_pct, 1),
            "schedule_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
            "max_loop_lag_ms": round(self.max_loop_lag_ms, 3),
            "workers": len({w.get("worker") for w in self.workers.values()}),
            "io": sorted({str(w["io"]) for w in self.workers.values() if w.get("io")}),
        }

    def window(self, now: float, seconds: int = 10) -> tuple[int, Histogram]:
        """Chains ended in the last ``seconds`` whole seconds before ``now`` and their latency
        (of the buckets that start in them, when ``seconds`` reaches compacted ones)."""
        last = int(now - self.started) - 1
        count, hist = 0, Histogram()
        for _, _, sec in self.seconds.spans(max(last - seconds + 1, 0), last + 1):
            count += sec.chains
            hist.add(sec.chain_latency)
        return count, hist

    # -- merging and plain data --------------------------------------------------------------

    def merge(self, other: Aggregator) -> None:
        """Adds ``other`` in; its seconds shift by the (rounded) difference of the starts.

        Its buckets go to the bucket here that holds their first second (the horizon first
        moves to ``other``'s, so that one is at least as wide): exact when the shift is a
        multiple of their width (the same start: 0), else off by less than a width."""
        for name, oc in other.chains.items():
            self.chains.setdefault(name, ChainStats()).merge(oc)
        for ep, oe in other.endpoints.items():
            self.endpoints.setdefault(ep, EndpointStats()).merge(oe)
        shift = round(other.started - self.started)
        if other.horizon.second >= 0:
            self.horizon.advance(max(other.horizon.second + shift, 0))
        for s, osec in other.seconds.items():
            self.seconds.second(max(s + shift, 0)).merge(osec)
        for mine, theirs in ((self.chain_seconds, other.chain_seconds),
                             (self.endpoint_seconds, other.endpoint_seconds)):
            for name, by_s in theirs.items():
                dst = self._series(mine, name)
                for s, ons in by_s.items():
                    dst.second(max(s + shift, 0)).merge(ons)
        self.horizon.settle()
        for key, (n, example) in other.errors.items():
            entry = self.errors.setdefault(key, [0, example])
            entry[0] += n
        self.certificates += other.certificates
        self.dropped_starts += other.dropped_starts
        self.lost_chains += other.lost_chains
        self.schedule_lag.add(other.schedule_lag)
        self.own_lag.add(other.own_lag)
        self.connects.add(other.connects)
        self.cpu_hot.merge(other.cpu_hot)
        self.starts_late += other.starts_late
        self.phases.merge(other.phases)
        self.rate_limits.merge(other.rate_limits)
        for status in other.workers.values():
            self.add_status(status)
        self.max_cpu_pct = max(self.max_cpu_pct, other.max_cpu_pct)
        self.max_loop_lag_ms = max(self.max_loop_lag_ms, other.max_loop_lag_ms)
        for attr, pick in (("first_start", min), ("last_end", max)):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, theirs if mine is None else mine if theirs is None
                    else pick(mine, theirs))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON and msgpack safe); :meth:`from_dict` rebuilds an equal aggregator."""
        return {
            "v": 1,
            "started": self.started,
            "chains": {n: c.to_row() for n, c in self.chains.items()},
            "endpoints": {n: e.to_row() for n, e in self.endpoints.items()},
            "seconds": [[s, *x.to_row()] for s, x in self.seconds.items()],  # bucket starts
            "horizon": self.horizon.second,  # gives each bucket its width
            "chain_seconds": series_rows(self.chain_seconds),
            "endpoint_seconds": series_rows(self.endpoint_seconds),
            "errors": sorted(([c, e, t, n, ex] for (c, e, t), (n, ex) in self.errors.items()),
                             key=lambda row: (row[0], row[1] or "", row[2])),
            "certificates": self.certificates,
            "dropped_starts": self.dropped_starts,
            "lost_chains": self.lost_chains,
            "schedule_lag": self.schedule_lag.to_plain(),
            "own_lag": self.own_lag.to_plain(),
            "connects": self.connects.to_plain(),
            "cpu_hot": self.cpu_hot.to_plain(),
            "starts_late": self.starts_late,
            "phases": self.phases.to_plain(),
            "rate_limits": self.rate_limits.to_plain(),
            "workers": list(self.workers.values()),
            "max_cpu_pct": self.max_cpu_pct,
            "max_loop_lag_ms": self.max_loop_lag_ms,
            "first_start": self.first_start,
            "last_end": self.last_end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], layout: Layout = LAYOUT) -> Aggregator:
        if d.get("v") != 1:
            raise ValueError(f"unknown aggregator encoding version {d.get('v')!r}")
        agg = cls(float(d["started"]), layout)
        for name, row in d["chains"].items():
            agg.chains[name] = cs = ChainStats()
            cs.load_row(row)
        for name, row in d["endpoints"].items():
            agg.endpoints[name] = es = EndpointStats()
            es.load_row(row)
        horizon = d.get("horizon")
        if horizon is None:  # written before compaction: every second, the latest its horizon
            named = [rows for attr in ("chain_seconds", "endpoint_seconds")
                     for rows in d.get(attr, {}).values()]
            horizon = max((r[0] for rows in (d["seconds"], *named) for r in rows), default=-1)
        agg.horizon.advance(int(horizon))
        for s, *row in d["seconds"]:
            sec = SecondStats()
            sec.load_row(row)
            agg.seconds.add(int(s), sec)
        for attr in ("chain_seconds", "endpoint_seconds"):
            series: Series = getattr(agg, attr)
            for name, rows in d.get(attr, {}).items():
                dst = agg._series(series, name)
                for s, *row in rows:
                    ns = NameSecondStats()
                    ns.load_row(row)
                    dst.add(int(s), ns)
        agg.horizon.settle()
        for chain, endpoint, kind, n, example in d["errors"]:
            agg.errors[(chain, endpoint, kind)] = [n, example]
        agg.certificates = int(d["certificates"])
        agg.dropped_starts = int(d["dropped_starts"])
        agg.lost_chains = int(d["lost_chains"])
        agg.schedule_lag = Histogram.from_plain(d["schedule_lag"])
        agg.phases = PhaseBook.from_plain(d.get("phases"))  # absent: written before phases
        agg.rate_limits = RateLimitBook.from_plain(d.get("rate_limits"))  # likewise
        if d.get("own_lag") is not None:  # absent: written before the generator's health
            agg.own_lag = Histogram.from_plain(d["own_lag"])
        if d.get("connects") is not None:  # absent: written before connections were timed
            agg.connects = Histogram.from_plain(d["connects"])
        agg.starts_late = int(d.get("starts_late") or 0)
        for status in d["workers"]:
            agg.add_status(status)
        if d.get("cpu_hot") is not None:
            agg.cpu_hot = HotTime.from_plain(d["cpu_hot"])
        agg.max_cpu_pct = float(d["max_cpu_pct"])
        agg.max_loop_lag_ms = float(d["max_loop_lag_ms"])
        agg.first_start, agg.last_end = d["first_start"], d["last_end"]
        return agg


def short_error_type(kind: str) -> str:
    """``urn:ietf:params:acme:error:badNonce`` -> ``badNonce``; other types unchanged."""
    return kind[len(_ACME_ERROR):] if kind.startswith(_ACME_ERROR) else kind
