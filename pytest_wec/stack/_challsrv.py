"""The challenge server (``python -m challenge_srv``) as a child process of the stack.

It binds port 0 everywhere and reports ``listening KIND HOST:PORT`` lines, then ``ready``,
on its stdout; the ports are read from those lines, and a restart binds them again. Every
listener, the management API too, binds the one address given (``--wec-listen``), and its
DNS answers that address for every name, so that the CA's validation reaches it. The Redis
URL and the token go in the environment (``WEC_REDIS``, ``WEC_TOKEN``), not on the command
line, which other users of the host can read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path

from pytest_wec.stack._procs import ManagedProcess, host_port

__all__ = ["ChallengeServerInfo", "start_challenge_server"]

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


def start_challenge_server(
    run_dir: Path,
    *,
    redis_url: str,
    namespace: str,
    listen: str = "127.0.0.1",
    token: str | None = None,
    timeout: float = 15.0,
) -> tuple[ManagedProcess, ChallengeServerInfo]:
    addr = host_port(listen, 0)
    v6 = ipaddress.ip_address(listen).version == 6
    argv = [
        sys.executable, "-m", "challenge_srv",
        "--http01", addr,
        "--tlsalpn01", addr,
        "--dns01", addr,
        "--management", addr,
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
