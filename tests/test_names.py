"""Random names spread over registered domains (pytest_wec.worker.names), PSL-aware.

A CA with rate limits counts certificates per registered domain (the eTLD+1 by the Public
Suffix List, as Boulder's ``CertificatesPerDomain``): by default each order's names get a
registered domain of their own; ``--wec-domain`` keeps them all under one.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.errors import ConfigError
from pytest_wec.settings import Settings, resolve
from pytest_wec.worker.context import ChainContext
from pytest_wec.worker.names import (
    NameMaker,
    check_suffix,
    names_description,
    registered_domain,
)

#: Boulder's dev identifier policy (test/ident-policy.yaml): names under these are refused
BOULDER_BLOCKED = ("example", "example.net", "example.org", "invalid", "local", "localhost",
                   "test")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def boulder_would_take(name: str) -> bool:
    """The checks of Boulder's policy/pa.go validDomain and its blocked names that a random
    name could break: labels, length, an ICANN suffix, R-LDH labels, a wildcard right above
    a public suffix."""
    host = name.removeprefix("*.")
    labels = host.split(".")
    if len(host) > 253 or len(labels) > 10 or not all(_LABEL.fullmatch(x) for x in labels):
        return False
    if any(len(x) >= 4 and x[2:4] == "--" for x in labels):
        return False
    if registered_domain(host) in (None, host) and name.startswith("*."):
        return False  # "*." right above a public suffix
    return not any(host == b or host.endswith("." + b) for b in BOULDER_BLOCKED)


def test_each_order_gets_a_registered_domain_of_its_own() -> None:
    maker = NameMaker()
    orders = [maker.names(3) for _ in range(200)]
    domains = [{registered_domain(n) for n in names} for names in orders]
    assert all(len(d) == 1 for d in domains), "one order's names share its registered domain"
    flat = [next(iter(d)) for d in domains]
    assert len(set(flat)) == len(flat), "no two orders share a registered domain"
    for names, (domain,) in zip(orders, domains, strict=True):
        assert domain is not None and domain.endswith(".xyz") and domain.count(".") == 1
        assert len(set(names)) == 3
        assert all(boulder_would_take(n) for n in names), names


def test_registered_domains_follow_the_public_suffix_list() -> None:
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"  # co.uk is a suffix
    assert registered_domain("x.y.github.io") == "y.github.io"  # a private suffix too
    assert registered_domain("*.a.b.example.com") == "example.com"
    assert registered_domain("co.uk") == "co.uk"  # a suffix is its own
    assert registered_domain("a.b.not-a-tld-at-all") is None
    names = NameMaker(suffix="co.uk").names(2)
    domains = {registered_domain(n) for n in names}
    assert len(domains) == 1
    (domain,) = domains
    assert domain is not None and domain.endswith(".co.uk") and domain.count(".") == 2


def test_the_suffix_must_be_a_public_suffix() -> None:
    assert check_suffix("XYZ.") == "xyz"
    assert check_suffix("co.uk") == "co.uk"
    with pytest.raises(ValueError, match=r"give --wec-domain example\.com"):
        check_suffix("example.com")  # every name would share example.com
    with pytest.raises(ValueError, match="public suffix"):
        check_suffix("not-a-tld-at-all")
    with pytest.raises(ValueError, match="wildcard rule"):
        check_suffix("ck")  # *.ck: every label under it is a suffix too


def test_one_domain_keeps_every_name_under_it() -> None:
    maker = NameMaker("wec.example.com")
    names = [n for _ in range(20) for n in maker.names(2)]
    assert all(n.endswith(".wec.example.com") and n.count(".") == 3 for n in names)
    assert {registered_domain(n) for n in names} == {"example.com"}
    assert len(set(names)) == len(names)
    assert names_description("wec.example.com") == "names under wec.example.com"
    assert "registered domain per order" in names_description(None)


@pytest.mark.parametrize("domain", [None, "wec.example.com"])
def test_wildcards_keep_a_label_above_the_registered_domain(domain: str | None) -> None:
    maker = NameMaker(domain)
    names = maker.names(2, wildcard=True)
    assert names[0].startswith("*.") and not names[1].startswith("*.")
    base = names[0].removeprefix("*.")
    assert registered_domain(base) == registered_domain(names[1])
    assert registered_domain(base) != base  # never "*." right above a public suffix
    assert all(boulder_would_take(n) for n in names), names


def _context(settings: Settings) -> ChainContext:
    runtime: Any = SimpleNamespace(
        network=SimpleNamespace(client=lambda *a: SimpleNamespace()), settings=settings,
        directory="https://ca.test/dir", store=None, publisher=None, pebble=None,
        holder="t:1", info={})
    return ChainContext(runtime, "new_order")


def test_chains_get_the_names_of_the_settings() -> None:
    spread = _context(Settings(names=2))
    first, second = spread.random_names(), spread.random_names()
    assert len(first) == len(second) == 2
    assert registered_domain(first[0]) == registered_domain(first[1])
    assert registered_domain(first[0]) != registered_domain(second[0])
    one = _context(Settings(domain="wec.example.com"))
    assert {registered_domain(n) for n in one.random_names(3) + one.random_names(3)} == {
        "example.com"}
    under = _context(Settings(suffix="co.uk"))
    assert under.random_names(1)[0].endswith(".co.uk")


def test_the_options_of_names() -> None:
    assert resolve({}, lambda name: None).domain is None
    s = resolve({"suffix": "co.uk"}, lambda name: None)
    assert s.suffix == "co.uk" and s.domain is None
    assert resolve({"domain": "wec.example.com"}, lambda name: None).domain == "wec.example.com"
    with pytest.raises(ConfigError, match="exclude each other"):
        resolve({"domain": "wec.example.com", "suffix": "com"}, lambda name: None)
    with pytest.raises(ConfigError, match=r"--wec-suffix: .*give --wec-domain example\.com"):
        resolve({"suffix": "example.com"}, lambda name: None)
    # a worker parses the controller's texts again: the same settings
    assert Settings.from_plain(s.to_plain()) == s
