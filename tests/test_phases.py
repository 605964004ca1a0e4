"""ACME phases and RFC deviations: on the wire, merged, in summary.json, benchmark.json, the
terminal, thresholds and baseline comparisons (no CA needed; the whole run against a
programmed CA is tests/test_truth.py)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from chains._checks import RfcDeviation, deviation_kind, warn_deviation
from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.comparison import compare, regressions
from pytest_wec.controller.gating import evaluate
from pytest_wec.controller.histogram import Histogram, percentile_key
from pytest_wec.controller.outputs import (
    build_benchmark_json,
    build_summary,
    build_tables,
    format_tables,
)
from pytest_wec.controller.phases import PhaseBook
from pytest_wec.controller.thresholds import parse_threshold, percentiles_of
from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.stream import decode_batch, encode_batch
from pytest_wec.worker.phases import PhaseRecorder

T0 = 1_700_000_000.0


def chain(i: int, name: str = "new_certificate", *, lag: float = 0.0,
          phases: dict[str, list[float]] | None = None,
          deviations: list[list[str]] | None = None) -> ChainResult:
    c: ChainResult = {
        "chain_id": f"c{i}", "chain": name, "worker": "gw0", "scheduled": T0 + i - lag,
        "started": T0 + i, "took": 0.5, "ok": True, "outcome": "ok", "error": None,
        "certificates": 1, "requests": [{
            "chain_id": f"c{i}", "chain": name, "endpoint": "newOrder", "method": "POST",
            "status": 201, "started": T0 + i, "took": 0.01, "ok": True, "error": None,
            "problem": None}]}
    if phases is not None:
        c["phases"] = phases  # type: ignore[typeddict-item]
    if deviations is not None:
        c["deviations"] = deviations
    return c


def run_of(n: int = 100, *, open_model: bool = False) -> Aggregator:
    """``n`` chains: validation (i + 1) ms, polls i % 7, issuance 2 s; 1 in 10 deviates."""
    agg = Aggregator(T0)
    for i in range(n):
        agg.add(chain(i, lag=2.0 if open_model else 0.0, phases={
            "validation": [(i + 1) / 1000], "validation_requests": [3],
            "polls": [i % 7], "issuance": [2.0], "time_to_certificate": [2.5]},
            deviations=[["deactivate_account: RFC 8555 §7.3.6", f"HTTP 403 #{i}"]]
            if i % 10 == 0 else None))
    agg.add(chain(n, "new_order", phases={"validation": [0.5], "bogus!": [1.0],
                                          "first_validation_request": [-1.0, "x", 0.25]}))  # type: ignore[list-item]
    return agg


def test_phases_cross_the_wire_and_old_rows_still_decode() -> None:
    with_phases = chain(1, phases={"validation": [0.25], "polls": [3]},
                        deviations=[["k", "detail"]])
    plain = chain(2)
    batch = decode_batch(encode_batch("gw0", "s", 0, 0, [with_phases, plain]))
    assert batch.chains[0]["phases"] == {"validation": [0.25], "polls": [3]}
    assert batch.chains[0]["deviations"] == [["k", "detail"]]
    assert "phases" not in batch.chains[1] and "deviations" not in batch.chains[1]
    # a row as written before phases existed: 11 fields
    import msgpack

    row = msgpack.unpackb(encode_batch("gw0", "s", 0, 0, [plain]))
    assert len(row[5][0]) == 11
    old = decode_batch(msgpack.packb(row))
    assert old.chains[0]["chain_id"] == "c2"


def test_phases_merge_losslessly_and_survive_plain_data() -> None:
    whole = run_of(100)
    a, b = Aggregator(T0), Aggregator(T0)
    parts = run_of(100)
    for i, (key, hist) in enumerate(sorted(parts.phases.hists.items())):
        (a if i % 2 else b).phases.hists[key] = hist
    a.merge(b)
    assert a.phases.hists == whole.phases.hists
    again = Aggregator.from_dict(whole.to_dict())
    assert again.phases.hists == whole.phases.hists
    assert again.phases.deviations == whole.phases.deviations
    old = whole.to_dict()
    del old["phases"]  # an aggregator written before phases
    assert Aggregator.from_dict(old).phases.hists == {}
    # what is no number >= 0, and names that are no phase name, are skipped
    fvr = whole.phases.merged("first_validation_request")
    assert (fvr.total, fvr.max) == (1, 250_000)
    assert "bogus!" not in whole.phases.names()


def test_summary_terminal_and_benchmark_carry_phases_and_deviations() -> None:
    agg = run_of(100, open_model=True)
    summary = build_summary(agg, {"model": "open", "duration_s": 100.0}, {}, {}, None,
                            percentiles=(96, 99.5))
    v = summary["phases"]["validation"]
    assert v["count"] == 101
    assert v["latency_ms"]["p50"] == pytest.approx(51.0, rel=1e-3)  # HDR: 3 figures
    assert v["latency_ms"]["max"] == 500.0  # the exact max
    assert v["latency_ms"]["p96"] == pytest.approx(97.0, rel=1e-3)
    assert "p99.5" in v["latency_ms"]
    polls = summary["phases"]["polls"]
    assert polls["unit"] == "polls per order" and "latency_ms" not in polls
    assert polls["values"]["max"] == 6.0 and polls["values"]["p50"] == 3.0
    mine = summary["chains"]["new_certificate"]["phases"]
    assert mine["validation"]["latency_ms"]["max"] == 100.0  # new_order's 500 ms apart
    assert summary["chains"]["new_order"]["phases"]["validation"]["count"] == 1
    assert summary["deviations"] == {"deactivate_account: RFC 8555 §7.3.6": {
        "count": 10, "example": "HTTP 403 #0", "chain": "new_certificate"}}
    # open model: the latency from the intended start beside the real one, overall too
    chains = summary["overall"]["chains"]
    assert chains["latency_ms"]["p50"] == 500.0
    assert chains["latency_from_scheduled_ms"]["p50"] == 2500.0
    assert summary["chains"]["new_certificate"]["latency_from_scheduled_ms"]["p99.5"] == 2500.0
    text = format_tables(summary)
    import re

    assert re.search(r"^validation +101 +51\.0 ", text, re.MULTILINE), text
    assert "polls" in text and "polls per order" in text
    assert "RFC deviations seen: 10" in text
    assert "10 x deactivate_account: RFC 8555 §7.3.6, e.g. HTTP 403 #0" in text
    bench = {b["name"]: b for b in build_benchmark_json(agg, summary["run"])["benchmarks"]
             if b["group"] == "phase"}
    assert bench["validation"]["stats"]["max"] == pytest.approx(0.5)
    assert bench["validation[new_certificate]"]["extra_info"]["count"] == 100
    assert bench["polls"]["extra_info"]["unit"] == "polls per order"
    assert bench["polls"]["stats"]["max"] == 6  # a count read as it is
    live = build_tables(agg, 10.0)  # the dashboard's shapes
    assert live["phases"].keys() == summary["phases"].keys()


def _summary(**kw: Any) -> dict[str, Any]:
    return build_summary(run_of(100, **kw), {"model": "open" if kw else "closed",
                                             "duration_s": 100.0}, {}, {}, None,
                         percentiles=percentiles_of(THRESHOLDS))


THRESHOLDS = [parse_threshold(t) for t in (
    "p95(phase:validation) < 2s", "p96(phase:validation, chain:new_certificate) <= 96.1ms",
    "max(phase:polls) <= 6", "p50(phase:polls) == 3", "count(phase:issuance) >= 100",
    "p99.5(chains, corrected) < 2s", "p99(chain:new_certificate, corrected) < 3s",
    "p99.99(requests) < 11ms")]


def test_thresholds_on_phases_percentiles_and_corrected_latency() -> None:
    closed = {v.expr: v for v in evaluate(THRESHOLDS, _summary())}
    assert [e for e, v in closed.items() if not v.ok] == []
    assert closed["p96(phase:validation, chain:new_certificate) <= 96.1ms"].value == \
        pytest.approx(96.0, rel=1e-3)  # its own chain's: new_order's 500 ms apart
    assert closed["max(phase:polls) <= 6"].value == 6.0
    # closed model: every chain starts when intended, corrected is the real latency
    assert closed["p99.5(chains, corrected) < 2s"].value == 0.5
    opened = {v.expr: v for v in evaluate(THRESHOLDS, _summary(open_model=True))}
    assert opened["p99.5(chains, corrected) < 2s"].value == 2.5
    assert not opened["p99.5(chains, corrected) < 2s"].ok
    assert opened["p99(chain:new_certificate, corrected) < 3s"].ok
    # a percentile the summary was not built with, a phase no chain went through
    no_p = evaluate([parse_threshold("p97(phase:validation) < 1s")], _summary())[0]
    assert (no_p.ok, no_p.reason) == (False, "no p97 of phase:validation in the summary")
    none = evaluate([parse_threshold("p50(phase:validation, chain:nope) < 1s")], _summary())
    assert none[0].reason == "no data for phase:validation, chain:nope"


@pytest.mark.parametrize(("text", "message"), [
    ("p0 < 1s", "p0: a percentile is from 0 (excluded) to 100"),
    ("p100.5 < 1s", "p100.5: a percentile is from 0 (excluded) to 100"),
    ("p95(endpoint:newOrder, corrected) < 1s", "'corrected' is latency from the intended "
                                                "start, which chains have"),
    ("error_rate(chains, corrected) < 1%", "'corrected' is latency from the intended start: "
                                           "error_rate does not take it"),
    ("p95(phase:nope) < 1s", "unknown phase 'nope' (phases: validation, "),
    ("p95(phase:polls) < 3ms", "p95(phase:polls) takes a plain number (polls per order)"),
    ("p95(phase:validation, chain:a, chain:b) < 1s", "unknown qualifier 'chain:b'"),
    ("p95(chain:x, soon) < 1s", "unknown qualifier 'soon' for p95"),
])
def test_bad_thresholds_say_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_threshold(text)
    assert str(exc.value).startswith(message)


def test_any_percentile_is_read_as_hdr_reads_it() -> None:
    t = parse_threshold("p99.99 < 5s")
    assert (t.percentile, t.key, t.text) == (99.99, "p99.99", "p99.99 < 5s")
    assert parse_threshold("p99.9 < 1s").key == "p999" == percentile_key(99.9)
    assert [percentile_key(p) for p in (96, 9.5, 99.5)] == ["p96", "p9.5", "p99.5"]
    h = Histogram()
    for us in range(1, 10_001):
        h.record(us * 1000)
    assert h.summary_ms((9.5, 95, 99.99))["p9.5"] == pytest.approx(950, rel=1e-3)
    assert h.summary_ms((9.5, 95, 99.99))["p99.99"] == pytest.approx(9999, rel=1e-3)


def test_a_baseline_comparison_covers_phases() -> None:
    base = build_benchmark_json(run_of(100), {"model": "closed", "duration_s": 100.0})
    slow = run_of(100)
    for i in range(100):  # validation 10x slower, polls the same
        slow.add(chain(200 + i, phases={"validation": [(i + 1) / 100], "polls": [i % 7]}))
    now = build_summary(slow, {"model": "closed", "duration_s": 100.0}, {}, {}, None)
    diffs = {(d.kind, d.name, d.metric): d for d in compare(now, base)}
    v = diffs[("phase", "validation", "p95")]
    assert v.unit == "ms" and v.baseline == pytest.approx(96.0, rel=1e-3)
    assert v.current is not None and v.current > 500
    assert diffs[("phase", "polls", "p95")].unit == ""
    assert diffs[("phase", "polls", "p50")].change == 0
    from pytest_wec.controller.comparison import parse_compare_fail

    found = {r.diff.name for r in regressions(compare(now, base), parse_compare_fail(
        "p95:10%,p99:50ms"))}
    assert "validation" in found and "validation[new_certificate]" in found
    assert "polls" not in found


def test_a_deviation_warns_once_and_is_counted_under_load() -> None:
    class Ctx(PhaseRecorder):
        def __init__(self, mode: str) -> None:
            self.name, self.mode = "deactivate_account", mode

    what = "a deactivated account's request got HTTP 403; RFC 8555 §7.3.6 says 401"
    once = Ctx("once")
    with pytest.warns(RfcDeviation, match="HTTP 403"):
        warn_deviation(once, what)  # type: ignore[arg-type]
    assert once.wire_extras(True) == {}
    load = Ctx("load")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_deviation(load, what)  # type: ignore[arg-type]
    assert load.wire_extras(False) == {
        "deviations": [["deactivate_account: RFC 8555 §7.3.6", what]]}
    assert deviation_kind(load, "no section cited") == "deactivate_account"  # type: ignore[arg-type]
    book = PhaseBook()
    book.add("deactivate_account", None, load.wire_extras(False)["deviations"] * 3)
    assert book.deviation_table()["deactivate_account: RFC 8555 §7.3.6"]["count"] == 3
