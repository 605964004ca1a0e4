"""The load runner (worker side): chains as asyncio tasks under a load model.

    LoadPlan            this worker's exact share of the load, rate and stages
    run_chain()         one chain run -> ChainResult (ok, failed, skipped or cancelled)
    LoadRunner.run()    the closed model (chains in flight) or the open model (starts per
                        second, with a cap; a start over the cap is counted as dropped)

Every loop is bounded by the run's deadline and the grace period: at the end no chain
starts, chains in flight may finish within the grace, then they are cancelled and counted.
A closed-model virtual user whose chain a rate limit refused waits before its next one
(:mod:`pytest_wec.worker.pacing`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_wec._chain import ChainInfo
from pytest_wec.settings import Settings, Stage
from pytest_wec.wire.results import ChainResult
from pytest_wec.worker.context import ChainContext, NoContext
from pytest_wec.worker.gcpolicy import fewer_young_collections
from pytest_wec.worker.pacing import RefusalPacer, retry_after_of

log = logging.getLogger(__name__)

__all__ = ["LoadPlan", "LoadRunner", "own_lag", "run_chain", "split_int"]

ChainFn = Callable[[ChainContext], Awaitable[None]]
#: open model without --wec-load: the cap on chains in flight per worker
DEFAULT_OPEN_CAP = 10_000
#: closed model: the first wait after a chain failed to reach the CA
CONNECT_BACKOFF = 0.05
#: closed model: seconds past the deadline a user that waits out the run wakes
END_MARGIN = 0.01
#: open model: the longest step (seconds) over which the target rate counts as constant
OPEN_TICK = 0.05


def new_event_loop(name: str = "uvloop") -> asyncio.AbstractEventLoop:
    """The event loop a load run's worker runs on: ``uvloop`` (libuv, cheaper per
    request and connection; docs/performance.md) or the standard ``asyncio`` one."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop {name!r}: uvloop or asyncio")


def split_int(total: int, index: int, n: int) -> int:
    """Worker *index* of *n*'s share of *total*; the shares sum to *total* exactly."""
    return total // n + (1 if index < total % n else 0)


@dataclass(frozen=True)
class LoadPlan:
    """One worker's share of the run's load model."""

    model: str  # "closed" | "open"
    index: int
    workers: int
    load: int | None  # total chains in flight (closed) or cap (open)
    rate: float | None  # total starts per second (open)
    stages: tuple[Stage, ...] | None
    duration: float
    grace: float
    rate_limit_wait: float = 60.0  # closed model: longest wait after a rate-limit refusal

    @classmethod
    def from_settings(cls, s: Settings, index: int, workers: int) -> LoadPlan:
        return cls(s.model, index, workers, s.load, s.rate, s.stages, s.run_length, s.grace,
                   s.rate_limit_wait)

    def total_target(self, elapsed: float) -> float:
        """The run's target (load or rate) at *elapsed* seconds, ramps linear per stage."""
        if not self.stages:
            value = self.rate if self.model == "open" else self.load
            return float(value or 0)
        start = 0.0
        t0 = 0.0
        for dur, target in self.stages:
            if elapsed < t0 + dur:
                return start + (target - start) * (elapsed - t0) / dur
            t0 += dur
            start = target
        return start

    def target(self, elapsed: float) -> float:
        """This worker's share of the target at *elapsed*."""
        return self.share(self.total_target(elapsed))

    def share(self, total: float) -> float:
        """This worker's share of a total target: an exact integer split of the rounded
        load (closed model), a fraction of the rate (open model)."""
        if self.model == "open":
            return total / self.workers
        return float(split_int(round(total), self.index, self.workers))

    def cap(self) -> int:
        if self.model == "open":
            if self.load is None:
                return DEFAULT_OPEN_CAP
            return max(split_int(self.load, self.index, self.workers), 0)
        return 1 << 30


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if name == "AcmeProblem":
        return text.splitlines()[0] if text else name
    first = text.splitlines()[0] if text else ""
    return f"{name}: {first}"[:500] if first else name


async def run_chain(
    runtime: Any,
    name: str,
    fn: ChainFn,
    *,
    worker: str,
    scheduled: float | None = None,
    lag_own: float | None = None,
) -> ChainResult:
    """Run chain *fn* once with a fresh context; never raises (but for cancellation).
    *lag_own* (open model): the part of its start's lag the generator's own work explains
    (:func:`own_lag`), carried in the result."""
    ctx = ChainContext(runtime, name, mode="load", chain_id=secrets.token_hex(8))
    contexts = getattr(runtime, "contexts", None)
    if contexts is not None:
        contexts.add(ctx)
    started = time.time()
    t0 = time.perf_counter()
    outcome, error, retry_after = "ok", None, None
    try:
        await fn(ctx)
    except NoContext as exc:
        outcome, error = "skipped", f"{type(exc).__name__}: {exc}"  # NoContext, NotOffered
    except asyncio.CancelledError:
        outcome, error = "cancelled", "cancelled at the end of the grace period"
    except Exception as exc:
        outcome, error, retry_after = "failed", _error_text(exc), retry_after_of(exc)
        if getattr(exc, "code", None) == "accountDoesNotExist":
            # the CA lost the account (e.g. it restarted): no chain may take it again
            try:
                await ctx.mark_accounts_dead()
            except Exception:
                log.debug("marking accounts of %s dead failed", ctx.chain_id, exc_info=True)
    finally:
        # the chain's time ends with its body: what follows is pytest-wec's bookkeeping
        took = time.perf_counter() - t0
        try:
            await asyncio.shield(ctx.finish())
        except BaseException:
            log.debug("releasing claims of %s failed", ctx.chain_id, exc_info=True)
        try:
            unstored = await asyncio.shield(ctx.settle())
        except BaseException:
            log.debug("state writes of %s failed", ctx.chain_id, exc_info=True)
            unstored = "state DB writes were not waited for"
        if contexts is not None:
            contexts.discard(ctx)
    if unstored is not None and outcome == "ok":
        outcome, error = "failed", unstored
    result = ChainResult(
        chain_id=ctx.chain_id,
        chain=name,
        worker=worker,
        scheduled=started if scheduled is None else scheduled,
        started=started,
        took=took,
        ok=outcome == "ok",
        outcome=outcome,
        error=error,
        certificates=ctx.certificates,
        requests=ctx.requests,
    )
    result.update(ctx.wire_extras(outcome == "ok"))  # type: ignore[typeddict-item]
    if lag_own is not None:
        result["lag_own"] = lag_own
    if retry_after is not None:
        result["retry_after"] = retry_after
    return result


def own_lag(carried: float, busy: float, planned: float, late: float) -> float:
    """The part of a start's lateness *late* (seconds) that the generator's own work
    explains, between 0 and *late*: the CPU its event loop's thread spent (*busy*, thread
    CPU time) beyond the sleep it *planned*, plus what it *carried* from the start before
    when it was behind and did not sleep. A thread that the OS did not run (other processes
    on the cores, the CA among them) or that waited for the GIL spent no CPU: that lateness
    is the machine's, not the generator's."""
    return min(max(carried + busy - planned, 0.0), max(late, 0.0))


class LoadRunner:
    """Drives this worker's share of the load until the deadline, then the grace."""

    def __init__(
        self,
        runtime: Any,
        chains: Mapping[str, tuple[ChainInfo, ChainFn]],
        plan: LoadPlan,
        *,
        emit: Callable[[ChainResult], None],
        choose: Callable[[], str | None],
        worker: str,
        on_drop: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.runtime = runtime
        self.chains = chains
        self.plan = plan
        self.emit = emit
        self.choose = choose
        self.worker = worker
        self.on_drop = on_drop
        self.in_flight = 0
        self.started = 0
        self.finished = 0
        self.dropped = 0
        self.nothing_to_run = 0
        self.t_start = 0.0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.lags: list[float] = []  # open model schedule lag, seconds (bounded below)
        self._stop = asyncio.Event()
        self.target_override: float | None = None

    def stop(self) -> None:
        """End early (Ctrl-C, a dashboard stop): no new chain starts."""
        self._stop.set()

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def current_target(self) -> float:
        return self._target_at(self.elapsed())

    def _target_at(self, elapsed: float) -> float:
        if self.target_override is not None:
            return self.target_override
        return self.plan.target(elapsed)

    async def _one(self, name: str, scheduled: float | None, *, counted: bool = False,
                   lag_own: float | None = None, pacer: RefusalPacer | None = None,
                   deadline: float = 0.0) -> tuple[bool, float]:
        """Run one chain: (it failed because the CA could not be reached, the seconds its
        virtual user waits now that a rate limit refused it, by *pacer*, before *deadline*:
        carried in its result)."""
        if not counted:
            self.in_flight += 1
        try:
            info_fn = self.chains[name]
            result = await run_chain(self.runtime, name, info_fn[1], worker=self.worker,
                                     scheduled=scheduled, lag_own=lag_own)
            wait = 0.0 if pacer is None else pacer.after(result, deadline - time.monotonic())
            if wait > 0:
                result["rate_limit_wait"] = round(wait, 6)
            self.emit(result)
            return not result["ok"] and bool(result["requests"]) and \
                result["requests"][-1]["error"] == "connect", wait
        finally:
            self.in_flight -= 1
            self.finished += 1

    def _spawn(self, name: str, scheduled: float | None,
               lag_own: float | None = None) -> asyncio.Task[tuple[bool, float]]:
        # counted in flight now, not when the task first runs: a burst of starts caught up
        # in one go must see each other against the cap
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._one(name, scheduled, counted=True, lag_own=lag_own))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.started += 1
        return task

    async def run(self, start_at: float | None = None) -> None:
        """Run the load from *start_at* (monotonic; the run's common start, now when None;
        in the past for a worker that was late to it) until the plan's duration after it,
        then the grace."""
        now = time.monotonic()
        if start_at is not None and start_at > now:
            await self._wait(start_at - now)
        self.t_start = start_at if start_at is not None else now
        deadline = self.t_start + self.plan.duration
        gc_threshold = fewer_young_collections()
        try:
            if self.plan.model == "open":
                await self._open(deadline)
            else:
                await self._closed(deadline)
        finally:
            try:
                await self._drain()
            finally:
                if gc_threshold is not None:
                    gc.set_threshold(*gc_threshold)

    async def _wait(self, seconds: float) -> bool:
        """Sleep up to *seconds*; True when stopped meanwhile."""
        if seconds <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _closed(self, deadline: float) -> None:
        """Closed model: keep the target number of chains in flight."""
        users: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        async def user() -> None:
            backoff = 0.0
            pacer = RefusalPacer(self.plan.rate_limit_wait)
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.in_flight >= self.current_target():
                    return
                name = self.choose()
                if name is None:
                    self.nothing_to_run += 1
                    if await self._wait(0.2):
                        return
                    continue
                self.started += 1
                unreachable, paced = await self._one(name, None, pacer=pacer, deadline=deadline)
                # A CA that refuses connections fails chains in microseconds: back off
                # (0.05 s doubling up to 1 s) instead of spinning on the refusals; one that
                # refuses over a rate limit is waited for (pytest_wec.worker.pacing).
                backoff = min(max(backoff * 2, CONNECT_BACKOFF), 1.0) if unreachable else 0.0
                pause = backoff + paced
                if paced and time.monotonic() + pause >= deadline:
                    # waits out the run: until past its end (a timer may fire a fraction
                    # early), so that no new user replaces it and starts a chain at the end
                    pause += END_MARGIN
                if pause and await self._wait(pause):
                    return

        while not self._stop.is_set() and time.monotonic() < deadline:
            users = {u for u in users if not u.done()}
            want = int(self.current_target())
            for _ in range(want - len(users)):
                t = loop.create_task(user())
                users.add(t)
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)
            if await self._wait(min(0.05, max(deadline - time.monotonic(), 0))):
                break

    async def _open(self, deadline: float) -> None:
        """Open model: starts on schedule at the target rate; over the cap is a drop.

        The schedule integrates the target rate in steps of at most ``OPEN_TICK`` seconds, so
        that ramps are followed and a stage at rate 0 starts nothing; the workers' phases
        are spread over one interval.
        """
        cap = self.plan.cap()
        mono0 = self.t_start
        wall0 = time.time() - (time.monotonic() - mono0)
        at = max(mono0, time.monotonic())  # a worker late to the common start: no catch-up
        owed = 1.0 - self.plan.index / self.plan.workers  # 1.0: a start is due at *at*
        own, prev = 0.0, at  # the generator's own part of its lateness at *prev* (own_lag)
        while not self._stop.is_set():
            rate = self._target_at(at - mono0)
            due = rate > 0 and (1.0 - owed) / rate <= OPEN_TICK
            if due:
                at += max(1.0 - owed, 0.0) / rate
                owed = 0.0
            else:
                at += OPEN_TICK
                owed += max(rate, 0.0) * OPEN_TICK
            if at >= deadline:
                break
            delay = at - time.monotonic()
            busy0 = time.thread_time()
            if delay > 0 and await self._wait(delay):
                break
            own = own_lag(max(own - (at - prev), 0.0) if delay <= 0 else 0.0,
                          time.thread_time() - busy0, max(delay, 0.0), time.monotonic() - at)
            prev = at
            if not due:
                continue
            if len(self.lags) < 200_000:
                self.lags.append(time.monotonic() - at)
            if self.in_flight >= cap:
                self.dropped += 1
                self.on_drop(1)
                continue
            name = self.choose()
            if name is None:
                self.nothing_to_run += 1
            else:
                self._spawn(name, wall0 + (at - mono0), own)

    async def _drain(self) -> None:
        """Let chains in flight finish within the grace, then cancel them."""
        pending = {t for t in self.tasks if not t.done()}
        if pending:
            _done, still = await asyncio.wait(pending, timeout=self.plan.grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=10)


def weighted_choice(rng: random.Random, names: list[str], weights: list[float]) -> str:
    return rng.choices(names, weights)[0]
