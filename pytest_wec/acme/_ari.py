"""ACME Renewal Information (ARI, draft-ietf-acme-ari; RFC 9773).

A certificate is named by its certID: base64url of the Authority Key
Identifier's keyIdentifier, a dot, and base64url of the serial number's DER
integer content bytes. ``GET <renewalInfo>/<certID>`` returns the suggested
renewal window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from ._errors import AcmeProtocolError
from ._jws import b64url
from ._parse import parse_time

__all__ = ["RenewalInfo", "cert_id"]


def _serial_bytes(serial: int) -> bytes:
    # DER INTEGER content octets: two's complement, minimal, positive.
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def cert_id(cert_der: bytes) -> str:
    """The ARI certID of a DER certificate (it must carry an AKI keyIdentifier)."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no Authority Key Identifier") from None
    if aki.key_identifier is None:
        raise ValueError("certificate's Authority Key Identifier has no keyIdentifier")
    return f"{b64url(aki.key_identifier)}.{b64url(_serial_bytes(cert.serial_number))}"


@dataclass(frozen=True)
class RenewalInfo:
    """A renewalInfo response: the suggested window and optional explanation."""

    cert_id: str
    start: datetime
    end: datetime
    explanation_url: str | None = None
    retry_after: float | None = None
    body: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_body(
        cls, cid: str, body: dict[str, Any], retry_after: float | None = None
    ) -> RenewalInfo:
        window = body.get("suggestedWindow")
        if not isinstance(window, dict):
            raise AcmeProtocolError(f"renewalInfo {cid}: no suggestedWindow object")
        start, end = window.get("start"), window.get("end")
        if not isinstance(start, str) or not isinstance(end, str):
            raise AcmeProtocolError(f"renewalInfo {cid}: suggestedWindow needs start and end")
        expl = body.get("explanationURL")
        return cls(
            cid,
            parse_time(start),
            parse_time(end),
            expl if isinstance(expl, str) else None,
            retry_after,
            body,
        )
