"""The state DB: accounts, orders, authorizations and certificates, with atomic claims.

Chains build on each other's results: a chain that needs an account or a certificate takes
one from here, and records what it made. Many asyncio tasks in several worker processes
(and machines, through PostgreSQL or MySQL/MariaDB) claim and release rows at once; a claim
never hands one row to two holders, and lapses after its ``ttl`` so the rows of a worker
that died come back. Rows carry the CA's directory URL, so one persistent DB serves several
CAs and runs, and the accounts of an earlier run against the same CA are used again.

    store = make_store(run_dir / "state.db")          # SQLite, WAL, file mode 0600
    store = make_store("postgresql://wec:pw@db/wec")  # several machines, one DB
    store = make_store("mysql://wec:pw@db/wec")       # or MySQL 8 / MariaDB 10.6+
    account = store.claim_account(directory, holder="gw0:17", ttl=300)
    ...
    store.release_all("gw0:17")

Errors (all name the DB by its URL, password masked)::

    WecError                        (pytest_wec.errors)
     └── StateError                 any failure of the state DB
          ├── StateURLError         a URL or path that names no usable DB (also a ConfigError)
          ├── StateUnavailableError the DB cannot be reached, or failed mid-run
          └── StateSchemaError      no wec tables (create=False), or another schema version

Importing this package is cheap; SQLAlchemy loads with the first store.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pytest_wec.state._exceptions import (
    StateError,
    StateSchemaError,
    StateUnavailableError,
    StateURLError,
)
from pytest_wec.state._protocol import StateStore
from pytest_wec.state._queue import StoreQueue
from pytest_wec.state._values import (
    Account,
    AccountStatus,
    Authorization,
    AuthorizationStatus,
    Certificate,
    Counts,
    Kind,
    Order,
    OrderStatus,
    Timestamp,
)

if TYPE_CHECKING:
    from pytest_wec.state._sql import SqlStateStore

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
    "SqlStateStore",
    "StateError",
    "StateSchemaError",
    "StateStore",
    "StateURLError",
    "StateUnavailableError",
    "StoreQueue",
    "Timestamp",
    "make_store",
]


def make_store(
    url_or_path: str | os.PathLike[str], *, create: bool = True, pool_size: int | None = None
) -> SqlStateStore:
    """The store for a ``--wec-state-db`` value.

    A path (or ``sqlite:///path``) is a SQLite file, created 0600 with its directory when
    missing; ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` URLs name a
    PostgreSQL DB reached with psycopg 3; ``mysql://``, ``mariadb://`` (and their
    ``+pymysql`` forms) a MySQL 8 or MariaDB 10.6+ database reached with PyMySQL. Tables
    are created when missing unless ``create=False``.
    """
    from pytest_wec.state._sql import SqlStateStore

    return SqlStateStore(url_or_path, create=create, pool_size=pool_size)


def __getattr__(name: str) -> Any:
    if name == "SqlStateStore":
        from pytest_wec.state._sql import SqlStateStore

        return SqlStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
