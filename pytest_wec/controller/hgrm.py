"""HdrHistogram's percentile distribution text (``.hgrm``), from a sparse :class:`Histogram`.

The format is what HdrHistogram's ``outputPercentileDistribution`` prints (Java, the
reference implementation) and what its plotter and the tools after it read::

           Value     Percentile TotalCount 1/(1-Percentile)

           1.000 0.000000000000          1           1.00
          10.007 0.100000000000         10           1.11
         ...
         100.031 1.000000000000        100
    #[Mean    =       50.516, StdDeviation   =       28.868]
    #[Max     =      100.031, Total count    =          100]
    #[Buckets =           22, SubBuckets     =         2048]

One row per percentile level: from 0%, ``ticks`` (5) levels per half of the distance left
to 100% (0, 10, ..., 50, 55, ..., 75, 77.5, ...), each with the highest value equivalent
(at HDR precision) to the first bucket whose cumulative count reaches the level, a level
repeated while that bucket still covers the next one; the last recorded bucket gives one
row, then the 100% row without its 1/(1-Percentile). Mean and standard deviation are
HdrHistogram's (over the buckets' median equivalent values), every value divided by
``scale`` (1000: the recorded microseconds as milliseconds).

The walk goes over the histogram's recorded buckets only, sorted once: a few hundred rows
cost well under a millisecond, where hdrh's iterators walk every bucket up to the maximum
in Python.
"""

from __future__ import annotations

import math

from pytest_wec.controller.histogram import HIGHEST_US, SIGNIFICANT_FIGURES, Histogram, index_range

__all__ = ["BUCKETS", "SUB_BUCKETS", "hgrm_text", "next_level"]

#: HdrHistogram's sub-bucket count for 3 significant figures, and the buckets that cover
#: 1 us .. 1 hour with it (what the footer's last line says of the layout)
SUB_BUCKETS = 1 << math.ceil(math.log2(2 * 10**SIGNIFICANT_FIGURES))
BUCKETS = next(b for b in range(1, 64) if SUB_BUCKETS << (b - 1) > HIGHEST_US)

_HEADER = b"%12s %14s %10s %14s\n\n" % (b"Value", b"Percentile", b"TotalCount",
                                        b"1/(1-Percentile)")
_ROW = f"%12.{SIGNIFICANT_FIGURES}f %2.12f %10d %14.2f\n".encode()
_LAST_ROW = f"%12.{SIGNIFICANT_FIGURES}f %2.12f %10d\n".encode()
_MEAN = (f"#[Mean    = %12.{SIGNIFICANT_FIGURES}f, "
         f"StdDeviation   = %12.{SIGNIFICANT_FIGURES}f]\n").encode()
_MAX = f"#[Max     = %12.{SIGNIFICANT_FIGURES}f, Total count    = %12d]\n".encode()
_BUCKETS = b"#[Buckets = %12d, SubBuckets     = %12d]\n" % (BUCKETS, SUB_BUCKETS)
_LOG2 = math.log(2)
_HALF = SUB_BUCKETS >> 1
_HALF_BITS = _HALF.bit_length() - 1
_HALF_MASK = _HALF - 1


def next_level(level: float, ticks: int = 5) -> float:
    """The percentile level after *level* (0..100): *ticks* levels per half of the
    distance left to 100%, as HdrHistogram's ``PercentileIterator`` steps."""
    halvings = int(math.log(100.0 / (100.0 - level)) / _LOG2)
    return level + 100.0 / (ticks * (1 << (halvings + 1)))


def hgrm_text(hist: Histogram, scale: float = 1000.0, ticks: int = 5) -> bytes:
    """The percentile distribution of *hist* (recorded in microseconds), every value
    divided by *scale*."""
    counts = hist.counts
    keys = [i for i in sorted(counts) if counts[i] > 0]
    ns = [counts[i] for i in keys]
    total = sum(ns)
    out = [_HEADER]
    level, cum, last = 0.0, 0, len(keys) - 1
    for k, n in enumerate(ns):
        cum += n
        if k == last:  # once at the level reached, then 100%
            value = index_range(keys[k])[1] / scale
            p = level / 100.0
            out.append(_ROW % (value, p, cum, 1.0 / (1.0 - p)))
            out.append(_LAST_ROW % (value, 1.0, cum))
            break
        reached = 100.0 * cum / total
        if reached >= level:
            value = index_range(keys[k])[1] / scale
            while reached >= level:
                p = level / 100.0
                out.append(_ROW % (value, p, cum, 1.0 / (1.0 - p)))
                level, before = next_level(level, ticks), level
                if level <= before:  # a step below the float's precision: no more levels
                    break
    # HdrHistogram's mean and standard deviation, over the median equivalent values: a
    # bucket's lowest value plus half its width (index_range, inlined)
    medians = [(((i & _HALF_MASK) | _HALF) << b) + (1 << b >> 1)
               if (b := (i >> _HALF_BITS) - 1) >= 0 else i for i in keys]
    mean = float(sum(n * m for n, m in zip(ns, medians, strict=True))) / total \
        if total else 0.0
    deviations = 0.0
    for n, m in zip(ns, medians, strict=True):
        dev = m - mean
        deviations += dev * dev * n
    stddev = math.sqrt(deviations / total) if total else 0.0
    top = index_range(keys[-1])[1] if keys else 0
    out.append(_MEAN % (mean / scale, stddev / scale))
    out.append(_MAX % (top / scale, total))
    out.append(_BUCKETS)
    return b"".join(out)
