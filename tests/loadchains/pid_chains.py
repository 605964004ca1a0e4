"""Small chains for load-mode tests: each load worker leaves its pid where a test finds it.

Copied into a pytester directory; ``WEC_TEST_PIDS`` names the folder that receives one
``<worker>.pid`` file per process that runs a chain, and one ``<worker>.started`` journal, a
byte per chain started (written at once: it survives the worker's SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pytest_wec import ChainContext, chain

_JOURNAL: list[int] = []  # the journal's file descriptor, opened once


def _leave_pid(wec: ChainContext) -> None:
    folder = os.environ.get("WEC_TEST_PIDS")
    if folder:
        path = Path(folder) / f"{wec.runtime.worker_id}.pid"
        if not path.exists():
            path.write_text(str(os.getpid()))
        if not _JOURNAL:
            _JOURNAL.append(os.open(Path(folder) / f"{wec.runtime.worker_id}.started",
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        os.write(_JOURNAL[0], b".")


@chain("tick")
async def test_tick(wec: ChainContext) -> None:
    _leave_pid(wec)
    await asyncio.sleep(0.05)


@chain("account", produces={"account"})
async def test_account(wec: ChainContext) -> None:
    _leave_pid(wec)
    account = await wec.new_account()
    assert account.created
