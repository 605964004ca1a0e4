"""Sparse HDR histograms of microseconds (controller and tools).

HdrHistogram's layout (1 us .. 1 hour, 3 significant digits) kept sparse, as counts by HDR
index, so that one histogram per second of a long run stays small and recording costs a few
integer operations. A :class:`Histogram` encodes to and decodes from HdrHistogram's base64
form (``hdrh``), merges losslessly, and answers percentiles exactly as
``HdrHistogram.get_value_at_percentile`` does. :meth:`Histogram.pack` keeps one in a few
hundred bytes (in memory only) for the buckets a long run no longer writes to.
"""

from __future__ import annotations

import array
import itertools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack
from hdrh.histogram import HdrHistogram

__all__ = ["HIGHEST_US", "LOWEST_US", "SIGNIFICANT_FIGURES", "Histogram", "index_range",
           "percentile_key"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
_SUB_BITS = 11  # log2 of the sub-bucket count (2048) that 3 significant figures need
_HALF_BITS = _SUB_BITS - 1
_HALF = 1 << _HALF_BITS
_MASK = (1 << _SUB_BITS) - 1


def index_range(index: int) -> tuple[int, int]:
    """Lowest and highest value (us) counted at an HDR counts index."""
    bucket = (index >> _HALF_BITS) - 1
    sub = (index & (_HALF - 1)) + _HALF
    if bucket < 0:
        sub -= _HALF
        bucket = 0
    low = sub << bucket
    return low, low + (1 << bucket) - 1


class Histogram:
    """Sparse HDR histogram of microseconds; exact count, sum, min and max ride along."""

    __slots__ = ("counts", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.sum = 0
        self.min = HIGHEST_US
        self.max = 0

    def record(self, us: int) -> None:
        if us > HIGHEST_US:
            us = HIGHEST_US
        elif us < 0:
            us = 0
        b = (us | _MASK).bit_length() - _SUB_BITS
        i = (b << _HALF_BITS) + (us >> b)
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.total += 1
        self.sum += us
        if us > self.max:
            self.max = us
        if us < self.min:
            self.min = us

    def add(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        if other.total:
            self.total += other.total
            self.sum += other.sum
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.counts, self.total, self.sum, self.min, self.max) == (
            other.counts, other.total, other.sum, other.min, other.max)

    __hash__ = None  # type: ignore[assignment]

    def percentiles(self, ps: Sequence[float]) -> list[int]:
        """Values (us) at percentiles 0..100, as ``HdrHistogram.get_value_at_percentile``."""
        out = [0] * len(ps)
        if not self.total:
            return out
        items = sorted(self.counts.items())
        order = sorted(range(len(ps)), key=ps.__getitem__)
        pos, seen = 0, 0
        for k in order:
            p = min(ps[k], 100.0)
            target = max(int(p * self.total / 100 + 0.5), 1)
            while seen < target and pos < len(items):
                seen += items[pos][1]
                pos += 1
            low, high = index_range(items[max(pos - 1, 0)][0])
            out[k] = high if p else low
        return out

    def scaled(self, factor: int) -> Histogram:
        """Every value times ``factor`` (exact for values under 2048, which HDR keeps
        exactly: counts)."""
        out = Histogram()
        for i, n in self.counts.items():
            low, _high = index_range(i)
            j = _index(min(low * factor, HIGHEST_US))
            out.counts[j] = out.counts.get(j, 0) + n
        if self.total:
            out.total, out.sum = self.total, self.sum * factor
            out.min, out.max = self.min * factor, min(self.max * factor, HIGHEST_US)
        return out

    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary_ms(self, ps: Iterable[float] = (50, 90, 95, 99, 99.9)) -> dict[str, float]:
        """min, mean, p.., max in milliseconds; percentiles clipped to the exact min/max."""
        return self.summary(ps, 1000)

    def summary(self, ps: Iterable[float] = (50, 90, 95, 99, 99.9),
                scale: int = 1) -> dict[str, float]:
        """min, mean, p.., max of the recorded values divided by ``scale`` (1000: us as ms;
        1: counts as they are); keys named by :func:`percentile_key`."""
        plist = list(ps)
        if not self.total:
            return {"min": 0.0, "mean": 0.0, **{percentile_key(p): 0.0 for p in plist},
                    "max": 0.0}
        values = self.percentiles(plist)
        out = {"min": _scaled(self.min, scale), "mean": round(self.mean() / scale, 3)}
        for p, v in zip(plist, values, strict=True):
            out[percentile_key(p)] = _scaled(min(max(v, self.min), self.max), scale)
        out["max"] = _scaled(self.max, scale)
        return out

    def to_hdr(self) -> HdrHistogram:
        hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        counts = hdr.counts
        for i, n in self.counts.items():
            counts[i] = n
        if self.counts:
            hdr.set_internal_tacking_values(min(self.counts), max(self.counts), self.total)
        return hdr

    @classmethod
    def from_hdr(cls, hdr: HdrHistogram) -> Histogram:
        """From an ``hdrh`` histogram; sum, min and max then have HDR precision."""
        h = cls()
        layout = (hdr.lowest_trackable_value, hdr.highest_trackable_value, hdr.significant_figures)
        if layout != (LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES):
            raise ValueError(f"histogram layout {layout} is not 1 us .. 1 h, 3 figures")
        if not hdr.total_count:
            return h
        words = memoryview(hdr.counts).cast("B").cast("Q")  # no copy
        lo, hi = _index(min(hdr.min_value, HIGHEST_US)), _index(min(hdr.max_value, HIGHEST_US))
        counts = words[lo:hi + 1]  # the span from min to max: much shorter
        if sum(counts) != hdr.total_count:
            counts, lo = words, 0
        for k in itertools.compress(range(len(counts)), counts):
            i = lo + k
            n = h.counts[i] = counts[k]
            low, high = index_range(i)
            h.total += n
            h.sum += n * ((low + high) // 2)
            h.min = min(h.min, low)
            h.max = max(h.max, high)
        return h

    def encode(self) -> str:
        """HdrHistogram's base64 (V2, compressed) form."""
        return str(self.to_hdr().encode().decode("ascii"))

    @classmethod
    def decode(cls, b64: str | bytes) -> Histogram:
        raw = b64.encode("ascii") if isinstance(b64, str) else b64
        return cls.from_hdr(HdrHistogram.decode(raw))

    def pack(self) -> bytes:
        """Exact and compact (:meth:`unpack`): index deltas and counts as zlib'd arrays, about
        1/50 of the dict. Native byte order: for this process's memory, not for files."""
        keys = sorted(self.counts)
        counts = self.counts
        values = [counts[k] for k in keys]
        deltas = array.array("H" if not keys or keys[-1] < 1 << 16 else "I",
                             [b - a for a, b in zip([0, *keys], keys, strict=False)])
        ns = array.array("I" if max(values, default=0) < 1 << 32 else "Q", values)
        body = zlib.compress(deltas.tobytes() + ns.tobytes())
        return bytes(msgpack.packb([deltas.typecode, ns.typecode, len(keys), self.total,
                                    self.sum, self.min, self.max, body]))

    @classmethod
    def unpack(cls, blob: bytes) -> Histogram:
        di, ni, n, total, total_us, low, high, body = msgpack.unpackb(blob)
        raw = zlib.decompress(body)
        deltas, ns = array.array(di), array.array(ni)
        split = deltas.itemsize * n
        deltas.frombytes(raw[:split])
        ns.frombytes(raw[split:])
        h = cls()
        h.counts = dict(zip(itertools.accumulate(deltas), ns, strict=True))
        h.total, h.sum, h.min, h.max = total, total_us, low, high
        return h

    def to_plain(self) -> dict[str, Any]:
        return {"hdr": self.encode(), "sum": self.sum, "min": self.min, "max": self.max}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls.decode(data["hdr"])
        if h.total:
            h.sum, h.min, h.max = int(data["sum"]), int(data["min"]), int(data["max"])
        return h


def _index(us: int) -> int:
    """The HDR counts index of ``us`` (as :meth:`Histogram.record` computes it)."""
    b = (us | _MASK).bit_length() - _SUB_BITS
    return (b << _HALF_BITS) + (us >> b)


def percentile_key(p: float) -> str:
    """The key of percentile ``p`` in a summary: ``p50``, ``p96``, ``p99.5``, ``p99.99``;
    99.9 keeps its historical ``p999``."""
    if float(p) == 99.9:
        return "p999"
    return "p" + (str(int(p)) if float(p).is_integer() else repr(float(p)))


def _scaled(v: int, scale: int) -> float:
    return round(v / scale, 3) if scale != 1 else float(v)
