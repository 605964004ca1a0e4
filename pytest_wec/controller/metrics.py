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
``wec_connections_opened_total``             connections the requests opened, and a
``wec_connection_open_seconds``              histogram of how long opening one took
``wec_in_flight``, ``wec_target``            chains in flight; the target (in flight, or
                                             starts per second in the open model)
``wec_dropped_starts_total``                 starts the open model could not make in time
``wec_certificates_issued_total``            certificates the chains were issued
``wec_results_lost_total``                   chain results lost between workers and here
``wec_ca_events_total{kind}``                CA events (deadlock, stall, stopped, restart)
``wec_generator_cpu_seconds_total``          the workers' CPU, and their
``wec_generator_max_cpu_percent``            highest CPU share seen
``wec_schedule_lag_seconds{quantile}``       started minus scheduled, p50 and p99

The figures are :mod:`~pytest_wec.controller.samples`' snapshot, which the OTLP export
(:mod:`~pytest_wec.controller.otlp`) reads too; its histogram buckets are counted from the
HDR histograms (3 significant digits): a value is in the bucket its HDR sub-bucket's low end
falls in, within 0.1% of its bound. Bound to a loopback address the server answers only
requests addressed to a loopback name; elsewhere it needs ``Authorization: Bearer TOKEN``
(the token printed at start), as the dashboard does.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pytest_wec.controller import samples
from pytest_wec.controller.dashboard import is_loopback
from pytest_wec.controller.histogram import Histogram
from pytest_wec.controller.samples import BUCKETS_S

__all__ = ["BUCKETS_S", "MetricsServer", "available", "families"]

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the ``metrics`` extra (prometheus_client) is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _cumulative(point: samples.Point) -> list[tuple[str, float]]:
    """A histogram point's buckets as Prometheus has them: cumulative, then ``+Inf``."""
    out, total = [], 0
    for bound, n in zip((*(f"{b:g}" for b in BUCKETS_S), "+Inf"), point.buckets, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    """Cumulative counts of *hist* at :data:`BUCKETS_S`, then ``+Inf``."""
    return _cumulative(samples.histogram_point((), hist))


def families(session: Any, run_id: str) -> list[Any]:
    """The metric families of ``session`` (a :class:`~pytest_wec.controller.collector.
    LoadSession`) for ``prometheus_client``, every one labelled with ``run``."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
             "histogram": HistogramMetricFamily}
    out = []
    for fam in samples.read(session):
        prom = kinds[fam.kind](fam.name, fam.doc, labels=["run", *fam.labels])
        for p in fam.points:
            if fam.kind == "histogram":
                prom.add_metric([run_id, *p.labels], _cumulative(p), p.sum)
            else:
                prom.add_metric([run_id, *p.labels], p.value)
        out.append(prom)
    return out


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
