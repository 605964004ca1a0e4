"""ChainContext against the offline FakeCA: what chains share under load."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.acme import (
    AccountKey,
    AcmeAuthorizationEnded,
    AcmeNetwork,
    AcmeProblem,
    FakeCA,
    MockTransport,
    Request,
    Response,
)
from pytest_wec.settings import Settings
from pytest_wec.worker.context import ChainContext

DIR = "https://ca.test/dir"


class Published:
    """A publisher that remembers what is published and removed."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    async def add_http01(self, token: str, key_authz: str) -> None:
        self.live.add(token)

    async def del_http01(self, token: str) -> None:
        self.live.discard(token)


def runtime(ca: FakeCA) -> Any:
    return SimpleNamespace(
        network=AcmeNetwork(DIR, MockTransport(ca), poll_interval=0.01, poll_first=0.01),
        settings=Settings(), directory=DIR, store=None, publisher=Published(), pebble=None,
        holder="test:1", info={})


@pytest.mark.asyncio
async def test_a_challenge_another_chain_answered_is_waited_for_not_failed() -> None:
    ca = FakeCA(pending_polls=2)
    rt = runtime(ca)
    first, second = ChainContext(rt, "renew_certificate"), ChainContext(rt, "reuse")
    account = await first.client.new_account(AccountKey.generate("ES256"))
    order = await first.client.new_order(account, ["shared.test"])
    # the first chain answers the order's only challenge ...
    authz = await first.client.get_authorization(account, order.authorizations[0])
    chall = authz.challenge("http-01")
    assert chall is not None
    await first.client.answer_challenge(account, chall.url)
    # ... and the second, handed the same pending order, answers it again: refused by the
    # CA, read again, found being validated, and waited for
    done = await second.authorize(account, order, "http-01")
    assert [a.status for a in done] == ["valid"]
    endpoints = [(r["endpoint"], r["status"]) for r in second.requests]
    assert endpoints[:3] == [("authz", 200), ("challenge", 400), ("authz", 200)]
    assert rt.publisher.live == set()  # the answer was removed again


@pytest.mark.asyncio
async def test_a_refused_answer_to_a_pending_challenge_still_fails() -> None:
    ca = FakeCA()
    rt = runtime(ca)
    ctx = ChainContext(rt, "new_certificate")
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    order = await ctx.client.new_order(account, ["refused.test"])
    ca.inject("challenge", lambda req: ca.problem(400, "malformed", "not today"))
    with pytest.raises(AcmeProblem, match="not today"):
        await ctx.authorize(account, order, "http-01")
    assert rt.publisher.live == set()


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ["deactivated", "invalid", "expired", "revoked"])
async def test_a_final_authorization_is_not_answered(status: str) -> None:
    ca = FakeCA()
    rt = runtime(ca)
    ctx = ChainContext(rt, "renew_certificate")
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    order = await ctx.client.new_order(account, ["gone.test"])
    url = order.authorizations[0]
    ca.authzs[url]["status"] = status  # e.g. deactivated by another chain of the account
    ctx.requests.clear()
    with pytest.raises(AcmeAuthorizationEnded) as info:
        await ctx.authorize(account, order, "http-01")
    assert str(info.value) == (
        f"authorization {url} (dns:gone.test) of order {order.url} is {status!r} at the CA, "
        f"a final status of RFC 8555 §7.1.6: its challenge is not answered")
    assert (info.value.url, info.value.status) == (url, status)
    assert [r["endpoint"] for r in ctx.requests] == ["authz"]
    assert rt.publisher.live == set()  # nothing published either


@pytest.mark.asyncio
async def test_an_answer_refused_because_the_authorization_ended_says_so() -> None:
    # As Pebble answers a challenge of an authorization deactivated between the chain's
    # read and its answer: the challenge still shows valid, and the answer is refused.
    ca = FakeCA()
    rt = runtime(ca)
    ctx = ChainContext(rt, "ip_identifier")
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    order = await ctx.client.new_order(account, ["raced.test"])
    url = order.authorizations[0]

    def deactivated_meanwhile(req: Request) -> Response:
        ca.authzs[url]["status"] = "deactivated"
        return ca.problem(400, "malformed", "Cannot update challenge with status valid, "
                                            "only status pending")

    ca.inject("challenge", deactivated_meanwhile)
    with pytest.raises(AcmeAuthorizationEnded) as info:
        await ctx.authorize(account, order, "http-01")
    assert str(info.value).startswith(f"authorization {url} is 'deactivated' at the CA")
    assert "Cannot update challenge with status valid" in str(info.value)
    assert isinstance(info.value.__cause__, AcmeProblem)
    assert rt.publisher.live == set()


@pytest.mark.asyncio
async def test_a_produced_authorization_marked_deactivated_is_stored_so() -> None:
    ca = FakeCA()
    stored: list[tuple[str, str]] = []

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    rt = runtime(ca)
    rt.db = db
    rt.store = SimpleNamespace(
        add_authorization=lambda directory, account_id, url, id_type, id_value, kind, status,
        expires: stored.append((url, status)))
    ctx = ChainContext(rt, "deactivate_authorization")
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    order = await ctx.client.new_order(account, ["kept.test", "given-up.test"])
    kept, given_up = await ctx.authorize(account, order, "http-01")
    ctx.mark_produced_authorization(given_up.url, "deactivated")
    with pytest.raises(ValueError, match="not validated by this chain"):
        ctx.mark_produced_authorization("https://ca.test/authz/other", "deactivated")
    await ctx.finish()
    assert stored == [(kept.url, "valid"), (given_up.url, "deactivated")]


@pytest.mark.asyncio
async def test_a_stored_key_is_parsed_once_per_worker_and_a_rolled_key_is_the_new_one(
        tmp_path: Any) -> None:
    from pytest_wec.state import make_store

    store = make_store(tmp_path / "state.db")
    rt = runtime(FakeCA())

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    rt.store, rt.db = store, db
    old, new = AccountKey.generate("ES256"), AccountKey.generate("ES384")
    row_id = store.add_account(DIR, "https://ca.test/acct/1", old.to_pem(), "ES256")
    first = await ChainContext(rt, "new_certificate").take_account()
    second = await ChainContext(rt, "new_order").take_account()
    assert first.key is second.key, "the same stored key: parsed once, shared"
    assert first.key.thumbprint == old.thumbprint and first.key.alg == "ES256"
    assert store.update_account_key(row_id, new.to_pem(), "ES384")  # a key rollover
    third = await ChainContext(rt, "new_certificate").take_account()
    assert third.key.thumbprint == new.thumbprint and third.key.alg == "ES384"
    assert third.url == first.url


@pytest.mark.asyncio
async def test_run_once_a_shared_take_keeps_exclusive_claimers_off_until_the_chain_ends(
        tmp_path: Any) -> None:
    """An integration run under xdist: another worker's chain that deactivates a pooled
    account (claimed exclusively) must not get one a chain is still signing with."""
    from pytest_wec.state import make_store

    store = make_store(tmp_path / "state.db")
    rt = runtime(FakeCA())

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    rt.store, rt.db = store, db
    key = AccountKey.generate("ES256")
    row_id = store.add_account(DIR, "https://ca.test/acct/1", key.to_pem(), "ES256")
    user = ChainContext(rt, "new_order")
    assert (await user.take_account()).url == "https://ca.test/acct/1"
    assert store.claim_account(DIR, "gw1:99", 60) is None, "shared: no exclusive claim"
    assert store.claim_account(DIR, "gw1:99", 60, exclusive=False) is not None, \
        "another share is fine"
    store.release("account", row_id, "gw1:99")
    await user.finish()
    claimed = store.claim_account(DIR, "gw1:99", 60)
    assert claimed is not None and claimed.id == row_id, "the chain ended: free again"
