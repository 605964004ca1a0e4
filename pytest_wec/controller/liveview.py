"""What the live dashboard shows of a running load (controller): plain data, JSON safe.

:meth:`pytest_wec.controller.collector.LoadSession.snapshot` calls :func:`live_view` under the
session's lock. The shapes are those of summary.json (``totals``, ``chains``, ``endpoints``,
``errors``, ``generator``, ``timeline``, ``timeline_by``), so that the dashboard and
report.html draw them with the same code; ``timeline`` and ``timeline_by`` hold the
buckets that start from ``timeline_from`` on (whole seconds for the last 15 minutes; the
current, partial second is left out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.outputs import build_tables, timeline, timeline_by

__all__ = ["SETTLE_S", "WINDOW_S", "live_view", "worker_rows"]

#: the last seconds of the series that late results may still change
SETTLE_S = 5
MAX_ERRORS = 50
#: the live rate and p95 are over the last this many whole seconds
WINDOW_S = 10


def live_view(agg: Aggregator, *, run: Mapping[str, Any], now: float, since: int = 0,
              in_flight: int = 0, target: float | None = None,
              workers: Sequence[Mapping[str, Any]] = (), state: Mapping[str, int] | None = None,
              stopping: bool = False, ended: bool = False,
              warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The run so far at epoch ``now``; series from second ``since`` on."""
    elapsed = max(now - agg.started, 0.0)
    until = int(elapsed)
    since = min(max(int(since), 0), until)
    tables = build_tables(agg, elapsed, open_model=run.get("model") == "open",
                          max_errors=MAX_ERRORS)
    count, hist = agg.window(now, WINDOW_S)
    span = min(WINDOW_S, until) or 1
    window = {"seconds": span, "chains_per_s": round(count / span, 3),
              "p95_ms": hist.summary_ms((95,))["p95"] if hist.total else None}
    return {
        "run": dict(run), "elapsed_s": round(elapsed, 1), "stopping": stopping, "ended": ended,
        "target": target, "in_flight": in_flight, "window": window, **tables,
        "state": dict(state or {}), "generator": agg.generator_stats(),
        "workers": [dict(w) for w in workers], "warnings": list(warnings),
        "timeline_from": since, "timeline": timeline(agg, since, until),
        "timeline_by": timeline_by(agg, since, until),
    }


def worker_rows(statuses: Iterable[Mapping[str, Any]],
                live: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per worker from its sessions' latest statuses (``WorkerStatus``) and what
    the controller knows of it (``live``: name -> in_flight, age_s, state)."""
    by_worker: dict[str, list[Mapping[str, Any]]] = {}
    for st in statuses:
        by_worker.setdefault(str(st.get("worker")), []).append(st)
    rows = []
    for name in sorted(set(by_worker) | set(live)):
        sts = by_worker.get(name, [])
        running = [s for s in sts if not s.get("final")]
        latest = max(sts, key=lambda s: float(s.get("t", 0)), default={})
        info = live.get(name, {})
        rows.append({
            "worker": name,
            "state": info.get("state", "ended" if sts and not running else "running"),
            "in_flight": int(info.get("in_flight", sum(int(s.get("in_flight", 0))
                                                       for s in running))),
            "target": round(sum(float(s.get("target_share", 0.0)) for s in running), 3),
            "loop_lag_ms": float(latest.get("loop_lag_ms", 0.0)),
            "cpu_pct": float(latest.get("cpu_pct", 0.0)),
            "cpu_s": round(sum(float(s.get("cpu_s", 0.0)) for s in sts), 3),
            "sent": sum(int(s.get("sent", 0)) for s in sts),
            "dropped": sum(int(s.get("dropped", 0)) for s in sts),
            "dropped_starts": sum(int(s.get("dropped_starts", 0)) for s in sts),
            "age_s": info.get("age_s"),
        })
    return rows
