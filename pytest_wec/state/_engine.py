"""The engine under the store: connections, short transactions, retries, error translation.

SQLite: WAL, ``busy_timeout`` so that concurrent writers (threads and processes) wait
instead of failing, and writes begin with ``BEGIN IMMEDIATE`` so a transaction that reads
before it writes never meets a stale snapshot. The file is created 0600 (SQLite creates its
``-wal`` and ``-shm`` files with the same mode).

PostgreSQL: psycopg 3, READ COMMITTED, ``pool_pre_ping`` (the server may restart during a
long run); deadlocks and serialisation failures are retried.

MySQL/MariaDB: PyMySQL, READ COMMITTED, ``pool_pre_ping``; the server's version is checked
at open (:mod:`pytest_wec.state._mysql`); deadlocks (error 1213) are retried.

Statement parameters are kept out of error messages and logs (``hide_parameters``): they
include private keys.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, insert, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql import ClauseElement

from pytest_wec.state._exceptions import (
    StateError,
    StateSchemaError,
    StateUnavailableError,
)
from pytest_wec.state._models import META, SCHEMA_VERSION, metadata
from pytest_wec.state._mysql import CONNECT_ARGS as MYSQL_CONNECT_ARGS
from pytest_wec.state._mysql import ENGINE_ARGS as MYSQL_ENGINE_ARGS
from pytest_wec.state._mysql import (
    RETRY_ERRORS,
    check_innodb,
    check_server,
    schema_lock,
)
from pytest_wec.state._prepared import Prepared
from pytest_wec.state._url import Target, mask_url

__all__ = ["Database", "default_pool_size"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 30_000
_RETRIES = 4
_RETRY_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
_SCHEMA_LOCK = 0x77656300  # advisory lock id: schema creation, one process at a time


def default_pool_size() -> int:
    """As many connections as ``asyncio.to_thread`` has threads by default."""
    return min(32, (os.cpu_count() or 1) + 4)


def _create_sqlite_file(target: Target, create: bool) -> None:
    path = target.sqlite_path
    assert path is not None
    if path.exists():
        return
    if not create:
        raise StateSchemaError(f"state DB {target.shown}: no such file (and create=False)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateUnavailableError(
            f"state DB {target.shown}: cannot create its directory: {exc}"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process was first
    except OSError as exc:
        raise StateUnavailableError(f"state DB {target.shown}: cannot create it: {exc}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_engine(target: Target, pool_size: int) -> Engine:
    engine = create_engine(
        target.url,
        pool_size=pool_size,
        max_overflow=pool_size,
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": _BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by sqlite3
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("wec_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


#: A server DB's driver: the module that must be importable, what it is, its extra
_DRIVERS = {"postgresql": ("psycopg", "PostgreSQL needs psycopg 3", "postgres"),
            "mysql": ("pymysql", "MySQL/MariaDB needs PyMySQL", "mysql")}


def _have(module: str) -> bool:
    """Whether the driver *module* can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def _server_engine(target: Target, dialect: str, pool_size: int,
                   connect_timeout: float) -> Engine:
    """A pooled engine for PostgreSQL or MySQL/MariaDB; one clear line when its driver is
    missing."""
    module, words, extra = _DRIVERS[dialect]
    if not _have(module):
        raise StateUnavailableError(
            f"state DB {target.shown}: {words} (pip install 'pytest-wec[{extra}]')")
    if dialect == "mysql":
        connect_args, engine_args = dict(MYSQL_CONNECT_ARGS), dict(MYSQL_ENGINE_ARGS)
    else:
        connect_args, engine_args = {"application_name": "pytest-wec"}, {}
    if "connect_timeout" not in target.url.query:
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
    return create_engine(target.url, pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=True, hide_parameters=True, connect_args=connect_args,
                         **engine_args)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())  # one line
    return mask_url(text) or type(orig).__name__


def _retry_code(exc: DBAPIError) -> str | None:
    """The SQLSTATE (PostgreSQL) or error code (MySQL) of a deadlock or serialisation
    failure, worth running the transaction again for; None for other errors."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRY_SQLSTATES:
        return str(sqlstate)
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in RETRY_ERRORS:
        return f"MySQL error {args[0]}"
    return None


class _GroupAborted(Exception):
    """A deadlock or serialisation failure inside :meth:`Database.run_batch`, or a savepoint
    the server no longer has (MySQL rolls a deadlocked transaction back whole): the group is
    rolled back and its calls run one by one (each with the usual retries)."""


def _each(calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """Each call's ``(True, result)`` or ``(False, exception)``; a group's abort is raised."""
    outcomes: list[tuple[bool, Any]] = []
    for call in calls:
        try:
            outcomes.append((True, call()))
        except _GroupAborted:
            raise
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def _in_savepoint(batch: Connection, fn: Callable[[Connection], T]) -> T:
    """*fn* in a savepoint of a group's transaction; :class:`_GroupAborted` when the group
    cannot go on."""
    savepoint = batch.begin_nested()
    try:
        result = fn(batch)
    except DBAPIError as exc:
        code = _retry_code(exc)
        if code is not None:
            # a deadlock inside a group: the group's other locks are still held, so
            # retrying here could meet it again (and MySQL has rolled the whole transaction
            # back); the group is run call by call
            raise _GroupAborted(code) from None
        _rollback(savepoint)
        raise
    except BaseException:
        _rollback(savepoint)
        raise
    try:
        savepoint.commit()
    except DBAPIError as exc:
        raise _GroupAborted(_reason(exc)) from None
    return result


def _unguarded(batch: Connection, fn: Callable[[Connection], T]) -> T:
    """*fn* in a group's transaction without a savepoint: any error of the database aborts
    the group (:class:`_GroupAborted`), whose calls then run one by one."""
    try:
        return fn(batch)
    except (DBAPIError, SQLAlchemyError) as exc:
        raise _GroupAborted(_reason(exc)) from None


def _rollback(savepoint: Any) -> None:
    try:
        savepoint.rollback()
    except DBAPIError as exc:  # the savepoint is gone with the transaction
        raise _GroupAborted(_reason(exc)) from None


class Database:
    """One engine and its pool; every store call is one :meth:`run` of a short transaction."""

    def __init__(
        self,
        target: Target,
        *,
        create: bool,
        pool_size: int | None = None,
        connect_timeout: float = 10.0,
        prepared: bool = True,
    ) -> None:
        self.target = target
        #: SQLite runs its hot statements prepared (:meth:`prepared`); False: all through
        #: SQLAlchemy's execution (the baseline of ``bench/bench_state_db.py``)
        self.prepares = prepared and target.is_sqlite
        size = pool_size or default_pool_size()
        if target.is_sqlite:
            _create_sqlite_file(target, create)
            self.engine = _sqlite_engine(target, size)
        elif target.is_mysql:
            self.engine = _server_engine(target, "mysql", size, connect_timeout)
        else:
            self.engine = _server_engine(target, "postgresql", size, connect_timeout)
        self.is_postgres = not target.is_sqlite and not target.is_mysql
        self.is_mysql = target.is_mysql
        #: claims lock rows (SKIP LOCKED); SQLite serialises writers instead
        self.locks_rows = not target.is_sqlite
        self._batch = threading.local()  # the connection of run_batch(), per thread
        #: SQLite: the hot statements, compiled once (:meth:`prepared`)
        self._prepared: dict[Any, Prepared] = {}
        # SQLite may answer "database is locked" at once, without waiting its busy
        # timeout, while another process writes (seen when one xdist worker opened the
        # file while the other was already committing groups): try again, for a while
        deadline = time.monotonic() + max(connect_timeout, 1.0)
        while True:
            try:
                self._prepare(create)
                break
            except StateUnavailableError as exc:
                if (target.is_sqlite and "locked" in str(exc)
                        and time.monotonic() < deadline):
                    log.debug("state DB %s: %s; opening again", target.shown, exc)
                    time.sleep(random.uniform(0.05, 0.25))
                    continue
                self.engine.dispose()
                raise StateUnavailableError(f"cannot open {exc}") from None
            except BaseException:
                self.engine.dispose()
                raise
        log.info("state DB %s ready (pool %d)", target.shown, size)

    def _prepare(self, create: bool) -> None:
        if not self.is_mysql:
            self.run(lambda conn: self._setup(conn, create), write=create)
            return
        try:
            with self.engine.connect() as conn:  # the dialect learns the server's version
                check_server(conn, self.target)
                with schema_lock(conn, self.target) if create else contextlib.nullcontext():
                    self.run(lambda other: self._setup(other, create), write=create)
        except DBAPIError as exc:
            raise self._translate(exc) from None
        except SQLAlchemyError as exc:  # e.g. mariadb:// naming a MySQL server
            hint = "; give mysql:// for a MySQL server" if "MariaDB variant" in str(exc) else ""
            raise StateUnavailableError(
                f"state DB {self.target.shown}: {_reason(exc)}{hint}") from None

    def _setup(self, conn: Connection, create: bool) -> None:
        """Create the tables when *create*; check that they are there, of this schema
        version (and InnoDB, on MySQL)."""
        if create:
            if self.is_postgres:  # concurrent CREATE TABLE from several workers races
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            metadata.create_all(conn)
        elif not inspect(conn).has_table(META.name):
            raise StateSchemaError(
                f"state DB {self.target.shown} has no wec tables (and create=False)"
            )
        if self.is_mysql:
            check_innodb(conn, self.target, list(metadata.tables))
        stored = conn.execute(
            select(META.c.value).where(META.c.key == "schema_version")
        ).scalar()
        if stored is None and create:
            conn.execute(insert(META).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if stored != str(SCHEMA_VERSION):
            raise StateSchemaError(
                f"state DB {self.target.shown} has schema version {stored}, this "
                f"pytest-wec uses {SCHEMA_VERSION}; give a new state DB"
            )

    def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run *fn* in one transaction; retry deadlocks; raise :class:`StateError`.

        Inside :meth:`run_batch`, *fn* runs in a savepoint of the batch's transaction.
        """
        batch: Connection | None = getattr(self._batch, "conn", None)
        attempt = 0
        while True:
            attempt += 1
            try:
                if batch is not None:
                    if not getattr(self._batch, "savepoints", True):
                        return _unguarded(batch, fn)
                    return _in_savepoint(batch, fn)
                with self.engine.connect() as conn:
                    if self.target.is_sqlite:
                        conn.execution_options(wec_write=write)
                    with conn.begin():
                        return fn(conn)
            except DBAPIError as exc:
                code = _retry_code(exc)
                if code is not None and attempt < _RETRIES:
                    log.debug("state DB: retrying after %s (attempt %d)", code, attempt)
                    time.sleep(random.uniform(0.001, 0.01) * attempt)
                    continue
                raise self._translate(exc) from None
            except PoolTimeoutError as exc:
                raise StateUnavailableError(
                    f"state DB {self.target.shown}: no free connection in the pool: "
                    f"{_reason(exc)}"
                ) from None
            except SQLAlchemyError as exc:
                raise StateError(f"state DB {self.target.shown}: {_reason(exc)}") from None

    def prepared(self, key: Any, stmt: ClauseElement,
                 keys: Sequence[str] | None = None) -> Prepared | None:
        """SQLite: *stmt* (for an INSERT, of the columns *keys*) as a
        :class:`~pytest_wec.state._prepared.Prepared`, compiled at its first use and kept
        under *key*; None for PostgreSQL and MySQL, which keep SQLAlchemy's execution."""
        if not self.prepares:
            return None
        found = self._prepared.get(key)
        if found is None:
            found = self._prepared[key] = Prepared(stmt, self.engine.dialect, keys)
        return found

    def first_row(self, statements: Sequence[Prepared],
                  values: dict[str, Any]) -> dict[str, Any] | None:
        """SQLite, a read outside any transaction: the first row of the first of
        *statements* that has one, each on its own snapshot, on a connection of the pool;
        None when none has a row."""
        batch: Connection | None = getattr(self._batch, "conn", None)
        try:
            if batch is not None:  # inside run_batch: on its connection, in its transaction
                for stmt in statements:
                    rows = stmt.run(batch, values)
                    if rows:
                        return rows[0]
                return None
            conn = self.engine.raw_connection()
            try:
                for stmt in statements:
                    row = stmt.first_on(conn.driver_connection, values)
                    if row is not None:
                        return row
                return None
            finally:
                conn.close()
        except PoolTimeoutError as exc:
            raise StateUnavailableError(
                f"state DB {self.target.shown}: no free connection in the pool: "
                f"{_reason(exc)}") from None
        except DBAPIError as exc:
            raise self._translate(exc) from None

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Run each of *calls* (functions that make store calls) in one write transaction:
        one commit for the lot (group commit).

        Returns ``(True, result)`` or ``(False, exception)`` per call, in order; a call that
        fails loses only its own writes. The group runs without a savepoint per call (they
        cost as much as the calls): when a store call fails on the database, or the
        transaction itself does (its commit, a deadlock with another process's group),
        nothing of the group is kept and each call runs again alone, in its own
        transaction. A call that fails before it reaches the database (a bad argument)
        fails alone.
        """
        def tx(conn: Connection) -> list[tuple[bool, Any]]:
            self._batch.conn = conn
            self._batch.savepoints = False
            try:
                return _each(calls)
            finally:
                self._batch.conn = None
                self._batch.savepoints = True

        if len(calls) > 1 and getattr(self._batch, "conn", None) is None:
            try:
                return self.run(tx)
            except (StateError, _GroupAborted) as exc:
                log.debug("state DB: batch of %d failed (%s); running them one by one",
                          len(calls), exc)
        return _each(calls)

    def _translate(self, exc: DBAPIError) -> StateError:
        if isinstance(exc, IntegrityError):
            return StateError(f"state DB {self.target.shown} rejected a write: {_reason(exc)}")
        return StateUnavailableError(f"state DB {self.target.shown}: {_reason(exc)}")

    def close(self) -> None:
        self.engine.dispose()
