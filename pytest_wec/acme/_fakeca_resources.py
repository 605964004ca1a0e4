"""The resources of :class:`~pytest_wec.acme._fakeca.FakeCA` and their life cycles.

:class:`FakeResources` holds one handler per endpoint (``_do_<endpoint>``), called with a
verified JWS: accounts (§7.3, key rollover §7.3.5), orders and their status (§7.4),
authorizations and challenges (§7.5; an answered challenge turns valid at the first poll of
its authorization after ``pending_polls`` polls), finalization and certificates (real X.509
signed by the fake CA's key, at finalization or at the first order poll after
``processing_polls`` polls; §7.4.2), revocation (§7.6) and renewalInfo (RFC 9773). A
handler returns (status, extra headers, body) or raises :class:`Problem`; :class:`FakeCA`
turns either into the response.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import secrets
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._jws import b64url, b64url_decode, jwk_public_key, verify_signature
from ._transport import Request, Response

__all__ = ["ACME_ERROR", "FakeResources", "Problem", "public_key", "verify"]

ACME_ERROR = "urn:ietf:params:acme:error:"


class Problem(Exception):
    """An ACME problem document to answer with (RFC 8555 §6.7)."""

    def __init__(
        self, status: int, code: str, detail: str, subproblems: list[Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.subproblems = subproblems


def public_key(jwk: dict[str, Any]) -> Any:
    """The public key of ``jwk``; a ``badPublicKey`` problem when it is none."""
    try:
        return jwk_public_key(jwk)
    except ValueError as exc:
        raise Problem(400, "badPublicKey", str(exc)) from None


def verify(key: Any, alg: str, data: bytes, sig: bytes) -> None:
    """A ``malformed`` problem unless ``sig`` is ``key``'s signature of ``data``."""
    if not verify_signature(key, alg, data, sig):
        raise Problem(400, "malformed", "JWS signature is invalid")


class FakeResources:
    """The resource handlers of :class:`~pytest_wec.acme._fakeca.FakeCA` (see the module doc);
    FakeCA makes the state they keep."""

    base: str
    pending_polls: int
    processing_polls: int
    retry_after: int | None
    accounts: dict[str, dict[str, Any]]  # url -> {"jwk", "body"}
    orders: dict[str, dict[str, Any]]
    authzs: dict[str, dict[str, Any]]
    challenges: dict[str, tuple[str, dict[str, Any]]]  # url -> (authz url, body)
    certs: dict[str, bytes]  # url -> PEM chain
    revoked: dict[int, int | None]  # serial -> reason
    polls: dict[str, int]
    limits: Any  # a LimitBook (pytest_wec.acme._fakeca_limits), or None: no rate limit
    directory: dict[str, Any]
    #: the challenge types each authorization offers, in this order
    challenge_types: tuple[str, ...] = ("http-01", "dns-01", "tls-alpn-01")
    #: refuse an order for a profile not in meta.profiles (draft-aaron-acme-profiles)
    strict_profiles: bool = False
    _ids: itertools.count[int]
    _ca_key: ec.EllipticCurvePrivateKey
    _ca_name: x509.Name

    def _kid_of(self, jwk: dict[str, Any]) -> str | None:
        return next((u for u, a in self.accounts.items() if a["jwk"] == jwk), None)

    def _do_newAccount(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        existing = self._kid_of(jwk)
        if existing is not None:
            return 200, {"Location": existing}, self.accounts[existing]["body"]
        if payload.get("onlyReturnExisting"):
            raise Problem(400, "accountDoesNotExist", "no account for this key")
        url = f"{self.base}/acct/{next(self._ids)}"
        body = {"status": "valid", "contact": payload.get("contact", []), "orders": url + "/o"}
        self.accounts[url] = {"jwk": jwk, "body": body}
        return 201, {"Location": url}, body

    def _do_account(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/acct/{rest}"
        if kid != url:
            raise Problem(403, "unauthorized", "not your account")
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
            raise Problem(400, "malformed", "bad inner JWS header")
        new_jwk = protected["jwk"]
        data = f"{inner['protected']}.{inner['payload']}".encode("ascii")
        verify(public_key(new_jwk), protected["alg"], data, b64url_decode(inner["signature"]))
        body = orjson.loads(b64url_decode(inner["payload"]))
        if body.get("account") != kid or body.get("oldKey") != jwk:
            raise Problem(400, "malformed", "inner payload does not match the account")
        if self._kid_of(new_jwk) is not None:
            raise Problem(409, "malformed", "new key already in use")
        self.accounts[kid]["jwk"] = new_jwk
        return 200, {}, self.accounts[kid]["body"]

    def _do_newOrder(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        idents = payload.get("identifiers") or []
        bad = [i for i in idents if str(i.get("value", "")).endswith(".invalid")]
        if bad:
            subs = [
                {"type": ACME_ERROR + "rejectedIdentifier", "detail": "forbidden name",
                 "identifier": i}
                for i in bad
            ]
            raise Problem(400, "rejectedIdentifier", f"{len(bad)} identifiers rejected", subs)
        if self.limits is not None:  # a 429 rateLimited over a limit (RateLimitRefusal)
            self.limits.check_order(kid, idents)
        offered = self.directory.get("meta", {}).get("profiles") or {}
        if self.strict_profiles and "profile" in payload and payload["profile"] not in offered:
            raise Problem(400, "invalidProfile", f"profile {payload['profile']!r} is not "
                                                 f"offered: {', '.join(offered)}")
        oid = next(self._ids)
        url = f"{self.base}/order/{oid}"
        authz_urls = []
        for ident in idents:
            aid = next(self._ids)
            authz_url = f"{self.base}/authz/{aid}"
            challs = []
            for typ in self.challenge_types:
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
            raise Problem(404, "malformed", "no such order")
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
            raise Problem(404, "malformed", "no such authorization")
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
            raise Problem(404, "malformed", "no such challenge")
        authz_url, ch = self.challenges[url]
        if payload is not None:
            if ch["status"] != "pending":  # as Pebble answers a second response
                raise Problem(400, "malformed", f"Cannot update challenge with status "
                                                 f"{ch['status']}, only status pending")
            ch["status"] = "processing"
        return 200, {"Link": f'<{authz_url}>;rel="up"'}, ch

    def _do_finalize(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/order/{rest}"
        body = self.orders[url]
        self._order_status(body)
        if body["status"] != "ready":
            raise Problem(403, "orderNotReady", f"order is {body['status']}")
        csr = x509.load_der_x509_csr(b64url_decode(payload["csr"]))
        if not csr.is_signature_valid:
            raise Problem(400, "badCSR", "CSR signature is invalid")
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
        if self.limits is not None:
            self.limits.count_issued(body["identifiers"])

    def _do_certificate(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/cert/{rest}"
        if url not in self.certs:
            raise Problem(404, "malformed", "no such certificate")
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
        if kid is None and cert.public_key() != public_key(jwk):
            raise Problem(403, "unauthorized", "JWS key is not the certificate's key")
        if cert.serial_number in self.revoked:
            raise Problem(400, "alreadyRevoked", "certificate already revoked")
        self.revoked[cert.serial_number] = payload.get("reason")
        return 200, {}, b""

    def _renewal_info(self, cid: str) -> Response:
        if "." not in cid:
            raise Problem(400, "malformed", "bad certID")
        window = {"start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00.123456789Z"}
        return Response.make(200, {"Retry-After": "21600"}, json={"suggestedWindow": window})
