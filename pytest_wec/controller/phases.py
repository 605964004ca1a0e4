"""ACME phases and RFC deviations, as the controller merges them (controller).

Workers send, with each ChainResult, the phases its chain went through
(``ChainResult["phases"]``, :mod:`pytest_wec.wire.results`: one value per authorization or
order) and the RFC deviations its checks saw (``ChainResult["deviations"]``). A
:class:`PhaseBook` keeps one sparse HDR histogram per (chain, phase), merged losslessly like
the chains' and endpoints' own, and the deviations by kind with one example each.

Time phases are recorded in microseconds and read in milliseconds (``latency_ms``); count
phases (``validation_requests``, ``polls``) are recorded as they are and read with their
unit (``values``, ``unit``). Where each phase starts and ends: :data:`PHASES`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pytest_wec.controller.histogram import Histogram

__all__ = ["COUNT_PHASES", "PHASES", "TIME_PHASES", "PhaseBook", "format_phase_lines",
           "phase_benchmarks", "phase_entry", "standard_ps"]

#: every phase: what it measures, from where to where (docs/load-mode.md says the same)
PHASES: dict[str, str] = {
    "validation": "per authorization: from the send of the challenge answer (POST {}) the CA "
                  "accepted to the arrival of the authorization's answer saying valid",
    "first_validation_request": "per authorization: from the send of the challenge answer to "
                                "the challenge server's time of the CA's first validation "
                                "request (stamped once it has answered it)",
    "validation_requests": "per authorization: the CA's validation requests the challenge "
                           "server saw until the authorization's poll ended",
    "issuance": "per order: from the send of finalize to the arrival of the answer saying the "
                "order is valid (finalize's own, or an order poll's)",
    "time_to_certificate": "per order: from the send of newOrder to the arrival of the "
                           "certificate download's answer",
    "polls": "per order: the POST-as-GET requests made to wait for the CA, authorization polls "
             "after the challenge answer and order polls",
}
TIME_PHASES = ("validation", "first_validation_request", "issuance", "time_to_certificate")
#: count phases and their unit
COUNT_PHASES = {"validation_requests": "requests per authorization", "polls": "polls per order"}

_MAX_NAMES = 64  # distinct phase names kept (names the workers send beyond: dropped)
_MAX_KINDS = 200  # distinct deviation kinds kept; the rest count as "other"
_KIND_LEN = 120
_EXAMPLE_LEN = 500
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def phase_entry(name: str, hist: Histogram, percentiles: Iterable[float] = ()) -> dict[str, Any]:
    """A phase's summary entry: ``count`` and ``latency_ms`` (time phases) or ``unit`` and
    ``values`` (count phases), with p50/p90/p95/p99/p99.9 and any ``percentiles`` more."""
    ps = standard_ps(percentiles)
    if name in COUNT_PHASES:
        return {"count": hist.total, "unit": COUNT_PHASES[name], "values": hist.summary(ps, 1)}
    return {"count": hist.total, "latency_ms": hist.summary_ms(ps)}


class PhaseBook:
    """Phase histograms per (chain, phase) and deviations by kind (see the module doc)."""

    def __init__(self) -> None:
        self.hists: dict[tuple[str, str], Histogram] = {}
        #: kind -> [count, example, chain of the example]
        self.deviations: dict[str, list[Any]] = {}

    def add(self, chain: str, phases: Mapping[str, Any] | None,
            deviations: Iterable[Any] | None) -> None:
        """One chain's ``phases`` and ``deviations`` as they came over the wire; values that
        are not numbers >= 0 (or names that are not phase names) are skipped."""
        if phases:
            for name, values in phases.items():
                if not isinstance(name, str) or not _NAME.fullmatch(name) \
                        or not isinstance(values, list | tuple):
                    continue
                hist = self._hist(chain, name)
                if hist is None:
                    continue
                scale = 1 if name in COUNT_PHASES else 1_000_000
                for v in values:
                    if isinstance(v, int | float) and not isinstance(v, bool) \
                            and math.isfinite(v) and v >= 0:
                        hist.record(int(v * scale + 0.5))
        for dev in deviations or ():
            if isinstance(dev, list | tuple) and len(dev) == 2 and all(
                    isinstance(x, str) for x in dev):
                self.deviation(chain, dev[0], dev[1])

    def _hist(self, chain: str, name: str) -> Histogram | None:
        key = (chain, name)
        hist = self.hists.get(key)
        if hist is None:
            if name not in PHASES and len({n for _, n in self.hists}) >= _MAX_NAMES:
                return None
            hist = self.hists[key] = Histogram()
        return hist

    def deviation(self, chain: str, kind: str, example: str, n: int = 1) -> None:
        kind = kind[:_KIND_LEN] or "unknown"
        entry = self.deviations.get(kind)
        if entry is None:
            if len(self.deviations) >= _MAX_KINDS:
                kind = "other"
                entry = self.deviations.get(kind)
            if entry is None:
                entry = self.deviations[kind] = [0, example[:_EXAMPLE_LEN], chain]
        entry[0] += n

    # -- reading -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The phases seen, in :data:`PHASES` order, then any other alphabetically."""
        seen = {n for _, n in self.hists}
        return [n for n in PHASES if n in seen] + sorted(seen - PHASES.keys())

    def merged(self, name: str, chain: str | None = None) -> Histogram:
        """Phase ``name`` over every chain (or of ``chain``)."""
        out = Histogram()
        for (c, n), h in self.hists.items():
            if n == name and (chain is None or c == chain):
                out.add(h)
        return out

    def entries(self, chain: str | None = None,
                percentiles: Iterable[float] = ()) -> dict[str, dict[str, Any]]:
        """Every phase (of ``chain``, or over all chains) as summary entries."""
        ps = list(percentiles)
        out = {}
        for name in self.names():
            hist = self.merged(name, chain)
            if hist.total:
                out[name] = phase_entry(name, hist, ps)
        return out

    def deviation_table(self) -> dict[str, dict[str, Any]]:
        """kind -> {count, example, chain}, the most frequent first."""
        rows = sorted(self.deviations.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return {k: {"count": n, "example": ex, "chain": c} for k, (n, ex, c) in rows}

    # -- merging and plain data --------------------------------------------------------------

    def merge(self, other: PhaseBook) -> None:
        for (chain, name), h in other.hists.items():
            mine = self._hist(chain, name)
            if mine is not None:
                mine.add(h)
        for kind, (n, example, chain) in other.deviations.items():
            self.deviation(chain, kind, example, n)

    def to_plain(self) -> dict[str, Any]:
        return {"hists": [[c, n, h.to_plain()] for (c, n), h in sorted(self.hists.items())],
                "deviations": [[k, n, ex, c] for k, (n, ex, c) in
                               sorted(self.deviations.items())]}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any] | None) -> PhaseBook:
        book = cls()
        for chain, name, plain in (data or {}).get("hists", []):
            book.hists[(str(chain), str(name))] = Histogram.from_plain(plain)
        for kind, n, example, chain in (data or {}).get("deviations", []):
            book.deviations[str(kind)] = [int(n), str(example), str(chain)]
        return book


# -- outputs: summary.json, benchmark.json, the terminal ---------------------------------------

_STANDARD = (50, 90, 95, 99, 99.9)


def standard_ps(more: Iterable[float] = ()) -> tuple[float, ...]:
    """p50, p90, p95, p99, p99.9, then ``more`` (those thresholds name), each once."""
    return (*_STANDARD, *sorted({float(p) for p in more} - {float(p) for p in _STANDARD}))


def phase_benchmarks(book: PhaseBook, stats: Callable[[Histogram], dict[str, Any]],
                     options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """benchmark.json entries of group ``phase``: each phase over all chains (named after
    it), then per chain (``validation[new_certificate]``). Time phases in seconds as
    pytest-benchmark's ``stats``; count phases as counts (``extra_info.unit`` says which)."""
    out = []
    chains = sorted({c for c, _ in book.hists})
    for name in book.names():
        for chain in (None, *chains):
            hist = book.merged(name, chain)
            if not hist.total:
                continue
            if name in COUNT_PHASES:  # stats() reads microseconds: counts x 1e6 read as counts
                hist = hist.scaled(1_000_000)
            p90, p95, p99, p999 = (min(v, hist.max) / 1e6
                                   for v in hist.percentiles((90, 95, 99, 99.9)))
            full = name if chain is None else f"{name}[{chain}]"
            out.append({
                "group": "phase", "name": full, "fullname": f"wec::phase::{full}",
                "params": None, "param": None,
                "extra_info": {"count": hist.total, "chain": chain,
                               "unit": COUNT_PHASES.get(name, "s"), "p90": p90, "p95": p95,
                               "p99": p99, "p999": p999},
                "options": dict(options), "stats": stats(hist)})
    return out


def format_phase_lines(summary: Mapping[str, Any],
                       table: Callable[[Sequence[str], Sequence[Sequence[Any]]], list[str]]
                       ) -> list[str]:
    """The terminal's phase tables (time phases in ms, count phases per their unit) and one
    line per RFC deviation kind."""
    phases = summary.get("phases") or {}
    lines: list[str] = []
    timed = [(n, e) for n, e in phases.items() if "latency_ms" in e]
    if timed:
        rows = [(n, e["count"], *(float(e["latency_ms"][k]) for k in
                                  ("p50", "p90", "p95", "p99", "max"))) for n, e in timed]
        lines += ["", *table(("phase", "count", "p50 ms", "p90 ms", "p95 ms", "p99 ms",
                              "max ms"), rows)]
    counted = [(n, e) for n, e in phases.items() if "values" in e]
    if counted:
        rows = [(n, e.get("unit", ""), e["count"], *(float(e["values"][k]) for k in
                                                     ("mean", "p50", "p95", "p99", "max")))
                for n, e in counted]
        lines += ["", *table(("phase", "unit", "count", "mean", "p50", "p95", "p99", "max"),
                             rows)]
    devs = summary.get("deviations") or {}
    if devs:
        lines += ["", f"RFC deviations seen: {sum(d['count'] for d in devs.values())}"]
        lines += [f"  {d['count']} x {kind}, e.g. {_clip(d['example'], 90)}"
                  for kind, d in devs.items()]
    return lines


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
