"""The records an :class:`~pytest_wec.controller.aggregator.Aggregator` keeps (controller).

Per chain (:class:`ChainStats`), per ACME endpoint (:class:`EndpointStats`), per second of
the run (:class:`SecondStats`) and per second of one chain or endpoint
(:class:`NameSecondStats`; the series are :mod:`pytest_wec.controller.buckets`): counters
and sparse HDR histograms that merge field by field and travel as plain lists (``to_row`` /
``load_row``), in the order of their ``__slots__``; ``pack`` / ``unpack`` keep an old bucket
small in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import msgpack

from pytest_wec.controller.histogram import Histogram

__all__ = ["ChainStats", "EndpointStats", "NameSecondStats", "SecondStats"]


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

    def pack(self) -> bytes:
        """The record in a few hundred bytes (:meth:`unpack`), histograms packed."""
        values = (getattr(self, name) for name in self.__slots__)
        return bytes(msgpack.packb([v.pack() if isinstance(v, Histogram) else v
                                    for v in values]))

    @classmethod
    def unpack(cls, blob: bytes) -> Self:
        rec = cls()
        for name, value in zip(rec.__slots__, msgpack.unpackb(blob), strict=True):
            setattr(rec, name, Histogram.unpack(value) if isinstance(value, bytes) else value)
        return rec

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
