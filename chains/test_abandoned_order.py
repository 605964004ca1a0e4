"""abandoned_order: orders left pending, never answered (RFC 8555 §7.4, §7.1.6).

A client that orders and goes away: newOrder, each authorization read (POST-as-GET, §7.5)
and found ``pending`` with its challenges ``pending``, and nothing answered. Under load the
CA keeps piling up pending orders and authorizations until they expire, as clients that
give up do (step-ca users saw pending orders fill its database).

The account is a fresh one of the chain's own, never stored: its pending authorizations
and the orders it spent count against no account another chain uses (a CA may limit
pending authorizations or new orders per account), and no other chain can be handed its
orders. The state DB keeps nothing of it.
"""

from __future__ import annotations

from typing import Any

from pytest_wec import ChainContext, chain


@chain("abandoned_order")
async def test_abandoned_order(wec: ChainContext) -> None:
    account = await wec.new_account(store=False)
    names = wec.random_names()
    kwargs: dict[str, Any] = {}
    profile = getattr(wec.settings, "profile", None)
    if profile:  # --wec-profile, as every other order of the run
        kwargs["profile"] = profile
    order = await wec.client.new_order(account, wec.identifiers(names), **kwargs)
    assert order.status == "pending", order.body
    assert len(order.authorizations) == len(names), "one authorization per identifier (§7.1.3)"
    for url in order.authorizations:
        authz = await wec.client.get_authorization(account, url)
        assert authz.status == "pending", f"a fresh order's authorization: {authz.body}"
        assert authz.challenges, f"a pending authorization offers challenges (§7.1.4): {url}"
        assert all(c.status == "pending" for c in authz.challenges), authz.body
    again = await wec.client.get_order(account, order.url)
    assert again.status == "pending", f"an order nobody answered stays pending: {again.body}"
