"""A CA that still accepts what it answered it no longer accepts (not a chain itself).

Boulder's WFE keeps accounts in a cache for a few seconds: after a key rollover (RFC 8555
§7.3.5) it still takes the old key, and after a deactivation (§7.3.6) the deactivated
account's requests, until the cache entry expires (and refuses the new key meanwhile).
That is a bug, and the chains keep failing on it; :func:`refused_after` and
:func:`accepted_after` make the failure say what the CA did and for how long, so that
whoever reads it sees the cache: the request the CA answered wrongly is sent again in
growing steps until the CA answers it right or :data:`LINGER_LIMIT` seconds have passed
since its answer that changed the account, and the failure names the last wrong answer and
the first right one, in seconds after that answer::

    the old key was still accepted 2.8 s after the CA answered the rollover (first refused
    3.3 s after it, with accountDoesNotExist, HTTP 400): RFC 8555 §7.3.5 ...

Times are the CA's answer's arrival (the change) to each request's send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pytest_wec import ChainContext
from pytest_wec.acme import AcmeProblem

from ._checks import expect_problem

__all__ = ["LINGER_LIMIT", "accepted_after", "refused_after"]

#: seconds after the change past which an accepted request is not sent again
LINGER_LIMIT = 10.0
#: seconds before the first retry (doubling, at most MAX_STEP)
FIRST_STEP = 0.25
MAX_STEP = 0.5


def _answered(wec: ChainContext, endpoint: str) -> float:
    """When this chain's latest answer from *endpoint* arrived (epoch); now if none."""
    for r in reversed(wec.requests):
        if r["endpoint"] == endpoint and r["status"]:
            return float(r["started"] + r["took"])
    return time.time()


def _sent(wec: ChainContext) -> float:
    return float(wec.requests[-1]["started"]) if wec.requests else time.time()


def _secs(t: float) -> str:
    return f"{t:.2f} s" if t < 1 else f"{t:.1f} s"


async def _refusal(wec: ChainContext, attempt: Callable[[], Awaitable[Any]],
                   codes: tuple[str, ...]) -> tuple[AcmeProblem | None, Any]:
    """(the problem *attempt* was refused with, None) or (None, its result)."""
    try:
        with wec.expecting(*codes):
            return None, await attempt()
    except AcmeProblem as problem:
        return problem, None


async def _until(wec: ChainContext, attempt: Callable[[], Awaitable[Any]],
                 codes: tuple[str, ...], changed_at: float, *,
                 refused: bool) -> tuple[float, float | None, AcmeProblem | None, Any]:
    """Send *attempt* again in growing steps until it is *refused* (or accepted, when
    False) or :data:`LINGER_LIMIT` passed: (the last send that was not yet so, the first
    that was or None, its problem, its result), in seconds after *changed_at*."""
    last = _sent(wec) - changed_at
    step = FIRST_STEP
    while time.time() - changed_at < LINGER_LIMIT:
        await asyncio.sleep(step)
        step = min(step * 2, MAX_STEP)
        problem, result = await _refusal(wec, attempt, codes)
        if (problem is not None) == refused:
            return last, _sent(wec) - changed_at, problem, result
        last = _sent(wec) - changed_at
    return last, None, None, None


async def refused_after(wec: ChainContext, attempt: Callable[[], Awaitable[Any]],
                        *codes: str, changed: str, event: str, accepted: str, rfc: str,
                        status: int | tuple[int, ...] | None = None) -> AcmeProblem:
    """``await attempt()`` must be refused, once the CA answered the request to endpoint
    *changed* (``keyChange``, ``account``) that made it refuse: with one of *codes* (and
    *status*) as :func:`~._checks.expect_problem` checks, or with any problem when no code
    is given. When the CA accepts it, it is tried again (see the module doc) and the
    AssertionError says ``"{accepted} N s after {event} ...: {rfc}"``."""
    changed_at = _answered(wec, changed)
    problem, _ = await _refusal(wec, attempt, codes)
    if problem is not None:
        if not codes:
            return problem
        caught = problem

        async def refusal() -> None:
            raise caught

        return await expect_problem(wec, refusal(), *codes, status=status)
    last, first, problem, _ = await _until(wec, attempt, codes, changed_at, refused=True)
    if first is None or problem is None:
        raise AssertionError(f"{accepted} {_secs(last)} after {event}, the last time the "
                             f"chain asked: {rfc}")
    raise AssertionError(f"{accepted} {_secs(last)} after {event} (first refused "
                         f"{_secs(first)} after it, with {problem.code}, HTTP "
                         f"{problem.status}): {rfc}")


async def accepted_after(wec: ChainContext, attempt: Callable[[], Awaitable[Any]], *,
                         changed: str, event: str, refused: str, rfc: str) -> Any:
    """``await attempt()`` must succeed, once the CA answered the request to endpoint
    *changed* that made it valid (the new key after a rollover); its result. When the CA
    refuses it, it is tried again (see the module doc) and the AssertionError says
    ``"{refused} N s after {event} (with the problem ...): {rfc}"``."""
    changed_at = _answered(wec, changed)
    problem, result = await _refusal(wec, attempt, ())
    if problem is None:
        return result
    why = f"{problem.code}, HTTP {problem.status}: {str(problem).splitlines()[0][:160]}"
    last, first, _, _ = await _until(wec, attempt, (), changed_at, refused=False)
    if first is None:
        raise AssertionError(f"{refused} {_secs(last)} after {event}, the last time the "
                             f"chain asked (first with {why}): {rfc}")
    raise AssertionError(f"{refused} {_secs(last)} after {event} (with {why}; first "
                         f"accepted {_secs(first)} after it): {rfc}")
