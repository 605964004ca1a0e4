"""The seam between chains and the state DB: :class:`StateStore`.

The API is synchronous, one short transaction per call; asyncio callers run it in a thread
(``await asyncio.to_thread(store.claim_account, ...)``).

Claims: a chain that needs a row to itself claims it for ``ttl`` seconds under a ``holder``
name (worker and chain id, e.g. ``"gw3:new_order:1842"``), and releases it when it is done
(``release`` for one row, ``release_all`` at the chain's end). A claim whose ``ttl`` has
passed lapses, so the rows of a worker that died become free again. Claims are atomic across
threads, processes and machines: no row is ever held by two holders at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

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
)

__all__ = ["StateStore"]


@runtime_checkable
class StateStore(Protocol):
    """Accounts, orders, authorizations and certificates of one or more CAs (by directory)."""

    # -- adding rows (each returns the new row's id) --------------------------------------
    # PEM text may be str or bytes; times may be epoch seconds, datetimes or RFC 3339 text.

    def add_account(
        self,
        directory: str,
        url: str,
        key_pem: str | bytes,
        alg: str = "ES256",
        *,
        contact: str | Iterable[str] = (),
        status: AccountStatus | str = AccountStatus.VALID,
    ) -> int:
        """Record an account (RFC 8555 section 7.3), its private key and JWS ``alg``.

        *contact*: URLs, or one string of comma-separated URLs.
        """
        ...

    def add_order(
        self,
        directory: str,
        account_id: int,
        url: str,
        status: OrderStatus | str = OrderStatus.PENDING,
        names: Iterable[str] = (),
    ) -> int:
        """Record an order (RFC 8555 section 7.4)."""
        ...

    def add_authorization(
        self,
        directory: str,
        account_id: int,
        url: str,
        identifier_type: str,
        identifier_value: str,
        challenge_type: str | None = None,
        status: AuthorizationStatus | str = AuthorizationStatus.VALID,
        *,
        expires: Timestamp,
    ) -> int:
        """Record an authorization (RFC 8555 section 7.5) and the challenge that validated it."""
        ...

    def add_certificate(
        self,
        directory: str,
        account_id: int,
        order_url: str,
        pem_chain: str | bytes,
        key_pem: str | bytes,
        serial: str | int,
        names: Iterable[str],
        not_after: Timestamp,
        issued: Timestamp | None = None,
    ) -> int:
        """Record an issued certificate (RFC 8555 section 7.4.2) and its private key.

        *serial*: an int or hex text (``0x``, colons and leading zeros are dropped).
        *issued*: now when not given.
        """
        ...

    # -- reading rows by id (None when there is no such row) -------------------------------

    def get_account(self, account_id: int) -> Account | None: ...

    def get_order(self, order_id: int) -> Order | None: ...

    def get_authorization(self, authz_id: int) -> Authorization | None: ...

    def get_certificate(self, cert_id: int) -> Certificate | None: ...

    # -- taking rows -----------------------------------------------------------------------

    def claim_account(
        self, directory: str, holder: str, ttl: float, *, exclusive: bool = True
    ) -> Account | None:
        """A random valid account of *directory*, or None when none is free.

        ``exclusive=True``: the holder has it to itself (key rollover, deactivation); no
        other claim, shared or exclusive, gets it until released or lapsed.
        ``exclusive=False``: shared use (signing orders); any number of holders share it,
        and exclusive claimers keep away until every share is released or lapsed.
        """
        ...

    def pick_account(self, directory: str) -> Account | None:
        """A random valid account not exclusively claimed; nothing is recorded."""
        ...

    def claim_authorization(
        self,
        directory: str,
        holder: str,
        ttl: float,
        *,
        account_id: int | None = None,
        challenge_type: str | None = None,
    ) -> Authorization | None:
        """A random free, valid, unexpired authorization of a valid account, claimed."""
        ...

    def claim_certificate(
        self,
        directory: str,
        holder: str,
        ttl: float,
        *,
        unrevoked: bool = True,
        not_renewed: bool = False,
        unexpired: bool = True,
    ) -> Certificate | None:
        """A random free certificate of a valid account, claimed.

        ``unrevoked``: only certificates not revoked; ``not_renewed``: only certificates not
        renewed yet; ``unexpired``: only certificates whose ``not_after`` is still ahead.
        """
        ...

    def claim_certificate_id(self, cert_id: int, holder: str, ttl: float) -> Certificate | None:
        """Claim this certificate (whatever its state) unless another holder has it."""
        ...

    def release(self, kind: Kind | str, row_id: int, holder: str) -> bool:
        """Give back one row (an account's exclusive claim or share, or another claim).

        False when *holder* held nothing on it (never did, or the claim lapsed and another
        holder took the row since).
        """
        ...

    def release_all(self, holder: str) -> int:
        """Give back everything *holder* holds; the number of claims and shares ended."""
        ...

    # -- status updates (each returns whether the row exists) ------------------------------

    def mark_account_status(self, account_id: int, status: AccountStatus | str) -> bool: ...

    def update_account_key(self, account_id: int, key_pem: str | bytes, alg: str) -> bool:
        """After a key rollover (RFC 8555 section 7.3.5)."""
        ...

    def mark_order_status(self, order_id: int, status: OrderStatus | str) -> bool: ...

    def mark_authorization_status(
        self, authz_id: int, status: AuthorizationStatus | str
    ) -> bool: ...

    def mark_certificate_revoked(self, cert_id: int, reason: int | None = None) -> bool:
        """After revokeCert (RFC 8555 section 7.6); *reason* is the RFC 5280 code."""
        ...

    def mark_certificate_renewed(self, cert_id: int, replaced_by: int | None = None) -> bool: ...

    def mark_directory_dead(self, directory: str) -> int:
        """The CA at *directory* lost its state: every account of it becomes ``dead`` (and
        with them their authorizations and certificates drop out of claims and counts).
        Returns the number of accounts marked."""
        ...

    # -- the picker's view -----------------------------------------------------------------

    def counts(self, directory: str) -> Counts:
        """What exists for *directory* (see :class:`Counts`), in one query."""
        ...

    def close(self) -> None:
        """Close every pooled connection."""
        ...
