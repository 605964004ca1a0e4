"""Statements the chains run most, executed on SQLite's own connection.

Against the default state DB, a SQLite file, SQLAlchemy's execution of one short statement
(its connection and transaction objects, events, the result's machinery) costs several
times what SQLite spends on it. ``bench/bench_state_db.py`` (docs/performance.md, o): the
pick of an account 146 µs of CPU through SQLAlchemy against 37 prepared, the three rows a
certificate adds 315 µs against 170.
A :class:`Prepared` statement is compiled by SQLAlchemy once, for the engine's dialect, with
its type conversions (JSON, booleans) taken from the same columns; each execution binds the
values and runs the SQL text on the DBAPI connection: inside the transaction of a
SQLAlchemy connection (:meth:`Prepared.run`, the DBAPI connection under it) or on a
connection of the pool on its own (:meth:`Prepared.first_on`, autocommit: one statement, its
own snapshot). PostgreSQL and MySQL keep the SQLAlchemy path: their drivers' round trips
dwarf this cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

__all__ = ["Prepared"]


class Prepared:
    """*stmt* compiled once for *dialect* (for an INSERT, of the columns *keys*); see the
    module's doc. Only for statements whose values are all bound parameters: a column
    default computed in Python would be SQLAlchemy's execution's work, so it is refused."""

    __slots__ = ("_binds", "_dialect", "_results", "sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect,
                 keys: Sequence[str] | None = None) -> None:
        compiled: Any = stmt.compile(dialect=dialect,
                                     column_keys=list(keys) if keys is not None else None)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch",
                                                                 None):
            raise ValueError(f"{stmt}: a column default to compute in Python; give its value")
        if not compiled.positional:
            raise ValueError(f"{dialect.name}: not a positional paramstyle")
        self.sql: str = str(compiled)
        self._dialect = dialect
        #: per ``?``: its key in the values, whether it must be given, its own value, and
        #: the type's conversion (None: the value as it is)
        self._binds: list[tuple[str, bool, Any, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            self._binds.append((bind.key, bool(bind.required), bind.effective_value,
                                bind.type.bind_processor(dialect)))
        columns = getattr(stmt, "selected_columns", None)
        if columns is None:
            columns = getattr(compiled, "returning", None) or ()
        #: the result's columns: (name, the type's conversion)
        self._results: list[tuple[str, Any]] = [
            (col.key, col.type.result_processor(dialect, None)) for col in columns]

    def params(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional parameters for *values*, converted as the columns' types do."""
        out = []
        for key, required, own, convert in self._binds:
            value = values[key] if required else values.get(key, own)
            out.append(value if convert is None else convert(value))
        return out

    def _row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {name: value if convert is None else convert(value)
                for (name, convert), value in zip(self._results, raw, strict=True)}

    def _execute(self, dbapi: Any, values: Mapping[str, Any]) -> Any:
        base = self._dialect.loaded_dbapi.Error
        try:
            return dbapi.execute(self.sql, self.params(values))
        except base as exc:
            # as SQLAlchemy raises it (IntegrityError, OperationalError...), parameters
            # hidden: the callers' retries and translations are the same on both paths
            raise DBAPIError.instance(self.sql, None, exc, base, hide_parameters=True,
                                      dialect=self._dialect) from None

    def run(self, conn: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Execute in *conn*'s transaction; its rows as dicts (none for a plain write)."""
        cursor = self._execute(conn.connection.driver_connection, values)
        try:
            return [self._row(r) for r in cursor.fetchall()] if self._results else []
        finally:
            cursor.close()

    def first_on(self, dbapi: Any, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row on the DBAPI connection *dbapi* (autocommit), or None."""
        cursor = self._execute(dbapi, values)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        return None if raw is None else self._row(raw)
