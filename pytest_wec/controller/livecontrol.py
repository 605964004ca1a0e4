"""A load run's live side on the controller: the dashboard's view and its control.

:class:`LiveControl` is the part of :class:`~pytest_wec.controller.collector.LoadSession`
that other threads call while the run goes on: :meth:`~LiveControl.snapshot` (the run so
far, :mod:`~pytest_wec.controller.liveview`), :meth:`~LiveControl.set_target` and
:meth:`~LiveControl.request_stop` (through the Redis control hash,
:mod:`pytest_wec.wire.control`, that the workers read).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_wec.controller.liveview import live_view, worker_rows

T = TypeVar("T")

if TYPE_CHECKING:
    from pytest_wec.controller.aggregator import Aggregator
    from pytest_wec.controller.watch import Watch
    from pytest_wec.settings import Settings
    from pytest_wec.wire.control import ControlWriter

__all__ = ["LiveControl"]

log = logging.getLogger(__name__)


class LiveControl:
    """The live view and control of a load run (any thread); state kept by the session."""

    settings: Settings
    run_id: str
    directory: str
    workers: int
    warnings: list[str]
    controls: list[dict[str, Any]]
    watch: Watch
    load_started: float | None
    load_ended: float | None
    state_counts: Callable[[], Mapping[str, int]] | None
    _agg: Aggregator
    _lock: threading.Lock
    _state_lock: threading.Lock
    _state_cache: tuple[float, dict[str, int]]
    _started: float
    _t0: float
    _ended: float | None
    _summary: dict[str, Any] | None
    _control: ControlWriter | None
    _closed: bool
    _stopping: bool
    _target: float | None

    _write: Callable[[str], None]  # a line to the terminal, never raising

    def _rel(self, mono: float) -> float:
        return round(mono - self._t0, 1)

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """The run so far (see :mod:`~pytest_wec.controller.liveview`); series from second
        ``since``."""
        state = self._state_now()
        mono = time.monotonic()
        with self._lock:
            now = min(time.time(), self._ended) if self._ended is not None else time.time()
            live = {name: {"in_flight": sum(w.in_flight.values()),
                           "age_s": round(mono - w.heard, 1),
                           "state": "silent" if w.lost is not None and not w.lost["recovered"]
                           else "running" if w.in_flight or not w.ended else "ended"}
                    for name, w in self.watch.workers.items()}
            s = self.settings
            run = {"id": self.run_id, "started": self._started, "directory": self.directory,
                   "workers": self.workers, "model": s.model, "load": s.load, "rate": s.rate,
                   "duration_s": s.run_length, "grace_s": s.grace,
                   "stages": [[d, t] for d, t in s.stages] if s.stages else None}
            return live_view(self._agg, run=run, now=now, since=since,
                             in_flight=self.watch.in_flight(), target=self._target_at(now),
                             workers=worker_rows(self._agg.workers.values(), live), state=state,
                             stopping=self._stopping, ended=self._summary is not None,
                             warnings=self.warnings)

    def read(self, fn: Callable[[Any, Any], T]) -> T:
        """``fn(aggregator, watch)`` under the run's lock (the metrics' scrape)."""
        with self._lock:
            return fn(self._agg, self.watch)

    def target_now(self) -> float:
        """The total target now (chains in flight, or starts per second)."""
        return self._target_at(time.time())

    def _target_at(self, now: float) -> float:
        if self._target is not None:
            return self._target
        from pytest_wec.worker.runner import LoadPlan

        return LoadPlan.from_settings(self.settings, 0, 1).total_target(now - self._started)

    def set_target(self, value: float) -> None:
        """The run's new total target (chains in flight, or starts per second in the open
        model); workers take their shares within a second. RuntimeError once the run is
        stopping; Redis errors as raised."""
        control = self._control
        if control is None or self._closed or self._stopping:
            raise RuntimeError("the run is not running")
        control.set_target(value)
        with self._lock:
            self._target = float(value)
            self.controls.append({"at_s": self._rel(time.monotonic()), "target": float(value)})
        what = "rate" if self.settings.model == "open" else "load"
        self._write(f"wec: {what} set to {value:g} from the dashboard")

    def request_stop(self, by: str | None = None) -> None:
        """Ends the run as at the end of its duration: no chain starts, chains in flight
        finish within the grace, outputs are written. ``by`` names who asked when it is not
        the dashboard (``--wec-abort-on-fail``): that stop is no live control, so it is not
        in ``controls`` (the dashboard's changes)."""
        control = self._control
        if control is None or self._closed:
            raise RuntimeError("the run is not running")
        if not self._stopping:
            control.stop()
            self._stopping = True
            with self._lock:
                now = time.time()
                if self.load_started is not None and now < self.load_started + \
                        self.settings.run_length:
                    self.load_ended = max(now, self.load_started)
                    self._agg.until = self.load_ended
            if by is None:
                with self._lock:
                    self.controls.append({"at_s": self._rel(time.monotonic()), "stop": True})
            self._write(f"wec: stop requested {f'by {by}' if by else 'from the dashboard'}; "
                        "chains in flight finish")

    def _state_now(self, max_age: float = 2.0) -> dict[str, int]:
        """The state DB's counts, read at most every ``max_age`` seconds."""
        if self.state_counts is None:
            return {}
        with self._state_lock:
            at, counts = self._state_cache
            if time.monotonic() - at >= max_age:
                try:
                    counts = dict(self.state_counts())
                except Exception as exc:
                    log.warning("cannot count the state DB: %s", exc)
                self._state_cache = (time.monotonic(), counts)
            return counts

