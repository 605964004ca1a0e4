"""new_order: RFC 8555 §7.4 newOrder, then each authorization through a challenge (§7.5).

``--wec-names`` sets the names per order (1 to 100); ``--wec-challenge`` the challenge type
load mode answers. Run once, every challenge type is exercised.
"""

from __future__ import annotations

import pytest

from pytest_wec import ChainContext, chain


@chain("new_order", needs={"account"}, produces={"authorization"})
async def test_new_order(wec: ChainContext) -> None:
    account = await wec.take_account()
    names = wec.random_names()
    order = await wec.order(account, names)
    assert order.status == "pending"
    assert len(order.authorizations) == len(names), "one authorization per identifier (§7.1.3)"
    authzs = await wec.authorize(account, order)
    for authz in authzs:
        assert authz.status == "valid", f"{authz.identifier.value}: {authz.body}"
    order = await wec.client.poll_order(account, order, timeout=60, until="ready")
    assert order.status == "ready", order.body


@pytest.mark.parametrize("challenge", ["http-01", "dns-01", "tls-alpn-01"])
@chain("new_order", needs={"account"}, produces={"authorization"}, load=False)
async def test_new_order_each_challenge(wec: ChainContext, challenge: str) -> None:
    account = await wec.take_account()
    names = wec.random_names(2)
    order = await wec.order(account, names)
    authzs = await wec.authorize(account, order, challenge)
    assert {a.identifier.value for a in authzs} == set(names)
    for authz in authzs:
        assert authz.status == "valid", f"{authz.identifier.value}: {authz.body}"
        validated = [c for c in authz.challenges if c.status == "valid"]
        assert [c.type for c in validated] == [challenge], authz.body
    order = await wec.client.poll_order(account, order, timeout=60, until="ready")
    assert order.status == "ready", order.body
