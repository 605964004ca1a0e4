"""The generator's health in the verdict: the own part of the schedule lag, CPU time over
the limit, the achieved rate against the asked one, and the gate they fail unless
``--wec-allow-saturated`` (no CA but for the one real saturated run at the end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _loadruns import NEEDS_STACK, only

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.gating import EXIT_GATE_FAILED, gate
from pytest_wec.controller.health import HotTime, asked_starts, assess
from pytest_wec.plugin import SETTINGS_KEY
from pytest_wec.wire.results import ChainResult
from pytest_wec.worker.runner import own_lag

pytestmark = pytest.mark.usefixtures("judge_the_generator")

T0 = 1_700_000_000.0


def chain(k: int, scheduled: float, lag: float, own: float | None,
          outcome: str = "ok") -> ChainResult:
    c: ChainResult = {"chain_id": f"c{k}", "chain": "new_account", "worker": "gw0",
                      "scheduled": scheduled, "started": scheduled + lag, "took": 0.01,
                      "ok": outcome == "ok", "outcome": outcome, "error": None,
                      "certificates": 0, "requests": []}
    if own is not None:
        c["lag_own"] = own
    return c


def status(t: float, cpu_s: float, worker: str = "gw0", session: str = "s1") -> dict[str, Any]:
    return {"worker": worker, "session": session, "t": t, "cpu_s": cpu_s, "cpu_pct": 0.0}


def open_run(**kw: Any) -> dict[str, Any]:
    run = {"model": "open", "rate": 10.0, "stages": None, "load": 50, "workers": 1,
           "load_started": T0, "started": T0, "ended": T0 + 10.0}
    run.update(kw)
    return run


def filled(n: int = 100, own: float = 0.0, lag: float = 0.02) -> Aggregator:
    """``n`` starts at 10/s from T0, each late by ``lag`` (by the clock), ``own`` of which
    the generator's own work explains; CPU at 20% throughout."""
    agg = Aggregator(T0)
    agg.until = T0 + 10.0
    for k in range(n):
        agg.add(chain(k, T0 + k / 10, lag, own))
    for s in range(12):
        agg.add_status(status(T0 - 1 + s, 0.2 * s))
    return agg


def test_own_lag_counts_the_generators_cpu_not_the_clock() -> None:
    # slept as planned (10 ms), woke 8 ms late having spent 1 ms of CPU: the machine's
    assert own_lag(0.0, 0.001, 0.010, 0.008) == 0.0
    # busy 16 ms of an 18 ms wait planned at 10: 6 ms of the 8 late are the generator's
    assert own_lag(0.0, 0.016, 0.010, 0.008) == pytest.approx(0.006)
    # behind, no sleep: what it carried and what it spent since, at most the lateness
    assert own_lag(0.004, 0.0005, 0.0, 0.003) == pytest.approx(0.003)
    assert own_lag(0.001, 0.0005, 0.0, 0.003) == pytest.approx(0.0015)
    assert own_lag(0.0, 0.5, 0.0, -0.001) == 0.0  # early: no lag


def test_hot_time_is_the_share_of_the_load_window() -> None:
    hot = HotTime()
    for t, cpu in ((0, 0.0), (1, 0.95), (2, 1.9), (3, 2.0), (4, 2.1), (5, 3.05)):
        hot.status(status(T0 + t, cpu))
    hot.status(status(T0 + 3.5, 9.0))  # late: an older record, skipped
    hot.status(status(T0 + 5, 3.05))  # the same record again
    assert hot.hot == {"gw0": [[T0, T0 + 2], [T0 + 4, T0 + 5]]}
    assert hot.share("gw0", T0, T0 + 10) == pytest.approx(0.3)
    assert hot.share("gw0", T0 + 1, T0 + 3) == pytest.approx(0.5)  # start-up and tail apart
    assert hot.share("gw1", T0, T0 + 10) == 0.0
    again = HotTime.from_plain(json.loads(json.dumps(hot.to_plain())))
    assert again.hot == hot.hot
    other = HotTime()
    other.status(status(T0 + 6, 0.0, session="s2"))
    other.status(status(T0 + 7, 1.0, session="s2"))
    hot.merge(other)
    assert hot.share("gw0", T0, T0 + 10) == pytest.approx(0.4)


def test_asked_starts_follow_stages_and_the_dashboard() -> None:
    assert asked_starts(10.0, None, 6.0) == 60.0
    assert asked_starts(None, [(4, 10), (2, 10)], 6.0) == pytest.approx(20 + 20)  # ramp
    assert asked_starts(None, [(4, 10), (2, 10)], 3.0) == pytest.approx(11.25)
    changed = [{"at_s": 2.0, "target": 20.0}, {"at_s": 4.0, "stop": True}]
    assert asked_starts(10.0, None, 6.0, changed) == pytest.approx(20 + 80)


def test_a_healthy_open_run() -> None:
    h = assess(filled(own=0.0005, lag=0.012), open_run())
    assert h["ok"] is True and h["reason"] is None and h["saturated"] is False
    by = {c["name"]: c for c in h["criteria"]}
    assert set(by) == {"schedule_lag", "cpu", "rate"}
    assert by["schedule_lag"]["value"] == pytest.approx(0.5, abs=0.01)
    assert "own part of 12.00 ms by the clock" in by["schedule_lag"]["text"]  # not ours
    assert by["cpu"]["value"] == 0.0 and by["rate"]["value"] == 10.0


def test_the_generators_own_lag_saturates() -> None:
    h = assess(filled(own=0.007), open_run())
    assert h["ok"] is False and h["saturated"] is True
    assert h["reason"].startswith("generator saturated (schedule lag p99 7.0")
    res = gate({"generator": {"health": h}})
    assert res.failed and res.exit_status(0) == EXIT_GATE_FAILED
    assert res.line() == f"wec: FAILED: {h['reason']}; --wec-allow-saturated accepts it"
    assert res.to_dict()["health"] == h["reason"]
    allowed = gate({"generator": {"health": h}}, allow_saturated=True)
    assert not allowed.failed and allowed.exit_status(0) == 0
    assert allowed.line() == (f"wec: PASSED: {h['reason']}, allowed by "
                              "--wec-allow-saturated")
    assert allowed.to_dict()["saturated_allowed"] == h["reason"]
    assert gate({"generator": {"health": assess(filled(), open_run())}}).line() is None


def test_cpu_over_the_limit_for_more_than_a_tenth_of_the_load() -> None:
    agg = filled()
    for s in range(12):  # a second worker: at 95% from second 2 to 4 of the load
        agg.add_status(status(T0 - 1 + s, 0.2 * s + 0.95 * min(max(s - 3, 0), 2),
                              worker="gw1"))
    h = assess(agg, open_run(workers=2))
    assert h["cpu_over_limit"] == {"gw0": 0.0, "gw1": 0.2}
    assert h["saturated"] and "worker gw1's CPU over 90% for 20% of the time under load" \
        in h["reason"]


def test_a_rate_short_of_the_asked_one() -> None:
    agg = filled(n=95)
    agg.add_dropped(3)
    h = assess(agg, open_run())
    assert h["ok"] is False and h["saturated"] is False
    assert h["reason"] == ("generator short of the asked rate (achieved 9.50/s of 10.00/s "
                           "asked (-5.0%, short by more than 1%; 95 starts of 100 asked; 3 "
                           "dropped over the cap of 50 in flight))")
    assert assess(filled(n=99), open_run())["ok"] is True  # one start: the rounding
    late = filled(n=100)
    late.add(chain(100, T0 + 9.99, 0.5, 0.0))  # due in the window, started after it
    assert late.starts_late == 1
    assert assess(late, open_run())["ok"] is True


def test_the_closed_model_has_no_schedule_to_lag() -> None:
    agg = filled(own=None, lag=0.0)  # type: ignore[arg-type]
    h = assess(agg, open_run(model="closed", rate=None))
    assert [c["name"] for c in h["criteria"]] == ["cpu"] and h["ok"]


def test_allow_saturated_is_an_option_triple(pytester: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert pytester.parseconfigure().stash[SETTINGS_KEY].allow_saturated is False
    s = pytester.parseconfigure("--wec-allow-saturated").stash[SETTINGS_KEY]
    assert s.allow_saturated is True
    monkeypatch.setenv("WEC_ALLOW_SATURATED", "yes")
    assert pytester.parseconfigure().stash[SETTINGS_KEY].allow_saturated is True
    monkeypatch.delenv("WEC_ALLOW_SATURATED")
    pytester.makeini("[pytest]\nwec_allow_saturated = true\n")
    assert pytester.parseconfigure().stash[SETTINGS_KEY].allow_saturated is True


@pytest.mark.timeout(120)
@NEEDS_STACK[0]
@NEEDS_STACK[1]
@NEEDS_STACK[2]
def test_a_saturated_generator_fails_the_run(pytester: pytest.Pytester) -> None:
    """1,500 starts a second of new_account in one process: the generator cannot keep up
    (its own lag, the starts dropped at the cap), whatever else the machine runs."""
    out = pytester.path / "sat"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", "--pyargs", "pytest_wec_chains", "--wec-out",
        str(out), "--wec-rate", "1500", "--wec-load", "1000", "--wec-duration", "3s",
        "--wec-mix", only("new_account"), timeout=100)
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == EXIT_GATE_FAILED, text
    assert "1 passed" in text and "INTERNALERROR" not in text
    last = [line for line in result.outlines if line.strip()][-1]
    s = json.loads((out / "summary.json").read_text())
    h = s["generator"]["health"]
    assert h["saturated"] is True and s["gate"]["health"] == h["reason"], h
    assert last == f"wec: FAILED: {h['reason']}; --wec-allow-saturated accepts it"
    lag = next(c for c in h["criteria"] if c["name"] == "schedule_lag")
    assert lag["ok"] is False and lag["value"] == s["generator"]["own_schedule_lag_ms"]["p99"]
    assert f"wec generator: {h['reason']}" in text
    assert Path(out / "benchmark.json").is_file()
