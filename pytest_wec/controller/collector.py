"""A load run on the controller: results in, live line, results log, summary and benchmark.

:class:`LoadSession` runs two daemon threads next to pytest's own::

    wec-results    ResultSource (Redis stream) -> Aggregator + results log
    wec-progress   the live line every 2 s; watches for a saturated generator, a stalled CA
                   (no chain ended on an answer from it for a while) and workers that went
                   silent

:meth:`LoadSession.finish` drains what the workers still send, then writes summary.json,
benchmark.json and report.html in the run directory. :meth:`LoadSession.snapshot` is the live
view of the dashboard (from any thread), :meth:`~LoadSession.set_target` and
:meth:`~LoadSession.request_stop` its control (through :mod:`pytest_wec.wire.control`).
:func:`rebuild` makes the three files again from a results log alone::

    wec report RESULTS_LOG [--out DIR]
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.liveview import live_view, worker_rows
from pytest_wec.controller.outputs import (
    build_benchmark_json,
    build_summary,
    build_tables,
    format_progress,
    format_tables,
    write_json_atomic,
)
from pytest_wec.controller.rebuild import BENCHMARK_NAME, SUMMARY_NAME, rebuild, report_main
from pytest_wec.controller.report_html import REPORT_NAME, settings_view, write_report
from pytest_wec.controller.resultlog import ResultLogWriter
from pytest_wec.settings import Settings
from pytest_wec.wire.control import ControlWriter
from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.stream import Batch, Record, ResultSource, WorkerStatus

__all__ = ["BENCHMARK_NAME", "REPORT_NAME", "SUMMARY_NAME", "LoadSession", "log_name",
           "rebuild", "report_main"]

log = logging.getLogger(__name__)

LAG_LIMIT_MS = 100.0
CPU_LIMIT_PCT = 90.0


def log_name(fmt: str) -> str:
    """File name of the results log in the run directory."""
    return "results.msgpack" if fmt == "msgpack" else "results.jsonl"


def _clock(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 \
        else f"{s // 60}m{s % 60:02d}s"


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _answered(c: ChainResult) -> bool:
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


class LoadSession:
    """The controller's side of one load run; ``start`` once, ``finish`` at the end."""

    def __init__(self, settings: Settings, run_dir: Path, run_id: str, redis_url: str,
                 namespace: str, directory: str, workers: int,
                 write_line: Callable[[str], None],
                 state_counts: Callable[[], Mapping[str, int]] | None = None, *,
                 progress_interval: float = 2.0, stall_after: float = 10.0,
                 silent_after: float = 10.0, saturation_reports: int = 3) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.redis_url, self.namespace = redis_url, namespace
        self.directory, self.workers = directory, workers
        self.write_line, self.state_counts = write_line, state_counts
        self.progress_interval, self.stall_after = progress_interval, stall_after
        self.silent_after, self.saturation_reports = silent_after, max(saturation_reports, 1)
        self.log_path = self.run_dir / log_name(settings.log_format)
        self.summary_path = self.run_dir / SUMMARY_NAME
        self.benchmark_path = self.run_dir / BENCHMARK_NAME
        self.report_path = self.run_dir / REPORT_NAME
        self.stalls: list[dict[str, Any]] = []
        self.saturated: list[dict[str, Any]] = []
        self.workers_lost: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.controls: list[dict[str, Any]] = []  # live changes from the dashboard
        self._started, self._t0 = time.time(), time.monotonic()
        self._agg = Aggregator(self._started)
        #: called with the summary before it is written (thresholds, baselines)
        self.gate: Callable[[dict[str, Any]], None] | None = None
        #: called every progress tick with the live tables and the elapsed seconds
        self.on_tick: Callable[[dict[str, Any], float], None] | None = None
        self._lock = threading.Lock()  # the aggregator and the watch state below
        self._finish_lock = threading.Lock()
        self._stop = threading.Event()
        self._source: ResultSource | None = None
        self._writer: ResultLogWriter | None = None
        self._threads: list[threading.Thread] = []
        self._workers: dict[str, _Worker] = {}
        self._last_answer = self._t0
        self._stall: dict[str, Any] | None = None
        self._notices: list[str] = []
        self._closed = False
        self._summary: dict[str, Any] | None = None
        self._control: ControlWriter | None = None
        self._target: float | None = None  # set live from the dashboard
        self._stopping = False
        self._ended: float | None = None
        self._state_lock = threading.Lock()
        self._state_cache: tuple[float, dict[str, int]] = (-1e9, {})

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads or self._closed:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._writer = ResultLogWriter(self.log_path, self.settings.log_format)
        self._source = ResultSource(self.redis_url, self.namespace)
        self._control = ControlWriter(self.redis_url, self.namespace)
        try:
            self._control.reset()
        except Exception as exc:
            log.warning("cannot reset the run's control in Redis: %s", exc)
        with self._lock:
            self._started, self._t0 = time.time(), time.monotonic()
            self._agg = Aggregator(self._started)
            self._last_answer = self._t0
        for name, target in (("wec-results", self._consume), ("wec-progress", self._progress)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _consume(self) -> None:
        source = self._source
        assert source is not None
        while not self._stop.is_set():
            try:
                records = source.read(block=0.5)
            except Exception:  # the consumer must outlive any surprise
                log.exception("reading results failed; retrying")
                self._stop.wait(0.5)
                continue
            self._handle(records)

    def _handle(self, records: Iterable[Record]) -> None:
        for rec in records:
            if self._closed:
                return
            try:
                if isinstance(rec, Batch):
                    self._batch(rec)
                else:
                    self._status(rec)
            except Exception:
                log.exception("cannot take a result record; skipped")

    def _batch(self, batch: Batch) -> None:
        if self._writer is not None:
            self._writer.write_many(batch.chains)
        now = time.monotonic()
        with self._lock:
            for c in batch.chains:
                self._agg.add(c)
            w = self._heard(batch.worker, now)
            if batch.session not in w.ended:
                w.in_flight.setdefault(batch.session, 0)
            if any(_answered(c) for c in batch.chains):
                self._end_stall(now)
                self._last_answer = now

    def _status(self, st: WorkerStatus) -> None:
        now = time.monotonic()
        with self._lock:
            self._agg.add_status(st)
            name, session = st["worker"], st["session"]
            w = self._heard(name, now)
            if st.get("final"):
                w.in_flight.pop(session, None)
                w.ended.add(session)
            elif session not in w.ended:
                w.in_flight[session] = int(st.get("in_flight", 0))
                self._check_saturation(name, w, st)

    def _heard(self, name: str, now: float) -> _Worker:
        w = self._workers.get(name)
        if w is None:
            w = self._workers[name] = _Worker(now, time.time())
        else:
            w.heard, w.heard_at = now, time.time()
        if w.lost is not None and not w.lost["recovered"]:
            w.lost["recovered"] = True
            self._notices.append(f"wec: worker {name} is reporting again")
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
            self.saturated.append({"worker": name, "at_s": self._rel(time.monotonic()),
                                   "loop_lag_ms": w.worst[0], "cpu_pct": w.worst[1],
                                   "message": msg})
            self._note(msg)

    def _rel(self, mono: float) -> float:
        return round(mono - self._t0, 1)

    def _note(self, msg: str) -> None:
        self._notices.append(msg)
        self.warnings.append(msg)

    def _in_flight(self) -> int:
        return sum(sum(w.in_flight.values()) for w in self._workers.values()
                   if w.lost is None or w.lost["recovered"])

    def _watch(self, now: float) -> None:
        """Silent workers, then a stalled CA; under the lock."""
        for name, w in self._workers.items():
            if w.lost is None and w.in_flight and now - w.heard >= self.silent_after:
                self._lose(name, w)
        in_flight = self._in_flight()
        quiet = now - self._last_answer
        if self._stall is None and in_flight > 0 and quiet >= self.stall_after:
            msg = (f"wec: CA stalled: no answer from the CA for {quiet:.1f}s with {in_flight} "
                   "in flight")
            self._stall = {"at_s": self._rel(self._last_answer), "detected_s": self._rel(now),
                           "in_flight": in_flight, "duration_s": None, "message": msg}
            self.stalls.append(self._stall)
            self._note(msg)

    def _end_stall(self, now: float) -> None:
        if self._stall is not None:
            self._stall["duration_s"] = round(now - self._last_answer, 1)
            log.info("the CA answers again after a stall of %.1fs", now - self._last_answer)
            self._stall = None

    def _lose(self, name: str, w: _Worker) -> None:
        n = sum(w.in_flight.values())
        msg = (f"wec: worker {name} went silent at {_clock(w.heard - self._t0)} (last seen "
               f"{_utc(w.heard_at)} with {n} chains in flight)")
        w.lost = {"worker": name, "at_s": self._rel(w.heard), "last_seen": w.heard_at,
                  "in_flight": n, "recovered": False, "message": msg}
        self.workers_lost.append(w.lost)
        self._note(msg)

    def _progress(self) -> None:
        while not self._stop.wait(self.progress_interval):
            try:
                now = time.monotonic()
                with self._lock:
                    self._watch(now)
                    line = format_progress(self._agg, time.time(),
                                           duration_s=self.settings.run_length,
                                           in_flight=self._in_flight())
                    live = (build_tables(self._agg, max(now - self._t0, 1e-3))
                            if self.on_tick is not None else None)
                self._flush_notices()
                self._write(line)
                if self.on_tick is not None and live is not None:
                    self.on_tick(live, now - self._t0)
            except Exception:
                log.exception("live line failed")

    def _flush_notices(self) -> None:
        with self._lock:
            notices, self._notices = self._notices, []
        for text in notices:
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            self.write_line(text)
        except Exception:  # a closed terminal must not end the run's bookkeeping
            log.debug("write_line failed for %r", text, exc_info=True)

    # -- the end ---------------------------------------------------------------------------

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Drains, stops, writes summary.json and benchmark.json; returns the summary."""
        with self._finish_lock:
            if self._summary is not None:
                return self._summary
            deadline = time.monotonic() + max(timeout, 0.0)
            ended = time.time()
            self._stop.set()
            for thread in self._threads:
                thread.join(max(min(deadline - time.monotonic(), 5.0), 0.1))
            stuck = any(t.is_alive() and t.name == "wec-results" for t in self._threads)
            source = self._source
            if source is not None and not stuck:
                self._drain(source, deadline)
            elif source is not None:
                log.warning("the results reader did not stop; summary without a final drain")
            self._closed = True
            self._ended = ended
            if self._control is not None:
                self._control.close()
            lost = source.lost_total if source is not None else 0
            if source is not None and not stuck:
                source.close()
            if self._writer is None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._writer = ResultLogWriter(self.log_path, self.settings.log_format)
            self._writer.close()
            with self._lock:
                self._agg.add_lost(lost)
                self._watch_end(time.monotonic())
                summary = self._build(ended)
                benchmark = build_benchmark_json(self._agg, summary["run"])
            if self.gate is not None:
                try:
                    self.gate(summary)
                except Exception:
                    log.exception("evaluating the gates failed")
                    self._write("wec: evaluating thresholds and baselines failed; see the log")
            self._summary = summary
            self._flush_notices()
            for path, obj in ((self.summary_path, summary), (self.benchmark_path, benchmark)):
                try:
                    write_json_atomic(path, obj)
                except OSError as exc:
                    log.error("cannot write %s: %s", path, exc)
                    self._write(f"wec: cannot write {path}: {exc.strerror or exc}")
            try:
                write_report(self.report_path, summary, settings_view(self.settings))
            except OSError as exc:
                log.error("cannot write %s: %s", self.report_path, exc)
                self._write(f"wec: cannot write {self.report_path}: {exc.strerror or exc}")
            return summary

    def _drain(self, source: ResultSource, deadline: float) -> None:
        with self._lock:
            names = set(self._workers) or None
        try:
            for rec in source.drain(names, timeout=max(deadline - time.monotonic(), 0.1),
                                    stale_after=self.silent_after):
                self._handle([rec])
        except Exception:
            log.exception("draining results failed; summary from what arrived")

    def _watch_end(self, now: float) -> None:
        for name, w in self._workers.items():
            if w.lost is None and w.in_flight:  # no end record
                self._lose(name, w)
        if self._stall is not None:
            self._stall["duration_s"] = round(now - self._last_answer, 1)
            self._stall = None
        if self._threads and len(self._workers) < self.workers:
            self._note(f"wec: {self.workers - len(self._workers)} of {self.workers} workers "
                       "never reported")

    def _build(self, ended: float) -> dict[str, Any]:
        s = self.settings
        # the load's own span (first chain start to last chain end), not the workers'
        # start-up and teardown, so that rates per second are the load's
        started = self._agg.first_start or self._started
        ended = min(self._agg.last_end or ended, ended)
        run_info = {"id": self.run_id, "started": started, "ended": ended,
                    "duration_s": max(ended - started, 0.0), "directory": self.directory,
                    "workers": self.workers, "model": s.model, "load": s.load, "rate": s.rate,
                    "stages": [[d, t] for d, t in s.stages] if s.stages else None}
        state = self._state_now(max_age=0.0)
        sent: dict[str, int] = {}  # chains each worker delivered, by its own count
        for st in self._agg.workers.values():
            sent[st["worker"]] = sent.get(st["worker"], 0) + int(st.get("sent", 0))
        summary = build_summary(self._agg, run_info, state,
                                {"saturated": list(self.saturated),
                                 "sent_by_worker": dict(sorted(sent.items()))}, None)
        summary.update(stalls=list(self.stalls), workers_lost=list(self.workers_lost),
                       warnings=list(self.warnings), controls=list(self.controls))
        return summary

    # -- the live view and control (any thread) ------------------------------------------

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
                    for name, w in self._workers.items()}
            s = self.settings
            run = {"id": self.run_id, "started": self._started, "directory": self.directory,
                   "workers": self.workers, "model": s.model, "load": s.load, "rate": s.rate,
                   "duration_s": s.run_length, "grace_s": s.grace,
                   "stages": [[d, t] for d, t in s.stages] if s.stages else None}
            return live_view(self._agg, run=run, now=now, since=since,
                             in_flight=self._in_flight(), target=self._target_at(now),
                             workers=worker_rows(self._agg.workers.values(), live), state=state,
                             stopping=self._stopping, ended=self._summary is not None,
                             warnings=self.warnings)

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

    def tables(self) -> str:
        """The terminal tables of the summary; empty before :meth:`finish`."""
        return format_tables(self._summary) if self._summary is not None else ""

