"""The plumbing of :class:`~pytest_wec.state._sql.SqlStateStore`'s parts: the
:class:`~pytest_wec.state._engine.Database`, the clock and random source, and adding, reading
and updating one row (one transaction each).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from pytest_wec.state._engine import Database
from pytest_wec.state._exceptions import StateError
from pytest_wec.state._prepared import Prepared
from pytest_wec.state._rows import ACC, AUTH, CERT, ORD
from pytest_wec.state._url import resolve_target
from pytest_wec.state._values import AccountStatus

__all__ = ["SqlBase"]

log = logging.getLogger(__name__)

# The statements every chain runs, built once: building one with literal values and its
# cache key costs several times what SQLite spends executing it (docs/performance.md).
_INSERT = {t.name: insert(t).returning(t.c.id) for t in (ACC, ORD, AUTH, CERT)}
_INSERT_PLAIN = {t.name: insert(t) for t in (ACC, ORD, AUTH, CERT)}  # MySQL: no RETURNING
_ACCOUNT_STATUS = select(ACC.c.status).where(ACC.c.id == bindparam("account_id"))
_ACCOUNT_STATUS_SHARED = _ACCOUNT_STATUS.with_for_update(read=True)


class SqlBase:
    """A state DB connection and the one-row helpers; the arguments are
    :class:`~pytest_wec.state._sql.SqlStateStore`'s."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        create: bool = True,
        pool_size: int | None = None,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        prepared: bool = True,
    ) -> None:
        self._db = Database(
            resolve_target(url), create=create, pool_size=pool_size,
            connect_timeout=connect_timeout, prepared=prepared,
        )
        self._clock = clock
        self._rng = random.Random()
        self._inserted = {t.name: itertools.count(1) for t in (ACC, ORD, AUTH, CERT)}
        self._fast_picks: list[Prepared] | None = None  # SQLite: pick_account's statements

    @property
    def url(self) -> str:
        """The DB's URL or file path, password masked."""
        return self._db.target.shown

    @property
    def is_postgres(self) -> bool:
        return self._db.is_postgres

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB."""
        return self._db.is_mysql

    def close(self) -> None:
        self._db.close()

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Run *calls* (each making calls of this store) in one transaction; see
        :meth:`pytest_wec.state._engine.Database.run_batch`."""
        return self._db.run_batch(calls)

    def _insert(self, t: Table, values: dict[str, Any]) -> int:
        if t is not ACC and not isinstance(values["account_id"], int):
            raise ValueError(
                f"{t.name}: account_id must be the id of an account in the state DB "
                f"(from add_account or a claim), got {values['account_id']!r}"
            )

        prepared = self._db.prepared
        if self._db.prepares and self._db.engine.dialect.insert_returning:
            # SQLite (3.35 on: RETURNING): the statements on its own connection
            keys = [*values, "account_valid"] if t is not ACC else list(values)
            fast_insert = prepared((t.name, *keys), _INSERT[t.name], keys)
            fast_status = prepared("account_status", _ACCOUNT_STATUS)
            assert fast_insert is not None and fast_status is not None

            def fast(conn: Connection) -> int:
                if t is not ACC:
                    found = fast_status.run(conn, values)
                    values["account_valid"] = bool(found) and \
                        found[0]["status"] == AccountStatus.VALID.value
                return int(fast_insert.run(conn, values)[0]["id"])

            row_id = self._db.run(fast)
            self._count_insert(t)
            return row_id

        def tx(conn: Connection) -> int:
            if t is not ACC:  # copy the account's validity, read under a share lock
                stmt = _ACCOUNT_STATUS_SHARED if self._db.locks_rows else _ACCOUNT_STATUS
                status = conn.execute(stmt, {"account_id": values["account_id"]}).scalar()
                values["account_valid"] = status == AccountStatus.VALID.value
            if conn.dialect.insert_returning:
                return int(conn.execute(_INSERT[t.name], values).scalar_one())
            key = conn.execute(_INSERT_PLAIN[t.name], values).inserted_primary_key
            assert key is not None
            return int(key[0])

        row_id = self._db.run(tx)
        self._count_insert(t)
        return row_id

    def _count_insert(self, t: Table) -> None:
        n = next(self._inserted[t.name])
        if self._db.is_postgres and n >= 64 and n & (n - 1) == 0:
            self._analyze(t)

    def _analyze(self, t: Table) -> None:
        """Refresh the planner's statistics while a table grows fast (64, 128, 256... rows
        inserted by this process), long before autovacuum would: without them PostgreSQL
        sorts every free row for each claim instead of walking the index."""
        try:
            self._db.run(lambda conn: conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {t.name}"))
        except StateError as exc:
            log.debug("state DB: ANALYZE %s failed: %s", t.name, exc)

    def _shuffle(self) -> int:
        return self._rng.getrandbits(31)

    def _get(self, t: Table, row_id: int) -> Row[Any] | None:
        def tx(conn: Connection) -> Row[Any] | None:
            return conn.execute(select(t).where(t.c.id == row_id)).first()

        return self._db.run(tx, write=False)

    def _update(self, t: Table, row_id: int, values: dict[str, Any]) -> bool:
        def tx(conn: Connection) -> bool:
            return conn.execute(update(t).where(t.c.id == row_id).values(**values)).rowcount == 1

        return self._db.run(tx)
