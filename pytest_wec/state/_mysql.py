"""MySQL and MariaDB under the store: the engine (PyMySQL), the server checks, the schema
lock and the errors worth retrying.

Claims need ``SELECT ... FOR UPDATE SKIP LOCKED`` (MariaDB 10.6, MySQL 8.0.1) and InnoDB's
row locks; transactions run at READ COMMITTED, as on PostgreSQL (REPEATABLE READ, MySQL's
default, would read a share committed after the transaction's first read from a stale
snapshot, and takes gap locks that make deadlocks likelier). Sessions are strict
(``STRICT_ALL_TABLES``), so a value too long for its column is an error, not cut short, and
``NO_ENGINE_SUBSTITUTION``, so the tables are InnoDB or not created at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from pytest_wec.state._exceptions import StateSchemaError, StateUnavailableError
from pytest_wec.state._url import Target

__all__ = [
    "CONNECT_ARGS",
    "ENGINE_ARGS",
    "MARIADB_MIN",
    "MYSQL_MIN",
    "RETRY_ERRORS",
    "check_innodb",
    "check_server",
    "schema_lock",
    "server_problem",
]

#: The oldest servers with ``SKIP LOCKED``.
MARIADB_MIN = (10, 6)
MYSQL_MIN = (8, 0, 1)
#: MySQL error codes retried like PostgreSQL's deadlocks: ER_LOCK_DEADLOCK (the server has
#: rolled back the whole transaction, savepoints included).
RETRY_ERRORS = {1213}
_SQL_MODE = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
_SCHEMA_LOCK_WAIT = 60  # seconds a process waits for another one creating the tables


def _version(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


#: What a MySQL/MariaDB engine adds to the pooled one (:func:`~._engine` builds it): strict
#: SQL mode, READ COMMITTED for the claims, connections recycled under the server's
#: wait_timeout, which drops idle ones.
ENGINE_ARGS: dict[str, Any] = {"pool_recycle": 3600, "isolation_level": "READ COMMITTED"}
CONNECT_ARGS: dict[str, Any] = {"init_command": _SQL_MODE}


def server_problem(is_mariadb: bool, version: tuple[int, ...]) -> str | None:
    """Why a server of this kind and version cannot hold the state DB, or None."""
    name, needed = ("MariaDB", MARIADB_MIN) if is_mariadb else ("MySQL", MYSQL_MIN)
    if tuple(version) >= needed:
        return None
    return (
        f"{name} {_version(version)} has no SELECT ... FOR UPDATE SKIP LOCKED, which atomic "
        f"claims need; use MariaDB {_version(MARIADB_MIN)} or newer, or MySQL "
        f"{_version(MYSQL_MIN)} or newer"
    )


def check_server(conn: Connection, target: Target) -> None:
    """:class:`StateUnavailableError` when the server is too old for the claims."""
    dialect: Any = conn.dialect
    problem = server_problem(bool(dialect.is_mariadb), tuple(dialect.server_version_info))
    if problem is not None:
        raise StateUnavailableError(f"state DB {target.shown}: {problem}")


@contextmanager
def schema_lock(conn: Connection, target: Target) -> Iterator[None]:
    """Hold a named lock of the server while the tables are created: MySQL's DDL is not
    transactional, and concurrent ``CREATE TABLE`` from several workers races. The lock is
    the session's (*conn*'s), so it outlasts the implicit commits of the DDL."""
    name = f"wec_schema:{target.url.database}"[:64]
    got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                       {"name": name, "wait": _SCHEMA_LOCK_WAIT}).scalar()
    if got != 1:
        raise StateUnavailableError(
            f"state DB {target.shown}: another process held the schema lock {name!r} for "
            f"{_SCHEMA_LOCK_WAIT} s"
        )
    try:
        yield
    finally:
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


_ENGINES = text(
    "SELECT table_name, engine FROM information_schema.tables "
    "WHERE table_schema = DATABASE() AND table_name IN :names"
).bindparams(bindparam("names", expanding=True))


def check_innodb(conn: Connection, target: Target, tables: list[str]) -> None:
    """:class:`StateSchemaError` when a wec table is not InnoDB (MyISAM has no row locks, so
    claims would not be atomic)."""
    for name, engine in conn.execute(_ENGINES, {"names": tables}):
        if str(engine).lower() != "innodb":
            raise StateSchemaError(
                f"state DB {target.shown}: table {name} uses the {engine} engine; claims "
                "need InnoDB (give a new database, or ALTER TABLE ... ENGINE=InnoDB)"
            )
