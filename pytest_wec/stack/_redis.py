"""``redis-server`` on a free port of one address, persistence off (controller side).

On loopback it runs as before any scale-out: no password, protected mode on. Bound to any
other address, other hosts can reach it, so it requires a random password (written to
``redis.conf``, mode 0600, in the run directory, not on its command line) that is part of the
URL returned; protected mode stays on, which with a password set blocks nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from pytest_wec.stack._procs import ManagedProcess, find_binary, free_port, host_port, is_loopback

__all__ = ["start_redis"]


def _ping(host: str, port: int, password: str | None) -> bool:
    with socket.create_connection((host, port), timeout=0.5) as s:
        if password:
            s.sendall(f"AUTH {password}\r\n".encode())
            if not s.recv(16).startswith(b"+OK"):
                return False
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _password_file(run_dir: Path) -> tuple[Path, str]:
    password = secrets.token_hex(16)
    path = run_dir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"requirepass {password}\n")
    return path, password


def start_redis(run_dir: Path, *, host: str = "127.0.0.1", binary: str | None = None,
                timeout: float = 10.0) -> tuple[ManagedProcess, str]:
    """Start redis-server on *host*; return the process and its URL ``redis://HOST:PORT/0``
    (``redis://:PASSWORD@HOST:PORT/0`` when *host* is not loopback)."""
    exe = find_binary("redis-server", binary)
    conf: Path | None = None
    password: str | None = None
    if not is_loopback(host):
        run_dir.mkdir(parents=True, exist_ok=True)
        conf, password = _password_file(run_dir)
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probe and bind
        port = free_port(host)
        argv = [
            exe,
            *([str(conf)] if conf is not None else []),
            "--bind", host,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(run_dir),
            "--protected-mode", "yes",
            "--maxclients", "10000",
            "--loglevel", "warning",
        ]
        proc = ManagedProcess("redis-server", argv, run_dir / "redis.log")
        try:
            proc.wait_ready(lambda p=port: _ping(host, p, password),  # type: ignore[misc]
                            timeout, "answering PING")
        except Exception as exc:
            proc.stop()
            last = exc
            continue
        auth = f":{password}@" if password else ""
        return proc, f"redis://{auth}{host_port(host, port)}/0"
    assert last is not None
    raise last
