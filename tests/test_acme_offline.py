"""The ACME client offline: MockTransport with FakeCA, faults injected per endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import time
from collections.abc import AsyncIterator, Callable
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
import pytest_asyncio

from pytest_wec.acme import (
    Account,
    AccountKey,
    AcmeAuthorizationEnded,
    AcmeBodyTooLarge,
    AcmeClient,
    AcmeConnectError,
    AcmeError,
    AcmeNetwork,
    AcmeNotSupported,
    AcmePollTimeout,
    AcmeProblem,
    AcmeProtocolError,
    AcmeStatusError,
    AcmeTimeout,
    AcmeUnexpectedStatus,
    FakeCA,
    Identifier,
    MockTransport,
    NoncePool,
    Order,
    Request,
    Response,
    b64url_decode,
    cert_id,
    generate_cert_key,
    jwk_public_key,
    make_csr,
    verify_signature,
)
from pytest_wec.acme._network import retry_after_seconds
from pytest_wec.wire.results import ENDPOINTS, RequestResult

DIR = "https://ca.test/dir"
_KEY = AccountKey.generate("ES256")


class Env:
    def __init__(self, ca: FakeCA, net: AcmeNetwork, transport: MockTransport) -> None:
        self.ca = ca
        self.net = net
        self.transport = transport
        self.results: list[RequestResult] = []
        self.acme: AcmeClient = net.client("test-chain", "c-1", self.results.append)

    def calls(self) -> list[tuple[str, str, int, str | None]]:
        return [(r["endpoint"], r["method"], r["status"], r["error"]) for r in self.results]

    def header(self, index: int) -> dict[str, Any]:
        """The protected JWS header of the index-th request the CA saw."""
        header = self.ca.seen[index][2]
        assert header is not None
        return header


def make_env(ca: FakeCA | None = None, **kwargs: Any) -> Env:
    ca = ca or FakeCA()
    transport = MockTransport(ca)
    kwargs.setdefault("poll_interval", 0.01)
    return Env(ca, AcmeNetwork(DIR, transport, **kwargs), transport)


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    e = make_env()
    yield e
    await e.net.aclose()


async def account(env: Env) -> Account:
    acct = await env.acme.new_account(_KEY, contact=["mailto:x@example.test"])
    env.results.clear()
    return acct


# -- flows ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_issuance_flow_and_endpoint_names(env: Env) -> None:
    acme = env.acme
    acct = await acme.new_account(_KEY, contact=["mailto:x@example.test"])
    assert acct.created and acct.status == "valid" and acct.url.startswith("https://ca.test/")
    order = await acme.new_order(
        acct, ["a.test", ("dns", "*.a.test"), Identifier("ip", "192.0.2.1")]
    )
    assert order.status == "pending" and len(order.authorizations) == 3
    for url in order.authorizations:
        authz = await acme.get_authorization(acct, url)
        ch = authz.challenge("http-01")
        assert ch is not None and ch.token
        assert (await acme.answer_challenge(acct, ch.url)).status == "processing"
        assert (await acme.poll_authorization(acct, url, timeout=5)).status == "valid"
    order = await acme.poll_order(acct, order, until="ready", timeout=5)
    assert order.status == "ready"
    key = generate_cert_key("ec256")
    order = await acme.finalize(acct, order, make_csr(["a.test", "*.a.test", "192.0.2.1"], key))
    order = await acme.poll_order(acct, order, timeout=5)
    assert order.status == "valid" and order.certificate
    cert = await acme.download_certificate(acct, order.certificate)
    assert cert.alternates == (order.certificate + "/1",)
    assert len(cert.pems) == 1 and cert.leaf_der[:1] == b"\x30"
    await acme.revoke(cert.leaf_der, reason=1, account=acct)
    info = await acme.renewal_info(cert.leaf_der)
    assert info.cert_id == cert_id(cert.leaf_der) and info.retry_after == 21600
    assert info.start.year == 2099 and info.end.microsecond == 123456

    endpoints = [r["endpoint"] for r in env.results]
    assert set(endpoints) <= set(ENDPOINTS)
    assert endpoints[:4] == ["directory", "newNonce", "newAccount", "newOrder"]
    expected = {
        "directory",
        "newNonce",
        "newAccount",
        "newOrder",
        "authz",
        "challenge",
        "order",
        "finalize",
        "certificate",
        "revokeCert",
        "renewalInfo",
    }
    assert set(endpoints) == expected
    assert endpoints.count("newNonce") == 1  # every response fed the pool
    for r in env.results:
        assert r["ok"] and r["error"] is None and r["problem"] is None
        assert r["chain"] == "test-chain" and r["chain_id"] == "c-1"
        assert abs(r["started"] - time.time()) < 60 and 0 <= r["took"] < 5
        assert "://" not in r["endpoint"]
    methods = {r["endpoint"]: r["method"] for r in env.results}
    assert methods["directory"] == "GET" and methods["newNonce"] == "HEAD"
    assert methods["renewalInfo"] == "GET" and methods["order"] == "POST"
    # newAccount is signed with the jwk, the rest with the kid
    assert "jwk" in env.header(2) and "kid" not in env.header(2)
    assert env.header(3)["kid"] == acct.url


@pytest.mark.asyncio
async def test_account_operations(env: Env) -> None:
    acme = env.acme
    acct = await acme.new_account(_KEY, contact=["mailto:a@example.test"])
    again = await acme.new_account(_KEY, only_return_existing=True)
    assert (again.url, again.created) == (acct.url, False)
    with pytest.raises(AcmeProblem) as info:
        await acme.new_account(AccountKey.generate(), only_return_existing=True)
    assert info.value.code == "accountDoesNotExist" and info.value.status == 400
    acct = await acme.update_account(acct, ["mailto:b@example.test"])
    assert acct.contact == ("mailto:b@example.test",)
    fetched = await acme.fetch_account(acct)
    assert fetched.contact == ("mailto:b@example.test",)
    new_key = AccountKey.generate("RS256")
    rolled = await acme.key_change(acct, new_key)
    assert rolled.key == new_key and rolled.url == acct.url
    await acme.fetch_account(rolled)
    with pytest.raises(AcmeProblem):  # the old key no longer matches the account
        await acme.fetch_account(acct)
    assert (await acme.deactivate_account(rolled)).status == "deactivated"
    ends = [r["endpoint"] for r in env.results]
    assert "keyChange" in ends and "account" in ends


@pytest.mark.asyncio
async def test_new_order_payload(env: Env) -> None:
    acct = await account(env)
    nb = dt.datetime(2030, 1, 2, 3, 4, 5)
    order = await env.acme.new_order(
        acct,
        ["a.test", "10.0.0.1"],
        not_before=nb,
        not_after="2030-02-01T00:00:00Z",
        replaces="abc.def",
        profile="default",
    )
    assert order.body["notBefore"] == "2030-01-02T03:04:05Z"
    assert order.body["notAfter"] == "2030-02-01T00:00:00Z"
    assert order.body["replaces"] == "abc.def" and order.body["profile"] == "default"
    assert order.identifiers == (Identifier("dns", "a.test"), Identifier("ip", "10.0.0.1"))


@pytest.mark.asyncio
async def test_revoke_with_certificate_key(env: Env) -> None:
    acct = await account(env)
    order = await env.acme.new_order(acct, ["r.test"])
    authz = await env.acme.get_authorization(acct, order.authorizations[0])
    ch = authz.challenge("dns-01")
    assert ch is not None
    await env.acme.answer_challenge(acct, ch.url)
    await env.acme.poll_authorization(acct, authz.url)
    key = generate_cert_key("ec384")
    order = await env.acme.finalize(acct, order, make_csr(["r.test"], key))
    assert order.certificate
    cert = await env.acme.download_certificate(acct, order.certificate)
    start = len(env.ca.seen)
    await env.acme.revoke(cert.leaf_der, reason=4, cert_key=key)
    header = env.header(start)
    assert "jwk" in header and "kid" not in header
    with pytest.raises(AcmeProblem, match="alreadyRevoked"):
        await env.acme.revoke(cert.leaf_der, account=acct)
    with pytest.raises(ValueError):
        await env.acme.revoke(cert.leaf_der)
    with pytest.raises(ValueError):
        await env.acme.revoke(cert.leaf_der, account=acct, cert_key=key)


@pytest.mark.asyncio
async def test_directory_fetched_once_for_concurrent_chains() -> None:
    env = make_env()
    clients = [env.net.client("c", str(i), env.results.append) for i in range(20)]
    await asyncio.gather(*(c.new_account(AccountKey.generate()) for c in clients))
    assert [r["endpoint"] for r in env.results].count("directory") == 1
    assert (await clients[3].directory()).meta["termsOfService"] == "https://ca.test/tos"


@pytest.mark.asyncio
async def test_renewal_info_not_offered() -> None:
    env = make_env(FakeCA(renewal_info=False))
    with pytest.raises(AcmeNotSupported, match="renewalInfo"):
        await env.acme.renewal_info("abc.def")


# -- problems and retries ------------------------------------------------------


@pytest.mark.asyncio
async def test_problem_with_subproblems(env: Env) -> None:
    acct = await account(env)
    with pytest.raises(AcmeProblem) as info:
        await env.acme.new_order(acct, ["ok.test", "bad.invalid", "worse.invalid"])
    p = info.value
    assert p.code == "rejectedIdentifier" and p.status == 400
    assert [s.identifier for s in p.subproblems] == [
        {"type": "dns", "value": "bad.invalid"},
        {"type": "dns", "value": "worse.invalid"},
    ]
    assert str(p).splitlines() == [
        "urn:ietf:params:acme:error:rejectedIdentifier :: 2 identifiers rejected",
        "Problem for dns:bad.invalid: urn:ietf:params:acme:error:rejectedIdentifier"
        " :: forbidden name",
        "Problem for dns:worse.invalid: urn:ietf:params:acme:error:rejectedIdentifier"
        " :: forbidden name",
    ]
    assert isinstance(p, AcmeError)
    last = env.results[-1]
    assert (last["endpoint"], last["ok"], last["error"], last["status"]) == (
        "newOrder",
        False,
        "problem",
        400,
    )
    assert last["problem"] == "urn:ietf:params:acme:error:rejectedIdentifier"


def test_problem_str_and_code() -> None:
    p = AcmeProblem.from_json({"type": "about:blank", "detail": "x"}, status=500)
    assert str(p) == "about:blank :: x" and p.code == "about:blank" and p.status == 500
    p = AcmeProblem.from_json({"type": "urn:ietf:params:acme:error:badNonce"})
    assert str(p) == "urn:ietf:params:acme:error:badNonce" and p.code == "badNonce"
    q = pickle.loads(pickle.dumps(p))
    assert (q.type, str(q)) == (p.type, str(p))
    with pytest.raises(AcmeProtocolError, match="malformed problem"):
        AcmeProblem.from_json({"type": 5})


@pytest.mark.asyncio
async def test_bad_nonce_is_retried_with_the_error_responses_nonce(env: Env) -> None:
    acct = await account(env)
    nonces: list[str] = []

    def bad_nonce(req: Request) -> Response:
        resp = env.ca.problem(400, "badNonce", "stale")
        nonces.append(resp.headers["replay-nonce"])
        return resp

    env.ca.inject("newOrder", bad_nonce, times=2)
    seen_before = len(env.ca.seen)
    order = await env.acme.new_order(acct, ["n.test"])
    assert order.status == "pending"
    assert env.calls() == [
        ("newOrder", "POST", 400, "problem"),
        ("newOrder", "POST", 400, "problem"),
        ("newOrder", "POST", 201, None),
    ]
    assert env.results[0]["problem"] == "urn:ietf:params:acme:error:badNonce"
    # each retry carries the nonce of the badNonce response before it
    assert env.header(seen_before + 1)["nonce"] == nonces[0]
    assert env.header(seen_before + 2)["nonce"] == nonces[1]
    assert "newNonce" not in [r["endpoint"] for r in env.results]


@pytest.mark.asyncio
async def test_bad_nonce_retries_are_bounded() -> None:
    env = make_env(max_nonce_retries=2)
    acct = await account(env)
    env.ca.inject("newOrder", lambda r: env.ca.problem(400, "badNonce"), times=10)
    with pytest.raises(AcmeProblem) as info:
        await env.acme.new_order(acct, ["n.test"])
    assert info.value.code == "badNonce"
    assert env.calls() == [("newOrder", "POST", 400, "problem")] * 3
    assert len(env.net.nonces) >= 1  # the last error's nonce is kept for later use


@pytest.mark.asyncio
async def test_rate_limit_with_retry_after_is_retried() -> None:
    env = make_env(max_retries=2, max_retry_after=0.5)
    acct = await account(env)
    env.ca.inject(
        "newOrder",
        lambda r: env.ca.problem(429, "rateLimited", "slow", {"Retry-After": "0"}),
        times=2,
    )
    await env.acme.new_order(acct, ["r.test"])
    assert [c[2] for c in env.calls()] == [429, 429, 201]
    # beyond max_retries: raised
    env.results.clear()
    env.ca.inject(
        "newOrder", lambda r: env.ca.problem(429, "rateLimited", "", {"Retry-After": "0"}), times=5
    )
    with pytest.raises(AcmeProblem) as info:
        await env.acme.new_order(acct, ["r.test"])
    assert info.value.code == "rateLimited" and info.value.retry_after == 0
    assert len(env.results) == 3


@pytest.mark.asyncio
async def test_long_retry_after_is_not_waited_for() -> None:
    env = make_env(max_retry_after=1.0)
    acct = await account(env)
    env.ca.inject(
        "newOrder", lambda r: env.ca.problem(429, "rateLimited", "", {"Retry-After": "3600"})
    )
    t0 = time.perf_counter()
    with pytest.raises(AcmeProblem) as info:
        await env.acme.new_order(acct, ["r.test"])
    assert time.perf_counter() - t0 < 0.5
    assert info.value.retry_after == 3600 and len(env.results) == 1


@pytest.mark.asyncio
async def test_503_without_problem_document_is_retried_with_retry_after() -> None:
    env = make_env(max_retry_after=0.5)
    unavailable = Response.make(
        503, {"Retry-After": "0", "Content-Type": "text/html"}, "<h1>busy</h1>"
    )
    env.ca.inject("directory", unavailable)
    env.ca.inject("newAccount", unavailable)
    await env.acme.new_account(_KEY)
    assert env.calls() == [
        ("directory", "GET", 503, "http"),
        ("directory", "GET", 200, None),  # both responses fed the nonce pool: no HEAD
        ("newAccount", "POST", 503, "http"),
        ("newAccount", "POST", 201, None),
    ]
    # without Retry-After: not retried, AcmeUnexpectedStatus with the status
    env.ca.inject("newAccount", Response.make(503, {"Content-Type": "text/html"}, "x"))
    with pytest.raises(AcmeUnexpectedStatus) as info:
        await env.acme.new_account(_KEY)
    assert info.value.status == 503 and "without a problem document" in str(info.value)


@pytest.mark.asyncio
async def test_polling_honours_retry_after_bounded_by_max_retry_after() -> None:
    env = make_env(FakeCA(pending_polls=3, retry_after=30), max_retry_after=0.05)
    acct = await account(env)
    order = await env.acme.new_order(acct, ["p.test"])
    authz = await env.acme.get_authorization(acct, order.authorizations[0])
    assert authz.retry_after == 30
    ch = authz.challenge("http-01")
    assert ch is not None
    await env.acme.answer_challenge(acct, ch.url)
    t0 = time.perf_counter()
    authz = await env.acme.poll_authorization(acct, authz.url, timeout=5)
    took = time.perf_counter() - t0
    assert authz.status == "valid"
    assert 0.1 <= took < 1.0  # three waits of max_retry_after, not of Retry-After: 30


@pytest.mark.asyncio
async def test_poll_timeout() -> None:
    env = make_env(FakeCA(pending_polls=10**6), poll_interval=0.02)
    acct = await account(env)
    order = await env.acme.new_order(acct, ["p.test"])
    url = order.authorizations[0]
    authz = await env.acme.get_authorization(acct, url)
    ch = authz.challenge("http-01")
    assert ch is not None
    await env.acme.answer_challenge(acct, ch.url)
    t0 = time.perf_counter()
    with pytest.raises(AcmePollTimeout) as info:
        await env.acme.poll_authorization(acct, url, timeout=0.2)
    assert 0.2 <= time.perf_counter() - t0 < 1.0
    assert info.value.resource.status == "pending"  # type: ignore[attr-defined]
    # poll_order with until="valid" keeps polling a ready order until the deadline
    with pytest.raises(AcmePollTimeout, match="still pending"):
        await env.acme.poll_order(acct, order, timeout=0.1)


@pytest.mark.asyncio
async def test_processing_order_polls_until_valid() -> None:
    env = make_env(FakeCA(processing_polls=2, retry_after=0), max_retry_after=0.05)
    acct = await account(env)
    order = await env.acme.new_order(acct, ["q.test"])
    authz = await env.acme.get_authorization(acct, order.authorizations[0])
    ch = authz.challenge("tls-alpn-01")
    assert ch is not None
    await env.acme.answer_challenge(acct, ch.url)
    await env.acme.poll_authorization(acct, authz.url)
    order = await env.acme.finalize(acct, order, make_csr(["q.test"], generate_cert_key()))
    assert order.status == "processing" and order.retry_after == 0
    env.results.clear()
    order = await env.acme.poll_order(acct, order, timeout=5)
    assert order.status == "valid"
    assert [r["endpoint"] for r in env.results] == ["order"] * 3


# -- statuses outside RFC 8555 §7.1.6 end a poll at once --------------------------


def then(ca: FakeCA, change: Callable[[], None]) -> Callable[[Request], Response]:
    """A fault for FakeCA.inject: the CA's own answer, after which *change* happens."""

    def fault(req: Request) -> Response:
        resp = ca(req)  # the fault is taken off the queue: this is the ordinary answer
        change()
        return resp

    return fault


async def answered(env: Env, name: str) -> tuple[Account, Order, str]:
    """An account, an order for *name*, and its authorization's URL, challenge answered."""
    acct = await account(env)
    order = await env.acme.new_order(acct, [name])
    url = order.authorizations[0]
    authz = await env.acme.get_authorization(acct, url)
    ch = authz.challenge("http-01")
    assert ch is not None
    await env.acme.answer_challenge(acct, ch.url)
    env.results.clear()
    return acct, order, url


@pytest.mark.asyncio
async def test_an_order_status_outside_the_rfc_ends_the_poll_at_once() -> None:
    # As Pebble 2.4 shows an order once an authorization of it is deactivated: the order is
    # processing when first polled, then "deactivated", which no wait turns into valid.
    env = make_env(FakeCA(processing_polls=10**6))
    acct, order, url = await answered(env, "d.test")
    await env.acme.poll_authorization(acct, url, timeout=5)
    order = await env.acme.finalize(acct, order, make_csr(["d.test"], generate_cert_key()))
    assert order.status == "processing"
    env.ca.inject("order", then(env.ca, lambda: env.ca.orders[order.url].update(
        status="deactivated")))
    env.results.clear()
    with pytest.raises(AcmeStatusError) as info:
        await env.acme.poll_order(acct, order, timeout=60)
    assert str(info.value) == (f"order {order.url}: status 'deactivated' is not an order "
                               f"status of RFC 8555 §7.1.6")
    assert isinstance(info.value, AcmeProtocolError) and info.value.kind == "badStatus"
    assert (info.value.url, info.value.status) == (order.url, "deactivated")
    assert info.value.resource.status == "deactivated"  # type: ignore[attr-defined]
    # one poll saw processing, the next the status: no more requests, no timeout
    assert [r["endpoint"] for r in env.results] == ["order"] * 2
    # until="ready" stops there too; and an order already seen so is not polled at all
    env.results.clear()
    with pytest.raises(AcmeStatusError, match="'deactivated' is not an order status"):
        await env.acme.poll_order(acct, order, timeout=60, until="ready")
    assert [r["endpoint"] for r in env.results] == ["order"]
    env.results.clear()
    seen = Order(order.url, {**order.body, "status": "deactivated"})
    with pytest.raises(AcmeStatusError):
        await env.acme.poll_order(acct, seen, timeout=60)
    assert env.results == []
    err = pickle.loads(pickle.dumps(info.value))
    assert (type(err), str(err), err.url, err.status) == (
        AcmeStatusError, str(info.value), order.url, "deactivated")


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ["deactivated", "expired", "revoked"])
async def test_an_authorization_ended_while_validated_ends_the_poll_at_once(status: str) -> None:
    env = make_env(FakeCA(pending_polls=10**6))
    acct, _, url = await answered(env, "e.test")
    env.ca.inject("authz", then(env.ca, lambda: env.ca.authzs[url].update(status=status)))
    with pytest.raises(AcmeAuthorizationEnded) as info:
        await env.acme.poll_authorization(acct, url, timeout=60)
    assert str(info.value) == (
        f"authorization {url} (dns:e.test) became {status!r} while being validated: a "
        f"final status of RFC 8555 §7.1.6, it can never be valid")
    assert (info.value.url, info.value.status, info.value.kind) == (url, status, "authzEnded")
    assert not isinstance(info.value, AcmeProtocolError)  # the CA broke no rule
    # the first poll saw pending, the second the final status
    assert [r["endpoint"] for r in env.results] == ["authz"] * 2
    err = pickle.loads(pickle.dumps(info.value))
    assert (type(err), str(err), err.status) == (AcmeAuthorizationEnded, str(info.value), status)


@pytest.mark.asyncio
async def test_an_authorization_status_outside_the_rfc_ends_the_poll_at_once() -> None:
    env = make_env(FakeCA(pending_polls=10**6))
    acct, _, url = await answered(env, "f.test")
    env.ca.authzs[url]["status"] = "paused"
    with pytest.raises(AcmeStatusError) as info:
        await env.acme.poll_authorization(acct, url, timeout=60)
    assert str(info.value) == (f"authorization {url}: status 'paused' is not an "
                               f"authorization status of RFC 8555 §7.1.6")
    assert [r["endpoint"] for r in env.results] == ["authz"]


@pytest.mark.asyncio
async def test_an_invalid_authorization_is_a_poll_result_not_an_error() -> None:
    env = make_env(FakeCA(pending_polls=10**6))
    acct, _, url = await answered(env, "g.test")
    env.ca.authzs[url]["status"] = "invalid"  # validation failed: what the poll waits for
    assert (await env.acme.poll_authorization(acct, url, timeout=60)).status == "invalid"
    assert [r["endpoint"] for r in env.results] == ["authz"]


# -- transport failures --------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_is_bounded_and_observed() -> None:
    async def slow(req: Request) -> Response:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    transport = MockTransport(slow)
    net = AcmeNetwork(DIR, transport, timeout=0.1)
    results: list[RequestResult] = []
    t0 = time.perf_counter()
    with pytest.raises(AcmeTimeout):
        await net.client("c", "1", results.append).directory()
    assert time.perf_counter() - t0 < 1.0
    assert [(r["endpoint"], r["status"], r["error"], r["ok"]) for r in results] == [
        ("directory", 0, "timeout", False)
    ]
    assert 0.09 < results[0]["took"] < 1.0


@pytest.mark.asyncio
async def test_connect_error_and_too_large_are_observed() -> None:
    ca = FakeCA()
    transport = MockTransport(ca, max_body=1000)
    net = AcmeNetwork(DIR, transport)
    results: list[RequestResult] = []
    acme = net.client("c", "1", results.append)
    acct = await acme.new_account(_KEY)

    def refuse(req: Request) -> Response:
        raise AcmeConnectError("refused")

    ca.inject("newOrder", refuse)
    with pytest.raises(AcmeConnectError):
        await acme.new_order(acct, ["c.test"])
    ca.inject("newOrder", Response.make(201, {"Location": "x"}, b"{" * 2000))
    with pytest.raises(AcmeBodyTooLarge):
        await acme.new_order(acct, ["c.test"])
    assert [(r["endpoint"], r["error"]) for r in results if r["endpoint"] == "newOrder"] == [
        ("newOrder", "connect"),
        ("newOrder", "tooLarge"),
    ]


# -- garbage bodies --------------------------------------------------------------


def _json(status: int, body: Any, **headers: str) -> Response:
    return Response.make(status, headers, orjson.dumps(body), content_type="application/json")


GARBAGE: list[tuple[str, str, Callable[[], Response], str]] = [
    (
        "directory",
        "directory",
        lambda: Response.make(200, {"Content-Type": "application/json"}, "{nope"),
        "not valid JSON",
    ),
    (
        "directory",
        "directory",
        lambda: Response.make(200, {"Content-Type": "text/html"}, "<html>"),
        "expected Content-Type application/json, got text/html",
    ),
    ("directory", "directory", lambda: _json(200, [1, 2]), "not an object"),
    ("directory", "directory", lambda: _json(200, {"newNonce": "x"}), "'newAccount' missing"),
    (
        "newNonce",
        "newNonce",
        lambda: Response.make(200, {"Replay-Nonce": ""}),
        "no valid Replay-Nonce",
    ),
    (
        "newNonce",
        "newNonce",
        lambda: Response.make(200, {"Replay-Nonce": "bad nonce!"}),
        "no valid Replay-Nonce",
    ),
    ("newAccount", "newAccount", lambda: _json(201, {"status": "valid"}), "no Location header"),
    (
        "newAccount",
        "newAccount",
        lambda: Response.make(400, {"Content-Type": "application/problem+json"}, "{{"),
        "problem document is not valid JSON",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("inject", "endpoint", "make", "message"), GARBAGE, ids=[g[3] for g in GARBAGE]
)
async def test_garbage_bodies(
    inject: str, endpoint: str, make: Callable[[], Response], message: str
) -> None:
    env = make_env()
    env.ca.inject(inject, make())
    with pytest.raises(AcmeProtocolError, match=message):
        await env.acme.new_account(_KEY)
    bad = [r for r in env.results if not r["ok"]]
    assert [(r["endpoint"], r["error"]) for r in bad] == [(endpoint, "badBody")]


@pytest.mark.asyncio
async def test_garbage_resources(env: Env) -> None:
    acct = await account(env)
    env.ca.inject("newOrder", _json(201, {"status": "pending"}, Location="https://ca.test/order/x"))
    with pytest.raises(AcmeProtocolError, match="'authorizations' missing"):
        await env.acme.new_order(acct, ["g.test"])
    env.ca.inject(
        "newOrder", _json(201, {"status": "pending", "authorizations": [], "finalize": "f"})
    )
    with pytest.raises(AcmeProtocolError, match="newOrder: HTTP 201 response has no Location"):
        await env.acme.new_order(acct, ["g.test"])
    order = await env.acme.new_order(acct, ["g.test"])
    env.ca.inject(
        "authz", _json(200, {"status": "pending", "identifier": {}, "challenges": [{"type": "x"}]})
    )
    with pytest.raises(AcmeProtocolError, match="'url' missing"):
        await env.acme.get_authorization(acct, order.authorizations[0])
    env.ca.inject("certificate", Response.make(200, {"Content-Type": "application/json"}, "{}"))
    with pytest.raises(AcmeProtocolError, match="pem-certificate-chain"):
        await env.acme.download_certificate(acct, "https://ca.test/cert/1")
    # a success without Replay-Nonce breaks RFC 8555 §6.5
    env.ca.inject("order", Response.make(200, {"Replay-Nonce": ""}, json=order.body))
    with pytest.raises(AcmeProtocolError, match="no Replay-Nonce"):
        await env.acme.get_order(acct, order.url)
    assert all(r["error"] == "badBody" for r in env.results if not r["ok"])


@pytest.mark.asyncio
async def test_unexpected_status_without_problem(env: Env) -> None:
    acct = await account(env)
    env.ca.inject(
        "order", Response.make(502, {"Content-Type": "text/html"}, "<html>bad gateway</html>")
    )
    with pytest.raises(AcmeUnexpectedStatus, match="HTTP 502") as info:
        await env.acme.get_order(acct, "https://ca.test/order/1")
    assert info.value.status == 502
    assert env.results[-1]["error"] == "http" and env.results[-1]["problem"] is None


@pytest.mark.asyncio
async def test_post_as_get_raw(env: Env) -> None:
    acct = await account(env)
    order = await env.acme.new_order(acct, ["raw.test"])
    resp = await env.acme.post_as_get(acct, order.url, "order")
    assert orjson.loads(resp.body)["status"] == "pending"
    assert env.results[-1]["endpoint"] == "order"
    protected = env.header(-1)
    assert protected["kid"] == acct.url
    raw = orjson.loads(env.transport.requests[-1].body or b"")
    assert raw["payload"] == ""
    assert b64url_decode(raw["protected"])


# -- nonce pool -------------------------------------------------------------------


def test_nonce_pool_bounded_newest_first_and_validating() -> None:
    pool = NoncePool(maxsize=3)
    assert pool.pop() is None
    assert not pool.push(None) and not pool.push("") and not pool.push("has space")
    assert not pool.push("pad=")
    for n in ("a", "b", "c", "d"):
        assert pool.push(n)
    assert len(pool) == 3 and pool.dropped == 1
    assert [pool.pop(), pool.pop(), pool.pop(), pool.pop()] == ["d", "c", "b", None]


@pytest.mark.asyncio
async def test_head_new_nonce_only_when_pool_is_empty(env: Env) -> None:
    acct = await env.acme.new_account(_KEY)
    for _ in range(5):
        await env.acme.fetch_account(acct)
    assert [r["endpoint"] for r in env.results].count("newNonce") == 1
    env.net.nonces.clear()
    await env.acme.fetch_account(acct)
    assert [r["endpoint"] for r in env.results].count("newNonce") == 2
    # concurrent requests each take their own nonce: none is used twice
    env.net.nonces.clear()
    await asyncio.gather(*(env.acme.fetch_account(acct) for _ in range(10)))
    used = [h["nonce"] for _, m, h in env.ca.seen if m == "POST" and h]
    assert len(used) == len(set(used))


@pytest.mark.asyncio
async def test_get_new_nonce_and_directory_properties() -> None:
    env = make_env(nonce_method="GET")
    directory = await env.acme.directory()
    assert directory.terms_of_service == "https://ca.test/tos"
    assert directory.profiles == {"default": "the default"}
    assert not directory.external_account_required
    assert directory.offers("renewalInfo") and not directory.offers("newAuthz")
    env.net.nonces.clear()
    await env.acme.new_account(_KEY)
    assert ("newNonce", "GET", 204, None) in env.calls()
    with pytest.raises(ValueError):
        AcmeNetwork(DIR, env.transport, nonce_method="POST")


def test_retry_after_values() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    value = retry_after_seconds(format_datetime(later, usegmt=True))
    assert value is not None and 25 < value <= 31
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_verify_signature_helpers() -> None:
    for alg in ("ES256", "ES384", "RS256"):
        key = AccountKey.generate(alg)
        pub = jwk_public_key(key.jwk)
        sig = key.signature(b"data")
        assert verify_signature(pub, alg, b"data", sig)
        assert not verify_signature(pub, alg, b"datA", sig)
        assert not verify_signature(pub, "ES512" if alg != "ES512" else "ES256", b"data", sig)
    with pytest.raises(ValueError):
        jwk_public_key({"kty": "oct", "k": "x"})
    with pytest.raises(ValueError):
        jwk_public_key({"kty": "EC", "crv": "P-256"})


@pytest.mark.asyncio
async def test_polls_skip_what_the_last_answer_already_says() -> None:
    env = make_env(FakeCA(processing_polls=1), poll_first=0.05, poll_interval=0.5)
    acct = await account(env)
    order = await env.acme.new_order(acct, ["s.test"])
    authz = await env.acme.get_authorization(acct, order.authorizations[0])
    ch = authz.challenge("http-01")
    assert ch is not None
    answered = await env.acme.answer_challenge(acct, ch.url)
    assert answered.status == "processing" and answered.retry_after is None
    env.results.clear()
    t0 = time.time()
    # the challenge is being validated: the first poll waits the first step (50 ms)
    await env.acme.poll_authorization(acct, authz.url, answered=answered)
    assert [r["endpoint"] for r in env.results] == ["authz"]
    assert env.results[0]["started"] - t0 >= 0.05
    order = await env.acme.poll_order(acct, order, until="ready")
    assert order.status == "ready"
    # a ready order asked to be ready again: no request
    env.results.clear()
    assert await env.acme.poll_order(acct, order, until="ready") is order
    order = await env.acme.finalize(acct, order, make_csr(["s.test"], generate_cert_key()))
    assert order.status == "processing"
    assert env.results == [r for r in env.results if r["endpoint"] == "finalize"]
    env.results.clear()
    t0 = time.time()
    # processing: the first poll waits 50 ms (processing), the next 100 ms (valid)
    order = await env.acme.poll_order(acct, order)
    assert order.status == "valid" and [r["endpoint"] for r in env.results] == ["order"] * 2
    first, second = (r["started"] for r in env.results)
    assert first - t0 >= 0.05 and second - first >= 0.1
    env.results.clear()
    assert await env.acme.poll_order(acct, order) is order and env.results == []


@pytest.mark.asyncio
async def test_a_transports_own_stamps_are_the_requests_time() -> None:
    # a transport that stamps when it wrote the request and when the answer came in: the
    # result's took is from the one to the other, and its start is the write
    ca = FakeCA()
    stamps: list[tuple[float, float]] = []

    async def stamped(req: Request) -> Response:
        resp = ca(req)
        await asyncio.sleep(0.02)
        sent = time.perf_counter() - 0.010  # as if written 10 ms ago, answered 5 ms ago
        stamps.append((sent, sent + 0.005))
        connect = 0.002 if len(stamps) == 1 else 0.0  # the first opened its connection
        return Response(resp.status, resp.headers, resp.body, sent, sent + 0.005, connect)

    net = AcmeNetwork(DIR, MockTransport(stamped), timeout=5)
    results: list[RequestResult] = []
    t0 = time.time()
    client = net.client("c", "1", results.append)
    await client.directory()
    await net.new_nonce(client._obs)
    assert len(results) == 2 and all(r["ok"] for r in results)
    assert all(abs(r["took"] - 0.005) < 1e-9 for r in results)
    assert t0 + 0.005 < results[0]["started"] < time.time() - 0.005
    assert results[0]["connect"] == 0.002 and "connect" not in results[1]
