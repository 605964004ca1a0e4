"""How sure a run's figures are: a 95% confidence interval for each latency figure (p50,
p95, p99, mean) of each chain and endpoint, from the run's HDR histograms (controller).

Two estimates, the wider wins:

    batch means      the run cut into ``BLOCKS`` stretches of time with about as many
                     results each (from the per-second series); the figure of each stretch;
                     half-width = t(0.975, k-1) * sd / sqrt(k). It sees what drifts within
                     a run (the machine's other load, the CA's state) as well as sampling.
    order statistic  the ranks n*q -+ 1.96*sqrt(n*q*(1-q)) of the whole histogram: the
                     sampling noise of a quantile alone, which holds for a few samples too
                     (the mean: 1.96 * stddev / sqrt(n)).

:func:`add_intervals` puts them in summary.json (``ci_ms``: figure -> [low, high] in ms, on
each chain and endpoint entry; ``high`` null: too few samples to bound it from above);
:func:`add_benchmark_intervals` in benchmark.json
(``extra_info.ci``, seconds, pytest-benchmark's unit; ``extra_info.ci_method``), so that a
saved baseline carries its own. :mod:`pytest_wec.controller.comparison` uses both, and
:func:`run_spread` for a baseline of several saved runs: what shifts between runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_wec.controller.histogram import Histogram, index_range

if TYPE_CHECKING:
    from pytest_wec.controller.aggregator import Aggregator
    from pytest_wec.controller.buckets import Buckets
    from pytest_wec.controller.stats import NameSecondStats

__all__ = ["BLOCKS", "FIGURES", "METHOD", "Z", "add_benchmark_intervals", "add_intervals",
           "intervals", "run_spread", "t975"]

#: the stretches of time a run is cut into for the batch means
BLOCKS = 10
Z = 1.96
FIGURES = ("p50", "p95", "p99", "mean")
METHOD = f"95% batch means over {BLOCKS} stretches of time, at least the order statistic"
#: Student's t at 0.975 for 1 .. 10 degrees of freedom (more: about Z)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
#: ... and for 11 .. 30
_T975_MORE = (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080,
              2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _figure(h: Histogram, figure: str) -> float:
    """A figure of a histogram, in microseconds."""
    if figure == "mean":
        return h.mean()
    return float(min(max(h.percentiles((float(figure[1:]),))[0], h.min), h.max))


def _order_bounds(h: Histogram, figure: str) -> tuple[float, float]:
    """The figure's 95% bounds (us) from the whole histogram: a quantile's from the ranks
    n*q -+ 1.96*sqrt(n*q*(1-q)), a rank below the first giving 0 and one past the last
    giving no upper bound (inf: too few samples to bound it); the mean's from its standard
    error."""
    n = h.total
    if n < 2:  # one sample bounds nothing
        return 0.0, math.inf
    if figure == "mean":
        var = 0.0
        mean = h.mean()
        for i, c in h.counts.items():
            low, high = index_range(i)
            var += ((low + high) / 2 - mean) ** 2 * c
        half = Z * math.sqrt(var / (n - 1)) / math.sqrt(n)
        return max(mean - half, 0.0), mean + half
    q = float(figure[1:]) / 100
    spread = Z * math.sqrt(n * q * (1 - q))
    lo_rank, hi_rank = n * q - spread, n * q + spread
    lo = 0.0 if lo_rank < 1 else float(max(h.percentiles((100 * lo_rank / n,))[0], h.min))
    hi = math.inf if hi_rank > n else float(min(h.percentiles((100 * hi_rank / n,))[0], h.max))
    return lo, hi


def _blocks(series: Buckets[NameSecondStats] | None, total: int) -> list[Histogram]:
    """The series' buckets merged into about ``BLOCKS`` stretches of time with about as
    many results each."""
    if series is None or total < 2:
        return []
    out: list[Histogram] = []
    cur = Histogram()
    per = total / BLOCKS
    for _t, ns in sorted(series.items(), key=lambda item: item[0]):
        cur.add(ns.latency)
        if cur.total >= per and len(out) < BLOCKS - 1:
            out.append(cur)
            cur = Histogram()
    if cur.total:
        out.append(cur)
    return out


def _batch_half(blocks: list[Histogram], figure: str) -> float:
    k = len(blocks)
    if k < 3:
        return 0.0
    values = [_figure(b, figure) for b in blocks]
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    t = _T975[k - 2] if k - 1 <= len(_T975) else Z
    return t * sd / math.sqrt(k)


def intervals(h: Histogram, series: Buckets[NameSecondStats] | None = None,
              scale: float = 1000) -> dict[str, list[float | None]]:
    """Figure -> [low, high] (``high`` None: no upper bound, too few samples), divided by
    ``scale`` (1000: us as ms; 1: counts); empty without data. The wider of the order
    statistic's bounds and the batch means' half-width around the figure.

    ``series``: the per-second series of the same results (the batch means need it)."""
    if not h.total:
        return {}
    blocks = _blocks(series, h.total)
    out: dict[str, list[float | None]] = {}
    for figure in FIGURES:
        value = _figure(h, figure)
        half = _batch_half(blocks, figure)
        lo, hi = _order_bounds(h, figure)
        low, high = max(min(lo, value - half), 0.0), max(hi, value + half)
        out[figure] = [round(low / scale, 6),
                       None if math.isinf(high) else round(high / scale, 6)]
    return out


def _all(agg: Aggregator) -> Iterable[tuple[str, str, dict[str, list[float | None]]]]:
    for kind, stats, series in (("chain", agg.chains, agg.chain_seconds),
                                ("endpoint", agg.endpoints, agg.endpoint_seconds)):
        for name, s in stats.items():
            if s.count:
                yield kind, name, intervals(s.latency, series.get(name))


def _phase_ci(agg: Aggregator, name: str, chain: str | None
              ) -> dict[str, list[float | None]]:
    """A phase's intervals (order statistic alone: phases have no per-second series), in
    ms for the time phases, in their own unit for the count phases."""
    from pytest_wec.controller.phases import COUNT_PHASES

    return intervals(agg.phases.merged(name, chain), None,
                     1 if name in COUNT_PHASES else 1000)


def add_intervals(tables: Mapping[str, Any], agg: Aggregator) -> None:
    """``ci_ms`` on each chain and endpoint entry of summary.json's tables, and ``ci`` (in
    the phase's unit: ms, or a count) on each phase entry."""
    for kind, name, ci in _all(agg):
        entry = (tables.get(kind + "s") or {}).get(name)
        if isinstance(entry, MutableMapping):
            entry["ci_ms"] = ci
    places: list[tuple[str | None, Any]] = [(None, tables.get("phases"))]
    places += [(c, e.get("phases")) for c, e in (tables.get("chains") or {}).items()
               if isinstance(e, Mapping)]
    for chain, phases in places:
        for name, entry in (phases or {}).items():
            if isinstance(entry, MutableMapping):
                entry["ci"] = _phase_ci(agg, name, chain)


def add_benchmark_intervals(benchmarks: Iterable[MutableMapping[str, Any]],
                            agg: Aggregator) -> None:
    """``extra_info.ci`` (seconds) and ``extra_info.ci_method`` on each chain and endpoint
    benchmark of benchmark.json."""
    found = {(kind, name): ci for kind, name, ci in _all(agg)}
    for b in benchmarks:
        ci = found.get((b.get("group"), b.get("name")))  # type: ignore[arg-type]
        if b.get("group") == "phase":
            name, _, chain = str(b.get("name")).partition("[")
            counted = b["extra_info"].get("unit") not in (None, "s")
            ci = _phase_ci(agg, name, chain.rstrip("]") or None)
            if counted:  # counts as they are; time phases in seconds like the others
                b["extra_info"]["ci"] = ci
                b["extra_info"]["ci_method"] = METHOD
                continue
        if ci is not None:
            b["extra_info"]["ci"] = {f: [None if v is None else round(v / 1000, 9) for v in lh]
                                     for f, lh in ci.items()}
            b["extra_info"]["ci_method"] = METHOD


# -- the noise of a change -------------------------------------------------------------------


def _both(a: float | None, b: float | None) -> tuple[float, float] | None:
    """Two half-widths; one missing (a baseline saved before intervals) takes the other's:
    the same load on the same setup has about the same noise."""
    if a is None and b is None:
        return None
    return (b if a is None else a, a if b is None else b)  # type: ignore[return-value]


def _side(m: Mapping[str, Any], figure: str, side: str) -> float | None:
    """How far below (``lo``) or above (``hi``) the figure its interval goes."""
    value, bound = m.get(figure), m.get(f"{side}:{figure}")
    if not isinstance(value, int | float) or bound is None:
        return None
    b = float(bound)
    return max(value - b if side == "lo" else b - value, 0.0)


def change_noise(metric: str, then: Mapping[str, Any], now: Mapping[str, Any]) -> float | None:
    """The 95% half-width of ``now[metric] - then[metric]`` in the metric's unit (ms,
    percentage points, a count, /s), from each run's own interval (``"lo:p95"``,
    ``"hi:p95"``, ms; inf: no upper bound, too few samples): for an increase, how far the
    current run's goes below its figure and the baseline's above its own; or, for
    counts and rates, Poisson noise and, for error rates, binomial noise of the counts;
    None when neither run says."""
    if metric in FIGURES:  # an increase: the current's lower side, the baseline's upper
        below = _both(_side(now, metric, "lo"), _side(then, metric, "lo"))
        above = _both(_side(then, metric, "hi"), _side(now, metric, "hi"))
        if below is None or above is None:
            return None
        return math.hypot(below[0], above[0])
    n0, n1 = then.get("count"), now.get("count")
    if not n0 or not n1:
        return None
    if metric == "count":
        return Z * math.sqrt(n0 + n1)
    if metric == "rate":
        r0, r1 = then.get("rate"), now.get("rate")
        if r0 is None or r1 is None:
            return None
        return Z * math.sqrt(r0 * r0 / n0 + r1 * r1 / n1)
    if metric == "error_rate":
        f0, f1 = then.get("failed"), now.get("failed")
        if f0 is None or f1 is None:
            return None
        p0, p1 = (f0 + 1) / (n0 + 2), (f1 + 1) / (n1 + 2)  # never 0: a clean run has noise
        return 100 * Z * math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    return None


def t975(df: int) -> float:
    """Student's t at 0.975 for ``df`` (>= 1) degrees of freedom; past 30, about Z."""
    table = _T975 + _T975_MORE
    if df < 1:
        raise ValueError("t975: needs at least one degree of freedom")
    return table[df - 1] if df <= len(table) else Z


def run_spread(values: Sequence[float]) -> float | None:
    """The 95% prediction half-width for one new run's figure from the same figure of
    ``n`` earlier runs: t(0.975, n-1) * s * sqrt(1 + 1/n); what shifts between runs (the
    machine's other load, the CA's state), which no interval of one run sees. ``s`` is
    their spread, robust to one outlying run from three runs on: 1.4826 times the median
    absolute deviation from their median (the standard deviation for normal figures); of
    two runs, their sample standard deviation. None for fewer than two runs."""
    n = len(values)
    if n < 2:
        return None
    if n == 2:
        s = abs(values[0] - values[1]) / math.sqrt(2)
    else:
        mid = statistics.median(values)
        s = 1.4826 * statistics.median(abs(v - mid) for v in values)
    return t975(n - 1) * s * math.sqrt(1 + 1 / n)


def halves(ci: Any, scale: float) -> dict[str, float]:
    """``{"lo:p95": low, "hi:p95": high, ...}`` in ms (``hi`` inf: no upper bound) from a
    ``ci`` mapping (figure -> [low, high], times ``scale`` to ms); what is missing or
    malformed is left out."""
    out: dict[str, float] = {}
    if not isinstance(ci, Mapping):
        return out
    for figure in FIGURES:
        pair = ci.get(figure)
        if isinstance(pair, list | tuple) and len(pair) == 2 \
                and isinstance(pair[0], int | float):
            out["lo:" + figure] = float(pair[0]) * scale
            out["hi:" + figure] = float(pair[1]) * scale \
                if isinstance(pair[1], int | float) else math.inf
    return out
