"""The DNS wire form of the common answers, without dnslib's object model.

Nearly every query a CA sends is one A, AAAA or TXT question for a plain name, with or
without an EDNS OPT record. :func:`parse_simple` recognises exactly that form and
:func:`reply` writes its answer, byte for byte what :mod:`.dns` writes through dnslib for it
(``tests/test_challenge_srv.py`` compares the two):

    header      the query's id and RD bit, QR set, the rcode; TC when truncated
    question    the query's own bytes
    answers     owner ``0xC00C`` (a pointer to the question's name), class IN, TTL 0
    authority   the fake SOA of ``wec.invalid.``, its names compressed against themselves
    additional  OPT with UDP size 1232 when the query had one

Anything else (other types or opcodes, several questions, compressed, long or unusual
names, names in ``.invalid`` whose compression would differ, other records, trailing
bytes, a malformed OPT) is ``None`` here and goes through dnslib.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

__all__ = ["SimpleQuery", "a_record", "parse_simple", "reply", "txt_record"]

#: qtype -> name, of the questions answered here
SIMPLE_TYPES = {1: "A", 28: "AAAA", 16: "TXT"}
_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")
_HEAD = struct.Struct("!6H")
_RR = struct.Struct("!HHIH")
_OWNER = b"\xc0\x0c"
_OPT = b"\x00" + _RR.pack(41, 1232, 0, 0)  # dnslib's EDNS0(udp_len=1232)
_SOA_TAIL = struct.pack("!5I", 1, 1, 1, 1, 1)


@dataclass(frozen=True, slots=True)
class SimpleQuery:
    id: int
    rd: int
    qname: str  # as dnslib writes it: labels joined by dots, a trailing dot
    qtype: int
    qclass: int
    question: bytes  # the question section, as sent
    edns: int | None  # the OPT record's UDP size; None without one


def parse_simple(packet: bytes) -> SimpleQuery | None:
    """The query in *packet* when it has the simple form (module docstring), else None."""
    size = len(packet)
    if size < 17:
        return None
    qid, flags, qd, an, ns, ar = _HEAD.unpack_from(packet)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR, opcode
        return None
    pos, labels = 12, []
    while True:
        n = packet[pos]
        if n == 0:
            pos += 1
            break
        label = packet[pos + 1 : pos + 1 + n]
        if n > 63 or len(label) != n or not _LABEL.fullmatch(label):
            return None
        labels.append(label)
        pos += 1 + n
        if pos >= size:
            return None
    if not labels or pos - 12 > 250 or labels[-1].lower() == b"invalid" or pos + 4 > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    if qtype not in SIMPLE_TYPES:
        return None
    question = bytes(packet[12 : pos + 4])
    pos += 4
    edns = None
    if ar:
        if size < pos + 11 or packet[pos] != 0:
            return None
        rtype, rclass, _, rdlen = _RR.unpack_from(packet, pos + 1)
        pos += 11
        if rtype != 41 or pos + rdlen != size:
            return None
        while pos < size:  # EDNS options, each code, length, data
            if pos + 4 > size:
                return None
            pos += 4 + struct.unpack_from("!H", packet, pos + 2)[0]
        if pos != size:
            return None
        edns = rclass
    elif pos != size:
        return None
    qname = ".".join(label.decode() for label in labels) + "."
    return SimpleQuery(qid, (flags >> 8) & 1, qname, qtype, qclass, question, edns)


def a_record(qtype: int, packed: bytes) -> bytes:
    """An A (1) or AAAA (28) answer for the question's name: *packed* the address bytes."""
    return _OWNER + _RR.pack(qtype, 1, 0, len(packed)) + packed


def txt_record(value: str) -> bytes:
    """A TXT answer for the question's name: *value* in strings of up to 255 bytes."""
    data = value.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    rdata = b"".join(bytes([len(c)]) + c for c in chunks)
    if len(rdata) > 0xFFFF:
        raise ValueError("TXT value too long")
    return _OWNER + _RR.pack(16, 1, 0, len(rdata)) + rdata


def _soa(offset: int) -> bytes:
    ptr = struct.pack("!H", 0xC000 | offset)
    rdata = b"\x02ns" + ptr + b"\x06master" + ptr + _SOA_TAIL
    return b"\x03wec\x07invalid\x00" + _RR.pack(6, 1, 0, len(rdata)) + rdata


def reply(q: SimpleQuery, rcode: int, records: list[bytes], *, udp: bool) -> bytes | None:
    """The answer to *q*: *records* (from :func:`a_record`, :func:`txt_record`), the SOA, the
    OPT; truncated past the client's UDP limit. None when the SOA would sit beyond where a
    compression pointer reaches (dnslib writes that one)."""
    body = q.question + b"".join(records)
    if 12 + len(body) >= 0x3FFF:
        return None
    flags = 0x8000 | (q.rd << 8) | rcode
    opt = _OPT if q.edns is not None else b""
    ar = 1 if opt else 0
    wire = _HEAD.pack(q.id, flags, 1, len(records), 1, ar) + body + _soa(12 + len(body)) + opt
    limit = 65535
    if udp:
        limit = 512 if q.edns is None else max(512, min(q.edns, 4096))
    if len(wire) > limit:
        wire = _HEAD.pack(q.id, flags | 0x0200, 1, 0, 0, ar) + q.question + opt
    return wire
