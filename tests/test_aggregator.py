"""Aggregator: counts, HDR percentiles against exact computations, merge, per-second series."""

from __future__ import annotations

import json
import random

import msgpack
import pytest
from hdrh.histogram import HdrHistogram

from pytest_wec.controller.aggregator import HIGHEST_US, Aggregator, Histogram
from pytest_wec.wire.results import ChainResult, RequestResult

T0 = 1_700_000_000.0


def req(chain_id: str, chain: str, endpoint: str, started: float, took: float, ok: bool = True,
        problem: str | None = None, status: int = 200) -> RequestResult:
    return {"chain_id": chain_id, "chain": chain, "endpoint": endpoint, "method": "POST",
            "status": status if ok else 400, "started": started, "took": took, "ok": ok,
            "error": None if ok else "problem", "problem": problem}


def chain(chain_id: str, name: str, started: float, took: float, *, scheduled: float | None = None,
          outcome: str = "ok", error: str | None = None, certificates: int = 0,
          requests: list[RequestResult] | None = None) -> ChainResult:
    return {"chain_id": chain_id, "chain": name, "worker": "gw0",
            "scheduled": started if scheduled is None else scheduled, "started": started,
            "took": took, "ok": outcome == "ok", "outcome": outcome, "error": error,
            "certificates": certificates, "requests": requests or []}


def synthetic(n: int, seed: int = 7) -> list[ChainResult]:
    rnd = random.Random(seed)
    out = []
    for k in range(n):
        name = ("A", "B", "C")[k % 3]
        started = T0 + rnd.uniform(0, 30)
        reqs = []
        t = started
        for ep in ("newNonce", "newOrder", "finalize"):
            took = rnd.lognormvariate(-4, 1.2)
            ok = rnd.random() > 0.05
            reqs.append(req(f"c{k}", name, ep, t, took, ok,
                            None if ok else "urn:ietf:params:acme:error:badNonce"))
            t += took
        outcome = rnd.choice(["ok"] * 8 + ["failed", "cancelled", "skipped"])
        out.append(chain(f"c{k}", name, started, t - started,
                         scheduled=started - rnd.uniform(0, 0.5), outcome=outcome,
                         error=None if outcome == "ok" else "AssertionError: nope",
                         certificates=int(outcome == "ok"), requests=reqs))
    return out


def exact_percentile(values: list[int], p: float) -> int:
    """The value at percentile p as HDR defines it: the smallest v with count(<= v) >= target."""
    data = sorted(values)
    target = max(int(p * len(data) / 100 + 0.5), 1)
    return data[target - 1]


def test_histogram_percentiles_match_hdrhistogram() -> None:
    rnd = random.Random(3)
    values = [int(rnd.lognormvariate(9, 2.5)) for _ in range(20_000)] + [0, 1, HIGHEST_US]
    values = [min(v, HIGHEST_US) for v in values]
    ours, theirs = Histogram(), HdrHistogram(1, HIGHEST_US, 3)
    for v in values:
        ours.record(v)
        theirs.record_value(v)
    ps = [0, 1, 25, 50, 90, 95, 99, 99.9, 99.99, 100]
    assert ours.percentiles(ps) == [theirs.get_value_at_percentile(p) for p in ps]
    for p, got in zip(ps, ours.percentiles(ps), strict=True):
        want = exact_percentile(values, p)
        assert abs(got - want) <= max(want * 0.001, 1), (p, got, want)
    assert (ours.total, ours.min, ours.max, ours.sum) == (len(values), 0, HIGHEST_US, sum(values))


def test_histogram_hdr_encoding_round_trip() -> None:
    h = Histogram()
    for v in (5, 1000, 123_456, 99_999_999, 99_999_999):
        h.record(v)
    b64 = h.encode()
    assert b64.startswith("HIST")
    hdr = HdrHistogram.decode(b64.encode())
    assert hdr.get_total_count() == 5
    assert hdr.get_value_at_percentile(50) == h.percentiles([50])[0]
    back = Histogram.decode(b64)
    assert back.counts == h.counts and back.total == h.total
    assert Histogram.from_plain(h.to_plain()) == h
    assert Histogram.from_plain(Histogram().to_plain()) == Histogram()


def test_counts_latencies_and_outcomes() -> None:
    agg = Aggregator(T0)
    agg.add(chain("1", "A", T0 + 0.2, 0.5, certificates=1,
                  requests=[req("1", "A", "newOrder", T0 + 0.2, 0.1),
                            req("1", "A", "finalize", T0 + 0.3, 0.2)]))
    agg.add(chain("2", "A", T0 + 1.1, 1.5, scheduled=T0 + 0.1, outcome="failed",
                  error="urn:ietf:params:acme:error:rateLimited :: too many",
                  requests=[req("2", "A", "newOrder", T0 + 1.1, 0.3, ok=False,
                                problem="urn:ietf:params:acme:error:rateLimited")]))
    agg.add(chain("3", "A", T0 + 2, 0.1, outcome="cancelled"))
    agg.add(chain("4", "B", T0 + 2, 0.0, outcome="skipped"))
    agg.add_dropped(3)
    a, b = agg.chains["A"], agg.chains["B"]
    assert (a.count, a.ok, a.failed, a.cancelled, a.skipped) == (2, 1, 1, 1, 0)
    assert (b.count, b.skipped) == (0, 1)
    assert sorted(agg.endpoints) == ["finalize", "newOrder"]
    no = agg.endpoints["newOrder"]
    assert (no.count, no.ok, no.failed) == (2, 1, 1)
    assert (a.latency.min, a.latency.max) == (500_000, 1_500_000)
    # from the intended start: chain 2 was scheduled one second before it started
    assert (a.from_scheduled.min, a.from_scheduled.max) == (500_000, 2_500_000)
    assert agg.certificates == 1 and agg.dropped_starts == 3
    assert agg.errors[("A", None, "urn:ietf:params:acme:error:rateLimited")][0] == 1
    key = ("A", "newOrder", "urn:ietf:params:acme:error:rateLimited")
    count, example = agg.errors[key]
    assert count == 1 and "POST newOrder -> HTTP 400" in example


def test_per_second_buckets_by_completion() -> None:
    agg = Aggregator(T0)
    ends = [0.5, 0.9, 1.0, 1.7, 4.2, -3.0]  # the last ended before the run began: second 0
    for k, end in enumerate(ends):
        agg.add(chain(str(k), "A", T0 + end - 0.25, 0.25, outcome="failed" if k == 3 else "ok",
                      requests=[req(str(k), "A", "order", T0 + end - 0.1, 0.1)]))
    got = {s: (b.chains, b.ok, b.failed, b.requests) for s, b in agg.seconds.items()}
    assert got == {0: (3, 3, 0, 3), 1: (2, 1, 1, 2), 4: (1, 1, 0, 1)}
    assert agg.seconds[1].chain_latency.total == 2
    count, hist = agg.window(T0 + 5.0, seconds=10)
    assert count == 6 and hist.total == 6


def test_synthetic_against_exact() -> None:
    chains = synthetic(3000)
    agg = Aggregator(T0)
    for c in chains:
        agg.add(c)
    for name in ("A", "B", "C"):
        mine = [c for c in chains if c["chain"] == name]
        done = [c for c in mine if c["outcome"] in ("ok", "failed")]
        cs = agg.chains[name]
        assert cs.count == len(done)
        assert cs.ok == sum(c["outcome"] == "ok" for c in done)
        assert cs.cancelled == sum(c["outcome"] == "cancelled" for c in mine)
        values = [int(c["took"] * 1e6 + 0.5) for c in done]
        for p in (50, 95, 99):
            want = exact_percentile(values, p)
            assert abs(cs.latency.percentiles([p])[0] - want) <= want * 0.001 + 1
    for ep in ("newNonce", "newOrder", "finalize"):
        reqs = [r for c in chains for r in c["requests"] if r["endpoint"] == ep]
        es = agg.endpoints[ep]
        assert (es.count, es.failed) == (len(reqs), sum(not r["ok"] for r in reqs))
        assert es.latency.sum == sum(int(r["took"] * 1e6 + 0.5) for r in reqs)
    per_second: dict[int, int] = {}
    for c in chains:
        if c["outcome"] in ("ok", "failed"):
            s = max(int(c["started"] + c["took"] - T0), 0)
            per_second[s] = per_second.get(s, 0) + 1
    assert {s: b.chains for s, b in agg.seconds.items() if b.chains} == per_second
    assert agg.certificates == sum(c["certificates"] for c in chains)


def test_merge_equals_single_aggregation() -> None:
    chains = synthetic(1500, seed=11)
    single = Aggregator(T0)
    for c in chains:
        single.add(c)
    parts = [Aggregator(T0) for _ in range(3)]
    for k, c in enumerate(chains):
        parts[k % 3].add(c)
    parts[1].add_status({"worker": "gw1", "t": 1.0, "cpu_pct": 50.0, "cpu_s": 2.0})
    single.add_status({"worker": "gw1", "t": 1.0, "cpu_pct": 50.0, "cpu_s": 2.0})
    merged = Aggregator(T0)
    for p in parts:
        merged.merge(p)
    assert merged.to_dict() == single.to_dict()
    for name, cs in single.chains.items():
        assert merged.chains[name].latency == cs.latency
        assert merged.chains[name].from_scheduled == cs.from_scheduled
    for s, sec in single.seconds.items():
        assert merged.seconds[s].request_latency == sec.request_latency


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_plain_data_round_trip(codec: str) -> None:
    agg = Aggregator(T0)
    for c in synthetic(500, seed=5):
        agg.add(c)
    agg.add_dropped(2)
    agg.add_status({"worker": "gw0", "t": 5.0, "cpu_pct": 80.0, "cpu_s": 3.5, "dropped": 4})
    plain = agg.to_dict()
    wire = json.loads(json.dumps(plain)) if codec == "json" else msgpack.unpackb(
        msgpack.packb(plain), strict_map_key=False)
    back = Aggregator.from_dict(wire)
    assert back.to_dict() == plain
    assert back.dropped_results == 4 and back.generator_stats()["cpu_s"] == 3.5
