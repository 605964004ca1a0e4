"""SqlStateStore: the :class:`~pytest_wec.state.StateStore` on SQLite or PostgreSQL.

Claims are made by :mod:`pytest_wec.state._claims`.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Row,
    Table,
    bindparam,
    delete,
    false,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection

from pytest_wec.state._claims import claim, pick
from pytest_wec.state._engine import Database
from pytest_wec.state._exceptions import StateError
from pytest_wec.state._rows import (
    ACC,
    AUTH,
    CERT,
    ORD,
    SHR,
    account_valid,
    counts_query,
    live_share,
    serial_hex,
    to_account,
    to_authorization,
    to_certificate,
    to_order,
    unclaimed,
)
from pytest_wec.state._url import resolve_target
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
    contact_list,
    epoch,
    pem_text,
)

__all__ = ["SqlStateStore"]

log = logging.getLogger(__name__)

_CLAIMABLE = {Kind.ACCOUNT: ACC, Kind.AUTHORIZATION: AUTH, Kind.CERTIFICATE: CERT}
_DEPENDENT = (ORD, AUTH, CERT)  # rows that copy their account's validity

# The statements every chain runs, built once: building one with literal values and its
# cache key costs several times what SQLite spends executing it (docs/performance.md).
_INSERT = {t.name: insert(t).returning(t.c.id) for t in (ACC, ORD, AUTH, CERT)}
_ACCOUNT_STATUS = select(ACC.c.status).where(ACC.c.id == bindparam("account_id"))
_ACCOUNT_STATUS_SHARED = _ACCOUNT_STATUS.with_for_update(read=True)
_PICK_ACCOUNT = tuple(
    select(ACC).where(
        ACC.c.directory == bindparam("directory"),
        ACC.c.status == AccountStatus.VALID.value,
        or_(ACC.c.claimed_by.is_(None), ACC.c.claim_expires < bindparam("now")),
        around,
    ).order_by(ACC.c.shuffle).limit(1)
    for around in (ACC.c.shuffle >= bindparam("pivot"), ACC.c.shuffle < bindparam("pivot"))
)


class SqlStateStore:
    """The state DB behind a SQLAlchemy engine; thread-safe, one transaction per call.

    *url*: a SQLite file path or URL, or a PostgreSQL URL (see :func:`make_store`).
    *create*: create the file and tables when missing (otherwise :class:`StateSchemaError`).
    *pool_size*: connections kept open; by default as many as asyncio's default thread pool
    has threads. *clock*: epoch seconds, for claims and expiry.
    Raises :class:`StateURLError` for a bad URL and :class:`StateUnavailableError` when the
    DB cannot be reached, both naming the URL with its password masked.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        create: bool = True,
        pool_size: int | None = None,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = Database(
            resolve_target(url), create=create, pool_size=pool_size,
            connect_timeout=connect_timeout,
        )
        self._clock = clock
        self._rng = random.Random()
        self._inserted = {t.name: itertools.count(1) for t in (ACC, ORD, AUTH, CERT)}

    @property
    def url(self) -> str:
        """The DB's URL or file path, password masked."""
        return self._db.target.shown

    @property
    def is_postgres(self) -> bool:
        return self._db.is_postgres

    def __repr__(self) -> str:
        return f"SqlStateStore({self.url!r})"

    def __enter__(self) -> SqlStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Run *calls* (each making calls of this store) in one transaction; see
        :meth:`pytest_wec.state._engine.Database.run_batch`."""
        return self._db.run_batch(calls)

    # -- adding rows -----------------------------------------------------------------------

    def _insert(self, t: Table, values: dict[str, Any]) -> int:
        if t is not ACC and not isinstance(values["account_id"], int):
            raise ValueError(
                f"{t.name}: account_id must be the id of an account in the state DB "
                f"(from add_account or a claim), got {values['account_id']!r}"
            )

        def tx(conn: Connection) -> int:
            if t is not ACC:  # copy the account's validity, read under a share lock
                stmt = _ACCOUNT_STATUS_SHARED if self._db.is_postgres else _ACCOUNT_STATUS
                status = conn.execute(stmt, {"account_id": values["account_id"]}).scalar()
                values["account_valid"] = status == AccountStatus.VALID.value
            return int(conn.execute(_INSERT[t.name], values).scalar_one())

        row_id = self._db.run(tx)
        n = next(self._inserted[t.name])
        if self._db.is_postgres and n >= 64 and n & (n - 1) == 0:
            self._analyze(t)
        return row_id

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

    def add_account(
        self, directory: str, url: str, key_pem: str | bytes, alg: str = "ES256", *,
        contact: str | Iterable[str] = (), status: AccountStatus | str = AccountStatus.VALID,
    ) -> int:
        return self._insert(ACC, {
            "directory": directory, "url": url, "key_pem": pem_text(key_pem), "alg": alg,
            "status": AccountStatus(status).value, "contact": contact_list(contact),
            "created": self._clock(), "shuffle": self._shuffle(),
        })

    def add_order(
        self, directory: str, account_id: int, url: str,
        status: OrderStatus | str = OrderStatus.PENDING, names: Iterable[str] = (),
    ) -> int:
        return self._insert(ORD, {
            "directory": directory, "account_id": account_id, "url": url,
            "status": OrderStatus(status).value, "names": list(names), "created": self._clock(),
        })

    def add_authorization(
        self, directory: str, account_id: int, url: str, identifier_type: str,
        identifier_value: str, challenge_type: str | None = None,
        status: AuthorizationStatus | str = AuthorizationStatus.VALID, *, expires: Timestamp,
    ) -> int:
        return self._insert(AUTH, {
            "directory": directory, "account_id": account_id, "url": url,
            "identifier_type": identifier_type, "identifier_value": identifier_value,
            "challenge_type": challenge_type, "status": AuthorizationStatus(status).value,
            "expires": epoch(expires), "shuffle": self._shuffle(),
        })

    def add_certificate(
        self, directory: str, account_id: int, order_url: str, pem_chain: str | bytes,
        key_pem: str | bytes, serial: str | int, names: Iterable[str], not_after: Timestamp,
        issued: Timestamp | None = None,
    ) -> int:
        return self._insert(CERT, {
            "directory": directory, "account_id": account_id, "order_url": order_url,
            "pem_chain": pem_text(pem_chain), "key_pem": pem_text(key_pem),
            "serial": serial_hex(serial), "names": list(names), "not_after": epoch(not_after),
            "issued": self._clock() if issued is None else epoch(issued),
            "revoked": False, "renewed": False, "shuffle": self._shuffle(),
        })

    # -- taking rows -----------------------------------------------------------------------

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
        def tx(conn: Connection) -> Account | None:
            params = {"directory": directory, "now": self._clock(),
                      "pivot": self._rng.getrandbits(31)}
            for stmt in _PICK_ACCOUNT:  # a random start in the shuffle index, as pick() does
                row = conn.execute(stmt, params).first()
                if row is not None:
                    return to_account(row)
            return None

        return self._db.run(tx, write=False)

    def _get(self, t: Table, row_id: int) -> Row[Any] | None:
        def tx(conn: Connection) -> Row[Any] | None:
            return conn.execute(select(t).where(t.c.id == row_id)).first()

        return self._db.run(tx, write=False)

    def get_account(self, account_id: int) -> Account | None:
        row = self._get(ACC, account_id)
        return None if row is None else to_account(row)

    def get_order(self, order_id: int) -> Order | None:
        row = self._get(ORD, order_id)
        return None if row is None else to_order(row)

    def get_authorization(self, authz_id: int) -> Authorization | None:
        row = self._get(AUTH, authz_id)
        return None if row is None else to_authorization(row)

    def get_certificate(self, cert_id: int) -> Certificate | None:
        row = self._get(CERT, cert_id)
        return None if row is None else to_certificate(row)

    def claim_authorization(
        self, directory: str, holder: str, ttl: float, *, account_id: int | None = None,
        challenge_type: str | None = None,
    ) -> Authorization | None:
        def tx(conn: Connection) -> Authorization | None:
            now = self._clock()
            where = [AUTH.c.directory == directory,
                     AUTH.c.status == AuthorizationStatus.VALID.value,
                     AUTH.c.expires > now, account_valid(AUTH)]
            if account_id is not None:
                where.append(AUTH.c.account_id == account_id)
            if challenge_type is not None:
                where.append(AUTH.c.challenge_type == challenge_type)
            row = claim(self._db, conn, AUTH, where, holder, ttl, now)
            return None if row is None else to_authorization(row)

        return self._db.run(tx)

    def claim_certificate(
        self, directory: str, holder: str, ttl: float, *, unrevoked: bool = True,
        not_renewed: bool = False, unexpired: bool = True,
    ) -> Certificate | None:
        def tx(conn: Connection) -> Certificate | None:
            now = self._clock()
            where = [CERT.c.directory == directory, account_valid(CERT)]
            if unrevoked:
                where.append(CERT.c.revoked == false())
            if not_renewed:
                where.append(CERT.c.renewed == false())
            if unexpired:
                where.append(CERT.c.not_after > now)
            row = claim(self._db, conn, CERT, where, holder, ttl, now)
            return None if row is None else to_certificate(row)

        return self._db.run(tx)

    def claim_certificate_id(self, cert_id: int, holder: str, ttl: float) -> Certificate | None:
        def tx(conn: Connection) -> Certificate | None:
            row = claim(self._db, conn, CERT, [CERT.c.id == cert_id], holder, ttl, self._clock())
            return None if row is None else to_certificate(row)

        return self._db.run(tx)

    def release(self, kind: Kind | str, row_id: int, holder: str) -> bool:
        t = _CLAIMABLE[Kind(kind)]

        def tx(conn: Connection) -> bool:
            n = conn.execute(
                update(t).where(t.c.id == row_id, t.c.claimed_by == holder)
                .values(claimed_by=None, claim_expires=None)
            ).rowcount
            if t is ACC:
                n += conn.execute(
                    delete(SHR).where(SHR.c.account_id == row_id, SHR.c.holder == holder)
                ).rowcount
            return n > 0

        return self._db.run(tx)

    def release_all(self, holder: str) -> int:
        def tx(conn: Connection) -> int:
            n = conn.execute(delete(SHR).where(SHR.c.holder == holder)).rowcount
            for t in _CLAIMABLE.values():
                n += conn.execute(
                    update(t).where(t.c.claimed_by == holder)
                    .values(claimed_by=None, claim_expires=None)
                ).rowcount
            return n

        return self._db.run(tx)

    # -- status updates --------------------------------------------------------------------

    def _update(self, t: Table, row_id: int, values: dict[str, Any]) -> bool:
        def tx(conn: Connection) -> bool:
            return conn.execute(update(t).where(t.c.id == row_id).values(**values)).rowcount == 1

        return self._db.run(tx)

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

    def mark_order_status(self, order_id: int, status: OrderStatus | str) -> bool:
        return self._update(ORD, order_id, {"status": OrderStatus(status).value})

    def mark_authorization_status(
        self, authz_id: int, status: AuthorizationStatus | str
    ) -> bool:
        return self._update(AUTH, authz_id, {"status": AuthorizationStatus(status).value})

    def mark_certificate_revoked(self, cert_id: int, reason: int | None = None) -> bool:
        return self._update(CERT, cert_id, {"revoked": True, "reason": reason})

    def mark_certificate_renewed(self, cert_id: int, replaced_by: int | None = None) -> bool:
        return self._update(CERT, cert_id, {"renewed": True, "replaced_by": replaced_by})

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

    # -- the picker's view -----------------------------------------------------------------

    def counts(self, directory: str) -> Counts:
        def tx(conn: Connection) -> Counts:
            row = conn.execute(counts_query(directory, self._clock())).one()
            return Counts(*(int(v) for v in row))

        return self._db.run(tx, write=False)
