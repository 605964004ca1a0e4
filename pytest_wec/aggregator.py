"""Controller-side merge of results (runs in the controller only).

Every ``ChainResult`` that reaches the controller goes through :meth:`Aggregator.add`:
counts and latency histograms per chain, per ACME endpoint and per second of the run; errors
grouped by (chain, endpoint, type) with one example each; certificates issued; starts the
generator dropped; the generator's own lag and CPU from worker status records.

Histograms use HdrHistogram's layout (microseconds, 1 us .. 1 hour, 3 significant digits)
kept sparse, as counts by HDR index, so that one histogram per second of a long run stays
small and recording costs a few integer operations. They encode to and decode from
HdrHistogram's base64 form (``hdrh``), merge losslessly, and answer percentiles exactly as
``HdrHistogram.get_value_at_percentile`` does. Percentiles are never averaged: merged
aggregators are read from merged histograms.

Each chain keeps two latencies: from its real start (``took``) and from its intended start
(``started + took - scheduled``), the open-model view that a slow CA cannot hide by slowing
the generator down (coordinated omission).
"""

from __future__ import annotations

import array
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

if TYPE_CHECKING:
    from pytest_wec.results import ChainResult, RequestResult

__all__ = ["HIGHEST_US", "Aggregator", "ChainStats", "EndpointStats", "Histogram", "SecondStats",
           "index_range", "short_error_type"]

log = logging.getLogger(__name__)

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
_SUB_BITS = 11  # log2 of the sub-bucket count (2048) that 3 significant figures need
_HALF_BITS = _SUB_BITS - 1
_HALF = 1 << _HALF_BITS
_MASK = (1 << _SUB_BITS) - 1
_MAX_ERROR_KEYS = 1000
_TYPE_LEN = 120
_EXAMPLE_LEN = 500
_ACME_ERROR = "urn:ietf:params:acme:error:"


def index_range(index: int) -> tuple[int, int]:
    """Lowest and highest value (us) counted at an HDR counts index."""
    bucket = (index >> _HALF_BITS) - 1
    sub = (index & (_HALF - 1)) + _HALF
    if bucket < 0:
        sub -= _HALF
        bucket = 0
    low = sub << bucket
    return low, low + (1 << bucket) - 1


class Histogram:
    """Sparse HDR histogram of microseconds; exact count, sum, min and max ride along."""

    __slots__ = ("counts", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.sum = 0
        self.min = HIGHEST_US
        self.max = 0

    def record(self, us: int) -> None:
        if us > HIGHEST_US:
            us = HIGHEST_US
        elif us < 0:
            us = 0
        b = (us | _MASK).bit_length() - _SUB_BITS
        i = (b << _HALF_BITS) + (us >> b)
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.total += 1
        self.sum += us
        if us > self.max:
            self.max = us
        if us < self.min:
            self.min = us

    def add(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        if other.total:
            self.total += other.total
            self.sum += other.sum
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.counts, self.total, self.sum, self.min, self.max) == (
            other.counts, other.total, other.sum, other.min, other.max)

    __hash__ = None  # type: ignore[assignment]

    def percentiles(self, ps: Sequence[float]) -> list[int]:
        """Values (us) at percentiles 0..100, as ``HdrHistogram.get_value_at_percentile``."""
        out = [0] * len(ps)
        if not self.total:
            return out
        items = sorted(self.counts.items())
        order = sorted(range(len(ps)), key=ps.__getitem__)
        pos, seen = 0, 0
        for k in order:
            p = min(ps[k], 100.0)
            target = max(int(p * self.total / 100 + 0.5), 1)
            while seen < target and pos < len(items):
                seen += items[pos][1]
                pos += 1
            low, high = index_range(items[max(pos - 1, 0)][0])
            out[k] = high if p else low
        return out

    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary_ms(self, ps: Iterable[float] = (50, 90, 95, 99, 99.9)) -> dict[str, float]:
        """min, mean, p.., max in milliseconds; percentiles clipped to the exact min/max."""
        plist = list(ps)
        if not self.total:
            return {"min": 0.0, "mean": 0.0, **{_pname(p): 0.0 for p in plist}, "max": 0.0}
        values = self.percentiles(plist)
        out = {"min": _ms(self.min), "mean": round(self.mean() / 1000, 3)}
        for p, v in zip(plist, values, strict=True):
            out[_pname(p)] = _ms(min(max(v, self.min), self.max))
        out["max"] = _ms(self.max)
        return out

    def to_hdr(self) -> HdrHistogram:
        hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        counts = hdr.counts
        for i, n in self.counts.items():
            counts[i] = n
        if self.counts:
            hdr.set_internal_tacking_values(min(self.counts), max(self.counts), self.total)
        return hdr

    @classmethod
    def from_hdr(cls, hdr: HdrHistogram) -> Histogram:
        """From an ``hdrh`` histogram; sum, min and max then have HDR precision."""
        h = cls()
        layout = (hdr.lowest_trackable_value, hdr.highest_trackable_value, hdr.significant_figures)
        if layout != (LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES):
            raise ValueError(f"histogram layout {layout} is not 1 us .. 1 h, 3 figures")
        for i, n in enumerate(array.array("Q", bytes(hdr.counts))):
            if not n:
                continue
            h.counts[i] = n
            low, high = index_range(i)
            h.total += n
            h.sum += n * ((low + high) // 2)
            h.min = min(h.min, low)
            h.max = max(h.max, high)
        return h

    def encode(self) -> str:
        """HdrHistogram's base64 (V2, compressed) form."""
        return str(self.to_hdr().encode().decode("ascii"))

    @classmethod
    def decode(cls, b64: str | bytes) -> Histogram:
        raw = b64.encode("ascii") if isinstance(b64, str) else b64
        return cls.from_hdr(HdrHistogram.decode(raw))

    def to_plain(self) -> dict[str, Any]:
        return {"hdr": self.encode(), "sum": self.sum, "min": self.min, "max": self.max}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls.decode(data["hdr"])
        if h.total:
            h.sum, h.min, h.max = int(data["sum"]), int(data["min"]), int(data["max"])
        return h


def _pname(p: float) -> str:
    return "p" + (str(int(p)) if float(p).is_integer() else str(p).replace(".", ""))


def _ms(us: int) -> float:
    return round(us / 1000, 3)


class _Stats:
    """Counters and histograms that merge field by field and travel as a plain list."""

    __slots__: tuple[str, ...] = ()

    def merge(self, other: _Stats) -> None:
        for name in self.__slots__:
            mine = getattr(self, name)
            if isinstance(mine, Histogram):
                mine.add(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))

    def to_row(self) -> list[Any]:
        values = (getattr(self, name) for name in self.__slots__)
        return [v.to_plain() if isinstance(v, Histogram) else v for v in values]

    def load_row(self, row: Sequence[Any]) -> None:
        for name, value in zip(self.__slots__, row, strict=True):
            hist = isinstance(getattr(self, name), Histogram)
            setattr(self, name, Histogram.from_plain(value) if hist else int(value))


class ChainStats(_Stats):
    __slots__ = ("cancelled", "count", "failed", "from_scheduled", "latency", "ok", "skipped")

    def __init__(self) -> None:
        self.count = self.ok = self.failed = self.cancelled = self.skipped = 0
        self.latency = Histogram()  # from the real start
        self.from_scheduled = Histogram()  # from the intended start


class EndpointStats(_Stats):
    __slots__ = ("count", "failed", "latency", "ok")

    def __init__(self) -> None:
        self.count = self.ok = self.failed = 0
        self.latency = Histogram()


class SecondStats(_Stats):
    """One second of the run, by completion time: chains and requests that ended in it."""

    __slots__ = ("chain_latency", "chains", "failed", "ok", "request_latency", "requests",
                 "requests_failed")

    def __init__(self) -> None:
        self.chains = self.ok = self.failed = self.requests = self.requests_failed = 0
        self.chain_latency = Histogram()
        self.request_latency = Histogram()


class Aggregator:
    """Merges ChainResults; ``started`` (epoch s) is second 0 of the per-second series.

    Not thread-safe: add and read from one thread (or hold one lock for both).
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.chains: dict[str, ChainStats] = {}
        self.endpoints: dict[str, EndpointStats] = {}
        self.seconds: dict[int, SecondStats] = {}
        self.errors: dict[tuple[str, str | None, str], list[Any]] = {}  # key -> [count, example]
        self.certificates = 0
        self.dropped_starts = 0
        self.lost_chains = 0  # lost between worker and controller (not counted in workers)
        self.schedule_lag = Histogram()  # started - scheduled of every chain
        self.workers: dict[str, dict[str, Any]] = {}  # "worker/session" -> latest status
        self.max_cpu_pct = 0.0
        self.max_loop_lag_ms = 0.0
        self.first_start: float | None = None
        self.last_end: float | None = None

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
        outcome = c["outcome"]
        if outcome == "cancelled":
            cs.cancelled += 1
        elif outcome == "skipped":
            cs.skipped += 1
        else:
            us = int(took * 1e6 + 0.5)
            cs.count += 1
            cs.latency.record(us)
            cs.from_scheduled.record(us + lag_us)
            rel = end - self.started
            sec = self._second(int(rel) if rel > 0 else 0)
            sec.chains += 1
            sec.chain_latency.record(us)
            if c["ok"] and outcome == "ok":
                cs.ok += 1
                sec.ok += 1
            else:
                cs.failed += 1
                sec.failed += 1
                self._chain_error(name, c["error"])
        if c["requests"]:
            self._add_requests(name, c["requests"])

    def _add_requests(self, name: str, requests: list[RequestResult]) -> None:
        endpoints = self.endpoints
        base = self.started
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
            rel = r["started"] + took - base
            s = int(rel) if rel > 0 else 0
            if s != last_s or sec is None:
                sec = self._second(s)
                last_s = s
            sec.requests += 1
            sec.request_latency.record(us)
            if r["ok"]:
                es.ok += 1
            else:
                es.failed += 1
                sec.requests_failed += 1
                self._request_error(name, r)

    def _second(self, s: int) -> SecondStats:
        sec = self.seconds.get(s)
        if sec is None:
            sec = self.seconds[s] = SecondStats()
        return sec

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

    # -- reading -----------------------------------------------------------------------------

    @property
    def dropped_results(self) -> int:
        """Chains workers dropped (buffer full while Redis was away) plus chains lost on the way."""
        sinks = sum(int(w.get("dropped", 0)) for w in self.workers.values())
        return sinks + self.lost_chains

    def generator_stats(self) -> dict[str, Any]:
        lag = self.schedule_lag.summary_ms((50, 99))
        return {
            "cpu_s": round(sum(float(w.get("cpu_s", 0.0)) for w in self.workers.values()), 3),
            "max_cpu_pct": round(self.max_cpu_pct, 1),
            "schedule_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
            "max_loop_lag_ms": round(self.max_loop_lag_ms, 3),
            "workers": len({w.get("worker") for w in self.workers.values()}),
        }

    def window(self, now: float, seconds: int = 10) -> tuple[int, Histogram]:
        """Chains ended in the last ``seconds`` whole seconds before ``now`` and their latency."""
        last = int(now - self.started) - 1
        count, hist = 0, Histogram()
        for s in range(max(last - seconds + 1, 0), last + 1):
            sec = self.seconds.get(s)
            if sec is not None:
                count += sec.chains
                hist.add(sec.chain_latency)
        return count, hist

    # -- merging and plain data --------------------------------------------------------------

    def merge(self, other: Aggregator) -> None:
        """Adds ``other`` in; its seconds shift by the (rounded) difference of the starts."""
        for name, oc in other.chains.items():
            self.chains.setdefault(name, ChainStats()).merge(oc)
        for ep, oe in other.endpoints.items():
            self.endpoints.setdefault(ep, EndpointStats()).merge(oe)
        shift = round(other.started - self.started)
        for s, osec in other.seconds.items():
            self._second(max(s + shift, 0)).merge(osec)
        for key, (n, example) in other.errors.items():
            entry = self.errors.setdefault(key, [0, example])
            entry[0] += n
        self.certificates += other.certificates
        self.dropped_starts += other.dropped_starts
        self.lost_chains += other.lost_chains
        self.schedule_lag.add(other.schedule_lag)
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
            "seconds": [[s, *x.to_row()] for s, x in sorted(self.seconds.items())],
            "errors": sorted(([c, e, t, n, ex] for (c, e, t), (n, ex) in self.errors.items()),
                             key=lambda row: (row[0], row[1] or "", row[2])),
            "certificates": self.certificates,
            "dropped_starts": self.dropped_starts,
            "lost_chains": self.lost_chains,
            "schedule_lag": self.schedule_lag.to_plain(),
            "workers": list(self.workers.values()),
            "max_cpu_pct": self.max_cpu_pct,
            "max_loop_lag_ms": self.max_loop_lag_ms,
            "first_start": self.first_start,
            "last_end": self.last_end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Aggregator:
        if d.get("v") != 1:
            raise ValueError(f"unknown aggregator encoding version {d.get('v')!r}")
        agg = cls(float(d["started"]))
        for name, row in d["chains"].items():
            agg.chains[name] = cs = ChainStats()
            cs.load_row(row)
        for name, row in d["endpoints"].items():
            agg.endpoints[name] = es = EndpointStats()
            es.load_row(row)
        for s, *row in d["seconds"]:
            agg.seconds[int(s)] = sec = SecondStats()
            sec.load_row(row)
        for chain, endpoint, kind, n, example in d["errors"]:
            agg.errors[(chain, endpoint, kind)] = [n, example]
        agg.certificates = int(d["certificates"])
        agg.dropped_starts = int(d["dropped_starts"])
        agg.lost_chains = int(d["lost_chains"])
        agg.schedule_lag = Histogram.from_plain(d["schedule_lag"])
        for status in d["workers"]:
            agg.add_status(status)
        agg.max_cpu_pct = float(d["max_cpu_pct"])
        agg.max_loop_lag_ms = float(d["max_loop_lag_ms"])
        agg.first_start, agg.last_end = d["first_start"], d["last_end"]
        return agg


def short_error_type(kind: str) -> str:
    """``urn:ietf:params:acme:error:badNonce`` -> ``badNonce``; other types unchanged."""
    return kind[len(_ACME_ERROR):] if kind.startswith(_ACME_ERROR) else kind
