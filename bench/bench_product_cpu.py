"""CPU per issued certificate of the whole product in a load run, beside the two bare flows.

    .venv/bin/python bench/bench_product_cpu.py [--quick] [--ca stub,pebble] [--duration S]
                                                 [--load N] [--workers N] [--certs N]

The product is run as a user runs it, as a subprocess::

    pytest --pyargs chains --wec-load 8 --wec-duration 60s -n 2 \\
        --wec-mix new_account=1,new_certificate=20 [--wec-directory STUB --wec-ca-bundle PEM]

(``--wec-mix new_certificate=1`` alone is refused: new_certificate needs an account and no
chain of such a mix makes one; with one new_account in 21 the picker makes the accounts and
new_certificate issues on them.) Against the embedded Pebble the plugin starts its own
stack; against the stub CA (bench/stubca.py, a child of this script) ``--wec-directory``
points at it and the plugin starts redis-server and the challenge server only.

What "ours" counts: every process of the pytest tree (the controller, the xdist workers,
the challenge server, redis-server), from the exec of pytest to its exit, start-up and
teardown included, divided by ``totals.certificates_issued`` of summary.json. The CA's own
CPU is excluded and reported apart.

How it is counted, without double counting or losing a process that exited early:

- The total is ``getrusage(RUSAGE_CHILDREN)`` of this script after pytest exited, minus
  before it started. A process's CPU reaches its parent's RUSAGE_CHILDREN when the parent
  waits for it, with whatever it waited for in turn, so each process is counted once, when
  it is reaped. The stack's processes (``ManagedProcess``: ``Popen.wait`` in ``stop``) and
  the xdist workers are children of the controller, which waits for them; this script makes
  itself a child subreaper (``PR_SET_CHILD_SUBREAPER``) and reaps whatever is orphaned after
  pytest's exit, so that a process whose parent did not wait is counted too. Nothing else
  of this script's children exits during the measurement (the stub CA runs on).
- A sampler thread reads ``/proc/PID/stat`` (utime + stime) of every process of the tree
  every 0.2 s (``/proc/PID/task/TID/children``). Its readings give the breakdown by process
  and by phase: before the load (start-up: imports, collection, the stack, the start
  barrier), under load (summary.json ``run.load_started`` to ``load_ended``, interpolated
  between readings) and after it (the grace, the outputs, teardown). What the tree used
  after a process's last reading (its exit) is the "after the last reading" row: the total
  minus the readings' sum, never negative when nothing is counted twice.
- The embedded Pebble is a child of the controller, so its CPU is in the total: its last
  reading is subtracted (it idles after the load; what it used between that reading and
  its exit stays in "ours", which errs against us; a Pebble restarted by the run's doctor
  is a second process, both subtracted). The stub CA is this script's child, alive until
  after the measurement: outside the total, its CPU read exactly from /proc before and
  after.

"Under load" divides the CPU under load by the certificates whose chain ended under load
(results.jsonl); it has no target, and shows what the run's fixed costs (start-up, the
outputs at the end) add to the whole run's figure.

The bare flows are :mod:`bench_client_cpu`'s (``measure_ours``, ``measure_certbot``), with
each task or thread issuing every certificate on the account it made in the warm-up (as
new_certificate takes an existing account), *load* tasks or threads, against a fresh CA of
the same kind (a fresh stack's Pebble; a fresh stub CA) in the same run:

    ours bare      pytest_wec.acme's AcmeClient, *load* tasks on one event loop (uvloop,
                   httptools), challenges through RedisPublisher
    certbot bare   certbot's acme (ClientV2, requests, josepy), *load* threads

Their CPU is this process's (``time.process_time()``) over the measured certificates.
Targets, against the whole run's figure: whole product <= 1/5 of certbot's bare flow and
<= 1.5x our bare flow, per certificate.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, machine, table
from bench_client_cpu import measure_certbot, measure_ours
from stubca import start_stub_ca

REPO = Path(__file__).resolve().parent.parent
TARGET_VS_CERTBOT = 1 / 5
TARGET_VS_OURS = 1.5
MIX = "new_account=1,new_certificate=20"
SAMPLE_S = 0.2
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_CHILD_SUBREAPER = 36


# -- the process tree, read from /proc --------------------------------------------------------


def stat_cpu(pid: int) -> tuple[float, int] | None:
    """``(utime + stime seconds, start time in ticks)`` of *pid*, None when it is gone. The
    start time tells a process from a later one that got the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[19])


def children(pid: int) -> list[int]:
    """The children of every thread of *pid* (a child belongs to the thread that forked
    it, and the controller starts some from threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in
                        Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def role_of(pid: int, root: int) -> str:
    """What a process of the pytest tree is, from its command line."""
    if pid == root:
        return "controller"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    exe = os.path.basename(argv[0].decode(errors="replace")) if argv else ""
    line = b" ".join(argv).decode(errors="replace")
    if exe.startswith("pebble"):
        return "pebble"
    if exe.startswith("redis-server"):
        return "redis-server"
    if "challenge_srv" in line:
        return "challenge server"
    if "python" in exe:
        # execnet's popen gateway: python -c "import sys;exec(eval(sys.stdin.readline()))"
        return "xdist worker" if "sys.stdin.readline" in line else "other: python"
    return f"other: {exe}" if exe else "other"


@dataclass
class Proc:
    pid: int
    role: str
    first: float  # epoch of the first reading
    last: float = 0.0  # epoch of the last reading
    cpu: float = 0.0  # CPU seconds at the last reading
    series: list[tuple[float, float]] = field(default_factory=list)  # (epoch, CPU s)

    def cpu_at(self, t: float) -> float:
        """CPU seconds at epoch *t*, interpolated between readings (0 before the first: the
        process did not exist or had just started; the last reading after the last)."""
        s = self.series
        if not s or t < s[0][0]:
            return 0.0
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return s[-1][1]


class TreeSampler:
    """Reads the CPU of every process under *root* every :data:`SAMPLE_S` seconds (a
    thread of this script, so its own CPU is not in the pytest tree's)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.procs: dict[tuple[int, int], Proc] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_S):
                return

    def sample(self) -> None:
        now = time.time()
        todo, seen = [self.root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            got = stat_cpu(pid)
            if got is None:
                continue
            cpu, start = got
            p = self.procs.get((pid, start))
            if p is None:
                p = self.procs[(pid, start)] = Proc(pid, role_of(pid, self.root), now)
            p.last, p.cpu = now, cpu
            p.series.append((now, cpu))
            todo += children(pid)

    def alive(self) -> list[Proc]:
        """The processes read so far that still exist (not yet reaped: zombies count)."""
        return [p for (pid, start), p in self.procs.items()
                if (got := stat_cpu(pid)) is not None and got[1] == start]


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process instead of init."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:
        return False


def reap_orphans(sampler: TreeSampler, keep: set[int], timeout: float = 30.0) -> int:
    """Waits (up to *timeout*) until no process of the tree is left, reaping those that
    were orphaned to this script (all but the pids in *keep*); returns how many."""
    reaped = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid not in keep:
                reaped += 1
        if not [p for p in sampler.alive() if p.pid not in keep]:
            break
        time.sleep(0.1)
    else:
        log(f"still running after {timeout:g}s: "
            f"{', '.join(f'{p.role} {p.pid}' for p in sampler.alive())}")
    return reaped


def rusage_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# -- one product run -----------------------------------------------------------------------


def run_product(ca: str, duration: float, load: int, workers: int, tmp: Path) -> dict[str, Any]:
    """One load run of the product (see the module's doc); its CPU, split."""
    out = tmp / f"product-{ca}"
    stub = None
    extra: list[str] = []
    if ca == "stub":
        stub, url, bundle = start_stub_ca(tmp / f"stubca-product-{ca}")
        extra = [f"--wec-directory={url}", f"--wec-ca-bundle={bundle}"]
    # the test extra's Hypothesis plugin (over a second of CPU per pytest process) is not in
    # a user's installation: left out, as there
    plain = ["-p", "no:hypothesispytest"] if importlib.util.find_spec("hypothesis") else []
    argv = [sys.executable, "-m", "pytest", "--pyargs", "chains", "-p", "no:cacheprovider",
            *plain, "-q", f"--wec-load={load}", f"--wec-duration={duration:g}s", f"--wec-mix={MIX}",
            f"--wec-out={out}", *extra]
    argv += ["-n", str(workers)] if workers > 0 else ["-p", "no:xdist"]
    log(f"product against {ca}: {' '.join(argv[2:])}")
    keep = {stub.pid} if stub is not None else set()
    stub0 = stat_cpu(stub.pid) if stub is not None else None
    out_log = tmp / f"pytest-{ca}.log"
    try:
        ru0 = rusage_children()
        wall0 = time.time()
        with open(out_log, "wb") as fh:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            sampler = TreeSampler(proc.pid)
            sampler.start()
            try:
                rc = proc.wait(timeout=duration + 300)
            except subprocess.TimeoutExpired:
                log("pytest did not end in time; stopping its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait(timeout=30)
        orphans = reap_orphans(sampler, keep)
        sampler.stop()
        wall = time.time() - wall0
        total = rusage_children() - ru0
        stub_cpu = None
        if stub is not None and stub0 is not None:
            now = stat_cpu(stub.pid)
            stub_cpu = now[0] - stub0[0] if now is not None else float("nan")
    finally:
        if stub is not None:
            stub.stop()
    path = out / "summary.json"
    if not path.exists():
        raise RuntimeError(f"pytest exited {rc} without a summary; its output ends:\n"
                           f"{out_log.read_text(errors='replace')[-3000:]}")
    summary = json.loads(path.read_text())
    res = split(summary, sampler, total, stub_cpu, out / "results.jsonl")
    res.update(rc=rc, wall=wall, orphans=orphans)
    shutil.rmtree(out, ignore_errors=True)
    return res


def split(summary: dict[str, Any], sampler: TreeSampler, total: float,
          stub_cpu: float | None, results_log: Path) -> dict[str, Any]:
    """The run's CPU: ours over the whole run and under load, by process, and the CA's."""
    t = summary["totals"]
    run = summary["run"]
    start, end = float(run["load_started"]), float(run["load_ended"])
    procs = list(sampler.procs.values())
    pebble = [p for p in procs if p.role == "pebble"]
    ca_in_tree = sum(p.cpu for p in pebble)
    ca_cpu = stub_cpu if stub_cpu is not None else ca_in_tree
    ca_window = (sum(p.cpu_at(end) - p.cpu_at(start) for p in pebble)
                 if stub_cpu is None else float("nan"))
    by_role: dict[str, list[float]] = {}  # procs, CPU s in all, before/under/after the load
    workers = 0
    for p in sorted(procs, key=lambda p: p.first):
        role = p.role
        if role == "xdist worker":
            workers += 1
            role = f"xdist worker {workers}"
        row = by_role.setdefault(role, [0, 0.0, 0.0, 0.0, 0.0])
        at_start, at_end = p.cpu_at(start), p.cpu_at(end)
        row[0] += 1
        row[1] += p.cpu
        row[2] += at_start
        row[3] += at_end - at_start
        row[4] += p.cpu - at_end
    sampled = sum(p.cpu for p in procs)
    ours = total - ca_in_tree
    ours_window = sum(r[3] for role, r in by_role.items() if role != "pebble")
    ours_before = sum(r[2] for role, r in by_role.items() if role != "pebble")
    certs_window = 0
    with open(results_log, "rb") as fh:
        for line in fh:
            c = json.loads(line)
            if c.get("certificates") and start <= c["started"] + c["took"] <= end:
                certs_window += int(c["certificates"])
    return {"certs": int(t["certificates_issued"]), "chains": int(t["chains"]),
            "failed": int(t["chains_failed"]) + int(t["cancelled"]),
            "requests": int(t["requests"]), "accounts": int(
                summary["chains"].get("new_account", {}).get("count", 0)
                if isinstance(summary.get("chains"), dict) else 0),
            "total": total, "ours": ours, "ca": ca_cpu, "ca_window": ca_window,
            "ours_window": ours_window, "certs_window": certs_window,
            "ours_before": ours_before, "ours_after": ours - ours_before - ours_window,
            "window": end - start, "by_role": by_role, "after_last": total - sampled,
            "startup_s": run.get("startup_s"), "tail_s": run.get("tail_s"),
            "ca_events": [f"{e.get('kind')} at {e.get('at_s')} s: "
                          f"{str(e.get('diagnosis'))[:160]}"
                          for e in summary.get("ca_events") or []],
            "failed_by_cause": summary.get("failed_by_cause") or {}}


# -- the bare flows ------------------------------------------------------------------------


def run_bare(which: str, ca: str, certs: int, load: int, tmp: Path) -> dict[str, Any]:
    """A bare flow (bench_client_cpu's) against a fresh CA of kind *ca*; with the stub
    CA, its CPU from /proc around the measurement (warm-up included)."""
    fn = measure_ours if which == "ours" else measure_certbot
    if ca == "pebble":
        r = fn(certs, load, new_accounts=False)
        r["ca"] = float("nan")
        return r
    stub, url, bundle = start_stub_ca(tmp / f"stubca-{which}")
    try:
        c0 = stat_cpu(stub.pid)
        r = fn(certs, load, ca=(url, bundle), new_accounts=False)
        c1 = stat_cpu(stub.pid)
        r["ca"] = c1[0] - c0[0] if c0 and c1 else float("nan")
    finally:
        stub.stop()
    return r


# -- output --------------------------------------------------------------------------------


def per_cert(cpu: float, certs: int) -> float:
    return cpu / certs * 1000 if certs else float("nan")


def report(ca: str, prod: dict[str, Any], ours: dict[str, Any], base: dict[str, Any],
           load: int, workers: int) -> tuple[float, float, float, float]:
    """Prints the CA's tables; returns the CPU ms per certificate of the product's whole
    run, of ours bare, of certbot bare, and of the product under load."""
    p_cert = per_cert(prod["ours"], prod["certs"])
    w_cert = per_cert(prod["ours_window"], prod["certs_window"])
    o_cert = per_cert(ours["cpu"], ours["certs"])
    b_cert = per_cert(base["cpu"], base["certs"])
    ca_bare = {"ours": per_cert(ours["ca"], ours["certs"]),
               "certbot": per_cert(base["ca"], base["certs"])}
    print(f"\nagainst the {'stub CA' if ca == 'stub' else 'embedded Pebble'}, {load} in "
          f"flight (product: -n {workers}, {load} chains in flight; bare: {load} tasks or "
          "threads):")
    rows: list[list[object]] = [
        ["whole product, whole run", prod["certs"], prod["failed"],
         prod["requests"] / max(prod["certs"], 1), prod["ours"], p_cert,
         prod["certs"] / max(prod["window"], 1e-9), per_cert(prod["ca"], prod["certs"])],
        ["whole product, under load", prod["certs_window"], "", "", prod["ours_window"], w_cert,
         prod["certs_window"] / max(prod["window"], 1e-9),
         per_cert(prod["ca_window"], prod["certs_window"])],
        ["ours bare (AcmeClient)", ours["certs"], len(ours["errors"]),
         ours["requests"] / max(ours["certs"], 1), ours["cpu"], o_cert,
         ours["certs"] / ours["wall"], ca_bare["ours"]],
        ["certbot acme bare (threads)", base["certs"], len(base["errors"]),
         base["requests"] / max(base["certs"], 1), base["cpu"], b_cert,
         base["certs"] / base["wall"], ca_bare["certbot"]],
    ]
    print(table(["flow", "certs", "failed", "req/cert", "CPU s", "CPU ms/cert", "certs/s",
                 "CA CPU ms/cert"], rows))
    for r in (ours, base):
        for e in r["errors"][:3]:
            print(f"  error: {e}")
    print(f"product run: {prod['chains']} chains ({prod['accounts']} new_account), "
          f"{prod['window']:.0f} s under load, start-up {prod['startup_s']} s, after the load "
          f"{prod['tail_s']} s, {prod['wall']:.0f} s from exec to exit; pytest exit "
          f"{prod['rc']}; orphans reaped {prod['orphans']}")
    for ev in prod["ca_events"]:
        print(f"  CA event: {ev}")
    if prod["failed"]:
        print(f"  failed by cause: {prod['failed_by_cause']}")
    rows = []
    for role, (n, whole, before, window, after) in sorted(
            prod["by_role"].items(), key=lambda kv: (kv[0] == "pebble", kv[0])):
        name = f"{role} (the CA: not ours)" if role == "pebble" else role
        rows.append([name, n, whole, before, window, after,
                     per_cert(whole, prod["certs"]), per_cert(window, prod["certs_window"])])
    rows.append(["after the last reading (exits)", "", prod["after_last"], "", "",
                 prod["after_last"], per_cert(prod["after_last"], prod["certs"]), ""])
    rows.append(["ours (RUSAGE_CHILDREN - Pebble)", "", prod["ours"], prod["ours_before"],
                 prod["ours_window"], prod["ours_after"], p_cert, w_cert])
    if ca == "stub":
        rows.append(["stub CA (the CA; outside the total)", 1, prod["ca"], "", "", "",
                     per_cert(prod["ca"], prod["certs"]), ""])
    print(table(["process", "procs", "CPU s", "before the load", "under load", "after",
                 "ms/cert", "ms/cert under load"], rows))
    return p_cert, o_cert, b_cert, w_cert


def verdict(ratio: float, target: float, less: bool = True) -> str:
    ok = ratio <= target if less else ratio >= target
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 1 min in all)")
    ap.add_argument("--ca", default="stub,pebble",
                    help="the CAs, in order: stub, pebble (default both)")
    ap.add_argument("--duration", type=float, help="seconds of load of the product run "
                                                   "(default 60; --quick 6)")
    ap.add_argument("--load", type=int, default=8,
                    help="chains in flight, and the bare flows' tasks or threads (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="xdist workers (default 2)")
    ap.add_argument("--certs", type=int, help="certificates per bare flow (default 150; "
                                              "--quick 24)")
    args = ap.parse_args(argv)
    cas = [c.strip() for c in args.ca.split(",") if c.strip()]
    if not cas or set(cas) - {"stub", "pebble"}:
        ap.error("--ca: stub, pebble or both")
    duration = args.duration or (6.0 if args.quick else 60.0)
    certs = args.certs or (24 if args.quick else 150)
    subreaper = become_subreaper()
    print(f"bench_product_cpu: {', '.join(cas)}; product {duration:g} s of load, "
          f"{args.load} in flight, -n {args.workers}; bare flows {certs} certificates, "
          f"{args.load} concurrent; subreaper {'on' if subreaper else 'OFF'}; {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="wec-productcpu-"))
    results: dict[str, tuple[float, float, float, float]] = {}
    try:
        for ca in cas:
            prod = run_product(ca, duration, args.load, args.workers, tmp)
            log(f"{ca}: ours bare")
            ours = run_bare("ours", ca, certs, args.load, tmp)
            log(f"{ca}: certbot acme bare")
            base = run_bare("certbot", ca, certs, args.load, tmp)
            results[ca] = report(ca, prod, ours, base, args.load, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for ca, (_p, o, b, w) in results.items():
        print(f"{'stub CA' if ca == 'stub' else 'Pebble'}: under load only {w:.2f} ms/cert: "
              f"/ certbot bare = {w / b:.3f}, / ours bare = {w / o:.2f}x (no target)")
    for ca, (p, o, b, _w) in results.items():
        print(f"{'stub CA' if ca == 'stub' else 'Pebble'}: whole product {p:.2f} ms/cert; "
              f"whole product / certbot bare = {p / b:.3f} (1/{b / p:.1f}; target <= "
              f"1/{1 / TARGET_VS_CERTBOT:g}: {verdict(p / b, TARGET_VS_CERTBOT)}); whole "
              f"product / ours bare = {p / o:.2f}x (target <= {TARGET_VS_OURS:g}x: "
              f"{verdict(p / o, TARGET_VS_OURS)})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
