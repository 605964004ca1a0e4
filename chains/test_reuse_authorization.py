"""reuse_authorization: a new order for an identifier the account holds a valid authorization
for (RFC 8555 §7.4: the server may include such an authorization in the new order).

Against the embedded Pebble (``PEBBLE_AUTHZREUSE=100``) reuse is asserted. Against another CA
either answer is accepted, but a reused authorization must be valid and the order ``ready``
at once, with no challenge answered (§7.1.6).

The authorization is claimed from the state DB (run once: one validated for the purpose, for
a random name, so that the order is not for an IP address a CA limits), and the chain only
reads it and orders its identifier: the order it gets is left ready, never finalized, so no
other chain that the CA hands the same authorization (an order of the same account for the
same identifier) sees anything change. Nothing deactivates a stored authorization under load either:
deactivate_authorization deactivates only one it made itself on a fresh account.
"""

from __future__ import annotations

from pytest_wec import ChainContext, chain
from pytest_wec.acme import Account, Authorization, Order

from ._checks import authorization_identifier, challenge_for, expects_authz_reuse


async def _held(wec: ChainContext) -> tuple[Account, Authorization]:
    """A claimed authorization, checked valid at the CA too."""
    row = await wec.take_authorization(fresh=True)
    account = await wec.account_of(row)
    authz = await wec.client.get_authorization(account, row.url)
    if authz.status != "valid":
        await wec.db_later(wec.store.mark_authorization_status, row.id, authz.status)
        raise AssertionError(f"the state DB's valid authorization {row.url} is {authz.status} "
                             f"at the CA before its expiry")
    return account, authz


async def _assert_ready(wec: ChainContext, account: Account, order: Order) -> Order:
    if order.status != "ready":
        order = await wec.client.poll_order(account, order, timeout=10, until="ready")
    assert order.status == "ready", f"all authorizations valid, order {order.status} (§7.1.6)"
    return order


@chain("reuse_authorization", needs={"authorization"})
async def test_reuse_authorization(wec: ChainContext) -> None:
    account, held = await _held(wec)
    order = await wec.order(account, [authorization_identifier(held)])
    [url] = order.authorizations
    authz = await wec.client.get_authorization(account, url)
    reused = authz.status == "valid"
    if expects_authz_reuse(wec):
        assert reused, f"the embedded Pebble did not reuse {held.url}: {authz.body}"
    if reused:
        assert authz.identifier == held.identifier, authz.body
        await _assert_ready(wec, account, order)
    else:
        assert authz.status == "pending", authz.body


@chain("reuse_authorization", needs={"authorization"}, load=False)
async def test_partial_reuse(wec: ChainContext) -> None:
    """An order for the held identifier and a new name: only the new name's authorization
    needs a challenge, then the order is ready."""
    account, held = await _held(wec)
    fresh = wec.random_names(1)[0]
    names = [authorization_identifier(held), fresh]
    order = await wec.order(account, names)
    authzs = [await wec.client.get_authorization(account, u) for u in order.authorizations]
    pending = {a.identifier.value for a in authzs if a.status == "pending"}
    assert fresh in pending, f"the new name's authorization is not pending: {authzs}"
    if expects_authz_reuse(wec):
        assert pending == {fresh}, f"the held authorization was not reused: {authzs}"
    await wec.authorize(account, order, challenge_for(names, wec.settings.challenge))
    await _assert_ready(wec, account, order)


@chain("reuse_authorization", needs={"authorization"}, load=False)
async def test_no_reuse_across_accounts(wec: ChainContext) -> None:
    """Authorizations belong to one account (§7.1.4): another account ordering the same
    identifier gets a pending authorization of its own."""
    _, held = await _held(wec)
    stranger = await wec.new_account()
    order = await wec.order(stranger, [authorization_identifier(held)])
    assert held.url not in order.authorizations, "another account's authorization was reused"
    [url] = order.authorizations
    authz = await wec.client.get_authorization(stranger, url)
    assert authz.status == "pending", authz.body
