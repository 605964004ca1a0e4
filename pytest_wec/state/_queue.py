"""StoreQueue: a worker's state-store calls, off the event loop, committed in groups.

Every chain of a load run reads and writes the state DB a few times (the account it takes,
the order, authorizations and certificate it made). Run one by one, each call is a thread
hop and a transaction of its own, which costs the worker more CPU than the ACME requests
around it (docs/performance.md). A StoreQueue runs the calls on one thread at a time; the
calls that arrive while a group runs go together as the next group, in one transaction
(group commit: no waiting for a group to fill, so a lone call runs at once).

    queue = StoreQueue(store)
    row = await queue.call(store.pick_account, directory)
    ...
    await queue.aclose()
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["StoreQueue"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreQueue:
    """Runs calls of *store* on a worker thread, grouped per :meth:`run_batch` of the store
    (one transaction per group, a savepoint per call) when it has one.

    *max_batch*: the most calls in one group. A call's exception is raised to its caller
    alone. A caller that is cancelled does not cancel its call (as with ``to_thread``).
    """

    def __init__(self, store: Any, *, max_batch: int = 64) -> None:
        self.store = store
        self.max_batch = max_batch
        self._batched = callable(getattr(store, "run_batch", None))
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self.groups = 0
        self.calls = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the queue's thread; its result or its exception."""
        if self._closed:
            raise RuntimeError("StoreQueue is closed")
        if not self._batched:
            return await asyncio.to_thread(fn, *args, **kwargs)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((functools.partial(fn, *args, **kwargs), fut))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                group = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self.groups += 1
                self.calls += len(group)
                try:
                    outcomes = await asyncio.to_thread(
                        self.store.run_batch, [fn for fn, _ in group])
                except BaseException as exc:  # the thread hop itself failed: tell everyone
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception)
                                              else RuntimeError(f"state DB call: {exc!r}"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), (ok, value) in zip(group, outcomes, strict=True):
                    if fut.done():
                        continue  # its caller was cancelled; the call itself ran
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self._drainer = None

    async def aclose(self, timeout: float = 60.0) -> None:
        """Refuse new calls and wait (up to *timeout* s) for the queued ones to finish."""
        self._closed = True
        drainer = self._drainer
        if drainer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(drainer), timeout)
            except TimeoutError:
                log.warning("state DB: %d calls still queued after %gs", len(self._pending),
                            timeout)
