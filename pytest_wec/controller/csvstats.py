"""Locust's CSV statistics from an :class:`~pytest_wec.controller.aggregator.Aggregator`
(controller): ``stats.csv`` at the end, ``stats_history.csv`` as the run goes.

The columns are Locust's (``locust --csv``), so that what reads Locust's files reads ours:

``stats.csv``          one row per chain (``Type`` ``chain``), one per ACME endpoint (``Type``
                       ``request``), then ``Aggregated``: every request of the run
``stats_history.csv``  at each live tick, one row per chain and one ``Aggregated`` row: the
                       current window (the last :data:`WINDOW_S` whole seconds) for
                       ``Requests/s``, ``Failures/s`` and the percentiles, the run so far for
                       the ``Total`` columns; ``User Count`` is the chains in flight

Times are milliseconds (Locust's unit), from merged HDR histograms as everywhere else; rates
are over the time under load (``Requests/s`` counts what ended under load). ``Average Content
Size`` is left empty: response sizes are not measured. A chain's or endpoint's latency is as
in summary.json: a chain from its real start to its end, a request from its send to its
answer.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.histogram import Histogram

__all__ = ["HISTORY_COLUMNS", "PERCENTILES", "STATS_COLUMNS", "WINDOW_S", "CsvFiles",
           "StatsHistory", "stats_rows", "write_stats_csv"]

log = logging.getLogger(__name__)

#: Locust's ``PERCENTILES_TO_REPORT``
PERCENTILES = (50.0, 66.0, 75.0, 80.0, 90.0, 95.0, 98.0, 99.0, 99.9, 99.99, 100.0)
_PCT_NAMES = tuple(f"{p:g}%" for p in PERCENTILES)
STATS_COLUMNS = ("Type", "Name", "Request Count", "Failure Count", "Median Response Time",
                 "Average Response Time", "Min Response Time", "Max Response Time",
                 "Average Content Size", "Requests/s", "Failures/s", *_PCT_NAMES)
HISTORY_COLUMNS = ("Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s",
                   *_PCT_NAMES, "Total Request Count", "Total Failure Count",
                   "Total Median Response Time", "Total Average Response Time",
                   "Total Min Response Time", "Total Max Response Time",
                   "Total Average Content Size")
#: seconds of Locust's current window (``CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW``)
WINDOW_S = 10
AGGREGATED = "Aggregated"


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def _percentiles(hist: Histogram) -> list[float | str]:
    if hist.total == 0:
        return ["N/A"] * len(PERCENTILES)
    return [_ms(v) for v in hist.percentiles(PERCENTILES)]


def _whole(hist: Histogram) -> list[float | str]:
    """Median, average, min and max, then the (empty) content size."""
    if hist.total == 0:
        return [0, 0, 0, 0, ""]
    median = hist.percentiles([50.0])[0]
    return [_ms(median), _ms(hist.mean()), _ms(hist.min), _ms(hist.max), ""]


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else 0.0


def _merged(hists: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for h in hists:
        out.add(h)
    return out


def stats_rows(agg: Aggregator, duration: float) -> list[list[Any]]:
    """stats.csv's rows (without the header) over ``duration`` seconds under load."""
    rows: list[list[Any]] = []
    for name, cs in sorted(agg.chains.items()):
        rows.append(["chain", name, cs.count, cs.failed, *_whole(cs.latency),
                     _rate(cs.count - cs.late, duration), _rate(cs.failed, duration),
                     *_percentiles(cs.latency)])
    for name, es in sorted(agg.endpoints.items()):
        rows.append(["request", name, es.count, es.failed, *_whole(es.latency),
                     _rate(es.count - es.late, duration), _rate(es.failed, duration),
                     *_percentiles(es.latency)])
    eps = agg.endpoints.values()
    total = _merged(e.latency for e in eps)
    count, failed = sum(e.count for e in eps), sum(e.failed for e in eps)
    late = sum(e.late for e in eps)
    rows.append(["", AGGREGATED, count, failed, *_whole(total), _rate(count - late, duration),
                 _rate(failed, duration), *_percentiles(total)])
    return rows


def _write_rows(f: IO[str], rows: Iterable[Sequence[Any]]) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerows(rows)


def write_stats_csv(path: Path, agg: Aggregator, duration: float) -> None:
    """stats.csv, whole (temp file + rename: a reader never sees half of it)."""
    _write_stats(path, stats_rows(agg, duration))


def _write_stats(path: Path, rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    _write_rows(buf, [STATS_COLUMNS, *rows])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


class StatsHistory:
    """stats_history.csv, a block of rows at each :meth:`tick` (flushed at once, so that a
    tail of the file follows the run); the file is opened at the first tick."""

    def __init__(self, path: Path, *, window_s: int = WINDOW_S) -> None:
        self.path = path
        self.window_s = window_s
        self._file: IO[str] | None = None
        self._failed = False

    def tick(self, agg: Aggregator, now: float | None = None, users: int = 0) -> None:
        """Appends the rows for epoch second ``now`` (default: the clock)."""
        self.append(self.rows(agg, time.time() if now is None else now, users))

    def append(self, rows: list[list[Any]]) -> None:
        """Appends a block of :meth:`rows`."""
        if self._failed:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("w", encoding="utf-8", newline="")
                _write_rows(self._file, [HISTORY_COLUMNS])
            _write_rows(self._file, rows)
            self._file.flush()
        except OSError as exc:  # a full disk must not end the run; said once
            self._failed = True
            log.warning("cannot write %s: %s", self.path, exc)

    def rows(self, agg: Aggregator, now: float, users: int) -> list[list[Any]]:
        """The block of rows for epoch second ``now``."""
        stamp = int(now)
        last = int(now - agg.started)  # the second in progress: not yet whole
        first = max(last - self.window_s, 0)
        span = last - first
        rows: list[list[Any]] = []
        for name, cs in sorted(agg.chains.items()):
            series = agg.chain_seconds.get(name)
            recs = [series[s] for s in range(first, last) if s in series] if series else []
            window = _merged(r.latency for r in recs)
            rows.append([stamp, users, "chain", name,
                         _rate(sum(r.count for r in recs), span),
                         _rate(sum(r.failed for r in recs), span), *_percentiles(window),
                         cs.count, cs.failed, *_whole(cs.latency)])
        secs = [agg.seconds[s] for s in range(first, last) if s in agg.seconds]
        window = _merged(r.request_latency for r in secs)
        eps = agg.endpoints.values()
        total = _merged(e.latency for e in eps)
        rows.append([stamp, users, "", AGGREGATED,
                     _rate(sum(r.requests for r in secs), span),
                     _rate(sum(r.requests_failed for r in secs), span), *_percentiles(window),
                     sum(e.count for e in eps), sum(e.failed for e in eps), *_whole(total)])
        return rows

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class CsvFiles:
    """``stats.csv`` and ``stats_history.csv`` of one run directory, written as the run goes
    (:meth:`tick`) and once more at the end (:meth:`close`)."""

    STATS = "stats.csv"
    HISTORY = "stats_history.csv"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history = StatsHistory(run_dir / self.HISTORY)
        self._stats_failed = False

    def tick(self, agg: Aggregator, now: float, users: int, duration: float) -> None:
        """A history block for epoch second ``now``; stats.csv over ``duration`` seconds."""
        self.write(self.prepare(agg, now, users, duration))

    def prepare(self, agg: Aggregator, now: float, users: int,
                duration: float) -> tuple[list[list[Any]], list[list[Any]]] | None:
        """The rows of a tick, read from ``agg`` (under the caller's lock); None before any
        chain ran (no rows of zeros). :meth:`write` writes them, outside that lock."""
        if agg.first_start is None:
            return None
        return self.history.rows(agg, now, users), stats_rows(agg, duration)

    def write(self, prepared: tuple[list[list[Any]], list[list[Any]]] | None) -> None:
        if prepared is None:
            return
        history, stats = prepared
        self.history.append(history)
        self._stats(stats)

    def close(self, agg: Aggregator, duration: float) -> None:
        self._stats(stats_rows(agg, duration))
        self.history.close()

    def _stats(self, rows: list[list[Any]]) -> None:
        if self._stats_failed:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_stats(self.run_dir / self.STATS, rows)
        except OSError as exc:
            self._stats_failed = True
            log.warning("cannot write %s: %s", self.run_dir / self.STATS, exc)
