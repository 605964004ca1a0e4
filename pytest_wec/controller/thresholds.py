"""Threshold expressions for CI gating: their syntax, parsed into :class:`Threshold`
(:mod:`pytest_wec.controller.gating` evaluates them against a run's summary).

A threshold is ``FUNC[(SELECTOR)] OP NUMBER[UNIT]``::

    p95(endpoint:newOrder) < 500ms      p99(chain:new_certificate) < 3s     p50 < 200ms
    p99.5(chains) < 2s                  p96(endpoint:finalize) < 1s         p99.99 < 5s
    p99(chain:new_certificate, corrected) < 1s      p95(chains, corrected) < 800ms
    p95(phase:validation) < 2s          p99(phase:issuance, chain:new_certificate) < 1s
    max(phase:polls) <= 10              count(phase:validation) >= 100
    error_rate < 1%                     error_rate(chain:revoke_certificate) < 0.1%
    rate(chains) >= 50/s                rate(requests) > 10/s
    count(certificates_issued) >= 100   count(chain:new_order) >= 10
    max(endpoint:finalize) < 2s         mean(requests) <= 150ms

    function                        selectors (the default first)                  units
    pN (any percentile: p50 p96     requests chains chain:NAME endpoint:NAME       ms (bare), s
    p99.5 p99.99; p999 is p99.9)    phase:NAME [, chain:NAME]                      (a count
    min mean max                                                                   phase: none)
    error_rate                      chains requests chain:NAME endpoint:NAME       %, or a
                                                                                   fraction 0..1
    rate                            chains requests certificates_issued            /s (bare)
                                    chain:NAME endpoint:NAME
    count                           chains requests certificates_issued (any       none
                                    total) chain:NAME endpoint:NAME phase:NAME

``corrected`` after a chain selector (``chains``, ``chain:NAME``) names latency from the
intended start (open model: coordinated omission, summary.json's
``latency_from_scheduled_ms``); in the closed model every chain starts when intended, and it
is the latency from the real start. ``phase:NAME`` is an ACME phase over all chains (one
chain's with ``, chain:NAME``): validation, first_validation_request, issuance,
time_to_certificate (durations), validation_requests, polls (counts: bare limits).

Operators: ``<  <=  >  >=  ==``. :func:`parse_threshold` and :func:`parse_thresholds` raise
ValueError saying what is allowed; :func:`format_value` writes a value in a threshold's unit.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pytest_wec.controller.histogram import percentile_key
from pytest_wec.controller.phases import COUNT_PHASES, PHASES
from pytest_wec.wire.results import ENDPOINTS

__all__ = ["COUNTS", "FUNCTIONS", "LATENCY", "OPERATORS", "Threshold", "format_value",
           "parse_percentile", "parse_threshold", "parse_thresholds", "percentiles_of"]

#: the latency functions summary.json always has; any other percentile pN is allowed too
LATENCY = ("p50", "p90", "p95", "p99", "p999", "min", "mean", "max")
FUNCTIONS = (*LATENCY, "error_rate", "rate", "count")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
COUNTS = ("chains", "requests", "certificates_issued", "chains_ok", "chains_failed",
          "requests_failed", "dropped_starts", "cancelled", "skipped", "results_lost")
_TOTALS = {"latency": ("requests", "chains"), "error_rate": ("chains", "requests"),
           "rate": ("chains", "requests", "certificates_issued"), "count": COUNTS}
_UNITS = {"latency": ("ms", "s", ""), "error_rate": ("%", ""), "rate": ("/s", ""),
          "count": ("",)}
_UNIT_TEXT = {"latency": "a duration in ms or s (bare numbers are ms)",
              "error_rate": "a percentage such as 1% or a fraction from 0 to 1 such as 0.01",
              "rate": "a rate such as 50/s", "count": "a plain number"}
_FUNCS_TEXT = "pN (any percentile, e.g. p95, p99.5), min, mean, max, error_rate, rate, count"
_FORM = ("expected FUNC[(SELECTOR)] OP VALUE such as 'p95(endpoint:newOrder) < 500ms' "
         "(functions: " + _FUNCS_TEXT + "; selectors: chain:NAME, endpoint:NAME, "
         "phase:NAME, chains, requests, certificates_issued, and ', corrected' after a chain "
         "selector; operators: < <= > >= ==; units: ms, s (latency), % (error_rate), /s "
         "(rate), none (count))")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")
_EXPR = re.compile(r"(?P<func>[A-Za-z_][\w.]*)\s*(?:\((?P<arg>[^()]*)\))?\s*"
                   r"(?P<op>[<>=!]+)\s*"
                   r"(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>.*?)\s*")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold; ``limit`` is in ``unit`` (``ms``, ``s``, ``%``, ``/s`` or none;
    none also for a count phase's latency functions, in that phase's own unit)."""

    text: str
    func: str
    scope: str  # "chain", "endpoint" or "total"
    name: str  # the chain, the endpoint or the total (chains, requests, certificates_issued..)
    op: str
    limit: float
    unit: str
    #: latency from the intended start (``corrected``): chains only
    corrected: bool = False
    #: a phase's chain (``phase:validation, chain:new_certificate``); None: every chain
    chain: str | None = None

    def __str__(self) -> str:
        return self.text

    @property
    def kind(self) -> str:
        """``latency``, ``error_rate``, ``rate`` or ``count``."""
        return "latency" if _is_latency(self.func) else self.func

    @property
    def percentile(self) -> float | None:
        """The percentile of a ``pN`` function (``p999``: 99.9); None for the others."""
        return parse_percentile(self.func)

    @property
    def key(self) -> str:
        """The function's key in a summary's latency (``p99.5``, ``max``, ...)."""
        q = self.percentile
        return self.func if q is None else percentile_key(q)

    @property
    def selector(self) -> str:
        sel = f"{self.scope}:{self.name}" if self.scope != "total" else self.name
        if self.chain is not None:
            sel += f", chain:{self.chain}"
        return sel + (", corrected" if self.corrected else "")

    @property
    def limit_text(self) -> str:
        return format_value(self.limit, self.unit, exact=True)


def parse_threshold(text: str) -> Threshold:
    """``p95(endpoint:newOrder) < 500ms`` -> :class:`Threshold`; ValueError says what is
    allowed."""
    m = _EXPR.fullmatch(text.strip())
    if m is None:
        raise ValueError(_FORM)
    func = m["func"].lower()
    if parse_percentile(func) == 99.9:  # p99.9, p99.90: its historical name
        func = "p999"
    if func not in FUNCTIONS:
        if _PERCENTILE.fullmatch(func) is None:
            raise ValueError(f"unknown function {m['func']!r} (functions: {_FUNCS_TEXT})")
        if parse_percentile(func) is None:
            raise ValueError(f"{m['func']}: a percentile is from 0 (excluded) to 100, such "
                             f"as p95, p99.5 or p99.99")
    op = m["op"]
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r} (operators: < <= > >= ==)")
    kind = "latency" if _is_latency(func) else func
    scope, name, chain, corrected = _qualified(kind, func, m["arg"])
    limit, unit = float(m["num"]), m["unit"]
    if not (limit >= 0 and math.isfinite(limit)):
        raise ValueError(f"{func} needs a limit >= 0")
    counted = kind == "latency" and scope == "phase" and name in COUNT_PHASES
    if counted and unit:
        raise ValueError(f"{func}(phase:{name}) takes a plain number ({COUNT_PHASES[name]}), "
                         f"not {unit!r}")
    if not counted and unit not in _UNITS[kind]:
        raise ValueError(f"{func} takes {_UNIT_TEXT[kind]}, not {unit!r}")
    if kind == "error_rate" and limit > (100 if unit == "%" else 1):
        raise ValueError(f"error_rate takes {_UNIT_TEXT[kind]}")
    if not counted:
        unit = unit or {"latency": "ms", "rate": "/s"}.get(kind, "")
    t = Threshold("", func, scope, name, op, limit, unit, corrected, chain)
    head = f"{func}({t.selector})" if m["arg"] is not None else func
    return dataclasses.replace(t, text=f"{head} {op} {m['num']}{m['unit']}")


def _is_latency(func: str) -> bool:
    return func in LATENCY or parse_percentile(func) is not None


def parse_percentile(func: str) -> float | None:
    """``p99.5`` -> 99.5 (``p999``: 99.9); None when *func* is no percentile 0 < N <= 100."""
    if func == "p999":
        return 99.9
    m = _PERCENTILE.fullmatch(func)
    if m is None:
        return None
    q = float(m[1])
    return q if 0 < q <= 100 else None


def percentiles_of(thresholds: Iterable[Threshold]) -> tuple[float, ...]:
    """The percentiles the thresholds name (for a summary to carry them)."""
    return tuple(sorted({q for t in thresholds if (q := t.percentile) is not None}))


def _qualified(kind: str, func: str, arg: str | None) -> tuple[str, str, str | None, bool]:
    """(scope, name, a phase's chain, corrected) of a selector such as ``chain:x``,
    ``phase:validation, chain:x`` or ``chains, corrected``."""
    if arg is None:
        scope, name = _selector(kind, func, None)
        return scope, name, None, False
    parts = [p.strip() for p in arg.split(",")]
    corrected = "corrected" in parts
    rest = [p for p in parts if p != "corrected"]
    if corrected and kind != "latency":
        raise ValueError(f"'corrected' is latency from the intended start: {func} does not "
                         f"take it (latency functions do: pN, min, mean, max)")
    if corrected and not rest:
        rest = ["chains"]
    head, more = (rest[0] if rest else ""), rest[1:]
    scope, name = _selector(kind, func, head)
    chain = None
    if scope == "phase":
        for q in more:
            s, _, n = (x.strip() for x in q.partition(":"))
            if s != "chain" or not _NAME.fullmatch(n) or chain is not None:
                raise ValueError(f"unknown qualifier {q!r} of phase:{name} (one chain:NAME)")
            chain = n
    elif more:
        raise ValueError(f"unknown qualifier {more[0]!r} for {func} (after a selector: "
                         f"corrected, or chain:NAME after phase:NAME)")
    if corrected and not (scope == "chain" or (scope, name) == ("total", "chains")):
        raise ValueError(f"'corrected' is latency from the intended start, which chains have:"
                         f" it follows chains or chain:NAME, not {head!r}")
    return scope, name, chain, corrected


def _selector(kind: str, func: str, arg: str | None) -> tuple[str, str]:
    totals = _TOTALS[kind]
    if arg is None:
        return "total", totals[0]
    a = arg.strip()
    phases = kind in ("latency", "count")
    allowed = ("selectors: chain:NAME, endpoint:NAME, " + ("phase:NAME, " if phases else "")
               + ", ".join(totals))
    scope, sep, name = (x.strip() for x in a.partition(":"))
    if not sep:
        if a in totals:
            return "total", a
        raise ValueError(f"unknown selector {a!r} for {func} ({allowed})")
    if scope == "phase" and phases:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r} (phases: {', '.join(PHASES)})")
        return scope, name
    if scope not in ("chain", "endpoint") or not _NAME.fullmatch(name):
        raise ValueError(f"unknown selector {a!r} for {func} ({allowed})")
    if scope == "endpoint" and name not in ENDPOINTS:
        near = [e for e in ENDPOINTS if e.lower() == name.lower()]
        hint = f"did you mean {near[0]}? " if near else ""
        raise ValueError(f"unknown endpoint {name!r} ({hint}endpoints: {', '.join(ENDPOINTS)})")
    return scope, name


def parse_thresholds(lines: str | Iterable[str]) -> tuple[Threshold, ...]:
    """Thresholds one per line (or separated by ``;``), blank lines and ``#`` comments
    skipped: the ini option's and the environment variable's form."""
    texts = [lines] if isinstance(lines, str) else list(lines)
    items = [item.strip() for t in texts for line in t.splitlines() for item in line.split(";")]
    items = [i for i in items if i and not i.startswith("#")]
    out = []
    for item in items:
        try:
            out.append(parse_threshold(item))
        except ValueError as exc:
            if len(items) == 1:
                raise
            raise ValueError(f"{exc} (in {item!r})") from None
    return tuple(out)


def format_value(value: float | None, unit: str, *, exact: bool = False) -> str:
    """``612.3 ms``, ``2.41 s``, ``0.20%``, ``52.0/s``, ``100``; ``exact`` keeps every digit
    (a limit as given)."""
    if value is None:
        return "-"
    if exact:
        num = str(int(value)) if float(value).is_integer() else repr(float(value))
    elif unit in ("ms", "/s"):
        num = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    elif unit == "s":
        num = f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    elif unit == "%":
        num = f"{value:.2f}"
    else:
        num = f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"
    return f"{num} {unit}" if unit in ("ms", "s") else num + unit

