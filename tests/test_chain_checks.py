"""The shipped chains' certificate-chain check (chains/_checks.py): each certificate signed by
the next, the top by one of the CA's roots; an issuer pair verified once is not verified
again, and a forged one still fails every time."""

from __future__ import annotations

import asyncio
import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chains import _checks
from chains._checks import assert_chains_to_ca_root


def _cert(subject: str, issuer: str, key: Any, signer: Any) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer, hashes.SHA256()))


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class _Roots:
    def __init__(self, *roots: x509.Certificate) -> None:
        self.list = list(roots)

    async def roots(self, refresh: bool = False) -> list[x509.Certificate]:
        return self.list


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_each_signature_is_checked_and_a_forged_one_fails_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_checks, "_VERIFIED", set())
    root_key, inter_key, other_key = _key(), _key(), _key()
    root = _cert("root", "root", root_key, root_key)
    inter = _cert("inter", "root", inter_key, root_key)
    ctx: Any = SimpleNamespace(pebble=_Roots(root))

    def check(pem: str) -> None:
        asyncio.run(assert_chains_to_ca_root(ctx, pem))

    for _ in range(3):  # leaves of one issuer chain: the top's pair is verified once
        leaf_key = _key()
        check(_pem(_cert("leaf", "inter", leaf_key, inter_key), inter))
    assert len(_checks._VERIFIED) == 1
    # a leaf not signed by its issuer: the leaf's pair is never taken as verified
    forged_leaf = _cert("leaf", "inter", _key(), other_key)
    for _ in range(2):
        with pytest.raises(InvalidSignature):
            check(_pem(forged_leaf, inter))
    # an intermediate of the same names signed by another key: fails every time, though
    # the genuine one's pair was verified before
    forged_inter = _cert("inter", "root", inter_key, other_key)
    leaf = _cert("leaf", "inter", _key(), inter_key)
    for _ in range(2):
        with pytest.raises(InvalidSignature):
            check(_pem(leaf, forged_inter))
    # a three-certificate chain: the pair above the leaf is kept too
    check(_pem(leaf, inter, root))
    assert len(_checks._VERIFIED) == 2
    # no root of the CA for the top
    stranger = _cert("stranger", "stranger", other_key, other_key)
    with pytest.raises(AssertionError, match="no root of the CA"):
        check(_pem(_cert("leaf", "stranger", _key(), other_key), stranger))
