"""The embedded Pebble's doctor: a hung CA diagnosed from its side and restarted (controller).

The events and the failures counted against them are kept by the
:class:`~pytest_wec.controller.ledger.FailureLedger`.

:class:`PebbleDoctor` (the embedded Pebble only) is woken by the collector's progress tick
when the Watch has an open alarm (``CA stalled``, ``no chain ended``) or when no POST got an
answer for ``quiet_after`` seconds while requests time out (a deadlocked Pebble answers
``GET /dir`` and ``newNonce``, so the chains keep ending on timeouts and the CA seems to
answer). On its own thread, every step bounded, it proves from Pebble's side what is wrong
(:func:`~pytest_wec.stack._health.probe_pebble`):

- ``stopped``: the process is stopped (state T): reported, never restarted;
- ``exited``: the process is gone and nothing answers: restarted;
- ``deadlock`` / ``stall``: Pebble runs, ``GET /dir`` may answer, a POST that takes the
  MemoryStore's read lock gets no answer: ``SIGQUIT`` (Go prints every goroutine's stack to
  pebble.log and exits), the dump saved as ``pebble-dump-N.txt`` and classified
  (:func:`~pytest_wec.stack._dump.classify_dump`), Pebble restarted;
- ``restart``: Pebble started again on the same addresses; its state is gone.

A Pebble that dies (any exit nobody asked for, seen within a second by the stack's keeper,
:mod:`~pytest_wec.stack._keeper`) is handed over with :meth:`PebbleDoctor.exited`: an
``exited`` event naming its exit status or signal and its log's last line, then the same
restart (the keeper bounds how many deaths are restarted).

Each event is a ``ca_events`` entry of summary.json, one terminal line, and is shown by the
dashboard and report.html. Failures in an event's window (from the last POST answer before
it to the restart's end plus ``--wec-timeout``) that got no answer, or were cancelled, count
against it; after a restart, chains refused with ``accountDoesNotExist``, and chains that
spanned the restart and failed on an answer, count against the restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_wec.controller.ledger import FailureLedger
from pytest_wec.stack._dump import Diagnosis, classify_dump
from pytest_wec.stack._health import PebbleProbe, probe_pebble, process_state

__all__ = ["PebbleDoctor"]

log = logging.getLogger(__name__)



def _clock(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 60}m{s % 60:02d}s"


class PebbleDoctor:
    """Watches the embedded Pebble of one run (see the module's doc)."""

    def __init__(self, stack: Any, ledger: FailureLedger, note: Callable[[str], None], *,
                 timeout: float, stall_after: float = 10.0,
                 run_on_stack_thread: Callable[[Callable[[], float]], float] | None = None,
                 state_counts: Callable[[], Mapping[str, int]] | None = None,
                 forget: Callable[[], None] | None = None,
                 max_restarts: int = 100, min_spacing: float = 10.0,
                 post_timeout: float = 3.0, dump_timeout: float = 10.0) -> None:
        self.stack, self.ledger, self.note = stack, ledger, note
        self.timeout, self.stall_after = timeout, stall_after
        self.quiet_after = max(3.0, stall_after / 2)
        self.max_restarts, self.min_spacing = max_restarts, min_spacing
        self.post_timeout, self.dump_timeout = post_timeout, dump_timeout
        self._run = run_on_stack_thread or (lambda fn: fn())
        self._state_counts = state_counts
        self._forget = forget  # the state DB forgets what the old Pebble held
        self.run_dir = Path(stack.info["run_dir"])
        self.shard = int(getattr(stack, "index", 0))  # which embedded Pebble (PebbleShard)
        self.label = str(getattr(stack, "name", "pebble"))
        self.restarts = 0
        self._last_restart = -1e9
        self._next_probe = 0.0  # monotonic: no probe before it
        self._stopped: int | None = None  # the open "stopped" event's index
        self._gave_up = False
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._reason: tuple[str, int] = ("", 0)
        #: a death the keeper reported: (how it ended, its log's last line, told the outcome)
        self._death: tuple[str, str, Callable[[bool, float | None, str], None]] | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name="wec-doctor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._halt.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the progress tick (collector's lock held: never blocks) ----------------------------

    def tick(self, in_flight: int, alarm: Mapping[str, Any] | None,
             idle: float = 0.0) -> None:
        """*idle*: seconds since any chain ended. A probe costs Pebble one POST: it is made
        as soon as chains in flight stop ending for ``quiet_after`` seconds (a deadlocked
        Pebble's requests wait out ``--wec-timeout``, so timeouts come late)."""
        if self.busy or in_flight <= 0 or time.monotonic() < self._next_probe:
            return
        quiet, timeouts = self.ledger.quiet(time.time(), self.shard)
        if alarm is not None:
            reason = str(alarm.get("message") or "the Watch raised an alarm")
        elif quiet >= self.quiet_after and timeouts > 0:
            reason = f"no POST answered for {quiet:.1f}s while {timeouts} requests timed out"
        elif idle >= self.quiet_after:
            reason = f"no chain ended for {idle:.1f}s with {in_flight} in flight"
        else:
            return
        self._reason = (reason, in_flight)
        self.busy = True
        self._wake.set()

    def exited(self, how: str, last_line: str,
               done: Callable[[bool, float | None, str], None]) -> None:
        """The keeper saw the embedded Pebble die (*how*: ``killed by SIGKILL``): an
        ``exited`` event and a restart, on the doctor's thread; *done* is told the outcome
        (restarted, the seconds it took, the words)."""
        self._death = (how, last_line, done)
        self._reason = (f"embedded Pebble {how}", 0)
        self.busy = True
        self._wake.set()

    def give_up(self) -> None:
        """No restart any more (the keeper gave up on this Pebble's deaths)."""
        self._gave_up = True

    # -- the doctor's thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while not self._halt.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._halt.is_set():
                break
            try:
                if self._stopped is not None:
                    self._check_resumed()
                if self.busy or self._death is not None:
                    self._examine(*self._reason)
            except Exception:
                log.exception("the Pebble doctor failed; the run goes on")
            finally:
                if self.busy:
                    self.busy = False
                    self._next_probe = max(self._next_probe, time.monotonic() + 2.0)

    def _rel(self, epoch: float) -> float:
        return round(epoch - self.ledger.started, 1)

    def _event(self, kind: str, diagnosis: str, at: float, **extra: Any) -> dict[str, Any]:
        return {"at_s": self._rel(at), "kind": kind, "pebble": self.label,
                "directory": self.stack.info["directory"], "diagnosis": diagnosis, "dump": None,
                "in_flight": 0, "lost": None, **extra}

    def _say(self, index: int) -> None:
        ev = self.ledger.events[index]
        where = f" ({self.label})" if self.ledger.shards > 1 else ""
        line = f"wec: CA event: {ev['kind']} at {_clock(ev['at_s'])}{where}: {ev['diagnosis']}"
        self.ledger.update(index, message=line)
        self.note(line)

    def _examine(self, reason: str, in_flight: int) -> None:
        proc = self.stack.pebble
        death, self._death = self._death, None
        if death is not None:
            self._died(proc, reason, *death)
            return
        if proc is None or self._gave_up:
            return
        since = self.ledger.quiet(time.time(), self.shard)[0]
        since_epoch = time.time() - since
        info = self.stack.info
        probe = probe_pebble(info["directory"], info["ca_bundle"], proc.pid,
                             timeout=self.post_timeout, insecure=bool(info.get("insecure")))
        now = time.time()
        common = {"since_s": self._rel(since_epoch), "in_flight": in_flight,
                  "trigger": reason, "probe": probe.view()}
        if probe.answers_post:
            log.info("Pebble answers POSTs (%s); no CA event (%s)", probe.words(), reason)
            self._next_probe = time.monotonic() + self.stall_after
            return
        if probe.stopped:
            if self._stopped is None:
                ev = self._event("stopped", f"Pebble is stopped (SIGSTOP?) and answers nothing "
                                 f"({probe.words()}); not restarted: a stopped process takes "
                                 "no signal before it is continued", now,
                                 lost="nothing yet: a stopped Pebble keeps its state",
                                 duration_s=None, **common)
                self._stopped = self.ledger.record(ev, since_epoch, shard=self.shard)
                self._say(self._stopped)
            self._next_probe = time.monotonic() + self.stall_after
            return
        if proc.alive() is False and probe.answers_get:
            log.warning("the stack's Pebble exited but %s answers; not restarted",
                        info["directory"])
            self._next_probe = time.monotonic() + self.stall_after
            return
        if self.restarts >= self.max_restarts or \
                time.monotonic() - self._last_restart < self.min_spacing:
            if self.restarts >= self.max_restarts:
                self._gave_up = True
                ev = self._event("stall", f"embedded Pebble does not answer POSTs "
                                 f"({probe.words()}); not restarted: {self.restarts} restarts "
                                 "in this run already",
                                 now, **common)
                self._say(self.ledger.record(ev, since_epoch, shard=self.shard))
            return
        if not proc.alive():
            rc = proc.returncode
            last = (proc.tail(1) or "").strip()[:200]
            ev = self._event("exited", f"embedded Pebble exited (status {rc}) and answers "
                             f"nothing ({probe.words()}); its log ends: {last}", now, **common)
        else:
            ev = self._dump_and_diagnose(probe, now, common)
        index = self.ledger.record(ev, since_epoch, shard=self.shard)
        self._restart(ev, index, in_flight)

    def _died(self, proc: Any, reason: str, how: str, last_line: str,
              done: Callable[[bool, float | None, str], None]) -> None:
        """A death the keeper saw: proven (the process is gone), so no probe first."""
        if proc is None:
            done(False, None, "no embedded Pebble")
            return
        if proc.alive():  # a probe found it gone first and restarted it already
            done(True, None, "embedded Pebble restarted already")
            return
        since = self.ledger.quiet(time.time(), self.shard)[0]
        since_epoch = time.time() - since
        in_flight = self._reason[1]
        ends = f"; its log ends: {last_line}" if last_line else ""
        ev = self._event("exited", f"embedded Pebble {how}{ends}", time.time(),
                         since_s=self._rel(since_epoch), in_flight=in_flight, trigger=reason)
        index = self.ledger.record(ev, since_epoch, shard=self.shard)
        ok = self._restart(ev, index, in_flight)
        took = self.ledger.events[index].get("restart_s")
        done(ok, took, self.ledger.events[index]["diagnosis"])

    def _dump_and_diagnose(self, probe: PebbleProbe, now: float,
                           common: dict[str, Any]) -> dict[str, Any]:
        exited, text = self.stack.dump_pebble(self.dump_timeout)
        name = None
        if text:
            prefix = f"{self.label}-dump" if self.shard else "pebble-dump"
            name = f"{prefix}-{self.restarts + 1}.txt"
            try:
                (self.run_dir / name).write_text(text)
            except OSError as exc:
                log.warning("cannot save the dump %s: %s", name, exc)
                name = None
        diag: Diagnosis = classify_dump(text)
        if not exited:
            words = (f"embedded Pebble runs but its POSTs get no answer ({probe.words()}) and "
                     f"it did not exit on SIGQUIT within {self.dump_timeout:g}s")
        elif diag.deadlock:
            words = f"embedded Pebble deadlocked: {diag.words} ({probe.words()})"
        else:
            words = (f"embedded Pebble runs but its POSTs get no answer ({probe.words()}); "
                     f"its goroutine dump: {diag.words}")
        kind = "deadlock" if exited and diag.deadlock else "stall"
        return self._event(kind, words, now, dump=name, classification=diag.kind,
                           waiting=dict(list(diag.waiting.items())[:8]), **common)

    def _lost(self) -> str:
        held = ""
        if self._state_counts is not None:
            with contextlib.suppress(Exception):
                c = self._state_counts()
                held = (f" (the state DB holds {c.get('accounts', 0)} accounts and "
                        f"{c.get('certificates', 0)} certificates made before)")
        return ("Pebble's state: every account, order, authorization and certificate it held"
                f"{held}; its issuing roots are new")

    def _restart(self, ev: dict[str, Any], index: int, in_flight: int) -> bool:
        t = time.time()
        self.restarts += 1
        self._last_restart = time.monotonic()
        if self._forget is not None:
            try:  # before the new Pebble answers: every account in the DB is the old one's
                self._forget()
            except Exception:
                log.exception("marking the old Pebble's accounts dead failed")
        try:
            took = self._run(self.stack.restart_pebble)
        except Exception as exc:  # StackError and any other: the run goes on without a CA
            self.ledger.close(index, None)
            self.ledger.update(index, diagnosis=f"{ev['diagnosis']}; restart failed: {exc}")
            self._say(index)
            fail = self._event("restart", f"embedded Pebble did not start again: {exc}",
                               time.time(), in_flight=in_flight, ok=False)
            self._say(self.ledger.record(fail, None, shard=self.shard))
            return False
        end = time.time()
        lost = self._lost()
        self.ledger.update(index, lost=lost, restart_s=round(took, 2),
                           diagnosis=f"{ev['diagnosis']}; restarted in {took:.1f}s")
        self.ledger.close(index, end + self.timeout)
        self.ledger.answered_again(end, self.shard)
        self._say(index)
        pid = self.stack.pebble.pid if self.stack.pebble is not None else None
        rs = self._event("restart", f"embedded Pebble restarted in {took:.1f}s on the same "
                         f"addresses and config (pid {pid}); chains in flight across it fail, "
                         "accounts it forgot answer accountDoesNotExist", t, in_flight=in_flight,
                         lost=lost, restart_s=round(took, 2), ok=True, of=index)
        self._say(self.ledger.record(rs, t, None, restart_at=end, shard=self.shard))
        self._next_probe = time.monotonic() + self.quiet_after
        return True

    def _check_resumed(self) -> None:
        proc = self.stack.pebble
        index = self._stopped
        if proc is None or index is None:
            return
        state, _ = process_state(proc.pid)
        if state in ("T", "t"):
            return
        now = time.time()
        duration = round(now - (self.ledger.started + self.ledger.events[index]["since_s"]), 1)
        self.ledger.update(index, duration_s=duration)
        self.ledger.close(index, now + self.timeout)
        self.ledger.answered_again(now, self.shard)
        self._stopped = None
        log.info("Pebble runs again (state %s) after %.1fs stopped", state, duration)


