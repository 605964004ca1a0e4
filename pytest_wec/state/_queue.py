"""StoreQueue: a worker's state-store calls, off the event loop, committed in groups.

Every chain of a load run reads and writes the state DB a few times (the account it takes,
the order, authorizations and certificate it made). Run one by one, each call is a thread
hop and a transaction of its own, which costs the worker more CPU than the ACME requests
around it (docs/performance.md). A StoreQueue runs the calls on one thread at a time; the
calls that arrive while a group runs go together as the next group, in one transaction
(group commit: no waiting for a group to fill, so a lone call runs at once). A write its
caller does not wait for (:meth:`StoreQueue.submit` with ``wait=False``) may wait up to
:data:`WRITE_BEHIND_WINDOW` for company, so that writes nobody waits for cost one
transaction per group rather than one each; a call someone waits for starts the group at
once. Reads (:meth:`StoreQueue.read`) do not queue: they run beside the groups (SQLite's WAL
and the server databases let a read go on while a write transaction is open).

    queue = StoreQueue(store)
    row = await queue.call(store.pick_account, directory)
    ...
    await queue.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["StoreQueue"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds a group of writes nobody waits for may wait for more calls before it runs
WRITE_BEHIND_WINDOW = 0.025


class StoreQueue:
    """Runs calls of *store* on a worker thread, grouped per :meth:`run_batch` of the store
    when it has one (one transaction per group; a call that fails on the database has the
    group run again call by call).

    *max_batch*: the most calls in one group. A call's exception is raised to its caller
    alone. A caller that is cancelled does not cancel its call (as with ``to_thread``).
    """

    def __init__(self, store: Any, *, max_batch: int = 64,
                 window: float = WRITE_BEHIND_WINDOW, inline_reads: bool | None = None) -> None:
        self.store = store
        #: reads run on the caller's thread (see :meth:`read`); default: for a SQLite store
        self.inline_reads = _local_file(store) if inline_reads is None else inline_reads
        self.max_batch = max_batch
        self.window = window
        self._batched = callable(getattr(store, "run_batch", None))
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any], bool]] = []
        self._waited = 0  # calls in _pending whose caller waits for them
        self._kick: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._last: asyncio.Future[Any] | None = None  # unbatched: the call queued last
        self.groups = 0
        self.calls = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the queue's thread; its result or its exception."""
        return await self.submit(fn, *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call that only reads: at once, not behind the queue's groups (it sees what they
        committed). On a thread of its own; with ``inline_reads`` (a SQLite file) on the
        caller's, the event loop's: a read of a local file in WAL mode waits for no writer,
        and on a thread it holds the interpreter's lock for most of its time anyway (the
        SQL layer is Python), while the two thread hops around it cost its chain more than
        the read (docs/performance.md, m)."""
        if self._closed:
            raise RuntimeError("StoreQueue is closed")
        if self.inline_reads:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def submit(self, fn: Callable[..., T], *args: Any, wait: bool = True,
               **kwargs: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args, **kwargs)`` now, behind every call queued before it, and return
        the future of its result. ``wait=False``: its caller awaits the future later (or the
        queue's :meth:`aclose` does), and the call may wait up to the queue's window for
        others to share its transaction."""
        if self._closed:
            raise RuntimeError("StoreQueue is closed")
        loop = asyncio.get_running_loop()
        if not self._batched:  # one by one, in order
            before = self._last

            async def after() -> T:
                if before is not None and not before.done():
                    await asyncio.wait([before])
                return await asyncio.to_thread(fn, *args, **kwargs)

            self._last = asyncio.ensure_future(after())
            return self._last
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((functools.partial(fn, *args, **kwargs), fut, wait))
        if wait:
            self._waited += 1
        if self._kick is None:
            self._kick = asyncio.Event()
        if wait or len(self._pending) >= self.max_batch:
            self._kick.set()
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        kick = self._kick
        assert kick is not None
        try:
            while self._pending:
                if not kick.is_set() and not self._closed and self.window > 0:
                    # only writes nobody waits for: let more join them, a while
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kick.wait(), self.window)
                group = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._waited -= sum(1 for _, _, w in group if w)
                if not self._waited and len(self._pending) < self.max_batch:
                    kick.clear()
                self.groups += 1
                self.calls += len(group)
                try:
                    outcomes = await asyncio.to_thread(
                        self.store.run_batch, [fn for fn, _, _ in group])
                except BaseException as exc:  # the thread hop itself failed: tell everyone
                    for _, fut, _ in group:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception)
                                              else RuntimeError(f"state DB call: {exc!r}"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut, _), (ok, value) in zip(group, outcomes, strict=True):
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
        if self._kick is not None:
            self._kick.set()
        drainer = self._drainer
        if drainer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(drainer), timeout)
            except TimeoutError:
                log.warning("state DB: %d calls still queued after %gs", len(self._pending),
                            timeout)


def _local_file(store: Any) -> bool:
    """Whether *store* is a SQLite file (a SQL store that is neither PostgreSQL nor MySQL)."""
    return (callable(getattr(store, "run_batch", None))
            and getattr(store, "is_postgres", None) is False
            and getattr(store, "is_mysql", None) is False)
