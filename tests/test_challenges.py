"""The requester-side publishers against real servers.

``RedisPublisher`` writes the store of a real challenge server (started as the stack starts
it); ``ChallTestSrvPublisher`` runs against that server's management API and against
Debian's ``pebble-challtestsrv``. What was published is checked with real clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from dnslib import DNSRecord
from pytest_wec_challenge_srv.store import CHALLENGE_TTL, Keys

from pytest_wec.errors import WecError
from pytest_wec.stack._challsrv import start_challenge_server
from pytest_wec.worker.publish import (
    ChallengePublisher,
    ChallengePublishError,
    ChallTestSrvPublisher,
    RedisPublisher,
)

pytestmark = pytest.mark.redis

ACME_ID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


@dataclass
class Server:
    name: str
    management: str
    http: int
    tls: int
    dns: int


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"pub-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def wec(
    redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    proc, info = start_challenge_server(
        tmp_path_factory.mktemp("challsrv"), redis_url=redis_url, namespace=namespace
    )
    try:
        yield Server(
            "wec",
            info.management_url,
            info.port("http01"),
            info.port("tlsalpn01"),
            info.port("dns01"),
        )
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def wec_token(
    redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    proc, info = start_challenge_server(
        tmp_path_factory.mktemp("challsrv-token"),
        redis_url=redis_url,
        namespace=namespace,
        token="tok-en",
    )
    try:
        yield Server(
            "wec",
            info.management_url,
            info.port("http01"),
            info.port("tlsalpn01"),
            info.port("dns01"),
        )
    finally:
        proc.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = shutil.which("pebble-challtestsrv")
    if binary is None:
        pytest.skip("pebble-challtestsrv is not installed (apt-get install pebble)")
    http, tls, dns, mgmt = (_free_port() for _ in range(4))
    log = tmp_path_factory.mktemp("pebble-challtestsrv") / "log"
    with open(log, "ab") as out:
        flags = f"-http01 127.0.0.1:{http} -tlsalpn01 127.0.0.1:{tls} -dns01 127.0.0.1:{dns}"
        argv = [binary, "-https01", "", "-management", f"127.0.0.1:{mgmt}", *flags.split()]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for port in (mgmt, http, tls, dns):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"pebble-challtestsrv: no port {port}"
                    time.sleep(0.05)
        yield Server("pebble", f"http://127.0.0.1:{mgmt}", http, tls, dns)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["wec", pytest.param("pebble", marks=pytest.mark.pebble)])
def management_server(request: pytest.FixtureRequest) -> Server:
    server: Server = request.getfixturevalue(request.param)
    return server


# -- clients -------------------------------------------------------------------------------


def http01(server: Server, token: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=5) as client:
        return client.get(f"http://127.0.0.1:{server.http}/.well-known/acme-challenge/{token}")


def txt(server: Server, name: str) -> list[str]:
    reply = DNSRecord.parse(
        DNSRecord.question(name, "TXT").send("127.0.0.1", server.dns, timeout=5)
    )
    return sorted(str(rr.rdata).strip('"') for rr in reply.rr)


def alpn_cert(server: Server, sni: str) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with (
        socket.create_connection(("127.0.0.1", server.tls), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None and tls.selected_alpn_protocol() == "acme-tls/1"
        return x509.load_der_x509_certificate(der)


def acme_id(cert: x509.Certificate) -> bytes:
    ext = cert.extensions.get_extension_for_oid(ACME_ID)
    assert ext.critical and isinstance(ext.value, x509.UnrecognizedExtension)
    return ext.value.value


def digest(key_authz: str) -> bytes:
    return b"\x04\x20" + hashlib.sha256(key_authz.encode()).digest()


async def publish_and_check(pub: ChallengePublisher, server: Server) -> None:
    """The whole ChallengePublisher protocol, each step checked on the wire."""
    token = uuid.uuid4().hex
    await pub.add_http01(token, f"{token}.thumb")
    r = await asyncio.to_thread(http01, server, token)
    assert (r.status_code, r.text) == (200, f"{token}.thumb")
    await pub.del_http01(token)
    assert (await asyncio.to_thread(http01, server, token)).text != f"{token}.thumb"

    name = f"_acme-challenge.pub-{uuid.uuid4().hex[:8]}.example"
    await pub.set_txt(name, "value-one")
    await pub.set_txt(name, "value-two")
    assert await asyncio.to_thread(txt, server, name) == ["value-one", "value-two"]
    await pub.clear_txt(name)
    assert await asyncio.to_thread(txt, server, name) == []

    host = f"alpn-{uuid.uuid4().hex[:8]}.example"
    await pub.add_tlsalpn01(host, "alpn.thumb")
    assert acme_id(await asyncio.to_thread(alpn_cert, server, host)) == digest("alpn.thumb")
    await pub.del_tlsalpn01(host)
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(alpn_cert, server, host)

    await pub.add_tlsalpn01("127.0.0.1", "ip.thumb")  # RFC 8738: published under the IP
    cert = await asyncio.to_thread(alpn_cert, server, "1.0.0.127.in-addr.arpa")
    assert acme_id(cert) == digest("ip.thumb")
    await pub.del_tlsalpn01("127.0.0.1")


# -- RedisPublisher ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_publisher(redis_url: str, namespace: str, wec: Server) -> None:
    pub = RedisPublisher(redis_url, namespace)
    try:
        await publish_and_check(pub, wec)
    finally:
        await pub.aclose()


@pytest.mark.asyncio
async def test_redis_publisher_key_schema_and_expiry(redis_url: str, namespace: str) -> None:
    pub = RedisPublisher(redis_url, namespace, ttl=120)
    direct = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        await pub.add_http01("tok", "tok.thumb")
        await pub.add_tlsalpn01("::1", "v6.thumb")
        await pub.set_txt("_acme-challenge.Schema.Example.", "v")
        prefix = f"wec:{namespace}:"
        assert direct.get(prefix + "http01:tok") == "tok.thumb"
        assert direct.get(prefix + "tlsalpn01:" + ipaddress.ip_address("::1").reverse_pointer) == (
            "v6.thumb"
        )
        assert direct.smembers(prefix + "txt:_acme-challenge.schema.example") == {"v"}
        for key in ("http01:tok", "txt:_acme-challenge.schema.example"):
            assert 0 < direct.ttl(prefix + key) <= 120
        await pub.del_http01("tok")
        await pub.clear_txt("_acme-challenge.schema.example")
        assert (
            direct.exists(prefix + "http01:tok", prefix + "txt:_acme-challenge.schema.example") == 0
        )
    finally:
        await pub.aclose()
        direct.close()
    assert Keys(namespace).http01("x") == f"wec:{namespace}:http01:x"
    assert CHALLENGE_TTL == 3600


@pytest.mark.asyncio
async def test_redis_publisher_namespaces_are_isolated(redis_url: str, wec: Server) -> None:
    other = RedisPublisher(redis_url, "another-namespace")
    try:
        token = uuid.uuid4().hex
        await other.add_http01(token, "elsewhere")
        assert (await asyncio.to_thread(http01, wec, token)).status_code == 404
    finally:
        await other.aclose()


@pytest.mark.asyncio
async def test_redis_publisher_many_at_once(redis_url: str, namespace: str, wec: Server) -> None:
    pub = RedisPublisher(redis_url, namespace)
    tokens = [uuid.uuid4().hex for _ in range(200)]
    try:
        await asyncio.gather(*(pub.add_http01(t, t + ".k") for t in tokens))
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            base = f"http://127.0.0.1:{wec.http}/.well-known/acme-challenge/"
            replies = await asyncio.gather(*(client.get(base + t) for t in tokens[::10]))
        assert [r.text for r in replies] == [t + ".k" for t in tokens[::10]]
        await asyncio.gather(*(pub.del_http01(t) for t in tokens))
    finally:
        await pub.aclose()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.asyncio
async def test_redis_publisher_errors() -> None:
    pub = RedisPublisher(f"redis://127.0.0.1:{_free_port()}/0", "ns", timeout=2)
    with pytest.raises(ChallengePublishError, match=r"add http-01 t: Redis redis://127\.0\.0\.1"):
        await pub.add_http01("t", "k")
    await pub.aclose()
    with silent_server() as port:
        pub = RedisPublisher(f"redis://:secret@127.0.0.1:{port}/0", "ns", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ChallengePublishError) as info:
            await pub.set_txt("_acme-challenge.x.example", "v")
        assert time.monotonic() - started < 3
        assert "secret" not in str(info.value)
        assert isinstance(info.value, WecError)
        await pub.aclose()
    with pytest.raises(ValueError, match="namespace"):
        RedisPublisher("redis://127.0.0.1:6379/0", "bad namespace")


# -- ChallTestSrvPublisher -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_challtestsrv_publisher(management_server: Server) -> None:
    pub = ChallTestSrvPublisher(management_server.management + "/")
    try:
        await publish_and_check(pub, management_server)
    finally:
        await pub.aclose()


@pytest.mark.asyncio
async def test_challtestsrv_publisher_token(wec_token: Server) -> None:
    bad = ChallTestSrvPublisher(wec_token.management, token="wrong")
    with pytest.raises(ChallengePublishError, match=r"/add-http01: HTTP 401"):
        await bad.add_http01("t", "k")
    await bad.aclose()
    good = ChallTestSrvPublisher(wec_token.management, token="tok-en")
    try:
        await publish_and_check(good, wec_token)
    finally:
        await good.aclose()


@pytest.mark.asyncio
async def test_challtestsrv_publisher_errors(wec: Server) -> None:
    pub = ChallTestSrvPublisher(f"http://127.0.0.1:{_free_port()}", timeout=2)
    with pytest.raises(ChallengePublishError, match="ClientConnectorError"):
        await pub.set_txt("_acme-challenge.x.example", "v")
    await pub.aclose()
    with silent_server() as port:
        pub = ChallTestSrvPublisher(f"http://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(ChallengePublishError, match=r"no answer within 0\.5s"):
            await pub.add_http01("t", "k")
        await pub.aclose()
    pub = ChallTestSrvPublisher(wec.management)
    with pytest.raises(ChallengePublishError, match=r"HTTP 400: field 'content' must not be empty"):
        await pub.add_http01("t", "")
    await pub.aclose()


def test_publishers_satisfy_the_protocol(tmp_path: Path) -> None:
    publishers: list[ChallengePublisher] = [
        RedisPublisher("redis://127.0.0.1:1/0", "ns"),
        ChallTestSrvPublisher("http://127.0.0.1:1"),
    ]
    for pub in publishers:
        for name in (
            "add_http01",
            "del_http01",
            "add_tlsalpn01",
            "del_tlsalpn01",
            "set_txt",
            "clear_txt",
            "aclose",
        ):
            assert asyncio.iscoroutinefunction(getattr(pub, name)), (pub, name)
