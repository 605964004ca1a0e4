"""How a virtual user paces itself after a rate-limit refusal (closed model, worker side).

A chain refused over a CA's rate limit (a ``rateLimited`` problem or HTTP 429, RFC 8555
§6.6) ends in microseconds; a closed model that starts the next chain at once sends the
CA refusal after refusal (about 950 a second against a CA with limits). Instead the virtual
user whose chain was refused waits before its next chain (:class:`RefusalPacer`):

- the refusal's ``Retry-After`` (the chain's ``retry_after``), or without one 1 s doubling
  per refusal in a row;
- at most ``--wec-rate-limit-wait`` (0: never waits) and the time left of the run;
- at least :data:`MIN_WAIT`, so that a ``Retry-After: 0`` cannot make it spin.

The wait rides on the refused chain's result (``rate_limit_wait``), which the controller
counts (summary.json ``rate_limits``). A chain that was not refused resets the count.

The open model does not pace: its starts are the experiment's schedule, made whatever the
CA answers; its refused starts are counted the same way (docs/load-mode.md, "Rate limits").
"""

from __future__ import annotations

from typing import Any

from pytest_wec.acme._ratelimits import is_rate_limited
from pytest_wec.wire.results import ChainResult

__all__ = ["FIRST_WAIT", "MIN_WAIT", "RefusalPacer", "refused", "retry_after_of"]

#: seconds: the first wait after a refusal without Retry-After (doubling while refused)
FIRST_WAIT = 1.0
#: seconds: the shortest wait after a refusal, whatever its Retry-After
MIN_WAIT = 0.05


def retry_after_of(exc: BaseException) -> float | None:
    """The Retry-After (seconds) of a rate-limit refusal *exc*; None when *exc* is none, or
    the CA gave no Retry-After."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", 0)
    if code != "rateLimited" and status != 429:
        return None
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


def refused(result: ChainResult) -> bool:
    """The chain failed on a rate-limit refusal: its last request was answered so."""
    if result["outcome"] != "failed" or not result["requests"]:
        return False
    last = result["requests"][-1]
    return not last["ok"] and is_rate_limited(last["problem"], last["status"])


class RefusalPacer:
    """One virtual user's waits after refusals (module doc); *cap* is
    ``--wec-rate-limit-wait`` in seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.in_a_row = 0

    def after(self, result: ChainResult, left: float) -> float:
        """Seconds to wait after *result* before the next chain, with *left* seconds of the
        run to go; 0 when the chain was not refused (or the cap is 0)."""
        if not refused(result):
            self.in_a_row = 0
            return 0.0
        self.in_a_row += 1
        if self.cap <= 0 or left <= 0:
            return 0.0
        said: Any = result.get("retry_after")
        wait = float(said) if said is not None else FIRST_WAIT * 2 ** min(self.in_a_row - 1, 16)
        return min(max(wait, MIN_WAIT), self.cap, left)
