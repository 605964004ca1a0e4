"""ACME operations for one chain (RFC 8555 §7), over the shared network layer.

An :class:`AcmeClient` is a cheap view of an :class:`~pytest_wec.acme._network.AcmeNetwork`
that records who is asking; make one per chain run with
``network.client(chain, chain_id, observer)``. Operations return frozen
values (:mod:`~pytest_wec.acme._messages`) and raise the errors of
:mod:`~pytest_wec.acme._errors`. Polling an order or an authorization is
:mod:`~pytest_wec.acme._polling`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urljoin

import orjson

from ._ari import RenewalInfo, cert_id
from ._csr import CertPrivateKey
from ._errors import AcmeProtocolError
from ._jws import AccountKey, b64url, external_account_binding, key_change_jws
from ._messages import (
    Account,
    Authorization,
    Certificate,
    Challenge,
    Directory,
    Identifier,
    IdentifierLike,
    Order,
)
from ._network import AcmeNetwork, Observed, retry_after_seconds
from ._parse import json_body, location, media_type, parse_link_header, rfc3339
from ._polling import Polling
from ._transport import Response

__all__ = ["AcmeClient"]

_EMPTY = b"{}"
_PEM_CHAIN = "application/pem-certificate-chain"


T = TypeVar("T")


def _retry_after(resp: Response) -> float | None:
    return retry_after_seconds(resp.headers.get("retry-after"))


def _order_parser(url: str | None) -> Callable[[Response], Order]:
    def parse(resp: Response) -> Order:
        order_url = url if url is not None else location(resp, "newOrder")
        return Order.from_body(order_url, json_body(resp, "order"), _retry_after(resp))

    return parse


def _authz_parser(url: str) -> Callable[[Response], Authorization]:
    def parse(resp: Response) -> Authorization:
        return Authorization.from_body(url, json_body(resp, "authorization"), _retry_after(resp))

    return parse


def _challenge(resp: Response) -> Challenge:
    return Challenge.from_body(json_body(resp, "challenge"), retry_after=_retry_after(resp))


def _raw(resp: Response) -> Response:
    return resp


def _ignore(resp: Response) -> None:
    return None


class AcmeClient(Polling):
    """The ACME operations of one chain (RFC 8555 §7).

    ``network`` is shared; ``obs`` names the chain in every RequestResult.
    Build it with :meth:`AcmeNetwork.client`. ``poll_order`` and ``poll_authorization``
    come from :class:`~pytest_wec.acme._polling.Polling`.
    """

    __slots__ = ("_obs", "network", "polls")

    def __init__(self, network: AcmeNetwork, obs: Observed) -> None:
        self.network = network
        self._obs = obs
        #: url -> fetches made by poll_order / poll_authorization (the chain's ``polls`` phase)
        self.polls: dict[str, int] = {}

    @property
    def chain(self) -> str:
        return self._obs.chain

    @property
    def chain_id(self) -> str:
        return self._obs.chain_id

    # -- directory, raw requests ---------------------------------------------

    async def directory(self) -> Directory:
        """The directory, fetched once per network (RFC 8555 §7.1.1)."""
        return await self.network.directory(self._obs)

    async def post_as_get(
        self, account: Account, url: str, endpoint: str, *, accept: str | None = None
    ) -> Response:
        """POST-as-GET any resource (§6.3); ``endpoint`` names it in the results."""
        return await self.network.post(
            self._obs, endpoint, url, account.key, account.url, None, _raw, accept=accept
        )

    async def _post(
        self,
        endpoint: str,
        url: str,
        account: Account,
        payload: bytes | dict[str, Any] | None,
        parse: Callable[[Response], T],
    ) -> T:
        body = orjson.dumps(payload) if isinstance(payload, dict) else payload
        return await self.network.post(
            self._obs, endpoint, url, account.key, account.url, body, parse
        )

    # -- accounts ------------------------------------------------------------

    async def new_account(
        self,
        key: AccountKey,
        contact: Iterable[str] = (),
        tos_agreed: bool = True,
        only_return_existing: bool = False,
        *,
        eab: tuple[str, bytes] | None = None,
    ) -> Account:
        """Create an account, or find the key's account (§7.3, §7.3.1).

        ``Account.created`` tells 201 (new) from 200 (existing). ``eab`` is an
        external account binding ``(kid, hmac_key)`` (§7.3.4).
        """
        directory = await self.directory()
        url = directory.new_account
        payload: dict[str, Any] = {}
        contacts = list(contact)
        if contacts:
            payload["contact"] = contacts
        if tos_agreed:
            payload["termsOfServiceAgreed"] = True
        if only_return_existing:
            payload["onlyReturnExisting"] = True
        if eab is not None:
            payload["externalAccountBinding"] = external_account_binding(key, url, *eab)

        def parse(resp: Response) -> Account:
            if resp.status not in (200, 201):
                raise AcmeProtocolError(f"newAccount: expected HTTP 200 or 201, got {resp.status}")
            loc = location(resp, "newAccount")
            body = json_body(resp, "newAccount") if resp.body else {}
            return Account(loc, key, body, created=resp.status == 201)

        return await self.network.post(
            self._obs, "newAccount", url, key, None, orjson.dumps(payload), parse
        )

    def _account_parser(self, account: Account, key: AccountKey) -> Callable[[Response], Account]:
        def parse(resp: Response) -> Account:
            body = json_body(resp, "account") if resp.body else account.body
            return Account(account.url, key, body)

        return parse

    async def fetch_account(self, account: Account) -> Account:
        """The account's current state, POST-as-GET to the account URL (§7.3.2, §6.3)."""
        parse = self._account_parser(account, account.key)
        return await self._post("account", account.url, account, None, parse)

    async def update_account(self, account: Account, contact: Iterable[str]) -> Account:
        """Replace the account's contact URLs (§7.3.2)."""
        parse = self._account_parser(account, account.key)
        payload = {"contact": list(contact)}
        return await self._post("account", account.url, account, payload, parse)

    async def deactivate_account(self, account: Account) -> Account:
        """Deactivate the account; the server refuses its later requests (§7.3.6)."""
        parse = self._account_parser(account, account.key)
        payload = {"status": "deactivated"}
        return await self._post("account", account.url, account, payload, parse)

    async def key_change(self, account: Account, new_key: AccountKey) -> Account:
        """Roll the account over to ``new_key`` (§7.3.5); returns it with the new key."""
        directory = await self.directory()
        url = directory.url_for("keyChange")
        inner = key_change_jws(new_key, account.url, account.key, url)
        parse = self._account_parser(account, new_key)
        return await self._post("keyChange", url, account, inner, parse)

    # -- orders --------------------------------------------------------------

    async def new_order(
        self,
        account: Account,
        identifiers: Sequence[IdentifierLike],
        not_before: datetime | str | None = None,
        not_after: datetime | str | None = None,
        replaces: str | None = None,
        *,
        profile: str | None = None,
    ) -> Order:
        """Apply for a certificate (§7.4).

        ``identifiers``: :class:`Identifier`, ``(type, value)`` pairs or names.
        ``replaces`` is the ARI certID of the certificate being renewed;
        ``profile`` a profile name from ``directory.meta.profiles``.
        """
        if isinstance(identifiers, str):
            identifiers = [identifiers]
        directory = await self.directory()
        payload: dict[str, Any] = {
            "identifiers": [Identifier.coerce(i).to_json() for i in identifiers]
        }
        if not_before is not None:
            payload["notBefore"] = rfc3339(not_before)
        if not_after is not None:
            payload["notAfter"] = rfc3339(not_after)
        if replaces is not None:
            payload["replaces"] = replaces
        if profile is not None:
            payload["profile"] = profile
        return await self._post(
            "newOrder", directory.new_order, account, payload, _order_parser(None)
        )

    async def get_order(self, account: Account, url: str) -> Order:
        """The order's current state, POST-as-GET (§7.1.3, §6.3)."""
        return await self._post("order", url, account, None, _order_parser(url))

    async def finalize(self, account: Account, order: Order, csr_der: bytes) -> Order:
        """Submit the CSR (§7.4); the order moves to processing or valid."""
        payload = {"csr": b64url(csr_der)}
        return await self._post(
            "finalize", order.finalize, account, payload, _order_parser(order.url)
        )

    # -- authorizations and challenges ---------------------------------------

    async def get_authorization(self, account: Account, url: str) -> Authorization:
        """The authorization with its challenges, POST-as-GET (§7.5)."""
        return await self._post("authz", url, account, None, _authz_parser(url))

    async def get_challenge(self, account: Account, url: str) -> Challenge:
        """The challenge's current state, POST-as-GET (§7.5.1)."""
        return await self._post("challenge", url, account, None, _challenge)

    async def answer_challenge(self, account: Account, challenge_url: str) -> Challenge:
        """Tell the server the challenge is ready for validation: POST ``{}`` (§7.5.1)."""
        return await self._post("challenge", challenge_url, account, _EMPTY, _challenge)

    async def deactivate_authorization(self, account: Account, url: str) -> Authorization:
        """Give up an authorization (§7.5.2)."""
        payload = {"status": "deactivated"}
        return await self._post("authz", url, account, payload, _authz_parser(url))

    # -- certificates ----------------------------------------------------------

    async def download_certificate(self, account: Account, url: str) -> Certificate:
        """The PEM chain, POST-as-GET (§7.4.2); alternates from Link rel="alternate"."""

        def parse(resp: Response) -> Certificate:
            mt = media_type(resp)
            if mt != _PEM_CHAIN:
                raise AcmeProtocolError(
                    f"certificate: expected Content-Type {_PEM_CHAIN}, got {mt or 'none'}"
                )
            try:
                pem = resp.body.decode("ascii")
            except UnicodeDecodeError:
                raise AcmeProtocolError("certificate: PEM body is not ASCII") from None
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise AcmeProtocolError("certificate: body holds no PEM certificate")
            links = parse_link_header(resp.headers.get_all("link"))
            alternates = tuple(urljoin(url, u) for u, rel in links if rel == "alternate")
            return Certificate(url, pem, alternates)

        return await self.network.post(
            self._obs, "certificate", url, account.key, account.url, None, parse, accept=_PEM_CHAIN
        )

    async def revoke(
        self,
        cert_der: bytes,
        reason: int | None = None,
        account: Account | None = None,
        cert_key: AccountKey | CertPrivateKey | None = None,
    ) -> None:
        """Revoke a certificate (§7.6), signed by ``account`` (kid) or by the
        certificate's own key ``cert_key`` (jwk): exactly one of them.

        ``reason`` is a CRL reason code (RFC 5280 §5.3.1), e.g. 1 keyCompromise.
        """
        if (account is None) == (cert_key is None):
            raise ValueError("revoke needs exactly one of account and cert_key")
        directory = await self.directory()
        url = directory.url_for("revokeCert")
        payload: dict[str, Any] = {"certificate": b64url(cert_der)}
        if reason is not None:
            payload["reason"] = reason
        body = orjson.dumps(payload)
        if account is not None:
            key, kid = account.key, account.url
        else:
            key = (
                cert_key
                if isinstance(cert_key, AccountKey)
                else AccountKey.from_private_key(cert_key)
            )
            kid = None
        await self.network.post(self._obs, "revokeCert", url, key, kid, body, _ignore)

    async def renewal_info(self, cert_der_or_id: bytes | str) -> RenewalInfo:
        """The suggested renewal window (ARI, RFC 9773 §4.2), by unauthenticated GET.

        Takes a DER certificate or its certID. AcmeNotSupported when the
        directory offers no ``renewalInfo``.
        """
        directory = await self.directory()
        base = directory.url_for("renewalInfo")
        cid = cert_id(cert_der_or_id) if isinstance(cert_der_or_id, bytes) else cert_der_or_id
        url = f"{base.rstrip('/')}/{cid}"

        def parse(resp: Response) -> RenewalInfo:
            return RenewalInfo.from_body(cid, json_body(resp, "renewalInfo"), _retry_after(resp))

        return await self.network.get(self._obs, "renewalInfo", url, parse)

    def __repr__(self) -> str:
        return f"AcmeClient({self.network.directory_url!r}, chain={self.chain!r})"
