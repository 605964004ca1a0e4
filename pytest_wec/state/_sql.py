"""SqlStateStore: the :class:`~pytest_wec.state.StateStore` on SQLite, PostgreSQL or
MySQL/MariaDB.

This module holds orders, authorizations and certificates, releasing claims and the
picker's counts; accounts are :mod:`pytest_wec.state._sqlaccounts`, the connection and the
one-row helpers :mod:`pytest_wec.state._sqlbase`. Claims are made by
:mod:`pytest_wec.state._claims`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, false, update
from sqlalchemy.engine import Connection

from pytest_wec.state._claims import claim
from pytest_wec.state._rows import (
    ACC,
    AUTH,
    CERT,
    ORD,
    SHR,
    account_valid,
    counts_query,
    serial_hex,
    to_authorization,
    to_certificate,
    to_order,
)
from pytest_wec.state._sqlaccounts import AccountRows
from pytest_wec.state._values import (
    Authorization,
    AuthorizationStatus,
    Certificate,
    Counts,
    Kind,
    Order,
    OrderStatus,
    Timestamp,
    epoch,
    pem_text,
)

__all__ = ["SqlStateStore"]

_CLAIMABLE = {Kind.ACCOUNT: ACC, Kind.AUTHORIZATION: AUTH, Kind.CERTIFICATE: CERT}


class SqlStateStore(AccountRows):
    """The state DB behind a SQLAlchemy engine; thread-safe, one transaction per call.

    *url*: a SQLite file path or URL, a PostgreSQL or a MySQL/MariaDB URL (see
    :func:`make_store`).
    *create*: create the file and tables when missing (otherwise :class:`StateSchemaError`).
    *pool_size*: connections kept open; by default as many as asyncio's default thread pool
    has threads. *clock*: epoch seconds, for claims and expiry.
    Raises :class:`StateURLError` for a bad URL and :class:`StateUnavailableError` when the
    DB cannot be reached, both naming the URL with its password masked.
    """

    def __repr__(self) -> str:
        return f"SqlStateStore({self.url!r})"

    def __enter__(self) -> SqlStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- adding rows -----------------------------------------------------------------------

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

    # -- the picker's view -----------------------------------------------------------------

    def counts(self, directory: str) -> Counts:
        def tx(conn: Connection) -> Counts:
            row = conn.execute(counts_query(directory, self._clock())).one()
            return Counts(*(int(v) for v in row))

        return self._db.run(tx, write=False)
