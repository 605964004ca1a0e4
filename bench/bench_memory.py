"""RSS over a steady load run: the controller and its xdist workers, sampled from /proc.

    .venv/bin/python bench/bench_memory.py [--quick] [--duration S] [--rate R] [--workers N]

Runs ``pytest --pyargs pytest_wec_chains --wec-rate R -n N --wec-duration S`` (every load chain, the
default mix, the embedded stack: a fresh Pebble) as a subprocess and reads ``VmRSS`` from
``/proc/PID/status`` of pytest (the controller) and of its children every few seconds:
the xdist workers, and the challenge server; redis-server and Pebble are the stack, shown
for reference only. Growth is from the sample at minute 1 (a third of the run when it is
shorter than 3 minutes) to the last sample of the load; target <= 10% for the controller
and every worker. ``bench_hours.py`` measures the controller over 10 simulated hours (its
per-second series compacted as they age, against every second kept).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, machine, table

REPO = Path(__file__).resolve().parent.parent
TARGET_PCT = 10.0
FINAL = re.compile(r"\b(passed|failed|errors?)\b.* in [\d.]+s")


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return sorted(out)


def role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if "challenge_srv" in cmd:
        return "challenge server"
    if "redis-server" in cmd:
        return "redis-server (stack)"
    if "pebble" in cmd.split(" ", 1)[0]:
        return "pebble (stack)"
    if "python" in cmd:
        return "worker"
    return cmd.split(" ", 1)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 s instead of 300 s")
    ap.add_argument("--duration", type=float, help="seconds of load")
    ap.add_argument("--rate", type=float, default=10.0, help="chain starts per second")
    ap.add_argument("--workers", type=int, default=2, help="xdist workers")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    args = ap.parse_args(argv)
    duration = args.duration or (60.0 if args.quick else 300.0)
    ref_at = min(60.0, duration / 3)
    out = Path(tempfile.mkdtemp(prefix="wec-memory-"))
    argv2 = [sys.executable, "-m", "pytest", "--pyargs", "pytest_wec_chains",
             "-p", "no:cacheprovider", "-q", f"--wec-rate={args.rate:g}",
             f"--wec-duration={duration:g}s", "--wec-grace=20s", f"--wec-out={out}",
             "-n", str(args.workers),
             # the repository's pytest-timeout (300 s) would fail the 300 s load items
             "-o", "timeout=0"]
    print(f"bench_memory: {' '.join(argv2[1:])}; {machine()}")
    # output to a file: a pipe nobody reads until the end would fill up and block pytest
    output = out.parent / f"{out.name}.log"
    with open(output, "w") as sink:
        proc = subprocess.Popen(argv2, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    series: dict[str, list[tuple[float, int]]] = {}
    names: dict[int, str] = {}
    started: float | None = None  # when the workers appear: the load is about to start
    while proc.poll() is None:
        now = time.monotonic()
        pids = [proc.pid, *children(proc.pid)]
        for pid in pids:
            if pid not in names:
                r = "controller" if pid == proc.pid else role(pid)
                if r == "worker":
                    r = f"worker gw{sum(1 for v in names.values() if v.startswith('worker'))}"
                names[pid] = r
        if started is None and any(v.startswith("worker") for v in names.values()):
            started = now
        t = now - started if started is not None else -1.0  # before the workers: startup
        for pid in pids:
            kib = rss_kib(pid)
            if kib is not None:
                series.setdefault(names[pid], []).append((t, kib))
        time.sleep(args.every)
    text = output.read_text(errors="replace")
    output.unlink()
    for line in text.splitlines():
        if line.startswith(("wec run ", "wec: ")) or FINAL.search(line):
            print(line)
    shutil.rmtree(out, ignore_errors=True)
    end_at = duration + 5  # the load's end (workers start it a few seconds after spawning)
    rows = []
    verdicts = []
    for name, pts in sorted(series.items()):
        load = [(t, k) for t, k in pts if 0 <= t <= end_at]
        if not load:
            continue
        ref = min(load, key=lambda p: abs(p[0] - ref_at))
        last = load[-1]
        growth = 100 * (last[1] - ref[1]) / ref[1]
        gated = not name.endswith("(stack)") and name != "challenge server"
        if gated:
            verdicts.append(growth <= TARGET_PCT)
        rows.append([name, load[0][1] / 1024, ref[1] / 1024, last[1] / 1024,
                     max(k for _, k in pts) / 1024, f"{growth:+.1f}%",
                     ("gated" if gated else "info")])
    print(table(["process", "first MiB", f"@{ref_at:g}s MiB", "end MiB", "max MiB",
                 f"growth {ref_at:g}s->end", ""], rows))
    marks = sorted({round(t / 30) * 30 for pts in series.values() for t, _ in pts
                    if 0 <= t <= end_at})
    gated_names = [n for n in sorted(series) if not n.endswith("(stack)")]
    trow = []
    for m in marks:
        row: list[object] = [f"{m:.0f}s"]
        for n in gated_names:
            near = min(series[n], key=lambda p: abs(p[0] - m))
            row.append(near[1] / 1024)
        trow.append(row)
    print("RSS MiB over time:")
    print(table(["t", *gated_names], trow))
    ok = all(verdicts) and bool(verdicts)
    print(f"growth of controller and workers <= {TARGET_PCT:g}%: {'met' if ok else 'MISSED'}")
    log(f"pytest exited {proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
