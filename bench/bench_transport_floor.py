"""CPU per HTTPS exchange of the HTTP layers alone, on one keep-alive connection.

    .venv/bin/python bench/bench_transport_floor.py [--quick]

Sequential POSTs of a JWS-sized body (600 bytes) to the stub CA (bench/stubca.py, which
answers its ~400-byte directory JSON), no JWS and no ACME logic:

    HttptoolsTransport      the product's default transport (asyncio protocol + httptools;
                            on Linux read with the kernel's receive stamps)
    ..., loop reads         the same with ``kernel_stamps=False``: read through the event
                            loop's own TLS transport (what the stamps cost)
    AiohttpTransport        the product's aiohttp transport (ClientSession underneath)
    aiohttp session         a bare ``session.post(...)`` + ``read()``
    asyncio streams         a minimal HTTP/1.1 exchange over ``asyncio.open_connection``
                            (Content-Length only, no pooling, no chunked bodies): a floor
                            for a Python transport on this machine
    requests.Session        certbot's HTTP layer (blocking, one thread)

each on the standard asyncio event loop and on uvloop (the default of load runs). Best of
several interleaved rounds, in µs of process CPU per exchange, against the default
(HttptoolsTransport on uvloop). It says how much of bench_client_cpu.py's per-request
figure is the HTTP layer.

On uvloop it also measures a request with its JWS against its floor, interleaved in the same
rounds: ``AcmeClient.fetch_account`` (a POST-as-GET of an account: nonce, JWS, exchange,
parse, the request recorded) beside an ES256 signature of a JWS-sized input followed by the
asyncio-streams exchange, and prints the ratio (target: within 1.3x).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from _common import best_of, machine, our_network, table
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from stubca import start_stub_ca

from pytest_wec.acme import (
    AccountKey,
    AiohttpTransport,
    Headers,
    HttptoolsTransport,
    Response,
    make_ssl_context,
)
from pytest_wec.worker.runner import new_event_loop

BODY = b'{"protected":"' + b"x" * 560 + b'","payload":""}'
HEADERS = {"Content-Type": "application/jose+json", "User-Agent": "bench"}


FLOOR = "floor: ES256 signature + asyncio streams"
WITH_JWS = "ours: POST-as-GET with its JWS (AcmeClient)"


async def run(url: str, ca: str | None, n: int, rounds: int,
              with_jws: bool = False) -> dict[str, float]:
    ctx = make_ssl_context(ca)
    parts = urlsplit(url)
    transport = AiohttpTransport(ssl=ctx)
    lean = HttptoolsTransport(ssl=ctx)
    unstamped = HttptoolsTransport(ssl=ctx, kernel_stamps=False)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=ctx)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bench\r\n"
            f"Content-Type: application/jose+json\r\nContent-Length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY

    async def ours() -> None:
        await lean.request("POST", url, headers=HEADERS, body=BODY, timeout=10)

    async def loop_reads() -> None:
        await unstamped.request("POST", url, headers=HEADERS, body=BODY, timeout=10)

    async def aio() -> None:
        await transport.request("POST", url, headers=HEADERS, body=BODY, timeout=10)

    async def bare() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            await resp.read()

    async def streams() -> None:
        writer.write(head)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = Headers((k, v.strip()) for k, _, v in
                          (line.partition(":") for line in lines[1:] if line))
        size = int(headers.get("content-length", 0))
        Response(status, headers, await reader.readexactly(size) if size else b"")

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "HttptoolsTransport": ours, "HttptoolsTransport, loop reads": loop_reads,
        "AiohttpTransport": aio, "aiohttp session": bare,
        "asyncio streams": streams}
    if with_jws:
        # the floor of a request with its JWS: an ES256 signature (cryptography, the
        # signature alone) of a JWS-sized input, then the minimal exchange above
        key = ec.generate_private_key(ec.SECP256R1())
        ecdsa = ec.ECDSA(hashes.SHA256())
        signing_input = BODY[:480]

        async def floor() -> None:
            key.sign(signing_input, ecdsa)
            await streams()

        # ours: the product's request with its JWS, a POST-as-GET of the account
        net = our_network(url, ca)
        acme = net.client("bench", "floor", lambda _result: None)
        account = await acme.new_account(AccountKey.generate("ES256"))

        async def post_as_get() -> None:
            await acme.fetch_account(account)

        variants[FLOOR] = floor
        variants[WITH_JWS] = post_as_get
    best = await best_of(variants, n, rounds)
    if with_jws:
        await net.aclose()
    await transport.aclose()
    await lean.aclose()
    await unstamped.aclose()
    await session.close()
    writer.close()
    return best


def run_requests(url: str, ca: str | None, n: int, rounds: int) -> float:
    import requests

    s = requests.Session()
    for _ in range(50):
        s.post(url, data=BODY, headers=HEADERS, verify=ca).content  # noqa: B018
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        for _ in range(n):
            s.post(url, data=BODY, headers=HEADERS, verify=ca).content  # noqa: B018
        best = min(best, (time.process_time() - c0) / n * 1e6)
    s.close()
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n, rounds = (200, 3) if args.quick else (500, 8)
    print(f"bench_transport_floor: {n} POSTs x best of {rounds}; {machine()}")
    proc, url, ca = start_stub_ca(Path(tempfile.mkdtemp(prefix="wec-stubca-")))
    try:
        best: dict[str, float] = {}
        for loop_name in ("uvloop", "asyncio"):
            with asyncio.Runner(loop_factory=lambda n=loop_name: new_event_loop(n)) as runner:
                for k, v in runner.run(run(url, ca, n, rounds,
                                           with_jws=loop_name == "uvloop")).items():
                    best[f"{k}, {loop_name}"] = v
        best["requests.Session (certbot), threads"] = run_requests(url, ca, n, rounds)
    finally:
        proc.stop()
    ref = best["HttptoolsTransport, uvloop"]
    floor, ours = best.pop(f"{FLOOR}, uvloop"), best.pop(f"{WITH_JWS}, uvloop")
    print(table(["HTTP layer, event loop", "CPU µs/exchange", "vs default"],
                [[k, v, f"{v / ref:.2f}x"] for k, v in best.items()]))
    print()
    print(table(["a request with its JWS, uvloop", "CPU µs/request", "vs floor"],
                [[FLOOR, floor, "1.00x"], [WITH_JWS, ours, f"{ours / floor:.2f}x"]]))
    print(f"per request with its JWS: {ours:.1f} µs, {ours / floor:.2f}x the floor measured in "
          f"the same run ({floor:.1f} µs; target <= 1.3x: "
          f"{'met' if ours <= 1.3 * floor else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
