"""new_certificate: finalize (§7.4), poll the order, download the certificate (§7.4.2)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chains._checks import assert_chains_to_ca_root, assert_names, chain_certs
from pytest_wec import ChainContext, chain


@chain("new_certificate", needs={"account"}, produces={"certificate"})
async def test_new_certificate(wec: ChainContext) -> None:
    account = await wec.take_account()
    names = wec.random_names()
    issued = await wec.issue(account, names)
    assert_names(issued.cert, names)
    await assert_chains_to_ca_root(wec, issued.pem)


@pytest.mark.parametrize("cert_key", ["ec256", "ec384", "rsa2048"])
@chain("new_certificate", needs={"account"}, produces={"certificate"}, load=False)
async def test_certificate_key_types(wec: ChainContext, cert_key: str) -> None:
    names = wec.random_names(2)
    issued = await wec.issue(names=names, cert_key=cert_key)
    assert_names(issued.cert, names)
    public = issued.cert.public_key()
    if cert_key == "rsa2048":
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.key_size == int(cert_key[2:])
    await assert_chains_to_ca_root(wec, issued.pem)


@chain("new_certificate", needs={"account"}, produces={"certificate"}, load=False)
async def test_alternate_chains(wec: ChainContext) -> None:
    """Every chain offered through Link rel="alternate" (§7.4.2) holds the same leaf."""
    issued = await wec.issue()
    if not issued.alternates:
        pytest.skip("the CA offers no alternate chains (Pebble: PEBBLE_ALTERNATE_ROOTS=0)")
    leaf = chain_certs(issued.pem)[0]
    for url in issued.alternates:
        alt = await wec.client.download_certificate(issued.account, url)
        assert chain_certs(alt.pem)[0] == leaf
        await assert_chains_to_ca_root(wec, alt.pem)
