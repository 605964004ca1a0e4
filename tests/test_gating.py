"""CI gating: thresholds, early abort, baselines, regressions and their text (no CA)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.baseline import (
    check_save_name,
    find_baseline,
    find_baselines,
    load_baseline,
    load_benchmark,
    machine_id,
    parse_storage,
    save_baseline,
)
from pytest_wec.controller.comparison import (
    compare,
    format_diffs,
    parse_compare_fail,
    regressions,
)
from pytest_wec.controller.gating import (
    ABORT_MIN_SAMPLE,
    EXIT_GATE_FAILED,
    GateResult,
    Verdict,
    can_no_longer_pass,
    doomed,
    evaluate,
    format_verdicts,
    gate,
)
from pytest_wec.controller.outputs import build_benchmark_json, build_summary, write_json_atomic
from pytest_wec.controller.thresholds import (
    Threshold,
    format_value,
    parse_threshold,
    parse_thresholds,
)
from pytest_wec.errors import BaselineError
from pytest_wec.wire.results import ChainResult, RequestResult

T0 = 1_700_000_000.0
ENDPOINTS_OF = {"new_order": ("newNonce", "newOrder"),
                "new_certificate": ("newOrder", "finalize", "certificate"),
                "revoke_certificate": ("revokeCert",)}


def make_chain(k: int, name: str, took: float, ok: bool = True) -> ChainResult:
    """A chain run whose requests share ``took``; a failed run fails its last request."""
    eps = ENDPOINTS_OF[name]
    reqs: list[RequestResult] = [
        {"chain_id": f"c{k}", "chain": name, "endpoint": ep, "method": "POST",
         "status": 200 if ok or i < len(eps) - 1 else 403, "started": T0 + k * 0.1,
         "took": took / len(eps), "ok": ok or i < len(eps) - 1, "error": None,
         "problem": None} for i, ep in enumerate(eps)]
    return {"chain_id": f"c{k}", "chain": name, "worker": "gw0", "scheduled": T0 + k * 0.1,
            "started": T0 + k * 0.1, "took": took, "ok": ok,
            "outcome": "ok" if ok else "failed", "error": None if ok else "boom: no",
            "certificates": int(ok and name == "new_certificate"), "requests": reqs}


def make_agg(slow: float = 1.0, fail_every: int = 5) -> Aggregator:
    """100 new_order (0.100..0.199 s), 50 new_certificate (0.5..0.99 s, every
    ``fail_every``-th failed) and 10 revoke_certificate runs, latencies times ``slow``."""
    agg = Aggregator(T0)
    for k in range(100):
        agg.add(make_chain(k, "new_order", (0.1 + k / 1000) * slow))
    for k in range(50):
        agg.add(make_chain(100 + k, "new_certificate", (0.5 + k / 100) * slow,
                           ok=k % fail_every != 0))
    for k in range(10):
        agg.add(make_chain(200 + k, "revoke_certificate", 0.05 * slow))
    return agg


RUN = {"id": "r1", "started": T0, "ended": T0 + 20.0, "directory": "https://ca/dir",
       "workers": 1, "model": "closed", "load": 10, "rate": None, "stages": None}


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    return build_summary(make_agg(), RUN, {}, {}, None)


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical", "fields"), [
    ("p95(endpoint:newOrder) < 500ms", None, ("p95", "endpoint", "newOrder", "<", 500, "ms")),
    ("p99(chain:new_certificate) < 3s", None, ("p99", "chain", "new_certificate", "<", 3, "s")),
    ("p50 < 200ms", None, ("p50", "total", "requests", "<", 200, "ms")),
    ("p90(chains) <= 1s", None, ("p90", "total", "chains", "<=", 1, "s")),
    ("p999(requests)<250", "p999(requests) < 250", ("p999", "total", "requests", "<", 250, "ms")),
    ("p99.9 < 1s", "p999 < 1s", ("p999", "total", "requests", "<", 1, "s")),
    ("error_rate < 1%", None, ("error_rate", "total", "chains", "<", 1, "%")),
    ("error_rate(chain:revoke_certificate) < 0.1%", None,
     ("error_rate", "chain", "revoke_certificate", "<", 0.1, "%")),
    ("error_rate(requests) <= 0.01", None, ("error_rate", "total", "requests", "<=", 0.01, "")),
    ("rate(chains) >= 50/s", None, ("rate", "total", "chains", ">=", 50, "/s")),
    ("rate(requests) > 10/s", None, ("rate", "total", "requests", ">", 10, "/s")),
    ("rate(certificates_issued) > 2", None,
     ("rate", "total", "certificates_issued", ">", 2, "/s")),
    ("count(certificates_issued) >= 100", None,
     ("count", "total", "certificates_issued", ">=", 100, "")),
    ("count(chain:new_order) >= 10", None, ("count", "chain", "new_order", ">=", 10, "")),
    ("count == 0", None, ("count", "total", "chains", "==", 0, "")),
    ("max(endpoint:finalize) < 2s", None, ("max", "endpoint", "finalize", "<", 2, "s")),
    ("min(chain:new_order) > 1.5e1 ms", "min(chain:new_order) > 1.5e1ms",
     ("min", "chain", "new_order", ">", 15, "ms")),
    ("  MEAN ( chain : new_order )  <=  .5s ", "mean(chain:new_order) <= .5s",
     ("mean", "chain", "new_order", "<=", 0.5, "s")),
])
def test_parse_every_form(text: str, canonical: str | None,
                          fields: tuple[str, str, str, str, float, str]) -> None:
    t = parse_threshold(text)
    assert (t.func, t.scope, t.name, t.op, t.limit, t.unit) == fields
    assert t.text == str(t) == (canonical or text)
    assert parse_threshold(t.text) == t


@pytest.mark.parametrize(("text", "message"), [
    ("hello", "expected FUNC[(SELECTOR)] OP VALUE such as 'p95(endpoint:newOrder) < 500ms' "
              "(functions: pN (any percentile, e.g. p95, p99.5), min, mean, max, error_rate, "
              "rate, count; selectors: chain:NAME, endpoint:NAME, phase:NAME, chains, "
              "requests, certificates_issued, and ', corrected' after a chain selector; "
              "operators: < <= > >= ==; units: ms, s (latency), % (error_rate), /s (rate), "
              "none (count))"),
    ("", "expected FUNC[(SELECTOR)] OP VALUE"),
    ("p95 < ", "expected FUNC[(SELECTOR)] OP VALUE"),
    ("p95 < 3 ms extra", "p95 takes a duration in ms or s (bare numbers are ms), not 'ms extra'"),
    ("q95 < 3ms", "unknown function 'q95' (functions: pN (any percentile, e.g. p95, p99.5), "
                  "min, mean, max, error_rate, rate, count)"),
    ("p95 = 3ms", "unknown operator '=' (operators: < <= > >= ==)"),
    ("p95 != 3ms", "unknown operator '!=' (operators: < <= > >= ==)"),
    ("p95 =< 3ms", "unknown operator '=<' (operators: < <= > >= ==)"),
    ("p95(chain:) < 3", "unknown selector 'chain:' for p95 (selectors: chain:NAME, "
                        "endpoint:NAME, phase:NAME, requests, chains)"),
    ("p95(chian:x) < 3", "unknown selector 'chian:x' for p95"),
    ("p95(certificates_issued) < 3", "unknown selector 'certificates_issued' for p95"),
    ("error_rate(certificates_issued) < 3%", "unknown selector 'certificates_issued' for "
                                             "error_rate (selectors: chain:NAME, endpoint:NAME,"
                                             " chains, requests)"),
    ("count(bogus) > 3", "unknown selector 'bogus' for count (selectors: chain:NAME, "
                         "endpoint:NAME, phase:NAME, chains, requests, certificates_issued, "
                         "chains_ok"),
    ("p95(endpoint:neworder) < 3", "unknown endpoint 'neworder' (did you mean newOrder? "
                                   "endpoints: directory, newNonce,"),
    ("p95(endpoint:nope) < 3", "unknown endpoint 'nope' (endpoints: directory"),
    ("p95 < 3%", "p95 takes a duration in ms or s (bare numbers are ms), not '%'"),
    ("p95 < 3/s", "p95 takes a duration in ms or s (bare numbers are ms), not '/s'"),
    ("error_rate < 5ms", "error_rate takes a percentage such as 1% or a fraction from 0 to 1 "
                         "such as 0.01, not 'ms'"),
    ("error_rate < 5", "error_rate takes a percentage such as 1% or a fraction from 0 to 1"),
    ("error_rate < 101%", "error_rate takes a percentage such as 1%"),
    ("rate(chains) > 5ms", "rate takes a rate such as 50/s, not 'ms'"),
    ("count < 3s", "count takes a plain number, not 's'"),
    ("count < 3%", "count takes a plain number, not '%'"),
    ("p95 < -3ms", "p95 needs a limit >= 0"),
])
def test_parse_errors_say_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_threshold(text)
    assert str(exc.value).startswith(message)


def test_parse_thresholds_lines_semicolons_and_comments() -> None:
    ts = parse_thresholds("p95 < 500ms\n# a comment\n\n error_rate < 1% ; rate(chains) > 1/s\n")
    assert [t.text for t in ts] == ["p95 < 500ms", "error_rate < 1%", "rate(chains) > 1/s"]
    assert parse_thresholds(["p50 < 1s", "count > 1\nmax < 2s"])[2].func == "max"
    assert parse_thresholds("") == ()
    with pytest.raises(ValueError, match=r"^unknown function 'q96' \(functions: .*\)$"):
        parse_thresholds("q96 < 1s")
    with pytest.raises(ValueError, match=r"^unknown function 'q96' .* \(in 'q96 < 1s'\)$"):
        parse_thresholds("p95 < 1s\nq96 < 1s")


# -- evaluation ------------------------------------------------------------------------------


def _one(text: str, summary: dict[str, Any]) -> Verdict:
    (v,) = evaluate([parse_threshold(text)], summary)
    return v


def test_evaluate_latency_in_the_expression_unit(summary: dict[str, Any]) -> None:
    lat = summary["endpoints"]["newOrder"]["latency_ms"]
    v = _one("p95(endpoint:newOrder) < 400ms", summary)
    assert (v.value, v.ok, v.unit) == (lat["p95"], True, "ms")
    assert v.reason == f"{lat['p95']:.1f} ms < 400 ms"
    v = _one("max(chain:new_certificate) < 0.9s", summary)
    assert (v.value, v.ok, v.unit) == (0.99, False, "s")
    assert v.reason == "0.990 s, not < 0.9 s" and v.value_text == "0.990 s"
    v = _one("p99(chain:new_certificate) <= 3s", summary)
    assert v.ok and v.value == summary["chains"]["new_certificate"]["latency_ms"]["p99"] / 1000
    assert _one("min(chain:new_order) >= 100ms", summary).value == 100.0
    mean = _one("mean(chains) < 1s", summary)
    assert mean.value == summary["overall"]["chains"]["latency_ms"]["mean"] / 1000


def test_evaluate_overall_requests_from_merged_histograms(summary: dict[str, Any]) -> None:
    overall = summary["overall"]["requests"]
    assert overall["count"] == summary["totals"]["requests"] == 100 * 2 + 50 * 3 + 10
    assert overall["latency_ms"]["max"] == max(
        e["latency_ms"]["max"] for e in summary["endpoints"].values())
    v = _one("p50 < 200ms", summary)
    assert v.ok and v.value == overall["latency_ms"]["p50"]
    older = {k: v for k, v in summary.items() if k != "overall"}
    v = _one("p50 < 200ms", older)
    assert (v.ok, v.value, v.reason) == (False, None, "no overall latency of requests in the "
                                                      "summary")


def test_evaluate_error_rates_rates_and_counts(summary: dict[str, Any]) -> None:
    # 10 of 50 new_certificate runs failed; 160 chains in all; 20 s run
    v = _one("error_rate < 5%", summary)
    assert (v.value, v.ok, v.reason) == (6.25, False, "6.25%, not < 5%")
    assert _one("error_rate < 0.07", summary).value == 0.0625
    v = _one("error_rate(chain:new_certificate) <= 20%", summary)
    assert (v.value, v.ok) == (20.0, True)
    v = _one("error_rate(endpoint:certificate) < 0.1%", summary)
    assert (v.value, v.ok) == (20.0, False)
    assert _one("error_rate(requests) < 3%", summary).value == pytest.approx(100 * 10 / 360)
    assert _one("error_rate(chain:revoke_certificate) == 0%", summary).ok
    v = _one("rate(chains) >= 50/s", summary)
    assert (v.value, v.ok, v.reason) == (8.0, False, "8.00/s, not >= 50/s")
    assert _one("rate(requests) > 10/s", summary).value == 18.0
    assert _one("rate(chain:new_order) == 5/s", summary).ok
    assert _one("rate(certificates_issued) > 1", summary).value == 2.0
    v = _one("count(certificates_issued) >= 100", summary)
    assert (v.value, v.ok, v.reason) == (40.0, False, "40, not >= 100")
    assert _one("count(chain:new_order) >= 10", summary).ok
    assert _one("count(endpoint:revokeCert) == 10", summary).ok
    assert _one("count(chains_failed) < 11", summary).ok


@pytest.mark.parametrize(("text", "reason"), [
    ("p95(chain:nope) < 1s", "no data for chain:nope"),
    ("error_rate(chain:nope) < 1%", "no data for chain:nope"),
    ("count(chain:nope) >= 0", "no data for chain:nope"),
    ("rate(chain:nope) >= 0/s", "no data for chain:nope"),
    ("max(endpoint:keyChange) < 1s", "no data for endpoint:keyChange"),
    ("error_rate(endpoint:keyChange) < 1%", "no data for endpoint:keyChange"),
])
def test_no_data_fails_with_a_clear_reason(summary: dict[str, Any], text: str,
                                           reason: str) -> None:
    v = _one(text, summary)
    assert (v.ok, v.value, v.reason, v.value_text) == (False, None, reason, "-")


def test_a_chain_with_only_cancelled_runs_has_no_latency() -> None:
    agg = Aggregator(T0)
    c = make_chain(1, "new_order", 0.1)
    agg.add({**c, "outcome": "cancelled", "ok": False, "requests": []})
    s = build_summary(agg, RUN, {}, {}, None)
    assert _one("count(chain:new_order) == 0", s).ok
    assert _one("p95(chain:new_order) < 1s", s).reason == "no data for chain:new_order"
    assert _one("error_rate < 1%", s).reason == "no data for chains"
    assert _one("p50 < 1s", s).reason == "no data for requests"


# -- early abort -----------------------------------------------------------------------------


def _live(n_ok: int, n_failed: int, took: float = 0.1) -> dict[str, Any]:
    agg = Aggregator(T0)
    for k in range(n_ok + n_failed):
        agg.add(make_chain(k, "new_order", took, ok=k >= n_failed))
    return build_summary(agg, {**RUN, "ended": T0 + 10}, {}, {}, None)


@pytest.mark.parametrize(("text", "elapsed", "doomed_now"), [
    ("max(chain:new_order) < 50ms", 10, True),  # already 100 ms: only grows
    ("max(chain:new_order) <= 100ms", 10, False),
    ("max(endpoint:newOrder) == 10ms", 10, True),
    ("max(chain:new_order) > 1s", 10, False),  # may still come
    ("min(chain:new_order) > 200ms", 10, True),  # already 100 ms: only shrinks
    ("min(chain:new_order) < 50ms", 10, False),
    ("count(chains) < 100", 10, True),  # 200 already
    ("count(chains) == 150", 10, True),
    ("count(chains) >= 10000", 10, False),  # counts cannot be decided early
    ("count(chains) == 5000", 10, False),
    ("p95(chain:new_order) < 50ms", 10, False),  # percentiles: at the end only
    ("mean < 1ms", 10, False),
    ("rate(chains) > 1000/s", 10, False),
    ("error_rate < 1%", 10, True),  # 50 of 200 failed, no time left
    ("error_rate < 1%", 0, False),
    ("error_rate < 40%", 1, False),  # 25% now, much of the run to come
    ("error_rate < 10%", 5, False),  # all ok from now at twice the throughput: 8.1%
    ("error_rate < 5%", 5, True),
    ("error_rate > 50%", 10, False),
    ("error_rate(chain:nope) < 1%", 10, False),
    ("p95(chain:nope) < 1ms", 10, False),
])
def test_can_no_longer_pass(text: str, elapsed: float, doomed_now: bool) -> None:
    live = _live(150, 50)
    assert can_no_longer_pass(parse_threshold(text), live, elapsed, 10.0) is doomed_now


def test_error_rate_needs_a_minimum_sample() -> None:
    t = parse_threshold("error_rate < 1%")
    small = _live(ABORT_MIN_SAMPLE // 2 - 1, ABORT_MIN_SAMPLE // 2)
    assert not can_no_longer_pass(t, small, 10, 10)
    assert can_no_longer_pass(t, _live(ABORT_MIN_SAMPLE // 2, ABORT_MIN_SAMPLE // 2), 10, 10)


def test_doomed_gives_the_verdicts_to_report() -> None:
    ts = parse_thresholds("max(chain:new_order) < 50ms\np95 < 1ms\ncount(chains) < 1")
    (a, b) = doomed(ts, _live(200, 0), 5, 60)
    assert (a.expr, a.ok, a.reason) == ("max(chain:new_order) < 50ms", False,
                                        "100.0 ms, not < 50 ms")
    assert (b.expr, b.value) == ("count(chains) < 1", 200.0)


# -- baselines -------------------------------------------------------------------------------


def _write_bench(path: Path, agg: Aggregator) -> Path:
    write_json_atomic(path, build_benchmark_json(agg, RUN, commit_info={"id": "x"}))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {"same": _write_bench(tmp_path / "same.json", make_agg()),
            "slow": _write_bench(tmp_path / "slow.json", make_agg(slow=1.5, fail_every=2))}


def test_save_in_pytest_benchmark_layout(runs: dict[str, Path], tmp_path: Path) -> None:
    from pytest_benchmark.utils import get_machine_id

    storage = tmp_path / ".benchmarks"
    here = storage / get_machine_id()  # type: ignore[no-untyped-call]
    assert machine_id() == here.name
    first = save_baseline(runs["same"], "main", storage)
    second = save_baseline(runs["slow"], "main", storage)
    other = save_baseline(runs["same"], "nightly", str(storage))
    assert (first, second, other) == (here / "0001_main.json", here / "0002_main.json",
                                      here / "0003_nightly.json")
    assert first.read_bytes() == runs["same"].read_bytes()
    assert sorted(p.name for p in here.iterdir()) == ["0001_main.json", "0002_main.json",
                                                       "0003_nightly.json"]
    with pytest.raises(ValueError, match=r"^expected a name without any of"):
        save_baseline(runs["same"], "a/b", storage)
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"benchmarks": []}')
    with pytest.raises(BaselineError, match=r"not a wec benchmark\.json"):
        save_baseline(bogus, "x", storage)
    assert sorted(p.name for p in here.iterdir())[-1] == "0003_nightly.json"


def test_find_baseline(runs: dict[str, Path], tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks"
    with pytest.raises(BaselineError) as exc:
        find_baseline("latest", storage)
    assert str(exc.value) == (f"no saved run in {storage / machine_id()}; {storage} does not "
                              "exist; save a run with --wec-save NAME")
    a = save_baseline(runs["same"], "main", storage)
    b = save_baseline(runs["slow"], "nightly", storage)
    c = save_baseline(runs["same"], "main", storage)
    assert find_baseline("latest", storage) == find_baseline("", storage) == c
    assert find_baseline("main", storage) == c
    assert find_baseline("nightly", storage) == find_baseline("0002", storage) == b
    assert find_baseline("0001_main", storage) == a
    assert find_baseline(f"{machine_id()}/main", storage) == c
    assert find_baseline(str(runs["slow"]), storage) == runs["slow"]
    elsewhere = storage / "Linux-CPython-3.99-64bit"
    elsewhere.mkdir()
    shutil.copy(a, elsewhere / "0007_old.json")
    assert find_baseline("Linux-CPython-3.99-64bit/latest", storage) == elsewhere / "0007_old.json"
    with pytest.raises(BaselineError) as exc:
        find_baseline("old", storage)
    assert str(exc.value) == (
        f"no saved run 'old' in {storage / machine_id()}; saved runs: "
        f"{machine_id()} (this machine): 0001_main, 0002_nightly, 0003_main; "
        "Linux-CPython-3.99-64bit: 0007_old")
    with pytest.raises(BaselineError, match=r"^no such file: nope/run\.json$"):
        find_baseline("nope/run.json", storage)
    with pytest.raises(BaselineError, match=r"^no such file, and no machine id 'nope' in .*"
                                            r"saved runs: "):
        find_baseline("nope/main", storage)


def test_load_baseline_and_parse_storage(runs: dict[str, Path], tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks"
    save_baseline(runs["same"], "main", storage)
    base = load_baseline("main", storage)
    assert base.label == "0001_main" and base.data["benchmarks"]
    assert load_baseline(str(runs["slow"]), storage).label == str(runs["slow"])
    assert parse_storage("file://.benchmarks") == parse_storage(".benchmarks") == \
        Path(".benchmarks")
    for bad in ("elasticsearch+https://h/i", "file://", " "):
        with pytest.raises(ValueError, match=r"^expected a directory or file://DIR$"):
            parse_storage(bad)
    assert check_save_name("main run") == "main run"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(BaselineError, match=r"broken\.json is not JSON"):
        load_benchmark(broken)
    with pytest.raises(BaselineError, match=r"^cannot read .*missing\.json"):
        load_benchmark(tmp_path / "missing.json")


def test_a_baseline_of_several_saved_runs(runs: dict[str, Path], summary: dict[str, Any],
                                          tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks"
    here = storage / machine_id()
    for name in ("main", "main", "nightly", "main", "main"):
        save_baseline(runs["same"], name, storage)
    mains = [here / f"{n}_main.json" for n in ("0005", "0004", "0002", "0001")]
    assert find_baselines("main", storage, 5) == mains  # newest first, of that name only
    assert find_baselines("main", storage, 3) == mains[:3]
    assert find_baselines("main", storage) == find_baselines("main", storage, 1) == mains[:1]
    assert find_baselines("latest", storage, 2) == mains[:2]  # the newest run's name
    assert find_baselines(f"{machine_id()}/main", storage, 5) == mains
    for spec in ("0004", "0004_main", str(mains[1])):  # one run named: that run alone
        assert find_baselines(spec, storage, 5) == [mains[1]]
    assert find_baselines("nightly", storage, 5) == [here / "0003_nightly.json"]

    base = load_baseline("main", storage, 3)
    assert base.label == "main (median of 3 runs, 0002_main .. 0005_main)"
    assert (base.path, base.paths, len(base.runs)) == (mains[0], tuple(mains[:3]), 3)
    assert base.compared == base.runs
    one = load_baseline("main", storage, 1)  # K=1: the newest alone, as before
    assert (one.label, one.compared, one.paths) == ("0005_main", one.data, (mains[0],))
    assert load_baseline("nightly", storage, 5).label == "0003_nightly"
    with pytest.raises(ValueError, match=">= 1"):
        load_baseline("main", storage, 0)

    result = gate(summary, (), base, parse_compare_fail("p95:10%"))
    assert result.line() == ("wec: PASSED: no regressions against main (median of 3 runs, "
                             "0002_main .. 0005_main)")
    assert result.text().splitlines()[0] == (
        "wec vs baseline main (median of 3 runs, 0002_main .. 0005_main): 0 regressions")
    assert result.diffs == gate(summary, (), one, parse_compare_fail("p95:10%")).diffs


def test_pytest_benchmark_compare_reads_saved_runs(runs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks"
    save_baseline(runs["same"], "base", storage)
    save_baseline(runs["slow"], "slow", storage)
    exe = Path(sys.executable).parent / "pytest-benchmark"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "pytest_benchmark"]
    for args in (["--storage", f"file://{storage}", "compare"],
                 ["--storage", str(storage), "compare", "0001", "0002"]):
        proc = subprocess.run([*cli, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        for name in ("0001_base", "0002_slow", "new_certificate", "newOrder", "finalize"):
            assert name in proc.stdout


# -- comparing -------------------------------------------------------------------------------


def test_the_same_run_does_not_regress(runs: dict[str, Path], summary: dict[str, Any]) -> None:
    bounds = parse_compare_fail("p50:1%,p95:1%,p99:1%,mean:1%,error_rate:0,count:1%,rate:1%")
    for current in (runs["same"], load_benchmark(runs["same"]), summary):
        diffs = compare(current, runs["same"])
        assert {(d.kind, d.name) for d in diffs} == {
            ("chain", "new_order"), ("chain", "new_certificate"), ("chain", "revoke_certificate"),
            ("endpoint", "newNonce"), ("endpoint", "newOrder"), ("endpoint", "finalize"),
            ("endpoint", "certificate"), ("endpoint", "revokeCert")}
        assert len(diffs) == 8 * 7
        assert all(d.change == 0 and d.change_pct in (0, None) for d in diffs), diffs
        assert regressions(diffs, bounds) == []


def test_a_slower_run_regresses(runs: dict[str, Path]) -> None:
    diffs = compare(runs["slow"], runs["same"])
    d = next(d for d in diffs if (d.kind, d.name, d.metric) == ("chain", "new_certificate", "p95"))
    assert d.current == pytest.approx(1.5 * d.baseline, rel=0.002)  # type: ignore[operator]
    assert d.change_pct == pytest.approx(50, abs=0.3) and d.unit == "ms"
    e = next(d for d in diffs
             if (d.kind, d.name, d.metric) == ("chain", "new_certificate", "error_rate"))
    assert (e.baseline, e.current, e.change) == (20.0, 50.0, 30.0)
    found = regressions(diffs, parse_compare_fail("p95:10%,error_rate:0.5"))
    assert {(r.diff.kind, r.diff.name, r.diff.metric) for r in found} >= {
        ("chain", "new_certificate", "error_rate"), ("chain", "new_order", "p95")}
    assert not any(r.diff.name == "revoke_certificate" and r.diff.metric == "error_rate"
                   for r in found)
    # 50 samples cannot bound a p95 from above (that takes 59): too few to tell, however
    # much it grew
    assert d.noise == float("inf") and ("new_certificate", "p95") not in {
        (r.diff.name, r.diff.metric) for r in found}
    n = next(d for d in diffs if (d.kind, d.name, d.metric) == ("chain", "new_order", "p95"))
    r = next(r for r in found if (r.diff.name, r.diff.metric) == ("new_order", "p95"))
    assert n.noise is not None and 0 < n.noise < n.change  # type: ignore[operator]
    assert r.message == (f"chain new_order p95 regressed {r.amount:.1f}% "
                         f"({n.baseline:.1f} ms -> {n.current:.1f} ms; noise "
                         f"\u00b1{format_value(n.noise, 'ms')}; bound 10%)")
    assert r.short == f"chain new_order p95 +{r.amount:.1f}%"
    r = next(r for r in found if (r.diff.name, r.diff.metric) == ("new_certificate",
                                                                    "error_rate"))
    # binomial noise of 10 and 25 failures in 50: 1.96 * sqrt(p0 q0 / 50 + p1 q1 / 50)
    assert e.noise == pytest.approx(17.89, abs=0.01)
    assert r.message == ("chain new_certificate error_rate regressed 30.00 pp (20.00% -> "
                         "50.00%; noise \u00b117.89 pp; bound 0.5 pp)")
    # absolute bounds, and drops in count and rate the other way round
    assert not regressions(diffs, parse_compare_fail("p95:0.5s"))
    (slower,) = regressions([n], parse_compare_fail("p95:50ms"))
    assert slower.message.startswith("chain new_order p95 regressed ")
    assert "bound 50 ms)" in slower.message
    assert not regressions([n], parse_compare_fail("p95:100ms"))
    p95s = regressions(diffs, parse_compare_fail("p95:10%"))
    assert {r.diff.name for r in p95s} == {"new_order", "newNonce"}  # 100 runs each
    assert regressions(diffs, parse_compare_fail("p95:10%"), min_count=100) == p95s
    assert not regressions(diffs, parse_compare_fail("p95:10%"), min_count=101)
    back = compare(runs["same"], runs["slow"])
    assert not regressions(back, parse_compare_fail("p95:10%,error_rate:0.5,count:1%"))


def test_entries_new_or_gone_are_no_regression(runs: dict[str, Path]) -> None:
    data = load_benchmark(runs["same"])
    fewer = {**data, "benchmarks": [b for b in data["benchmarks"] if b["name"] != "new_order"]}
    diffs = compare(runs["same"], fewer)
    new = [d for d in diffs if d.name == "new_order"]
    assert new and all(d.baseline is None and d.change is None for d in new)
    assert not regressions(diffs, parse_compare_fail("p95:1%,count:1%"))
    gone = [d for d in compare(fewer, runs["same"]) if d.name == "new_order"]
    assert all(d.current is None for d in gone)
    text = format_diffs(compare(fewer, runs["same"]), [])
    assert "gone" in text


@pytest.mark.parametrize(("spec", "bounds"), [
    ("p95:10%,p99:20%,error_rate:0.5",
     [("p95", 10, True, "10%"), ("p99", 20, True, "20%"), ("error_rate", 0.5, False, "0.5 pp")]),
    ("p50:50ms, mean : 0.2s", [("p50", 50, False, "50 ms"), ("mean", 200, False, "0.2 s")]),
    ("error_rate:1pp,count:20%,rate:5.5%",
     [("error_rate", 1, False, "1 pp"), ("count", 20, True, "20%"), ("rate", 5.5, True, "5.5%")]),
])
def test_parse_compare_fail(spec: str, bounds: list[tuple[str, float, bool, str]]) -> None:
    got = parse_compare_fail(spec)
    assert [(b.metric, b.limit, b.relative, b.text) for b in got] == bounds


@pytest.mark.parametrize(("spec", "start"), [
    ("", "expected METRIC:BOUND[,...] such as p95:10%,p99:20%,error_rate:0.5 (p50, p95, p99, "
         "mean: a percent of the baseline such as 10%, an increase such as 50ms, or both such "
         "as 10%+2ms; error_rate: percentage points such as 0.5; count, rate: a percent drop "
         "such as 20%)"),
    ("error_rate:1+2ms", "error_rate does not take '1+2ms'; expected"),
    ("p95:10ms+2ms", "p95 does not take '10ms+2ms'; expected"),
    ("p95", "expected METRIC:BOUND"),
    ("p95:10%,", "expected METRIC:BOUND"),
    ("p95:-1%", "expected METRIC:BOUND"),
    ("p97:10%", "unknown metric 'p97'; expected METRIC:BOUND"),
    ("p95:10", "p95 does not take '10'; expected METRIC:BOUND"),
    ("error_rate:1%", "error_rate does not take '1%'; expected"),
    ("count:5", "count does not take '5'; expected"),
    ("rate:5ms", "rate does not take '5ms'; expected"),
])
def test_parse_compare_fail_errors(spec: str, start: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_compare_fail(spec)
    assert str(exc.value).startswith(start)


# -- text and exit status --------------------------------------------------------------------


def test_format_verdicts(summary: dict[str, Any]) -> None:
    vs = evaluate(parse_thresholds("count(chain:new_order) >= 10\nerror_rate < 5%\n"
                                   "p95(chain:nope) < 1s"), summary)
    assert format_verdicts(vs).splitlines() == [
        "wec thresholds: 1 of 3 passed",
        "threshold                     value  result",
        "count(chain:new_order) >= 10    100  ok",
        "error_rate < 5%               6.25%  FAILED",
        "p95(chain:nope) < 1s              -  FAILED (no data for chain:nope)"]
    assert format_verdicts([]) == ""


def test_format_diffs(runs: dict[str, Path]) -> None:
    diffs = compare(runs["slow"], runs["same"])
    found = regressions(diffs, parse_compare_fail("p95:60%,error_rate:10"))
    text = format_diffs(diffs, found, label="0001_main")
    lines = text.splitlines()
    assert lines[0] == "wec vs baseline 0001_main: 2 regressions"
    assert lines[2].split() == ["chain", "count", "per", "s", "p50", "ms", "p95", "ms", "p99",
                                "ms", "mean", "ms", "errors", "%"]
    row = next(line for line in lines if line.startswith("new_certificate "))
    assert "50.00 (+30.00)!" in row and row.count("!") == 1
    assert "50 (+0.0%)" in row
    assert lines[-2:] == [r.message for r in found]
    assert [(r.diff.name, r.diff.metric) for r in found] == [("new_certificate", "error_rate"),
                                                             ("certificate", "error_rate")]
    assert any(line.startswith("endpoint ") for line in lines)


def test_gate_result_line_and_exit_status(summary: dict[str, Any],
                                          runs: dict[str, Path], tmp_path: Path) -> None:
    ts = parse_thresholds("p95(endpoint:newOrder) < 10ms\nerror_rate < 1%\n"
                          "count(chain:nope) > 0\ncount(chains) > 1")
    res = gate(summary, ts)
    p95 = summary["endpoints"]["newOrder"]["latency_ms"]["p95"]
    assert res.line() == (f"wec: FAILED: 3 thresholds failed (p95(endpoint:newOrder) < 10ms: "
                          f"{p95:.1f} ms; error_rate < 1%: 6.25%; count(chain:nope) > 0: "
                          "no data for chain:nope)")
    assert (res.failed, res.exit_status(0), res.exit_status(1)) == (True, EXIT_GATE_FAILED, 1)
    assert (res.exit_status(2), res.exit_status(5)) == (2, 5)
    ok = gate(summary, ts[3:])
    assert ok.line() == "wec: PASSED: 1 threshold passed"
    assert (ok.failed, ok.exit_status(0), ok.exit_status(1)) == (False, 0, 1)
    assert GateResult().line() is None and not GateResult().active

    storage = tmp_path / ".benchmarks"
    save_baseline(runs["same"], "main", storage)
    base = load_baseline("latest", storage)
    same = gate(summary, ts[3:], base, parse_compare_fail("p95:10%"))
    assert same.line() == "wec: PASSED: 1 threshold passed, no regressions against 0001_main"
    slow = build_summary(make_agg(slow=1.5), RUN, {}, {}, None)
    bounds = parse_compare_fail("p50:10%,p95:10%,p99:10%")
    worse = gate(slow, (), base, bounds)
    # every latency 1.5 times slower: a regression wherever the change is past 10% of the
    # baseline and past its noise (p95 needs 59 samples, p99 299, to be bounded above)
    beyond = [d for d in worse.diffs if d.metric in ("p50", "p95", "p99")
              and d.change is not None and d.change > 0.1 * d.baseline  # type: ignore[operator]
              and d.change > (d.noise or 0)]
    n = len(worse.regressions)
    assert n == len(beyond) >= 8, [(d.name, d.metric, d.change, d.noise) for d in beyond]
    assert worse.line() is not None and worse.line().startswith(  # type: ignore[union-attr]
        f"wec: FAILED: {n} regressions (chain new_certificate p50 +")
    assert worse.line().endswith(f"; and {n - 3} more)")  # type: ignore[union-attr]
    assert f"wec vs baseline 0001_main: {n} regressions" in worse.text()
    assert json.loads(json.dumps(worse.to_dict()))["failed"] is True

    aborted = GateResult(verdicts=tuple(doomed(ts[:1], summary, 5, 10)),
                         aborted="p95(endpoint:newOrder) < 10ms can no longer pass")
    assert aborted.exit_status(2) == EXIT_GATE_FAILED and aborted.exit_status(3) == 3
    assert aborted.line().startswith(  # type: ignore[union-attr]
        "wec: FAILED: aborted: p95(endpoint:newOrder) < 10ms can no longer pass")


def test_exit_status_constant() -> None:
    assert EXIT_GATE_FAILED == 7
    assert EXIT_GATE_FAILED not in {int(code) for code in pytest.ExitCode}


def test_threshold_is_a_frozen_value() -> None:
    t = parse_threshold("p95 < 1s")
    assert isinstance(t, Threshold) and hash(t) == hash(parse_threshold("p95 < 1s"))
    with pytest.raises(AttributeError):
        t.limit = 2  # type: ignore[misc]
