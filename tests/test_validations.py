"""Validation requests seen (RFC 8555 §7.5.1): the challenge server publishes each one it
answers, a worker's watch receives it, and a chain polls once its request was seen.

The challenge server runs as the stack starts it, against a real redis-server; the history
feed also runs against Debian's ``pebble-challtestsrv``; the last case drives chains through
the real Pebble.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from dnslib import DNSRecord
from pytest_wec_challenge_srv.seen import SeenEvent, SeenPublisher, decode, encode, seen_name
from pytest_wec_challenge_srv.store import Keys
from redis.asyncio import Redis

from pytest_wec.acme import AccountKey, AcmeNetwork, FakeCA, MockTransport
from pytest_wec.settings import Settings
from pytest_wec.stack._challsrv import start_challenge_server
from pytest_wec.worker.publish import ChallTestSrvPublisher, RedisPublisher
from pytest_wec.worker.validations import (
    GRACE,
    HistoryValidationFeed,
    RedisValidationFeed,
    make_feed,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, management: str, ports: dict[str, int]) -> None:
        self.management = management
        self.http, self.tls, self.dns = ports["http01"], ports["tlsalpn01"], ports["dns01"]


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"seen-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(redis_url: str, namespace: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("seen")
    proc, info = start_challenge_server(log_dir, redis_url=redis_url, namespace=namespace)
    try:
        yield Server(info.management_url,
                     {k: info.port(k) for k in ("http01", "tlsalpn01", "dns01")})
    finally:
        proc.stop()
    text = (log_dir / "challenge-server.log").read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


@pytest_asyncio.fixture
async def channel(redis_url: str, namespace: str) -> AsyncIterator[Any]:
    """A subscriber of the namespace's ``seen`` channel: ``await next_event(timeout)``."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Keys(namespace).seen())

    async def next_event(timeout: float = 5.0) -> SeenEvent | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = await pubsub.get_message(timeout=left)
            if msg is not None and msg["type"] == "message":
                return decode(msg["data"])
        return None

    try:
        yield next_event
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


def http_get(server: Server, token: str, host: str) -> int:
    with httpx.Client(trust_env=False, timeout=5) as client:
        url = f"http://127.0.0.1:{server.http}/.well-known/acme-challenge/{token}"
        return client.get(url, headers={"Host": host}).status_code


def txt_query(server: Server, name: str, qtype: str = "TXT", *, tcp: bool = False) -> None:
    DNSRecord.question(name, qtype).send("127.0.0.1", server.dns, tcp=tcp, timeout=5)


def alpn_handshake(server: Server, sni: str, alpn: list[str]) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    try:
        with (socket.create_connection(("127.0.0.1", server.tls), timeout=5) as raw,
              ctx.wrap_socket(raw, server_hostname=sni)):
            return True
    except ssl.SSLError:
        return False


def uniq(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.example"


# -- the challenge server publishes ------------------------------------------------------


def test_seen_name_forms() -> None:
    assert seen_name("Example.COM.") == "example.com"
    assert seen_name("_acme-challenge.X.example.", "dns-01") == "x.example"
    assert seen_name("_acme-challenge.x.example", "http-01") == "_acme-challenge.x.example"
    assert seen_name("*.x.example") == "x.example"
    assert seen_name("[::0:1]") == "::1"
    assert seen_name("1.0.0.127.in-addr.arpa", "tls-alpn-01") == "127.0.0.1"
    event = SeenEvent("http-01", "x.example", "tok", "127.0.0.1", 1.5, False)
    assert decode(encode(event)) == event
    assert decode("not json") is None and decode('{"type": "x"}') is None


@pytest.mark.asyncio
async def test_each_kind_of_validation_request_is_published(
        redis_url: str, namespace: str, server: Server, channel: Any) -> None:
    pub = RedisPublisher(redis_url, namespace)
    try:
        # http-01: a GET of the token, with the Host the CA sends (port and case dropped)
        web, token = uniq("web"), uuid.uuid4().hex
        await pub.add_http01(token, f"{token}.thumb")
        before = time.time()
        assert await asyncio.to_thread(http_get, server, token, f"{web.upper()}:5002") == 200
        event = await channel()
        assert event is not None
        assert (event.type, event.name, event.token, event.source, event.served) == (
            "http-01", web, token, "127.0.0.1", True)
        assert before - 1 <= event.time <= time.time() + 1
        assert await asyncio.to_thread(http_get, server, "unknown", "[::1]:80") == 404
        event = await channel()
        assert event is not None
        assert (event.name, event.token, event.served) == ("::1", "unknown", False)

        # dns-01: a TXT query for _acme-challenge.NAME, over UDP and TCP
        name = uniq("dns")
        await pub.set_txt(f"_acme-challenge.{name}", "value")
        await asyncio.to_thread(txt_query, server, f"_acme-challenge.{name.upper()}.")
        event = await channel()
        assert event is not None
        assert (event.type, event.name, event.token, event.source, event.served) == (
            "dns-01", name, None, "127.0.0.1", True)
        await asyncio.to_thread(txt_query, server, f"_acme-challenge.{name}", tcp=True)
        event = await channel()
        assert event is not None and (event.type, event.name) == ("dns-01", name)

        # tls-alpn-01: a ClientHello with SNI NAME offering acme-tls/1 (RFC 8737 §3)
        host = uniq("alpn")
        await pub.add_tlsalpn01(host, "alpn.thumb")
        assert await asyncio.to_thread(alpn_handshake, server, host, ["acme-tls/1"])
        event = await channel()
        assert event is not None
        assert (event.type, event.name, event.token, event.source, event.served) == (
            "tls-alpn-01", host, None, "127.0.0.1", True)
        await pub.add_tlsalpn01("127.0.0.1", "ip.thumb")  # RFC 8738 §6: the reverse name
        assert await asyncio.to_thread(alpn_handshake, server, "1.0.0.127.in-addr.arpa",
                                       ["acme-tls/1"])
        event = await channel()
        assert event is not None and (event.name, event.served) == ("127.0.0.1", True)
        unknown = uniq("nothing")
        assert not await asyncio.to_thread(alpn_handshake, server, unknown, ["acme-tls/1"])
        event = await channel()
        assert event is not None and (event.name, event.served) == (unknown, False)

        # what is no validation request is not published
        await asyncio.to_thread(txt_query, server, f"_acme-challenge.{name}", "A")
        await asyncio.to_thread(txt_query, server, name, "TXT")
        assert not await asyncio.to_thread(alpn_handshake, server, host, ["http/1.1"])
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{server.http}/").status_code == 404
        assert await channel(0.3) is None
        await pub.del_http01(token)
        await pub.clear_txt(f"_acme-challenge.{name}")
        await pub.del_tlsalpn01(host)
        await pub.del_tlsalpn01("127.0.0.1")
    finally:
        await pub.aclose()


@pytest.mark.asyncio
async def test_a_redis_error_never_reaches_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=0.5)
    pub = SeenPublisher(redis, "wec:ns:seen", max_queue=2)
    await pub.start()
    started = time.monotonic()
    for _ in range(5):
        pub.seen("http-01", "x.example:80", ("127.0.0.1", 4711), token="t")
    pub.seen("dns-01", "\udcff", None)  # not even encodable: dropped, quietly
    assert time.monotonic() - started < 0.05  # queued, never sent on the answering path
    assert pub.dropped >= 3
    for _ in range(100):
        if pub.failed:
            break
        await asyncio.sleep(0.02)
    assert pub.failed >= 1
    await pub.stop()
    assert time.monotonic() - started < 5
    await redis.aclose()
    assert any("not published" in r.getMessage() for r in caplog.records)


# -- a worker's watch receives it -----------------------------------------------------------


@pytest_asyncio.fixture
async def feed(redis_url: str, namespace: str) -> AsyncIterator[RedisValidationFeed]:
    f = RedisValidationFeed(redis_url, namespace)
    try:
        yield f
    finally:
        await f.aclose()


@pytest.mark.asyncio
async def test_a_watch_gets_its_validation_request(
        redis_url: str, namespace: str, server: Server, feed: RedisValidationFeed) -> None:
    pub = RedisPublisher(redis_url, namespace)
    try:
        web, token = uniq("watch"), uuid.uuid4().hex
        await pub.add_http01(token, "k")
        watch = await feed.watch("http-01", web.upper(), token)
        other = await feed.watch("http-01", web, "another-token")  # same name, other token
        assert feed.watching == 2
        assert await asyncio.to_thread(http_get, server, token, web) == 200
        assert await watch.wait(5.0)
        assert watch.count == 1 and watch.first is not None and watch.received is not None
        assert watch.first <= watch.received
        assert await watch.wait(0)  # seen stays seen
        assert not await other.wait(0.05) and other.count == 0
        name = uniq("watch-dns")
        dns_watch = await feed.watch("dns-01", "*." + name)  # a wildcard: its base name
        await asyncio.to_thread(txt_query, server, f"_acme-challenge.{name}")
        assert await dns_watch.wait(5.0) and dns_watch.count == 1
        ip_watch = await feed.watch("tls-alpn-01", "127.0.0.1")
        await asyncio.to_thread(alpn_handshake, server, "1.0.0.127.in-addr.arpa", ["acme-tls/1"])
        assert await ip_watch.wait(5.0) and ip_watch.count == 1
        for w in (watch, other, dns_watch, ip_watch):
            w.close()
        assert feed.watching == 0
        await pub.del_http01(token)
    finally:
        await pub.aclose()


@pytest.mark.asyncio
async def test_a_watch_without_a_request_times_out_cleanly(feed: RedisValidationFeed) -> None:
    watch = await feed.watch("http-01", uniq("never"), "tok")
    started = time.monotonic()
    assert not await watch.wait(0.2)
    assert 0.19 <= time.monotonic() - started < 1.0
    assert (watch.first, watch.count) == (None, 0)
    assert not await watch.wait(0)
    watch.close()
    assert feed.watching == 0


@pytest.mark.asyncio
async def test_a_watch_waits_for_as_many_requests_as_the_ca_sends(
        redis_url: str, namespace: str, feed: RedisValidationFeed) -> None:
    direct = Redis.from_url(redis_url, decode_responses=True)
    channel = Keys(namespace).seen()

    async def send(name: str, n: int) -> None:
        for _ in range(n):
            await direct.publish(channel, encode(SeenEvent("dns-01", name, None, "ca",
                                                           time.time())))

    try:
        first = await feed.watch("dns-01", name := uniq("three"))
        assert first.expect == 1
        await send(name, 3)  # a CA validating from three perspectives (Pebble does)
        assert await first.wait(5.0)
        await asyncio.sleep(0.1)
        assert first.count == 3
        first.close()
        watch = await feed.watch("dns-01", name := uniq("three"))
        assert watch.expect == 3
        await send(name, 3)
        started = time.monotonic()
        assert await watch.wait(5.0) and watch.count == 3
        short = await feed.watch("dns-01", name := uniq("one"))
        await send(name, 1)  # fewer this time: the wait ends GRACE after the first
        assert await short.wait(5.0) and short.count == 1
        assert time.monotonic() - started < GRACE + 1.0
        watch.close()
        short.close()
    finally:
        await direct.aclose()


@pytest.mark.asyncio
async def test_a_feed_without_redis_costs_only_its_bound() -> None:
    f = RedisValidationFeed(f"redis://127.0.0.1:{_free_port()}/0", "ns", timeout=0.5)
    started = time.monotonic()
    watch = await f.watch("http-01", "x.example", "t")
    assert not await watch.wait(0.05)
    again = await f.watch("http-01", "y.example", "t")  # no new attempt for RETRY_AFTER
    assert time.monotonic() - started < 2.0
    watch.close()
    again.close()
    await f.aclose()
    assert make_feed({"redis_url": None, "namespace": "ns", "challtestsrv": None}, None) is None


# -- a challtestsrv's request history ------------------------------------------------------


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import subprocess

    binary = shutil.which("pebble-challtestsrv")
    if binary is None:
        pytest.skip("pebble-challtestsrv is not installed (apt-get install pebble)")
    ports = {k: _free_port() for k in ("http01", "tlsalpn01", "dns01", "management")}
    argv = [binary, "-https01", "", "-http01", f"127.0.0.1:{ports['http01']}",
            "-tlsalpn01", f"127.0.0.1:{ports['tlsalpn01']}",
            "-dns01", f"127.0.0.1:{ports['dns01']}",
            "-management", f"127.0.0.1:{ports['management']}"]
    log = tmp_path_factory.mktemp("challtestsrv") / "log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"pebble-challtestsrv: no port {port}"
                    time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{ports['management']}", ports)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["wec", pytest.param("pebble", marks=pytest.mark.pebble)])
def history_server(request: pytest.FixtureRequest) -> Server:
    target: Server = request.getfixturevalue("server" if request.param == "wec"
                                             else "challtestsrv")
    return target


@pytest.mark.asyncio
async def test_the_history_feed_sees_each_kind(history_server: Server) -> None:
    pub = ChallTestSrvPublisher(history_server.management)
    feed = HistoryValidationFeed(pub)
    try:
        web, token = uniq("hist"), uuid.uuid4().hex
        await pub.add_http01(token, "k")
        watch = await feed.watch("http-01", web, token)
        assert watch.baseline == 0 and feed.offered
        assert not await watch.wait(0.05)
        assert await asyncio.to_thread(http_get, history_server, token, f"{web}:80") == 200
        assert await watch.wait(5.0) and watch.count == 1 and watch.first is not None
        name = uniq("hist-dns")
        await pub.set_txt(f"_acme-challenge.{name}", "v")
        dns_watch = await feed.watch("dns-01", name)
        await asyncio.to_thread(txt_query, history_server, f"_acme-challenge.{name}")
        assert await dns_watch.wait(5.0) and dns_watch.count == 1
        host = uniq("hist-alpn")
        await pub.add_tlsalpn01(host, "k")
        alpn_watch = await feed.watch("tls-alpn-01", host)
        await asyncio.to_thread(alpn_handshake, history_server, host, ["acme-tls/1"])
        assert await alpn_watch.wait(5.0) and alpn_watch.count == 1
        for w in (watch, dns_watch, alpn_watch):
            w.close()
    finally:
        await pub.aclose()


@contextlib.contextmanager
def no_history_server() -> Iterator[str]:
    """A management API that knows no request history (404 for every path)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.asyncio
async def test_a_challtestsrv_without_history_keeps_the_old_schedule() -> None:
    with no_history_server() as url:
        pub = ChallTestSrvPublisher(url, timeout=2)
        feed = make_feed({"challtestsrv": url}, pub)
        assert isinstance(feed, HistoryValidationFeed)
        try:
            watch = await feed.watch("http-01", "x.example", "t")
            assert feed.offered is False and watch.baseline is None
            started = time.monotonic()
            assert not await watch.wait(0.1)
            assert time.monotonic() - started < 1.0
            watch.close()
            again = await feed.watch("dns-01", "x.example")  # not asked again
            assert again.baseline is None
        finally:
            await pub.aclose()


# -- polling on the event -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_authorization_is_polled_once_its_request_is_seen() -> None:
    """Seen at once: no first step, then a short one; never seen: the usual schedule."""
    for seen_now in (True, False):
        ca = FakeCA(pending_polls=1)
        net = AcmeNetwork("https://ca.test/dir", MockTransport(ca), poll_interval=0.3,
                          poll_first=0.3)
        client = net.client("t", "c", lambda r: None)
        account = await client.new_account(AccountKey.generate("ES256"))
        order = await client.new_order(account, ["seen.test"])
        authz = await client.get_authorization(account, order.authorizations[0])
        chall = authz.challenge("http-01")
        assert chall is not None
        answered = await client.answer_challenge(account, chall.url)

        async def seen(timeout: float, now: bool = seen_now) -> bool:
            if not now:
                await asyncio.sleep(timeout)
            return now

        started = time.monotonic()
        before = ca.polls[order.authorizations[0]]
        done = await client.poll_authorization(account, order.authorizations[0], timeout=10,
                                               answered=answered, seen=seen)
        took = time.monotonic() - started
        assert done.status == "valid"
        assert ca.polls[order.authorizations[0]] - before == 2  # pending, then valid
        if seen_now:  # at once, then one short step (SEEN_STEP) for the pending answer
            assert took < 0.2, took
        else:  # the first step (0.3 s), then its double capped at the interval (0.3 s)
            assert took >= 0.6, took
        await net.aclose()


# -- a chain against the real Pebble --------------------------------------------------------


@pytest.fixture(scope="module")
def pebble_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if shutil.which("pebble") is None:
        pytest.skip("pebble is not installed")
    from pytest_wec.stack import Stack

    s = Stack.start(Settings(), tmp_path_factory.mktemp("stack"), "validations")
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("challenge", ["http-01", "dns-01", "tls-alpn-01"])
async def test_a_chain_sees_pebbles_validation_requests(
        pebble_stack: Any, challenge: str, tmp_path: Path) -> None:
    from pytest_wec.worker.context import ChainContext
    from pytest_wec.worker.runtime import WorkerRuntime

    settings = Settings(db=str(tmp_path / "state.db"))
    runtime = await WorkerRuntime(settings, dict(pebble_stack.info), "test").start()
    try:
        ctx = ChainContext(runtime, "new_certificate")
        account = await ctx.new_account()
        answered_at = time.time()
        issued = await ctx.issue(account, ctx.random_names(2), challenge=challenge)
        assert issued.cert is not None
        assert ctx.first_validation_request is not None
        assert answered_at <= ctx.first_validation_request <= time.time()
        assert [v.challenge for v in ctx.validations_seen] == [challenge, challenge]
        for seen in ctx.validations_seen:
            assert seen.first is not None and seen.count >= 1, seen
        assert ctx.first_validation_request == min(
            v.first for v in ctx.validations_seen if v.first is not None)
        polls = [r for r in ctx.requests if r["endpoint"] == "authz"]
        assert len(polls) <= 2 * 3, [r["endpoint"] for r in ctx.requests]
        # the phases its ChainResult carries: one value per authorization, per order
        phases = ctx.wire_extras(True)["phases"]
        assert {k: len(v) for k, v in phases.items()} == {
            "validation": 2, "first_validation_request": 2, "validation_requests": 2,
            "issuance": 1, "time_to_certificate": 1, "polls": 1}
        assert phases["validation_requests"] == [s.count for s in ctx.validations_seen]
        for seen_at, valid_at in zip(phases["first_validation_request"], phases["validation"],
                                     strict=True):
            assert 0 <= seen_at < valid_at  # seen before the answer saying valid arrived
        took = ctx.requests[-1]["started"] + ctx.requests[-1]["took"] - answered_at
        assert 0 < phases["issuance"][0] < phases["time_to_certificate"][0] <= took
        # every authz poll after the answers, and every order poll, counted
        assert phases["polls"] == [len(polls) - 2 + sum(
            r["endpoint"] == "order" for r in ctx.requests)]
        await ctx.finish()
    finally:
        await runtime.aclose()
