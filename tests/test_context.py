"""ChainContext against the offline FakeCA: what chains share under load."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.acme import AccountKey, AcmeNetwork, AcmeProblem, FakeCA, MockTransport
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
