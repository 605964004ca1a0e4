"""The ACME phases of one chain run, and the RFC deviations its checks saw (worker).

:class:`PhaseRecorder` is a part of :class:`~pytest_wec.worker.flows.Flows` (so of every
ChainContext): the flows record each phase's value as the chain goes
(:data:`pytest_wec.controller.phases.PHASES` says where each starts and ends), from the
chain's own RequestResults: the send of a request is its ``started``, the arrival of its
answer ``started + took``. :meth:`PhaseRecorder.wire_extras` is what the ChainResult carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_wec.wire.results import RequestResult

__all__ = ["PhaseRecorder"]


class PhaseRecorder:
    """Phase values and deviations of one chain run (state kept on the ChainContext)."""

    #: phase -> values (seconds, or counts) of this chain run
    _phase_values: dict[str, list[float]] | None = None
    #: order url -> the send of its newOrder; -> the authorization polls made for it
    _order_sent: dict[str, float] | None = None
    _order_polls: dict[str, int] | None = None
    _deviations: list[list[str]] | None = None

    requests: list[RequestResult]
    client: Any

    def _sent(self, since: int, endpoint: str) -> float | None:
        """The send of the last *endpoint* request since index *since* (the one answered)."""
        for r in reversed(self.requests[since:]):
            if r["endpoint"] == endpoint:
                return r["started"]
        return None

    def _arrived(self, since: int, endpoint: str) -> float | None:
        """The arrival of the answer to the last *endpoint* request since index *since*."""
        for r in reversed(self.requests[since:]):
            if r["endpoint"] == endpoint:
                return r["started"] + r["took"]
        return None

    def _phase(self, name: str, value: float) -> None:
        if self._phase_values is None:
            self._phase_values = {}
        self._phase_values.setdefault(name, []).append(value)

    def _polls_of(self, url: str) -> int:
        polls = getattr(self.client, "polls", None)
        return int(polls.get(url, 0)) if polls is not None else 0

    def _count_polls(self, order_url: str, n: int) -> None:
        if self._order_polls is None:
            self._order_polls = {}
        self._order_polls[order_url] = self._order_polls.get(order_url, 0) + n

    def record_deviation(self, kind: str, detail: str) -> None:
        """An RFC deviation the chain's checks saw (``chains._checks.warn_deviation``)."""
        if self._deviations is None:
            self._deviations = []
        self._deviations.append([kind, detail])

    def wire_extras(self, ok: bool) -> dict[str, Any]:
        """``phases`` and ``deviations`` for this run's ChainResult (only those it has).

        ``polls`` counts, per order this chain made with newOrder, the authorization polls
        after its challenge answers and every order poll; only when the chain ended ok (a
        chain that failed may have stopped halfway)."""
        out: dict[str, Any] = {}
        phases = {k: list(v) for k, v in (self._phase_values or {}).items()}
        if ok and self._order_sent:
            phases["polls"] = [(self._order_polls or {}).get(url, 0) + self._polls_of(url)
                               for url in self._order_sent]
        if phases:
            out["phases"] = phases
        if self._deviations:
            out["deviations"] = [list(d) for d in self._deviations]
        return out
