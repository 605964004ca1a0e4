"""The aiohttp and httpx transports against a real aiohttp.web server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pytest_wec.acme import (
    AcmeBodyTooLarge,
    AcmeConnectError,
    AcmeHttpError,
    AcmeNetwork,
    AcmeTimeout,
    AcmeTransportError,
    AiohttpTransport,
    Headers,
    HttptoolsTransport,
    HttpxTransport,
    Transport,
    make_ssl_context,
)
from pytest_wec.wire.results import RequestResult

MiB = 1024 * 1024
CHUNK = b"x" * 65536


async def small(request: web.Request) -> web.Response:
    resp = web.json_response({"newNonce": "n", "newAccount": "a", "newOrder": "o"})
    resp.headers["Replay-Nonce"] = "abc_DEF-1"
    resp.headers.add("Link", '<https://a/1>;rel="alternate"')
    resp.headers.add("Link", '<https://a/2>;rel="alternate"')
    return resp


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(
        body=body, headers={"X-Method": request.method, "X-CT": request.content_type}
    )


async def big_with_length(request: web.Request) -> web.StreamResponse:
    """A 50 MB body announced by Content-Length."""
    resp = web.StreamResponse()
    resp.content_length = 50 * MiB
    await resp.prepare(request)
    for _ in range(50 * MiB // len(CHUNK)):
        await resp.write(CHUNK)
    return resp


async def endless(request: web.Request) -> web.StreamResponse:
    """A chunked body that never ends."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    while True:
        await resp.write(CHUNK)


async def trickle(request: web.Request) -> web.StreamResponse:
    """A chunked body that never ends, a few bytes at a time."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    while True:
        await resp.write(b"{")
        await asyncio.sleep(0.02)


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response()


async def cut(request: web.Request) -> web.StreamResponse:
    """Promise 1000 bytes, send 10, close the connection."""
    resp = web.StreamResponse()
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b"0123456789")
    assert request.transport is not None
    request.transport.close()
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big_with_length)
    app.router.add_get("/endless", endless)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/hang", hang)
    app.router.add_get("/cut", cut)
    return app


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Server:
    def __init__(self, runner: web.AppRunner, url: str, cert: Path | None) -> None:
        self.runner, self.url, self.cert = runner, url, cert


async def start(tmp: Path | None = None) -> Server:
    runner = web.AppRunner(make_app(), shutdown_timeout=0.5)
    await runner.setup()
    ctx = None
    cert = None
    if tmp is not None:
        cert, key = self_signed(tmp)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1]
    scheme = "https" if ctx else "http"
    return Server(runner, f"{scheme}://127.0.0.1:{port}", cert)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = await start()
    yield srv
    await srv.runner.cleanup()


TRANSPORTS: dict[str, Callable[..., Transport]] = {
    "aiohttp": lambda **kw: AiohttpTransport(ssl=False, **kw),
    "httpx": lambda **kw: HttpxTransport(verify=False, **kw),
    "httptools": lambda **kw: HttptoolsTransport(ssl=False, **kw),
}


@pytest_asyncio.fixture(params=sorted(TRANSPORTS))
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    t = TRANSPORTS[request.param](max_body=1 * MiB)
    yield t
    await t.aclose()


@pytest.mark.asyncio
async def test_small_response_and_headers(server: Server, transport: Transport) -> None:
    resp = await transport.request(
        "GET", server.url + "/small", headers={"Accept": "application/json"}, body=None, timeout=5
    )
    assert resp.status == 200 and resp.body.startswith(b"{")
    assert resp.headers["REPLAY-NONCE"] == "abc_DEF-1" == resp.headers.get("replay-nonce")
    assert "content-type" in resp.headers and "Content-Type" in resp.headers
    assert resp.headers.get_all("link") == [
        '<https://a/1>;rel="alternate"',
        '<https://a/2>;rel="alternate"',
    ]
    resp = await transport.request(
        "POST",
        server.url + "/echo",
        headers={"Content-Type": "application/jose+json"},
        body=b'{"a":1}',
        timeout=5,
    )
    assert resp.body == b'{"a":1}' and resp.headers["x-ct"] == "application/jose+json"
    resp = await transport.request("HEAD", server.url + "/echo", headers={}, body=None, timeout=5)
    assert resp.status == 200 and resp.body == b"" and resp.headers["x-method"] == "HEAD"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/big", "/endless"])
async def test_oversized_bodies_fail_fast_with_bounded_memory(
    server: Server, transport: Transport, path: str
) -> None:
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(AcmeBodyTooLarge):
            await transport.request("GET", server.url + path, headers={}, body=None, timeout=10)
        took = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 3.0
    assert peak < 8 * MiB  # max_body is 1 MiB; a 50 MB body never lands in memory
    # the transport is still usable afterwards
    resp = await transport.request("GET", server.url + "/small", headers={}, body=None, timeout=5)
    assert resp.status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/trickle", "/hang"])
async def test_total_timeout(server: Server, transport: Transport, path: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(AcmeTimeout):
        await transport.request("GET", server.url + path, headers={}, body=None, timeout=0.3)
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.asyncio
async def test_cut_connection(server: Server, transport: Transport) -> None:
    with pytest.raises((AcmeHttpError, AcmeConnectError)):
        await transport.request("GET", server.url + "/cut", headers={}, body=None, timeout=5)


@pytest.mark.asyncio
async def test_connection_refused(transport: Transport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AcmeConnectError):
        await transport.request(
            "GET", f"http://127.0.0.1:{port}/", headers={}, body=None, timeout=5
        )


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(TRANSPORTS))
async def test_tls_verification(tmp_path: Path, name: str) -> None:
    srv = await start(tmp_path)
    try:
        makers: dict[str, Callable[[ssl.SSLContext], Transport]] = {
            "aiohttp": lambda c: AiohttpTransport(ssl=c),
            "httpx": lambda c: HttpxTransport(verify=c),
            "httptools": lambda c: HttptoolsTransport(ssl=c),
        }
        make = makers[name]
        for ctx, ok in (
            (make_ssl_context(insecure=True), True),
            (make_ssl_context(str(srv.cert)), True),
            (make_ssl_context(), False),
        ):
            t = make(ctx)
            try:
                if ok:
                    resp = await t.request(
                        "GET", srv.url + "/small", headers={}, body=None, timeout=5
                    )
                    assert resp.status == 200
                else:
                    with pytest.raises(AcmeConnectError):
                        await t.request("GET", srv.url + "/small", headers={}, body=None, timeout=5)
            finally:
                await t.aclose()
    finally:
        await srv.runner.cleanup()


@pytest.mark.asyncio
async def test_network_reports_transport_failures(server: Server) -> None:
    results: list[RequestResult] = []
    net = AcmeNetwork(server.url + "/endless", AiohttpTransport(max_body=64 * 1024))
    try:
        with pytest.raises(AcmeBodyTooLarge):
            await net.client("c", "1", results.append).directory()
    finally:
        await net.aclose()
    assert [(r["endpoint"], r["status"], r["error"]) for r in results] == [
        ("directory", 0, "tooLarge")
    ]
    assert issubclass(AcmeBodyTooLarge, AcmeTransportError)


def test_headers_mapping() -> None:
    h = Headers([("Link", "<a>"), ("link", "<b>"), ("Retry-After", "3")])
    assert h["LINK"] == "<a>, <b>" and h.get_all("Link") == ["<a>", "<b>"]
    assert h.get("retry-after") == "3" and h.get("missing") is None and len(h) == 2
    assert dict(h) == {"link": "<a>, <b>", "retry-after": "3"}
    assert Headers({"A": "1"}) == Headers([("a", "1")])
