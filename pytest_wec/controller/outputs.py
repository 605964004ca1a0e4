"""End-of-run outputs from an :class:`~pytest_wec.controller.aggregator.Aggregator` (controller).

``build_summary``         summary.json (schema 1): run, totals, chains, endpoints, phases,
                          deviations, errors, connections, state, generator, timeline,
                          timeline_by
``build_tables``          totals, chains, endpoints, errors, connections ... alone (also the
                          live view's)
``timeline``              per second: counts, p50/p95/p99 of chains and of requests
``timeline_by``           per chain and per endpoint, the seconds each had: counts and
                          p50/p95/p99, as columns (``t``, ``count``, ``failed``, ``p50``...)
``build_benchmark_json``  benchmark.json in pytest-benchmark's saved-run format, so that
                          ``pytest-benchmark compare`` reads runs side by side (built in
                          :mod:`~pytest_wec.controller.benchjson`, re-exported here)
``format_tables``         the terminal tables printed in ``pytest_terminal_summary``
``format_progress``       the live line
``write_json_atomic``     temp file + rename, so a reader never sees half a file

The timeline's rows are the aggregator's buckets: the last 15 minutes one a second, older
ones coarser (``t`` their first second, ``dt`` their width in seconds: counts are over
``dt`` seconds; ``timeline_by`` has a ``dt`` column once a series has a bucket over 1 s).

Latencies in summary.json are milliseconds, in benchmark.json seconds (pytest-benchmark's
unit). Every percentile is read from a merged HDR histogram.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from pytest_wec.controller.aggregator import Aggregator, Histogram, short_error_type
from pytest_wec.controller.benchjson import build_benchmark_json, per_second, run_duration
from pytest_wec.controller.noise import add_intervals
from pytest_wec.controller.phases import format_phase_lines, phase_entry, standard_ps
from pytest_wec.controller.ratelimits import add_rate_limits, format_rate_limit_lines
from pytest_wec.controller.stats import ChainStats, EndpointStats, SecondStats

__all__ = ["SCHEMA", "build_benchmark_json", "build_summary", "build_tables", "format_progress",
           "format_tables", "timeline", "timeline_by", "write_json_atomic"]

SCHEMA = 1
_RUN_KEYS = ("id", "started", "ended", "duration_s", "directory", "workers", "model", "load",
             "rate", "stages", "load_started", "load_ended", "startup_s", "startup", "tail_s",
             "missing_at_start", "pebbles")
_STATE_KEYS = ("accounts", "authorizations", "certificates", "revoked")


def _entry(count: int, ok: int, failed: int, hist: Histogram, duration: float,
           late: int = 0, ps: Sequence[float] = ()) -> dict[str, Any]:
    """A table row; ``per_s`` counts what ended under load (``count - late``) over the time
    under load; ``ps``: the percentiles of ``latency_ms`` (default: p50 .. p99.9)."""
    return {"count": count, "ok": ok, "failed": failed, "per_s": per_second(count - late, duration),
            "latency_ms": hist.summary_ms(ps or standard_ps())}


def build_summary(agg: Aggregator, run_info: Mapping[str, Any],
                  state_counts: Mapping[str, int], generator: Mapping[str, Any],
                  thresholds: Sequence[Any] | None, *,
                  percentiles: Iterable[float] = ()) -> dict[str, Any]:
    """summary.json. ``run_info`` supplies the ``run`` keys (``started``/``ended`` in epoch
    seconds give ``duration_s``); ``generator`` values win over the aggregator's own;
    ``percentiles``: more than p50 .. p99.9 in every latency (those thresholds name)."""
    duration = run_duration(agg, run_info)
    run = {k: run_info.get(k) for k in _RUN_KEYS}
    run["duration_s"] = round(duration, 3)
    if run["ended"] is None and agg.last_end is not None:
        run["ended"] = agg.last_end
    run["model"] = str(getattr(run["model"], "value", run["model"]) or "closed")
    tables = build_tables(agg, duration, open_model=run["model"] == "open",
                          percentiles=percentiles)
    add_intervals(tables, agg)  # each latency figure's 95% interval (controller/noise.py)
    state = {k: int(state_counts.get(k, 0)) for k in _STATE_KEYS}
    state.update({k: v for k, v in state_counts.items() if k not in state})
    gen = agg.generator_stats()
    gen.update(generator)
    return {"schema": SCHEMA, "run": run, **tables, "state": state, "generator": gen,
            "thresholds": list(thresholds or []), "timeline": timeline(agg),
            "timeline_by": timeline_by(agg)}


def build_tables(agg: Aggregator, duration: float, *, open_model: bool = False,
                 max_errors: int | None = None,
                 percentiles: Iterable[float] = ()) -> dict[str, Any]:
    """``totals``, ``chains`` (each with its ``phases``), ``endpoints``, ``overall`` (all
    chains, all requests), ``phases`` (over all chains), ``deviations``, ``errors`` (the
    most frequent first, at most ``max_errors``) over ``duration`` seconds, and
    ``connections`` (the connections the requests opened, and how long opening took)."""
    ps = standard_ps(percentiles)
    chains: dict[str, Any] = {}
    for name, cs in sorted(agg.chains.items()):
        entry = _entry(cs.count, cs.ok, cs.failed, cs.latency, duration, cs.late, ps)
        entry.update(cancelled=cs.cancelled, skipped=cs.skipped)
        if open_model:
            entry["latency_from_scheduled_ms"] = cs.from_scheduled.summary_ms(ps)
        phases = agg.phases.entries(name, ps)
        if phases:
            entry["phases"] = phases
        chains[name] = entry
    endpoints = {ep: _entry(es.count, es.ok, es.failed, es.latency, duration, es.late, ps)
                 for ep, es in sorted(agg.endpoints.items())}
    n_chains = sum(c.count for c in agg.chains.values())
    n_requests = sum(e.count for e in agg.endpoints.values())
    totals = {
        "chains": n_chains,
        "chains_ok": sum(c.ok for c in agg.chains.values()),
        "chains_failed": sum(c.failed for c in agg.chains.values()),
        "requests": n_requests,
        "requests_failed": sum(e.failed for e in agg.endpoints.values()),
        "chains_per_s": per_second(n_chains - sum(c.late for c in agg.chains.values()), duration),
        "requests_per_s": per_second(n_requests - sum(e.late for e in agg.endpoints.values()),
                                duration),
        "certificates_issued": agg.certificates,
        "dropped_starts": agg.dropped_starts,
        "cancelled": sum(c.cancelled for c in agg.chains.values()),
        "skipped": sum(c.skipped for c in agg.chains.values()),
        "results_lost": agg.dropped_results,
    }
    errors = [{"chain": c, "endpoint": e, "type": t, "count": n, "example": ex}
              for (c, e, t), (n, ex) in agg.errors.items()]
    errors.sort(key=lambda r: (-r["count"], r["chain"], r["endpoint"] or "", r["type"]))
    if max_errors is not None:
        del errors[max_errors:]
    overall = {"chains": _overall(agg.chains.values(), duration, ps),
               "requests": _overall(agg.endpoints.values(), duration, ps)}
    if open_model:
        scheduled = Histogram()
        for cs in agg.chains.values():
            scheduled.add(cs.from_scheduled)
        overall["chains"]["latency_from_scheduled_ms"] = scheduled.summary_ms(ps)
    tables = {"totals": totals, "chains": chains, "endpoints": endpoints, "overall": overall,
              "phases": {n: phase_entry(n, agg.phases.merged(n), ps)
                         for n in agg.phases.names()},
              "deviations": agg.phases.deviation_table(), "errors": errors,
              "connections": {"opened": agg.connects.total,
                              "latency_ms": agg.connects.summary_ms(ps)}}
    add_rate_limits(tables, agg.rate_limits)  # rate_limits, totals/endpoints' rate_limited
    return tables


def _overall(stats: Iterable[ChainStats | EndpointStats], duration: float,
             ps: Sequence[float] = ()) -> dict[str, Any]:
    """One entry over all chains (or all requests), from their merged histograms."""
    count = ok = failed = late = 0
    hist = Histogram()
    for s in stats:
        count, ok, failed, late = count + s.count, ok + s.ok, failed + s.failed, late + s.late
        hist.add(s.latency)
    return _entry(count, ok, failed, hist, duration, late, ps)


def timeline(agg: Aggregator, since: int = 0, until: int | None = None) -> list[dict[str, Any]]:
    """Per bucket of the run (by completion; ``dt`` seconds from ``t``): counts and
    p50/p95/p99 of chains and requests; buckets that start from ``since`` up to ``until``
    (excluded; default: through the last one), none missing."""
    if not agg.seconds:
        return []
    out = []
    empty = SecondStats()
    for t, width, rec in agg.seconds.cover(since, until):
        s = rec or empty
        out.append({"t": t, "dt": width, "chains": s.chains, "ok": s.ok, "failed": s.failed,
                    "requests": s.requests, "requests_failed": s.requests_failed,
                    "chain_ms": _p3(s.chain_latency), "request_ms": _p3(s.request_latency)})
    return out


def timeline_by(agg: Aggregator, since: int = 0,
                until: int | None = None) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """Per chain and per endpoint, the buckets (starting ``since`` up to ``until``) in which
    some ended, as columns: ``t``, ``count``, ``failed``, ``p50``, ``p95``, ``p99`` (ms), and
    ``dt`` (seconds) when one is wider than a second."""
    out: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for key, series in (("chains", agg.chain_seconds), ("endpoints", agg.endpoint_seconds)):
        group: dict[str, dict[str, list[Any]]] = {}
        for name, by_s in sorted(series.items()):
            cols: dict[str, list[Any]] = {k: [] for k in ("t", "count", "failed", "p50", "p95",
                                                          "p99")}
            widths = []
            for t, width, ns in by_s.spans(since, until):
                p = _p3(ns.latency)
                for k, v in (("t", t), ("count", ns.count), ("failed", ns.failed),
                             ("p50", p["p50"]), ("p95", p["p95"]), ("p99", p["p99"])):
                    cols[k].append(v)
                widths.append(width)
            if any(w != 1 for w in widths):
                cols["dt"] = widths
            if cols["t"]:
                group[name] = cols
        out[key] = group
    return out


def _p3(h: Histogram) -> dict[str, float]:
    ms = h.summary_ms((50, 95, 99))
    return {"p50": ms["p50"], "p95": ms["p95"], "p99": ms["p99"]}


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` through a temp file and a rename."""
    path = Path(path)
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:  # created with the umask's mode, unlike mkstemp's 0600
            fh.write(data + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- terminal --------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Numbers right-aligned, text left-aligned."""
    right = [isinstance(v, int | float) for v in rows[0]] if rows else [False] * len(header)
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if right[i] else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return lines


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return "-" if v is None else str(v)


def format_tables(summary: Mapping[str, Any]) -> str:
    """Chains and endpoints (count, ok, failed, per s, p50, p95, p99, max in ms), errors."""
    t = summary["totals"]
    run = summary["run"]
    lines = [f"wec run {run.get('id') or ''}: {t['chains']} chains ({t['chains_failed']} failed"
             f", {t.get('cancelled', 0)} cancelled, {t.get('skipped', 0)} skipped) in "
             f"{_clock(run.get('duration_s') or 0)}, {t['chains_per_s']:.2f} chains/s, "
             f"{t['requests']} requests ({t['requests_failed']} failed), "
             f"{t['certificates_issued']} certificates, {t['dropped_starts']} dropped starts"]
    if t.get("results_lost"):
        lines.append(f"warning: {t['results_lost']} chain results lost on the way to the "
                     "controller")
    lines += _ca_event_lines(summary)
    header = ("count", "ok", "failed", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    for title, key in (("chain", "chains"), ("endpoint", "endpoints")):
        rows: list[tuple[Any, ...]] = []
        for name, e in summary[key].items():
            lat = e["latency_ms"]
            rows.append((name, e["count"], e["ok"], e["failed"], float(e["per_s"]),
                         float(lat["p50"]), float(lat["p95"]), float(lat["p99"]),
                         float(lat["max"])))
        if rows:
            lines += ["", *_table((title, *header), rows)]
    lines += format_phase_lines(summary, _table)
    lines += _connection_lines(summary)
    if summary["errors"]:
        rows = [(e["count"], short_error_type(e["type"]), e["chain"], e["endpoint"] or "(chain)",
                 _clip(e["example"], 70)) for e in summary["errors"]]
        lines += ["", *_table(("errors", "type", "chain", "endpoint", "example"), rows)]
    lines += format_rate_limit_lines(summary)
    return "\n".join(lines) + "\n"


def _connection_lines(summary: Mapping[str, Any]) -> list[str]:
    """How many connections the requests opened and how long opening one took."""
    conn = summary.get("connections") or {}
    if not conn.get("opened"):
        return []
    lat = conn["latency_ms"]
    return ["", f"connections opened {conn['opened']}: p50 {lat['p50']:.3f} ms, p95 "
            f"{lat['p95']:.3f} ms, max {lat['max']:.3f} ms to open (TCP, and TLS for https; "
            "not in the requests' latency)"]


#: summary.json's ``failed_by_cause`` keys, as the terminal names them
_CAUSES = (("ca_answer", "on an answer of the CA (problem, HTTP error)"),
           ("ca_event", "because of a CA event"),
           ("stack_event", "because a part of our own stack died"),
           ("no_answer", "without an answer (timeout, connect) outside any CA event"),
           ("ours", "in the chains, the client or the generator"))


def _ca_event_lines(summary: Mapping[str, Any]) -> list[str]:
    """The failed chains by cause, then one line per CA event (``ca_events``)."""
    by = summary.get("failed_by_cause") or {}
    lines = []
    if summary["totals"].get("chains_failed") and any(by.values()):
        lines.append("failed chains by cause: " + ", ".join(
            f"{by[k]} {words}" for k, words in _CAUSES if by.get(k)))
    for ev in summary.get("ca_events") or []:
        failed = ev.get("chains_failed") or 0
        lines.append(f"CA event: {ev.get('kind')} at {_clock(ev.get('at_s') or 0)}: "
                     f"{ev.get('diagnosis')}" + (f"; {failed} chains failed because of it"
                                                 if failed else ""))
    for ev in summary.get("stack_events") or []:  # our own parts that died
        failed = ev.get("chains_failed") or 0
        back = (f"restarted in {ev.get('restart_s') or 0:.1f}s" if ev.get("recovered")
                else "not recovered")
        lines.append(f"stack event: {ev.get('part')} {ev.get('how')} at "
                     f"{_clock(ev.get('at_s') or 0)}, {back}"
                     + (f"; {failed} chains failed because of it" if failed else ""))
    return lines


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s"


def format_progress(agg: Aggregator, now: float, *, duration_s: float | None = None,
                    in_flight: int = 0, window_s: int = 10) -> str:
    """The live line: elapsed/duration, in flight, chains/s and p95 over the last
    ``window_s`` seconds, ok and failed so far."""
    elapsed = max(now - agg.started, 0.0)
    count, hist = agg.window(now, window_s)
    span = min(window_s, int(elapsed)) or 1
    ok = sum(c.ok for c in agg.chains.values())
    failed = sum(c.failed for c in agg.chains.values())
    p95 = hist.summary_ms((95,))["p95"] if hist.total else None
    total = f"/{_clock(duration_s)}" if duration_s else ""
    p95_text = f"{p95:,.1f} ms" if p95 is not None else "-"
    return (f"wec {_clock(elapsed)}{total}  in flight {in_flight}  {count / span:.1f} chains/s"
            f"  ok {ok}  failed {failed}  p95 {p95_text}")
