"""An in-memory ACME server for :class:`~pytest_wec.acme._transport.MockTransport`.

``MockTransport(FakeCA())`` lets the client, and chains built on it, run
offline: directory, nonces (each usable once, §6.5), accounts (§7.3), orders
(§7.4), authorizations and challenges (§7.5), certificates (real X.509 signed
by a throw-away CA key, §7.4.2), revocation (§7.6), key rollover (§7.3.5) and
renewalInfo (RFC 9773). Every JWS is verified (signature, nonce, url, kid or
jwk). Challenges validate as soon as they are answered; nothing is checked
against the network.

Faults are injected per endpoint with :meth:`FakeCA.inject`; ``pending_polls``
and ``processing_polls`` make resources stay non-final for that many polls,
answered with ``Retry-After: retry_after`` when set. ``limits`` (a :class:`~pytest_wec.acme.
_fakeca_limits.FakeLimits`) makes it refuse over Boulder's rate limits, as Boulder words it.
``profiles`` replaces the directory's ``meta.profiles`` (draft-aaron-acme-profiles): an
order for a profile it does not list is refused with invalidProfile. ``challenge_types``
are the challenges each authorization offers.

This module is the CA's front and its state: routing, fault injection, nonces, JWS
verification and problem responses; the resources' handlers and life cycles are
:mod:`pytest_wec.acme._fakeca_resources`.
"""

from __future__ import annotations

import itertools
import secrets
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._fakeca_limits import FakeLimits, LimitBook, RateLimitRefusal
from ._fakeca_resources import ACME_ERROR, FakeResources, Problem, public_key, verify
from ._jws import b64url, b64url_decode
from ._transport import Request, Response

__all__ = ["FakeCA"]

Fault = Response | Callable[[Request], Response]


class FakeCA(FakeResources):
    """A handler for MockTransport that behaves like a small ACME CA (see module doc)."""

    def __init__(
        self,
        base: str = "https://ca.test",
        *,
        renewal_info: bool = True,
        pending_polls: int = 0,
        processing_polls: int = 0,
        retry_after: int | None = None,
        limits: FakeLimits | None = None,
        profiles: Mapping[str, str] | None = None,
        challenge_types: tuple[str, ...] | None = None,
    ) -> None:
        self.base = base
        self.limits = LimitBook(limits) if limits is not None else None
        self.pending_polls = pending_polls
        self.processing_polls = processing_polls
        self.retry_after = retry_after
        self.directory: dict[str, Any] = {
            "newNonce": f"{base}/nonce",
            "newAccount": f"{base}/new-account",
            "newOrder": f"{base}/new-order",
            "revokeCert": f"{base}/revoke",
            "keyChange": f"{base}/key-change",
            "meta": {"termsOfService": f"{base}/tos", "profiles": {"default": "the default"}},
        }
        if renewal_info:
            self.directory["renewalInfo"] = f"{base}/renewal-info"
        if profiles is not None:  # these only; an order for another gets invalidProfile
            self.directory["meta"]["profiles"] = dict(profiles)
            self.strict_profiles = True
        if challenge_types is not None:
            self.challenge_types = tuple(challenge_types)
        self.nonces: set[str] = set()
        self.accounts: dict[str, dict[str, Any]] = {}  # url -> {"jwk", "body"}
        self.orders: dict[str, dict[str, Any]] = {}
        self.authzs: dict[str, dict[str, Any]] = {}
        self.challenges: dict[str, tuple[str, dict[str, Any]]] = {}  # url -> (authz url, body)
        self.certs: dict[str, bytes] = {}  # url -> PEM chain
        self.revoked: dict[int, int | None] = {}  # serial -> reason
        self.polls: dict[str, int] = defaultdict(int)
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        # (endpoint, method, protected JWS header) of the last 10000 requests
        self.seen: deque[tuple[str, str, dict[str, Any] | None]] = deque(maxlen=10_000)
        self._ids = itertools.count(1)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FakeCA root")])

    # -- fault injection -------------------------------------------------------

    def inject(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` with ``fault``.

        A fault response gets a fresh Replay-Nonce unless it has one already.
        """
        self.faults[endpoint].extend([fault] * times)

    def problem(
        self,
        status: int,
        code: str,
        detail: str = "",
        headers: dict[str, str] | None = None,
        subproblems: list[Any] | None = None,
    ) -> Response:
        """A problem response, e.g. ``ca.problem(400, "badNonce")``."""
        typ = code if ":" in code else ACME_ERROR + code
        body: dict[str, Any] = {"type": typ, "detail": detail, "status": status}
        if subproblems:
            body["subproblems"] = subproblems
        pairs = [("Replay-Nonce", self.new_nonce()), *(headers or {}).items()]
        return Response.make(status, pairs, json=body, content_type="application/problem+json")

    def new_nonce(self) -> str:
        nonce = b64url(secrets.token_bytes(12))
        self.nonces.add(nonce)
        return nonce

    # -- dispatch --------------------------------------------------------------

    def _route(self, url: str) -> tuple[str, str]:
        path = url[len(self.base) :] if url.startswith(self.base) else url
        head, _, rest = path.lstrip("/").partition("/")
        endpoint = {
            "dir": "directory",
            "nonce": "newNonce",
            "new-account": "newAccount",
            "new-order": "newOrder",
            "acct": "account",
            "order": "order",
            "authz": "authz",
            "chall": "challenge",
            "cert": "certificate",
            "revoke": "revokeCert",
            "key-change": "keyChange",
            "renewal-info": "renewalInfo",
            "finalize": "finalize",
        }.get(head, "other")
        return endpoint, rest

    def __call__(self, req: Request) -> Response:
        endpoint, rest = self._route(req.url)
        header = None
        if req.method == "POST":
            try:
                header = orjson.loads(b64url_decode(orjson.loads(req.body or b"{}")["protected"]))
            except (ValueError, KeyError, TypeError):
                header = None
        self.seen.append((endpoint, req.method, header))
        queue = self.faults.get(endpoint)
        if queue:
            fault = queue.popleft()
            resp = fault(req) if callable(fault) else fault
            if "replay-nonce" in resp.headers:
                return resp
            pairs = [*resp.headers._items, ("Replay-Nonce", self.new_nonce())]
            return Response.make(resp.status, pairs, resp.body)
        try:
            if endpoint == "directory":
                return Response.make(200, json=self.directory)
            if endpoint == "newNonce":
                status = 200 if req.method == "HEAD" else 204
                return Response.make(status, {"Replay-Nonce": self.new_nonce()})
            if endpoint == "renewalInfo":
                return self._renewal_info(rest)
            if req.method != "POST":
                raise Problem(405, "malformed", f"{req.method} not allowed")
            payload, account, jwk = self._open(req)
            status, extra, body = getattr(self, f"_do_{endpoint}")(req, rest, payload, account, jwk)
        except Problem as p:
            return self.problem(p.status, p.code, p.detail, subproblems=p.subproblems)
        except RateLimitRefusal as r:
            return self.problem(429, "rateLimited", r.detail, {"Retry-After": str(r.retry_after)})
        pairs = [("Replay-Nonce", self.new_nonce()), *extra.items()]
        if isinstance(body, bytes):
            return Response.make(status, pairs, body)
        return Response.make(status, pairs, json=body)

    def _open(self, req: Request) -> tuple[Any, str | None, dict[str, Any]]:
        try:
            jws = orjson.loads(req.body or b"")
            protected = orjson.loads(b64url_decode(jws["protected"]))
            payload_b64, sig = jws["payload"], b64url_decode(jws["signature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Problem(400, "malformed", f"not a flattened JWS: {exc}") from None
        if req.headers.get("Content-Type") != "application/jose+json":
            raise Problem(415, "malformed", "Content-Type must be application/jose+json")
        if protected.get("url") != req.url:
            raise Problem(401, "unauthorized", "JWS url does not match the request URL")
        nonce = protected.get("nonce")
        if nonce not in self.nonces:
            raise Problem(400, "badNonce", f"unknown nonce {nonce!r}")
        self.nonces.discard(nonce)
        if ("jwk" in protected) == ("kid" in protected):
            raise Problem(400, "malformed", "exactly one of jwk and kid is required")
        account = protected.get("kid")
        if account is not None:
            if account not in self.accounts:
                raise Problem(400, "accountDoesNotExist", f"no account {account}")
            jwk = self.accounts[account]["jwk"]
            if self.accounts[account]["body"]["status"] != "valid":
                raise Problem(401, "unauthorized", "account is not valid")
        else:
            jwk = protected["jwk"]
        signing_input = f"{jws['protected']}.{payload_b64}".encode("ascii")
        verify(public_key(jwk), protected.get("alg", ""), signing_input, sig)
        payload = orjson.loads(b64url_decode(payload_b64)) if payload_b64 else None
        return payload, account, jwk
