"""new_account: RFC 8555 §7.3 newAccount, and the account operations around it."""

from __future__ import annotations

from pytest_wec import ChainContext, chain


@chain("new_account", produces={"account"})
async def test_new_account(wec: ChainContext) -> None:
    account = await wec.new_account()
    assert account.created, "newAccount for a new key must answer 201 Created (§7.3)"
    assert account.url.startswith(("https://", "http://"))
    assert account.body.get("status") == "valid"


@chain("new_account", produces={"account"}, load=False)
async def test_only_return_existing(wec: ChainContext) -> None:
    account = await wec.new_account()
    again = await wec.client.new_account(account.key, only_return_existing=True)
    assert again.url == account.url, "onlyReturnExisting must return the same account (§7.3.1)"
    assert not again.created


@chain("new_account", produces={"account"}, load=False)
async def test_existing_key_returns_existing_account(wec: ChainContext) -> None:
    account = await wec.new_account()
    again = await wec.client.new_account(account.key)
    assert again.url == account.url
    assert not again.created, "an existing key's newAccount answers 200, not 201 (§7.3.1)"


@chain("new_account", produces={"account"}, load=False)
async def test_fetch_and_update_contact(wec: ChainContext) -> None:
    account = await wec.new_account(contact=("mailto:first@wec.example.com",))
    fetched = await wec.client.fetch_account(account)
    assert fetched.body.get("status") == "valid"
    updated = await wec.client.update_account(account, ("mailto:second@wec.example.com",))
    assert updated.body.get("contact") == ["mailto:second@wec.example.com"], updated.body
