"""CPU of the challenge server per validation request, by kind, against its baseline read path.

    .venv/bin/python bench/bench_challenge_srv.py [--quick] [--count N] [--tokens N]
                                                  [--no-baseline]

A redis-server and the challenge server (``python -m pytest_wec_challenge_srv``, the argv
``pytest_wec.stack._challsrv`` starts it with) on free ports of 127.0.0.1. ``--tokens``
(2,000) http-01 tokens and as many ``_acme-challenge.`` TXT records are published through
``RedisPublisher``, as a worker publishes them. Then, for ``--count`` (10,000; ``--quick``
2,000) requests of each kind, one at a time as a CA's validation agent sends them, from this
process (pre-built requests, a raw socket):

    http-01 conn    GET of a published token, one TCP connection each (Connection: close)
    http-01 k-a     the same on one keep-alive connection
    dns A           A query (UDP) for a random name: the default IPv4 answers
    dns TXT         TXT query (UDP) for a published _acme-challenge. name

Every answer is checked (the key authorization, the TXT value, 127.0.0.1); a wrong one exits
1. The server's CPU (utime + stime of /proc/PID/stat, every thread) is read before and after
each phase, after its seen events went out; the table gives CPU µs per request, and
redis-server's beside it (the commands per query are the same for both servers).

Two servers are measured in turn on the same Redis and data:

    baseline   ``--loop asyncio --store-reads pipeline``: the standard event loop and a
               redis-py pipeline per query, the read path before the one-command reads
    default    the server as the stack starts it: uvloop, one Redis command per query
               (MGET for http-01, the store's Lua script for a DNS question)

and the ratio baseline / default. Both answer DNS through ``challenge_srv.dnswire`` (the
same bytes as dnslib's, which the server has no switch to turn off): the second table gives,
in this process and without a store, CPU µs per answer of ``DnsServer`` through dnslib (what
the server did before) and through dnswire, and their ratio. For scale, the last rows give
the floor of the redis-py reads: CPU µs in this process of redis-py's asyncio pipeline for
the same data (the two GETs of an http-01 fetch, the four commands of an A question), which
the baseline pays per query on top of HTTP or DNS. Timings vary with the machine's load;
the script never fails on one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnslib import QTYPE, DNSRecord

from bench._common import log, machine, table
from pytest_wec._shipped import CHALLENGE_SRV
from pytest_wec.stack._procs import ManagedProcess
from pytest_wec.stack._redis import start_redis
from pytest_wec.worker.publish import RedisPublisher

TIMEOUT = 5.0
_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
CONFIGS = {"baseline": ["--loop", "asyncio", "--redis-client", "redis-py"], "default": []}


def cpu_us(pid: int) -> float:
    """utime + stime of process *pid* (all its threads), in µs."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) * _TICK_US


def start_server(run_dir: Path, redis_url: str, namespace: str,
                 extra: list[str]) -> tuple[ManagedProcess, dict[str, int]]:
    """The challenge server with the stack's argv (pytest_wec.stack._challsrv), plus *extra*."""
    argv = [sys.executable, "-m", CHALLENGE_SRV, "--http01", "127.0.0.1:0",
            "--tlsalpn01", "127.0.0.1:0", "--dns01", "127.0.0.1:0",
            "--management", "127.0.0.1:0", "--namespace", namespace,
            "--default-ipv4", "127.0.0.1", "--default-ipv6", "", *extra]
    env = {**os.environ, "WEC_REDIS": redis_url}
    env.pop("WEC_TOKEN", None)
    name = "challenge-server-" + ("-".join(a.strip("-") for a in extra) or "default")
    proc = ManagedProcess(name, argv, run_dir / f"{name}.log", env=env)
    lines = proc.wait_line(lambda line: line.strip() == "ready", 20.0, "printing 'ready'")
    ports = {ln.split()[1]: int(ln.rsplit(":", 1)[1]) for ln in lines
             if ln.startswith("listening ")}
    return proc, ports


async def publish(redis_url: str, namespace: str, n: int) -> tuple[dict[str, str],
                                                                   dict[str, str]]:
    """*n* tokens and *n* TXT records, through the worker's publisher."""
    pub = RedisPublisher(redis_url, namespace)
    tokens = {secrets.token_urlsafe(32): "" for _ in range(n)}
    txt = {}
    try:
        for token in tokens:
            tokens[token] = f"{token}.{secrets.token_urlsafe(32)}"
            await pub.add_http01(token, tokens[token])
            name = f"_acme-challenge.{secrets.token_hex(6)}.wec.example.com"
            txt[name] = secrets.token_urlsafe(32)
            await pub.set_txt(name, txt[name])
    finally:
        await pub.aclose()
    return tokens, txt


# -- clients: pre-built requests, one at a time --------------------------------------------


def _read_http(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One response (Content-Length framed, or up to EOF) and what follows it."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the headers")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = -1
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    while len(body) < length or length < 0:
        data = sock.recv(65536)
        if not data:
            if length < 0:
                break
            raise ConnectionError("connection closed inside the body")
        body += data
    if length < 0:
        length = len(body)
    if not head.startswith(b"HTTP/1.1 200 "):
        raise AssertionError(head.split(b"\r\n")[0].decode())
    return body[:length], body[length:]


def http_phase(port: int, tokens: dict[str, str], count: int, *, keep_alive: bool) -> None:
    items = list(tokens.items())
    reqs = [(f"GET /.well-known/acme-challenge/{t} HTTP/1.1\r\nHost: x.wec.example.com\r\n"
             f"Accept: */*\r\n{'' if keep_alive else 'Connection: close'}\r\n\r\n".encode(),
             ka.encode()) for t, ka in (items[i % len(items)] for i in range(count))]
    sock: socket.socket | None = None
    buf = b""
    try:
        for req, want in reqs:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(req)
            body, buf = _read_http(sock, buf)
            if body != want:
                raise AssertionError(f"http-01: got {body[:80]!r}, want {want[:80]!r}")
            if not keep_alive:
                sock.close()
                sock, buf = None, b""
    finally:
        if sock is not None:
            sock.close()


def dns_phase(port: int, queries: list[tuple[bytes, str]], qtype: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        for packet, want in queries:
            sock.send(packet)
            reply = DNSRecord.parse(sock.recv(4096))
            got = [str(rr.rdata).strip('"') for rr in reply.rr if QTYPE.get(rr.rtype) == qtype]
            if got != [want]:
                raise AssertionError(f"dns {qtype}: got {got}, want {[want]}")


def dns_queries(names: list[tuple[str, str]], qtype: str, count: int) -> list[tuple[bytes, str]]:
    out = []
    for i in range(count):
        name, want = names[i % len(names)]
        q = DNSRecord.question(name, qtype)
        q.header.id = random.randrange(65536)
        out.append((q.pack(), want))
    return out


def measure(pids: tuple[int, int], phase: Callable[[], None],
            count: int) -> tuple[float, float]:
    """CPU µs per request over *phase* of the challenge server and of redis-server (*pids*),
    the seen events published."""
    time.sleep(0.3)
    before = [cpu_us(pid) for pid in pids]
    phase()
    time.sleep(0.3)  # the seen publisher's batch, the last answers' tails
    srv, redis = ((cpu_us(pid) - b) / count for pid, b in zip(pids, before, strict=True))
    return srv, redis


def run_server(run_dir: Path, redis: tuple[int, str], namespace: str, extra: list[str],
               count: int, tokens: dict[str, str],
               txt: dict[str, str]) -> dict[str, tuple[float, float]]:
    redis_pid, redis_url = redis
    proc, ports = start_server(run_dir, redis_url, namespace, extra)
    pids = (proc.pid, redis_pid)
    try:
        http, dns = ports["http01"], ports["dns01"]
        http_phase(http, tokens, 200, keep_alive=True)  # warm up (imports, pools)
        a = dns_queries([(f"{secrets.token_hex(6)}.wec.example.com", "127.0.0.1")
                         for _ in range(count)], "A", count)
        t = dns_queries(list(txt.items()), "TXT", count)
        dns_phase(dns, a[:200], "A")
        return {
            "http-01 conn": measure(pids, lambda: http_phase(http, tokens, count,
                                                                 keep_alive=False), count),
            "http-01 k-a": measure(pids, lambda: http_phase(http, tokens, count,
                                                                keep_alive=True), count),
            "dns A": measure(pids, lambda: dns_phase(dns, a, "A"), count),
            "dns TXT": measure(pids, lambda: dns_phase(dns, t, "TXT"), count),
        }
    finally:
        proc.stop()


class _Store:
    """The store's answer to every DNS question: the default address, or one TXT value."""

    async def dns(self, host: str, qtype: str, *, follow: bool = True) -> Any:
        from pytest_wec_challenge_srv.store import DnsData

        return DnsData(values=(secrets.token_urlsafe(32),) if qtype == "TXT" else ())


async def dns_wire(count: int) -> dict[str, tuple[float, float]]:
    """CPU µs in this process per DNS answer without a store: (dnslib, dnswire)."""
    from pytest_wec_challenge_srv.dns import DnsServer
    from pytest_wec_challenge_srv.history import RequestHistory

    server = DnsServer(_Store(), RequestHistory(), default_ipv4="127.0.0.1",
                       default_ipv6=None)
    out = {}
    for kind, name, qtype in (("dns A", "x.wec.example.com", "A"),
                              ("dns TXT", "_acme-challenge.x.wec.example.com", "TXT")):
        packets = [p for p, _ in dns_queries([(name, "")], qtype, count)]
        times = []
        for answer in (server._answer_dnslib, server._answer):
            for packet in packets[:200]:
                await answer(packet, udp=True)
            t0 = time.process_time()
            for packet in packets:
                await answer(packet, udp=True)
            times.append((time.process_time() - t0) * 1e6 / count)
        out[kind] = (times[0], times[1])
    return out


async def redis_py_floor(redis_url: str, namespace: str, tokens: dict[str, str],
                         count: int) -> dict[str, float]:
    """CPU µs in this process per redis-py pipeline of the baseline's reads."""
    from pytest_wec_challenge_srv.store import Keys, connect

    keys, redis = Keys(namespace), connect(redis_url)
    names = list(tokens)
    try:
        async def http01(i: int) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                token = names[i % len(names)]
                pipe.get(keys.redirect(f"/.well-known/acme-challenge/{token}"))
                pipe.get(keys.http01(token))
                res = await pipe.execute()
            assert res[1] == tokens[token]

        async def dns_a(i: int) -> None:
            host = f"{i}.wec.example.com"
            async with redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.servfail(host))
                pipe.get(keys.cname(host))
                pipe.lrange(keys.a(host), 0, -1)
                pipe.get(keys.default_ip(4))
                await pipe.execute()

        out = {}
        for kind, op in (("http-01 reads", http01), ("dns A reads", dns_a)):
            for i in range(200):
                await op(i)
            t0 = time.process_time()
            for i in range(count):
                await op(i)
            out[kind] = (time.process_time() - t0) * 1e6 / count
        return out
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 requests of each kind")
    ap.add_argument("--count", type=int, help="requests of each kind (10,000)")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens and TXT records published")
    ap.add_argument("--no-baseline", action="store_true",
                    help="measure the default server only")
    args = ap.parse_args(argv)
    count = args.count or (2000 if args.quick else 10_000)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    print(f"# {machine()}")
    print(f"# {count:,} requests of each kind, one at a time; {args.tokens:,} tokens and "
          f"TXT records")
    configs = {k: v for k, v in CONFIGS.items() if k == "default" or not args.no_baseline}
    results: dict[str, dict[str, tuple[float, float]]] = {}
    floor: dict[str, float] = {}
    wire: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wec-bench-challsrv-") as tmp:
        redis_proc, redis_url = start_redis(Path(tmp))
        try:
            namespace = f"bench-{secrets.token_hex(4)}"
            tokens, txt = asyncio.run(publish(redis_url, namespace, args.tokens))
            for name, extra in configs.items():
                log(f"{name}: {' '.join(extra) or '(the stack argv)'}")
                try:
                    results[name] = run_server(Path(tmp), (redis_proc.pid, redis_url),
                                               namespace, extra, count, tokens, txt)
                except AssertionError as exc:
                    print(f"WRONG ANSWER from {name}: {exc}")
                    return 1
            floor = asyncio.run(redis_py_floor(redis_url, namespace, tokens, count))
            wire = asyncio.run(dns_wire(count))
        finally:
            redis_proc.stop()
    kinds = list(results["default"])
    header = ["CPU µs/request", *configs]
    rows: list[list[object]] = [[k, *(results[c][k][0] for c in configs)] for k in kinds]
    if "baseline" in results:
        header.append("baseline/default")
        for row, k in zip(rows, kinds, strict=True):
            row.append(f"{results['baseline'][k][0] / max(results['default'][k][0], 1e-9):.2f}x")
    header += [f"redis-server {c}" for c in configs]
    for row, k in zip(rows, kinds, strict=True):
        row += [results[c][k][1] for c in configs]
    print(table(header, rows))
    print()
    print(table(["DNS answer, no store (this process)", "dnslib", "dnswire", "dnslib/dnswire"],
                [[k, a, b, f"{a / max(b, 1e-9):.2f}x"] for k, (a, b) in wire.items()]))
    print()
    print(table(["redis-py pipeline (this process)", "CPU µs/query"],
                [[k, v] for k, v in floor.items()]))
    print("every answer checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
