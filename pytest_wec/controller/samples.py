"""The live figures of a load run as plain samples (controller), for the exporters.

:func:`read` takes one snapshot of a :class:`~pytest_wec.controller.collector.LoadSession`
(the aggregator and the watch under the run's lock, then the target and the ledger's CA
events) and returns it as :class:`Family` records that know nothing of any metrics library.
Both exporters turn the same records into their own format: Prometheus' ``/metrics``
(:mod:`~pytest_wec.controller.metrics`) and OTLP (:mod:`~pytest_wec.controller.otlp`), so
that the two always show the same figures under the same names.

A family's name is the Prometheus family's name: ``_total`` is what Prometheus' text format
appends to a counter's samples, not part of the name (``wec_chains`` gives
``wec_chains_total``). Labels do not include the run: each exporter adds it its own way.

Histograms are counted from the HDR histograms (3 significant digits) into the buckets of
:data:`BUCKETS_S`: a value is in the bucket its HDR sub-bucket's low end falls in, within
0.1% of its bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pytest_wec.controller.histogram import Histogram, index_range

__all__ = ["BUCKETS_S", "Family", "Point", "bucket_counts", "histogram_point", "read"]

#: histogram bucket bounds, seconds (upper bounds, inclusive; a last bucket holds the rest)
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
             30.0, 60.0)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Point:
    """One labelled value of a family.

    A counter's or gauge's figure is ``value`` (an ``int`` where the figure is a count). A
    histogram's is ``buckets`` (the count in each bucket of :data:`BUCKETS_S`, then of the
    values above the last bound: not cumulative), ``count``, ``sum``, ``min`` and ``max``
    (seconds; ``min`` and ``max`` are 0 while ``count`` is 0)."""

    labels: tuple[str, ...]
    value: float = 0
    buckets: tuple[int, ...] = ()
    count: int = 0
    sum: float = 0.0
    min: float = 0.0
    max: float = 0.0


@dataclass(frozen=True)
class Family:
    """A metric: its name, kind, help text, UCUM unit (``s``, ``%``, or a count's annotation
    such as ``{chain}``; empty for a pure number), label names and points."""

    name: str
    kind: Kind
    doc: str
    unit: str
    labels: tuple[str, ...]
    points: tuple[Point, ...]


def bucket_counts(hist: Histogram) -> tuple[int, ...]:
    """The count of *hist* in each bucket of :data:`BUCKETS_S`, then above the last."""
    bounds_us = [b * 1e6 for b in BUCKETS_S]
    counts = [0] * (len(bounds_us) + 1)
    for index, n in hist.counts.items():
        low = index_range(index)[0]
        k = next((i for i, b in enumerate(bounds_us) if low <= b), len(bounds_us))
        counts[k] += n
    return tuple(counts)


def histogram_point(labels: tuple[str, ...], hist: Histogram) -> Point:
    """*hist* (microseconds) as a histogram's point in seconds."""
    empty = hist.total == 0
    return Point(labels, buckets=bucket_counts(hist), count=hist.total, sum=hist.sum / 1e6,
                 min=0.0 if empty else hist.min / 1e6, max=0.0 if empty else hist.max / 1e6)


def _one(name: str, kind: Kind, doc: str, unit: str, value: float) -> Family:
    return Family(name, kind, doc, unit, (), (Point((), value),))


def read(session: Any) -> list[Family]:
    """The families of ``session`` (a :class:`~pytest_wec.controller.collector.
    LoadSession`): the aggregator's and the watch's figures read under the run's lock, in
    the order ``/metrics`` shows them."""

    def under_lock(agg: Any, watch: Any) -> list[Family]:
        chains, lat = [], []
        for name, cs in sorted(agg.chains.items()):
            for outcome in ("ok", "failed", "cancelled", "skipped"):
                chains.append(Point((name, outcome), int(getattr(cs, outcome))))
            lat.append(histogram_point((name,), cs.latency))
        reqs, failed, rlat = [], [], []
        for ep, es in sorted(agg.endpoints.items()):
            reqs.append(Point((ep,), int(es.count)))
            failed.append(Point((ep,), int(es.failed)))
            rlat.append(histogram_point((ep,), es.latency))
        errors = [Point((chain, endpoint or "", kind.rsplit(":", 1)[-1]), int(count))
                  for (chain, endpoint, kind), (count, _example) in sorted(
                      agg.errors.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2]))]
        gen = agg.generator_stats()
        lag = agg.schedule_lag.summary_ms((50, 99))
        return [
            Family("wec_chains", "counter", "chains ended, by outcome", "{chain}",
                   ("chain", "outcome"), tuple(chains)),
            Family("wec_chain_latency_seconds", "histogram",
                   "a chain from its start to its end", "s", ("chain",), tuple(lat)),
            Family("wec_requests", "counter", "HTTP exchanges with the CA", "{request}",
                   ("endpoint",), tuple(reqs)),
            Family("wec_requests_failed", "counter", "HTTP exchanges that failed",
                   "{request}", ("endpoint",), tuple(failed)),
            Family("wec_request_latency_seconds", "histogram",
                   "a request from its send to its answer", "s", ("endpoint",), tuple(rlat)),
            Family("wec_connections_opened", "counter",
                   "connections the requests opened (TCP, and TLS for https)", "{connection}",
                   (), (Point((), int(agg.connects.total)),)),
            Family("wec_connection_open_seconds", "histogram",
                   "opening a connection, not in any request's latency", "s", (),
                   (histogram_point((), agg.connects),)),
            Family("wec_errors", "counter", "failures by problem type or error class",
                   "{error}", ("chain", "endpoint", "type"), tuple(errors)),
            Family("wec_schedule_lag_seconds", "gauge", "started minus scheduled", "s",
                   ("quantile",), (Point(("0.5",), lag["p50"] / 1e3),
                                   Point(("0.99",), lag["p99"] / 1e3))),
            _one("wec_in_flight", "gauge", "chains in flight", "{chain}",
                 int(watch.in_flight())),
            _one("wec_dropped_starts", "counter",
                 "starts the open model could not make in time", "{start}",
                 int(agg.dropped_starts)),
            _one("wec_certificates_issued", "counter", "certificates issued", "{certificate}",
                 int(agg.certificates)),
            _one("wec_results_lost", "counter",
                 "chain results lost between workers and the controller", "{result}",
                 int(agg.dropped_results)),
            _one("wec_generator_cpu_seconds", "counter", "the workers' CPU", "s",
                 float(gen["cpu_s"])),
            _one("wec_generator_max_cpu_percent", "gauge", "the workers' highest CPU share",
                 "%", float(gen["max_cpu_pct"])),
        ]

    out: list[Family] = session.read(under_lock)
    target = _one("wec_target", "gauge", "the target: chains in flight, or starts per second "
                  "in the open model", "", float(session.target_now()))
    by: dict[str, int] = {}
    for ev in session.ledger.snapshot():
        by[str(ev.get("kind"))] = by.get(str(ev.get("kind")), 0) + 1
    events = Family("wec_ca_events", "counter", "CA events", "{event}", ("kind",),
                    tuple(Point((kind,), n) for kind, n in sorted(by.items())))
    return [*out, target, events]
