"""The tables (SQLAlchemy 2 declarative). Every row carries the CA's directory URL, so one
persistent DB serves several CAs and runs.

Claimable rows (accounts, authorizations, certificates) have:

``claimed_by``
    the holder (a worker and chain id) that has the row to itself, or NULL;
``claim_expires``
    epoch seconds after which the claim lapses, so a holder that died frees its rows;
``shuffle``
    a random number fixed at insert; claims walk the ``(directory, ..., shuffle)`` index
    from a random point, so concurrent claimers spread over the free rows instead of all
    fighting over the first one.

Orders, authorizations and certificates copy their account's validity into
``account_valid`` (kept in step by the store whenever an account's status changes), so that
claims and counts read one table through one index and never depend on a join plan.

Accounts can also be held in shared use: one ``wec_account_shares`` row per holder and
account, with its own expiry. A live share keeps exclusive claimers (key rollover,
deactivation) away from the account while chains sign requests with it.

On MySQL/MariaDB every table is InnoDB (row locks, ``SKIP LOCKED``), utf8mb4 with a binary
collation, so that URLs and holders compare exactly as on SQLite and PostgreSQL (the default
collation ignores case). ``directory`` is VARCHAR(512) there: InnoDB keys are at most 3072
bytes, and the pick indexes lead with it (4 bytes a character).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SCHEMA_VERSION",
    "AccountRow",
    "AccountShareRow",
    "AuthorizationRow",
    "Base",
    "CertificateRow",
    "MetaRow",
    "OrderRow",
]

#: Bumped whenever a table changes; a DB of another version is refused, not migrated.
SCHEMA_VERSION = 1

_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only
_Directory = String(1024).with_variant(String(512), "mysql", "mariadb")
_MYSQL = {f"{dialect}_{option}": value for dialect in ("mysql", "mariadb") for option, value in
          (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))}
_LAST = 100  # big text goes last: SQLite reads a row's columns in order, overflow pages too


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "wec_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))

    __table_args__ = (_MYSQL,)


class _Claimable:
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    claim_expires: Mapped[float | None] = mapped_column(Double, default=None)
    shuffle: Mapped[int] = mapped_column(Integer)


class AccountRow(_Claimable, Base):
    __tablename__ = "wec_accounts"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    directory: Mapped[str] = mapped_column(_Directory)
    url: Mapped[str] = mapped_column(String(2048))
    key_pem: Mapped[str] = mapped_column(Text, sort_order=_LAST)
    alg: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    contact: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        Index("ix_wec_accounts_pick", "directory", "status", "shuffle"),
        Index("ix_wec_accounts_holder", "claimed_by"),
        _MYSQL,
    )


class AccountShareRow(Base):
    __tablename__ = "wec_account_shares"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("wec_accounts.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(200))
    expires: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        Index("ix_wec_account_shares_account", "account_id", "expires"),
        Index("ix_wec_account_shares_holder", "holder"),
        _MYSQL,
    )


class OrderRow(Base):
    __tablename__ = "wec_orders"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    directory: Mapped[str] = mapped_column(_Directory)
    account_id: Mapped[int] = mapped_column(ForeignKey("wec_accounts.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    account_valid: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    names: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        Index("ix_wec_orders_count", "directory", "account_valid"),
        Index("ix_wec_orders_account", "account_id"),
        _MYSQL,
    )


class AuthorizationRow(_Claimable, Base):
    __tablename__ = "wec_authorizations"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    directory: Mapped[str] = mapped_column(_Directory)
    account_id: Mapped[int] = mapped_column(ForeignKey("wec_accounts.id", ondelete="CASCADE"))
    account_valid: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str] = mapped_column(String(2048))
    identifier_type: Mapped[str] = mapped_column(String(16))
    identifier_value: Mapped[str] = mapped_column(String(512))
    challenge_type: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[str] = mapped_column(String(16))
    expires: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        Index(  # expires last: counts read only this index
            "ix_wec_authorizations_pick", "directory", "account_valid", "status", "shuffle",
            "expires",
        ),
        Index("ix_wec_authorizations_holder", "claimed_by"),
        Index("ix_wec_authorizations_account", "account_id"),
        _MYSQL,
    )


class CertificateRow(_Claimable, Base):
    __tablename__ = "wec_certificates"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    directory: Mapped[str] = mapped_column(_Directory)
    account_id: Mapped[int] = mapped_column(ForeignKey("wec_accounts.id", ondelete="CASCADE"))
    account_valid: Mapped[bool] = mapped_column(Boolean)
    order_url: Mapped[str] = mapped_column(String(2048))
    pem_chain: Mapped[str] = mapped_column(Text, sort_order=_LAST)
    key_pem: Mapped[str] = mapped_column(Text, sort_order=_LAST)
    serial: Mapped[str] = mapped_column(String(64))
    names: Mapped[list[str]] = mapped_column(JSON)
    not_after: Mapped[float] = mapped_column(Double)
    issued: Mapped[float] = mapped_column(Double)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[int | None] = mapped_column(Integer, default=None)
    renewed: Mapped[bool] = mapped_column(Boolean, default=False)
    replaced_by: Mapped[int | None] = mapped_column(
        ForeignKey("wec_certificates.id", ondelete="SET NULL"), default=None
    )

    __table_args__ = (
        Index(  # not_after last: counts read only this index
            "ix_wec_certificates_pick", "directory", "account_valid", "revoked", "shuffle",
            "not_after",
        ),
        Index("ix_wec_certificates_holder", "claimed_by"),
        Index("ix_wec_certificates_account", "account_id"),
        Index("ix_wec_certificates_serial", "serial"),
        _MYSQL,
    )
