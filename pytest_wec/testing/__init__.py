"""Servers for testing the load tester itself (not needed by a load run).

:mod:`pytest_wec.testing.hostile_ca` is an ACME server whose resources misbehave;
:mod:`pytest_wec.testing.quirky_ca` one that makes the choices other CAs make (Boulder's).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

__all__ = ["serve_until_signalled", "stop_process"]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop *proc*: SIGTERM, then SIGKILL if it has not exited within *timeout* seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


async def serve_until_signalled(runner: Any) -> None:
    """Serve (an aiohttp ``AppRunner`` whose sites started) until SIGINT or SIGTERM, then
    clean the runner up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
