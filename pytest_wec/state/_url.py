"""Which DB a URL or path names: SQLite by path, PostgreSQL (psycopg 3) by URL.

Accepted::

    state.db, /run/wec/state.db, sqlite:///state.db, sqlite:////abs/state.db
    postgresql+psycopg://user:password@host:5432/db
    postgresql://...  postgres://...        (normalised to postgresql+psycopg://)

Everything shown to a user goes through :func:`mask_url` first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pytest_wec.state._exceptions import StateURLError

__all__ = ["ALLOWED", "Target", "mask_url", "resolve_target"]

ALLOWED = (
    "a SQLite file path (or sqlite:///path) or a PostgreSQL URL "
    "(postgresql://user:password@host:5432/db; postgres:// and postgresql+psycopg:// too)"
)

_PG_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg3"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+pysqlite"}
_USERINFO_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*(@)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&]*")


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


def _sqlite_target(path_text: str, original: str) -> Target:
    if path_text in ("", ":memory:") or path_text.startswith("file:"):
        raise StateURLError(
            f"state DB {mask_url(original)!r}: an in-memory or URI SQLite DB cannot be shared "
            f"between threads and processes; expected {ALLOWED}"
        )
    path = Path(path_text).expanduser().absolute()
    return Target(URL.create("sqlite+pysqlite", database=str(path)), path, str(path))


def resolve_target(url_or_path: str | os.PathLike[str]) -> Target:
    """Resolve a ``--wec-state-db`` value; :class:`StateURLError` when it names no usable DB."""
    if not isinstance(url_or_path, str):
        return _sqlite_target(os.fspath(url_or_path), os.fspath(url_or_path))
    text = url_or_path.strip()
    if not text:
        raise StateURLError(f"state DB: empty URL; expected {ALLOWED}")
    if "://" not in text:
        if text.lower().startswith(("sqlite:", "postgres")):
            raise StateURLError(f"malformed state DB URL {mask_url(text)!r}; expected {ALLOWED}")
        return _sqlite_target(text, text)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        if rest and not rest.startswith("/"):
            raise StateURLError(f"malformed state DB URL {mask_url(text)!r}; expected {ALLOWED}")
        return _sqlite_target(rest[1:].split("?", 1)[0], text)
    if scheme not in _PG_SCHEMES:
        raise StateURLError(
            f"unsupported state DB URL {mask_url(text)!r} (scheme {scheme!r}); expected {ALLOWED}"
        )
    try:
        url = make_url("postgresql+psycopg://" + rest)
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError(f"port {url.port} out of range 1-65535")
    except (ArgumentError, ValueError) as exc:
        raise StateURLError(
            f"malformed state DB URL {mask_url(text)!r} ({_reason(exc)}); expected {ALLOWED}"
        ) from None
    return Target(url, None, url.render_as_string(hide_password=True))


def _reason(exc: Exception) -> str:
    """The exception's message without the URL it may quote (and its password)."""
    message = str(exc)
    return "cannot parse it" if "://" in message or "@" in message else mask_url(message)
