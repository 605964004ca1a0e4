"""report.html's "Rate limits" section, drawn by a real headless Chromium: requests refused
by endpoint and limit, and the waits; hidden when nothing was refused or waited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_report_html import T0, make_chain, open_offline

from pytest_wec.acme._ratelimits import RATE_LIMITED
from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import build_summary
from pytest_wec.controller.report_html import REPORT_NAME, write_report
from pytest_wec.wire.results import ChainResult


def refused_chain(k: int, limit: str | None) -> ChainResult:
    chain = make_chain(k, "new_certificate", ok=False)
    last: Any = {**chain["requests"][0], "status": 429, "ok": False, "error": "problem",
                 "problem": RATE_LIMITED}
    if limit is not None:
        last["limit"] = limit
    chain["requests"] = [chain["requests"][0] | {"endpoint": "newAccount"}, last]
    chain["retry_after"] = 30.0
    chain["rate_limit_wait"] = 12.5
    return chain


def summary(refusals: int) -> dict[str, Any]:
    agg = Aggregator(T0)
    for k in range(40):
        agg.add(make_chain(k, "new_order"))
    for k in range(refusals):
        agg.add(refused_chain(100 + k, "CertificatesPerDomain" if k % 4 else None))
    run = {"id": "r", "started": T0, "ended": T0 + 10, "model": "closed", "load": 4}
    return build_summary(agg, run, {}, {}, None)


def test_the_report_shows_the_refusals_and_the_waits(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / REPORT_NAME
    s = summary(8)
    assert s["rate_limits"]["by_limit"] == {"CertificatesPerDomain": 6, "(unnamed)": 2}
    write_report(path, s, {})
    page, requests, errors = open_offline(browser, path)
    try:
        assert not errors and not requests
        assert page.locator("#rate-limits-section").is_visible()
        rows = page.locator("#table-rate-limits tbody tr")
        assert rows.count() == 2
        text = page.locator("#table-rate-limits").inner_text()
        assert "CertificatesPerDomain" in text and "(unnamed)" in text and "newOrder" in text
        cards = page.locator("#rate-limit-waits").inner_text()
        assert "requests refused" in cards and "8" in cards and "100" in cards  # 8 x 12.5 s
    finally:
        page.context.close()
    quiet = tmp_path / "quiet.html"
    write_report(quiet, summary(0), {})
    page, requests, errors = open_offline(browser, quiet)
    try:
        assert not errors and not requests
        assert not page.locator("#rate-limits-section").is_visible()
    finally:
        page.context.close()
