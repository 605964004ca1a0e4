"""wildcard: a certificate for ``*.x.domain`` validated by dns-01.

A wildcard identifier keeps its ``*.`` in the order (RFC 8555 §7.1.3); its authorization
names the base domain with ``"wildcard": true`` (§7.1.4) and is validated by a TXT record at
``_acme-challenge.x.domain`` (§8.4). The certificate names exactly what was ordered.
"""

from __future__ import annotations

from pytest_wec import ChainContext, chain
from pytest_wec.worker.context import Issued

from ._checks import assert_chains_to_ca_root, assert_names


async def _issue_and_check(wec: ChainContext, names: list[str]) -> Issued:
    account = await wec.take_account()
    issued = await wec.issue(account, names, challenge="dns-01")
    assert_names(issued.cert, names)
    ordered = {(i.type, i.value) for i in issued.order.identifiers}
    assert ordered == {("dns", n) for n in names}, f"order identifiers {ordered} (§7.1.3)"
    for url in issued.order.authorizations:
        authz = await wec.client.get_authorization(account, url)
        value = authz.identifier.value
        assert not value.startswith("*"), f"authorization identifier {value!r} keeps '*' (§7.1.4)"
        assert authz.status == "valid", authz.body
        if authz.wildcard:
            assert f"*.{value}" in names, f"wildcard authorization for {value} not ordered"
            validated = [c.type for c in authz.challenges if c.status == "valid"]
            assert validated == ["dns-01"], f"wildcard validated by {validated}"
        else:
            assert value in names, f"authorization for {value} not ordered"
            assert "wildcard" not in authz.body, "wildcard must be absent when false (§7.1.4)"
    return issued


@chain("wildcard", needs={"account"}, produces={"certificate"})
async def test_wildcard(wec: ChainContext) -> None:
    base = wec.random_names(1)[0]
    await _issue_and_check(wec, [f"*.{base}"])


@chain("wildcard", needs={"account"}, produces={"certificate"}, load=False)
async def test_wildcard_and_base(wec: ChainContext) -> None:
    """``*.x.domain`` and ``x.domain`` in one order: two authorizations, one TXT name."""
    base = wec.random_names(1)[0]
    issued = await _issue_and_check(wec, [f"*.{base}", base])
    assert len(issued.order.authorizations) == 2
    await assert_chains_to_ca_root(wec, issued.pem)


@chain("wildcard", needs={"account"}, produces={"certificate"}, load=False)
async def test_wildcard_offers_dns01(wec: ChainContext) -> None:
    """A pending wildcard authorization offers dns-01 (§8.4), the one type that proves
    control of a whole domain."""
    account = await wec.take_account()
    base = wec.random_names(1)[0]
    order = await wec.order(account, [f"*.{base}"])
    authz = await wec.client.get_authorization(account, order.authorizations[0])
    assert authz.status == "pending" and authz.wildcard, authz.body
    assert authz.identifier.value == base, authz.body
    assert authz.challenge("dns-01") is not None, [c.type for c in authz.challenges]
