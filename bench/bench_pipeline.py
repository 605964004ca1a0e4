"""Throughput of the controller's results pipeline, in RequestResults per second.

    .venv/bin/python bench/bench_pipeline.py [--quick] [--chains N] [--repeat R]
                                              [--producers 16] [--seconds S] [--steps K]

First, in this process, on one core, on synthetic ChainResults (8 requests each, as a full
issuance chain makes):

    aggregate            Aggregator.add
    log jsonl / msgpack  ResultLogWriter.write_many
    pipeline             aggregate + jsonl log (the target: >= 50,000 RequestResults/s)
    pipeline + decode    the same, fed by decode_batch (what the controller really does)
    producer encode      encode_batch (the cost a worker pays per batch)
    naive baseline       json.dumps per chain + lists of latencies, sorted-list percentiles

each rate with its ratio to the naive baseline, best of ``--repeat`` runs.

Then end to end, over the transport the workers use: a fresh redis-server
(``pytest_wec.stack``'s), the controller's real :class:`LoadSession` in this process (its
``wec-results`` thread: ResultSource's XREAD, decode, results log, Aggregator, watch and
failure ledger; its ``wec-progress`` thread: the live line every 2 s), and P producer
processes, each a :class:`ResultSink` on uvloop as in an xdist worker (flush every 0.5 s or
every 500 chains, XADD in pipelines), for ``--seconds``, then closing (its end record). The
producers start at once (each says ``ready`` once its chains are made, then all are told
``go``) and between them offer a given rate of RequestResults, each adding its share of
chains on an absolute schedule (every 5 ms, what is due), as a worker adds chains as they
end. The same synthetic chains, 8 requests each, go round.

The rates are over the steady part of the producers' window, from 1 s in (every sink has
flushed once) to its end: *sent* is what the sinks had XADDed (each producer's count at both
ends, summed), *received* what the controller took in; the backlog is what the sinks had
sent by the end and the controller had not yet taken in. A rate is *kept up* when the
controller received at least 95% of what was sent and held under one second of it unread at
the end. P = 1, then P = ``--producers`` (16), each a ramp of offered rates from the target
(50,000/s) up by 1.5x (``--steps``) until one is not kept up, every step on a fresh Redis
and controller. CPU over the steady part, from /proc, in % of one core: the controller
(this process, and its ``wec-results`` thread alone), the producers, redis-server, and the
whole machine (anybody's processes). Target: >= 50,000 RequestResults/s received from 16
producers. On 2 cores the 16 producers, Redis and the controller share the two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.collector import LoadSession
from pytest_wec.controller.outputs import build_summary
from pytest_wec.controller.resultlog import ResultLogWriter
from pytest_wec.settings import Settings
from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.wire.stream import Batch, decode_batch, encode_batch

TARGET = 50_000
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: chains a producer holds unsent before it waits for its sink (4 of its batches)
PRODUCER_AHEAD = 2000
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


def in_process(args: argparse.Namespace) -> float:
    """The single-process stages; prints their table, returns the pipeline's rate."""
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
    shutil.rmtree(tmp, ignore_errors=True)
    return n_req / dict(rows)["pipeline"]


# -- end to end: producer processes -> Redis -> the controller -------------------------------


def producer_main(worker: str, redis_url: str, ns: str, seed: int, rate: float) -> int:
    """One producer process (``--producer``): says ``ready`` once its chains are made, then
    from ``go END`` (an epoch on stdin) until END adds chains to a ResultSink on the workers'
    event loop, *rate* chains per second on an absolute schedule (0: as fast as the sink
    takes them), closes it and prints what it sent and its CPU as JSON."""
    from pytest_wec.wire.sink import ResultSink
    from pytest_wec.worker.runner import new_event_loop

    chains = synthetic(PRODUCER_AHEAD, time.time(), seed=seed)
    for k, c in enumerate(chains):
        cid = f"{worker}-{k}"
        c["worker"], c["chain_id"] = worker, cid
        for r in c["requests"]:
            r["chain_id"] = cid
    per_chain = len(chains[0]["requests"])
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 3 or line[0] != "go":
        return 2
    steady_from, end = float(line[1]), float(line[2])

    async def run() -> dict[str, Any]:
        sink = ResultSink(redis_url, ns, worker)
        await sink.start()
        sink.set_status(in_flight=1, target_share=1.0)
        added, k, n = 0, 0, len(chains)
        cpu0 = time.process_time()
        go = time.time()
        mark: tuple[float, int] | None = None  # (epoch, chains sent) from 1 s in
        while (now := time.time()) < end:
            if mark is None and now >= steady_from:
                mark = (now, sink.sent)
            if rate > 0:  # what is due by now, every 5 ms (a worker adds as chains end)
                due = int((now - go) * rate) - added
            else:  # as fast as the sink takes them
                due = 500 if sink.buffered < PRODUCER_AHEAD else 0
            for _ in range(due):
                sink.add(chains[k])
                k = k + 1 if k + 1 < n else 0
            added += due
            await asyncio.sleep(0.005 if rate > 0 else 0 if due else 0.002)
        sink.set_status(in_flight=0)
        sent_at_end, t_end = sink.sent, time.time()
        await sink.aclose(timeout=60.0)
        steady = ((sent_at_end - mark[1]) * per_chain / max(t_end - mark[0], 1e-9)
                  if mark is not None else 0.0)
        return {"worker": worker, "added": added, "sent_in_window": sent_at_end,
                "sent": sink.sent, "dropped": sink.dropped, "requests_per_chain": per_chain,
                "steady_rate": steady, "cpu_send": time.process_time() - cpu0}

    with asyncio.Runner(loop_factory=lambda: new_event_loop(Settings().loop)) as runner:
        out = runner.run(run())
    print(json.dumps(out), flush=True)
    return 0


class CountingSession(LoadSession):
    """The controller's LoadSession, noting when each batch was taken in and how many
    RequestResults it held (a few µs per batch)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.taken: list[tuple[float, int]] = []  # (epoch, RequestResults so far)
        self._count = 0

    def _batch(self, batch: Batch) -> None:
        super()._batch(batch)
        self._count += sum(len(c["requests"]) for c in batch.chains)
        self.taken.append((time.time(), self._count))

    def taken_by(self, t: float) -> int:
        """RequestResults taken in by epoch *t*."""
        i = bisect.bisect_right(self.taken, (t, float("inf")))
        return self.taken[i - 1][1] if i else 0


def proc_cpu(pid: int, tid: int | None = None) -> float:
    """utime + stime seconds of a process (or of one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def end_to_end(producers: int, seconds: float, tmp: Path, offered: float) -> dict[str, Any]:
    """One measurement: a fresh Redis and controller, *producers* processes sending
    *offered* RequestResults/s between them (0: as fast as they can) for *seconds*."""
    from pytest_wec.stack._redis import start_redis

    run_dir = tmp / f"e2e-{producers}-{offered:g}"
    chain_rate = offered / producers / len(CHAIN)
    redis_proc, redis_url = start_redis(run_dir / "redis")
    ns = uuid.uuid4().hex
    lines: list[str] = []
    session = CountingSession(Settings(load=producers, duration=seconds), run_dir,
                              "bench-" + ns[:6], redis_url, ns, "https://ca.invalid/dir",
                              producers, lines.append)
    procs: list[subprocess.Popen[str]] = []
    try:
        session.start()
        consumer = next(t for t in session._threads if t.name == "wec-results")
        for i in range(producers):
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--producer", f"gw{i}",
                 "--redis", redis_url, "--ns", ns, "--seed", str(i + 1),
                 "--rate", repr(chain_rate)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            if not _read_line(p, 120.0).startswith("ready"):
                raise RuntimeError("a producer did not get ready")
        me, tid = os.getpid(), consumer.native_id
        go = time.time()
        end = go + seconds
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"go {go + 1.0!r} {end!r}\n")
            p.stdin.flush()
        # the steady part: from 1 s in (every sink flushed once) to the end
        time.sleep(max(go + 1.0 - time.time(), 0.0))
        t0 = time.time()
        cpu0 = (time.process_time(), proc_cpu(me, tid), proc_cpu(redis_proc.pid),
                sum(proc_cpu(p.pid) for p in procs), machine_busy())
        time.sleep(max(end - time.time(), 0.0))
        t1 = time.time()
        cpu1 = (time.process_time(), proc_cpu(me, tid), proc_cpu(redis_proc.pid),
                sum(proc_cpu(p.pid) for p in procs), machine_busy())
        steady = max(t1 - t0, 1e-3)
        rate = (session.taken_by(end) - session.taken_by(go + 1.0)) / max(end - go - 1.0, 1e-3)
        taken_in_window = session.taken_by(end)
        outs = [json.loads(_read_line(p, 120.0) or "{}") for p in procs]
        for p in procs:
            p.wait(30)
        summary = session.finish(timeout=120.0)
        done = time.time()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        redis_proc.stop()
    per_chain = outs[0].get("requests_per_chain", 8) if outs else 8
    sent = sum(o.get("sent", 0) for o in outs) * per_chain
    sent_window = sum(o.get("sent_in_window", 0) for o in outs) * per_chain
    taken = session.taken[-1][1] if session.taken else 0
    last = session.taken[-1][0] if session.taken else go
    shutil.rmtree(run_dir, ignore_errors=True)
    backlog = sent_window - taken_in_window
    sent_rate = sum(o.get("steady_rate", 0.0) for o in outs)
    return {
        "producers": producers, "seconds": seconds, "offered": offered,
        "sent_rate": sent_rate, "received_rate": rate,
        "backlog": backlog, "drain_s": max(last - end, 0.0),
        # kept up: took in what the sinks sent, holding under a second of it unread at the end
        "kept_up": rate >= 0.95 * sent_rate and backlog <= max(offered, sent_rate),
        "overall_rate": taken / max(last - go, 1e-9), "sent": sent, "taken": taken,
        "dropped": sum(o.get("dropped", 0) for o in outs),
        # chains the producers sent that the summary does not hold (the controller counts
        # those it could not take in as results_lost), with those their sinks dropped
        "missing": sum(o.get("sent", 0) for o in outs) - summary["totals"]["chains"]
        + sum(o.get("dropped", 0) for o in outs),
        "controller_pct": 100 * (cpu1[0] - cpu0[0]) / steady,
        "consumer_pct": 100 * (cpu1[1] - cpu0[1]) / steady,
        "redis_pct": 100 * (cpu1[2] - cpu0[2]) / steady,
        "producers_pct": 100 * (cpu1[3] - cpu0[3]) / steady,
        "machine_pct": 100 * (cpu1[4] - cpu0[4]) / steady,
        "finish_s": done - last,
    }


def machine_busy() -> float:
    """CPU seconds every process of the machine used so far, all cores (/proc/stat: all but
    idle and iowait), ours and anybody else's."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK


def _read_line(p: subprocess.Popen[str], timeout: float) -> str:
    """A line from a producer's stdout within *timeout* seconds ("" at EOF or timeout)."""
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return p.stdout.readline()


def ramp(producers: int, seconds: float, tmp: Path, start: float, steps: int,
         rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Offered rates from *start*, times 1.5 each step, until the controller does not keep
    up or *steps* were made; the highest kept up (None: not even the first)."""
    best = None
    offered = start
    for _ in range(steps):
        log_line(f"{producers} producer(s), {offered:,.0f} RequestResults/s offered")
        r = end_to_end(producers, seconds, tmp, offered)
        rows.append(r)
        if not r["kept_up"]:
            break
        best = r
        offered = round(offered * 1.5, -3)
    return best


def log_line(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer chains in process; end to end 5 s at the target rate only")
    ap.add_argument("--chains", type=int, help="chains of the in-process stages (20,000; "
                                               "--quick 5,000)")
    ap.add_argument("--repeat", type=int, help="runs of each in-process stage, best kept "
                                               "(3; --quick 1)")
    ap.add_argument("--producers", type=int, default=16,
                    help="producer processes of the second end-to-end ramp (16)")
    ap.add_argument("--seconds", type=float, help="seconds the producers send per step "
                                                  "(10; --quick 5)")
    ap.add_argument("--steps", type=int, help="offered rates per ramp, from the target up "
                                              "by 1.5x until one is not kept up (5; --quick 1)")
    ap.add_argument("--producer", help=argparse.SUPPRESS)  # a producer process: its worker id
    ap.add_argument("--redis", help=argparse.SUPPRESS)
    ap.add_argument("--ns", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.producer:
        return producer_main(args.producer, args.redis, args.ns, args.seed, args.rate)
    args.chains = args.chains or (5_000 if args.quick else 20_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    steps = args.steps or (1 if args.quick else 5)
    load = os.getloadavg()
    print(f"bench_pipeline: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    rate = in_process(args)
    tmp = Path(tempfile.mkdtemp(prefix="wec-bench-e2e-"))
    rows: list[dict[str, Any]] = []
    best: dict[int, dict[str, Any] | None] = {}
    try:
        for n in dict.fromkeys((1, args.producers)):
            best[n] = ramp(n, seconds, tmp, float(TARGET), steps, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nend to end: P producer processes (ResultSink) -> redis-server -> LoadSession, "
          f"{seconds:g} s of sending per step; rates over its steady {seconds - 1:g} s (from "
          f"1 s in); CPU in % of one core over them, {os.cpu_count()} cores in all; machine: "
          "every process, ours and others'")
    print(f"{'P':>3} {'offered RR/s':>12} {'sent RR/s':>10} {'received RR/s':>14} "
          f"{'backlog RR':>11} "
          f"{'drain s':>8} {'controller %':>13} {'its reader %':>13} {'producers %':>12} "
          f"{'redis %':>8} {'machine %':>10} {'lost':>5}  kept up")
    for r in rows:
        print(f"{r['producers']:>3} {r['offered']:>12,.0f} {r['sent_rate']:>10,.0f} "
              f"{r['received_rate']:>14,.0f} "
              f"{r['backlog']:>11,} {r['drain_s']:>8.2f} {r['controller_pct']:>13.1f} "
              f"{r['consumer_pct']:>13.1f} {r['producers_pct']:>12.1f} {r['redis_pct']:>8.1f} "
              f"{r['machine_pct']:>10.1f} {r['missing']:>5}  {'yes' if r['kept_up'] else 'no'}")
    verdict = "meets" if rate >= TARGET else "MISSES"
    print(f"pipeline {rate:,.0f} RequestResults/s {verdict} the target of {TARGET:,}/s")
    one, many = best.get(1), best.get(args.producers)
    words = {n: (f"{b['received_rate']:,.0f} RequestResults/s (offered {b['offered']:,.0f}/s; "
                 f"controller {b['controller_pct']:.0f}% of a core)" if b else "none kept up")
             for n, b in ((1, one), (args.producers, many))}
    got = many["received_rate"] if many else 0.0
    verdict = "meets" if got >= TARGET else "MISSES"
    print(f"highest rate received and kept up: 1 producer {words[1]}; {args.producers} "
          f"producers {words[args.producers]}: {verdict} the target of {TARGET:,}/s")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
