"""Generator CPU per issued certificate and per request, ours against certbot's ``acme``.

    .venv/bin/python bench/bench_client_cpu.py [--quick] [--certs N] [--concurrency C]

Both clients run the same flow against the same embedded Pebble 2.4 (a fresh one per
measurement, started by ``pytest_wec.stack.Stack``): newAccount with a new ES256 key,
newOrder for one random name, the http-01 answer written to the challenge server's Redis
store, answer the challenge, poll, finalize with a new P-256 CSR, poll, download.

    ours       AcmeNetwork/AcmeClient on the default transport (httptools) and event loop
               (uvloop), C concurrent tasks on one loop, challenges through RedisPublisher (async)
    certbot    acme.client.ClientV2/ClientNetwork (requests, josepy), C threads in one
               process, challenges through a synchronous Redis client, same keys

CPU is ``time.process_time()`` of this process (all its threads), between the start and the
end of the measured certificates; Pebble, Redis and the challenge server run in their own
processes and are not counted. A warm-up round (one certificate per task or thread) opens
the connections first. Prints CPU ms per certificate and per HTTP request for both, and
ours/certbot ratios; targets: ours <= 1/5 of certbot per certificate, <= 0.3 ms per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CertbotIssuer,
    fresh_stack,
    issue_ours,
    log,
    machine,
    our_network,
    run_like_worker,
    sync_redis,
    table,
)

from pytest_wec.acme import AccountKey
from pytest_wec.worker.publish import RedisPublisher

TARGET_RATIO = 5.0
TARGET_REQUEST_MS = 0.3


def measure_ours(certs: int, concurrency: int, *, ca: tuple[str, str | None] | None = None,
                 new_accounts: bool = True) -> dict[str, Any]:
    """*certs* certificates by *concurrency* tasks on one event loop, after a warm-up of one
    each. *ca*: (directory URL, CA bundle) to issue from instead of the stack's Pebble (the
    stack still gives Redis and the challenge server). *new_accounts* False: each task makes
    its account in the warm-up and issues every certificate on it (as new_certificate
    chains take an existing account)."""
    with fresh_stack() as stack:
        info = stack.info
        directory, bundle = ca if ca is not None else (info["directory"], info["ca_bundle"])

        async def run() -> dict[str, Any]:
            results: list[Any] = []
            net = our_network(directory, bundle)
            pub = RedisPublisher(info["redis_url"], info["namespace"])
            acme = net.client("bench", "1", results.append)
            try:
                accounts: list[Any] = [None] * concurrency
                if not new_accounts:
                    accounts = list(await asyncio.gather(
                        *(acme.new_account(AccountKey.generate("ES256"))
                          for _ in range(concurrency))))
                await asyncio.gather(*(issue_ours(acme, pub, a) for a in accounts))
                left = [certs]
                errors: list[str] = []

                async def task(account: Any) -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        try:
                            await issue_ours(acme, pub, account)
                        except Exception as exc:  # counted, reported
                            errors.append(f"{type(exc).__name__}: {exc}")

                results.clear()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(task(a) for a in accounts))
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                return {"certs": certs - len(errors), "errors": errors, "cpu": cpu,
                        "wall": wall, "requests": len(results)}
            finally:
                await pub.aclose()
                await net.aclose()

        return run_like_worker(run())


def measure_certbot(certs: int, concurrency: int, *, ca: tuple[str, str | None] | None = None,
                    new_accounts: bool = True) -> dict[str, Any]:
    """The same as :func:`measure_ours` on certbot's ``acme``, *concurrency* threads (the
    warm-up makes each thread's account)."""
    with fresh_stack() as stack:
        info = stack.info
        directory, bundle = ca if ca is not None else (info["directory"], info["ca_bundle"])
        redis = sync_redis(info["redis_url"])
        issuers = [CertbotIssuer(directory, bundle, redis, info["namespace"])
                   for _ in range(concurrency)]
        lock = threading.Lock()
        left = [certs]
        errors: list[str] = []

        def warm(issuer: CertbotIssuer) -> None:
            issuer.issue()

        def worker(issuer: CertbotIssuer) -> None:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                try:
                    issuer.issue(new_account=new_accounts)
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        def run_all(fn: Any) -> None:
            threads = [threading.Thread(target=fn, args=(i,)) for i in issuers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        run_all(warm)
        sent0 = CertbotIssuer.requests_sent()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        run_all(worker)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        requests = CertbotIssuer.requests_sent() - sent0 - 1
        redis.close()
        return {"certs": certs - len(errors), "errors": errors, "cpu": cpu, "wall": wall,
                "requests": requests}


def seq_ours(n: int) -> float:
    """CPU µs per POST-as-GET of the account, one after another (the per-request floor)."""
    with fresh_stack() as stack:
        info = stack.info

        async def run() -> float:
            results: list[Any] = []
            net = our_network(info["directory"], info["ca_bundle"])
            acme = net.client("bench", "1", results.append)
            account = await acme.new_account(AccountKey.generate("ES256"))
            for _ in range(50):
                await acme.fetch_account(account)
            cpu0 = time.process_time()
            for _ in range(n):
                await acme.fetch_account(account)
            cpu = time.process_time() - cpu0
            await net.aclose()
            return cpu / n * 1e6

        return run_like_worker(run())


def seq_certbot(n: int) -> float:
    with fresh_stack() as stack:
        info = stack.info
        issuer = CertbotIssuer(info["directory"], info["ca_bundle"], None, info["namespace"])
        issuer.new_account()
        from acme import messages

        uri = issuer.account.uri

        def fetch() -> None:
            resp = issuer.client._post_as_get(uri)
            messages.Registration.from_json(resp.json())

        for _ in range(50):
            fetch()
        cpu0 = time.process_time()
        for _ in range(n):
            fetch()
        return (time.process_time() - cpu0) / n * 1e6


def row(name: str, runs: list[dict[str, Any]]) -> tuple[list[object], float, float]:
    per_cert = statistics.median(r["cpu"] / max(r["certs"], 1) * 1000 for r in runs)
    per_req = statistics.median(r["cpu"] / max(r["requests"], 1) * 1000 for r in runs)
    certs = sum(r["certs"] for r in runs)
    reqs = sum(r["requests"] for r in runs)
    errs = sum(len(r["errors"]) for r in runs)
    rate = statistics.median(r["certs"] / r["wall"] for r in runs)
    return ([name, certs, errs, reqs / max(certs, 1), per_cert, per_req, rate],
            per_cert, per_req)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer certificates, one round")
    ap.add_argument("--certs", type=int, help="certificates per measurement")
    ap.add_argument("--concurrency", type=int, default=8, help="tasks / threads (default 8)")
    ap.add_argument("--rounds", type=int, help="measurements per client (median kept)")
    args = ap.parse_args(argv)
    certs = args.certs or (40 if args.quick else 150)
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"bench_client_cpu: {certs} certificates x {rounds} rounds per client, "
          f"{args.concurrency} concurrent; {machine()}")
    ours: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    for r in range(rounds):  # interleaved, so that a noisy minute hits both
        log(f"round {r + 1}: ours")
        ours.append(measure_ours(certs, args.concurrency))
        log(f"round {r + 1}: certbot acme")
        base.append(measure_certbot(certs, args.concurrency))
    log("POST-as-GET loop: ours, certbot acme")
    seq_n = 300 if args.quick else 1000
    seq_o, seq_b = seq_ours(seq_n), seq_certbot(seq_n)
    row_o, cert_o, req_o = row("ours (httptools, uvloop)", ours)
    row_b, cert_b, req_b = row("certbot acme (threads)", base)
    print(table(["client", "certs", "errors", "req/cert", "CPU ms/cert", "CPU ms/req",
                 "certs/s wall"], [row_o, row_b]))
    for runs in (ours, base):
        for r in runs:
            for e in r["errors"][:3]:
                print(f"  error: {e}")
    print(f"POST-as-GET of the account, {seq_n} one after another (per-request floor):")
    print(table(["client", "CPU µs/request", "vs ours"],
                [["ours (httptools, uvloop)", seq_o, "1.00x"],
                 ["certbot acme (requests)", seq_b, f"{seq_b / seq_o:.2f}x"]]))
    ratio = cert_b / cert_o
    print(f"CPU per certificate: certbot/ours = {ratio:.1f}x "
          f"(target >= {TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'MISSED'})")
    seq_ms = seq_o / 1000
    print(f"CPU per request with its JWS (POST-as-GET, one after another): {seq_ms:.3f} ms; "
          f"certbot/ours = {seq_b / seq_o:.1f}x (target <= {TARGET_REQUEST_MS} ms: "
          f"{'met' if seq_ms <= TARGET_REQUEST_MS else 'MISSED'})")
    print(f"All CPU of the flow / its requests: ours {req_o:.3f} ms, certbot {req_b:.3f} ms "
          f"(includes key and CSR generation, challenge publishing and waking up between "
          f"answers; {'within' if req_o <= TARGET_REQUEST_MS else 'above'} "
          f"{TARGET_REQUEST_MS} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
