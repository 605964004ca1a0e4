"""Throughput of the controller's results pipeline, in RequestResults per second, on one core.

    .venv/bin/python bench/bench_pipeline.py [--chains N] [--repeat R]

Measures, on synthetic ChainResults (8 requests each, as a full issuance chain makes):

    aggregate            Aggregator.add
    log jsonl / msgpack  ResultLogWriter.write_many
    pipeline             aggregate + jsonl log (the target: >= 50,000 RequestResults/s)
    pipeline + decode    the same, fed by decode_batch (what the controller really does)
    producer encode      encode_batch (the cost a worker pays per batch)
    naive baseline       json.dumps per chain + lists of latencies, sorted-list percentiles

and prints each rate with its ratio to the naive baseline. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import build_summary
from pytest_wec.controller.resultlog import ResultLogWriter
from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.wire.stream import decode_batch, encode_batch

TARGET = 50_000
CHAIN = ("newNonce", "newAccount", "newOrder", "authz", "challenge", "authz", "finalize",
         "certificate")
NAMES = ("NewAccountChain", "NewCertificateChain", "RenewalChain", "RevokeChain")


def synthetic(n: int, start: float, seed: int = 1) -> list[ChainResult]:
    rnd = random.Random(seed)
    out: list[ChainResult] = []
    for k in range(n):
        name = NAMES[k % len(NAMES)]
        cid = f"w1-{k}"
        scheduled = start + k * 0.002
        started = scheduled + rnd.random() * 0.01
        t = started
        reqs: list[RequestResult] = []
        for ep in CHAIN:
            took = rnd.lognormvariate(-4.0, 0.8)
            ok = rnd.random() > 0.01
            reqs.append({"chain_id": cid, "chain": name, "endpoint": ep,
                         "method": "GET" if ep in ("authz", "certificate") else "POST",
                         "status": 200 if ok else 400, "started": t, "took": took, "ok": ok,
                         "error": None if ok else "problem",
                         "problem": None if ok else "urn:ietf:params:acme:error:badNonce"})
            t += took
        ok = all(r["ok"] for r in reqs)
        out.append({"chain_id": cid, "chain": name, "worker": "gw1", "scheduled": scheduled,
                    "started": started, "took": t - started, "ok": ok,
                    "outcome": "ok" if ok else "failed",
                    "error": None if ok else "urn:ietf:params:acme:error:badNonce :: bad nonce",
                    "certificates": 1 if ok and name != "NewAccountChain" else 0,
                    "requests": reqs})
    return out


def naive(chains: list[ChainResult], path: Path) -> None:
    """A straightforward controller: json.dumps per chain, lists of latencies, sorted lists."""
    per_chain: dict[str, list[float]] = {}
    per_endpoint: dict[str, list[float]] = {}
    with open(path, "w") as fh:
        for c in chains:
            fh.write(json.dumps(c) + "\n")
            per_chain.setdefault(c["chain"], []).append(c["took"])
            for r in c["requests"]:
                per_endpoint.setdefault(r["endpoint"], []).append(r["took"])
    for values in (*per_chain.values(), *per_endpoint.values()):
        data = sorted(values)
        for p in (50, 90, 95, 99, 99.9):
            _ = data[min(int(len(data) * p / 100), len(data) - 1)]


def best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    start = time.time()
    chains = synthetic(args.chains, start)
    n_req = sum(len(c["requests"]) for c in chains)
    batches = [encode_batch("gw1", "s1", i, i * 500, chains[i * 500:(i + 1) * 500])
               for i in range((len(chains) + 499) // 500)]
    tmp = Path(tempfile.mkdtemp(prefix="wec-bench-"))

    def aggregate() -> None:
        agg = Aggregator(start)
        for c in chains:
            agg.add(c)
        build_summary(agg, {"id": "bench"}, {}, {}, None)

    def log(fmt: str) -> Callable[[], None]:
        def run() -> None:
            with ResultLogWriter(tmp / f"log.{fmt}", fmt) as w:
                w.write_many(chains)
            (tmp / f"log.{fmt}").unlink()
        return run

    def pipeline() -> None:
        agg = Aggregator(start)
        with ResultLogWriter(tmp / "p.jsonl") as w:
            for i in range(0, len(chains), 500):
                part = chains[i:i + 500]
                for c in part:
                    agg.add(c)
                w.write_many(part)
        build_summary(agg, {"id": "bench"}, {}, {}, None)
        (tmp / "p.jsonl").unlink()

    def pipeline_decode() -> None:
        agg = Aggregator(start)
        with ResultLogWriter(tmp / "d.jsonl") as w:
            for data in batches:
                part = decode_batch(data).chains
                for c in part:
                    agg.add(c)
                w.write_many(part)
        (tmp / "d.jsonl").unlink()

    def encode() -> None:
        for i in range(0, len(chains), 500):
            encode_batch("gw1", "s1", i, i, chains[i:i + 500])

    def baseline() -> None:
        naive(chains, tmp / "naive.jsonl")

    rows = [("naive baseline", best(baseline, args.repeat)),
            ("aggregate", best(aggregate, args.repeat)),
            ("log jsonl", best(log("jsonl"), args.repeat)),
            ("log msgpack", best(log("msgpack"), args.repeat)),
            ("pipeline", best(pipeline, args.repeat)),
            ("pipeline + decode", best(pipeline_decode, args.repeat)),
            ("producer encode", best(encode, args.repeat))]
    base_rate = n_req / rows[0][1]
    print(f"{args.chains} chains, {n_req} RequestResults, best of {args.repeat}")
    print(f"{'stage':<20} {'RequestResults/s':>17} {'vs naive':>9}")
    for name, secs in rows:
        rate = n_req / secs
        print(f"{name:<20} {rate:>17,.0f} {rate / base_rate:>8.2f}x")
    rate = n_req / dict(rows)["pipeline"]
    verdict = "meets" if rate >= TARGET else "MISSES"
    print(f"pipeline {rate:,.0f} RequestResults/s {verdict} the target of {TARGET:,}/s")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
