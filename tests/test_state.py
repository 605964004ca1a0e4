"""The state DB on SQLite (a file in tmp_path), PostgreSQL and MySQL/MariaDB (a database of
its own).

The PostgreSQL cases create a uniquely named database on 127.0.0.1:5432 as user postgres
and drop it at the end; the MySQL cases one per test on 127.0.0.1:3306 as root (no
password), dropped at its end. Each is skipped when no server answers within 2 s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import queue
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.errors import ConfigError
from pytest_wec.state import (
    AccountStatus,
    AuthorizationStatus,
    Counts,
    Kind,
    SqlStateStore,
    StateError,
    StateSchemaError,
    StateStore,
    StateUnavailableError,
    StateURLError,
    make_store,
)

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
MYSQL_ADMIN: dict[str, Any] = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
DIR_A = "https://ca-a.test/dir"
DIR_B = "https://ca-b.test/dir"
KEY = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHNlY3JldA==\n-----END PRIVATE KEY-----\n"


class Clock:
    """A settable clock for claim expiry."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, connect_timeout=2, autocommit=True)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL reachable on 127.0.0.1:5432 within 2 s: {exc}")
    name = f"wec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_database() -> Iterator[str]:
    """A database of this test's own on the MySQL/MariaDB at 127.0.0.1:3306, dropped after."""
    pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed (.[mysql])")
    try:
        admin = pymysql.connect(**MYSQL_ADMIN, connect_timeout=2, autocommit=True)
    except pymysql.Error as exc:
        pytest.skip(f"no MySQL/MariaDB reachable on 127.0.0.1:3306 as root within 2 s: {exc}")
    name = f"wec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
            problem = _mysql_problem(version)
            if problem:
                pytest.skip(f"the server on 127.0.0.1:3306 is too old: {problem}")
            cur.execute("SET SESSION lock_wait_timeout = 30")  # DROP waits for no leak forever
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def _mysql_problem(version: str) -> str | None:
    from sqlalchemy.dialects.mysql.base import MySQLDialect

    from pytest_wec.state._mysql import server_problem

    dialect = MySQLDialect()
    info = dialect._parse_server_version(version)
    return server_problem(dialect.is_mariadb, info)


def _drop_tables(url: str) -> None:
    from sqlalchemy import create_engine

    from pytest_wec.state._models import metadata

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "run" / "state.db")
        return
    if request.param == "mysql":
        yield request.getfixturevalue("mysql_database")
        return
    url = request.getfixturevalue("pg_database")
    try:
        yield url
    finally:
        _drop_tables(url)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[SqlStateStore]:
    with SqlStateStore(db_url, clock=clock, pool_size=4) as s:
        yield s


def _as_store(store: SqlStateStore) -> StateStore:
    return store  # mypy checks that SqlStateStore satisfies the protocol


def _account(store: SqlStateStore, directory: str = DIR_A, n: int = 1) -> int:
    return store.add_account(directory, f"{directory}/acct/{n}-{uuid.uuid4().hex[:6]}", KEY)


def _cert(store: SqlStateStore, account_id: int, directory: str = DIR_A, **kw: Any) -> int:
    values: dict[str, Any] = {"not_after": time.time() + 86400, **kw}
    return store.add_certificate(
        directory, account_id, f"{directory}/order/1", "CHAIN", KEY, uuid.uuid4().int >> 64,
        ["a.example"], **values,
    )


def _authz(store: SqlStateStore, account_id: int, directory: str = DIR_A, **kw: Any) -> int:
    values: dict[str, Any] = {"expires": time.time() + 3600, **kw}
    return store.add_authorization(
        directory, account_id, f"{directory}/authz/{uuid.uuid4().hex[:6]}", "dns",
        "a.example", values.pop("challenge_type", "http-01"),
        values.pop("status", AuthorizationStatus.VALID), **values,
    )


# -- rows in and out ---------------------------------------------------------------------


def test_add_and_read_back(store: SqlStateStore) -> None:
    assert isinstance(_as_store(store), StateStore)
    acc = store.add_account(DIR_A, "https://a/acct/1", KEY.encode(), "RS256",
                            contact="mailto:a@example.com, mailto:b@example.com")
    order = store.add_order(DIR_A, acc, "https://a/order/1", "ready", ["a.example"])
    authz = store.add_authorization(DIR_A, acc, "https://a/authz/1", "dns", "a.example",
                                    "dns-01", "valid", expires="2099-01-01T00:00:00.123456789Z")
    not_after = datetime(2099, 6, 1, tzinfo=UTC)
    cert = store.add_certificate(DIR_A, acc, "https://a/order/1", b"CHAIN", KEY, "00:AB:cd",
                                 ["a.example", "b.example"], not_after)

    account = store.get_account(acc)
    assert account is not None
    assert (account.url, account.key_pem, account.alg, account.status) == (
        "https://a/acct/1", KEY, "RS256", AccountStatus.VALID)
    assert account.contact == ("mailto:a@example.com", "mailto:b@example.com")
    assert "PRIVATE KEY" not in repr(account)
    o = store.get_order(order)
    assert o is not None and o.status == "ready" and o.names == ("a.example",)
    a = store.get_authorization(authz)
    assert a is not None and a.challenge_type == "dns-01"
    assert a.expires == pytest.approx(datetime(2099, 1, 1, tzinfo=UTC).timestamp() + 0.123456)
    c = store.get_certificate(cert)
    assert c is not None
    assert (c.serial, c.pem_chain, c.names, c.revoked, c.renewed) == (
        "abcd", "CHAIN", ("a.example", "b.example"), False, False)
    assert c.not_after == not_after.timestamp()
    assert "PRIVATE KEY" not in repr(c)
    assert store.get_account(10_000) is None and store.get_certificate(10_000) is None
    with pytest.raises(ValueError, match="account_id must be the id of an account"):
        store.add_order(DIR_A, None, "https://a/order/2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.release("order", order, "h")


def test_status_updates(store: SqlStateStore) -> None:
    acc = _account(store)
    cert = _cert(store, acc)
    renewal = _cert(store, acc)
    order = store.add_order(DIR_A, acc, "https://a/order/9")
    authz = _authz(store, acc)
    assert store.mark_certificate_revoked(cert, reason=4)
    assert store.mark_certificate_renewed(cert, replaced_by=renewal)
    c = store.get_certificate(cert)
    assert c is not None and (c.revoked, c.reason, c.renewed, c.replaced_by) == (
        True, 4, True, renewal)
    assert store.mark_order_status(order, "valid")
    assert store.mark_authorization_status(authz, AuthorizationStatus.DEACTIVATED)
    assert store.update_account_key(acc, b"NEWKEY", "ES384")
    account = store.get_account(acc)
    assert account is not None and (account.key_pem, account.alg) == ("NEWKEY", "ES384")
    store.mark_certificate_renewed(renewal)
    before = store.counts(DIR_A)
    assert before == Counts(accounts=1, certificates=1, revoked=1, orders=1)
    assert store.mark_account_status(acc, "deactivated")
    assert store.claim_account(DIR_A, "h", 60) is None
    assert store.claim_certificate(DIR_A, "h", 60) is None
    assert store.counts(DIR_A) == Counts(revoked=1)
    assert store.mark_account_status(acc, AccountStatus.VALID)  # its rows come back
    assert store.counts(DIR_A) == before
    assert not store.mark_account_status(10_000, AccountStatus.VALID)
    assert not store.mark_certificate_revoked(10_000)
    with pytest.raises(ValueError):
        store.mark_account_status(acc, "bogus")


# -- claims -------------------------------------------------------------------------------


def test_exclusive_claim_and_release(store: SqlStateStore) -> None:
    acc = _account(store)
    got = store.claim_account(DIR_A, "h1", 60)
    assert got is not None and got.id == acc
    assert store.claim_account(DIR_A, "h2", 60) is None
    assert store.claim_account(DIR_A, "h2", 60, exclusive=False) is None
    assert store.pick_account(DIR_A) is None
    assert not store.release(Kind.ACCOUNT, acc, "h2")  # not h2's
    assert store.release("account", acc, "h1")
    assert not store.release("account", acc, "h1")  # already released
    again = store.claim_account(DIR_A, "h2", 60)
    assert again is not None and again.id == acc


def test_shared_use_keeps_exclusive_claimers_away(store: SqlStateStore) -> None:
    acc = _account(store)
    assert store.claim_account(DIR_A, "s1", 60, exclusive=False) is not None
    shared = store.claim_account(DIR_A, "s2", 60, exclusive=False)
    assert shared is not None and shared.id == acc
    assert store.pick_account(DIR_A) is not None  # picking records nothing, blocks nothing
    assert store.claim_account(DIR_A, "x", 60) is None
    assert store.release(Kind.ACCOUNT, acc, "s1")
    assert store.claim_account(DIR_A, "x", 60) is None  # s2 still uses it
    assert store.release_all("s2") == 1
    assert store.claim_account(DIR_A, "x", 60) is not None


def test_claims_lapse_after_ttl(store: SqlStateStore, clock: Clock) -> None:
    acc = _account(store)
    cert = _cert(store, acc)
    authz = _authz(store, acc)
    assert store.claim_account(DIR_A, "dead-worker", 10) is not None
    assert store.claim_certificate(DIR_A, "dead-worker", 10) is not None
    assert store.claim_authorization(DIR_A, "dead-worker", 10) is not None
    clock.now += 9
    assert store.claim_account(DIR_A, "w2", 10) is None
    assert store.claim_certificate(DIR_A, "w2", 10) is None
    clock.now += 2  # past every claim_expires
    got = store.claim_account(DIR_A, "w2", 10)
    assert got is not None and got.id == acc
    c = store.claim_certificate(DIR_A, "w2", 10)
    assert c is not None and c.id == cert
    z = store.claim_authorization(DIR_A, "w2", 10)
    assert z is not None and z.id == authz
    # the late release of the dead holder frees nothing of w2's
    assert not store.release(Kind.CERTIFICATE, cert, "dead-worker")
    assert store.release_all("dead-worker") == 0
    assert store.claim_certificate(DIR_A, "w3", 10) is None
    # a lapsed share no longer keeps an exclusive claimer away
    store.release_all("w2")
    assert store.claim_account(DIR_A, "sharer", 10, exclusive=False) is not None
    assert store.claim_account(DIR_A, "x", 10) is None
    clock.now += 11
    assert store.claim_account(DIR_A, "x", 10) is not None


def test_authorization_claim_filters(store: SqlStateStore, clock: Clock) -> None:
    acc, other = _account(store), _account(store, n=2)
    _authz(store, acc, expires=clock.now - 1)  # expired
    _authz(store, acc, status="pending")
    _authz(store, acc, directory=DIR_B)
    wanted = _authz(store, other, challenge_type="tls-alpn-01")
    assert store.claim_authorization(DIR_A, "h", 60, account_id=acc) is None
    assert store.claim_authorization(DIR_A, "h", 60, challenge_type="dns-01") is None
    got = store.claim_authorization(DIR_A, "h", 60, account_id=other,
                                    challenge_type="tls-alpn-01")
    assert got is not None and got.id == wanted
    assert store.claim_authorization(DIR_A, "h2", 60) is None
    store.release(Kind.AUTHORIZATION, wanted, "h")
    store.mark_account_status(other, AccountStatus.DEACTIVATED)
    assert store.claim_authorization(DIR_A, "h", 60) is None  # its account is gone


def test_certificate_claim_filters(store: SqlStateStore, clock: Clock) -> None:
    acc = _account(store)
    revoked, renewed = _cert(store, acc), _cert(store, acc)
    _cert(store, acc, not_after=clock.now - 1)
    store.mark_certificate_revoked(revoked, 1)
    store.mark_certificate_renewed(renewed)
    assert store.claim_certificate(DIR_A, "h", 60, not_renewed=True) is None
    got = store.claim_certificate(DIR_A, "h", 60)
    assert got is not None and got.id == renewed
    assert store.claim_certificate(DIR_A, "h", 60) is None
    any_cert = store.claim_certificate(DIR_A, "h", 60, unrevoked=False)
    assert any_cert is not None and any_cert.id == revoked
    assert store.claim_certificate(DIR_A, "h", 60, unrevoked=False, unexpired=False) is not None
    assert store.claim_certificate_id(revoked, "other", 60) is None  # held by h
    store.release_all("h")
    by_id = store.claim_certificate_id(revoked, "other", 60)
    assert by_id is not None and by_id.revoked


def test_release_all(store: SqlStateStore) -> None:
    a1, a2 = _account(store), _account(store, n=2)
    _cert(store, a1)
    _authz(store, a1)
    assert store.claim_account(DIR_A, "h", 60) is not None
    assert store.claim_account(DIR_A, "h", 60, exclusive=False) is not None
    assert store.claim_certificate(DIR_A, "h", 60) is not None
    assert store.claim_authorization(DIR_A, "h", 60) is not None
    assert store.release_all("h") == 4
    assert store.release_all("h") == 0
    held = {store.claim_account(DIR_A, "x", 60), store.claim_account(DIR_A, "x", 60)}
    assert {a.id for a in held if a is not None} == {a1, a2}


def test_picks_spread_over_free_rows(store: SqlStateStore) -> None:
    ids = {_account(store, n=i) for i in range(40)}
    seen = {a.id for a in (store.pick_account(DIR_A) for _ in range(120)) if a is not None}
    assert seen <= ids
    assert len(seen) >= 10  # not always the first row


# -- counts and directories ---------------------------------------------------------------


def test_counts(store: SqlStateStore, clock: Clock) -> None:
    assert store.counts(DIR_A) == Counts()
    a1, a2 = _account(store), _account(store, n=2)
    _account(store, DIR_B)
    gone = _account(store, n=3)
    store.mark_account_status(gone, AccountStatus.DEACTIVATED)
    c1, _c2 = _cert(store, a1), _cert(store, a2)
    _cert(store, gone)  # of a deactivated account: not counted
    _cert(store, a1, not_after=clock.now - 5)  # expired
    store.mark_certificate_revoked(c1, 0)
    _authz(store, a1)
    _authz(store, a1, expires=clock.now - 5)
    _authz(store, a2, status="invalid")
    store.add_order(DIR_A, a1, "https://a/order/1", names=["a.example"])
    store.add_order(DIR_A, a2, "https://a/order/2", names=["b.example"])
    assert store.claim_account(DIR_A, "h", 60) is not None  # claimed rows still count
    assert store.counts(DIR_A) == Counts(
        accounts=2, authorizations=1, certificates=1, revoked=1, orders=2)
    assert store.counts(DIR_B) == Counts(accounts=1)
    assert store.counts("https://nowhere.test/dir") == Counts()


def test_mark_directory_dead(store: SqlStateStore) -> None:
    a1 = _account(store)
    _account(store, n=2)
    b1 = _account(store, DIR_B)
    _cert(store, a1)
    _authz(store, a1)
    assert store.mark_directory_dead(DIR_A) == 2
    assert store.mark_directory_dead(DIR_A) == 0
    assert store.counts(DIR_A) == Counts()
    assert store.claim_account(DIR_A, "h", 60) is None
    assert store.pick_account(DIR_A) is None
    assert store.claim_certificate(DIR_A, "h", 60) is None
    assert store.claim_authorization(DIR_A, "h", 60) is None
    dead = store.get_account(a1)
    assert dead is not None and dead.status == AccountStatus.DEAD
    got = store.claim_account(DIR_B, "h", 60)
    assert got is not None and got.id == b1
    fresh = _account(store)  # the CA came back: new accounts count again
    assert store.counts(DIR_A).accounts == 1
    picked = store.pick_account(DIR_A)
    assert picked is not None and picked.id == fresh


def test_persistent_db_across_runs(db_url: str) -> None:
    with make_store(db_url) as first:
        ids = {_account(first, n=i) for i in range(3)}
        _cert(first, min(ids))
        first.claim_account(DIR_A, "run1:gw0", 3600)  # a run that ended without releasing
    with make_store(db_url, create=False) as second:
        assert second.counts(DIR_A) == Counts(accounts=3, certificates=1)
        assert second.counts(DIR_B) == Counts()
        assert second.claim_account(DIR_B, "run2:gw0", 60) is None
        assert second.pick_account(DIR_B) is None
        got = {second.claim_account(DIR_A, "run2:gw0", 60) for _ in range(3)}
        assert {a.id for a in got if a is not None} < ids  # one is still held by run1
        assert second.claim_certificate(DIR_A, "run2:gw0", 60) is not None


# -- concurrency --------------------------------------------------------------------------


def _claim_everything(url: str, directory: str, holder: str, barrier: Any, out: Any) -> None:
    """Run in a spawned process: two threads claim certificates until none is left."""
    ids: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    try:
        store = make_store(url, create=False, pool_size=2)
    except Exception as exc:  # reported to the parent
        out.put((holder, [], [repr(exc)]))
        barrier.abort()
        return

    def loop(name: str) -> None:
        try:
            while (cert := store.claim_certificate(directory, name, 600)) is not None:
                with lock:
                    ids.append(cert.id)
                # a pause as a chain's work between two claims: on a busy machine the first
                # process past the barrier could otherwise take all 200 before the others run
                time.sleep(0.002)
        except Exception as exc:  # reported to the parent
            with lock:
                errors.append(repr(exc))

    try:
        barrier.wait(timeout=60)
        threads = [threading.Thread(target=loop, args=(f"{holder}.t{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        store.close()
        out.put((holder, ids, errors))


def test_claims_under_contention_across_processes(db_url: str) -> None:
    with make_store(db_url) as store:
        acc = _account(store)
        all_ids = {_cert(store, acc) for _ in range(200)}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_everything, args=(db_url, DIR_A, f"p{i}", barrier, out))
             for i in range(4)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    except queue.Empty:
        pytest.fail("a claiming process did not report within 120 s")
    finally:
        for p in procs:
            p.join(timeout=30)
    errors = [e for _holder, _ids, errs in results for e in errs]
    assert errors == []
    claimed = [i for _holder, ids, _errs in results for i in ids]
    assert len(claimed) == len(set(claimed)), "a certificate was claimed twice"
    assert set(claimed) == all_ids
    assert sum(1 for _holder, ids, _errs in results if ids) >= 2, "no contention happened"
    assert all(p.exitcode == 0 for p in procs)


def test_exclusive_and_shared_claims_never_overlap(store: SqlStateStore) -> None:
    ids = [_account(store, n=i) for i in range(3)]
    guard = threading.Lock()
    exclusive: set[int] = set()
    shared: dict[int, int] = dict.fromkeys(ids, 0)
    problems: list[str] = []

    def worker(n: int) -> None:
        holder = f"t{n}"
        for i in range(25):
            excl = (i + n) % 3 == 0
            acc = store.claim_account(DIR_A, holder, 60, exclusive=excl)
            if acc is None:
                continue
            with guard:
                if acc.id in exclusive or (excl and shared[acc.id]):
                    problems.append(f"{holder} got {acc.id} while it was held")
                if excl:
                    exclusive.add(acc.id)
                else:
                    shared[acc.id] += 1
            time.sleep(0.001)
            with guard:  # forget the hold before the DB does
                if excl:
                    exclusive.discard(acc.id)
                else:
                    shared[acc.id] -= 1
            store.release(Kind.ACCOUNT, acc.id, holder)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []


# -- the file, URLs and errors -------------------------------------------------------------


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.db"
    with make_store(path) as store:
        _account(store)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for side in (path.with_name("state.db-wal"), path.with_name("state.db-shm")):
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) == 0o600
        assert store.url == str(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oracle://wec:s3cret@db.test/wec", "unsupported state DB URL 'oracle://wec:***@db.test"),
        ("postgresql://wec:s3cret@db.test:port/wec", "malformed state DB URL"),
        ("postgres://wec:s3cret@db.test:70000/wec", "out of range"),
        ("postgresql+asyncpg://wec:s3cret@db.test/wec", "unsupported state DB URL"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite://", "in-memory"),
        ("", "empty URL"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(StateURLError) as info:
        make_store(url)
    message = str(info.value)
    assert expected in message
    assert "s3cret" not in message
    assert "PostgreSQL URL" in message  # says what is allowed
    assert isinstance(info.value, ConfigError)


def test_unreachable_postgres_is_a_clear_error() -> None:
    pytest.importorskip("psycopg")
    started = time.monotonic()
    with pytest.raises(StateUnavailableError) as info:
        make_store("postgres://wec:s3cret@127.0.0.1:1/wec")
    message = str(info.value)
    assert message.startswith("cannot open state DB postgresql+psycopg://wec:***@127.0.0.1:1/wec")
    assert "s3cret" not in message
    assert time.monotonic() - started < 15


def test_sqlite_errors(tmp_path: Path) -> None:
    with pytest.raises(StateSchemaError, match="no such file"):
        make_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateUnavailableError, match="cannot create"):
        make_store(blocker / "state.db")


def test_sqlite_hot_statements_on_its_own_connection(tmp_path: Path) -> None:
    """SQLite runs the pick of an account and the inserts as prepared statements on its own
    connection: the rows read back through SQLAlchemy are the same, a claimed account is
    not picked, a foreign key the DB refuses is the same StateError, and a statement with a
    default computed in Python is refused rather than run without it."""
    from sqlalchemy import insert

    from pytest_wec.state._models import CERTIFICATES
    from pytest_wec.state._prepared import Prepared

    with SqlStateStore(tmp_path / "state.db") as store:
        ids = [store.add_account(DIR_A, f"{DIR_A}/acct/{i}", KEY, "ES256",
                                 contact=[f"mailto:{i}@a.test"]) for i in range(6)]
        assert store._fast_picks is None
        picked = {a.id: a for a in (store.pick_account(DIR_A) for _ in range(100)) if a}
        assert store._fast_picks and len(store._db._prepared) >= 2  # the fast path ran
        assert set(picked) <= set(ids) and len(picked) >= 3  # spread (random pivots)
        for account_id, account in picked.items():
            assert account == store.get_account(account_id)  # SQLAlchemy's read
            assert account.contact == (f"mailto:{ids.index(account_id)}@a.test",)
        claimed = store.claim_account(DIR_A, "holder", 60.0)
        assert claimed is not None
        assert claimed.id not in {a.id for a in (store.pick_account(DIR_A) for _ in range(60))
                                  if a}
        order = store.add_order(DIR_A, ids[0], f"{DIR_A}/order/1", "valid", ["a.test", "b.test"])
        got = store.get_order(order)
        assert got is not None and got.names == ("a.test", "b.test") and got.account_id == ids[0]
        cert = _cert(store, ids[1])
        row = store.get_certificate(cert)
        assert row is not None and not row.revoked and row.names == ("a.example",)
        with pytest.raises(StateError, match="rejected a write"):
            store.add_order(DIR_A, 10**9, f"{DIR_A}/order/x", "pending", [])
        assert store.pick_account(DIR_B) is None
        with pytest.raises(ValueError, match="default"):
            Prepared(insert(CERTIFICATES), store._db.engine.dialect, ["directory"])

def test_other_schema_version_is_refused(db_url: str) -> None:
    from sqlalchemy import update

    from pytest_wec.state._models import META

    with make_store(db_url) as store:
        store._db.run(lambda conn: conn.execute(update(META).values(value="999")))
    with pytest.raises(StateSchemaError, match="schema version 999"):
        make_store(db_url)


def test_postgres_url_forms_are_normalised() -> None:
    from pytest_wec.state._url import resolve_target

    for url in ("postgres://u:pw@h/db", "postgresql://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"):
        target = resolve_target(url)
        assert target.url.drivername == "postgresql+psycopg"
        assert target.shown == "postgresql+psycopg://u:***@h/db"
    assert resolve_target("sqlite:///rel/state.db").sqlite_path == Path("rel/state.db").absolute()


# -- group commit: run_batch and StoreQueue ------------------------------------------------


def test_run_batch_keeps_each_calls_outcome(store: SqlStateStore) -> None:
    acc = _account(store)
    calls = [
        lambda: store.add_order(DIR_A, acc, "https://ca-a.test/o/1", "pending", ["a.test"]),
        lambda: store.add_order(DIR_A, "not an id", "u", "pending", []),  # type: ignore[arg-type]
        lambda: store.add_order(DIR_A, 10**9, "https://ca-a.test/o/x", "pending", []),  # no FK
        lambda: store.add_order(DIR_A, acc, "https://ca-a.test/o/2", "pending", ["b.test"]),
        lambda: store.pick_account(DIR_A),
    ]
    outcomes = store.run_batch(calls)
    assert [ok for ok, _ in outcomes] == [True, False, False, True, True]
    assert isinstance(outcomes[1][1], ValueError)
    assert isinstance(outcomes[2][1], StateError)  # the FK violation, in its own savepoint
    o1, o2 = outcomes[0][1], outcomes[3][1]
    assert store.get_order(o1).url.endswith("/o/1")  # type: ignore[union-attr]
    assert store.get_order(o2).names == ("b.test",)  # type: ignore[union-attr]
    assert outcomes[4][1].id == acc
    assert store.counts(DIR_A).orders == 2


@pytest.mark.asyncio
async def test_store_queue_groups_concurrent_calls(store: SqlStateStore) -> None:
    from pytest_wec.state import StoreQueue

    acc = _account(store)
    queue = StoreQueue(store, max_batch=16)
    ids = await asyncio.gather(*(
        queue.call(store.add_order, DIR_A, acc, f"https://ca-a.test/o/{i}", "pending",
                   [f"n{i}.test"]) for i in range(100)))
    assert len(set(ids)) == 100 and store.counts(DIR_A).orders == 100
    assert queue.calls == 100 and 100 / 16 <= queue.groups < 100  # grouped, none lost
    with pytest.raises(ValueError, match="account_id"):
        await queue.call(store.add_order, DIR_A, None, "u", "pending", [])  # type: ignore[arg-type]
    got = await asyncio.gather(queue.call(store.pick_account, DIR_A),
                               queue.call(store.get_order, ids[7]))
    assert got[0] is not None and got[0].id == acc and got[1].names == ("n7.test",)
    await queue.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await queue.call(store.pick_account, DIR_A)


@pytest.mark.asyncio
async def test_store_queue_writes_nobody_waits_for_share_a_transaction(
        store: SqlStateStore) -> None:
    from pytest_wec.state import StoreQueue

    acc = _account(store)
    queue = StoreQueue(store, max_batch=64, window=0.2)
    t0 = time.perf_counter()
    later = [queue.submit(store.add_order, DIR_A, acc, f"https://ca-a.test/o/{i}", "pending",
                          [f"n{i}.test"], wait=False) for i in range(10)]
    await asyncio.sleep(0.05)
    assert not any(f.done() for f in later)  # waiting within the window for company
    # a call someone waits for starts the group at once, the writes queued before it along
    found = await queue.call(store.get_order, 1)
    assert time.perf_counter() - t0 < 0.2
    assert all(f.done() for f in later) and found is not None
    assert queue.groups == 1 and queue.calls == 11
    # alone, they go when the window ends; a failing one fails alone
    bad = queue.submit(store.add_order, DIR_A, 10**9, "https://ca-a.test/o/x", "pending", [],
                       wait=False)
    good = queue.submit(store.add_order, DIR_A, acc, "https://ca-a.test/o/y", "pending", [],
                        wait=False)
    await asyncio.wait_for(asyncio.wait([bad, good]), 5)
    assert isinstance(bad.exception(), StateError) and good.result() > 0
    assert queue.groups == 2
    # reads do not queue behind the writes, and see what was committed
    row = await queue.read(store.get_order, good.result())
    assert row is not None and row.url.endswith("/o/y")
    # closing runs what is still queued without waiting out the window
    last = queue.submit(store.add_order, DIR_A, acc, "https://ca-a.test/o/z", "pending", [],
                        wait=False)
    t1 = time.perf_counter()
    await queue.aclose()
    assert last.done() and time.perf_counter() - t1 < 0.15
    assert store.counts(DIR_A).orders == 12


@pytest.mark.asyncio
async def test_store_queue_reads_a_sqlite_file_on_the_loop_and_a_server_db_off_it(
        store: SqlStateStore, db_url: str) -> None:
    """A read of a local SQLite file (WAL: no writer makes it wait) costs its caller two
    thread hops more than the read; a server DB's read waits for the network."""
    from pytest_wec.state import StoreQueue

    acc = _account(store)
    where: list[int] = []

    def read() -> Any:
        where.append(threading.get_ident())
        return store.pick_account(DIR_A)

    local = "://" not in db_url
    queue = StoreQueue(store)
    assert queue.inline_reads is local
    row = await queue.read(read)
    assert row is not None and row.id == acc
    assert (where[-1] == threading.get_ident()) is local
    off = StoreQueue(store, inline_reads=False)
    assert (await off.read(read)).id == acc and where[-1] != threading.get_ident()
    # what a group committed, an inline read sees
    later = queue.submit(store.mark_account_status, acc, "dead", wait=False)
    await asyncio.wait_for(asyncio.wait([later]), 5)
    assert await queue.read(read) is None
    await queue.aclose()
    await off.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await queue.read(read)


@pytest.mark.asyncio
async def test_store_queue_without_run_batch_calls_one_by_one() -> None:
    from pytest_wec.state import StoreQueue

    class Plain:
        def double(self, x: int) -> int:
            return 2 * x

    queue = StoreQueue(Plain())
    assert await asyncio.gather(*(queue.call(Plain().double, i) for i in range(5))) == [
        0, 2, 4, 6, 8]
    assert queue.groups == 0
    assert queue.inline_reads is False, "not a SQLite store: its reads go to a thread"


def test_run_batch_falls_back_to_one_by_one_after_a_deadlock(store: SqlStateStore) -> None:
    from sqlalchemy.exc import DBAPIError

    class Deadlock(Exception):
        sqlstate = "40P01"

    acc = _account(store)
    tries: list[int] = []

    def flaky() -> str:
        def tx(conn: Any) -> str:
            tries.append(1)
            if len(tries) == 1:
                raise DBAPIError("UPDATE ...", {}, Deadlock("deadlock detected"))
            return "done"

        return store._db.run(tx)

    calls = [
        lambda: store.add_order(DIR_A, acc, "https://ca-a.test/o/a", "pending", ["a.test"]),
        flaky,
        lambda: store.add_order(DIR_A, acc, "https://ca-a.test/o/b", "pending", ["b.test"]),
    ]
    outcomes = store.run_batch(calls)
    assert [ok for ok, _ in outcomes] == [True, True, True], outcomes
    assert outcomes[1][1] == "done" and len(tries) == 2
    # the group was rolled back before the calls ran alone: each order exists once
    assert store.counts(DIR_A).orders == 2


def test_run_batch_falls_back_after_a_mysql_error_code(store: SqlStateStore) -> None:
    """PyMySQL before 1.2 gives no SQLSTATE: a deadlock is known by its error code, 1213."""
    from sqlalchemy.exc import DBAPIError

    acc = _account(store)
    tries: list[int] = []

    def flaky() -> str:
        def tx(conn: Any) -> str:
            tries.append(1)
            if len(tries) == 1:
                raise DBAPIError("UPDATE ...", {}, Exception(1213, "Deadlock found"))
            return "done"

        return store._db.run(tx)

    calls = [
        lambda: store.add_order(DIR_A, acc, "https://ca-a.test/o/a", "pending", ["a.test"]),
        flaky,
    ]
    assert store.run_batch(calls)[1] == (True, "done") and len(tries) == 2
    assert store.counts(DIR_A).orders == 1
    # other error codes are the call's own failure
    failing = [lambda: store._db.run(lambda conn: (_ for _ in ()).throw(
        DBAPIError("UPDATE ...", {}, Exception(1205, "Lock wait timeout exceeded")))),
        lambda: store.pick_account(DIR_A)]
    outcomes = store.run_batch(failing)
    assert isinstance(outcomes[0][1], StateUnavailableError) and outcomes[1][0]
    assert "Lock wait timeout" in str(outcomes[0][1])


def test_sqlite_locked_at_open_is_tried_again(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_wec.state._engine import Database

    real = Database._prepare
    calls: list[int] = []

    def flaky(self: Database, create: bool) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise StateUnavailableError(f"state DB {self.target.shown}: database is locked")
        real(self, create)

    monkeypatch.setattr(Database, "_prepare", flaky)
    with SqlStateStore(tmp_path / "state.db") as store:
        assert store.counts(DIR_A).accounts == 0
    assert len(calls) == 3
    # other failures, and a lock that outlasts the connect timeout, are still errors
    calls.clear()
    monkeypatch.setattr(Database, "_prepare", lambda self, create: (_ for _ in ()).throw(
        StateUnavailableError("state DB x: database is locked")))
    t0 = time.monotonic()
    with pytest.raises(StateUnavailableError, match=r"cannot open .*locked"):
        SqlStateStore(tmp_path / "other.db", connect_timeout=1.0)
    assert 0.9 <= time.monotonic() - t0 < 5


# -- under real contention: grouped claims, deadlocks, schema creation ---------------------


def test_grouped_claims_under_contention_across_threads(db_url: str) -> None:
    with make_store(db_url, pool_size=6) as store:
        acc = _account(store)
        all_ids = {_cert(store, acc) for _ in range(120)}
        claimed: list[int] = []
        errors: list[str] = []
        guard = threading.Lock()
        start = threading.Barrier(4)

        def worker(n: int) -> None:
            start.wait(timeout=30)
            for round_ in range(200):
                calls = [functools.partial(store.claim_certificate, DIR_A, f"t{n}.{round_}.{i}",
                                           600) for i in range(4)]
                outcomes = store.run_batch(calls)
                with guard:
                    errors.extend(repr(v) for ok, v in outcomes if not ok)
                    claimed.extend(v.id for ok, v in outcomes if ok and v is not None)
                if all(ok and v is None for ok, v in outcomes):
                    return

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert errors == []
    assert len(claimed) == len(set(claimed)), "a certificate was claimed twice"
    assert set(claimed) == all_ids


def test_a_real_deadlock_in_a_group_falls_back(db_url: str, caplog: pytest.LogCaptureFixture
                                                ) -> None:
    """A group and a lone transaction update two orders in opposite order; the server kills
    the group's transaction (the lighter one on MySQL, the one that waited first on
    PostgreSQL), and the group's calls run again one by one: everything finishes."""
    if "://" not in db_url:
        pytest.skip("SQLite serialises writers: no deadlock")
    from sqlalchemy import update

    from pytest_wec.state._rows import ORD

    caplog.set_level(logging.DEBUG, logger="pytest_wec.state._engine")
    with make_store(db_url, pool_size=4) as store:
        acc = _account(store)
        o1, o2, *heavy = (store.add_order(DIR_A, acc, f"https://ca-a.test/o/{i}")
                          for i in range(8))
        group_holds_o1, other_holds_o2 = threading.Event(), threading.Event()
        results: dict[str, Any] = {}

        def second() -> bool:
            group_holds_o1.set()
            assert other_holds_o2.wait(30)
            return store.mark_order_status(o2, "ready")

        def group() -> None:
            results["group"] = store.run_batch(
                [lambda: store.mark_order_status(o1, "ready"), second])

        def other_tx(conn: Any) -> str:
            assert group_holds_o1.wait(30)
            conn.execute(update(ORD).where(ORD.c.id.in_(heavy)).values(status="valid"))
            conn.execute(update(ORD).where(ORD.c.id == o2).values(status="invalid"))
            other_holds_o2.set()
            time.sleep(0.2)  # the group now waits for o2
            conn.execute(update(ORD).where(ORD.c.id == o1).values(status="invalid"))
            return "done"

        def other() -> None:
            try:
                results["other"] = store._db.run(other_tx)
            except Exception as exc:  # reported below
                results["other"] = exc

        threads = [threading.Thread(target=group), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert results["other"] == "done"
        assert results["group"] == [(True, True), (True, True)]
        for order_id in (o1, o2):
            order = store.get_order(order_id)
            assert order is not None and order.status in ("ready", "invalid")
    assert "batch of 2 failed" in caplog.text and "running them one by one" in caplog.text


def test_concurrent_opens_create_the_tables_once(db_url: str) -> None:
    errors: list[str] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait(timeout=30)
        try:
            make_store(db_url, pool_size=2).close()
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with make_store(db_url, create=False) as store:
        from sqlalchemy import func, select

        from pytest_wec.state._models import META

        assert store._db.run(lambda c: c.execute(select(func.count()).select_from(META))
                             .scalar()) == 1


# -- MySQL and MariaDB ----------------------------------------------------------------------


def test_mysql_url_forms_are_normalised() -> None:
    from pytest_wec.state._url import resolve_target

    for url, driver in (("mysql://u:pw@h/db", "mysql+pymysql"),
                        ("mysql+pymysql://u:pw@h/db", "mysql+pymysql"),
                        ("mariadb://u:pw@h/db", "mariadb+pymysql"),
                        ("MariaDB+PyMySQL://u:pw@h/db", "mariadb+pymysql")):
        target = resolve_target(url)
        assert target.url.drivername == driver and target.is_mysql and not target.is_sqlite
        assert target.shown == f"{driver}://u:***@h/db"
        assert target.url.query["charset"] == "utf8mb4"
    given = resolve_target("mysql://u@h:3307/db?charset=utf8mb3&ssl_ca=/ca.pem")
    assert given.url.query == {"charset": "utf8mb3", "ssl_ca": "/ca.pem"}
    assert given.url.port == 3307
    assert not resolve_target("postgres://u@h/db").is_mysql


@pytest.mark.parametrize(
    ("url", "expected", "short"),
    [
        ("mysql://wec:s3cret@db.test", "names no database", "must end in /DBNAME"),
        ("mariadb://wec:s3cret@db.test:99999/wec", "out of range", "out of range"),
        ("mysql+mysqldb://wec:s3cret@db.test/wec", "unsupported state DB URL 'mysql+mysqldb://",
         "unsupported scheme 'mysql+mysqldb'"),
        ("mysql:wec", "malformed state DB URL", "malformed URL"),
    ],
)
def test_bad_mysql_urls(url: str, expected: str, short: str) -> None:
    from pytest_wec.state._url import url_problem

    with pytest.raises(StateURLError) as info:
        make_store(url)
    message = str(info.value)
    assert expected in message and "MySQL/MariaDB URL (mysql://" in message
    assert "s3cret" not in message
    problem = url_problem(url)
    assert problem is not None and short in problem and "s3cret" not in problem


def test_db_url_option_checks_urls_before_anything_starts() -> None:
    from pytest_wec.settings.parse import _db_url

    for good in ("state.db", "/abs/state.db", "sqlite:///state.db", "postgresql://u@h/db",
                 "mysql://u:pw@h:3306/db", "mariadb+pymysql://u@h/db"):
        assert _db_url(good) == good
    for bad, why in (("mysql://x", "must end in /DBNAME"), ("oracle://h/db", "unsupported"),
                     ("postgres://h:70000/db", "out of range"), ("sqlite://", "in-memory")):
        with pytest.raises(ValueError, match="expected a SQLite file path") as info:
            _db_url(bad)
        assert why in str(info.value)


def test_mysql_server_too_old_is_a_clear_error() -> None:
    from pytest_wec.state._mysql import server_problem

    assert server_problem(True, (10, 6, 0)) is None
    assert server_problem(True, (11, 4, 2)) is None
    assert server_problem(False, (8, 0, 36)) is None
    old = server_problem(True, (10, 5, 8))
    assert old == ("MariaDB 10.5.8 has no SELECT ... FOR UPDATE SKIP LOCKED, which atomic "
                   "claims need; use MariaDB 10.6 or newer, or MySQL 8.0.1 or newer")
    assert server_problem(False, (5, 7, 44)) is not None
    assert "MySQL 5.7.44 has no SELECT ... FOR UPDATE SKIP LOCKED" in str(
        server_problem(False, (5, 7, 44)))


@pytest.mark.mysql
def test_too_old_mysql_server_is_refused_at_open(mysql_database: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_wec.state import _mysql

    # the server here is new enough: make the store ask for more than it has
    monkeypatch.setattr(_mysql, "MARIADB_MIN", (99, 0))
    monkeypatch.setattr(_mysql, "MYSQL_MIN", (99, 0))
    with pytest.raises(StateUnavailableError) as info:
        make_store(mysql_database)
    message = str(info.value)
    shown = mysql_database.replace("mysql://", "mysql+pymysql://")
    assert message.startswith(f"cannot open state DB {shown}: ")
    assert "has no SELECT ... FOR UPDATE SKIP LOCKED" in message
    assert "use MariaDB 99.0 or newer, or MySQL 99.0 or newer" in message
    assert "\n" not in message


def test_missing_pymysql_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_wec.state import _engine

    monkeypatch.setattr(_engine, "_have", lambda module: False)
    with pytest.raises(StateUnavailableError) as info:
        make_store("mysql://wec:s3cret@127.0.0.1:1/wec")
    message = str(info.value)
    assert "needs PyMySQL (pip install 'pytest-wec[mysql]')" in message
    assert "s3cret" not in message


def test_unreachable_mysql_is_a_clear_error() -> None:
    pytest.importorskip("pymysql")
    started = time.monotonic()
    with pytest.raises(StateUnavailableError) as info:
        make_store("mysql://wec:s3cret@127.0.0.1:1/wec")
    message = str(info.value)
    assert message.startswith("cannot open state DB mysql+pymysql://wec:***@127.0.0.1:1/wec: ")
    assert "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 15


@pytest.mark.mysql
def test_mysql_tables_are_innodb_and_compare_exactly(mysql_database: str) -> None:
    from sqlalchemy import text

    with make_store(mysql_database) as store:
        assert store.is_mysql and not store.is_postgres
        acc = _account(store)
        _cert(store, acc)
        tables = store._db.run(lambda c: c.execute(text(
            "SELECT table_name, engine, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE()")).all())
        assert {(e, coll) for _n, e, coll in tables} == {("InnoDB", "utf8mb4_bin")}
        assert len(tables) == 6
        # URLs and holders compare as on SQLite and PostgreSQL: not case-insensitively
        assert store.counts(DIR_A.upper()) == Counts()
        assert store.claim_certificate(DIR_A, "holder", 60) is not None
        assert store.release_all("HOLDER") == 0
        # non-ASCII text goes in and out as it was (utf8mb4)
        named = store.add_order(DIR_A, acc, "https://ca-a.test/o/ü", names=["bücher.example"])
        assert store.get_order(named).names == ("bücher.example",)  # type: ignore[union-attr]
    with make_store(mysql_database.replace("mysql://", "mariadb://"), create=False) as again:
        assert again.counts(DIR_A).certificates == 1


@pytest.mark.mysql
def test_mysql_table_of_another_engine_is_refused(mysql_database: str) -> None:
    from sqlalchemy import text

    with make_store(mysql_database) as store:
        store._db.run(lambda c: c.execute(text("ALTER TABLE wec_meta ENGINE=MyISAM")))
    with pytest.raises(StateSchemaError, match="table wec_meta uses the MyISAM engine; claims "
                                               "need InnoDB"):
        make_store(mysql_database)


@pytest.mark.mysql
def test_mysql_without_insert_returning(mysql_database: str) -> None:
    """MySQL (unlike MariaDB) has no INSERT ... RETURNING: ids come from the insert's
    result then."""
    with make_store(mysql_database) as store:
        store._db.engine.dialect.insert_returning = False
        first, second = _account(store), _account(store, n=2)
        assert second == first + 1
        assert store.get_account(second) is not None
        assert store.add_order(DIR_A, first, "https://ca-a.test/o/1") >= 1


@pytest.mark.mysql
def test_mysql_values_too_long_are_errors_not_cut(mysql_database: str) -> None:
    too_long = "https://ca.test/" + "d" * 600  # directory is VARCHAR(512) on MySQL
    with (make_store(mysql_database) as store,
          pytest.raises(StateError, match="Data too long for column 'directory'")):
        store.add_account(too_long, "https://ca.test/acct/1", KEY)
