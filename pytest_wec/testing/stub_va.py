"""A validation authority for the stub CA (:mod:`.quirky_ca`): challenges checked over the
network, the way Boulder's VA checks them against its chall-test-srv.

    VaConfig(dns=("127.0.0.1", 8053), ports={"http-01": 5002, "tls-alpn-01": 5001},
             routes={"64.112.117.122": "127.0.0.1", "64.112.117.134": "127.0.0.2"})

A DNS identifier is resolved (its A record) through *dns*, the challenge server's DNS, as
Boulder's VA asks chall-test-srv's; an IP identifier is its own address (RFC 8738 §5, §6).
The address is then connected to through *routes*, an address translation standing for
the docker networks that make Boulder's public-looking addresses (64.112.117.122 for
http-01, 64.112.117.134 for tls-alpn-01) reachable: so a run can order the addresses
Boulder's policy accepts while the challenge server listens on loopback. Each challenge
type is checked on its own port (Boulder's VA: 80 and 443).

- http-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/TOKEN`` with the identifier
  as Host; the body, whitespace trimmed, must be the key authorization;
- tls-alpn-01 (RFC 8737 §3): a TLS handshake with ALPN ``acme-tls/1`` and the name (an
  address's reverse-DNS name) as SNI; the certificate must carry the critical
  acmeIdentifier extension with the key authorization's SHA-256;
- dns-01 (§8.4): a TXT record at ``_acme-challenge.NAME`` with the key authorization's
  SHA-256, base64url.

A wrong answer makes the challenge and its authorization ``invalid`` with an
``unauthorized`` error, an address that cannot be reached with a ``connection`` one, a
name that does not resolve with a ``dns`` one (RFC 8555 §8). Validation runs in the
background: the challenge is ``processing`` until it ends (§7.1.6). Every network step has
*timeout*.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from pytest_wec.acme._fakeca_resources import ACME_ERROR
from pytest_wec.acme._jws import b64url

__all__ = ["StubVA", "VaConfig", "ValidationError", "parse_va", "thumbprint"]

_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 §6.1
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


@dataclass(frozen=True)
class VaConfig:
    """Where the VA resolves names, on which port it checks each type, and how it reaches
    the addresses it finds (see the module doc)."""

    dns: tuple[str, int]
    ports: Mapping[str, int] = field(default_factory=dict)
    routes: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0


def parse_va(dns: str, ports: str, routes: str = "") -> VaConfig:
    """``127.0.0.1:8053``, ``http-01=5002,tls-alpn-01=5001`` and
    ``64.112.117.122=127.0.0.1,...``, as the stub CA's command line gives them."""
    host, _, port = dns.rpartition(":")
    by_type = {k.strip(): int(v) for k, _, v in (p.partition("=") for p in ports.split(",")
                                                 if p.strip())}
    table = {a.strip(): b.strip() for a, _, b in (p.partition("=") for p in routes.split(",")
                                                 if p.strip())}
    return VaConfig((host.strip("[]"), int(port)), by_type, table)


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of *jwk*, base64url: what a key authorization
    ends with (RFC 8555 §8.1)."""
    members = {k: jwk[k] for k in _REQUIRED[str(jwk["kty"])]}
    return b64url(hashlib.sha256(orjson.dumps(members, option=orjson.OPT_SORT_KEYS)).digest())


class ValidationError(Exception):
    """A failed validation: the ACME problem type (``unauthorized``, ``connection``,
    ``dns``) and what went wrong."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class StubVA:
    """Checks challenges as the module doc says; :meth:`start` runs one in the background
    and records its outcome in the CA's challenge and authorization objects."""

    def __init__(self, config: VaConfig) -> None:
        self.config = config
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, authz: dict[str, Any], challenge: dict[str, Any], key_authz: str) -> None:
        """Validate *challenge* (now ``processing``) of *authz* in the background."""
        task = asyncio.get_running_loop().create_task(self._run(authz, challenge, key_authz))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, authz: dict[str, Any], challenge: dict[str, Any],
                   key_authz: str) -> None:
        try:
            await self.validate(challenge["type"], authz["identifier"], challenge["token"],
                                key_authz)
            error = None
        except ValidationError as exc:
            error = exc
        if authz["status"] != "pending" or challenge["status"] != "processing":
            return  # deactivated meanwhile
        if error is None:
            challenge["status"] = authz["status"] = "valid"
            challenge["validated"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            challenge["status"] = authz["status"] = "invalid"
            challenge["error"] = {"type": ACME_ERROR + error.code, "detail": error.detail,
                                  "status": 403 if error.code == "unauthorized" else 400}

    async def validate(self, kind: str, identifier: Mapping[str, Any], token: str,
                       key_authz: str) -> None:
        """Check challenge *kind* for *identifier*; ValidationError when it fails."""
        value = str(identifier["value"])
        is_ip = identifier.get("type") == "ip"
        if kind == "dns-01":
            return await self._dns01(value, key_authz)
        address = value if is_ip else await self._address(value)
        port = self.config.ports.get(kind)
        if port is None:
            raise ValidationError("connection", f"this VA checks no {kind} challenge")
        target = self.config.routes.get(address, address)
        if kind == "http-01":
            return await self._http01(value, target, port, token, key_authz)
        sni = ipaddress.ip_address(value).reverse_pointer if is_ip else value
        return await self._tlsalpn01(value, sni, (address, target), port, key_authz)

    # -- DNS -------------------------------------------------------------------------------
    async def _lookup(self, name: str, qtype: str) -> list[Any]:
        from dnslib import QTYPE, RCODE, DNSRecord

        host, port = self.config.dns

        def ask() -> Any:
            return DNSRecord.parse(DNSRecord.question(name, qtype).send(
                host, port, timeout=self.config.timeout))

        try:
            reply = await asyncio.to_thread(ask)
        except (OSError, TimeoutError) as exc:
            raise ValidationError("dns", f"DNS problem: query for {name} {qtype} failed: "
                                         f"{exc}") from None
        if reply.header.rcode != RCODE.NOERROR:
            raise ValidationError("dns", f"DNS problem: {RCODE[reply.header.rcode]} looking "
                                         f"up {qtype} for {name}")
        return [rr.rdata for rr in reply.rr if rr.rtype == getattr(QTYPE, qtype)]

    async def _address(self, name: str) -> str:
        found = await self._lookup(name, "A")
        if not found:
            raise ValidationError("dns", f"No valid IP addresses found for {name}")
        return str(found[0])

    async def _dns01(self, name: str, key_authz: str) -> None:
        record = f"_acme-challenge.{name}"
        expected = b64url(hashlib.sha256(key_authz.encode()).digest())
        values = [b"".join(r.data).decode(errors="replace")
                  for r in await self._lookup(record, "TXT")]
        if not values:
            raise ValidationError("unauthorized", f"No TXT record found at {record}")
        if expected not in values:
            raise ValidationError("unauthorized", f"Incorrect TXT record {values[0]!r} found "
                                                  f"at {record}")

    # -- http-01 and tls-alpn-01 -----------------------------------------------------------
    async def _http01(self, host: str, address: str, port: int, token: str,
                      key_authz: str) -> None:
        path = f"/.well-known/acme-challenge/{token}"
        shown = f"[{address}]" if ":" in address else address
        url = f"http://{host}{path}"  # as the error names it; fetched at the routed address
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                    f"http://{shown}:{port}{path}", headers={"Host": host},
                    allow_redirects=False) as resp:
                body = (await resp.read()).strip()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ValidationError("connection", f"{host}: Fetching {url}: {exc}") from None
        if status != 200:
            raise ValidationError("unauthorized", f"{host}: Invalid response from {url}: "
                                                  f"{status}")
        if body != key_authz.encode():
            raise ValidationError("unauthorized", "The key authorization file from the server "
                                  f"did not match this challenge {key_authz!r} != "
                                  f"{body.decode(errors='replace')!r}")

    async def _tlsalpn01(self, value: str, sni: str, addresses: tuple[str, str], port: int,
                         key_authz: str) -> None:
        """*addresses*: the one the name resolved to (for errors) and the one connected to."""
        address, target = addresses
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["acme-tls/1"])
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(
                target, port, ssl=ctx, server_hostname=sni), self.config.timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise ValidationError("connection", f"{value}: Connection to {address}:{port} "
                                                f"for tls-alpn-01 failed: {exc}") from None
        try:
            tls = writer.get_extra_info("ssl_object")
            alpn, der = tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.config.timeout)
        if alpn != "acme-tls/1" or not der:
            raise ValidationError("unauthorized", f"{value}: the server did not negotiate "
                                                  f"acme-tls/1 (got {alpn!r})")
        cert = x509.load_der_x509_certificate(der)
        try:
            ext = cert.extensions.get_extension_for_oid(_ACME_IDENTIFIER)
        except x509.ExtensionNotFound:
            raise ValidationError("unauthorized", f"{value}: the tls-alpn-01 certificate has "
                                                  "no acmeIdentifier extension") from None
        digest = b"\x04\x20" + hashlib.sha256(key_authz.encode()).digest()  # OCTET STRING
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
        if not ext.critical or raw != digest:
            raise ValidationError("unauthorized", "Incorrect validation certificate for "
                                  f"tls-alpn-01 challenge for {value}")
