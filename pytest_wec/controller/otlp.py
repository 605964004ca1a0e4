"""OpenTelemetry metrics over OTLP (controller): ``--wec-otlp URL`` pushes a load run's
figures to an OTLP/HTTP receiver (protobuf; an OpenTelemetry Collector's ``otlp`` receiver
listens on ``http://HOST:4318/v1/metrics``) every ``--wec-otlp-interval`` (5 s), and once
more when the run has ended, through the OpenTelemetry SDK's ``OTLPMetricExporter`` (the
optional extra ``otlp``). OTLP over gRPC is not offered.

What is sent is :func:`pytest_wec.controller.samples.read`'s snapshot, the one ``/metrics``
serves (:mod:`~pytest_wec.controller.metrics`), under the same names: ``wec_chains``,
``wec_request_latency_seconds``... (a counter's name without the ``_total`` that Prometheus'
text format appends, which a Collector's Prometheus exporters append again, so that the
series they make are the ones ``--wec-metrics`` serves and docs/grafana-wec.json reads).
Every data point carries the labels of its Prometheus family as attributes, ``run`` among
them; the resource says ``service.name=pytest-wec``, ``service.version``, and the run's id
as ``service.instance.id`` and ``wec.run.id`` (``OTEL_RESOURCE_ATTRIBUTES`` adds more).

Counters are cumulative monotonic sums and gauges are gauges, all from the time the
exporter was attached to the run. Latency is explicit-bucket histograms with the bounds of
:data:`~pytest_wec.controller.samples.BUCKETS_S` and the exact sum, min and max of the HDR
histograms, rather than gauges of percentiles: buckets add up across series, runs and
machines and a backend takes any quantile of the sum, where a percentile of percentiles
means nothing; and they are what the Prometheus histograms hold.

The SDK's ``PeriodicExportingMetricReader`` only reads what the SDK's own instruments
recorded, and the API has no asynchronous histogram to report an HDR histogram that
already holds every value with; so the snapshot is built into the SDK's data model
(``MetricsData``) here and a thread of ours does what that reader does: waits an interval,
exports, one export at a time, then a last one on :meth:`OtlpExporter.stop`. The
controller's results pipeline never waits on it: the thread takes the run's lock only for
the snapshot, as a scrape of ``/metrics`` does, and the network is its own business. A
collector that does not answer costs that thread its time-outs (5 s each) and the run one
warning, the first time; the run never fails for it, and the exporter's own log records,
several per failed export, go to this module's logger at debug level instead of the
terminal.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pytest_wec.controller import samples

__all__ = ["FLUSH_TIMEOUT", "OtlpExporter", "available", "metrics_data", "resource", "shown"]

log = logging.getLogger(__name__)

#: seconds an export may take (each periodic one, and the last one on stop)
FLUSH_TIMEOUT = 5.0

#: loggers of the SDK's exporter whose records are kept off the terminal
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                     "opentelemetry.exporter.otlp.common.http")


def available() -> bool:
    """Whether the ``otlp`` extra (the SDK and its OTLP/HTTP exporter) is installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http.metric_exporter
        import opentelemetry.sdk.metrics.export
        import opentelemetry.sdk.resources  # noqa: F401
    except ImportError:
        return False
    return True


def shown(url: str) -> str:
    """*url* as the terminal may show it: without a user name or password."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=netloc))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-wec")
    except PackageNotFoundError:
        return "unknown"


def resource(run_id: str) -> Any:
    """The SDK ``Resource`` of a run's metrics."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": "pytest-wec", "service.version": _version(),
                            "service.instance.id": run_id, "wec.run.id": run_id})


def metrics_data(families: Iterable[samples.Family], run_id: str, res: Any,
                 start_ns: int, now_ns: int) -> Any:
    """*families* as the SDK's ``MetricsData``: counters as cumulative monotonic sums,
    gauges as gauges, histograms with explicit buckets; ``run`` added to every point's
    attributes. A histogram's point that holds no value yet is left out (its min and max
    would be undefined), and so is a family without points."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    cumulative = AggregationTemporality.CUMULATIVE
    bounds = list(samples.BUCKETS_S)
    metrics = []
    for fam in families:
        def attrs(p: samples.Point, fam: samples.Family = fam) -> dict[str, str]:
            return {"run": run_id, **dict(zip(fam.labels, p.labels, strict=True))}

        data: Any
        if fam.kind == "histogram":
            hist = [HistogramDataPoint(attributes=attrs(p), start_time_unix_nano=start_ns,
                                       time_unix_nano=now_ns, count=p.count, sum=p.sum,
                                       bucket_counts=list(p.buckets), explicit_bounds=bounds,
                                       min=p.min, max=p.max)
                    for p in fam.points if p.count]
            data, n = Histogram(data_points=hist, aggregation_temporality=cumulative), len(hist)
        else:
            points = [NumberDataPoint(attributes=attrs(p), start_time_unix_nano=start_ns,
                                      time_unix_nano=now_ns, value=p.value)
                      for p in fam.points]
            data = Sum(data_points=points, aggregation_temporality=cumulative,
                       is_monotonic=True) if fam.kind == "counter" else Gauge(data_points=points)
            n = len(points)
        if n:
            metrics.append(Metric(name=fam.name, description=fam.doc, unit=fam.unit, data=data))
    scope = InstrumentationScope("pytest_wec", _version())
    return MetricsData(resource_metrics=[ResourceMetrics(
        resource=res, scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
        schema_url="")])


def _cause(exc: BaseException) -> str:
    """The operating system's word for a failed connection (``Connection refused``), found
    in the chain of wrapping exceptions, else the exception's own text."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(x, BaseException)]
    return str(exc)


def _probe(url: str) -> str | None:
    """Why nothing answers at *url*'s address (``Connection refused``, ``timed out``...), or
    None when a connection can be made."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=1.0).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


class _Quiet(logging.Handler):
    """Takes the exporter's records while an :class:`OtlpExporter` runs: what the first
    failure's records say is kept for the one warning (``cause``: the operating system's
    word from an exception among their arguments; ``message``: the first one's text), and
    every record goes to this module's logger at debug level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.cause: str | None = None
        self.message: str | None = None

    def clear(self) -> None:
        self.cause = self.message = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            args = record.args if isinstance(record.args, tuple) else ()
            exc = next((a for a in args if isinstance(a, BaseException)), None)
            if record.levelno >= logging.WARNING:
                if self.cause is None and exc is not None:
                    self.cause = _cause(exc)
                if self.message is None:
                    self.message = message[:200]
            log.debug("OTLP exporter: %s", message)
        except Exception:  # a handler must not raise
            self.handleError(record)


class OtlpExporter:
    """Pushes one load run's figures to ``url`` every ``interval`` seconds.

    :meth:`attach` starts the pushing; :meth:`stop` makes the last export (the run's final
    figures) and closes, within ``timeout`` seconds and one more. ``write_line`` says the
    warning of a failure first seen at the end, when the run's own notices are no longer
    printed; ``exporter`` replaces the SDK's ``OTLPMetricExporter`` (anything with its
    ``export`` and ``shutdown``)."""

    def __init__(self, url: str, interval: float, *,
                 write_line: Callable[[str], None] | None = None,
                 timeout: float = FLUSH_TIMEOUT, exporter: Any = None) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            exporter = OTLPMetricExporter(endpoint=url, timeout=timeout)
        self.url, self.interval, self.timeout = url, interval, timeout
        self.exports = self.failures = 0
        self._exporter = exporter
        self._write_line = write_line
        self._note: Callable[[str], None] | None = None
        self._session: Any = None
        self._run_id = ""
        self._resource: Any = None
        self._start_ns = 0
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._warned = False
        self._failing = False  # the last export failed
        self._pending: str | None = None  # a warning first seen in the last export
        self._held = False  # the run's notices are taken for its summary (hold_notes)
        self._quiet = _Quiet()
        self._loggers: list[tuple[logging.Logger, bool]] = []

    def attach(self, session: Any, run_id: str,
               note: Callable[[str], None] | None = None) -> None:
        """Start pushing the figures of ``session`` (a :class:`~pytest_wec.controller.
        collector.LoadSession`); ``note`` says a warning the way the run says its own."""
        self._session, self._run_id, self._note = session, run_id, note
        self._resource = resource(run_id)
        self._start_ns = time.time_ns()
        for name in _EXPORTER_LOGGERS:
            logger = logging.getLogger(name)
            self._loggers.append((logger, logger.propagate))
            logger.addHandler(self._quiet)
            logger.propagate = False
        self._thread = threading.Thread(target=self._loop, name="wec-otlp", daemon=True)
        self._thread.start()

    def export_now(self) -> bool:
        """One export of the figures as they are (one at a time); whether the receiver took
        them. Never raises: a failure is counted, and the first one warned of."""
        with self._export_lock:
            return self._export()

    def _export(self) -> bool:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        self.exports += 1
        self._quiet.clear()
        try:
            data = metrics_data(samples.read(self._session), self._run_id, self._resource,
                                self._start_ns, time.time_ns())
            ok = self._exporter.export(data, timeout_millis=self.timeout * 1e3) \
                == MetricExportResult.SUCCESS
            reason: str | None = None
        except Exception as exc:
            log.debug("OTLP export failed", exc_info=True)
            ok, reason = False, _cause(exc)
        if ok:
            if self._failing:
                log.info("OTLP export to %s works again", shown(self.url))
            self._failing = False
            return True
        self.failures += 1
        self._failing = True
        if not self._warned:
            self._warned = True
            reason = reason or self._quiet.cause or _probe(self.url) or self._quiet.message \
                or "the receiver did not take them"
            self._warn(f"wec: OTLP export to {shown(self.url)} failed: {reason}; the run "
                       "goes on without it (later failures are not reported)")
        return False

    def hold_notes(self) -> None:
        """The run's summary is being built: a warning from now on is kept for
        :meth:`stop` to return (the summary's list of warnings is taken)."""
        self._held = True

    def _warn(self, msg: str) -> None:
        log.warning("%s", msg)
        if self._held or self._stop.is_set() or self._note is None:
            self._pending = msg  # the run's notices are taken: stop() says it
        else:
            self._note(msg)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.export_now()
        self.export_now()  # the run's final figures

    def stop(self, timeout: float | None = None) -> str | None:
        """The last export, then the exporter closed: waits ``timeout`` seconds (default:
        the export timeout) for it, and one more for a request under way to give up after
        the close. Once; never raises. Returns the warning first said by the last export
        (after the run's notices were taken for its summary), for the caller to record."""
        if self._stopped:
            return None
        self._stopped = True
        wait = self.timeout if timeout is None else timeout
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(wait)
        try:
            self._exporter.shutdown()  # also ends the retries of an export under way
        except Exception:
            log.debug("closing the OTLP exporter failed", exc_info=True)
        if thread is not None and thread.is_alive():
            thread.join(1.0)
            if thread.is_alive() and not self._warned:
                self._warned = True
                self._warn(f"wec: OTLP export to {shown(self.url)}: the last export did not "
                           f"end within {wait:g}s; the run's final figures may be missing")
        late = self._pending
        if late is not None and self._write_line is not None:
            try:
                self._write_line(late)
            except Exception:
                log.debug("write_line failed", exc_info=True)
        self._pending = None
        if thread is None or not thread.is_alive():
            for logger, propagate in self._loggers:
                logger.removeHandler(self._quiet)
                logger.propagate = propagate
            self._loggers.clear()
        return late
