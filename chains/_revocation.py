"""What a CA recorded of a certificate's revocation (RFC 8555 §7.6), where the CA offers a
way to read it (not a chain itself).

The ways, in order:

1. Pebble's management API (``cert-status-by-serial``), when the CA is Pebble;
2. the OCSP responder the certificate names (authorityInfoAccess, RFC 6960 §4.2.2.1);
3. the CRL the certificate names (cRLDistributionPoints, RFC 5280 §4.2.1.13, §5.3.1) when
   run once: a CRL issued before the revocation cannot tell it yet (CAs issue CRLs on a
   schedule), so it decides only when its thisUpdate is after the revocation, or when it
   lists the certificate.

A CA offering none of them leaves nothing to check: run once the test is skipped with that
reason after everything else it checks passed; under load nothing more is checked. The
answer the revocation got is always checked by the chain itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from pytest_wec import ChainContext
from pytest_wec.state import Certificate

__all__ = ["REASON_NAMES", "Recorded", "assert_recorded", "recorded"]

#: CRL reason codes (RFC 5280 §5.3.1) by their names, as the chains word them
REASON_NAMES = {0: "unspecified", 1: "keyCompromise", 2: "cACompromise",
                3: "affiliationChanged", 4: "superseded", 5: "cessationOfOperation",
                6: "certificateHold", 8: "removeFromCRL", 9: "privilegeWithdrawn",
                10: "aACompromise"}
_FLAG_CODES = {x509.ReasonFlags.unspecified: 0, x509.ReasonFlags.key_compromise: 1,
               x509.ReasonFlags.ca_compromise: 2, x509.ReasonFlags.affiliation_changed: 3,
               x509.ReasonFlags.superseded: 4, x509.ReasonFlags.cessation_of_operation: 5,
               x509.ReasonFlags.certificate_hold: 6, x509.ReasonFlags.remove_from_crl: 8,
               x509.ReasonFlags.privilege_withdrawn: 9, x509.ReasonFlags.aa_compromise: 10}
#: seconds an OCSP or CRL request may take
FETCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Recorded:
    """A certificate's status as the CA recorded it: ``Valid`` or ``Revoked`` (with its
    reason code; None when the record names none), and where it was read."""

    status: str
    reason: int | None
    source: str


async def _fetch(wec: ChainContext, method: str, url: str, body: bytes | None,
                 content_type: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await wec.client.network.transport.request(method, url, headers=headers, body=body,
                                                      timeout=FETCH_TIMEOUT)
    return int(resp.status), bytes(resp.body)


async def _by_ocsp(wec: ChainContext, leaf: x509.Certificate,
                   issuer: x509.Certificate | None) -> Recorded | str | None:
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    urls = [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP]
    if not urls:
        return None
    if issuer is None:
        return "the certificate names an OCSP responder but came without its issuer"
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    status, body = await _fetch(wec, "POST", urls[0],
                                request.public_bytes(serialization.Encoding.DER),
                                "application/ocsp-request")
    source = f"the OCSP responder {urls[0]}"
    assert status == 200, f"{source} answered HTTP {status}: {body[:200]!r}"
    answer = ocsp.load_der_ocsp_response(body)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, (
        f"{source} answered {answer.response_status.name}")
    if answer.certificate_status == ocsp.OCSPCertStatus.GOOD:
        return Recorded("Valid", None, source)
    if answer.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        flag = answer.revocation_reason
        return Recorded("Revoked", _FLAG_CODES.get(flag) if flag else None, source)
    return f"{source} does not know the certificate (unknown)"


async def _by_crl(wec: ChainContext, leaf: x509.Certificate,
                  since: float | None) -> Recorded | str | None:
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    urls = [n.value for p in points for n in (p.full_name or [])
            if isinstance(n, x509.UniformResourceIdentifier)]
    if not urls:
        return None
    status, body = await _fetch(wec, "GET", urls[0], None)
    source = f"the CRL {urls[0]}"
    assert status == 200, f"{source}: HTTP {status}"
    crl = (x509.load_pem_x509_crl(body) if body.lstrip().startswith(b"-----")
           else x509.load_der_x509_crl(body))
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            return Recorded("Revoked", None, source)
        return Recorded("Revoked", _FLAG_CODES.get(flag), source)
    issued = crl.last_update_utc
    if since is not None and issued < dt.datetime.fromtimestamp(since, dt.UTC):
        return (f"{source} was issued at {issued:%Y-%m-%d %H:%M:%S}Z, before the revocation: "
                "it cannot tell it yet")
    return Recorded("Valid", None, source)


async def recorded(wec: ChainContext, row: Certificate,
                   since: float | None = None) -> Recorded | str:
    """The status the CA recorded for *row*'s certificate, or why it cannot be read;
    *since* (epoch) is when it was revoked, if it was."""
    if wec.pebble is not None:
        got = await wec.pebble.cert_status(row.serial)
        return Recorded(str(got.get("Status")), got.get("Reason"),
                        "Pebble's management API (cert-status-by-serial)")
    certs = x509.load_pem_x509_certificates(row.pem_chain.encode())
    leaf, issuer = certs[0], (certs[1] if len(certs) > 1 else None)
    why: list[str] = []
    for way in ("ocsp", "crl"):
        if way == "crl" and wec.mode == "load":
            break  # a CRL can be large, and lags the revocation: not under load
        got = await (_by_ocsp(wec, leaf, issuer) if way == "ocsp" else
                     _by_crl(wec, leaf, since))
        if isinstance(got, Recorded):
            return got
        if got is not None:
            why.append(got)
    return "; ".join(why) or ("the CA offers no way to read a certificate's status (no "
                              "management API, no OCSP responder, no CRL in the certificate)")


async def assert_recorded(wec: ChainContext, row: Certificate, status: str,
                          reason: int | None = None, *, since: float | None = None) -> None:
    """The CA recorded *row*'s certificate as *status* (``Valid``, ``Revoked``), with
    *reason* when given (an absent reason counts as unspecified, 0: RFC 5280 §5.3.1 says
    to leave that one out). Run once, a CA that offers no way to read it skips the test
    with the reason; under load nothing more is checked."""
    got = await recorded(wec, row, since)
    if isinstance(got, str):
        if wec.mode == "load":
            return
        pytest.skip(f"the CA answered as expected; what it recorded cannot be read: {got}")
    assert got.status == status, f"serial {row.serial}: {got.source} says {got.status}, " \
                                 f"not {status}"
    if status == "Revoked" and reason is not None:
        assert (got.reason or 0) == reason, (
            f"serial {row.serial}: {got.source} records reason {got.reason} "
            f"({REASON_NAMES.get(got.reason or 0)}), not {reason} ({REASON_NAMES.get(reason)})")
