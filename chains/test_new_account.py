"""new_account: RFC 8555 §7.3 newAccount, and the account operations around it.

A run given External Account Binding keys (``--wec-eab-kid``/``--wec-eab-hmac``,
``--wec-eab-file``, ``--wec-pebble-eab``) sends one with every new account (§7.3.4); the
variants at the end check a CA that requires one.
"""

from __future__ import annotations

import pytest

from pytest_wec import ChainContext, chain
from pytest_wec.acme import AcmeProblem

from ._checks import warn_deviation


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


#: problems a CA's contact policy answers with (RFC 8555 §7.3: MUST, for a contact it refuses)
CONTACT_REFUSED = ("invalidContact", "unsupportedContact")


@chain("new_account", produces={"account"}, load=False)
async def test_fetch_and_update_contact(wec: ChainContext) -> None:
    """An account's contact replaced (§7.3.2). A CA that refuses the contacts (its policy:
    invalidContact, unsupportedContact) skips the test; one that answers 200 but keeps the
    old contact, or none (a CA that keeps no contacts), is reported as an RfcDeviation:
    §7.3.2's answer is "the resulting account object"."""
    first, second = "mailto:first@wec.example.com", "mailto:second@wec.example.com"
    try:
        account = await wec.new_account(contact=(first,))
        fetched = await wec.client.fetch_account(account)
        assert fetched.body.get("status") == "valid"
        updated = await wec.client.update_account(account, (second,))
    except AcmeProblem as problem:
        if problem.code not in CONTACT_REFUSED:
            raise
        pytest.skip(f"the CA refuses the contact: {problem.code}: "
                    f"{str(problem).splitlines()[0]} (its policy, RFC 8555 §7.3)")
    if updated.body.get("contact") != [second]:
        warn_deviation(wec, f"the CA answered a contact update with 200 and the account "
                            f"object's contact is {updated.body.get('contact')!r}, not "
                            f"{[second]!r}: it ignores contact updates (RFC 8555 §7.3.2)")


@chain("new_account", load=False)
async def test_external_account_required(wec: ChainContext) -> None:
    """A CA whose directory says ``externalAccountRequired`` refuses a newAccount without a
    binding with a client error; of type externalAccountRequired (§7.3.4 "should": another
    type is an RfcDeviation warning)."""
    directory = await wec.client.directory()
    if not directory.external_account_required:
        pytest.skip("the CA does not require External Account Binding (§7.3.4)")
    try:
        with wec.expecting("externalAccountRequired"):
            await wec.client.new_account(wec.new_key())
    except AcmeProblem as problem:
        assert 400 <= problem.status < 500, f"expected a 4xx refusal, got {problem}"
        if problem.code != "externalAccountRequired":
            warn_deviation(wec, f"a newAccount without the binding the CA requires got "
                                f"{problem.code} (HTTP {problem.status}); RFC 8555 §7.3.4 "
                                f"says externalAccountRequired should be used")
    else:
        raise AssertionError("the CA requires External Account Binding (its directory says "
                             "so) but made an account without one")


@chain("new_account", load=False)
async def test_binding_with_a_wrong_mac(wec: ChainContext) -> None:
    """A binding for a key id the CA gave, MACed with another key, is refused with a client
    error and makes no account (§7.3.4: the CA MUST verify the MAC). It takes the key id
    from the run's keys, so that a single-use one is not sent again afterwards."""
    key = await wec.take_eab()
    if key is None:
        pytest.skip("the run has no External Account Binding key (--wec-eab-kid, "
                    "--wec-eab-file, --wec-pebble-eab)")
    account_key = wec.new_key()
    wrong = bytes(b ^ 0x5A for b in key.hmac)
    try:
        await wec.client.new_account(account_key, eab=(key.kid, wrong))
    except AcmeProblem as problem:
        assert 400 <= problem.status < 500, f"expected a 4xx refusal, got {problem}"
    else:
        raise AssertionError(f"the CA made an account with a wrong MAC for key id {key.kid!r}")
    with wec.expecting("accountDoesNotExist"):
        try:
            await wec.client.new_account(account_key, only_return_existing=True)
        except AcmeProblem as problem:
            assert problem.code == "accountDoesNotExist", problem
        else:
            raise AssertionError("the refused binding made an account anyway")
