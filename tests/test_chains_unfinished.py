"""The chains that never finish an issuance, against the real embedded Pebble:
``all_but_finalize`` (every step but finalize) and ``abandoned_order`` (orders left pending).

Each runs once as the integration suite runs it (``pytest --pyargs pytest_wec_chains -k
...``), then both under a short load beside the chains that do issue, which must not be
disturbed by them (they deactivate nothing and leave nothing another chain is handed).
"""

from __future__ import annotations

import json

import pytest
from _loadruns import NEEDS_STACK, only

pytestmark = [*NEEDS_STACK, pytest.mark.timeout(240)]

CHAINS = "pytest_wec_chains"


@pytest.mark.parametrize(("select", "test"), [
    ("abandoned", "test_abandoned_order"),
    ("all_but_finalize", "test_all_but_finalize"),
])
def test_runs_once_against_pebble(pytester: pytest.Pytester, select: str, test: str) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", CHAINS, "-k", select, "-p", "no:cacheprovider", "-p", "no:xdist", "-v",
        "--wec-out", str(pytester.path / "out"), timeout=200)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{test} PASSED*"])


def test_under_load_beside_chains_that_issue(pytester: pytest.Pytester) -> None:
    out = pytester.path / "out"
    mix = only("new_account", "new_certificate", "all_but_finalize", "abandoned_order")
    result = pytester.runpytest_subprocess(
        "--pyargs", CHAINS, "-p", "no:cacheprovider", "-p", "no:xdist", "--wec-load=4",
        "--wec-duration=3s", f"--wec-mix={mix}", "--wec-out", str(out), timeout=200)
    assert result.ret == 0, result.stdout.str()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    chains = summary["chains"]
    for name in ("all_but_finalize", "abandoned_order", "new_certificate"):
        assert chains[name]["ok"] >= 1, (name, chains.get(name))
    assert summary["totals"]["chains_failed"] == 0, summary["errors"]
    # neither finalized an order: the certificates are new_certificate's alone; and the
    # abandoned orders' challenges were never answered (one name an order: one challenge
    # for each chain that validated; a chain cancelled at the end may have done either)
    cancelled = summary["totals"]["cancelled"]
    endpoints = summary["endpoints"]
    issued = chains["new_certificate"]["ok"]
    assert summary["totals"]["certificates_issued"] - issued <= cancelled
    assert 0 <= endpoints["finalize"]["count"] - issued <= cancelled
    answered = chains["all_but_finalize"]["ok"] + issued
    assert 0 <= endpoints["challenge"]["count"] - answered <= cancelled, endpoints["challenge"]
