""".hgrm text from our sparse histograms, against hdrh's own writer over the same counts."""

from __future__ import annotations

import io
import itertools
import math
import random
import re
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.iterators import PercentileIterator

from pytest_wec.controller.hgrm import hgrm_text, next_level
from pytest_wec.controller.histogram import HIGHEST_US, Histogram


def _hist(values_us: list[int]) -> Histogram:
    h = Histogram()
    for v in values_us:
        h.record(v)
    return h


def _cases() -> dict[str, list[int]]:
    rnd = random.Random(11)
    return {
        "1-100ms": [1000 * k for k in range(1, 101)],
        "one-value": [5321],
        "zeros-and-small": [0, 0, 1, 2, 3, 2047, 2048, 2049, 4095],
        "lognormal-wide": [int(rnd.lognormvariate(8, 2.0)) for _ in range(20_000)],
        "one-mode": [1500] * 99_990 + [rnd.randrange(2_000, 9_000_000) for _ in range(10)],
        "to-the-hour": [1, 1000, 1_000_000, HIGHEST_US],
    }


class _ReferenceSteps(PercentileIterator):  # type: ignore[misc]
    """hdrh's percentile iterator with HdrHistogram's own levels (its Java reference,
    ``PercentileIterator.incrementIterationLevel``: the number of halvings truncated to a
    whole number); hdrh's port leaves the truncation out, and steps a tenth of what is left
    to 100% every time."""

    def increment_iteration_level(self) -> None:
        self.percentile_to_iterate_from = self.percentile_to_iterate_to
        if self.percentile_to_iterate_to >= 100.0:  # after the last row
            return
        halvings = int(math.log(100.0 / (100.0 - self.percentile_to_iterate_to))
                       / math.log(2))
        ticks = self.percentile_ticks_per_half_distance * int(math.pow(2, halvings + 1))
        self.percentile_to_iterate_to += 100.0 / ticks


def _hdrh(hist: Histogram, *, reference_steps: bool) -> tuple[HdrHistogram, str]:
    hdr = hist.to_hdr()
    if reference_steps:
        hdr.get_percentile_iterator = lambda ticks: _ReferenceSteps(hdr, ticks)
    buf = io.BytesIO()
    hdr.output_percentile_distribution(buf, 1000.0)
    return hdr, buf.getvalue().decode()


def _split(text: str) -> tuple[str, list[str]]:
    """The header and rows, and the footer's lines."""
    at = text.index("#[")
    return text[:at], text[at:].splitlines()


def _rows(text: str) -> list[tuple[float, float, int]]:
    return [(float(f[0]), float(f[1]), int(f[2])) for f in
            (ln.split() for ln in _split(text)[0].splitlines()[2:])]


@pytest.mark.parametrize("name", list(_cases()))
def test_rows_are_hdrhs_byte_for_byte_over_hdrhistograms_levels(name: str) -> None:
    """With HdrHistogram's levels, hdrh's iterator and writer make the very rows we make:
    values, levels, counts, 1/(1-Percentile), widths and the blank line after the header.
    The footer holds hdrh's own figures (its mean, its standard deviation in the file's
    unit, its maximum, its layout), as HdrHistogram prints them."""
    hist = _hist(_cases()[name])
    ours = hgrm_text(hist).decode()
    hdr, theirs = _hdrh(hist, reference_steps=True)
    assert _split(ours)[0] == _split(theirs)[0]
    mean, stddev = hdr.get_mean_value() / 1000, hdr.get_stddev() / 1000
    top, total = hdr.get_max_value() / 1000, hdr.get_total_count()
    assert _split(ours)[1] == [
        f"#[Mean    = {mean:12.3f}, StdDeviation   = {stddev:12.3f}]",
        f"#[Max     = {top:12.3f}, Total count    = {total:12d}]",
        f"#[Buckets = {hdr.bucket_count:12d}, SubBuckets     = {hdr.sub_bucket_count:12d}]",
    ]
    assert ours.endswith("]\n")


@pytest.mark.parametrize("name", list(_cases()))
def test_hdrhs_plain_rows_lie_on_ours(name: str) -> None:
    """hdrh's writer as it is (its own levels): each of its rows lies between two rows of
    ours, the value at a level between the values at the levels around it, and its mean,
    maximum and count are ours."""
    hist = _hist(_cases()[name])
    ours_text = hgrm_text(hist).decode()
    ours = _rows(ours_text)
    _hdr, theirs_text = _hdrh(hist, reference_steps=False)
    for value, level, count in _rows(theirs_text):
        below = [r for r in ours if r[1] <= level]
        above = [r for r in ours if r[1] >= level]
        assert below and above, (level, ours)
        assert below[-1][0] <= value <= above[0][0], (value, level, below[-1], above[0])
        assert below[-1][2] <= count <= above[0][2]
    mean = re.compile(r"Mean += +([0-9.]+)")
    top = re.compile(r"Max += +([0-9.]+), Total ?[Cc]ount += +([0-9.]+)")
    for pattern in (mean, top):
        a, b = pattern.search(ours_text), pattern.search(theirs_text)
        assert a is not None and b is not None
        assert [float(x) for x in a.groups()] == [float(x) for x in b.groups()]


def test_levels_are_hdrhistograms() -> None:
    """The levels of HdrHistogram's own example output (its plotter's example data): five
    per half of the distance left to 100%."""
    want = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.775, 0.8, 0.825, 0.85,
            0.875, 0.8875, 0.9, 0.9125, 0.925, 0.9375, 0.94375, 0.95, 0.95625, 0.9625,
            0.96875, 0.971875, 0.975, 0.978125, 0.98125, 0.984375, 0.985938, 0.9875]
    level, got = 0.0, []
    for _ in want:
        got.append(round(level / 100, 6))
        level = next_level(level)
    assert got == want
    # every value its own bucket: each level is a row of its own, in that order
    rows = _rows(hgrm_text(_hist(list(range(1, 2001)))).decode())
    assert [round(r[1], 6) for r in rows[:len(want)]] == want
    assert rows[-1] == (2.0, 1.0, 2000) and rows[-2][0] == 2.0


def test_what_the_plotter_reads() -> None:
    """HdrHistogram's plotter takes every line that is not a comment and has four fields:
    the value and 1/(1-Percentile), both numbers; the last row has three and is left out."""
    text = hgrm_text(_hist([1000 * k for k in range(1, 101)])).decode()
    taken: list[Any] = []
    for line in text.splitlines():
        fields = line.strip().split()
        if line.strip() and line.strip()[0] != "#" and len(fields) == 4:
            try:
                taken.append((float(fields[3]), float(fields[0])))
            except ValueError:
                assert fields == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert taken[0] == (1.0, 1.0) and taken[-1][1] == pytest.approx(100.0, rel=1e-3)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(taken))


def test_empty_histogram_has_the_header_and_a_footer_of_zeros() -> None:
    text = hgrm_text(Histogram()).decode()
    assert text.startswith("       Value     Percentile TotalCount 1/(1-Percentile)\n\n#[")
    assert "Total count    =            0]" in text
