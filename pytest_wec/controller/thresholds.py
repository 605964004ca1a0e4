"""Threshold expressions for CI gating: their syntax, parsed into :class:`Threshold`
(:mod:`pytest_wec.controller.gating` evaluates them against a run's summary).

A threshold is ``FUNC[(SELECTOR)] OP NUMBER[UNIT]``::

    p95(endpoint:newOrder) < 500ms      p99(chain:new_certificate) < 3s     p50 < 200ms
    error_rate < 1%                     error_rate(chain:revoke_certificate) < 0.1%
    rate(chains) >= 50/s                rate(requests) > 10/s
    count(certificates_issued) >= 100   count(chain:new_order) >= 10
    max(endpoint:finalize) < 2s         mean(requests) <= 150ms

    function                        selectors (the default first)                  units
    p50 p90 p95 p99 p999 min mean   requests chains chain:NAME endpoint:NAME       ms (bare), s
    max
    error_rate                      chains requests chain:NAME endpoint:NAME       %, or a
                                                                                   fraction 0..1
    rate                            chains requests certificates_issued            /s (bare)
                                    chain:NAME endpoint:NAME
    count                           chains requests certificates_issued (any       none
                                    total) chain:NAME endpoint:NAME

Operators: ``<  <=  >  >=  ==``. :func:`parse_threshold` and :func:`parse_thresholds` raise
ValueError saying what is allowed; :func:`format_value` writes a value in a threshold's unit.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pytest_wec.wire.results import ENDPOINTS

__all__ = ["COUNTS", "FUNCTIONS", "LATENCY", "OPERATORS", "Threshold", "format_value",
           "parse_threshold", "parse_thresholds"]

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
_FORM = ("expected FUNC[(SELECTOR)] OP VALUE such as 'p95(endpoint:newOrder) < 500ms' "
         "(functions: " + ", ".join(FUNCTIONS) + "; selectors: chain:NAME, endpoint:NAME, "
         "chains, requests, certificates_issued; operators: < <= > >= ==; units: ms, s "
         "(latency), % (error_rate), /s (rate), none (count))")
_EXPR = re.compile(r"(?P<func>[A-Za-z_][\w.]*)\s*(?:\((?P<arg>[^()]*)\))?\s*"
                   r"(?P<op>[<>=!]+)\s*"
                   r"(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>.*?)\s*")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold; ``limit`` is in ``unit`` (``ms``, ``s``, ``%``, ``/s`` or none)."""

    text: str
    func: str
    scope: str  # "chain", "endpoint" or "total"
    name: str  # the chain, the endpoint or the total (chains, requests, certificates_issued..)
    op: str
    limit: float
    unit: str

    def __str__(self) -> str:
        return self.text

    @property
    def kind(self) -> str:
        """``latency``, ``error_rate``, ``rate`` or ``count``."""
        return "latency" if self.func in LATENCY else self.func

    @property
    def selector(self) -> str:
        return f"{self.scope}:{self.name}" if self.scope != "total" else self.name

    @property
    def limit_text(self) -> str:
        return format_value(self.limit, self.unit, exact=True)


def parse_threshold(text: str) -> Threshold:
    """``p95(endpoint:newOrder) < 500ms`` -> :class:`Threshold`; ValueError says what is
    allowed."""
    m = _EXPR.fullmatch(text.strip())
    if m is None:
        raise ValueError(_FORM)
    func = m["func"].lower().replace("p99.9", "p999")
    if func not in FUNCTIONS:
        raise ValueError(f"unknown function {m['func']!r} (functions: {', '.join(FUNCTIONS)})")
    op = m["op"]
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r} (operators: < <= > >= ==)")
    kind = "latency" if func in LATENCY else func
    scope, name = _selector(kind, func, m["arg"])
    limit, unit = float(m["num"]), m["unit"]
    if not (limit >= 0 and math.isfinite(limit)):
        raise ValueError(f"{func} needs a limit >= 0")
    if unit not in _UNITS[kind]:
        raise ValueError(f"{func} takes {_UNIT_TEXT[kind]}, not {unit!r}")
    if kind == "error_rate" and limit > (100 if unit == "%" else 1):
        raise ValueError(f"error_rate takes {_UNIT_TEXT[kind]}")
    unit = unit or {"latency": "ms", "rate": "/s"}.get(kind, "")
    sel = f"{scope}:{name}" if scope != "total" else name
    head = f"{func}({sel})" if m["arg"] is not None else func
    return Threshold(f"{head} {op} {m['num']}{m['unit']}", func, scope, name, op, limit, unit)


def _selector(kind: str, func: str, arg: str | None) -> tuple[str, str]:
    totals = _TOTALS[kind]
    if arg is None:
        return "total", totals[0]
    a = arg.strip()
    allowed = f"selectors: chain:NAME, endpoint:NAME, {', '.join(totals)}"
    scope, sep, name = (x.strip() for x in a.partition(":"))
    if not sep:
        if a in totals:
            return "total", a
        raise ValueError(f"unknown selector {a!r} for {func} ({allowed})")
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

