"""renew_certificate: a new order for a stored certificate's names, by the same account.

RFC 8555 has no renewal resource: a renewal is a new order (§7.4) for the same identifiers.
Where the directory offers ``renewalInfo`` (ARI, RFC 9773), the chain first asks for the
suggested renewal window (RFC 9773 §4.2) and names the certificate it replaces in the new
order (``replaces``, RFC 9773 §5). The old certificate is marked renewed in the state DB, so
the context-aware choice does not renew it twice. Run once, each chain renews a certificate
it issued for the purpose (``fresh``): a CA that limits certificates per set of names
(Boulder's dev config: 2 in 3 hours) takes that renewal, where a stored certificate may
already be a renewal or name an IP address other chains ordered too.
"""

from __future__ import annotations

import pytest

from pytest_wec import ChainContext, chain
from pytest_wec.state import Certificate
from pytest_wec.worker.context import Issued

from ._checks import (
    assert_cert_status,
    assert_chains_to_ca_root,
    assert_names,
    challenge_for,
    leaf_der,
)


async def _renew(wec: ChainContext, old: Certificate, *, ari: bool) -> Issued:
    account = await wec.account_of(old)
    names = list(old.names)
    replaces = None
    if ari:
        info = await wec.client.renewal_info(leaf_der(old.pem_chain))
        assert info.start < info.end, f"suggestedWindow {info.start}..{info.end} (RFC 9773 §4.2)"
        replaces = info.cert_id
    new = await wec.issue(account, names, challenge=challenge_for(names, wec.settings.challenge),
                          replaces=replaces)
    await wec.db_later(wec.store.mark_certificate_renewed, old.id, new.row)
    assert_names(new.cert, names)
    serial = format(new.cert.serial_number, "x")
    assert serial != old.serial, "a renewal is a new certificate"
    return new


@chain("renew_certificate", needs={"certificate"}, produces={"certificate"})
async def test_renew_certificate(wec: ChainContext) -> None:
    old = await wec.take_certificate(not_renewed=True, fresh=True)
    directory = await wec.client.directory()
    await _renew(wec, old, ari=directory.offers("renewalInfo"))


@chain("renew_certificate", needs={"certificate"}, produces={"certificate"}, load=False)
async def test_renew_without_ari(wec: ChainContext) -> None:
    """A plain renewal leaves the old certificate valid: renewing is not revoking."""
    old = await wec.take_certificate(not_renewed=True, fresh=True)
    new = await _renew(wec, old, ari=False)
    await assert_chains_to_ca_root(wec, new.pem)
    await assert_cert_status(wec, old.serial, "Valid")


@chain("renew_certificate", needs={"certificate"}, produces={"certificate"}, load=False)
async def test_renew_with_ari(wec: ChainContext) -> None:
    directory = await wec.client.directory()
    if not directory.offers("renewalInfo"):
        pytest.skip("the CA's directory offers no renewalInfo (ARI, RFC 9773); "
                    "Pebble 2.4 has none")
    old = await wec.take_certificate(not_renewed=True, fresh=True)
    new = await _renew(wec, old, ari=True)
    await assert_chains_to_ca_root(wec, new.pem)
