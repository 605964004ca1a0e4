"""new_certificate: finalize (§7.4), poll the order, download the certificate (§7.4.2).

Every order asks for ``--wec-profile`` when given; a variant orders one certificate under
each profile the directory advertises (draft-aaron-acme-profiles)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pytest_wec import ChainContext, chain

from ._checks import assert_chains_to_ca_root, assert_names, chain_certs, warn_deviation


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


@chain("new_certificate", needs={"account"}, produces={"certificate"}, load=False)
async def test_certificate_profiles(wec: ChainContext) -> None:
    """A certificate under each profile the directory advertises (draft-aaron-acme-profiles:
    ``meta.profiles``; the order names the profile it was asked for, and the accepted order
    carries it)."""
    offered = (await wec.client.directory()).profiles
    if not offered:
        pytest.skip("the CA advertises no profiles (no meta.profiles in its directory)")
    account = await wec.take_account()
    for profile in offered:
        names = wec.random_names(1)
        issued = await wec.issue(account, names, profile=profile)
        assert_names(issued.cert, names)
        echoed = issued.order.body.get("profile")
        if echoed is None:
            warn_deviation(wec, f"the order for profile {profile!r} does not name it: the "
                                f"draft-aaron-acme-profiles order object carries the profile")
        else:
            assert echoed == profile, f"ordered profile {profile!r}, the order says {echoed!r}"
