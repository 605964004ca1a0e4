"""benchmark.json from an :class:`~pytest_wec.controller.aggregator.Aggregator` (controller).

``build_benchmark_json`` writes pytest-benchmark's saved-run format, so that
``pytest-benchmark compare`` (and ``--wec-compare``) read runs side by side: one benchmark per
chain (group ``chain``), per endpoint (group ``endpoint``) and per ACME phase (group
``phase``), latencies in seconds (pytest-benchmark's unit) with the stats it expects computed
at HDR precision, counts, rates and p90..p99.9 in ``extra_info``, and the confidence
intervals of :mod:`~pytest_wec.controller.noise` that a saved baseline carries.

``run_duration`` and ``per_second`` are the time under load and the rates over it, shared
with summary.json (:mod:`~pytest_wec.controller.outputs`).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Mapping
from typing import Any

from pytest_wec.controller.aggregator import Aggregator, Histogram, index_range
from pytest_wec.controller.noise import add_benchmark_intervals
from pytest_wec.controller.phases import phase_benchmarks

__all__ = ["build_benchmark_json", "per_second", "run_duration"]


def run_duration(agg: Aggregator, run_info: Mapping[str, Any]) -> float:
    """The time under load (s): ``run_info``'s ``duration_s``, else from its ``started`` to
    its ``ended``, else from the aggregator's second 0 to its last result's end."""
    if isinstance(run_info.get("duration_s"), int | float):
        return float(run_info["duration_s"])
    started, ended = run_info.get("started"), run_info.get("ended")
    if isinstance(started, int | float) and isinstance(ended, int | float):
        return max(float(ended) - float(started), 0.0)
    if agg.last_end is not None:
        return max(agg.last_end - agg.started, 0.0)
    return 0.0


def per_second(n: int, duration: float) -> float:
    """*n* over *duration* seconds, to 3 decimals (0 over no time)."""
    return round(n / duration, 3) if duration > 0 else 0.0


# -- benchmark.json --------------------------------------------------------------------------


def _bench_stats(h: Histogram) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` (seconds) from a histogram, at HDR precision."""
    q1, median, q3 = (v / 1e6 for v in h.percentiles((25, 50, 75)))
    q1, median, q3 = (min(max(v, h.min / 1e6), h.max / 1e6) for v in (q1, median, q3))
    mean = h.mean() / 1e6
    var = 0.0
    for i, n in h.counts.items():
        low, high = index_range(i)
        var += ((low + high) / 2e6 - mean) ** 2 * n
    stddev = (var / (h.total - 1)) ** 0.5 if h.total > 1 else 0.0
    iqr = q3 - q1
    lo_fence, hi_fence = (q1 - 1.5 * iqr) * 1e6, (q3 + 1.5 * iqr) * 1e6
    iqr_out = _count_outside(h, lo_fence, hi_fence)
    sd_out = _count_outside(h, (mean - stddev) * 1e6, (mean + stddev) * 1e6)
    ld, hd = _bounds_within(h, lo_fence, hi_fence)
    total = h.sum / 1e6
    return {"min": h.min / 1e6, "max": h.max / 1e6, "mean": mean, "stddev": stddev,
            "rounds": h.total, "median": median, "iqr": iqr, "q1": q1, "q3": q3,
            "iqr_outliers": iqr_out, "stddev_outliers": sd_out,
            "outliers": f"{sd_out};{iqr_out}", "ld15iqr": ld / 1e6, "hd15iqr": hd / 1e6,
            "ops": h.total / total if total else 0.0, "total": total, "iterations": 1}


def _count_outside(h: Histogram, low: float, high: float) -> int:
    out = 0
    for i, n in h.counts.items():
        lo, hi = index_range(i)
        if hi < low or lo > high:
            out += n
    return out


def _bounds_within(h: Histogram, low: float, high: float) -> tuple[int, int]:
    ranges = [index_range(i) for i in h.counts]
    lows = [lo for lo, hi in ranges if hi >= low]
    highs = [hi for lo, hi in ranges if lo <= high]
    return (max(min(lows), h.min) if lows else h.min, min(max(highs), h.max) if highs else h.max)


def _bench(group: str, name: str, count: int, ok: int, failed: int, h: Histogram,
           duration: float, options: dict[str, Any]) -> dict[str, Any]:
    p90, p95, p99, p999 = (min(v, h.max) / 1e6 for v in h.percentiles((90, 95, 99, 99.9)))
    return {
        "group": group, "name": name, "fullname": f"wec::{group}::{name}",
        "params": None, "param": None,
        "extra_info": {"count": count, "ok": ok, "failed": failed,
                       "per_s": per_second(count, duration), "p90": p90, "p95": p95, "p99": p99,
                       "p999": p999},
        "options": options, "stats": _bench_stats(h),
    }


def _machine_info() -> dict[str, Any]:
    return {"node": platform.node(), "processor": platform.processor(),
            "machine": platform.machine(), "python_compiler": platform.python_compiler(),
            "python_implementation": platform.python_implementation(),
            "python_implementation_version": platform.python_version(),
            "python_version": platform.python_version(), "python_build": platform.python_build(),
            "release": platform.release(), "system": platform.system(),
            "cpu": {"count": os.cpu_count()}}


def _commit_info() -> dict[str, Any]:
    try:
        from pytest_benchmark.utils import get_commit_info
    except ImportError:
        return {"id": "unknown", "time": None, "author_time": None, "dirty": False,
                "project": "pytest-wec", "branch": "(unknown)"}
    return dict(get_commit_info("pytest-wec"))  # type: ignore[no-untyped-call]


def build_benchmark_json(agg: Aggregator, run_info: Mapping[str, Any],
                         machine_info: Mapping[str, Any] | None = None, *,
                         commit_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One benchmark per chain (group ``chain``) and per endpoint (group ``endpoint``);
    latency in seconds as ``stats``, count, throughput and p90..p99.9 in ``extra_info``."""
    try:
        from pytest_benchmark import __version__ as version
    except ImportError:
        version = "5.0.0"
    duration = run_duration(agg, run_info)
    model = run_info.get("model")
    options = {"model": str(getattr(model, "value", model) or "closed"),
               "load": run_info.get("load"), "rate": run_info.get("rate"),
               "run": run_info.get("id"), "timer": "wall"}
    benchmarks = [_bench("chain", name, cs.count, cs.ok, cs.failed, cs.latency, duration, options)
                  for name, cs in sorted(agg.chains.items()) if cs.count]
    benchmarks += [_bench("endpoint", ep, es.count, es.ok, es.failed, es.latency, duration,
                          options)
                   for ep, es in sorted(agg.endpoints.items()) if es.count]
    benchmarks += phase_benchmarks(agg.phases, _bench_stats, options)
    add_benchmark_intervals(benchmarks, agg)  # saved with a baseline (controller/noise.py)
    started = run_info.get("started")
    when = dt.datetime.fromtimestamp(started if isinstance(started, int | float)
                                     else agg.started, dt.UTC)
    return {"machine_info": dict(machine_info) if machine_info is not None else _machine_info(),
            "commit_info": dict(commit_info) if commit_info is not None else _commit_info(),
            "benchmarks": benchmarks, "datetime": when.isoformat(), "version": version}
