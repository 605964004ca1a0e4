"""The regression gate against noise, on synthetic runs (no CA): each figure's interval from
the HDR histograms, saved in benchmark.json; A/A comparisons flag nothing, a +20% shift of
one endpoint is flagged; bounds with a floor (``p95:10%+2ms``); baselines saved before the
intervals still compare. The same with real load runs against the stub CA:
``bench/bench_regression_gate.py``."""

from __future__ import annotations

import json
import random
import statistics
from typing import Any

import pytest

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.comparison import compare, parse_compare_fail, regressions
from pytest_wec.controller.histogram import Histogram
from pytest_wec.controller.noise import change_noise, intervals, run_spread, t975
from pytest_wec.controller.outputs import build_benchmark_json, build_summary
from pytest_wec.wire.results import ChainResult, RequestResult

T0 = 1_700_000_000.0
#: the endpoints of the synthetic chain, each with its median latency (s)
ENDPOINTS = {"newAccount": 0.012, "newOrder": 0.015, "finalize": 0.020}
RUN = {"id": "r", "started": T0, "ended": T0 + 10.0, "directory": "https://ca/dir",
       "workers": 1, "model": "closed", "load": 8, "rate": None, "stages": None}


def fake_run(seed: int, *, slower: str | None = None, n: int = 2000,
             drift: float = 0.0) -> Aggregator:
    """``n`` chains over 10 s, each endpoint's latency lognormal around its median (sigma
    0.2); ``slower``: that endpoint 20% slower; ``drift``: latencies grow that fraction
    over the run (a machine getting busier)."""
    rng = random.Random(seed)
    agg = Aggregator(T0)
    for k in range(n):
        start = T0 + 10.0 * k / n
        factor = 1 + drift * k / n
        reqs: list[RequestResult] = []
        t = start
        for ep, median in ENDPOINTS.items():
            took = median * factor * rng.lognormvariate(0, 0.2) * (1.2 if ep == slower else 1)
            reqs.append({"chain_id": f"c{k}", "chain": "new_certificate", "endpoint": ep,
                         "method": "POST", "status": 200, "started": t, "took": took,
                         "ok": True, "error": None, "problem": None})
            t += took
        c: ChainResult = {"chain_id": f"c{k}", "chain": "new_certificate", "worker": "gw0",
                          "scheduled": start, "started": start, "took": t - start, "ok": True,
                          "outcome": "ok", "error": None, "certificates": 1, "requests": reqs}
        agg.add(c)
    return agg


def saved(agg: Aggregator) -> dict[str, Any]:
    """benchmark.json as a baseline stores it (through JSON)."""
    data: dict[str, Any] = json.loads(json.dumps(build_benchmark_json(agg, RUN)))
    return data


def summary(agg: Aggregator) -> dict[str, Any]:
    return build_summary(agg, RUN, {}, {}, None)


BOUNDS = "p50:10%,p95:10%,p99:20%,mean:10%,error_rate:0.5,count:5%,rate:5%"


def test_intervals_are_saved_and_cover_the_figure() -> None:
    agg = fake_run(1)
    s, b = summary(agg), saved(agg)
    e = s["endpoints"]["newOrder"]
    bench = next(x for x in b["benchmarks"] if (x["group"], x["name"]) == ("endpoint",
                                                                            "newOrder"))
    ci = bench["extra_info"]["ci"]
    assert set(ci) == set(e["ci_ms"]) == {"p50", "p95", "p99", "mean"}
    assert bench["extra_info"]["ci_method"].startswith("95% batch means over 10 stretches")
    for figure, (low, high) in e["ci_ms"].items():
        assert low < e["latency_ms"][figure] < high, (figure, low, high)
        assert ci[figure] == pytest.approx([low / 1000, high / 1000], abs=1e-8)
    # the tail is less sure than the median
    width = {f: high - low for f, (low, high) in e["ci_ms"].items()}
    assert width["p99"] > width["p95"] > width["p50"]


def test_few_samples_bound_nothing_above_and_a_drifting_run_is_less_sure() -> None:
    one = Histogram()
    one.record(5000)
    assert intervals(one)["p95"] == [0.0, None] and intervals(one)["mean"] == [0.0, None]
    few = Histogram()
    for us in range(1000, 41000, 1000):  # 40 samples: p95's upper bound is past the last
        few.record(us)
    low, high = intervals(few)["p95"]
    assert high is None and 30 < low < 38  # type: ignore[operator]
    assert intervals(few)["p50"][1] is not None
    steady = summary(fake_run(2))["endpoints"]["finalize"]["ci_ms"]["p50"]
    drifting = summary(fake_run(2, drift=0.5))["endpoints"]["finalize"]["ci_ms"]["p50"]
    assert drifting[1] - drifting[0] > 2 * (steady[1] - steady[0])


def test_a_a_flags_nothing_and_a_20_percent_shift_is_flagged() -> None:
    bounds = parse_compare_fail(BOUNDS)
    flagged_aa, hits = [], 0
    for trial in range(10):
        base = saved(fake_run(100 + trial))
        aa = regressions(compare(summary(fake_run(200 + trial)), base), bounds)
        flagged_aa += [r.message for r in aa]
        ab = regressions(compare(summary(fake_run(300 + trial, slower="newOrder")), base),
                         bounds)
        hits += any((r.diff.name, r.diff.metric) == ("newOrder", "p95") for r in ab)
        assert {r.diff.name for r in ab} <= {"newOrder", "new_certificate"}, ab
    assert len(flagged_aa) <= 1, flagged_aa  # 95% intervals, 16 figures a trial
    assert hits == 10


def test_short_a_a_runs_cried_wolf_without_the_noise() -> None:
    """Runs of 100 chains: the bare bounds (what the gate did before) flag A/A pairs; with
    the noise, at most one pair in ten (95% intervals)."""
    bounds = parse_compare_fail("p95:10%,p99:10%")
    bare = noisy = 0
    for trial in range(10):
        diffs = compare(summary(fake_run(400 + trial, n=100)), saved(fake_run(500 + trial,
                                                                               n=100)))
        bare += any(d.metric in ("p95", "p99") and d.change_pct is not None
                    and d.change_pct > 10 for d in diffs)
        noisy += bool(regressions(diffs, bounds))
    assert bare >= 3 and noisy <= 1, (bare, noisy)


def test_a_baseline_saved_without_intervals_takes_the_current_runs() -> None:
    base = saved(fake_run(5))
    for b in base["benchmarks"]:
        b["extra_info"].pop("ci", None)
        b["extra_info"].pop("ci_method", None)
    now = summary(fake_run(6))
    d = next(d for d in compare(now, base) if (d.name, d.metric) == ("newOrder", "p95"))
    low, high = now["endpoints"]["newOrder"]["ci_ms"]["p95"]
    p95 = now["endpoints"]["newOrder"]["latency_ms"]["p95"]
    assert d.noise == pytest.approx(((p95 - low) ** 2 + (high - p95) ** 2) ** 0.5, rel=1e-3)
    assert not regressions(compare(now, base), parse_compare_fail(BOUNDS))
    # neither run with intervals (two old files): no noise, the plain bound as before
    old_now = saved(fake_run(6))
    for b in old_now["benchmarks"]:
        b["extra_info"].pop("ci", None)
    assert next(d for d in compare(old_now, base)
                if (d.name, d.metric) == ("newOrder", "p95")).noise is None


def test_a_floor_in_the_bound() -> None:
    (b,) = parse_compare_fail("p95:10%+2ms")
    assert (b.metric, b.limit, b.relative, b.plus, b.text) == ("p95", 10, True, 2.0,
                                                                "10%+2 ms")
    assert b.allowed(1.3) == pytest.approx(2.13)
    (b2,) = parse_compare_fail("p99 : 5% + 0.5s")
    assert b2.plus == 500 and b2.text == "5%+0.5 s"
    # newOrder's p95 +20% (about +4 ms on 21 ms) is past 5%+2ms, not past 10%+10ms
    base = saved(fake_run(7))
    diffs = compare(summary(fake_run(8, slower="newOrder")), base)
    assert any(r.diff.name == "newOrder" for r in regressions(diffs,
                                                               parse_compare_fail("p95:5%+2ms")))
    assert not regressions(diffs, parse_compare_fail("p95:10%+10ms"))


def test_count_and_error_rate_noise() -> None:
    then = {"count": 100, "failed": 0, "rate": 10.0}
    now = {"count": 100, "failed": 1, "rate": 9.0}
    assert change_noise("count", then, now) == pytest.approx(1.96 * 200 ** 0.5)
    assert change_noise("rate", then, now) == pytest.approx(1.96 * (1.0 + 0.81) ** 0.5)
    p0, p1 = 1 / 102, 2 / 102
    assert change_noise("error_rate", then, now) == pytest.approx(
        100 * 1.96 * (p0 * (1 - p0) / 100 + p1 * (1 - p1) / 100) ** 0.5)
    assert change_noise("p95", {}, {}) is None


# -- a baseline of several saved runs ----------------------------------------------------------


def scaled(data: dict[str, Any], factor: float, name: str = "newOrder") -> dict[str, Any]:
    """A copy of a saved benchmark.json with one endpoint's times ``factor`` times longer
    (a run shifted as a whole: the machine's other load that day)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    for b in out["benchmarks"]:
        if (b["group"], b["name"]) != ("endpoint", name):
            continue
        for k in ("min", "max", "mean", "median", "stddev"):
            if isinstance(b["stats"].get(k), int | float):
                b["stats"][k] *= factor
        for k in ("p95", "p99"):
            b["extra_info"][k] *= factor
        b["extra_info"]["ci"] = {f: [v if v is None else v * factor for v in lh]
                                 for f, lh in b["extra_info"]["ci"].items()}
    return out


def p95_of(diffs: list[Any], name: str = "newOrder", metric: str = "p95") -> Any:
    return next(d for d in diffs if (d.kind, d.name, d.metric) == ("endpoint", name, metric))


def flagged(diffs: list[Any], bounds: str = "p95:10%") -> list[tuple[str, str]]:
    return [(r.diff.name, r.diff.metric) for r in regressions(diffs, parse_compare_fail(bounds))]


def bench_p95(data: dict[str, Any], name: str = "newOrder") -> float:
    b = next(b for b in data["benchmarks"] if (b["group"], b["name"]) == ("endpoint", name))
    return round(float(b["extra_info"]["p95"]) * 1000, 3)  # as the comparison reads it


def test_an_outlier_baseline_run_cries_wolf_alone_not_among_five() -> None:
    """The newest saved run was a fast outlier (newOrder 15% quicker): alone, a normal run
    looks 18% slower; the median of five runs is not fooled."""
    runs = [saved(fake_run(600 + k)) for k in range(4)]
    runs.append(scaled(saved(fake_run(604)), 0.85))
    newest_first = runs[::-1]
    now = summary(fake_run(610))
    assert ("newOrder", "p95") in flagged(compare(now, newest_first[0]))
    assert flagged(compare(now, newest_first)) == []
    d = p95_of(compare(now, newest_first))
    values = [bench_p95(r) for r in runs]
    assert d.baseline == pytest.approx(statistics.median(values))
    assert d.noise >= run_spread(values) - 1e-6  # type: ignore[operator]


def test_an_outlier_baseline_run_hides_a_change_alone_not_among_five() -> None:
    """The newest saved run was a slow outlier (newOrder 12% slower): alone, it hides a real
    +20%; against the median of five runs the change is beyond their spread."""
    runs = [saved(fake_run(620 + k)) for k in range(4)]
    runs.append(scaled(saved(fake_run(624)), 1.12))
    newest_first = runs[::-1]
    slower = summary(fake_run(630, slower="newOrder"))
    assert ("newOrder", "p95") not in flagged(compare(slower, newest_first[0]))
    assert ("newOrder", "p95") in flagged(compare(slower, newest_first))
    # the same outlier does not hide a change from K=5 in other trials either
    for trial in range(3):
        now = summary(fake_run(640 + trial, slower="newOrder"))
        assert ("newOrder", "p95") in flagged(compare(now, newest_first)), trial
        assert flagged(compare(summary(fake_run(650 + trial)), newest_first)) == [], trial


def test_a_real_shift_beyond_the_runs_spread_is_flagged() -> None:
    bounds = "p50:10%,p95:10%,p99:20%,mean:10%,error_rate:0.5,count:5%,rate:5%"
    runs = [saved(fake_run(700 + k)) for k in range(5)]
    shifted = compare(summary(fake_run(710, slower="newOrder")), runs)
    d = p95_of(shifted)
    assert d.change_pct > 10 and d.change > d.noise
    assert ("newOrder", "p95") in flagged(shifted, bounds)
    assert {name for name, _ in flagged(shifted, bounds)} <= {"newOrder", "new_certificate"}
    assert flagged(compare(summary(fake_run(711)), runs), bounds) == []
    # counts and rates: the median, their noise at least the runs' spread
    counts = compare(summary(fake_run(712, n=1900)), runs)
    c = p95_of(counts, metric="count")
    assert c.baseline == 2000 and c.current == 1900
    assert c.noise == pytest.approx(1.96 * (2000 + 1900) ** 0.5, rel=1e-4)  # the same counts


def test_one_saved_run_in_a_list_is_the_run_alone() -> None:
    base, now = saved(fake_run(720)), summary(fake_run(721, slower="newOrder"))
    assert compare(now, [base]) == compare(now, base) == compare(now, (base,))
    with pytest.raises(ValueError, match="no runs"):
        compare(now, [])
    # five copies of one run: no spread, so the noise is the run's own interval as alone
    alone, five = compare(now, base), compare(now, [base] * 5)
    assert [(d.name, d.metric, d.baseline) for d in five] == \
        [(d.name, d.metric, d.baseline) for d in alone]
    assert [d.noise for d in five] == pytest.approx([d.noise for d in alone], abs=1e-5)


def test_two_saved_runs_take_their_mean_and_t_of_one_degree() -> None:
    a, b = saved(fake_run(730)), scaled(saved(fake_run(731)), 1.05)
    now = summary(fake_run(732))
    d = p95_of(compare(now, [b, a]))
    x, y = bench_p95(a), bench_p95(b)
    assert d.baseline == pytest.approx((x + y) / 2)
    spread = 12.706 * abs(x - y) / 2 ** 0.5 * (1 + 1 / 2) ** 0.5
    assert run_spread([x, y]) == pytest.approx(spread)
    assert d.noise == pytest.approx(spread, abs=1e-5)  # far wider than either run's interval


def test_a_figure_only_some_runs_have_uses_those() -> None:
    runs = [saved(fake_run(740 + k)) for k in range(5)]
    for r in runs[:2]:  # two runs without newOrder's p99, one without finalize at all
        next(b for b in r["benchmarks"] if b["name"] == "newOrder")["extra_info"].pop("p99")
    runs[4]["benchmarks"] = [b for b in runs[4]["benchmarks"] if b["name"] != "finalize"]
    now = summary(fake_run(750))
    diffs = compare(now, runs)
    p99s = [round(1000 * next(b for b in r["benchmarks"] if b["name"] == "newOrder")
                  ["extra_info"]["p99"], 3) for r in runs[2:]]
    d = p95_of(diffs, metric="p99")
    assert d.baseline == pytest.approx(statistics.median(p99s))
    assert d.noise >= run_spread(p99s) - 1e-6  # type: ignore[operator]
    finals = [bench_p95(r, "finalize") for r in runs[:4]]
    f = p95_of(diffs, "finalize")
    assert f.baseline == pytest.approx(statistics.median(finals))
    assert f.noise >= run_spread(finals) - 1e-6  # type: ignore[operator]
    # an entry in one run only: that run's value and its own interval, as with one run
    runs[0]["benchmarks"] = [b for b in runs[0]["benchmarks"] if b["name"] != "newAccount"]
    only = [runs[0]] + [{**r, "benchmarks": [b for b in r["benchmarks"]
                                             if b["name"] != "newAccount"]} for r in runs[1:]]
    only[2] = runs[2]
    assert p95_of(compare(now, only), "newAccount") == p95_of(compare(now, runs[2]),
                                                              "newAccount")


def test_run_spread_and_t() -> None:
    assert run_spread([]) is None and run_spread([5.0]) is None
    assert run_spread([1.0, 1.0, 1.0]) == 0
    values = [10.0, 11.0, 12.0, 13.0, 14.0]
    s = 1.4826 * 1.0  # the median absolute deviation from 12 is 1
    assert run_spread(values) == pytest.approx(2.776 * s * (1 + 1 / 5) ** 0.5)
    # one outlying run hardly widens it (a standard deviation would more than double)
    assert run_spread([10.0, 11.0, 12.0, 13.0, 40.0]) == pytest.approx(run_spread(values))
    assert run_spread([10.0, 12.0]) == pytest.approx(12.706 * statistics.stdev([10.0, 12.0])
                                                      * 1.5 ** 0.5)
    assert (t975(1), t975(4), t975(30), t975(31)) == (12.706, 2.776, 2.042, 1.96)
    with pytest.raises(ValueError):
        t975(0)
