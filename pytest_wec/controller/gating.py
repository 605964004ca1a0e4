"""CI gating: thresholds on a run's results and regressions against a baseline decide the
exit status (runs in the controller, after the summary is built).

Thresholds (:mod:`pytest_wec.controller.thresholds`, e.g. ``p95(endpoint:newOrder) < 500ms``)
are evaluated against summary.json: latencies come from the summary's ``latency_ms`` (merged
HDR histograms; ``requests`` and ``chains`` from its ``overall`` entries; ``corrected`` from
``latency_from_scheduled_ms``; a phase from ``phases``, a count phase's ``values``; a
percentile beyond p50 .. p99.9 is there when the summary was built with it); ``error_rate`` is
failed / completed (chains for a chain, requests for an endpoint); ``rate`` is per second of
the run. A threshold whose chain or endpoint has no data fails: ``no data for chain:x``.

``--wec-abort-on-fail`` (:func:`can_no_longer_pass`) stops a run only when a threshold cannot
pass any more whatever the rest of the run does: ``max`` (and ``count``) already above a
``<``/``<=`` bound, ``min`` already below a ``>``/``>=`` bound, and ``error_rate < X`` after
:data:`ABORT_MIN_SAMPLE` completions when even if every remaining one succeeded, at twice the
throughput seen so far plus 10 %, the rate would still break the bound. Percentiles, means,
``rate`` and lower bounds on ``count`` are decided at the end only.

Exit status: :data:`EXIT_GATE_FAILED` (7) when a threshold failed, a regression broke its
bound (:mod:`~pytest_wec.controller.comparison`), the generator was saturated or short of
the asked rate (summary.json's ``generator.health``, :mod:`~pytest_wec.controller.health`;
not under ``--wec-allow-saturated``) or an abort stopped the run, in place of
pytest's 0 (and of its 2 when the abort interrupted the session). pytest's own 1 to 6 (tests
failed, interrupted, internal error, usage error, no tests collected, too many warnings) are
kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_wec.controller.thresholds import OPERATORS, Threshold, format_value

if TYPE_CHECKING:
    from pytest_wec.controller.baseline import Baseline
    from pytest_wec.controller.comparison import Bound, Diff, Regression

__all__ = ["ABORT_MIN_SAMPLE", "EXIT_GATE_FAILED", "GateResult", "Verdict",
           "can_no_longer_pass", "doomed", "evaluate", "format_verdicts", "gate", "text_table"]

#: The exit status of a run whose gates failed (pytest uses 0 to 6).
EXIT_GATE_FAILED = 7
#: Completions an ``error_rate`` needs before it may abort a run.
ABORT_MIN_SAMPLE = 100


# -- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A threshold's outcome; ``value`` is in the threshold's unit (None without data)."""

    expr: str
    value: float | None
    ok: bool
    reason: str
    unit: str = ""

    @property
    def value_text(self) -> str:
        return format_value(self.value, self.unit) if self.value is not None else "-"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _error_counts(t: Threshold, s: Mapping[str, Any]) -> tuple[int, int] | str:
    """(completed, failed) behind an error_rate, or why there are none."""
    if t.scope == "total":
        totals = s.get("totals") or {}
        n, failed = int(totals.get(t.name, 0)), int(totals.get(f"{t.name}_failed", 0))
    else:
        entry = (s.get(t.scope + "s") or {}).get(t.name)
        if entry is None:
            return f"no data for {t.selector}"
        n, failed = int(entry["count"]), int(entry["failed"])
    return (n, failed) if n else f"no data for {t.selector}"


def _scale_rate(fraction: float, unit: str) -> float:
    return round(fraction * 100 if unit == "%" else fraction, 9)


def _measure(t: Threshold, s: Mapping[str, Any]) -> float | str:
    """The threshold's value in its unit, or why there is none."""
    if t.kind == "error_rate":
        counts = _error_counts(t, s)
        return counts if isinstance(counts, str) else _scale_rate(counts[1] / counts[0], t.unit)
    totals = s.get("totals") or {}
    if t.scope == "total":
        if t.kind == "count":
            v = totals.get(t.name)
            return float(v) if isinstance(v, int | float) else f"no {t.name} in the summary"
        if t.kind == "rate":
            if t.name != "certificates_issued":
                return float(totals.get(f"{t.name}_per_s", 0.0))
            d = float((s.get("run") or {}).get("duration_s") or 0.0)
            return round(totals.get(t.name, 0) / d, 3) if d > 0 else 0.0
        entry = (s.get("overall") or {}).get(t.name)
        if entry is None:
            return f"no overall latency of {t.name} in the summary"
    elif t.scope == "phase":  # summary.json's phases, or a chain's own
        where = s if t.chain is None else (s.get("chains") or {}).get(t.chain) or {}
        entry = (where.get("phases") or {}).get(t.name)
        if entry is None:
            return f"no data for {t.selector}"
        if t.kind == "count":
            return float(entry["count"])
    else:
        entry = (s.get(t.scope + "s") or {}).get(t.name)
        if entry is None:
            return f"no data for {t.selector}"
        if t.kind == "count":
            return float(entry["count"])
        if t.kind == "rate":
            return float(entry["per_s"])
    if not entry.get("count"):
        return f"no data for {t.selector}"
    # corrected: from the intended start (open model); the closed model has none apart
    lat = (entry.get("latency_from_scheduled_ms") if t.corrected else None) \
        or entry.get("latency_ms") or entry.get("values") or {}
    if t.key not in lat:
        return f"no {t.key} of {t.selector} in the summary"
    value = float(lat[t.key])
    return round(value / 1000, 6) if t.unit == "s" else value


def _verdict(t: Threshold, s: Mapping[str, Any]) -> Verdict:
    v = _measure(t, s)
    if isinstance(v, str):
        return Verdict(t.text, None, False, v, t.unit)
    ok = OPERATORS[t.op](v, t.limit)
    shown = format_value(v, t.unit)
    reason = f"{shown} {t.op} {t.limit_text}" if ok else f"{shown}, not {t.op} {t.limit_text}"
    return Verdict(t.text, v, ok, reason, t.unit)


def evaluate(thresholds: Iterable[Threshold], summary: Mapping[str, Any]) -> list[Verdict]:
    """One verdict per threshold against a summary.json (``pytest_wec.controller.outputs``)."""
    return [_verdict(t, summary) for t in thresholds]


def can_no_longer_pass(threshold: Threshold, live_summary: Mapping[str, Any], elapsed: float,
                       duration: float) -> bool:
    """Whether ``threshold`` fails whatever the rest of the run does (see the module doc).

    ``live_summary`` holds everything since the start (summary.json's ``totals``,
    ``chains``, ``endpoints``, ``overall``); ``elapsed`` and ``duration`` are seconds of
    load so far and planned."""
    t = threshold
    v = _measure(t, live_summary)
    if isinstance(v, str):
        return False
    holds = OPERATORS[t.op](v, t.limit)
    if t.func == "max" or t.kind == "count":  # only grows
        return (t.op in ("<", "<=") and not holds) or (t.op == "==" and v > t.limit)
    if t.func == "min":  # only shrinks
        return (t.op in (">", ">=") and not holds) or (t.op == "==" and v < t.limit)
    if t.kind != "error_rate" or t.op not in ("<", "<=") or elapsed <= 0:
        return False
    counts = _error_counts(t, live_summary)
    if isinstance(counts, str) or counts[0] < ABORT_MIN_SAMPLE:
        return False
    n, failed = counts
    headroom = 2.0 * n * max(duration - elapsed, 0.0) / elapsed + 0.1 * n
    return not OPERATORS[t.op](_scale_rate(failed / (n + headroom), t.unit), t.limit)


def doomed(thresholds: Iterable[Threshold], live_summary: Mapping[str, Any], elapsed: float,
           duration: float) -> list[Verdict]:
    """The verdicts (now) of the thresholds that can no longer pass; empty to go on."""
    return [_verdict(t, live_summary) for t in thresholds
            if can_no_longer_pass(t, live_summary, elapsed, duration)]


# -- text ------------------------------------------------------------------------------------


def text_table(rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """Rows of text (the first is the header) in columns; ``align`` has an ``l`` or ``r`` per
    column (default: the first left-aligned, the others right-aligned)."""
    if not rows:
        return []
    n = len(rows[0])
    align = align or "l" + "r" * (n - 1)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    return ["  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                      for c, w, a in zip(r, widths, align, strict=True)).rstrip()
            for r in rows]


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """The thresholds table: threshold, value, result (``ok`` or ``FAILED`` with why)."""
    if not verdicts:
        return ""
    passed = sum(v.ok for v in verdicts)
    rows = [["threshold", "value", "result"]]
    for v in verdicts:
        result = "ok" if v.ok else "FAILED" + (f" ({v.reason})" if v.value is None else "")
        rows.append([v.expr, v.value_text, result])
    head = f"wec thresholds: {passed} of {len(verdicts)} passed"
    return "\n".join([head, *text_table(rows, "lrl")]) + "\n"


def _listed(items: Sequence[str], most: int = 3) -> str:
    shown = "; ".join(items[:most])
    return shown + (f"; and {len(items) - most} more" if len(items) > most else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- the whole gate --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """Everything that decides the exit status, and its text."""

    verdicts: tuple[Verdict, ...] = ()
    diffs: tuple[Diff, ...] = ()
    regressions: tuple[Regression, ...] = ()
    baseline: str | None = None  # what the run was compared with
    aborted: str | None = None  # why --wec-abort-on-fail stopped the run
    #: why the generator could not make the load asked (controller/health.py); None: it could
    health: str | None = None
    #: the same, when --wec-allow-saturated let the run pass all the same
    saturated_allowed: str | None = None

    @property
    def active(self) -> bool:
        return (bool(self.verdicts) or self.baseline is not None or self.aborted is not None
                or self.health is not None or self.saturated_allowed is not None)

    @property
    def failed(self) -> bool:
        return (any(not v.ok for v in self.verdicts) or bool(self.regressions)
                or self.aborted is not None or self.health is not None)

    def exit_status(self, status: int) -> int:
        """The session's exit status with the gate applied (see the module doc)."""
        if self.failed and (status == 0 or (status == 2 and self.aborted is not None)):
            return EXIT_GATE_FAILED
        return status

    def line(self) -> str | None:
        """The last line of the run: ``wec: PASSED: ...`` or ``wec: FAILED: ...``; None when
        no gate was asked for."""
        if not self.active:
            return None
        failed = [v for v in self.verdicts if not v.ok]
        parts = [f"aborted: {self.aborted}"] if self.aborted else []
        if self.health:
            parts.append(f"{self.health}; --wec-allow-saturated accepts it")
        if failed:
            parts.append(f"{_plural(len(failed), 'threshold')} failed ("
                         + _listed([f"{v.expr}: {v.value_text if v.value is not None else v.reason}"
                                    for v in failed]) + ")")
        if self.regressions:
            parts.append(f"{_plural(len(self.regressions), 'regression')} ("
                         + _listed([r.short for r in self.regressions]) + ")")
        if parts:
            return "wec: FAILED: " + ", ".join(parts)
        done = []
        if self.verdicts:
            done.append(f"{_plural(len(self.verdicts), 'threshold')} passed")
        if self.baseline is not None:
            done.append(f"no regressions against {self.baseline}")
        if self.saturated_allowed:
            done.append(f"{self.saturated_allowed}, allowed by --wec-allow-saturated")
        return "wec: PASSED: " + ", ".join(done)

    def text(self) -> str:
        """The thresholds table, then the comparison with the baseline."""
        from pytest_wec.controller.comparison import format_diffs

        parts = [format_verdicts(self.verdicts)]
        if self.health or self.saturated_allowed:
            parts.append(f"wec generator: {self.health or self.saturated_allowed}\n")
        if self.baseline is not None:
            parts.append(format_diffs(self.diffs, self.regressions, label=self.baseline))
        return "\n".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for summary.json."""
        return {"failed": self.failed, "aborted": self.aborted, "baseline": self.baseline,
                "health": self.health, "saturated_allowed": self.saturated_allowed,
                "thresholds": [v.to_dict() for v in self.verdicts],
                "regressions": [r.message for r in self.regressions],
                "diffs": [dataclasses.asdict(d) for d in self.diffs]}


def gate(summary: Mapping[str, Any], thresholds: Iterable[Threshold] = (),
         baseline: Baseline | None = None, bounds: Sequence[Bound] = (), *,
         aborted: str | None = None, allow_saturated: bool = False) -> GateResult:
    """Thresholds against ``summary``, then ``summary`` against ``baseline`` with ``bounds``;
    the generator's health (summary.json's ``generator.health``) fails the gate unless
    ``allow_saturated``."""
    verdicts = tuple(evaluate(thresholds, summary))
    reason = ((summary.get("generator") or {}).get("health") or {}).get("reason")
    health, allowed = (None, reason) if allow_saturated else (reason, None)
    if baseline is None:
        return GateResult(verdicts, aborted=aborted, health=health, saturated_allowed=allowed)
    from pytest_wec.controller.comparison import compare, regressions

    diffs = compare(summary, baseline.compared)
    return GateResult(verdicts, tuple(diffs), tuple(regressions(diffs, bounds)),
                      baseline.label, aborted, health=health, saturated_allowed=allowed)
