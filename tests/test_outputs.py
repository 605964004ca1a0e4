"""summary.json, benchmark.json (read by pytest-benchmark compare) and the terminal text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import (
    build_benchmark_json,
    build_summary,
    format_progress,
    format_tables,
    write_json_atomic,
)
from pytest_wec.wire.results import ChainResult, RequestResult

T0 = 1_700_000_000.0
LATENCY_KEYS = {"min", "mean", "p50", "p90", "p95", "p99", "p999", "max"}


def make_chain(k: int, name: str, took: float, ok: bool = True) -> ChainResult:
    cid = f"c{k}"
    reqs: list[RequestResult] = [
        {"chain_id": cid, "chain": name, "endpoint": ep, "method": "POST",
         "status": 200 if ok or ep != "finalize" else 403, "started": T0 + k * 0.1,
         "took": took / 2, "ok": ok or ep != "finalize", "error": None if ok else "problem",
         "problem": None if ok or ep != "finalize" else "urn:ietf:params:acme:error:unauthorized"}
        for ep in ("newOrder", "finalize")]
    return {"chain_id": cid, "chain": name, "worker": "gw0", "scheduled": T0 + k * 0.1 - 0.2,
            "started": T0 + k * 0.1, "took": took, "ok": ok, "outcome": "ok" if ok else "failed",
            "error": None if ok else "urn:ietf:params:acme:error:unauthorized :: no",
            "certificates": int(ok), "requests": reqs}


@pytest.fixture
def agg() -> Aggregator:
    a = Aggregator(T0)
    for k in range(200):
        a.add(make_chain(k, "NewCertificateChain" if k % 2 else "NewAccountChain",
                         0.1 + (k % 10) / 100, ok=k % 25 != 0))
    a.add_dropped(5)
    a.add_status({"worker": "gw0", "t": T0 + 20, "cpu_pct": 71.5, "cpu_s": 9.25,
                  "loop_lag_ms": 3.0, "dropped": 0})
    return a


RUN = {"id": "r1", "started": T0, "ended": T0 + 20.0, "directory": "https://ca/dir",
       "workers": 2, "model": "open", "load": None, "rate": 10.0, "stages": None}


def test_summary_schema(agg: Aggregator, tmp_path: Path) -> None:
    s = build_summary(agg, RUN, {"accounts": 3, "certificates": 4}, {}, None)
    assert s["schema"] == 1
    required = {"schema", "run", "totals", "chains", "endpoints", "errors", "state", "generator"}
    assert required <= set(s)
    assert set(s["run"]) == {"id", "started", "ended", "duration_s", "directory", "workers",
                             "model", "load", "rate", "stages", "load_started", "load_ended",
                             "startup_s", "startup", "tail_s", "missing_at_start", "pebbles"}
    assert {"chains", "chains_ok", "chains_failed", "requests", "requests_failed",
            "chains_per_s", "requests_per_s", "certificates_issued",
            "dropped_starts"} <= set(s["totals"])
    for group in (s["chains"], s["endpoints"]):
        for entry in group.values():
            assert {"count", "ok", "failed", "per_s", "latency_ms"} <= set(entry)
            assert set(entry["latency_ms"]) == LATENCY_KEYS
    assert set(s["state"]) == {"accounts", "authorizations", "certificates", "revoked"}
    assert {"cpu_s", "max_cpu_pct", "schedule_lag_ms"} <= set(s["generator"])
    assert set(s["generator"]["schedule_lag_ms"]) == {"p50", "p99", "max"}
    for e in s["errors"]:
        assert set(e) == {"chain", "endpoint", "type", "count", "example"}

    t = s["totals"]
    assert (t["chains"], t["chains_failed"]) == (200, 8)
    assert (t["requests"], t["requests_failed"]) == (400, 8)
    assert t["chains_per_s"] == 10.0 and t["certificates_issued"] == 192
    assert t["dropped_starts"] == 5 and s["run"]["duration_s"] == 20.0
    lat = s["chains"]["NewAccountChain"]["latency_ms"]
    assert lat["min"] == 100.0 and lat["max"] == 180.0 and lat["p50"] == pytest.approx(140, 0.01)
    assert "latency_from_scheduled_ms" in s["chains"]["NewAccountChain"]
    assert s["chains"]["NewAccountChain"]["latency_from_scheduled_ms"]["min"] == 300.0
    assert s["generator"]["cpu_s"] == 9.25 and s["generator"]["schedule_lag_ms"]["p50"] == 200.0
    assert s["state"]["accounts"] == 3 and s["state"]["revoked"] == 0
    assert s["errors"][0]["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert sum(p["chains"] for p in s["timeline"]) == 200

    path = tmp_path / "summary.json"
    write_json_atomic(path, s)
    assert json.loads(path.read_text()) == json.loads(json.dumps(s))
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    closed = build_summary(agg, {**RUN, "model": "closed"}, {}, {"cpu_s": 1.0}, [])
    assert "latency_from_scheduled_ms" not in closed["chains"]["NewAccountChain"]
    assert closed["generator"]["cpu_s"] == 1.0


def _benchmark_cli() -> list[str]:
    exe = Path(sys.executable).parent / "pytest-benchmark"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pytest-benchmark")
    return [found] if found else [sys.executable, "-m", "pytest_benchmark"]


def test_benchmark_json_is_read_by_pytest_benchmark_compare(agg: Aggregator,
                                                            tmp_path: Path) -> None:
    data: dict[str, Any] = build_benchmark_json(agg, RUN, commit_info={"id": "x", "dirty": False})
    names = {(b["group"], b["name"]) for b in data["benchmarks"]}
    assert ("chain", "NewAccountChain") in names and ("endpoint", "finalize") in names
    bench = next(b for b in data["benchmarks"] if b["name"] == "NewAccountChain")
    st = bench["stats"]
    assert st["rounds"] == 100 and st["min"] == 0.1 and st["max"] == 0.18
    assert st["q1"] <= st["median"] <= st["q3"] and st["ops"] == pytest.approx(1 / st["mean"])
    assert bench["extra_info"]["p99"] == pytest.approx(0.18, rel=0.002)
    first, second = tmp_path / "0001_a.json", tmp_path / "0002_b.json"
    write_json_atomic(first, data)
    write_json_atomic(second, data)
    proc = subprocess.run([*_benchmark_cli(), "compare", str(first), str(second)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("NewAccountChain", "NewCertificateChain", "newOrder", "finalize"):
        assert name in proc.stdout


def test_format_tables_and_progress(agg: Aggregator) -> None:
    text = format_tables(build_summary(agg, RUN, {}, {}, None))
    lines = text.splitlines()
    assert lines[0].startswith("wec run r1: 200 chains (8 failed")
    header = next(line for line in lines if line.startswith("chain "))
    assert header.split() == ["chain", "count", "ok", "failed", "per", "s", "p50", "ms", "p95",
                              "ms", "p99", "ms", "max", "ms"]
    row = next(line for line in lines if line.startswith("NewAccountChain"))
    assert row.split()[1:4] == ["100", "96", "4"]
    assert any(line.startswith("endpoint ") for line in lines)
    assert any(line.split()[:4] == ["4", "unauthorized", "NewAccountChain", "finalize"]
               for line in lines)
    line = format_progress(agg, T0 + 20.0, duration_s=600, in_flight=12)
    assert line.startswith("wec 0m20s/10m00s  in flight 12  ")
    assert "ok 192  failed 8  p95 " in line and "chains/s" in line
    assert "p95 -" in format_progress(Aggregator(T0), T0 + 1)
