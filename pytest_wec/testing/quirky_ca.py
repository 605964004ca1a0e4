"""A stub ACME CA over HTTPS that differs from Pebble the ways real CAs do (aiohttp).

    python -m pytest_wec.testing.quirky_ca [--dir DIR] [--boulder] [--profiles A,B]
        [--challenges TYPES] [--ocsp] [--stale SECONDS] [--certs-per-domain N]
        [--va-dns HOST:PORT --va-ports http-01=P,tls-alpn-01=P [--va-routes A=B,...]]

prints ``quirky CA https://127.0.0.1:PORT/dir`` and ``ready`` once it listens (its TLS CA in
``DIR/pebble-ca.pem``) and serves until SIGINT or SIGTERM. The ACME logic is
:class:`~pytest_wec.acme.FakeCA` (every JWS verified, nonces single-use, real certificates,
challenges valid as soon as answered: nothing is fetched), each download ending in a
self-signed root. On top of it:

    revocation    a reason RFC 5280 §5.3.1 does not assign, or one in ``refused_reasons``:
                  badRevocationReason; an account that did not order the certificate:
                  unauthorized (RFC 8555 §7.6)
    finalize      a CSR for the account's own key: badCSR (malformed with --boulder)
    --profiles    ``meta.profiles`` (draft-aaron-acme-profiles): invalidProfile for others
    --challenges  the challenge types each authorization offers
    --ocsp        certificates name an OCSP responder (``/ocsp``, RFC 6960) that answers
                  what the CA recorded
    --stale S     after a key change the old key is still taken, and the new one refused,
                  for S seconds; after a deactivation the account's requests still are
    --boulder     what Boulder does: profiles legacy, modern and shortlived; subscribers'
                  reason 3 refused; --stale 3 (its WFE's account cache); contact updates
                  ignored; account URLs routed by their shape (``/acct/<digits>``, else a
                  plain 404 before the JWS is read); a kid of another shape: malformed;
                  its identifier policy (:mod:`.boulder_policy`: ICANN suffixes, blocked
                  names, wildcards, no reserved addresses, IP addresses under shortlived
                  only); wildcard authorizations for the base name, dns-01 only; a JWS
                  ``alg`` other than RS256, ES256, ES384, ES512: badSignatureAlgorithm
    --certs-per-domain N  Boulder's CertificatesPerDomain (its dev config: 2): a newOrder
                  for a registered domain (an IP address: itself) with N certificates is
                  refused with 429 rateLimited (:mod:`pytest_wec.acme._fakeca_limits`)
    --va-dns, --va-ports, --va-routes  challenges are checked over the network instead of
                  taken as answered (:mod:`.stub_va`): names resolved through that DNS,
                  each type checked on its port, addresses reached through the routes

:func:`start_quirky_ca` starts it as a child process for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from pytest_wec.acme import FakeCA, Request, Response
from pytest_wec.acme._fakeca_limits import FakeLimits
from pytest_wec.acme._fakeca_resources import ACME_ERROR, Problem, public_key
from pytest_wec.acme._jws import b64url_decode
from pytest_wec.testing import serve_until_signalled
from pytest_wec.testing.boulder_policy import policy_problem, wildcard_authorization
from pytest_wec.testing.stub_va import StubVA, VaConfig, parse_va, thumbprint

__all__ = ["BOULDER_PROFILES", "Quirks", "QuirkyCA", "main", "start_quirky_ca"]

BOULDER_PROFILES = {"legacy": "the classic profile", "modern": "90 days, no CN",
                    "shortlived": "6 days, no CN"}
#: the JWS algorithms Boulder's WFE takes (RFC 8555 §6.2: others get badSignatureAlgorithm)
BOULDER_ALGORITHMS = ("RS256", "ES256", "ES384", "ES512")
_ASSIGNED_REASONS = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})
_REASON_FLAGS = {0: x509.ReasonFlags.unspecified, 1: x509.ReasonFlags.key_compromise,
                 3: x509.ReasonFlags.affiliation_changed, 4: x509.ReasonFlags.superseded,
                 5: x509.ReasonFlags.cessation_of_operation}


@dataclass(frozen=True)
class Quirks:
    """How the CA differs (see the module doc)."""

    profiles: Mapping[str, str] | None = None
    challenges: tuple[str, ...] | None = None
    refused_reasons: frozenset[int] = frozenset()
    stale: float = 0.0
    ocsp: bool = False
    ignore_contact_updates: bool = False
    route_by_shape: bool = False
    csr_account_key: str = "badCSR"
    policy: bool = False  # Boulder's identifier policy and wildcard authorizations
    algorithms: tuple[str, ...] | None = None  # others: badSignatureAlgorithm
    limits: FakeLimits | None = None
    va: VaConfig | None = None  # None: a challenge is valid as soon as answered

    @classmethod
    def boulder(cls, **over: Any) -> Quirks:
        base: dict[str, Any] = dict(
            profiles=BOULDER_PROFILES, refused_reasons=frozenset({3}), stale=3.0,
            ignore_contact_updates=True, route_by_shape=True, csr_account_key="malformed",
            policy=True, algorithms=BOULDER_ALGORITHMS)
        base.update(over)
        return cls(**base)


class QuirkyCA(FakeCA):
    """FakeCA with :class:`Quirks` (see the module doc)."""

    def __init__(self, base: str, quirks: Quirks) -> None:
        super().__init__(base, profiles=quirks.profiles or {"default": "the default profile"},
                         challenge_types=quirks.challenges, limits=quirks.limits)
        self.quirks = quirks
        self.va = StubVA(quirks.va) if quirks.va is not None else None
        now = dt.datetime.now(dt.UTC)
        self._root = (
            x509.CertificateBuilder().subject_name(self._ca_name).issuer_name(self._ca_name)
            .public_key(self._ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256()))
        self._root_pem = self._root.public_bytes(serialization.Encoding.PEM)
        self._owners: dict[int, str | None] = {}  # serial -> the kid of its order
        self._leaves: dict[int, x509.Certificate] = {}
        self._revoked_at: dict[int, dt.datetime] = {}
        self._stale: dict[str, tuple[dict[str, Any], str, float]] = {}  # kid -> jwk, status

    # -- the front: routing by shape, a stale account cache, OCSP --------------------------
    def __call__(self, req: Request) -> Response:
        path = req.url[len(self.base):] if req.url.startswith(self.base) else req.url
        if self.quirks.ocsp and path == "/ocsp" and req.method == "POST":
            return self._ocsp(req.body or b"")
        endpoint, rest = self._route(req.url)
        if self.quirks.route_by_shape and endpoint == "account" and not rest.isdigit():
            return Response.make(404, {"Content-Type": "text/plain; charset=utf-8"},
                                 b"404 page not found\n")
        taken = list(self.quirks.algorithms or ())
        alg = self._protected(req).get("alg") if taken and req.method == "POST" else None
        if alg is not None and alg not in taken:
            body = {"type": ACME_ERROR + "badSignatureAlgorithm", "status": 400,
                    "detail": f"JWS signature header contains unsupported algorithm {alg!r}, "
                              f"expected one of {taken}", "algorithms": taken}
            return Response.make(400, [("Replay-Nonce", self.new_nonce())], json=body,
                                 content_type="application/problem+json")
        return super().__call__(req)

    @staticmethod
    def _protected(req: Request) -> dict[str, Any]:
        """The JWS protected header of a POST, or {} when there is none to read."""
        try:
            header = orjson.loads(b64url_decode(orjson.loads(req.body or b"")["protected"]))
        except (ValueError, KeyError, TypeError):
            return {}
        return header if isinstance(header, dict) else {}

    def _open(self, req: Request) -> tuple[Any, str | None, dict[str, Any]]:
        kid = self._protected(req).get("kid")
        if kid is not None and self.quirks.route_by_shape and not re.fullmatch(
                re.escape(self.base) + r"/acct/\d+", str(kid)):
            raise Problem(400, "malformed", f"Malformed account ID in KeyID header URL: {kid!r}")
        stale = self._stale.get(kid) if kid is not None else None
        if stale is None or stale[2] < time.monotonic() or kid not in self.accounts:
            return super()._open(req)
        current = self.accounts[kid]
        self.accounts[kid] = {"jwk": stale[0], "body": {**current["body"], "status": stale[1]}}
        try:  # as a cache entry from before the change would verify it
            return super()._open(req)
        finally:
            self.accounts[kid] = current

    def _remember_stale(self, kid: str) -> None:
        if self.quirks.stale > 0:
            account = self.accounts[kid]
            self._stale[kid] = (account["jwk"], account["body"]["status"],
                                time.monotonic() + self.quirks.stale)

    # -- accounts --------------------------------------------------------------------------
    def _do_account(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        if payload and self.quirks.ignore_contact_updates:
            payload = {k: v for k, v in payload.items() if k != "contact"}
        if payload and payload.get("status") == "deactivated" and kid in self.accounts:
            self._remember_stale(kid)
        return super()._do_account(req, rest, payload, kid, jwk)

    def _do_keyChange(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        before = self.accounts[kid]["jwk"], self.accounts[kid]["body"]["status"]
        result = super()._do_keyChange(req, rest, payload, kid, jwk)
        if self.quirks.stale > 0:
            self._stale[kid] = (before[0], before[1], time.monotonic() + self.quirks.stale)
        return result

    # -- orders, finalize and certificates -------------------------------------------------
    def _do_newOrder(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        refused = policy_problem(payload.get("identifiers") or [], payload.get(
            "profile")) if self.quirks.policy else None
        if refused is not None:
            raise refused
        status, headers, body = super()._do_newOrder(req, rest, payload, kid, jwk)
        for url in body["authorizations"]:  # dns-01 never validates an IP (RFC 8738 §7)
            authz = self.authzs[url]
            if authz["identifier"].get("type") == "ip":
                authz["challenges"] = [c for c in authz["challenges"] if c["type"] != "dns-01"]
            if self.quirks.policy:
                wildcard_authorization(authz)
        return status, headers, body

    # -- validation over the network (--va-*) ----------------------------------------------
    def _do_challenge(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        url = f"{self.base}/chall/{rest}"
        before = self.challenges[url][1]["status"] if url in self.challenges else None
        result = super()._do_challenge(req, rest, payload, kid, jwk)
        if self.va is not None and payload is not None and before == "pending":
            authz_url, ch = self.challenges[url]
            self.va.start(self.authzs[authz_url], ch, f"{ch['token']}.{thumbprint(jwk)}")
        return result

    def _do_authz(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        body = self.authzs.get(f"{self.base}/authz/{rest}")
        if self.va is None or body is None or (payload or {}).get("status") == "deactivated":
            return super()._do_authz(req, rest, payload, kid, jwk)
        return 200, self._poll_headers(f"{self.base}/authz/{rest}"), body  # the VA decides

    def _do_finalize(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        csr = x509.load_der_x509_csr(b64url_decode(payload["csr"]))
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if csr.public_key().public_bytes(*raw) == public_key(jwk).public_bytes(*raw):
            raise Problem(400, self.quirks.csr_account_key,
                          "certificate public key must be different than account key")
        order = self.orders.get(f"{self.base}/order/{rest}")
        if order is not None and order["status"] == "ready":
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            asked = {*san.get_values_for_type(x509.DNSName),
                     *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}
            if asked != {str(i["value"]) for i in order["identifiers"]}:
                raise Problem(400, "badCSR", "the CSR's names are not the order's")
        return super()._do_finalize(req, rest, payload, kid, jwk)

    def _do_certificate(self, req: Request, rest: str, payload: Any, kid: Any,
                        jwk: Any) -> Any:
        status, headers, body = super()._do_certificate(req, rest, payload, kid, jwk)
        return status, {k: v for k, v in headers.items() if k != "Link"}, body  # no alternate

    def _issue(self, url: str, body: dict[str, Any]) -> None:
        super()._issue(url, body)
        cert_url = body["certificate"]
        leaf = x509.load_pem_x509_certificate(self.certs[cert_url])
        if self.quirks.ocsp:
            builder = (x509.CertificateBuilder().subject_name(leaf.subject)
                       .issuer_name(leaf.issuer).public_key(leaf.public_key())
                       .serial_number(leaf.serial_number)
                       .not_valid_before(leaf.not_valid_before_utc)
                       .not_valid_after(leaf.not_valid_after_utc))
            for ext in leaf.extensions:
                builder = builder.add_extension(ext.value, ext.critical)
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(f"{self.base}/ocsp"))]),
                critical=False)
            leaf = builder.sign(self._ca_key, hashes.SHA256())
        self._owners[leaf.serial_number] = body.get("_kid")
        self._leaves[leaf.serial_number] = leaf
        self.certs[cert_url] = leaf.public_bytes(serialization.Encoding.PEM) + self._root_pem

    # -- revocation ------------------------------------------------------------------------
    def _do_revokeCert(self, req: Request, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        cert = x509.load_der_x509_certificate(b64url_decode(payload["certificate"]))
        reason = payload.get("reason")
        if reason is not None and (reason not in _ASSIGNED_REASONS
                                   or reason in self.quirks.refused_reasons):
            raise Problem(400, "badRevocationReason", f"reason {reason} is not accepted")
        if kid is not None and self._owners.get(cert.serial_number) != kid:
            raise Problem(403, "unauthorized", "the account did not order this certificate")
        result = super()._do_revokeCert(req, rest, payload, kid, jwk)
        self._revoked_at[cert.serial_number] = dt.datetime.now(dt.UTC)
        return result

    def _ocsp(self, body: bytes) -> Response:
        request = ocsp.load_der_ocsp_request(body)
        leaf = self._leaves.get(request.serial_number)
        if leaf is None:
            answer = ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED)
        else:
            now = dt.datetime.now(dt.UTC)
            serial = leaf.serial_number
            revoked = serial in self.revoked
            reason = self.revoked.get(serial)
            answer = ocsp.OCSPResponseBuilder().add_response(
                cert=leaf, issuer=self._root, algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
                this_update=now, next_update=now + dt.timedelta(hours=1),
                revocation_time=self._revoked_at.get(serial, now) if revoked else None,
                revocation_reason=_REASON_FLAGS.get(reason) if revoked and reason else None,
            ).responder_id(ocsp.OCSPResponderEncoding.HASH, self._root).sign(
                self._ca_key, hashes.SHA256())
        return Response.make(200, {"Content-Type": "application/ocsp-response"},
                             answer.public_bytes(serialization.Encoding.DER))


def _app(ca: QuirkyCA) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if request.can_read_body else None
        resp = ca(Request(request.method, ca.base + request.raw_path, request.headers, body))
        return web.Response(status=resp.status, body=resp.body, headers=resp.headers._items)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(host: str, port: int, run_dir: Path, quirks: Quirks) -> None:
    """Serve until SIGINT or SIGTERM; print the directory URL and ``ready`` once listening."""
    from pytest_wec.stack._pebble import write_tls_material

    _ca, cert, key = write_tls_material(run_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown = f"[{host}]" if ":" in host else host
    base = f"https://{shown}:{sock.getsockname()[1]}"
    runner = web.AppRunner(_app(QuirkyCA(base, quirks)), access_log=None,
                           handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    print(f"quirky CA {base}/dir", flush=True)
    print("ready", flush=True)
    await serve_until_signalled(runner)


def quirks_from(args: argparse.Namespace) -> Quirks:
    over: dict[str, Any] = {}
    if args.profiles is not None:
        over["profiles"] = {p: f"the {p} profile" for p in args.profiles.split(",") if p}
    if args.challenges is not None:
        over["challenges"] = tuple(c for c in args.challenges.split(",") if c)
    if args.stale is not None:
        over["stale"] = args.stale
    if args.ocsp:
        over["ocsp"] = True
    if args.certs_per_domain is not None:
        over["limits"] = FakeLimits(certificates_per_domain=args.certs_per_domain)
    if args.va_dns is not None:
        over["va"] = parse_va(args.va_dns, args.va_ports or "", args.va_routes or "")
    return Quirks.boulder(**over) if args.boulder else Quirks(**over)


def start_quirky_ca(run_dir: Path, args: Sequence[str] = ()) -> tuple[Any, str, str]:
    """Start it as a child process: (ManagedProcess, directory URL, CA bundle)."""
    from pytest_wec.stack._procs import ManagedProcess

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest_wec.testing.quirky_ca", "--dir", str(run_dir),
            *args]
    proc = ManagedProcess("quirky-ca", argv, run_dir / "quirky-ca.log")
    lines = proc.wait_line(lambda line: line.strip() == "ready", 20, "printing 'ready'")
    url = next(line.split()[2] for line in lines if line.startswith("quirky CA "))
    return proc, url, str(run_dir / "pebble-ca.pem")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_wec.testing.quirky_ca",
                                description="A stub ACME CA that differs the ways real CAs do.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", help="where the TLS material goes (default: a temporary dir)")
    p.add_argument("--boulder", action="store_true", help="answer as Boulder does")
    p.add_argument("--profiles", help="comma-separated profile names for meta.profiles")
    p.add_argument("--challenges", help="comma-separated challenge types to offer")
    p.add_argument("--ocsp", action="store_true", help="an OCSP responder at /ocsp")
    p.add_argument("--stale", type=float, help="seconds a changed account stays as it was")
    p.add_argument("--certs-per-domain", type=int,
                   help="certificates per registered domain, then 429 rateLimited")
    p.add_argument("--va-dns", help="HOST:PORT of the DNS challenges' names are resolved by "
                                    "(checks challenges over the network)")
    p.add_argument("--va-ports", help="the port each type is checked on: "
                                      "http-01=P,tls-alpn-01=P")
    p.add_argument("--va-routes", help="addresses to connect to instead: FOUND=USED,...")
    args = p.parse_args(argv)
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="wec-quirky-"))
    asyncio.run(serve(args.host, args.port, run_dir, quirks_from(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
