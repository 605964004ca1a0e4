"""``redis-server`` on a free loopback port, persistence off (controller side)."""

from __future__ import annotations

import socket
from pathlib import Path

from pytest_wec.stack._procs import ManagedProcess, find_binary, free_port

__all__ = ["start_redis"]


def _ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def start_redis(run_dir: Path, *, binary: str | None = None, timeout: float = 10.0) -> tuple[
    ManagedProcess, str
]:
    """Start redis-server; return the process and its URL ``redis://127.0.0.1:PORT/0``."""
    exe = find_binary("redis-server", binary)
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        argv = [
            exe,
            "--bind", "127.0.0.1",
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
            proc.wait_ready(lambda p=port: _ping(p), timeout, "answering PING")  # type: ignore[misc]
        except Exception as exc:
            proc.stop()
            last = exc
            continue
        return proc, f"redis://127.0.0.1:{port}/0"
    assert last is not None
    raise last
