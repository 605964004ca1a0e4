"""Small chains for load-mode tests: each load worker leaves its pid where a test finds it.

Copied into a pytester directory; ``WEC_TEST_PIDS`` names the folder that receives one
``<worker>.pid`` file per process that runs a chain.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pytest_wec import ChainContext, chain


def _leave_pid(wec: ChainContext) -> None:
    folder = os.environ.get("WEC_TEST_PIDS")
    if folder:
        path = Path(folder) / f"{wec.runtime.worker_id}.pid"
        if not path.exists():
            path.write_text(str(os.getpid()))


@chain("tick")
async def test_tick(wec: ChainContext) -> None:
    _leave_pid(wec)
    await asyncio.sleep(0.05)


@chain("account", produces={"account"})
async def test_account(wec: ChainContext) -> None:
    _leave_pid(wec)
    account = await wec.new_account()
    assert account.created
