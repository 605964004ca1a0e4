"""deactivate_authorization: a valid authorization given up by its account (RFC 8555 §7.5.2).

The authorization is claimed from the state DB, so no other chain deactivates or reuses it
meanwhile. POSTing ``{"status": "deactivated"}`` to it answers the authorization with status
``deactivated`` (§7.1.6); the state DB marks it so.
"""

from __future__ import annotations

from chains._checks import authorization_identifier
from pytest_wec import ChainContext, chain


@chain("deactivate_authorization", needs={"authorization"})
async def test_deactivate_authorization(wec: ChainContext) -> None:
    row = await wec.take_authorization()
    account = await wec.account_of(row)
    authz = await wec.client.deactivate_authorization(account, row.url)
    await wec.db(wec.store.mark_authorization_status, row.id, authz.status)
    assert authz.status == "deactivated", f"§7.5.2: {authz.body}"


@chain("deactivate_authorization", needs={"authorization"}, load=False)
async def test_deactivated_is_not_reused(wec: ChainContext) -> None:
    """The deactivated authorization stays deactivated, and a new order for its identifier
    does not get it back: it no longer authorizes issuance (§7.1.6, §7.5.2)."""
    row = await wec.take_authorization()
    account = await wec.account_of(row)
    before = await wec.client.get_authorization(account, row.url)
    assert before.status == "valid", before.body
    authz = await wec.client.deactivate_authorization(account, row.url)
    await wec.db(wec.store.mark_authorization_status, row.id, authz.status)
    assert authz.status == "deactivated", authz.body
    again = await wec.client.get_authorization(account, row.url)
    assert again.status == "deactivated", again.body
    order = await wec.order(account, [authorization_identifier(before)])
    assert row.url not in order.authorizations, "a deactivated authorization was reused"
