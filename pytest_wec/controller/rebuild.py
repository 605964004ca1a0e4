"""A run's outputs from its results log alone (``wec report``), also for a killed run.

Runs anywhere, without Redis or the stack: it reads the log (JSON lines or msgpack), merges
it as the controller would, and writes summary.json, benchmark.json and report.html.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import (
    build_benchmark_json,
    build_summary,
    format_tables,
    write_json_atomic,
)
from pytest_wec.controller.report_html import REPORT_NAME, write_report
from pytest_wec.controller.resultlog import ResultLogError, read_results
from pytest_wec.wire.results import ChainResult

__all__ = ["BENCHMARK_NAME", "SUMMARY_NAME", "rebuild", "report_main"]

SUMMARY_NAME = "summary.json"
BENCHMARK_NAME = "benchmark.json"
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def _scan(path: Path) -> Iterator[tuple[ChainResult, float, float, str]]:
    """Every chain of the log with its scheduled start, end and worker; checks the fields."""
    for n, c in enumerate(read_results(path), 1):
        try:
            row = (c, float(c["scheduled"]), float(c["started"]) + float(c["took"]),
                   str(c["worker"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultLogError(f"{path}: record {n}: not a ChainResult ({exc!r})") from None
        yield row


def rebuild(results_log: Path, out_dir: Path, *, model: str | None = None,
            run_id: str | None = None) -> dict[str, Any]:
    """summary.json, benchmark.json and report.html in ``out_dir`` from a results log.

    The run's start is the earliest scheduled start, its end the latest chain end, its
    workers the distinct worker ids; what only the live run knew (state counts, stalls,
    statuses) is absent.
    """
    results_log, out_dir = Path(results_log), Path(out_dir)
    first: float | None = None
    last: float | None = None
    workers: set[str] = set()
    for _c, scheduled, end, worker in _scan(results_log):
        first = scheduled if first is None else min(first, scheduled)
        last = end if last is None else max(last, end)
        workers.add(worker)
    if first is None or last is None:
        raise ResultLogError(f"{results_log}: no chain results")
    agg = Aggregator(first)
    for n, (c, *_rest) in enumerate(_scan(results_log), 1):
        try:
            agg.add(c)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultLogError(f"{results_log}: record {n}: not a ChainResult "
                                 f"({exc!r})") from None
    parent = results_log.resolve().parent.name
    run_info = {"id": run_id or (parent if _RUN_ID.match(parent) else None),
                "started": first, "ended": last, "duration_s": None, "directory": None,
                "workers": len(workers), "model": model or "unknown", "load": None,
                "rate": None, "stages": None}
    summary = build_summary(agg, run_info, {}, {"workers": len(workers), "saturated": []}, None)
    summary.update(stalls=[], workers_lost=[], warnings=[], rebuilt_from=str(results_log))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / SUMMARY_NAME, summary)
    write_json_atomic(out_dir / BENCHMARK_NAME, build_benchmark_json(agg, summary["run"]))
    write_report(out_dir / REPORT_NAME, summary,
                 {"rebuilt from": str(results_log), "model": model or "unknown"})
    return summary


def report_main(argv: list[str] | None = None) -> int:
    """``wec report RESULTS_LOG [--out DIR]``; 0 on success, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="wec report",
        description="Rebuild summary.json, benchmark.json and report.html from a results log "
                    "(JSON lines or msgpack) and print the tables.")
    parser.add_argument("log", metavar="RESULTS_LOG", help="results log (either format)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write (default: the log's directory; rebuilt/ in it "
                             "when it holds a summary.json already)")
    parser.add_argument("--model", choices=("closed", "open"), default=None,
                        help="the run's load model, when known")
    parser.add_argument("--run-id", default=None, help="the run's id, when known")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        path = Path(args.log)
        out = Path(args.out) if args.out else path.parent
        if not args.out and (out / SUMMARY_NAME).exists():
            out = out / "rebuilt"
        summary = rebuild(path, out, model=args.model, run_id=args.run_id)
    except (OSError, ResultLogError) as exc:
        text = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror \
            else str(exc)
        print(f"wec report: error: {text}", file=sys.stderr)
        return 2
    print(format_tables(summary), end="")
    print(f"wec report: wrote {out / SUMMARY_NAME}")
    print(f"wec report: wrote {out / BENCHMARK_NAME}")
    print(f"wec report: wrote {out / REPORT_NAME}")
    return 0
