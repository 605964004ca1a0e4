"""The controller that cannot keep up with its workers: the final drain goes on while results
come in, within its bound, and what it could not take in by then is counted lost (exit
status 8, the reason last), never dropped silently.

Real ResultSinks feed a real redis-server faster than the controller's LoadSession takes
results in: its aggregator is slowed on purpose (``SLOW_S`` a chain), so that a backlog
builds up in Redis as it does when 16 producers offer more than the controller's reader
takes (``bench/bench_pipeline.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.closing import exit_status, last_lines
from pytest_wec.controller.collector import LoadSession
from pytest_wec.controller.ledger import EXIT_INCOMPLETE
from pytest_wec.controller.resultlog import read_results
from pytest_wec.settings import Settings
from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.sink import ResultSink

pytestmark = pytest.mark.redis

SLOW_S = 0.002  # seconds the slowed aggregator takes per chain: 500 chains/s at most
BATCH = 100  # chains per batch: the reader puts a batch down within 0.2 s


@pytest.fixture
def slow_aggregator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    add = Aggregator.add

    def slow(self: Aggregator, c: ChainResult) -> None:
        time.sleep(SLOW_S)
        add(self, c)

    monkeypatch.setattr(Aggregator, "add", slow)
    yield


def chain(k: int, worker: str) -> ChainResult:
    cid, now = f"{worker}-{k}", time.time()
    return {"chain_id": cid, "chain": "NewAccountChain", "worker": worker,
            "scheduled": now - 0.02, "started": now - 0.02, "took": 0.01, "ok": True,
            "outcome": "ok", "error": None, "certificates": 0,
            "requests": [{"chain_id": cid, "chain": "NewAccountChain", "endpoint": ep,
                          "method": "POST", "status": 201, "started": now - 0.02, "took": 0.004,
                          "ok": True, "error": None, "problem": None}
                         for ep in ("newNonce", "newAccount")]}


def session(redis_url: str, run_dir: Path, lines: list[str], **kw: Any) -> LoadSession:
    ls = LoadSession(Settings(load=2, duration=1.0), run_dir, "20261202-000000-backlg",
                     redis_url, uuid.uuid4().hex, "https://ca.test/dir", 2, lines.append,
                     progress_interval=0.2, **kw)
    ls.start()
    return ls


def feed(ls: LoadSession, per_worker: int, counters: bool) -> None:
    """Two workers each start and end *per_worker* chains as fast as their sinks take them,
    then close (their end records); with *counters* their start counters are in the run
    directory, as in a run."""
    async def worker(name: str) -> None:
        async with ResultSink(ls.redis_url, ls.namespace, name, flush_interval=0.02,
                              max_batch=BATCH, heartbeat_interval=0.05,
                              spill_dir=ls.run_dir if counters else None) as sink:
            sink.set_status(in_flight=1, target_share=0.5)
            for k in range(per_worker):
                sink.count_start()
                sink.add(chain(k, name))
                if k % BATCH == BATCH - 1:
                    await asyncio.sleep(0.005)
            sink.set_status(in_flight=0)

    async def both() -> None:
        await asyncio.wait_for(asyncio.gather(worker("gw0"), worker("gw1")), 30)

    asyncio.run(both())


def taken_in(ls: LoadSession) -> int:
    """Chains the controller took in so far."""
    return int(ls.snapshot()["totals"]["chains"])


def wait_until_taken(ls: LoadSession, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while taken_in(ls) < n:
        assert time.monotonic() < deadline, f"the controller took in {taken_in(ls)} of {n}"
        time.sleep(0.02)


def final_lines(ls: LoadSession) -> list[str]:
    """What the run prints after pytest's own summary line (closing.last_lines)."""
    out: list[str] = []
    tr = SimpleNamespace(write_line=lambda line, **_: out.append(line))
    config = SimpleNamespace(pluginmanager=SimpleNamespace(get_plugin=lambda name: tr))
    last_lines(config, SimpleNamespace(result=None), ls)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("counters", [True, False], ids=["start-counters", "sinks-word"])
@pytest.mark.usefixtures("slow_aggregator")
def test_what_the_controller_could_not_take_in_is_counted_lost(
        redis_url: str, tmp_path: Path, counters: bool) -> None:
    """4,000 chains that take the slowed controller 8 s, a final drain bounded to 1 s: what
    it did not take in is lost and unread, per worker, by the start counters (or, without
    them, by the end record each sink left in Redis' hash, unread in the stream)."""
    lines: list[str] = []
    ls = session(redis_url, tmp_path / "run", lines, silent_after=0.5)
    feed(ls, 2000, counters)
    wait_until_taken(ls, 2 * BATCH + 1)  # its reader is in a long read of the backlog
    t0 = time.monotonic()
    summary = ls.finish(timeout=1.0)
    assert time.monotonic() - t0 < 4.0  # the bound, the batch in hand, the hash

    delivery, totals = summary["delivery"], summary["totals"]
    taken = totals["chains"]
    assert 2 * BATCH < taken < 3000, taken  # at most 500 chains/s: the bound was hit
    by_worker = delivery["by_worker"]
    assert set(by_worker) == {"gw0", "gw1"}
    for name, w in by_worker.items():
        assert w["how"] == ("start counter" if counters else "end record"), (name, w)
        assert w["started"] == 2000 and w["received"] + w["lost"] == 2000, (name, w)
        assert w["unread"] == w["lost"], (name, w)
    # nothing counted twice: what was taken in is in the totals and the log once, the rest
    # is lost once
    assert sum(w["received"] for w in by_worker.values()) == taken
    assert len(list(read_results(ls.log_path))) == taken
    lost = 4000 - taken
    assert delivery["results_lost"] == delivery["unread"] == totals["results_lost"] == lost
    reason = (f"{lost} chain results still unread in Redis when the run ended: the controller "
              "could not keep up (results_lost)")
    assert summary["incomplete"] == [reason]
    assert json.loads(ls.summary_path.read_text())["incomplete"] == [reason]
    assert exit_status(0, ls.incomplete) == exit_status(7, ls.incomplete) == EXIT_INCOMPLETE
    assert final_lines(ls)[-1] == "wec: INCOMPLETE: " + reason
    # behind them, not silent: neither is lost as a worker
    assert summary["workers_lost"] == []
    assert not [line for line in lines if "went silent" in line or "never reported" in line]


@pytest.mark.usefixtures("slow_aggregator")
def test_a_backlog_that_shrinks_is_drained_to_the_end(redis_url: str, tmp_path: Path) -> None:
    """The same, 1,200 chains (2.4 s of the slowed controller) with time enough: the drain goes
    on while the backlog shrinks, far beyond the half second after which a worker that
    sends nothing is silent, and everything is received."""
    lines: list[str] = []
    ls = session(redis_url, tmp_path / "run", lines, silent_after=0.5)
    feed(ls, 600, counters=True)
    behind = 1200 - taken_in(ls)
    assert behind > 600  # a backlog at the end of the load
    t0 = time.monotonic()
    summary = ls.finish(timeout=20.0)
    assert time.monotonic() - t0 > behind * SLOW_S * 0.8  # it did take the backlog in

    delivery, totals = summary["delivery"], summary["totals"]
    assert totals["chains"] == 1200 and totals["results_lost"] == 0
    assert (delivery["results_lost"], delivery["unread"]) == (0, 0)
    for name, w in delivery["by_worker"].items():
        assert (w["started"], w["received"], w["lost"], w["how"]) == \
            (600, 600, 0, "start counter"), (name, w)
    assert len(list(read_results(ls.log_path))) == 1200
    assert summary["incomplete"] == [] and summary["workers_lost"] == []
    assert exit_status(0, ls.incomplete) == 0 and final_lines(ls) == []
