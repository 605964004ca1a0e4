"""ip_identifier: a certificate for an IP address (RFC 8738).

The identifier, ``{"type": "ip", "value": ...}`` (RFC 8738 §3), is the address where the
challenge server answers the challenge type that validates it: ``--wec-ip`` (one address,
or one per type: ``10.77.77.77,tls-alpn-01=10.88.88.88``), else the embedded challenge
server's ``--wec-listen`` (default 127.0.0.1). With a challtestsrv and no ``--wec-ip`` there
is no address to order, and the chain is skipped with that reason. It is validated by
http-01 (RFC 8738 §5) in load mode, by tls-alpn-01 with the reverse-DNS SNI
(``1.0.0.127.in-addr.arpa`` for 127.0.0.1, RFC 8738 §6) in a variant; dns-01 must not be
offered (RFC 8738 §7). The certificate names the address as an iPAddress. A CA that does
not issue for IP addresses (its newOrder refused with unsupportedIdentifier or
rejectedIdentifier, RFC 8555 §6.7) skips the chain: that is its policy, not a fault. So
does, run once, a rate limit on the address (rateLimited, RFC 8555 §6.6): every run orders
the same few addresses, and a CA counting certificates per address (Boulder's dev config:
2 per address) refuses them after the first run; under load the refusal is counted as one.

tls-alpn-01 answers are published per host, so two such chains at once would overwrite each
other's: that variant is integration-only.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_wec import ChainContext, chain
from pytest_wec.acme import AcmeProblem
from pytest_wec.worker.challenges import ip_identifier, no_address

from ._checks import assert_chains_to_ca_root, assert_ip_san

#: the refusals that say the CA does not issue for this identifier type (RFC 8555 §6.7)
NOT_ISSUED = ("unsupportedIdentifier", "rejectedIdentifier")


def challenge_ip(wec: ChainContext, challenge: str = "http-01") -> str:
    """The address the CA validates an IP identifier at by *challenge*: where the challenge
    server answers it; the chain is skipped when it is not known."""
    ip = ip_identifier(wec.settings, wec.info, challenge)
    if ip is None:
        wec.skip(no_address(challenge))
    return ip


def _skip_if_not_issued(wec: ChainContext, ip: str, problem: AcmeProblem) -> None:
    """Skip the chain when *problem* says the CA does not issue for IP addresses, or, run
    once, that it limits certificates for this one (see the module doc)."""
    if problem.code in NOT_ISSUED:
        wec.skip(f"the CA does not issue for IP addresses: newOrder for ip:{ip} refused "
                 f"with {problem.code}: {str(problem).splitlines()[0]}")
    if problem.code == "rateLimited" and wec.mode == "once":
        wec.skip(f"the CA's rate limit refused newOrder for ip:{ip}, an address every run "
                 f"orders again (where the challenge server answers): "
                 f"{str(problem).splitlines()[0]}")


async def _order(wec: ChainContext, account: Any, ip: str) -> Any:
    """newOrder for *ip*; the chain is skipped when the CA does not issue for addresses."""
    try:
        return await wec.order(account, [ip])
    except AcmeProblem as problem:
        _skip_if_not_issued(wec, ip, problem)
        raise


@chain("ip_identifier", needs={"account"}, produces={"certificate"})
async def test_ip_identifier(wec: ChainContext) -> None:
    ip = challenge_ip(wec)
    account = await wec.take_account()
    try:
        issued = await wec.issue(account, [ip], challenge="http-01")
    except AcmeProblem as problem:
        _skip_if_not_issued(wec, ip, problem)
        raise
    assert_ip_san(issued.cert, ip)
    assert [(i.type, i.value) for i in issued.order.identifiers] == [("ip", ip)]


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
@chain("ip_identifier", needs={"account"}, produces={"certificate"}, load=False)
async def test_ip_identifier_challenges(wec: ChainContext, challenge: str) -> None:
    # A fresh account: a pooled one may hold a valid authorization for the address already,
    # which the CA may reuse, and then no challenge would be answered.
    ip = challenge_ip(wec, challenge)
    account = await wec.new_account()
    order = await _order(wec, account, ip)
    authz = await wec.client.get_authorization(account, order.authorizations[0])
    assert authz.status == "pending", authz.body
    assert (authz.identifier.type, authz.identifier.value) == ("ip", ip), authz.body
    offered = {c.type for c in authz.challenges}
    assert "dns-01" not in offered, "dns-01 must not validate an IP identifier (RFC 8738 §7)"
    [authz] = await wec.authorize(account, order, challenge)
    validated = [c.type for c in authz.challenges if c.status == "valid"]
    assert authz.status == "valid" and validated == [challenge], authz.body
    order = await wec.client.poll_order(account, order, timeout=60, until="ready")
    issued = await wec.certify(account, order, [ip])
    assert_ip_san(issued.cert, ip)
    await assert_chains_to_ca_root(wec, issued.pem)
