"""The generator's health in a load run's verdict (controller): was the generator able to
make the load it was asked for, so that the results show the CA and not the generator?

A run is unhealthy, and its gate fails (:mod:`pytest_wec.controller.gating`) unless
``--wec-allow-saturated``, when one of these holds over the time under load:

    schedule lag     open model: the p99 of the part of each start's lag (``started -
                     scheduled``) that the generator's own work explains over 5 ms
                     (:func:`pytest_wec.worker.runner.own_lag`: the CPU its event loop's
                     thread spent past the planned start; lag while the OS ran other
                     processes, the CA among them, or while the thread waited for the GIL is
                     the machine's and does not count). The closed model has no schedule:
                     a virtual user waiting for the CA is no lag.
    CPU              a worker's process CPU over 90% of one core for more than 10% of the
                     time under load, from the status records' CPU seconds between two
                     records (start-up before the common start and the tail after the load
                     do not count; without xdist the controller shares the process).
    rate             open model: the starts made within the time under load fell short of
                     the starts asked (``--wec-rate`` or its stages, and the dashboard's
                     changes, integrated over that time) by more than 1% and by more than
                     one start per worker (the schedule's rounding); starts dropped over
                     the ``--wec-load`` cap are starts not made.

:class:`HotTime` keeps, per worker, the time its CPU was over the limit (fed by the
aggregator with every status record); :func:`assess` makes summary.json's
``generator.health``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_wec.controller.aggregator import Aggregator

__all__ = ["CPU_LIMIT_PCT", "CPU_SHARE_LIMIT", "LAG_LIMIT_MS", "RATE_MISS_LIMIT", "HotTime",
           "asked_starts", "assess"]

#: the generator's own schedule lag, p99, ms
LAG_LIMIT_MS = 5.0
#: a worker's process CPU, percent of one core ...
CPU_LIMIT_PCT = 90.0
#: ... for more than this share of the time under load
CPU_SHARE_LIMIT = 0.10
#: starts made short of the starts asked, a fraction of them (open model)
RATE_MISS_LIMIT = 0.01
#: hot intervals kept per worker; past it, the next one extends the last (over-counts)
_MAX_INTERVALS = 10_000


class HotTime:
    """Per worker, the epoch intervals over which its process CPU was above
    :data:`CPU_LIMIT_PCT`: from each pair of consecutive status records of one session,
    ``(cpu_s - cpu_s') / (t - t')`` (records lost on the way widen the pair, they do not
    spoil it). Not thread-safe, like the aggregator that holds it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # worker/session -> (t, cpu_s)
        self.hot: dict[str, list[list[float]]] = {}  # worker -> merged [start, end]

    def status(self, st: Mapping[str, Any]) -> None:
        key = f"{st.get('worker')}/{st.get('session', '')}"
        t, cpu = float(st.get("t", 0.0)), float(st.get("cpu_s", 0.0))
        prev = self._last.get(key)
        if prev is not None and t <= prev[0]:
            return  # a duplicate or a late record
        self._last[key] = (t, cpu)
        if prev is not None and 100.0 * (cpu - prev[1]) / (t - prev[0]) > CPU_LIMIT_PCT:
            self._add(str(st.get("worker")), prev[0], t)

    def _add(self, worker: str, start: float, end: float) -> None:
        spans = self.hot.setdefault(worker, [])
        if spans and start <= spans[-1][1] and end >= spans[-1][0]:
            spans[-1] = [min(spans[-1][0], start), max(spans[-1][1], end)]
        elif len(spans) >= _MAX_INTERVALS:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
            if len(spans) > 1 and start < spans[-2][1]:  # out of order (another session)
                spans.sort()
                merged: list[list[float]] = []
                for s, e in spans:
                    if merged and s <= merged[-1][1]:
                        merged[-1][1] = max(merged[-1][1], e)
                    else:
                        merged.append([s, e])
                spans[:] = merged

    def share(self, worker: str, start: float, end: float) -> float:
        """The share of ``[start, end]`` (epoch) the worker's CPU was over the limit."""
        if end <= start:
            return 0.0
        hot = sum(max(min(e, end) - max(s, start), 0.0) for s, e in self.hot.get(worker, ()))
        return min(hot / (end - start), 1.0)

    def merge(self, other: HotTime) -> None:
        for worker, spans in other.hot.items():
            for s, e in spans:
                self._add(worker, s, e)
        for key, last in other._last.items():
            mine = self._last.get(key)
            if mine is None or last[0] > mine[0]:
                self._last[key] = last

    def to_plain(self) -> dict[str, Any]:
        return {"hot": {w: [list(x) for x in spans] for w, spans in self.hot.items()},
                "last": {k: list(v) for k, v in self._last.items()}}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any] | None) -> HotTime:
        out = cls()
        for w, spans in ((data or {}).get("hot") or {}).items():
            out.hot[str(w)] = [[float(s), float(e)] for s, e in spans]
        for k, (t, cpu) in ((data or {}).get("last") or {}).items():
            out._last[str(k)] = (float(t), float(cpu))
        return out


def _area(rate: float | None, stages: Sequence[Sequence[float]] | None, until: float) -> float:
    """The integral of the run's planned target rate from 0 to ``until`` seconds (stages:
    linear ramps, as :meth:`pytest_wec.worker.runner.LoadPlan.total_target`)."""
    if until <= 0:
        return 0.0
    if not stages:
        return float(rate or 0.0) * until
    t0, start, area = 0.0, 0.0, 0.0
    for dur, target in stages:
        if until <= t0:
            break
        seg = min(until - t0, float(dur))
        end_v = start + (float(target) - start) * seg / float(dur) if dur else float(target)
        area += (start + end_v) / 2 * seg
        t0 += float(dur)
        start = float(target)
    return area + start * max(until - t0, 0.0)


def asked_starts(rate: float | None, stages: Sequence[Sequence[float]] | None,
                 duration: float, controls: Sequence[Mapping[str, Any]] = ()) -> float:
    """Starts asked over ``duration`` seconds of load: the planned rate (or stages) until
    the dashboard's first change (``controls``: ``at_s`` and ``target``), then each change's
    value until the next."""
    changes = sorted((float(c["at_s"]), float(c["target"])) for c in controls
                     if isinstance(c.get("target"), int | float)
                     and isinstance(c.get("at_s"), int | float))
    changes = [(min(max(at, 0.0), duration), v) for at, v in changes]
    first = changes[0][0] if changes else duration
    total = _area(rate, stages, first)
    for i, (at, value) in enumerate(changes):
        nxt = changes[i + 1][0] if i + 1 < len(changes) else duration
        total += value * max(nxt - at, 0.0)
    return total


def _criterion(name: str, value: float | None, limit: float, unit: str, ok: bool,
               text: str) -> dict[str, Any]:
    return {"name": name, "value": value, "limit": limit, "unit": unit, "ok": ok, "text": text}


def assess(agg: Aggregator, run: Mapping[str, Any],
           controls: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """summary.json's ``generator.health`` from the aggregator and the summary's ``run``
    (``model``, ``rate``, ``stages``, ``load``, ``workers``, ``started`` and ``ended``: the
    time under load, epoch seconds): ``ok``, ``saturated``, ``reason`` (None when ok) and
    one entry per criterion (``name``, ``value``, ``limit``, ``unit``, ``ok``, ``text``)."""
    start = float(run.get("load_started") or run.get("started") or agg.started)
    end = float(run.get("ended") or start)
    duration = max(end - start, 0.0)
    model = str(getattr(run.get("model"), "value", run.get("model")) or "closed")
    criteria: list[dict[str, Any]] = []
    own = agg.own_lag
    if model == "open" and own.total:
        p99 = own.summary_ms((99,))["p99"]
        wall = agg.schedule_lag.summary_ms((99,))["p99"]
        ok = p99 <= LAG_LIMIT_MS
        criteria.append(_criterion(
            "schedule_lag", p99, LAG_LIMIT_MS, "ms", ok,
            f"schedule lag p99 {p99:.2f} ms {'<=' if ok else 'over'} {LAG_LIMIT_MS:g} ms, "
            f"the generator's own part of {wall:.2f} ms by the clock"))
    workers = sorted({str(w.get("worker")) for w in agg.workers.values()} | set(agg.cpu_hot.hot))
    shares = {w: round(agg.cpu_hot.share(w, start, end), 4) for w in workers}
    if shares:
        worst = max(shares, key=lambda w: shares[w])
        share = shares[worst]
        ok = share <= CPU_SHARE_LIMIT
        criteria.append(_criterion(
            "cpu", round(100 * share, 1), 100 * CPU_SHARE_LIMIT, "%", ok,
            f"worker {worst}'s CPU over {CPU_LIMIT_PCT:g}% for {100 * share:.0f}% of the time "
            f"under load ({'<=' if ok else 'over'} {100 * CPU_SHARE_LIMIT:g}%)"))
    rate = run.get("rate")
    if model == "open" and duration > 0 and (rate or run.get("stages")):
        asked = asked_starts(rate if isinstance(rate, int | float) else None,
                             run.get("stages"), duration, controls)
        made = sum(c.count + c.cancelled + c.skipped for c in agg.chains.values()) \
            + agg.dropped_results - agg.starts_late
        missed = asked - made
        n_workers = max(int(run.get("workers") or 1), len(workers), 1)
        ok = missed <= max(RATE_MISS_LIMIT * asked, n_workers)
        pct = 100 * missed / asked if asked else 0.0
        why = f"{made} starts of {asked:.0f} asked"
        if agg.dropped_starts:
            why += (f"; {agg.dropped_starts} dropped over the cap of {run.get('load')} in "
                    "flight" if run.get("load") else f"; {agg.dropped_starts} dropped")
        criteria.append(_criterion(
            "rate", round(made / duration, 3), round(asked / duration, 3), "/s", ok,
            f"achieved {made / duration:.2f}/s of {asked / duration:.2f}/s asked "
            f"({-pct:+.1f}%, {'within' if ok else 'short by more than'} "
            f"{100 * RATE_MISS_LIMIT:g}%; {why})"))
    failed = [c for c in criteria if not c["ok"]]
    saturated = any(c["name"] in ("schedule_lag", "cpu") for c in failed)
    if not failed:
        reason = None
    else:
        head = "generator saturated" if saturated else "generator short of the asked rate"
        reason = f"{head} ({'; '.join(c['text'] for c in failed)})"
    return {"ok": not failed, "saturated": saturated, "reason": reason, "criteria": criteria,
            "cpu_over_limit": shares, "window_s": round(duration, 3)}
