"""The tables, in SQLAlchemy Core (the ORM is not imported). Every row carries the CA's
directory URL, so one persistent DB serves several CAs and runs.

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

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "ACCOUNTS",
    "AUTHORIZATIONS",
    "CERTIFICATES",
    "META",
    "ORDERS",
    "SCHEMA_VERSION",
    "SHARES",
    "metadata",
]

#: Bumped whenever a table changes; a DB of another version is refused, not migrated.
SCHEMA_VERSION = 1

_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only
_Directory = String(1024).with_variant(String(512), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {
    f"{dialect}_{option}": value for dialect in ("mysql", "mariadb") for option, value in
    (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))}

metadata = MetaData()


def _id() -> Column[int]:
    return Column("id", _Id, primary_key=True, autoincrement=True)


def _account_id() -> Column[int]:
    return Column("account_id", _Id, ForeignKey("wec_accounts.id", ondelete="CASCADE"),
                  nullable=False)


def _claimable() -> list[Column[Any]]:
    return [Column("claimed_by", String(200), nullable=True),
            Column("claim_expires", Double, nullable=True),
            Column("shuffle", Integer, nullable=False)]


def _req(name: str, kind: Any, **kw: Any) -> Column[Any]:
    return Column(name, kind, nullable=False, **kw)


# big text goes last: SQLite reads a row's columns in order, overflow pages too

META = Table(
    "wec_meta", metadata,
    Column("key", String(64), primary_key=True),
    _req("value", String(256)),
    **_MYSQL,
)

ACCOUNTS = Table(
    "wec_accounts", metadata,
    _id(),
    _req("directory", _Directory),
    _req("url", String(2048)),
    _req("alg", String(16)),
    _req("status", String(16)),
    _req("contact", JSON),
    _req("created", Double),
    *_claimable(),
    _req("key_pem", Text),
    Index("ix_wec_accounts_pick", "directory", "status", "shuffle"),
    Index("ix_wec_accounts_holder", "claimed_by"),
    **_MYSQL,
)

SHARES = Table(
    "wec_account_shares", metadata,
    _id(),
    _account_id(),
    _req("holder", String(200)),
    _req("expires", Double),
    Index("ix_wec_account_shares_account", "account_id", "expires"),
    Index("ix_wec_account_shares_holder", "holder"),
    **_MYSQL,
)

ORDERS = Table(
    "wec_orders", metadata,
    _id(),
    _req("directory", _Directory),
    _account_id(),
    _req("url", String(2048)),
    _req("account_valid", Boolean),
    _req("status", String(16)),
    _req("names", JSON),
    _req("created", Double),
    Index("ix_wec_orders_count", "directory", "account_valid"),
    Index("ix_wec_orders_account", "account_id"),
    **_MYSQL,
)

AUTHORIZATIONS = Table(
    "wec_authorizations", metadata,
    _id(),
    _req("directory", _Directory),
    _account_id(),
    _req("account_valid", Boolean),
    _req("url", String(2048)),
    _req("identifier_type", String(16)),
    _req("identifier_value", String(512)),
    Column("challenge_type", String(32), nullable=True),
    _req("status", String(16)),
    _req("expires", Double),
    *_claimable(),
    Index(  # expires last: counts read only this index
        "ix_wec_authorizations_pick", "directory", "account_valid", "status", "shuffle",
        "expires",
    ),
    Index("ix_wec_authorizations_holder", "claimed_by"),
    Index("ix_wec_authorizations_account", "account_id"),
    **_MYSQL,
)

CERTIFICATES = Table(
    "wec_certificates", metadata,
    _id(),
    _req("directory", _Directory),
    _account_id(),
    _req("account_valid", Boolean),
    _req("order_url", String(2048)),
    _req("serial", String(64)),
    _req("names", JSON),
    _req("not_after", Double),
    _req("issued", Double),
    _req("revoked", Boolean, default=False),
    Column("reason", Integer, nullable=True),
    _req("renewed", Boolean, default=False),
    Column("replaced_by", _Id, ForeignKey("wec_certificates.id", ondelete="SET NULL"),
           nullable=True),
    *_claimable(),
    _req("pem_chain", Text),
    _req("key_pem", Text),
    Index(  # not_after last: counts read only this index
        "ix_wec_certificates_pick", "directory", "account_valid", "revoked", "shuffle",
        "not_after",
    ),
    Index("ix_wec_certificates_holder", "claimed_by"),
    Index("ix_wec_certificates_account", "account_id"),
    Index("ix_wec_certificates_serial", "serial"),
    **_MYSQL,
)
