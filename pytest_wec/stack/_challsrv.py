"""The challenge server (``python -m pytest_wec_challenge_srv``) as a child process of the stack.

It binds port 0 (a free port) for every listener whose port ``--wec-challenge-ports`` does
not fix, and reports ``listening KIND HOST:PORT`` lines, then ``ready``, on its stdout; the
ports are read from those lines, and a restart binds them again. Every listener, the
management API too, binds the one address given (``--wec-listen``), and its DNS answers
that address for every name, so that the CA's validation reaches it. The Redis
URL and the token go in the environment (``WEC_REDIS``, ``WEC_TOKEN``), not on the command
line, which other users of the host can read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pytest_wec._shipped import CHALLENGE_SRV
from pytest_wec.stack._procs import ManagedProcess, host_port

__all__ = ["ChallengeServerInfo", "challtestsrv_ports", "start_challenge_server"]

_LISTEN = re.compile(r"^listening (\S+) \[?([^\]\s]+?)\]?:(\d+)\s*$")


class ChallengeServerInfo:
    def __init__(self, listeners: dict[str, tuple[str, int]]) -> None:
        self.listeners = listeners

    def port(self, kind: str) -> int:
        for name, (_, port) in self.listeners.items():
            if name == kind or name.startswith(kind):
                return port
        raise KeyError(kind)

    def address(self, kind: str) -> str:
        for name, (host, port) in self.listeners.items():
            if name == kind or name.startswith(kind):
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise KeyError(kind)

    @property
    def management_url(self) -> str:
        return "http://" + self.address("management")

    def addresses(self) -> dict[str, str]:
        """``host:port`` of each listener, by the names options use (``http-01``,
        ``tls-alpn-01``, ``dns``, ``management``)."""
        return {name: self.address(kind) for name, kind in _LISTENERS if kind in self.listeners}


#: the listeners by the names options use, and as the challenge server prints them
_LISTENERS = (("http-01", "http01"), ("tls-alpn-01", "tlsalpn01"), ("dns", "dns01"),
              ("management", "management"))
#: where chall-test-srv answers by default (Boulder's, and pebble-challtestsrv's)
_CHALLTESTSRV_DEFAULTS = {"http-01": 5002, "tls-alpn-01": 5001, "dns": 8053}


def challtestsrv_ports(url: str, ports: Mapping[str, int] | None) -> tuple[int, int, str]:
    """Where the challtestsrv of management *url* answers, as an embedded Pebble is told:
    its http-01 and tls-alpn-01 ports and its DNS server (``host:port``). The ports are
    those *ports* (``--wec-challenge-ports``) fixes, else chall-test-srv's defaults (5002,
    5001, 8053); its DNS answers on the management URL's host."""
    given = {**_CHALLTESTSRV_DEFAULTS, **(ports or {})}
    host = urlsplit(url).hostname or "127.0.0.1"
    return given["http-01"], given["tls-alpn-01"], host_port(host, given["dns"])


def start_challenge_server(
    run_dir: Path,
    *,
    redis_url: str,
    namespace: str,
    listen: str = "127.0.0.1",
    token: str | None = None,
    timeout: float = 15.0,
    ports: Mapping[str, int] | None = None,
) -> tuple[ManagedProcess, ChallengeServerInfo]:
    """Start the challenge server on *listen*; *ports* fixes some listeners' ports
    (``http-01``, ``tls-alpn-01``, ``dns``, ``management``: ``--wec-challenge-ports``), the
    others bind free ones."""
    fixed = ports or {}

    def addr(kind: str) -> str:
        return host_port(listen, fixed.get(kind, 0))

    v6 = ipaddress.ip_address(listen).version == 6
    argv = [
        sys.executable, "-m", CHALLENGE_SRV,
        "--http01", addr("http-01"),
        "--tlsalpn01", addr("tls-alpn-01"),
        "--dns01", addr("dns"),
        "--management", addr("management"),
        "--namespace", namespace,
        "--default-ipv4", "" if v6 else listen,
        "--default-ipv6", listen if v6 else "",
    ]
    env = {**os.environ, "WEC_REDIS": redis_url}
    env.pop("WEC_TOKEN", None)
    if token:
        env["WEC_TOKEN"] = token
    proc = ManagedProcess("challenge-server", argv, run_dir / "challenge-server.log", env=env)
    lines = proc.wait_line(lambda line: line.strip() == "ready", timeout, "printing 'ready'")
    listeners: dict[str, tuple[str, int]] = {}
    for line in lines:
        m = _LISTEN.match(line.strip())
        if m:
            listeners[m.group(1)] = (m.group(2), int(m.group(3)))
    # a restart (ManagedProcess.restart) binds the same ports again, not new free ones
    for flag, kind in (("--http01", "http01"), ("--tlsalpn01", "tlsalpn01"),
                       ("--dns01", "dns01"), ("--management", "management")):
        if kind in listeners:
            proc.argv[proc.argv.index(flag) + 1] = host_port(listen, listeners[kind][1])
    return proc, ChallengeServerInfo(listeners)
