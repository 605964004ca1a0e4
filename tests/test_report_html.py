"""report.html: built from a summary, self-contained, drawn by a real headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.collector import report_main
from pytest_wec.controller.outputs import build_summary
from pytest_wec.controller.report_html import REPORT_NAME, build_report, settings_view, write_report
from pytest_wec.settings import Settings, StackMode
from pytest_wec.wire.results import ChainResult, RequestResult

T0 = 1_700_000_000.0
EVIL = "</script><script>window.PWNED = 1</script>"


def make_chain(k: int, name: str, ok: bool = True) -> ChainResult:
    cid = f"c{k}"
    start = T0 + k * 0.05
    reqs: list[RequestResult] = [
        {"chain_id": cid, "chain": name, "endpoint": ep, "method": "POST",
         "status": 200 if ok or ep != "finalize" else 403, "started": start + i * 0.01,
         "took": 0.002 + (k % 5) / 1000, "ok": ok or ep != "finalize", "error": None,
         "problem": None if ok or ep != "finalize" else "urn:ietf:params:acme:error:unauthorized"}
        for i, ep in enumerate(("newOrder", "finalize"))]
    return {"chain_id": cid, "chain": name, "worker": "gw0", "scheduled": start,
            "started": start, "took": 0.03 + (k % 7) / 100, "ok": ok,
            "outcome": "ok" if ok else "failed", "error": None if ok else f"boom {EVIL}",
            "certificates": int(ok), "requests": reqs}


def summary(thresholds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    agg = Aggregator(T0)
    for k in range(240):
        agg.add(make_chain(k, "new_order" if k % 3 else "new_account", ok=k % 20 != 0))
    run = {"id": "20261128-101010-0a1b2c", "started": T0, "ended": T0 + 12.5,
           "directory": "https://ca.test/dir", "workers": 2, "model": "closed", "load": 4,
           "rate": None, "stages": None}
    return build_summary(agg, run, {"accounts": 7, "certificates": 5}, {}, thresholds)


def data_of(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="wec-data">(.*?)</script>', page, re.S)
    assert m is not None
    return dict(json.loads(m.group(1)))


# -- building ----------------------------------------------------------------------------


def test_report_is_self_contained_and_carries_the_summary() -> None:
    s = summary()
    page = build_report(s, {"--wec-load": "4"})
    assert page.startswith("<!doctype html>")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "no external resource"
    assert "default-src 'none'" in page.replace("&#x27;", "'")
    assert "uPlot" in page and "WEC.report(" in page
    # the error example cannot close the data element: one </script> per script element
    assert page.count("</script>") == page.count("<script")
    assert EVIL not in page
    data = data_of(page)
    assert data["summary"]["totals"] == s["totals"]
    assert data["summary"]["errors"][0]["example"].endswith(EVIL)
    assert len(data["summary"]["timeline"]) == 12  # 240 chains over 12 s
    assert data["settings"] == {"--wec-load": "4"}


def test_summary_has_per_second_series_by_chain_and_endpoint() -> None:
    s = summary()
    by = s["timeline_by"]
    assert sorted(by) == ["chains", "endpoints"]
    assert sorted(by["chains"]) == ["new_account", "new_order"]
    assert sorted(by["endpoints"]) == ["finalize", "newOrder"]
    for group in by.values():
        for cols in group.values():
            assert set(cols) == {"t", "count", "failed", "p50", "p95", "p99"}
            n = len(cols["t"])
            assert n and all(len(v) == n for v in cols.values())
            assert cols["t"] == sorted(cols["t"])
            assert all(a <= b <= c for a, b, c in zip(cols["p50"], cols["p95"], cols["p99"],
                                                       strict=True))
    total = sum(sum(c["count"]) for c in by["chains"].values())
    assert total == s["totals"]["chains"] == sum(e["chains"] for e in s["timeline"])
    failed = sum(sum(c["failed"]) for c in by["endpoints"].values())
    assert failed == s["totals"]["requests_failed"]


def test_settings_view_masks_secrets_and_names_sources() -> None:
    s = Settings(load=5, stages=((30.0, 10.0), (60.0, 0.0)), token="s3cret",
                 db="postgresql://wec:pw@db.test:5432/wec", redis="redis://:pw2@r.test:6379/0",
                 stack=StackMode.ON, mix={"new_order": 2.0}, dashboard=("::1", 8089),
                 sources={"load": "--wec-load", "token": "environment variable WEC_TOKEN"})
    view = settings_view(s)
    assert view["--wec-load"] == "5  (--wec-load)"
    assert view["--wec-token"] == "(set)  (environment variable WEC_TOKEN)"
    assert view["--wec-db"] == "postgresql://wec:***@db.test:5432/wec"
    assert view["--wec-redis"] == "redis://:***@r.test:6379/0"
    assert view["--wec-stages"] == "30s:10,60s:0"
    assert view["--wec-stack"] == "on"
    assert view["--wec-mix"] == "new_order=2"
    assert view["--wec-rate"] == "-"
    assert view["--wec-dashboard"] == "[::1]:8089"
    assert "s3cret" not in json.dumps(view) and "pw2" not in json.dumps(view)
    assert "sources" not in " ".join(view)


def test_write_report_and_wec_report_rebuild(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / REPORT_NAME, summary(), {})
    assert data_of((tmp_path / REPORT_NAME).read_text())["summary"]["totals"]["chains"] == 240
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_NAME]  # no temp file left

    run = tmp_path / "20261128-101010-0a1b2c"
    run.mkdir()
    log = run / "results.jsonl"
    log.write_bytes(b"".join(json.dumps(make_chain(k, "new_order")).encode() + b"\n"
                             for k in range(30)))
    assert report_main([str(log)]) == 0
    assert f"wec report: wrote {run / REPORT_NAME}" in capsys.readouterr().out
    data = data_of((run / REPORT_NAME).read_text())
    assert data["summary"]["totals"]["chains"] == 30
    assert data["summary"]["timeline_by"]["chains"]["new_order"]["count"]
    assert data["settings"]["rebuilt from"] == str(log)


# -- in a browser --------------------------------------------------------------------------


def open_offline(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    """The page from disk with every request but file: blocked and recorded."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    requests: list[str] = []
    errors: list[str] = []

    def block(route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            requests.append(route.request.url)
            route.abort()

    context.route("**/*", block)
    page = context.new_page()
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
            else requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("() => window.WEC && window.WEC.ready === true")
    return page, requests, errors


def check_report_page(page: Any) -> None:
    """Both charts drawn from non-empty data; the tables filled."""
    assert page.locator("#chart-throughput canvas").count() == 1
    assert page.locator("#chart-latency canvas").count() == 1
    assert page.evaluate("WEC.series.timeline.length") > 0
    assert page.evaluate("WEC.charts.throughput.data[1].some(v => v > 0)")
    assert page.evaluate("WEC.charts.latency.data[3].some(v => v > 0)")
    assert page.locator("#table-chains tbody tr").count() >= 1
    assert page.locator("#table-endpoints tbody tr").count() >= 1


def test_report_renders_offline_in_chromium(browser: Any, tmp_path: Path) -> None:
    thresholds = [{"expr": "p95(new_order) < 500ms", "value": 123.4, "ok": True},
                  {"expr": "failed_rate < 1%", "value": 5.0, "ok": False}]
    path = tmp_path / REPORT_NAME
    s = summary(thresholds)
    write_report(path, s, settings_view(Settings(load=4)))
    page, requests, errors = open_offline(browser, path)
    try:
        assert not errors and not requests
        check_report_page(page)
        assert page.evaluate("window.PWNED") is None
        assert EVIL in page.locator("#table-errors").inner_text()
        assert page.locator("#thresholds-section").is_visible()
        assert page.locator("#table-thresholds .fail").inner_text() == "FAIL"
        assert page.locator("#table-thresholds .pass").inner_text() == "pass"
        assert "--wec-load" in page.locator("#table-settings").inner_text()
        # one endpoint's latency over time, picked from its table row
        page.locator("#table-endpoints tbody tr", has_text="finalize").click()
        assert page.locator("#latency-of").input_value() == "endpoint:finalize"
        assert page.evaluate("WEC.charts.latency.data[2].filter(v => v != null).length") > 0
        if "overall" in s:  # every chain together, as the last row
            last = page.locator("#table-chains tbody tr").last
            assert last.inner_text().split("\t")[:2] == ["all chains", "240"]
            last.click()
            assert page.locator("#latency-of").input_value() == "chains"
    finally:
        page.context.close()


def test_report_without_thresholds_hides_the_section(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / REPORT_NAME
    write_report(path, summary(), {})
    page, requests, errors = open_offline(browser, path)
    try:
        assert not errors and not requests
        assert not page.locator("#thresholds-section").is_visible()
        assert not page.locator("#controls-section").is_visible()
    finally:
        page.context.close()
