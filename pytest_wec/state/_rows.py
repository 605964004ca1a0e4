"""Tables as Core ``Table`` objects, the conditions claims share, and rows -> values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, exists, false, func, or_, select, true

from pytest_wec.state._models import (
    ACCOUNTS,
    AUTHORIZATIONS,
    CERTIFICATES,
    ORDERS,
    SHARES,
)
from pytest_wec.state._values import (
    Account,
    AccountStatus,
    Authorization,
    AuthorizationStatus,
    Certificate,
    Order,
    OrderStatus,
)

__all__ = [
    "ACC",
    "AUTH",
    "CERT",
    "ORD",
    "SHR",
    "account_valid",
    "counts_query",
    "live_share",
    "serial_hex",
    "to_account",
    "to_authorization",
    "to_certificate",
    "to_order",
    "unclaimed",
]

ACC = ACCOUNTS
SHR = SHARES
ORD = ORDERS
AUTH = AUTHORIZATIONS
CERT = CERTIFICATES


def unclaimed(t: Table, now: float) -> ColumnElement[bool]:
    """Not claimed, or the claim lapsed."""
    return or_(t.c.claimed_by.is_(None), t.c.claim_expires < now)


def account_valid(t: Table) -> ColumnElement[bool]:
    """The row's account is valid (not deactivated, revoked or dead)."""
    return t.c.account_valid == true()


def live_share(account_id: Any, now: float) -> ColumnElement[bool]:
    """The account is in shared use by a holder whose share has not lapsed."""
    return exists().where(SHR.c.account_id == account_id, SHR.c.expires >= now)


def serial_hex(serial: str | int) -> str:
    """A serial number as lowercase hex without separators or leading zeros."""
    if isinstance(serial, int):
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "")
    return text.removeprefix("0x").lstrip("0") or "0"


def to_account(row: Row[Any] | Mapping[str, Any]) -> Account:
    """An account from its row, or from the row as a mapping (a
    :class:`~pytest_wec.state._prepared.Prepared` read)."""
    m = row._mapping if isinstance(row, Row) else row
    return Account(
        id=m["id"], directory=m["directory"], url=m["url"], key_pem=m["key_pem"],
        alg=m["alg"], status=AccountStatus(m["status"]), contact=tuple(m["contact"] or ()),
        created=m["created"],
    )


def to_order(row: Row[Any]) -> Order:
    m = row._mapping
    return Order(
        id=m["id"], directory=m["directory"], account_id=m["account_id"], url=m["url"],
        status=OrderStatus(m["status"]), names=tuple(m["names"]), created=m["created"],
    )


def to_authorization(row: Row[Any]) -> Authorization:
    m = row._mapping
    return Authorization(
        id=m["id"], directory=m["directory"], account_id=m["account_id"], url=m["url"],
        identifier_type=m["identifier_type"], identifier_value=m["identifier_value"],
        challenge_type=m["challenge_type"], status=AuthorizationStatus(m["status"]),
        expires=m["expires"],
    )


def to_certificate(row: Row[Any]) -> Certificate:
    m = row._mapping
    return Certificate(
        id=m["id"], directory=m["directory"], account_id=m["account_id"],
        order_url=m["order_url"], pem_chain=m["pem_chain"], key_pem=m["key_pem"],
        serial=m["serial"], names=tuple(m["names"]), not_after=m["not_after"],
        issued=m["issued"], revoked=bool(m["revoked"]), reason=m["reason"],
        renewed=bool(m["renewed"]), replaced_by=m["replaced_by"],
    )


def counts_query(directory: str, now: float) -> Select[Any]:
    """One SELECT of the five :class:`Counts`, each read from one index."""

    def count(t: Table, *where: ColumnElement[bool]) -> Any:
        stmt = select(func.count()).select_from(t).where(t.c.directory == directory, *where)
        return stmt.scalar_subquery()

    return select(
        count(ACC, ACC.c.status == AccountStatus.VALID.value),
        count(AUTH, account_valid(AUTH), AUTH.c.status == AuthorizationStatus.VALID.value,
              AUTH.c.expires > now),
        count(CERT, account_valid(CERT), CERT.c.revoked == false(), CERT.c.not_after > now),
        count(CERT, CERT.c.revoked == true()),
        count(ORD, account_valid(ORD)),
    )
