"""Random names for orders, spread over registered domains (Public Suffix List aware).

A CA with rate limits counts certificates per *registered domain* (Boulder's
``CertificatesPerDomain``: the eTLD+1 of each name by the Public Suffix List), so names that
all end in one domain (``<hex>.wec.example.com``) run into the limit after a few orders.
By default every call of :meth:`NameMaker.names` (one order's names) gets a registered domain
of its own under a public suffix (``--wec-suffix``, default ``xyz``, the TLD Boulder's own
integration tests use)::

    3f2a9c01b7e4.wec-5d1c0a9e77.xyz        host label . registered label . suffix

The names of one order share its registered domain; the next order gets another.
``--wec-domain DOMAIN`` keeps every name under one domain instead (``<hex>.DOMAIN``), which
is one registered domain unless DOMAIN is itself a public suffix.

The list is the copy bundled with :mod:`publicsuffixlist` (never fetched at run time), read
once per process on first use.
"""

from __future__ import annotations

import functools
import secrets
from typing import Any

__all__ = ["DEFAULT_SUFFIX", "NameMaker", "check_suffix", "names_description",
           "registered_domain"]

#: the public suffix spread names end in by default (Boulder's integration tests use it)
DEFAULT_SUFFIX = "xyz"
_REGISTERED_PREFIX = "wec-"


@functools.cache
def _psl() -> Any:
    """The Public Suffix List bundled with :mod:`publicsuffixlist`; unknown TLDs are not
    taken as public suffixes (the list's implicit ``*`` rule is off)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False)


def registered_domain(name: str) -> str | None:
    """The registered domain (eTLD+1) of *name* by the Public Suffix List, as Boulder counts
    certificates per domain: ``a.b.example.co.uk`` -> ``example.co.uk``; a name that is a
    public suffix itself is its own; None for a name under no known suffix."""
    name = name.lower().removeprefix("*.").rstrip(".")
    psl = _psl()
    found: str | None = psl.privatesuffix(name)
    if found is None and psl.is_public(name):
        return name
    return found


def check_suffix(text: str) -> str:
    """*text* as a suffix spread names may end in, or ValueError saying why not: it must be
    a public suffix of the list, and a label under it must be a registered domain (not a
    suffix by a wildcard rule such as ``*.ck``)."""
    suffix = text.strip().lower().strip(".")
    psl = _psl()
    if not suffix or not psl.is_public(suffix):
        mine = registered_domain(suffix) if suffix else None
        hint = (f" (names under it share the registered domain {mine}; give --wec-domain "
                f"{suffix} to put every name under one domain)") if mine else ""
        raise ValueError(f"expected a public suffix of the Public Suffix List such as xyz, "
                         f"com or co.uk{hint}")
    if psl.is_public(f"{_REGISTERED_PREFIX}0.{suffix}"):
        raise ValueError("expected a public suffix whose subdomains are registered domains "
                         "(a wildcard rule makes every label under it a suffix too)")
    return suffix


class NameMaker:
    """Random DNS names for orders: a fresh registered domain per call under *suffix*, or
    every name under *domain* when given (see the module's doc)."""

    def __init__(self, domain: str | None = None, suffix: str = DEFAULT_SUFFIX) -> None:
        self.domain = domain
        self.suffix = suffix

    def base(self) -> str:
        """The domain one order's names go under: *domain*, or a fresh registered domain."""
        if self.domain is not None:
            return self.domain
        return f"{_REGISTERED_PREFIX}{secrets.token_hex(5)}.{self.suffix}"

    def names(self, n: int, *, wildcard: bool = False) -> list[str]:
        """*n* random names under one :meth:`base`; the first is ``*.``-prefixed when
        *wildcard* (its base then has a label left of the registered domain, as Boulder
        requires of a wildcard: never ``*.`` right above a public suffix)."""
        base = self.base()
        names = [f"{secrets.token_hex(6)}.{base}" for _ in range(n)]
        if wildcard and names:
            names[0] = "*." + names[0]
        return names


def names_description(domain: str | None, suffix: str = DEFAULT_SUFFIX) -> str:
    """How random names are made, for the run's first line."""
    if domain is not None:
        return f"names under {domain}"
    return f"names under a registered domain per order (<hex>.{_REGISTERED_PREFIX}<hex>.{suffix})"
