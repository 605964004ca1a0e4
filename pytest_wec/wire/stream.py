"""Worker -> controller result channel over a Redis stream.

Both ends live here: :class:`ResultSink` runs in every worker (asyncio, next to the load
runner), :class:`ResultSource` in the controller. An entry is in Redis once XADD returned, so
what a worker sent survives its crash.

Keys, one namespace per run (``run_ns``)::

    wec:{run_ns}:results   stream; every entry has two fields, k (kind) and d (msgpack)
    wec:{run_ns}:workers   hash; worker id -> msgpack WorkerStatus, each worker's latest

Entry kinds::

    k=b  batch   d = [1, worker, session, seq, chains_before, [chain row, ...]]
    k=s  status  d = WorkerStatus (a map)
    k=e  end     d = WorkerStatus with final=True; the worker sends nothing after it

    chain row   = [chain_id, chain, worker, scheduled, started, took, ok, outcome, error,
                   certificates, [request row, ...]]
    request row = [endpoint, method, status, started, took, ok, error, problem], preceded by
                  chain_id and chain (10 items) when these differ from the chain's own

``session`` is random per sink, ``seq`` numbers its batches from 0 and ``chains_before``
counts the chains it sent before the batch: the source drops a batch that arrives twice
(resent after a reconnect) and counts the chains of a gap as lost (Redis restarted without
persistence, stream trimmed unread), as it does the difference between a sink's final
``sent`` and what arrived. A worker is done when every session it opened has ended.
A sink whose buffer fills while Redis is away drops chains and counts them; the count rides
in every status and end record. Nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, cast

import msgpack
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_wec.wire.results import ChainResult, RequestResult

__all__ = ["Batch", "Record", "ResultSink", "ResultSource", "Sink", "WorkerStatus",
           "decode_batch", "encode_batch", "results_key", "workers_key"]

log = logging.getLogger(__name__)

WIRE_VERSION = 1
STREAM_MAXLEN = 200_000  # entries (batches), approximate trimming
KEY_TTL_S = 7 * 24 * 3600
_PIPELINE_BATCHES = 64
_REDIS_ERRORS = (redis.RedisError, OSError)


def results_key(run_ns: str) -> str:
    return f"wec:{run_ns}:results"


def workers_key(run_ns: str) -> str:
    return f"wec:{run_ns}:workers"


class WorkerStatus(TypedDict):
    worker: str
    session: str  # random per sink
    t: float  # epoch seconds when sent
    in_flight: int  # chains running now
    target_share: float  # this worker's share of the run's load, 0..1
    loop_lag_ms: float  # largest event-loop lag since the previous status
    cpu_pct: float  # process CPU since the previous status, percent of one core
    cpu_s: float  # process CPU seconds since the sink started
    sent: int  # chains delivered to Redis so far
    dropped: int  # chains dropped so far (buffer full while Redis was away)
    dropped_requests: int  # their requests
    dropped_starts: int  # open model: starts over the cap on chains in flight, so far
    final: bool  # True in the end record
    io: str  # the HTTP transport and event loop, e.g. "HttptoolsTransport on uvloop"


@dataclass(frozen=True)
class Batch:
    worker: str
    session: str
    seq: int
    chains_before: int
    chains: list[ChainResult]


Record = Batch | WorkerStatus


class Sink(Protocol):
    """Where a worker's load runner puts its ChainResults."""

    def add(self, chain_result: ChainResult, /) -> None: ...

    def set_status(self, *, in_flight: int | None = None,
                   target_share: float | None = None,
                   dropped_starts: int | None = None) -> None: ...

    async def aclose(self) -> None: ...


def encode_batch(worker: str, session: str, seq: int, chains_before: int,
                 chains: Sequence[ChainResult]) -> bytes:
    rows = []
    for c in chains:
        cid, name = c["chain_id"], c["chain"]
        reqs = []
        for r in c["requests"]:
            row = [r["endpoint"], r["method"], r["status"], r["started"], r["took"], r["ok"],
                   r["error"], r["problem"]]
            if r["chain_id"] != cid or r["chain"] != name:
                row = [r["chain_id"], r["chain"], *row]
            reqs.append(row)
        rows.append([cid, name, c["worker"], c["scheduled"], c["started"], c["took"], c["ok"],
                     c["outcome"], c["error"], c["certificates"], reqs])
    return bytes(msgpack.packb([WIRE_VERSION, worker, session, seq, chains_before, rows]))


def decode_batch(data: bytes) -> Batch:
    version, worker, session, seq, chains_before, rows = msgpack.unpackb(data, use_list=False)
    if version != WIRE_VERSION:
        raise ValueError(f"unknown wire version {version!r}")
    chains: list[ChainResult] = []
    for cid, name, cworker, scheduled, started, took, ok, outcome, error, certs, reqs in rows:
        requests: list[RequestResult] = []
        for row in reqs:
            if len(row) == 8:
                rcid, rname = cid, name
                ep, method, status, rstarted, rtook, rok, rerror, problem = row
            else:
                rcid, rname, ep, method, status, rstarted, rtook, rok, rerror, problem = row
            requests.append({"chain_id": rcid, "chain": rname, "endpoint": ep, "method": method,
                             "status": status, "started": rstarted, "took": rtook, "ok": rok,
                             "error": rerror, "problem": problem})
        chains.append({"chain_id": cid, "chain": name, "worker": cworker,
                       "scheduled": scheduled, "started": started, "took": took, "ok": ok,
                       "outcome": outcome, "error": error, "certificates": certs,
                       "requests": requests})
    return Batch(str(worker), str(session), int(seq), int(chains_before), chains)


def _decode_status(data: bytes) -> WorkerStatus:
    st = msgpack.unpackb(data)
    if not isinstance(st, dict) or not isinstance(st.get("worker"), str) \
            or not isinstance(st.get("session"), str):
        raise ValueError("status record without a worker and session")
    return cast(WorkerStatus, st)


class ResultSink:
    """Buffers a worker's ChainResults and XADDs them in batches from a background task.

    ``add`` never blocks nor raises. While Redis is away the sink keeps what it holds and
    retries with backoff; beyond ``max_buffered`` chains it drops new ones, counting them.
    """

    def __init__(self, redis_url: str, run_ns: str, worker_id: str,
                 flush_interval: float = 0.5, max_batch: int = 500, *,
                 max_buffered: int = 100_000, heartbeat_interval: float = 1.0,
                 maxlen: int = STREAM_MAXLEN) -> None:
        self.worker_id = worker_id
        self.session = secrets.token_hex(6)
        self.key, self.workers_key = results_key(run_ns), workers_key(run_ns)
        self._url = redis_url
        self._flush_interval = flush_interval
        self._max_batch = max(1, max_batch)
        self._max_buffered = max_buffered
        self._heartbeat = heartbeat_interval
        self._maxlen = maxlen
        self._chains: list[ChainResult] = []
        self._pending: deque[tuple[bytes, int, int]] = deque()  # batch, chains, requests
        self._pending_chains = self._seq = self._encoded = 0
        self.sent = self.dropped = self.dropped_requests = 0
        self._in_flight, self._target_share, self._lag_max = 0, 0.0, 0.0
        self._dropped_starts = 0
        self.io = ""  # set by the worker: its transport and event loop
        self._cpu0 = time.process_time()
        self._cpu_last = (time.monotonic(), self._cpu0)
        self._failures, self._retry_at = 0, 0.0
        self._client: redis.asyncio.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = self._stop = None  # type: asyncio.Event | None
        self._closing = self._closed = False

    def add(self, chain_result: ChainResult) -> None:
        if self._closed or len(self._chains) + self._pending_chains >= self._max_buffered:
            if not self.dropped:
                log.warning("worker %s: result buffer full (%d chains) or sink closed; "
                            "dropping results, counted", self.worker_id, self._max_buffered)
            self.dropped += 1
            self.dropped_requests += len(chain_result["requests"])
            return
        self._chains.append(chain_result)
        if self._task is None:
            self._start()
        elif len(self._chains) >= self._max_batch and self._wake is not None:
            self._wake.set()

    def set_status(self, *, in_flight: int | None = None,
                   target_share: float | None = None,
                   dropped_starts: int | None = None) -> None:
        if dropped_starts is not None:
            self._dropped_starts = dropped_starts
        if in_flight is not None:
            self._in_flight = in_flight
        if target_share is not None:
            self._target_share = target_share

    @property
    def buffered(self) -> int:
        return len(self._chains) + self._pending_chains

    async def start(self) -> None:
        if self._task is None:
            self._start()

    def _start(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: start() or the next add() on the loop starts it
        self._client = redis.asyncio.Redis.from_url(
            self._url, socket_connect_timeout=2.0, socket_timeout=5.0,
            retry=AsyncRetry(NoBackoff(), 1))
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"wec-sink-{self.worker_id}")

    async def __aenter__(self) -> ResultSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Flushes what remains (trying until ``timeout``), sends the end record, closes."""
        if self._closed:
            return
        if self._task is None:
            self._start()
        self._closing = True
        if self._task is None or self._wake is None or self._stop is None:
            self._closed = True
            return
        self._wake.set()
        self._stop.set()
        await self._task
        deadline = time.monotonic() + timeout
        while self.buffered and time.monotonic() < deadline:
            if not await self._flush():
                await asyncio.sleep(min(max(self._retry_at - time.monotonic(), 0.01), 0.5))
        self._closed = True
        if self.buffered:
            log.warning("worker %s: Redis unreachable at close; %d chains not delivered",
                        self.worker_id, self.buffered)
            self.dropped += self.buffered
            self.dropped_requests += sum(len(c["requests"]) for c in self._chains)
            self.dropped_requests += sum(n for _b, _c, n in self._pending)
        while not await self._send_status(final=True) and time.monotonic() < deadline:
            await asyncio.sleep(min(max(self._retry_at - time.monotonic(), 0.01), 0.5))
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        assert self._wake is not None and self._stop is not None
        clock = time.monotonic
        next_beat = clock()
        while not self._closing:
            deadline = clock() + self._flush_interval
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            except TimeoutError:
                self._lag_max = max(self._lag_max, clock() - deadline)
            self._wake.clear()
            try:
                if not await self._flush():
                    # Redis away: back off without spinning on every add()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(),
                                               max(self._retry_at - clock(), 0))
                    continue
                if clock() >= next_beat:
                    await self._send_status(final=False)
                    next_beat = clock() + self._heartbeat
            except Exception:  # the sink must outlive any surprise; it retries next round
                log.exception("worker %s: result sink error", self.worker_id)

    async def _flush(self) -> bool:
        """Sends every pending batch; False when Redis failed (retry after backoff)."""
        if time.monotonic() < self._retry_at or self._client is None:
            return False
        chains, self._chains = self._chains, []
        for i in range(0, len(chains), self._max_batch):
            part = chains[i:i + self._max_batch]
            try:
                data = encode_batch(self.worker_id, self.session, self._seq, self._encoded, part)
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("worker %s: cannot encode %d results (%s); dropped, counted",
                          self.worker_id, len(part), exc)
                self.dropped += len(part)
                self.dropped_requests += sum(len(c["requests"]) for c in part)
                continue
            self._seq += 1
            self._encoded += len(part)
            self._pending.append((data, len(part), sum(len(c["requests"]) for c in part)))
            self._pending_chains += len(part)
        while self._pending:
            chunk = [self._pending[i] for i in range(min(len(self._pending), _PIPELINE_BATCHES))]
            try:
                pipe = self._client.pipeline(transaction=False)
                for data, _n, _r in chunk:
                    pipe.xadd(self.key, {"k": b"b", "d": data}, maxlen=self._maxlen,
                              approximate=True)
                await pipe.execute()
            except _REDIS_ERRORS as exc:
                self._failed(exc)
                return False
            for _ in chunk:
                n = self._pending.popleft()[1]
                self._pending_chains -= n
                self.sent += n
        if self._failures:
            log.info("worker %s: Redis reachable again after %d failed attempts",
                     self.worker_id, self._failures)
            self._failures = 0
        return True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        backoff = min(0.1 * 2 ** (self._failures - 1), 5.0)
        self._retry_at = time.monotonic() + backoff
        log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                "worker %s: cannot reach Redis (%s); %d chains buffered, retry in %.1fs",
                self.worker_id, exc, self.buffered, backoff)

    def _make_status(self, final: bool) -> WorkerStatus:
        now, cpu = time.monotonic(), time.process_time()
        last_now, last_cpu = self._cpu_last
        self._cpu_last = (now, cpu)
        lag, self._lag_max = self._lag_max, 0.0
        return WorkerStatus(
            worker=self.worker_id, session=self.session, t=time.time(), in_flight=self._in_flight,
            target_share=self._target_share, loop_lag_ms=round(lag * 1000, 3),
            cpu_pct=round(100.0 * (cpu - last_cpu) / max(now - last_now, 1e-6), 1),
            cpu_s=round(cpu - self._cpu0, 3), sent=self.sent, dropped=self.dropped,
            dropped_requests=self.dropped_requests, dropped_starts=self._dropped_starts,
            final=final, io=self.io)

    async def _send_status(self, final: bool) -> bool:
        if self._client is None:
            return False
        data = msgpack.packb(self._make_status(final))
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xadd(self.key, {"k": b"e" if final else b"s", "d": data},
                      maxlen=self._maxlen, approximate=True)
            pipe.hset(self.workers_key, f"{self.worker_id}/{self.session}", data)
            pipe.expire(self.key, KEY_TTL_S)
            pipe.expire(self.workers_key, KEY_TTL_S)
            await pipe.execute()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return True


class ResultSource:
    """Reads this run's stream from its beginning; blocking calls, for a controller thread.

    ``read`` returns what arrived (batches, status and end records) or ``[]`` after the block
    timeout; while Redis is away it logs, waits with backoff and returns ``[]``, then goes on
    after the last entry it read. ``drain`` reads until every worker sent its end record,
    went silent for ``stale_after`` seconds, or ``timeout`` passed.
    """

    def __init__(self, redis_url: str, run_ns: str, *, count: int = 100) -> None:
        self.key, self.workers_key = results_key(run_ns), workers_key(run_ns)
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0,
                                            socket_timeout=30.0, retry=Retry(NoBackoff(), 1))
        self._count = count
        self._last_id: bytes | str = "0-0"
        self._failures = 0
        self.workers: dict[str, WorkerStatus] = {}  # "worker/session" -> latest status
        self.lost: dict[str, int] = {}  # chains known lost on the way, per worker
        self.duplicates = self.undecodable = 0
        self._received: dict[tuple[str, str], int] = {}  # chains per (worker, session)
        self._seq: dict[tuple[str, str], int] = {}
        self._open: dict[str, set[str]] = {}  # worker -> sessions without an end record
        self._heard: dict[str, float] = {}  # worker -> monotonic time of its last entry

    def read(self, block: float = 1.0) -> list[Record]:
        try:
            resp: list[Any] = self._client.xread(  # type: ignore[assignment]
                {self.key: self._last_id}, count=self._count,
                block=max(1, int(min(block, 10.0) * 1000)))
        except _REDIS_ERRORS as exc:
            self._failures += 1
            log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "cannot read results from Redis (%s); retrying", exc)
            time.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0, max(block, 0.05)))
            return []
        if self._failures:
            log.info("reading results from Redis again after %d failed attempts", self._failures)
            self._failures = 0
        out: list[Record] = []
        for _key, entries in resp or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                rec = self._decode(fields)
                if rec is not None:
                    out.append(rec)
        return out

    def _decode(self, fields: dict[bytes, bytes]) -> Record | None:
        kind, data = fields.get(b"k"), fields.get(b"d", b"")
        try:
            if kind == b"b":
                return self._batch(decode_batch(data))
            if kind in (b"s", b"e"):
                return self._status(_decode_status(data), final=kind == b"e")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            log.debug("undecodable stream entry of kind %r: %s", kind, exc)
        if not self.undecodable:
            log.warning("skipping undecodable entries in %s", self.key)
        self.undecodable += 1
        return None

    def _batch(self, batch: Batch) -> Batch | None:
        key = (batch.worker, batch.session)
        self._heard[batch.worker] = time.monotonic()
        if batch.seq <= self._seq.get(key, -1):
            self.duplicates += 1
            return None
        self._seq[key] = batch.seq
        self._open.setdefault(batch.worker, set()).add(batch.session)
        self._gap(key, batch.chains_before)
        self._received[key] = batch.chains_before + len(batch.chains)
        return batch

    def _status(self, st: WorkerStatus, final: bool) -> WorkerStatus:
        w, key = st["worker"], (st["worker"], st["session"])
        self.workers[f"{w}/{st['session']}"] = st
        self._heard[w] = time.monotonic()
        sessions = self._open.setdefault(w, set())
        if final:
            sessions.discard(st["session"])
            self._gap(key, int(st.get("sent", 0)))
            self._received[key] = max(self._received.get(key, 0), int(st.get("sent", 0)))
        else:
            sessions.add(st["session"])
        return st

    def _gap(self, key: tuple[str, str], expected: int) -> None:
        gap = expected - self._received.get(key, 0)
        if gap > 0:
            self.lost[key[0]] = self.lost.get(key[0], 0) + gap
            log.warning("worker %s: %d chains lost on the way (stream gap)", key[0], gap)

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
        """Yields the remaining records; returns once every worker is done or gone.

        ``workers``: the ids to wait for; None waits for every worker heard of so far, and
        with none heard of reads until the first empty read.
        """
        start = time.monotonic()
        deadline = start + timeout
        while True:
            now = time.monotonic()
            if workers is None and not self._heard:
                records = self.read(min(0.5, max(deadline - now, 0.01)))
                yield from records
                if not records or time.monotonic() >= deadline:
                    return
                continue
            names = set(self._heard) if workers is None else set(workers)
            ended = self.ended
            waiting = {w for w in names - ended if now - self._heard.get(w, start) < stale_after}
            if not waiting:
                gone = names - ended
                if gone:
                    log.warning("no end record from workers %s (silent for %.1fs)",
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

    def worker_statuses(self) -> dict[str, WorkerStatus]:
        """Each sink's latest status by "worker/session", from the hash (no stream reading)."""
        raw: dict[bytes, bytes] = self._client.hgetall(self.workers_key)  # type: ignore[assignment]
        return {k.decode(): _decode_status(v) for k, v in raw.items()}

    def delete(self) -> None:
        """Removes this run's keys."""
        self._client.delete(self.key, self.workers_key)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ResultSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
