"""A load run on the controller: results in, live line, results log, summary and benchmark.

:class:`LoadSession` runs two daemon threads next to pytest's own::

    wec-results    ResultSource (Redis stream) -> Aggregator + results log
    wec-progress   the live line every 2 s; watches for a saturated generator, a stalled CA
                   (no chain ended on an answer from it for a while) and workers that went
                   silent

:meth:`LoadSession.finish` drains what the workers still send while it keeps coming, within
a bound, counts what it could not take in (:mod:`~pytest_wec.controller.intake`), then
writes summary.json, benchmark.json and report.html in the run directory.
:meth:`LoadSession.snapshot` is the live view of the dashboard (from any thread),
:meth:`~LoadSession.set_target` and :meth:`~LoadSession.request_stop` its control (through
:mod:`pytest_wec.wire.control`).
:func:`rebuild` makes the three files again from a results log alone::

    wec report RESULTS_LOG [--out DIR]
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.ciexports import write_hgrm
from pytest_wec.controller.csvstats import CsvFiles
from pytest_wec.controller.doctor import PebbleDoctor
from pytest_wec.controller.health import assess
from pytest_wec.controller.intake import ResultIntake, loss_reasons
from pytest_wec.controller.ledger import FailureLedger, shard_of
from pytest_wec.controller.livecontrol import LiveControl
from pytest_wec.controller.outputs import (
    build_benchmark_json,
    build_summary,
    build_tables,
    format_progress,
    format_tables,
    write_json_atomic,
)
from pytest_wec.controller.plugins import PluginCalls
from pytest_wec.controller.rebuild import BENCHMARK_NAME, SUMMARY_NAME, rebuild, report_main
from pytest_wec.controller.report_html import REPORT_NAME, settings_view, write_report
from pytest_wec.controller.resultlog import ResultLogWriter
from pytest_wec.controller.runinfo import run_info_of
from pytest_wec.controller.stackwatch import StackWatch
from pytest_wec.controller.thresholds import percentiles_of
from pytest_wec.controller.watch import Watch
from pytest_wec.settings import Settings
from pytest_wec.wire.control import ControlWriter
from pytest_wec.wire.source import ResultSource

__all__ = ["BENCHMARK_NAME", "REPORT_NAME", "SUMMARY_NAME", "LoadSession", "log_name",
           "rebuild", "report_main"]

log = logging.getLogger(__name__)

def log_name(fmt: str) -> str:
    """File name of the results log in the run directory."""
    return "results.msgpack" if fmt == "msgpack" else "results.jsonl"


class LoadSession(StackWatch, LiveControl, ResultIntake):
    """The controller's side of one load run; ``start`` once, ``finish`` at the end."""

    def __init__(self, settings: Settings, run_dir: Path, run_id: str, redis_url: str,
                 namespace: str, directory: str, workers: int,
                 write_line: Callable[[str], None],
                 state_counts: Callable[[], Mapping[str, int]] | None = None, *,
                 progress_interval: float = 2.0, stall_after: float = 10.0,
                 silent_after: float = 10.0, saturation_reports: int = 3,
                 process_started: float | None = None) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.redis_url, self.namespace = redis_url, namespace
        self.directory, self.workers = directory, workers
        self.write_line, self.state_counts = write_line, state_counts
        self.progress_interval, self.stall_after = progress_interval, stall_after
        self.silent_after = silent_after
        self.log_path = self.run_dir / log_name(settings.log_format)
        self.summary_path = self.run_dir / SUMMARY_NAME
        self.benchmark_path = self.run_dir / BENCHMARK_NAME
        self.report_path = self.run_dir / REPORT_NAME
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
        self._notices: list[str] = []
        self.watch = Watch(self._t0, self._note, self._notices.append, stall_after=stall_after,
                           silent_after=silent_after, saturation_reports=saturation_reports)
        self.process_started = process_started
        self.load_started: float | None = None  # epoch: the common start (the barrier)
        self.load_ended: float | None = None  # epoch: no chain starts after it
        self.missing: list[str] = []
        self.startup_parts: dict[str, float | None] = {}  # summary.json run.startup
        self._closed = False
        self._summary: dict[str, Any] | None = None
        self._control: ControlWriter | None = None
        self._target: float | None = None  # set live from the dashboard
        self._stopping = False
        self._ended: float | None = None
        self._state_lock = threading.Lock()
        self._state_cache: tuple[float, dict[str, int]] = (-1e9, {})
        # -- CA events (pytest_wec.controller.doctor): failures by cause, the Pebble doctor
        self.ledger = FailureLedger(self._started)
        self.doctors: list[PebbleDoctor] = []  # one per embedded Pebble
        # -- stack events (pytest_wec.stack._keeper) and every result accounted for
        self.keeper: Any = None  # StackKeeper: the run's processes watched, restarted
        self.handed_spills: list[bytes] = []  # spills xdist's channel brought
        self.delivery: dict[str, Any] = {}  # pytest_wec.controller.delivery.account
        self._taken: dict[tuple[str, str], int] = {}  # chains taken in per (worker, session)
        self._records = 0  # records taken in (the reader's progress)
        self.incomplete: list[str] = []  # why the run lost results or parts of its stack
        self.csv = CsvFiles(self.run_dir)  # Locust's stats.csv and stats_history.csv
        self.plugins = PluginCalls(self._note)  # plugins' hooks (pytest_wec.newhooks)
        #: where the challenge server answered (pytest_wec.controller.anyca), for summary.json
        self.challenge_server: dict[str, str] = {}

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        view = super().snapshot(since)
        view["ca_events"] = self.ledger.snapshot()
        view["failed_by_cause"] = self.ledger.failed_by_cause()
        view["stack_events"] = self.ledger.stack_snapshot()
        return view

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
            self.watch.restart_clock(self._t0)
            self.ledger.started = self._started
        for doctor in self.doctors:
            doctor.start()
        if self.keeper is not None:
            self.keeper.start()
        for name, target in (("wec-results", self._consume), ("wec-progress", self._progress)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _note(self, msg: str) -> None:
        self._notices.append(msg)
        self.warnings.append(msg)

    def load_opened(self, load_started: float, missing: list[str] | None = None) -> None:
        """Every worker is ready (the barrier opened): the load starts at *load_started*
        (epoch) everywhere; second 0 of the run and its duration count from then."""
        with self._lock:
            self.load_started = load_started
            offset = load_started - time.time()
            self._started, self._t0 = load_started, time.monotonic() + offset
            self._agg.started = load_started
            self._agg.until = load_started + self.settings.run_length
            self.watch.restart_clock(self._t0)
            self.missing = list(missing or [])
        self.ledger.started = load_started
        for shard in range(self.ledger.shards):
            self.ledger.answered_again(load_started, shard)
        if missing:
            self._note(f"wec: the load started without {', '.join(missing)}: not ready within "
                       "the barrier's timeout")

    @property
    def stalls(self) -> list[dict[str, Any]]:
        return self.watch.stalls

    @property
    def saturated(self) -> list[dict[str, Any]]:
        return self.watch.saturated

    @property
    def workers_lost(self) -> list[dict[str, Any]]:
        return self.watch.workers_lost

    def _progress(self) -> None:
        while not self._stop.wait(self.progress_interval):
            try:
                now = time.monotonic()
                with self._lock:
                    self._stack_state(now)
                    source = self._source
                    self.watch.tick(now, behind=source is not None and source.backlogged)
                    for doctor in self.doctors:
                        shards = self.ledger.shards
                        if shards == 1:
                            doctor.tick(self.watch.in_flight(), self.watch.alarm,
                                        idle=now - self.watch.last_end)
                        else:  # each Pebble by its own group of workers
                            in_flight, idle = self.watch.group(
                                functools.partial(_in_shard, shards=shards, shard=doctor.shard),
                                now)
                            doctor.tick(in_flight, None, idle=idle)
                    line = self._progress_line(now)
                    rows = None
                    if self.load_started is not None:
                        wall = time.time()
                        rows = self.csv.prepare(self._agg, wall, self.watch.in_flight(),
                                                max(min(wall, self.load_ended or wall)
                                                    - self.load_started, 1e-3))
                    live = (build_tables(self._agg, max(now - self._t0, 1e-3))
                            if self.on_tick is not None else None)
                self.csv.write(rows)  # the files outside the lock
                self._flush_notices()
                self._write(line)
                if self.on_tick is not None and live is not None:
                    self.on_tick(live, now - self._t0)
            except Exception:
                log.exception("live line failed")

    def _progress_line(self, now: float) -> str:
        """The live line; before the common start, how long the workers take to be ready."""
        if self.load_started is None and self._agg.first_start is None:
            since = time.time() - (self.process_started or self._started)
            return (f"wec starting {since:.0f}s: waiting for {self.workers} worker(s) to be "
                    "ready")
        return format_progress(self._agg, time.time(), duration_s=self.settings.run_length,
                               in_flight=self.watch.in_flight())

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
        """Drains, stops, writes summary.json and benchmark.json; returns the summary.

        The final drain goes on while results come in, within *timeout* (the run passes
        its grace plus 30 s); what it could not take in by then is counted lost
        (:mod:`~pytest_wec.controller.intake`)."""
        with self._finish_lock:
            if self._summary is not None:
                return self._summary
            deadline = time.monotonic() + max(timeout, 0.0)
            ended = time.time()
            for doctor in self.doctors:  # first: one may be restarting its Pebble
                doctor.stop(max(min(deadline - time.monotonic(), 30.0), 0.1))
            if self.keeper is not None:  # a restart under way ends first
                self.keeper.stop(max(min(deadline - time.monotonic(), 30.0), 0.1))
            stopped = self._final_drain(deadline)  # sets self.delivery
            source = self._source
            self._ended = ended
            if self._control is not None:
                self._control.close()
            lost = int(self.delivery["results_lost"])
            if self.keeper is not None:
                self.incomplete += self.keeper.unrecovered()
            self.incomplete += loss_reasons(self.delivery)
            if source is not None and stopped:
                source.close()
            if self._writer is None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._writer = ResultLogWriter(self.log_path, self.settings.log_format)
            self._writer.close()
            with self._lock:
                # the sinks' own drops are counted by the aggregator already
                self._agg.add_lost(max(lost - sum(int(w.get("dropped", 0))
                                                  for w in self._agg.workers.values()), 0))
                self.watch.end(time.monotonic(), self.workers, bool(self._threads),
                               self.behind())
                summary = self._build(ended)
                benchmark = build_benchmark_json(self._agg, summary["run"])
            if self.gate is not None:
                try:
                    self.gate(summary)
                except Exception:
                    log.exception("evaluating the gates failed")
                    self._write("wec: evaluating thresholds and baselines failed; see the log")
            self.plugins.summary(summary)
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
            self._exports(summary)
            self.plugins.close(summary)
            return summary

    def _exports(self, summary: Mapping[str, Any]) -> None:
        """stats.csv, stats_history.csv and the .hgrm files (:mod:`csvstats`, :mod:`ciexports`)."""
        duration = float(summary["run"].get("duration_s") or 0.0)
        with self._lock:
            self.csv.close(self._agg, duration)
            try:
                write_hgrm(self.run_dir, self._agg)
            except OSError as exc:
                log.error("cannot write the .hgrm files: %s", exc)

    def _build(self, ended: float) -> dict[str, Any]:
        s = self.settings
        run_info = run_info_of(self, ended)
        state = self._state_now(max_age=0.0)
        sent: dict[str, int] = {}  # chains each worker delivered, by its own count
        for st in self._agg.workers.values():
            sent[st["worker"]] = sent.get(st["worker"], 0) + int(st.get("sent", 0))
        summary = build_summary(self._agg, run_info, state,
                                {"saturated": list(self.saturated),
                                 "sent_by_worker": dict(sorted(sent.items()))}, None,
                                percentiles=percentiles_of(s.threshold))
        # could the generator make the load asked of it (controller/health.py)
        summary["generator"]["health"] = assess(self._agg, summary["run"], self.controls)
        # beside ``totals``, not in it: a summary rebuilt from the results log has the same
        # totals, and no CA events to count against
        summary.update(failed_by_cause=self.ledger.failed_by_cause(),
                       ca_events=self.ledger.snapshot())
        summary.update(stalls=list(self.stalls), waits=list(self.watch.waits),
                       workers_lost=list(self.workers_lost),
                       warnings=list(self.warnings), controls=list(self.controls))
        summary.update(stack_events=self.ledger.stack_snapshot(), delivery=dict(self.delivery),
                       incomplete=list(self.incomplete))
        # where the CA validated (pytest_wec.controller.anyca), the profile every order asked
        summary.update(challenge_server=dict(self.challenge_server), profile=s.profile)
        return summary

    def tables(self) -> str:
        """The terminal tables of the summary; empty before :meth:`finish`."""
        return format_tables(self._summary) if self._summary is not None else ""


def _in_shard(worker: str, *, shards: int, shard: int) -> bool:
    return shard_of(worker, shards) == shard
