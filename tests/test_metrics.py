"""--wec-metrics: Prometheus' text format from the aggregator's own figures, the server's
address and token rules, and bad values as usage errors before anything starts. A scrape of
a real run is in tests/test_ciexports.py::test_a_load_run_writes_them_all."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_aggregator import T0, synthetic

from pytest_wec.controller.aggregator import Aggregator, Histogram
from pytest_wec.controller.metrics import BUCKETS_S, MetricsServer, _buckets
from pytest_wec.controller.outputs import build_tables


class FakeLedger:
    def snapshot(self) -> list[dict[str, Any]]:
        return [{"kind": "deadlock"}, {"kind": "restart"}, {"kind": "deadlock"}]


class FakeWatch:
    def in_flight(self) -> int:
        return 7


class FakeSession:
    """What the metrics read of a LoadSession: ``read``, ``target_now`` and the ledger."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg, self.ledger = agg, FakeLedger()

    def read(self, fn: Any) -> Any:
        return fn(self.agg, FakeWatch())

    def target_now(self) -> float:
        return 12.0


def scrape(url: str, host: str | None = None, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if host is not None:
        req.add_header("Host", host)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_buckets_count_each_value_once_and_cumulatively() -> None:
    values = [500, 1000, 1001, 40_000, 2_000_000, 99_000_000]  # us
    h = Histogram()
    for v in values:
        h.record(v)
    got = dict(_buckets(h))
    assert list(got) == [f"{b:g}" for b in BUCKETS_S] + ["+Inf"]
    for bound in BUCKETS_S:
        want = sum(v <= bound * 1e6 for v in values)
        assert got[f"{bound:g}"] == want, bound
    assert got["+Inf"] == len(values)


def test_families_are_the_aggregators_figures() -> None:
    agg = Aggregator(T0)
    for r in synthetic(300):
        agg.add(r)
    opens = [0.0004, 0.0021, 0.0021, 0.0150, 0.2500]  # seconds: connections opened
    for s in opens:
        agg.connects.record(int(s * 1e6))
    server = MetricsServer("127.0.0.1", 0)
    server.attach(FakeSession(agg), "run-1")
    url = server.start()
    try:
        status, text = scrape(url)
    finally:
        server.stop()
    assert status == 200, text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"run": "run-1", **labels}.items())))]

    for name, cs in agg.chains.items():
        for outcome in ("ok", "failed", "cancelled", "skipped"):
            assert value("wec_chains_total", chain=name, outcome=outcome) == getattr(cs, outcome)
        assert value("wec_chain_latency_seconds_count", chain=name) == cs.latency.total
        assert value("wec_chain_latency_seconds_sum", chain=name) == \
            pytest.approx(cs.latency.sum / 1e6)
    for ep, es in agg.endpoints.items():
        assert value("wec_requests_total", endpoint=ep) == es.count
        assert value("wec_requests_failed_total", endpoint=ep) == es.failed
    for (chain, endpoint, kind), (count, _) in agg.errors.items():
        assert value("wec_errors_total", chain=chain, endpoint=endpoint or "",
                     type=kind.rsplit(":", 1)[-1]) == count
    assert value("wec_in_flight") == 7 and value("wec_target") == 12
    assert value("wec_certificates_issued_total") == agg.certificates
    assert value("wec_connections_opened_total") == len(opens) == agg.connects.total
    assert value("wec_connection_open_seconds_count") == len(opens)
    assert value("wec_connection_open_seconds_sum") == pytest.approx(sum(opens), rel=1e-3)
    for bound in (0.001, 0.0025, 0.025, 0.5):  # bounds of BUCKETS_S
        assert value("wec_connection_open_seconds_bucket", le=f"{bound:g}") == \
            sum(s <= bound for s in opens), bound
    # as summary.json's connections say them: the count is its opened, the buckets add up
    conn = build_tables(agg, 1.0)["connections"]
    assert value("wec_connections_opened_total") == conn["opened"]
    assert value("wec_connection_open_seconds_count") == conn["opened"]
    cumulative = [value("wec_connection_open_seconds_bucket", le=le)
                  for le in (*(f"{b:g}" for b in BUCKETS_S), "+Inf")]
    assert cumulative == sorted(cumulative) and cumulative[-1] == conn["opened"]
    assert value("wec_connection_open_seconds_sum") * 1e3 == pytest.approx(
        conn["latency_ms"]["mean"] * conn["opened"], rel=1e-3)
    assert value("wec_ca_events_total", kind="deadlock") == 2
    assert value("wec_ca_events_total", kind="restart") == 1


def test_loopback_names_and_the_token() -> None:
    server = MetricsServer("127.0.0.1", 0)
    url = server.start()
    try:
        assert scrape(url)[0] == 200  # no run attached yet: an empty page, not an error
        status, text = scrape(url, host="evil.example:80")
        assert status == 403 and "loopback" in text
        assert scrape(url.replace("/metrics", "/other"))[0] == 404
    finally:
        server.stop()
    guarded = MetricsServer("127.0.0.1", 0, token="s3cret")
    url = guarded.start()
    try:
        assert scrape(url)[0] == 401
        assert scrape(url, token="wrong")[0] == 401
        assert scrape(url, token="s3cret")[0] == 200
    finally:
        guarded.stop()


@pytest.mark.parametrize("value, line", [
    ("nope", "ERROR: --wec-metrics: "),
    ("TAKEN", "ERROR: --wec-metrics: cannot listen on 127.0.0.1:"),
])
def test_bad_metrics_addresses_are_usage_errors_before_the_stack(
        pytester: pytest.Pytester, value: str, line: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arg = f"127.0.0.1:{port}" if value == "TAKEN" else value
        out = pytester.path / "out"
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--pyargs", "pytest_wec_chains", "--wec-load", "1",
            "--wec-duration", "1s", "--wec-out", str(out), "--wec-metrics", arg, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert line in text, text
    assert "INTERNALERROR" not in text
    assert not (out / "pebble.log").exists()  # nothing started
