"""ChainContext: what a chain gets as its ``wec`` fixture, once or under load.

It holds the per-chain ACME client view (every exchange recorded as a RequestResult), the
challenge publisher, the state store, and the flows chains share: make or take an account,
authorize an order through a challenge, issue a certificate, take a stored certificate.

In ``once`` mode (an integration run) a chain that needs an account or a certificate and
finds none in the state DB makes one; in ``load`` mode it raises :class:`NoContext` and the
chain run counts as skipped (the picker chooses chains whose needs exist, but a claim can
still lose a race).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from pytest_wec.wire.results import RequestResult
from pytest_wec.worker.flows import Flows, Issued, Produced, StoredRow

if TYPE_CHECKING:
    from pytest_wec.worker.runtime import WorkerRuntime

__all__ = ["ChainContext", "Issued", "NoContext", "NotOffered"]

CLAIM_TTL = 300.0
#: seconds a load chain's queued state-DB writes (:meth:`ChainContext.db_later`) may take
#: once the chain ended before its result says they failed
SETTLE_TIMEOUT = 60.0
#: seconds a load chain waits before it gives up for want of an External Account Binding
#: key (none given, or single-use ones used up): the load does not spin on instant ends
EAB_PAUSE = 0.5
#: parsed account keys a worker keeps, by their stored PEM (:func:`_stored_key`)
KEYS_KEPT = 4096


class NoContext(Exception):
    """The state DB holds nothing this chain needs (load mode)."""


class NotOffered(NoContext):
    """The CA offers nothing this chain can use (for an identifier, none of the challenge
    types ``--wec-challenge`` lists): under load the run counts as skipped, with the reason
    (:meth:`ChainContext.skip`)."""


def _key_alg(settings: Any) -> tuple[str, int | None]:
    value: str = settings.account_key.value
    if value.startswith("RS256"):
        bits = int(value.split("-", 1)[1]) if "-" in value else 2048
        return "RS256", bits
    return value, None


@functools.lru_cache(maxsize=KEYS_KEPT)
def _stored_key(pem: str, alg: str) -> Any:
    """The account key a state-DB row holds, parsed once per worker: a load run's chains take
    the same accounts again and again, and parsing a key costs more than the rest of taking
    one from the DB. :class:`~pytest_wec.acme.AccountKey` is immutable, so chains share it;
    a key rolled over is another PEM."""
    from pytest_wec.acme import AccountKey

    return AccountKey.from_pem(pem, alg=alg)


class ChainContext(Flows):
    """One chain run's view of the worker runtime."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        name: str,
        *,
        mode: str = "once",
        chain_id: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.mode = mode
        self.chain_id = chain_id or secrets.token_hex(8)
        self.requests: list[RequestResult] = []
        self.certificates = 0
        self._expected: frozenset[str] = frozenset()
        self._retry_waits: list[list[object]] = []  # the client's Retry-After sleeps
        self.client = runtime.network.client(name, self.chain_id, self._observe)
        self._hear_waits(self.client)
        self.settings = runtime.settings
        self.directory = runtime.directory
        self.store = runtime.store
        self.publisher = runtime.publisher
        self._account_ids: dict[str, int] = {}
        self._claims: list[tuple[str, int]] = []
        self._produced_authz: list[Produced] = []
        self._in_db = 0
        self._later: list[asyncio.Future[Any]] = []
        self._undos: list[asyncio.Future[Any]] = []

    # -- results ---------------------------------------------------------------------------
    def _observe(self, result: RequestResult) -> None:
        problem = result["problem"]
        if problem and self._expected and problem.rsplit(":", 1)[-1] in self._expected:
            result["ok"] = True
            result["error"] = "expected"
        self.requests.append(result)
        if result["status"]:
            self.runtime.last_answer = result["started"] + result["took"]

    def _hear_waits(self, client: Any) -> None:
        """Have *client* tell this chain of its Retry-After sleeps (a rate-limit wait when
        the answer was 429: counted apart, in no request's latency)."""
        obs = getattr(client, "_obs", None)
        if obs is not None and hasattr(obs, "on_wait"):
            obs.on_wait = self._waited

    def _waited(self, endpoint: str, status: int, seconds: float, limit: str | None) -> None:
        self._retry_waits.append([endpoint, status, round(seconds, 6), limit or ""])

    def wire_extras(self, ok: bool) -> dict[str, Any]:
        """What the ChainResult carries beyond its requests: phases and deviations
        (:class:`~pytest_wec.worker.phases.PhaseRecorder`), and the retry sleeps."""
        out = super().wire_extras(ok)
        if self._retry_waits:
            out["retry_waits"] = [list(w) for w in self._retry_waits]
        return out

    def waiting_on(self) -> str:
        """What this chain waits on now, in a word or two (the stall watch's report)."""
        current = self.client._obs.current
        if current is not None:
            return f"request {current}"
        if self._in_db:
            return "state DB"
        if self.requests:
            return f"after {self.requests[-1]['endpoint']}"
        return "starting"

    @contextlib.contextmanager
    def expecting(self, *codes: str) -> Iterator[None]:
        """Problems of *codes* (e.g. ``accountDoesNotExist``) are what the chain asks for:
        the requests refused with them count as ok (``error`` says ``expected``)."""
        before = self._expected
        self._expected = before | frozenset(codes)
        try:
            yield
        finally:
            self._expected = before

    def skip(self, reason: str) -> NoReturn:
        """End this chain run as skipped, not failed: ``pytest.skip`` when run once,
        :class:`NotOffered` under load (counted as skipped, *reason* as its error)."""
        if self.mode == "load":
            raise NotOffered(reason)
        import pytest

        pytest.skip(reason)

    # -- small helpers -----------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        return self.runtime.info

    @property
    def challenge_server(self) -> Any:
        """Where the challenge server answers, and its publisher
        (:class:`~pytest_wec.worker.arguments.ChallengeServer`)."""
        from pytest_wec.worker.arguments import challenge_server_of

        return challenge_server_of(self.runtime)

    @property
    def pebble(self) -> Any:
        """Pebble's management API client, when the CA is Pebble; else None."""
        return self.runtime.pebble

    def random_names(self, n: int | None = None, *, wildcard: bool = False) -> list[str]:
        """*n* (default ``--wec-names``) random names for one order: under a registered
        domain of their own (a fresh one per call, under ``--wec-suffix``), or under
        ``--wec-domain`` when given (:mod:`pytest_wec.worker.names`)."""
        from pytest_wec.worker.names import NameMaker

        count = self.settings.names if n is None else n
        maker = NameMaker(self.settings.domain, self.settings.suffix)
        return maker.names(count, wildcard=wildcard)

    def new_key(self) -> Any:
        from pytest_wec.acme import AccountKey

        alg, bits = _key_alg(self.settings)
        return AccountKey.generate(alg, bits=bits) if bits else AccountKey.generate(alg)

    def _stored(self, resource: str) -> None:
        """This chain stored a row of *resource*: the worker's next picks know it exists
        before the next read of the state DB's counts (:mod:`pytest_wec.worker.counts`)."""
        live = getattr(self.runtime, "counts", None)
        if live is not None:
            live.stored(resource)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._in_db += 1
        try:
            return await self.runtime.db(fn, *args, **kwargs)
        finally:
            self._in_db -= 1

    async def db_read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`db` for a store call that only reads (``pick_account``, ``get_account``,
        ``get_certificate``...): it does not wait behind the writes queued before it, so it
        may not see those of this chain's :meth:`db_later` writes still queued. Once: as
        :meth:`db`."""
        if self.mode != "load":
            return await self.db(fn, *args, **kwargs)
        self._in_db += 1
        try:
            read = getattr(self.runtime, "db_read", None) or self.runtime.db
            return await read(fn, *args, **kwargs)
        finally:
            self._in_db -= 1

    async def db_later(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A state-store write whose result the chain does not use (an order, an
        authorization or a status recorded for other chains, a claim released).

        Once: it runs now, as :meth:`db`. Load: it is queued now, behind the chain's earlier
        calls and ahead of its later ones, and the chain goes on; the runner waits for it
        after the chain's clock stopped (:meth:`settle`), so a chain's time holds no wait
        for pytest-wec's own bookkeeping, and a write that fails still fails the chain.
        An argument that is an :class:`Issued`'s ``row`` stands for its id (the write that
        makes it is queued first).
        """
        if any(isinstance(a, StoredRow) for a in (*args, *kwargs.values())):
            fn = _with_rows(fn, args, kwargs)
            args, kwargs = (), {}
        if self.mode != "load":
            await self.db(fn, *args, **kwargs)
            return
        self._submit_later(fn, *args, **kwargs)

    def _submit_later(self, fn: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Queue a store call now (load mode); :meth:`settle` waits for it."""
        submit = getattr(self.runtime, "db_submit", None)
        fut: asyncio.Future[Any]
        if submit is not None:
            fut = submit(fn, *args, **kwargs)
        else:  # a runtime without a queue: one after the other all the same
            before = self._later[-1] if self._later else None

            async def after() -> Any:
                if before is not None:
                    await asyncio.wait([before])
                return await self.runtime.db(fn, *args, **kwargs)

            fut = asyncio.ensure_future(after())
        self._later.append(fut)
        return fut

    def _beside(self, undo: Callable[[], Awaitable[Any]]) -> bool:
        """Under load, run *undo* (a challenge's answer withdrawn once its authorization is
        final) beside the chain, waited for by :meth:`settle`; False run once (the caller
        awaits it itself)."""
        if self.mode != "load":
            return False
        self._undos.append(asyncio.ensure_future(undo()))
        return True

    async def settle(self, timeout: float = SETTLE_TIMEOUT) -> str | None:
        """Wait (at most *timeout* s) for the writes :meth:`db_later` queued and the
        answers withdrawn beside the chain: None when all were done, else what went wrong
        (the first failure)."""
        later, self._later = self._later, []
        undos, self._undos = self._undos, []
        if not later and not undos:
            return None
        self._in_db += 1
        try:
            done, pending = await asyncio.wait([*undos, *later], timeout=timeout)
        finally:
            self._in_db -= 1
        for what, futs in (("withdrawing a challenge's answer", undos),
                           ("state DB write", later)):
            for fut in futs:
                if fut in done and not fut.cancelled() and fut.exception() is not None:
                    exc = fut.exception()
                    return f"{what} failed: {type(exc).__name__}: {exc}"
        if pending:
            return (f"{len(pending)} state DB writes or withdrawn answers not done "
                    f"{timeout:g}s after the chain")
        return None

    def client_with_signer(self, signer: Any) -> Any:
        """An ACME client whose every JWS comes from *signer* (a ``JwsSigner``).

        It shares the worker's transport but has its own directory and nonces, and records
        its exchanges as this chain's. Chains use it to send requests a correct client never
        signs, e.g. a JWS ``alg`` the CA must refuse (RFC 8555 §6.2).
        """
        from pytest_wec.acme import AcmeNetwork

        net = self.client.network
        forged = AcmeNetwork(
            net.directory_url, net.transport, timeout=net.timeout,
            max_nonce_retries=net.max_nonce_retries, max_retry_after=net.max_retry_after,
            max_retries=net.max_retries, poll_interval=net.poll_interval,
            nonce_method=net.nonce_method, signer=signer,
            client_ip_header=net.client_ip_header, client_addresses=net.client_addresses,
        )
        client = forged.client(self.name, self.chain_id, self.requests.append)
        self._hear_waits(client)
        return client

    # -- accounts ----------------------------------------------------------------------
    async def take_eab(self) -> Any:
        """The External Account Binding key (:class:`~pytest_wec.settings.eab.EabKey`) the
        next new account sends (RFC 8555 §7.3.4), taken from this worker's keys
        (:mod:`pytest_wec.worker.eab`); None when the run has none and the CA requires none.

        :class:`~pytest_wec.worker.eab.EabRequired` when the CA's directory says
        ``externalAccountRequired`` and no key was given; :class:`~pytest_wec.worker.eab.
        EabKeysUsedUp` (a :class:`NoContext`) when single-use keys ran out. Under load
        either comes after :data:`EAB_PAUSE` seconds.
        """
        __tracebackhide__ = True  # a run's failure shows the chain's line and the reason
        error: Exception
        pool = getattr(self.runtime, "eab", None)
        if pool is not None:
            try:
                return pool.take()
            except NoContext as exc:
                error = exc
        else:
            directory = await self.client.directory()
            if not directory.external_account_required:
                return None
            from pytest_wec.worker.eab import EabRequired, required_message

            error = EabRequired(required_message(self.directory))
        if self.mode == "load":
            await asyncio.sleep(EAB_PAUSE)
        raise error

    async def new_account(self, *, key: Any = None, contact: tuple[str, ...] = (),
                          store: bool = True) -> Any:
        """newAccount with a fresh key (RFC 8555 §7.3); stored in the state DB.

        It carries an External Account Binding (§7.3.4) when the run has keys
        (:meth:`take_eab`); the CA's refusal then says so in a note. ``store=False`` keeps
        the account private to this chain until :meth:`remember` (no other chain can take
        it meanwhile).
        """
        from pytest_wec.acme import AcmeProblem

        key = key or self.new_key()
        eab = await self.take_eab()
        try:
            account = await self.client.new_account(
                key, contact=contact, tos_agreed=True,
                eab=None if eab is None else (eab.kid, eab.hmac))
        except AcmeProblem as exc:
            if eab is not None:
                from pytest_wec.worker.eab import refused_note

                exc.add_note(refused_note(eab, self.runtime.eab.keys.source, exc.status,
                                          exc.code))
            raise
        if store:
            await self.remember(account, contact=contact)
        return account

    async def remember(self, account: Any, *, contact: tuple[str, ...] = ()) -> int:
        """Store *account* (with its current key) in the state DB; returns its row id."""
        row_id: int = await self.db(
            self.store.add_account, self.directory, account.url, account.key.to_pem(),
            account.key.alg, contact=",".join(contact),
        )
        self._account_ids[account.url] = row_id
        self._stored("account")
        return row_id

    def account_id(self, account: Any) -> int | None:
        return self._account_ids.get(account.url)

    def _account_from_row(self, row: Any) -> Any:
        from pytest_wec.acme import Account

        key = _stored_key(row.key_pem, row.alg)
        self._account_ids[row.url] = row.id
        return Account(url=row.url, key=key, body={"status": row.status})

    async def take_account(self, *, exclusive: bool = False) -> Any:
        """An account of this CA from the state DB (claimed when *exclusive*).

        Once: makes one when none exists, and an account taken without *exclusive* is held
        as a share until the chain ends, so that a chain of another xdist worker cannot
        claim it exclusively (to deactivate it or roll its key over) while this one signs
        with it. Load: a pick, recorded nowhere (the load's exclusive takers work on accounts
        of their own, docs/chains.md); :class:`NoContext` when none is free.
        """
        if exclusive or self.mode != "load":
            row = await self.db(self.store.claim_account, self.directory, self.runtime.holder,
                                CLAIM_TTL, exclusive=exclusive)
            if row is not None:
                self._claims.append(("account", row.id))
        else:
            row = await self.db_read(self.store.pick_account, self.directory)
        if row is None:
            if self.mode == "load":
                raise NoContext("no account in the state DB")
            return await self.new_account()
        return self._account_from_row(row)

    async def take_authorization(self, *, challenge_type: str | None = None,
                                 fresh: bool = False) -> Any:
        """Claim a valid, unexpired authorization of this CA (RFC 8555 §7.1.4) from the DB.

        The claim keeps other chains from taking it until :meth:`finish`, but not the CA from
        handing it to the account's other orders for its identifier (§7.4), which chains in
        flight may hold: under load a chain taking one must not change it (the chain that
        deactivates one makes its own). Its account comes from :meth:`account_of`.

        Once: when none is free, validates one for a random name and claims that; with
        *fresh*, always, by a new account that holds no other: an authorization whose
        identifier has no certificate yet (a stored one may be for an IP address every run
        orders, or for names renewed already, which a CA limiting certificates per set of
        names refuses to order again). Load: :class:`NoContext` when none is free.
        """
        claim = self.store.claim_authorization
        own = fresh and self.mode == "once"
        row = None
        if not own:
            row = await self.db(claim, self.directory, self.runtime.holder, CLAIM_TTL,
                                challenge_type=challenge_type)
        if row is None:
            if self.mode == "load":
                raise NoContext("no free valid authorization in the state DB")
            account = await (self.new_account() if own else self.take_account())
            order = await self.order(account, self.random_names(1))
            await self.authorize(account, order, challenge_type)
            await self._store_produced()
            row = await self.db(claim, self.directory, self.runtime.holder, CLAIM_TTL,
                                account_id=self.account_id(account),
                                challenge_type=challenge_type)
            if row is None:
                raise AssertionError("the authorization just validated is not claimable")
        self._claims.append(("authorization", row.id))
        return row

    async def take_certificate(self, *, not_renewed: bool = False, fresh: bool = False) -> Any:
        """Claim an unrevoked certificate of this CA; once mode issues one when none exist,
        and always with *fresh*: a certificate whose names have no other, for a chain that
        must not meet a CA's limit on certificates per set of names (Boulder's dev config
        takes 2 per set in 3 hours: a stored one may be a renewal already, or for an IP
        address the run orders again and again)."""
        row = None
        if not (fresh and self.mode == "once"):
            row = await self.db(self.store.claim_certificate, self.directory,
                                self.runtime.holder, CLAIM_TTL, not_renewed=not_renewed)
        if row is None:
            if self.mode == "load":
                raise NoContext("no unrevoked certificate in the state DB")
            issued = await self.issue()
            row = await self.db(self.store.get_certificate, await issued.stored())
            await self.db(self.store.claim_certificate_id, row.id, self.runtime.holder,
                          CLAIM_TTL)
        self._claims.append(("certificate", row.id))
        return row

    async def account_of(self, row: Any) -> Any:
        acc = await self.db_read(self.store.get_account, row.account_id)
        return self._account_from_row(acc)

    async def mark_accounts_dead(self) -> None:
        """The CA no longer knows the stored accounts this chain used: mark them dead."""
        for row_id in self._account_ids.values():
            await self.db(self.store.mark_account_status, row_id, "dead")

    # -- end -----------------------------------------------------------------------------
    async def _store_produced(self) -> None:
        produced, self._produced_authz = self._produced_authz, []
        for p in produced:
            await self.db_later(self.store.add_authorization, self.directory, p.account_id,
                                p.url, p.id_type, p.id_value, p.challenge, p.status,
                                expires=p.expires)
            if p.status == "valid":
                self._stored("authorization")

    async def finish(self) -> None:
        """Store what this chain produced for others and release every claim it holds."""
        await self._store_produced()
        for kind, row_id in self._claims:
            await self.db_later(self.store.release, kind, row_id, self.runtime.holder)
        self._claims.clear()


def _with_rows(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """*fn* with every :class:`StoredRow` among *args* and *kwargs* read when it runs."""
    def call() -> Any:
        return fn(*(a.written() if isinstance(a, StoredRow) else a for a in args),
                  **{k: v.written() if isinstance(v, StoredRow) else v
                     for k, v in kwargs.items()})

    return call


def now() -> float:
    return time.time()
