"""Rate limits: refusals read and counted with the limit they name, retry sleeps kept out
of latency, the pacer of a refused virtual user, client addresses per account, the wire.

The CA is the offline FakeCA in its rate-limit mode (``FakeLimits``: N certificates per
registered domain, then 429 ``rateLimited`` with Retry-After, worded as Boulder words it);
the load runs against it are tests/test_ratelimits_load.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.acme import AccountKey, AcmeNetwork, AcmeProblem, FakeCA, MockTransport
from pytest_wec.acme._fakeca_limits import FakeLimits
from pytest_wec.acme._ratelimits import RATE_LIMITED, ClientAddresses, limit_name
from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.ledger import failure_cause
from pytest_wec.controller.outputs import build_summary, format_tables
from pytest_wec.settings import Settings
from pytest_wec.wire.results import ChainResult
from pytest_wec.worker.context import ChainContext
from pytest_wec.worker.pacing import MIN_WAIT, RefusalPacer
from pytest_wec.worker.runner import run_chain

pytestmark = pytest.mark.timeout(120)

DIR = "https://ca.test/dir"
DOCS = "https://letsencrypt.org/docs/rate-limits/"
BOULDER_DETAILS = [
    ('too many certificates (2) already issued for "example.com" in the last 168h0m0s, '
     f"retry after 2025-01-01 00:00:00 UTC: see {DOCS}#new-certificates-per-registered-domain",
     "CertificatesPerDomain"),
    ("too many certificates (5) already issued for this exact set of domains in the last "
     f"168h0m0s, retry after 2025-01-01 00:00:00 UTC: see {DOCS}"
     "#new-certificates-per-exact-set-of-hostnames", "CertificatesPerFQDNSet"),
    ("too many new orders (300) from this account in the last 3h0m0s, retry after "
     f"2025-01-01 00:00:00 UTC: see {DOCS}#new-orders-per-account", "NewOrdersPerAccount"),
    ("too many new registrations (10) from this IP address in the last 3h0m0s, retry after "
     f"2025-01-01 00:00:00 UTC: see {DOCS}#new-registrations-per-ip-address",
     "NewRegistrationsPerIPAddress"),
    ('too many failed authorizations (5) for "a.example.com" in the last 1h0m0s, retry '
     f"after 2025-01-01 00:00:00 UTC: see {DOCS}#authorization-failures-per-hostname-per-"
     "account", "FailedAuthorizationsPerDomainPerAccount"),
]


# -- reading the limit ----------------------------------------------------------------------

@pytest.mark.parametrize(("detail", "name"), BOULDER_DETAILS)
def test_boulders_details_name_their_limit(detail: str, name: str) -> None:
    assert limit_name(detail) == name
    # without the link, the sentence alone says it
    assert limit_name(detail.split(": see ")[0]) == name


@pytest.mark.parametrize(("detail", "name"), [
    ("CertificatesPerDomain: too many certificates (2) already issued", "CertificatesPerDomain"),
    ("limit CertificatesPerDomainPerAccount exceeded for 12:example.com",
     "CertificatesPerDomainPerAccount"),  # the longer name, not the one inside it
    ("rate limit NewThingsPerWidget reached", "NewThingsPerWidget"),  # any XPerY name
    ("Error creating new order :: too many certificates already issued for: example.com",
     "CertificatesPerDomain"),  # Boulder's legacy wording
    ("too many currently pending authorizations: see https://letsencrypt.org/docs/rate-"
     "limits/", "PendingAuthorizationsPerAccount"),
    ("Error creating new order :: too many new orders recently", "NewOrdersPerAccount"),
    ("slow down", None),
    ("", None),
])
def test_named_and_older_wordings(detail: str, name: str | None) -> None:
    assert limit_name(detail) == name


# -- the client against the limited FakeCA --------------------------------------------------

class Published:
    """A publisher that remembers what is live (FakeCA validates without looking)."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    async def add_http01(self, token: str, key_authz: str) -> None:
        self.live.add(token)

    async def del_http01(self, token: str) -> None:
        self.live.discard(token)


class Store:
    """The state store's writes the chain makes (add_account, add_order, ...), each
    answered with a new row id; nothing is read back."""

    def __init__(self) -> None:
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        def write(*args: Any, **kwargs: Any) -> int:
            self.rows += 1
            return self.rows

        return write


def runtime(ca: FakeCA, settings: Settings, **net: Any) -> Any:
    store = Store()

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    network = AcmeNetwork(DIR, MockTransport(ca), poll_interval=0.01, poll_first=0.005, **net)
    return SimpleNamespace(network=network, settings=settings, directory=DIR, store=store,
                           publisher=Published(), pebble=None, holder="t:1", info={}, db=db,
                           last_answer=0.0)


async def issue_one(ctx: ChainContext) -> None:
    """The chain of these tests: a new account, one certificate for a random name."""
    account = await ctx.new_account()
    await ctx.issue(account, ctx.random_names(1))


@pytest.mark.asyncio
async def test_a_refusal_names_its_limit_and_ends_the_chain() -> None:
    ca = FakeCA(limits=FakeLimits(certificates_per_domain=2, retry_after=30))
    rt = runtime(ca, Settings(domain="wec.example.com"))
    results = [await run_chain(rt, "issue", issue_one, worker="gw0") for _ in range(3)]
    assert [r["outcome"] for r in results] == ["ok", "ok", "failed"]
    assert ca.limits is not None and ca.limits.issued == {"example.com": 2}
    last = results[2]["requests"][-1]
    assert (last["endpoint"], last["status"], last["problem"]) == ("newOrder", 429, RATE_LIMITED)
    assert last.get("limit") == "CertificatesPerDomain"
    assert results[2].get("retry_after") == 30
    assert "rateLimited" in (results[2]["error"] or "")
    # the failure's cause names the limit too (the CA events' failed_by_error)
    assert failure_cause(results[2]) == ("ca_answer", "rateLimited (CertificatesPerDomain)")
    # names spread over registered domains: the same CA issues on and on
    spread = runtime(ca, Settings())
    more = [await run_chain(spread, "issue", issue_one, worker="gw0") for _ in range(3)]
    assert [r["outcome"] for r in more] == ["ok"] * 3
    assert len(ca.limits.issued) == 4 and sum(ca.limits.issued.values()) == 5


@pytest.mark.asyncio
async def test_a_retry_sleep_is_counted_and_in_no_requests_latency() -> None:
    ca = FakeCA()
    detail = BOULDER_DETAILS[2][0]  # NewOrdersPerAccount
    ca.inject("newOrder", lambda r: ca.problem(429, "rateLimited", detail, {"Retry-After": "1"}))
    rt = runtime(ca, Settings())
    started = time.monotonic()
    result = await run_chain(rt, "issue", issue_one, worker="gw0")
    took = time.monotonic() - started
    assert result["outcome"] == "ok", result["error"]
    orders = [r for r in result["requests"] if r["endpoint"] == "newOrder"]
    assert [r["status"] for r in orders] == [429, 201]
    assert orders[0].get("limit") == "NewOrdersPerAccount"
    assert all(r["took"] < 0.5 for r in orders), [r["took"] for r in orders]
    assert took >= 1.0 and result["took"] >= 1.0  # the chain did wait the Retry-After
    assert result.get("retry_waits") == [["newOrder", 429, 1.0, "NewOrdersPerAccount"]]
    agg = Aggregator(time.time() - 5)
    agg.add(result)
    summary = build_summary(agg, {"model": "closed"}, {}, {}, None)
    rl = summary["rate_limits"]
    assert rl["retry_waits"]["count"] == 1 and rl["retry_waits"]["seconds"] == 1.0
    assert rl["refused"] == 1 and rl["by_endpoint"]["newOrder"]["by_limit"] == {
        "NewOrdersPerAccount": 1}
    assert rl["chains_refused"] == {}  # the retry got it through
    assert summary["endpoints"]["newOrder"]["latency_ms"]["max"] < 500
    assert summary["endpoints"]["newOrder"]["rate_limited"] == 1
    assert "the client slept 1.0s on Retry-After in 1 retries" in format_tables(summary)


@pytest.mark.asyncio
async def test_each_account_key_sends_an_address_of_its_own() -> None:
    ca = FakeCA()
    net = ipaddress.ip_network("198.18.0.0/15")
    transport = MockTransport(ca)
    network = AcmeNetwork(DIR, transport, client_ip_header="X-Real-IP",
                          client_addresses=ClientAddresses(net))
    client = network.client("t", "c", lambda r: None)
    keys = [AccountKey.generate("ES256") for _ in range(40)]
    for key in keys:
        account = await client.new_account(key)
        await client.fetch_account(account)
    posts = [r for r in transport.requests if r.method == "POST"]
    gets = [r for r in transport.requests if r.method != "POST"]
    assert len(posts) == 80 and gets
    assert all("X-Real-IP" not in r.headers for r in gets)  # the signed requests carry it
    sent = [r.headers["X-Real-IP"] for r in posts]
    assert all(ipaddress.ip_address(a) in net for a in sent)
    assert sent[0::2] == sent[1::2], "both requests of an account carry its address"
    assert len(set(sent)) >= 38, "the accounts are spread over the range"
    again = ClientAddresses(net)
    assert [again.for_key(k) for k in keys] == sent[0::2]  # the same every time
    small = ClientAddresses(ipaddress.ip_network("10.0.0.0/30"))
    assert {small.for_key(k) for k in keys} <= {"10.0.0.1", "10.0.0.2"}  # not .0 nor .3
    # without the option nothing is sent
    plain = MockTransport(ca)
    await AcmeNetwork(DIR, plain).client("t", "c", lambda r: None).new_account(keys[0])
    assert all("X-Real-IP" not in r.headers for r in plain.requests)


def test_the_wire_carries_the_rate_limits() -> None:
    """Worker to controller (the Redis stream's batches): the limit a request's problem
    named, the retry sleeps, the refusal's Retry-After and the user's wait come across."""
    from pytest_wec.wire.stream import decode_batch, encode_batch

    refused = {"chain_id": "c1", "chain": "issue", "endpoint": "newOrder", "method": "POST",
               "status": 429, "started": 1.0, "took": 0.002, "ok": False, "error": "problem",
               "problem": RATE_LIMITED, "limit": "CertificatesPerDomain"}
    plain = {**refused, "endpoint": "newAccount", "status": 201, "ok": True, "error": None,
             "problem": None}
    del plain["limit"]
    chain: Any = {"chain_id": "c1", "chain": "issue", "worker": "gw0", "scheduled": 1.0,
                  "started": 1.0, "took": 0.01, "ok": False, "outcome": "failed",
                  "error": "x", "certificates": 0, "requests": [plain, refused],
                  "retry_waits": [["newOrder", 429, 1.5, "NewOrdersPerAccount"]],
                  "retry_after": 30.0, "rate_limit_wait": 2.5}
    (back,) = decode_batch(encode_batch("gw0", "s", 0, 0, [chain])).chains
    assert back["requests"][1].get("limit") == "CertificatesPerDomain"
    assert "limit" not in back["requests"][0]
    assert back.get("retry_waits") == [["newOrder", 429, 1.5, "NewOrdersPerAccount"]]
    assert back.get("retry_after") == 30.0 and back.get("rate_limit_wait") == 2.5
    assert back == chain


# -- the virtual user's wait --------------------------------------------------------------

def _refused(retry_after: float | None = 30.0) -> ChainResult:
    request: Any = {"endpoint": "newOrder", "status": 429, "ok": False, "problem": RATE_LIMITED,
                    "error": "problem", "started": 0.0, "took": 0.001}
    result: Any = {"outcome": "failed", "ok": False, "requests": [request]}
    if retry_after is not None:
        result["retry_after"] = retry_after
    return result  # type: ignore[no-any-return]


def test_the_pacer_waits_the_retry_after_within_its_bounds() -> None:
    pacer = RefusalPacer(60.0)
    assert pacer.after(_refused(30.0), left=100.0) == 30.0
    assert pacer.after(_refused(300.0), left=100.0) == 60.0  # the cap
    assert pacer.after(_refused(300.0), left=5.0) == 5.0  # the time left
    assert pacer.after(_refused(0.0), left=5.0) == MIN_WAIT  # never a spin
    ok: Any = {"outcome": "ok", "ok": True, "requests": []}
    assert pacer.after(ok, left=5.0) == 0.0
    # without Retry-After: 1 s, doubling while refused, from 1 s again after a success
    assert [pacer.after(_refused(None), left=100.0) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    pacer.after(ok, left=100.0)
    assert pacer.after(_refused(None), left=100.0) == 1.0
    other: Any = {"outcome": "failed", "ok": False, "requests": [
        {**_refused()["requests"][0], "status": 400, "problem": "x:malformed"}]}
    assert pacer.after(other, left=100.0) == 0.0  # another failure: no wait
    assert RefusalPacer(0.0).after(_refused(30.0), left=100.0) == 0.0  # 0: never waits


def test_the_stub_refuses_as_boulder_words_it() -> None:
    """FakeCA's refusal, read back as a client reads it: the problem, the Retry-After and a
    detail whose limit :func:`limit_name` finds, outright with ``named``."""
    async def two_orders(ca: FakeCA) -> AcmeProblem:
        client = AcmeNetwork(DIR, MockTransport(ca)).client("t", "c", lambda r: None)
        account = await client.new_account(AccountKey.generate("ES256"))
        await client.new_order(account, ["a.wec-1.xyz"])
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(account, ["b.wec-2.xyz"])
        return info.value

    for named in (False, True):
        ca = FakeCA(limits=FakeLimits(new_orders_per_account=1, retry_after=70, named=named))
        problem = asyncio.run(two_orders(ca))
        assert problem.code == "rateLimited" and problem.status == 429
        assert problem.retry_after == 70  # over the client's retry cap: not retried
        assert limit_name(problem.detail) == "NewOrdersPerAccount"
        assert problem.detail.startswith("NewOrdersPerAccount: ") == named
