"""deactivate_authorization: a valid authorization given up by its account (RFC 8555 §7.5.2).

POSTing ``{"status": "deactivated"}`` to a valid authorization answers it with status
``deactivated`` (§7.1.6); the state DB records it so.

The load-mode chain deactivates an authorization only it can hold: it makes a fresh account,
orders a random name with it and validates that. A CA may hand a valid authorization of an
account to that account's new orders for the same identifier (§7.4; Pebble does), and a
claim in the state DB does not stop it. So deactivating a stored authorization under load
also changes the orders of other chains in flight that were handed it, and makes them fail
for a reason of this chain's making: Pebble 2.4 then shows such an order, even a valid one,
as ``deactivated`` (no order status of §7.1.6), refuses to finalize it, and a deactivation
between another chain's finalize and issuance can hang Pebble. No other chain knows the fresh
account's random name, and the authorization is stored (as deactivated) only when this chain
ends. The account joins the pool at once: it holds no authorization another chain could be
handed. The integration-only variant deactivates one validated for the purpose (run once,
nothing else is in flight).
"""

from __future__ import annotations

from pytest_wec import ChainContext, chain

from ._checks import authorization_identifier


@chain("deactivate_authorization", produces={"account"})
async def test_deactivate_authorization(wec: ChainContext) -> None:
    account = await wec.new_account()
    order = await wec.order(account, wec.random_names(1))
    [authz] = await wec.authorize(account, order)
    assert authz.status == "valid", f"{authz.identifier.value}: {authz.body}"
    # never stored as valid for another chain once asked, whatever the answer (or none)
    wec.mark_produced_authorization(authz.url, "deactivated")
    done = await wec.client.deactivate_authorization(account, authz.url)
    assert done.status == "deactivated", f"§7.5.2: {done.body}"


@chain("deactivate_authorization", needs={"authorization"}, load=False)
async def test_deactivated_is_not_reused(wec: ChainContext) -> None:
    """A valid authorization, deactivated, stays deactivated, and a new order for its
    identifier does not get it back: it no longer authorizes issuance (§7.1.6, §7.5.2).
    Validated for the purpose (``fresh``): a stored one may be for an IP address, which a
    CA limiting certificates per address may refuse to order again."""
    row = await wec.take_authorization(fresh=True)
    account = await wec.account_of(row)
    before = await wec.client.get_authorization(account, row.url)
    assert before.status == "valid", before.body
    authz = await wec.client.deactivate_authorization(account, row.url)
    await wec.db_later(wec.store.mark_authorization_status, row.id, authz.status)
    assert authz.status == "deactivated", authz.body
    again = await wec.client.get_authorization(account, row.url)
    assert again.status == "deactivated", again.body
    order = await wec.order(account, [authorization_identifier(before)])
    assert row.url not in order.authorizations, "a deactivated authorization was reused"
