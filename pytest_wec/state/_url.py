"""Which DB a URL or path names: SQLite by path, PostgreSQL (psycopg 3) or MySQL/MariaDB
(PyMySQL) by URL.

Accepted::

    state.db, /run/wec/state.db, sqlite:///state.db, sqlite:////abs/state.db
    postgresql+psycopg://user:password@host:5432/db
    postgresql://...  postgres://...        (normalised to postgresql+psycopg://)
    mysql+pymysql://user:password@host:3306/db
    mariadb+pymysql://user:password@host:3306/db
    mysql://...  mariadb://...              (normalised to ...+pymysql://)

A MySQL/MariaDB URL must name its database (MySQL has no default one); ``charset=utf8mb4``
is added unless the URL gives a charset. Everything shown to a user goes through
:func:`mask_url` first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pytest_wec.state._exceptions import StateURLError

__all__ = ["ALLOWED", "Target", "mask_url", "resolve_target", "url_problem"]

ALLOWED = (
    "a SQLite file path (or sqlite:///path), a PostgreSQL URL "
    "(postgresql://user:password@host:5432/db; postgres:// and postgresql+psycopg:// too) "
    "or a MySQL/MariaDB URL (mysql://user:password@host:3306/db; mariadb://, "
    "mysql+pymysql:// and mariadb+pymysql:// too)"
)

_PG_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg3"}
#: scheme -> SQLAlchemy driver name; mariadb:// also makes SQLAlchemy insist on a MariaDB
_MYSQL_SCHEMES = {"mysql": "mysql+pymysql", "mysql+pymysql": "mysql+pymysql",
                  "mariadb": "mariadb+pymysql", "mariadb+pymysql": "mariadb+pymysql"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+pysqlite"}
_USERINFO_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*(@)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd)=)[^&]*")


def mask_url(text: str) -> str:
    """*text* with any password in it replaced by ``***``."""
    text = _USERINFO_PASSWORD.sub(r"\1***\2", text)
    return _QUERY_PASSWORD.sub(r"\1***", text)


@dataclass(frozen=True)
class Target:
    """A resolved DB: the SQLAlchemy URL, the SQLite file when it is one, a safe display form."""

    url: URL
    sqlite_path: Path | None
    shown: str

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB (either driver name)."""
        return self.url.get_backend_name() in ("mysql", "mariadb")


class _Invalid(Exception):
    """A value that names no usable DB: ``short`` says why in a few words (for a usage
    error), ``message`` names the value too (masked)."""

    def __init__(self, short: str, message: str) -> None:
        super().__init__(message)
        self.short = short


def _sqlite_target(path_text: str, original: str) -> Target:
    if path_text in ("", ":memory:") or path_text.startswith("file:"):
        raise _Invalid(
            "an in-memory or URI SQLite DB cannot be shared",
            f"state DB {mask_url(original)!r}: an in-memory or URI SQLite DB cannot be shared "
            "between threads and processes",
        )
    path = Path(path_text).expanduser().absolute()
    return Target(URL.create("sqlite+pysqlite", database=str(path)), path, str(path))


def resolve_target(url_or_path: str | os.PathLike[str]) -> Target:
    """Resolve a ``--wec-db`` value; :class:`StateURLError` when it names no usable DB."""
    try:
        return _resolve(url_or_path)
    except _Invalid as exc:
        raise StateURLError(f"{exc}; expected {ALLOWED}") from None


def url_problem(url_or_path: str) -> str | None:
    """Why *url_or_path* names no usable DB, in a few words (no URL, no password), or None.
    Checks the text only: nothing is imported or connected to."""
    try:
        _resolve(url_or_path)
    except _Invalid as exc:
        return exc.short
    return None


def _resolve(url_or_path: str | os.PathLike[str]) -> Target:
    if not isinstance(url_or_path, str):
        return _sqlite_target(os.fspath(url_or_path), os.fspath(url_or_path))
    text = url_or_path.strip()
    if not text:
        raise _Invalid("empty URL", "state DB: empty URL")
    malformed = f"malformed state DB URL {mask_url(text)!r}"
    if "://" not in text:
        if text.lower().startswith(("sqlite:", "postgres", "mysql:", "mariadb:")):
            raise _Invalid("malformed URL", malformed)
        return _sqlite_target(text, text)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        if rest and not rest.startswith("/"):
            raise _Invalid("malformed URL", malformed)
        return _sqlite_target(rest[1:].split("?", 1)[0], text)
    if scheme in _PG_SCHEMES:
        driver = "postgresql+psycopg"
    elif scheme in _MYSQL_SCHEMES:
        driver = _MYSQL_SCHEMES[scheme]
    else:
        raise _Invalid(
            f"unsupported scheme {mask_url(scheme)!r}",
            f"unsupported state DB URL {mask_url(text)!r} (scheme {scheme!r})",
        )
    try:
        url = make_url(f"{driver}://{rest}")
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError(f"port {url.port} out of range 1-65535")
    except (ArgumentError, ValueError) as exc:
        raise _Invalid(_reason(exc), f"{malformed} ({_reason(exc)})") from None
    shown = url.render_as_string(hide_password=True)
    if driver != "postgresql+psycopg":
        if not url.database:
            raise _Invalid(
                "a MySQL/MariaDB URL must end in /DBNAME",
                f"state DB URL {mask_url(text)!r} names no database (a MySQL/MariaDB URL "
                "ends in /DBNAME)",
            )
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
    return Target(url, None, shown)


def _reason(exc: Exception) -> str:
    """The exception's message without the URL it may quote (and its password)."""
    message = str(exc)
    return "cannot parse it" if "://" in message or "@" in message else mask_url(message)
