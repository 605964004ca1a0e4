"""The records an :class:`~pytest_wec.controller.aggregator.Aggregator` keeps (controller).

Per chain (:class:`ChainStats`), per ACME endpoint (:class:`EndpointStats`), per second of
the run (:class:`SecondStats`) and per second of one chain or endpoint
(:class:`NameSecondStats`, in a :data:`Series`): counters and sparse HDR histograms that
merge field by field and travel as plain lists (``to_row`` / ``load_row``), in the order
of their ``__slots__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_wec.controller.histogram import Histogram

__all__ = ["ChainStats", "EndpointStats", "NameSecondStats", "SecondStats", "Series",
           "name_second", "series_rows"]


class _Stats:
    """Counters and histograms that merge field by field and travel as a plain list."""

    __slots__: tuple[str, ...] = ()

    def merge(self, other: _Stats) -> None:
        for name in self.__slots__:
            mine = getattr(self, name)
            if isinstance(mine, Histogram):
                mine.add(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))

    def to_row(self) -> list[Any]:
        values = (getattr(self, name) for name in self.__slots__)
        return [v.to_plain() if isinstance(v, Histogram) else v for v in values]

    def load_row(self, row: Sequence[Any]) -> None:
        if len(row) == len(self.__slots__) - 1 and self.__slots__[-1] == "late":
            row = [*row, 0]  # written before ``late`` was counted
        for name, value in zip(self.__slots__, row, strict=True):
            hist = isinstance(getattr(self, name), Histogram)
            setattr(self, name, Histogram.from_plain(value) if hist else int(value))


class ChainStats(_Stats):
    # "late" last: rows written before it existed load with late = 0
    __slots__ = ("cancelled", "count", "failed", "from_scheduled", "latency", "ok",  # noqa: RUF023
                 "skipped", "late")

    def __init__(self) -> None:
        self.count = self.ok = self.failed = self.cancelled = self.skipped = 0
        self.late = 0  # of count: ended after the time under load (in the grace)
        self.latency = Histogram()  # from the real start
        self.from_scheduled = Histogram()  # from the intended start


class EndpointStats(_Stats):
    __slots__ = ("count", "failed", "latency", "ok", "late")  # noqa: RUF023 (as above)

    def __init__(self) -> None:
        self.count = self.ok = self.failed = 0
        self.late = 0  # of count: ended after the time under load (in the grace)
        self.latency = Histogram()


class SecondStats(_Stats):
    """One second of the run, by completion time: chains and requests that ended in it."""

    __slots__ = ("chain_latency", "chains", "failed", "ok", "request_latency", "requests",
                 "requests_failed")

    def __init__(self) -> None:
        self.chains = self.ok = self.failed = self.requests = self.requests_failed = 0
        self.chain_latency = Histogram()
        self.request_latency = Histogram()


class NameSecondStats(_Stats):
    """One chain's or one endpoint's second, by completion time."""

    __slots__ = ("count", "failed", "latency")

    def __init__(self) -> None:
        self.count = self.failed = 0
        self.latency = Histogram()


Series = dict[str, dict[int, NameSecondStats]]  # name -> second -> stats


def name_second(series: Series, name: str, s: int) -> NameSecondStats:
    """The stats of second ``s`` of ``name`` in ``series``, added when missing."""
    by_s = series.get(name)
    if by_s is None:
        by_s = series[name] = {}
    ns = by_s.get(s)
    if ns is None:
        ns = by_s[s] = NameSecondStats()
    return ns


def series_rows(series: Series) -> dict[str, list[list[Any]]]:
    """``series`` as plain rows: name -> [[second, *row], ...] by second."""
    return {name: [[s, *x.to_row()] for s, x in sorted(by_s.items())]
            for name, by_s in series.items()}

