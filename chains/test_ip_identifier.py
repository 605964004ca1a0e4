"""ip_identifier: a certificate for an IP address (RFC 8738).

The identifier, ``{"type": "ip", "value": ...}`` (RFC 8738 §3), is the address where the
challenge server listens: the embedded one's ``--wec-listen`` (default 127.0.0.1), else
127.0.0.1. It is validated by http-01 (RFC 8738 §5) in load mode, by tls-alpn-01 with the
reverse-DNS SNI (``1.0.0.127.in-addr.arpa`` for 127.0.0.1, RFC 8738 §6) in a variant;
dns-01 must not be offered (RFC 8738 §7). The certificate names the address as an iPAddress.

tls-alpn-01 answers are published per host, so two such chains at once would overwrite each
other's: that variant is integration-only.
"""

from __future__ import annotations

import pytest

from chains._checks import assert_chains_to_ca_root, assert_ip_san
from pytest_wec import ChainContext, chain

LOOPBACK = "127.0.0.1"


def challenge_ip(wec: ChainContext) -> str:
    """The address the CA validates an IP identifier at: where the challenge server is."""
    return str(wec.info.get("challenge_ip") or LOOPBACK)


@chain("ip_identifier", needs={"account"}, produces={"certificate"})
async def test_ip_identifier(wec: ChainContext) -> None:
    ip = challenge_ip(wec)
    account = await wec.take_account()
    issued = await wec.issue(account, [ip], challenge="http-01")
    assert_ip_san(issued.cert, ip)
    assert [(i.type, i.value) for i in issued.order.identifiers] == [("ip", ip)]


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
@chain("ip_identifier", needs={"account"}, produces={"certificate"}, load=False)
async def test_ip_identifier_challenges(wec: ChainContext, challenge: str) -> None:
    # A fresh account: a pooled one may hold a valid authorization for the address already,
    # which the CA may reuse, and then no challenge would be answered.
    ip = challenge_ip(wec)
    account = await wec.new_account()
    order = await wec.order(account, [ip])
    authz = await wec.client.get_authorization(account, order.authorizations[0])
    assert authz.status == "pending", authz.body
    assert (authz.identifier.type, authz.identifier.value) == ("ip", ip), authz.body
    offered = {c.type for c in authz.challenges}
    assert challenge in offered, f"{challenge} not offered for an IP (offered: {offered})"
    assert "dns-01" not in offered, "dns-01 must not validate an IP identifier (RFC 8738 §7)"
    [authz] = await wec.authorize(account, order, challenge)
    validated = [c.type for c in authz.challenges if c.status == "valid"]
    assert authz.status == "valid" and validated == [challenge], authz.body
    order = await wec.client.poll_order(account, order, timeout=60, until="ready")
    issued = await wec.certify(account, order, [ip])
    assert_ip_san(issued.cert, ip)
    await assert_chains_to_ca_root(wec, issued.pem)
