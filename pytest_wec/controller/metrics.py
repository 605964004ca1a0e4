"""Live metrics for Prometheus (controller): ``--wec-metrics [HOST:]PORT`` serves
``/metrics`` in Prometheus' text format while a load run goes.

The families are read from the run's aggregator at each scrape (``prometheus_client``'s
custom collector; the optional extra ``metrics``), every one labelled with the run's id
(``run``):

``wec_chains_total{chain,outcome}``          chains ended: ok, failed, cancelled, skipped
``wec_requests_total{endpoint}``             HTTP exchanges with the CA, and
``wec_requests_failed_total{endpoint}``      those that failed
``wec_errors_total{chain,endpoint,type}``    failures by type: the ACME problem type
                                             (``badNonce``, ``rateLimited``...) or the error
                                             class (``timeout``, ``connect``, ``status``...)
``wec_chain_latency_seconds{chain}``         histograms: a chain from its start to its end,
``wec_request_latency_seconds{endpoint}``    a request from its send to its answer
``wec_in_flight``, ``wec_target``            chains in flight; the target (in flight, or
                                             starts per second in the open model)
``wec_dropped_starts_total``                 starts the open model could not make in time
``wec_certificates_issued_total``            certificates the chains were issued
``wec_results_lost_total``                   chain results lost between workers and here
``wec_ca_events_total{kind}``                CA events (deadlock, stall, stopped, restart)
``wec_generator_cpu_seconds_total``          the workers' CPU, and their
``wec_generator_max_cpu_percent``            highest CPU share seen
``wec_schedule_lag_seconds{quantile}``       started minus scheduled, p50 and p99

Histogram buckets are counted from the HDR histograms (3 significant digits): a value is in
the bucket its HDR sub-bucket's low end falls in, within 0.1% of its bound. Bound to a
loopback address the server answers only requests addressed to a loopback name; elsewhere it
needs ``Authorization: Bearer TOKEN`` (the token printed at start), as the dashboard does.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pytest_wec.controller.dashboard import is_loopback
from pytest_wec.controller.histogram import Histogram, index_range

__all__ = ["BUCKETS_S", "MetricsServer", "available", "families"]

log = logging.getLogger(__name__)

#: histogram bucket bounds, seconds
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
             30.0, 60.0)


def available() -> bool:
    """Whether the ``metrics`` extra (prometheus_client) is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    """Cumulative counts at :data:`BUCKETS_S`, then ``+Inf``."""
    bounds_us = [b * 1e6 for b in BUCKETS_S]
    counts = [0] * (len(bounds_us) + 1)
    for index, n in hist.counts.items():
        low = index_range(index)[0]
        k = next((i for i, b in enumerate(bounds_us) if low <= b), len(bounds_us))
        counts[k] += n
    out, total = [], 0
    for bound, n in zip((*(f"{b:g}" for b in BUCKETS_S), "+Inf"), counts, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


def families(session: Any, run_id: str) -> list[Any]:
    """The metric families of ``session`` (a :class:`~pytest_wec.controller.collector.
    LoadSession`), read under its lock."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    def read(agg: Any, watch: Any) -> list[Any]:
        chains = CounterMetricFamily("wec_chains", "chains ended, by outcome",
                                     labels=["run", "chain", "outcome"])
        lat = HistogramMetricFamily("wec_chain_latency_seconds",
                                    "a chain from its start to its end", labels=["run", "chain"])
        for name, cs in sorted(agg.chains.items()):
            for outcome in ("ok", "failed", "cancelled", "skipped"):
                chains.add_metric([run_id, name, outcome], getattr(cs, outcome))
            lat.add_metric([run_id, name], _buckets(cs.latency), cs.latency.sum / 1e6)
        reqs = CounterMetricFamily("wec_requests", "HTTP exchanges with the CA",
                                   labels=["run", "endpoint"])
        failed = CounterMetricFamily("wec_requests_failed", "HTTP exchanges that failed",
                                     labels=["run", "endpoint"])
        rlat = HistogramMetricFamily("wec_request_latency_seconds",
                                     "a request from its send to its answer",
                                     labels=["run", "endpoint"])
        for ep, es in sorted(agg.endpoints.items()):
            reqs.add_metric([run_id, ep], es.count)
            failed.add_metric([run_id, ep], es.failed)
            rlat.add_metric([run_id, ep], _buckets(es.latency), es.latency.sum / 1e6)
        errors = CounterMetricFamily("wec_errors", "failures by problem type or error class",
                                     labels=["run", "chain", "endpoint", "type"])
        for (chain, endpoint, kind), (count, _example) in sorted(
                agg.errors.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            errors.add_metric([run_id, chain, endpoint or "", kind.rsplit(":", 1)[-1]], count)
        gen = agg.generator_stats()
        lag = agg.schedule_lag.summary_ms((50, 99))
        lag_f = GaugeMetricFamily("wec_schedule_lag_seconds", "started minus scheduled",
                                  labels=["run", "quantile"])
        lag_f.add_metric([run_id, "0.5"], lag["p50"] / 1e3)
        lag_f.add_metric([run_id, "0.99"], lag["p99"] / 1e3)

        def one(kind: Callable[..., Any], name: str, doc: str, value: float) -> Any:
            fam = kind(name, doc, labels=["run"])
            fam.add_metric([run_id], value)
            return fam

        return [chains, lat, reqs, failed, rlat, errors, lag_f,
                one(GaugeMetricFamily, "wec_in_flight", "chains in flight", watch.in_flight()),
                one(CounterMetricFamily, "wec_dropped_starts", "starts the open model "
                    "could not make in time", agg.dropped_starts),
                one(CounterMetricFamily, "wec_certificates_issued", "certificates issued",
                    agg.certificates),
                one(CounterMetricFamily, "wec_results_lost", "chain results lost between "
                    "workers and the controller", agg.dropped_results),
                one(CounterMetricFamily, "wec_generator_cpu_seconds", "the workers' CPU",
                    gen["cpu_s"]),
                one(GaugeMetricFamily, "wec_generator_max_cpu_percent", "the workers' "
                    "highest CPU share", gen["max_cpu_pct"])]

    out = session.read(read)
    target = GaugeMetricFamily("wec_target", "the target: chains in flight, or starts per "
                               "second in the open model", labels=["run"])
    target.add_metric([run_id], float(session.target_now()))
    events = CounterMetricFamily("wec_ca_events", "CA events", labels=["run", "kind"])
    by: dict[str, int] = {}
    for ev in session.ledger.snapshot():
        by[str(ev.get("kind"))] = by.get(str(ev.get("kind")), 0) + 1
    for kind, n in sorted(by.items()):
        events.add_metric([run_id, kind], n)
    return [*out, target, events]


class _Collector:
    def __init__(self, session: Any, run_id: str) -> None:
        self.session, self.run_id = session, run_id

    def collect(self) -> Iterator[Any]:
        yield from families(self.session, self.run_id)


class MetricsServer:
    """``/metrics`` on ``host:port`` (0: a free port) for one load run."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.host, self.port, self.token = host, port, token
        self.registry = CollectorRegistry(auto_describe=False)
        self._loopback = is_loopback(host)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def attach(self, session: Any, run_id: str) -> None:
        """The run whose figures ``/metrics`` shows from now on."""
        self.registry.register(_Collector(session, run_id))

    def start(self) -> str:
        """Binds (OSError when it cannot) and serves on a thread; the URL."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
                if owner._loopback and not is_loopback(host):
                    return self._send(403, b"answers only at a loopback address\n")
                if owner.token is not None:
                    given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                    if not hmac.compare_digest(given.strip().encode(), owner.token.encode()):
                        return self._send(401, b"missing or wrong token "
                                               b"(Authorization: Bearer TOKEN)\n")
                if self.path.split("?", 1)[0] != "/metrics":
                    return self._send(404, b"see /metrics\n")
                try:
                    body = generate_latest(owner.registry)
                except Exception:
                    log.exception("reading the metrics failed")
                    return self._send(500, b"reading the metrics failed; see the log\n")
                return self._send(200, body, CONTENT_TYPE_LATEST)

            def _send(self, status: int, body: bytes,
                      ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="wec-metrics",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/metrics"
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
