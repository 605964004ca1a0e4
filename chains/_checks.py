"""Checks several chains share (not chains themselves)."""

from __future__ import annotations

import ipaddress
import itertools

from cryptography import x509

from pytest_wec import ChainContext


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(ext.get_values_for_type(x509.DNSName))
    names |= {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return names


def normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def chain_certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


async def assert_chains_to_ca_root(wec: ChainContext, pem: str) -> None:
    """Each certificate is signed by the next, and the last by one of the CA's roots.

    The roots come from Pebble's management API; for another CA the check stops at the
    chain's own top certificate.
    """
    certs = chain_certs(pem)
    assert len(certs) >= 2, "the download must carry the leaf and its issuer chain (§7.4.2)"
    for child, parent in itertools.pairwise(certs):
        child.verify_directly_issued_by(parent)
    mgmt = wec.pebble
    if mgmt is None:
        return
    roots = await mgmt.roots()
    top = certs[-1]
    for root in roots:
        if top.issuer == root.subject:
            top.verify_directly_issued_by(root)
            return
    raise AssertionError(f"no root of the CA issued {top.issuer.rfc4514_string()}")


def assert_names(cert: x509.Certificate, names: list[str] | tuple[str, ...]) -> None:
    got = {normal(n) for n in sans(cert)}
    want = {normal(n) for n in names}
    assert got == want, f"certificate names {sorted(got)} != ordered {sorted(want)}"
