"""all_but_finalize: every step of an issuance but the last (RFC 8555 §7.3, §7.4, §7.5).

A new account, newOrder, each authorization validated through ``--wec-challenge``, the
order ``ready`` (§7.1.6), and never finalized: the load of a CA's front end, registration
and validation without its issuance (signing, CT logs), which a real CA spends most of its
time on and a load test may want to leave out. The account is stored for other chains; the
order is left ready and its certificate never asked for, so no other chain is handed it
(its names are its own), and nothing shared is deactivated.
"""

from __future__ import annotations

from pytest_wec import ChainContext, chain
from pytest_wec.worker.flows import ORDER_STEP, POLL_TIMEOUT


@chain("all_but_finalize", produces={"account", "authorization"})
async def test_all_but_finalize(wec: ChainContext) -> None:
    account = await wec.new_account()
    assert account.body.get("status") == "valid", account.body
    names = wec.random_names()
    order = await wec.order(account, names)
    assert order.status == "pending", order.body
    assert len(order.authorizations) == len(names), "one authorization per identifier (§7.1.3)"
    authzs = await wec.authorize(account, order)
    for authz in authzs:
        assert authz.status == "valid", f"{authz.identifier.value}: {authz.body}"
    order = await wec.client.poll_order(account, order, timeout=POLL_TIMEOUT, until="ready",
                                        step=ORDER_STEP)
    assert order.status == "ready", order.body
    assert not order.body.get("certificate"), "an order never finalized has no certificate"
