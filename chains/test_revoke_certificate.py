"""revoke_certificate: revokeCert (RFC 8555 §7.6) of a stored certificate.

Signed by the issuing account's key (``kid``) in load mode, or by the certificate's own key
(``jwk``) in a variant, with a CRL reason code (RFC 5280 §5.3.1). What the CA recorded is
then checked where the CA offers a way to read it (:mod:`._revocation`: Pebble's management
API, else the certificate's OCSP responder, else its CRL; none: skipped with the reason
when run once): revoked, with that reason. The state DB marks it revoked, so no chain takes
it again.

Reasons: subscribers may give unspecified (0), keyCompromise (1), affiliationChanged (3),
superseded (4) and cessationOfOperation (5). keyCompromise is asked with the certificate's
key, as Let's Encrypt requires; the other reasons with the account's. RFC 8555 §7.6 lets a
CA disallow some of them (Boulder takes 0, 1, 4 and 5 from subscribers): a reason refused
with badRevocationReason is reported as an RfcDeviation (the CA's policy), not a failure,
and the certificate must then still be valid.
"""

from __future__ import annotations

import time

import pytest

from pytest_wec import ChainContext, chain
from pytest_wec.acme import Account, AccountKey, AcmeProblem, cert_key_from_pem
from pytest_wec.state import Certificate

from ._checks import expect_problem, leaf_der, warn_deviation
from ._revocation import REASON_NAMES, assert_recorded

ACCOUNT_REASONS = (None, 0, 3, 4, 5)
CERT_KEY_REASONS = (None, 1)
#: the reasons a subscriber may give (RFC 5280 §5.3.1), which a CA may still disallow
SUBSCRIBER_REASONS = (0, 1, 3, 4, 5)
LOAD_REASON = 4  # superseded: what a subscriber replacing a certificate says


async def _revoke(wec: ChainContext, row: Certificate, reason: int | None, *,
                  account: Account | None = None, cert_key: AccountKey | None = None) -> None:
    """revokeCert for *row*, then what the CA recorded checked. A subscriber's reason the
    CA's policy refuses (badRevocationReason) is a deviation: the certificate must then
    still be valid."""
    since = time.time()
    try:
        await wec.client.revoke(leaf_der(row.pem_chain), reason, account=account,
                                cert_key=cert_key)
    except AcmeProblem as problem:
        if problem.code != "badRevocationReason" or reason not in SUBSCRIBER_REASONS:
            raise
        signer = "the account's key" if account is not None else "the certificate's key"
        warn_deviation(wec, f"the CA refuses revocation reason {reason} "
                            f"({REASON_NAMES[reason]}) signed by {signer}: "
                            f"badRevocationReason, its policy (RFC 8555 §7.6 lets a server "
                            f"disallow reasons)")
        await assert_recorded(wec, row, "Valid")
        return
    await wec.db(wec.store.mark_certificate_revoked, row.id, reason)
    await assert_recorded(wec, row, "Revoked", reason, since=since)


@chain("revoke_certificate", needs={"certificate"})
async def test_revoke_certificate(wec: ChainContext) -> None:
    row = await wec.take_certificate()
    await _revoke(wec, row, LOAD_REASON, account=await wec.account_of(row))


@pytest.mark.parametrize("reason", ACCOUNT_REASONS)
@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_by_account_key(wec: ChainContext, reason: int | None) -> None:
    row = await wec.take_certificate()
    await _revoke(wec, row, reason, account=await wec.account_of(row))


@pytest.mark.parametrize("reason", CERT_KEY_REASONS)
@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_by_certificate_key(wec: ChainContext, reason: int | None) -> None:
    """The JWS carries the certificate's public key as ``jwk`` and no account (§7.6)."""
    row = await wec.take_certificate()
    key = AccountKey.from_private_key(cert_key_from_pem(row.key_pem))
    await _revoke(wec, row, reason, cert_key=key)


@chain("revoke_certificate", needs={"certificate"}, load=False)
async def test_revoke_twice(wec: ChainContext) -> None:
    """A second revocation of the same certificate is refused with alreadyRevoked (§7.6)."""
    row = await wec.take_certificate()
    account = await wec.account_of(row)
    since = time.time()
    await wec.client.revoke(leaf_der(row.pem_chain), LOAD_REASON, account=account)
    await wec.db_later(wec.store.mark_certificate_revoked, row.id, LOAD_REASON)
    await expect_problem(
        wec,
        wec.client.revoke(leaf_der(row.pem_chain), LOAD_REASON, account=account),
        "alreadyRevoked",
    )
    await assert_recorded(wec, row, "Revoked", LOAD_REASON, since=since)


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
    await assert_recorded(wec, row, "Valid")


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
    await assert_recorded(wec, row, "Valid")
