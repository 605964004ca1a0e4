"""Open-model accuracy: achieved against asked start rate, and schedule lag p50/p99.

    .venv/bin/python bench/bench_rate_accuracy.py [--quick] [--rates 5,20,50,100]

For each rate, two chains, each run by two schedulers in one asyncio process:

    chains       trivial     returns at once (no CA): the scheduler alone
                 stub CA     a full issuance (newAccount ... download) against bench/stubca.py
                             over HTTPS, a fresh stub CA per measurement
    schedulers   LoadRunner  pytest_wec.worker.runner's open model (absolute schedule)
                 naive       ``while ...: await asyncio.sleep(1 / rate); start a chain``

The k-th start is due at t0 + k/rate; its lag is when it really started minus that. The
achieved rate counts the starts that really happened within the run's duration. Both
schedulers start each chain through ``run_chain``, so they do the same work per start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import issue_ours, log, machine, our_network, percentile, run_like_worker, table
from stubca import start_stub_ca

from pytest_wec._chain import ChainInfo
from pytest_wec.acme import AcmeNetwork, MockTransport, Response
from pytest_wec.settings import Settings
from pytest_wec.worker.context import ChainContext
from pytest_wec.worker.runner import LoadPlan, LoadRunner, run_chain

ChainFn = Callable[[ChainContext], Awaitable[None]]


class BenchRuntime:
    """The parts of a WorkerRuntime a ChainContext touches, without a state DB."""

    def __init__(self, network: AcmeNetwork) -> None:
        self.network = network
        self.settings = Settings()
        self.directory = network.directory_url
        self.info: dict[str, Any] = {}
        self.store: Any = None
        self.publisher: Any = None
        self.pebble: Any = None
        self.holder = "bench"
        self.accounts: list[Any] = []


async def trivial(ctx: ChainContext) -> None:
    return None


async def stub_issue(ctx: ChainContext) -> None:
    await issue_ours(ctx.client, None)


async def with_runner(runtime: BenchRuntime, fn: ChainFn, rate: float,
                      duration: float) -> tuple[list[float], int]:
    results: list[Any] = []
    plan = LoadPlan("open", 0, 1, None, rate, None, duration, 30.0)
    runner = LoadRunner(runtime, {"c": (ChainInfo("c", frozenset(), frozenset()), fn)}, plan,
                        emit=results.append, choose=lambda: "c", worker="bench")
    await runner.run()
    failed = sum(1 for r in results if not r["ok"])
    return runner.lags, failed


async def with_naive(runtime: BenchRuntime, fn: ChainFn, rate: float,
                     duration: float) -> tuple[list[float], int]:
    results: list[Any] = []
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []

    async def one(scheduled: float) -> None:
        results.append(await run_chain(runtime, "c", fn, worker="bench", scheduled=scheduled))

    t0 = time.monotonic()
    wall0 = time.time()
    k = 0
    while time.monotonic() - t0 < duration:
        await asyncio.sleep(1 / rate)
        k += 1
        now = time.monotonic()
        lags.append(now - (t0 + k / rate))
        task = asyncio.get_running_loop().create_task(one(wall0 + k / rate))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    failed = sum(1 for r in results if not r["ok"])
    return lags, failed


def achieved(lags: list[float], rate: float, duration: float, first: int) -> float:
    """Starts that happened within [t0, t0 + duration], per second."""
    n = sum(1 for k, lag in enumerate(lags, first) if k / rate + lag <= duration)
    return n / duration


def measure(kind: str, sched: str, rate: float, duration: float) -> dict[str, Any]:
    fn: ChainFn = trivial if kind == "trivial" else stub_issue
    proc = None
    if kind == "trivial":
        net = AcmeNetwork("https://ca.invalid/dir", MockTransport(lambda r: Response.make(500)))
    else:
        proc, url, ca = start_stub_ca(Path(tempfile.mkdtemp(prefix="wec-stubca-")))
        net = our_network(url, ca)
    try:
        async def go() -> tuple[list[float], int, float]:
            runtime = BenchRuntime(net)
            if kind != "trivial":  # the directory and a first connection
                await issue_ours(net.client("warm", "0"), None)
            cpu0 = time.process_time()
            runner = with_runner if sched == "LoadRunner" else with_naive
            lags, failed = await runner(runtime, fn, rate, duration)
            cpu = time.process_time() - cpu0
            await net.aclose()
            return lags, failed, cpu

        lags, failed, cpu = run_like_worker(go())
    finally:
        if proc is not None:
            proc.stop()
    first = 0 if sched == "LoadRunner" else 1
    return {"achieved": achieved(lags, rate, duration, first), "starts": len(lags),
            "p50": percentile(lags, 50) * 1000, "p99": percentile(lags, 99) * 1000,
            "failed": failed, "cpu_pct": 100 * cpu / duration}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 s per measurement")
    ap.add_argument("--duration", type=float, help="seconds per measurement")
    ap.add_argument("--rates", default="5,20,50,100", help="comma-separated starts/s")
    args = ap.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 12.0)
    rates = [float(r) for r in args.rates.split(",")]
    print(f"bench_rate_accuracy: {duration:g}s per measurement; {machine()}")
    rows: list[list[object]] = []
    worst: dict[str, float] = {"LoadRunner": 0.0, "naive": 0.0}
    for kind in ("trivial", "stub CA"):
        for rate in rates:
            for sched in ("LoadRunner", "naive"):
                log(f"{kind}, {rate:g}/s, {sched}")
                m = measure(kind, sched, rate, duration)
                err = 100 * (m["achieved"] - rate) / rate
                worst[sched] = max(worst[sched], abs(err))
                rows.append([kind, f"{rate:g}", sched, m["achieved"], f"{err:+.1f}%",
                             m["p50"], m["p99"], m["failed"], m["cpu_pct"]])
    print(table(["chain", "asked/s", "scheduler", "achieved/s", "error", "lag p50 ms",
                 "lag p99 ms", "failed", "CPU %"], rows))
    print(f"worst rate error: LoadRunner {worst['LoadRunner']:.1f}%, "
          f"naive sleep loop {worst['naive']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
