"""The cyclic garbage collector's policy while a load runs (worker).

A load run makes many short-lived objects (requests, results, JWSs) and few cycles: the
young generation is collected less often (:data:`GC_GEN0_THRESHOLD`) for the run's length,
and :func:`fewer_young_collections`' caller puts the old thresholds back at its end.
"""

from __future__ import annotations

import gc

__all__ = ["GC_GEN0_THRESHOLD", "fewer_young_collections"]


#: The cyclic GC's young-generation threshold while a load runs (CPython's default: 700).
#: Measured (bench/bench_cost_growth.py): with 1,000 chains in flight the default spends
#: 23% of the generator's CPU in collections, this 8-11%; at 10 in flight, ~0% either way.
GC_GEN0_THRESHOLD = 10_000


def fewer_young_collections() -> tuple[int, int, int] | None:
    """Raise the young-generation GC threshold for the run; the old thresholds, or None when
    nothing changed (the GC is off, or already as lax)."""
    old = gc.get_threshold()
    if not gc.isenabled() or old[0] == 0 or old[0] >= GC_GEN0_THRESHOLD:
        return None
    gc.set_threshold(GC_GEN0_THRESHOLD, *old[1:])
    return (old[0], old[1], old[2])
