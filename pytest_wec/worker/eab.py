"""External Account Binding on a worker (RFC 8555 §7.3.4): which key a new account sends.

The keys come in the stack's info (``info["eab"]``, :class:`~pytest_wec.settings.eab.
EabKeys`); each new account takes one from this process's :class:`EabPool`:

reusable keys (the default)
    every worker takes all of them in turn, worker *i* starting at key *i*, so that the
    accounts of a run spread over the keys;
single-use keys (``--wec-eab-single-use``)
    shared out among the *N* workers of the run, worker *i* taking keys *i*, *i + N*,
    *i + 2N*, ... (without xdist the one process takes them all), each once. Nothing is
    shared at run time, so no key can go to two workers, whatever dies or restarts; a
    worker whose share is used up raises :class:`EabKeysUsedUp` (a chain run once fails
    with it; under load it is a :class:`~pytest_wec.worker.context.NoContext`, so the chain
    counts as skipped) even when another worker still holds keys. A worker xdist started
    to replace a dead one (an id past the run's count) gets none: the dead one's keys may
    have been used.

Errors, both naming what to do::

    WecError
     └── EabRequired     the CA's directory says ``externalAccountRequired`` and no key was
                         given
    NoContext
     └── EabKeysUsedUp   single-use keys: this worker's share is used up
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from pytest_wec.errors import WecError
from pytest_wec.settings.eab import EabKey, EabKeys
from pytest_wec.worker.context import NoContext

__all__ = ["HOW", "EabKeysUsedUp", "EabPool", "EabRequired", "pool_from_info", "refused_note",
           "required_message", "share_of"]

#: the options that give keys, for messages
HOW = ("--wec-eab-kid and --wec-eab-hmac (one key), or --wec-eab-file PATH (several); "
       "with the embedded Pebble, --wec-pebble-eab")


class EabRequired(WecError):
    """The CA requires External Account Binding and the run was given no key."""


class EabKeysUsedUp(NoContext):
    """Every single-use key of this worker's share was sent once already."""


def share_of(worker: str, workers: int | None = None) -> tuple[int, int]:
    """(index, count) of worker *worker* (``gw3``; ``main`` without xdist) among the run's
    workers; *workers* defaults to xdist's ``PYTEST_XDIST_WORKER_COUNT``, and is 0 when
    unknown (a share of single-use keys cannot then be told, so there is none)."""
    digits = "".join(ch for ch in worker if ch.isdigit())
    if worker == "main" or not digits:
        return 0, 1
    if workers is None:
        try:
            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", ""))
        except ValueError:
            workers = 0
    return int(digits), max(workers, 0)


class EabPool:
    """The keys this process's new accounts take (thread-safe; one per worker runtime)."""

    def __init__(self, keys: EabKeys, worker: str = "main", index: int = 0,
                 workers: int = 1) -> None:
        self.keys = keys
        self.worker = worker
        self.index = index
        self.workers = workers  # 0: unknown
        all_keys = keys.keys
        if keys.single_use:
            self._share = all_keys[index::workers] if 0 <= index < workers else ()
        else:
            n = len(all_keys)
            self._share = tuple(all_keys[(index + j) % n] for j in range(n))
        self._next = 0
        self._lock = threading.Lock()
        #: how many accounts took a key, by kid (what this worker sent)
        self.taken: dict[str, int] = {}

    @property
    def left(self) -> int | None:
        """Single-use keys still unsent by this worker; None for reusable keys."""
        if not self.keys.single_use:
            return None
        with self._lock:
            return len(self._share) - self._next

    def take(self) -> EabKey:
        """The key the next new account sends; :class:`EabKeysUsedUp` when none is left."""
        with self._lock:
            if self.keys.single_use:
                if self._next >= len(self._share):
                    raise EabKeysUsedUp(self._used_up())
                key = self._share[self._next]
                self._next += 1
            else:
                key = self._share[self._next % len(self._share)]
                self._next += 1
            self.taken[key.kid] = self.taken.get(key.kid, 0) + 1
            return key

    def _used_up(self) -> str:
        total, n, i = len(self.keys.keys), self.workers, self.index
        of = f"the {total} single-use key(s) of {self.keys.source}"
        numbers = list(range(i + 1, total + 1, n)) if n else []
        listed = ", ".join(map(str, numbers[:4])) + (", ..." if len(numbers) > 4 else "")
        if n == 1:
            where = f"{of} were each sent once"
        elif n == 0:
            where = (f"worker {self.worker} takes none of {of}: the run's number of workers "
                     "is unknown here (PYTEST_XDIST_WORKER_COUNT), so its share is too")
        elif not self._share:
            where = (f"worker {self.worker}'s share of {of} (one key in {n}, from key "
                     f"{i + 1}) is empty" +
                     (": it replaced a dead worker, whose keys may have been used"
                      if i >= n else ""))
        else:
            where = (f"worker {self.worker}'s share of {of} (one key in {n}: keys {listed}) "
                     "was each sent once")
        return (f"no External Account Binding key left for a new account: {where}, and a "
                "single-use key is never sent twice; give more keys (one per account the "
                "run makes)")


def pool_from_info(info: Mapping[str, Any], worker: str) -> EabPool | None:
    """This process's pool of the stack info's keys; None when there are none."""
    plain = info.get("eab")
    if not plain:
        return None
    index, workers = share_of(worker)
    return EabPool(EabKeys.from_plain(plain), worker, index, workers)


def required_message(directory: str) -> str:
    """What a chain says when the CA requires a binding and the run was given none."""
    return (f"the CA requires External Account Binding (RFC 8555 §7.3.4: its directory "
            f"{directory} says meta.externalAccountRequired) and this run was given no "
            f"key: give {HOW}")


def refused_note(key: EabKey, source: str, status: int, code: str) -> str:
    """The note added to the CA's refusal of a newAccount that carried a binding."""
    hint = ("check the key id and the HMAC key the CA gave" if code in
            ("unauthorized", "malformed", "externalAccountRequired", "badSignature")
            else "the binding may not be the cause")
    return (f"wec: the CA's answer (HTTP {status} {code}) to a newAccount carrying External "
            f"Account Binding key id {key.kid!r} from {source}; {hint}")
