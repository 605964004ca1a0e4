"""Rate limits under load: a refused virtual user waits instead of hammering (closed model),
the open model keeps its schedule and counts its refused starts, and a whole load run
against the stub CA with limits on (bench/stubca.py ``--limits``) counts what was refused.

The CA is FakeCA in its rate-limit mode: N certificates per registered domain, then 429
``rateLimited`` with Retry-After, worded as Boulder words it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_ratelimits import issue_one, runtime

from pytest_wec._chain import ChainInfo
from pytest_wec.acme import FakeCA
from pytest_wec.acme._fakeca_limits import FakeLimits
from pytest_wec.acme._ratelimits import RATE_LIMITED
from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import build_summary, format_tables
from pytest_wec.settings import Settings
from pytest_wec.wire.results import ChainResult
from pytest_wec.worker.runner import LoadPlan, LoadRunner

pytestmark = pytest.mark.timeout(120)


async def _load(rt: Any, model: str, duration: float, *, load: int | None = None,
                rate: float | None = None, wait: float = 60.0) -> list[ChainResult]:
    results: list[ChainResult] = []
    plan = LoadPlan(model, 0, 1, load, rate, None, duration, 10.0, wait)
    runner = LoadRunner(rt, {"issue": (ChainInfo("issue", frozenset(), frozenset()), issue_one)},
                        plan, emit=results.append, choose=lambda: "issue", worker="gw0")
    await asyncio.wait_for(runner.run(), duration + 30)
    return results


def _new_orders(results: list[ChainResult]) -> int:
    return sum(r["endpoint"] == "newOrder" for c in results for r in c["requests"])


@pytest.mark.asyncio
async def test_a_refused_virtual_user_waits_instead_of_hammering() -> None:
    limits = FakeLimits(certificates_per_domain=2, retry_after=30)
    one_domain = Settings(domain="wec.example.com")
    load = 4
    # waiting: each virtual user is refused once, then waits out the run
    ca = FakeCA(limits=limits)
    t0 = time.monotonic()
    paced = await _load(runtime(ca, one_domain), "closed", 2.0, load=load)
    assert time.monotonic() - t0 < 10
    assert ca.limits is not None
    issued = ca.limits.issued["example.com"]
    assert 2 <= issued <= 2 + load - 1  # orders already made when the limit was reached
    refused = [r for r in paced if r.get("retry_after") == 30]
    assert 1 <= len(refused) <= load, len(refused)
    assert all(0 < r.get("rate_limit_wait", 0) <= 2.0 for r in refused)
    assert _new_orders(paced) <= issued + 2 * load
    assert ca.limits.refusals["CertificatesPerDomain"] == len(refused)
    # never waiting (--wec-rate-limit-wait 0): the refusals come as fast as the loop goes
    ca = FakeCA(limits=limits)
    hammered = await _load(runtime(ca, one_domain), "closed", 1.5, load=load,
                           wait=0.0)
    assert ca.limits is not None
    spun = ca.limits.refusals["CertificatesPerDomain"]
    assert spun >= 30 and spun >= 3 * len(refused), (spun, len(refused))
    assert not any(r.get("rate_limit_wait") for r in hammered)
    # what the controller makes of the waiting run
    agg = Aggregator(time.time() - 10)
    for r in paced:
        agg.add(r)
    agg = Aggregator.from_dict(agg.to_dict())  # it travels and comes back the same
    summary = build_summary(agg, {"model": "closed"}, {}, {}, None)
    rl = summary["rate_limits"]
    assert rl["refused"] == len(refused) == rl["by_limit"]["CertificatesPerDomain"]
    assert rl["chains_refused"] == {"issue": len(refused)}
    assert rl["user_waits"]["count"] == len(refused) and rl["user_waits"]["seconds"] > 0
    assert summary["totals"]["rate_limited"] == len(refused)
    assert summary["endpoints"]["newOrder"]["rate_limited"] == len(refused)
    text = format_tables(summary)
    assert f"{len(refused)} requests refused (newOrder {len(refused)}: " \
           f"CertificatesPerDomain {len(refused)})" in text
    assert any(e["type"] == RATE_LIMITED and "[CertificatesPerDomain]" in e["example"]
               for e in summary["errors"])


@pytest.mark.asyncio
async def test_the_open_model_keeps_its_schedule_and_counts_refused_starts() -> None:
    ca = FakeCA(limits=FakeLimits(certificates_per_domain=1, retry_after=30))
    results = await _load(runtime(ca, Settings(domain="wec.example.com")), "open",
                          1.0, rate=20.0)
    assert 15 <= len(results) <= 25, len(results)  # the starts asked, refused or not
    refused = [r for r in results if r.get("retry_after") == 30]
    assert len(refused) >= len(results) - 3
    assert not any("rate_limit_wait" in r for r in results)  # nobody waits in the open model
    agg = Aggregator(time.time() - 10)
    for r in results:
        agg.add(r)
    rl = build_summary(agg, {"model": "open"}, {}, {}, None)["rate_limits"]
    assert rl["chains_refused"] == {"issue": len(refused)}
    assert rl["user_waits"]["count"] == 0


# -- a whole load run against the stub CA with limits ---------------------------------------

CHAIN = '''
from pytest_wec import chain


@chain("limited_certificate", produces={"certificate"})
async def test_limited_certificate(wec):
    account = await wec.new_account()
    await wec.issue(account, wec.random_names(1))
'''


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_load_run_against_a_ca_with_limits(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from stubca import start_stub_ca

    proc, url, _bundle = start_stub_ca(tmp_path / "stub", plain=True,
                                       limits={"certificates_per_domain": 2, "retry_after": 60})
    try:
        (tmp_path / "test_limited.py").write_text(CHAIN)
        out = tmp_path / "out"
        load = 3
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
             str(tmp_path / "test_limited.py"), "--wec-directory", url,
             "--wec-domain", "wec.example.com", f"--wec-load={load}", "--wec-duration=3s",
             "--wec-grace=10s", f"--wec-out={out}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=90)
        text = run.stdout + run.stderr
        summary = json.loads((out / "summary.json").read_text())
        with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/_stub/limits", timeout=10) as r:
            truth = json.loads(r.read())
    finally:
        proc.stop()
    refusals = truth["refusals"].get("CertificatesPerDomain", 0)
    assert truth["issued"] == {"example.com": summary["totals"]["certificates_issued"]}
    assert 2 <= summary["totals"]["certificates_issued"] <= 2 + load - 1, text[-2000:]
    rl = summary["rate_limits"]
    assert 1 <= refusals <= load, (refusals, truth, text[-2000:])  # refused once, then waited
    assert rl["refused"] == refusals == rl["by_limit"]["CertificatesPerDomain"]
    assert rl["user_waits"]["count"] == refusals
    assert truth["orders"] + refusals == summary["endpoints"]["newOrder"]["count"]
    assert summary["endpoints"]["newOrder"]["rate_limited"] == refusals
    assert "rate limits:" in text and "CertificatesPerDomain" in text
    report = (out / "report.html").read_text()
    assert 'id="rate-limits-section"' in report and '"rate_limits"' in report
