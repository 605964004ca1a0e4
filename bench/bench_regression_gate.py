"""The regression gate against noise: A/A comparisons flag nothing, a real +20% is flagged.

    .venv/bin/python bench/bench_regression_gate.py [--quick] [--trials 20] [--duration 6]
        [--load 8] [--bound p95:10%] [--runs 5] [--delay 20:26]

Each trial is three short load runs (``pytest --wec-load``, one process, the embedded Redis
and challenge server), each against a fresh stub CA (``stubca.py --program``) that holds
every answer for a lognormal delay (``--delay``: p50 20 ms, p99 26 ms; newNonce and the
directory 1 ms). The chain makes an account and four orders, so that newOrder has many
samples:

    A   a baseline run: its benchmark.json saved (``save_baseline``, as ``--wec-save gate``
        stores it) in one storage kept across the trials
    A'  the same program, another seed: compared with the baseline, nothing may regress
    B   newOrder's delay programmed 20% longer (p50 24 ms, p99 31.2 ms): compared with the
        baseline, ``endpoint newOrder p95`` must regress

What a run measures is the CA's whole answer: the programmed hold, plus the stub's own work
outside it (parsing, the FakeCA's JWS checks, writing the answer), the loopback and the
client's reading of it: the measured p95 is about 1 ms over the programmed p95 with 20 ms
answers, 2.5-3.5 ms with 10 ms ones, at load 8. A 20% longer hold is that much less than
20% of the measured figure: with 10 ms answers 13-15%, close enough to a 10% bound that a
trial's run-to-run shift decides it.

The baseline is what a CI that saves every passing main-branch run under one name compares
with (``--wec-compare gate --wec-compare-runs K``, ``load_baseline``): the last K saved A
runs, trial k's and those of the K-1 trials before it. K-1 extra A runs (other seeds) are
saved before the first trial, so that every counted trial compares with K runs; ``--runs 1``
is one run as the baseline (the gate before ``--wec-compare-runs``). The comparison is the
gate's own (``comparison.compare`` of the run's summary.json against the baseline,
``regressions`` with ``--bound``). Targets: A/A flags nothing in at least 19 of 20 trials;
A/B flags newOrder's p95 in every trial. Prints one row per trial (the p95s, their noise,
how many runs the baseline is made of, what was flagged) and the totals; never fails on a
timing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import log, machine, table
from stubca import start_stub_ca

from pytest_wec.controller.baseline import load_baseline, save_baseline
from pytest_wec.controller.comparison import compare, parse_compare_fail, regressions

#: the CA's answers' delay, p50 and p99 in ms (``--delay``)
DELAY = (20.0, 26.0)
SHIFTED_ENDPOINT = "newOrder"
SHIFT = 1.2
SAVE_NAME = "gate"
CHAIN = '''\
from pytest_wec import ChainContext, chain


@chain("gate_orders")
async def test_gate_orders(wec: ChainContext) -> None:
    account = await wec.new_account()
    for _ in range(4):
        await wec.order(account, wec.random_names(1))
'''


def program(seed: int, shifted: bool = False,
            delay: tuple[float, float] = DELAY) -> dict[str, Any]:
    p50, p99 = delay
    spec: dict[str, Any] = {
        "delays": {"*": f"lognormal:{p50:g}ms:{p99:g}ms", "newNonce": "1ms", "directory": "1ms"},
        "requests": [1, 1], "seed": seed}
    if shifted:
        spec["delays"][SHIFTED_ENDPOINT] = f"lognormal:{p50 * SHIFT:g}ms:{p99 * SHIFT:g}ms"
    return spec


def run(name: str, work: Path, spec: dict[str, Any], args: argparse.Namespace
        ) -> dict[str, Any]:
    """One load run against a fresh programmed stub CA; its summary.json."""
    out = work / name
    spec = {**spec, "challenge_log": str(out / "challenge-server.log")}
    chains = work / "chains"
    chains.mkdir(exist_ok=True)
    (chains / "test_gate_chain.py").write_text(CHAIN)
    proc, url, _bundle = start_stub_ca(work / f"stub-{name}", plain=True, program=spec)
    try:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
                "-q", str(chains / "test_gate_chain.py"), "--wec-directory", url,
                f"--wec-duration={args.duration:g}s", "--wec-grace=30s", f"--wec-out={out}",
                f"--wec-load={args.load}", "--wec-allow-saturated"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEC_")}
        p = subprocess.Popen(argv, cwd=chains, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            text, _ = p.communicate(timeout=180)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    finally:
        proc.stop()
    path = out / "summary.json"
    if not path.exists():
        raise RuntimeError(f"{name}: no summary.json (status {p.returncode}):\n"
                           + text.decode(errors="replace")[-3000:])
    summary: dict[str, Any] = json.loads(path.read_text())
    summary["_exit_status"] = p.returncode
    return summary


def save_a(name: str, work: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One A run, saved under SAVE_NAME in the storage the trials share."""
    summary = run(name, work, program(seed, delay=args.delay), args)
    save_baseline(work / name / "benchmark.json", SAVE_NAME, work / "storage")
    return summary


def describe(label: str, summary: dict[str, Any]) -> None:
    health = summary["generator"].get("health") or {}
    log(f"{label} {summary['totals']['chains']} chains, "
        f"{summary['endpoints'].get(SHIFTED_ENDPOINT, {}).get('count', 0)} "
        f"{SHIFTED_ENDPOINT}, exit {summary['_exit_status']}, generator "
        f"{'healthy' if health.get('ok') else health.get('reason')}")


def trial(i: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    bounds = parse_compare_fail(args.bound)
    runs = {"A": save_a(f"t{i}-A", work, 3 * i + 1, args)}
    describe(f"trial {i + 1}: A", runs["A"])
    for name, spec in (("A2", program(3 * i + 2, delay=args.delay)),
                       ("B", program(3 * i + 3, shifted=True, delay=args.delay))):
        runs[name] = run(f"t{i}-{name}", work, spec, args)
        describe(f"trial {i + 1}: {name}", runs[name])
    base = load_baseline(SAVE_NAME, work / "storage", args.runs)
    a_p95 = runs["A"]["endpoints"].get(SHIFTED_ENDPOINT, {}).get("latency_ms", {}).get("p95")
    out: dict[str, Any] = {"n": len(base.runs), "label": base.label, "A": a_p95}
    for name in ("A2", "B"):
        diffs = compare(runs[name], base.compared)
        found = regressions(diffs, bounds)
        d = next(d for d in diffs if (d.kind, d.name, d.metric) ==
                 ("endpoint", SHIFTED_ENDPOINT, "p95"))
        out[name] = {"flagged": [r.short for r in found], "base": d.baseline,
                     "now": d.current, "noise": d.noise,
                     "hit": any((r.diff.kind, r.diff.name, r.diff.metric) ==
                                ("endpoint", SHIFTED_ENDPOINT, "p95") for r in found)}
    log(f"trial {i + 1}: baseline {base.label}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 trials of 4 s runs")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--load", type=int, default=8)
    ap.add_argument("--bound", default="p95:10%")
    ap.add_argument("--delay", default=f"{DELAY[0]:g}:{DELAY[1]:g}", metavar="P50:P99",
                    help="the answers' lognormal delay in ms (default %(default)s)")
    ap.add_argument("--runs", type=int, default=5,
                    help="the saved A runs the baseline is made of (--wec-compare-runs)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs: expected a whole number >= 1")
    try:
        p50, p99 = (float(x) for x in args.delay.split(":"))
    except ValueError:
        ap.error(f"--delay: expected P50:P99 in ms, such as 20:26, got {args.delay!r}")
    if not 0 < p50 <= p99:
        ap.error(f"--delay: expected 0 < P50 <= P99, got {args.delay!r}")
    args.delay = (p50, p99)
    if args.quick:
        args.trials, args.duration = min(args.trials, 3), 4.0
    print(f"regression gate: {args.trials} trials, {args.duration:g} s runs at --wec-load "
          f"{args.load}, answers lognormal p50 {p50:g} ms p99 {p99:g} ms, bound {args.bound}, "
          f"baseline of the last {args.runs} A runs ({args.runs - 1} extra A runs first); "
          f"{machine()}")
    rows, aa_clean, ab_hit = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="wec-gate-") as tmp:
        for j in range(args.runs - 1):  # the baseline's older runs: not counted
            describe(f"extra A {j + 1} of {args.runs - 1}:",
                     save_a(f"x{j}-A", Path(tmp), 100_000 + j, args))
        for i in range(args.trials):
            r = trial(i, Path(tmp), args)
            aa_clean += not r["A2"]["flagged"]
            ab_hit += r["B"]["hit"]
            rows.append([i + 1, r["n"], r["A"], r["A2"]["base"], r["A2"]["now"],
                         r["A2"]["noise"], ", ".join(r["A2"]["flagged"]) or "-",
                         r["B"]["now"], r["B"]["noise"], "yes" if r["B"]["hit"] else "NO",
                         ", ".join(r["B"]["flagged"])])
    print(table(["trial", "n", "A p95 ms", "base p95 ms", "A' p95 ms", "noise", "A/A flagged",
                 "B p95 ms", "noise", "B flagged", "B/A flagged (all)"], rows))
    print(f"A/A: nothing flagged in {aa_clean} of {args.trials} (target >= 95%); "
          f"A/B: {SHIFTED_ENDPOINT} p95 flagged in {ab_hit} of {args.trials} (target: all); "
          f"baseline: the median of the last {args.runs} A runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
