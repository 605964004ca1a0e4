"""Boulder's identifier policy, for the stub CA's Boulder mode (:mod:`.quirky_ca`).

What Boulder's policy authority (``policy/pa.go``) and its test policy file
(``test/ident-policy.yaml``) refuse in a newOrder, as this stub refuses it:

- a DNS name that does not end in an ICANN public suffix, or is one (``xyz``), or looks
  like an IP address, or has fewer than two labels; the ICANN section of the Public Suffix
  List bundled with :mod:`publicsuffixlist` stands for Boulder's IANA list;
- a wildcard other than one leftmost ``*.``, or ``*.`` right above a public suffix
  (``*.xyz``, ``*.co.uk``);
- a name at or under a blocked domain of the test policy (``example``, ``example.net``,
  ``example.org``, ``invalid``, ``local``, ``localhost``, ``test``, ``in-addr.arpa``,
  ``ip6.arpa``, ``sealand``); ``example.com`` is not blocked;
- an IP address not in canonical form, or in a reserved block (``ipaddress``'s
  ``is_global`` false: loopback, private, documentation, benchmarking ranges...);
- an IP identifier under a profile other than ``shortlived`` (Boulder's test config
  issues for IP addresses under that profile only; the detail is this stub's wording).

Each refusal is a ``rejectedIdentifier`` problem worded as Boulder combines its policy
errors (``Cannot issue for "NAME": DETAIL``, with a subproblem per identifier when several
are refused). An authorization for ``*.x`` names ``x`` with ``"wildcard": true`` and
offers dns-01 only (pa.go's ChallengeTypesFor), which :func:`wildcard_authorization`
applies.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_wec.acme._fakeca_resources import ACME_ERROR, Problem

__all__ = ["BLOCKED", "IP_PROFILES", "policy_problem", "wildcard_authorization"]

#: test/ident-policy.yaml: HighRiskBlockedNames and AdminBlockedNames (with subdomains)
BLOCKED = frozenset({"ip6.arpa", "in-addr.arpa", "example", "example.net", "example.org",
                     "invalid", "local", "localhost", "test", "sealand"})
#: the profiles under which IP identifiers are issued
IP_PROFILES = frozenset({"shortlived"})
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_FORBIDDEN = ("The ACME server refuses to issue a certificate for this domain name, because it "
              "is forbidden by policy")


@functools.cache
def _icann() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True, accept_unknown=False)


def _domain_problem(name: str) -> str | None:
    """Why Boulder refuses DNS name *name* (no wildcard), or None."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return "Identifier type is DNS but value is an IP address"
    labels = name.split(".")
    if len(labels) < 2:
        return "Domain name needs at least one dot"
    if len(name) > 253 or any(not _LABEL.fullmatch(label) for label in labels):
        return "Domain name contains an invalid character"
    suffix = _icann().publicsuffix(name)
    if suffix is None:
        return "Domain name does not end with a valid public suffix (TLD)"
    if suffix == name:
        return "Domain name is an ICANN TLD"
    if any(".".join(labels[i:]) in BLOCKED for i in range(len(labels))):
        return _FORBIDDEN
    return None


def _name_problem(name: str) -> str | None:
    """Why Boulder refuses DNS identifier *name* (a wildcard or not), or None."""
    if "*" not in name:
        return _domain_problem(name)
    if name.count("*") > 1:
        return "Domain name has more than one wildcard"
    if not name.startswith("*."):
        return ("Domain name contains an invalid wildcard. A wildcard is only permitted "
                "before the first dot in a domain name")
    base = name[2:]
    if _icann().publicsuffix(base) == base:
        return "Domain name is a wildcard for an ICANN TLD"
    return _domain_problem(base)


def _ip_problem(value: str, profile: str | None) -> str | None:
    """Why Boulder refuses IP identifier *value* under *profile*, or None."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "IP address is invalid"
    if str(ip) != value:
        return "IP address is invalid"
    if not ip.is_global:
        return f"IP address is in a reserved address block: {ip}"
    if profile not in IP_PROFILES:
        return (f"profile {profile or '(none)'!r} does not issue for IP addresses "
                f"(only {', '.join(sorted(IP_PROFILES))})")
    return None


def policy_problem(identifiers: Iterable[Mapping[str, Any]],
                   profile: str | None) -> Problem | None:
    """The ``rejectedIdentifier`` problem Boulder answers a newOrder for *identifiers*
    under *profile* with, or None when its policy takes them all."""
    refused: list[tuple[Mapping[str, Any], str]] = []
    for ident in identifiers:
        kind, value = ident.get("type"), str(ident.get("value", ""))
        if kind == "dns":
            why = _name_problem(value)
        elif kind == "ip":
            why = _ip_problem(value, profile)
        else:
            why = "Invalid identifier type"
        if why is not None:
            refused.append((ident, why))
    if not refused:
        return None
    first, why = refused[0]
    detail = f'Cannot issue for "{first.get("value")}": {why}'
    if len(refused) == 1:
        return Problem(400, "rejectedIdentifier", detail)
    subs = [{"type": ACME_ERROR + "rejectedIdentifier", "detail": w, "identifier": dict(i)}
            for i, w in refused]
    return Problem(400, "rejectedIdentifier", f"{detail} (and {len(refused) - 1} more "
                   "problems. Refer to sub-problems for more information.)", subs)


def wildcard_authorization(authz: dict[str, Any]) -> None:
    """Make the new authorization *authz* for ``*.x`` Boulder's: identifier ``x``,
    ``"wildcard": true``, dns-01 its only challenge (RFC 8555 §7.1.4, §8.4)."""
    ident = authz["identifier"]
    value = str(ident.get("value", ""))
    if ident.get("type") != "dns" or not value.startswith("*."):
        return
    authz["identifier"] = {"type": "dns", "value": value[2:]}
    authz["wildcard"] = True
    authz["challenges"] = [c for c in authz["challenges"] if c["type"] == "dns-01"]
