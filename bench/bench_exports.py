"""CPU of the .hgrm exports at the end of a load run, against hdrh's own writer.

    .venv/bin/python bench/bench_exports.py [--quick] [--chains N] [--endpoints N]
                                             [--samples N] [--repeat R]

An Aggregator as a run leaves it: ``--chains`` (12) chains and ``--endpoints`` (15) ACME
endpoints, their latencies drawn from lognormal distributions of medians between 1 ms and
2 s, ``--samples`` (300,000) request latencies over the endpoints and one chain latency per
8 requests. Then, best of ``--repeat`` (3) runs, CPU seconds (``time.process_time``) to
write every ``hgrm/*.hgrm`` file of it:

    write_hgrm     pytest_wec.controller.ciexports.write_hgrm, as the controller runs it
                   (pytest_wec.controller.hgrm: a walk over the recorded buckets)
    hdrh           the same files through hdrh's HdrHistogram.output_percentile_distribution
                   (its pure-Python iterators over every bucket up to the maximum), what
                   write_hgrm did before

and the ratio hdrh / write_hgrm. Both files of each histogram must agree on what a reader
takes from them (the footer's mean, maximum and total count, the last row): the script
says so, or exits 1.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.ciexports import HGRM_DIR, _safe, write_hgrm
from pytest_wec.controller.histogram import Histogram
from pytest_wec.controller.stats import ChainStats, EndpointStats

ENDPOINTS = ("directory", "newNonce", "newAccount", "newOrder", "authz", "challenge",
             "finalize", "order", "certificate", "revokeCert", "keyChange", "account",
             "renewalInfo", "authz-poll", "order-poll")


def build(chains: int, endpoints: int, samples: int, seed: int = 1) -> Aggregator:
    rnd = random.Random(seed)
    agg = Aggregator(time.time())
    names = [ENDPOINTS[k % len(ENDPOINTS)] + ("" if k < len(ENDPOINTS) else f"-{k}")
             for k in range(endpoints)]
    medians = {n: rnd.uniform(0.5, 150.0) for n in names}  # ms
    for n in names:
        agg.endpoints[n] = EndpointStats()
    for k in range(samples):
        n = names[k % len(names)]
        agg.endpoints[n].latency.record(int(rnd.lognormvariate(0, 0.8) * medians[n] * 1000))
    for c in range(chains):
        cs = agg.chains[f"chain_{c:02d}"] = ChainStats()
        median = rnd.uniform(5.0, 2000.0)
        for _ in range(samples // 8 // chains):
            cs.latency.record(int(rnd.lognormvariate(0, 0.6) * median * 1000))
    return agg


def hdrh_text(hist: Histogram) -> bytes:
    """hdrh's writer, in milliseconds, its standard deviation scaled like the rest."""
    hdr = hist.to_hdr()
    buf = io.BytesIO()
    hdr.output_percentile_distribution(buf, 1000.0)
    stddev = hdr.get_stddev() / 1000.0
    return re.sub(rb"(StdDeviation\s+=\s+)[0-9.]+",
                  lambda m: m.group(1) + b"%12.3f" % stddev, buf.getvalue(), count=1)


def hdrh_write(run_dir: Path, agg: Aggregator) -> list[Path]:
    out = run_dir / HGRM_DIR
    written = []
    items = [("chain", n, s.latency) for n, s in sorted(agg.chains.items())]
    items += [("endpoint", n, s.latency) for n, s in sorted(agg.endpoints.items())]
    for kind, name, hist in items:
        if hist.total:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{kind}-{_safe(name)}.hgrm"
            path.write_bytes(hdrh_text(hist))
            written.append(path)
    return written


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def what_readers_take(text: str) -> tuple[str, ...]:
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and ln[0] != "#"]
    mean = re.search(r"Mean += +([0-9.]+)", text)
    top = re.search(r"Max += +([0-9.]+), Total ?[Cc]ount += +([0-9.]+)", text)
    assert mean and top, text[-300:]
    return (*rows[-1][:3], mean[1], top[1], str(int(float(top[2]))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30,000 samples, 1 run")
    ap.add_argument("--chains", type=int, default=12)
    ap.add_argument("--endpoints", type=int, default=15)
    ap.add_argument("--samples", type=int, help="request latencies (300,000)")
    ap.add_argument("--repeat", type=int, help="runs of each writer, best kept (3)")
    args = ap.parse_args(argv)
    samples = args.samples or (30_000 if args.quick else 300_000)
    repeat = args.repeat or (1 if args.quick else 3)
    agg = build(args.chains, args.endpoints, samples)
    hists = [c.latency for c in agg.chains.values()]
    hists += [e.latency for e in agg.endpoints.values()]
    buckets = sum(len(h.counts) for h in hists)
    print(f"{len(agg.chains)} chains, {len(agg.endpoints)} endpoints, "
          f"{sum(h.total for h in hists):,} samples in {buckets:,} buckets")
    with tempfile.TemporaryDirectory(prefix="wec-bench-exports-") as tmp:
        new_dir, old_dir = Path(tmp, "new"), Path(tmp, "old")
        ours = best(lambda: write_hgrm(new_dir, agg), repeat)
        theirs = best(lambda: hdrh_write(old_dir, agg), repeat)
        files = sorted(p.name for p in (new_dir / HGRM_DIR).iterdir())
        mismatched = [
            name for name in files
            if what_readers_take((new_dir / HGRM_DIR / name).read_text())
            != what_readers_take((old_dir / HGRM_DIR / name).read_text())]
        size = sum((new_dir / HGRM_DIR / n).stat().st_size for n in files)
    print(f"{'writer':<12} {'CPU s':>8} {'ms/file':>8}")
    print(f"{'write_hgrm':<12} {ours:8.4f} {1000 * ours / len(files):8.2f}")
    print(f"{'hdrh':<12} {theirs:8.4f} {1000 * theirs / len(files):8.2f}")
    print(f"{len(files)} files, {size:,} bytes; hdrh / write_hgrm = "
          f"{theirs / max(ours, 1e-9):.0f}x")
    if mismatched:
        print(f"MISMATCH: mean, max, total count or last row differ in {', '.join(mismatched)}")
        return 1
    print("every file's mean, max, total count and last row as hdrh writes them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
