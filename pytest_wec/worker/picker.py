"""The context-aware choice of the next chain: what exists, weights, hard limits.

Runs in the load runner (a worker), once per chain start, so it is a plain function over
plain values and costs a few microseconds. The seed's table, in today's terms:

==============================  ==============================  =========================
what exists for the directory   chains that can start           e.g.
==============================  ==============================  =========================
nothing                         those that need nothing         new_account
accounts                        those that need an account      new_order, key_rollover
valid authorizations            those that need one             reuse_authorization
certificates                    those that need one             renew, revoke
==============================  ==============================  =========================

A chain is *eligible* when every resource it needs has a count above 0, and it produces no
resource whose hard limit (``--wec-limit accounts=1000``) has been reached; a chain that
produces nothing limited stays eligible. Among eligible chains the choice is weighted
(``--wec-mix new_order=5,revoke_certificate=1``; a chain not named weighs 1, weight 0 leaves
it out).

Counts come from :meth:`pytest_wec.state.StateStore.counts`; callers refresh them now and
then (they are a query), not per pick. A load run's worker picks from
:class:`pytest_wec.worker.counts.LiveCounts`: the last read plus what its own chains stored
since.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pytest_wec.state import Counts

__all__ = [
    "RESOURCES",
    "ChainSpec",
    "Counts",
    "eligible",
    "mix_weights",
    "parse_limits",
    "parse_mix",
    "pick",
]

#: Resource names a chain can need or produce, and the Counts field counting each.
_FIELD = {
    "account": "accounts",
    "authorization": "authorizations",
    "certificate": "certificates",
    "order": "orders",
}
RESOURCES = frozenset(_FIELD)
_FIELDS = frozenset(_FIELD.values())
_AT = {f: i for i, f in enumerate(("accounts", "authorizations", "certificates", "orders"))}
_BY_NAME = {**_FIELD, **{f: f for f in _FIELDS}}
_CHAIN_NAME = re.compile(r"^[A-Za-z_][\w.\-]*$")
_WHOLE = re.compile(r"[0-9]+")
_MIX_HELP = (
    "expected chain weights such as new_order=5,revoke_certificate=1 "
    "(a chain name or '*' for the chains not named, '=', a number >= 0; the chains a mix "
    "does not name weigh 0 unless '*' gives them a weight)"
)
_LIMITS_HELP = (
    "expected hard limits such as accounts=1000,certificates=20000 "
    f"(resources: {', '.join(_FIELD.values())}; limits are whole numbers >= 0)"
)


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """A chain as the picker sees it: what it needs and what it produces."""

    name: str
    needs: frozenset[str] = frozenset()
    produces: frozenset[str] = frozenset()
    # positions in the picker's view of Counts, computed once
    _needs_at: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _produces_at: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "produces", frozenset(self.produces))
        unknown = (self.needs | self.produces) - RESOURCES
        if unknown:
            raise ValueError(
                f"chain {self.name!r}: unknown resources {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(RESOURCES))}"
            )
        object.__setattr__(self, "_needs_at", tuple(_AT[_FIELD[r]] for r in self.needs))
        object.__setattr__(self, "_produces_at", tuple(_AT[_FIELD[r]] for r in self.produces))


def _view(counts: Counts) -> tuple[int, int, int, int]:
    return counts.accounts, counts.authorizations, counts.certificates, counts.orders


def _caps(limits: Mapping[str, int] | None) -> tuple[float, float, float, float] | None:
    """Limits by position (infinite when not given); None when nothing is limited."""
    if not limits:
        return None
    if not _FIELDS.issuperset(limits):
        unknown = ", ".join(sorted(set(limits) - _FIELDS))
        raise ValueError(
            f"unknown resource {unknown} in limits (keys: {', '.join(_FIELD.values())})"
        )
    inf = math.inf
    return (limits.get("accounts", inf), limits.get("authorizations", inf),
            limits.get("certificates", inf), limits.get("orders", inf))


def eligible(
    specs: Iterable[ChainSpec], counts: Counts, limits: Mapping[str, int] | None = None
) -> list[ChainSpec]:
    """The chains that can start now, in the order given.

    *limits* is keyed by :class:`Counts` field (``accounts``, ``certificates``...), as
    :func:`parse_limits` returns it.
    """
    return _eligible(specs, _view(counts), _caps(limits), None)[0]


def _eligible(
    specs: Iterable[ChainSpec],
    have: tuple[int, ...],
    caps: tuple[float, ...] | None,
    weights: Mapping[str, float] | None,
) -> tuple[list[ChainSpec], list[float]]:
    """The eligible specs, and their cumulative weights when *weights* is given."""
    chosen: list[ChainSpec] = []
    cumulative: list[float] = []
    total = 0.0
    for spec in specs:
        if weights is not None:
            w = weights.get(spec.name, 1.0)
            if not w > 0:
                continue
        ok = True
        for i in spec._needs_at:
            if have[i] <= 0:
                ok = False
                break
        if ok and caps is not None:
            for i in spec._produces_at:
                if have[i] >= caps[i]:
                    ok = False
                    break
        if not ok:
            continue
        chosen.append(spec)
        if weights is not None:
            total += w
            cumulative.append(total)
    return chosen, cumulative


def pick(
    specs: Sequence[ChainSpec],
    counts: Counts,
    weights: Mapping[str, float] | None = None,
    limits: Mapping[str, int] | None = None,
    rng: random.Random | None = None,
) -> ChainSpec | None:
    """A weighted random choice among the eligible chains; None when none can start.

    *weights* by chain name (missing: 1, 0: left out); *limits* as for :func:`eligible`.
    """
    chosen, cumulative = _eligible(specs, _view(counts), _caps(limits), weights or {})
    if not chosen:
        return None
    x = (rng or random).random() * cumulative[-1]
    return chosen[min(bisect_right(cumulative, x), len(chosen) - 1)]


def parse_mix(text: str, known: Iterable[str] | None = None) -> dict[str, float]:
    """``new_order=5,revoke_certificate=1`` -> ``{"new_order": 5.0, ...}``.

    With *known* (the collected chain names), a name outside it is an error too.
    Raises ValueError saying what is allowed.
    """
    allowed = None if known is None else frozenset(known)
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = (p.strip() for p in part.partition("="))
        if not sep or not (name == "*" or _CHAIN_NAME.match(name)):
            raise ValueError(f"{_MIX_HELP}, got {part.strip()!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{_MIX_HELP}, got {part.strip()!r}") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"{_MIX_HELP}, got {part.strip()!r}")
        if allowed is not None and name != "*" and name not in allowed:
            raise ValueError(
                f"unknown chain {name!r} in the mix; chains: {', '.join(sorted(allowed))}"
            )
        if name in out:
            raise ValueError(f"chain {name!r} appears twice in the mix")
        out[name] = weight
    return out


def mix_weights(names: Iterable[str], mix: Mapping[str, float] | None) -> dict[str, float]:
    """Each chain's weight under ``--wec-mix``: without a mix every chain weighs 1; with one,
    the chains it names weigh what it says and the others what ``*`` says (0 without it:
    a mix that names chains runs those only)."""
    if not mix:
        return dict.fromkeys(names, 1.0)
    rest = float(mix.get("*", 0.0))
    return {name: float(mix.get(name, rest)) for name in names}


def parse_limits(text: str) -> dict[str, int]:
    """``accounts=1000,certificates=20000`` -> ``{"accounts": 1000, ...}``.

    Resource names may be singular or plural; keys come back plural (the :class:`Counts`
    fields). Raises ValueError saying what is allowed.
    """
    out: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = (p.strip() for p in part.partition("="))
        key = _BY_NAME.get(name.lower())
        if not sep:
            raise ValueError(f"{_LIMITS_HELP}, got {part.strip()!r}")
        if key is None:
            raise ValueError(f"unknown resource {name!r}; {_LIMITS_HELP}")
        if not _WHOLE.fullmatch(value):
            raise ValueError(f"limit for {name} must be a whole number >= 0, got {value!r}; "
                             f"{_LIMITS_HELP}")
        if key in out:
            raise ValueError(f"resource {key!r} appears twice in the limits")
        out[key] = int(value)
    return out
