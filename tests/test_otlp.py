"""--wec-otlp: the run's figures pushed over OTLP/HTTP, received here by a small OTLP receiver
(an http.server on a free loopback port that decodes ExportMetricsServiceRequest with the
opentelemetry-proto classes): the same families as /metrics from the aggregator's own
figures, a real load run whose last export matches its summary.json, a collector that is
down (one warning, the run passes), and bad URLs and a missing extra as usage errors."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from _loadruns import NEEDS_STACK, only
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from test_aggregator import T0, synthetic
from test_metrics import FakeSession

from pytest_wec.controller import otlp, samples
from pytest_wec.controller.aggregator import Aggregator, Histogram
from pytest_wec.controller.metrics import families
from pytest_wec.controller.otlp import OtlpExporter
from pytest_wec.settings.parse import _otlp_url

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
OTEL_MODULES = ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                "opentelemetry.sdk.metrics.export", "opentelemetry.sdk.resources")


# -- the receiver ------------------------------------------------------------------------------
class Receiver:
    """An OTLP/HTTP metrics receiver on 127.0.0.1: every request decoded, in arrival order;
    ``status`` is what it answers."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.arrived: list[float] = []  # time.monotonic() of each
        self.paths: list[str] = []
        self.status = 200
        self._cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                req = ExportMetricsServiceRequest()
                req.ParseFromString(body)
                with owner._cond:
                    owner.requests.append(req)
                    owner.arrived.append(time.monotonic())
                    owner.paths.append(self.path)
                    owner._cond.notify_all()
                out = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    def wait_for(self, n: int, timeout: float) -> list[ExportMetricsServiceRequest]:
        """The requests once there are at least *n*; fails after *timeout* seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"{len(self.requests)} OTLP request(s) within "
                                     f"{timeout:g}s, wanted {n}")
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _any(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def resource_of(req: ExportMetricsServiceRequest) -> dict[str, Any]:
    [rm] = req.resource_metrics
    return {kv.key: _any(kv.value) for kv in rm.resource.attributes}


def metrics_of(req: ExportMetricsServiceRequest) -> dict[str, Any]:
    """name -> Metric of the request's one resource and scope."""
    [rm] = req.resource_metrics
    [sm] = rm.scope_metrics
    return {m.name: m for m in sm.metrics}


def points(metric: Any) -> dict[tuple[tuple[str, str], ...], Any]:
    """A metric's data points by their sorted attributes."""
    data = getattr(metric, metric.WhichOneof("data"))
    return {tuple(sorted((kv.key, _any(kv.value)) for kv in p.attributes)): p
            for p in data.data_points}


def key(run: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"run": run, **labels}.items()))


def number(p: Any) -> float:
    return float(p.as_int if p.WhichOneof("value") == "as_int" else p.as_double)


# -- the figures, without a run ----------------------------------------------------------------
def test_an_export_is_the_families_of_metrics(receiver: Receiver) -> None:
    agg = Aggregator(T0)
    for r in synthetic(300):
        agg.add(r)
    for opened_us in (400, 2100, 2100, 15000, 250000):  # connections opened
        agg.connects.record(opened_us)
    session = FakeSession(agg)
    exporter = OtlpExporter(receiver.url, 60.0)
    exporter.attach(session, "run-1")
    try:
        assert exporter.export_now()
        [req] = receiver.wait_for(1, 10)
    finally:
        started = time.monotonic()
        exporter.stop()
    assert time.monotonic() - started < otlp.FLUSH_TIMEOUT
    assert len(receiver.wait_for(2, 10)) == 2  # stop() sent the final figures once more
    assert receiver.paths[0] == "/v1/metrics"
    res = resource_of(req)
    assert res["service.name"] == "pytest-wec"
    assert res["wec.run.id"] == res["service.instance.id"] == "run-1"
    got = metrics_of(req)
    # the names of /metrics' families, every one with points (no errors family is empty here)
    assert set(got) == {f.name for f in families(session, "run-1")}
    chains = got["wec_chains"]
    assert chains.WhichOneof("data") == "sum" and chains.sum.is_monotonic
    assert chains.sum.aggregation_temporality == CUMULATIVE and chains.unit == "{chain}"
    cp = points(chains)
    for name, cs in agg.chains.items():
        for outcome in ("ok", "failed", "cancelled", "skipped"):
            assert number(cp[key("run-1", chain=name, outcome=outcome)]) == getattr(cs, outcome)
    lat = got["wec_request_latency_seconds"]
    assert lat.WhichOneof("data") == "histogram" and lat.unit == "s"
    assert lat.histogram.aggregation_temporality == CUMULATIVE
    lp = points(lat)
    for ep, es in agg.endpoints.items():
        p = lp[key("run-1", endpoint=ep)]
        assert list(p.explicit_bounds) == list(samples.BUCKETS_S)
        assert tuple(p.bucket_counts) == samples.bucket_counts(es.latency)
        assert p.count == es.latency.total == sum(p.bucket_counts)
        assert p.sum == pytest.approx(es.latency.sum / 1e6)
        assert (p.min, p.max) == (es.latency.min / 1e6, es.latency.max / 1e6)
        assert number(points(got["wec_requests"])[key("run-1", endpoint=ep)]) == es.count
        assert number(points(got["wec_requests_failed"])[key("run-1", endpoint=ep)]) == \
            es.failed
    for (chain, endpoint, kind), (count, _) in agg.errors.items():
        p = points(got["wec_errors"])[key("run-1", chain=chain, endpoint=endpoint or "",
                                          type=kind.rsplit(":", 1)[-1])]
        assert number(p) == count
    assert got["wec_in_flight"].WhichOneof("data") == "gauge"
    assert number(points(got["wec_in_flight"])[key("run-1")]) == 7
    assert number(points(got["wec_target"])[key("run-1")]) == 12
    assert number(points(got["wec_certificates_issued"])[key("run-1")]) == agg.certificates
    assert number(points(got["wec_connections_opened"])[key("run-1")]) == 5
    opened = points(got["wec_connection_open_seconds"])[key("run-1")]
    assert tuple(opened.bucket_counts) == samples.bucket_counts(agg.connects)
    assert opened.count == 5 == sum(opened.bucket_counts)
    assert (opened.min, opened.max) == (0.0004, 0.25)
    ev = points(got["wec_ca_events"])
    assert (number(ev[key("run-1", kind="deadlock")]),
            number(ev[key("run-1", kind="restart")])) == (2, 1)


def test_a_histogram_without_values_is_left_out() -> None:
    empty = samples.Family("wec_x_seconds", "histogram", "x", "s", ("chain",),
                           (samples.histogram_point(("a",), Histogram()),))
    data = otlp.metrics_data([empty], "r", otlp.resource("r"), 1, 2)
    assert list(data.resource_metrics[0].scope_metrics[0].metrics) == []


@pytest.mark.parametrize("down", ["refused", "500"])
def test_a_collector_that_fails_is_one_warning(receiver: Receiver, down: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/metrics" if down == "refused" else receiver.url
    receiver.status = 500
    notes: list[str] = []
    lines: list[str] = []
    agg = Aggregator(T0)
    agg.add(synthetic(3)[0])
    exporter = OtlpExporter(url, 0.1, timeout=1.0, write_line=lines.append)
    caplog.set_level("DEBUG")
    exporter.attach(FakeSession(agg), "run-1", notes.append)
    try:
        deadline = time.monotonic() + 30
        while exporter.failures < 3:
            assert time.monotonic() < deadline, f"{exporter.failures} failures within 30s"
            time.sleep(0.05)
    finally:
        started = time.monotonic()
        exporter.stop()
    assert time.monotonic() - started < 1.0 + 1.0 + 1.0  # its timeout, a second, slack
    assert exporter.failures >= 4  # and the final export was tried too
    assert len(notes) == 1 and not lines, (notes, lines)
    want = "Connection refused" if down == "refused" else "500"
    assert notes[0].startswith(f"wec: OTLP export to {url} failed: ") and want in notes[0]
    warnings = [r for r in caplog.records if r.levelno >= 30]
    assert [r.name for r in warnings] == ["pytest_wec.controller.otlp"], warnings
    assert any(r.name == "pytest_wec.controller.otlp" and r.levelno == 10 and
               "OTLP exporter:" in r.getMessage() for r in caplog.records)


def test_a_failure_first_seen_at_the_end_is_printed_by_stop() -> None:
    lines: list[str] = []
    exporter = OtlpExporter(f"http://127.0.0.1:{closed_port()}/v1/metrics", 60.0,
                            timeout=1.0, write_line=lines.append)
    exporter.attach(FakeSession(Aggregator(T0)), "run-1", lambda line: None)
    exporter.stop()
    assert len(lines) == 1 and "Connection refused" in lines[0], lines
    exporter.stop()  # once
    assert len(lines) == 1


@pytest.mark.parametrize("text, want", [
    ("http://127.0.0.1:4318/v1/metrics", "http://127.0.0.1:4318/v1/metrics"),
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/metrics"),
    ("https://otel.example:443/", "https://otel.example:443/v1/metrics"),
    ("http://[::1]:4318/otlp/v1/metrics", "http://[::1]:4318/otlp/v1/metrics"),
])
def test_otlp_urls(text: str, want: str) -> None:
    assert _otlp_url(text) == want
    assert _otlp_url(want) == want  # parsed again on xdist workers


@pytest.mark.parametrize("text", ["127.0.0.1:4318", "ftp://h/v1/metrics", "http://:4318/x",
                                  "http://h:99999/v1/metrics", "http://h:port/", "grpc://h:4317",
                                  "http://h/v1 metrics", ""])
def test_bad_otlp_urls(text: str) -> None:
    with pytest.raises(ValueError, match="expected an OTLP/HTTP URL"):
        _otlp_url(text)


def test_without_the_extra_start_otlp_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_wec.controller.servers import start_otlp

    for name in OTEL_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert not otlp.available()
    with pytest.raises(pytest.UsageError, match=r"pip install 'pytest-wec\[otlp\]'"):
        start_otlp("http://127.0.0.1:4318/v1/metrics", 5.0, lambda line: None)


NO_OTEL = f"""
import sys
for name in {OTEL_MODULES!r}:
    sys.modules[name] = None  # the extra is not installed
"""


@pytest.mark.parametrize("how, line", [
    ("bad", "ERROR: environment variable WEC_OTLP: expected an OTLP/HTTP URL such as "
            "http://127.0.0.1:4318/v1/metrics, got 'localhost:4318'"),
    ("grpc", "ERROR: --wec-otlp: expected an OTLP/HTTP URL such as "
             "http://127.0.0.1:4318/v1/metrics (OTLP over gRPC is not supported)"),
    ("interval", "ERROR: --wec-otlp-interval: expected a duration > 0"),
    ("missing", "ERROR: --wec-otlp needs the OpenTelemetry SDK and its OTLP/HTTP exporter: "
                "pip install 'pytest-wec[otlp]'"),
])
def test_usage_errors_before_the_stack(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                       how: str, line: str) -> None:
    out = pytester.path / "out"
    args = ["-p", "no:cacheprovider", "--pyargs", "pytest_wec_chains", "--wec-load", "1",
            "--wec-duration", "1s", "--wec-out", str(out)]
    if how == "bad":
        monkeypatch.setenv("WEC_OTLP", "localhost:4318")
    elif how == "grpc":
        args += ["--wec-otlp", "grpc://127.0.0.1:4317"]
    elif how == "interval":
        args += ["--wec-otlp", "http://127.0.0.1:4318", "--wec-otlp-interval", "0s"]
    else:
        pytester.makepyfile(no_otel=NO_OTEL)
        args += ["-p", "no_otel", "--wec-otlp", "http://127.0.0.1:4318/v1/metrics"]
    result = pytester.runpytest_subprocess(*args, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert line in text, text
    assert "INTERNALERROR" not in text
    assert not (out / "pebble.log").exists()  # nothing started


# -- real load runs ----------------------------------------------------------------------------
def _needs_stack(test: Callable[..., None]) -> Callable[..., None]:
    for mark in NEEDS_STACK:
        test = mark(test)
    return test


def load_run(cwd: Any, url: str, duration: str,
             interval: str = "1s") -> tuple[int, str, dict[str, Any]]:
    """A load run of new_account and new_order chains (2 in flight for *duration*) that
    pushes to *url* every *interval*: its exit status, output and summary.json."""
    out = cwd / "out"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
           "--pyargs", "pytest_wec_chains", "--wec-out", str(out), "--wec-load", "2",
           "--wec-duration", duration,
           "--wec-mix", only("new_account", "new_order"), "--wec-otlp", url,
           "--wec-otlp-interval", interval]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    text = proc.stdout.decode()
    assert (out / "summary.json").exists(), text
    summary = json.loads((out / "summary.json").read_text())
    return proc.returncode, text, summary


@pytest.mark.timeout(150)
@_needs_stack
def test_a_load_run_pushes_its_figures(pytester: pytest.Pytester, receiver: Receiver) -> None:
    status, text, summary = load_run(pytester.path, receiver.url.removesuffix("/v1/metrics"),
                                     "5s")
    assert status == 0, text
    assert f"wec: otlp {receiver.url} every 1s" in text  # the path added to a bare URL
    assert "Traceback" not in text and "OTLP export" not in text, text
    reqs = receiver.wait_for(3, 5)  # every second while it ran, and the final figures
    run_id = summary["run"]["id"]
    for req in reqs:
        assert resource_of(req)["wec.run.id"] == run_id
        for m in metrics_of(req).values():
            assert all(dict(k)["run"] == run_id for k in points(m)), m.name
    totals = [sum(number(p) for p in points(metrics_of(r)["wec_requests"]).values())
              for r in reqs if "wec_requests" in metrics_of(r)]
    assert totals == sorted(totals) and len(set(totals)) >= 2, totals  # cumulative, growing
    got = metrics_of(reqs[-1])  # the final export: the summary's figures
    assert {"wec_chains", "wec_requests", "wec_chain_latency_seconds",
            "wec_request_latency_seconds", "wec_in_flight", "wec_target"} <= set(got)
    cp = points(got["wec_chains"])
    assert {dict(k)["chain"] for k in cp} == set(summary["chains"]) <= {"new_account",
                                                                        "new_order"}
    clat = points(got["wec_chain_latency_seconds"])
    for name, c in summary["chains"].items():
        for outcome in ("ok", "failed", "cancelled", "skipped"):
            assert number(cp[key(run_id, chain=name, outcome=outcome)]) == c[outcome], name
        p = clat[key(run_id, chain=name)]
        assert p.count == c["count"] and p.max * 1e3 == pytest.approx(
            c["latency_ms"]["max"], rel=1e-3, abs=0.01)
    rp, rlat = points(got["wec_requests"]), points(got["wec_request_latency_seconds"])
    assert {"newAccount", "newOrder"} <= {dict(k)["endpoint"] for k in rp}
    assert {dict(k)["endpoint"] for k in rp} == set(summary["endpoints"])
    for ep, e in summary["endpoints"].items():
        assert number(rp[key(run_id, endpoint=ep)]) == e["count"], ep
        assert number(points(got["wec_requests_failed"])[key(run_id, endpoint=ep)]) == \
            e["failed"]
        p = rlat[key(run_id, endpoint=ep)]
        assert p.count == e["count"] == sum(p.bucket_counts)
        assert list(p.explicit_bounds) == list(samples.BUCKETS_S)
        assert p.min * 1e3 == pytest.approx(e["latency_ms"]["min"], rel=1e-3, abs=0.01)
        assert p.max * 1e3 == pytest.approx(e["latency_ms"]["max"], rel=1e-3, abs=0.01)
    assert number(points(got["wec_certificates_issued"])[key(run_id)]) == \
        summary["totals"]["certificates_issued"]
    # the connections the requests opened (at least one per worker), as summary.json says
    opened = summary["connections"]["opened"]
    assert opened >= 1 and number(points(got["wec_connections_opened"])[key(run_id)]) == opened
    p = points(got["wec_connection_open_seconds"])[key(run_id)]
    assert p.count == opened == sum(p.bucket_counts)
    assert p.max * 1e3 == pytest.approx(summary["connections"]["latency_ms"]["max"],
                                        rel=1e-3, abs=0.01)


@pytest.mark.timeout(150)
@_needs_stack
def test_a_collector_that_is_down_costs_one_warning(pytester: pytest.Pytester) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/metrics"
    status, text, summary = load_run(pytester.path, url, "3s")
    assert status == 0, text
    warning = f"wec: OTLP export to {url} failed: Connection refused"
    assert text.count(warning) == 1, text
    assert text.count("OTLP export") == 1, text  # nothing else said of it
    assert "Transient error" not in text and "Failed to export" not in text, text
    assert "Traceback" not in text, text
    assert any(w.startswith(warning) for w in summary["warnings"]), summary["warnings"]
    assert summary["totals"]["chains"] > 0


@pytest.mark.timeout(150)
@_needs_stack
def test_a_collector_down_first_seen_by_the_last_export_is_in_the_summary(
        pytester: pytest.Pytester) -> None:
    """The first export is the last one (its interval outlasts the run): its failure comes
    after the summary was built, and is written into summary.json all the same."""
    url = f"http://127.0.0.1:{closed_port()}/v1/metrics"
    status, text, summary = load_run(pytester.path, url, "2s", interval="60s")
    assert status == 0, text
    warning = f"wec: OTLP export to {url} failed: Connection refused"
    assert text.count(warning) == 1, text
    assert [w for w in summary["warnings"] if w.startswith(warning)], summary["warnings"]
