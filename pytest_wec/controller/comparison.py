"""Comparing a run with a baseline (:mod:`pytest_wec.controller.baseline`): per-metric
diffs, bounds on how much worse a metric may get, the regressions beyond them and their
text (controller).

:func:`compare` gives, per chain and per endpoint, count, rate (/s), p50, p95, p99 and mean
(ms) and error_rate (%), with the absolute and the percent change; per ACME phase (over all
chains, and per chain as ``validation[new_certificate]``) count, p50, p95, p99 and mean, in
ms or, for the count phases (``polls``, ``validation_requests``), in their own unit. Bounds
(``--wec-compare-fail``, :func:`parse_compare_fail`) such as ``p95:10%,p99:20%,error_rate:0.5``:

    p50 p95 p99 mean    N% of the baseline, or an increase such as 50ms or 0.2s
    p50 p95 p99 mean    N% of the baseline plus an increase: 10%+2ms
    error_rate          percentage points (0.5: from 1.0% to more than 1.5%)
    count rate          an N% drop

A change is a regression only when it breaks its bound and is beyond the noise of the two
runs (:func:`pytest_wec.controller.noise.change_noise`, 95%: each latency figure's interval,
saved with the baseline; Poisson and binomial noise of the counts). A baseline saved
without intervals takes the current run's for its own.

A baseline of several saved runs (``--wec-compare-runs``, :func:`compare` given a list):
each figure's baseline value is the median over the runs that have it, and its noise at
least the runs' spread as a prediction interval for one new run
(:func:`pytest_wec.controller.noise.run_spread`), which sees the shifts between runs that
no interval of one run does.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_wec.controller.baseline import KINDS, load_benchmark
from pytest_wec.controller.gating import text_table
from pytest_wec.controller.noise import FIGURES, change_noise, halves, run_spread
from pytest_wec.controller.phases import COUNT_PHASES
from pytest_wec.controller.thresholds import format_value

__all__ = ["METRICS", "Bound", "Diff", "Regression", "compare", "format_diffs",
           "parse_compare_fail", "regressions"]

METRICS = ("count", "rate", "p50", "p95", "p99", "mean", "error_rate")
LATENCY_METRICS = ("p50", "p95", "p99", "mean")
UNITS = {"count": "", "rate": "/s", "p50": "ms", "p95": "ms", "p99": "ms", "mean": "ms",
         "error_rate": "%"}


# -- comparing -------------------------------------------------------------------------------


Metrics = dict[str, float | None]
#: what a comparison covers: the baseline's kinds, and the ACME phases
_KINDS = (*KINDS, "phase")


def _counted(kind: str, name: str) -> bool:
    """A count phase (``polls``, ``polls[new_certificate]``): no ms, its own unit."""
    return kind == "phase" and name.split("[", 1)[0] in COUNT_PHASES


def _ms(seconds: Any) -> float | None:
    return round(float(seconds) * 1000, 3) if isinstance(seconds, int | float) else None


def _raw(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) else None


def _phases_of(summary: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The summary's phases over all chains, then per chain as ``phase[chain]``."""
    out = dict(summary.get("phases") or {})
    for chain, e in (summary.get("chains") or {}).items():
        out.update({f"{name}[{chain}]": p for name, p in (e.get("phases") or {}).items()})
    return out


def _from_benchmark(data: Mapping[str, Any]) -> dict[tuple[str, str], Metrics]:
    out: dict[tuple[str, str], Metrics] = {}
    for b in data.get("benchmarks", []):
        if b.get("group") not in _KINDS:
            continue
        stats, extra = b.get("stats") or {}, b.get("extra_info") or {}
        if b["group"] == "phase":
            scale = _raw if _counted("phase", b["name"]) else _ms
            out[("phase", b["name"])] = {
                "count": extra.get("count", stats.get("rounds")), "rate": None,
                "p50": scale(stats.get("median")), "p95": scale(extra.get("p95")),
                "p99": scale(extra.get("p99")), "mean": scale(stats.get("mean")),
                "error_rate": None,
                **halves(extra.get("ci"), 1 if _counted("phase", b["name"]) else 1000)}
            continue
        count = extra.get("count", stats.get("rounds"))
        failed = extra.get("failed")
        out[(b["group"], b["name"])] = {
            "count": count, "rate": extra.get("per_s"), "p50": _ms(stats.get("median")),
            "p95": _ms(extra.get("p95")), "p99": _ms(extra.get("p99")),
            "mean": _ms(stats.get("mean")),
            "error_rate": 100 * failed / count if count and failed is not None else None,
            "failed": failed, **halves(extra.get("ci"), 1000)}
    return out


def _from_summary(summary: Mapping[str, Any]) -> dict[tuple[str, str], Metrics]:
    out: dict[tuple[str, str], Metrics] = {}
    for kind in KINDS:
        for name, e in (summary.get(kind + "s") or {}).items():
            if not e.get("count"):
                continue
            lat = e["latency_ms"]
            out[(kind, name)] = {
                "count": e["count"], "rate": e.get("per_s"), "p50": lat["p50"],
                "p95": lat["p95"], "p99": lat["p99"], "mean": lat["mean"],
                "error_rate": 100 * e["failed"] / e["count"], "failed": e["failed"],
                **halves(e.get("ci_ms"), 1)}
    for name, p in _phases_of(summary).items():
        lat = p.get("latency_ms") or p.get("values") or {}
        if p.get("count"):
            out[("phase", name)] = {"count": p["count"], "rate": None, "p50": lat.get("p50"),
                                    "p95": lat.get("p95"), "p99": lat.get("p99"),
                                    "mean": lat.get("mean"), "error_rate": None,
                                    **halves(p.get("ci"), 1)}
    return out


def _metrics(run: Mapping[str, Any] | str | os.PathLike[str]) -> dict[tuple[str, str], Metrics]:
    data = load_benchmark(run) if isinstance(run, str | os.PathLike) else run
    return _from_benchmark(data) if "benchmarks" in data else _from_summary(data)


Run = Mapping[str, Any] | str | os.PathLike[str]
#: a baseline: one run, or a list of several
Runs = Run | Sequence[Run]


def _numbers(entries: Sequence[Metrics], key: str) -> list[float]:
    return [float(v) for e in entries if isinstance(v := e.get(key), int | float)]


def _reach(e: Metrics, figure: str, side: str) -> float | None:
    """How far a run's interval goes below (``lo``) or above (``hi``) its figure."""
    value, bound = e.get(figure), e.get(f"{side}:{figure}")
    if value is None or bound is None:
        return None
    return value - bound if side == "lo" else bound - value


def _combined(entries: Sequence[Metrics]) -> Metrics:
    """One entry from the same entry of several runs: each value the median over the runs
    that have it, with ``spread:METRIC`` (:func:`run_spread`) from two runs on; each
    figure's interval the median of the runs' own distances below and above their
    figure, around the median."""
    if len(entries) == 1:
        return dict(entries[0])
    out: Metrics = {}
    for key in (*METRICS, "failed"):
        values = _numbers(entries, key)
        out[key] = statistics.median(values) if values else None
        if key in METRICS and len(values) >= 2:
            out["spread:" + key] = run_spread(values)
    for figure in FIGURES:
        value = out.get(figure)
        if value is None:
            continue
        below = [r for e in entries if (r := _reach(e, figure, "lo")) is not None]
        above = [r for e in entries if (r := _reach(e, figure, "hi")) is not None]
        if below and above:
            out["lo:" + figure] = value - statistics.median(below)
            out["hi:" + figure] = value + statistics.median(above)
    return out


def _baseline_metrics(baseline: Runs) -> dict[tuple[str, str], Metrics]:
    """One run's metrics, or those of several runs combined entry by entry
    (:func:`_combined`; an entry only some runs have, from those)."""
    if isinstance(baseline, str | os.PathLike | Mapping):
        return _metrics(baseline)
    if not baseline:
        raise ValueError("compare: a baseline of no runs")
    runs = [_metrics(b) for b in baseline]
    if len(runs) == 1:
        return runs[0]
    keys = dict.fromkeys(k for r in runs for k in r)
    return {k: _combined([r[k] for r in runs if k in r]) for k in keys}


@dataclass(frozen=True)
class Diff:
    """One metric of one chain or endpoint: baseline and current value, and the change
    (``change`` in the metric's unit; percentage points for error_rate)."""

    kind: str  # "chain" or "endpoint"
    name: str
    metric: str
    unit: str
    baseline: float | None
    current: float | None
    change: float | None
    change_pct: float | None
    #: the 95% half-width of ``change`` from the two runs' noise (None: neither says)
    noise: float | None = None


def compare(current: Run, baseline: Runs) -> list[Diff]:
    """Diffs of every metric of every chain and endpoint in either run; ``current`` is a
    summary.json or a benchmark.json (a mapping or a path), ``baseline`` a benchmark.json
    or a list of several (saved runs, any order): then each baseline value is the median
    over the runs that have it and its noise at least the runs' spread (``run_spread``);
    a list of one is that run alone."""
    now, then = _metrics(current), _baseline_metrics(baseline)
    keys = sorted(now.keys() | then.keys(), key=lambda k: (_KINDS.index(k[0]), k[1]))
    out = []
    for key in keys:
        a, b = then.get(key, {}), now.get(key, {})
        for metric in METRICS:
            base, cur = a.get(metric), b.get(metric)
            change = pct = noise = None
            if base is not None and cur is not None:
                change = round(cur - base, 6)
                pct = round(change / base * 100, 4) if base else None
                noise = change_noise(metric, a, b)
                spread = a.get("spread:" + metric)
                if spread is not None:  # several baseline runs: at least what shifts between
                    noise = max(noise or 0.0, spread)
                noise = round(noise, 6) if noise is not None else None
            unit = "" if _counted(*key) and metric in LATENCY_METRICS else UNITS[metric]
            out.append(Diff(key[0], key[1], metric, unit, base, cur, change, pct, noise))
    return out


# -- bounds and regressions ------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """``p95:10%``: how much worse than the baseline a metric may get."""

    metric: str
    limit: float  # percent when relative; ms for latency, percentage points for error_rate
    relative: bool
    text: str
    plus: float = 0.0  # ms a relative latency bound allows on top (``10%+2ms``)

    def allowed(self, base: float) -> float:
        """The worsening the bound allows from ``base``, in the metric's unit."""
        return self.limit / 100 * base + self.plus if self.relative else self.limit


_FAIL_FORM = ("expected METRIC:BOUND[,...] such as p95:10%,p99:20%,error_rate:0.5 (p50, p95, "
              "p99, mean: a percent of the baseline such as 10%, an increase such as 50ms, "
              "or both such as 10%+2ms; error_rate: percentage points such as 0.5; count, "
              "rate: a percent drop such as 20%)")
_BOUND = re.compile(r"(?P<metric>\w+)\s*:\s*(?P<num>\d+\.?\d*|\.\d+)\s*(?P<unit>%|ms|s|pp)?"
                    r"(?:\s*\+\s*(?P<plus>\d+\.?\d*|\.\d+)\s*(?P<plus_unit>ms|s))?")


def parse_compare_fail(spec: str) -> tuple[Bound, ...]:
    """``p95:10%,p99:20%,error_rate:0.5`` -> bounds; ValueError says what is allowed."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        m = _BOUND.fullmatch(part)
        if m is None:
            raise ValueError(_FAIL_FORM)
        metric, num, unit = m["metric"], float(m["num"]), m["unit"] or ""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; {_FAIL_FORM}")
        if m["plus"] is not None and not (metric in LATENCY_METRICS and unit == "%"):
            raise ValueError(f"{metric} does not take {part.partition(':')[2].strip()!r}; "
                             f"{_FAIL_FORM}")
        if m["plus"] is not None:
            plus = float(m["plus"]) * (1000 if m["plus_unit"] == "s" else 1)
            out.append(Bound(metric, num, True, f"{m['num']}%+{m['plus']} {m['plus_unit']}",
                             plus))
        elif metric in LATENCY_METRICS and unit in ("%", "ms", "s"):
            limit = num * 1000 if unit == "s" else num
            text = f"{m['num']}%" if unit == "%" else f"{m['num']} {unit}"
            out.append(Bound(metric, limit, unit == "%", text))
        elif metric == "error_rate" and unit in ("", "pp"):
            out.append(Bound(metric, num, False, f"{m['num']} pp"))
        elif metric in ("count", "rate") and unit == "%":
            out.append(Bound(metric, num, True, f"{m['num']}%"))
        else:
            raise ValueError(f"{metric} does not take {part.partition(':')[2].strip()!r}; "
                             f"{_FAIL_FORM}")
    return tuple(out)


@dataclass(frozen=True)
class Regression:
    """A diff beyond its bound, with a one-line message."""

    diff: Diff
    bound: Bound
    amount: float  # percent, ms or percentage points, as the bound
    message: str

    @property
    def short(self) -> str:
        """``chain new_certificate p95 +23.4%``."""
        d, b = self.diff, self.bound
        sign = "-" if d.metric in ("count", "rate") else "+"
        if b.relative:
            how = f"{sign}{self.amount:.1f}%"
        elif d.metric == "error_rate":
            how = f"+{self.amount:.2f} pp"
        else:
            how = "+" + format_value(self.amount, "ms")
        return f"{d.kind} {d.name} {d.metric} {how}"


def _amount(d: Diff, b: Bound) -> float | None:
    if d.change is None:
        return None
    if d.metric in ("count", "rate"):
        return -d.change_pct if d.change_pct is not None else None
    if not b.relative and d.metric in LATENCY_METRICS and d.unit != "ms":  # a count phase
        return None
    return d.change_pct if b.relative else d.change


def _beyond(d: Diff, b: Bound) -> bool:
    """Whether ``d`` is worse than ``b`` allows, and worse than its noise explains."""
    assert d.change is not None and d.baseline is not None
    worse = -d.change if d.metric in ("count", "rate") else d.change
    return worse > b.allowed(d.baseline) and worse > (d.noise or 0.0)


def regressions(diffs: Iterable[Diff], bounds: Sequence[Bound], *,
                min_count: int = 0) -> list[Regression]:
    """The diffs worse than a bound of their metric by more than their noise
    (``Diff.noise``); an entry new or gone is none, and so is one with fewer than
    ``min_count`` completions in either run (too few to tell)."""
    diffs = list(diffs)
    few = {(d.kind, d.name) for d in diffs if d.metric == "count"
           and min(d.baseline or 0, d.current or 0) < min_count}
    out = []
    for d in diffs:
        if (d.kind, d.name) in few:
            continue
        for b in bounds:
            amount = _amount(d, b) if b.metric == d.metric else None
            if amount is None or not _beyond(d, b):
                continue
            was, now = (format_value(v, d.unit) for v in (d.baseline, d.current))
            if d.noise:
                now += "; noise \u00b1" + (f"{d.noise:.2f} pp" if d.metric == "error_rate"
                                           else format_value(d.noise, d.unit))
            if b.relative:
                verb = "dropped" if d.metric in ("count", "rate") else "regressed"
                how = f"{verb} {amount:.1f}%"
            else:
                how = "regressed " + (f"{amount:.2f} pp" if d.metric == "error_rate"
                                      else format_value(amount, "ms"))
            out.append(Regression(d, b, amount, f"{d.kind} {d.name} {d.metric} {how} "
                                                f"({was} -> {now}; bound {b.text})"))
    return out


# -- text ------------------------------------------------------------------------------------


_HEADER = {"count": "count", "rate": "per s", "p50": "p50 ms", "p95": "p95 ms",
           "p99": "p99 ms", "mean": "mean ms", "error_rate": "errors %"}


def _cell(d: Diff, flagged: bool) -> str:
    if d.current is None:
        return "gone" if d.baseline is not None else "-"
    cur = format_value(d.current, d.unit).removesuffix(" ms").removesuffix("/s")
    cur = cur.removesuffix("%")
    if d.baseline is None:
        return f"{cur} (new)"
    if d.metric == "error_rate":
        change = f"{d.change or 0:+.2f}"
    elif d.change_pct is None:
        change = "+0%" if not d.change else "n/a"
    else:
        change = f"{d.change_pct:+.1f}%"
    return f"{cur} ({change})" + ("!" if flagged else "")


def format_diffs(diffs: Sequence[Diff], regressions: Sequence[Regression], *,
                 label: str | None = None) -> str:
    """Per chain and per endpoint, each metric now with its change against the baseline
    (``!`` beyond its bound), then one line per regression."""
    flagged = {(r.diff.kind, r.diff.name, r.diff.metric) for r in regressions}
    head = f"wec vs baseline {label}" if label else "wec vs baseline"
    lines = [f"{head}: {len(regressions)} regression{'' if len(regressions) == 1 else 's'}"]
    for kind in _KINDS:
        rows: dict[str, dict[str, str]] = {}
        for d in diffs:
            if d.kind == kind:
                rows.setdefault(d.name, {})[d.metric] = _cell(
                    d, (d.kind, d.name, d.metric) in flagged)
        if rows:
            table = [[kind, *(_HEADER[m] for m in METRICS)]]
            table += [[name, *(cells.get(m, "-") for m in METRICS)]
                      for name, cells in rows.items()]
            lines += ["", *text_table(table)]
    if regressions:
        lines += ["", *(r.message for r in regressions)]
    return "\n".join(lines) + "\n"
