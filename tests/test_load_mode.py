"""Load mode end to end: real Pebble, redis-server and challenge server, started by the plugin.

Every test is a whole ``pytest --wec-load``/``--wec-rate`` run in a subprocess (pytester),
with or without xdist, a few seconds of load each; the assertions read what a user reads:
the terminal, summary.json, the results log, benchmark.json and the ``wec`` commands.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _loadruns import BASIC, NEEDS_STACK, chain_names, log_lines, only, wait_until

from pytest_wec.controller.ledger import EXIT_INCOMPLETE
from pytest_wec.controller.resultlog import read_results
from pytest_wec.wire.results import ChainResult

pytestmark = [
    pytest.mark.timeout(180),
    *NEEDS_STACK,
]

BIN = Path(sys.executable).parent
LOADCHAINS = Path(__file__).parent / "loadchains"
RUN_LINE = re.compile(r"^wec: load run (\d{8}-\d{6}-[0-9a-f]{6}): (.*); results in (.+)$")

RUN_KEYS = {"id", "started", "ended", "duration_s", "directory", "workers", "model", "load",
            "rate", "stages", "load_started", "load_ended", "startup_s", "startup", "tail_s",
            "missing_at_start", "pebbles"}
TOTALS_KEYS = {"chains", "chains_ok", "chains_failed", "requests", "requests_failed",
               "chains_per_s", "requests_per_s", "certificates_issued", "dropped_starts"}
STATE_KEYS = {"accounts", "authorizations", "certificates", "revoked"}
GENERATOR_KEYS = {"cpu_s", "max_cpu_pct", "schedule_lag_ms"}
SUMMARY_KEYS = {"schema", "run", "totals", "chains", "endpoints", "errors", "state",
                "generator"}


@dataclass
class Run:
    ret: int
    text: str  # stdout and stderr
    out: Path  # the run directory
    summary: dict[str, Any]
    results: list[ChainResult]

    def by_worker(self) -> Counter[str]:
        return Counter(r["worker"] for r in self.results)


def finish_run(ret: int, text: str, out: Path) -> Run:
    assert "INTERNALERROR" not in text, text
    assert "Traceback" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    log = out / ("results.msgpack" if (out / "results.msgpack").exists() else "results.jsonl")
    results = list(read_results(log))
    t = summary["totals"]
    # totals.chains counts the runs that ended ok or failed; the log has every run
    assert t["chains"] + t["cancelled"] + t["skipped"] == len(results), \
        "every chain run is in the log"
    assert t["chains"] == t["chains_ok"] + t["chains_failed"]
    assert len({r["chain_id"] for r in results}) == len(results)
    return Run(ret, text, out, summary, results)


def load_run(pytester: pytest.Pytester, *args: str, name: str = "run") -> Run:
    out = pytester.path / name
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--wec-out", str(out),
                                           *args, timeout=150)
    text = "\n".join(result.outlines + result.errlines)
    return finish_run(result.ret, text, out)


def assert_chains_ran_well(run: Run) -> None:
    t = run.summary["totals"]
    assert t["chains_failed"] == 0, run.summary["errors"]
    assert t["chains_ok"] > 0
    assert all(r["outcome"] in ("ok", "skipped") for r in run.results), \
        [r["error"] for r in run.results if r["outcome"] not in ("ok", "skipped")]


def children(pid: int) -> dict[int, str]:
    """The live child processes of *pid*: pid -> command line."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class Popened:
    """A pytest run in a subprocess, for signals; its stack processes are recorded."""

    def __init__(self, cwd: Path, args: Sequence[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.kids: dict[int, str] = {}

    def record_children(self) -> None:
        self.kids.update(children(self.proc.pid))

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            data, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, data.decode(errors="replace")

    def kill(self) -> None:
        self.record_children()
        for pid in [self.proc.pid, *self.kids]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate()

    def assert_no_leftovers(self) -> None:
        stack = {pid: cmd for pid, cmd in self.kids.items()
                 if any(k in cmd for k in ("pebble", "redis-server", "challenge_srv"))}
        assert len(stack) >= 3, f"the stack's processes were not seen: {self.kids}"
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in self.kids.items() if alive(pid)}
        assert not left, f"processes of the run outlived it: {left}"


@pytest.fixture
def popen_runs() -> Iterator[list[Popened]]:
    runs: list[Popened] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            run.kill()


def run_cmd(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          check=False)


# -- the closed model ----------------------------------------------------------------------------


def test_closed_model_without_xdist_and_the_outputs(pytester: pytest.Pytester) -> None:
    """-p no:xdist; --wec-out, the run id, summary.json's schema, --wec-mix, wec convert,
    pytest-benchmark compare."""
    left_out = "wildcard"
    mix = only(*BASIC) + ("" if left_out in chain_names() else f",{left_out}=0")
    run = load_run(pytester, "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "--wec-load", "2",
                   "--wec-duration", "5s", "--wec-mix", mix, name="chosen-dir")
    assert run.ret == 0, run.text
    assert_chains_ran_well(run)

    # the run id is printed, and the run directory is the one --wec-out named
    lines = [m for m in map(RUN_LINE.match, run.text.splitlines()) if m]
    assert len(lines) == 1, run.text
    run_id, what, where = lines[0].groups()
    assert what.startswith("load 2 in flight for 5s on 1 worker(s) against https://127.0.0.1:")
    assert Path(where) == run.out
    assert run.summary["run"]["id"] == run_id
    assert f"wec run {run_id}:" in run.text
    for name in ("summary.json", "benchmark.json", "results.jsonl", "pebble.log"):
        assert (run.out / name).is_file(), name
    assert not (pytester.path / "wec-results").exists()

    # summary.json
    s = run.summary
    assert set(s) >= SUMMARY_KEYS, set(s)
    assert s["schema"] == 1
    assert set(s["run"]) == RUN_KEYS
    assert set(s["totals"]) >= TOTALS_KEYS, set(s["totals"])
    assert set(s["state"]) == STATE_KEYS
    assert set(s["generator"]) >= GENERATOR_KEYS, set(s["generator"])
    assert set(s["generator"]["schedule_lag_ms"]) == {"p50", "p99", "max"}
    r, t = s["run"], s["totals"]
    assert (r["model"], r["load"], r["rate"], r["stages"], r["workers"]) == \
        ("closed", 2, None, None, 1)
    assert r["directory"].startswith("https://127.0.0.1:")
    assert r["ended"] > r["started"] and r["duration_s"] == pytest.approx(
        r["ended"] - r["started"], abs=0.01)
    assert all(isinstance(t[k], int) for k in TOTALS_KEYS - {"chains_per_s", "requests_per_s"})
    assert t["chains"] == t["chains_ok"] + t["chains_failed"] + t.get("cancelled", 0) + \
        t.get("skipped", 0)
    assert t["requests"] == sum(len(c["requests"]) for c in run.results)
    assert t["certificates_issued"] == sum(c["certificates"] for c in run.results) > 0
    assert t["dropped_starts"] == 0
    assert s["state"]["accounts"] >= s["chains"]["new_account"]["ok"] > 0
    assert s["state"]["certificates"] == t["certificates_issued"]
    assert sum(e["count"] for e in s["chains"].values()) == t["chains"]
    assert sum(e["count"] for e in s["endpoints"].values()) == t["requests"]
    assert {"newAccount", "newOrder", "finalize"} <= set(s["endpoints"])
    assert s["generator"]["cpu_s"] > 0
    assert {c["worker"] for c in run.results} == {"main"}

    # --wec-mix: only the chains it weighs run
    assert set(s["chains"]) == set(BASIC), set(s["chains"])
    assert left_out not in {c["chain"] for c in run.results}

    # wec convert: jsonl -> msgpack -> jsonl gives the same file
    packed, back = run.out / "results.msgpack", run.out / "back.jsonl"
    done = run_cmd(BIN / "wec", "convert", run.out / "results.jsonl", packed)
    assert done.returncode == 0, done.stderr
    assert f"{t['chains']} chain results" in done.stdout
    done = run_cmd(BIN / "wec", "convert", packed, back)
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == (run.out / "results.jsonl").read_bytes()
    assert packed.read_bytes()[:1] != b"{"
    assert list(read_results(packed)) == run.results

    # pytest-benchmark reads benchmark.json
    done = run_cmd(BIN / "pytest-benchmark", "compare", run.out / "benchmark.json")
    assert done.returncode == 0, done.stdout + done.stderr
    for chain in BASIC:
        assert re.search(rf"^{chain}\b", done.stdout, re.MULTILINE), done.stdout
    assert "newAccount" in done.stdout


def test_closed_model_stages_on_two_workers(pytester: pytest.Pytester) -> None:
    """-n 2: both workers' results in one log and one summary; the stages ramp up and down."""
    run = load_run(pytester, "--pyargs", "pytest_wec_chains", "-n", "2",
                   "--wec-stages", "3s:4,3s:0", "--wec-mix", only(*BASIC))
    assert run.ret == 0, run.text
    assert_chains_ran_well(run)
    s = run.summary
    assert (s["run"]["model"], s["run"]["workers"], s["run"]["load"]) == ("closed", 2, None)
    assert s["run"]["stages"] == [[3.0, 4.0], [3.0, 0.0]]
    assert "stages 3s:4,3s:0 for 6s on 2 worker(s)" in run.text
    per_worker = run.by_worker()
    assert set(per_worker) == {"gw0", "gw1"} and min(per_worker.values()) > 0, per_worker
    assert sum(per_worker.values()) == s["totals"]["chains"]
    assert s["generator"].get("workers", 2) == 2
    assert s["generator"]["io"] == ["HttptoolsTransport on uvloop"]
    # Worker 0 of 2 runs a chain while the rounded total is >= 1 (0.375 s to 5.625 s of the
    # stages), worker 1 while it is >= 2 (1.125 s to 4.875 s): nothing runs at the end.
    spans = []
    for worker in ("gw0", "gw1"):
        starts = sorted(r["started"] for r in run.results if r["worker"] == worker)
        spans.append(starts[-1] - starts[0])
    spans.sort()
    assert spans[0] <= 3.95 and spans[1] <= 5.45, spans


# -- the open model ------------------------------------------------------------------------------


def test_open_model_rate(pytester: pytest.Pytester) -> None:
    """No -n (xdist loaded, no workers); the results log in msgpack; the aiohttp transport on
    the standard asyncio loop (the defaults are httptools on uvloop, as in the other runs)."""
    run = load_run(pytester, "--pyargs", "pytest_wec_chains", "--wec-rate", "5", "--wec-load", "20",
                   "--wec-duration", "6s", "--wec-mix", only("new_account", "new_order"),
                   "--wec-log-format", "msgpack", "--wec-transport", "aiohttp",
                   "--wec-loop", "asyncio")
    assert run.ret == 0, run.text
    assert run.summary["generator"]["io"] == ["AiohttpTransport on asyncio"]
    assert_chains_ran_well(run)
    assert (run.out / "results.msgpack").is_file() and not (run.out / "results.jsonl").exists()
    assert set(run.by_worker()) == {"main"} and run.summary["run"]["workers"] == 1
    assert "1 passed" in run.text and "wec load results" in run.text
    s = run.summary
    assert (s["run"]["model"], s["run"]["rate"], s["run"]["load"]) == ("open", 5.0, 20)
    assert "rate 5/s (cap 20 in flight) for 6s on 1 worker(s)" in run.text
    assert s["totals"]["dropped_starts"] == 0
    scheduled = sorted(r["scheduled"] for r in run.results)
    assert 29 <= len(scheduled) <= 31, len(scheduled)  # 5/s for 6 s
    achieved = (len(scheduled) - 1) / (scheduled[-1] - scheduled[0])
    assert achieved == pytest.approx(5.0, rel=0.03)
    lags = sorted(r["started"] - r["scheduled"] for r in run.results)
    assert lags[0] >= -0.01 and lags[len(lags) // 2] < 0.25, lags
    for entry in s["chains"].values():
        assert "latency_from_scheduled_ms" in entry
    assert s["generator"]["schedule_lag_ms"]["max"] >= 0


# -- errors and the end of a run ---------------------------------------------------------------


@pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")], ids=["no-xdist", "n2"])
def test_unknown_chain_in_the_mix_is_a_usage_error(pytester: pytest.Pytester,
                                                   xdist: tuple[str, str]) -> None:
    out = pytester.path / "never"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--pyargs", "pytest_wec_chains", *xdist, "--wec-load", "1",
        "--wec-duration", "2s", "--wec-mix", "new_account=1,nwe_order=2",
        "--wec-out", str(out), timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in text
    known = ", ".join(sorted(chain_names()))
    result.stderr.fnmatch_lines([f"ERROR: --wec-mix: unknown chain 'nwe_order'; chains: {known}"])
    assert not (out / "summary.json").exists(), "nothing runs on a usage error"


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["no-n", "n2"])
def test_sigint_mid_run_leaves_complete_outputs(pytester: pytest.Pytester,
                                                popen_runs: list[Popened],
                                                xdist: tuple[str, ...]) -> None:
    """The closed model without -n and with -n 2, each ended by SIGINT to pytest alone."""
    out = pytester.path / "interrupted"
    run = Popened(pytester.path, ["--pyargs", "pytest_wec_chains", *xdist, "--wec-load", "2",
                                  "--wec-duration", "60s", "--wec-mix", only(*BASIC),
                                  "--wec-out", str(out)])
    popen_runs.append(run)
    t0 = time.monotonic()
    wait_until(lambda: len(log_lines(out)) >= 5, 60, "results", run.proc)
    time.sleep(max(0.0, 4 - (time.monotonic() - t0)))
    run.record_children()
    run.proc.send_signal(signal.SIGINT)
    stopped, stopped_at = time.monotonic(), time.time()
    ret, text = run.wait(60)
    assert time.monotonic() - stopped < 30, "the run ends soon after the signal"
    assert ret == pytest.ExitCode.INTERRUPTED, text
    if xdist:
        assert "KeyboardInterrupt" in text
    else:
        assert "Interrupted: wec: load run stopped by SIGINT" in text
    assert "wec load results" in text
    done = finish_run(ret, text, out)
    assert done.summary["run"]["duration_s"] < 50
    assert done.summary["totals"]["chains"] > 0
    last_start = max(r["started"] for r in done.results)
    assert last_start - stopped_at < 2.0, "no chain starts once the run was told to stop"
    assert done.summary["workers_lost"] == [], done.summary["workers_lost"]
    assert done.summary["totals"]["chains_failed"] == 0, done.summary["errors"]
    json.loads((out / "benchmark.json").read_text())
    run.assert_no_leftovers()


def test_killed_worker_is_reported_and_its_results_kept(pytester: pytest.Pytester,
                                                       popen_runs: list[Popened]) -> None:
    shutil.copy(LOADCHAINS / "pid_chains.py", pytester.path / "test_pid_chains.py")
    pids, out = pytester.path / "pids", pytester.path / "killed"
    pids.mkdir()
    env = dict(os.environ, WEC_TEST_PIDS=str(pids))
    run = Popened(pytester.path, ["test_pid_chains.py", "-n", "2", "--wec-load", "2",
                                  "--wec-duration", "6s", "--wec-out", str(out)], env=env)
    popen_runs.append(run)

    def victim_reported() -> bool:
        return (pids / "gw0.pid").exists() and (pids / "gw1.pid").exists() and \
            sum(r["worker"] == "gw1" for r in log_lines(out)) >= 3

    wait_until(victim_reported, 60, "results of gw1", run.proc)
    run.record_children()
    victim = int((pids / "gw1.pid").read_text())
    assert victim in run.kids, "the pid file names a worker of this run"
    seen = {r["chain_id"] for r in log_lines(out) if r["worker"] == "gw1"}
    os.kill(victim, signal.SIGKILL)
    ret, text = run.wait(90)
    # a part of the run died without recovery: its own exit status, the reason last
    assert ret == EXIT_INCOMPLETE, text
    assert "worker 'gw1' crashed" in text
    assert "wec load results" in text
    assert text.rstrip().splitlines()[-1].startswith(
        "wec: INCOMPLETE: worker gw1 killed by SIGKILL at "), text[-2000:]
    done = finish_run(ret, text, out)
    # seen within a second, named with its signal: lost at once, not "went silent"
    line = f"wec: stack: worker gw1 (pid {victim}) killed by SIGKILL at "
    assert line in text and "went silent" not in text
    lost = done.summary["workers_lost"]
    assert [(w["worker"], w["cause"]) for w in lost] == [("gw1", "died")], lost
    assert lost[0]["message"].startswith(line)
    [event] = done.summary["stack_events"]
    assert (event["part"], event["signal"], event["recovered"]) == ("worker gw1", "SIGKILL", False)
    kept = {r["chain_id"] for r in done.results if r["worker"] == "gw1"}
    assert seen <= kept, "what the worker sent before it died is in the results log"
    # every chain each worker started (its own journal) is in the log or counted lost
    delivery = done.summary["delivery"]
    for worker in ("gw0", "gw1"):
        journal = (pids / f"{worker}.started").stat().st_size
        mine = delivery["by_worker"][worker]
        assert mine["started"] == journal, (worker, mine, journal)
        assert done.by_worker()[worker] + mine["lost"] == journal, (worker, mine)
    assert delivery["by_worker"]["gw0"]["lost"] == 0
    assert done.summary["totals"]["results_lost"] == delivery["by_worker"]["gw1"]["lost"]
    assert all(r["outcome"] == "ok" for r in done.results)
    assert done.by_worker()["gw0"] > done.by_worker()["gw1"]
    ticks = sorted(r["started"] for r in done.results if r["worker"] == "gw0")
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 2, "gw0 ran on meanwhile"
    run.assert_no_leftovers()


def test_a_resource_limit_runs_and_stops_the_producing_chains(pytester: pytest.Pytester) -> None:
    """``--wec-limit accounts=N`` names a resource, not a chain: the run goes on, and
    new_account stops once the state DB holds N accounts (at most the chains then in
    flight more)."""
    out = pytester.path / "limited"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--pyargs", "pytest_wec_chains", "-p", "no:xdist",
        "--wec-load", "2", "--wec-duration", "3s", "--wec-limit", "accounts=3",
        "--wec-mix", "new_account=1,new_order=3", "--wec-out", str(out), timeout=120)
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.OK, text
    summary = json.loads((out / "summary.json").read_text())
    assert 3 <= summary["state"]["accounts"] <= 3 + 2, summary["state"]
    assert summary["chains"]["new_order"]["count"] > summary["chains"]["new_account"]["count"]
