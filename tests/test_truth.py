"""A whole load run against the programmed stub CA (bench/bench_truth.py, smaller): what the
report says is what the CA did.

The run's counts must equal the CA's, request for request, phase for phase, and so must the
count phases' percentiles (polls, validation requests per authorization). A time can only
be longer on the client's side than on the CA's (the client sends before the CA receives,
and reads after it answered; HDR reads a bucket's highest value), so every reported
percentile is at least the true one; how close it comes is the benchmark's to say, not a
test's, so the upper side is only checked against gross errors (a phase measured from the
wrong request is off by a whole request's delay or more).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_truth import compare, rank, reported_figures, run_scenario, truth_figures

pytestmark = [pytest.mark.redis, pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server")]

#: every answer and wait long enough that a wrong start or end shows plainly
PROGRAM = {"delays": {"*": "lognormal:40ms:120ms", "newNonce": "1ms", "directory": "1ms"},
           "validation": "lognormal:150ms:300ms", "issuance": "lognormal:100ms:200ms",
           "requests": [1, 3], "seed": 3}
THRESHOLDS = ("p95(phase:validation) < 60s", "max(phase:polls) < 1000",
              "p99.5(chains, corrected) < 60s", "p96(phase:time_to_certificate) < 60s")


def test_the_report_is_what_the_ca_did(tmp_path: Path) -> None:
    args = [a for t in THRESHOLDS for a in ("--wec-threshold", t)]
    summary, truth, _took = run_scenario("closed", tmp_path, duration=3.0, load=4,
                                         program=PROGRAM, extra_args=args, timeout=120)
    assert summary["_exit_status"] == 0, summary["_output"][-3000:]
    totals = summary["totals"]
    assert totals["chains"] >= 4 and totals["chains_failed"] == 0, totals
    rows = {(r["group"], r["name"]): r for r in
            compare(truth_figures(truth), reported_figures(summary))}
    # the CA's first validation request sent, from the challenge's answer (ms)
    sent_first = [(a["first_request"] - a["answered"]) * 1000 for a in truth["authzs"].values()
                  if "valid" in a and "answered" in a and "first_request" in a]
    for key in [("endpoint", e) for e in ("newAccount", "newOrder", "authz", "challenge",
                                          "finalize", "order", "certificate", "renewalInfo")] \
            + [("phase", p) for p in ("validation", "first_validation_request",
                                      "validation_requests", "issuance",
                                      "time_to_certificate", "polls")] \
            + [("chain", "truth_certificate")]:
        row = rows[key]
        assert row["n_reported"] == row["n_true"] > 0, row
        for p, reported, true, _err, _ok in row["cells"]:
            assert reported is not None and true is not None, (key, p)
            if key[1] in ("polls", "validation_requests"):
                assert reported == true, (key, p, reported, true)
                continue
            # the client's figures add the loopback's delays to the CA's, but for the end
            # of first_validation_request: the challenge server's own stamp, after the CA
            # sent its request and before the CA read the answer (the truth's end)
            if key[1] == "first_validation_request":
                true = rank(sent_first, p)
            # (a percentile of an HDR histogram of 3 significant digits is its bucket's,
            # within 0.1% below the value)
            assert reported >= true - max(0.001, true * 0.001), (key, p, reported, true)
            assert reported < true + max(0.5 * true, 30.0), (key, p, reported, true)
    # every authorization is seen validated 1 to 3 times, as programmed
    counts = summary["phases"]["validation_requests"]["values"]
    assert counts["min"] >= 1 and counts["max"] <= 3
    # the thresholds were judged on the same figures
    verdicts = {v["expr"]: v for v in summary["thresholds"]}
    assert all(v["ok"] for v in verdicts.values()), verdicts
    polls = verdicts["max(phase:polls) < 1000"]["value"]
    assert polls == summary["phases"]["polls"]["values"]["max"]
    assert "p96" in summary["phases"]["time_to_certificate"]["latency_ms"]
    # the terminal's tables and the report have them too
    assert "time_to_certificate" in summary["_output"]
    report = (tmp_path / "closed" / "report.html").read_text()
    assert '"time_to_certificate"' in report and 'id="table-phases"' in report
    # the connections the requests opened, timed apart from the requests' latency
    assert summary["connections"]["opened"] >= 1, summary["connections"]
    assert "connections opened" in summary["_output"] and 'id="table-connections"' in report
