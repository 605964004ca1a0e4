"""CPU per HTTPS exchange of the HTTP layers alone, on one keep-alive connection.

    .venv/bin/python bench/bench_transport_floor.py [--quick]

Sequential POSTs of a JWS-sized body (600 bytes) to the stub CA (bench/stubca.py, which
answers its ~400-byte directory JSON), no JWS and no ACME logic:

    HttptoolsTransport      the product's default transport (asyncio protocol + httptools)
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
from _common import machine, table
from stubca import start_stub_ca

from pytest_wec.acme import (
    AiohttpTransport,
    Headers,
    HttptoolsTransport,
    Response,
    make_ssl_context,
)
from pytest_wec.worker.runner import new_event_loop

BODY = b'{"protected":"' + b"x" * 560 + b'","payload":""}'
HEADERS = {"Content-Type": "application/jose+json", "User-Agent": "bench"}


async def run(url: str, ca: str | None, n: int, rounds: int) -> dict[str, float]:
    ctx = make_ssl_context(ca)
    parts = urlsplit(url)
    transport = AiohttpTransport(ssl=ctx)
    lean = HttptoolsTransport(ssl=ctx)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=ctx)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bench\r\n"
            f"Content-Type: application/jose+json\r\nContent-Length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY

    async def ours() -> None:
        await lean.request("POST", url, headers=HEADERS, body=BODY, timeout=10)

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
        "HttptoolsTransport": ours, "AiohttpTransport": aio, "aiohttp session": bare,
        "asyncio streams": streams}
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        for _ in range(50):
            await fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            c0 = time.process_time()
            for _ in range(n):
                await fn()
            best[name] = min(best[name], (time.process_time() - c0) / n * 1e6)
    await transport.aclose()
    await lean.aclose()
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
                for k, v in runner.run(run(url, ca, n, rounds)).items():
                    best[f"{k}, {loop_name}"] = v
        best["requests.Session (certbot), threads"] = run_requests(url, ca, n, rounds)
    finally:
        proc.stop()
    ref = best["HttptoolsTransport, uvloop"]
    print(table(["HTTP layer, event loop", "CPU µs/exchange", "vs default"],
                [[k, v, f"{v / ref:.2f}x"] for k, v in best.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
