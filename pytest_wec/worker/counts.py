"""The picker's view of the state DB on a worker: its counts as last read, plus what this
worker stored since.

The state DB's counts (:meth:`pytest_wec.state.StateStore.counts`) are a query: a worker
reads them once before the load starts and then every second
(:data:`pytest_wec.worker.items.COUNTS_EVERY`). Between two reads the rows this worker
stored are known to exist without asking: an account one of its chains stored is there
for its next chains at once. Without that, a run that starts on an empty state DB could
start nothing but the chains that need nothing (new_account) for its whole first second,
whatever ``--wec-mix`` asks, and fill the state DB with accounts.

    live = LiveCounts()
    live.stored("account")            # a chain of this worker stored one
    token = live.reading()            # a read of the state DB's counts starts
    live.read(counts, token)          # ... and ended
    pick(specs, live.counts, ...)     # the read's counts plus what was stored since

A row stored while a read was under way counts once more until the next read (the read may
or may not have seen it): the view errs towards what exists, by at most what the worker
stored in the span of one read. What this worker takes away (a deactivated account, a
revoked certificate) and what the other workers store show at the next read.
"""

from __future__ import annotations

from dataclasses import replace

from pytest_wec.state import Counts

__all__ = ["LiveCounts", "ReadToken"]

#: resource names (as chains declare them, and Counts' fields) -> position in the tallies
_AT = {"account": 0, "accounts": 0, "authorization": 1, "authorizations": 1,
       "certificate": 2, "certificates": 2, "order": 3, "orders": 3}
_FIELDS = ("accounts", "authorizations", "certificates", "orders")

#: what :meth:`LiveCounts.reading` hands out: the read's number and the tallies at its start
ReadToken = tuple[int, tuple[int, ...]]


class LiveCounts:
    """The state DB's counts as last read, plus what this worker stored since its start.

    Used from one event loop (no lock); :attr:`counts` costs nothing between changes.
    """

    __slots__ = ("_base", "_issued", "_offset", "_read", "_stored", "_view")

    def __init__(self, base: Counts | None = None) -> None:
        self._base = base or Counts()
        self._stored = [0, 0, 0, 0]  # rows stored by this worker, ever
        self._offset: tuple[int, ...] = (0, 0, 0, 0)  # of those, what the last read covers
        self._issued = 0  # reads handed a token
        self._read = 0  # the token number of the read applied last
        self._view: Counts | None = self._base

    def stored(self, resource: str, n: int = 1) -> None:
        """This worker stored *n* rows of *resource* (``account``, ``authorization``,
        ``certificate``, ``order``)."""
        self._stored[_AT[resource]] += n
        self._view = None

    def reading(self) -> ReadToken:
        """A read of the state DB's counts starts now: the token :meth:`read` takes."""
        self._issued += 1
        return self._issued, tuple(self._stored)

    def read(self, counts: Counts, token: ReadToken) -> None:
        """The read started with *token* returned *counts*; a read that ended after a
        newer one was applied is dropped."""
        number, at_start = token
        if number <= self._read:
            return
        self._read = number
        self._base, self._offset = counts, at_start
        self._view = None

    @property
    def counts(self) -> Counts:
        """The last read's counts plus what this worker stored since that read started."""
        view = self._view
        if view is None:
            base, stored, offset = self._base, self._stored, self._offset
            view = self._view = replace(base, **{
                f: getattr(base, f) + stored[i] - offset[i]
                for i, f in enumerate(_FIELDS) if stored[i] != offset[i]})
        return view
