"""The results coming in on the controller: the reader thread's intake, and the final drain,
bounded but honest.

:class:`ResultIntake` is the part of :class:`~pytest_wec.controller.collector.LoadSession`
that takes results in. The ``wec-results`` thread reads the stream
(:class:`~pytest_wec.wire.source.ResultSource`) into the aggregator, the watch, the failure
ledger and the results log, and counts the chains taken in per worker session.

At the end, :meth:`~pytest_wec.controller.collector.LoadSession.finish` runs the final
drain before the summary. It takes in what the workers still send for as long as it keeps
coming, within finish's bound (*deadline*; in a run the grace plus 30 s), and counts what
it could not take in:

1. the live line stops; the reader thread finishes the read in its hands, waited for while
   it takes results in; one that took nothing in for ``silent_after`` seconds (hung on
   Redis) is given up on, and so is one still busy at the bound;
2. the spill files and xdist's spills are read (not when the reader was given up on: it
   owns the results log and the source);
3. the stream is drained until every worker's end record was read, or a worker is silent
   for ``silent_after`` seconds of reading (a slow controller does not make it silent), or
   known dead, or the bound: at the bound it stops between two batches;
4. the reader takes nothing more (a batch it was taking in ends first), and every chain is
   accounted for (:func:`~pytest_wec.controller.delivery.account`) against what the
   controller took in: per worker ``started - received`` is ``lost``, the part that reached
   Redis and was left unread is ``unread``, and the run is incomplete (exit status 8)::

    wec: INCOMPLETE: 364000 chain results still unread in Redis when the run ended: the
    controller could not keep up (results_lost)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis

from pytest_wec.controller.delivery import account, take_spills
from pytest_wec.wire.stream import Batch, Record, WorkerStatus

if TYPE_CHECKING:
    import threading
    from pathlib import Path

    from pytest_wec.controller.aggregator import Aggregator
    from pytest_wec.controller.ledger import FailureLedger
    from pytest_wec.controller.plugins import PluginCalls
    from pytest_wec.controller.resultlog import ResultLogWriter
    from pytest_wec.controller.watch import Watch
    from pytest_wec.wire.source import ResultSource

__all__ = ["STATUS_TIMEOUT", "ResultIntake", "loss_reasons"]

log = logging.getLogger(__name__)

#: seconds the sinks' stored statuses (the Redis hash) are waited for at the end
STATUS_TIMEOUT = 2.0


class ResultIntake:
    """Mixed into :class:`~pytest_wec.controller.collector.LoadSession`, whose state it uses
    (the threads, the source, the aggregator, the lock, the counts of what was taken in)."""

    if TYPE_CHECKING:  # the session's own, declared here for the type checker only
        run_dir: Path
        silent_after: float
        keeper: Any
        watch: Watch
        ledger: FailureLedger
        plugins: PluginCalls
        handed_spills: list[bytes]
        delivery: dict[str, Any]
        _agg: Aggregator
        _writer: ResultLogWriter | None
        _lock: threading.Lock
        _stop: threading.Event
        _threads: list[threading.Thread]
        _source: ResultSource | None
        _closed: bool
        _taken: dict[tuple[str, str], int]  # chains taken in per (worker, session)
        _records: int  # records taken in so far (the reader's progress)

        def _note(self, msg: str) -> None: ...

    def _consume(self) -> None:
        source = self._source
        assert source is not None
        while not self._stop.is_set():
            try:
                records = source.read(block=0.5)
            except Exception:  # the consumer must outlive any surprise
                log.exception("reading results failed; retrying")
                self._stop.wait(0.5)
                continue
            self._handle(records)

    def _handle(self, records: Iterable[Record]) -> None:
        for rec in records:
            if self._closed:
                return
            self._records += 1
            try:
                if isinstance(rec, Batch):
                    self._batch(rec)
                else:
                    self._status(rec)
            except Exception:
                log.exception("cannot take a result record; skipped")

    def _batch(self, batch: Batch) -> None:
        now = time.monotonic()
        with self._lock:
            if self._closed:  # the end came first: counted lost
                return
            key, n = (batch.worker, batch.session), 0
            try:
                for c in batch.chains:
                    self._agg.add(c)
                    n += 1
            finally:  # what the totals hold is what is received, even after a surprise
                self._taken[key] = self._taken.get(key, 0) + n
            self.watch.batch(batch.worker, batch.session, batch.chains, now)
        if self._writer is not None:
            self._writer.write_many(batch.chains)
        self.ledger.observe(batch.chains)
        if self.plugins.active:
            self.plugins.results(batch.chains)

    def _status(self, st: WorkerStatus) -> None:
        now = time.monotonic()
        with self._lock:
            self._agg.add_status(st)
            self.watch.status(st, now)

    def _final_drain(self, deadline: float) -> bool:
        """Steps 1 to 4 of the module's doc; sets :attr:`delivery`. True when the reader
        thread stopped (the source is this thread's to close)."""
        self._stop.set()
        reader = next((t for t in self._threads if t.name == "wec-results"), None)
        for thread in self._threads:
            if thread is not reader:
                thread.join(max(min(deadline - time.monotonic(), 5.0), 0.1))
        source = self._source
        stopped = reader is None or self._wait_reader(reader, deadline)
        if source is not None and stopped:
            records, files, recovered = take_spills(source, self.run_dir, self.handed_spills)
            self._handle(records)
            if files:
                self._note(f"wec: {recovered} chain results recovered from {files} "
                           "spill(s) of workers that could not deliver them")
            self._drain(source, deadline)
        with self._lock:  # nothing more is taken in: what was not is counted below
            self._closed = True
        if reader is not None and reader.is_alive():  # lets it put down the batch in hand
            reader.join(5.0)
            stopped = not reader.is_alive()
        if source is None:
            self.delivery = {"results_lost": 0, "unread": 0}
            return stopped
        try:
            stored = source.worker_statuses(timeout=STATUS_TIMEOUT)
        except (redis.RedisError, OSError) as exc:
            log.info("the sinks' latest statuses cannot be read from Redis: %s", exc)
            stored = {}
        with self._lock:
            taken = dict(self._taken)
        self.delivery = account(source, self.run_dir, taken=taken, stored=stored)
        return stopped

    def _wait_reader(self, reader: threading.Thread, deadline: float) -> bool:
        """Waits for *reader* to stop while it takes results in, until *deadline*; whether it
        stopped."""
        seen, since = self._records, time.monotonic()
        while True:
            reader.join(max(min(0.2, deadline - time.monotonic()), 0.0))
            if not reader.is_alive():
                return True
            now = time.monotonic()
            if self._records != seen:
                seen, since = self._records, now
            elif now - since >= self.silent_after:
                log.warning("the results reader took nothing in for %.1fs; given up on, what "
                            "it did not take in is counted lost", now - since)
                return False
            if now >= deadline:
                log.warning("the results reader was still taking results in at the end of "
                            "the final drain; what it did not take in is counted lost")
                return False

    def _drain(self, source: ResultSource, deadline: float) -> None:
        with self._lock:
            names = set(self.watch.workers) or None
        dead = self.keeper.dead_workers if self.keeper is not None else set()
        if names is not None and dead:  # known dead: nothing more comes from them
            names = names - dead
        try:
            for rec in source.drain(names, timeout=max(deadline - time.monotonic(), 0.1),
                                    stale_after=self.silent_after):
                if time.monotonic() >= deadline:
                    log.warning("the final drain reached its bound with results still "
                                "coming in; what was not taken in is counted lost")
                    return
                self._handle([rec])
        except Exception:
            log.exception("draining results failed; summary from what arrived")

    def behind(self) -> set[str]:
        """Workers with results still unread at the end (after the final drain)."""
        return {w for w, d in self.delivery.get("by_worker", {}).items() if d.get("unread")}


def loss_reasons(delivery: dict[str, Any]) -> list[str]:
    """What ``incomplete`` says of the results *delivery* counts lost (empty: none)."""
    lost, unread = int(delivery.get("results_lost", 0)), int(delivery.get("unread", 0))
    out = []
    if unread:
        out.append(f"{unread} chain results still unread in Redis when the run ended: the "
                   "controller could not keep up (results_lost)")
    if lost > unread:
        out.append(f"{lost - unread} {'other ' if unread else ''}chain results lost "
                   "(results_lost)")
    return out
