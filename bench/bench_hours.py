"""Controller memory over a 10-hour run, fed at a busy run's rate in simulated time.

    .venv/bin/python bench/bench_hours.py [--quick] [--hours H] [--rate R] [--every N]

Feeds H simulated hours (default 10; ``--quick`` 2) of a busy open-model run, R chains a
second (default 200) of ~5 requests each (real ChainResult records: 6 chains over 12
endpoints, 1 request in 200 failing with badNonce), into a fresh process per variant:

    compacted     this code: the per-second series compacted as they age (``buckets.LAYOUT``)
    uncompacted   the baseline, the old behaviour: every second kept (``buckets.UNCOMPACTED``)

Each process does what the controller does with every batch: the results log
(``ResultLogWriter.write_many``, jsonl; compacted only) then ``Aggregator.add`` under a lock;
plus the live line (``window()``) every 10 s and a dashboard update of the last 10 s every
5 minutes (a live run has both every 2 s: percentiles of whole-run histograms that would
take most of the benchmark's time and leave no memory behind); at the end, the view of a
dashboard opened then (the whole run) and summary.json. The processes load what the
controller (pytest with the plugin, the collector, the dashboard) loads, so their RSS
before the first result is the controller's (63-64 MiB, as ``bench_memory.py`` shows it).
Time is the results' own: ``started`` and ``took`` put each chain in its simulated second;
no process waits for the clock.

Sampling, to run in minutes: every Nth second (default 10) gets the full rate, each other
second one chain of each kind, so that every second of every series still makes its
buckets and every compaction happens. A compacted bucket then holds fewer results (fewer
distinct latencies, fewer bytes) than at the full rate: the bucket table sets the sampled
sizes against full-rate ones, and prints what the packed buckets would add at full rate.

RSS (``VmRSS``) at the end of each simulated hour; growth from hour 1 to hour H, target
<= 10%. At the end the compacted run builds summary.json and checks it: totals equal to
what was fed, timeline rows ``t``/``dt`` covering the whole run without a gap, the
timeline's and ``timeline_by``'s counts adding up to the totals, and the results log read
back whole (record and request counts).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.buckets import LAYOUT, UNCOMPACTED, Buckets
from pytest_wec.wire.results import ChainResult, RequestResult

TARGET_PCT = 10.0
T0 = 1_800_000_000.0
#: chain -> (weight in the mix, its requests in order)
MIX: dict[str, tuple[int, tuple[str, ...]]] = {
    "new_certificate": (3, ("newNonce", "newOrder", "authz", "challenge", "authz", "finalize",
                            "order", "certificate")),
    "new_order": (1, ("newOrder", "authz", "challenge", "authz")),
    "new_account": (1, ("newNonce", "newAccount")),
    "renew_certificate": (1, ("newOrder", "authz", "finalize", "order", "certificate",
                              "renewalInfo")),
    "revoke_certificate": (1, ("newOrder", "finalize", "certificate", "revokeCert")),
    "key_rollover": (1, ("keyChange", "account")),
}
#: endpoint -> median latency (s); lognormal, sigma 0.6
MEDIAN = {"newNonce": 0.004, "newOrder": 0.025, "authz": 0.012, "challenge": 0.030,
          "finalize": 0.080, "order": 0.010, "certificate": 0.015, "newAccount": 0.020,
          "renewalInfo": 0.008, "revokeCert": 0.040, "keyChange": 0.035, "account": 0.010}
SIGMA = 0.6
BADNONCE = "urn:ietf:params:acme:error:badNonce"


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Feed:
    """Simulated ChainResults, second by second of the run."""

    def __init__(self, rate: int, seed: int = 1) -> None:
        self.rate = rate
        self.rnd = random.Random(seed)
        self.names = [n for n, (w, _) in MIX.items() for _ in range(w)]
        self.mu = {ep: math.log(m) for ep, m in MEDIAN.items()}
        self.n = 0
        self.chains = self.requests = self.chains_failed = self.requests_failed = 0

    def chain(self, name: str, end: float, worker: str) -> ChainResult:
        rnd, mu = self.rnd, self.mu
        eps = MIX[name][1]
        tooks = [rnd.lognormvariate(mu[ep], SIGMA) for ep in eps]
        gap = 0.0005
        took = sum(tooks) + gap * len(eps)
        started = end - took
        cid = f"{worker}-{self.n}"
        self.n += 1
        t = started
        reqs: list[RequestResult] = []
        ok = True
        for ep, dt in zip(eps, tooks, strict=True):
            good = rnd.random() >= 0.005
            ok = ok and good
            reqs.append({"chain_id": cid, "chain": name, "endpoint": ep,
                         "method": "POST",
                         "status": 200 if good else 400, "started": t, "took": dt, "ok": good,
                         "error": None if good else "problem",
                         "problem": None if good else BADNONCE})
            t += dt + gap
            if not good:
                break
        self.chains += 1
        self.requests += len(reqs)
        self.chains_failed += not ok
        self.requests_failed += not ok
        return {"chain_id": cid, "chain": name, "worker": worker,
                "scheduled": started - rnd.random() * 0.002, "started": started, "took": took,
                "ok": ok, "outcome": "ok" if ok else "failed",
                "error": None if ok else f"{BADNONCE} :: bad nonce",
                "certificates": int(ok and name in ("new_certificate", "renew_certificate")),
                "requests": reqs}

    def second(self, t: int, full: bool) -> list[list[ChainResult]]:
        """The batches of the chains that end in second ``t``: two workers', in end order."""
        rnd = self.rnd
        names = rnd.choices(self.names, k=self.rate) if full else list(MIX)
        batches: list[list[ChainResult]] = [[], []]
        ends = sorted(T0 + t + rnd.random() for _ in names)
        for k, (name, end) in enumerate(zip(names, ends, strict=True)):
            batches[k % 2].append(self.chain(name, end, f"gw{k % 2}"))
        return [b for b in batches if b]


def series_of(agg: Aggregator) -> list[Buckets[Any]]:
    return [agg.seconds, *agg.chain_seconds.values(), *agg.endpoint_seconds.values()]


def stats_of(agg: Aggregator) -> dict[str, Any]:
    series = series_of(agg)
    return {"series": len(series), "buckets": sum(len(b) for b in series),
            "live": sum(len(b.live) for b in series),
            "packed_kib": round(sum(len(x) for b in series for x in b.packed.values()) / 1024)}


def widths_of(agg: Aggregator) -> dict[int, tuple[int, int]]:
    """width -> (packed buckets, their bytes) over every series."""
    out: dict[int, tuple[int, int]] = {}
    for b in series_of(agg):
        for k, blob in b.packed.items():
            w = agg.horizon.width(k)
            n, size = out.get(w, (0, 0))
            out[w] = (n + 1, size + len(blob))
    return out


def child(args: argparse.Namespace) -> int:
    # what the controller (pytest with the plugin) has loaded: its RSS before any result
    import pytest  # noqa: F401
    import xdist  # noqa: F401

    import pytest_wec.controller.collector
    import pytest_wec.controller.dashboard
    import pytest_wec.controller.run
    import pytest_wec.plugin  # noqa: F401
    from pytest_wec.controller.liveview import live_view
    from pytest_wec.controller.outputs import build_summary, format_progress, write_json_atomic
    from pytest_wec.controller.resultlog import ResultLogWriter, read_results

    compacted = args.child == "compacted"
    agg = Aggregator(T0, LAYOUT if compacted else UNCOMPACTED)
    feed = Feed(args.rate)
    lock = threading.Lock()
    out_dir = Path(args.out)
    log_path = out_dir / "results.jsonl"
    writer = ResultLogWriter(log_path) if compacted else None
    run = {"id": "bench-hours", "model": "open", "rate": args.rate}
    print(json.dumps({"hour": 0, "rss_kib": rss_kib(), "fed_chains": 0, "wall_s": 0,
                      **stats_of(agg)}), flush=True)
    started = time.perf_counter()
    seconds = args.hours * 3600
    for t in range(seconds):
        for batch in feed.second(t, t % args.every == 0):
            if writer is not None:
                writer.write_many(batch)
            with lock:
                for c in batch:
                    agg.add(c)
        now = T0 + t + 1
        if t % 10 == 9:
            with lock:
                format_progress(agg, now, duration_s=seconds, in_flight=40)
        if t % 300 == 299:
            with lock:
                view = live_view(agg, run=run, now=now, since=t + 1 - 10)
            rows = view["timeline"]
            assert rows[-1]["t"] + rows[-1]["dt"] == t + 1, "the view ends at the last second"
        if (t + 1) % 3600 == 0:
            rec = {"hour": (t + 1) // 3600, "rss_kib": rss_kib(), "fed_chains": feed.chains,
                   "wall_s": round(time.perf_counter() - started, 1), **stats_of(agg),
                   "widths": widths_of(agg)}
            print(json.dumps(rec), flush=True)
    result: dict[str, Any] = {}
    if writer is not None:
        writer.close()
    if compacted:
        t1 = time.perf_counter()
        with lock:
            first = live_view(agg, run=run, now=T0 + seconds, since=0)
        result["dashboard_first_s"] = round(time.perf_counter() - t1, 2)
        result["dashboard_rows"] = len(first["timeline"])
        t1 = time.perf_counter()
        run_info = {"id": "bench-hours", "started": T0, "ended": T0 + seconds,
                    "duration_s": float(seconds), "model": "open", "rate": args.rate}
        summary = build_summary(agg, run_info, {}, {}, None)
        result["summary_s"] = round(time.perf_counter() - t1, 2)
        write_json_atomic(out_dir / "summary.json", summary)
        result["summary_kib"] = round((out_dir / "summary.json").stat().st_size / 1024)
        result["peak_rss_kib"] = rss_kib()
        back = json.loads((out_dir / "summary.json").read_text())
        result["checks"] = check(back, feed, seconds)
        n = reqs = 0
        for c in read_results(log_path):
            n += 1
            reqs += len(c["requests"])
        result["checks"]["results log: every chain and request read back"] = (
            n == feed.chains and reqs == feed.requests)
        result["log_mib"] = round(log_path.stat().st_size / 2**20)
        log_path.unlink()
    result["fed"] = {"chains": feed.chains, "requests": feed.requests,
                     "chains_failed": feed.chains_failed}
    print(json.dumps({"end": result}), flush=True)
    return 0


def check(s: dict[str, Any], feed: Feed, seconds: int) -> dict[str, bool]:
    t = s["totals"]
    rows = s["timeline"]
    gapless = all(b["t"] == a["t"] + a["dt"] for a, b in pairwise(rows))
    by = s["timeline_by"]
    by_ok = all(sum(cols["count"]) == s[group][name]["count"]
                for group in ("chains", "endpoints") for name, cols in by[group].items())
    return {
        "totals: chains, failed, requests, failed requests as fed": (
            (t["chains"], t["chains_failed"], t["requests"], t["requests_failed"])
            == (feed.chains, feed.chains_failed, feed.requests, feed.requests_failed)),
        "timeline: rows from 0 to the run's end, no gap": (
            bool(rows) and rows[0]["t"] == 0 and gapless
            and rows[-1]["t"] + rows[-1]["dt"] == seconds),
        "timeline: the last 15 min one row a second": all(r["dt"] == 1 for r in rows
                                                          if r["t"] >= seconds - 900),
        "timeline: chains and requests add up to the totals": (
            sum(r["chains"] for r in rows) == t["chains"]
            and sum(r["requests"] for r in rows) == t["requests"]),
        "timeline_by: every chain's and endpoint's counts add up": by_ok,
    }


def run_child(variant: str, args: argparse.Namespace, out: Path) -> tuple[list[dict[str, Any]],
                                                                          dict[str, Any]]:
    cmd = [sys.executable, __file__, "--child", variant, "--hours", str(args.hours),
           "--rate", str(args.rate), "--every", str(args.every), "--out", str(out)]
    hours: list[dict[str, Any]] = []
    end: dict[str, Any] = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            rec = json.loads(line)
            if "end" in rec:
                end = rec["end"]
            else:
                hours.append(rec)
                print(f"  [{time.strftime('%H:%M:%S')}] {variant}: hour {rec['hour']}, "
                      f"{rec['rss_kib'] / 1024:.1f} MiB, {rec['buckets']} buckets",
                      file=sys.stderr, flush=True)
    if proc.returncode:
        raise SystemExit(f"{variant} exited {proc.returncode}")
    return hours, end


def full_rate_sizes(rate: int, widths: list[int]) -> dict[int, int]:
    """Bytes of one packed bucket of each width, every series together, at the full rate
    (the first ``max(widths)`` seconds of a run), to set against the sampled run's."""
    agg = Aggregator(T0, UNCOMPACTED)
    feed = Feed(rate, seed=7)
    for t in range(max(widths)):
        for batch in feed.second(t, True):
            for c in batch:
                agg.add(c)
    out = {}
    for w in widths:
        size = 0
        for b in series_of(agg):
            merged = b.factory()
            for _, _, rec in b.spans(0, w):
                merged.merge(rec)
            size += len(merged.pack())
        out[w] = size
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 hours instead of 10")
    ap.add_argument("--hours", type=int, help="simulated hours (default 10)")
    ap.add_argument("--rate", type=int, default=200, help="chains a second")
    ap.add_argument("--every", type=int, default=10, help="the full rate every Nth second")
    ap.add_argument("--child", choices=("compacted", "uncompacted"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.hours = args.hours or (2 if args.quick else 10)
    if args.child:
        return child(args)
    from _common import machine, table

    print(f"bench_hours: {args.hours} simulated hours, {args.rate} chains/s every "
          f"{args.every}th second, one of each chain the others; {machine()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="wec-hours-") as tmp:
        for variant in ("compacted", "uncompacted"):
            results[variant] = run_child(variant, args, Path(tmp))
    (comp, cend), (base, _) = results["compacted"], results["uncompacted"]
    rows = []
    for c, b in zip(comp, base, strict=True):
        rows.append([f"{c['hour']}", c["fed_chains"], c["rss_kib"] / 1024, c["buckets"],
                     c["live"], c["packed_kib"] / 1024, b["rss_kib"] / 1024, b["buckets"]])
    print(table(["hour", "chains fed", "compacted MiB", "buckets", "unpacked", "packed MiB",
                 "uncompacted MiB", "buckets"], rows))
    first, last = comp[1], comp[-1]
    widths = sorted({int(w) for w in last["widths"]})
    full = full_rate_sizes(args.rate, widths)
    nseries = last["series"]
    wrows, est = [], [0.0, 0.0]
    for w in widths:
        n1, _ = first["widths"].get(str(w), (0, 0))
        n, size = last["widths"][str(w)]
        wrows.append([f"{w} s", n1, n, size / n * nseries / 1024, full[w] / 1024])
        est[0] += n1 / nseries * full[w]
        est[1] += n / nseries * full[w]
    print(f"packed buckets (of {nseries} series), KiB per bucket of every series together:")
    print(table(["width", f"at hour {first['hour']}", f"at hour {last['hour']}",
                 "KiB sampled", "KiB at the full rate"], wrows))
    measured = (last["packed_kib"] - first["packed_kib"]) / 1024
    print(f"packed, hour {first['hour']} -> {last['hour']}: +{measured:.1f} MiB here, "
          f"+{(est[1] - est[0]) / 2**20:.1f} MiB at the full rate every second (the same "
          f"buckets at full-rate sizes)")
    fed = cend["fed"]
    print(f"fed {fed['chains']:,} chains ({fed['chains_failed']:,} failed), "
          f"{fed['requests']:,} requests; results log {cend['log_mib']} MiB, read back; "
          f"summary.json {cend['summary_kib']} KiB in {cend['summary_s']} s, "
          f"peak {cend['peak_rss_kib'] / 1024:.1f} MiB; a dashboard opened at the end: "
          f"{cend['dashboard_rows']} rows in {cend['dashboard_first_s']} s")
    for name, ok in cend["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    grow = [(r[-1]["rss_kib"] - r[1]["rss_kib"]) / 1024 for r in (comp, base)]
    pct = [100 * (r[-1]["rss_kib"] - r[1]["rss_kib"]) / r[1]["rss_kib"] for r in (comp, base)]
    met = pct[0] <= TARGET_PCT and all(cend["checks"].values())
    print(f"RSS growth hour 1 -> {args.hours}: compacted {pct[0]:+.1f}% "
          f"({comp[1]['rss_kib'] / 1024:.1f} -> {comp[-1]['rss_kib'] / 1024:.1f} MiB, "
          f"{grow[0]:+.1f}), uncompacted baseline {pct[1]:+.1f}% "
          f"({base[1]['rss_kib'] / 1024:.1f} -> {base[-1]['rss_kib'] / 1024:.1f} MiB, "
          f"{grow[1]:+.1f}): {grow[1] / max(grow[0], 0.1):.0f}x less growth; target <= "
          f"{TARGET_PCT:g}% with summary and log intact: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
