"""revoke_certificate: revokeCert (RFC 8555 §7.6) of a stored certificate.

Signed by the issuing account's key (``kid``) in load mode, or by the certificate's own key
(``jwk``) in a variant, with a CRL reason code (RFC 5280 §5.3.1). When the CA is Pebble, its
management API (``cert-status-by-serial``) must then report the certificate revoked with
that reason. The state DB marks it revoked, so no chain takes it again.

Reasons: subscribers may give unspecified (0), keyCompromise (1), affiliationChanged (3),
superseded (4) and cessationOfOperation (5). keyCompromise is asked with the certificate's
key, as Let's Encrypt requires; the other reasons with the account's.
"""

from __future__ import annotations

import pytest

from chains._checks import assert_cert_status, expect_problem, leaf_der
from pytest_wec import ChainContext, chain
from pytest_wec.acme import AccountKey, cert_key_from_pem
from pytest_wec.state import Certificate

ACCOUNT_REASONS = (None, 0, 3, 4, 5)
CERT_KEY_REASONS = (None, 1)
LOAD_REASON = 4  # superseded: what a subscriber replacing a certificate says


async def _revoke_by_account(wec: ChainContext, row: Certificate, reason: int | None) -> None:
    account = await wec.account_of(row)
    await wec.client.revoke(leaf_der(row.pem_chain), reason, account=account)
    await wec.db(wec.store.mark_certificate_revoked, row.id, reason)


@chain("revoke_certificate", needs={"certificate"})
async def test_revoke_certificate(wec: ChainContext) -> None:
    row = await wec.take_certificate()
    await _revoke_by_account(wec, row, LOAD_REASON)
    await assert_cert_status(wec, row.serial, "Revoked", LOAD_REASON)


@pytest.mark.parametrize("reason", ACCOUNT_REASONS)
@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_by_account_key(wec: ChainContext, reason: int | None) -> None:
    row = await wec.take_certificate()
    await _revoke_by_account(wec, row, reason)
    await assert_cert_status(wec, row.serial, "Revoked", reason)


@pytest.mark.parametrize("reason", CERT_KEY_REASONS)
@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_by_certificate_key(wec: ChainContext, reason: int | None) -> None:
    """The JWS carries the certificate's public key as ``jwk`` and no account (§7.6)."""
    row = await wec.take_certificate()
    key = AccountKey.from_private_key(cert_key_from_pem(row.key_pem))
    await wec.client.revoke(leaf_der(row.pem_chain), reason, cert_key=key)
    await wec.db(wec.store.mark_certificate_revoked, row.id, reason)
    await assert_cert_status(wec, row.serial, "Revoked", reason)


@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_twice(wec: ChainContext) -> None:
    """A second revocation of the same certificate is refused with alreadyRevoked (§7.6)."""
    row = await wec.take_certificate()
    await _revoke_by_account(wec, row, LOAD_REASON)
    account = await wec.account_of(row)
    await expect_problem(
        wec,
        wec.client.revoke(leaf_der(row.pem_chain), LOAD_REASON, account=account),
        "alreadyRevoked",
    )
    await assert_cert_status(wec, row.serial, "Revoked", LOAD_REASON)


@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_unsupported_reason(wec: ChainContext) -> None:
    """Reason 7 is unassigned in RFC 5280 §5.3.1: badRevocationReason (§7.6), and the
    certificate stays valid."""
    row = await wec.take_certificate()
    account = await wec.account_of(row)
    await expect_problem(
        wec,
        wec.client.revoke(leaf_der(row.pem_chain), 7, account=account), "badRevocationReason"
    )
    await assert_cert_status(wec, row.serial, "Valid")


@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_by_unrelated_account(wec: ChainContext) -> None:
    """An account that neither ordered the certificate nor holds authorizations for its
    names may not revoke it (§7.6): unauthorized, and the certificate stays valid."""
    row = await wec.take_certificate()
    stranger = await wec.new_account()
    await expect_problem(
        wec,
        wec.client.revoke(leaf_der(row.pem_chain), LOAD_REASON, account=stranger),
        "unauthorized",
    )
    await assert_cert_status(wec, row.serial, "Valid")
