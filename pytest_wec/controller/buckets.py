"""Per-second series that stay small for hours: recent seconds kept, older ones compacted.

A :class:`Buckets` is one series of the run by completion time (every chain and request,
one chain, one endpoint): records (:mod:`pytest_wec.controller.stats`) keyed by the second
their bucket starts. How wide a bucket is follows from its age alone, counted back from
the *horizon* (:class:`Horizon`: the latest second any result ended in) through a
:class:`Layout`. The default: every second for the last 15 minutes, then 10 s buckets up to
an hour, 10 minutes up to 2 days, an hour up to 2 weeks, a day beyond::

    age:    ... 2 d ............ 1 h ........ 15 min ........ 0 (the horizon)
    width:      10 min           10 s         1 s

Each width divides the next and every bucket starts at a multiple of its width, so buckets
nest: as the horizon moves on, the buckets that age past a tier merge into the next one
(HDR histograms add losslessly: counts and percentiles over a bucket stay exact), and what
a series holds depends only on its results and the horizon, never on their order. A series
has at most about 1,750 buckets until the run is two weeks old, then one more a day. The
memory of a compacted bucket grows with its results until its histograms fill in (a 10
minute bucket of a busy run holds several thousand HDR counts): few wide buckets past the
first hour is what keeps a 10-hour run flat (``bench/bench_hours.py``).

Buckets older than ``Layout.freeze_s`` (60 s) are kept packed (``_Stats.pack``: zlib'd
arrays, about 1/50 of the dicts they come from); a late result thaws its bucket, which is
packed again as the horizon moves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Generic, Protocol, TypeVar

from pytest_wec.controller.stats import NameSecondStats, _Stats

__all__ = ["LAYOUT", "UNCOMPACTED", "Buckets", "Horizon", "Layout", "Series", "series_rows"]

S = TypeVar("S", bound=_Stats)

_MIN, _H, _D = 60, 3600, 86400


@dataclass(frozen=True)
class Layout:
    """``widths[k]`` for ages under ``spans[k]``, the last width beyond the last span; buckets
    older than ``freeze_s`` (None: never) packed."""

    widths: tuple[int, ...]
    spans: tuple[int, ...]
    freeze_s: int | None = None

    def __post_init__(self) -> None:
        w, sp = self.widths, self.spans
        if w[0] != 1 or len(sp) != len(w) - 1 or any(b % a or a >= b for a, b in pairwise(w)) \
                or any(a >= b for a, b in pairwise(sp)):
            raise ValueError(f"bad layout {w} {sp}: widths from 1 s, each dividing the next")
        if self.freeze_s is not None and sp and not 0 < self.freeze_s <= sp[0]:
            raise ValueError("freeze_s must be within the first span")

    def cuts(self, horizon: int) -> tuple[int, ...]:
        """Where each tier starts: ``cuts[k]`` is the first second of width ``widths[k]``
        (of ``widths[k + 1]`` and coarser before it); multiples of the coarser width."""
        return tuple(max(_down(horizon + 1 - span, w), 0)
                     for span, w in zip(self.spans, self.widths[1:], strict=True))

    def frozen_before(self, horizon: int) -> int:
        """Buckets starting before this second are packed."""
        if self.freeze_s is None:
            return 0
        return max(_down(horizon + 1 - self.freeze_s, self.widths[1] if self.spans else 1), 0)


#: the default: see the module's docstring
LAYOUT = Layout(widths=(1, 10, 10 * _MIN, _H, _D), spans=(15 * _MIN, _H, 2 * _D, 14 * _D),
                freeze_s=_MIN)
#: every second kept as it is, for ever (the behaviour before compaction; benchmarks)
UNCOMPACTED = Layout(widths=(1,), spans=())


def _down(x: int, w: int) -> int:
    return x - x % w


class _Member(Protocol):
    def regroup(self, lo: int, hi: int, was: int, width: int) -> None: ...

    def freeze(self, before: int) -> None: ...


class Horizon:
    """The latest second seen, the tiers' cuts it implies, and every series it compacts."""

    def __init__(self, layout: Layout = LAYOUT) -> None:
        self.layout = layout
        self.second = -1
        self.cuts = layout.cuts(-1)
        self.frozen = 0
        self.members: list[_Member] = []

    def width(self, s: int) -> int:
        """The width of the bucket that holds second ``s``."""
        cuts = self.cuts
        if not cuts or s >= cuts[0]:
            return 1
        for k in range(1, len(cuts)):
            if s >= cuts[k]:
                return self.layout.widths[k]
        return self.layout.widths[-1]

    def key(self, s: int) -> int:
        """The first second of the bucket that holds second ``s``."""
        cuts = self.cuts
        if not cuts or s >= cuts[0]:
            return s
        return s - s % self.width(s)

    def advance(self, s: int) -> None:
        """Second ``s`` ended: tiers move on; what aged past one merges into the next."""
        if s <= self.second:
            return
        self.second = s
        old, new = self.cuts, self.layout.cuts(s)
        if new != old:
            self.cuts = new
            widths = self.layout.widths
            for k, (lo, hi) in enumerate(zip(old, new, strict=True)):
                if hi > lo:
                    for b in self.members:
                        b.regroup(lo, hi, widths[k], widths[k + 1])
        frozen = self.layout.frozen_before(s)
        if frozen != self.frozen:
            self.frozen = frozen
            self.settle()

    def settle(self) -> None:
        """Packs what is older than the freeze line (after merges and late results)."""
        if self.frozen:
            for b in self.members:
                b.freeze(self.frozen)


class Buckets(Mapping[int, S], Generic[S]):
    """One series: bucket start -> record. Reading a packed bucket gives a copy of it;
    write through :meth:`second` (``live`` is the unpacked part, for the hot path)."""

    __slots__ = ("factory", "horizon", "live", "packed")

    def __init__(self, factory: type[S], horizon: Horizon) -> None:
        self.factory = factory
        self.horizon = horizon
        self.live: dict[int, S] = {}
        self.packed: dict[int, bytes] = {}
        horizon.members.append(self)

    # -- Mapping ------------------------------------------------------------------------------

    def __getitem__(self, key: int) -> S:
        rec = self.live.get(key)
        if rec is not None:
            return rec
        blob = self.packed.get(key)
        if blob is None:
            raise KeyError(key)
        return self.factory.unpack(blob)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.live.keys() | self.packed.keys()))

    def __len__(self) -> int:
        return len(self.live) + len(self.packed)

    def __contains__(self, key: object) -> bool:
        return key in self.live or key in self.packed

    # -- writing ------------------------------------------------------------------------------

    def second(self, s: int) -> S:
        """The (live) record of the bucket that holds second ``s``, made when missing."""
        h = self.horizon
        if s > h.second:
            h.advance(s)
        return self._at(h.key(s))

    def add(self, s: int, rec: S) -> None:
        """Merges ``rec`` (which it may keep: not to be used after) into second ``s``'s bucket."""
        h = self.horizon
        if s > h.second:
            h.advance(s)
        key = h.key(s)
        if key in self:
            self._at(key).merge(rec)
        else:
            self.live[key] = rec

    def _at(self, key: int) -> S:
        rec = self.live.get(key)
        if rec is None:
            blob = self.packed.pop(key, None)
            rec = self.factory() if blob is None else self.factory.unpack(blob)
            self.live[key] = rec
        return rec

    def _take(self, key: int) -> S | None:
        rec = self.live.pop(key, None)
        if rec is None:
            blob = self.packed.pop(key, None)
            if blob is not None:
                rec = self.factory.unpack(blob)
        return rec

    def regroup(self, lo: int, hi: int, was: int, width: int) -> None:
        """Buckets starting in [lo, hi) (``was`` wide, so at multiples of it) merge into
        buckets ``width`` wide."""
        if (hi - lo) // was <= len(self):
            keys = [k for k in range(lo - lo % was, hi, was) if k in self]
        else:
            keys = sorted(k for k in self if lo <= k < hi)
        for k in keys:
            dst = k - k % width
            if dst != k:
                rec = self._take(k)
                if rec is not None:
                    self._at(dst).merge(rec)

    def freeze(self, before: int) -> None:
        for k in [k for k in self.live if k < before]:
            self.packed[k] = self.live.pop(k).pack()

    # -- reading ------------------------------------------------------------------------------

    def end(self) -> int:
        """The second after the last bucket (0 when empty)."""
        if not self:
            return 0
        last = max(max(self.live, default=-1), max(self.packed, default=-1))
        return last + self.horizon.width(last)

    def spans(self, since: int = 0, until: int | None = None) -> Iterator[tuple[int, int, S]]:
        """(start, width, record) of the buckets that start in [since, until) (default:
        through the last), in order."""
        end = self.end() if until is None else until
        since = max(since, 0)
        if len(self) < (end - since) // 4:  # a few buckets in a long range
            for k in self:
                if since <= k < end:
                    yield k, self.horizon.width(k), self[k]
            return
        for t, w, rec in self.cover(since, end):
            if rec is not None:
                yield t, w, rec

    def cover(self, since: int = 0, until: int | None = None
              ) -> Iterator[tuple[int, int, S | None]]:
        """(start, width, record or None) of every bucket of the run that starts in
        [since, until) (default: through the last), in order, none missing."""
        end = self.end() if until is None else until
        width = self.horizon.width
        t = max(since, 0)
        while t < end:
            w = width(t)
            if t % w:  # a bucket that starts before ``since``: left out
                t += w - t % w
                continue
            rec = self.live.get(t)
            if rec is None and t in self.packed:
                rec = self.factory.unpack(self.packed[t])
            yield t, w, rec
            t += w


Series = dict[str, Buckets[NameSecondStats]]  # name -> its seconds


def series_rows(series: Mapping[str, Buckets[NameSecondStats]]) -> dict[str, list[list[object]]]:
    """``series`` as plain rows: name -> [[bucket start, *row], ...] in order."""
    return {name: [[s, *x.to_row()] for s, x in by_s.items()] for name, by_s in series.items()}
