"""Reliability: a load run keeps measuring through faults, loses no result, never hangs.

Every test is a whole ``pytest --wec-load`` run in a subprocess, a few seconds of load each,
with a fault injected from outside: a hostile CA (:mod:`pytest_wec.testing.hostile_ca`),
the embedded Pebble stopped (SIGSTOP), SIGTERM to pytest, Pebble rejecting nonces (parts of
the stack killed: ``tests/test_stack_deaths.py``). The assertions read what a user reads:
the exit status, the terminal, summary.json, the results log, the state DB and the run
directory.
"""

from __future__ import annotations

import base64
import inspect
import itertools
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _loadruns import BASIC, NEEDS_STACK, log_lines, only, wait_until

from pytest_wec.acme import AcmeNetwork
from pytest_wec.controller.resultlog import read_results
from pytest_wec.wire.results import ChainResult

pytestmark = [
    pytest.mark.timeout(300),
    *NEEDS_STACK,
]

ACME = "urn:ietf:params:acme:error:"
STACK_NAMES = ("pebble", "redis-server", "challenge_srv")


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def descendants(pid: int) -> dict[int, str]:
    """Every live process below *pid*: pid -> command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = " ".join(cmdline(child))
                todo.append(child)
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Popened:
    """A pytest load run in a subprocess; what ran below it is recorded as it runs."""

    def __init__(self, cwd: Path, args: Sequence[str],
                 env: dict[str, str] | None = None) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.kids: dict[int, str] = {}
        self.peak_rss: dict[int, float] = {}
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def record_children(self) -> dict[int, str]:
        now = descendants(self.proc.pid)
        # a process that exited and is not reaped yet reads as an empty command line: keep
        # what it was seen as
        self.kids.update({pid: cmd for pid, cmd in now.items() if cmd or pid not in self.kids})
        return now

    def watch(self, every: float = 0.2) -> None:
        """Sample the processes and their resident memory until the run ends."""

        def loop() -> None:
            while not self._watching.wait(every) and self.proc.poll() is None:
                for pid in [self.proc.pid, *self.record_children()]:
                    self.peak_rss[pid] = max(self.peak_rss.get(pid, 0.0), rss_mb(pid))

        self._watcher = threading.Thread(target=loop, daemon=True)
        self._watcher.start()

    def stack_pid(self, name: str) -> int:
        for pid, cmd in self.record_children().items():
            if name in cmd:
                return pid
        raise AssertionError(f"no {name} process below the run: {self.kids}")

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            data, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._watching.set()
            if self._watcher is not None:
                self._watcher.join(5)
        return self.proc.returncode, data.decode(errors="replace")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def kill(self) -> None:
        self.record_children()
        for pid in [self.proc.pid, *self.kids]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate()

    def assert_no_leftovers(self) -> None:
        stack = {pid: cmd for pid, cmd in self.kids.items()
                 if any(k in cmd for k in STACK_NAMES)}
        assert len(stack) >= 3, f"the stack's processes were not seen: {self.kids}"
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in self.kids.items() if alive(pid)}
        assert not left, f"processes of the run outlived it: {left}"


@pytest.fixture
def runs() -> Iterator[list[Popened]]:
    started: list[Popened] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.kill()


@pytest.fixture
def own_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; killed at its end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@dataclass
class Done:
    ret: int
    text: str
    out: Path
    summary: dict[str, Any]
    results: list[ChainResult]

    def request_errors(self, endpoint: str) -> Counter[str]:
        """Failed requests of *endpoint* in summary.json's errors, by type."""
        counts: Counter[str] = Counter()
        for e in self.summary["errors"]:
            if e["endpoint"] == endpoint:
                counts[e["type"]] += e["count"]
        return counts

    def chain_errors(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for e in self.summary["errors"]:
            if e["endpoint"] is None:
                counts[e["type"]] += e["count"]
        return counts


def finish(ret: int, text: str, out: Path) -> Done:
    """Outputs complete and consistent: summary.json, the results log, benchmark.json."""
    assert "INTERNALERROR" not in text, text
    assert "Traceback" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    json.loads((out / "benchmark.json").read_text())
    assert (out / "report.html").stat().st_size > 0
    results = list(read_results(out / "results.jsonl"))
    t = summary["totals"]
    assert t["chains"] == t["chains_ok"] + t["chains_failed"]
    assert t["chains"] + t["cancelled"] + t["skipped"] == len(results), \
        "every chain of the log is counted"
    assert len({r["chain_id"] for r in results}) == len(results)
    assert summary["totals"]["requests"] == sum(len(r["requests"]) for r in results)
    return Done(ret, text, out, summary, results)


def get_json(url: str, ca: Path | None = None, timeout: float = 2.0) -> Any:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
        return json.loads(resp.read())


# -- a hostile CA ------------------------------------------------------------------------------


@pytest.fixture
def hostile_ca(own_procs: list[subprocess.Popen[bytes]]) -> str:
    """The hostile CA in its own process; its directory URL."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest_wec.testing.hostile_ca"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    own_procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.match(r"^hostile CA (http://127\.0\.0\.1:\d+/dir)$", line.strip())
    assert match, line
    return match.group(1)


#: what each misbehaviour of the hostile CA's newAccount is counted as (RequestResult error
#: or, for a problem document, its type)
POST_ERROR = {"invalid-json": "badBody", "wrong-type": "badBody", "no-nonce": "badBody",
              "huge": "tooLarge", "endless": "timeout", "stall": "timeout",
              "error-500": "http", "rate-limited": ACME + "rateLimited"}
#: the same for newNonce
NONCE_ERROR = {"bad-nonce": "badBody", "no-nonce": "badBody"}
#: the chain's error type (summary.json errors without an endpoint) for each request error
CHAIN_ERROR = {"badBody": "AcmeProtocolError", "tooLarge": "AcmeBodyTooLarge",
               "timeout": "AcmeTimeout", "http": "AcmeUnexpectedStatus"}


def test_hostile_ca_every_misbehaviour_is_classified(pytester: pytest.Pytester,
                                                     runs: list[Popened],
                                                     hostile_ca: str) -> None:
    """Invalid JSON, wrong Content-Type, a 50 MiB body, an endless body, bad and missing
    Replay-Nonce, 500, 429 with Retry-After and a request never answered: each is a
    classified error, the run ends on time, and memory stays bounded."""
    out = pytester.path / "hostile"
    duration, grace = 6.0, 5.0
    run = Popened(pytester.path, [
        "--pyargs", "pytest_wec_chains", "-n", "1", "--wec-load", "4",
        "--wec-duration", f"{duration:g}s",
        "--wec-grace", f"{grace:g}s", "--wec-timeout", "2s", "--wec-directory", hostile_ca,
        "--wec-insecure", "--wec-mix", only("new_account"), "--wec-out", str(out)])
    runs.append(run)
    run.watch()
    ret, text = run.wait(120)
    took = run.elapsed()
    done = finish(ret, text, out)
    stats = get_json(hostile_ca.replace("/dir", "/stats"))

    # a completed run: the failures are results, not a failed or hung pytest
    assert ret == pytest.ExitCode.OK, text
    assert "1 passed" in text and "wec load results" in text
    assert took < duration + grace + 30, f"the run took {took:.1f}s"
    assert done.summary["run"]["duration_s"] < duration + grace

    # every misbehaviour was met, and each failed request is counted under its class
    account, nonce = Counter(stats["newAccount"]), Counter(stats["newNonce"])
    assert set(account) == set(POST_ERROR) | {"ok"}, account
    assert set(nonce) == set(NONCE_ERROR) | {"good"}, nonce
    expected: Counter[str] = Counter()
    for mode, n in account.items():
        if mode != "ok":
            expected[POST_ERROR[mode]] += n
    assert done.request_errors("newAccount") == expected, (account, done.summary["errors"])
    expected_nonce: Counter[str] = Counter()
    for mode, n in nonce.items():
        if mode != "good":
            expected_nonce[NONCE_ERROR[mode]] += n
    assert done.request_errors("newNonce") == expected_nonce, (nonce, done.summary["errors"])
    endpoints = done.summary["endpoints"]
    assert endpoints["newAccount"]["count"] == account.total()
    assert endpoints["newAccount"]["ok"] == account["ok"]
    assert endpoints["newNonce"]["count"] == nonce.total()

    # a 429 with Retry-After is retried after the delay; the chain may still succeed
    for r in done.results:
        reqs = r["requests"]
        for a, b in itertools.pairwise(reqs):
            if a["problem"] == ACME + "rateLimited":
                assert b["endpoint"] in ("newNonce", "newAccount")
                assert b["started"] - a["started"] >= 1.0
    # the chains fail with the client's error classes, by name
    chain_errors = done.chain_errors()
    assert set(chain_errors) <= set(CHAIN_ERROR.values()) | {ACME + "rateLimited"}, \
        chain_errors
    assert {"AcmeProtocolError", "AcmeBodyTooLarge", "AcmeTimeout",
            "AcmeUnexpectedStatus"} <= set(chain_errors)
    assert done.summary["totals"]["chains_ok"] > 0
    assert done.summary["totals"]["chains_failed"] == chain_errors.total()

    # neither the controller nor the worker read a huge or endless body into memory
    controller = run.proc.pid
    workers = [p for p, cmd in run.kids.items() if "python" in cmd and "challenge_srv" not in cmd]
    assert workers, run.kids
    for pid in [controller, *workers]:
        assert 0 < run.peak_rss.get(pid, 0) < 400, (pid, run.kids.get(pid), run.peak_rss)


# -- the embedded Pebble stopped -----------------------------------------------------------


@dataclass
class Pebble:
    """The run's Pebble as the stack started it."""

    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    directory: str
    ca: Path

    @classmethod
    def of(cls, run: Popened, out: Path) -> Pebble:
        config = out / "pebble-config.json"
        pid = run.stack_pid(str(config))
        raw_env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in raw_env if b"=" in e)
        listen = json.loads(config.read_text())["pebble"]["listenAddress"]
        return cls(pid, cmdline(pid), env, os.readlink(f"/proc/{pid}/cwd"),
                   f"https://{listen}/dir", out / "pebble-ca.pem")

    def answers(self) -> bool:
        try:
            get_json(self.directory, self.ca, timeout=1)
        except OSError:
            return False
        return True


def wait_for_results(run: Popened, out: Path, n: int, at_least: float) -> None:
    """Until *n* chains are in the results log and the run has lasted *at_least* seconds."""
    wait_until(lambda: len(log_lines(out)) >= n, 60, f"{n} results", run.proc)
    wait_until(lambda: run.elapsed() >= at_least, 60, "the run's first seconds", run.proc)


def test_pebble_stopped_is_a_stall(pytester: pytest.Pytester, runs: list[Popened]) -> None:
    """Pebble SIGSTOPped for 13 s: requests time out and are counted, the stall is reported,
    and the run still ends on time."""
    out = pytester.path / "stopped"
    duration, grace = 18.0, 5.0
    run = Popened(pytester.path, [
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "--wec-load", "3",
        "--wec-duration", f"{duration:g}s", "--wec-grace", f"{grace:g}s",
        "--wec-timeout", "3s", "--wec-mix", only(*BASIC), "--wec-out", str(out)])
    runs.append(run)
    wait_for_results(run, out, 20, 5)
    pebble = Pebble.of(run, out)
    os.kill(pebble.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        time.sleep(13)  # the stall watch looks every 2 s for 10 s without an answer
    finally:
        os.kill(pebble.pid, signal.SIGCONT)
    resumed_at = time.time()
    ret, text = run.wait(90)
    done = finish(ret, text, out)

    assert ret == pytest.ExitCode.OK, text
    assert done.summary["run"]["duration_s"] <= duration + grace
    assert run.elapsed() < duration + grace + 30
    timeouts = [r for c in done.results for r in c["requests"] if r["error"] == "timeout"]
    assert timeouts, done.summary["errors"]
    assert all(stopped_at - 0.5 <= r["started"] <= resumed_at for r in timeouts)
    assert all(2.9 <= r["took"] < 4 for r in timeouts)
    assert any(e["type"] == "timeout" for e in done.summary["errors"])
    assert "AcmeTimeout" in done.chain_errors()
    [stall] = done.summary["stalls"]
    assert stall["in_flight"] > 0 and stall["duration_s"] >= 5, stall
    assert "wec: CA stalled" in text
    assert stall["message"] in done.summary["warnings"]
    assert any(c["ok"] and c["started"] > resumed_at for c in done.results), \
        "chains succeed again once Pebble answers"


# -- SIGTERM to pytest -------------------------------------------------------------------------


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["no-n", "n2"])
def test_sigterm_mid_run_leaves_complete_outputs_and_no_process(
        pytester: pytest.Pytester, runs: list[Popened], xdist: tuple[str, ...]) -> None:
    """SIGTERM to the pytest process alone ends the run as Ctrl-C does: outputs complete
    and valid, and nothing of the run (Pebble, redis-server, the challenge server, workers)
    outlives it."""
    out = pytester.path / "terminated"
    run = Popened(pytester.path, ["--pyargs", "pytest_wec_chains", *xdist, "--wec-load", "2",
                                  "--wec-duration", "60s", "--wec-mix", only(*BASIC),
                                  "--wec-out", str(out)])
    runs.append(run)
    wait_for_results(run, out, 10, 5)
    run.record_children()
    run.proc.send_signal(signal.SIGTERM)
    signalled, signalled_at = time.monotonic(), time.time()
    ret, text = run.wait(60)
    assert time.monotonic() - signalled < 30, "the run ends soon after the signal"
    assert ret == pytest.ExitCode.INTERRUPTED, text
    if not xdist:
        assert "Interrupted: wec: load run stopped by SIGTERM" in text
    assert "wec load results" in text
    done = finish(ret, text, out)
    assert done.summary["totals"]["chains"] > 0
    assert done.summary["run"]["duration_s"] < 50
    assert max(r["started"] for r in done.results) - signalled_at < 2.0, \
        "no chain starts once the run was told to stop"
    assert done.summary["totals"]["chains_failed"] == 0, done.summary["errors"]
    assert done.summary["workers_lost"] == [], done.summary["workers_lost"]
    if xdist:
        assert set(Counter(r["worker"] for r in done.results)) == {"gw0", "gw1"}
    run.assert_no_leftovers()


# -- Pebble rejecting nonces; no private key in what a run writes ------------------------------

#: chains that make accounts, orders and certificates and change an account's key
KEYED = (*BASIC, "key_rollover", "revoke_certificate")


@pytest.fixture(scope="module")
def nonce_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Done]:
    """A short run against a Pebble that rejects half the nonces, with the plugin's own
    DEBUG log written to the run directory."""
    cwd = tmp_path_factory.mktemp("noncereject")
    out = cwd / "run"
    env = dict(os.environ, PEBBLE_WFE_NONCEREJECT="50")
    run = Popened(cwd, ["--pyargs", "pytest_wec_chains", "-p", "no:xdist", "--wec-load", "3",
                        "--wec-duration", "6s", "--wec-mix", only(*KEYED), "--wec-out",
                        str(out), "--log-file", str(out / "pytest.log"),
                        "--log-file-level", "DEBUG"], env=env)
    try:
        ret, text = run.wait(120)
    finally:
        if run.proc.poll() is None:
            run.kill()
    yield finish(ret, text, out)


def test_bad_nonces_are_retried_and_counted(nonce_run: Done) -> None:
    """PEBBLE_WFE_NONCEREJECT=50: every rejected attempt is a failed request counted as
    badNonce, retried with the nonce the rejection carried, and chains still succeed."""
    done = nonce_run
    assert done.ret == pytest.ExitCode.OK, done.text
    assert "PEBBLE_WFE_NONCEREJECT" not in done.text
    t = done.summary["totals"]
    assert t["chains"] > 20 and t["chains_ok"] >= 0.95 * t["chains"], done.summary["errors"]
    assert t["certificates_issued"] > 0
    bad_nonce = ACME + "badNonce"
    rejected = 0
    for c in done.results:
        reqs = c["requests"]
        for i, r in enumerate(reqs):
            if r["problem"] != bad_nonce:
                continue
            rejected += 1
            assert (r["ok"], r["error"], r["status"], r["method"]) == \
                (False, "problem", 400, "POST")
            if c["ok"]:  # the retry follows at once, to the same resource
                assert reqs[i + 1]["endpoint"] == r["endpoint"], reqs
    counted: Counter[str] = Counter()
    for e in done.summary["errors"]:
        if e["type"] == bad_nonce and e["endpoint"] is not None:
            counted[e["endpoint"]] += e["count"]
    assert counted.total() == rejected > 0
    assert {"newAccount", "newOrder"} <= set(counted), counted
    assert t["requests_failed"] >= rejected
    retries = inspect.signature(AcmeNetwork).parameters["max_nonce_retries"].default
    for c in done.results:  # the retries are bounded: a chain fails after 1 + N rejections
        if c["outcome"] == "failed":
            assert (c["error"] or "").startswith(bad_nonce), c["error"]
            trailing = itertools.takewhile(lambda r: r["problem"] == bad_nonce,
                                           reversed(c["requests"]))
            assert len(list(trailing)) == retries + 1
    for name in ("newAccount", "newOrder", "finalize"):
        ep = done.summary["endpoints"][name]
        assert ep["failed"] > 0 and ep["ok"] > 0, (name, ep)


def _pem_body(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _private_scalar(pem: str) -> str:
    """The private part of a key as a JWK would carry it (``d``, base64url)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem.encode(), None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        d = key.private_numbers().private_value
        size = (key.curve.key_size + 7) // 8
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        d = key.private_numbers().d
        size = (key.key_size + 7) // 8
    return base64.urlsafe_b64encode(d.to_bytes(size, "big")).rstrip(b"=").decode()


def test_private_keys_never_leave_the_state_db(nonce_run: Done) -> None:
    """No file the run wrote holds a private key but the state DB (0600) and Pebble's own
    TLS key: neither a PEM, nor the base64 of an account or certificate key, nor a JWK's
    private ``d``."""
    out = nonce_run.out
    db = sqlite3.connect(out / "state.db")
    try:
        account_keys = [r[0] for r in db.execute("SELECT key_pem FROM wec_accounts")]
        cert_keys = [r[0] for r in db.execute("SELECT key_pem FROM wec_certificates")]
    finally:
        db.close()
    assert len(account_keys) > 5 and len(cert_keys) > 0
    secrets_ = {line for pem in account_keys + cert_keys for line in _pem_body(pem)
                if len(line) >= 32}
    secrets_ |= {_private_scalar(pem) for pem in account_keys + cert_keys}
    secrets_ |= {"".join(_pem_body(pem)) for pem in account_keys + cert_keys}

    files = [p for p in out.iterdir() if p.is_file() and not p.name.startswith("state.db")
             and not re.fullmatch(r"pebble-.*\.(pem|key)", p.name)]
    names = {p.name for p in files}
    assert {"results.jsonl", "summary.json", "report.html", "benchmark.json", "pytest.log",
            "pebble.log", "redis.log", "challenge-server.log"} <= names, names
    assert (out / "pytest.log").stat().st_size > 0
    for path in files:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        for secret in secrets_:
            assert secret.encode() not in data, f"{path.name} holds a private key"
    assert "PRIVATE KEY" not in nonce_run.text
    assert (out / "state.db").stat().st_mode & 0o777 == 0o600


# -- what counts as a stall --------------------------------------------------------------------


def _chain(k: int, status: int, error: str | None) -> ChainResult:
    now = time.time()
    cid = f"gw0-{k}"
    ok = error is None
    return {"chain_id": cid, "chain": "new_order", "worker": "gw0", "scheduled": now - 3,
            "started": now - 3, "took": 3.0, "ok": ok, "outcome": "ok" if ok else "failed",
            "error": None if ok else f"AcmeError: {error}", "certificates": 0,
            "requests": [
                {"chain_id": cid, "chain": "new_order", "endpoint": "newNonce",
                 "method": "GET", "status": 204, "started": now - 3, "took": 0.001,
                 "ok": True, "error": None, "problem": None},
                {"chain_id": cid, "chain": "new_order", "endpoint": "newOrder",
                 "method": "POST", "status": status, "started": now - 2.9, "took": 2.9,
                 "ok": ok, "error": error, "problem": None}]}


def test_chains_ending_without_an_answer_do_not_end_a_stall(redis_url: str,
                                                             tmp_path: Path) -> None:
    """Chains that fail on a timeout or a refused connection keep finishing while the CA
    answers nothing: that is a stall. A chain failed on an HTTP answer ends it."""
    import asyncio
    import uuid

    from pytest_wec.controller.collector import LoadSession
    from pytest_wec.settings import Settings
    from pytest_wec.wire.sink import ResultSink

    lines: list[str] = []
    ls = LoadSession(Settings(load=3, duration=5.0), tmp_path, "20261128-000000-abcdef",
                     redis_url, uuid.uuid4().hex, "https://ca.test/dir", 1, lines.append,
                     progress_interval=0.1, stall_after=0.8)
    ls.start()

    async def worker() -> None:
        async with ResultSink(redis_url, ls.namespace, "gw0", flush_interval=0.05,
                              heartbeat_interval=0.1) as sink:
            sink.set_status(in_flight=3)
            for k in range(16):  # 1.6 s of chains failing without an answer
                sink.add(_chain(k, 0, "timeout" if k % 2 else "connect"))
                await asyncio.sleep(0.1)
            sink.add(_chain(99, 500, "http"))  # an answer, if an error
            await asyncio.sleep(0.3)
            sink.set_status(in_flight=0)
            await asyncio.sleep(0.2)

    asyncio.run(worker())
    summary = ls.finish(timeout=10)
    [stall] = summary["stalls"]
    assert stall["in_flight"] == 3 and 1.2 <= stall["duration_s"] <= 3.0, stall
    assert [line for line in lines if line.startswith("wec: CA stalled: no answer from the "
                                                      "CA for ")] == [stall["message"]]
    assert summary["totals"]["chains"] == 17 and summary["totals"]["chains_failed"] == 17
