"""The controller end of the result channel: :class:`ResultSource` reads the run's stream.

Blocking calls, for a controller thread. It keeps every batch it has not seen, in any order
(a sink sends its latest batches again when Redis came back without them), drops those that
arrive twice, and counts what never arrived at the end (:attr:`ResultSource.lost`); spill
files go through the same door (:meth:`ResultSource.take_spill`). The wire format is
:mod:`pytest_wec.wire.stream`'s.

How long a worker has been silent is measured in seconds of reading (spent in
:meth:`ResultSource.read`), not of the wall clock: a consumer that takes longer over what it
read than the workers take to send it (a backlog) does not make them look silent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_wec.wire.stream import (
    Batch,
    Record,
    WorkerStatus,
    decode_batch,
    decode_spill,
    decode_status,
    results_key,
    workers_key,
)

__all__ = ["ResultSource"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)


class ResultSource:
    """Reads this run's stream from its beginning; blocking calls, for a controller thread.

    ``read`` returns what arrived (batches, status and end records) or ``[]`` after the block
    timeout; while Redis is away it logs, waits with backoff and returns ``[]``, then goes on
    after the last entry it read. ``drain`` reads until every worker sent its end record,
    went silent for ``stale_after`` seconds of reading, or ``timeout`` passed.

    One thread reads; :meth:`sessions` and :meth:`statuses` may be called from another.
    """

    def __init__(self, redis_url: str, run_ns: str, *, count: int = 100) -> None:
        self.key, self.workers_key = results_key(run_ns), workers_key(run_ns)
        self._url = redis_url
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0,
                                            socket_timeout=30.0, retry=Retry(NoBackoff(), 1))
        self._count = count
        #: the last read took as many entries as it asks for: the stream has more, unread
        self.backlogged = False
        self._last_id: bytes | str = "0-0"
        self._failures = 0
        self.workers: dict[str, WorkerStatus] = {}  # "worker/session" -> latest status
        self.duplicates = self.undecodable = 0
        self.failing = False  # the latest read could not reach Redis
        self._received: dict[tuple[str, str], int] = {}  # chains per (worker, session)
        self._expected: dict[tuple[str, str], int] = {}  # chains the sink says it sent
        self._seqs: dict[tuple[str, str], set[int]] = {}
        self._open: dict[str, set[str]] = {}  # worker -> sessions without an end record
        self._ended: dict[str, set[str]] = {}  # worker -> sessions that sent their end record
        self._heard: dict[str, float] = {}  # worker -> reading clock at its last entry
        self._read_s = 0.0  # seconds spent in read() before the current call
        self._read_t0 = 0.0  # monotonic start of the current read(); 0: none under way
        self._mutex = threading.Lock()  # the counts above, against another thread's copy

    def reading_clock(self) -> float:
        """Seconds spent reading (in :meth:`read`) so far: what staleness is measured on."""
        t0 = self._read_t0
        return self._read_s + (time.monotonic() - t0 if t0 else 0.0)

    def read(self, block: float = 1.0) -> list[Record]:
        self._read_t0 = time.monotonic()
        try:
            return self._read(block)
        finally:
            self._read_s += time.monotonic() - self._read_t0
            self._read_t0 = 0.0

    def _read(self, block: float) -> list[Record]:
        try:
            resp: list[Any] = self._client.xread(  # type: ignore[assignment]
                {self.key: self._last_id}, count=self._count,
                block=max(1, int(min(block, 10.0) * 1000)))
        except _REDIS_ERRORS as exc:
            self._failures += 1
            self.failing = True
            log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "cannot read results from Redis (%s); retrying", exc)
            time.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0, max(block, 0.05)))
            return []
        if self._failures:
            log.info("reading results from Redis again after %d failed attempts", self._failures)
            self._failures = 0
        self.failing = False
        out: list[Record] = []
        read = 0
        with self._mutex:
            for _key, entries in resp or []:
                read += len(entries)
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    rec = self._decode(fields)
                    if rec is not None:
                        out.append(rec)
        # a full read: more is waiting behind it (what the workers said since is unread)
        self.backlogged = read >= self._count
        return out

    def _decode(self, fields: dict[bytes, bytes]) -> Record | None:
        kind, data = fields.get(b"k"), fields.get(b"d", b"")
        try:
            if kind == b"b":
                return self._batch(decode_batch(data))
            if kind in (b"s", b"e"):
                return self._status(decode_status(data), final=kind == b"e")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            log.debug("undecodable stream entry of kind %r: %s", kind, exc)
        if not self.undecodable:
            log.warning("skipping undecodable entries in %s", self.key)
        self.undecodable += 1
        return None

    def _batch(self, batch: Batch) -> Batch | None:
        key = (batch.worker, batch.session)
        self._heard[batch.worker] = self.reading_clock()
        seqs = self._seqs.setdefault(key, set())
        if batch.seq in seqs:
            self.duplicates += 1
            return None
        seqs.add(batch.seq)
        if batch.session not in self._ended.get(batch.worker, set()):
            self._open.setdefault(batch.worker, set()).add(batch.session)
        self._received[key] = self._received.get(key, 0) + len(batch.chains)
        self._expected[key] = max(self._expected.get(key, 0),
                                  batch.chains_before + len(batch.chains))
        return batch

    def _status(self, st: WorkerStatus, final: bool) -> WorkerStatus:
        w, key = st["worker"], (st["worker"], st["session"])
        self.workers[f"{w}/{st['session']}"] = st
        self._heard[w] = self.reading_clock()
        sessions = self._open.setdefault(w, set())
        if final:
            sessions.discard(st["session"])
            self._ended.setdefault(w, set()).add(st["session"])
            self._expected[key] = max(self._expected.get(key, 0), int(st.get("sent", 0)))
        elif st["session"] not in self._ended.get(w, set()):
            sessions.add(st["session"])
        self._received.setdefault(key, 0)
        return st

    def take_spill(self, data: bytes) -> list[Record]:
        """The records of a sink's spill file (its batches, some maybe seen already, then its
        end record), as :meth:`read` returns them; ValueError when *data* is no spill."""
        spill = decode_spill(data)
        out: list[Record] = []
        with self._mutex:
            for batch in spill.batches:
                rec = self._decode({b"k": b"b", b"d": batch})
                if rec is not None:
                    out.append(rec)
            rec = self._decode({b"k": b"e", b"d": spill.end})
            if rec is not None:
                out.append(rec)
        return out

    @property
    def lost(self) -> dict[str, int]:
        """Chains per worker that a sink sent (or counted before a later batch) and that
        never arrived: Redis restarted without them, the stream was trimmed unread."""
        out: dict[str, int] = {}
        for key, expected in self._expected.items():
            gap = expected - self._received.get(key, 0)
            if gap > 0:
                out[key[0]] = out.get(key[0], 0) + gap
        return out

    def sessions(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``(worker, session) -> (chains received, chains the sink said it sent)``."""
        with self._mutex:
            return {key: (n, self._expected.get(key, 0)) for key, n in self._received.items()}

    def statuses(self) -> dict[str, WorkerStatus]:
        """A copy of :attr:`workers`: each session's latest status read from the stream."""
        with self._mutex:
            return dict(self.workers)

    @property
    def ended(self) -> set[str]:
        """Workers heard of whose every session sent its end record."""
        return {w for w, sessions in self._open.items() if not sessions}

    @property
    def received(self) -> dict[str, int]:
        """Chains received per worker."""
        out: dict[str, int] = {}
        for (w, _session), n in self._received.items():
            out[w] = out.get(w, 0) + n
        return out

    def records(self, stop: Callable[[], bool], block: float = 1.0) -> Iterator[Record]:
        """Yields records as they arrive until ``stop()`` is true."""
        while not stop():
            yield from self.read(block)

    def drain(self, workers: Collection[str] | None = None, timeout: float = 10.0,
              stale_after: float = 5.0) -> Iterator[Record]:
        """Yields the remaining records; returns once every worker is done or gone (no
        entry of it in ``stale_after`` seconds of reading), or after ``timeout`` seconds,
        checked between reads.

        ``workers``: the ids to wait for; None waits for every worker heard of so far, and
        with none heard of reads until the first empty read.
        """
        start = time.monotonic()
        deadline = start + timeout
        since = self.reading_clock()  # a worker never heard of is silent from here
        while True:
            now, clock = time.monotonic(), self.reading_clock()
            if workers is None and not self._heard:
                records = self.read(min(0.5, max(deadline - now, 0.01)))
                yield from records
                if not records or time.monotonic() >= deadline:
                    return
                continue
            names = set(self._heard) if workers is None else set(workers)
            ended = self.ended
            waiting = {w for w in names - ended
                       if clock - self._heard.get(w, since) < stale_after}
            if not waiting:
                gone = names - ended
                if gone:
                    log.warning("no end record from workers %s (silent for %.1fs of reading)",
                                ", ".join(sorted(gone)), stale_after)
                return
            if now >= deadline:
                log.warning("stopped waiting for results of workers %s after %.1fs",
                            ", ".join(sorted(waiting)), timeout)
                return
            yield from self.read(min(0.5, deadline - now))

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def worker_statuses(self, timeout: float | None = None) -> dict[str, WorkerStatus]:
        """Each sink's latest status by "worker/session", from the hash (no stream reading):
        what each sink said last, end records included, however far behind the stream's
        reading is. *timeout*: seconds for this call alone, on a connection of its own (Redis
        may be hung); redis.RedisError or OSError when it cannot be read."""
        client = self._client if timeout is None else redis.Redis.from_url(
            self._url, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0))
        try:
            raw: dict[bytes, bytes] = client.hgetall(self.workers_key)  # type: ignore[assignment]
        finally:
            if client is not self._client:
                client.close()
        out: dict[str, WorkerStatus] = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = decode_status(v)
            except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException):
                log.debug("undecodable status of %r in %s", k, self.workers_key)
        return out

    def delete(self) -> None:
        """Removes this run's keys."""
        self._client.delete(self.key, self.workers_key)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ResultSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
