"""key_rollover: an account's key changed through keyChange (RFC 8555 §7.3.5).

The account is fresh (load) or claimed exclusively (variants), so no other chain signs with
it meanwhile. The outer JWS is signed by the old key, the inner one by the new key.
Afterwards the new key finds the account and signs for it, the old key finds nothing
(``onlyReturnExisting``, §7.3.1: accountDoesNotExist), and the state DB holds the new key.
"""

from __future__ import annotations

from chains._checks import embedded_pebble_deviates, expect_problem
from pytest_wec import ChainContext, chain
from pytest_wec.acme import Account, AcmeError, AcmeProblem


async def _roll(wec: ChainContext) -> tuple[Account, Account]:
    account = await wec.take_account(exclusive=True)
    new_key = wec.new_key()
    rolled = await wec.client.key_change(account, new_key)
    account_id = wec.account_id(account)
    assert account_id is not None
    await wec.db(wec.store.update_account_key, account_id, new_key.to_pem(), new_key.alg)
    assert rolled.url == account.url and rolled.key == new_key
    return account, rolled


@chain("key_rollover", produces={"account"})
async def test_key_rollover(wec: ChainContext) -> None:
    """Rolls a fresh account's key, then stores the account with its new key.

    Under load, chains share pooled accounts without claims; rolling a pooled account's key
    would make chains signing with it at that moment fail. A fresh account, stored only
    once rolled over, cannot be in anyone else's hands.
    """
    old = await wec.new_account(store=False)
    new_key = wec.new_key()
    rolled = await wec.client.key_change(old, new_key)
    assert rolled.url == old.url and rolled.key == new_key
    await wec.remember(rolled)
    fetched = await wec.client.fetch_account(rolled)
    assert fetched.body.get("status") == "valid", fetched.body
    found = await wec.client.new_account(rolled.key, only_return_existing=True)
    assert found.url == rolled.url, "the new key must find the account (§7.3.1)"
    await expect_problem(
        wec,
        wec.client.new_account(old.key, only_return_existing=True), "accountDoesNotExist"
    )


@chain("key_rollover", needs={"account"}, load=False)
async def test_old_key_refused(wec: ChainContext) -> None:
    """A request signed by the old key for the account (``kid``) is refused."""
    old, rolled = await _roll(wec)
    try:
        await wec.client.fetch_account(old)
    except AcmeProblem as problem:
        assert 400 <= problem.status < 500, problem
    else:
        raise AssertionError("the CA accepted a request signed by the account's old key")
    order = await wec.order(rolled, wec.random_names(1))
    assert order.status == "pending", "the new key signs newOrder"


@chain("key_rollover", needs={"account"}, load=False)
async def test_rollover_to_a_key_in_use(wec: ChainContext) -> None:
    """Rolling over to another account's key is refused with 409 Conflict (§7.3.5), and the
    account keeps its key."""
    account = await wec.take_account(exclusive=True)
    other = await wec.new_account()
    try:
        await wec.client.key_change(account, other.key)
    except AcmeError as exc:
        status, refusal = getattr(exc, "status", None), str(exc)
    else:
        raise AssertionError("the CA rolled an account over to another account's key")
    fetched = await wec.client.fetch_account(account)
    assert fetched.body.get("status") == "valid", "the old key must still sign for the account"
    embedded_pebble_deviates(
        wec, status == 500,
        "keyChange to a key in use answers 500 serverInternal, not 409 Conflict (§7.3.5)")
    assert status == 409, f"expected HTTP 409 Conflict, got {status}: {refusal}"
