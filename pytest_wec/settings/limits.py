"""The value parsers of the options for CAs with rate limits (Boulder and its kin).

``--wec-suffix``          the public suffix random names are spread under
                          (:mod:`pytest_wec.worker.names`)
``--wec-client-ip-header`` the header a CA that trusts one reads the client's address from
``--wec-client-ips``      the range those addresses are spread over, one per account

:func:`check_names` and :func:`check_client_ips` are the checks across options that
:func:`~pytest_wec.settings.resolve` makes. Each parser takes the option's text and returns
its value or raises ValueError saying what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_CLIENT_IPS", "DEFAULT_CLIENT_NETWORK", "check_client_ips", "check_names",
           "parse_client_ip_header", "parse_client_ips", "parse_suffix"]

#: RFC 2544's benchmarking range (198.18.0.0/15): addresses no real client has
DEFAULT_CLIENT_IPS = "198.18.0.0/15"
DEFAULT_CLIENT_NETWORK = ipaddress.ip_network(DEFAULT_CLIENT_IPS)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 §5.1)
_RESERVED = frozenset({"host", "content-type", "content-length", "user-agent", "connection",
                       "transfer-encoding", "accept"})


def parse_suffix(text: str) -> str:
    """A public suffix of the Public Suffix List (``xyz``, ``com``, ``co.uk``)."""
    from pytest_wec.worker.names import check_suffix  # the list: only when given

    return check_suffix(text)


def parse_client_ip_header(text: str) -> str:
    """An HTTP header name such as ``X-Real-IP`` or ``X-Forwarded-For``."""
    name = text.strip()
    if not _TOKEN.fullmatch(name):
        raise ValueError("expected an HTTP header name such as X-Real-IP or X-Forwarded-For")
    if name.lower() in _RESERVED:
        raise ValueError(f"expected a header the client does not send already, not {name}")
    return name


def parse_client_ips(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address range in CIDR notation (``198.18.0.0/15``, ``2001:db8::/32``)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("expected an address range such as 198.18.0.0/15 or "
                         "2001:db8::/32") from None
    if net.num_addresses < 2:
        raise ValueError("expected a range of more than one address")
    return net


def check_names(values: Mapping[str, Any], sources: Mapping[str, str]) -> str | None:
    """Why the names options exclude each other, or None."""
    if values.get("domain") is not None and "suffix" in values:
        return (f"{sources['domain']} and {sources['suffix']} exclude each other: "
                "--wec-domain puts every name under one domain, --wec-suffix spreads them "
                "over registered domains under a public suffix")
    return None


def check_client_ips(values: Mapping[str, Any], sources: Mapping[str, str]) -> str | None:
    """Why --wec-client-ips is useless as given, or None."""
    if "client_ips" in values and values.get("client_ip_header") is None:
        return (f"{sources['client_ips']} needs --wec-client-ip-header: the addresses are "
                "sent in that header only")
    return None
