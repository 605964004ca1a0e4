"""Picking and claiming one row, atomically across threads, processes and machines.

How a claim stays atomic:

PostgreSQL
    one transaction: ``SELECT ... ORDER BY shuffle LIMIT 1 FOR UPDATE SKIP LOCKED`` picks a
    free row no other transaction is claiming right now, then ``UPDATE`` marks it. Shared
    account use locks ``FOR SHARE SKIP LOCKED`` (sharers do not block each other) and
    inserts a share row; an exclusive claimer re-checks for shares once it holds the row
    lock, so a share committed meanwhile is never missed.
MySQL and MariaDB (InnoDB, READ COMMITTED)
    the same, but the free row is found in two steps: a page of candidates by a plain
    read, then the first of them still free and unlocked, locked by its primary key with
    ``FOR UPDATE SKIP LOCKED`` (InnoDB would otherwise lock every row a sorted read reads).
SQLite
    writes are serialised by the database lock (``BEGIN IMMEDIATE``, ``busy_timeout``), so
    the same pick-then-conditional-UPDATE cannot interleave with another writer; the
    UPDATE's rowcount is checked all the same.

The pick starts at a random point of the ``(directory, ..., shuffle)`` index, so
concurrent claimers spread over the free rows instead of queueing for the first one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, Table, delete, select, update
from sqlalchemy.engine import Connection

from pytest_wec.state._engine import Database
from pytest_wec.state._rows import ACC, SHR, live_share, unclaimed

__all__ = ["Lock", "claim", "pick"]

log = logging.getLogger(__name__)

_TRIES = 5
_PAGE = 16  # MySQL: candidate rows read per locking read
_rng = random.Random()

#: How ``pick`` locks the row on PostgreSQL and MySQL: for an update, for shared use, or not at all.
Lock = Literal["update", "share"] | None


def pick(
    db: Database, conn: Connection, t: Table, where: Sequence[ColumnElement[bool]], lock: Lock
) -> Row[Any] | None:
    """A random row of *t* matching *where*, skipping rows another transaction has locked."""
    pivot = _rng.getrandbits(31)
    for around in (t.c.shuffle >= pivot, t.c.shuffle < pivot):
        if lock is not None and db.is_mysql:
            row = _lock_one(conn, t, [*where, around], lock)
        else:
            stmt = select(t).where(*where, around).order_by(t.c.shuffle).limit(1)
            if lock is not None and db.locks_rows:
                stmt = stmt.with_for_update(read=lock == "share", skip_locked=True, of=t)
            row = conn.execute(stmt).first()
        if row is not None:
            return row
    return None


def _lock_one(
    conn: Connection, t: Table, where: Sequence[ColumnElement[bool]], lock: Lock
) -> Row[Any] | None:
    """MySQL: the first row by ``shuffle`` matching *where* that no other transaction has
    locked, locked. InnoDB locks each row a locking read reads before it sorts, so where no
    index gives the order (a filesort) ``ORDER BY shuffle LIMIT 1 FOR UPDATE`` would lock
    every matching row and keep concurrent claimers away from all of them. Candidates are
    read without locks instead, a page at a time, and the first free one of them is locked
    by its primary key (one row locked)."""
    after: list[ColumnElement[bool]] = []
    while True:
        page = conn.execute(
            select(t.c.id, t.c.shuffle).where(*where, *after).order_by(t.c.shuffle)
            .limit(_PAGE)
        ).all()
        if not page:
            return None
        stmt = (select(t).where(t.c.id.in_([r.id for r in page]), *where).limit(1)
                .with_for_update(read=lock == "share", skip_locked=True))
        row = conn.execute(stmt).first()
        if row is not None or len(page) < _PAGE:
            return row
        after = [t.c.shuffle > page[-1].shuffle]


def claim(
    db: Database, conn: Connection, t: Table, where: Sequence[ColumnElement[bool]],
    holder: str, ttl: float, now: float,
) -> Row[Any] | None:
    """Claim a random free row of *t* matching *where* for *holder* until ``now + ttl``.

    For accounts, *where* must exclude accounts in shared use; the share check is repeated
    under the row lock on PostgreSQL and MySQL, and lapsed shares of the claimed account are
    removed.
    """
    free = unclaimed(t, now)
    for _ in range(_TRIES):
        row = pick(db, conn, t, [*where, free], "update")
        if row is None:
            return None
        if t is ACC:
            if db.locks_rows and conn.execute(select(live_share(row.id, now))).scalar():
                continue  # a share committed after the pick's snapshot
            conn.execute(delete(SHR).where(SHR.c.account_id == row.id, SHR.c.expires < now))
        done = conn.execute(
            update(t).where(t.c.id == row.id, free)
            .values(claimed_by=holder, claim_expires=now + ttl)
        )
        if done.rowcount == 1:
            return row
    log.debug("state DB: gave up claiming from %s after %d tries", t.name, _TRIES)
    return None
