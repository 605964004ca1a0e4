"""Accounts in the state DB: added, claimed (exclusive or shared), picked, read, and their
status and key updated; an account's validity is copied into its orders, authorizations and
certificates (part of :class:`~pytest_wec.state._sql.SqlStateStore`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import bindparam, insert, or_, select, true, update
from sqlalchemy.engine import Connection

from pytest_wec.state._claims import claim, pick
from pytest_wec.state._rows import (
    ACC,
    AUTH,
    CERT,
    ORD,
    SHR,
    live_share,
    to_account,
    unclaimed,
)
from pytest_wec.state._sqlbase import SqlBase
from pytest_wec.state._values import Account, AccountStatus, contact_list, pem_text

__all__ = ["AccountRows"]

log = logging.getLogger(__name__)

_DEPENDENT = (ORD, AUTH, CERT)  # rows that copy their account's validity
_PICK_ACCOUNT = tuple(
    select(ACC).where(
        ACC.c.directory == bindparam("directory"),
        ACC.c.status == AccountStatus.VALID.value,
        or_(ACC.c.claimed_by.is_(None), ACC.c.claim_expires < bindparam("now")),
        around,
    ).order_by(ACC.c.shuffle).limit(1)
    for around in (ACC.c.shuffle >= bindparam("pivot"), ACC.c.shuffle < bindparam("pivot"))
)


class AccountRows(SqlBase):
    """The account calls of :class:`~pytest_wec.state._sql.SqlStateStore`."""

    def add_account(
        self, directory: str, url: str, key_pem: str | bytes, alg: str = "ES256", *,
        contact: str | Iterable[str] = (), status: AccountStatus | str = AccountStatus.VALID,
    ) -> int:
        return self._insert(ACC, {
            "directory": directory, "url": url, "key_pem": pem_text(key_pem), "alg": alg,
            "status": AccountStatus(status).value, "contact": contact_list(contact),
            "created": self._clock(), "shuffle": self._shuffle(),
        })

    def claim_account(
        self, directory: str, holder: str, ttl: float, *, exclusive: bool = True
    ) -> Account | None:
        def tx(conn: Connection) -> Account | None:
            now = self._clock()
            where = [ACC.c.directory == directory, ACC.c.status == AccountStatus.VALID.value]
            if exclusive:
                free = [*where, ~live_share(ACC.c.id, now)]
                row = claim(self._db, conn, ACC, free, holder, ttl, now)
                return None if row is None else to_account(row)
            row = pick(self._db, conn, ACC, [*where, unclaimed(ACC, now)], "share")
            if row is None:
                return None
            conn.execute(insert(SHR).values(account_id=row.id, holder=holder, expires=now + ttl))
            return to_account(row)

        return self._db.run(tx)

    def pick_account(self, directory: str) -> Account | None:
        params = {"directory": directory, "now": self._clock(),
                  "pivot": self._rng.getrandbits(31)}
        fast = self._fast_picks
        if fast is None and self._db.prepares:
            fast = self._fast_picks = [
                p for i, stmt in enumerate(_PICK_ACCOUNT)
                if (p := self._db.prepared(("pick_account", i), stmt)) is not None]
        if fast:  # SQLite: each statement on its own snapshot, as pick() reads
            found = self._db.first_row(fast, params)
            return None if found is None else to_account(found)

        def tx(conn: Connection) -> Account | None:
            for stmt in _PICK_ACCOUNT:  # a random start in the shuffle index, as pick() does
                row = conn.execute(stmt, params).first()
                if row is not None:
                    return to_account(row)
            return None

        return self._db.run(tx, write=False)

    def get_account(self, account_id: int) -> Account | None:
        row = self._get(ACC, account_id)
        return None if row is None else to_account(row)

    def mark_account_status(self, account_id: int, status: AccountStatus | str) -> bool:
        value = AccountStatus(status).value
        valid = value == AccountStatus.VALID.value

        def tx(conn: Connection) -> bool:
            found = conn.execute(
                update(ACC).where(ACC.c.id == account_id).values(status=value)
            ).rowcount == 1
            for t in _DEPENDENT:
                conn.execute(
                    update(t).where(t.c.account_id == account_id, t.c.account_valid != valid)
                    .values(account_valid=valid)
                )
            return found

        return self._db.run(tx)

    def update_account_key(self, account_id: int, key_pem: str | bytes, alg: str) -> bool:
        return self._update(ACC, account_id, {"key_pem": pem_text(key_pem), "alg": alg})

    def mark_directory_dead(self, directory: str) -> int:
        def tx(conn: Connection) -> int:
            dead = AccountStatus.DEAD.value
            marked = conn.execute(
                update(ACC).where(ACC.c.directory == directory, ACC.c.status != dead)
                .values(status=dead)
            ).rowcount
            for t in _DEPENDENT:
                conn.execute(
                    update(t).where(t.c.directory == directory, t.c.account_valid == true())
                    .values(account_valid=False)
                )
            return int(marked)

        marked = self._db.run(tx)
        log.info("state DB: %d accounts of %s marked dead", marked, directory)
        return marked
