"""Aggregator: counts, HDR percentiles against exact computations, merge, per-second series
and their compaction over hours."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from typing import Any

import msgpack
import pytest
from hdrh.histogram import HdrHistogram

from pytest_wec.controller.aggregator import HIGHEST_US, MAX_SERIES, OTHER, Aggregator, Histogram
from pytest_wec.controller.buckets import LAYOUT, UNCOMPACTED, Layout
from pytest_wec.controller.outputs import timeline, timeline_by
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


# -- compaction of the per-second series (buckets.py) ------------------------------------------

SMALL = Layout(widths=(1, 2, 6, 12), spans=(5, 20, 60), freeze_s=3)  # tiers in seconds


def long_run(seconds: int, seed: int = 3, per_s: int = 2) -> list[ChainResult]:
    """``per_s`` chains ending in every second of ``seconds``, two requests each."""
    rnd = random.Random(seed)
    out = []
    for t in range(seconds):
        for k in range(per_s):
            end = T0 + t + rnd.random()
            took = rnd.lognormvariate(-3, 1)
            name = ("A", "B")[(t + k) % 2]
            cid = f"{t}-{k}"
            fail = rnd.random() < 0.05
            reqs = [req(cid, name, "newOrder", end - took, took / 2),
                    req(cid, name, "finalize", end - took / 2, took / 2, ok=not fail,
                        problem="urn:ietf:params:acme:error:badNonce" if fail else None)]
            out.append(chain(cid, name, end - took, took, requests=reqs,
                             outcome="failed" if fail else "ok",
                             error="AssertionError: x" if fail else None))
    return out


def fed(chains: list[ChainResult], layout: Layout = LAYOUT) -> Aggregator:
    agg = Aggregator(T0, layout)
    for c in chains:
        agg.add(c)
    return agg


def merged_seconds(plain: Aggregator, series: str, name: str | None, t: int, dt: int) -> Any:
    """The merge of ``plain``'s (uncompacted) seconds t .. t + dt - 1 of one series."""
    by_s: Any = plain.seconds if name is None else getattr(plain, series)[name]
    out = by_s.factory()
    for s in range(t, t + dt):
        if s in by_s:
            out.merge(by_s[s])
    return out


def test_compaction_keeps_counts_and_percentiles_exact() -> None:
    chains = long_run(2 * 3600 + 15, per_s=1)  # reaches the 10 s and the 10 min tiers
    plain, agg = fed(chains, UNCOMPACTED), fed(chains)
    widths = {agg.horizon.width(t) for t in agg.seconds}
    assert widths == {1, 10, 600}
    assert len(agg.seconds) < 1300 < len(plain.seconds)
    assert all(w == 1 for t, w, _ in agg.seconds.spans() if t >= agg.horizon.second - 899)
    assert agg.seconds.packed and len(agg.seconds.live) <= 80  # older than a minute: packed
    for series, names in (("seconds", [None]), ("chain_seconds", ["A", "B"]),
                          ("endpoint_seconds", ["newOrder", "finalize"])):
        for name in names:
            by_s: Any = agg.seconds if name is None else getattr(agg, series)[name]
            for t, dt, rec in by_s.spans():
                want = merged_seconds(plain, series, name, t, dt)
                assert rec.to_row() == want.to_row(), (series, name, t, dt)
    # a span of many buckets, read from merged histograms: the same at every resolution
    span_c, span_p = Histogram(), Histogram()
    for _, _, sec in agg.seconds.spans(600, 4800):
        span_c.add(sec.request_latency)
    for s in range(600, 4800):
        if s in plain.seconds:
            span_p.add(plain.seconds[s].request_latency)
    assert span_c == span_p and span_c.total > 8000
    assert span_c.percentiles([50, 95, 99, 99.9]) == span_p.percentiles([50, 95, 99, 99.9])
    assert agg.to_dict()["chains"] == plain.to_dict()["chains"]
    count, hist = agg.window(T0 + 2 * 3600 + 15, seconds=10)
    assert (count, hist) == plain.window(T0 + 2 * 3600 + 15, seconds=10)


def test_compaction_is_the_same_whatever_the_order_and_late_results() -> None:
    chains = long_run(200, seed=9)
    in_order = fed(chains, SMALL)
    shuffled = chains[:]
    random.Random(1).shuffle(shuffled)  # late results land in compacted and packed buckets
    late = fed(shuffled, SMALL)
    assert late.to_dict() == in_order.to_dict()
    assert {in_order.horizon.width(t) for t in in_order.seconds} == {1, 2, 6, 12}
    # a result long after its second: into the 12 s bucket that holds it, packed again later
    agg = fed(chains, SMALL)
    key = agg.horizon.key(30)
    assert agg.horizon.width(30) == 12 and key in agg.seconds.packed
    before = agg.seconds[key].chains
    agg.add(chain("late", "A", T0 + 30.2, 0.1))
    assert key in agg.seconds.live and agg.seconds[key].chains == before + 1
    agg.add(chain("next", "A", T0 + 210.5, 0.1))  # the horizon moves on: packed again
    assert key in agg.seconds.packed and agg.seconds[key].chains == before + 1


def test_bucket_count_is_bounded() -> None:
    agg = Aggregator(T0)
    for day in range(40):  # one chain an hour for 40 days, then a busy last hour
        for h in range(24):
            agg.add(chain(f"{day}-{h}", "A", T0 + (day * 24 + h) * 3600.0, 0.5))
    end = 40 * 86400
    for s in range(end - 3600, end):
        agg.add(chain(str(s), "A", T0 + s, 0.5))
    widths = {agg.horizon.width(t) for t in agg.seconds}
    assert widths == {1, 10, 600, 3600, 86400}
    every = list(agg.seconds.cover())
    assert len(every) < 2000 and every[-1][0] + every[-1][1] == end
    assert sum(sec.chains for _, _, sec in agg.seconds.spans()) == 40 * 24 + 3600


def test_timeline_rows_carry_their_width() -> None:
    chains = long_run(3600 + 700, seed=4)  # an hour and 10 minutes: [0, 600) is one bucket
    agg = fed(chains)
    rows = timeline(agg)
    assert rows[0]["t"] == 0 and rows[-1]["t"] + rows[-1]["dt"] == 4300
    assert all(b["t"] == a["t"] + a["dt"] for a, b in pairwise(rows))
    assert {r["dt"] for r in rows} == {1, 10, 600}
    assert all(r["dt"] == 1 for r in rows[-900:])
    assert sum(r["chains"] for r in rows) == len(chains)
    assert sum(r["requests"] for r in rows) == 2 * len(chains)
    wide = next(r for r in rows if r["dt"] == 600)
    assert wide["chains"] == sum(1 for c in chains if 0 <= c["started"] + c["took"] - T0 < 600)
    by = timeline_by(agg)
    for group in by.values():
        for cols in group.values():
            assert len(cols["dt"]) == len(cols["t"]) and set(cols["dt"]) == {1, 10, 600}
    assert sum(sum(c["count"]) for c in by["chains"].values()) == len(chains)
    # a live view's slice: the buckets that start in it (the one across ``since`` left out)
    assert [r["t"] for r in timeline(agg, 5, 1300)][:2] == [600, 610]
    short = fed(long_run(30))
    assert {r["dt"] for r in timeline(short)} == {1}
    assert all("dt" not in cols for g in timeline_by(short).values() for cols in g.values())


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_round_trip_after_compaction(codec: str) -> None:
    agg = fed(long_run(3600 + 700, seed=6, per_s=1))
    plain = agg.to_dict()
    wire = json.loads(json.dumps(plain)) if codec == "json" else msgpack.unpackb(
        msgpack.packb(plain), strict_map_key=False)
    back = Aggregator.from_dict(wire)
    assert back.to_dict() == plain
    assert {back.horizon.width(t) for t in back.seconds} == {1, 10, 600}
    assert timeline(back) == timeline(agg) and timeline_by(back) == timeline_by(agg)


def test_plain_data_written_before_compaction_loads_compacted() -> None:
    chains = long_run(1200, seed=6)
    old = fed(chains, UNCOMPACTED).to_dict()
    del old["horizon"]  # every second, no horizon: compacted as it loads
    assert Aggregator.from_dict(old).to_dict() == fed(chains).to_dict()


def test_merge_of_compacted_aggregators() -> None:
    chains = long_run(3600 + 700, seed=8, per_s=1)
    single = fed(chains)
    parts = [fed(chains[0::2]), fed(chains[1::2]), fed([])]
    merged = Aggregator(T0)
    for p in parts:
        merged.merge(p)
    assert merged.to_dict() == single.to_dict()
    cut = next(k for k, c in enumerate(chains) if c["started"] > T0 + 2000)
    young = fed(chains[:cut])  # its horizon is over half an hour behind the other's
    young.merge(fed(chains[cut:]))
    assert young.to_dict() == single.to_dict()
    assert {merged.horizon.width(t) for t in merged.seconds} == {1, 10, 600}


def test_histogram_pack_is_exact() -> None:
    h = Histogram()
    rnd = random.Random(2)
    for _ in range(5000):
        h.record(int(rnd.lognormvariate(9, 2)))
    back = Histogram.unpack(h.pack())
    assert back == h and back.percentiles([50, 99.9]) == h.percentiles([50, 99.9])
    assert len(h.pack()) < len(h.counts) * 4
    assert Histogram.unpack(Histogram().pack()) == Histogram()
    big = Histogram()
    big.counts, big.total, big.sum, big.min, big.max = {5: 1 << 40, 70_000: 1}, (1 << 40) + 1, \
        5 << 40, 5, 70_000
    assert Histogram.unpack(big.pack()) == big


def test_series_per_name_are_bounded() -> None:
    agg = Aggregator(T0)
    for k in range(MAX_SERIES + 20):
        agg.add(chain(str(k), f"chain{k}", T0 + 1, 0.1,
                      requests=[req(str(k), f"chain{k}", f"ep{k}", T0 + 1, 0.05)]))
    for series in (agg.chain_seconds, agg.endpoint_seconds):
        assert len(series) == MAX_SERIES + 1
        assert sum(sec.count for by_s in series.values() for sec in by_s.values()) == \
            MAX_SERIES + 20
        assert series[OTHER][1].count == 20
    assert len(agg.chains) == MAX_SERIES + 20  # the totals keep every name


def test_connections_opened_are_counted_apart_from_the_requests_latency() -> None:
    from pytest_wec.controller.outputs import build_tables, format_tables

    def opened(r: RequestResult, seconds: float) -> RequestResult:
        r["connect"] = seconds
        return r

    a, b = Aggregator(T0), Aggregator(T0)
    a.add(chain("1", "A", T0, 0.5, requests=[opened(req("1", "A", "newNonce", T0, 0.01), 0.002),
                                             req("1", "A", "newOrder", T0 + 0.1, 0.02)]))
    b.add(chain("2", "A", T0 + 1, 0.5, requests=[
        opened(req("2", "A", "newOrder", T0 + 1, 0.03, ok=False,
                   problem="urn:ietf:params:acme:error:badNonce"), 0.004)]))
    a.merge(b)
    assert (a.connects.total, a.connects.min, a.connects.max) == (2, 2000, 4000)
    # the requests' own latency is what they took, the connect not added
    assert a.endpoints["newNonce"].latency.max == 10_000
    again = Aggregator.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again.connects == a.connects
    tables = build_tables(a, 10.0)
    conn = tables["connections"]
    assert conn["opened"] == 2 and conn["latency_ms"]["max"] == 4.0
    assert conn["latency_ms"]["p50"] == pytest.approx(2.0, abs=0.01)
    summary = {**tables, "run": {"id": "r", "duration_s": 10.0}}
    assert "connections opened 2: p50 2.000 ms" in format_tables(summary)
    # a run with none (an older log, or a transport that does not time them apart)
    none = build_tables(Aggregator(T0), 1.0)["connections"]
    assert none["opened"] == 0
    assert "connections opened" not in format_tables({**build_tables(Aggregator(T0), 1.0),
                                                      "run": {"id": "r", "duration_s": 1}})
    old = a.to_dict()
    del old["connects"]
    assert Aggregator.from_dict(old).connects.total == 0
