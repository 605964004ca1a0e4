"""What a Go goroutine dump of Pebble (``SIGQUIT``) says: :func:`classify_dump`.

Pebble 2.4 (Debian's) deadlocks under concurrent load on its MemoryStore's ``sync.RWMutex``
and the per-authorization ``RWMutex`` taken in opposite orders:

- ``MemoryStore.FindValidAuthorization`` (``NewOrder`` -> ``makeAuthorizations``) holds the
  store's read lock and waits for an authorization's read lock;
- the ``Authz`` handler holds that authorization's lock and waits for the store's read lock
  (``validPOSTAsGET`` -> ``getAcctByKey`` -> ``MemoryStore.GetAccountByKey``);
- a writer (``MemoryStore.Add*``) waits in ``RWMutex.Lock`` for the store's readers to
  drain, and a Go ``RWMutex`` with a writer waiting admits no new reader, so every request
  that touches the store (``GetAccountByID`` of every JWS with a ``kid``...) waits for ever.

A variant (letsencrypt/pebble PR #553): a read lock of an authorization is never released
(``CompleteOrder``), the ``Authz`` handler waits in ``Lock`` for it, and readers of that
authorization that hold the store's read lock (``Order.GetStatus`` under
``MemoryStore.GetOrderByID``) wait behind it.

:func:`classify_dump` is a pure function of the dump's text: the goroutines, those in
``semacquire`` counted by the lock and the first Pebble function, and the cycle when one of
the two patterns is there.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Diagnosis", "classify_dump", "dump_text"]

_PEBBLE = "github.com/letsencrypt/pebble/"
_BLOCK = re.compile(r"^goroutine \d+ \[([^\],]+)[^\]]*\]:", re.MULTILINE)
_ARGS = re.compile(r"\((?:[^()]|\([^()]*\))*\)$")  # the call's argument list at the end


@dataclass(frozen=True)
class _Goroutine:
    state: str  # "semacquire", "IO wait", ...
    lock: str  # "RLock", "Lock" (a writer that waits for readers), "queued Lock", "Mutex"
    frames: tuple[str, ...]  # Pebble's functions, innermost first, e.g. "db.(*MemoryStore).X"


@dataclass(frozen=True)
class Diagnosis:
    """What a dump shows. ``kind``: ``store-authz-deadlock``, ``leaked-authz-lock``,
    ``unknown`` (goroutines, no known cycle) or ``no-dump``."""

    kind: str
    words: str
    goroutines: int = 0
    semacquire: int = 0
    #: goroutines in semacquire by "LOCK in FUNCTION" (the first Pebble frame), most first
    waiting: dict[str, int] = field(default_factory=dict)

    @property
    def deadlock(self) -> bool:
        return self.kind in ("store-authz-deadlock", "leaked-authz-lock")


def dump_text(log_text: str) -> str:
    """The goroutine dump in a log's text: from the last ``SIGQUIT: quit`` on ("" if none)."""
    i = log_text.rfind("SIGQUIT: quit")
    return log_text[i:] if i >= 0 else ""


def _short(frame: str) -> str:
    """``db.(*MemoryStore).GetAccountByID`` -> ``MemoryStore.GetAccountByID``."""
    return re.sub(r"^\w+\.\(\*?(\w+)\)\.", r"\1.", frame)


def _goroutines(text: str) -> list[_Goroutine]:
    out: list[_Goroutine] = []
    starts = list(_BLOCK.finditer(text))
    for n, m in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
        body = text[m.end():end].split("\n\n", 1)[0]
        calls = [_ARGS.sub("", line.strip()) for line in body.splitlines()
                 if line and not line.startswith(("\t", " "))]
        lock = ""
        for i, call in enumerate(calls):
            if call == "sync.(*RWMutex).RLock":
                lock = "RLock"
                break
            if call == "sync.(*RWMutex).Lock":
                # through Mutex.lockSlow: behind another writer; directly: waits for readers
                queued = any(c.startswith("sync.(*Mutex).") for c in calls[:i])
                lock = "queued Lock" if queued else "Lock"
                break
        else:
            if any(c.startswith("sync.(*Mutex).") for c in calls):
                lock = "Mutex"
        frames = tuple(c[len(_PEBBLE):] for c in calls if c.startswith(_PEBBLE))
        out.append(_Goroutine(m.group(1).strip(), lock, frames))
    return out


def _has(g: _Goroutine, *names: str) -> bool:
    return any(f.endswith(n) for f in g.frames for n in names)


def classify_dump(text: str) -> Diagnosis:
    """Classify Pebble's goroutine dump (the log's text; the part from the last
    ``SIGQUIT: quit`` is read when there is one)."""
    dump = dump_text(text) or text
    gs = _goroutines(dump)
    if not gs:
        return Diagnosis("no-dump", "no goroutine dump in Pebble's log")
    blocked = [g for g in gs if g.state == "semacquire"]
    waiting = Counter(f"{g.lock or 'sema'} in {_short(g.frames[0]) if g.frames else '?'}"
                      for g in blocked)
    order = dict(waiting.most_common())
    # the store's read lock held, an authorization's read lock awaited
    find = [g for g in blocked if g.lock == "RLock" and g.frames
            and g.frames[0].endswith("MemoryStore).FindValidAuthorization")]
    status = [g for g in blocked if g.lock == "RLock" and g.frames
              and g.frames[0].endswith("Order).GetStatus") and _has(g, "MemoryStore).GetOrderByID")]
    # an authorization's lock held (Authz handler), the store's read lock awaited
    authz = [g for g in blocked if g.lock == "RLock" and g.frames
             and "MemoryStore).GetAccountBy" in g.frames[0]
             and _has(g, "WebFrontEndImpl).Authz") and _has(g, "validPOSTAsGET", "getAcctByKey")]
    authz_lock = [g for g in blocked if g.lock.endswith("Lock") and g.frames
                  and g.frames[0].endswith("WebFrontEndImpl).Authz")]
    writers = [g for g in blocked if g.lock == "Lock" and g.frames
               and g.frames[0].startswith("db.(*MemoryStore).")]
    writer = (f"a writer ({_short(writers[0].frames[0])}) waits for the store's readers, so "
              "no new reader gets in" if writers else "")
    by_id = waiting.get("RLock in MemoryStore.GetAccountByID", 0)
    tail = [writer] if writer else []
    if by_id:
        tail.append(f"{by_id} wait in GetAccountByID")
    if find and authz:
        holders = len(find) + len(authz)
        via = _short(authz[0].frames[0]).split(".", 1)[-1]
        words = (f"{holders} goroutines hold MemoryStore and authorization locks in opposite "
                 f"order (FindValidAuthorization vs Authz -> {via})")
        return Diagnosis("store-authz-deadlock", ", ".join([words, *tail]), len(gs),
                         len(blocked), order)
    if authz_lock and (status or find) and writers:
        readers = len(status) + len(find)
        words = (f"an authorization's lock is never released (a read lock leaked, as in "
                 f"CompleteOrder, letsencrypt/pebble PR #553): the Authz handler waits for it "
                 f"in Lock, {readers} goroutine(s) holding the MemoryStore's read lock wait "
                 f"for it ({'Order.GetStatus' if status else 'FindValidAuthorization'})")
        return Diagnosis("leaked-authz-lock", ", ".join([words, *tail]), len(gs),
                         len(blocked), order)
    top = ", ".join(f"{n} {k}" for k, n in list(order.items())[:4]) or "none"
    words = (f"no known lock cycle: {len(blocked)} of {len(gs)} goroutines wait on a lock "
             f"({top})")
    return Diagnosis("unknown", words, len(gs), len(blocked), order)
