"""The worker end of the result channel: :class:`ResultSink` XADDs ChainResults to the stream.

It runs in every worker, on the load runner's event loop, and never blocks nor raises in
``add``; the wire format (keys, entry kinds, batch encoding, spill files, start counters) is
:mod:`pytest_wec.wire.stream`'s.

Besides the results it keeps what lets the controller account for every chain its worker
started, whatever dies: a start counter in the run directory (:meth:`ResultSink.count_start`,
a shared memory page that survives the worker's SIGKILL), the batches of the last
``REPLAY_S`` seconds (sent again when Redis comes back without its data), and at its close a
spill file of what it could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgpack
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.spill import StartCounter, keep_spill
from pytest_wec.wire.stream import (
    KEY_TTL_S,
    REPLAY_S,
    STREAM_MAXLEN,
    Spill,
    WorkerStatus,
    alive_key,
    encode_batch,
    results_key,
    workers_key,
)

__all__ = ["ResultSink"]

log = logging.getLogger(__name__)

_PIPELINE_BATCHES = 64
_REDIS_ERRORS = (redis.RedisError, OSError)


class _Entry:
    """One encoded batch: pending, or sent and kept for a replay."""

    __slots__ = ("chains", "data", "requests", "resend", "sent_at")

    def __init__(self, data: bytes, chains: int, requests: int) -> None:
        self.data, self.chains, self.requests = data, chains, requests
        self.resend = False  # sent before, queued again after Redis lost it
        self.sent_at = 0.0


class ResultSink:
    """Buffers a worker's ChainResults and XADDs them in batches from a background task.

    ``add`` never blocks nor raises. While Redis is away the sink keeps what it holds and
    retries with backoff; beyond ``max_buffered`` chains it drops new ones, counting them.

    *spill_dir* (the run directory): where the start counter and, at the close, the spill
    file go; when it does not exist on this host the spill is kept in :attr:`spill` for the
    caller to hand over (xdist's channel). Without it, what cannot be delivered at the close
    is dropped and counted.
    """

    def __init__(self, redis_url: str, run_ns: str, worker_id: str,
                 flush_interval: float = 0.5, max_batch: int = 500, *,
                 max_buffered: int = 100_000, heartbeat_interval: float = 1.0,
                 maxlen: int = STREAM_MAXLEN, spill_dir: str | Path | None = None,
                 replay_s: float = REPLAY_S, max_replay: int = 20_000,
                 give_up_after: float = 5.0) -> None:
        self.worker_id = worker_id
        self.session = secrets.token_hex(6)
        self.key, self.workers_key = results_key(run_ns), workers_key(run_ns)
        self.alive_key = alive_key(run_ns, worker_id, self.session)
        self._url = redis_url
        self._flush_interval = flush_interval
        self._max_batch = max(1, max_batch)
        self._max_buffered = max_buffered
        self._heartbeat = heartbeat_interval
        self._maxlen = maxlen
        self._chains: list[ChainResult] = []
        self._pending: deque[_Entry] = deque()
        self._replay: deque[_Entry] = deque()  # sent, kept for ``replay_s``
        self._replay_s, self._max_replay = replay_s, max_replay
        self._give_up_after = give_up_after  # seconds of failures in a row: a close ends
        self._replay_chains = 0
        self._pending_chains = self._seq = self._encoded = 0
        self.sent = self.dropped = self.dropped_requests = 0
        self.started = 0  # chains started (count_start)
        self.spilled = 0  # chains written to the spill at the close
        self.redis_restarts = 0  # times Redis was found without this sink's data
        #: called (as tasks) when Redis is found restarted without its data
        self.on_redis_restart: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self.spill: bytes | None = None  # the spill, when it could not go to the run dir
        self.spill_file: Path | None = None
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._counter: StartCounter | None = None
        if self._spill_dir is not None and self._spill_dir.is_dir():
            try:
                self._counter = StartCounter(self._spill_dir, worker_id, self.session)
            except OSError as exc:
                log.warning("worker %s: no start counter in %s: %s", worker_id,
                            self._spill_dir, exc)
        self._alive_seen = False  # the alive counter answered once
        self._in_flight, self._target_share, self._lag_max = 0, 0.0, 0.0
        self._dropped_starts = 0
        self._last_answer = 0.0
        self._waiting: dict[str, int] = {}
        self.io = ""  # set by the worker: its transport and event loop
        self._cpu0 = time.process_time()
        self._cpu_last = (time.monotonic(), self._cpu0)
        self._failures, self._retry_at = 0, 0.0
        self._failing_since = 0.0  # monotonic: the first of the failures in a row
        self._client: redis.asyncio.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._wake = self._stop = None  # type: asyncio.Event | None
        self._closing = self._closed = False

    # -- the worker's side -------------------------------------------------------------------

    def count_start(self) -> None:
        """A chain starts (it will end in one result passed to :meth:`add`)."""
        self.started += 1
        if self._counter is not None:
            self._counter.set(self.started)

    def counted(self, fn: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """*fn* (a chain), counting each start."""
        @functools.wraps(fn)
        async def run(ctx: Any) -> None:
            self.count_start()
            await fn(ctx)

        return run

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
        """Chains ended and not delivered yet."""
        return len(self._chains) + sum(e.chains for e in self._pending if not e.resend)

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
        """Flushes what remains and sends the end record, trying until ``timeout`` (or until
        Redis failed for ``give_up_after`` seconds in a row); what it could not deliver goes to the
        spill (see the class doc), or is dropped and counted."""
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
        self._closed = True
        ended = False
        while time.monotonic() < deadline and not (
                self._failures and time.monotonic() - self._failing_since >= self._give_up_after):
            if (self._pending or self._chains) and not await self._flush():
                await asyncio.sleep(min(max(self._retry_at - time.monotonic(), 0.01), 0.5))
                continue
            if await self._send_status(final=True):
                ended = True
                break
            if not self._pending:  # Redis away (a restart found sends the resends first)
                await asyncio.sleep(min(max(self._retry_at - time.monotonic(), 0.01), 0.5))
        if not ended:
            self._write_spill()
        for task in list(self._callbacks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
        if self._counter is not None:
            self._counter.close()

    # -- sending ---------------------------------------------------------------------------

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

    def _encode(self) -> None:
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
            self._pending.append(_Entry(data, len(part), sum(len(c["requests"]) for c in part)))
            self._pending_chains += len(part)

    async def _flush(self) -> bool:
        """Sends every pending batch; False when Redis failed (retry after backoff)."""
        if time.monotonic() < self._retry_at or self._client is None:
            return False
        self._encode()
        while self._pending:
            chunk = [self._pending[i] for i in range(min(len(self._pending), _PIPELINE_BATCHES))]
            try:
                pipe = self._client.pipeline(transaction=False)
                pipe.incr(self.alive_key)
                for e in chunk:
                    pipe.xadd(self.key, {"k": b"b", "d": e.data}, maxlen=self._maxlen,
                              approximate=True)
                answers = await pipe.execute()
            except _REDIS_ERRORS as exc:
                self._failed(exc)
                return False
            now = time.monotonic()
            for _ in chunk:
                e = self._pending.popleft()
                self._pending_chains -= e.chains
                if not e.resend:
                    self.sent += e.chains
                    e.sent_at = now
                    self._replay.append(e)
                    self._replay_chains += e.chains
            self._prune(now)
            self._alive(answers[0], skip=len(chunk))
        if self._failures:
            log.info("worker %s: Redis reachable again after %d failed attempts",
                     self.worker_id, self._failures)
            self._failures = 0
        return True

    def _prune(self, now: float) -> None:
        while self._replay and (now - self._replay[0].sent_at > self._replay_s
                                or self._replay_chains > self._max_replay):
            self._replay_chains -= self._replay.popleft().chains

    def _alive(self, value: Any, skip: int = 0) -> None:
        """The alive counter's value after an INCR: back at 1 after the first means Redis
        lost what this sink sent (restarted without persistence): the batches of the last
        ``replay_s`` seconds but the *skip* newest (just sent) go again, the callbacks run."""
        try:
            n = int(value)
        except (TypeError, ValueError):
            return
        if n != 1 or not self._alive_seen:
            self._alive_seen = True
            return
        self.redis_restarts += 1
        again = list(self._replay)[:len(self._replay) - skip] if skip else list(self._replay)
        for e in reversed(again):
            copy = _Entry(e.data, e.chains, e.requests)
            copy.resend = True
            self._pending.appendleft(copy)
            self._pending_chains += e.chains
        log.warning("worker %s: Redis came back without its data; sending again %d batches "
                    "(%d chains) of the last %gs", self.worker_id, len(again),
                    sum(e.chains for e in again), self._replay_s)
        for cb in self.on_redis_restart:
            task = asyncio.get_running_loop().create_task(cb())
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
        if self._wake is not None:
            self._wake.set()

    def _failed(self, exc: BaseException) -> None:
        if not self._failures:
            self._failing_since = time.monotonic()
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
            final=final, io=self.io, last_answer=self._last_answer, waiting=self._waiting,
            started=self.started, buffered=self.buffered, spilled=self.spilled,
            pid=os.getpid())

    async def _send_status(self, final: bool) -> bool:
        if self._client is None:
            return False
        data = msgpack.packb(self._make_status(final))
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(self.alive_key)
            pipe.xadd(self.key, {"k": b"e" if final else b"s", "d": data},
                      maxlen=self._maxlen, approximate=True)
            pipe.hset(self.workers_key, f"{self.worker_id}/{self.session}", data)
            pipe.expire(self.key, KEY_TTL_S)
            pipe.expire(self.workers_key, KEY_TTL_S)
            pipe.expire(self.alive_key, KEY_TTL_S)
            answers = await pipe.execute()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self._alive(answers[0])
        # Redis came back without the data: not ended before the resends are sent
        return not (self._pending and final)

    # -- what could not be delivered -------------------------------------------------------

    def _write_spill(self) -> None:
        """Everything undelivered, the batches Redis may have lost with it, and the end
        record: to the spill file (or :attr:`spill`), else dropped and counted."""
        self._encode()
        undelivered = [e for e in self._pending if not e.resend]
        held = sum(e.chains for e in undelivered)
        if self._spill_dir is None:
            if held:
                log.warning("worker %s: Redis unreachable at close; %d chains not delivered",
                            self.worker_id, held)
                self.dropped += held
                self.dropped_requests += sum(e.requests for e in undelivered)
            return
        self.spilled = held
        batches = [e.data for e in self._replay] + [e.data for e in self._pending]
        end = bytes(msgpack.packb(self._make_status(final=True)))
        self.spill_file, self.spill = keep_spill(
            self._spill_dir, Spill(self.worker_id, self.session, batches, end))
