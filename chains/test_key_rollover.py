"""key_rollover: an account's key changed through keyChange (RFC 8555 §7.3.5).

The account is fresh (load) or claimed exclusively (variants), so no other chain signs with
it meanwhile. The outer JWS is signed by the old key, the inner one by the new key.
Afterwards the new key finds the account and signs for it, the old key finds nothing
(``onlyReturnExisting``, §7.3.1: accountDoesNotExist), and the state DB holds the new key.

A CA that keeps taking the old key, or refuses the new one, for a while after the rollover
(Boulder's WFE caches accounts) fails these chains with how long it did so
(:mod:`._lingering`).
"""

from __future__ import annotations

from pytest_wec import ChainContext, chain
from pytest_wec.acme import Account, AcmeError

from ._checks import embedded_pebble_deviates
from ._lingering import accepted_after, refused_after

#: after keyChange, the account's key is the new one (RFC 8555 §7.3.5)
RFC_NEW = "RFC 8555 §7.3.5: once the keyChange succeeded, the account's key is the new one"
ROLLOVER = "the CA answered the rollover (keyChange)"


async def _roll(wec: ChainContext) -> tuple[Account, Account]:
    account = await wec.take_account(exclusive=True)
    new_key = wec.new_key()
    rolled = await wec.client.key_change(account, new_key)
    account_id = wec.account_id(account)
    assert account_id is not None
    await wec.db_later(wec.store.update_account_key, account_id, new_key.to_pem(), new_key.alg)
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
    fetched = await accepted_after(
        wec, lambda: wec.client.fetch_account(rolled), changed="keyChange", event=ROLLOVER,
        refused="a request signed by the new key (kid) was still refused", rfc=RFC_NEW)
    assert fetched.body.get("status") == "valid", fetched.body
    found = await accepted_after(
        wec, lambda: wec.client.new_account(rolled.key, only_return_existing=True),
        changed="keyChange", event=ROLLOVER,
        refused="newAccount with onlyReturnExisting still found no account for the new key",
        rfc=RFC_NEW)
    assert found.url == rolled.url, "the new key must find the account (§7.3.1)"
    await refused_after(
        wec, lambda: wec.client.new_account(old.key, only_return_existing=True),
        "accountDoesNotExist", changed="keyChange", event=ROLLOVER,
        accepted="the old key was still accepted (newAccount with onlyReturnExisting found "
                 "the account)",
        rfc=f"{RFC_NEW}, and §7.3.1 answers accountDoesNotExist for a key of no account")


@chain("key_rollover", needs={"account"}, load=False)
async def test_old_key_refused(wec: ChainContext) -> None:
    """A request signed by the old key for the account (``kid``) is refused."""
    old, rolled = await _roll(wec)
    problem = await refused_after(
        wec, lambda: wec.client.fetch_account(old), changed="keyChange", event=ROLLOVER,
        accepted="a request signed by the account's old key (kid) was still accepted",
        rfc=RFC_NEW)
    assert 400 <= problem.status < 500, problem
    order = await accepted_after(
        wec, lambda: wec.order(rolled, wec.random_names(1)), changed="keyChange",
        event=ROLLOVER, refused="newOrder signed by the new key was still refused",
        rfc=RFC_NEW)
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
