"""The load runner without a CA: load plans, both load models, outcomes, the end of a run.

The runtime is a stub: chains are tiny coroutines that sleep, raise or record a request, so
every property here is the runner's own (how many chains run, when they start, what each
outcome becomes).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec._chain import ChainInfo
from pytest_wec.settings import Settings, Stage
from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.worker.context import ChainContext, NoContext
from pytest_wec.worker.runner import DEFAULT_OPEN_CAP, LoadPlan, LoadRunner, run_chain, split_int

pytestmark = pytest.mark.timeout(60)

ChainFn = Callable[[ChainContext], Awaitable[None]]


# -- stubs -------------------------------------------------------------------------------------


class StubClient:
    """What ``runtime.network.client(...)`` returns: records requests like the real one."""

    def __init__(self, name: str, chain_id: str, observer: Callable[[RequestResult], None]):
        self.name, self.chain_id, self.observer = name, chain_id, observer

    def record(self, endpoint: str, status: int = 200) -> None:
        self.observer({"chain_id": self.chain_id, "chain": self.name, "endpoint": endpoint,
                       "method": "POST", "status": status, "started": time.time(),
                       "took": 0.001, "ok": status < 400, "error": None, "problem": None})


class StubStore:
    def __init__(self) -> None:
        self.released: list[tuple[str, int, str]] = []

    def release(self, kind: str, row_id: int, holder: str) -> None:
        self.released.append((kind, row_id, holder))


def stub_runtime() -> Any:
    async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return SimpleNamespace(
        network=SimpleNamespace(client=StubClient), settings=Settings(),
        directory="https://ca.test/dir", store=StubStore(), publisher=None, pebble=None,
        holder="test:1", info={}, db=db)


def sleeper(seconds: float) -> ChainFn:
    async def fn(ctx: ChainContext) -> None:
        await asyncio.sleep(seconds)

    return fn


def plan(model: str = "closed", *, index: int = 0, workers: int = 1, load: int | None = None,
         rate: float | None = None, stages: tuple[Stage, ...] | None = None,
         duration: float = 1.0, grace: float = 5.0) -> LoadPlan:
    if stages is not None:
        duration = sum(d for d, _ in stages)
    return LoadPlan(model, index, workers, load, rate, stages, duration, grace)


class Harness:
    """A LoadRunner over one stub chain, the results it emitted and its in-flight samples."""

    def __init__(self, load_plan: LoadPlan, fn: ChainFn, *, name: str = "sleep",
                 choose: Callable[[], str | None] | None = None) -> None:
        self.results: list[ChainResult] = []
        self.drops: list[int] = []
        self.samples: list[tuple[float, int]] = []
        self.wall0 = 0.0
        self.runner = LoadRunner(
            stub_runtime(), {name: (ChainInfo(name, frozenset(), frozenset()), fn)}, load_plan,
            emit=self.results.append, choose=choose or (lambda: name),
            worker=f"gw{load_plan.index}", on_drop=self.drops.append)

    async def run(self, *, sample_every: float = 0.01) -> float:
        """Runs to the end, sampling ``in_flight``; returns the wall time it took."""
        t0, self.wall0 = time.monotonic(), time.time()

        async def sample() -> None:
            while True:
                self.samples.append((time.monotonic() - t0, self.runner.in_flight))
                await asyncio.sleep(sample_every)

        sampler = asyncio.get_running_loop().create_task(sample())
        try:
            await self.runner.run()
        finally:
            sampler.cancel()
        return time.monotonic() - t0

    def in_flight_between(self, start: float, end: float) -> list[int]:
        return [n for t, n in self.samples if start <= t <= end]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Runs *coro* in a new event loop; a loop that does not end by itself fails the test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def gather(*coros: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*coros))


# -- split_int and LoadPlan ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 16, 33, 64])
def test_split_int_shares_sum_exactly(n: int) -> None:
    for total in itertools.chain(range(0, 300), (999, 1000, 10_007, 123_456)):
        shares = [split_int(total, i, n) for i in range(n)]
        assert sum(shares) == total, (total, n, shares)
        assert max(shares) - min(shares) <= 1, (total, n, shares)
        assert min(shares) >= 0
        assert shares == sorted(shares, reverse=True)  # the remainder goes to the first


def test_plan_without_stages_is_constant() -> None:
    for workers in (1, 2, 3, 5):
        closed = [plan(index=i, workers=workers, load=7) for i in range(workers)]
        for t in (0.0, 0.5, 1e6):
            assert sum(p.target(t) for p in closed) == 7
            assert all(p.total_target(t) == 7.0 for p in closed)
        opened = [plan("open", index=i, workers=workers, rate=5.0, load=11)
                  for i in range(workers)]
        assert sum(p.target(3.0) for p in opened) == pytest.approx(5.0)
        assert sum(p.cap() for p in opened) == 11
    assert plan("open", rate=3.0).cap() == DEFAULT_OPEN_CAP
    assert plan(load=3).cap() >= 1 << 30  # the closed model has no cap on starts


def test_plan_stages_ramp_linearly() -> None:
    p = plan(stages=((10.0, 10.0), (10.0, 10.0), (5.0, 0.0), (5.0, 4.0)))
    assert p.duration == 30.0
    expected = {0.0: 0.0, 2.5: 2.5, 5.0: 5.0, 9.99: 9.99, 10.0: 10.0, 15.0: 10.0, 20.0: 10.0,
                22.5: 5.0, 25.0: 0.0, 27.5: 2.0, 30.0: 4.0, 100.0: 4.0}
    for t, want in expected.items():
        assert p.total_target(t) == pytest.approx(want), t


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
def test_closed_shares_sum_to_the_rounded_target(workers: int) -> None:
    stages = ((3.0, 9.0), (2.0, 9.0), (4.0, 1.0), (1.0, 0.0))
    plans = [plan(index=i, workers=workers, stages=stages) for i in range(workers)]
    for k in range(0, 1200):
        t = k / 100
        total = plans[0].total_target(t)
        shares = [p.target(t) for p in plans]
        assert sum(shares) == round(total), (t, shares)
        assert all(s == int(s) >= 0 for s in shares)
        assert max(shares) - min(shares) <= 1


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_open_shares_are_rate_fractions(workers: int) -> None:
    stages = ((2.0, 30.0), (2.0, 30.0), (1.0, 0.0))
    plans = [plan("open", index=i, workers=workers, rate=1.0, stages=stages, load=50)
             for i in range(workers)]
    for k in range(0, 600):
        t = k / 100
        assert sum(p.target(t) for p in plans) == pytest.approx(plans[0].total_target(t))
    assert plans[0].total_target(1.0) == pytest.approx(15.0)
    assert plans[0].total_target(4.5) == pytest.approx(15.0)
    assert sum(p.cap() for p in plans) == 50


def test_plan_from_settings() -> None:
    s = Settings(rate=4.0, load=9, stages=((2.0, 4.0), (1.0, 0.0)), duration=60.0, grace=2.5)
    p = LoadPlan.from_settings(s, 1, 3)
    assert (p.model, p.index, p.workers, p.load, p.rate) == ("open", 1, 3, 9, 4.0)
    assert p.duration == 3.0  # the stages' sum, not --wec-duration
    assert p.grace == 2.5
    q = LoadPlan.from_settings(Settings(load=4, duration=7.0), 0, 1)
    assert (q.model, q.duration, q.stages) == ("closed", 7.0, None)


# -- one chain run -------------------------------------------------------------------------------


def test_run_chain_outcomes() -> None:
    runtime = stub_runtime()

    async def good(ctx: ChainContext) -> None:
        ctx.client.record("newAccount", 201)
        ctx.client.record("newOrder", 201)
        ctx.certificates += 1

    async def no_context(ctx: ChainContext) -> None:
        raise NoContext("no account in the state DB")

    async def broken(ctx: ChainContext) -> None:
        ctx.client.record("newOrder", 400)
        raise ValueError("boom\nsecond line")

    async def empty_error(ctx: ChainContext) -> None:
        raise RuntimeError

    async def main() -> list[ChainResult]:
        return await gather(
            run_chain(runtime, "good", good, worker="gw3", scheduled=123.0),
            run_chain(runtime, "skip", no_context, worker="gw3"),
            run_chain(runtime, "broken", broken, worker="gw3"),
            run_chain(runtime, "empty", empty_error, worker="gw3"))

    ok, skipped, failed, empty = run(main())
    assert (ok["outcome"], ok["ok"], ok["error"], ok["certificates"]) == ("ok", True, None, 1)
    assert ok["worker"] == "gw3" and ok["chain"] == "good" and ok["scheduled"] == 123.0
    assert [r["endpoint"] for r in ok["requests"]] == ["newAccount", "newOrder"]
    assert {r["chain_id"] for r in ok["requests"]} == {ok["chain_id"]}
    assert (skipped["outcome"], skipped["ok"]) == ("skipped", False)
    assert skipped["error"] == "NoContext: no account in the state DB"
    assert skipped["scheduled"] == skipped["started"]  # closed model: intended == real
    assert (failed["outcome"], failed["ok"]) == ("failed", False)
    assert failed["error"] == "ValueError: boom"
    assert [r["ok"] for r in failed["requests"]] == [False]
    assert empty["error"] == "RuntimeError"
    assert len({r["chain_id"] for r in (ok, skipped, failed, empty)}) == 4
    assert all(r["took"] >= 0 for r in (ok, skipped, failed, empty))


def test_a_chains_time_ends_with_its_body_and_its_queued_writes_still_count() -> None:
    """What the chain queued with db_later is stored after its clock stopped (a slow state
    DB is not in its time), and a write that fails fails the chain."""
    runtime = stub_runtime()
    stored: list[str] = []

    def slow_write(what: str) -> None:
        time.sleep(0.3)
        stored.append(what)

    def failing_write() -> None:
        raise ValueError("no such account")

    async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    runtime.db = db

    async def writes_later(ctx: ChainContext) -> None:
        await ctx.db_later(slow_write, "order")
        ctx.client.record("newOrder", 201)

    async def fails_later(ctx: ChainContext) -> None:
        await ctx.db_later(failing_write)

    async def main() -> list[ChainResult]:
        return await gather(run_chain(runtime, "later", writes_later, worker="gw0"),
                            run_chain(runtime, "bad", fails_later, worker="gw0"))

    t0 = time.perf_counter()
    later, bad = run(main())
    assert time.perf_counter() - t0 >= 0.3 and stored == ["order"]  # waited for, not lost
    assert later["outcome"] == "ok" and later["took"] < 0.2, later["took"]
    assert (bad["outcome"], bad["ok"]) == ("failed", False)
    assert bad["error"] == "state DB write failed: ValueError: no such account"


def test_a_queued_write_may_name_the_row_an_earlier_queued_write_makes() -> None:
    from pytest_wec.worker.flows import StoredRow

    runtime = stub_runtime()
    got: list[tuple[int, int | None]] = []

    async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    runtime.db = db

    async def chain(ctx: ChainContext) -> None:
        row = StoredRow().queue(ctx._submit_later, lambda: 41)
        await ctx.db_later(lambda old, new: got.append((old, new)), 1, new=row)

    result = run(run_chain(runtime, "renew", chain, worker="gw0"))
    assert result["outcome"] == "ok", result["error"]
    assert got == [(1, 41)]


def test_an_issued_certificates_row_id_under_load_is_awaited() -> None:
    from pytest_wec.worker.flows import Issued, StoredRow

    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queued: list[Callable[[], int]] = []

        def submit(write: Callable[[], int]) -> asyncio.Future[int]:
            queued.append(write)
            return fut

        row = StoredRow().queue(submit, lambda a, b: a + b, 3, 4)
        issued = Issued(None, None, ("a.test",), "", b"", None, (), row)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=r"await issued.stored\(\)"):
            _ = issued.cert_id
        with pytest.raises(RuntimeError, match="was not written"):
            row.written()
        assert queued[0]() == 7  # the queue's thread runs the write...
        assert row.written() == 7  # ...and a later write of the same group reads the id
        fut.set_result(7)
        assert await issued.stored() == 7 and issued.cert_id == 7
        once = Issued(None, None, (), "", b"", None, (), StoredRow(3))  # type: ignore[arg-type]
        assert once.cert_id == 3 and once.row.written() == 3 and await once.stored() == 3

    run(main())


# -- the closed model ----------------------------------------------------------------------------


def test_closed_model_keeps_n_in_flight() -> None:
    h = Harness(plan(load=5, duration=1.0), sleeper(0.03))
    took = run(h.run())
    steady = h.in_flight_between(0.15, 0.9)
    assert steady and set(steady) == {5}, steady
    assert h.runner.in_flight == 0
    assert h.runner.started == h.runner.finished == len(h.results)
    # 5 users, each about 1 s / 30 ms chains
    assert 60 <= len(h.results) <= 5 * 1.0 / 0.03 + 5
    assert all(r["outcome"] == "ok" for r in h.results)
    assert took < 2.0
    assert h.runner.dropped == 0 and h.drops == []


def test_closed_model_workers_share_the_load() -> None:
    harnesses = [Harness(plan(index=i, workers=3, load=7, duration=0.8), sleeper(0.02))
                 for i in range(3)]

    async def main() -> None:
        await gather(*(h.run() for h in harnesses))

    run(main())
    peaks = [max(h.in_flight_between(0.15, 0.7)) for h in harnesses]
    assert peaks == [3, 2, 2]


def test_closed_model_follows_stages_down() -> None:
    stages = ((0.05, 4.0), (0.6, 4.0), (0.05, 2.0), (0.6, 2.0), (0.05, 0.0), (0.6, 0.0))
    h = Harness(plan(stages=stages, grace=1.0), sleeper(0.02))
    run(h.run())
    at_four = h.in_flight_between(0.2, 0.6)
    at_two = h.in_flight_between(0.9, 1.25)
    at_zero = h.in_flight_between(1.5, 1.9)
    assert at_four and max(at_four) == 4, at_four
    assert at_two and max(at_two) == 2 and min(at_two) >= 1, at_two
    assert at_zero and set(at_zero) == {0}, at_zero
    last_start = max(r["started"] for r in h.results)
    first_start = min(r["started"] for r in h.results)
    assert last_start - first_start < 1.45  # nothing starts once the target is 0


def test_closed_model_ramps_up() -> None:
    h = Harness(plan(stages=((1.0, 6.0), (0.3, 6.0)), grace=1.0), sleeper(0.02))
    run(h.run())
    early = h.in_flight_between(0.02, 0.15)
    late = h.in_flight_between(1.05, 1.25)
    assert early and max(early) <= 1, early
    assert late and set(late) == {6}, late


def test_closed_model_with_nothing_to_run_ends_at_the_deadline() -> None:
    h = Harness(plan(load=3, duration=0.6), sleeper(0.01), choose=lambda: None)
    took = run(h.run())
    assert h.results == [] and h.runner.started == 0
    assert h.runner.nothing_to_run > 0
    assert took < 1.5


# -- the open model ------------------------------------------------------------------------------


def test_open_model_achieves_the_rate() -> None:
    h = Harness(plan("open", rate=40.0, load=100, duration=2.0), sleeper(0.01))
    took = run(h.run())
    assert 78 <= len(h.results) <= 81  # 40/s for 2 s
    scheduled = sorted(r["scheduled"] for r in h.results)
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 40, rel=0.03)
    assert max(abs(g - 1 / 40) for g in gaps) < 1e-6  # the schedule, not the wake-ups
    assert all(r["started"] >= r["scheduled"] - 0.002 for r in h.results)
    assert h.runner.dropped == 0
    assert h.runner.lags and len(h.runner.lags) == len(h.results)
    assert took < 3.0


def test_open_model_workers_interleave_their_starts() -> None:
    harnesses = [Harness(plan("open", index=i, workers=2, rate=30.0, duration=2.0),
                         sleeper(0.01)) for i in range(2)]

    async def main() -> None:
        await gather(*(h.run() for h in harnesses))

    run(main())
    counts = [len(h.results) for h in harnesses]
    assert all(29 <= c <= 31 for c in counts), counts
    scheduled = sorted(r["scheduled"] for h in harnesses for r in h.results)
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert min(gaps) > 0.5 / 30, "the workers' phases are spread over one interval"


def test_open_model_counts_drops_at_the_cap() -> None:
    h = Harness(plan("open", rate=50.0, load=2, duration=1.0, grace=2.0), sleeper(0.45))
    run(h.run())
    assert max(n for _t, n in h.samples) <= 2
    r = h.runner
    assert r.dropped > 30
    assert sum(h.drops) == r.dropped, "every drop is reported"
    assert r.started == len(h.results) == r.finished
    assert 49 <= r.started + r.dropped <= 51, "every scheduled start is a start or a drop"
    assert len(r.lags) == r.started + r.dropped


def test_open_model_follows_stages_on_every_worker() -> None:
    stages = ((1.0, 20.0), (1.0, 20.0))  # 10 starts in the ramp, 20 after it
    harnesses = [Harness(plan("open", index=i, workers=2, rate=1.0, stages=stages),
                         sleeper(0.01)) for i in range(2)]

    async def main() -> None:
        await gather(*(h.run() for h in harnesses))

    run(main())
    counts = [len(h.results) for h in harnesses]
    assert all(c >= 12 for c in counts), counts
    assert 27 <= sum(counts) <= 33, counts
    t0 = min(r["scheduled"] for h in harnesses for r in h.results)
    ramp = [r for h in harnesses for r in h.results if r["scheduled"] - t0 < 1.0]
    assert 7 <= len(ramp) <= 13, len(ramp)
    first_half = [r for r in ramp if r["scheduled"] - t0 < 0.5]
    assert len(first_half) <= 5, "a linear ramp starts slowly"


def test_open_model_starts_nothing_at_rate_zero() -> None:
    stages = ((0.5, 0.0), (0.3, 10.0), (0.01, 0.0), (0.5, 0.0))  # 1.5 starts in the ramp
    h = Harness(plan("open", rate=1.0, stages=stages), sleeper(0.01))
    took = run(h.run())
    offsets = [r["scheduled"] - h.wall0 for r in h.results]
    assert all(0.49 <= o <= 0.85 for o in offsets), offsets
    assert 1 <= len(h.results) <= 3, offsets
    assert took < 2.0


def test_open_model_with_nothing_to_run_ends_at_the_deadline() -> None:
    h = Harness(plan("open", rate=20.0, duration=0.5), sleeper(0.01), choose=lambda: None)
    took = run(h.run())
    assert h.results == [] and h.runner.started == 0
    assert 9 <= h.runner.nothing_to_run <= 11
    assert took < 1.5


# -- the end of a run ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["closed", "open"])
def test_grace_expiry_cancels_and_reports(model: str) -> None:
    p = (plan("closed", load=3, duration=0.3, grace=0.4) if model == "closed"
         else plan("open", rate=10.0, duration=0.3, grace=0.4))
    h = Harness(p, sleeper(30.0))
    took = run(h.run())
    assert 0.6 <= took < 2.0
    assert h.results, "chains cancelled at the end of the grace are reported"
    assert {r["outcome"] for r in h.results} == {"cancelled"}
    assert all(not r["ok"] and "grace" in (r["error"] or "") for r in h.results)
    assert len(h.results) == h.runner.started == h.runner.finished
    assert h.runner.in_flight == 0
    assert not h.runner.tasks


@pytest.mark.parametrize("model", ["closed", "open"])
def test_chains_within_the_grace_finish(model: str) -> None:
    p = (plan("closed", load=2, duration=0.3, grace=2.0) if model == "closed"
         else plan("open", rate=10.0, duration=0.3, grace=2.0))
    h = Harness(p, sleeper(0.5))
    took = run(h.run())
    assert took < 1.5
    assert h.results and {r["outcome"] for r in h.results} == {"ok"}
    last_start = max(r["started"] for r in h.results)
    assert last_start - h.wall0 < 0.35, "nothing starts after the deadline"


@pytest.mark.parametrize("model", ["closed", "open"])
def test_stop_ends_early(model: str) -> None:
    p = (plan("closed", load=3, duration=30.0) if model == "closed"
         else plan("open", rate=20.0, duration=30.0))
    h = Harness(p, sleeper(0.05))

    async def main() -> float:
        asyncio.get_running_loop().call_later(0.3, h.runner.stop)
        return await h.run()

    took = run(main(), timeout=10)
    assert took < 1.0
    assert h.results and {r["outcome"] for r in h.results} == {"ok"}
    assert h.runner.in_flight == 0 and not h.runner.tasks


def test_outcomes_under_load() -> None:
    calls = itertools.count()

    async def mixed(ctx: ChainContext) -> None:
        k = next(calls)
        await asyncio.sleep(0.005)
        if k % 3 == 1:
            raise NoContext("no certificate")
        if k % 3 == 2:
            raise AssertionError("the CA said no")

    h = Harness(plan(load=3, duration=0.5), mixed)
    run(h.run())
    by = {o: [r for r in h.results if r["outcome"] == o] for o in ("ok", "skipped", "failed")}
    assert all(by.values()), {o: len(v) for o, v in by.items()}
    assert sum(map(len, by.values())) == len(h.results)
    assert {r["error"] for r in by["failed"]} == {"AssertionError: the CA said no"}
    assert {r["error"] for r in by["skipped"]} == {"NoContext: no certificate"}


def test_closed_model_backs_off_when_the_ca_cannot_be_reached() -> None:
    """Chains that fail on a refused connection are not retried in a tight loop."""

    async def refused(ctx: ChainContext) -> None:
        ctx.requests.append({
            "chain_id": ctx.chain_id, "chain": ctx.name, "endpoint": "newAccount",
            "method": "POST", "status": 0, "started": time.time(), "took": 0.0001,
            "ok": False, "error": "connect", "problem": None})
        raise ConnectionRefusedError("connection refused")

    async def failing(ctx: ChainContext) -> None:
        raise ValueError("not a connection problem")

    down = Harness(plan("closed", load=2, duration=1.0), refused)
    run(down.run())
    assert all(r["outcome"] == "failed" for r in down.results)
    # 0.05 + 0.1 + 0.2 + 0.4 s of backoff per user within the second: a handful of runs
    assert 2 <= len(down.results) <= 12, len(down.results)
    other = Harness(plan("closed", load=2, duration=0.3), failing)
    run(other.run())
    assert len(other.results) > 100, "other failures are not slowed down"
