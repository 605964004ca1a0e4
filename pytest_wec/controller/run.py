"""The run on the controller: one per run (the xdist controller when ``-n`` is given).

:class:`WecController` owns the run directory, the embedded stack and the rendezvous
(:mod:`~pytest_wec.controller.rendezvous`) through which workers get the stack on first
need and start their load together. It hands its resolved settings and the rendezvous'
address to xdist workers through ``workerinput`` (plain data, so that workers on other
hosts, ``--tx ssh=``/``--tx socket=``, need nothing else), prints the effective settings in
the report header and reports at the end. Workers print nothing.

When the stack starts: in a load run, on the controller once its own collection found the
chains and the options proved valid (the controller collects too in a load run, so that a
bad ``--wec-mix`` is a usage error before anything starts); otherwise when the first test
that needs it asks (the ``wec_stack_info`` fixture: in this process without xdist, through
the rendezvous with it). A suite without chains never starts it, however chains are
declared.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.controller.gates import Gates
from pytest_wec.controller.runstack import RunStack
from pytest_wec.controller.xdist import xdist_active as _xdist_active
from pytest_wec.errors import ConfigError, StackError
from pytest_wec.settings import Settings, StackMode

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def process_started() -> float:
    """When this process started (epoch seconds): Linux's /proc, else now."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = float(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            btime = next(float(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class WecController(RunStack):
    """The run's state on the controller process (its directory and stack: :class:`RunStack`)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.run_id = new_run_id()
        self.process_started = process_started()
        self._run_dir: Path | None = None
        self.stack: Any = None  # pytest_wec.stack.Stack, imported lazily
        self.stack_error: str | None = None
        self.stack_usage = False  # stack_error is a usage error (the CA lacks what is asked)
        self._stack_lock = threading.Lock()
        self.rendezvous: Any = None  # pytest_wec.controller.rendezvous.Rendezvous
        self._stack_thread: Any = None  # concurrent.futures.ThreadPoolExecutor
        self._old_sigterm: Any = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM ends the run as Ctrl-C does: outputs complete, the stack stopped
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        self.load: Any = None  # pytest_wec.controller.collector.LoadSession in a load run
        self.dashboard: Any = None  # pytest_wec.controller.dashboard.Dashboard
        self.metrics: Any = None  # pytest_wec.controller.metrics.MetricsServer
        self.otlp: Any = None  # pytest_wec.controller.otlp.OtlpExporter
        self.summary: dict[str, Any] | None = None
        self.gates = Gates(settings, Path(config.invocation_params.dir), self._write_line)
        self._store: Any = None
        self.chains_ready = False  # a load run's chains were collected and the options hold
        self._worker_procs: dict[str, Any] = {}  # xdist worker -> its local process (Popen)

    # -- hooks -----------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        from pytest_wec.controller.header import header_lines

        return header_lines(self.settings, config, self.run_id)

    def _load_run(self) -> bool:
        return self.settings.load_mode and self.settings.stack is not StackMode.OFF

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # before xdist's own sessionstart configures the workers: they get the rendezvous
        s = self.settings
        if s.challenge_ports is not None and s.stack is not StackMode.OFF:
            from pytest_wec.controller.anyca import check_ports_free

            try:  # a fixed challenge server port in use: a usage error now
                check_ports_free(s)
            except ConfigError as exc:
                raise pytest.UsageError(str(exc)) from None
        if self._load_run():
            self.gates.prepare()  # a baseline that cannot be found: a usage error now
            _ = self.run_dir  # and so is an unwritable --wec-out (which makes the directory)
            if s.metrics is not None:  # and a port that cannot be had
                from pytest_wec.controller.servers import start_metrics

                self.metrics = start_metrics(*s.metrics, self._write_line)
            if s.otlp is not None:  # and a missing extra
                from pytest_wec.controller.servers import start_otlp

                self.otlp = start_otlp(s.otlp, s.otlp_interval, self._write_line)
        if self._load_run() or _xdist_active(self.config):
            from concurrent.futures import ThreadPoolExecutor

            from pytest_wec.controller.rendezvous import Rendezvous

            self._stack_thread = ThreadPoolExecutor(1, thread_name_prefix="wec-stack")
            self.rendezvous = Rendezvous(s.listen, self._stack_for_worker,
                                         workers=self._workers())
            self.rendezvous.on_open = self._load_opened
            self.rendezvous.shape = self._info_for
            try:
                self.rendezvous.start()
            except OSError as exc:
                raise pytest.UsageError(f"--wec-listen: cannot listen on {s.listen}: "
                                        f"{exc.strerror or exc}") from None
        if s.metrics is not None and not self._load_run():
            self._write_line("wec: --wec-metrics serves load runs (--wec-load, --wec-rate or "
                             "--wec-stages, with a stack); no metrics for this run")
        if s.otlp is not None and not self._load_run():
            self._write_line("wec: --wec-otlp exports load runs (--wec-load, --wec-rate or "
                             "--wec-stages, with a stack); no export for this run")
        if s.dashboard is not None and not self._load_run():
            self._write_line("wec: --wec-dashboard shows load runs (--wec-load, --wec-rate or "
                             "--wec-stages, with a stack); no dashboard for this run")

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool | None:
        # xdist's controller collects nothing; in a load run this one does, so that the
        # chains (however declared) and the options they make valid are known before the
        # stack starts, and a bad --wec-mix is a usage error here, not a worker's crash
        if self._load_run() and _xdist_active(self.config):
            session.perform_collect()
            return True
        return None

    @property
    def distributing(self) -> bool:
        """Whether xdist workers run the tests (this process only collects)."""
        return _xdist_active(self.config)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # called even when collection failed: only a collection that proved the chains
        # and options valid starts the stack
        if not self._load_run() or self.load is not None or not self.chains_ready \
                or session.testsfailed:
            return
        try:
            info = self.ensure_stack()
        except StackError as exc:
            raise pytest.UsageError(f"wec stack: {exc}") from None
        except ConfigError as exc:  # the CA lacks what an option asks (--wec-profile)
            raise pytest.UsageError(str(exc)) from None
        self._start_load(info)

    def _write_line(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(line)

    def _start_load(self, info: dict[str, Any]) -> None:
        from pytest_wec.controller.collector import LoadSession
        from pytest_wec.stack import against

        self.load = LoadSession(
            self.settings, self.run_dir, self.run_id, info["redis_url"], info["namespace"],
            info["directory"], self._workers(), self._write_line,
            state_counts=self._state_counts, process_started=self.process_started,
        )
        if info.get("embedded") and self.stack is not None:  # CA events: the Pebble doctor
            self.load.attach_doctors(self.stack.shards, self._on_stack_thread, self._ca_forgot)
        if self.stack is not None:  # stack events: every process watched, restarted
            self._attach_keeper()
        if self.gates.active:
            self.load.gate = self.gates.judge
            if self.settings.abort_on_fail and self.settings.threshold:
                self.load.on_tick = self._abort_check
        from pytest_wec.controller.plugins import PluginCalls

        self.load.plugins = PluginCalls.from_config(self.config, self.run_dir,
                                                    self.load.plugins.note)
        if self.metrics is not None:
            self.metrics.attach(self.load, self.run_id)
        if self.otlp is not None:
            self.otlp.attach(self.load, self.run_id, self.load._note)
        self.load.start()
        s = self.settings
        what = (f"rate {s.rate:g}/s" + (f" (cap {s.load} in flight)" if s.load else "")
                if s.model == "open" else f"load {s.load or 0} in flight")
        if s.stages:
            what += ", stages " + ",".join(f"{d:g}s:{t:g}" for d, t in s.stages)
        self._write_line(
            f"wec: load run {self.run_id}: {what} for {s.run_length:g}s on "
            f"{self._workers()} worker(s) against {against(info)}; results in {self.run_dir}")
        from pytest_wec.controller.anyca import addresses_line, challenge_server_of

        self.load.challenge_server = challenge_server_of(info)
        if (line := addresses_line(info)) is not None:
            self._write_line(line)
        if s.dashboard is not None:
            from pytest_wec.controller.servers import start_dashboard

            self.dashboard = start_dashboard(self.load, *s.dashboard, self._write_line)

    def _attach_keeper(self) -> None:
        from pytest_wec.stack._keeper import StackKeeper

        load = self.load
        keeper = StackKeeper(self.stack, load.ledger, load._doctor_note,
                             started=lambda: float(load.ledger.started),
                             run_on_stack_thread=self._on_stack_thread,
                             doctors={d.label: d for d in load.doctors})
        for name, popen in self._worker_procs.items():
            keeper.watch_worker(name, popen)
        load.attach_keeper(keeper)

    def worker_ready(self, node: Any) -> None:
        """An xdist worker is up: its process (a local one's ``Popen``) is watched."""
        name = str(node.gateway.id)
        popen = getattr(getattr(node.gateway, "_io", None), "popen", None)
        if popen is not None and hasattr(popen, "poll"):
            self._worker_procs[name] = popen
            if self.load is not None and self.load.keeper is not None:
                self.load.keeper.watch_worker(name, popen)

    def worker_down(self, node: Any, error: Any) -> None:
        """An xdist worker went down: the spill it handed over, a remote one's death."""
        spill = (getattr(node, "workeroutput", None) or {}).get("wec_spill")
        if self.load is not None and isinstance(spill, bytes):
            self.load.handed_spills.append(spill)
        if error is not None and self.load is not None and self.load.keeper is not None:
            self.load.keeper.worker_down(str(node.gateway.id), error)

    def _ca_forgot(self, directory: str) -> None:
        """An embedded Pebble restarts with nothing: its accounts (and what hangs on them)
        are dead in the state DB, so no chain takes one and fails on it."""
        self._state_counts()  # opens the store once
        self._store.mark_directory_dead(directory)

    def _on_stack_thread(self, fn: Any) -> Any:
        """*fn* on the stack's long-lived thread: a child (a restarted Pebble) dies with the
        thread that started it (``PR_SET_PDEATHSIG``), and this one outlives the stack."""
        if self._stack_thread is None:
            return fn()
        return self._stack_thread.submit(fn).result(timeout=120)

    def _load_opened(self, load_started: float) -> None:
        """The barrier opened: the load starts everywhere at ``load_started``."""
        if self.load is not None:
            ready = sorted(self.rendezvous.ready_epochs().values())
            t0 = self.process_started
            self.load.startup_parts = {
                "stack_ready_s": (round(self.stack_ready_at - t0, 3)
                                  if self.stack_ready_at is not None else None),
                "first_worker_ready_s": round(ready[0] - t0, 3) if ready else None,
                "last_worker_ready_s": round(ready[-1] - t0, 3) if ready else None,
                "start_in_s": round(self.rendezvous.start_in, 3)}
            self.load.load_opened(load_started, missing=self.rendezvous.missing)

    def _abort_check(self, live: dict[str, Any], elapsed: float) -> None:
        if self.load is not None:
            self.gates.abort_check(live, elapsed, lambda by: self.load.request_stop(by=by))

    def _state_counts(self) -> dict[str, int]:
        if self._store is None:
            from pytest_wec.state import make_store
            from pytest_wec.worker.runtime import db_url_for

            self._store = make_store(db_url_for(self.settings, str(self.run_dir)))
        out = {"accounts": 0, "authorizations": 0, "certificates": 0, "revoked": 0}
        shards = self.stack.info.get("shards") or [{"directory": self.stack.info["directory"]}]
        for shard in shards:  # each embedded Pebble's directory, or the one CA
            c = self._store.counts(shard["directory"])
            for k in out:
                out[k] += int(getattr(c, k))
        return out

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        # A signal to this process alone (kill, CI) does not reach the xdist workers, whose
        # load would run on until xdist kills them: stop them as the dashboard does.
        if self.load is not None and self.stack is not None:
            from pytest_wec.wire.control import ControlWriter

            try:
                writer = ControlWriter(self.stack.info["redis_url"], self.stack.info["namespace"])
                try:
                    writer.stop()
                finally:
                    writer.close()
            except Exception as exc:
                log.warning("cannot tell the workers to stop: %s", exc)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Any:
        yield
        if self.load is not None:
            if self.otlp is not None:  # what it warns of from now on: in the summary below
                self.otlp.hold_notes()
            self.summary = self.load.finish(timeout=self.settings.grace + 30)
            if self.otlp is not None:  # the final figures, once, within its timeout
                late = self.otlp.stop()
                if late is not None and self.summary is not None:  # said after the summary
                    from pytest_wec.controller.outputs import write_json_atomic

                    self.summary.setdefault("warnings", []).append(late)
                    write_json_atomic(self.load.summary_path, self.summary)
            if self.gates.result is not None:
                session.exitstatus = self.gates.result.exit_status(int(session.exitstatus))
            from pytest_wec.controller.closing import exit_status

            session.exitstatus = exit_status(int(session.exitstatus), self.load.incomplete)
            if self.settings.save:
                self.gates.save(self.load.benchmark_path)
            if self.summary is not None:
                from pytest_wec.controller.closing import ci_exports

                ci_exports(self.config, self.summary,
                           self.gates.result.line() if self.gates.result is not None else None,
                           self.run_id, self._write_line)
        elif self.stack_error is not None and _xdist_active(self.config) \
                and self.stack is None and session.exitstatus != pytest.ExitCode.OK:
            # the stack a worker asked for could not start: one line, as a usage error
            import sys

            what = "" if self.stack_usage else "wec stack: "
            print(f"ERROR: {what}{self.stack_error}", file=sys.stderr)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self.dashboard is not None:  # first: its pages get the last snapshot of the run
            self.dashboard.stop()
        if self.load is not None:
            self.load.finish(timeout=5)
        if self.metrics is not None:
            self.metrics.stop()
        if self.otlp is not None:
            self.otlp.stop()
        if self.rendezvous is not None:
            self.rendezvous.close()
        if self._store is not None:
            self._store.close()
        self.stop_stack()
        if self._stack_thread is not None:
            self._stack_thread.shutdown(wait=False)
        from pytest_wec.controller.closing import last_lines

        last_lines(config, self.gates, self.load)  # after pytest's own summary line

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.load is not None and self.summary is not None:
            from pytest_wec.controller.closing import terminal_summary

            terminal_summary(tr, self.load, self.gates)
        elif self.stack is not None:
            from pytest_wec.controller.anyca import addresses_line

            tr.write_line(f"wec: run {self.run_id}; logs in {self.run_dir}")
            if (line := addresses_line(self.stack.info)) is not None:
                tr.write_line(line)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
