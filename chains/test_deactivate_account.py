"""deactivate_account: an account deactivated by its own request (RFC 8555 §7.3.6).

The load-mode chain deactivates an account it makes itself, and stores it (as deactivated)
only afterwards. Taking one from the state DB would drain the pool that every other chain
signs with, and a pooled account can be in use by a chain that picked it before the claim
(shared use is not recorded), which would then fail for a reason of this chain's making. A
fresh account costs one newAccount, and the deactivation is the same request either way. The
integration-only variant deactivates a pooled account, claimed exclusively.

After deactivation the CA must refuse the account's requests with ``unauthorized``. RFC 8555
§7.3.6 says with HTTP 401; Pebble and Boulder answer 403, which is accepted (and reported as
an RfcDeviation warning when run once). A CA that still takes them for a while (Boulder's
WFE caches accounts) fails, saying for how long (:mod:`._lingering`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pytest_wec import ChainContext, chain
from pytest_wec.acme import Account

from ._checks import warn_deviation
from ._lingering import refused_after

REFUSED = (401, 403)


async def _refused(wec: ChainContext, what: str, call: Callable[[], Awaitable[Any]]) -> None:
    """*call* (a request of the deactivated account, *what* in words) is refused. A CA that
    takes it for a while after the deactivation (Boulder's WFE caches accounts) fails with
    how long it did (:mod:`._lingering`)."""
    problem = await refused_after(
        wec, call, "unauthorized", status=REFUSED, changed="account",
        event="the CA answered its deactivation",
        accepted=f"the deactivated account's {what} was still accepted",
        rfc="RFC 8555 §7.3.6: once an account is deactivated, the server MUST NOT accept "
            "further requests authorized by its key")
    if problem.status != 401:
        warn_deviation(wec, f"a deactivated account's request got HTTP {problem.status}; "
                            f"RFC 8555 §7.3.6 says 401")


async def _deactivate(wec: ChainContext, account: Account) -> None:
    done = await wec.client.deactivate_account(account)
    assert done.body.get("status") == "deactivated", f"§7.3.6: {done.body}"


@chain("deactivate_account")
async def test_deactivate_account(wec: ChainContext) -> None:
    key = wec.new_key()
    account = await wec.new_account(key=key, store=False)  # with the run's EAB, if any
    await _deactivate(wec, account)
    await wec.db(wec.store.add_account, wec.directory, account.url, key.to_pem(), key.alg,
                 status="deactivated")
    await _refused(wec, "newOrder", lambda: wec.client.new_order(
        account, wec.identifiers(wec.random_names(1))))


@chain("deactivate_account", needs={"account"}, load=False)
async def test_deactivate_pooled_account(wec: ChainContext) -> None:
    account = await wec.take_account(exclusive=True)
    await _deactivate(wec, account)
    account_id = wec.account_id(account)
    assert account_id is not None
    await wec.db(wec.store.mark_account_status, account_id, "deactivated")
    await _refused(wec, "POST-as-GET of its account", lambda: wec.client.fetch_account(account))
    row = await wec.db(wec.store.get_account, account_id)
    assert row is not None and row.status == "deactivated"
