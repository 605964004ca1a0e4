"""Certificate keys and CSRs for finalize (RFC 8555 §7.4, RFC 2986).

Names become subjectAltName entries: DNS names and wildcards as dNSName, IP
addresses (RFC 8738) as iPAddress. The first DNS name that fits (64
characters) is also the subject CN, which CAs accept but do not require.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ._jws import AccountKey

__all__ = [
    "CERT_KEY_KINDS",
    "CertPrivateKey",
    "cert_key_from_pem",
    "cert_key_to_pem",
    "generate_cert_key",
    "make_csr",
]

CertPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Certificate key kinds accepted by :func:`generate_cert_key`.
CERT_KEY_KINDS = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")


def generate_cert_key(kind: str = "ec256") -> CertPrivateKey:
    """A new certificate key: ``ec256``, ``ec384``, ``rsa2048``, ``rsa3072`` or ``rsa4096``."""
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa") and kind in CERT_KEY_KINDS:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(f"unknown certificate key kind {kind!r}; expected one of {CERT_KEY_KINDS}")


def cert_key_to_pem(key: CertPrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_key_from_pem(pem: bytes | str) -> CertPrivateKey:
    """Load a key written by :func:`cert_key_to_pem` (RSA validation skipped: our own keys)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(
        data, password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"unsupported key type {type(key).__name__}")
    return key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_csr(names: Iterable[str], key: CertPrivateKey | AccountKey) -> bytes:
    """A DER CSR for ``names`` (DNS names, wildcards, IP addresses), signed by ``key``."""
    names = list(names)
    if not names:
        raise ValueError("a CSR needs at least one name")
    private = key.private_key if isinstance(key, AccountKey) else key
    sans = [_san(n) for n in names]
    cn = next(
        (
            n
            for n, g in zip(names, sans, strict=True)
            if isinstance(g, x509.DNSName) and len(n) <= 64
        ),
        None,
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(private, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)
