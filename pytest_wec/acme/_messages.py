"""ACME resources as frozen values.

Directory (RFC 8555 §7.1.1), Account (§7.1.2), Order (§7.1.3), Authorization
(§7.1.4), Challenge (§7.1.5, §8), Certificate (§7.4.2), Identifier (§9.7.7,
RFC 8738 for "ip"). Each keeps the server's JSON ``body`` as-is; properties
read it. A response that cannot become the resource raises
:class:`~pytest_wec.acme._errors.AcmeProtocolError` naming what was wrong.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import AcmeNotSupported, AcmeProblem, AcmeProtocolError
from ._jws import AccountKey
from ._parse import json_body, require
from ._transport import Response

__all__ = [
    "Account",
    "Authorization",
    "Certificate",
    "Challenge",
    "Directory",
    "Identifier",
    "IdentifierLike",
    "Order",
]


@dataclass(frozen=True, slots=True)
class Identifier:
    """An identifier: ``dns`` (RFC 8555 §9.7.7) or ``ip`` (RFC 8738)."""

    type: str
    value: str

    @classmethod
    def coerce(cls, value: IdentifierLike) -> Identifier:
        """From an Identifier, a ``(type, value)`` pair, or a name (an IP address
        becomes ``ip``, anything else ``dns``)."""
        if isinstance(value, Identifier):
            return value
        if isinstance(value, str):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                return cls("dns", value)
            return cls("ip", value)
        typ, val = value
        return cls(typ, val)

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


IdentifierLike = Identifier | tuple[str, str] | str


@dataclass(frozen=True)
class Directory:
    """The directory object (RFC 8555 §7.1.1): resource URLs and ``meta``."""

    url: str
    body: dict[str, Any]

    @classmethod
    def from_response(cls, url: str, resp: Response) -> Directory:
        body = json_body(resp, "directory")
        for name in ("newNonce", "newAccount", "newOrder"):
            require(body, "directory", name, str)
        return cls(url, body)

    def url_for(self, resource: str) -> str:
        """The URL of ``resource`` (e.g. ``keyChange``); AcmeNotSupported when absent."""
        value = self.body.get(resource)
        if not isinstance(value, str) or not value:
            raise AcmeNotSupported(f"the directory at {self.url} does not offer {resource}")
        return value

    def offers(self, resource: str) -> bool:
        return isinstance(self.body.get(resource), str)

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.body.get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def new_nonce(self) -> str:
        return str(self.body["newNonce"])

    @property
    def new_account(self) -> str:
        return str(self.body["newAccount"])

    @property
    def new_order(self) -> str:
        return str(self.body["newOrder"])

    @property
    def terms_of_service(self) -> str | None:
        tos = self.meta.get("termsOfService")
        return tos if isinstance(tos, str) else None

    @property
    def external_account_required(self) -> bool:
        return self.meta.get("externalAccountRequired") is True

    @property
    def profiles(self) -> dict[str, str]:
        """Certificate profiles offered (``meta.profiles``, draft-aaron-acme-profiles)."""
        profiles = self.meta.get("profiles")
        return profiles if isinstance(profiles, dict) else {}


@dataclass(frozen=True)
class Account:
    """An account (RFC 8555 §7.1.2): its URL (the JWS ``kid``), key and body.

    ``created`` is True when newAccount answered 201, False for 200 (the key
    already had an account, §7.3.1).
    """

    url: str
    key: AccountKey
    body: dict[str, Any] = field(default_factory=dict, compare=False)
    created: bool = field(default=False, compare=False)

    @property
    def status(self) -> str | None:
        status = self.body.get("status")
        return status if isinstance(status, str) else None

    @property
    def contact(self) -> tuple[str, ...]:
        contact = self.body.get("contact")
        return tuple(c for c in contact if isinstance(c, str)) if isinstance(contact, list) else ()


def _problem(body: Mapping[str, Any]) -> AcmeProblem | None:
    err = body.get("error")
    if not isinstance(err, dict):
        return None
    try:
        return AcmeProblem.from_json(err)
    except AcmeProtocolError:
        return None


@dataclass(frozen=True)
class Order:
    """An order (RFC 8555 §7.1.3). ``retry_after`` is the response's Retry-After (§7.4)."""

    url: str
    body: dict[str, Any] = field(compare=False)
    retry_after: float | None = field(default=None, compare=False)

    @classmethod
    def from_body(cls, url: str, body: dict[str, Any], retry_after: float | None = None) -> Order:
        what = f"order {url}"
        require(body, what, "status", str)
        auths = require(body, what, "authorizations", list)
        if not all(isinstance(a, str) for a in auths):
            raise AcmeProtocolError(f"{what}: authorizations must be URLs")
        require(body, what, "finalize", str)
        return cls(url, body, retry_after)

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def authorizations(self) -> tuple[str, ...]:
        return tuple(self.body["authorizations"])

    @property
    def finalize(self) -> str:
        return str(self.body["finalize"])

    @property
    def certificate(self) -> str | None:
        cert = self.body.get("certificate")
        return cert if isinstance(cert, str) else None

    @property
    def identifiers(self) -> tuple[Identifier, ...]:
        idents = self.body.get("identifiers")
        if not isinstance(idents, list):
            return ()
        return tuple(
            Identifier(str(i.get("type")), str(i.get("value")))
            for i in idents
            if isinstance(i, dict)
        )

    @property
    def error(self) -> AcmeProblem | None:
        """Why the order is invalid, when the server said."""
        return _problem(self.body)


@dataclass(frozen=True)
class Challenge:
    """A challenge (RFC 8555 §7.1.5, §8): type, url, token, status and the body.
    ``retry_after`` as for :class:`Order` (when it came as a response of its own)."""

    type: str
    url: str
    token: str | None
    status: str
    body: dict[str, Any] = field(compare=False)
    retry_after: float | None = field(default=None, compare=False)

    @classmethod
    def from_body(cls, body: dict[str, Any], what: str = "challenge",
                  retry_after: float | None = None) -> Challenge:
        typ = require(body, what, "type", str)
        url = require(body, what, "url", str)
        status = require(body, what, "status", str)
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise AcmeProtocolError(f"{what}: token is not a string")
        return cls(typ, url, token, status, body, retry_after)

    @property
    def error(self) -> AcmeProblem | None:
        """Why validation failed (§8.2 ``error``), when it did."""
        return _problem(self.body)


@dataclass(frozen=True)
class Authorization:
    """An authorization (RFC 8555 §7.1.4). ``retry_after`` as for :class:`Order`."""

    url: str
    body: dict[str, Any] = field(compare=False)
    challenges: tuple[Challenge, ...] = field(compare=False, default=())
    retry_after: float | None = field(default=None, compare=False)

    @classmethod
    def from_body(
        cls, url: str, body: dict[str, Any], retry_after: float | None = None
    ) -> Authorization:
        what = f"authorization {url}"
        require(body, what, "status", str)
        require(body, what, "identifier", dict)
        raw = require(body, what, "challenges", list)
        challenges = []
        for ch in raw:
            if not isinstance(ch, dict):
                raise AcmeProtocolError(f"{what}: a challenge is not an object")
            challenges.append(Challenge.from_body(ch, f"{what}: challenge"))
        return cls(url, body, tuple(challenges), retry_after)

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def identifier(self) -> Identifier:
        ident = self.body["identifier"]
        return Identifier(str(ident.get("type")), str(ident.get("value")))

    @property
    def wildcard(self) -> bool:
        return self.body.get("wildcard") is True

    def challenge(self, type: str) -> Challenge | None:
        """The first challenge of ``type`` ("http-01", "dns-01", "tls-alpn-01")."""
        return next((c for c in self.challenges if c.type == type), None)

    @property
    def error(self) -> AcmeProblem | None:
        """The error of the first failed challenge, when there is one."""
        return next((e for c in self.challenges if (e := c.error) is not None), None)


_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class Certificate:
    """A downloaded certificate chain (RFC 8555 §7.4.2), PEM text, leaf first.

    ``alternates`` are the URLs of alternate chains (Link rel="alternate").
    """

    url: str
    pem: str
    alternates: tuple[str, ...] = ()

    @property
    def pems(self) -> list[str]:
        """Each certificate of the chain as its own PEM block."""
        out = []
        for block in self.pem.split(_PEM_END)[:-1]:
            start = block.find(_PEM_BEGIN)
            if start >= 0:
                out.append(block[start:] + _PEM_END + "\n")
        return out

    @property
    def leaf_der(self) -> bytes:
        """The end-entity certificate, DER (for revokeCert and renewalInfo)."""
        return self.der_chain[0]

    @property
    def der_chain(self) -> list[bytes]:
        out = []
        for block in self.pems:
            b64 = "".join(block.splitlines()[1:-1])
            try:
                out.append(base64.b64decode(b64, validate=True))
            except ValueError:
                raise AcmeProtocolError(f"certificate {self.url}: bad PEM base64") from None
        if not out:
            raise AcmeProtocolError(f"certificate {self.url}: no PEM certificate in the body")
        return out
