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
answered with ``Retry-After: retry_after`` when set.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import secrets
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._jws import b64url, b64url_decode, jwk_public_key, verify_signature
from ._transport import Request, Response

__all__ = ["FakeCA"]

_NS = "urn:ietf:params:acme:error:"
Fault = Response | Callable[[Request], Response]


class _Problem(Exception):
    def __init__(
        self, status: int, code: str, detail: str, subproblems: list[Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.subproblems = subproblems


def _public_key(jwk: dict[str, Any]) -> Any:
    try:
        return jwk_public_key(jwk)
    except ValueError as exc:
        raise _Problem(400, "badPublicKey", str(exc)) from None


def _verify(key: Any, alg: str, data: bytes, sig: bytes) -> None:
    if not verify_signature(key, alg, data, sig):
        raise _Problem(400, "malformed", "JWS signature is invalid")


class FakeCA:
    """A handler for MockTransport that behaves like a small ACME CA (see module doc)."""

    def __init__(
        self,
        base: str = "https://ca.test",
        *,
        renewal_info: bool = True,
        pending_polls: int = 0,
        processing_polls: int = 0,
        retry_after: int | None = None,
    ) -> None:
        self.base = base
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
        typ = code if ":" in code else _NS + code
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
                raise _Problem(405, "malformed", f"{req.method} not allowed")
            payload, account, jwk = self._open(req)
            status, extra, body = getattr(self, f"_do_{endpoint}")(req, rest, payload, account, jwk)
        except _Problem as p:
            return self.problem(p.status, p.code, p.detail, subproblems=p.subproblems)
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
            raise _Problem(400, "malformed", f"not a flattened JWS: {exc}") from None
        if req.headers.get("Content-Type") != "application/jose+json":
            raise _Problem(415, "malformed", "Content-Type must be application/jose+json")
        if protected.get("url") != req.url:
            raise _Problem(401, "unauthorized", "JWS url does not match the request URL")
        nonce = protected.get("nonce")
        if nonce not in self.nonces:
            raise _Problem(400, "badNonce", f"unknown nonce {nonce!r}")
        self.nonces.discard(nonce)
        if ("jwk" in protected) == ("kid" in protected):
            raise _Problem(400, "malformed", "exactly one of jwk and kid is required")
        account = protected.get("kid")
        if account is not None:
            if account not in self.accounts:
                raise _Problem(400, "accountDoesNotExist", f"no account {account}")
            jwk = self.accounts[account]["jwk"]
            if self.accounts[account]["body"]["status"] != "valid":
                raise _Problem(401, "unauthorized", "account is not valid")
        else:
            jwk = protected["jwk"]
        signing_input = f"{jws['protected']}.{payload_b64}".encode("ascii")
        _verify(_public_key(jwk), protected.get("alg", ""), signing_input, sig)
        payload = orjson.loads(b64url_decode(payload_b64)) if payload_b64 else None
        return payload, account, jwk

    def _kid_of(self, jwk: dict[str, Any]) -> str | None:
        return next((u for u, a in self.accounts.items() if a["jwk"] == jwk), None)

    # -- resources -------------------------------------------------------------

    def _do_newAccount(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        existing = self._kid_of(jwk)
        if existing is not None:
            return 200, {"Location": existing}, self.accounts[existing]["body"]
        if payload.get("onlyReturnExisting"):
            raise _Problem(400, "accountDoesNotExist", "no account for this key")
        url = f"{self.base}/acct/{next(self._ids)}"
        body = {"status": "valid", "contact": payload.get("contact", []), "orders": url + "/o"}
        self.accounts[url] = {"jwk": jwk, "body": body}
        return 201, {"Location": url}, body

    def _do_account(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/acct/{rest}"
        if kid != url:
            raise _Problem(403, "unauthorized", "not your account")
        body = self.accounts[url]["body"]
        if payload:
            if "contact" in payload:
                body["contact"] = payload["contact"]
            if payload.get("status") == "deactivated":
                body["status"] = "deactivated"
        return 200, {}, body

    def _do_keyChange(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        inner = payload
        protected = orjson.loads(b64url_decode(inner["protected"]))
        if "nonce" in protected or protected.get("url") != req.url or "jwk" not in protected:
            raise _Problem(400, "malformed", "bad inner JWS header")
        new_jwk = protected["jwk"]
        data = f"{inner['protected']}.{inner['payload']}".encode("ascii")
        _verify(_public_key(new_jwk), protected["alg"], data, b64url_decode(inner["signature"]))
        body = orjson.loads(b64url_decode(inner["payload"]))
        if body.get("account") != kid or body.get("oldKey") != jwk:
            raise _Problem(400, "malformed", "inner payload does not match the account")
        if self._kid_of(new_jwk) is not None:
            raise _Problem(409, "malformed", "new key already in use")
        self.accounts[kid]["jwk"] = new_jwk
        return 200, {}, self.accounts[kid]["body"]

    def _do_newOrder(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        idents = payload.get("identifiers") or []
        bad = [i for i in idents if str(i.get("value", "")).endswith(".invalid")]
        if bad:
            subs = [
                {"type": _NS + "rejectedIdentifier", "detail": "forbidden name", "identifier": i}
                for i in bad
            ]
            raise _Problem(400, "rejectedIdentifier", f"{len(bad)} identifiers rejected", subs)
        oid = next(self._ids)
        url = f"{self.base}/order/{oid}"
        authz_urls = []
        for ident in idents:
            aid = next(self._ids)
            authz_url = f"{self.base}/authz/{aid}"
            challs = []
            for typ in ("http-01", "dns-01", "tls-alpn-01"):
                ch_url = f"{self.base}/chall/{aid}-{typ}"
                ch = {
                    "type": typ,
                    "url": ch_url,
                    "status": "pending",
                    "token": b64url(secrets.token_bytes(16)),
                }
                self.challenges[ch_url] = (authz_url, ch)
                challs.append(ch)
            self.authzs[authz_url] = {
                "status": "pending",
                "identifier": ident,
                "challenges": challs,
                "expires": "2099-01-01T00:00:00Z",
            }
            authz_urls.append(authz_url)
        body = {
            "status": "pending",
            "identifiers": idents,
            "authorizations": authz_urls,
            "finalize": f"{self.base}/finalize/{oid}",
            "expires": "2099-01-01T00:00:00Z",
            "_kid": kid,
        }
        for key in ("notBefore", "notAfter", "replaces", "profile"):
            if key in payload:
                body[key] = payload[key]
        self.orders[url] = body
        return 201, {"Location": url}, self._public(body)

    @staticmethod
    def _public(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if not k.startswith("_")}

    def _poll_headers(self, url: str) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def _order_status(self, body: dict[str, Any]) -> None:
        if body["status"] == "pending":
            states = {self.authzs[a]["status"] for a in body["authorizations"]}
            if states == {"valid"}:
                body["status"] = "ready"
            elif states & {"invalid", "deactivated"}:
                body["status"] = "invalid"

    def _do_order(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/order/{rest}"
        body = self.orders.get(url)
        if body is None:
            raise _Problem(404, "malformed", "no such order")
        self._order_status(body)
        if body["status"] == "processing":
            self.polls[url] += 1
            if self.polls[url] > self.processing_polls:
                self._issue(url, body)
        return 200, self._poll_headers(url), self._public(body)

    def _do_authz(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/authz/{rest}"
        body = self.authzs.get(url)
        if body is None:
            raise _Problem(404, "malformed", "no such authorization")
        if payload and payload.get("status") == "deactivated":
            body["status"] = "deactivated"
        elif body["status"] == "pending" and any(
            c["status"] == "processing" for c in body["challenges"]
        ):
            self.polls[url] += 1
            if self.polls[url] > self.pending_polls:
                body["status"] = "valid"
                for c in body["challenges"]:
                    if c["status"] == "processing":
                        c["status"] = "valid"
                        c["validated"] = "2024-01-01T00:00:00Z"
        return 200, self._poll_headers(url), body

    def _do_challenge(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/chall/{rest}"
        if url not in self.challenges:
            raise _Problem(404, "malformed", "no such challenge")
        authz_url, ch = self.challenges[url]
        if payload is not None:
            if ch["status"] != "pending":  # as Pebble answers a second response
                raise _Problem(400, "malformed", f"Cannot update challenge with status "
                                                 f"{ch['status']}, only status pending")
            ch["status"] = "processing"
        return 200, {"Link": f'<{authz_url}>;rel="up"'}, ch

    def _do_finalize(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/order/{rest}"
        body = self.orders[url]
        self._order_status(body)
        if body["status"] != "ready":
            raise _Problem(403, "orderNotReady", f"order is {body['status']}")
        csr = x509.load_der_x509_csr(b64url_decode(payload["csr"]))
        if not csr.is_signature_valid:
            raise _Problem(400, "badCSR", "CSR signature is invalid")
        body["_csr"] = csr
        body["status"] = "processing"
        if self.processing_polls == 0:
            self._issue(url, body)
        return 200, {"Location": url, **self._poll_headers(url)}, self._public(body)

    def _issue(self, url: str, body: dict[str, Any]) -> None:
        csr: x509.CertificateSigningRequest = body["_csr"]
        now = _dt.datetime.now(_dt.UTC)
        ca_pub = self._ca_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self._ca_name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _dt.timedelta(days=90))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_pub), critical=False
            )
        )
        for ext in csr.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        cert_url = f"{self.base}/cert/{next(self._ids)}"
        self.certs[cert_url] = cert.public_bytes(serialization.Encoding.PEM)
        body["status"] = "valid"
        body["certificate"] = cert_url

    def _do_certificate(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/cert/{rest}"
        if url not in self.certs:
            raise _Problem(404, "malformed", "no such certificate")
        return (
            200,
            {
                "Content-Type": "application/pem-certificate-chain",
                "Link": f'<{url}/1>;rel="alternate"',
            },
            self.certs[url],
        )

    def _do_revokeCert(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        cert = x509.load_der_x509_certificate(b64url_decode(payload["certificate"]))
        if kid is None and cert.public_key() != _public_key(jwk):
            raise _Problem(403, "unauthorized", "JWS key is not the certificate's key")
        if cert.serial_number in self.revoked:
            raise _Problem(400, "alreadyRevoked", "certificate already revoked")
        self.revoked[cert.serial_number] = payload.get("reason")
        return 200, {}, b""

    def _renewal_info(self, cid: str) -> Response:
        if "." not in cid:
            raise _Problem(400, "malformed", "bad certID")
        window = {"start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00.123456789Z"}
        return Response.make(200, {"Retry-After": "21600"}, json={"suggestedWindow": window})
