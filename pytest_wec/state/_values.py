"""Values handed out by the state store: frozen dataclasses and status enums.

Times are epoch seconds (``time.time()``), the clock of the process that wrote them.
Private keys are PEM text; they never appear in a ``repr`` so that logging a row is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "Account",
    "AccountStatus",
    "Authorization",
    "AuthorizationStatus",
    "Certificate",
    "Counts",
    "Kind",
    "Order",
    "OrderStatus",
    "Timestamp",
    "contact_list",
    "epoch",
    "pem_text",
]


class Kind(enum.StrEnum):
    """What can be claimed and released."""

    ACCOUNT = "account"
    AUTHORIZATION = "authorization"
    CERTIFICATE = "certificate"


class AccountStatus(enum.StrEnum):
    """RFC 8555 section 7.1.2, plus ``dead``: the CA that knew the account is gone."""

    VALID = "valid"
    DEACTIVATED = "deactivated"
    REVOKED = "revoked"
    DEAD = "dead"


class OrderStatus(enum.StrEnum):
    """RFC 8555 section 7.1.6."""

    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class AuthorizationStatus(enum.StrEnum):
    """RFC 8555 section 7.1.6."""

    PENDING = "pending"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Account:
    """An ACME account (RFC 8555 section 7.1.2) and the key that signs its requests."""

    id: int
    directory: str
    url: str
    key_pem: str = field(repr=False)
    alg: str
    status: AccountStatus
    contact: tuple[str, ...]
    created: float


@dataclass(frozen=True, slots=True)
class Order:
    """An order (RFC 8555 section 7.1.3) placed by an account."""

    id: int
    directory: str
    account_id: int
    url: str
    status: OrderStatus
    names: tuple[str, ...]
    created: float


@dataclass(frozen=True, slots=True)
class Authorization:
    """An authorization (RFC 8555 section 7.1.4) and the challenge type that validated it."""

    id: int
    directory: str
    account_id: int
    url: str
    identifier_type: str
    identifier_value: str
    challenge_type: str | None
    status: AuthorizationStatus
    expires: float


@dataclass(frozen=True, slots=True)
class Certificate:
    """An issued certificate, its key, and what happened to it since.

    ``serial`` is lowercase hex without separators. ``reason`` is the RFC 5280 CRL reason
    code given at revocation. ``renewed`` is set once a renewal was issued; ``replaced_by``
    is the renewal's id when the store knows it.
    """

    id: int
    directory: str
    account_id: int
    order_url: str
    pem_chain: str = field(repr=False)
    key_pem: str = field(repr=False)
    serial: str
    names: tuple[str, ...]
    not_after: float
    issued: float
    revoked: bool
    reason: int | None
    renewed: bool
    replaced_by: int | None


#: Counts attribute for each resource a chain can need or produce.
_COUNT_FIELD = {
    "account": "accounts",
    "authorization": "authorizations",
    "certificate": "certificates",
    "order": "orders",
}


@dataclass(frozen=True, slots=True)
class Counts:
    """What exists for one directory, as seen by the context-aware picker.

    ``accounts``: valid accounts. ``authorizations``: valid, unexpired authorizations of valid
    accounts. ``certificates``: unrevoked, unexpired certificates of valid accounts.
    ``revoked``: revoked certificates. ``orders``: orders of valid accounts.
    Rows held by a claim are counted: they exist, they are only busy.
    """

    accounts: int = 0
    authorizations: int = 0
    certificates: int = 0
    revoked: int = 0
    orders: int = 0

    def of(self, resource: str) -> int:
        """The count for a resource name (``account``, ``authorization``, ``certificate``)."""
        count: int = getattr(self, _COUNT_FIELD[resource])
        return count


#: A time as epoch seconds, an aware (or UTC naive) datetime, or RFC 3339 text.
Timestamp = float | int | datetime | str


def epoch(value: Timestamp) -> float:
    """*value* as epoch seconds; ACME's RFC 3339 ``expires`` text is accepted as is."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"expected an RFC 3339 time such as 2030-01-01T00:00:00Z, "
                             f"got {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def pem_text(pem: str | bytes) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def contact_list(contact: str | Iterable[str]) -> list[str]:
    """Contact URLs; a single string may hold several, comma separated."""
    if isinstance(contact, str):
        return [c.strip() for c in contact.split(",") if c.strip()]
    return list(contact)
