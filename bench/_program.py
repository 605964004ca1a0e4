"""What the stub CA is programmed to do, and the truth it keeps (``stubca.py --program``).

A :class:`Program` gives every answer a delay drawn from its endpoint's distribution
(:class:`Dist`: ``fixed:1ms`` or ``lognormal:P50:P99``), holds the CA's validation of an
answered challenge for a drawn validation delay (then sends a drawn number of http-01
validation requests to the challenge server, as a multi-perspective CA does, and only then
marks the authorization valid) and its issuance after finalize for a drawn issuance delay;
an optional stall holds every answer due in a window until the window's end.

:class:`Truth` is what the CA saw, on its own clock (``time.time()``: one clock for every
process of the machine): each request's drawn delay and actual hold, and per authorization,
order and account the instants that delimit the phases (docs/load-mode.md):

    validation                 challenge POST received -> first authz answer sent saying valid
    first_validation_request   challenge POST received -> the challenge server's answer to
                               the first validation request received (it stamps a request
                               once it has answered it)
    validation_requests        validation requests sent for the authorization
    issuance                   finalize received -> first answer sent saying the order is valid
    time_to_certificate        newOrder received -> certificate download answer sent
    polls                      authz requests after the challenge POST, and order requests
    chain                      the account's first request received -> its last answer sent

The client's figures start at its send and end at the answer's arrival: the same instants
plus the loopback's one-way delays.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Dist", "Program", "Truth", "parse_dist"]

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|s)")


def _seconds(text: str) -> float:
    m = _DUR.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a duration such as 30ms or 1.5s, got {text!r}")
    return float(m[1]) / (1000 if m[2] == "ms" else 1)


@dataclass(frozen=True)
class Dist:
    """A delay distribution, in seconds: fixed, or lognormal with a given p50 and p99."""

    kind: str
    p50: float
    p99: float

    def draw(self, rng: random.Random) -> float:
        if self.kind == "fixed" or self.p99 <= self.p50:
            return self.p50
        sigma = (math.log(self.p99) - math.log(self.p50)) / _Z99
        return rng.lognormvariate(math.log(self.p50), sigma)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.p50 * 1000:g}ms"
        return f"lognormal:{self.p50 * 1000:g}ms:{self.p99 * 1000:g}ms"


def parse_dist(text: str) -> Dist:
    """``fixed:1ms``, ``lognormal:30ms:120ms`` (p50, p99) or a bare duration (fixed)."""
    parts = text.strip().split(":")
    if parts[0] == "lognormal" and len(parts) == 3:
        p50, p99 = _seconds(parts[1]), _seconds(parts[2])
        if not 0 < p50 <= p99:
            raise ValueError(f"lognormal needs 0 < p50 <= p99: {text!r}")
        return Dist("lognormal", p50, p99)
    if parts[0] == "fixed" and len(parts) == 2:
        return Dist("fixed", _seconds(parts[1]), _seconds(parts[1]))
    if len(parts) == 1:
        return Dist("fixed", _seconds(parts[0]), _seconds(parts[0]))
    raise ValueError(f"expected fixed:D, lognormal:P50:P99 or D, got {text!r}")


@dataclass
class Program:
    """Delays per endpoint (``*``: the others), validation, issuance, requests per
    validation (uniform from ``requests[0]`` to ``requests[1]``), a stall (``stall_at``
    seconds after the first request, for ``stall_for`` seconds) and the seed."""

    delays: dict[str, Dist] = field(default_factory=lambda: {"*": Dist("fixed", 0.0, 0.0)})
    validation: Dist = Dist("fixed", 0.0, 0.0)
    issuance: Dist = Dist("fixed", 0.0, 0.0)
    requests: tuple[int, int] = (1, 1)
    stall_at: float | None = None
    stall_for: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.first: float | None = None

    def delay(self, endpoint: str) -> float:
        return self.delays.get(endpoint, self.delays["*"]).draw(self.rng)

    def hold_until(self, received: float, delay: float) -> float:
        """When the answer goes out: after its delay, and not within the stall."""
        if self.first is None:
            self.first = received
        due = received + delay
        if self.stall_at is not None:
            start = self.first + self.stall_at
            end = start + self.stall_for
            if start <= due < end or start <= received < end:
                due = max(due, end)
        return due

    def validation_requests(self) -> int:
        lo, hi = self.requests
        return self.rng.randint(lo, hi)

    def to_plain(self) -> dict[str, Any]:
        return {"delays": {k: str(v) for k, v in self.delays.items()},
                "validation": str(self.validation), "issuance": str(self.issuance),
                "requests": list(self.requests), "stall_at": self.stall_at,
                "stall_for": self.stall_for, "seed": self.seed}


@dataclass
class Truth:
    """What the CA saw (see the module doc); plain lists and dicts, served as JSON."""

    #: [endpoint, drawn delay, programmed hold (the delay, or until the stall's end), actual
    #: hold, received (epoch)]
    requests: list[list[Any]] = field(default_factory=list)
    authzs: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, list[float]] = field(default_factory=dict)  # kid -> [first, last]
    stall: list[float] | None = None

    def to_plain(self) -> dict[str, Any]:
        return {"requests": self.requests, "authzs": self.authzs, "orders": self.orders,
                "accounts": self.accounts, "stall": self.stall}
