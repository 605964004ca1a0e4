"""The value parsers of the options that fit the chains to any CA (Boulder, Pebble, others).

``--wec-challenge``        the challenge types chains answer, in order of preference
``--wec-profile``          the certificate profile every new order asks for
                           (draft-aaron-acme-profiles)
``--wec-ip``               where the challenge server answers, for IP identifiers and for
                           routing names to a challenge type's own address
``--wec-challenge-ports``  the embedded challenge server's fixed ports

:func:`check_challenge_ports` is the check across options that
:func:`~pytest_wec.settings.resolve` makes. Each parser takes the option's text and returns
its value or raises ValueError saying what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHALLENGE_TYPES", "PORT_KINDS", "ChallengeAddresses", "ChallengePorts",
           "check_challenge_ports", "parse_challenge_ports", "parse_challenges", "parse_ips",
           "parse_profile"]

#: the challenge types the chains can answer (RFC 8555 §8.3, §8.4, RFC 8737)
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")
#: the challenge types an IP identifier can be validated by (RFC 8738 §7: not dns-01)
_IP_TYPES = ("http-01", "tls-alpn-01")
#: the listeners of the challenge server whose ports can be fixed
PORT_KINDS = ("http-01", "tls-alpn-01", "dns", "management")
_PORT_ALIASES = {"dns-01": "dns", "http01": "http-01", "tlsalpn01": "tls-alpn-01",
                 "tls-alpn": "tls-alpn-01"}
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")


def parse_challenges(text: str) -> tuple[str, ...]:
    """``http-01`` or ``tls-alpn-01,http-01``: the types in order of preference."""
    allowed = ", ".join(CHALLENGE_TYPES)
    expected = (f"expected one of {allowed}, or several in order of preference such as "
                "tls-alpn-01,http-01")
    kinds = tuple(part.strip().lower() for part in text.split(","))
    if not kinds or any(k not in CHALLENGE_TYPES for k in kinds):
        raise ValueError(expected)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"{expected} (each type once)")
    return kinds


def parse_profile(text: str) -> str:
    """A profile name as a CA advertises it in ``meta.profiles`` (``legacy``, ``modern``,
    ``shortlived`` in Boulder's test config)."""
    name = text.strip()
    if not _PROFILE.fullmatch(name):
        raise ValueError("expected a profile name the CA's directory lists in meta.profiles, "
                         "such as modern or shortlived")
    return name


def _address(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(f"not an IP address: {text.strip()!r}") from None
    if ip.is_unspecified:
        raise ValueError(f"an address the CA connects to, not the wildcard {ip}")
    return str(ip)


@dataclass(frozen=True)
class ChallengeAddresses:
    """Where the challenge server answers (``--wec-ip``): one address for every challenge
    type, and addresses of their own for some types.

    An IP identifier validated by a type is that type's address (RFC 8738 §5, §6: the CA
    connects to the address itself). A type with an address of its own also gets its DNS
    names routed there: the publisher adds an A (or AAAA) record for the name while its
    challenge is published, as Boulder's integration tests do for its tls-alpn-01 responder,
    which listens on another address than its http-01 one.
    """

    default: str | None = None
    by_type: Mapping[str, str] = field(default_factory=dict)

    def for_type(self, kind: str) -> str | None:
        """The address challenge *kind* is answered at; None when not given."""
        return self.by_type.get(kind) or self.default

    def routed(self, kind: str) -> str | None:
        """The address DNS names validated by *kind* are routed to; None: the challenge
        server's DNS answers its default address for them."""
        return self.by_type.get(kind)

    def describe(self) -> str:
        """The option's text: ``10.77.77.77,tls-alpn-01=10.88.88.88``."""
        parts = [self.default] if self.default else []
        parts += [f"{k}={v}" for k, v in self.by_type.items()]
        return ",".join(parts)

    __str__ = describe


def parse_ips(text: str) -> ChallengeAddresses:
    """``10.77.77.77``, ``10.77.77.77,tls-alpn-01=10.88.88.88`` or
    ``http-01=10.77.77.77,tls-alpn-01=10.88.88.88``."""
    expected = ("expected the challenge server's IP address, optionally per challenge type, "
                "such as 10.77.77.77 or 10.77.77.77,tls-alpn-01=10.88.88.88")
    default: str | None = None
    by_type: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        kind, sep, value = part.rpartition("=")
        try:
            if not sep:
                if default is not None:
                    raise ValueError("one address without a type")
                default = _address(part)
                continue
            kind = kind.strip().lower()
            if kind not in _IP_TYPES:
                raise ValueError(f"{kind!r} is not one of {', '.join(_IP_TYPES)}")
            if kind in by_type:
                raise ValueError(f"{kind} given twice")
            by_type[kind] = _address(value)
        except ValueError as exc:
            raise ValueError(f"{expected} ({exc})") from None
    return ChallengeAddresses(default, by_type)


@dataclass(frozen=True)
class ChallengePorts:
    """The embedded challenge server's fixed ports (``--wec-challenge-ports``), by listener
    (``http-01``, ``tls-alpn-01``, ``dns``, ``management``); a listener not named binds a
    free port."""

    ports: Mapping[str, int] = field(default_factory=dict)

    def get(self, kind: str) -> int | None:
        return self.ports.get(kind)

    def describe(self) -> str:
        """In words: ``http-01 5002, dns 8053``."""
        return ", ".join(f"{k} {p}" for k, p in self.ports.items())

    def __str__(self) -> str:
        """The option's text: ``http-01=5002,dns=8053``."""
        return ",".join(f"{k}={p}" for k, p in self.ports.items())


def parse_challenge_ports(text: str) -> ChallengePorts:
    """``http-01=5002,tls-alpn-01=5001,dns=8053`` (``management=8055`` too)."""
    expected = ("expected ports such as http-01=5002,tls-alpn-01=5001,dns=8053 (listeners: "
                f"{', '.join(PORT_KINDS)}; ports 1 to 65535)")
    ports: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, sep, value = part.partition("=")
        kind = _PORT_ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if not sep or kind not in PORT_KINDS or not value.strip().isdigit() \
                or not 1 <= int(value) <= 65535:
            raise ValueError(expected)
        if kind in ports:
            raise ValueError(f"{expected} ({kind} given twice)")
        ports[kind] = int(value)
    if not ports:
        raise ValueError(expected)
    seen: dict[int, str] = {}  # every listener takes TCP (dns UDP as well)
    for kind, port in ports.items():
        if port in seen:
            raise ValueError(f"{seen[port]} and {kind} cannot share port {port}")
        seen[port] = kind
    return ChallengePorts(ports)


def check_challenge_ports(values: Mapping[str, Any], sources: Mapping[str, str]) -> str | None:
    """Why --wec-challenge-ports cannot apply, or None: it fixes the embedded challenge
    server's ports (with --wec-challtestsrv there is none; an embedded Pebble is then told
    where that one answers)."""
    if values.get("challenge_ports") is None or values.get("challtestsrv") is None:
        return None
    if values.get("directory") is not None:
        return (f"{sources['challenge_ports']} has nothing to fix: the challenge server is "
                f"the one of {sources['challtestsrv']} and the CA is not the embedded Pebble")
    ports = values["challenge_ports"]
    if ports.get("management") is not None:
        return (f"{sources['challenge_ports']}: with {sources['challtestsrv']} the management "
                "port is that URL's")
    return None
