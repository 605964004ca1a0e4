"""What a load run's collector watches on the controller: workers, the CA, the generator.

:class:`Watch` is fed every batch and status the workers send and ticks with the live line:

- a worker that sent nothing for ``silent_after`` seconds while it had chains in flight
  went silent (``workers_lost``); one that reports again recovered; none is judged while
  the controller's reader has a backlog of the stream, where what it said since waits;
- ``CA stalled``: chains in flight, and no answer from the CA for ``stall_after`` seconds,
  neither in a chain that ended nor in any worker's latest answer (``last_answer`` in its
  status): the CA is the one not answering (``stalls``);
- ``no chain ended``: chains in flight and none ended for ``stall_after`` seconds while the
  CA does answer: the chains wait on something, and the message says what they wait on, by
  the workers' ``waiting`` counts (``waits``); the CA is not blamed;
- a generator over its limits (loop lag, CPU) for ``saturation_reports`` statuses in a row
  (``saturated``);
- our own stack (:meth:`Watch.set_down`, from the stack's keeper): while redis-server is down
  (or the controller cannot read it) no result can arrive, so no worker is silent and the CA
  is not blamed: ``no answer seen ... redis-server is down``; while the challenge server is
  down, the CA's validations cannot reach it: ``no chain ended ... our challenge server is
  down``; both in ``waits`` with the ``cause``. A worker whose process died is lost at once
  (:meth:`Watch.died`), with how it died, not after ``silent_after``.

Not thread-safe: the collector calls it under its own lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.stream import WorkerStatus

__all__ = ["CPU_LIMIT_PCT", "LAG_LIMIT_MS", "Watch", "answered"]

log = logging.getLogger(__name__)

LAG_LIMIT_MS = 100.0
CPU_LIMIT_PCT = 90.0


def clock(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 \
        else f"{s // 60}m{s % 60:02d}s"


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def answered(c: ChainResult) -> bool:
    """Whether a chain shows the CA answering: it succeeded, or it failed on an HTTP response
    (a chain that ends on a timeout or a refused connection got no answer)."""
    if c["ok"]:
        return True
    requests = c["requests"]
    return c["outcome"] == "failed" and bool(requests) and requests[-1]["status"] != 0


@dataclass
class _Worker:
    heard: float  # monotonic time of its last entry
    heard_at: float  # epoch seconds of the same
    in_flight: dict[str, int] = field(default_factory=dict)  # open session -> latest in_flight
    ended: set[str] = field(default_factory=set)
    streak: int = 0  # consecutive status reports over the generator's limits
    worst: tuple[float, float] = (0.0, 0.0)  # loop lag ms, cpu % over the streak
    saturated: bool = False
    lost: dict[str, Any] | None = None
    last_answer: float = 0.0  # epoch of the latest answer from the CA it saw
    last_end: float = 0.0  # monotonic: the latest batch with chains it sent
    waiting: dict[str, int] = field(default_factory=dict)


class Watch:
    """The watch state of one load run."""

    def __init__(self, t0: float, note: Callable[[str], None], notice: Callable[[str], None],
                 *, stall_after: float = 10.0, silent_after: float = 10.0,
                 saturation_reports: int = 3) -> None:
        self.t0 = t0  # monotonic second 0 of the run's relative times
        self.note, self.notice = note, notice
        self.stall_after, self.silent_after = stall_after, silent_after
        self.saturation_reports = max(saturation_reports, 1)
        self.workers: dict[str, _Worker] = {}
        self.stalls: list[dict[str, Any]] = []
        self.waits: list[dict[str, Any]] = []
        self.saturated: list[dict[str, Any]] = []
        self.workers_lost: list[dict[str, Any]] = []
        self.last_answer = t0  # monotonic: a chain ended on an answer from the CA
        self.last_end = t0  # monotonic: any chain ended
        self._stall: dict[str, Any] | None = None
        self._wait: dict[str, Any] | None = None
        self.down: dict[str, Mapping[str, Any]] = {}  # our parts down now (the keeper's)
        self.back: dict[str, float] = {}  # part -> monotonic time it was back
        self.channel_failing = False  # the controller cannot read Redis
        self._blind_until = 0.0  # monotonic: results may lag the outage of Redis until then

    def rel(self, mono: float) -> float:
        return round(mono - self.t0, 1)

    def restart_clock(self, t0: float) -> None:
        """The load started at *t0* (monotonic): relative times count from it."""
        self.t0 = t0
        self.last_answer = max(self.last_answer, t0)
        self.last_end = max(self.last_end, t0)

    # -- feeding ---------------------------------------------------------------------------

    def batch(self, worker: str, session: str, chains: Iterable[ChainResult],
              now: float) -> None:
        w = self.heard(worker, now)
        if session not in w.ended:
            w.in_flight.setdefault(session, 0)
        any_chain = False
        for c in chains:
            if not any_chain:
                w.last_end = now
            any_chain = True
            if answered(c):
                self._end_stall(now)
                self.last_answer = now
                break
        if any_chain:
            self._end_wait(now)
            self.last_end = now

    def status(self, st: WorkerStatus, now: float) -> None:
        name, session = st["worker"], st["session"]
        w = self.heard(name, now)
        w.last_answer = max(w.last_answer, float(st.get("last_answer") or 0.0))
        w.waiting = dict(st.get("waiting") or {})
        if st.get("final"):
            w.in_flight.pop(session, None)
            w.ended.add(session)
        elif session not in w.ended:
            w.in_flight[session] = int(st.get("in_flight", 0))
            self._check_saturation(name, w, st)

    def heard(self, name: str, now: float) -> _Worker:
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = _Worker(now, time.time())
        else:
            w.heard, w.heard_at = now, time.time()
        if w.lost is not None and not w.lost["recovered"]:
            w.lost["recovered"] = True
            self.notice(f"wec: worker {name} is reporting again")
        return w

    def _check_saturation(self, name: str, w: _Worker, st: WorkerStatus) -> None:
        lag, cpu = float(st.get("loop_lag_ms", 0.0)), float(st.get("cpu_pct", 0.0))
        if lag > LAG_LIMIT_MS or cpu > CPU_LIMIT_PCT:
            w.streak += 1
            w.worst = (max(w.worst[0], lag), max(w.worst[1], cpu))
        else:
            w.streak, w.worst = 0, (0.0, 0.0)
        if w.streak >= self.saturation_reports and not w.saturated:
            w.saturated = True
            msg = (f"wec: generator saturated on {name} (loop lag {w.worst[0]:.0f} ms, cpu "
                   f"{w.worst[1]:.0f}%): results show the generator's limits, not the CA's")
            self.saturated.append({"worker": name, "at_s": self.rel(time.monotonic()),
                                   "loop_lag_ms": w.worst[0], "cpu_pct": w.worst[1],
                                   "message": msg})
            self.note(msg)

    def set_down(self, down: Mapping[str, Mapping[str, Any]], back: Mapping[str, float],
                 channel_failing: bool, now: float) -> None:
        """Our own parts down now (name -> ``how``, ``at_s``), when each was last back, and
        whether the controller's reads of Redis fail."""
        self.down, self.back = dict(down), dict(back)
        self.channel_failing = channel_failing
        if "redis-server" in self.down or channel_failing:
            self._blind_until = now + self.silent_after
        elif "redis-server" in self.back:
            self._blind_until = max(self._blind_until, self.back["redis-server"] +
                                    self.silent_after)

    def died(self, name: str, message: str, now: float) -> None:
        """Worker *name*'s process died (the keeper saw it): lost now, with *message*."""
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = _Worker(now, time.time())
        if w.lost is not None and not w.lost["recovered"]:
            w.lost.update(message=message, cause="died")
            return
        n = sum(w.in_flight.values())
        w.lost = {"worker": name, "at_s": self.rel(w.heard), "last_seen": w.heard_at,
                  "in_flight": n, "recovered": False, "message": message, "cause": "died"}
        self.workers_lost.append(w.lost)

    def _ours(self, now: float) -> tuple[str, str] | None:
        """Our own part that explains why nothing is seen: (part, words); None: none."""
        for part in ("redis-server", "challenge-server"):
            d = self.down.get(part)
            if d is not None:
                return part, f"{part} is down ({d.get('how')} at {clock(d.get('at_s') or 0)})"
            back = self.back.get(part)
            if back is not None and now - back < self.stall_after:
                return part, f"{part} was down until {clock(back - self.t0)}"
        if self.channel_failing:
            return "redis-server", "the controller cannot read Redis"
        return None

    # -- watching --------------------------------------------------------------------------

    @property
    def alarm(self) -> dict[str, Any] | None:
        """The open ``CA stalled`` or ``no chain ended`` entry; None when neither is open
        (the embedded Pebble's doctor looks at it every tick)."""
        return self._stall or self._wait

    def group(self, member: Callable[[str], bool], now: float) -> tuple[int, float]:
        """Chains in flight on the workers *member* accepts, and the seconds since one of
        them last sent ended chains (since the start when none did)."""
        in_flight, last = 0, self.t0
        for name, w in self.workers.items():
            if member(name) and (w.lost is None or w.lost["recovered"]):
                in_flight += sum(w.in_flight.values())
                last = max(last, w.last_end)
        return in_flight, now - last

    def in_flight(self) -> int:
        return sum(sum(w.in_flight.values()) for w in self.workers.values()
                   if w.lost is None or w.lost["recovered"])

    def _answer_age(self, now: float) -> float:
        """Seconds since the CA last answered anyone: a chain that ended on an answer, or a
        request of a chain still in flight (the workers' ``last_answer``)."""
        newest = max((w.last_answer for w in self.workers.values()), default=0.0)
        seen = now - self.last_answer
        if newest > 0:
            seen = min(seen, max(time.time() - newest, 0.0))
        return seen

    def tick(self, now: float, *, behind: bool = False) -> None:
        """Silent workers, then a stalled CA or chains that wait on something else.
        *behind*: the controller's reader has a backlog of the stream to work through, so
        what the workers said since is not read yet: none is judged silent meanwhile."""
        # results cannot arrive (Redis is, or was, away), or are not read yet
        blind = now < self._blind_until or behind
        for name, w in self.workers.items():
            # silent with chains in flight: a worker that said it has none (its sink closed,
            # its end record still behind in the stream) has nothing to lose
            if w.lost is None and sum(w.in_flight.values()) > 0 \
                    and now - w.heard >= self.silent_after and not blind:
                self._lose(name, w)
        in_flight = self.in_flight()
        if in_flight <= 0:
            return
        quiet = self._answer_age(now)
        idle = now - self.last_end
        ours = self._ours(now)
        if ours is not None:
            if self._stall is None and self._wait is None and \
                    max(quiet, idle) >= self.stall_after:
                self._our_wait(ours, quiet, idle, in_flight, now)
            return
        if self._stall is None and quiet >= self.stall_after:
            pebbles = [f"{k} is down ({d.get('how')} at {clock(d.get('at_s') or 0)})"
                       for k, d in sorted(self.down.items()) if k.startswith("pebble")]
            because = f": the embedded {', '.join(pebbles)}" if pebbles else ""
            msg = (f"wec: CA stalled: no answer from the CA for {quiet:.1f}s with {in_flight} "
                   f"in flight{because}")
            self._stall = {"at_s": self.rel(now - quiet), "detected_s": self.rel(now),
                           "in_flight": in_flight, "duration_s": None, "message": msg}
            self.stalls.append(self._stall)
            self.note(msg)
            return
        if self._stall is None and self._wait is None and idle >= self.stall_after:
            waiting = Counter[str]()
            for w in self.workers.values():
                waiting.update(w.waiting)
            what = ", ".join(f"{k} {n}" for k, n in waiting.most_common(6)) or "unknown"
            msg = (f"wec: no chain ended for {idle:.1f}s with {in_flight} in flight while the "
                   f"CA answers (last answer {quiet:.1f}s ago); the chains wait on: {what}")
            self._wait = {"at_s": self.rel(self.last_end), "detected_s": self.rel(now),
                          "in_flight": in_flight, "waiting": dict(waiting),
                          "duration_s": None, "message": msg}
            self.waits.append(self._wait)
            self.note(msg)

    def _our_wait(self, ours: tuple[str, str], quiet: float, idle: float, in_flight: int,
                  now: float) -> None:
        part, words = ours
        if part == "redis-server":
            msg = (f"wec: no result arrived for {idle:.1f}s with {in_flight} in flight: "
                   f"{words}: results cannot reach the controller, the workers keep them")
        else:
            msg = (f"wec: no chain ended for {idle:.1f}s with {in_flight} in flight: our "
                   f"{words}: the CA's validations cannot reach it (last answer from the CA "
                   f"{quiet:.1f}s ago)")
        self._wait = {"at_s": self.rel(self.last_end), "detected_s": self.rel(now),
                      "in_flight": in_flight, "waiting": {}, "cause": part,
                      "duration_s": None, "message": msg}
        self.waits.append(self._wait)
        self.note(msg)

    def _end_stall(self, now: float) -> None:
        if self._stall is not None:
            self._stall["duration_s"] = round(now - self.last_answer, 1)
            log.info("the CA answers again after a stall of %.1fs", now - self.last_answer)
            self._stall = None

    def _end_wait(self, now: float) -> None:
        if self._wait is not None:
            self._wait["duration_s"] = round(now - self.last_end, 1)
            self._wait = None

    def _lose(self, name: str, w: _Worker) -> None:
        n = sum(w.in_flight.values())
        msg = (f"wec: worker {name} went silent at {clock(w.heard - self.t0)} (last seen "
               f"{_utc(w.heard_at)} with {n} chains in flight)")
        w.lost = {"worker": name, "at_s": self.rel(w.heard), "last_seen": w.heard_at,
                  "in_flight": n, "recovered": False, "message": msg}
        self.workers_lost.append(w.lost)
        self.note(msg)

    def end(self, now: float, expected_workers: int, started: bool,
            behind: Collection[str] = ()) -> None:
        """At the end: workers with no end record are lost; open watches close. *behind*:
        workers whose results were still unread when the run ended (the controller fell
        behind them, they did not go silent)."""
        for name, w in self.workers.items():
            if w.lost is None and w.in_flight and name not in behind:  # no end record
                self._lose(name, w)
        if self._stall is not None:
            self._stall["duration_s"] = round(now - self.last_answer, 1)
            self._stall = None
        if self._wait is not None:
            self._wait["duration_s"] = round(now - self.last_end, 1)
            self._wait = None
        heard = len(set(self.workers) | set(behind))
        if started and heard < expected_workers:
            self.note(f"wec: {expected_workers - heard} of {expected_workers} "
                      "workers never reported")
