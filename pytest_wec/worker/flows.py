"""The ACME flows chains share (RFC 8555 §7.4, §7.5): order, authorize, issue, certify.

:class:`Flows` is the part of :class:`~pytest_wec.worker.context.ChainContext` that drives the
CA through an order: publish each challenge's answer where the CA looks (the challenge
server, or a challtestsrv), answer it, wait for the authorization, finalize with a CSR, poll
and download, and record what was made in the state DB.

The authorization is polled once the CA's validation request is seen (RFC 8555 §7.5.1; the
runtime's ``watch_validation``, :mod:`pytest_wec.worker.validations`), else on the usual
schedule; an order after finalize is polled as its Retry-After says, else in short steps
(§7.4). What was seen is kept on the chain: :attr:`Flows.first_validation_request` and,
per authorization, :attr:`Flows.validations_seen`.

The ACME phases (:data:`pytest_wec.controller.phases.PHASES`) are measured here, from the
chain's own RequestResults: a phase starts at the send (``started``) of the request the CA
accepted and ends at the arrival (``started + took``) of the answer that ends it, or at the
challenge server's stamp of the CA's validation request; :class:`PhaseRecorder.wire_extras
<pytest_wec.worker.phases.PhaseRecorder>` hands them, with the RFC deviations the chain's
checks saw, to its ChainResult.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pytest_wec.worker.phases import PhaseRecorder

if TYPE_CHECKING:
    from pytest_wec.worker.runtime import WorkerRuntime

__all__ = ["ORDER_STEP", "POLL_TIMEOUT", "Flows", "Issued", "Produced", "ValidationSeen"]

log = logging.getLogger(__name__)

POLL_TIMEOUT = 60.0
#: seconds: the first step of an order poll without Retry-After (doubling to the interval)
ORDER_STEP = 0.001


class StoredRow:
    """The state DB's id of a row a chain stored: known at once when run once; under load
    the write is queued (:meth:`~pytest_wec.worker.context.ChainContext.db_later`) and the
    id is known once :meth:`wait` returned. Given as an argument to ``db_later``, it stands
    for the id, read when that write runs (after this one: the queue keeps their order)."""

    __slots__ = ("_future", "_value", "_waited", "_written")

    def __init__(self, value: int | None = None) -> None:
        self._future: asyncio.Future[Any] | None = None
        self._value, self._waited = value, True
        self._written = value is not None

    def queue(self, submit: Callable[..., asyncio.Future[Any]], fn: Callable[..., int],
              *args: Any) -> StoredRow:
        """Queue ``fn(*args)`` through *submit*; its result becomes this row's id."""
        def write() -> int:
            value = fn(*args)
            self._value, self._written = value, True
            return value

        self._future, self._waited = submit(write), False
        return self

    def now(self, what: str) -> int | None:
        if not self._waited:
            raise RuntimeError(
                f"{what} is stored after the chain goes on under load: "
                f"'await issued.stored()' gives it (and waits for the state DB)")
        return self._value

    def written(self) -> int | None:
        """The id, on the state DB's thread once the write ran (for a later write)."""
        if not self._written:
            raise RuntimeError("the row a later state DB write refers to was not written")
        return self._value

    async def wait(self) -> int | None:
        if not self._waited:
            assert self._future is not None
            self._value = await asyncio.shield(self._future)
            self._waited = True
        return self._value


@dataclass(frozen=True)
class Issued:
    """A certificate issued by a chain (and stored in the state DB)."""

    account: Any
    order: Any
    names: tuple[str, ...]
    pem: str
    key_pem: bytes
    cert: x509.Certificate
    alternates: tuple[str, ...]
    row: StoredRow = field(default_factory=StoredRow, repr=False, compare=False)

    @property
    def cert_id(self) -> int | None:
        """The certificate's id in the state DB. Under load its row is written after the
        chain went on: ``await issued.stored()`` first (a RuntimeError says so)."""
        return self.row.now("Issued.cert_id")

    async def stored(self) -> int | None:
        """The certificate's id in the state DB, once its row is written."""
        return await self.row.wait()


@dataclass
class Produced:
    """An authorization this chain validated, stored (with *status*) when the chain ends."""

    account_id: int | None
    url: str
    id_type: str
    id_value: str
    challenge: str
    expires: Any
    status: str = "valid"


@dataclass(frozen=True)
class ValidationSeen:
    """The CA's validation requests (RFC 8555 §7.5.1) seen for one authorization this chain
    answered: *first* is when the first was seen (epoch; None: none was), *count* how many
    were seen until its poll ended."""

    authorization: str
    challenge: str
    name: str
    first: float | None
    count: int


class Flows(PhaseRecorder):
    """Orders, authorizations and certificates; state kept by the ChainContext."""

    #: when this chain first saw a validation request of the CA (epoch); None: never
    first_validation_request: float | None = None
    #: what was seen, one entry per authorization answered (in order)
    validations_seen: tuple[ValidationSeen, ...] = ()

    runtime: WorkerRuntime
    client: Any
    settings: Any
    publisher: Any
    store: Any
    directory: str
    certificates: int
    _produced_authz: list[Produced]
    db: Callable[..., Awaitable[Any]]
    db_later: Callable[..., Awaitable[None]]
    _submit_later: Callable[..., asyncio.Future[Any]]
    _beside: Callable[[Callable[[], Awaitable[Any]]], bool]
    mode: str
    account_id: Callable[[Any], int | None]
    take_account: Callable[..., Awaitable[Any]]
    random_names: Callable[..., list[str]]
    skip: Callable[[str], NoReturn]
    _stored: Callable[[str], None]

    # -- orders and authorizations -------------------------------------------------------
    @staticmethod
    def identifiers(names: list[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for n in names:
            try:
                ipaddress.ip_address(n)
                out.append(("ip", n))
            except ValueError:
                out.append(("dns", n))
        return out

    async def authorize(self, account: Any, order: Any,
                        challenge: str | Sequence[str] | None = None) -> list[Any]:
        """Answer every pending authorization of *order* and wait.

        Each is answered with the first type of *challenge* (one type, or several in order
        of preference; default ``--wec-challenge``) that the CA offers for it; one offering
        none of them skips the chain (:mod:`pytest_wec.worker.challenges`). Returns the
        final authorizations (RFC 8555 §7.5). Challenge data is published before
        the challenge is answered and removed afterwards. An authorization the CA reports
        final but not valid (invalid, deactivated, expired, revoked: RFC 8555 §7.1.6) is not
        answered: :class:`~pytest_wec.acme.AcmeAuthorizationEnded` says what the CA reported
        (a status outside §7.1.6 raises :class:`~pytest_wec.acme.AcmeStatusError`).
        """
        from pytest_wec.acme import (
            AcmeAuthorizationEnded,
            check_authorization_status,
            key_authorization,
        )
        from pytest_wec.worker.answers import publish_answer
        from pytest_wec.worker.challenges import not_offered, pick, preference, route_for

        prefs = preference(challenge, self.settings)
        done = []
        for url in order.authorizations:
            authz = await self.client.get_authorization(account, url)
            status = check_authorization_status(authz, url)
            if status == "valid":
                done.append(authz)
                continue
            if status != "pending":
                ident = authz.identifier
                raise AcmeAuthorizationEnded(
                    f"authorization {url} ({ident.type}:{ident.value}) of order {order.url} "
                    f"is {status!r} at the CA, a final status of RFC 8555 §7.1.6: its "
                    f"challenge is not answered", url, status, authz)
            chall = pick(authz.challenges, prefs)
            ident = authz.identifier
            if chall is None:
                self.skip(not_offered(authz, prefs))
            kind = chall.type
            key_authz = key_authorization(chall.token, account.key)
            # the answer published and the watch registered (both before the challenge is
            # answered), at once
            published: Any
            watch: Any
            published, watch = await asyncio.gather(
                publish_answer(self.publisher, kind, ident.value, chall.token, key_authz,
                               route_to=route_for(self.settings, kind, ident.type)),
                self._watch_validation(kind, ident.value, chall.token),
                return_exceptions=True)
            if isinstance(watch, BaseException):
                raise watch  # cancelled (a failed watch is None)
            if isinstance(published, BaseException):
                if watch is not None:
                    watch.close()
                raise published
            unpublish = published
            sent: float | None = None
            authz_valid: float | None = None
            try:
                mark = len(self.requests)
                answered = await self._answer(account, url, chall)
                if answered is not None:  # None: another chain's answer started it
                    sent = self._sent(mark, "challenge")
                mark = len(self.requests)
                polls = self._polls_of(url)
                authz = await self.client.poll_authorization(
                    account, url, timeout=POLL_TIMEOUT, answered=answered,
                    seen=None if watch is None else watch.wait)
                self._count_polls(order.url, self._polls_of(url) - polls)
                if authz.status == "valid" and sent is not None:
                    authz_valid = self._arrived(mark, "authz")
            finally:
                try:
                    if not self._beside(unpublish):  # under load: withdrawn beside the chain
                        await unpublish()
                finally:
                    if watch is not None:
                        self._saw(url, kind, watch)
                        if sent is not None and watch.first is not None:
                            self._phase("first_validation_request",
                                        max(watch.first - sent, 0.0))
                        if authz_valid is not None:
                            self._phase("validation_requests", watch.count)
            if authz_valid is not None and sent is not None:
                self._phase("validation", authz_valid - sent)
            done.append(authz)
            if authz.status == "valid":
                # stored when this chain ends: until then no other chain may take it (and,
                # say, deactivate it before this chain's order is finalized)
                self._produced_authz.append(Produced(
                    self.account_id(account), url, ident.type, ident.value, kind,
                    authz.body.get("expires")))
        return done

    async def _watch_validation(self, kind: str, name: str, token: str) -> Any:
        """A watch for the CA's validation requests of this challenge, registered before
        it is answered; None where the runtime has no feed (or it failed)."""
        watch = getattr(self.runtime, "watch_validation", None)
        if watch is None:
            return None
        try:
            return await watch(kind, name, token if kind == "http-01" else None)
        except Exception as exc:  # polling on the usual schedule is the fallback
            log.debug("no watch for the validation of %s %s: %s", kind, name, exc)
            return None

    def _saw(self, url: str, kind: str, watch: Any) -> None:
        watch.close()
        first: float | None = watch.first
        self.validations_seen = (*self.validations_seen,
                                 ValidationSeen(url, kind, watch.name, first, watch.count))
        if first is not None and (self.first_validation_request is None
                                  or first < self.first_validation_request):
            self.first_validation_request = first

    def mark_produced_authorization(self, url: str, status: str) -> None:
        """The authorization at *url*, validated by this chain's :meth:`authorize`, is now
        *status* at the CA (``deactivated`` by this chain, RFC 8555 §7.5.2): the state DB
        gets it with that status when the chain ends, never as valid for others to take."""
        found = [p for p in self._produced_authz if p.url == url]
        if not found:
            raise ValueError(f"authorization {url} was not validated by this chain")
        for produced in found:
            produced.status = status

    async def _answer(self, account: Any, authz_url: str, chall: Any) -> Any:
        """Answer *chall*; None when it was refused because it is already answered.

        Under load, two chains of one account may order the same names at once (a renewal
        and a reuse of the same identifier, say), and a CA may hand both the same pending
        order (Pebble does, RFC 8555 §7.4 allows it): the second answer to the shared
        challenge is then refused. The authorization is read again, and the refusal
        stands unless the challenge is being validated or the authorization is valid; an
        authorization found final but not valid meanwhile (deactivated, say: §7.1.6) raises
        :class:`~pytest_wec.acme.AcmeAuthorizationEnded`, from the refusal.
        """
        from pytest_wec.acme import AcmeAuthorizationEnded, AcmeProblem

        try:
            return await self.client.answer_challenge(account, chall.url)
        except AcmeProblem as refusal:
            current = await self.client.get_authorization(account, authz_url)
            now = current.challenge(chall.type)
            if current.status == "valid" or (
                    current.status == "pending" and now is not None
                    and now.status in ("processing", "valid")):
                return None
            if current.status != "pending":
                raise AcmeAuthorizationEnded(
                    f"authorization {authz_url} is {current.status!r} at the CA, a final "
                    f"status of RFC 8555 §7.1.6; its challenge's answer was refused: "
                    f"{str(refusal).splitlines()[0]}",
                    authz_url, current.status, current) from refusal
            raise

    async def publish(self, kind: str, ident: str, token: str, key_authz: str) -> Any:
        """Publish *key_authz* where the CA looks for challenge *kind* of *ident* (§8.3,
        §8.4, RFC 8737); returns the coroutine function that removes it again.

        :meth:`authorize` does this for the right value; chains call it directly to publish
        a wrong one. A DNS name is routed to the type's own ``--wec-ip`` address while
        published, as :meth:`authorize` does.
        """
        from pytest_wec.worker.answers import publish_answer
        from pytest_wec.worker.challenges import route_for

        [(id_type, _)] = self.identifiers([ident])
        return await publish_answer(self.publisher, kind, ident, token, key_authz,
                                    route_to=route_for(self.settings, kind, id_type))

    async def order(self, account: Any, names: list[str], **kwargs: Any) -> Any:
        """newOrder for *names* (RFC 8555 §7.4), recorded in the state DB. It asks for
        ``--wec-profile`` (draft-aaron-acme-profiles) unless *kwargs* name a ``profile``
        (None: none asked)."""
        if "profile" not in kwargs and self.settings.profile:
            kwargs["profile"] = self.settings.profile
        mark = len(self.requests)
        order = await self.client.new_order(account, self.identifiers(names), **kwargs)
        sent = self._sent(mark, "newOrder")
        if sent is not None:
            if self._order_sent is None:
                self._order_sent = {}
            self._order_sent[order.url] = sent
        await self.db_later(self.store.add_order, self.directory, self.account_id(account),
                            order.url, order.status, names)
        self._stored("order")
        return order

    # -- certificates ------------------------------------------------------------------
    async def issue(
        self,
        account: Any | None = None,
        names: list[str] | None = None,
        *,
        challenge: str | Sequence[str] | None = None,
        cert_key: str | None = None,
        replaces: str | None = None,
        profile: str | None = None,
    ) -> Issued:
        """Order, authorize, finalize, poll and download (RFC 8555 §7.4); store the result.
        *profile* (default ``--wec-profile``) is the order's certificate profile."""
        account = account or await self.take_account()
        names = names or self.random_names()
        kw: dict[str, Any] = {"replaces": replaces} if replaces else {}
        if profile is not None:
            kw["profile"] = profile
        order = await self.order(account, names, **kw)
        await self.authorize(account, order, challenge)
        order = await self.client.poll_order(account, order, timeout=POLL_TIMEOUT, until="ready",
                                             step=ORDER_STEP)
        if order.status != "ready":
            raise AssertionError(f"order is {order.status}, not ready, after its "
                                 f"authorizations: {order.body.get('error')}")
        return await self.certify(account, order, names, cert_key=cert_key)

    async def certify(
        self, account: Any, order: Any, names: list[str], *, cert_key: str | None = None
    ) -> Issued:
        """Finalize a ready *order* with a CSR for *names*, poll it, download and store the
        certificate (RFC 8555 §7.4, §7.4.2): the tail of :meth:`issue`."""
        from pytest_wec.acme import generate_cert_key, make_csr

        key = generate_cert_key(cert_key or self.settings.cert_key)
        mark = len(self.requests)
        order = await self.client.finalize(account, order, make_csr(names, key))
        finalized = self._sent(mark, "finalize")
        valid_at = self._arrived(mark, "finalize") if order.status == "valid" else None
        # §7.4: "processing" with a Retry-After waits that long; without, short steps
        mark = len(self.requests)
        order = await self.client.poll_order(account, order, timeout=POLL_TIMEOUT,
                                             step=ORDER_STEP)
        if order.status != "valid" or not order.certificate:
            raise AssertionError(f"order is {order.status} after finalize: "
                                 f"{order.body.get('error')}")
        if valid_at is None:
            valid_at = self._arrived(mark, "order")
        if finalized is not None and valid_at is not None:
            self._phase("issuance", valid_at - finalized)
        mark = len(self.requests)
        cert = await self.client.download_certificate(account, order.certificate)
        ordered = (self._order_sent or {}).get(order.url)
        downloaded = self._arrived(mark, "certificate")
        if ordered is not None and downloaded is not None:
            self._phase("time_to_certificate", downloaded - ordered)
        self.certificates += 1
        parsed = x509.load_pem_x509_certificate(cert.pem.encode())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        store = (self.store.add_certificate, self.directory, self.account_id(account),
                 order.url, cert.pem, key_pem, format(parsed.serial_number, "x"), names,
                 parsed.not_valid_after_utc)
        if self.mode == "load":  # written while the chain goes on (db_later)
            row = StoredRow().queue(self._submit_later, *store)
        else:
            row = StoredRow(await self.db(*store))
        self._stored("certificate")
        return Issued(account, order, tuple(names), cert.pem, key_pem, parsed,
                      tuple(cert.alternates), row)
