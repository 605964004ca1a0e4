"""Who is asking: the per-chain view of every exchange (:class:`Observed`).

Each chain's client carries one; :meth:`Observed.emit` turns an exchange into a
:class:`~pytest_wec.wire.results.RequestResult` for the chain's observer (a ``rateLimited``
problem's names the limit its detail states, ``limit``), and :meth:`Observed.waited` tells
the chain of a Retry-After sleep between two attempts, which no exchange's latency holds.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire.results import RequestObserver, RequestResult
from ._errors import AcmeError, AcmeProblem, AcmeUnexpectedStatus
from ._ratelimits import limit_name

__all__ = ["Observed"]


class Observed:
    """Who is asking: the chain whose requests are being recorded."""

    __slots__ = ("chain", "chain_id", "current", "observer", "on_wait")

    def __init__(self, chain: str, chain_id: str, observer: RequestObserver | None) -> None:
        self.chain = chain
        self.chain_id = chain_id
        self.observer = observer
        self.current: str | None = None  # the endpoint of the exchange under way, if any
        #: told of every Retry-After sleep: (endpoint, HTTP status, seconds, limit or None)
        self.on_wait: Callable[[str, int, float, str | None], None] | None = None

    def waited(self, endpoint: str, error: AcmeProblem | AcmeUnexpectedStatus,
               seconds: float) -> None:
        """A retry of *endpoint* is about to sleep *seconds* as *error*'s Retry-After said."""
        on_wait = self.on_wait
        if on_wait is not None:
            detail = error.detail if isinstance(error, AcmeProblem) else None
            on_wait(endpoint, error.status, seconds, limit_name(detail))

    def emit(
        self,
        endpoint: str,
        method: str,
        status: int,
        started: float,
        took: float,
        error: AcmeError | None,
        connect: float = 0.0,
    ) -> None:
        """One exchange's RequestResult to the observer; ``connect``: the seconds spent
        opening its connection, when it opened one (not in ``took``)."""
        self.current = None
        observer = self.observer
        if observer is None:
            return
        result: RequestResult = {
            "chain_id": self.chain_id,
            "chain": self.chain,
            "endpoint": endpoint,
            "method": method,
            "status": status,
            "started": started,
            "took": took,
            "ok": error is None,
            "error": None if error is None else error.kind,
            "problem": error.type if isinstance(error, AcmeProblem) else None,
        }
        if connect > 0.0:
            result["connect"] = connect
        if isinstance(error, AcmeProblem) and error.code == "rateLimited":
            limit = limit_name(error.detail)
            if limit is not None:
                result["limit"] = limit
        observer(result)
