"""A load run's start-up and tail, beside bare pytest-xdist measured in the same run.

    .venv/bin/python bench/bench_startup.py [--workers 8,16] [--duration 5] [--rounds 1]

For each worker count W, from an empty directory:

    ours       ``pytest --pyargs pytest_wec_chains --wec-load=W --wec-duration=Ds -n W``
               against the embedded stack: summary.json ``run.startup_s`` (pytest's start
               to the common start of every worker's load), ``run.tail_s`` (the load's end
               to the summary) and pytest's wall time
    bare       ``pytest -n W`` of 2W trivial tests, each recording when and where it
               started: pytest's start to the first test, and to the last worker's first
               test (what xdist itself costs on this machine: W interpreters importing
               pytest and the plugins installed beside it)

Then what one worker of ours imported (its ``sys.modules`` at the end of a load run, written
by a small plugin given with ``-p``), timed in a fresh interpreter with ``-X importtime``:
the total and the packages that cost the most, beside the same interpreter importing only
pytest and xdist's worker side (the floor every xdist worker pays).

Targets (issue: cheap workers at start): the first chain within 8 s of pytest's start with
``-n 8`` and within 12 s with ``-n 16``; the tail within the grace plus 5 s. Prints a table
and never fails on a timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, table

PYTHON = sys.executable
GRACE_S = 30.0  # --wec-grace's default

BARE_TEST = '''\
import os, time

def test_{i}():
    with open(os.environ["BENCH_STARTS"], "a") as fh:
        fh.write(f"{{os.environ.get('PYTEST_XDIST_WORKER', 'main')}} {{time.time()}}\\n")
'''

MODULES_PLUGIN = '''\
import json, os, sys

def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        path = os.path.join(os.environ["BENCH_MODULES"],
                            session.config.workerinput["workerid"] + ".json")
        with open(path, "w") as fh:
            json.dump(sorted(sys.modules), fh)
'''


#: the test extra's Hypothesis plugin costs each pytest process over a second and is not in
#: a user's installation: both kinds of run leave it out
NO_HYPOTHESIS = "-p no:hypothesispytest"


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEC_")}
    env.pop("PYTEST_ADDOPTS", None)
    if importlib.util.find_spec("hypothesis") is not None:
        env["PYTEST_ADDOPTS"] = NO_HYPOTHESIS
    env.update(extra)
    return env


def bytecode_state() -> str:
    """Whether processes write bytecode here and whether ``wec compile``'s caches are there."""
    writes = "off (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") \
        else "on"
    done = subprocess.run([str(Path(PYTHON).parent / "wec"), "compile", "--check"],
                          capture_output=True, text=True, timeout=120)
    caches = "present" if done.returncode == 0 else "missing (" + (
        done.stdout.strip().splitlines() or ["?"])[0][:120] + ")"
    return f"bytecode writing {writes}; wec compile caches {caches}"


def bare(work: Path, workers: int) -> dict[str, float]:
    """pytest -n W of W trivial tests: seconds from pytest's start to the first test and to
    the last worker's first test."""
    d = work / f"bare-{workers}"
    d.mkdir()
    for i in range(2 * workers):  # enough that every worker gets one
        (d / f"test_bare_{i}.py").write_text(BARE_TEST.format(i=i))
    starts = d / "starts.txt"  # "worker epoch" per test
    t0 = time.time()
    done = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n",
                           str(workers), "--dist", "load", str(d)], cwd=d,
                          env=_env({"BENCH_STARTS": str(starts)}), capture_output=True,
                          text=True, timeout=300, check=False)
    wall = time.time() - t0
    if done.returncode != 0:
        raise RuntimeError(f"bare xdist run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    first: dict[str, float] = {}
    for line in starts.read_text().splitlines():
        worker, at = line.split()
        first[worker] = min(first.get(worker, float(at)), float(at))
    return {"first_s": min(first.values()) - t0, "wall_s": wall,
            "last_first_s": max(first.values()) - t0, "workers_seen": len(first)}


def ours(work: Path, workers: int, duration: float) -> dict[str, Any]:
    """Our load run from an empty directory; its start-up, tail and wall time, and where
    the workers wrote their modules."""
    d = work / f"ours-{workers}"
    d.mkdir()
    plugin_dir = work / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "bench_modules_plugin.py").write_text(MODULES_PLUGIN)
    modules = d / "modules"
    modules.mkdir()
    out = d / "run"
    t0 = time.time()
    done = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_modules_plugin",
         "--pyargs", "pytest_wec_chains", f"--wec-load={workers}",
         f"--wec-duration={duration:g}s", "-n", str(workers), f"--wec-out={out}"],
        cwd=d, env=_env({"BENCH_MODULES": str(modules), "PYTHONPATH": str(plugin_dir)}),
        capture_output=True, text=True, timeout=600, check=False)
    wall = time.time() - t0
    if done.returncode != 0 or not (out / "summary.json").exists():
        raise RuntimeError(f"load run failed ({done.returncode}):\n{done.stdout[-3000:]}")
    run = json.loads((out / "summary.json").read_text())["run"]
    return {"startup_s": run["startup_s"], "tail_s": run["tail_s"], "wall_s": wall,
            "load_s": run["duration_s"], "modules": modules, "parts": run.get("startup") or {},
            "exit_s": wall - run["startup_s"] - run["duration_s"] - run["tail_s"]}


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def import_cost(names: list[str]) -> tuple[float, dict[str, float]]:
    """Seconds to import *names* in a fresh interpreter (``-X importtime``, the sum of the
    top-level imports' cumulative times), and the cumulative seconds per top-level package."""
    code = "\n".join(f"try:\n    import {n}\nexcept Exception:\n    pass" for n in names)
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", code], capture_output=True,
                          text=True, timeout=120, check=False, env=_env({}))
    total, per = 0.0, {}
    for line in done.stderr.splitlines():
        m = _LINE.match(line)
        if m and not m[3]:  # a top-level import of this script
            cum = int(m[2]) / 1e6
            total += cum
            parts = m[4].split(".")
            # ours by subpackage (what it brings first counts under it: sqlalchemy under
            # pytest_wec.state), others by top-level package
            top = ".".join(parts[:2]) if parts[0] == "pytest_wec" else parts[0]
            per[top] = per.get(top, 0.0) + cum
    return total, per


def _roots(modules: list[str]) -> list[str]:
    """The modules a worker imported, without interpreter built-ins and private helpers that
    another import brings anyway: the top-level packages, plus ours module by module."""
    skip = set(sys.builtin_module_names) | {"__main__", "site", "sitecustomize"}
    out = []
    for m in modules:
        if m in skip or (m.startswith("_") and "." not in m):
            continue
        if m.startswith("pytest_wec") or "." not in m:
            out.append(m)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="8,16", help="worker counts, comma-separated")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each kind per count")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="wec-bench-startup-"))
    state = bytecode_state()
    log(f"work dir {work}; {os.cpu_count()} cores; {state}")
    rows: list[list[str]] = []
    parts: list[list[str]] = []
    worker_modules = None
    for w in counts:
        for r in range(args.rounds):
            log(f"-n {w}, round {r + 1}: bare xdist")
            (work / f"r{r}").mkdir(exist_ok=True)
            b = bare(work / f"r{r}", w)
            log(f"-n {w}, round {r + 1}: our load run")
            o = ours(work / f"r{r}", w, args.duration)
            files = sorted(o["modules"].glob("*.json"))
            if files and worker_modules is None:
                worker_modules = json.loads(files[0].read_text())
            target = 8.0 if w <= 8 else 12.0
            p = o["parts"]
            parts.append([f"-n {w}", *(f"{p.get(k) or 0:.1f}" for k in (
                "stack_ready_s", "first_worker_ready_s", "last_worker_ready_s", "start_in_s")),
                f"{o['startup_s']:.1f}", f"{o['tail_s']:.1f}", f"{o['exit_s']:.1f}"])
            rows.append([f"-n {w}", f"{b['first_s']:.1f}", f"{b['last_first_s']:.1f}",
                         f"{o['startup_s']:.1f}", f"{o['startup_s'] - b['last_first_s']:+.1f}",
                         f"<= {target:g}", "yes" if o["startup_s"] <= target else "no",
                         f"{o['tail_s']:.1f}", f"<= {GRACE_S + 5:g}",
                         f"{o['wall_s']:.1f}"])
    print()
    print(f"{state}; PYTEST_ADDOPTS={_env({}).get('PYTEST_ADDOPTS', '')!r} in both kinds of run")
    print(table(["workers", "bare: 1st test s", "bare: every worker s", "ours: start-up s",
                 "ours - bare", "target", "met", "tail s", "tail target", "wall s"], rows))
    print()
    print("where our start-up and tail went (seconds from pytest's start; run.startup):")
    print(table(["workers", "stack ready", "first worker ready", "last worker ready",
                 "barrier lead", "load starts", "tail (to the summary)",
                 "summary to exit"], parts))
    if worker_modules:
        names = _roots(worker_modules)
        total, per = import_cost(names)
        floor, _ = import_cost(["pytest", "xdist", "xdist.remote", "execnet"])
        print()
        print(f"one worker's imports: {len(worker_modules)} modules; in a fresh interpreter "
              f"{total * 1000:.0f} ms, of which pytest + xdist's worker side {floor * 1000:.0f}"
              f" ms ({total / floor:.1f}x that floor)")
        top = sorted(per.items(), key=lambda kv: -kv[1])[:12]
        print(table(["package", "ms (cumulative, top-level imports)"],
                    [[k, f"{v * 1000:.0f}"] for k, v in top]))
        heavy = [n for n in ("aiohttp", "httpx", "psycopg", "pymysql", "prometheus_client",
                             "opentelemetry") if n in worker_modules]
        print(textwrap.fill("optional parts imported by a default worker: "
                            + (", ".join(heavy) if heavy else "none"), 96))


if __name__ == "__main__":
    main()
