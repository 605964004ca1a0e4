"""Checks several chains share (not chains themselves).

Everything here fails with :class:`AssertionError`, never with pytest's own outcomes:
load mode runs the same chains outside pytest, where only ordinary exceptions count. The one
exception, :func:`embedded_pebble_deviates`, is for integration-only variants.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import warnings
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pytest_wec import ChainContext
from pytest_wec.acme import AcmeProblem

#: Revocation reasons (RFC 5280 §5.3.1) CAs take from subscribers: unspecified,
#: keyCompromise, affiliationChanged, superseded, cessationOfOperation.
REVOCATION_REASONS = (0, 1, 3, 4, 5)


def sans(cert: x509.Certificate) -> set[str]:
    return set(san_list(cert))


def san_list(cert: x509.Certificate) -> list[str]:
    """Every subjectAltName value, duplicates kept: dNSNames, then iPAddresses as text."""
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = list(ext.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return names


def normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def chain_certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def leaf_der(pem: str) -> bytes:
    """The DER of the first certificate of a PEM chain (the one revokeCert and ARI name)."""
    return chain_certs(pem)[0].public_bytes(serialization.Encoding.DER)


#: (child DER, issuer DER) pairs above the leaf already verified: every certificate of a
#: CA comes with the same issuer chain, whose signatures need checking once per process
_VERIFIED: set[tuple[bytes, bytes]] = set()


def _verify_issued(child: x509.Certificate, parent: x509.Certificate, *, keep: bool) -> None:
    """*child*'s signature is *parent*'s (and its issuer *parent*'s subject); with *keep*
    a pair verified once is not verified again (the same bytes, the same answer)."""
    if not keep:
        child.verify_directly_issued_by(parent)
        return
    der = serialization.Encoding.DER
    key = (child.public_bytes(der), parent.public_bytes(der))
    if key not in _VERIFIED:
        child.verify_directly_issued_by(parent)
        if len(_VERIFIED) >= 64:
            _VERIFIED.clear()
        _VERIFIED.add(key)


async def assert_chains_to_ca_root(wec: ChainContext, pem: str) -> None:
    """Each certificate is signed by the next, and the last by one of the CA's roots.

    The roots come from Pebble's management API; for another CA the check stops at the
    chain's own top certificate.
    """
    certs = chain_certs(pem)
    assert len(certs) >= 2, "the download must carry the leaf and its issuer chain (§7.4.2)"
    for i, (child, parent) in enumerate(itertools.pairwise(certs)):
        _verify_issued(child, parent, keep=i > 0)
    mgmt = wec.pebble
    if mgmt is None:
        return
    top = certs[-1]
    for refresh in (False, True):  # the kept roots, then fresh ones (Pebble restarted)
        for root in await mgmt.roots(refresh=refresh):
            if top.issuer == root.subject:
                _verify_issued(top, root, keep=True)
                return
    raise AssertionError(f"no root of the CA issued {top.issuer.rfc4514_string()}")


def assert_names(cert: x509.Certificate, names: Iterable[str]) -> None:
    """The certificate's subjectAltNames are exactly the ordered names, each once (§7.4)."""
    got = sorted(normal(n) for n in san_list(cert))
    want = sorted({normal(n) for n in names})
    assert got == want, f"certificate names {got} != ordered {want}"


def assert_ip_san(cert: x509.Certificate, ip: str) -> None:
    """An IP identifier (RFC 8738 §3) is certified as an iPAddress subjectAltName, never as a
    dNSName (RFC 5280 §4.2.1.6)."""
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip)], ext
    assert ext.get_values_for_type(x509.DNSName) == [], f"an IP as dNSName: {ext}"


async def expect_problem(
    wec: ChainContext, call: Awaitable[Any], *codes: str,
    status: int | tuple[int, ...] | None = None,
) -> AcmeProblem:
    """Await *call*, which must fail with a problem document (RFC 8555 §6.7) of one of
    *codes* (short names such as ``accountDoesNotExist``) and, when given, that HTTP status.

    The refusal is what the chain asked for: its request counts as ok in the results.
    """
    try:
        with wec.expecting(*codes):
            result = await call
    except AcmeProblem as problem:
        assert problem.code in codes, (
            f"expected {' or '.join(codes)}, got {problem.code} (HTTP {problem.status}): "
            f"{problem}")
        if status is not None:
            allowed = (status,) if isinstance(status, int) else status
            assert problem.status in allowed, (
                f"{problem.code} came with HTTP {problem.status}, expected "
                f"{' or '.join(map(str, allowed))}")
        return problem
    raise AssertionError(f"expected the CA to refuse with {' or '.join(codes)}, got {result!r}")


async def assert_cert_status(
    wec: ChainContext, serial: str, status: str, reason: int | None = None
) -> None:
    """Pebble's own view of a certificate (management ``cert-status-by-serial``): ``Valid`` or
    ``Revoked`` with *reason*. Nothing to check when the CA is not Pebble."""
    if wec.pebble is None:
        return
    got = await wec.pebble.cert_status(serial)
    assert got.get("Status") == status, f"serial {serial}: {got.get('Status')}, not {status}"
    if status == "Revoked" and reason is not None:
        assert got.get("Reason") == reason, f"serial {serial}: reason {got.get('Reason')}"


def expects_authz_reuse(wec: ChainContext) -> bool:
    """True against the embedded Pebble with PEBBLE_AUTHZREUSE=100 (its default here): a
    valid authorization of the account is then always reused by a new order."""
    if not wec.info.get("embedded"):
        return False
    from pytest_wec.stack._pebble import PEBBLE_DEFAULT_ENV

    return os.environ.get("PEBBLE_AUTHZREUSE", PEBBLE_DEFAULT_ENV["PEBBLE_AUTHZREUSE"]) == "100"


def authorization_identifier(authz: Any) -> str:
    """The name a new order must carry to get *authz* again: its identifier's value, with
    ``*.`` put back when the authorization is for a wildcard (§7.1.4)."""
    value: str = authz.identifier.value
    return f"*.{value}" if authz.wildcard else value


def challenge_for(names: Iterable[str], default: str | Sequence[str]) -> tuple[str, ...]:
    """Challenge types, in order of preference, that can validate every name (each
    authorization takes the first its CA offers): *default* (``--wec-challenge``), then
    dns-01 for a wildcard (the only type Pebble and Let's Encrypt offer for one) and
    http-01 for an IP address when *default* is dns-01 alone (RFC 8738 §7)."""
    names = list(names)
    prefs = (default,) if isinstance(default, str) else tuple(default)
    if any(n.startswith("*.") for n in names) and "dns-01" not in prefs:
        prefs += ("dns-01",)
    if any(_is_ip(n) for n in names) and set(prefs) == {"dns-01"}:
        prefs += ("http-01",)
    return prefs


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def embedded_pebble_deviates(wec: ChainContext, deviates: bool, what: str) -> None:
    """Mark the running test xfail when the embedded Pebble shows a known departure from the
    RFC (*what* says which); against any other CA the caller's assertion decides.

    Integration-only variants only: it raises pytest's own outcome.
    """
    if deviates and wec.info.get("embedded"):
        pytest.xfail(f"embedded Pebble: {what}")


class RfcDeviation(UserWarning):
    """The CA answered in a way the RFC allows against a SHOULD, or that every well-known CA
    shares (e.g. 403 where §7.3.6 says 401): worth seeing, not worth failing."""


def deviation_kind(wec: ChainContext, what: str) -> str:
    """A deviation's kind: the chain's name and the RFC section *what* cites last
    (``deactivate_account: RFC 8555 §7.3.6``), so that its details (a status, a code) vary
    within one kind; the chain's name alone when *what* cites none."""
    sections = re.findall(r"(?:RFC \d+ )?§[\d.]*\d", what)
    if not sections:
        return wec.name
    section = sections[-1]
    return f"{wec.name}: {section if section.startswith('RFC') else 'RFC 8555 ' + section}"


def warn_deviation(wec: ChainContext, what: str, *, kind: str | None = None) -> None:
    """Report *what*: an :class:`RfcDeviation` warning when run once; in load mode the chain
    records it (counted by *kind*, default :func:`deviation_kind`, in summary.json's
    ``deviations``, the terminal and the report), for warnings are not printed there."""
    if wec.mode != "load":
        warnings.warn(RfcDeviation(what), stacklevel=2)
        return
    wec.record_deviation(kind or deviation_kind(wec, what), what)
