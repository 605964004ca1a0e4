"""The challenge server process: arguments, listeners, readiness, shutdown.

    python -m pytest_wec_challenge_srv --http01 ADDRS --tlsalpn01 ADDRS --dns01 ADDRS
        --management ADDR --redis URL --namespace NS
        [--default-ipv4 IP] [--default-ipv6 IP] [--token TOKEN] [--log-level LEVEL]
        [--loop uvloop|asyncio] [--redis-client lean|redis-py]

ADDRS is a comma-separated list of ``host:port`` (``[v6]:port`` for IPv6, ``:port`` for
every IPv4 interface); an empty string disables that listener; port 0 binds a free port.
Once every listener is bound and Redis answers, stdout gets one line per listener and then
``ready``, and nothing else (logs go to stderr):

    listening http01 127.0.0.1:40123
    listening tlsalpn01 127.0.0.1:40125
    listening dns01 127.0.0.1:40127        (UDP and TCP on the same port)
    listening management 127.0.0.1:40129
    ready

``--redis`` and ``--token`` default to the environment variables ``WEC_REDIS`` and
``WEC_TOKEN`` (the plugin's own), which keeps a password off the command line.

It runs on uvloop when that is importable (``--loop``, the default), else on the standard
event loop. The queries' reads and the seen events go through the lean client
(``challenge_srv.resp``: one write and one reply per query) for a ``redis://`` URL, through
redis-py for any other form or with ``--redis-client redis-py``; the management API always
writes through redis-py. The ready log line (stderr) names the event loop and the read
client in use.

Several challenge servers (on several hosts) may share one Redis and namespace: each reads
the same keys on every query, so a challenge published once is answered by all of them.

Each validation request answered (http-01 token, dns-01 TXT, tls-alpn-01 handshake) is
published on the namespace's ``seen`` channel for the chain waiting on it
(``challenge_srv.seen``, RFC 8555 §7.5.1).

Exit status: 0 after SIGTERM or SIGINT, 1 when a listener cannot be bound or Redis cannot
be reached, 2 for a bad argument (one ``challenge_srv: error: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from .resp import RespClient
from .store import ChallengeStore, Keys, connect, redact_url

__all__ = ["Config", "ListenAddr", "main", "parse_addrs", "parse_args"]

log = logging.getLogger(__name__)

PROG = "challenge_srv"


@dataclass(frozen=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return format_addr(self.host, self.port)


@dataclass(frozen=True)
class Config:
    http01: tuple[ListenAddr, ...]
    tlsalpn01: tuple[ListenAddr, ...]
    dns01: tuple[ListenAddr, ...]
    management: ListenAddr | None
    redis: str
    namespace: str
    default_ipv4: str | None
    default_ipv6: str | None
    token: str | None
    log_level: str
    loop: str = "asyncio"
    redis_client: str = "lean"


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addr(text: str) -> ListenAddr:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port 0-65535, got {text.strip()!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text.strip()!r}") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, [::1]:port, got {text.strip()!r}")
    return ListenAddr(host or "0.0.0.0", int(port))


def parse_addrs(text: str) -> tuple[ListenAddr, ...]:
    """``"127.0.0.1:0, [::1]:53"`` -> two addresses; ``""`` -> none (disabled)."""
    return tuple(parse_addr(part) for part in text.split(",") if part.strip())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _ip(version: int, flag: str, value: str) -> str | None:
    if value.strip().lower() in ("", "none"):
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise UsageError(f"{flag}: not an IP address: {value!r}") from None
    if ip.version != version:
        raise UsageError(f"{flag}: not an IPv{version} address: {value!r}")
    return str(ip)


def parse_args(argv: list[str]) -> Config:
    p = _Parser(
        prog=PROG,
        description="ACME challenge server (http-01, tls-alpn-01, dns-01) "
        "with a pebble-challtestsrv compatible management API; data in Redis.",
    )
    p.add_argument("--http01", default="127.0.0.1:5002", metavar="ADDRS")
    p.add_argument("--tlsalpn01", default="127.0.0.1:5001", metavar="ADDRS")
    p.add_argument("--dns01", default="127.0.0.1:8053", metavar="ADDRS")
    p.add_argument("--management", default="127.0.0.1:8055", metavar="ADDR")
    p.add_argument("--redis", default=os.environ.get("WEC_REDIS") or "redis://127.0.0.1:6379/0",
                   metavar="URL", help="default: $WEC_REDIS, else redis://127.0.0.1:6379/0")
    p.add_argument("--namespace", default="default", metavar="NS")
    p.add_argument(
        "--default-ipv4",
        default="127.0.0.1",
        metavar="IP",
        help="A answer for names without an override ('' disables)",
    )
    p.add_argument(
        "--default-ipv6",
        default="",
        metavar="IP",
        help="AAAA answer for names without an override (default: none)",
    )
    p.add_argument("--token", default=os.environ.get("WEC_TOKEN") or None,
                   help="require Authorization: Bearer TOKEN (default: $WEC_TOKEN)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--loop", default="uvloop" if _has_uvloop() else "asyncio",
                   choices=["uvloop", "asyncio"],
                   help="event loop (default: uvloop when importable, else asyncio)")
    p.add_argument("--redis-client", default="lean", choices=["lean", "redis-py"],
                   help="client of the queries' reads (default: lean for redis:// URLs)")
    ns = p.parse_args(argv)
    if ns.loop == "uvloop" and not _has_uvloop():
        raise UsageError("--loop: uvloop is not installed")
    addrs = {}
    for flag in ("http01", "tlsalpn01", "dns01", "management"):
        try:
            addrs[flag] = parse_addrs(getattr(ns, flag))
        except ValueError as exc:
            raise UsageError(f"--{flag}: {exc}") from None
    if len(addrs["management"]) > 1:
        raise UsageError("--management: expected one host:port")
    if not ns.redis.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(
            f"--redis: expected a redis://, rediss:// or unix:// URL, got {redact_url(ns.redis)!r}"
        )
    try:
        Keys(ns.namespace)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if ns.token is not None and not ns.token.strip():
        raise UsageError("--token: must not be empty")
    return Config(
        http01=addrs["http01"],
        tlsalpn01=addrs["tlsalpn01"],
        dns01=addrs["dns01"],
        management=addrs["management"][0] if addrs["management"] else None,
        redis=ns.redis,
        namespace=ns.namespace,
        default_ipv4=_ip(4, "--default-ipv4", ns.default_ipv4),
        default_ipv6=_ip(6, "--default-ipv6", ns.default_ipv6),
        token=ns.token,
        log_level=ns.log_level,
        loop=ns.loop,
        redis_client=ns.redis_client,
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """The event loop *name* (``uvloop`` or ``asyncio``) the server runs on."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _socket(addr: ListenAddr, kind: socket.SocketKind) -> socket.socket:
    info = socket.getaddrinfo(addr.host, addr.port, type=kind, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = info[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == socket.SOCK_DGRAM:  # room for bursts of queries; the kernel may cap it
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _dns_pair(addr: ListenAddr) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on one port (with port 0: a port free for both)."""
    for _ in range(50):
        udp = _socket(addr, socket.SOCK_DGRAM)
        port = udp.getsockname()[1]
        try:
            return udp, _socket(ListenAddr(addr.host, port), socket.SOCK_STREAM)
        except OSError as exc:
            udp.close()
            if addr.port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


def _bound(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return format_addr(host, port)


async def serve(cfg: Config) -> int:
    from .dns import DnsServer
    from .history import RequestHistory
    from .http01 import Http01Server
    from .management import ManagementServer
    from .seen import SeenPublisher
    from .tlsalpn01 import TlsAlpn01Server

    socks: list[socket.socket] = []
    lines: list[str] = []
    plan: dict[str, list[socket.socket]] = {
        "http01": [],
        "tlsalpn01": [],
        "udp": [],
        "tcp": [],
        "management": [],
    }
    what = ""
    try:
        for kind in ("http01", "tlsalpn01", "dns01", "management"):
            addrs = getattr(cfg, kind)
            for addr in (addrs,) if isinstance(addrs, ListenAddr) else addrs or ():
                what = f"{kind} {addr}"
                if kind == "dns01":
                    udp, tcp = _dns_pair(addr)
                    socks += (udp, tcp)
                    plan["udp"].append(udp)
                    plan["tcp"].append(tcp)
                    lines.append(f"listening dns01 {_bound(tcp)}")
                else:
                    sock = _socket(addr, socket.SOCK_STREAM)
                    socks.append(sock)
                    plan[kind].append(sock)
                    lines.append(f"listening {kind} {_bound(sock)}")
    except OSError as exc:
        for sock in socks:
            sock.close()
        print(f"{PROG}: error: cannot listen on {what}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    redis = connect(cfg.redis)
    reader = RespClient.from_url(cfg.redis, timeout=5.0) if cfg.redis_client == "lean" else None
    try:
        await asyncio.wait_for(redis.ping(), 10.0)
        if reader is not None:
            await asyncio.wait_for(reader.execute(("PING",)), 10.0)
    except Exception as exc:  # reported as one line, whatever the cause
        for sock in socks:
            sock.close()
        await redis.aclose()
        if reader is not None:
            await reader.aclose()
        print(
            f"{PROG}: error: cannot reach Redis at {redact_url(cfg.redis)}: {exc}", file=sys.stderr
        )
        return 1

    keys = Keys(cfg.namespace)
    store = ChallengeStore(redis, keys, client=reader)
    history = RequestHistory()
    seen = SeenPublisher(redis, keys.seen(), client=reader)
    http01 = Http01Server(store, history, seen)
    tlsalpn01 = TlsAlpn01Server(store, history, seen=seen)
    dns = DnsServer(store, history, default_ipv4=cfg.default_ipv4, default_ipv6=cfg.default_ipv6,
                    seen=seen)
    management = ManagementServer(store, history, token=cfg.token)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await seen.start()
        await http01.start(plan["http01"])
        await tlsalpn01.start(plan["tlsalpn01"])
        await dns.start(plan["udp"], plan["tcp"])
        await management.start(plan["management"])
        for line in lines:
            print(line)
        print("ready", flush=True)
        log.info(
            "challenge server ready (namespace %s, Redis %s, event loop %s, reads %s)",
            cfg.namespace, redact_url(cfg.redis), type(loop).__module__.split(".")[0],
            "lean" if reader is not None else "redis-py",
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        for part in (management, http01, tlsalpn01, dns, seen):
            with contextlib.suppress(Exception):
                await part.stop()
        for sock in socks:
            sock.close()
        await redis.aclose()
        if reader is not None:
            await reader.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the challenge server until SIGTERM/SIGINT; the exit status (see the docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop(cfg.loop)) as runner:
            return runner.run(serve(cfg))
    except KeyboardInterrupt:
        return 0
