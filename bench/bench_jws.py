"""Micro-benchmark: CPU per JWS, ours against josepy's, and per ACME request.

    .venv/bin/python bench/bench_jws.py
    .venv/bin/python bench/bench_jws.py --directory https://127.0.0.1:14000/dir --insecure

Prints microseconds of CPU per flattened JWS for the hand-built signer
(``sign_jws``) and the josepy-based reference (``josepy_sign``), and their
ratio, per key type and for ``kid`` and ``jwk`` headers. It then measures the
client's CPU per request without HTTP (a canned MockTransport answer), and,
with ``--directory``, per POST-as-GET against a real CA such as Pebble
(process CPU time: the CA's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.acme import (
    AccountKey,
    AcmeNetwork,
    AiohttpTransport,
    HttptoolsTransport,
    HttpxTransport,
    MockTransport,
    Request,
    Response,
    Transport,
    josepy_sign,
    make_ssl_context,
    sign_jws,
)

URL = "https://127.0.0.1:14000/my-order/0123456789abcdef0123456789abcdef"
KID = "https://127.0.0.1:14000/my-account/0123456789abcdef"
NONCE = "vHhB3gbDzxKJ7OEyb8rEcQ"


def cpu_us(fn: Callable[[], object], seconds: float) -> float:
    """Mean process CPU microseconds per call, over about ``seconds``."""
    for _ in range(50):
        fn()
    n, batch = 0, 100
    start = time.process_time()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        spent = time.process_time() - start
        if spent >= seconds:
            return spent / n * 1e6


def bench_jws(seconds: float) -> None:
    print(f"{'key':8} {'header':6} {'ours µs':>9} {'josepy µs':>10} {'ratio':>7}")
    for alg, bits in (("ES256", 0), ("ES384", 0), ("RS256", 2048)):
        key = AccountKey.generate(alg, bits=bits or 2048)
        payload = b'{"identifiers":[{"type":"dns","value":"a.example.test"}]}'
        for kid in (KID, None):
            ours = cpu_us(partial(sign_jws, key, URL, payload, NONCE, kid), seconds)
            ref = cpu_us(partial(josepy_sign, key, URL, payload, NONCE, kid), seconds)
            header = "kid" if kid else "jwk"
            print(f"{alg:8} {header:6} {ours:9.1f} {ref:10.1f} {ref / ours:6.1f}x")


def canned(req: Request) -> Response:
    return Response.make(
        200,
        {"Replay-Nonce": NONCE, "Content-Type": "application/json"},
        b'{"status":"valid","contact":[],"orders":"https://x/orders"}',
    )


async def per_request(
    directory: str, transport: Transport, seconds: float, label: str, mock: bool = False
) -> None:
    net = AcmeNetwork(directory, transport, max_nonce_retries=10)
    results: list[object] = []
    acme = net.client("bench", "1", results.append)
    key = AccountKey.generate("ES256")
    if mock:
        from pytest_wec.acme import Account

        account = Account(KID, key, {})
        net._directory = None
    else:
        account = await acme.new_account(key)
    for _ in range(20):
        await acme.fetch_account(account)
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < seconds:
        for _ in range(50):
            await acme.fetch_account(account)
        n += 50
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await net.aclose()
    print(
        f"{label:34} {cpu / n * 1e6:8.1f} µs CPU/request "
        f"({n} requests, {n / wall:7.0f} req/s sequential, incl. JWS and observer)"
    )


def canned_transport() -> Transport:
    def handler(req: Request) -> Response:
        if req.method == "GET":
            return Response.make(
                200,
                {"Content-Type": "application/json"},
                b'{"newNonce":"https://x/n","newAccount":"https://x/a","newOrder":"https://x/o"}',
            )
        return canned(req)

    return MockTransport(handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="CPU seconds per measurement")
    parser.add_argument("--directory", help="ACME directory URL to measure requests against")
    parser.add_argument("--insecure", action="store_true", help="do not verify the CA's TLS")
    parser.add_argument("--ca-bundle", help="CA bundle for the directory's TLS")
    parser.add_argument("--httpx", action="store_true", help="also measure HttpxTransport")
    args = parser.parse_args()

    bench_jws(args.seconds)
    print()
    asyncio.run(
        per_request("https://x/dir", canned_transport(), args.seconds, "client, no HTTP", True)
    )
    if args.directory:
        ctx = make_ssl_context(args.ca_bundle, args.insecure)
        asyncio.run(
            per_request(args.directory, HttptoolsTransport(ssl=ctx), args.seconds * 2,
                        "httptools")
        )
        asyncio.run(
            per_request(args.directory, AiohttpTransport(ssl=ctx), args.seconds * 2, "aiohttp")
        )
        if args.httpx:
            asyncio.run(
                per_request(args.directory, HttpxTransport(verify=ctx), args.seconds * 2, "httpx")
            )


if __name__ == "__main__":
    main()
