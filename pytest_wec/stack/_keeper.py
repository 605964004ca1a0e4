"""The stack's keeper (controller): every process a load run started is watched, and a death
is seen within a second, recorded, and restarted where it can be.

:class:`StackKeeper` polls, every ``interval`` seconds, each process of the stack (Pebble,
redis-server, the challenge server: :meth:`~pytest_wec.stack._procs.ManagedProcess.died`)
and each local xdist worker (its ``subprocess.Popen``, handed over when xdist says it is
ready). A death is a stack event (summary.json ``stack_events``, through the
:class:`~pytest_wec.controller.ledger.FailureLedger`) and one terminal line, naming its exit
status or signal and the last line of its log::

    wec: stack: redis-server (pid 4242) killed by SIGKILL at 0m15s; its log ends: ...;
    restarting it
    wec: stack: redis-server restarted in 0.1s on the same address (restart 1 of 3)

What happens next, by part:

- redis-server, the challenge server: restarted on the same argv (so the same addresses),
  on the stack's thread, at most :data:`MAX_RESTARTS` times a run; then given up. Redis
  comes back empty: the workers' sinks find it so and send their latest batches again, their
  publishers write the challenge data of their chains in flight again. Failed chains that
  were in flight while the part was down count against its event.
- an embedded Pebble: handed to its doctor (:meth:`~pytest_wec.controller.doctor.
  PebbleDoctor.exited`), which records an ``exited`` CA event and restarts it as it does a
  deadlocked one (its old accounts marked dead); bounded the same way.
- a worker: not restarted; what it sent is kept, and what it held or had in flight is
  counted lost by the collector.

A part given up on, or a worker dead, is :meth:`StackKeeper.unrecovered`: the run ends with
:data:`~pytest_wec.controller.ledger.EXIT_INCOMPLETE`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pytest_wec.stack._procs import ManagedProcess, exit_words

__all__ = ["MAX_RESTARTS", "SETTLE_S", "StackKeeper"]

log = logging.getLogger(__name__)

#: deaths of one part restarted in a run; the next one is given up on
MAX_RESTARTS = 3
#: seconds after a restart during which starting chains still count against the death
#: (Redis' data written again by the workers within about one second)
SETTLE_S = 2.0


def _clock(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 60}m{s % 60:02d}s"


def _last_line(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(nothing)"


class StackKeeper:
    """Watches the processes of one run (see the module's doc); thread-safe."""

    def __init__(self, stack: Any, ledger: Any, note: Callable[[str], None], *,
                 started: Callable[[], float],
                 run_on_stack_thread: Callable[[Callable[[], float]], float] | None = None,
                 doctors: Mapping[str, Any] | None = None,
                 max_restarts: int = MAX_RESTARTS, interval: float = 0.2) -> None:
        self.stack, self.ledger, self.note = stack, ledger, note
        self._started = started  # epoch of second 0 of ``at_s``
        self._run = run_on_stack_thread or (lambda fn: fn())
        self.doctors = dict(doctors or {})  # embedded Pebble's name -> its doctor
        self.max_restarts, self.interval = max_restarts, interval
        #: told (name, the event's line) when a worker died
        self.on_worker_died: Callable[[str, str], None] | None = None
        #: told the part's name when it was restarted and is back (in the keeper's thread)
        self.on_recovered: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._workers: dict[str, subprocess.Popen[Any]] = {}
        self._deaths: dict[str, int] = {}
        self._down: dict[str, dict[str, Any]] = {}  # part -> since (monotonic), how, ...
        self._back: dict[str, float] = {}  # part -> monotonic time it was back
        self._unrecovered: list[str] = []
        self.dead_workers: set[str] = set()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wec-keeper", daemon=True)

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops watching (a restart under way is waited for, within *timeout*)."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def watch_worker(self, name: str, popen: subprocess.Popen[Any] | None) -> None:
        """A local xdist worker's process (None: a remote one, seen through xdist only)."""
        if popen is not None:
            with self._lock:
                self._workers[name] = popen

    def worker_down(self, name: str, error: object) -> None:
        """xdist says *name* went down with *error*: a remote worker's death (a local one's
        process tells more, and is seen by the loop)."""
        with self._lock:
            if name in self._workers or name in self.dead_workers:
                return
        self._worker_died(name, None, f"went down ({str(error).strip()[:200] or 'no reason'})")

    # -- what the run asks -----------------------------------------------------------------

    def down(self) -> dict[str, dict[str, Any]]:
        """The parts down now: name -> ``since`` (monotonic), ``how``, ``at_s``."""
        with self._lock:
            return {k: dict(v) for k, v in self._down.items()}

    def back_since(self, part: str) -> float | None:
        """Monotonic time *part* was last back after a death; None if it never died."""
        with self._lock:
            return self._back.get(part)

    def unrecovered(self) -> list[str]:
        """Why the run is incomplete because of its stack: parts given up on, workers dead."""
        with self._lock:
            return list(self._unrecovered)

    # -- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self._check()
            except Exception:
                log.exception("the stack keeper failed; it goes on")

    def _check(self) -> None:
        for proc in list(self.stack.procs):
            rc = proc.died()
            if rc is not None:
                self._part_died(proc, rc)
        with self._lock:
            workers = [(n, p) for n, p in self._workers.items() if n not in self.dead_workers]
        for name, popen in workers:
            rc = popen.poll()
            if rc is not None and rc != 0:
                self._worker_died(name, popen.pid, exit_words(rc))
            elif rc is not None:
                with self._lock:
                    self._workers.pop(name, None)

    def _rel(self, epoch: float) -> float:
        return round(epoch - self._started(), 1)

    def _part_died(self, proc: ManagedProcess, rc: int) -> None:
        name, now = proc.name, time.time()
        how, tail = exit_words(rc), proc.tail(5)
        last = _last_line(tail)
        pebble = name.startswith("pebble")
        with self._lock:
            deaths = self._deaths[name] = self._deaths.get(name, 0) + 1
            self._down[name] = {"since": time.monotonic(), "how": how, "at_s": self._rel(now)}
        ev: dict[str, Any] = {
            "at_s": self._rel(now), "part": name, "kind": "exited", "pid": proc.pid,
            "status": rc if rc >= 0 else None,
            "signal": signal.Signals(-rc).name if rc < 0 and -rc in signal.valid_signals()
            else None, "how": how, "log": str(proc.log_path), "log_tail": tail,
            "restarted": None, "restart_s": None, "recovered": None}
        # a Pebble's failures count against its CA event (the doctor's), not twice
        index = self.ledger.record_stack(ev, None if pebble else now - 2 * self.interval - 0.5)
        head = (f"wec: stack: {name} (pid {proc.pid}) {how} at {_clock(ev['at_s'])}; its log "
                f"ends: {last}")
        doctor = self.doctors.get(name) if pebble else None
        if deaths > self.max_restarts or (pebble and doctor is None):
            why = (f"it died {deaths} times in this run ({self.max_restarts} restarts at most)"
                   if deaths > self.max_restarts else "no doctor for it")
            self._give_up(name, index, f"{head}; not restarted: {why}")
            return
        self._say(index, f"{head}; restarting it" + (" (its CA event follows)" if pebble else ""))
        if doctor is not None:
            doctor.exited(how, last, functools.partial(self._pebble_done, name, index, deaths))
            return
        t = time.monotonic()
        try:
            self._run(functools.partial(self._restart, proc))
        except Exception as exc:  # StackError and any other: the run goes on without it
            self._give_up(name, index, f"wec: stack: {name} did not start again: {exc}")
            return
        self._recovered(name, index, time.monotonic() - t, deaths)

    @staticmethod
    def _restart(proc: ManagedProcess) -> float:
        t = time.monotonic()
        proc.restart()
        return time.monotonic() - t

    def _recovered(self, name: str, index: int, took: float, deaths: int) -> None:
        self.ledger.close_stack(index, time.time() + SETTLE_S)
        self.ledger.update_stack(index, restarted=True, recovered=True,
                                 restart_s=round(took, 2))
        with self._lock:
            self._down.pop(name, None)
            self._back[name] = time.monotonic()
        line = (f"wec: stack: {name} restarted in {took:.1f}s on the same address (restart "
                f"{deaths} of {self.max_restarts})")
        log.info(line)
        self.note(line)
        if self.on_recovered is not None:
            try:
                self.on_recovered(name)
            except Exception:  # a callback's failure must not stop the watch
                log.exception("after %s came back", name)

    def _pebble_done(self, name: str, index: int, deaths: int, ok: bool, took: float | None,
                     words: str) -> None:
        if ok:
            self._recovered(name, index, took or 0.0, deaths)
        else:
            self._give_up(name, index, f"wec: stack: {name} not recovered: {words}")

    def _give_up(self, name: str, index: int, line: str) -> None:
        doctor = self.doctors.get(name)
        if doctor is not None:  # nor does its doctor restart it
            doctor.give_up()
        self.ledger.update_stack(index, restarted=False, recovered=False, message=line)
        with self._lock:
            ev = self.ledger.stack_events[index]
            self._unrecovered.append(f"{name} {ev['how']} at {_clock(ev['at_s'])} and was "
                                     "not restarted")
        log.warning(line)
        self.note(line)

    def _say(self, index: int, line: str) -> None:
        self.ledger.update_stack(index, message=line)
        log.warning(line)
        self.note(line)

    def _worker_died(self, name: str, pid: int | None, how: str) -> None:
        now = time.time()
        with self._lock:
            if name in self.dead_workers:
                return
            self.dead_workers.add(name)
            self._workers.pop(name, None)
        ev: dict[str, Any] = {
            "at_s": self._rel(now), "part": f"worker {name}", "kind": "exited", "pid": pid,
            "status": None, "signal": None, "how": how, "log": None, "log_tail": "",
            "restarted": False, "restart_s": None, "recovered": False}
        with contextlib.suppress(ValueError):
            rc = int(how.rsplit(" ", 1)[-1]) if how.startswith("exited with status") else None
            ev["status"] = rc
        if how.startswith("killed by "):
            ev["signal"] = how.removeprefix("killed by ")
        index = self.ledger.record_stack(ev, None)
        pid_text = f" (pid {pid})" if pid else ""
        line = (f"wec: stack: worker {name}{pid_text} {how} at {_clock(ev['at_s'])}; not "
                "restarted: what it sent is kept, what it held or had in flight is counted "
                "lost")
        self._say(index, line)
        with self._lock:
            self._unrecovered.append(f"worker {name} {how} at {_clock(ev['at_s'])}")
        if self.on_worker_died is not None:
            self.on_worker_died(name, line)
