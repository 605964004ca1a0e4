"""A part of the embedded stack SIGKILLed mid-run: seen, named, restarted where it can be, and
no result lost without being counted.

Two whole load runs in a subprocess kill the parts one after the other, each once the one
before is back and chains succeed again: without xdist the challenge server, then Pebble,
then redis-server four times (the fourth is given up: the worker spills what it cannot
deliver); with ``-n 2`` redis-server, the challenge server and Pebble. A killed xdist
worker: ``tests/test_load_mode.py::test_killed_worker_is_reported_and_its_results_kept``.
The keeper's bounds and the watch's words are shown on their own, without a run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _loadruns import BASIC, NEEDS_STACK, log_lines, only, wait_until

from pytest_wec.controller.ledger import EXIT_INCOMPLETE, FailureLedger
from pytest_wec.controller.resultlog import read_results
from pytest_wec.controller.stackwatch import StackWatch
from pytest_wec.controller.watch import Watch
from pytest_wec.stack._keeper import StackKeeper
from pytest_wec.stack._procs import ManagedProcess
from pytest_wec.stack._redis import start_redis
from pytest_wec.wire.control import Control, ControlReader, ControlWriter
from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.spill import counters, spills
from pytest_wec.wire.stream import WorkerStatus

PARTS = {"redis-server": "redis-server", "challenge-server": "challenge_srv",
         "pebble": "pebble-config.json"}
ACME = "urn:ietf:params:acme:error:"


# -- processes ---------------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                           .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Run:
    """A load run in a subprocess whose stack parts the test kills."""

    def __init__(self, cwd: Path, out: Path, args: Sequence[str]) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--wec-out", str(out),
             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.seen: dict[int, str] = {}

    def below(self) -> dict[int, str]:
        parents, found, todo = _parents(), {}, [self.proc.pid]
        while todo:
            parent = todo.pop()
            for child, ppid in parents.items():
                if ppid == parent and child not in found and _alive(child):
                    try:
                        found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(
                            b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                    todo.append(child)
        self.seen.update(found)
        return found

    def pid_of(self, part: str) -> int | None:
        return next((p for p, cmd in self.below().items() if PARTS[part] in cmd), None)

    def kill(self, part: str, *, restarted: bool = True) -> tuple[float, int]:
        """SIGKILL *part*; with *restarted*, wait until it runs again under a new pid.
        Returns the time of the kill and the new pid (0 when not restarted)."""
        pid = self.pid_of(part)
        assert pid is not None, f"no {part} below the run: {self.seen}"
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        if not restarted:
            return killed, 0
        new: list[int] = []

        def back() -> bool:
            now = self.pid_of(part)
            if now is not None and now != pid:
                new.append(now)
            return bool(new)

        wait_until(back, 20, f"{part} started again", self.proc)
        return killed, new[0]

    def ok_after(self, at: float, chains: set[str], n: int = 1) -> None:
        """Until the log has *n* successful chains of each of *chains* started after *at*."""
        def seen() -> bool:
            got = Counter(r["chain"] for r in log_lines(self.out)
                          if r["ok"] and r["started"] > at)
            return all(got[c] >= n for c in chains)

        wait_until(seen, 30, f"chains {sorted(chains)} succeeding after {at:.1f}", self.proc)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            data, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return self.proc.returncode, data.decode(errors="replace")

    def stop(self) -> None:
        for pid in [self.proc.pid, *self.below()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate()

    def assert_no_leftovers(self) -> None:
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in self.seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in self.seen.items() if _alive(pid)}
        assert not left, f"processes of the run outlived it: {left}"


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.stop()


def _outputs(ret: int, text: str, out: Path) -> tuple[dict[str, Any], list[ChainResult]]:
    assert "INTERNALERROR" not in text and "Traceback" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    results = list(read_results(out / "results.jsonl"))
    assert len({r["chain_id"] for r in results}) == len(results)
    t = summary["totals"]
    assert t["chains"] + t["cancelled"] + t["skipped"] == len(results)
    return summary, results


def _accounted(summary: dict[str, Any], results: list[ChainResult], out: Path) -> None:
    """The results log and results_lost account for every chain each worker started, by
    the workers' own start counters (read here from the run directory)."""
    started: Counter[str] = Counter()
    for (worker, _session), n in counters(out).items():
        started[worker] += n
    rows = Counter(r["worker"] for r in results)
    delivery = summary["delivery"]
    assert set(started) == set(rows) == set(delivery["by_worker"]), (started, rows, delivery)
    for worker, n in started.items():
        mine = delivery["by_worker"][worker]
        assert mine["started"] == n and mine["how"] == "start counter", mine
        assert rows[worker] + mine["lost"] == n, (worker, rows[worker], mine)
    assert delivery["results_lost"] == summary["totals"]["results_lost"] == \
        sum(w["lost"] for w in delivery["by_worker"].values())


def _failures_all_explained(summary: dict[str, Any]) -> None:
    """Every failed chain counts against the death of a part (or its CA event)."""
    by = summary["failed_by_cause"]
    assert by["ca_answer"] == by["no_answer"] == by["ours"] == 0, (by, summary["errors"])
    assert by["stack_event"] > 0, by


def _quiet_watch(summary: dict[str, Any], text: str) -> None:
    """Nobody blamed: no CA stall, no silent or lost worker."""
    assert summary["stalls"] == [] and "CA stalled" not in text, summary["stalls"]
    assert summary["workers_lost"] == [] and "went silent" not in text


# -- whole runs ---------------------------------------------------------------------------------


@pytest.mark.timeout(180)
@NEEDS_STACK[0]
@NEEDS_STACK[1]
@NEEDS_STACK[2]
def test_each_part_killed_without_xdist_redis_given_up_and_spilled(
        pytester: pytest.Pytester, runs: list[Run]) -> None:
    out = pytester.path / "lone"
    run = Run(pytester.path, out, [
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "--wec-load", "4",
        "--wec-duration", "16s",
        "--wec-timeout", "5s", "--wec-grace", "5s", "--wec-mix", only(*BASIC)])
    runs.append(run)
    wait_until(lambda: len(log_lines(out)) >= 20, 60, "the first results", run.proc)
    _killed, _ = run.kill("challenge-server")
    run.ok_after(time.time(), {"new_order"})
    pebble_killed, _ = run.kill("pebble")
    run.ok_after(time.time(), set(BASIC))
    for _ in range(3):  # restarted three times ...
        run.kill("redis-server")
        time.sleep(0.5)
    gone, _ = run.kill("redis-server", restarted=False)  # ... and given up the fourth
    time.sleep(1.5)
    assert run.pid_of("redis-server") is None, "a fourth death is not restarted"
    ret, text = run.wait(120)
    summary, results = _outputs(ret, text, out)

    # the exit status and the reason, as the very last line
    assert ret == EXIT_INCOMPLETE, text[-3000:]
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("wec: INCOMPLETE: redis-server killed by SIGKILL at ") and \
        last.endswith("and was not restarted"), last
    assert summary["incomplete"] == [last.removeprefix("wec: INCOMPLETE: ")]
    # every death seen, named with its signal and its log, as it happened and in summary.json
    events = summary["stack_events"]
    assert [e["part"] for e in events] == ["challenge-server", "pebble"] + ["redis-server"] * 4
    assert all(e["how"] == "killed by SIGKILL" and e["signal"] == "SIGKILL" for e in events)
    assert [e["recovered"] for e in events] == [True] * 5 + [False], events
    assert all(e["restart_s"] is not None for e in events[:5])
    for e in events:
        assert f"wec: stack: {e['part']} (pid {e['pid']}) killed by SIGKILL at " in text
        assert e["log"] and Path(e["log"]).is_file()
    assert text.count("wec: stack: redis-server restarted in ") == 3
    assert "not restarted: it died 4 times in this run (3 restarts at most)" in text
    assert "stack event: redis-server killed by SIGKILL at " in text  # the final tables
    # Pebble's death went down the doctor's path: an exited CA event, a restart, the old
    # accounts marked dead in the state DB; the connect errors of the outage count against it
    kinds = [(e["kind"], e.get("ok")) for e in summary["ca_events"]]
    assert kinds[:2] == [("exited", None), ("restart", True)], summary["ca_events"]
    assert "embedded Pebble killed by SIGKILL" in summary["ca_events"][0]["diagnosis"]
    connect = [r for c in results for r in c["requests"] if r["error"] == "connect"]
    assert connect and all(r["started"] >= pebble_killed - 0.5 for r in connect)
    db = sqlite3.connect(out / "state.db")
    try:
        statuses = dict(db.execute(
            "SELECT status, count(*) FROM wec_accounts GROUP BY status").fetchall())
    finally:
        db.close()
    # the accounts made after the restart are valid, unless a later restart of Pebble (one
    # of Debian's Pebble 2.4's deadlocks, proven by the doctor from its goroutine dump, at
    # the end of the load) forgot them too
    later = [e for e in summary["ca_events"][2:] if e["kind"] == "restart" and e.get("ok")]
    assert statuses.get("dead", 0) > 0, statuses
    assert statuses.get("valid", 0) > 0 or later, (statuses, summary["ca_events"])
    # Redis gone for good: the worker spilled what it could not deliver; nothing is lost
    assert len(spills(out)) == 1
    assert "chain results recovered from 1 spill(s)" in text
    assert any(r["started"] > gone + 1 for r in results), "results after Redis was gone"
    _accounted(summary, results, out)
    assert summary["totals"]["results_lost"] == 0
    _failures_all_explained(summary)
    _quiet_watch(summary, text)
    run.assert_no_leftovers()


@pytest.mark.timeout(180)
@NEEDS_STACK[0]
@NEEDS_STACK[1]
@NEEDS_STACK[2]
def test_each_part_killed_with_xdist_is_restarted_and_nothing_is_lost(
        pytester: pytest.Pytester, runs: list[Run]) -> None:
    out = pytester.path / "xdist"
    run = Run(pytester.path, out, [
        "--pyargs", "pytest_wec_chains", "-n", "2", "--wec-load", "4", "--wec-duration", "14s",
        "--wec-timeout", "5s", "--wec-grace", "5s", "--wec-mix", only(*BASIC)])
    runs.append(run)
    wait_until(lambda: len({r["worker"] for r in log_lines(out)}) == 2 and
               len(log_lines(out)) >= 20, 90, "results of both workers", run.proc)
    run.kill("redis-server")
    back = time.time()
    run.ok_after(back + 2, {"new_order"}, n=2)  # validations need the republished data
    run.kill("challenge-server")
    run.ok_after(time.time(), {"new_order"})
    run.kill("pebble")
    run.ok_after(time.time(), set(BASIC))
    ret, text = run.wait(120)
    summary, results = _outputs(ret, text, out)

    assert ret == pytest.ExitCode.OK, text[-3000:]
    assert "wec: INCOMPLETE" not in text and summary["incomplete"] == []
    events = summary["stack_events"]
    assert [e["part"] for e in events] == ["redis-server", "challenge-server", "pebble"]
    assert all(e["how"] == "killed by SIGKILL" and e["recovered"] for e in events), events
    assert text.count("restarted in ") >= 3
    # the batches Redis lost unread were sent again: received twice, kept once
    assert summary["delivery"]["duplicates"] > 0
    after = {r["worker"] for r in results if r["ok"] and r["chain"] == "new_order"
             and r["started"] > back + 2}
    assert after == {"gw0", "gw1"}, "both workers validate again after Redis came back"
    _accounted(summary, results, out)
    assert summary["totals"]["results_lost"] == 0
    _failures_all_explained(summary)
    _quiet_watch(summary, text)
    run.assert_no_leftovers()


# -- the keeper and the watch, without a run ---------------------------------------------------


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


class _Stack:
    def __init__(self, procs: list[ManagedProcess]) -> None:
        self.procs = procs


def test_keeper_restarts_a_dead_part_a_few_times_then_gives_up(tmp_path: Path) -> None:
    proc = ManagedProcess("challenge-server", ["sleep", "60"], tmp_path / "sleep.log")
    notes: list[str] = []
    ledger = FailureLedger(time.time())
    keeper = StackKeeper(_Stack([proc]), ledger, notes.append, started=lambda: ledger.started,
                         max_restarts=1, interval=0.05)
    keeper.start()
    try:
        first = proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc.pid == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid != first and proc.alive(), "restarted on the same argv"
        os.kill(proc.pid, signal.SIGTERM)
        while len(ledger.stack_events) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        keeper.worker_down("gw7", "Not properly terminated")
    finally:
        keeper.stop()
        proc.stop()
    dead, again = ledger.stack_snapshot()[:2]
    assert (dead["how"], dead["recovered"], dead["restarted"]) == ("killed by SIGKILL", True, True)
    assert (again["how"], again["recovered"]) == ("killed by SIGTERM", False)
    assert not proc.alive() or proc.pid != first
    assert notes[0].startswith(f"wec: stack: challenge-server (pid {first}) killed by SIGKILL")
    assert notes[1].startswith("wec: stack: challenge-server restarted in ")
    assert "not restarted: it died 2 times in this run (1 restarts at most)" in notes[2]
    remote = ledger.stack_snapshot()[2]
    assert (remote["part"], remote["how"]) == ("worker gw7", "went down (Not properly terminated)")
    assert keeper.unrecovered() == [
        f"challenge-server killed by SIGTERM at {_clock(again['at_s'])} and was not restarted",
        f"worker gw7 went down (Not properly terminated) at {_clock(remote['at_s'])}"]
    # a part that stays down takes every later failure; a restarted one only those in flight
    chain: ChainResult = {"chain_id": "c", "chain": "new_order", "worker": "main",
                          "scheduled": 0.0, "started": time.time() + 60, "took": 1.0,
                          "ok": False, "outcome": "failed", "error": "AssertionError: x",
                          "certificates": 0, "requests": []}
    ledger.observe([chain])
    assert ledger.failed_by_cause()["stack_event"] == 1
    assert ledger.stack_snapshot()[1]["chains_failed"] == 1  # the one given up on


@pytest.mark.redis
def test_live_control_is_written_again_when_redis_comes_back_empty(tmp_path: Path) -> None:
    """A target and a stop set from the dashboard live in Redis; a redis-server that died and
    was restarted empty holds neither until the controller writes them again."""
    import asyncio

    proc, url = start_redis(tmp_path)
    ledger = FailureLedger(time.time())
    keeper = StackKeeper(_Stack([proc]), ledger, lambda _line: None,
                         started=lambda: ledger.started, interval=0.05)

    class Session(StackWatch):
        _control = ControlWriter(url, "ns")

    session = Session()
    session.attach_keeper(keeper)

    async def read() -> Control | None:
        reader = ControlReader(url, "ns")
        try:
            return await reader.read()
        finally:
            await reader.aclose()

    keeper.start()
    try:
        session._control.set_target(6)
        session._control.stop()
        assert asyncio.run(read()) == Control(6.0, True)
        first = proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            if proc.pid != first and proc.alive():
                seen = asyncio.run(read())
                if seen == Control(6.0, True):
                    break
            time.sleep(0.05)
        assert proc.pid != first, "redis-server was not restarted"
        assert seen == Control(6.0, True), seen
        assert ledger.stack_snapshot()[0]["recovered"] is True
    finally:
        keeper.stop()
        session._control.close()
        proc.stop()


def _status(worker: str, in_flight: int) -> WorkerStatus:
    return WorkerStatus(worker=worker, session="s-" + worker, t=time.time(),
                        in_flight=in_flight, target_share=0.5, loop_lag_ms=0.0, cpu_pct=1.0,
                        cpu_s=0.1, sent=0, dropped=0, dropped_requests=0, dropped_starts=0,
                        final=False, io="", last_answer=time.time() - 20, waiting={})


@pytest.mark.parametrize(("part", "words"), [
    ("redis-server", "wec: no result arrived for "),
    ("challenge-server", "wec: no chain ended for "),
])
def test_our_own_part_down_is_named_and_neither_the_ca_nor_a_worker_is_blamed(
        part: str, words: str) -> None:
    notes: list[str] = []
    start = time.monotonic() - 30
    watch = Watch(start, notes.append, notes.append, stall_after=10.0, silent_after=10.0)
    now = time.monotonic()
    watch.status(_status("gw0", 4), now - 1)  # no chain ended for 30 s
    watch.status(_status("gw1", 4), now - 1)
    watch.set_down({part: {"how": "killed by SIGKILL", "at_s": 2.0}}, {}, False, now)
    watch.tick(now)
    [wait] = watch.waits
    assert wait["cause"] == part and notes == [wait["message"]]
    assert wait["message"].startswith(words)
    assert f"{part} is down (killed by SIGKILL at 0m02s)" in wait["message"]
    assert watch.stalls == [] and "CA stalled" not in notes[0]
    if part == "redis-server":  # 15 s later: results cannot arrive, no worker went silent
        watch.set_down({part: {"how": "killed by SIGKILL", "at_s": 2.0}}, {}, False, now + 15)
        watch.tick(now + 15)
        assert watch.workers_lost == [] and len(watch.waits) == 1
    # once the part is back and a while passed, silence is the worker's own again
    watch.set_down({}, {part: now}, False, now)
    later = now + 25
    watch.tick(later)
    assert {w["worker"] for w in watch.workers_lost} == {"gw0", "gw1"}


def test_a_dead_worker_is_lost_at_once_with_how_it_died() -> None:
    notes: list[str] = []
    start = time.monotonic() - 5
    watch = Watch(start, notes.append, notes.append, stall_after=10.0, silent_after=10.0)
    watch.status(_status("gw1", 3), start + 4)
    watch.died("gw1", "wec: stack: worker gw1 (pid 9) killed by SIGKILL at 0m04s", start + 4.5)
    [lost] = watch.workers_lost
    assert (lost["worker"], lost["in_flight"], lost["cause"]) == ("gw1", 3, "died")
    assert watch.in_flight() == 0 and notes == []  # the keeper printed it already
    watch.end(start + 20, 1, True)
    assert len(watch.workers_lost) == 1
