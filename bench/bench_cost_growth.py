"""Generator CPU per chain as the number of chains in flight grows: 1, 10, 100, 1,000.

    .venv/bin/python bench/bench_cost_growth.py [--quick] [--levels 1,10,100,1000]
                                                 [--pebble-cap 20]

The chain is an issuance for one of 20 existing accounts (newOrder, http-01, finalize, poll,
download: what the new_certificate chain does) run by
``pytest_wec.worker.runner.LoadRunner`` in the closed model (N chains in flight) in this process,
one AcmeNetwork (aiohttp) for all. CPU is ``time.process_time()`` of this process over the
measured run (after a warm-up run that opened the connections), divided by the chains and
the requests that completed.

    stub CA   bench/stubca.py over HTTPS (its own process, a fresh one per level): fast and
              validating at once, so the generator's own curve shows
    Pebble    the embedded Pebble 2.4 (a fresh stack per level), challenges through
              RedisPublisher and the challenge server. Capped at --pebble-cap (20) in
              flight: Debian's Pebble 2.4 hangs under concurrent load (30, 50 and 100
              in flight hung it here: requests time out after 30 s). A level where
              over 1% of the chains failed is left out of the verdict.

Target: CPU per chain flat within 20% from 10 to 1,000 in flight.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_stack, issue_ours, log, machine, our_network, run_like_worker, table
from bench_rate_accuracy import BenchRuntime
from stubca import start_stub_ca

from pytest_wec._chain import ChainInfo
from pytest_wec.acme import AccountKey
from pytest_wec.worker.context import ChainContext
from pytest_wec.worker.publish import RedisPublisher
from pytest_wec.worker.runner import LoadPlan, LoadRunner

TARGET_PCT = 20.0
ACCOUNTS = 20  # accounts the chains pick from, made before the measurement


async def chain(ctx: ChainContext) -> None:
    # an existing account, as the new_certificate chain takes one: a newAccount per chain
    # racing finalizations is what hangs Pebble 2.4 soonest
    await issue_ours(ctx.client, ctx.publisher, random.choice(ctx.runtime.accounts))


async def closed_run(runtime: BenchRuntime, n: int, duration: float) -> dict[str, Any]:
    results: list[Any] = []
    plan = LoadPlan("closed", 0, 1, n, None, None, duration, 60.0)
    runner = LoadRunner(runtime, {"c": (ChainInfo("c", frozenset(), frozenset()), chain)},
                        plan, emit=results.append, choose=lambda: "c", worker="bench")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await runner.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    ok = [r for r in results if r["ok"]]
    return {"chains": len(ok), "failed": len(results) - len(ok), "cpu": cpu, "wall": wall,
            "requests": sum(len(r["requests"]) for r in ok),
            "error": next((r["error"] for r in results if not r["ok"]), None)}


def measure(ca: str, n: int, duration: float) -> dict[str, Any]:
    async def go(directory: str, bundle: str | None, redis: str | None,
                 ns: str | None) -> dict[str, Any]:
        net = our_network(directory, bundle)
        runtime = BenchRuntime(net)
        if redis is not None and ns is not None:
            runtime.publisher = RedisPublisher(redis, ns)
        acme = net.client("setup", "0")
        runtime.accounts = [await acme.new_account(AccountKey.generate("ES256"))
                            for _ in range(ACCOUNTS)]
        try:
            await closed_run(runtime, n, min(2.0, duration))  # connections, directory
            return await closed_run(runtime, n, duration)
        finally:
            if runtime.publisher is not None:
                await runtime.publisher.aclose()
            await net.aclose()

    if ca == "stub CA":
        proc, url, bundle = start_stub_ca(Path(tempfile.mkdtemp(prefix="wec-stubca-")))
        try:
            return run_like_worker(go(url, bundle, None, None))
        finally:
            proc.stop()
    with fresh_stack() as stack:
        i = stack.info
        return run_like_worker(go(i["directory"], i["ca_bundle"], i["redis_url"], i["namespace"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 s per level")
    ap.add_argument("--duration", type=float, help="measured seconds per level")
    ap.add_argument("--levels", default="1,10,100,1000", help="chains in flight")
    ap.add_argument("--pebble-cap", type=int, default=20,
                    help="most chains in flight against Pebble (default 20)")
    args = ap.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 15.0)
    levels = [int(x) for x in args.levels.split(",")]
    print(f"bench_cost_growth: {duration:g}s per level (after a warm-up); {machine()}")
    rows: list[list[object]] = []
    per_chain: dict[str, dict[int, float]] = {"stub CA": {}, "Pebble": {}}
    for ca in ("stub CA", "Pebble"):
        ran: set[int] = set()
        for n in levels:
            label: object = n
            if ca == "Pebble" and n > args.pebble_cap:
                if args.pebble_cap in ran or args.pebble_cap in levels:
                    rows.append([ca, n, "-", "-", "-", "-", "-",
                                 f"not run: over --pebble-cap {args.pebble_cap}"])
                    continue
                n, label = args.pebble_cap, f"{n} -> {args.pebble_cap} (cap)"
            log(f"{ca}: {n} in flight")
            ran.add(n)
            m = measure(ca, n, duration)
            chains = max(m["chains"], 1)
            cpu_chain = m["cpu"] / chains * 1000
            if m["failed"] > 0.01 * (m["chains"] + m["failed"]):
                log(f"{ca}, {n} in flight: {m['failed']} failed ({m['error']}); "
                    "left out of the verdict")
            else:
                per_chain[ca][n] = cpu_chain
            rows.append([ca, label, m["chains"], m["failed"], m["requests"] / chains, cpu_chain,
                         m["cpu"] / max(m["requests"], 1) * 1000,
                         f"{m['chains'] / m['wall']:.1f}/s" + (f"  {m['error'][:60]}"
                                                              if m["error"] else "")])
    print(table(["CA", "in flight", "chains", "failed", "req/chain", "CPU ms/chain",
                 "CPU ms/req", "chains/s"], rows))
    for ca, by_n in per_chain.items():
        ref = by_n.get(10)
        rest = [v for n, v in by_n.items() if n > 10]
        if ref and rest:
            changes = [100 * (v - ref) / ref for v in rest]
            top = max(n for n in by_n if n > 10)
            verdict = "met" if max(abs(c) for c in changes) <= TARGET_PCT else "MISSED"
            print(f"{ca}: CPU/chain above 10 and up to {top} in flight is {min(changes):+.0f}% "
                  f"to {max(changes):+.0f}% of 10's (target within {TARGET_PCT:g}%: {verdict})")
        elif ref:
            print(f"{ca}: no level above 10 in flight completed; no verdict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
