"""tls-alpn-01 (RFC 8737), with IP identifiers (RFC 8738).

The ClientHello is read and inspected before any TLS state exists: a hello without SNI,
or whose ALPN list is not exactly ``acme-tls/1`` (RFC 8737 §3: the CA offers that single
protocol), or for a name the store has no key authorization for, gets a fatal alert
(unrecognized_name or no_application_protocol) and the connection is closed; no
certificate is ever shown to it. Otherwise the handshake is completed over memory BIOs
with a context made for that name: a self-signed certificate whose subjectAltName is the
name (or, for a reverse-DNS SNI such as ``1.0.0.127.in-addr.arpa``, the IP address) and
whose critical acmeIdentifier extension (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31) holds
the DER OCTET STRING of SHA-256(key authorization). Contexts are cached briefly by
(name, key authorization), so a changed key authorization is never answered from cache.

A ClientHello with SNI offering ``acme-tls/1`` is a validation request: once it is answered
(the handshake done, or the alert sent) it is published to the waiting chain
(``challenge_srv.seen``, RFC 8555 §7.5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

from .history import RequestHistory
from .seen import SeenPublisher
from .store import ChallengeStore, ip_from_reverse_name, normalize_host

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ACME_TLS_1",
    "ClientHello",
    "TlsAlpn01Server",
    "challenge_certificate",
    "parse_client_hello",
]

log = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

_MAX_HELLO = 64 * 1024
_IO_TIMEOUT = 10.0
_ALERT_INTERNAL_ERROR = 80
_ALERT_UNRECOGNIZED_NAME = 112
_ALERT_NO_APPLICATION_PROTOCOL = 120


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None
    alpn: tuple[str, ...] | None  # None: no ALPN extension


def _vec(data: bytes, pos: int, width: int) -> tuple[bytes, int]:
    """A length-prefixed vector at *pos*; ValueError when it runs past the end."""
    if pos + width > len(data):
        raise ValueError("truncated length")
    n = int.from_bytes(data[pos : pos + width], "big")
    end = pos + width + n
    if end > len(data):
        raise ValueError("truncated vector")
    return data[pos + width : end], end


def parse_client_hello(body: bytes) -> ClientHello:
    """SNI and ALPN of a ClientHello handshake body (RFC 8446 §4.1.2, RFC 6066, RFC 7301)."""
    pos = 2 + 32  # legacy_version, random
    _, pos = _vec(body, pos, 1)  # legacy_session_id
    _, pos = _vec(body, pos, 2)  # cipher_suites
    _, pos = _vec(body, pos, 1)  # legacy_compression_methods
    if pos == len(body):
        return ClientHello(None, None)
    exts, _ = _vec(body, pos, 2)
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    pos = 0
    while pos < len(exts):
        if pos + 2 > len(exts):
            raise ValueError("truncated extension")
        ext_type = int.from_bytes(exts[pos : pos + 2], "big")
        data, pos = _vec(exts, pos + 2, 2)
        if ext_type == 0:  # server_name
            names, _ = _vec(data, 0, 2)
            i = 0
            while i < len(names):
                name_type = names[i]
                name, i = _vec(names, i + 1, 2)
                if name_type == 0 and server_name is None:
                    server_name = name.decode("ascii")
        elif ext_type == 16:  # application_layer_protocol_negotiation
            protos, _ = _vec(data, 0, 2)
            found: list[str] = []
            i = 0
            while i < len(protos):
                proto, i = _vec(protos, i, 1)
                found.append(proto.decode("latin-1"))
            alpn = tuple(found)
    return ClientHello(server_name, alpn)


async def _read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(raw TLS records, handshake body) of the ClientHello; ValueError if it is not one."""
    raw = bytearray()
    handshake = bytearray()
    while True:
        header = await reader.readexactly(5)
        if header[0] != 22:
            raise ValueError(f"not a TLS handshake record (content type {header[0]})")
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > 16384 + 2048:
            raise ValueError(f"bad TLS record length {length}")
        fragment = await reader.readexactly(length)
        raw += header + fragment
        handshake += fragment
        if len(raw) > _MAX_HELLO:
            raise ValueError("ClientHello too large")
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise ValueError(f"first handshake message is type {handshake[0]}, not 1")
            size = int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= 4 + size:
                return bytes(raw), bytes(handshake[4 : 4 + size])


def challenge_certificate(
    name: str, key_authz: str, key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """The RFC 8737 §3 validation certificate for *name* (RFC 8738 §6 for reverse names)."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:  # the usual case: a DNS name, or an IP's reverse-DNS name
        ip = ip_from_reverse_name(name)
    san: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
    digest = hashlib.sha256(key_authz.encode()).digest()
    now = dt.datetime.now(dt.UTC)
    empty = x509.Name([])
    return (
        x509.CertificateBuilder()
        .subject_name(empty)
        .issuer_name(empty)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )


def _load_context(pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_1])
    ctx.num_tickets = 0
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("wec-tlsalpn01")
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:  # pragma: no cover - not Linux
        f.write(pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


class TlsAlpn01Server:
    """The tls-alpn-01 responder on one or more listening sockets."""

    def __init__(
        self,
        store: ChallengeStore,
        history: RequestHistory,
        *,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        seen: SeenPublisher | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self.seen = seen
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._cache: OrderedDict[tuple[str, str], tuple[float, ssl.SSLContext]] = OrderedDict()
        self._servers: list[asyncio.Server] = []

    def context_for(self, name: str, key_authz: str) -> ssl.SSLContext:
        now = time.monotonic()
        hit = self._cache.get((name, key_authz))
        if hit is not None and hit[0] > now:
            self._cache.move_to_end((name, key_authz))
            return hit[1]
        cert = challenge_certificate(name, key_authz, self._key)
        ctx = _load_context(cert.public_bytes(serialization.Encoding.PEM) + self._key_pem)
        self._cache[(name, key_authz)] = (now + self.cache_ttl, ctx)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return ctx

    async def start(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            self._servers.append(await asyncio.start_server(self._connection, sock=sock))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(self._serve(reader, writer), _IO_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.debug("tls-alpn-01: connection dropped: %s", exc)
        except Exception:  # one bad connection must never stop the server
            log.exception("tls-alpn-01: unexpected error")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw, body = await _read_client_hello(reader)
        try:
            hello = parse_client_hello(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed ClientHello: {exc}") from exc
        name = normalize_host(hello.server_name or "")
        self.history.add(
            "tlsalpn",
            name,
            {
                "ServerName": hello.server_name or "",
                "SupportedProtos": list(hello.alpn) if hello.alpn is not None else None,
            },
        )
        if not name:
            log.debug("tls-alpn-01: refused a ClientHello without SNI")
            return await _alert(writer, _ALERT_UNRECOGNIZED_NAME)
        if hello.alpn != (ACME_TLS_1,):
            log.debug("tls-alpn-01 %s: refused ALPN %s", name, hello.alpn)
            return await _alert(writer, _ALERT_NO_APPLICATION_PROTOCOL)
        seen = self.seen
        peer = writer.get_extra_info("peername")
        published: list[bool] = []

        def answered(served: bool) -> None:
            if seen is not None and not published:
                published.append(served)
                seen.seen("tls-alpn-01", name, peer, served=served)

        try:
            key_authz = await self.store.tlsalpn01(name)
        except Exception as exc:  # a store failure refuses this handshake only
            log.warning("tls-alpn-01 %s: store unavailable: %s", name, exc)
            await _alert(writer, _ALERT_INTERNAL_ERROR)
            return answered(False)
        if key_authz is None:
            log.debug("tls-alpn-01 %s: no key authorization", name)
            await _alert(writer, _ALERT_UNRECOGNIZED_NAME)
            return answered(False)
        ctx = self.context_for(name, key_authz)
        try:
            await _handshake(ctx, raw, reader, writer, lambda: answered(True))
        finally:  # a handshake the CA broke off was a validation request all the same
            answered(True)
        log.debug("tls-alpn-01 %s: handshake done", name)


async def _alert(writer: asyncio.StreamWriter, description: int) -> None:
    """A fatal TLS alert record (level 2), then the caller closes."""
    writer.write(bytes([21, 3, 3, 0, 2, 2, description]))
    await writer.drain()


async def _handshake(
    ctx: ssl.SSLContext,
    raw: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    done: Callable[[], None] = lambda: None,
) -> None:
    """Complete the handshake begun by *raw*; *done* is called once the server's last
    flight is sent (before waiting for the client to close)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(raw)

    async def flush() -> None:
        data = outgoing.read()
        if data:
            writer.write(data)
            await writer.drain()

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await flush()
            data = await reader.read(65536)
            if not data:
                return
            incoming.write(data)
        except ssl.SSLError as exc:
            await flush()  # the alert OpenSSL produced, if any
            log.debug("tls-alpn-01: handshake failed: %s", exc)
            return
    await flush()
    done()
    with contextlib.suppress(ssl.SSLError):
        tls.unwrap()
    await flush()
    # Let the client close first, so that no reset races its reading of our Finished.
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(2.0):
            while await reader.read(65536):
                pass
