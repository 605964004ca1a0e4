"""Rate limits as a CA states them (RFC 8555 §6.6), and the client addresses a CA may count.

A refusal over a rate limit is a problem of type ``urn:ietf:params:acme:error:rateLimited``,
usually with HTTP 429 and a ``Retry-After`` (§6.6). :func:`limit_name` reads which limit
from the problem's detail, in the ways Boulder words it:

- a limit named outright (``CertificatesPerDomain``, ``NewOrdersPerAccount``: any
  ``XPerY`` name, the form of Boulder's ``ratelimits`` package, longest first);
- the documentation anchor Boulder appends (``see https://letsencrypt.org/docs/rate-limits/
  #new-certificates-per-registered-domain``);
- the sentence itself (``too many certificates (2) already issued for "example.com" in the
  last 168h0m0s, retry after ...``), including the older wordings (``too many currently
  pending authorizations``, ``too many new orders recently``).

:class:`ClientAddresses` is the other side of per-address limits (Boulder's
``NewRegistrationsPerIPAddress``): for a CA behind a proxy that trusts a header such as
``X-Real-IP``, each account key gets an address of its own from a range, the same one every
time, so that a load run looks like many clients and not one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import TYPE_CHECKING

from ._errors import ERROR_NS

if TYPE_CHECKING:
    from ._jws import AccountKey

__all__ = ["LIMIT_NAMES", "RATE_LIMITED", "ClientAddresses", "is_rate_limited", "limit_name"]

RATE_LIMITED = ERROR_NS + "rateLimited"

#: Boulder's limit names (its ``ratelimits`` package, and the legacy ones before it)
LIMIT_NAMES = (
    "NewRegistrationsPerIPAddress",
    "NewRegistrationsPerIPv6Range",
    "NewOrdersPerAccount",
    "FailedAuthorizationsPerDomainPerAccount",
    "FailedAuthorizationsForPausingPerDomainPerAccount",
    "CertificatesPerDomain",
    "CertificatesPerDomainPerAccount",
    "CertificatesPerFQDNSet",
    "PendingAuthorizationsPerAccount",
)

#: any limit named the way Boulder names them: words, then ``Per``, then words
_NAMED = re.compile(r"\b(?:[A-Z][a-z0-9]*)+Per(?:[A-Z][A-Za-z0-9]*)+\b")
_ANCHOR = re.compile(r"rate-limits/?#([a-z0-9-]+)")
_ANCHORS = {
    "new-certificates-per-registered-domain": "CertificatesPerDomain",
    "new-certificates-per-exact-set-of-hostnames": "CertificatesPerFQDNSet",
    "new-certificates-per-exact-set-of-identifiers": "CertificatesPerFQDNSet",
    "new-orders-per-account": "NewOrdersPerAccount",
    "new-registrations-per-ip-address": "NewRegistrationsPerIPAddress",
    "new-registrations-per-ipv6-range": "NewRegistrationsPerIPv6Range",
    "authorization-failures-per-hostname-per-account": "FailedAuthorizationsPerDomainPerAccount",
    "authorization-failures-per-identifier-per-account":
        "FailedAuthorizationsPerDomainPerAccount",
    "pending-authorizations": "PendingAuthorizationsPerAccount",
}
#: the sentences, most specific first
_PHRASES = (
    (re.compile(r"already issued for (?:this )?exact set", re.I), "CertificatesPerFQDNSet"),
    (re.compile(r"too many certificates\b.*already issued", re.I), "CertificatesPerDomain"),
    (re.compile(r"too many (?:new )?orders", re.I), "NewOrdersPerAccount"),
    (re.compile(r"too many (?:new )?registrations\b.*(?:/48|ipv6)", re.I),
     "NewRegistrationsPerIPv6Range"),
    (re.compile(r"too many (?:new )?registrations", re.I), "NewRegistrationsPerIPAddress"),
    (re.compile(r"too many failed authorizations", re.I),
     "FailedAuthorizationsPerDomainPerAccount"),
    (re.compile(r"too many (?:currently )?pending authorizations", re.I),
     "PendingAuthorizationsPerAccount"),
)


def is_rate_limited(problem: str | None, status: int) -> bool:
    """A refusal over a rate limit: a ``rateLimited`` problem, or HTTP 429 (§6.6)."""
    return problem == RATE_LIMITED or status == 429


def limit_name(detail: str | None) -> str | None:
    """The limit a ``rateLimited`` problem's *detail* names (module doc), or None."""
    if not detail:
        return None
    named: list[str] = _NAMED.findall(detail)
    if named:
        return max(named, key=len)
    anchor = _ANCHOR.search(detail)
    if anchor is not None and anchor.group(1) in _ANCHORS:
        return _ANCHORS[anchor.group(1)]
    for pattern, name in _PHRASES:
        if pattern.search(detail):
            return name
    return None


class ClientAddresses:
    """An address of *network* per account key, the same for the key every time: the
    key's thumbprint picks it (the network's own and broadcast addresses are skipped where
    the range has them)."""

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network
        size = network.num_addresses
        self._first, self._count = (1, size - 2) if network.version == 4 and size > 2 \
            else (0, size)
        self._cache: dict[str, str] = {}

    def of(self, thumbprint: str) -> str:
        """The address of the key with *thumbprint* (RFC 7638, as the key computes it)."""
        found = self._cache.get(thumbprint)
        if found is None:
            digest = int.from_bytes(hashlib.sha256(thumbprint.encode()).digest()[:16], "big")
            found = str(self.network[self._first + digest % self._count])
            if len(self._cache) < 100_000:
                self._cache[thumbprint] = found
        return found

    def for_key(self, key: AccountKey) -> str:
        return self.of(key.thumbprint)
