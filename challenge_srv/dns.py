"""DNS over UDP and TCP (RFC 1035): dns-01 TXT records (RFC 8555 §8.4) and mock DNS data.

Answers follow pebble-challtestsrv's:

    TXT    the stored values of the name (``_acme-challenge.<host>`` for dns-01)
    A      the name's overrides, else the default IPv4 (if any)
    AAAA   the name's overrides, else the default IPv6 (if any)
    CAA    the stored policies
    CNAME  the alias; for any other type an alias is followed one level, its CNAME
           record leading the answer
    other  NOTIMP
    a name marked SERVFAIL gets SERVFAIL whatever the type

Every answer has TTL 0 and a fake SOA in the authority section. Names are compared
case-insensitively. A UDP answer larger than the client's limit (512, or its EDNS size up
to 4096) is sent truncated (TC) and a client retries over TCP. Malformed packets are
dropped (UDP) or end the connection (TCP); a store failure answers SERVFAIL.

The common queries (one A, AAAA or TXT question for a plain name) are parsed and answered
by :mod:`.dnswire`, the same bytes without dnslib's objects; every other one, and every answer
with a CNAME, goes through dnslib.

A TXT query for ``_acme-challenge.<name>`` is a dns-01 validation request: once its answer is
sent it is published to the waiting chain (``challenge_srv.seen``, RFC 8555 §7.5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any, cast

from dnslib import (
    AAAA,
    CAA,
    CNAME,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSHeader,
    DNSRecord,
)

from . import dnswire
from .history import RequestHistory
from .seen import SeenPublisher
from .store import CaaPolicy, ChallengeStore, DnsData, normalize_host

__all__ = ["DnsServer"]

log = logging.getLogger(__name__)

_SUPPORTED = ("A", "AAAA", "TXT", "CAA", "CNAME")
_DNS01_PREFIX = "_acme-challenge."
_QTYPE_TXT = 16
_MAX_UDP_QUERY = 4096
_MAX_IN_FLIGHT = 1024
_TCP_IDLE = 10.0
_SOA = RR(
    "wec.invalid.",
    QTYPE.SOA,
    rdata=SOA("ns.wec.invalid.", "master.wec.invalid.", (1, 1, 1, 1, 1)),
    ttl=0,
)


def _txt(value: str) -> TXT:
    data = value.encode()
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


class DnsServer:
    """Answers DNS queries from the store, on UDP and TCP sockets."""

    def __init__(
        self,
        store: ChallengeStore,
        history: RequestHistory,
        *,
        default_ipv4: str | None,
        default_ipv6: str | None,
        seen: SeenPublisher | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self.seen = seen
        self.defaults = {4: default_ipv4 or "", 6: default_ipv6 or ""}
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- answering -----------------------------------------------------------------------

    async def answer(self, packet: bytes, *, udp: bool) -> bytes | None:
        """The wire answer to *packet*, or None to send nothing (not a query, malformed)."""
        wire, _ = await self._answer(packet, udp=udp)
        return wire

    def _publish(self, validations: list[tuple[str, bool]], source: Any) -> None:
        """Publish the dns-01 validation requests just answered (name, TXT values found)."""
        if self.seen is not None:
            for name, served in validations:
                self.seen.seen("dns-01", name, source, served=served)

    async def _answer(
        self, packet: bytes, *, udp: bool
    ) -> tuple[bytes | None, list[tuple[str, bool]]]:
        """The wire answer and the dns-01 validation requests (name, served) among its
        questions."""
        query = dnswire.parse_simple(packet)
        if query is None:
            return await self._answer_dnslib(packet, udp=udp)
        wire, validations, data = await self._answer_simple(query, udp=udp)
        if wire is None:  # a CNAME, or an answer dnslib writes: with the data read
            return await self._answer_dnslib(packet, udp=udp, first=data)
        return wire, validations

    async def _answer_simple(
        self, q: dnswire.SimpleQuery, *, udp: bool
    ) -> tuple[bytes | None, list[tuple[str, bool]], DnsData | None]:
        """The answer to a simple query (:mod:`.dnswire`) as :meth:`_answer_dnslib` writes
        it; no answer but the data read when dnslib must write it."""
        name = normalize_host(q.qname)
        self.history.add(
            "dns", name, {"Question": {"Name": q.qname, "Qtype": q.qtype, "Qclass": q.qclass}}
        )
        qtype = dnswire.SIMPLE_TYPES[q.qtype]
        try:
            data = await self.store.dns(name, qtype)
        except Exception as exc:  # a store failure answers SERVFAIL
            log.warning("dns: store unavailable: %s", exc)
            return dnswire.reply(q, RCODE.SERVFAIL, [], udp=udp), [], None
        if data.cname:
            return None, [], data
        records: list[bytes] = []
        try:
            if not data.servfail and qtype == "TXT":
                records = [dnswire.txt_record(v) for v in data.values]
            elif not data.servfail:
                records = [dnswire.a_record(q.qtype, ip.packed)
                           for ip in self._addresses(4 if qtype == "A" else 6, data)]
            wire = dnswire.reply(q, RCODE.SERVFAIL if data.servfail else 0, records, udp=udp)
        except Exception:  # e.g. a value too long: dnslib's answer (and its message)
            return None, [], data
        validations = []
        if q.qtype == _QTYPE_TXT and q.qname.lower().startswith(_DNS01_PREFIX):
            validations.append((q.qname.lower(), bool(records)))
        return wire, validations, data

    async def _answer_dnslib(
        self, packet: bytes, *, udp: bool, first: DnsData | None = None
    ) -> tuple[bytes | None, list[tuple[str, bool]]]:
        """:meth:`_answer` through dnslib; *first*: the data of the first question, read."""
        try:
            request = DNSRecord.parse(packet)
        except Exception as exc:  # dnslib raises many kinds on bad input
            log.debug("dns: malformed packet (%d bytes): %s", len(packet), exc)
            return None, []
        header = request.header
        if header.qr:
            return None, []
        reply = DNSRecord(
            DNSHeader(id=header.id, qr=1, aa=0, ra=0, rd=header.rd, opcode=header.opcode),
            questions=list(request.questions),
        )
        edns = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        validations: list[tuple[str, bool]] = []
        if header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP
        else:
            try:
                for question in request.questions:
                    before = len(reply.rr)
                    await self._answer_question(question, reply, first)
                    first = None
                    name = str(question.qname).lower()
                    if int(question.qtype) == _QTYPE_TXT and name.startswith(_DNS01_PREFIX):
                        validations.append((name, len(reply.rr) > before))
            except Exception as exc:  # a store failure answers SERVFAIL
                log.warning("dns: store unavailable: %s", exc)
                reply.rr = []
                reply.header.rcode = RCODE.SERVFAIL
        reply.add_auth(_SOA)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=1232))
        try:
            wire: bytes = reply.pack()
        except Exception as exc:  # e.g. a stored value dnslib cannot encode
            log.warning("dns: cannot encode the answer: %s", exc)
            reply = DNSRecord(reply.header, questions=list(request.questions))
            reply.header.rcode = RCODE.SERVFAIL
            wire = reply.pack()
        limit = 65535
        if udp:
            limit = 512 if edns is None else max(512, min(int(edns.rclass), 4096))
        if len(wire) > limit:
            truncated = DNSRecord(reply.header, questions=list(request.questions))
            truncated.header.tc = 1
            if edns is not None:
                truncated.add_ar(EDNS0(udp_len=1232))
            wire = truncated.pack()
        return wire, validations

    async def _answer_question(self, question: Any, reply: Any, data: DnsData | None) -> None:
        """Answer *question* into *reply*; *data*: what the store holds for it, when read
        (and recorded in the history) already."""
        qname = str(question.qname)
        name = normalize_host(qname)
        qtype_code = int(question.qtype)
        qtype = QTYPE.get(qtype_code)
        lookup = qtype if qtype in _SUPPORTED else "none"
        if data is None:
            self.history.add(
                "dns",
                name,
                {"Question": {"Name": qname, "Qtype": qtype_code,
                              "Qclass": int(question.qclass)}},
            )
            data = await self.store.dns(name, lookup)
        if data.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return
        owner = qname
        if data.cname:
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(data.cname + "."), ttl=0))
            if qtype == "CNAME":
                return
        if qtype not in _SUPPORTED:
            reply.header.rcode = RCODE.NOTIMP
            return
        if data.cname:
            owner = data.cname + "."
            data = await self.store.dns(data.cname, lookup, follow=False)
        for rr in self._records(owner, qtype, data):
            reply.add_answer(rr)

    def _records(self, owner: str, qtype: str, data: DnsData) -> list[RR]:
        if qtype == "TXT":
            return [RR(owner, QTYPE.TXT, rdata=_txt(v), ttl=0) for v in data.values]
        if qtype == "CAA":
            out = []
            for raw in data.values:
                policy = CaaPolicy.decode(raw)
                if policy is not None:
                    rdata = CAA(policy.flag, policy.tag, policy.value)
                    out.append(RR(owner, QTYPE.CAA, rdata=rdata, ttl=0))
            return out
        if qtype in ("A", "AAAA"):
            version = 4 if qtype == "A" else 6
            return [RR(owner, getattr(QTYPE, qtype), rdata=A(str(ip)) if version == 4
                       else AAAA(str(ip)), ttl=0) for ip in self._addresses(version, data)]
        return []

    def _addresses(
        self, version: int, data: DnsData
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The A (4) or AAAA (6) answers: the overrides, else the default; others skipped."""
        values: tuple[str, ...] = data.values
        if not values:
            default = self.defaults[version] if data.default is None else data.default
            values = (default,) if default else ()
        out = []
        for value in values:
            try:
                ip = ipaddress.ip_address(value.strip())
            except ValueError:
                continue
            if ip.version == version:
                out.append(ip)
        return out

    # -- transports ----------------------------------------------------------------------

    async def start(self, udp_socks: list[socket.socket], tcp_socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in udp_socks:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=sock
            )
            self._transports.append(transport)
        for sock in tcp_socks:
            self._servers.append(await asyncio.start_server(self._tcp_connection, sock=sock))

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._transports.clear()
        self._servers.clear()

    def spawn_udp(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        if len(data) > _MAX_UDP_QUERY or len(self._tasks) >= _MAX_IN_FLIGHT:
            log.debug("dns: dropped a %d-byte datagram from %s", len(data), addr)
            return
        task = asyncio.get_running_loop().create_task(self._udp_reply(transport, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_reply(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: Any
    ) -> None:
        try:
            wire, validations = await self._answer(data, udp=True)
            if wire is not None and not transport.is_closing():
                transport.sendto(wire, addr)
                self._publish(validations, addr)
        except Exception:  # one bad datagram must never stop the server
            log.exception("dns: unexpected error answering over UDP")

    async def _tcp_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                async with asyncio.timeout(_TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    packet = await reader.readexactly(size)
                wire, validations = await self._answer(packet, udp=False)
                if wire is None:
                    break
                writer.write(len(wire).to_bytes(2, "big") + wire)
                self._publish(validations, peer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("dns: TCP connection ended: %r", exc)
        except Exception:  # one bad connection must never stop the server
            log.exception("dns: unexpected error on a TCP connection")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.server.spawn_udp(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: UDP error: %s", exc)
