"""CA events: the embedded Pebble's hang diagnosed from its side, restarted, and counted.

- :func:`~pytest_wec.stack._dump.classify_dump` on real dumps of Debian's Pebble 2.4, trimmed
  (``tests/data``: the goroutines of the lock cycle and a few of the many that wait behind
  it), and on the dump of a healthy Pebble taken here;
- the stack's Pebble probed, dumped and restarted as the product starts it;
- :class:`~pytest_wec.controller.doctor.FailureLedger` counting failures against events;
- whole load runs: Pebble stopped with SIGSTOP (reported, not restarted) and a real deadlock
  provoked by load (diagnosed from the dump, Pebble restarted, the run goes on).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _loadruns import BASIC, NEEDS_STACK, log_lines, only, wait_until

from pytest_wec.controller.ledger import FailureLedger, failure_cause
from pytest_wec.controller.resultlog import read_results
from pytest_wec.errors import StackError
from pytest_wec.settings import Settings
from pytest_wec.stack import Stack
from pytest_wec.stack._dump import classify_dump, dump_text
from pytest_wec.stack._health import probe_pebble, process_state

DATA = Path(__file__).parent / "data"


def NEEDS_STACKS(fn: Any) -> Any:
    for mark in reversed(NEEDS_STACK):
        fn = mark(fn)
    return fn
ACME = "urn:ietf:params:acme:error:"


# -- classify_dump -----------------------------------------------------------------------------


def test_classify_dump_names_the_store_and_authorization_lock_cycle() -> None:
    text = (DATA / "pebble-deadlock-dump.txt").read_text()
    assert text.startswith("Pebble ")  # pebble.log's lines before the dump are skipped
    d = classify_dump(text)
    assert d.kind == "store-authz-deadlock" and d.deadlock
    assert (d.goroutines, d.semacquire) == (10, 8)
    assert d.waiting == {"RLock in MemoryStore.GetAccountByID": 3,
                         "RLock in MemoryStore.FindValidAuthorization": 2,
                         "RLock in MemoryStore.GetAccountByKey": 1,
                         "Lock in MemoryStore.AddCertificate": 1,
                         "queued Lock in MemoryStore.AddChallenge": 1}
    assert d.words == (
        "3 goroutines hold MemoryStore and authorization locks in opposite order "
        "(FindValidAuthorization vs Authz -> GetAccountByKey), a writer "
        "(MemoryStore.AddCertificate) waits for the store's readers, so no new reader gets in, "
        "3 wait in GetAccountByID")


def test_classify_dump_names_a_leaked_authorization_lock() -> None:
    d = classify_dump((DATA / "pebble-leaked-authz-lock-dump.txt").read_text())
    assert d.kind == "leaked-authz-lock" and d.deadlock
    assert d.waiting == {"RLock in Order.GetStatus": 1, "Lock in WebFrontEndImpl.Authz": 1,
                         "Lock in MemoryStore.AddAccount": 1}
    assert "PR #553" in d.words and "MemoryStore.AddAccount" in d.words


def test_classify_dump_without_a_dump_or_a_cycle() -> None:
    assert classify_dump("Pebble 2026/12/02 05:00:04 GET /dir -> calling handler()\n").kind \
        == "no-dump"
    assert dump_text("no dump here") == ""
    # the cycle's goroutines alone, without the other side, are no deadlock
    text = (DATA / "pebble-deadlock-dump.txt").read_text()
    one_side = "\n\n".join(b for b in text.split("\n\n") if "validPOSTAsGET" not in b)
    d = classify_dump(one_side)
    assert d.kind == "unknown" and not d.deadlock
    assert d.words.startswith("no known lock cycle: 7 of 9 goroutines wait on a lock")


# -- the stack's Pebble: probed, dumped, restarted ---------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The embedded stack, started as a run starts it."""
    s = Stack.start(Settings(), tmp_path, "doctor")
    try:
        yield s
    finally:
        s.stop()


def _roots(stack: Stack) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    mgmt = stack.info["pebble_management"]
    assert mgmt is not None
    with urllib.request.urlopen(f"{mgmt}/roots/0", context=ctx, timeout=5) as resp:
        return bytes(resp.read())


@pytest.mark.timeout(120)
@NEEDS_STACKS
def test_pebble_probed_dumped_and_restarted_on_the_same_addresses(stack: Stack) -> None:
    info, proc = stack.info, stack.pebble
    assert proc is not None
    probe = probe_pebble(info["directory"], info["ca_bundle"], proc.pid)
    assert probe.answers_get and probe.answers_post and probe.state in ("S", "R")
    assert (probe.post_status, probe.post_problem) == (400, ACME + "accountDoesNotExist")
    roots, pid = _roots(stack), proc.pid

    # SIGQUIT: Go prints every goroutine and exits; an idle Pebble waits on no lock
    exited, dump = stack.dump_pebble(10)
    assert exited and dump.startswith("SIGQUIT: quit")
    d = classify_dump(dump)
    assert d.kind == "unknown" and d.semacquire == 0 and d.goroutines > 3, d
    assert not probe_pebble(info["directory"], info["ca_bundle"], pid, get_timeout=1).answers_get

    took = stack.restart_pebble()
    assert 0 < took < 20 and proc.pid != pid and proc.alive()
    again = probe_pebble(info["directory"], info["ca_bundle"], proc.pid)
    assert again.answers_post, again  # the same URL and CA bundle: same addresses, WFE cert
    assert _roots(stack) != roots  # Pebble's issuing roots are new
    text = Path(info["run_dir"], "pebble.log").read_text()
    assert text.count("Starting Pebble ACME server") == 2
    assert "--- wec: pebble restarted (1) at " in text
    assert "SIGQUIT: quit" not in proc.log_since_start()  # the part after the last start
    assert process_state(pid) == (None, None)

    stack.stop()
    assert not proc.alive()
    with pytest.raises(StackError, match="stopped; not restarted"):
        stack.restart_pebble()


@pytest.mark.timeout(60)
@NEEDS_STACKS
def test_a_stopped_pebble_is_seen_stopped_within_the_probes_timeouts(stack: Stack) -> None:
    info, proc = stack.info, stack.pebble
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        probe = probe_pebble(info["directory"], info["ca_bundle"], proc.pid, get_timeout=1)
        took = time.monotonic() - t
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert probe.stopped and not probe.answers_get and probe.cpu_s == 0, probe
    assert probe.error is not None and probe.error.startswith("GET /dir")
    assert took < 3
    assert probe_pebble(info["directory"], info["ca_bundle"], proc.pid).answers_post


# -- the ledger --------------------------------------------------------------------------------


def _chain(start: float, took: float, *, ok: bool = False, outcome: str = "failed",
           status: int = 0, error: str | None = None, problem: str | None = None,
           method: str = "POST", chain_error: str | None = None,
           request_ok: bool | None = None) -> Any:
    req = {"chain_id": "c", "chain": "x", "endpoint": "newOrder", "method": method,
           "status": status, "started": start, "took": took,
           "ok": ok if request_ok is None else request_ok, "error": error, "problem": problem}
    return {"chain_id": f"c{start}", "chain": "x", "worker": "w", "scheduled": start,
            "started": start, "took": took, "ok": ok, "outcome": outcome,
            "error": chain_error, "certificates": 0, "requests": [req]}


def test_failure_cause() -> None:
    assert failure_cause(_chain(0, 3, error="timeout")) == ("no_answer", "timeout")
    assert failure_cause(_chain(0, 1, error="connect")) == ("no_answer", "connect")
    assert failure_cause(_chain(0, 1, status=400, error="problem",
                                problem=ACME + "badNonce")) == ("ca_answer", "badNonce")
    assert failure_cause(_chain(0, 1, status=500, error="http")) == ("ca_answer", "HTTP 500")
    assert failure_cause(_chain(0, 1, status=200, request_ok=True,
                                chain_error="AssertionError: x")) == ("ours", "AssertionError")
    assert failure_cause(_chain(0, 1, request_ok=True, chain_error=ACME + "unauthorized :: no")) \
        == ("ca_answer", "unauthorized")
    assert failure_cause(_chain(0, 1, outcome="cancelled")) == ("cancelled", "cancelled")


def test_ledger_counts_failures_against_the_event_they_belong_to() -> None:
    t = time.time() - 60  # second 0 of the run (failures older than a few minutes are dropped)
    led = FailureLedger(t)
    led.observe([_chain(t + 0.5, 0.5, ok=True, status=201)])  # a POST answered at t+1
    led.observe([_chain(t + 2, 3, error="timeout"),  # no answer; before the event is known
                 _chain(t + 2.5, 0.5, status=400, error="problem", problem=ACME + "badNonce"),
                 _chain(t + 3, 1, status=200, method="GET", request_ok=True,
                        chain_error="AssertionError: x")])
    assert led.quiet(t + 6) == (3.0, 1)  # since the badNonce answer; one timed out after it
    i = led.record({"kind": "deadlock"}, since=t + 1)  # counts what it explains, backwards
    assert led.failed_by_cause() == {"ca_answer": 1, "ca_event": 1, "stack_event": 0,
                                     "no_answer": 0, "ours": 1}
    led.close(i, t + 10.5 + 3)  # restarted at t+10.5, plus the timeout
    led.answered_again(t + 10.5)
    led.record({"kind": "restart"}, since=t + 10, restart_at=t + 10.5)
    led.observe([_chain(t + 11, 1, status=400, error="problem",
                        problem=ACME + "accountDoesNotExist"),  # forgotten by the restart
                 _chain(t + 11, 1, error="connect"),  # a connection to the old Pebble
                 _chain(t + 10, 1, outcome="cancelled"),
                 _chain(t + 17, 3, error="timeout")])  # long after: no event's
    assert led.failed_by_cause() == {"ca_answer": 1, "ca_event": 3, "stack_event": 0,
                                     "no_answer": 1, "ours": 1}
    deadlock, restart = led.snapshot()
    assert deadlock["chains_failed"] == 3
    assert deadlock["failed_by_error"] == {"timeout": 1, "connect": 1, "cancelled": 1}
    assert restart["chains_failed"] == 1
    assert restart["failed_by_error"] == {"accountDoesNotExist": 1}
    assert led.quiet(t + 22) == (10.0, 1)  # the accountDoesNotExist answer, then a timeout


# -- whole load runs -----------------------------------------------------------------------------


def _run(cwd: Path, args: list[str], timeout: float,
         during: Any = None) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        if during is not None:
            during(proc)
        data, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, data.decode(errors="replace")


def _pebble_pids(out: Path) -> list[int]:
    """The Pebbles started with this run's config."""
    config = str(out / "pebble-config.json")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if config.encode() in argv and process_state(int(entry.name))[0] not in ("Z", None):
                pids.append(int(entry.name))
    return pids


def _outputs(out: Path, text: str) -> tuple[dict[str, Any], list[Any]]:
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    results = list(read_results(out / "results.jsonl"))
    by = summary["failed_by_cause"]
    assert sum(by.values()) == summary["totals"]["chains_failed"], by
    events = summary["ca_events"]
    assert by["ca_event"] == sum(e["chains_failed"] - e["failed_by_error"].get("cancelled", 0)
                                 for e in events)
    report = (out / "report.html").read_text()
    assert 'id="ca-events-section"' in report
    for e in events:
        assert e["message"] in text  # one terminal line each, as it happened
        assert json.dumps(e["kind"]) in report
    return summary, results


@pytest.mark.timeout(300)
@NEEDS_STACKS
def test_stopped_pebble_is_reported_and_not_restarted(pytester: pytest.Pytester) -> None:
    """Pebble SIGSTOPped for 12 s mid-run: one ``stopped`` event, proved from /proc and a
    probe that gets no answer; the same Pebble goes on once continued."""
    out = pytester.path / "stopped"
    seen: dict[str, Any] = {}

    def stop_for_a_while(proc: subprocess.Popen[bytes]) -> None:
        wait_until(lambda: len(log_lines(out)) >= 20, 60, "20 results", proc)
        [pid] = _pebble_pids(out)
        seen["pid"] = pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(12)
        finally:
            os.kill(pid, signal.SIGCONT)
        seen["resumed"] = time.time()
        seen["after"] = _pebble_pids(out)

    ret, text = _run(pytester.path, [
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "--wec-load", "3",
        "--wec-duration", "22s",
        "--wec-grace", "5s", "--wec-timeout", "3s", "--wec-mix", only(*BASIC),
        "--wec-out", str(out)], 120, stop_for_a_while)
    assert ret == pytest.ExitCode.OK, text
    summary, results = _outputs(out, text)
    [ev] = summary["ca_events"]
    assert ev["kind"] == "stopped", ev
    assert ev["diagnosis"].startswith("Pebble is stopped (SIGSTOP?) and answers nothing")
    assert ev["probe"]["state"] == "T" and ev["probe"]["dir_ms"] is None
    assert ev["dump"] is None and ev["duration_s"] >= 8 and ev["in_flight"] > 0
    assert ev["chains_failed"] > 0 and set(ev["failed_by_error"]) <= {"timeout", "connect"}
    assert seen["after"] == [seen["pid"]], "the same Pebble: not restarted"
    assert "wec: CA event: stopped at " in text and "; not restarted: " in ev["diagnosis"]
    assert "restarted" not in (out / "pebble.log").read_text()
    assert any(c["ok"] and c["started"] > seen["resumed"] for c in results)


@pytest.mark.timeout(300)
@NEEDS_STACKS
def test_deadlocked_pebble_is_diagnosed_restarted_and_the_run_goes_on(
        pytester: pytest.Pytester) -> None:
    """Debian's Pebble 2.4 deadlocks within seconds at this rate of new_certificate chains
    (see the module's doc); every try so far deadlocked at least once in 30 s."""
    # A deadlock in the run's last seconds leaves no load after its restart to show that the
    # run went on; such a run is made again, once, with its directory kept as deadlock.late.
    for attempt in range(2):
        out = pytester.path / "deadlock"
        if out.exists():
            out.rename(pytester.path / "deadlock.late")
        # more than two cores can serve, on purpose: the rate is missed and the generator
        # saturated, which the gate accepts here (the test is of the doctor, not the generator)
        ret, text = _run(pytester.path, [
            "--pyargs", "pytest_wec_chains", "-n", "2", "--wec-rate", "250", "--wec-load", "200",
            "--wec-mix", "new_account=1,new_certificate=3", "--wec-duration", "30s",
            "--wec-pebbles", "1", "--wec-timeout", "3s", "--wec-allow-saturated",
            "--wec-out", str(out)], 180)
        assert ret == pytest.ExitCode.OK, text
        summary, results = _outputs(out, text)
        events = summary["ca_events"]
        deadlocks = [i for i, e in enumerate(events) if e["kind"] == "deadlock"]
        assert deadlocks, (events, text[-3000:])
        run = summary["run"]
        # the first deadlock whose restart leaves at least 5 s of load
        judged = [i for i in deadlocks
                  if run["load_started"] + events[i]["at_s"] + 5 < run["load_ended"] - 5]
        if judged or attempt == 1:
            break
    assert judged, ("every deadlock came in the last seconds of the load, twice", events)
    i = judged[0]
    ev = events[i]
    restart = next(e for e in events[i + 1:] if e["kind"] == "restart" and e.get("of") == i)
    assert ev["classification"] in ("store-authz-deadlock", "leaked-authz-lock")
    assert ev["diagnosis"].startswith("embedded Pebble deadlocked: ")
    assert "POST newAccount no answer" in ev["diagnosis"]  # proved from Pebble's side
    assert "restarted in " in ev["diagnosis"] and ev["restart_s"] < 20
    assert ev["dump"] and classify_dump((out / ev["dump"]).read_text()).deadlock
    assert ev["lost"].startswith("Pebble's state: every account")
    assert ev["chains_failed"] > 0 and ev["in_flight"] > 0
    assert restart["kind"] == "restart" and restart["ok"] and restart["of"] == i
    assert "wec: CA event: deadlock at " in text and "wec: CA event: restart at " in text
    assert "failed chains by cause: " in text
    restarted = run["load_started"] + restart["at_s"] + restart["restart_s"]
    # up to the next deadlock (whose chains in flight it fails), or the end of the load
    following = [run["load_started"] + e["at_s"] for e in events[i + 1:]
                 if e["kind"] == "deadlock"]
    until = min(following, default=run["load_ended"])
    after = [c for c in results if c["ok"] and restarted < c["started"] < until]
    assert {c["chain"] for c in after} == {"new_account", "new_certificate"}, \
        (len(after), restarted, until, events)
    assert len([e for e in events if e["kind"] == "restart"]) <= 5
