"""What other tools read: Locust's CSV statistics, .hgrm files, GitHub's job summary and the
gate's test cases in --junitxml; computed against exact figures, then in one real load run."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _loadruns import NEEDS_STACK, only, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_aggregator import T0, chain, exact_percentile, req, synthetic

from pytest_wec.controller.aggregator import Aggregator, Histogram
from pytest_wec.controller.ciexports import (
    GateCase,
    add_junit_cases,
    append_step_summary,
    gate_cases,
    hgrm_text,
    step_summary,
    write_hgrm,
)
from pytest_wec.controller.csvstats import (
    HISTORY_COLUMNS,
    PERCENTILES,
    STATS_COLUMNS,
    CsvFiles,
    StatsHistory,
    stats_rows,
)


def _agg(results: list[Any]) -> Aggregator:
    agg = Aggregator(T0)
    for r in results:
        agg.add(r)
    return agg


def _hist(values_us: list[int]) -> Histogram:
    h = Histogram()
    for v in values_us:
        h.record(v)
    return h


def test_stats_rows_are_the_aggregators_figures_in_locusts_columns() -> None:
    results = synthetic(600)
    agg = _agg(results)
    rows = stats_rows(agg, 30.0)
    assert all(len(r) == len(STATS_COLUMNS) for r in rows)
    by = {(r[0], r[1]): dict(zip(STATS_COLUMNS, r, strict=True)) for r in rows}
    assert [k for k in by if k[0] == "chain"] == [("chain", n) for n in sorted(agg.chains)]
    assert [k for k in by if k[0] == "request"] == [("request", n) for n in sorted(agg.endpoints)]
    for name, cs in agg.chains.items():
        row = by[("chain", name)]
        ended = [r for r in results if r["chain"] == name and r["outcome"] in ("ok", "failed")]
        assert row["Request Count"] == len(ended) == cs.count
        assert row["Failure Count"] == sum(r["outcome"] == "failed" for r in ended)
        exact = sorted(r["took"] * 1000 for r in ended)
        assert row["Min Response Time"] == pytest.approx(exact[0], abs=0.001)
        assert row["Max Response Time"] == pytest.approx(exact[-1], abs=0.001)
        assert row["Average Response Time"] == pytest.approx(sum(exact) / len(exact), abs=0.002)
        assert row["Requests/s"] == round(len(ended) / 30.0, 3)
        assert row["Average Content Size"] == ""  # not measured: not made up
        wanted = cs.latency.percentiles(PERCENTILES)
        assert [row[f"{p:g}%"] for p in PERCENTILES] == [round(v / 1000, 3) for v in wanted]
        assert row["Median Response Time"] == row["50%"]
        # HDR's 3 significant digits: each percentile within 0.1% of the exact one
        us = [int(r["took"] * 1e6 + 0.5) for r in ended]
        for p in (50, 95, 99):
            assert row[f"{p}%"] == pytest.approx(exact_percentile(us, p) / 1000, rel=1e-3)
    agg_row = by[("", "Aggregated")]
    every = [q for r in results for q in r["requests"]]  # a cancelled chain's too
    assert agg_row["Request Count"] == len(every) == sum(e.count for e in agg.endpoints.values())
    assert agg_row["Failure Count"] == sum(not q["ok"] for q in every)


def test_history_rows_are_the_last_whole_seconds() -> None:
    # chain A: one a second, seconds 0..19, each taking (s + 1) ms; the tick is at second 20.5
    results = [chain(f"a{s}", "A", T0 + s, (s + 1) / 1000,
                     requests=[req(f"a{s}", "A", "newOrder", T0 + s, (s + 1) / 2000)])
               for s in range(20)]
    agg = _agg(results)
    rows = StatsHistory(Path("unused"), window_s=10).rows(agg, T0 + 20.5, users=3)
    assert [r[2:4] for r in rows] == [["chain", "A"], ["", "Aggregated"]]
    row = dict(zip(HISTORY_COLUMNS, rows[0], strict=True))
    assert row["Timestamp"] == int(T0 + 20.5) and row["User Count"] == 3
    assert row["Requests/s"] == 1.0  # seconds 10..19: ten chains in ten seconds
    # the window holds the chains of 11..20 ms, the totals those of 1..20 ms
    assert row["50%"] == pytest.approx(15.0, rel=1e-3)
    assert row["100%"] == pytest.approx(20.0, rel=1e-3)
    assert row["Total Request Count"] == 20
    assert row["Total Min Response Time"] == pytest.approx(1.0, rel=1e-3)
    assert row["Total Median Response Time"] == pytest.approx(10.0, rel=1e-3)


def test_csv_files_write_as_the_run_goes_and_survive_a_bad_directory(tmp_path: Path) -> None:
    agg = Aggregator(T0)
    files = CsvFiles(tmp_path / "run")
    files.tick(agg, T0 + 1, 0, 1.0)  # nothing ran yet: no file of zeros
    assert not (tmp_path / "run").exists()
    for r in synthetic(90):
        agg.add(r)
    files.tick(agg, T0 + 31, 4, 30.0)
    files.tick(agg, T0 + 32, 4, 30.0)
    history = list(csv.reader((tmp_path / "run" / "stats_history.csv").open()))
    assert history[0] == list(HISTORY_COLUMNS)
    assert len(history) == 1 + 2 * (len(agg.chains) + 1)
    stats = list(csv.reader((tmp_path / "run" / "stats.csv").open()))
    assert stats[0] == list(STATS_COLUMNS) and stats[-1][1] == "Aggregated"
    files.close(agg, 30.0)
    blocked = tmp_path / "file"
    blocked.write_text("")
    bad = CsvFiles(blocked / "run")  # its directory cannot be made: a log line, no raise
    bad.tick(agg, T0 + 31, 1, 30.0)
    bad.close(agg, 30.0)


def test_hgrm_is_hdrhistograms_distribution_in_milliseconds(tmp_path: Path) -> None:
    values = [1000 * k for k in range(1, 101)]  # 1..100 ms
    text = hgrm_text(_hist(values)).decode()
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and ln[0] != "#"][1:]
    assert float(lines[-1][0]) == pytest.approx(100.0, rel=1e-3)
    assert float(lines[-1][1]) == 1.0 and int(lines[-1][2]) == 100
    assert all(float(a[1]) <= float(b[1]) for a, b in itertools.pairwise(lines))
    mean = sum(values) / len(values) / 1000
    sd = math.sqrt(sum((v / 1000 - mean) ** 2 for v in values) / len(values))
    m = re.search(r"#\[Mean += +([0-9.]+), StdDeviation += +([0-9.]+)\]", text)
    assert m is not None, text
    assert float(m[1]) == pytest.approx(mean, rel=1e-3)
    assert float(m[2]) == pytest.approx(sd, rel=2e-3)  # in ms, like the rest
    agg = _agg(synthetic(60))
    written = write_hgrm(tmp_path, agg)
    assert sorted(p.name for p in written) == sorted(
        [f"chain-{n}.hgrm" for n, c in agg.chains.items() if c.latency.total]
        + [f"endpoint-{n}.hgrm" for n in agg.endpoints])


def _summary(**gate: Any) -> dict[str, Any]:
    lat = {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0}
    return {"run": {"id": "r1", "duration_s": 10.0},
            "totals": {"chains": 5, "chains_failed": 1, "chains_per_s": 0.5, "requests": 9,
                       "requests_failed": 1, "certificates_issued": 2, "results_lost": 0},
            "chains": {"new_order": {"count": 5, "failed": 1, "per_s": 0.5, "latency_ms": lat}},
            "endpoints": {"newOrder": {"count": 9, "failed": 1, "per_s": 0.9, "latency_ms": lat}},
            "thresholds": [
                {"expr": "error_rate < 1%", "value": 20.0, "ok": False, "reason": None,
                 "unit": "%"},
                {"expr": "p95(chain:new_order) < 1s", "value": 2.0, "ok": True, "reason": None,
                 "unit": "ms"},
                {"expr": "p95(chain:gone) < 1s", "value": None, "ok": False,
                 "reason": "no chain gone in this run", "unit": "ms"}],
            "ca_events": [{"kind": "deadlock", "at_s": 3.0, "diagnosis": "a | b"}],
            **({"gate": gate} if gate else {})}


def test_gate_cases_and_step_summary(tmp_path: Path) -> None:
    s = _summary(baseline="0001_base", regressions=["chain new_order p95 regressed 30%"],
                 aborted=None)
    cases = gate_cases(s)
    assert cases == [
        GateCase("threshold: error_rate < 1%", True, "error_rate < 1%: 20.00%"),
        GateCase("threshold: p95(chain:new_order) < 1s", False,
                 "p95(chain:new_order) < 1s: 2.00 ms"),
        GateCase("threshold: p95(chain:gone) < 1s", True,
                 "p95(chain:gone) < 1s: no chain gone in this run"),
        GateCase("baseline: 0001_base", True, "chain new_order p95 regressed 30%")]
    assert gate_cases({"thresholds": []}) == []
    md = step_summary(s, "wec: FAILED: 1 threshold failed")
    assert md.startswith("## wec load run r1\n\n**wec: FAILED: 1 threshold failed**\n")
    assert "| new_order | 5 | 1 | 0.5 | 1.0 | 2.0 | 3.0 | 4.0 |" in md
    assert "| deadlock | 3.0 | a \\| b |" in md  # a pipe in a cell does not split it
    assert "| threshold: error_rate < 1% | FAILED | error_rate < 1%: 20.00% |" in md
    target = tmp_path / "step.md"
    target.write_text("earlier step\n")
    assert append_step_summary(s, None, {"GITHUB_STEP_SUMMARY": str(target)}) == target
    assert target.read_text().startswith("earlier step\n## wec load run r1")
    assert append_step_summary(s, None, {}) is None
    assert append_step_summary(s, None, {"GITHUB_STEP_SUMMARY": str(tmp_path)}) is None


PYTEST_JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">\
<testsuite name="pytest" errors="0" failures="0" skipped="0" tests="1" time="5.0">\
<testcase classname="" name="wec-load[0]" time="4.0" /></testsuite></testsuites>"""


@pytest.mark.parametrize("wrapped", [True, False], ids=["testsuites", "lone-testsuite"])
def test_junit_gets_a_suite_of_gate_cases(tmp_path: Path, wrapped: bool) -> None:
    path = tmp_path / "j.xml"
    text = PYTEST_JUNIT if wrapped else PYTEST_JUNIT.replace(
        '<testsuites name="pytest tests">', "").replace("</testsuites>", "")
    path.write_text(text)
    cases = gate_cases(_summary())
    assert add_junit_cases(path, cases, run_id="r1")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["pytest", "wec.gate"]
    gate = suites["wec.gate"]
    assert (gate.get("tests"), gate.get("failures")) == ("3", "2")
    failed = {c.get("name"): c.find("failure") for c in gate.findall("testcase")}
    assert failed["threshold: error_rate < 1%"].get("message") == "error_rate < 1%: 20.00%"  # type: ignore[union-attr]
    assert failed["threshold: p95(chain:new_order) < 1s"] is None
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites>")
    assert not add_junit_cases(bad, cases)
    assert bad.read_text() == "<testsuites>"  # nothing lost
    assert not add_junit_cases(tmp_path / "none.xml", cases)


def _needs_stack(test: Callable[..., None]) -> Callable[..., None]:
    for mark in NEEDS_STACK:
        test = mark(test)
    return test


@pytest.mark.timeout(120)
@_needs_stack
def test_a_load_run_writes_them_all(pytester: pytest.Pytester) -> None:
    """A real run: stats_history.csv grows while it runs; at the end stats.csv, the .hgrm
    files, the job summary and a failed threshold as a failure in --junitxml."""
    out, junit, step = pytester.path / "out", pytester.path / "j.xml", pytester.path / "step.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(step)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
           "--pyargs", "pytest_wec_chains", "--wec-out", str(out), "--wec-load", "2",
           "--wec-duration", "6s",
           "--wec-mix", only("new_account", "new_order"), "--junitxml", str(junit),
           "--wec-threshold", "p95(chain:new_order) < 0.001ms",
           "--wec-threshold", "error_rate < 50%", "--wec-metrics", "0"]
    proc = subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        iter(lambda: proc.stdout.readline().decode(), "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        history = out / "stats_history.csv"

        def grew() -> bool:
            return history.exists() and len(history.read_text().splitlines()) >= 4

        wait_until(grew, 60, "stats_history.csv rows while the run goes", proc)
        assert proc.poll() is None, "rows came only at the end"
        [url] = [ln.split()[-1] for ln in list(lines) if ln.startswith("wec: metrics http")]
        with urllib.request.urlopen(url, timeout=10) as resp:
            scraped = resp.read().decode()
        proc.wait(timeout=90)
        reader.join(10)
        text = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    stats = {(r["Type"], r["Name"]): r for r in csv.DictReader((out / "stats.csv").open())}
    for name, c in summary["chains"].items():
        assert int(stats[("chain", name)]["Request Count"]) == c["count"]
        assert float(stats[("chain", name)]["95%"]) == pytest.approx(c["latency_ms"]["p95"],
                                                                     abs=0.01)
    assert int(stats[("", "Aggregated")]["Request Count"]) == summary["totals"]["requests"]
    rows = list(csv.DictReader(io.StringIO(history.read_text())))
    assert {r["Name"] for r in rows} == {"new_account", "new_order", "Aggregated"}
    assert any(int(r["User Count"]) > 0 for r in rows)
    assert (out / "hgrm" / "chain-new_order.hgrm").read_text().startswith("       Value")
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().findall("testsuite")}
    gate = suites["wec.gate"]
    assert (gate.get("tests"), gate.get("failures")) == ("2", "1")
    [failure] = gate.iter("failure")
    assert failure.get("message", "").startswith("p95(chain:new_order) < 0.001ms: ")
    # the scrape while it ran: the families, labelled with the run
    fams = {f.name: f for f in text_string_to_metric_families(scraped)}
    run_id = summary["run"]["id"]
    chains = [x for x in fams["wec_chains"].samples if x.name == "wec_chains_total"]
    assert {x.labels["chain"] for x in chains} <= {"new_account", "new_order"}
    assert all(x.labels["run"] == run_id for x in chains) and chains
    assert sum(x.value for x in chains) <= summary["totals"]["chains"] + \
        summary["totals"]["cancelled"]
    assert {"wec_request_latency_seconds", "wec_in_flight", "wec_target"} <= set(fams)
    md = step.read_text()
    assert md.startswith(f"## wec load run {summary['run']['id']}\n\n**wec: FAILED: ")
    assert "| new_order |" in md and "| threshold: error_rate < 50% | passed |" in md
