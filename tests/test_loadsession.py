"""The controller's side of a load run, fed by real ResultSinks through a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from pytest_wec.controller.collector import LoadSession, rebuild, report_main
from pytest_wec.controller.resultlog import read_results
from pytest_wec.settings import Settings
from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.wire.sink import ResultSink
from pytest_wec.wire.stream import WorkerStatus, encode_batch, results_key

pytestmark = pytest.mark.redis

SUMMARY_KEYS = {"schema", "run", "totals", "chains", "endpoints", "errors", "state",
                "generator", "thresholds", "timeline", "stalls", "workers_lost", "warnings"}
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


def make_chain(k: int, worker: str, ok: bool = True) -> ChainResult:
    cid = f"{worker}-{k}"
    now = time.time()
    name = "NewOrderChain" if k % 3 else "NewAccountChain"
    reqs: list[RequestResult] = [
        {"chain_id": cid, "chain": name, "endpoint": ep, "method": "POST",
         "status": 201 if ok or ep != "newOrder" else 400, "started": now - 0.05 + i * 0.01,
         "took": 0.004 + (k % 7) / 1000, "ok": ok or ep != "newOrder", "error": None,
         "problem": None if ok or ep != "newOrder" else BAD_NONCE}
        for i, ep in enumerate(("newNonce", "newOrder", "authz"))]
    return {"chain_id": cid, "chain": name, "worker": worker, "scheduled": now - 0.06,
            "started": now - 0.05, "took": 0.02 + (k % 11) / 1000, "ok": ok,
            "outcome": "ok" if ok else "failed",
            "error": None if ok else f"{BAD_NONCE} :: bad nonce", "certificates": int(ok),
            "requests": reqs}


async def fake_worker(redis_url: str, ns: str, worker: str, n: int, *, failed_every: int = 0,
                      in_flight: int = 2, pause: float = 0.002) -> list[ChainResult]:
    sent = []
    async with ResultSink(redis_url, ns, worker, flush_interval=0.05,
                          heartbeat_interval=0.1) as sink:
        sink.set_status(in_flight=in_flight, target_share=0.5)
        for k in range(n):
            c = make_chain(k, worker, ok=not (failed_every and k % failed_every == 0))
            sink.add(c)
            sent.append(c)
            await asyncio.sleep(pause)
        sink.set_status(in_flight=0)
    return sent


def settings(**kw: Any) -> Settings:
    kw.setdefault("load", 4)
    kw.setdefault("duration", 5.0)
    return Settings(**kw)


def session(redis_url: str, run_dir: Path, lines: list[str], **kw: Any) -> LoadSession:
    s = kw.pop("settings", None) or settings()
    kw.setdefault("progress_interval", 0.1)
    return LoadSession(s, run_dir, "20261128-000000-abcdef", redis_url, uuid.uuid4().hex,
                       "https://ca.test/dir", kw.pop("workers", 2), lines.append, **kw)


def raw_entry(redis_url: str, ns: str, kind: bytes, data: bytes) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.xadd(results_key(ns), {"k": kind, "d": data})
    finally:
        client.close()


def status(worker: str, **kw: Any) -> bytes:
    st: WorkerStatus = {"worker": worker, "session": "s1", "t": time.time(), "in_flight": 0,
                        "target_share": 1.0, "loop_lag_ms": 0.0, "cpu_pct": 5.0, "cpu_s": 0.1,
                        "sent": 0, "dropped": 0, "dropped_requests": 0, "dropped_starts": 0,
                        "final": False}
    st.update(kw)  # type: ignore[typeddict-item]
    return bytes(msgpack.packb(st))


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_live_run_log_summary_benchmark_and_rebuild(redis_url: str, tmp_path: Path,
                                                     fmt: str) -> None:
    lines: list[str] = []
    run_dir = tmp_path / "run"
    ls = session(redis_url, run_dir, lines, settings=settings(log_format=fmt),
                 state_counts=lambda: {"accounts": 3, "orders": 7})
    ls.start()

    async def workers() -> list[ChainResult]:
        a, b = await asyncio.gather(
            fake_worker(redis_url, ls.namespace, "gw0", 120, failed_every=10),
            fake_worker(redis_url, ls.namespace, "gw1", 80))
        return a + b

    sent = asyncio.run(workers())
    t0 = time.monotonic()
    summary = ls.finish(timeout=10)
    assert time.monotonic() - t0 < 5

    assert ls.log_path == run_dir / f"results.{fmt}"
    logged = list(read_results(ls.log_path))
    assert sorted(c["chain_id"] for c in logged) == sorted(c["chain_id"] for c in sent)
    assert {c["chain_id"]: c for c in logged} == {c["chain_id"]: c for c in sent}

    on_disk = json.loads(ls.summary_path.read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(summary) >= SUMMARY_KEYS
    t = summary["totals"]
    assert (t["chains"], t["chains_ok"], t["chains_failed"]) == (200, 188, 12)
    assert (t["requests"], t["requests_failed"], t["certificates_issued"]) == (600, 12, 188)
    assert t["results_lost"] == 0
    assert summary["chains"]["NewAccountChain"]["count"] == 67
    run = summary["run"]
    assert run["id"] == "20261128-000000-abcdef" and run["workers"] == 2
    assert (run["model"], run["load"], run["rate"]) == ("closed", 4, None)
    assert run["directory"] == "https://ca.test/dir" and run["duration_s"] > 0
    assert summary["state"]["accounts"] == 3 and summary["state"]["orders"] == 7
    assert summary["generator"]["workers"] == 2  # saturation depends on this test's host
    assert summary["stalls"] == [] and summary["workers_lost"] == []
    assert summary["errors"][0]["type"] == BAD_NONCE

    bench = json.loads(ls.benchmark_path.read_text())
    assert {b["name"] for b in bench["benchmarks"]} >= {"NewOrderChain", "newOrder"}
    assert "NewOrderChain" in ls.tables() and "badNonce" in ls.tables()
    assert any("in flight" in line and "ok " in line for line in lines)

    assert ls.finish(timeout=10) is summary  # idempotent

    again = rebuild(ls.log_path, tmp_path / "rebuilt")
    assert again["totals"] | {"chains_per_s": 0, "requests_per_s": 0} == \
        t | {"chains_per_s": 0, "requests_per_s": 0}
    for name, entry in summary["chains"].items():
        got = again["chains"][name]
        assert (got["count"], got["ok"], got["failed"]) == (entry["count"], entry["ok"],
                                                            entry["failed"])
        assert got["latency_ms"] == entry["latency_ms"]
    assert again["endpoints"].keys() == summary["endpoints"].keys()
    assert again["errors"] == summary["errors"]
    assert again["run"]["workers"] == 2 and again["run"]["model"] == "unknown"
    assert again["run"]["id"] is None
    assert (tmp_path / "rebuilt" / "benchmark.json").is_file()


def test_stalled_ca_is_reported_once(redis_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    ls = session(redis_url, tmp_path, lines, workers=1, stall_after=0.5)
    ls.start()

    async def worker() -> None:
        async with ResultSink(redis_url, ls.namespace, "gw0", flush_interval=0.05,
                              heartbeat_interval=0.1) as sink:
            sink.set_status(in_flight=3)
            await asyncio.sleep(1.5)  # chains in flight, none finishes
            sink.set_status(in_flight=0)
            sink.add(make_chain(1, "gw0"))
            await asyncio.sleep(0.3)

    asyncio.run(worker())
    summary = ls.finish(timeout=10)
    stalled = [line for line in lines if line.startswith("wec: CA stalled")]
    assert len(stalled) == 1
    assert stalled[0].endswith("with 3 in flight")
    assert "no answer from the CA for" in stalled[0]
    [stall] = summary["stalls"]
    assert stall["in_flight"] == 3 and stall["duration_s"] >= 0.5
    assert stalled[0] in summary["warnings"]
    assert summary["totals"]["chains"] == 1 and summary["workers_lost"] == []


def test_silent_worker_is_reported_and_finish_is_bounded(redis_url: str,
                                                         tmp_path: Path) -> None:
    lines: list[str] = []
    ls = session(redis_url, tmp_path, lines, silent_after=1.0)
    ls.start()
    # gw1 sends a batch and a status with chains in flight, then dies
    doomed = [make_chain(k, "gw1") for k in range(5)]
    raw_entry(redis_url, ls.namespace, b"b", encode_batch("gw1", "s1", 0, 0, doomed))
    raw_entry(redis_url, ls.namespace, b"s", status("gw1", in_flight=2, sent=5))
    asyncio.run(fake_worker(redis_url, ls.namespace, "gw0", 40, pause=0.03))

    t0 = time.monotonic()
    summary = ls.finish(timeout=20)
    assert time.monotonic() - t0 < 4
    silent = [line for line in lines if "went silent" in line]
    assert len(silent) == 1 and silent[0].startswith("wec: worker gw1 went silent at ")
    assert "with 2 chains in flight" in silent[0]
    [lost] = summary["workers_lost"]
    assert (lost["worker"], lost["in_flight"], lost["recovered"]) == ("gw1", 2, False)
    assert summary["totals"]["chains"] == 45
    assert summary["stalls"] == []  # the dead worker's chains in flight are not a stall
    assert len(list(read_results(ls.log_path))) == 45


def test_worker_without_end_record_is_lost_at_finish(redis_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    ls = session(redis_url, tmp_path, lines, workers=1, silent_after=0.3)
    ls.start()
    raw_entry(redis_url, ls.namespace, b"s", status("gw3", in_flight=1))
    t0 = time.monotonic()
    summary = ls.finish(timeout=5)
    assert time.monotonic() - t0 < 3
    assert [x["worker"] for x in summary["workers_lost"]] == ["gw3"]
    assert any(line.startswith("wec: worker gw3 went silent") for line in lines)


def test_saturated_generator_is_reported_once(redis_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    ls = session(redis_url, tmp_path, lines, workers=1, saturation_reports=3)
    ls.start()
    ns = ls.namespace
    for lag, cpu in ((250.0, 10.0), (20.0, 10.0), (150.0, 50.0), (20.0, 97.0),
                     (320.5, 99.0), (400.0, 99.0)):
        raw_entry(redis_url, ns, b"s", status("gw0", loop_lag_ms=lag, cpu_pct=cpu))
    raw_entry(redis_url, ns, b"e", status("gw0", final=True))
    summary = ls.finish(timeout=5)
    sat = [line for line in lines if "generator saturated" in line]
    assert sat == ["wec: generator saturated on gw0 (loop lag 320 ms, cpu 99%): results show "
                   "the generator's limits, not the CA's"]
    [entry] = summary["generator"]["saturated"]
    assert entry["worker"] == "gw0" and entry["loop_lag_ms"] == 320.5
    assert summary["warnings"] == sat and summary["workers_lost"] == []


def test_finish_without_start_writes_an_empty_summary(tmp_path: Path) -> None:
    lines: list[str] = []
    ls = session("redis://127.0.0.1:1/0", tmp_path / "never", lines)
    t0 = time.monotonic()
    summary = ls.finish(timeout=5)
    assert time.monotonic() - t0 < 2
    assert summary["totals"]["chains"] == 0 and set(summary) >= SUMMARY_KEYS
    assert ls.summary_path.is_file() and ls.benchmark_path.is_file() and ls.log_path.is_file()
    assert ls.finish() is summary
    assert ls.tables().startswith("wec run 20261128-000000-abcdef: 0 chains")


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wec report: error: No such file or directory: ")
    assert "missing.jsonl" in err

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert report_main([str(text)]) == 2
    assert "not a results log" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("wec report: error: Is a directory: ")

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert report_main([str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"wec report: error: {empty}: no chain results"

    run = tmp_path / "20261128-101010-0a1b2c"
    run.mkdir()
    log = run / "results.jsonl"
    log.write_bytes(b"".join(json.dumps(make_chain(k, "gw0")).encode() + b"\n"
                             for k in range(6)))
    assert report_main([str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wec run 20261128-101010-0a1b2c: 6 chains")
    assert f"wec report: wrote {run / 'summary.json'}" in out
    assert json.loads((run / "summary.json").read_text())["rebuilt_from"] == str(log)
    # a summary next to the log is kept; the rebuild goes to rebuilt/
    (run / "summary.json").write_text('{"schema": 1}')
    assert report_main([str(log)]) == 0
    assert f"wrote {run / 'rebuilt' / 'summary.json'}" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text()) == {"schema": 1}
