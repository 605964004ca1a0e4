"""The worker end of the result channel: :class:`ResultSink` XADDs ChainResults to the stream.

It runs in every worker, on the load runner's event loop, and never blocks nor raises in
``add``; the wire format (keys, entry kinds, batch encoding) is :mod:`pytest_wec.wire.stream`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque

import msgpack
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.stream import (
    KEY_TTL_S,
    STREAM_MAXLEN,
    WorkerStatus,
    encode_batch,
    results_key,
    workers_key,
)

__all__ = ["ResultSink"]

log = logging.getLogger(__name__)

_PIPELINE_BATCHES = 64
_REDIS_ERRORS = (redis.RedisError, OSError)


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
        self._last_answer = 0.0
        self._waiting: dict[str, int] = {}
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
                   dropped_starts: int | None = None,
                   last_answer: float | None = None,
                   waiting: dict[str, int] | None = None) -> None:
        if last_answer is not None:
            self._last_answer = last_answer
        if waiting is not None:
            self._waiting = waiting
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
            final=final, io=self.io, last_answer=self._last_answer, waiting=self._waiting)

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
