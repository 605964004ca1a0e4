"""The per-worker runtime: one ACME network layer, publisher and state store per process.

Runs in an xdist worker, or in the controller process itself when xdist is not used. All
chains of the process share it; each chain run gets a cheap
:class:`~pytest_wec.context.ChainContext` view of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pytest_wec._settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["WorkerRuntime", "db_url_for"]


def db_url_for(settings: Settings, run_dir: str) -> str:
    return settings.db or str(Path(run_dir) / "state.db")


class WorkerRuntime:
    """What the chains of one process share: network layer, publisher, state store."""

    def __init__(self, settings: Settings, info: dict[str, Any], worker_id: str) -> None:
        self.settings = settings
        self.info = info
        self.worker_id = worker_id
        self.directory: str = info["directory"]
        self.network: Any = None
        self.publisher: Any = None
        self.store: Any = None
        self.pebble: Any = None
        self.holder = f"{worker_id}:{os.getpid()}"

    async def start(self) -> WorkerRuntime:
        from pytest_wec.acme import (
            AcmeNetwork,
            AiohttpTransport,
            HttpxTransport,
            make_ssl_context,
        )
        from pytest_wec.challenges import ChallTestSrvPublisher, RedisPublisher
        from pytest_wec.state import make_store

        s, info = self.settings, self.info
        transport: Any
        if s.transport == "httpx":
            ca = info.get("ca_bundle")
            transport = HttpxTransport(verify=False if info.get("insecure") else (ca or True))
        else:
            transport = AiohttpTransport(
                ssl=make_ssl_context(info.get("ca_bundle"), bool(info.get("insecure")))
            )
        # GET newNonce: a HEAD answered without Content-Length makes aiohttp drop the
        # connection, so each one would cost a new TLS handshake.
        self.network = AcmeNetwork(self.directory, transport, timeout=s.timeout,
                                   nonce_method="GET")
        if info.get("pebble_management"):
            from pytest_wec.pebble import PebbleManagement

            self.pebble = PebbleManagement(transport, info["pebble_management"])
        if info.get("challtestsrv"):
            self.publisher = ChallTestSrvPublisher(info["challtestsrv"], token=s.token)
        else:
            self.publisher = RedisPublisher(info["redis_url"], info["namespace"])
        self.store = await asyncio.to_thread(make_store, db_url_for(s, info["run_dir"]))
        return self

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a (sync, short) state-store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def aclose(self) -> None:
        for closer in (
            getattr(self.network, "aclose", None),
            getattr(self.publisher, "aclose", None),
        ):
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing the worker runtime")
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.release_all, self.holder)
            except Exception:
                log.exception("releasing claims")
            self.store.close()
